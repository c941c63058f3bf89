// kiln indexcache fit: adds a lightning indexer to every layer of a dense llama2.c checkpoint and fits it to the dense
// model's attention (the KL warm-up of DeepSeek-V3.2), then compares dense, fitted-DSA and random-indexer-DSA on
// held-out text (LM loss and greedy ids through LlamaSession / DsaSession) and writes a DSA checkpoint (dense weights,
// fitted indexers, config) that DsaCheckpoint loads and `kiln generate` runs. Training text: --data FILE (tokenized
// with the model's tokenizer) or, without it, stories sampled from the dense model itself at temperature 1 (said on
// stderr). Progress and the comparison go to stderr.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Kiln.Models;
using Kiln.Models.Dsa;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Tokenizers;

namespace Kiln.Cli.Commands;

/// <summary>The <c>indexcache</c> command and its <c>fit</c> subcommand.</summary>
internal static class IndexCacheFitCommand
{
    /// <summary>Builds <c>indexcache</c> with <c>fit</c>.</summary>
    public static Command Create(CliContext context)
    {
        Command root = new("indexcache", "DeepSeek sparse attention indexers: fit them to a dense model, calibrate an IndexCache pattern.");
        root.Subcommands.Add(CreateFit(context));
        root.Subcommands.Add(CreateCalibrate(context));
        return root;
    }

    private static Command CreateFit(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Option<string?> tokenizer = CommonOptions.Tokenizer();
        Option<string?> data = new("--data") { HelpName = "FILE", Description = "Training text file (default: text sampled from the model)." };
        Option<int> heads = new("--heads") { Description = "Indexer heads.", DefaultValueFactory = static _ => 4 };
        Option<int> headDim = new("--head-dim") { Description = "Indexer head width.", DefaultValueFactory = static _ => 32 };
        Option<int> ropeDims = new("--rope-dims") { Description = "Rotated leading dims.", DefaultValueFactory = static _ => 16 };
        Option<int> steps = new("--steps") { Description = "Adam steps.", DefaultValueFactory = static _ => 1000 };
        Option<float> lr = new("--lr") { Description = "Learning rate.", DefaultValueFactory = static _ => 1e-3f };
        Option<int> window = new("--window") { Description = "Tokens per window.", DefaultValueFactory = static _ => 128 };
        Option<int> topK = new("--top-k") { Description = "K for the comparison.", DefaultValueFactory = static _ => 16 };
        Option<int> seed = new("--seed") { Description = "Seed.", DefaultValueFactory = static _ => 1 };
        Option<string?> pattern = new("--pattern") { Description = "IndexCache pattern, one F/S per layer (default: all F)." };
        Option<string?> output = new("--output", "-o") { HelpName = "FILE", Description = "Where to write the DSA checkpoint (.safetensors)." };
        Command command = new("fit", "Fit lightning indexers to a dense model's attention (KL warm-up); write a DSA checkpoint.")
        {
            model, tokenizer, data, heads, headDim, ropeDims, steps, lr, window, topK, seed, pattern, output,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            TextWriter err = context.Stderr;
            string modelPath = ModelFiles.ResolveModel(parse.GetValue(model), context.Environment);
            string? outPath = parse.GetValue(output);
            if (outPath is not null && !outPath.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            {
                throw new CliException($"-o {outPath}: DSA checkpoints are safetensors files; give the output a .safetensors name.");
            }

            // The DSA model: the dense weights (owned by it from here) with the indexer sizes, K and pattern.
            LlamaWeights dense = Llama2cCheckpoint.Load(modelPath);
            DsaConfig config;
            try
            {
                string? patternText = parse.GetValue(pattern);
                config = new DsaConfig
                {
                    Llama = dense.Config,
                    IndexerHeads = parse.GetValue(heads),
                    IndexerHeadDim = parse.GetValue(headDim),
                    IndexerRopeDims = parse.GetValue(ropeDims),
                    TopK = parse.GetValue(topK),
                    Pattern = patternText is null
                        ? IndexCachePattern.AllFull(dense.Config.Layers)
                        : IndexCachePattern.Parse(patternText, dense.Config.Layers),
                };
                config.Validate();
            }
            catch
            {
                dense.Dispose();
                throw;
            }

            using DsaWeights weights = new(config, dense);
            IndexerFitOptions options = new()
            {
                Steps = parse.GetValue(steps),
                LearningRate = parse.GetValue(lr),
                Window = parse.GetValue(window),
                Seed = parse.GetValue(seed),
            };

            // Training and held-out text: the file's tokens, or stories sampled from the dense model.
            int[] text;
            string? dataPath = parse.GetValue(data);
            if (dataPath is not null)
            {
                string tokPath = ModelFiles.ResolveTokenizer(parse.GetValue(tokenizer), modelPath, config.Llama.VocabSize);
                text = Llama2cTokenizer.Load(tokPath, config.Llama.VocabSize).Encode(File.ReadAllText(dataPath));
                err.WriteLine($"data: {dataPath} ({text.Length} tokens)");
            }
            else
            {
                text = IndexerFitter.SampleText(dense, Math.Max(40 * options.Window, 8192), 1.0f, options.Seed + 7);
                err.WriteLine($"data: {text.Length} tokens of stories sampled from the dense model (temperature 1, seed {options.Seed + 7})");
            }

            int held = Math.Max(text.Length / 10, options.Window);
            if (text.Length < held + options.Window)
            {
                throw new CliException($"the training text has {text.Length} tokens; it needs at least {held + options.Window} (a training window and a held-out window); pass a longer --data file or a shorter --window.");
            }

            int[] train = text[..^held];
            IReadOnlyList<int[]> test = IndexCacheCalibration.TextWindows(text[^held..], options.Window, int.MaxValue);
            int[] prompt = [1];
            int count = Math.Min(options.Window - 1, 200);
            SessionOptions sessionOptions = new() { ContextLength = options.Window };

            // The baselines first: the dense model, and DSA with seeded random (unfitted) indexers.
            double dense0;
            int[] greedyDense;
            using (LlamaSession session = new(dense, sessionOptions))
            {
                dense0 = test.Average(w => SessionEvaluation.LanguageModelLoss(session, w));
                greedyDense = SessionEvaluation.Greedy(session, prompt, count);
            }

            weights.AddRandomIndexers((ulong)options.Seed);
            (double control, double klRandom, int[] greedyRandom) = EvaluateDsa(weights, test, sessionOptions, prompt, count);

            // Fit, reporting progress on stderr.
            Stopwatch clock = Stopwatch.StartNew();
            IndexerFitter.Fit(weights, train, options, null, progress =>
                err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"step {progress.Step}/{progress.Steps}: KL {progress.MeanLoss:F4} ({string.Join(" ", progress.LayerLosses.Select(l => l.ToString("F3", CultureInfo.InvariantCulture)))})")));
            err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"fit: {clock.Elapsed.TotalSeconds:F1} s"));
            (double sparse, double klFitted, int[] greedyFitted) = EvaluateDsa(weights, test, sessionOptions, prompt, count);

            // The comparison on held-out windows, then greedy continuations from BOS.
            err.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"held-out ({test.Count} windows of {options.Window}, K {config.TopK}, pattern {config.Pattern}): LM loss dense {dense0:F4}, fitted DSA {sparse:F4}, random-indexer DSA {control:F4}; warm-up KL fitted {klFitted:F4}, random {klRandom:F4}"));
            int first = Math.Min(40, Math.Min(greedyDense.Length, Math.Min(greedyFitted.Length, greedyRandom.Length)));
            err.WriteLine($"greedy from BOS, {count} tokens: first {first} ids matching dense: fitted {Matching(greedyDense, greedyFitted, first)}, random {Matching(greedyDense, greedyRandom, first)}; first divergence: fitted {Divergence(greedyDense, greedyFitted)}, random {Divergence(greedyDense, greedyRandom)}");
            err.WriteLine($"dense:  {string.Join(' ', greedyDense.Take(first))}");
            err.WriteLine($"fitted: {string.Join(' ', greedyFitted.Take(first))}");
            err.WriteLine($"random: {string.Join(' ', greedyRandom.Take(first))}");

            if (outPath is not null)
            {
                DsaCheckpoint.Save(weights, outPath);
                err.WriteLine($"wrote {outPath} (dense weights, {config.Pattern.FullCount} fitted indexers, DSA config)");
            }

            return 0;
        }));
        return command;
    }

    // LM loss and warm-up KL over the windows, and a greedy continuation, of the DSA model as it stands.
    private static (double Loss, double Kl, int[] Greedy) EvaluateDsa(
        DsaWeights weights, IReadOnlyList<int[]> windows, SessionOptions options, int[] prompt, int count)
    {
        using DsaSession session = new(weights, options);
        double loss = windows.Average(w => SessionEvaluation.LanguageModelLoss(session, w));
        double kl = windows.Average(w => IndexerFitter.WarmupLoss(weights, w));
        return (loss, kl, SessionEvaluation.Greedy(session, prompt, count));
    }

    // kiln indexcache calibrate: the greedy IndexCache search on a DSA checkpoint; one progress line per step on stderr,
    // the pattern to -o or stdout.
    private static Command CreateCalibrate(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Option<string?> tokenizer = CommonOptions.Tokenizer();
        Option<double> keep = new("--keep") { Description = "Share of layers that keep their indexer, in (0, 1].", DefaultValueFactory = static _ => 0.25 };
        Option<string?> data = new("--data") { HelpName = "FILE", Description = "Calibration text (LM loss); without it, or with --random, KL to all-F on random windows." };
        Option<bool> random = new("--random") { Description = "KL to the all-F model on seeded random token windows (random-weight models)." };
        Option<int> window = new("--window") { Description = "Tokens per calibration window (default: min(seq_len, 64)).", DefaultValueFactory = static _ => 0 };
        Option<int> windows = new("--windows") { Description = "Calibration windows.", DefaultValueFactory = static _ => 4 };
        Option<int> seed = new("--seed") { Description = "Seed of the random windows.", DefaultValueFactory = static _ => 1 };
        Option<string?> output = new("--output", "-o") { HelpName = "FILE", Description = "Where to write the pattern (default: stdout)." };
        Command command = new("calibrate", "Greedy IndexCache search: which layers keep their indexer at a given keep ratio.")
        {
            model, tokenizer, keep, data, random, window, windows, seed, output,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // Check the flags, then the model.
            double keepRatio = parse.GetValue(keep);
            if (!(keepRatio > 0 && keepRatio <= 1))
            {
                throw new CliException(string.Create(CultureInfo.InvariantCulture, $"--keep {keepRatio}: the share of indexers to keep must be in (0, 1]; e.g. 0.25 keeps a quarter."));
            }

            if (parse.GetValue(windows) < 1)
            {
                throw new CliException($"--windows {parse.GetValue(windows)}: pass at least 1 calibration window.");
            }

            string modelPath = ModelFiles.ResolveModel(parse.GetValue(model), context.Environment);
            if (!DsaCheckpoint.IsDsaCheckpoint(modelPath))
            {
                throw new CliException($"-m {modelPath}: not a Kiln DSA checkpoint (a .safetensors file with kiln-dsa metadata); calibrate runs on DSA models, make one with `kiln indexcache fit -o MODEL.safetensors`.");
            }

            using DsaWeights weights = DsaCheckpoint.Load(modelPath);
            LlamaConfig llama = weights.Config.Llama;
            if (weights.Indexers.Any(indexer => indexer is null))
            {
                throw new CliException($"-m {modelPath}: pattern {weights.Config.Pattern} leaves some layers without an indexer; the search starts all-F and needs an indexer in every layer (fit with the default all-F pattern).");
            }

            int length = parse.GetValue(window) > 0 ? parse.GetValue(window) : Math.Min(llama.SeqLen, 64);
            if (length < 2 || length > llama.SeqLen)
            {
                throw new CliException($"--window {length}: must be within 2..{llama.SeqLen} (the model's seq_len).");
            }

            // The objective: LM loss on the text's windows, or KL to all-F on random windows.
            TextWriter err = context.Stderr;
            string? dataPath = parse.GetValue(data);
            Func<DsaWeights, double> loss;
            if (dataPath is not null && !parse.GetValue(random))
            {
                string tokPath = ModelFiles.ResolveTokenizer(parse.GetValue(tokenizer), modelPath, llama.VocabSize);
                int[] text = Llama2cTokenizer.Load(tokPath, llama.VocabSize).Encode(File.ReadAllText(dataPath), bos: true);
                if (text.Length < length)
                {
                    throw new CliException($"--data {dataPath}: the calibration text is {text.Length} tokens, shorter than one window of {length}; pass a longer text or a shorter --window.");
                }

                IReadOnlyList<int[]> textWindows = IndexCacheCalibration.TextWindows(text, length, parse.GetValue(windows));
                err.WriteLine($"calibrate: LM loss on {textWindows.Count} windows of {length} tokens of {dataPath}, keep {keepRatio.ToString(CultureInfo.InvariantCulture)}");
                loss = IndexCacheCalibration.LanguageModelLoss(textWindows);
            }
            else
            {
                IReadOnlyList<int[]> randomWindows = IndexCacheCalibration.RandomWindows(llama.VocabSize, length, parse.GetValue(windows), (ulong)parse.GetValue(seed));
                err.WriteLine($"calibrate: KL to the all-F model on {randomWindows.Count} random windows of {length} tokens (seed {parse.GetValue(seed)}), keep {keepRatio.ToString(CultureInfo.InvariantCulture)}");
                loss = IndexCacheCalibration.DivergenceFromAllFull(weights, randomWindows);
            }

            // The search, one line per switched layer; then the uniform pattern's loss for comparison.
            IndexCachePattern found = IndexCacheCalibration.Search(weights, keepRatio, loss, step =>
                err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"flip layer {step.Layer}: loss {step.Loss:F6} pattern {step.Pattern}")));
            IndexCachePattern uniform = IndexCachePattern.FromKeepRatio(llama.Layers, keepRatio);
            weights.WithPattern(uniform);
            err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"uniform {uniform}: loss {loss(weights):F6}"));
            string? outPath = parse.GetValue(output);
            if (outPath is null)
            {
                context.Stdout.WriteLine(found.ToString());
            }
            else
            {
                File.WriteAllText(outPath, found + Environment.NewLine);
                err.WriteLine($"wrote {outPath}");
            }

            return 0;
        }));
        return command;
    }

    private static int Matching(int[] a, int[] b, int count) => Enumerable.Range(0, count).Count(i => a[i] == b[i]);

    private static int Divergence(int[] a, int[] b)
    {
        int i = 0;
        while (i < a.Length && i < b.Length && a[i] == b[i])
        {
            i++;
        }

        return i;
    }
}
