// Section d, model: a Llama-shaped model with random weights (grid values filled on the device) run through the
// session the library picks for the device (InferenceSessions.Default): prefill tokens per second for one prompt,
// decode tokens per second for greedy steps after it, and decode against its bandwidth floor.
//
// Bandwidth floor: one decode step must read every weight once, so it cannot take less than
//   weight bytes / copy bandwidth,   weight bytes = L · (matrices · w + 2 · D · 4) + D · 4 + V · D · w (+ V · D · w
//   for a separate classifier) + D · w (the token's embedding row), w = bytes per weight element,
//   matrices = D · (H·Dh) · 2 + D · (Hkv·Dh) · 2 + 3 · D · F
// (KV-cache reads are left out: 2 · L · Hkv·Dh · 4 bytes per cached position, under 2% here). The target is a decode
// speed of at least 60% of the floor.
//
// DSA decode at a long context: a small DSA model (CheckSize.DsaModel, every layer Full, float32) prefilled to the
// context, then greedy decode steps timed, against the dense LlamaSession over the same weights and tokens. At a long
// context attention dominates a small model's step: dense attention reads every cached position, DSA reads K of them
// plus the indexer's Di floats per position.

using System.Diagnostics;
using Kiln.Devices;
using Kiln.Models;
using Kiln.Models.Dsa;
using Kiln.Models.Llama;

namespace Kiln.GpuCheck;

/// <summary>The model section.</summary>
internal static class ModelSection
{
    /// <summary>The section's columns.</summary>
    public static readonly Column[] Columns =
    [
        new("metric", "metric"),
        new("weights", "weights"),
        new("value", "value", "#,0.###"),
        new("unit", "unit"),
        new("note", "note"),
    ];

    /// <summary>Builds the model for each weight dtype and measures prefill and decode.</summary>
    public static void Run(CheckContext context)
    {
        CheckSize size = context.Size;
        LlamaConfig config = size.Model;
        (int prompt, int decode) = size.ModelTokens;
        Report.Table table = context.Report.Section(
            "model",
            $"Model on {context.Device.Name}: Llama-shaped, random weights, prompt {prompt}, {decode} decode steps "
            + $"(median of {size.ModelRepetitions} after warm-up)",
            Columns);
        table.Add("parameters", "", config.ParameterCount, "", Describe(config));

        // The library's choice of session on this device; the reference session runs on the host, far too slowly
        // for a 1B model.
        string session = InferenceSessions.DefaultNameOn(context.Device);
        if (session == "reference" && size == CheckSize.Full)
        {
            table.Add("prefill", "", double.NaN, "tok/s",
                $"skipped: InferenceSessions.Default gives the host reference session on {context.Device.Name}");
            return;
        }

        double copy = BandwidthSection.MeasureCopy(context, table: null);
        foreach (DType dtype in size.ModelDTypes)
        {
            context.Log.WriteLine($"kiln-gpucheck: model: {dtype.Name()} weights, session {session}");
            try
            {
                Measure(context, table, dtype, session, copy);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                context.Errors++;
                table.Add("prefill", dtype.Name(), double.NaN, "tok/s",
                    $"error: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
            }
        }

        MeasureDsa(context, table);
    }

    /// <summary>DSA and dense decode speed of <see cref="CheckSize.DsaModel"/> at <see cref="CheckSize.DsaDecode"/>.</summary>
    private static void MeasureDsa(CheckContext context, Report.Table table)
    {
        (int length, int steps) = context.Size.DsaDecode;
        DsaConfig config = context.Size.DsaModel;
        context.Log.WriteLine($"kiln-gpucheck: model: DSA decode at context {length}");
        try
        {
            using DsaWeights host = DsaWeights.CreateRandom(config, (ulong)context.Seed);
            using DsaWeights weights = host.To(context.Device);
            Random random = new(context.Seed);
            int[] prompt = new int[length];
            for (int i = 0; i < prompt.Length; i++)
            {
                prompt[i] = random.Next(config.Llama.VocabSize);
            }

            SessionOptions options = new() { ContextLength = length + steps + 1 };
            double dsa = DecodeRate(new DsaSession(weights, options), prompt, steps);
            double dense = DecodeRate(new LlamaSession(weights.Dense, options), prompt, steps);
            LlamaConfig c = config.Llama;
            string model = $"D {c.Dim}, L {c.Layers}, H {c.Heads}, Hkv {c.KvHeads}, Dh {c.HeadDim}; indexer {config.IndexerHeads} × "
                + $"{config.IndexerHeadDim}, K {config.TopK}, all Full";
            table.Add("DSA decode", "float32", dsa, "tok/s", $"{steps} steps after a context of {length}; {model}");
            table.Add("dense decode (same model)", "float32", dense, "tok/s", $"the same weights and tokens through LlamaSession");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            context.Errors++;
            table.Add("DSA decode", "float32", double.NaN, "tok/s", $"error: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
        }
    }

    // Prefills the prompt (untimed), one warm-up step, then `steps` greedy steps drawn on the device: tokens per second.
    private static double DecodeRate(IInferenceSession session, int[] prompt, int steps)
    {
        using (session)
        {
            IDeviceSampling sampling = (IDeviceSampling)session;
            int id = sampling.ForwardAndSample(prompt, 0f, 0.0);
            id = sampling.ForwardAndSample([id], 0f, 0.0);
            long start = Stopwatch.GetTimestamp();
            for (int step = 0; step < steps - 1; step++)
            {
                id = sampling.ForwardAndSample([id], 0f, 0.0);
            }

            return (steps - 1) / Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
    }

    /// <summary>The bytes one decode step reads from the weights (see the file header).</summary>
    public static long WeightBytesPerToken(LlamaConfig c, DType dtype)
    {
        long w = dtype.SizeOf();
        long matrices = ((long)c.Dim * c.QueryDim * 2) + ((long)c.Dim * c.KvDim * 2) + (3L * c.Dim * c.HiddenDim);
        long layers = c.Layers * ((matrices * w) + (2L * c.Dim * 4));
        long classifier = (long)c.VocabSize * c.Dim * w * (c.SharedClassifier ? 1 : 2);
        return layers + (c.Dim * 4L) + classifier + (c.Dim * w);
    }

    private static void Measure(CheckContext context, Report.Table table, DType dtype, string session, double copy)
    {
        CheckSize size = context.Size;
        LlamaConfig config = size.Model;
        (int promptLength, int decodeSteps) = size.ModelTokens;

        // Random weights on the device: norms near 1, matrices with variance 1/fan-in, the embedding within ±1.
        using LlamaWeights weights = LlamaWeights.Allocate(config, context.Device, dtype);
        uint seed = (uint)context.Seed;
        foreach (Tensor tensor in weights.Tensors)
        {
            seed = (seed * 747796405u) + 2891336453u;
            if (tensor.Rank == 1)
            {
                DeviceFill.Uniform(tensor, seed, 0.25f, 1f);
            }
            else if (ReferenceEquals(tensor, weights.TokenEmbedding))
            {
                DeviceFill.Uniform(tensor, seed, 1f);
            }
            else
            {
                DeviceFill.Uniform(tensor, seed, MathF.Sqrt(3f / tensor.Size(1)));
            }
        }

        context.Device.Synchronize();

        // A random prompt and a session sized for it and the decode steps.
        Random random = new(context.Seed);
        int[] prompt = new int[promptLength];
        for (int i = 0; i < prompt.Length; i++)
        {
            prompt[i] = random.Next(config.VocabSize);
        }

        using IInferenceSession model = InferenceSessions.Default(weights, new SessionOptions { ContextLength = promptLength + decodeSteps });

        // Each step returns the next (greedy) id: drawn on the device when the session can, so that only the id
        // comes back; otherwise the logits come back and the argmax runs on the host.
        IDeviceSampling? onDevice = model as IDeviceSampling;
        int Step(ReadOnlySpan<int> tokens) =>
            onDevice is not null ? onDevice.ForwardAndSample(tokens, 0f, 0.0) : ArgMax(model.Forward(tokens));
        string sampling = onDevice is not null ? "greedy id drawn on the device" : "argmax of the logits on the host";

        // Warm-up: one prefill and one decode step compile and load every kernel.
        int[] token = new int[1];
        token[0] = Step(prompt);
        Step(token);

        // Prefill: the whole prompt in one call (which returns a host value, so the device has finished).
        double[] prefill = new double[size.ModelRepetitions];
        double[] decode = new double[size.ModelRepetitions];
        for (int r = 0; r < prefill.Length; r++)
        {
            model.Reset();
            long start = Stopwatch.GetTimestamp();
            token[0] = Step(prompt);
            prefill[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;

            // Decode: greedy steps, each feeding back the id the last one chose.
            start = Stopwatch.GetTimestamp();
            for (int step = 0; step < decodeSteps; step++)
            {
                token[0] = Step(token);
            }

            decode[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
        }

        // Report tokens per second and the decode floor.
        long weightBytes = WeightBytesPerToken(config, dtype);
        double prefillRate = promptLength / Timing.MedianOf(prefill);
        double decodeRate = decodeSteps / Timing.MedianOf(decode);
        double floorRate = copy / weightBytes;
        string name = dtype.Name();
        table.Add("weight bytes per decode step", name, weightBytes, "bytes", "all matrices, norms, classifier, one embedding row");
        table.Add("prefill", name, prefillRate, "tok/s", $"prompt {promptLength}, session {session}");
        table.Add("decode", name, decodeRate, "tok/s", $"{decodeSteps} steps after the prompt, {sampling}");
        table.Add("decode floor", name, floorRate, "tok/s", $"copy bandwidth {copy / 1e9:0.0} GB/s / weight bytes");
        table.Add("decode / floor", name, decodeRate / floorRate, "", "target ≥ 0.60");
    }

    private static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
        {
            if (logits[i] > logits[best])
            {
                best = i;
            }
        }

        return best;
    }

    private static string Describe(LlamaConfig c) =>
        $"D {c.Dim}, F {c.HiddenDim}, L {c.Layers}, H {c.Heads}, Hkv {c.KvHeads}, Dh {c.HeadDim}, V {c.VocabSize}, "
        + $"seq_len {c.SeqLen}, rope_theta {c.RopeTheta}, {(c.SharedClassifier ? "shared" : "separate")} classifier";
}
