// kiln bench: speed measurements. `bench decode` runs a model (prefill and decode tokens per second);
// `bench gemm` runs the matrix-product benchmark, which is a separate component hooked in through
// GemmBenchEntry below. With --json each command prints one JSON object per line.

using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Kiln.Cli.Bench;
using Kiln.Devices;
using Kiln.Models;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Tokenizers;

namespace Kiln.Cli.Commands;

/// <summary>The signature of the matrix-product benchmark's entry point (Kiln.Cli.Bench.GemmBench.Run).</summary>
internal delegate int GemmBenchEntry(int m, int n, int k, int threads, bool json, TextWriter stdout, TextWriter stderr);

/// <summary>The <c>bench</c> command and its subcommands.</summary>
internal static class BenchCommand
{
    /// <summary>The matrix-product benchmark (Kiln.Cli.Bench.GemmBench).</summary>
    internal static readonly GemmBenchEntry? GemmBenchRun = Bench.GemmBench.Run;

    /// <summary>Builds the command.</summary>
    public static Command Create(CliContext context)
    {
        Command bench = new("bench", "Measure speed: decode (a whole model), gemm (matrix products), indexcache, peer (Kiln against llama.cpp), mamba3 (one mixer), hybrid (transformer, Mamba-3 and hybrid models), kv (decode with a compressed KV cache; with --attnres also the cost of Block Attention Residuals), tokenize (a GGUF tokenizer), attnres (the cost of Block Attention Residuals).");
        bench.Subcommands.Add(CreateDecode(context));
        bench.Subcommands.Add(CreateGemm(context));
        bench.Subcommands.Add(CreateIndexCache(context));
        bench.Subcommands.Add(CreatePeer(context));
        bench.Subcommands.Add(CreateMamba3(context));
        bench.Subcommands.Add(CreateTokenize(context));
        bench.Subcommands.Add(CreateHybrid(context));
        bench.Subcommands.Add(CreateAttnRes(context));
        bench.Subcommands.Add(CreateKv(context));
        return bench;
    }

    private static Command CreateTokenize(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Option<string?> textFile = new("--text-file") { HelpName = "FILE", Description = "UTF-8 text to encode (default: a built-in mixed paragraph)." };
        Option<int> repeat = new("--repeat") { Description = "Times the text is repeated into one input.", DefaultValueFactory = static _ => 2000 };
        Option<int> runs = new("--runs") { Description = "Measured runs (best reported).", DefaultValueFactory = static _ => 3 };
        Option<bool> json = new("--json") { Description = "Print one JSON object on one line." };
        Command command = new("tokenize", "A GGUF file's tokenizer: load time, encode MB/s and tokens/s, decode tokens/s.")
        {
            model, textFile, repeat, runs, json,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            string path = ModelFiles.ResolveModel(parse.GetValue(model), context.Environment);
            int times = parse.GetValue(repeat), runCount = parse.GetValue(runs);
            if (times is < 1 or > 1_000_000 || runCount < 1)
            {
                throw new CliException($"--repeat {times} --runs {runCount}: repeat must be 1..1000000 and runs at least 1.");
            }

            if (!GgufFile.IsGguf(path))
            {
                throw new CliException($"{path}: is not a GGUF file; bench tokenize reads the tokenizer stored in a GGUF file.");
            }

            string? file = parse.GetValue(textFile);
            if (file is not null && !File.Exists(file))
            {
                throw new CliException($"--text-file {file}: the file does not exist; give a UTF-8 text file.");
            }

            string text = file is null ? TokenizeBench.DefaultText : File.ReadAllText(file);
            if (text.Length == 0 || (long)text.Length * times > 256L << 20)
            {
                throw new CliException($"--text-file {file} --repeat {times}: the input must be 1 to {256 << 20} characters; use a shorter text or fewer repeats.");
            }

            TokenizeBench.Run(path, text, times, runCount, parse.GetValue(json), context.Stdout);
            return 0;
        }));
        return command;
    }

    private static Command CreateHybrid(CliContext context)
    {
        Option<int[]> contexts = ContextsOption([1024, 4096, 16384, 32768]);
        Option<int> decode = new("--decode") { Description = "Decode steps measured after the prefill.", DefaultValueFactory = static _ => 32 };
        Option<int> runs = new("--runs") { Description = "Measured rounds (each model once per round, best reported).", DefaultValueFactory = static _ => 2 };
        Option<string?> plot = new("--plot") { Description = "Also draw tok/s against context for every model to this PNG file.", HelpName = "FILE.png" };
        Option<string> device = CommonOptions.Device();
        Option<int?> threads = CommonOptions.Threads();
        Option<bool> json = new("--json") { Description = "Print one JSON object per line." };
        Command command = new("hybrid", "Transformer, Mamba-3 (SISO, MIMO) and hybrid models of width 512 and 12 layers on random weights: prefill and decode tok/s per context.")
        {
            contexts, decode, runs, plot, device, threads, json,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // Check the flags.
            int[] lengths = parse.GetValue(contexts) ?? [];
            int steps = parse.GetValue(decode), runCount = parse.GetValue(runs);
            CheckContexts(lengths, 65536);

            if (steps < 1 || runCount < 1 || lengths.Max() + steps > Kiln.Kernels.Attention.MaxContext)
            {
                throw new CliException($"--decode {steps} --runs {runCount}: both must be at least 1, and the longest context plus the decode steps at most {Kiln.Kernels.Attention.MaxContext}.");
            }

            string? plotPath = parse.GetValue(plot);
            if (plotPath is not null && (!plotPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase) || !Directory.Exists(Path.GetDirectoryName(Path.GetFullPath(plotPath)))))
            {
                throw new CliException($"--plot {plotPath}: give a .png file in an existing folder.");
            }

            int? threadCount = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadCount);
            using Device target = CommonOptions.CreateDevice(parse.GetValue(device) ?? "cpu", threadCount, context.Stderr);
            HybridBench.Run([.. lengths.Distinct().Order()], steps, runCount, target, parse.GetValue(json), plotPath, context.Stdout, context.Stderr);
            return 0;
        }));
        return command;
    }

    private static Command CreateAttnRes(CliContext context)
    {
        AttnResBench.Options defaults = new();
        Option<int[]> contexts = ContextsOption([.. defaults.Contexts]);
        Option<int> decode = new("--decode") { Description = "Decode steps measured after the prefill.", DefaultValueFactory = _ => defaults.Decode };
        Option<int> runs = new("--runs") { Description = "Measured rounds (each model once per round, best reported).", DefaultValueFactory = _ => defaults.Runs };
        Option<int> blocks = new("--blocks") { Description = "The option's number of blocks N (1..2 x layers).", DefaultValueFactory = _ => defaults.Blocks };
        Option<int> layers = new("--layers") { Description = "Model layers.", DefaultValueFactory = _ => defaults.Layers };
        Option<int> dim = new("--dim") { Description = "Model width, a multiple of 64.", DefaultValueFactory = _ => defaults.Dim };
        Option<int?> threads = CommonOptions.Threads();
        Option<bool> json = new("--json") { Description = "Print one JSON object per line." };
        Command command = new("attnres", "Block Attention Residuals against the same random Llama without them (24 layers, width 1024, N 8): prefill and decode tok/s and ratios.")
        {
            contexts, decode, runs, blocks, layers, dim, threads, json,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // Check the flags.
            int[] lengths = parse.GetValue(contexts) ?? [];
            int steps = parse.GetValue(decode), runCount = parse.GetValue(runs), layerCount = parse.GetValue(layers), width = parse.GetValue(dim), blockCount = parse.GetValue(blocks);
            CheckContexts(lengths, Kiln.Kernels.Attention.MaxContext);
            if (steps < 1 || runCount < 1 || lengths.Max() + steps > Kiln.Kernels.Attention.MaxContext)
            {
                throw new CliException($"--decode {steps} --runs {runCount}: both must be at least 1, and the longest context plus the decode steps at most {Kiln.Kernels.Attention.MaxContext}.");
            }

            if (layerCount < 1 || layerCount > 256 || width < 64 || width > 8192 || width % 64 != 0)
            {
                throw new CliException($"--layers {layerCount} --dim {width}: use 1..256 layers and a width of 64..8192 in steps of 64 (heads of 64).");
            }

            if (blockCount < 1 || blockCount > 2 * layerCount)
            {
                throw new CliException($"--blocks {blockCount}: the option needs 1..{2 * layerCount} blocks for {layerCount} layers ({2 * layerCount} sublayers).");
            }

            int? threadCount = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadCount);
            AttnResBench.Options options = defaults with
            {
                Contexts = [.. lengths.Distinct().Order()],
                Decode = steps,
                Runs = runCount,
                Blocks = blockCount,
                Layers = layerCount,
                Dim = width,
                Threads = threadCount ?? Environment.ProcessorCount,
            };

            // Two copies of the weights, float32.
            long bytes = 2L * sizeof(float) * options.Config(1).ParameterCount;
            long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
            if (available > 0 && bytes > available / 2)
            {
                throw new CliException($"--layers {layerCount} --dim {width}: the two models need about {bytes >> 20} MiB but this machine has {available >> 20} MiB; use fewer layers or a smaller width.");
            }

            AttnResBench.Run(options, parse.GetValue(json), context.Stdout, context.Stderr);
            return 0;
        }));
        return command;
    }

    private static Command CreateKv(CliContext context)
    {
        Option<int[]> contexts = ContextsOption([4096, 8192, 16384]);
        Option<double[]> kept = new("--kept")
        {
            Description = "Fractions of the prompt kept, in (0, 1), the observation window included.",
            DefaultValueFactory = static _ => [0.1],
            AllowMultipleArgumentsPerToken = true,
        };
        Option<int> decode = new("--decode") { Description = "Decode steps timed with the full cache and again after compression.", DefaultValueFactory = static _ => 64 };
        Option<bool> attnRes = new("--attnres") { Description = "Then measure Block Attention Residuals against the same model without them, as `kiln bench attnres` with its defaults (about 2 minutes more)." };
        Option<int?> threads = CommonOptions.Threads();
        Option<bool> json = new("--json") { Description = "Print one JSON object per line." };
        Command command = new("kv", "Decode tok/s after KV-cache compression (ChunkKV with and without reuse, SnapKV, StreamingLLM) against the full cache, on random weights; with --attnres also the cost of Block Attention Residuals.")
        {
            contexts, kept, decode, attnRes, threads, json,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            int[] lengths = parse.GetValue(contexts) ?? [];
            double[] fractions = parse.GetValue(kept) ?? [];
            int steps = parse.GetValue(decode);
            CheckContexts(lengths, 32768);
            if (fractions.Length == 0 || fractions.Any(f => !(f > 0 && f < 1)) || steps < 1)
            {
                throw new CliException($"--kept {string.Join(' ', fractions)} --decode {steps}: give fractions in (0, 1) and at least 1 decode step.");
            }

            if (lengths.Max() + steps > Kiln.Kernels.Attention.MaxContext)
            {
                throw new CliException($"--context {lengths.Max()} --decode {steps}: the longest context plus the decode steps must be at most {Kiln.Kernels.Attention.MaxContext}; give fewer decode steps.");
            }

            if (lengths.Min() * fractions.Min() < 32)
            {
                throw new CliException($"--context {lengths.Min()} --kept {fractions.Min()}: keeps fewer than 32 tokens, too few for the window of 16 and a chunk; give a longer context or a larger fraction.");
            }

            int? threadFlag = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadFlag);
            using Device target = CommonOptions.CreateDevice("cpu", threadFlag, context.Stderr);
            KvBench.Run((CpuDevice)target, [.. lengths.Distinct().Order()], fractions, steps, parse.GetValue(json), context.Stdout, context.Stderr);
            if (parse.GetValue(attnRes))
            {
                AttnResBench.Run(new AttnResBench.Options { Threads = threadFlag ?? Environment.ProcessorCount }, parse.GetValue(json), context.Stdout, context.Stderr);
            }

            return 0;
        }));
        return command;
    }

    private static Command CreateMamba3(CliContext context)
    {
        Option<int> tokens = new("--tokens") { Description = "Prefill length T.", DefaultValueFactory = static _ => 4096 };
        Option<int> dModel = new("--d-model") { Description = "d_model.", DefaultValueFactory = static _ => 512 };
        Option<int> dState = new("--d-state") { Description = "d_state N.", DefaultValueFactory = static _ => 64 };
        Option<int> headDim = new("--headdim") { Description = "Head width P.", DefaultValueFactory = static _ => 64 };
        Option<int> chunk = new("--chunk") { Description = "Chunk size C (default 64, or 64/R with --mimo).", DefaultValueFactory = static _ => 0 };
        Option<int> mimo = new("--mimo") { Description = "MIMO rank R (0: SISO).", DefaultValueFactory = static _ => 0 };
        Option<int> decode = new("--decode") { Description = "Decode steps measured after the prefill.", DefaultValueFactory = static _ => 256 };
        Option<int> runs = new("--runs") { Description = "Measured runs (best reported).", DefaultValueFactory = static _ => 3 };
        Option<string> device = CommonOptions.Device();
        Option<int?> threads = CommonOptions.Threads();
        Option<bool> json = new("--json") { Description = "Print one JSON object on one line." };
        Command command = new("mamba3", "One Mamba-3 mixer on random weights: prefill and decode tokens per second.")
        {
            tokens, dModel, dState, headDim, chunk, mimo, decode, runs, device, threads, json,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            int t = parse.GetValue(tokens), steps = parse.GetValue(decode), runCount = parse.GetValue(runs), rank = parse.GetValue(mimo);
            int? threadCount = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadCount);
            if (t < 1 || t > 1 << 20 || steps < 1 || runCount < 1 || rank < 0)
            {
                throw new CliException($"--tokens {t} --decode {steps} --runs {runCount} --mimo {rank}: tokens must be 1..1048576, decode and runs at least 1, mimo 0 or more.");
            }

            int chunkSize = parse.GetValue(chunk) is > 0 and int given ? given : rank > 1 ? Math.Max(64 / rank, 1) : 64;
            Kiln.Models.Mamba.Mamba3Config config = new()
            {
                DModel = parse.GetValue(dModel), DState = parse.GetValue(dState), HeadDim = parse.GetValue(headDim),
                ChunkSize = chunkSize, IsMimo = rank > 0, MimoRank = Math.Max(rank, 1),
            };
            try
            {
                config.Validate();
            }
            catch (ArgumentException e)
            {
                throw new CliException($"bench mamba3: {KilnCli.OneLine(e.Message)}", CliException.UsageExitCode, e);
            }

            using Device target = CommonOptions.CreateDevice(parse.GetValue(device) ?? "cpu", threadCount, context.Stderr);
            Mamba3Bench.Run(config, t, steps, runCount, target, parse.GetValue(json), context.Stdout, context.Stderr);
            return 0;
        }));
        return command;
    }

    private static Command CreatePeer(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        model.Description = "A llama2.c model whose tok512.bin (next to it) is the vocabulary of the random models; default as for generate.";
        Option<string?> tokenizer = CommonOptions.Tokenizer();
        tokenizer.Description = "The 512-token vocabulary (tok512.bin) written into the random models; overrides -m.";
        Option<string?> directory = new("--dir") { Description = "Where the random GGUF models are written (kept and reused); default ~/.cache/kiln/peer.", HelpName = "DIR" };
        Option<int?> threads = CommonOptions.Threads();
        Option<int> runs = new("--runs") { Description = "Measured rounds per engine after a warm-up; the best is reported.", DefaultValueFactory = static _ => 2, HelpName = "R" };
        Option<bool> json = new("--json") { Description = "Print one JSON object per model and dtype." };
        Command command = new("peer", "Kiln against llama.cpp (LLamaSharp 0.30.0) on random 15M and 110M Llama GGUF files, F32 and Q8_0: prefill 256 tokens, decode 128.")
        {
            model, tokenizer, directory, threads, runs, json,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            int? threadFlag = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadFlag);
            int runCount = parse.GetValue(runs);
            if (runCount < 1)
            {
                throw new CliException($"--runs {runCount}: must be at least 1.");
            }

            string? tokenizerFlag = parse.GetValue(tokenizer);
            string tokenizerPath = !string.IsNullOrEmpty(tokenizerFlag) ? tokenizerFlag
                : ModelFiles.ResolveTokenizer(null, ModelFiles.ResolveModel(parse.GetValue(model), context.Environment), 512);
            string folder = parse.GetValue(directory)
                ?? Path.Combine(
                    context.Environment.HomeDirectory is { } home && Directory.Exists(home) ? home : Path.GetTempPath(), ".cache", "kiln", "peer");
            Directory.CreateDirectory(folder);
            int threadCount = threadFlag ?? Environment.ProcessorCount;
            try
            {
                PeerBench.Run(tokenizerPath, folder, threadCount, runCount, parse.GetValue(json), context.Stdout, context.Stderr);
            }
            catch (InvalidOperationException e) when (e.Message.StartsWith("llama.cpp", StringComparison.Ordinal))
            {
                throw new CliException(e.Message, CliException.FailureExitCode);
            }

            return 0;
        }));
        return command;
    }

    private static Command CreateIndexCache(CliContext context)
    {
        Option<int[]> contexts = ContextsOption([1024, 2048, 4096, 8192]);
        Option<int> decode = new("--decode") { Description = "Decode steps measured after the prefill.", DefaultValueFactory = static _ => 64 };
        Option<int> runs = new("--runs") { Description = "Measured rounds (each session once per round, best reported).", DefaultValueFactory = static _ => 3 };
        Option<bool> json = new("--json") { Description = "Print one JSON object per line." };
        Option<string> device = CommonOptions.Device();
        Option<int?> threads = CommonOptions.Threads();
        Command command = new("indexcache", "IndexCache speed on random B' weights: DSA with keep 1, 1/2, 1/4 against all-Full DSA and dense attention.")
        {
            contexts, decode, runs, json, device, threads,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // Check the flags.
            int[] lengths = parse.GetValue(contexts) ?? [];
            int steps = parse.GetValue(decode), runCount = parse.GetValue(runs);
            CheckContexts(lengths, 32768);

            if (steps < 1 || runCount < 1 || lengths.Max() + steps > Kiln.Kernels.Attention.MaxContext)
            {
                throw new CliException($"--decode {steps} --runs {runCount}: both must be at least 1, and the longest context plus the decode steps at most {Kiln.Kernels.Attention.MaxContext}.");
            }

            int? threadFlag = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadFlag);
            using Device target = CommonOptions.CreateDevice(parse.GetValue(device) ?? "cpu", threadFlag, context.Stderr);
            IndexCacheBench.Run(target, lengths, steps, runCount, parse.GetValue(json), context.Stdout, context.Stderr);
            return 0;
        }));
        return command;
    }

    private static Command CreateDecode(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Option<string> device = CommonOptions.Device();
        Option<int?> threads = CommonOptions.Threads();
        Option<bool> json = new("--json") { Description = "Print one JSON object on one line." };
        Option<int?> length = new("--context", "-c")
        {
            Description = "Positions to fill (default: the model's seq_len).",
            HelpName = "N",
        };
        Option<int> runs = new("--runs")
        {
            Description = "Measured runs after one warm-up; the best is reported.",
            DefaultValueFactory = static _ => 3,
            HelpName = "R",
        };
        Command command = new("decode", "Prefill and decode tokens per second: decode from BOS to a full context, then prefill that sequence.")
        {
            model, device, threads, json, length, runs,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // Check the flags, then load the model.
            int? threadFlag = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadFlag);
            int runCount = parse.GetValue(runs);
            if (runCount < 1)
            {
                throw new CliException($"--runs {runCount}: must be at least 1.");
            }

            string modelPath = ModelFiles.ResolveModel(parse.GetValue(model), context.Environment);
            LlamaModelFile modelFile = LlamaModelFile.Open(modelPath);
            LlamaConfig config = modelFile.Config;
            int? contextFlag = parse.GetValue(length);
            int usableContext = Math.Min(config.SeqLen, LlamaSession.MaxContextLength);
            if (contextFlag is < 1 || contextFlag > usableContext)
            {
                throw new CliException($"--context {contextFlag}: must be between 1 and {usableContext} (the model's seq_len {config.SeqLen}, at most {LlamaSession.MaxContextLength}).");
            }

            string deviceName = parse.GetValue(device) ?? "cpu";
            using Device target = CommonOptions.CreateDevice(deviceName, threadFlag, context.Stderr);
            using LlamaWeights weights = modelFile.Load(target);
            SessionOptions options = new() { ContextLength = contextFlag ?? usableContext };
            using IInferenceSession session = InferenceSessions.Default(weights, options);

            // Measure and report.
            int bos = modelFile.Gguf is { } gguf
                ? (int)gguf.GetInteger("tokenizer.ggml.bos_token_id", Llama2cTokenizer.BeginId, 0, config.VocabSize - 1)
                : Llama2cTokenizer.BeginId;
            DecodeBench.Result result = DecodeBench.Measure(session, bos, runCount);
            string name = Path.GetFileNameWithoutExtension(modelPath);
            int threadCount = CommonOptions.ThreadCount(target, threadFlag);
            if (parse.GetValue(json))
            {
                context.Stdout.WriteLine(Json(name, threadCount, result, target.Name, InferenceSessions.DefaultNameOn(target)));
            }
            else
            {
                context.Stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name}: {InferenceSessions.DefaultNameOn(target)} session on {CommonOptions.Describe(target)}: context {result.Context}, prefill {result.PrefillTokensPerSecond:F1} tok/s, decode {result.DecodeTokensPerSecond:F1} tok/s"));
            }

            return 0;
        }));
        return command;
    }

    private static Command CreateGemm(CliContext context)
    {
        Option<int> m = new("--m") { Description = "Rows of A and C.", DefaultValueFactory = static _ => 1024 };
        Option<int> n = new("--n") { Description = "Columns of C (rows of W [N, K]).", DefaultValueFactory = static _ => 1024 };
        Option<int> k = new("--k") { Description = "The inner dimension.", DefaultValueFactory = static _ => 1024 };
        Option<int?> threads = CommonOptions.Threads();
        Option<bool> json = new("--json") { Description = "Print one JSON object per line." };
        Command command = new("gemm", "Matrix-product speed (C [M, N] = A [M, K] · W [N, K]ᵀ) against the peer.")
        {
            m, n, k, threads, json,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // Check the sizes and threads here, so the benchmark receives valid values.
            foreach ((string flag, int value) in new[] { ("--m", parse.GetValue(m)), ("--n", parse.GetValue(n)), ("--k", parse.GetValue(k)) })
            {
                if (value < 1)
                {
                    throw new CliException($"{flag} {value}: matrix sizes must be at least 1.");
                }
            }

            // Each matrix must fit one tensor, and all the copies the benchmark makes must fit in memory.
            CheckGemmSizes(parse.GetValue(m), parse.GetValue(n), parse.GetValue(k));
            int? threadFlag = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadFlag);
            if (GemmBenchRun is null)
            {
                throw new CliException(
                    "bench gemm: the matrix-product benchmark is not part of this build of kiln; use a build that includes Kiln.Cli.Bench.GemmBench.",
                    CliException.FailureExitCode);
            }

            return GemmBenchRun(
                parse.GetValue(m),
                parse.GetValue(n),
                parse.GetValue(k),
                threadFlag ?? Environment.ProcessorCount,
                parse.GetValue(json),
                context.Stdout,
                context.Stderr);
        }));
        return command;
    }

    /// <summary>Checks that A [M, K], W [N, K] and C [M, N] each fit a tensor and that the run fits in memory.</summary>
    private static void CheckGemmSizes(int m, int n, int k)
    {
        string sizes = $"--m {m} --n {n} --k {k}";
        foreach ((string matrix, long elements) in new[] { ("A [M, K]", (long)m * k), ("W [N, K]", (long)n * k), ("C [M, N]", (long)m * n) })
        {
            if (elements > Tensor.MaxElements)
            {
                throw new CliException($"{sizes}: {matrix} would hold {elements} elements, more than a tensor holds ({Tensor.MaxElements}); use smaller sizes, e.g. the defaults (1024).");
            }
        }

        // Host copy and tensor of A; host copy, tensor and packed copy of W; C and the copies of its results.
        long bytes = sizeof(float) * ((2L * m * k) + (3L * n * k) + (3L * m * n));
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (available > 0 && bytes > available)
        {
            throw new CliException($"{sizes}: the benchmark needs about {bytes >> 30} GiB but this machine has {available >> 30} GiB; use smaller sizes, e.g. the defaults (1024).");
        }
    }

    private static string Json(string model, int threads, DecodeBench.Result result, string device, string session)
    {
        // One object, fields in a fixed order, speeds rounded to 0.1 tok/s.
        using MemoryStream buffer = new();
        using (Utf8JsonWriter writer = new(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("model", model);
            writer.WriteNumber("threads", threads);
            writer.WriteNumber("context", result.Context);
            writer.WriteNumber("prefill_tok_s", Math.Round(result.PrefillTokensPerSecond, 1));
            writer.WriteNumber("decode_tok_s", Math.Round(result.DecodeTokensPerSecond, 1));
            writer.WriteString("session", session);
            writer.WriteString("device", device);
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }

    // --context/-c of the model benchmarks: one or more contexts, repeated or space-separated.
    private static Option<int[]> ContextsOption(int[] defaults) => new("--context", "-c")
    {
        Description = "Contexts to measure (repeat the flag or separate with spaces).",
        DefaultValueFactory = _ => [.. defaults],
        AllowMultipleArgumentsPerToken = true,
        HelpName = "N",
    };

    // Every context in [1, most], and at least one.
    private static void CheckContexts(int[] lengths, int most)
    {
        if (lengths.Length == 0 || lengths.Any(n => n < 1 || n > most))
        {
            throw new CliException($"--context {string.Join(' ', lengths)}: give one or more contexts between 1 and {most}.");
        }
    }
}
