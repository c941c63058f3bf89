// kiln bench attnres: the inference cost of Block Attention Residuals. Two Llama models with the same random weights,
// one standard and one with the option (N blocks, random non-zero queries and gains), run by LlamaSession on the cpu:
// by default 24 layers, width 1024, 16 query heads and 4 key/value heads of 64, MLP 2816 (Llama's 8/3 · D rounded up
// to 256), vocabulary 32000, float32 (336M parameters, about 1.3 GB each, so decode is bound by reading them).
// Per context: prefill tok/s of the whole context in one Forward (the session chunks it), then decode tok/s of
// `decode` one-token steps right after it. The two sessions take turns, one measured run each per round, so that load
// from elsewhere on a shared machine hits both alike; each figure is the best of `runs` rounds, after a short warm-up
// of both. One line per model and context, with the ratios to the standard model measured in the same run; the
// option's extra state is the session's depth sources, (N + 1) · chunk · D floats, and the KV cache is unchanged.
// Besides wall-clock tok/s each run also records tokens per second of the process's cpu time (all threads, read with
// the C library's clock_gettime, a benchmark-only call): on a
// machine shared with other work, wall time swings with the others' load while cpu time mostly does not, so the
// cpu-time ratio is the steadier estimate of the overhead (with -t 1 it counts no barrier spinning either). On a
// loaded machine use -t 1: with two workers, barrier waits dominate and swamp a difference of a few percent.
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Kiln.Devices;
using Kiln.Models;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;

namespace Kiln.Cli.Bench;

/// <summary>The Block Attention Residuals overhead benchmark (see the file header).</summary>
public static class AttnResBench
{
    /// <summary>What to measure: the model's shape, the option's block count, the contexts and the rounds.</summary>
    public sealed record Options
    {
        /// <summary>The contexts (prompt lengths) measured.</summary>
        public IReadOnlyList<int> Contexts { get; init; } = [512, 2048];

        /// <summary>Decode steps measured after each prefill.</summary>
        public int Decode { get; init; } = 32;

        /// <summary>Measured rounds; each figure is the best of them.</summary>
        public int Runs { get; init; } = 3;

        /// <summary>The option's number of blocks N.</summary>
        public int Blocks { get; init; } = 8;

        /// <summary>The number of layers.</summary>
        public int Layers { get; init; } = 24;

        /// <summary>The model width (a multiple of 64: heads of 64, four query heads per key/value head).</summary>
        public int Dim { get; init; } = 1024;

        /// <summary>The vocabulary size.</summary>
        public int Vocabulary { get; init; } = 32000;

        /// <summary>The cpu worker threads.</summary>
        public int Threads { get; init; } = Environment.ProcessorCount;

        /// <summary>The standard config of this shape for contexts up to <paramref name="seqLen"/>.</summary>
        public LlamaConfig Config(int seqLen) => new()
        {
            Dim = Dim,
            HiddenDim = (((8 * Dim / 3) + 255) / 256) * 256,
            Layers = Layers,
            Heads = Dim / 64,
            KvHeads = Math.Max(1, Dim / 256),
            HeadDim = 64,
            VocabSize = Vocabulary,
            SeqLen = seqLen,
            SharedClassifier = false,
        };
    }

    /// <summary>One measured model at one context, with its ratios to the standard model.</summary>
    public sealed record Row(string Model, int Context, Speeds Best, Speeds Ratio, long ExtraBytes);

    /// <summary>Prefill and decode tokens per second, of wall time and of the process's cpu time.</summary>
    public readonly record struct Speeds(double Prefill, double Decode, double PrefillCpu, double DecodeCpu)
    {
        /// <summary>The larger of each figure.</summary>
        public Speeds Max(Speeds other) => new(
            Math.Max(Prefill, other.Prefill), Math.Max(Decode, other.Decode), Math.Max(PrefillCpu, other.PrefillCpu), Math.Max(DecodeCpu, other.DecodeCpu));

        /// <summary>Each figure divided by the same figure of <paramref name="baseline"/>.</summary>
        public Speeds Over(Speeds baseline) => new(
            Prefill / baseline.Prefill, Decode / baseline.Decode, PrefillCpu / baseline.PrefillCpu, DecodeCpu / baseline.DecodeCpu);
    }

    /// <summary>The models measured, the standard one first (the ratios' baseline).</summary>
    public static IReadOnlyList<string> Models { get; } = ["llama", "llama-attnres"];

    /// <summary>Measures both models at every context and writes one line per model and context.</summary>
    /// <returns>The measured rows, in output order.</returns>
    /// <exception cref="ArgumentException">The shape or the block count is invalid.</exception>
    public static IReadOnlyList<Row> Run(Options options, bool json, TextWriter stdout, TextWriter stderr)
    {
        int longest = options.Contexts.Max() + options.Decode;
        LlamaConfig standard = options.Config(longest);
        LlamaConfig residuals = standard with { AttentionResiduals = new() { Blocks = options.Blocks } };
        residuals.Validate();
        long extraBytes = (options.Blocks + 1L) * Math.Min(LlamaSession.PrefillChunk, longest) * options.Dim * sizeof(float);

        using CpuDevice device = new(options.Threads);
        using LlamaWeights baseline = LlamaWeights.Allocate(standard, device);
        using LlamaWeights withOption = LlamaWeights.Allocate(residuals, device);
        Fill(baseline, withOption);
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"attnres bench: {options.Layers} layers, width {options.Dim}, MLP {standard.HiddenDim}, vocabulary {options.Vocabulary}, {standard.ParameterCount:N0} parameters; "
            + $"option: {options.Blocks} blocks of the {2 * options.Layers} sublayers, +{residuals.ParameterCount - standard.ParameterCount:N0} parameters, "
            + $"+{extraBytes / 1024.0 / 1024.0:F1} MiB of depth sources per session; {options.Threads} thread(s) on {Environment.ProcessorCount} cores; load average before: {PeerBench.LoadAverage()}"));

        XorShiftRandom random = new(7);
        int[] tokens = [.. Enumerable.Range(0, longest).Select(_ => (int)(random.NextUInt64() % (ulong)options.Vocabulary))];
        LlamaWeights[] weights = [baseline, withOption];

        // Warm the JIT on a short run of each model.
        int warmLength = Math.Min(64, longest), warmDecode = Math.Min(4, warmLength - 1);
        foreach (LlamaWeights w in weights)
        {
            using LlamaSession session = new(w, new SessionOptions { ContextLength = warmLength });
            Measure(session, tokens.AsSpan(0, warmLength), warmDecode);
        }

        List<Row> rows = [];
        foreach (int context in options.Contexts)
        {
            rows.AddRange(MeasureContext(weights, tokens.AsSpan(0, context + options.Decode), context, options, extraBytes, stderr));
            foreach (Row row in rows.Where(r => r.Context == context))
            {
                stdout.WriteLine(Line(json, row, options));
            }
        }

        stderr.WriteLine($"attnres bench: load average after: {PeerBench.LoadAverage()}");
        return rows;
    }

    // Both sessions of one context, in rounds; best of the rounds.
    private static List<Row> MeasureContext(LlamaWeights[] weights, ReadOnlySpan<int> prompt, int context, Options options, long extraBytes, TextWriter stderr)
    {
        SessionOptions sessionOptions = new() { ContextLength = context + options.Decode };
        using LlamaSession baseline = new(weights[0], sessionOptions);
        using LlamaSession withOption = new(weights[1], sessionOptions);
        LlamaSession[] sessions = [baseline, withOption];
        Speeds[] best = new Speeds[sessions.Length];
        for (int round = 0; round < options.Runs; round++)
        {
            stderr.WriteLine($"attnres bench: context {context}, round {round + 1} of {options.Runs}");
            for (int i = 0; i < sessions.Length; i++)
            {
                best[i] = best[i].Max(Measure(sessions[i], prompt, options.Decode));
            }
        }

        return [.. Models.Select((model, i) => new Row(model, context, best[i], best[i].Over(best[0]), i == 0 ? 0 : extraBytes))];
    }

    // Resets the session, prefills prompt[..^decode] from position 0, then decodes the last `decode` tokens one at a
    // time; wall and process cpu time of each phase.
    private static Speeds Measure(LlamaSession session, ReadOnlySpan<int> prompt, int decode)
    {
        int prefillLength = prompt.Length - decode;
        session.Reset();
        TimeSpan cpu = CpuTime();
        long start = Stopwatch.GetTimestamp();
        session.Forward(prompt[..prefillLength]);
        long prefillTicks = Stopwatch.GetTimestamp() - start;
        TimeSpan prefillCpu = CpuTime() - cpu;

        cpu = CpuTime();
        start = Stopwatch.GetTimestamp();
        for (int i = prefillLength; i < prompt.Length; i++)
        {
            session.Forward(prompt.Slice(i, 1));
        }

        long decodeTicks = Stopwatch.GetTimestamp() - start;
        TimeSpan decodeCpu = CpuTime() - cpu;
        return new(
            SessionTiming.PerSecond(prefillLength, prefillTicks),
            SessionTiming.PerSecond(decode, decodeTicks),
            prefillLength / Math.Max(prefillCpu.TotalSeconds, 1e-9),
            decode / Math.Max(decodeCpu.TotalSeconds, 1e-9));
    }

    // The cpu time of all the process's threads: clock_gettime(CLOCK_PROCESS_CPUTIME_ID) from the C library where it
    // loads (exact to the nanosecond, the running slices included), else the process's total processor time (ticks).
    private static unsafe TimeSpan CpuTime()
    {
        if (s_clockGettime is not null)
        {
            long* time = stackalloc long[2];   // struct timespec: seconds, nanoseconds
            if (s_clockGettime(ProcessCpuTimeClock, time) == 0)
            {
                return TimeSpan.FromTicks((time[0] * TimeSpan.TicksPerSecond) + (time[1] / 100));
            }
        }

        using Process process = Process.GetCurrentProcess();
        return process.TotalProcessorTime;
    }

    private const int ProcessCpuTimeClock = 2;   // CLOCK_PROCESS_CPUTIME_ID on Linux

    private static readonly unsafe delegate* unmanaged<int, long*, int> s_clockGettime = LoadClockGettime();

    private static unsafe delegate* unmanaged<int, long*, int> LoadClockGettime() =>
        OperatingSystem.IsLinux() && NativeLibrary.TryLoad("libc.so.6", out nint libc) && NativeLibrary.TryGetExport(libc, "clock_gettime", out nint export)
            ? (delegate* unmanaged<int, long*, int>)export
            : null;

    // Uniform weights in ±0.02·√3 (standard deviation 0.02), norms one, the same in both models; the option's
    // queries in ±0.5 and gains in [0.5, 1.5], so that its softmax is not uniform.
    private static void Fill(LlamaWeights baseline, LlamaWeights withOption)
    {
        XorShiftRandom random = new(42);
        float half = 0.02f * MathF.Sqrt(3f);
        foreach ((Tensor from, Tensor to) in baseline.Tensors.Zip(withOption.Tensors))
        {
            Span<float> values = from.AsSpan();
            if (from.Rank == 1)
            {
                values.Fill(1f);
            }
            else
            {
                for (int i = 0; i < values.Length; i++)
                {
                    values[i] = (float)(((2 * random.NextDouble()) - 1) * half);
                }
            }

            to.CopyFrom(values);
        }

        withOption.AttentionResiduals!.Randomize(43, 0.5f);
    }

    private static string Line(bool json, Row row, Options options)
    {
        if (!json)
        {
            return string.Create(
                CultureInfo.InvariantCulture,
                $"{row.Model,-14} context {row.Context,6}: prefill {row.Best.Prefill,8:F1} tok/s ({row.Ratio.Prefill:F3}x llama; cpu time {row.Ratio.PrefillCpu:F3}x), "
                + $"decode {row.Best.Decode,7:F2} tok/s ({row.Ratio.Decode:F3}x llama; cpu time {row.Ratio.DecodeCpu:F3}x)");
        }

        // One object, fields in a fixed order, speeds to 0.01 tok/s and ratios to 0.001.
        using MemoryStream buffer = new();
        using (Utf8JsonWriter writer = new(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("model", row.Model);
            writer.WriteNumber("context", row.Context);
            writer.WriteNumber("decode_steps", options.Decode);
            writer.WriteNumber("layers", options.Layers);
            writer.WriteNumber("dim", options.Dim);
            writer.WriteNumber("blocks", row.Model == Models[0] ? 0 : options.Blocks);
            writer.WriteNumber("threads", options.Threads);
            writer.WriteNumber("prefill_tok_s", Math.Round(row.Best.Prefill, 2));
            writer.WriteNumber("decode_tok_s", Math.Round(row.Best.Decode, 2));
            writer.WriteNumber("prefill_vs_llama", Math.Round(row.Ratio.Prefill, 3));
            writer.WriteNumber("decode_vs_llama", Math.Round(row.Ratio.Decode, 3));
            writer.WriteNumber("prefill_cpu_tok_s", Math.Round(row.Best.PrefillCpu, 2));
            writer.WriteNumber("decode_cpu_tok_s", Math.Round(row.Best.DecodeCpu, 2));
            writer.WriteNumber("prefill_cpu_vs_llama", Math.Round(row.Ratio.PrefillCpu, 3));
            writer.WriteNumber("decode_cpu_vs_llama", Math.Round(row.Ratio.DecodeCpu, 3));
            writer.WriteNumber("extra_bytes", row.ExtraBytes);
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
