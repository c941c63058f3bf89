// kiln bench hybrid: a transformer, pure Mamba-3 models and a hybrid of the same width and depth, on random weights,
// all run by HybridSession (an all-A pattern is exactly a Llama block stack). Width 512, 12 layers, vocabulary 512,
// MLP 1536; Mamba-3 with d_state 64, headdim 64, expand 2 (16 heads), chunk 64:
//   transformer   all A, 8 heads of 64 with RoPE; its MLP width chosen so that its parameter count matches the
//                 Mamba-3 model's (attention has fewer parameters than the mixer; stderr prints both counts)
//   mamba3        all M, SISO
//   mamba3-mimo   all M, MIMO rank 4 with chunk 16 (64 / R, so a chunk's rows stay 64), its MLP narrowed to match
//                 the SISO model's parameter count (the paper's parameter matching, App. C)
//   hybrid        MMMMMA twice (the paper's 5:1), attention without RoPE, the pre-gate grouped output norm on (the
//                 paper's choice for hybrids); same MLP as mamba3
// Per context: prefill tok/s of the whole context in one Forward (the session chunks it), then decode tok/s of
// `decode` one-token steps right after it. The four sessions of a context take turns, one measured run each per
// round, so that a burst of load from elsewhere on a shared machine hits them alike; each figure is the best of
// `runs` rounds, after a short warm-up run of every model. One line per model and context, with the ratios to the
// transformer at the same context; --plot draws tok/s against context (log-log) for every model, redrawn after
// every context. -t sets the worker threads of the models' cpu device (all cores by default; 1 has no parallel loops,
// so no barrier waits, which on a loaded machine otherwise dominate decode). --device cuda (or ilgpu-cpu, only for
// a quick check at tiny contexts) runs every model on that device instead: the weights are made on the cpu and
// copied there, and each timed Forward ends with the logits copied back, which waits for the device.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Devices;
using Kiln.Models;
using Kiln.Models.Hybrid;
using Kiln.Models.Mamba;
using Kiln.Models.Sampling;

namespace Kiln.Cli.Bench;

/// <summary>The hybrid benchmark (see the file header).</summary>
public static class HybridBench
{
    /// <summary>The model width.</summary>
    public const int Width = 512;

    /// <summary>The number of layers.</summary>
    public const int Layers = 12;

    /// <summary>The vocabulary size.</summary>
    public const int Vocabulary = 512;

    /// <summary>The MLP width of the Mamba-3 and hybrid models.</summary>
    public const int MlpWidth = 1536;

    /// <summary>The models measured, the transformer first (the ratios' baseline).</summary>
    public static IReadOnlyList<string> Models { get; } = ["transformer", "mamba3", "mamba3-mimo", "hybrid"];

    /// <summary>The config of <paramref name="model"/> (one of <see cref="Models"/>) for contexts up to <paramref name="seqLen"/>.</summary>
    public static HybridConfig Config(string model, int seqLen)
    {
        Mamba3Config siso = new() { DModel = Width, DState = 64, HeadDim = 64, Expand = 2, ChunkSize = 64 };
        HybridAttentionConfig attention = new() { Heads = 8, KvHeads = 8, HeadDim = 64, Rope = true };
        HybridConfig mamba = new()
        {
            DModel = Width, VocabSize = Vocabulary, Layers = Layers, SeqLen = seqLen, HiddenDim = MlpWidth, LayerPattern = "M", Mamba3 = siso,
        };
        long mixer = siso.ParameterCount, attentionParameters = 4L * Width * Width;
        return model switch
        {
            "mamba3" => mamba,

            // The MLP grows by what the mixer has more than attention: 3·D parameters per unit of width.
            "transformer" => mamba with
            {
                LayerPattern = "A",
                Mamba3 = null,
                Attention = attention,
                HiddenDim = MlpWidth + (int)Math.Round((mixer - attentionParameters) / (3.0 * Width)),
            },
            "mamba3-mimo" => MatchMlp(mamba with { Mamba3 = siso with { IsMimo = true, MimoRank = 4, ChunkSize = 16 } }, mamba.ParameterCount),
            "hybrid" => mamba with
            {
                LayerPattern = "MMMMMA",
                Attention = attention with { Rope = false },
                Mamba3 = siso with { IsOutProjNorm = true },
            },
            _ => throw new ArgumentException($"Unknown model \"{model}\"; use one of {string.Join(", ", Models)}.", nameof(model)),
        };
    }

    /// <summary>Measures every model at every context and writes one line per model and context.</summary>
    /// <returns>The measured rows, in output order.</returns>
    public static IReadOnlyList<Row> Run(IReadOnlyList<int> contexts, int decode, int runs, Device device, bool json, string? plot, TextWriter stdout, TextWriter stderr)
    {
        int longest = contexts.Max() + decode;
        XorShiftRandom random = new(7);
        int[] tokens = new int[longest];
        for (int i = 0; i < tokens.Length; i++)
        {
            tokens[i] = (int)(random.NextUInt64() % Vocabulary);
        }

        List<HybridWeights> weights = [];
        List<Row> rows = [];
        try
        {
            // The models, with their parameter counts.
            foreach (string model in Models)
            {
                if (device is CpuDevice cpu)
                {
                    weights.Add(HybridWeights.CreateRandom(Config(model, longest), seed: 42, cpu));
                    continue;
                }

                using HybridWeights host = HybridWeights.CreateRandom(Config(model, longest), seed: 42);
                weights.Add(host.To(device));
            }

            long transformerParameters = weights[0].ParameterCount, mambaParameters = weights[1].ParameterCount;
            stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"hybrid bench: parameters: transformer {transformerParameters:N0} (MLP {weights[0].Config.HiddenDim}), mamba3 {mambaParameters:N0} "
                + $"({(transformerParameters - mambaParameters) * 100.0 / mambaParameters:+0.00;-0.00}%), mamba3-mimo {weights[2].ParameterCount:N0} "
                + $"(MLP {weights[2].Config.HiddenDim}), hybrid {weights[3].ParameterCount:N0}; on {Describe(device)}"));

            // Warm the JIT on a short run of each model.
            int warmLength = Math.Min(200, longest), warmDecode = Math.Min(4, warmLength - 1);
            foreach (HybridWeights w in weights)
            {
                using HybridSession session = new(w, new SessionOptions { ContextLength = warmLength });
                SessionTiming.PrefillThenDecode(session, tokens.AsSpan(0, warmLength), warmDecode);
            }

            foreach (int context in contexts)
            {
                rows.AddRange(MeasureContext(weights, tokens.AsSpan(0, context + decode), context, decode, runs, stderr));
                foreach (Row row in rows.Where(r => r.Context == context))
                {
                    stdout.WriteLine(Line(json, row));
                }

                // The picture of what is measured so far (a long run cut short still leaves one).
                if (plot is not null)
                {
                    HybridPlot.Write(plot, rows);
                }
            }
        }
        finally
        {
            weights.ForEach(static w => w.Dispose());
        }

        if (plot is not null)
        {
            stderr.WriteLine($"hybrid bench: wrote {plot}");
        }

        return rows;
    }

    /// <summary>One measured model at one context.</summary>
    public sealed record Row(string Model, int Context, double Prefill, double Decode, long Parameters, double PrefillRatio, double DecodeRatio);

    // The four sessions of one context, in rounds; best of the rounds.
    private static List<Row> MeasureContext(List<HybridWeights> weights, ReadOnlySpan<int> prompt, int context, int decode, int runs, TextWriter stderr)
    {
        SessionOptions options = new() { ContextLength = context + decode };
        List<HybridSession> sessions = [];
        try
        {
            foreach (HybridWeights w in weights)
            {
                sessions.Add(new HybridSession(w, options));
            }

            var best = new (double Prefill, double Decode)[sessions.Count];
            for (int round = 0; round < runs; round++)
            {
                stderr.WriteLine($"hybrid bench: context {context}, round {round + 1} of {runs}: {string.Join(", ", Models)}");
                for (int i = 0; i < sessions.Count; i++)
                {
                    (double prefill, double decodeSpeed) = SessionTiming.PrefillThenDecode(sessions[i], prompt, decode);
                    best[i] = (Math.Max(best[i].Prefill, prefill), Math.Max(best[i].Decode, decodeSpeed));
                }
            }

            return [.. Models.Select((model, i) => new Row(
                model, context, best[i].Prefill, best[i].Decode, weights[i].ParameterCount, best[i].Prefill / best[0].Prefill, best[i].Decode / best[0].Decode))];
        }
        finally
        {
            sessions.ForEach(static s => s.Dispose());
        }
    }

    // "cpu, 2 worker thread(s) on 2 cores" or the ILGPU device's name.
    private static string Describe(Device device) =>
        device is CpuDevice cpu ? $"cpu, {cpu.Threads} worker thread(s) on {Environment.ProcessorCount} cores" : device.Name;

    // The config with its MLP narrowed (or widened) so that the model has about `target` parameters.
    private static HybridConfig MatchMlp(HybridConfig config, long target)
    {
        long excess = config.ParameterCount - target;
        return config with { HiddenDim = config.HiddenDim - (int)Math.Round(excess / (3.0 * Width * config.Layers)) };
    }


    private static string Line(bool json, Row row)
    {
        if (!json)
        {
            return string.Create(
                CultureInfo.InvariantCulture,
                $"{row.Model,-12} context {row.Context,6}: prefill {row.Prefill,9:F1} tok/s ({row.PrefillRatio:F2}x transformer), "
                + $"decode {row.Decode,8:F1} tok/s ({row.DecodeRatio:F2}x transformer), {row.Parameters:N0} parameters");
        }

        // One object, fields in a fixed order, speeds to 0.1 tok/s and ratios to 0.001.
        using MemoryStream buffer = new();
        using (Utf8JsonWriter writer = new(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("model", row.Model);
            writer.WriteNumber("context", row.Context);
            writer.WriteNumber("prefill_tok_s", Math.Round(row.Prefill, 1));
            writer.WriteNumber("decode_tok_s", Math.Round(row.Decode, 1));
            writer.WriteNumber("params", row.Parameters);
            writer.WriteNumber("prefill_vs_transformer", Math.Round(row.PrefillRatio, 3));
            writer.WriteNumber("decode_vs_transformer", Math.Round(row.DecodeRatio, 3));
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
