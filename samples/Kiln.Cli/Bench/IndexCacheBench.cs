// kiln bench indexcache: IndexCache speed on random weights in the brief's B′ config (indexcache.md §6: width 256,
// 8 layers, 4 heads × 64, 8 indexer heads × 64 with 32 rotated dims, K 128, FFN 512, vocabulary 512). Per context:
// the dense Llama session, then DSA sessions with keep 1 (all Full), 1/2 and 1/4 (IndexCachePattern.FromKeepRatio),
// all on the same weights and the same random tokens. Prefill: the whole context in one Forward (the session chunks
// it); decode: `decode` one-token steps right after it. The four sessions of a context take turns, one measured run
// each per round, so that a burst of load from elsewhere on a shared machine hits them alike; each figure is the best
// of `runs` rounds. Speed-ups are against all-Full DSA at the same context; "vs_dense" against the dense session. The
// weights are made on the cpu and copied to the device under test (--device: cpu, cuda, ilgpu-cpu); each step's
// logits come back to the host, as Forward returns them.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models;
using Kiln.Models.Dsa;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;

namespace Kiln.Cli.Bench;

/// <summary>The IndexCache benchmark (see the file header).</summary>
public static class IndexCacheBench
{
    /// <summary>The keep ratios measured, all-Full first (the speed-up baseline).</summary>
    public static IReadOnlyList<double> KeepRatios { get; } = [1.0, 0.5, 0.25];

    /// <summary>The B′ config with a context of <paramref name="seqLen"/> and pattern all-Full.</summary>
    public static DsaConfig Config(int seqLen) => new()
    {
        Llama = new LlamaConfig
        {
            Dim = 256, HiddenDim = 512, Layers = 8, Heads = 4, KvHeads = 4, VocabSize = 512, SeqLen = seqLen, HeadDim = 64,
        },
        IndexerHeads = 8,
        IndexerHeadDim = 64,
        IndexerRopeDims = 32,
        TopK = 128,
        IndexerRopeLayout = RopeLayout.HalfSplit,
        Pattern = IndexCachePattern.AllFull(8),
    };

    /// <summary>Runs the benchmark for each context and writes one line per configuration to <paramref name="stdout"/>.</summary>
    public static void Run(Device device, IReadOnlyList<int> contexts, int decode, int runs, bool json, TextWriter stdout, TextWriter stderr)
    {
        int longest = contexts.Max();
        using DsaWeights host = DsaWeights.CreateRandom(Config(longest + decode), seed: 42);
        using DsaWeights weights = host.To(device);
        XorShiftRandom random = new(7);
        int[] tokens = new int[longest + decode];
        for (int i = 0; i < tokens.Length; i++)
        {
            tokens[i] = (int)(random.NextUInt64() % 512);
        }

        // Warm the JIT on a short run of each session kind.
        int warmLength = Math.Min(300, tokens.Length), warmDecode = Math.Min(4, warmLength - 1);
        SessionOptions warmUp = new() { ContextLength = warmLength };
        using (LlamaSession dense = new(weights.Dense, warmUp))
        using (DsaSession dsa = new(weights, warmUp))
        {
            SessionTiming.PrefillThenDecode(dense, tokens.AsSpan(0, warmLength), warmDecode);
            SessionTiming.PrefillThenDecode(dsa, tokens.AsSpan(0, warmLength), warmDecode);
        }
        foreach (int context in contexts)
        {
            // The sessions of this context: dense, then DSA with each keep ratio (a session keeps the pattern it was
            // created with).
            SessionOptions options = new() { ContextLength = context + decode };
            List<IInferenceSession> sessions = [new LlamaSession(weights.Dense, options)];
            List<IndexCachePattern> patterns = [];
            try
            {
                foreach (double keep in KeepRatios)
                {
                    IndexCachePattern pattern = IndexCachePattern.FromKeepRatio(8, keep);
                    weights.WithPattern(pattern);
                    patterns.Add(pattern);
                    sessions.Add(new DsaSession(weights, options));
                }

                // Rounds: every session once per round, best of the rounds.
                ReadOnlySpan<int> prompt = tokens.AsSpan(0, context + decode);
                var best = new (double Prefill, double Decode)[sessions.Count];
                for (int round = 0; round < runs; round++)
                {
                    stderr.WriteLine($"indexcache bench: context {context}, round {round + 1} of {runs}: dense, keep {string.Join(", ", KeepRatios.Select(k => k.ToString(CultureInfo.InvariantCulture)))}");
                    for (int i = 0; i < sessions.Count; i++)
                    {
                        (double prefill, double decodeSpeed) = SessionTiming.PrefillThenDecode(sessions[i], prompt, decode);
                        best[i] = (Math.Max(best[i].Prefill, prefill), Math.Max(best[i].Decode, decodeSpeed));
                    }
                }

                (double densePrefill, double denseDecode) = best[0];
                (double fullPrefill, double fullDecode) = best[1];
                for (int i = 0; i < patterns.Count; i++)
                {
                    (double prefill, double decodeSpeed) = best[i + 1];
                    stdout.WriteLine(Line(json, context, KeepRatios[i], patterns[i], prefill, decodeSpeed, fullPrefill, fullDecode, densePrefill, denseDecode));
                }
            }
            finally
            {
                foreach (IInferenceSession session in sessions)
                {
                    session.Dispose();
                }
            }
        }
    }


    private static string Line(
        bool json, int context, double keep, IndexCachePattern pattern, double prefill, double decode, double fullPrefill,
        double fullDecode, double densePrefill, double denseDecode)
    {
        if (!json)
        {
            return string.Create(
                CultureInfo.InvariantCulture,
                $"context {context} keep {keep} ({pattern}): prefill {prefill:F1} tok/s ({prefill / fullPrefill:F2}x all-F, "
                + $"{prefill / densePrefill:F2}x dense), decode {decode:F1} tok/s ({decode / fullDecode:F2}x all-F, {decode / denseDecode:F2}x dense)");
        }

        // One object, fields in a fixed order, speeds to 0.1 tok/s and ratios to 0.001.
        using MemoryStream buffer = new();
        using (Utf8JsonWriter writer = new(buffer))
        {
            writer.WriteStartObject();
            writer.WriteNumber("context", context);
            writer.WriteNumber("keep", keep);
            writer.WriteString("pattern", pattern.ToString());
            writer.WriteNumber("prefill_tok_s", Math.Round(prefill, 1));
            writer.WriteNumber("decode_tok_s", Math.Round(decode, 1));
            writer.WriteNumber("prefill_speedup", Math.Round(prefill / fullPrefill, 3));
            writer.WriteNumber("decode_speedup", Math.Round(decode / fullDecode, 3));
            writer.WriteNumber("dense_prefill_tok_s", Math.Round(densePrefill, 1));
            writer.WriteNumber("dense_decode_tok_s", Math.Round(denseDecode, 1));
            writer.WriteNumber("prefill_vs_dense", Math.Round(prefill / densePrefill, 3));
            writer.WriteNumber("decode_vs_dense", Math.Round(decode / denseDecode, 3));
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
