// The DSA session on ILGPU's CPU accelerator (4 lanes × 4 warps: the GPU code path without a GPU) against the cpu
// session on the same random-weight models: logits within 1e-4 relative to (1 + |logit|) whenever every layer's
// selection agrees (it does except at float32 near-ties of index scores, which the device and the cpu round
// differently; the properties count such cases and require most cases to compare), identical selections and greedy
// ids for a dozen tokens through ForwardAndSample on a fixed model, K ≥ context equal to the dense session, decode
// after prefill equal to one pass on the device, a decode step's allocations bounded by ILGPU's launch boxing, and
// DsaWeights.To copying every indexer. The accelerator is slow: one per class, tiny models.
using FsCheck;
using FsCheck.Fluent;
using ILGPU;
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Dsa;
using Kiln.Models.Llama;
using Xunit;
using Xunit.Abstractions;

namespace Kiln.Models.Tests.Dsa;

/// <summary>An ilgpu-cpu:4x4 device at O1, shared by one test class.</summary>
public sealed class DsaIlgpuFixture : IDisposable
{
    /// <summary>The device: 4 lanes per warp, 4 warps per group.</summary>
    public IlgpuDevice Device { get; } = IlgpuDevice.CreateCpuAccelerator(OptimizationLevel.O1, 4, 4);

    /// <inheritdoc />
    public void Dispose() => Device.Dispose();
}

/// <summary>The DSA session on ilgpu-cpu:4x4 against the cpu session.</summary>
public sealed class DsaDeviceSessionTests : IClassFixture<DsaIlgpuFixture>
{
    private const double Tolerance = 1e-4;

    private readonly IlgpuDevice _device;
    private readonly ITestOutputHelper _output;

    /// <summary>Uses the class's device.</summary>
    public DsaDeviceSessionTests(DsaIlgpuFixture fixture, ITestOutputHelper output)
    {
        _device = fixture.Device;
        _output = output;
    }

    /// <summary>
    /// Random small models (odd sizes, both RoPE layouts, any pattern): the device's logits are the cpu's within
    /// 1e-4·(1 + |logit|) and its selections the cpu's, whenever the selections agree.
    /// </summary>
    [Fact]
    public void DeviceSession_MatchesTheCpuSession()
    {
        int compared = 0, differed = 0;
        Prop.ForAll(Cases(denseK: false).ToArbitrary(), c =>
        {
            using DsaWeights weights = DsaWeights.CreateRandom(c.Config, c.Seed);
            using DsaWeights onDevice = weights.To(_device);
            using DsaSession cpu = new(weights, new SessionOptions(), recordSelections: true);
            using DsaSession device = new(onDevice, new SessionOptions(), recordSelections: true);
            float[] expected = cpu.Forward(c.Tokens).ToArray();
            float[] actual = device.Forward(c.Tokens).ToArray();
            if (!SameSelections(cpu, device))
            {
                differed++;
                return true;
            }

            compared++;
            double worst = Worst(expected, actual);
            if (worst > Tolerance)
            {
                throw new Xunit.Sdk.XunitException($"{c}: logits differ by {worst} (relative to 1 + |logit|)");
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(12));
        _output.WriteLine($"{compared} cases compared, {differed} with a near-tie that changed a selection");
        Assert.True(compared >= 9, $"only {compared} of 12 cases had agreeing selections");
    }

    /// <summary>With K at least the context, the device DSA session gives the dense session's logits.</summary>
    [Fact]
    public void KAtLeastContext_GivesTheDenseLogits()
    {
        Prop.ForAll(Cases(denseK: true).ToArbitrary(), c =>
        {
            using DsaWeights weights = DsaWeights.CreateRandom(c.Config, c.Seed);
            using DsaWeights onDevice = weights.To(_device);
            using LlamaSession dense = new(weights.Dense, new SessionOptions());
            using DsaSession device = new(onDevice, new SessionOptions());
            double worst = Worst(dense.Forward(c.Tokens).ToArray(), device.Forward(c.Tokens).ToArray());
            if (worst > Tolerance)
            {
                throw new Xunit.Sdk.XunitException($"{c}: logits differ from dense by {worst}");
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(6));
    }

    /// <summary>
    /// A fixed model with K below the context (pattern FSFS, K 3): a dozen greedy tokens through ForwardAndSample on
    /// the device are the cpu session's, and every layer's selection agrees with the cpu's.
    /// </summary>
    [Fact]
    public void Greedy_ADozenTokens_AreTheCpuIds()
    {
        DsaConfig config = DsaSessionTests.SmallConfig("FSFS", topK: 3) with { Llama = DsaSessionTests.SmallConfig("FSFS", 3).Llama with { SeqLen = 24 } };
        using DsaWeights weights = DsaWeights.CreateRandom(config, seed: 21);
        using DsaWeights onDevice = weights.To(_device);
        using DsaSession cpu = new(weights, new SessionOptions(), recordSelections: true);
        using DsaSession device = new(onDevice, new SessionOptions(), recordSelections: true);
        int[] prompt = [1, 5, 9, 2, 7];
        int fromCpu = cpu.ForwardAndSample(prompt, 0f, 0);
        int fromDevice = device.ForwardAndSample(prompt, 0f, 0);
        List<int> cpuIds = [fromCpu], deviceIds = [fromDevice];
        for (int i = 1; i < 12; i++)
        {
            fromCpu = cpu.ForwardAndSample([fromCpu], 0f, 0);
            fromDevice = device.ForwardAndSample([fromDevice], 0f, 0);
            cpuIds.Add(fromCpu);
            deviceIds.Add(fromDevice);
        }

        Assert.True(SameSelections(cpu, device), "a selection differs between the cpu and the device");
        Assert.Equal(cpuIds, deviceIds);

        // The run is sparse: the dense session on the same weights gives other logits for the same tokens.
        using LlamaSession dense = new(onDevice.Dense, new SessionOptions());
        int[] all = [.. prompt, .. deviceIds];
        Assert.True(Worst(dense.Forward(all).ToArray(), device.Forward([deviceIds[^1]]).ToArray()) > 1e-3, "the DSA run equals the dense one");
    }

    /// <summary>On the device, prefill in pieces and decode after prefill give the one-pass logits and selections.</summary>
    [Fact]
    public void DecodeAfterPrefill_EqualsOnePass()
    {
        Prop.ForAll(Cases(denseK: false).ToArbitrary(), Gen.Choose(0, 100).ToArbitrary(), (c, splitSeed) =>
        {
            using DsaWeights weights = DsaWeights.CreateRandom(c.Config, c.Seed);
            using DsaWeights onDevice = weights.To(_device);
            using DsaSession session = new(onDevice, new SessionOptions(), recordSelections: true);
            int t = c.Tokens.Length;
            float[] whole = session.Forward(c.Tokens).ToArray();
            int[][] wholeSelections = Selections(session);

            // [0, split), [split, T - 1), then the last token decoded alone.
            session.Reset();
            int split = splitSeed % t;
            if (split > 0)
            {
                session.Forward(c.Tokens.AsSpan(0, split));
            }

            if (split < t - 1)
            {
                session.Forward(c.Tokens.AsSpan(split, t - 1 - split));
            }

            float[] pieces = session.Forward(c.Tokens.AsSpan(t - 1)).ToArray();
            bool same = wholeSelections.Zip(Selections(session)).All(static p => p.First.AsSpan().SequenceEqual(p.Second));
            double worst = Worst(whole, pieces);
            if (same && worst > Tolerance)
            {
                throw new Xunit.Sdk.XunitException($"{c} split {split}: decode after prefill differs from one pass by {worst}");
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(8));
    }

    /// <summary>
    /// A device decode step queues kernels only: after warm-up, what 10 steps allocate is ILGPU's launch boxing,
    /// measured against the dense LlamaSession on the same device and weights (its steps allocate only that too):
    /// the DSA step's extra launches (indexer products, scale, rotation, key append, scores, top-k, the KV append and
    /// sparse attention) may add a few hundred bytes each, and nothing grows with the position.
    /// </summary>
    [Fact]
    public void DecodeStep_AllocatesOnlyLaunchBoxing()
    {
        DsaConfig config = DsaSessionTests.SmallConfig("FSFS", topK: 3) with { Llama = DsaSessionTests.SmallConfig("FSFS", 3).Llama with { SeqLen = 1024 } };
        using DsaWeights weights = DsaWeights.CreateRandom(config, seed: 5);
        using DsaWeights onDevice = weights.To(_device);
        using DsaSession session = new(onDevice, new SessionOptions());
        using LlamaSession dense = new(onDevice.Dense, new SessionOptions());
        long dsa = PerDecodeStep(session);
        long baseline = PerDecodeStep(dense);
        long later = PerDecodeStep(session);
        _output.WriteLine($"a decode step on {_device.Name}: DSA {dsa} bytes, then {later}; dense {baseline} bytes");
        Assert.True(dsa - baseline < 8 * 1024, $"a DSA decode step allocated {dsa} bytes, the dense one {baseline}");
        Assert.True(later <= dsa + 512, $"decode steps allocate more as the position grows: {dsa}, then {later} bytes");
    }

    // Bytes one greedy decode step allocates, averaged over 10 steps after two warm-up calls (a collection during the measurement repeats it).
    private static long PerDecodeStep(IDeviceSampling session)
    {
        int next = ((IInferenceSession)session).Position == 0 ? session.ForwardAndSample([1, 5, 9, 2], 0f, 0) : 3;
        next = session.ForwardAndSample([next], 0f, 0);
        long allocated = Allocations.Measure(() =>
        {
            for (int i = 0; i < 10; i++)
            {
                next = session.ForwardAndSample([next], 0f, 0);
            }
        });
        return allocated / 10;
    }

    /// <summary>DsaWeights.To copies the dense weights, every indexer and the pattern; a Shared layer's missing indexer stays missing.</summary>
    [Fact]
    public void WeightsTo_CopiesEveryIndexer()
    {
        DsaConfig config = DsaSessionTests.SmallConfig("FSFS", topK: 3);
        using DsaWeights weights = DsaWeights.CreateRandom(config, seed: 2);
        weights.SetIndexer(3, null);
        using DsaWeights copy = weights.To(_device);
        Assert.Same(_device, copy.Device);
        Assert.Equal(config.Pattern.ToString(), copy.Config.Pattern.ToString());
        Assert.Null(copy.Indexers[3]);
        for (int l = 0; l < 3; l++)
        {
            Assert.Same(_device, copy.Indexers[l]!.Device);
            Assert.Equal(weights.Indexers[l]!.Flatten(), copy.Indexers[l]!.Tensors.SelectMany(static t => t.ToArray()).ToArray());
        }

        Assert.Equal(weights.Dense.Layers[1].Wq.ToArray(), copy.Dense.Layers[1].Wq.ToArray());
        using DsaIndexerWeights stray = new(config);
        Assert.Contains("copy it", Assert.Throws<ArgumentException>(() => copy.SetIndexer(1, stray)).Message);
    }

    /// <summary>
    /// A context whose indexer key caches do not fit the device is refused with the session's memory message: with
    /// the weights plus 2 MiB the dense session's buffers fit (its 1024-position KV cache is 2·4·4·1024·4 B = 128 KiB)
    /// but four Full layers' key caches of Di 256 (4·256·1024·4 B = 4 MiB) do not; with 16 MiB everything fits.
    /// </summary>
    [Fact]
    public void AContextWhoseIndexerCachesDoNotFit_IsRefused()
    {
        DsaConfig config = DsaSessionTests.SmallConfig("FFFF", topK: 3) with
        {
            Llama = DsaSessionTests.SmallConfig("FFFF", 3).Llama with { SeqLen = 1024 },
            IndexerHeads = 1,
            IndexerHeadDim = 256,
        };
        using DsaWeights host = DsaWeights.CreateRandom(config, seed: 4);
        using DsaWeights weights = host.To(_device);
        long weightBytes = weights.Dense.Tensors.Concat(weights.Indexers.SelectMany(static i => i!.Tensors)).Sum(static t => t.Length * t.DType.SizeOf());
        using (new DsaSession(weights, new SessionOptions(), recordSelections: false, weightBytes + (16L << 20)))
        {
        }

        using (new LlamaSession(weights.Dense, new SessionOptions(), weightBytes + (2L << 20)))
        {
        }

        InsufficientMemoryException error = Assert.Throws<InsufficientMemoryException>(
            () => new DsaSession(weights, new SessionOptions(), recordSelections: false, weightBytes + (2L << 20)));
        Assert.Contains("on ilgpu-cpu", error.Message);
        Assert.Contains("SessionOptions.ContextLength", error.Message);
    }

    /// <summary>A case: config, seed, tokens.</summary>
    public sealed record Case(DsaConfig Config, ulong Seed, int[] Tokens)
    {
        public override string ToString() =>
            $"pattern {Config.Pattern} K {Config.TopK} Hi {Config.IndexerHeads} Di {Config.IndexerHeadDim} rope "
            + $"{Config.IndexerRopeDims} {Config.IndexerRopeLayout} H {Config.Llama.Heads}/{Config.Llama.KvHeads} Dh "
            + $"{Config.Llama.HeadDim} seed {Seed} tokens [{string.Join(",", Tokens)}]";
    }

    // Small random models: odd sizes, size 1, both layouts, patterns starting with F; K below the context unless dense.
    private static Gen<Case> Cases(bool denseK) =>
        from heads in Gen.Choose(1, 2)
        from headDim in Gen.Elements(2, 4, 6)
        from hi in Gen.Choose(1, 5)
        from di in Gen.Elements(1, 2, 5, 8, 17)
        from ropeHalf in Gen.Choose(0, 4)
        from layers in Gen.Choose(1, 3)
        from shared in Gen.Choose(0, 1).ArrayOf(3)
        from k in Gen.Choose(1, 6)
        from t in Gen.Choose(1, 11)
        from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
        from seed in Gen.Choose(0, 1_000_000)
        let pattern = "F" + string.Concat(shared.Take(layers - 1).Select(s => s == 1 ? 'S' : 'F'))
        select new Case(
            new DsaConfig
            {
                Llama = new LlamaConfig
                {
                    Dim = heads * 2 * headDim, HiddenDim = 7, Layers = layers, Heads = heads * 2, KvHeads = heads,
                    VocabSize = 19, SeqLen = 12, HeadDim = headDim,
                },
                IndexerHeads = hi,
                IndexerHeadDim = di,
                IndexerRopeDims = Math.Min(2 * ropeHalf, di - (di % 2)),
                TopK = denseK ? 12 + k : k,
                IndexerRopeLayout = layout,
                Pattern = IndexCachePattern.Parse(pattern),
            },
            (ulong)seed,
            Enumerable.Range(0, t).Select(i => ((i * 7) + seed) % 19).ToArray());

    private static int[][] Selections(DsaSession session) =>
        Enumerable.Range(0, session.Config.Layers).Select(session.Selection).ToArray();

    private static bool SameSelections(DsaSession a, DsaSession b) =>
        Selections(a).Zip(Selections(b)).All(static p => p.First.AsSpan().SequenceEqual(p.Second));

    private static double Worst(float[] expected, float[] actual)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / (1 + Math.Abs(expected[i])));
        }

        return worst;
    }
}
