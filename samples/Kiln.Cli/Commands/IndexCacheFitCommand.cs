// kiln indexcache fit: adds a lightning indexer to every layer of a dense llama2.c checkpoint and fits it to the dense
// model's attention (the KL warm-up of DeepSeek-V3.2), then compares dense, fitted-DSA and random-indexer-DSA on
// held-out text (LM loss, greedy ids) and writes the indexers as safetensors. Training text: --data FILE (tokenized
// with the model's tokenizer) or, without it, stories sampled from the dense model itself at temperature 1 (said on
// stderr). Progress and the comparison go to stderr.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Kiln.Kernels;
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
        Command root = new("indexcache", "DeepSeek sparse attention indexers: fit one to a dense model.");
        root.Subcommands.Add(CreateFit(context));
        return root;
    }

    private static Command CreateFit(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Option<string?> tokenizer = CommonOptions.Tokenizer();
        Option<string?> data = new("--data") { Description = "Training text file (default: text sampled from the model)." };
        Option<int> heads = new("--heads") { Description = "Indexer heads.", DefaultValueFactory = static _ => 4 };
        Option<int> headDim = new("--head-dim") { Description = "Indexer head width.", DefaultValueFactory = static _ => 32 };
        Option<int> ropeDims = new("--rope-dims") { Description = "Rotated leading dims.", DefaultValueFactory = static _ => 16 };
        Option<int> steps = new("--steps") { Description = "Adam steps.", DefaultValueFactory = static _ => 300 };
        Option<float> lr = new("--lr") { Description = "Learning rate.", DefaultValueFactory = static _ => 1e-3f };
        Option<int> window = new("--window") { Description = "Tokens per window.", DefaultValueFactory = static _ => 128 };
        Option<int> topK = new("--top-k") { Description = "K for the comparison.", DefaultValueFactory = static _ => 16 };
        Option<int> seed = new("--seed") { Description = "Seed.", DefaultValueFactory = static _ => 1 };
        Option<string?> output = new("--output", "-o") { Description = "Where to write the indexers (safetensors)." };
        Command command = new("fit", "Fit lightning indexers to a dense model's attention (KL warm-up).")
        {
            model, tokenizer, data, heads, headDim, ropeDims, steps, lr, window, topK, seed, output,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            TextWriter err = context.Stderr;
            string modelPath = ModelFiles.ResolveModel(parse.GetValue(model), context.Environment);
            using LlamaWeights weights = Llama2cCheckpoint.Load(modelPath);
            IndexerFitOptions options = new()
            {
                Heads = parse.GetValue(heads),
                HeadDim = parse.GetValue(headDim),
                RopeDims = parse.GetValue(ropeDims),
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
                string tokPath = ModelFiles.ResolveTokenizer(parse.GetValue(tokenizer), modelPath, weights.Config.VocabSize);
                text = Llama2cTokenizer.Load(tokPath, weights.Config.VocabSize).Encode(File.ReadAllText(dataPath));
                err.WriteLine($"data: {dataPath} ({text.Length} tokens)");
            }
            else
            {
                text = IndexerFitter.SampleText(weights, Math.Max(40 * options.Window, 8192), 1.0f, options.Seed + 7);
                err.WriteLine($"data: {text.Length} tokens of stories sampled from the dense model (temperature 1, seed {options.Seed + 7})");
            }

            int held = Math.Max(text.Length / 10, options.Window);
            if (text.Length < held + options.Window)
            {
                throw new ArgumentException($"the training text has {text.Length} tokens; it needs at least {held + options.Window} (a training window and a held-out window); pass a longer --data file or a shorter --window.");
            }

            int[] train = text[..^held], test = text[^held..];

            // Fit, reporting progress on stderr.
            Stopwatch clock = Stopwatch.StartNew();
            IndexerParameters?[] fitted = IndexerFitter.Fit(weights, train, options, null, progress =>
                err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"step {progress.Step}/{progress.Steps}: KL {progress.MeanLoss:F4} ({string.Join(" ", progress.LayerLosses.Select(l => l.ToString("F3", CultureInfo.InvariantCulture)))})")));
            err.WriteLine(string.Create(CultureInfo.InvariantCulture, $"fit: {clock.Elapsed.TotalSeconds:F1} s"));

            // Compare dense, fitted DSA and random-indexer DSA on held-out windows.
            IndexerShape shape = fitted[0]!.Shape;
            IndexerParameters?[] random = fitted.Select((f, l) => f is null ? null : IndexerParameters.Random(shape, options.Seed + (1000 * l))).ToArray();
            int k = parse.GetValue(topK);
            using IndexerWindowForward forward = new(weights, options.Window);
            double dense = 0, sparse = 0, control = 0, klFitted = 0, klRandom = 0;
            int windows = 0;
            for (int start = 0; start + options.Window <= test.Length; start += options.Window)
            {
                ReadOnlySpan<int> w = test.AsSpan(start, options.Window);
                dense += forward.LanguageModelLoss(w);
                sparse += forward.LanguageModelLoss(w, fitted, k);
                control += forward.LanguageModelLoss(w, random, k);
                klFitted += IndexerFitter.WarmupLoss(weights, w, fitted);
                klRandom += IndexerFitter.WarmupLoss(weights, w, random);
                windows++;
            }

            err.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"held-out ({windows} windows of {options.Window}, K {k}): LM loss dense {dense / windows:F4}, fitted DSA {sparse / windows:F4}, random-indexer DSA {control / windows:F4}; warm-up KL fitted {klFitted / windows:F4}, random {klRandom / windows:F4}"));
            int[] prompt = [1];
            int count = Math.Min(options.Window - 1, 200);
            int[] greedyDense = forward.Greedy(prompt, count);
            int[] greedyFitted = forward.Greedy(prompt, count, fitted, k);
            int[] greedyRandom = forward.Greedy(prompt, count, random, k);
            int first = Math.Min(40, count);
            err.WriteLine($"greedy from BOS, {count} tokens: first {first} ids matching dense: fitted {Matching(greedyDense, greedyFitted, first)}, random {Matching(greedyDense, greedyRandom, first)}; first divergence: fitted {Divergence(greedyDense, greedyFitted)}, random {Divergence(greedyDense, greedyRandom)}");
            err.WriteLine($"dense:  {string.Join(' ', greedyDense.Take(first))}");
            err.WriteLine($"fitted: {string.Join(' ', greedyFitted.Take(first))}");
            err.WriteLine($"random: {string.Join(' ', greedyRandom.Take(first))}");

            string? outPath = parse.GetValue(output);
            if (outPath is not null)
            {
                IndexerCheckpoint.Save(outPath, fitted);
                err.WriteLine($"wrote {outPath}");
            }

            foreach (IndexerParameters? p in fitted.Concat(random))
            {
                p?.Dispose();
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
