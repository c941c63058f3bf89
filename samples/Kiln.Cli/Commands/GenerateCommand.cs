// kiln generate: prints the prompt, then streams the continuation to stdout; load information, a context-full
// note and the prefill/decode speeds go to stderr. Flags follow llama.cpp (-m, -p, -n, --temp, --top-k, --top-p,
// -s/--seed, -t). Defaults are llama.cpp's: temperature 0.8, top-k 40, top-p 0.95, a random seed (printed, so a
// run can be repeated), and -n 256; --temp 0 is greedy, -n -1 runs to the stop token or a full context.
// Models: llama2.c checkpoints, GGUF llama files and Kiln DSA safetensors checkpoints (DsaSession; read on the cpu,
// then copied to the device), on any device. The tokenizer is --tokenizer when given, else a GGUF file's own
// vocabulary, else tok<vocab>.bin or tokenizer.bin next to the model. --attn-res-blocks N runs a llama2.c or GGUF
// model with Block Attention Residuals over N blocks (cpu only), its vectors at their defaults (AttentionResiduals.cs).

using System.CommandLine;
using System.Globalization;
using Kiln.Devices;
using Kiln.Models;
using Kiln.Models.Dsa;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Kiln.Models.Tokenizers;

namespace Kiln.Cli.Commands;

/// <summary>The <c>generate</c> command.</summary>
internal static class GenerateCommand
{
    /// <summary>The default temperature (llama.cpp's).</summary>
    public const float DefaultTemperature = 0.8f;

    /// <summary>The default top-k (llama.cpp's).</summary>
    public const int DefaultTopK = 40;

    /// <summary>The default top-p (llama.cpp's).</summary>
    public const float DefaultTopP = 0.95f;

    /// <summary>The default number of new tokens.</summary>
    public const int DefaultMaxNewTokens = 256;

    /// <summary>Builds the command.</summary>
    public static Command Create(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Option<string?> tokenizer = CommonOptions.Tokenizer();
        Option<string> prompt = new("--prompt", "-p")
        {
            Description = "The text to continue (may be empty).",
            DefaultValueFactory = static _ => string.Empty,
            HelpName = "PROMPT",
        };
        Option<int> count = new("--n-predict", "-n")
        {
            Description = "The most new tokens to generate; -1: until the end token or a full context.",
            DefaultValueFactory = static _ => DefaultMaxNewTokens,
            HelpName = "N",
        };
        Option<float> temperature = new("--temp")
        {
            Description = "Sampling temperature; 0 is greedy.",
            DefaultValueFactory = static _ => DefaultTemperature,
            HelpName = "T",
        };
        Option<int> topK = new("--top-k")
        {
            Description = "Keep the K most likely tokens; 0 keeps all.",
            DefaultValueFactory = static _ => DefaultTopK,
            HelpName = "K",
        };
        Option<float> topP = new("--top-p")
        {
            Description = "Keep the most likely tokens up to probability P (the one crossing P included); 1 keeps all.",
            DefaultValueFactory = static _ => DefaultTopP,
            HelpName = "P",
        };
        Option<ulong?> seed = new("--seed", "-s")
        {
            Description = "Random seed (default: random, printed on stderr).",
            HelpName = "S",
        };
        Option<string?> pattern = new("--pattern")
        {
            Description = "DSA checkpoints: the IndexCache pattern to run (F/S per layer, e.g. FSFSS, or a file holding one, as written by indexcache calibrate -o).",
            HelpName = "FS..|FILE",
        };
        Option<int?> attentionResiduals = new("--attn-res-blocks")
        {
            Description = "Run with Block Attention Residuals over N blocks of the 2 x n_layers sublayers (cpu only; queries zero, gains one: the checkpoint's own function up to the norm epsilon).",
            HelpName = "N",
        };
        Option<string> device = CommonOptions.Device();
        Option<int?> threads = CommonOptions.Threads();

        Command command = new("generate", "Continue a prompt: prints the prompt, then streams new text.")
        {
            model, tokenizer, prompt, count, temperature, topK, topP, seed, pattern, attentionResiduals, device, threads,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () => Execute(
            context,
            new Request(
                parse.GetValue(model),
                parse.GetValue(tokenizer),
                parse.GetValue(prompt) ?? string.Empty,
                parse.GetValue(count),
                parse.GetValue(temperature),
                parse.GetValue(topK),
                parse.GetValue(topP),
                parse.GetValue(seed),
                parse.GetValue(pattern),
                parse.GetValue(attentionResiduals),
                parse.GetValue(device) ?? "cpu",
                parse.GetValue(threads),
                parse.GetValue(context.Verbose)))));
        return command;
    }

    private static int Execute(CliContext context, Request request)
    {
        // Check every flag before touching a file.
        CheckSampling(request.Temperature, request.TopK, request.TopP);
        CommonOptions.CheckThreads(request.Threads);
        if (request.MaxNewTokens < -1)
        {
            throw new CliException($"-n {request.MaxNewTokens}: the number of new tokens must be >= 0, or -1 to generate until the end token or a full context.");
        }

        // Read the header and the tokenizer (both small) and check that the prompt fits before loading weights.
        string modelPath = ModelFiles.ResolveModel(request.Model, context.Environment);
        bool dsa = DsaCheckpoint.IsDsaCheckpoint(modelPath);
        if (!dsa && request.Pattern is not null)
        {
            throw new CliException($"--pattern: {Path.GetFileName(modelPath)} is a dense model; an IndexCache pattern applies to DSA checkpoints only (made by kiln indexcache fit).");
        }

        using DsaWeights? dsaWeights = dsa ? DsaCheckpoint.Load(modelPath) : null;
        if (dsaWeights is not null && request.Pattern is not null)
        {
            ApplyPattern(dsaWeights, request.Pattern);
        }

        LlamaModelFile? modelFile = dsa ? null : LlamaModelFile.Open(modelPath);
        LlamaConfig config = dsaWeights?.Config.Llama ?? modelFile!.Config;
        AttentionResidualsConfig? residuals = CheckAttentionResiduals(request, dsa, config);
        ITokenizer tokenizer;
        string tokenizerPath;
        if (modelFile is not null)
        {
            (tokenizer, tokenizerPath) = modelFile.LoadTokenizer(request.Tokenizer);
        }
        else
        {
            tokenizerPath = ModelFiles.ResolveTokenizer(request.Tokenizer, modelPath, config.VocabSize);
            tokenizer = Llama2cTokenizer.Load(tokenizerPath, config.VocabSize);
        }

        int[] promptTokens = tokenizer.Encode(request.Prompt, bos: true);
        int usableContext = Math.Min(config.SeqLen, LlamaSession.MaxContextLength);
        if (promptTokens.Length > usableContext)
        {
            throw new CliException($"-p: the prompt is {promptTokens.Length} tokens (BOS included) but the model's context holds {usableContext}; shorten the prompt.");
        }

        // Load the weights on the device and set up the session, sampler and generator.
        using Device device = CommonOptions.CreateDevice(request.Device, request.Threads, context.Stderr);
        using DsaWeights? dsaOnDevice = dsaWeights is not null && device is not CpuDevice ? dsaWeights.To(device) : null;
        if (residuals is not null && device is not CpuDevice)
        {
            throw new CliException($"--attn-res-blocks runs on the cpu device only, not {device.Name}; use --device cpu.");
        }

        using LlamaWeights? weights = modelFile?.Load(device, residuals);
        // The session holds only the positions this run can use: the prompt and -n new tokens (all of seq_len for
        // -1), and no more than the fast session runs.
        int contextLength = request.MaxNewTokens < 0
            ? config.SeqLen
            : (int)Math.Min(config.SeqLen, (long)promptTokens.Length + request.MaxNewTokens);
        contextLength = Math.Min(contextLength, usableContext);
        SessionOptions sessionOptions = new() { ContextLength = contextLength };
        using IInferenceSession session = dsaWeights is not null
            ? new DsaSession(dsaOnDevice ?? dsaWeights, sessionOptions)
            : InferenceSessions.Default(weights!, sessionOptions);
        ulong seed = request.Seed ?? RandomSeed();
        SamplerOptions sampling = new()
        {
            Temperature = request.Temperature,
            TopK = request.TopK,
            TopP = request.TopP,
            Seed = seed,
        };
        TextGenerator generator = new(session, tokenizer, new Sampler(config.VocabSize, sampling));
        generator.TextGenerated += piece =>
        {
            context.Stdout.Write(piece);
            context.Stdout.Flush();
        };
        generator.Note += note => context.Stderr.WriteLine($"kiln: {note}");

        // Say what runs, then print the prompt and stream the continuation.
        TextWriter err = context.Stderr;
        string container = dsaWeights is null
            ? modelFile!.Container
            : $"DSA safetensors (K {dsaWeights.Config.TopK}, pattern {dsaWeights.Config.Pattern})";
        string sessionName = dsaWeights is null ? InferenceSessions.DefaultNameOn(device) : "dsa";
        err.WriteLine(Invariant($"kiln: {Path.GetFileName(modelPath)}: {container}, {config.ParameterCount:N0} parameters, context {config.SeqLen}, vocab {config.VocabSize}; {CommonOptions.Describe(device)}, {sessionName} session"));
        if (residuals is not null)
        {
            err.WriteLine($"kiln: Block Attention Residuals over {residuals.Blocks} blocks of the {2 * config.Layers} sublayers (queries zero, gains one)");
        }

        err.WriteLine(Invariant($"kiln: sampling: {DescribeSampling(sampling)}"));
        if (request.Verbose)
        {
            err.WriteLine($"kiln: tokenizer {tokenizerPath}; prompt {Tokens(promptTokens.Length)}: {string.Join(' ', promptTokens)}");
        }

        context.Stdout.Write(request.Prompt);
        context.Stdout.Flush();
        GenerationResult result = generator.Generate(promptTokens, request.MaxNewTokens);
        context.Stdout.WriteLine();
        context.Stdout.Flush();

        // Timings last, on stderr.
        err.WriteLine(Invariant($"kiln: prefill {Tokens(result.PromptTokens.Length)} at {result.PrefillTokensPerSecond:F1} tok/s; decode {Tokens(result.DecodeSteps)} at {result.DecodeTokensPerSecond:F1} tok/s; {result.GeneratedTokens.Length} new {(result.GeneratedTokens.Length == 1 ? "token" : "tokens")} ({Describe(result.StopReason)})"));
        return 0;
    }

    private static string Tokens(int count) => count == 1 ? "1 token" : Invariant($"{count} tokens");

    /// <summary>Runs <paramref name="weights"/> with the pattern of --pattern: F/S characters, or a file holding them.</summary>
    private static void ApplyPattern(DsaWeights weights, string value)
    {
        string text = value.Trim();
        if (text.Any(c => c != 'F' && c != 'S') && File.Exists(value))
        {
            text = File.ReadAllText(value).Trim();
        }

        try
        {
            IndexCachePattern parsed = IndexCachePattern.Parse(text, weights.Config.Llama.Layers);
            weights.RequireIndexers(parsed);
            weights.WithPattern(parsed);
        }
        catch (ArgumentException e)
        {
            throw new CliException($"--pattern {value}: {e.Message.Split(" (Parameter")[0]}");
        }
    }

    /// <summary>The option of --attn-res-blocks, or null without the flag.</summary>
    /// <exception cref="CliException">The flag is given for a DSA model or with a block count outside 1..2L.</exception>
    private static AttentionResidualsConfig? CheckAttentionResiduals(Request request, bool dsa, LlamaConfig config)
    {
        if (request.AttentionResidualBlocks is not int blocks)
        {
            return null;
        }

        if (dsa)
        {
            throw new CliException("--attn-res-blocks applies to llama2.c and GGUF llama models; this is a DSA checkpoint.");
        }

        AttentionResidualsConfig option = new() { Blocks = blocks };
        try
        {
            option.Validate(config.Layers);
        }
        catch (ArgumentException e)
        {
            throw new CliException($"--attn-res-blocks {blocks}: {e.Message}");
        }

        return option;
    }

    /// <summary>Checks --temp, --top-k and --top-p.</summary>
    public static void CheckSampling(float temperature, int topK, float topP)
    {
        if (!(temperature >= 0) || !float.IsFinite(temperature))
        {
            throw new CliException(Invariant($"--temp {temperature}: the temperature must be a finite number >= 0; use 0 for greedy decoding or e.g. {DefaultTemperature}."));
        }

        if (topK < 0)
        {
            throw new CliException($"--top-k {topK}: must be >= 0; use e.g. {DefaultTopK}, or 0 to keep every token.");
        }

        if (!(topP > 0 && topP <= 1))
        {
            throw new CliException(Invariant($"--top-p {topP}: must be in (0, 1]; use e.g. {DefaultTopP}, or 1 to keep every token."));
        }
    }

    private static string DescribeSampling(SamplerOptions options) => options.Temperature == 0
        ? "greedy (temp 0)"
        : Invariant($"temp {options.Temperature}, top-k {(options.TopK == 0 ? "off" : options.TopK)}, top-p {(options.TopP >= 1 ? "off" : options.TopP)}, seed {options.Seed}");

    private static string Describe(StopReason reason) => reason switch
    {
        StopReason.StopToken => "end token",
        StopReason.MaxTokens => "-n reached",
        StopReason.ContextFull => "context full",
        _ => reason.ToString(),
    };

    internal static string FormatName(Llama2cFormat format) => format == Llama2cFormat.Legacy ? "legacy" : "version 1";

    private static ulong RandomSeed() => (ulong)Random.Shared.NextInt64(1, long.MaxValue);

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);

    private sealed record Request(
        string? Model,
        string? Tokenizer,
        string Prompt,
        int MaxNewTokens,
        float Temperature,
        int TopK,
        float TopP,
        ulong? Seed,
        string? Pattern,
        int? AttentionResidualBlocks,
        string Device,
        int? Threads,
        bool Verbose);
}
