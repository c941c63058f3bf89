// `kiln bench peer`: Kiln against llama.cpp on the same GGUF files, in the same process and run, with the same thread
// count. The files are Llama-shaped models with random weights that Kiln writes (the vocabulary of 512 is the stories
// tokenizer's, so the files carry a real SentencePiece vocabulary): 15M (dim 288, 6 layers, 6 heads, F 768) and 110M
// (dim 768, 12 layers, 12 heads, F 2048), each as F32 and as Q8_0 (every matrix, token_embd included, as llama.cpp's
// Q8_0 files have it). Weights are uniform with standard deviation 0.02, norms 1, so activations stay in range.
//
// Per model and dtype: prefill = one call over a prompt of 256 tokens (BOS then fixed random ids), decode = 128 greedy
// steps after it, each token fed back alone. Both engines run a warm-up and then the best of --runs rounds; llama.cpp
// runs with flash attention off and on (batch and micro-batch = the whole context, float32 KV cache like Kiln's), and
// the faster of the two counts for each figure. Ratios are Kiln / llama.cpp (above 1: Kiln is faster).

using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Devices;
using Kiln.Models;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Kiln.Models.Tokenizers;

namespace Kiln.Cli.Bench;

/// <summary>The Kiln-against-llama.cpp benchmark on random Llama-shaped GGUF files.</summary>
internal static class PeerBench
{
    /// <summary>Prompt tokens of the prefill.</summary>
    public const int PromptLength = 256;

    /// <summary>Greedy decode steps after the prompt.</summary>
    public const int DecodeSteps = 128;

    /// <summary>A model shape of the benchmark.</summary>
    public sealed record ModelShape(string Name, int Dim, int Layers, int Heads, int Hidden)
    {
        /// <summary>The llama config: vocabulary 512, context 512, multi-head attention.</summary>
        public LlamaConfig Config => new()
        {
            Dim = Dim,
            HiddenDim = Hidden,
            Layers = Layers,
            Heads = Heads,
            KvHeads = Heads,
            VocabSize = 512,
            SeqLen = 512,
            HeadDim = Dim / Heads,
            NormEps = 1e-5f,
            RopeTheta = 10000f,
        };
    }

    /// <summary>The shapes measured.</summary>
    public static IReadOnlyList<ModelShape> Shapes { get; } =
    [
        new("15M", 288, 6, 6, 768),
        new("110M", 768, 12, 12, 2048),
    ];

    /// <summary>One row of the table.</summary>
    public sealed record Row(string Model, string DType, double KilnPrefill, double PeerPrefill, double KilnDecode, double PeerDecode, bool PeerFlashPrefill, bool PeerFlashDecode);

    /// <summary>Writes the random model <paramref name="shape"/> as a GGUF file with matrices in <paramref name="type"/>.</summary>
    public static void WriteModel(string path, ModelShape shape, GgufTensorType type, Llama2cTokenizer tokenizer)
    {
        using LlamaWeights weights = LlamaWeights.Allocate(shape.Config);
        Random random = new(20_250_101);
        float half = 0.02f * MathF.Sqrt(3f);
        foreach (Tensor tensor in weights.Tensors)
        {
            Span<float> values = tensor.AsSpan();
            if (tensor.Rank == 1)
            {
                values.Fill(1f);
                continue;
            }

            for (int i = 0; i < values.Length; i++)
            {
                values[i] = ((2f * random.NextSingle()) - 1f) * half;
            }
        }

        GgufLlama.Write(path, weights, tokenizer, type, $"random-{shape.Name}");
    }

    /// <summary>Runs the whole table and prints it (JSON lines or text) on <paramref name="stdout"/>.</summary>
    public static void Run(string tokenizerPath, string directory, int threads, int runs, bool json, TextWriter stdout, TextWriter stderr)
    {
        Llama2cTokenizer tokenizer = Llama2cTokenizer.Load(tokenizerPath, 512);
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kiln: bench peer: {threads} thread(s), prompt {PromptLength}, decode {DecodeSteps}, best of {runs} after a warm-up; load average before: {LoadAverage()}"));
        using CpuDevice device = new(threads);
        foreach (ModelShape shape in Shapes)
        {
            foreach (GgufTensorType type in new[] { GgufTensorType.F32, GgufTensorType.Q8_0 })
            {
                string path = Path.Combine(directory, $"random-{shape.Name}-{type.Name()}.gguf");
                if (!File.Exists(path))
                {
                    stderr.WriteLine($"kiln: writing {path}");
                    WriteModel(path, shape, type, tokenizer);
                }

                Row row = Measure(path, shape, type, device, threads, runs);
                stdout.WriteLine(json ? Json(row) : Text(row));
                stdout.Flush();
            }
        }

        stderr.WriteLine($"kiln: bench peer: load average after: {LoadAverage()}");
    }

    /// <summary>Measures one file with both engines.</summary>
    public static Row Measure(string path, ModelShape shape, GgufTensorType type, CpuDevice device, int threads, int runs)
    {
        int[] prompt = Prompt(shape.Config.VocabSize);

        // Kiln: the fast session on the CPU device.
        double kilnPrefill = 0, kilnDecode = 0;
        using (LlamaWeights weights = GgufLlama.Load(path, device))
        using (IInferenceSession session = InferenceSessions.Default(weights, new SessionOptions { ContextLength = PromptLength + DecodeSteps + 1 }))
        {
            for (int run = 0; run <= runs; run++)
            {
                (double prefill, double decode) = MeasureKiln(session, prompt);
                if (run > 0)
                {
                    kilnPrefill = Math.Max(kilnPrefill, prefill);
                    kilnDecode = Math.Max(kilnDecode, decode);
                }
            }
        }

        // llama.cpp: flash attention off and on, the faster of each.
        double peerPrefill = 0, peerDecode = 0;
        bool flashPrefill = false, flashDecode = false;
        using (LlamaCppPeer peer = LlamaCppPeer.Load(path))
        {
            foreach (bool flash in new[] { false, true })
            {
                for (int run = 0; run <= runs; run++)
                {
                    (double prefill, double decode) = peer.Measure(prompt, DecodeSteps, threads, flash);
                    if (run == 0)
                    {
                        continue;
                    }

                    if (prefill > peerPrefill)
                    {
                        (peerPrefill, flashPrefill) = (prefill, flash);
                    }

                    if (decode > peerDecode)
                    {
                        (peerDecode, flashDecode) = (decode, flash);
                    }
                }
            }
        }

        return new Row(shape.Name, type.Name(), kilnPrefill, peerPrefill, kilnDecode, peerDecode, flashPrefill, flashDecode);
    }

    // One Kiln round: prefill the prompt in one Forward, then greedy single-token steps.
    private static (double Prefill, double Decode) MeasureKiln(IInferenceSession session, int[] prompt)
    {
        session.Reset();
        long start = Stopwatch.GetTimestamp();
        int next = Sampler.ArgMax(session.Forward(prompt));
        long prefill = Stopwatch.GetTimestamp() - start;
        start = Stopwatch.GetTimestamp();
        for (int i = 0; i < DecodeSteps; i++)
        {
            next = Sampler.ArgMax(session.Forward([next]));
        }

        long decode = Stopwatch.GetTimestamp() - start;
        return (prompt.Length * (double)Stopwatch.Frequency / prefill, DecodeSteps * (double)Stopwatch.Frequency / decode);
    }

    // BOS, then fixed random ids past the byte tokens.
    private static int[] Prompt(int vocab)
    {
        Random random = new(7);
        int[] prompt = new int[PromptLength];
        prompt[0] = Llama2cTokenizer.BeginId;
        for (int i = 1; i < prompt.Length; i++)
        {
            prompt[i] = random.Next(259, vocab);
        }

        return prompt;
    }

    /// <summary>The load averages of /proc/loadavg ("1 5 15" minutes), or "unknown" where it cannot be read.</summary>
    internal static string LoadAverage()
    {
        try
        {
            string[] fields = File.ReadAllText("/proc/loadavg").Split(' ');
            return $"{fields[0]} {fields[1]} {fields[2]}";
        }
        catch (IOException)
        {
            return "unknown";
        }
        catch (UnauthorizedAccessException)
        {
            return "unknown";
        }
    }

    private static string Text(Row row) => string.Create(CultureInfo.InvariantCulture,
        $"{row.Model} {row.DType}: prefill kiln {row.KilnPrefill:F0} tok/s, llama.cpp {row.PeerPrefill:F0} (flash {(row.PeerFlashPrefill ? "on" : "off")}), ratio {row.KilnPrefill / row.PeerPrefill:F2}; decode kiln {row.KilnDecode:F1} tok/s, llama.cpp {row.PeerDecode:F1} (flash {(row.PeerFlashDecode ? "on" : "off")}), ratio {row.KilnDecode / row.PeerDecode:F2}");

    private static string Json(Row row)
    {
        using MemoryStream buffer = new();
        using (Utf8JsonWriter writer = new(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("model", row.Model);
            writer.WriteString("dtype", row.DType);
            writer.WriteNumber("kiln_prefill_tok_s", Math.Round(row.KilnPrefill, 1));
            writer.WriteNumber("peer_prefill_tok_s", Math.Round(row.PeerPrefill, 1));
            writer.WriteNumber("prefill_ratio", Math.Round(row.KilnPrefill / row.PeerPrefill, 3));
            writer.WriteNumber("kiln_decode_tok_s", Math.Round(row.KilnDecode, 1));
            writer.WriteNumber("peer_decode_tok_s", Math.Round(row.PeerDecode, 1));
            writer.WriteNumber("decode_ratio", Math.Round(row.KilnDecode / row.PeerDecode, 3));
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
