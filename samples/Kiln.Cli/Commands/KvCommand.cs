// kiln kv eval: how much KV-cache compression after the prompt costs in accuracy, on a llama2.c model and real text.
// For each sequence of --prefill + --continue tokens: prefill the first --prefill tokens, compress every layer's cache to
// each budget with each method (StreamingLLM, SnapKV without and with the 5-wide pool, ChunkKV per chunk size, ChunkKV
// with layer-wise index reuse), then teacher-force the next --continue tokens one at a time. Against the same run with
// the full cache: the mean negative log-likelihood of the --continue target tokens, the mean KL(full ‖ compressed) of the
// next-token distributions, the top-1 agreement, and the mean Jaccard similarity of the kept positions of adjacent layers
// (positions before the window, which every layer keeps). The first target is predicted by the prefill itself, before
// compression, so it is the same for every method; the other --continue − 1 read the compressed cache.
// Text: --data FILE, or the built-in stories (samples/Kiln.Cli/Data/stories.txt, written for this purpose); stories are
// separated by lines holding only "---", and each gives two sequences: its first and its last tokens (BOS first).
using System.CommandLine;
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using Kiln.Models;
using Kiln.Models.Formats;
using Kiln.Models.KvCompression;
using Kiln.Models.Llama;
using Kiln.Models.Tokenizers;

namespace Kiln.Cli.Commands;

/// <summary>The <c>kv</c> command and its <c>eval</c> subcommand.</summary>
internal static class KvCommand
{
    /// <summary>The budget rule, as the flags describe it.</summary>
    internal const string BudgetHelp =
        "tokens kept per layer, the observation window included: a whole number is tokens, a number in (0, 1) the fraction of the prompt kept";

    /// <summary>Builds <c>kv</c> with <c>eval</c>.</summary>
    public static Command Create(CliContext context)
    {
        Command root = new("kv", "KV-cache compression after the prompt (ChunkKV, SnapKV, StreamingLLM).");
        root.Subcommands.Add(CreateEval(context));
        return root;
    }

    private static Command CreateEval(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Option<string?> tokenizer = CommonOptions.Tokenizer();
        Option<string?> data = new("--data") { HelpName = "FILE", Description = "UTF-8 text; stories separated by lines holding only ---, each at least --prefill + --continue tokens (default: the built-in stories)." };
        Option<int> prefill = new("--prefill") { Description = "Prompt tokens before compression.", DefaultValueFactory = static _ => 448 };
        Option<int> next = new("--continue") { Description = "Tokens teacher-forced after compression.", DefaultValueFactory = static _ => 64 };
        Option<string[]> budgets = new("--kv-budget")
        {
            Description = $"Budgets ({BudgetHelp}); repeat the flag or separate with spaces.",
            DefaultValueFactory = static _ => ["32", "64", "128", "224"],
            AllowMultipleArgumentsPerToken = true,
        };
        Option<int[]> chunks = new("--chunk")
        {
            Description = "ChunkKV chunk sizes.",
            DefaultValueFactory = static _ => [4, 8, 16],
            AllowMultipleArgumentsPerToken = true,
        };
        Option<int> window = new("--window") { Description = "Observation window w (kept, inside the budget).", DefaultValueFactory = static _ => 16 };
        Option<int> reuse = new("--reuse") { Description = "Layer-wise index reuse group N for the reuse rows.", DefaultValueFactory = static _ => 2 };
        Option<int> sinks = new("--sinks") { Description = "StreamingLLM's sink tokens.", DefaultValueFactory = static _ => 4 };
        Option<int?> threads = CommonOptions.Threads();
        Option<bool> json = new("--json") { Description = "Print one JSON object per method and budget." };
        Command command = new("eval", "Accuracy of KV compression on real text: loss, KL to the full cache, top-1 agreement, adjacent-layer Jaccard.")
        {
            model, tokenizer, data, prefill, next, budgets, chunks, window, reuse, sinks, threads, json,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // Check the flags.
            int prompt = parse.GetValue(prefill), forced = parse.GetValue(next), w = parse.GetValue(window);
            int group = parse.GetValue(reuse), sinkCount = parse.GetValue(sinks);
            int[] chunkSizes = parse.GetValue(chunks) ?? [];
            KvBudget[] budgetList = [.. (parse.GetValue(budgets) ?? []).Select(ParseBudget)];
            if (budgetList.Length == 0 || chunkSizes.Length == 0)
            {
                throw new CliException("--kv-budget and --chunk need at least one value each.");
            }

            if (prompt < 2 || forced < 1)
            {
                throw new CliException($"--prefill {prompt} --continue {forced}: the prompt needs at least 2 tokens and the continuation at least 1.");
            }

            int? threadCount = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadCount);
            string? dataPath = parse.GetValue(data);
            if (dataPath is not null && !File.Exists(dataPath))
            {
                throw new CliException($"--data {dataPath}: the file does not exist; give a UTF-8 text file.");
            }

            // The methods, each checked against every budget before any work.
            List<(string Name, Func<KvBudget, KvCompressionOptions> Make)> methods =
            [
                ("streamingllm", b => KvCompressionOptions.StreamingLlm(b, sinkCount, w)),
                ("snapkv", b => KvCompressionOptions.SnapKv(b, 1, w)),
                ("snapkv-pool5", b => KvCompressionOptions.SnapKv(b, 5, w)),
            ];
            foreach (int c in chunkSizes)
            {
                methods.Add(($"chunkkv-c{c}", b => KvCompressionOptions.ChunkKv(b, c, 1, w)));
            }

            foreach (int c in chunkSizes)
            {
                methods.Add(($"chunkkv-c{c}-reuse{group}", b => KvCompressionOptions.ChunkKv(b, c, group, w)));
            }

            foreach ((string name, Func<KvBudget, KvCompressionOptions> make) in methods)
            {
                foreach (KvBudget b in budgetList)
                {
                    KvCompressionOptions options;
                    try
                    {
                        options = make(b);
                        options.Validate();
                    }
                    catch (ArgumentException e)
                    {
                        throw new CliException($"--kv-budget {b} ({name}): {KilnCli.OneLine(e.Message)}");
                    }

                    // A fraction is checked here against the --prefill prompt, before the full-cache pass.
                    if (b.IsFraction && b.TokensFor(prompt) < options.MinimumBudget)
                    {
                        throw new CliException(
                            $"--kv-budget {b} ({name}): keeps {b.TokensFor(prompt)} of the {prompt} prompt tokens, below the "
                            + $"{options.MinimumBudget} this method needs; give a larger fraction, a larger --prefill or a smaller --window.");
                    }
                }
            }

            // The model, the tokenizer and the sequences.
            string modelPath = ModelFiles.ResolveModel(parse.GetValue(model), context.Environment);
            LlamaModelFile file = LlamaModelFile.Open(modelPath);
            if (prompt + forced > file.Config.SeqLen)
            {
                throw new CliException($"--prefill {prompt} --continue {forced}: {prompt + forced} tokens exceed the model's seq_len {file.Config.SeqLen}.");
            }

            (ITokenizer tok, _) = file.LoadTokenizer(parse.GetValue(tokenizer));
            string text = dataPath is null ? BuiltInStories() : ReadText(dataPath);
            List<int[]> sequences = Sequences(text, tok, prompt + forced);
            if (sequences.Count == 0)
            {
                throw new CliException($"{(dataPath ?? "the built-in stories")}: no story has {prompt + forced} tokens; give longer stories or lower --prefill/--continue.");
            }

            using Kiln.Devices.Device device = Kiln.Devices.Device.Create("cpu", threadCount);
            using LlamaWeights weights = file.Load(device);
            context.Stderr.WriteLine($"kv eval: {sequences.Count} sequences of {prompt} + {forced} tokens, window {w}, {methods.Count} methods × {budgetList.Length} budgets");
            IReadOnlyList<KvEvalRow> rows = Evaluate(weights, sequences, prompt, methods, budgetList);
            Write(rows, parse.GetValue(json), context.Stdout);
            return 0;
        }));
        return command;
    }

    /// <summary>The --data file as UTF-8 text; a binary or otherwise non-UTF-8 file is a usage error.</summary>
    private static string ReadText(string path)
    {
        try
        {
            return File.ReadAllText(path, new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true));
        }
        catch (System.Text.DecoderFallbackException)
        {
            throw new CliException($"--data {path}: is not UTF-8 text (a binary file?); give a UTF-8 text file.");
        }
    }

    private static KvBudget ParseBudget(string text)
    {
        try
        {
            return KvBudget.Parse(text);
        }
        catch (FormatException e)
        {
            throw new CliException($"--kv-budget {text}: {e.Message}");
        }
    }

    /// <summary>One method at one budget, averaged over the sequences.</summary>
    internal sealed record KvEvalRow(
        string Method, string Budget, double Kept, double Nll, double FullNll, double Kl, double Top1, double Jaccard, double CompressMs);

    /// <summary>Runs every method at every budget over the sequences (see the file header).</summary>
    internal static IReadOnlyList<KvEvalRow> Evaluate(
        LlamaWeights weights,
        IReadOnlyList<int[]> sequences,
        int prompt,
        IReadOnlyList<(string Name, Func<KvBudget, KvCompressionOptions> Make)> methods,
        IReadOnlyList<KvBudget> budgets)
    {
        // The full cache's log-probabilities of every continuation step, per sequence.
        SessionOptions options = new() { ContextLength = sequences[0].Length };
        List<double[][]> full = [];
        using (LlamaSession session = new(weights, options))
        {
            foreach (int[] tokens in sequences)
            {
                session.Reset();
                full.Add(Continue(session, tokens, prompt));
            }
        }

        double fullNll = sequences.Select((tokens, i) => Nll(full[i], tokens, prompt)).Average();
        List<KvEvalRow> rows = [];
        foreach ((string name, Func<KvBudget, KvCompressionOptions> make) in methods)
        {
            foreach (KvBudget budget in budgets)
            {
                using KvCompressedSession session = new(weights, options, make(budget));
                double nll = 0, kl = 0, top1 = 0, jaccard = 0, kept = 0, ms = 0;
                for (int i = 0; i < sequences.Count; i++)
                {
                    // Prefill (the session compresses at its end), note what each layer kept, then teacher-force.
                    session.Reset();
                    double[][] logProbs = Continue(session, sequences[i], prompt, (s, compression) =>
                    {
                        kept += compression.Kept.Average();
                        ms += compression.Elapsed.TotalMilliseconds;
                        jaccard += AdjacentJaccard(s, prompt - s.Compression.Window);
                    });
                    nll += Nll(logProbs, sequences[i], prompt);
                    for (int step = 0; step < logProbs.Length; step++)
                    {
                        kl += Kl(full[i][step], logProbs[step]) / logProbs.Length;
                        top1 += (ArgMax(full[i][step]) == ArgMax(logProbs[step]) ? 1.0 : 0.0) / logProbs.Length;
                    }
                }

                int n = sequences.Count;
                rows.Add(new KvEvalRow(name, budget.ToString(), kept / n, nll / n, fullNll, kl / n, top1 / n, jaccard / n, ms / n));
            }
        }

        return rows;
    }

    // Prefill tokens[..prompt], then feed the rest one at a time; the log-probabilities after the prompt and after each
    // fed token but the last, one per target tokens[prompt..].
    private static double[][] Continue(
        IInferenceSession session, int[] tokens, int prompt, Action<KvCompressedSession, KvCompressionResult>? compressed = null)
    {
        double[][] result = new double[tokens.Length - prompt][];
        result[0] = LogSoftmax(session.Forward(tokens.AsSpan(0, prompt)));
        if (session is KvCompressedSession kv && compressed is not null)
        {
            compressed(kv, kv.LastCompression!);
        }

        for (int i = prompt; i < tokens.Length - 1; i++)
        {
            result[i - prompt + 1] = LogSoftmax(session.Forward(tokens.AsSpan(i, 1)));
        }

        return result;
    }

    private static double AdjacentJaccard(KvCompressedSession session, int prefix)
    {
        int layers = session.Config.Layers;
        if (layers < 2)
        {
            return 1;
        }

        double sum = 0;
        for (int l = 1; l < layers; l++)
        {
            int[] a = [.. session.KeptPositions(l - 1).Where(p => p < prefix)];
            int[] b = [.. session.KeptPositions(l).Where(p => p < prefix)];
            sum += KvSelection.Jaccard(a, b);
        }

        return sum / (layers - 1);
    }

    private static double Nll(double[][] logProbs, int[] tokens, int prompt) =>
        -logProbs.Select((row, i) => row[tokens[prompt + i]]).Average();

    // KL(p ‖ q) from log-probabilities.
    private static double Kl(double[] logP, double[] logQ)
    {
        double sum = 0;
        for (int i = 0; i < logP.Length; i++)
        {
            sum += Math.Exp(logP[i]) * (logP[i] - logQ[i]);
        }

        return Math.Max(0, sum);
    }

    private static int ArgMax(double[] values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++)
        {
            best = values[i] > values[best] ? i : best;
        }

        return best;
    }

    private static double[] LogSoftmax(ReadOnlySpan<float> logits)
    {
        double max = double.NegativeInfinity;
        foreach (float v in logits)
        {
            max = Math.Max(max, v);
        }

        double sum = 0;
        foreach (float v in logits)
        {
            sum += Math.Exp(v - max);
        }

        double log = max + Math.Log(sum);
        double[] result = new double[logits.Length];
        for (int i = 0; i < logits.Length; i++)
        {
            result[i] = logits[i] - log;
        }

        return result;
    }

    // Stories separated by "---" lines; each long enough gives its first and its last `length` tokens (BOS first).
    internal static List<int[]> Sequences(string text, ITokenizer tokenizer, int length)
    {
        List<int[]> sequences = [];
        string[] stories = text.ReplaceLineEndings("\n").Split("\n---\n", StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (string story in stories)
        {
            int[] ids = tokenizer.Encode(story.Replace('\n', ' '), bos: true);
            if (ids.Length < length)
            {
                continue;
            }

            sequences.Add(ids[..length]);
            if (ids.Length >= length + (length / 4))
            {
                sequences.Add([ids[0], .. ids[(ids.Length - length + 1)..]]);
            }
        }

        return sequences;
    }

    /// <summary>The built-in stories (samples/Kiln.Cli/Data/stories.txt, embedded in the program).</summary>
    internal static string BuiltInStories()
    {
        using Stream stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("Kiln.Cli.Data.stories.txt")
            ?? throw new CliException("the built-in stories are missing from this build; pass --data FILE.");
        using StreamReader reader = new(stream);
        return reader.ReadToEnd();
    }

    private static void Write(IReadOnlyList<KvEvalRow> rows, bool json, TextWriter stdout)
    {
        if (!json)
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"full cache: nll {rows[0].FullNll:F4}"));
            stdout.WriteLine($"{"method",-22} {"budget",6} {"kept",6} {"nll",7} {"Δnll",7} {"KL",8} {"top1",6} {"jaccard",7} {"ms",6}");
            foreach (KvEvalRow r in rows)
            {
                stdout.WriteLine(string.Create(
                    CultureInfo.InvariantCulture,
                    $"{r.Method,-22} {r.Budget,6} {r.Kept,6:F1} {r.Nll,7:F4} {r.Nll - r.FullNll,7:F4} {r.Kl,8:F5} {r.Top1,6:F3} {r.Jaccard,7:F3} {r.CompressMs,6:F2}"));
            }

            return;
        }

        foreach (KvEvalRow r in rows)
        {
            using MemoryStream buffer = new();
            using (Utf8JsonWriter writer = new(buffer))
            {
                writer.WriteStartObject();
                writer.WriteString("method", r.Method);
                writer.WriteString("budget", r.Budget);
                writer.WriteNumber("kept", Math.Round(r.Kept, 1));
                writer.WriteNumber("nll", Math.Round(r.Nll, 5));
                writer.WriteNumber("full_nll", Math.Round(r.FullNll, 5));
                writer.WriteNumber("kl", Math.Round(r.Kl, 6));
                writer.WriteNumber("top1", Math.Round(r.Top1, 4));
                writer.WriteNumber("jaccard", Math.Round(r.Jaccard, 4));
                writer.WriteNumber("compress_ms", Math.Round(r.CompressMs, 3));
                writer.WriteEndObject();
            }

            stdout.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.ToArray()));
        }
    }
}
