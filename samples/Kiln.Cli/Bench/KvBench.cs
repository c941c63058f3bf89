// kiln bench kv: decode speed with a compressed KV cache against the full cache, on random weights shaped so that a
// decode step is dominated by reading the KV cache (width 256, 4 layers, 4 heads × 64, no GQA, FFN 512, vocabulary 512:
// 2.75 M parameters, 11 MB of weights, against 8 KiB of cache per token: 32 MiB at 4K, 128 MiB at 16K). Per context and kept
// fraction, each method gets its own session on the same weights and random tokens:
//   prefill the context (timed), decode `decode` tokens with the full cache (timed), compress (timed), decode `decode`
//   more tokens over the compressed cache (timed). Each decode figure is the best of four bursts of decode/4 tokens.
// The speed-up is the compressed decode against the full decode of the same session, measured back to back, so a burst
// of load on a shared machine falls on both alike. Compression is on the cpu device only (KvCompressedSession).
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Devices;
using Kiln.Models;
using Kiln.Models.KvCompression;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;

namespace Kiln.Cli.Bench;

/// <summary>The KV-compression decode benchmark (see the file header).</summary>
public static class KvBench
{
    /// <summary>The benchmark model with a context of <paramref name="seqLen"/>.</summary>
    public static LlamaConfig Config(int seqLen) => new()
    {
        Dim = 256, HiddenDim = 512, Layers = 4, Heads = 4, KvHeads = 4, VocabSize = 512, SeqLen = seqLen, HeadDim = 64,
    };

    /// <summary>The methods measured: a name and the options for a kept fraction.</summary>
    public static IReadOnlyList<(string Name, Func<KvBudget, KvCompressionOptions> Make)> Methods { get; } =
    [
        ("chunkkv", b => KvCompressionOptions.ChunkKv(b, chunkSize: 10, reuse: 1) with { CompressAfterPrompt = false }),
        ("chunkkv-reuse", b => KvCompressionOptions.ChunkKv(b, chunkSize: 10, reuse: 2) with { CompressAfterPrompt = false }),
        ("snapkv", b => KvCompressionOptions.SnapKv(b) with { CompressAfterPrompt = false }),
        ("streamingllm", b => KvCompressionOptions.StreamingLlm(b) with { CompressAfterPrompt = false }),
    ];

    /// <summary>Runs every method at every context and kept fraction; one line each to <paramref name="stdout"/>.</summary>
    public static void Run(CpuDevice device, IReadOnlyList<int> contexts, IReadOnlyList<double> kept, int decode, bool json, TextWriter stdout, TextWriter stderr)
    {
        int longest = contexts.Max();
        using LlamaWeights weights = RandomLlamaWeights.Create(Config(longest + (2 * decode)), seed: 42, (CpuDevice)device);
        XorShiftRandom random = new(7);
        int[] tokens = new int[longest + (2 * decode)];
        for (int i = 0; i < tokens.Length; i++)
        {
            tokens[i] = (int)(random.NextUInt64() % 512);
        }

        // Warm the JIT on a short run.
        Measure(weights, tokens, 300, KvBudget.OfPrompt(0.2), Methods[0].Make, Math.Min(decode, 4));
        foreach (int context in contexts)
        {
            foreach (double fraction in kept)
            {
                foreach ((string name, Func<KvBudget, KvCompressionOptions> make) in Methods)
                {
                    stderr.WriteLine($"kv bench: context {context}, kept {fraction.ToString(CultureInfo.InvariantCulture)}, {name}");
                    Result r = Measure(weights, tokens, context, KvBudget.OfPrompt(fraction), make, decode);
                    stdout.WriteLine(Line(json, name, context, fraction, r));
                }
            }
        }
    }

    private sealed record Result(
        double PrefillMs, double FullDecode, double Decode, double CompressMs, double KeptTokens, int ScoredLayers);

    private static Result Measure(LlamaWeights weights, int[] tokens, int context, KvBudget budget, Func<KvBudget, KvCompressionOptions> make, int decode)
    {
        using KvCompressedSession session = new(weights, new SessionOptions { ContextLength = context + (2 * decode) }, make(budget));

        // Prefill, then decode over the full cache.
        long start = Stopwatch.GetTimestamp();
        session.Forward(tokens.AsSpan(0, context));
        double prefillMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        double full = DecodeSpeed(session, tokens.AsSpan(context, decode));

        // Compress, then decode over the kept tokens.
        KvCompressionResult result = session.Compress();
        double compressed = DecodeSpeed(session, tokens.AsSpan(context + decode, decode));
        return new Result(prefillMs, full, compressed, result.Elapsed.TotalMilliseconds, result.Kept.Average(), result.ScoredLayers);
    }

    // The best of four bursts (a quarter of the tokens each, at least one token): a burst of load from elsewhere on a
    // shared machine spoils one burst, not the figure.
    private static double DecodeSpeed(IInferenceSession session, ReadOnlySpan<int> tokens)
    {
        int burst = Math.Max(1, tokens.Length / 4);
        double best = 0;
        for (int from = 0; from < tokens.Length; from += burst)
        {
            int count = Math.Min(burst, tokens.Length - from);
            long start = Stopwatch.GetTimestamp();
            for (int i = from; i < from + count; i++)
            {
                session.Forward(tokens.Slice(i, 1));
            }

            best = Math.Max(best, SessionTiming.PerSecond(count, Stopwatch.GetTimestamp() - start));
        }

        return best;
    }

    private static string Line(bool json, string method, int context, double kept, Result r)
    {
        double speedup = r.Decode / r.FullDecode;
        if (!json)
        {
            return string.Create(
                CultureInfo.InvariantCulture,
                $"{method} context {context} kept {kept} ({r.KeptTokens:F0} tokens): decode {r.Decode:F1} tok/s vs full {r.FullDecode:F1} "
                + $"({speedup:F2}x); compress {r.CompressMs:F1} ms ({r.ScoredLayers} layers scored) after a {r.PrefillMs:F0} ms prefill");
        }

        // One object, fields in a fixed order.
        using MemoryStream buffer = new();
        using (Utf8JsonWriter writer = new(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("method", method);
            writer.WriteNumber("context", context);
            writer.WriteNumber("kept", kept);
            writer.WriteNumber("decode_tok_s", Math.Round(r.Decode, 1));
            writer.WriteNumber("full_decode_tok_s", Math.Round(r.FullDecode, 1));
            writer.WriteNumber("speedup", Math.Round(speedup, 3));
            writer.WriteNumber("kept_tokens", Math.Round(r.KeptTokens, 1));
            writer.WriteNumber("compress_ms", Math.Round(r.CompressMs, 2));
            writer.WriteNumber("scored_layers", r.ScoredLayers);
            writer.WriteNumber("prefill_ms", Math.Round(r.PrefillMs, 1));
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
