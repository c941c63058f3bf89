// FsCheck properties of the ILGPU attention kernels (GpuAttention.cs) on ILGPU's CPU accelerator (warp 32, at most
// 64 threads per group) at optimization levels O1 and O2, against the float64 Attention.Reference.
// Shapes: head widths 1, 3, 8, 17, 64; GQA ratios 1, 2, 3; T from 1 to 40 with start > 0 (prefill in pieces);
// decode over contexts up to 300. Plans are forced small (key tiles of 1..32 positions, 1..7 rows per group, chunks
// of one or a few tiles) so that tiny contexts cross tile, row-block and chunk boundaries; the default plan runs too.
// Values come from the integer grid k/100, k in [-200, 200]. Tolerance: |got - expected| <= 2e-5 + 2e-5·|expected|
// (outputs are convex mixes of values in [-2, 2], accumulated in float32 over at most a few hundred positions).
// The accelerator is slow: one per test class (fixture), few cases, tiny sizes.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using ILGPU.Runtime;
using Kiln.Core.Tests.MatMul;
using Kiln.Devices;
using Kiln.Kernels;
using Xunit;
using Xunit.Abstractions;

namespace Kiln.Core.Tests.Attention;

/// <summary>One attention problem and the launch plan it is run with (Rows = 0: the device's default plan).</summary>
public sealed record GpuAttentionCase(
    int Hkv,
    int Group,
    int Dh,
    int Capacity,
    int Start,
    int Tokens,
    int Seed,
    int Threads,
    int KeyTile,
    int Rows,
    int TilesPerChunk)
{
    /// <summary>Query heads.</summary>
    public int H => Hkv * Group;
}

/// <summary>The ILGPU attention kernels against the reference; derived classes pick the optimization level.</summary>
public abstract class AttentionGpuProperties
{
    private const double Tolerance = 2e-5;

    private readonly IlgpuDevice _device;
    private readonly ITestOutputHelper _output;

    /// <summary>Runs the properties on <paramref name="device"/>.</summary>
    protected AttentionGpuProperties(IlgpuDevice device, ITestOutputHelper output)
    {
        _device = device;
        _output = output;
    }

    /// <summary>Prefill (T from 1 to 40, start > 0) with small forced plans, one or several chunks.</summary>
    [Property(MaxTest = 10)]
    public Property PrefillMatchesReference() =>
        Prop.ForAll(Cases(Gen.Choose(1, 40), Gen.Choose(1, 60), forcePlan: true).ToArbitrary(), Check);

    /// <summary>Decode (T = 1) over contexts up to 300 positions, split into several chunks and combined.</summary>
    [Property(MaxTest = 8)]
    public Property DecodeMatchesReference() =>
        Prop.ForAll(Cases(Gen.Constant(1), Gen.Choose(1, 300), forcePlan: true).ToArbitrary(), Check);

    /// <summary>Attention.Append and Attention.Compute on ILGPU tensors with the device's default plan.</summary>
    [Property(MaxTest = 6)]
    public Property DefaultPlanMatchesReference() =>
        Prop.ForAll(Cases(Gen.Choose(1, 12), Gen.Choose(1, 300), forcePlan: false).ToArbitrary(), Check);

    /// <summary>
    /// The widest supported head (Dh = 256) with the default plan's 16-position tiles: 6 rows use the 32 KB kernel,
    /// 14 rows the 48 KB one.
    /// </summary>
    [Fact]
    public void WidestHeadMatchesReference()
    {
        int medium = GpuAttention.Plan(_device.Accelerator, 3, 2, 1, 256, 20).SharedFloats(256);
        Assert.InRange(medium, GpuAttention.SharedFloats16K + 1, GpuAttention.SharedFloats32K);
        Check(new GpuAttentionCase(Hkv: 1, Group: 2, Dh: 256, Capacity: 21, Start: 17, Tokens: 3, Seed: 5,
            Threads: 0, KeyTile: 0, Rows: 0, TilesPerChunk: 0));
        int large = GpuAttention.Plan(_device.Accelerator, 8, 2, 1, 256, 20).SharedFloats(256);
        Assert.InRange(large, GpuAttention.SharedFloats32K + 1, GpuAttention.SharedFloats48K);
        Check(new GpuAttentionCase(Hkv: 1, Group: 2, Dh: 256, Capacity: 21, Start: 12, Tokens: 8, Seed: 6,
            Threads: 0, KeyTile: 0, Rows: 0, TilesPerChunk: 0));
    }

    /// <summary>Append writes the new rows, transposed, and leaves every other cell as it was.</summary>
    [Property(MaxTest = 6)]
    public Property AppendWritesExactlyTheNewCells() =>
        Prop.ForAll(Cases(Gen.Choose(1, 20), Gen.Choose(1, 40), forcePlan: false).ToArbitrary(), c =>
        {
            int width = c.Hkv * c.Dh;
            float[] before = Values(c.Hkv * c.Dh * c.Capacity, c.Seed);
            float[] rows = Values(c.Tokens * width, c.Seed + 1);
            using Tensor keyCache = Tensor.FromArray(before, [c.Hkv, c.Dh, c.Capacity], _device);
            using Tensor valueCache = Tensor.FromArray(before, [c.Hkv, c.Dh, c.Capacity], _device);
            using Tensor k = Tensor.FromArray(rows, [c.Tokens, width], _device);
            using Tensor v = Tensor.FromArray(rows.Select(static x => -x).ToArray(), [c.Tokens, width], _device);

            Kernels.Attention.Append(k, v, keyCache, valueCache, c.Start);
            _device.Synchronize();

            // Expected: the old cache with cells (j, start + row) replaced by row's column j.
            float[] expectedKeys = (float[])before.Clone();
            float[] expectedValues = (float[])before.Clone();
            for (int row = 0; row < c.Tokens; row++)
            {
                for (int j = 0; j < width; j++)
                {
                    expectedKeys[(j * c.Capacity) + c.Start + row] = rows[(row * width) + j];
                    expectedValues[(j * c.Capacity) + c.Start + row] = -rows[(row * width) + j];
                }
            }

            Assert.Equal(expectedKeys, keyCache.ToArray());
            Assert.Equal(expectedValues, valueCache.ToArray());
        });

    /// <summary>ILGPU tensors get the same argument errors as CPU tensors, and mixed devices are refused.</summary>
    [Fact]
    public void RejectsBadArguments_LikeTheCpuPath()
    {
        using CpuDevice cpu = new(1);
        using Tensor q = Tensor.Empty([2, 4], device: _device);
        using Tensor cache = Tensor.Empty([1, 4, 8], device: _device);
        using Tensor output = Tensor.Empty([2, 4], device: _device);
        using Tensor scalar = Tensor.Empty([], device: _device);
        using Tensor noWidth = Tensor.Empty([1, 0, 8], device: _device);
        using Tensor cpuOutput = Tensor.Empty([2, 4], device: cpu);
        using Tensor halfCache = Tensor.Empty([1, 4, 8], DType.Float16, _device);

        ArgumentOutOfRangeException late = Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.Attention.Compute(q, cache, cache, 7, output));
        Assert.Contains("do not fit", late.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.Attention.Append(q, q, cache, cache, 7));
        Assert.Throws<ArgumentException>(() => Kernels.Attention.Compute(scalar, cache, cache, 0, scalar));
        Assert.Throws<ArgumentException>(() => Kernels.Attention.Append(scalar, scalar, cache, cache, 0));
        Assert.Throws<ArgumentException>(() => Kernels.Attention.Compute(q, noWidth, noWidth, 0, q));
        Assert.Throws<ArgumentException>(() => Kernels.Attention.Compute(q, halfCache, halfCache, 0, output));
        ArgumentException mixed = Assert.Throws<ArgumentException>(() => Kernels.Attention.Compute(q, cache, cache, 0, cpuOutput));
        Assert.Contains("output", mixed.Message);
        Assert.Contains(_device.Name, mixed.Message);
    }

    /// <summary>
    /// Measures what one decode-attention call (default plan, split into chunks) allocates on the managed heap
    /// once its kernels are loaded and its scratch exists; ILGPU's launch through a cached delegate boxes a little.
    /// </summary>
    [Fact]
    public void DecodeStep_AllocatesLittleInSteadyState()
    {
        const int capacity = 1024;
        using Tensor keyCache = Tensor.FromArray(Values(2 * 8 * capacity, 1), [2, 8, capacity], _device);
        using Tensor valueCache = Tensor.FromArray(Values(2 * 8 * capacity, 2), [2, 8, capacity], _device);
        using Tensor q = Tensor.FromArray(Values(4 * 8, 3), [1, 4, 8], _device);
        using Tensor output = Tensor.Empty([1, 4, 8], device: _device);
        AttentionPlan plan = GpuAttention.Plan(_device.Accelerator, 1, 4, 2, 8, capacity);
        Assert.True(plan.Chunks > 1, $"the default plan at {capacity} positions should split the keys: {plan}");

        // Warm up: kernels load and the scratch is sized for the whole cache.
        Kernels.Attention.Compute(q, keyCache, valueCache, capacity - 1, output);
        _device.Synchronize();

        long before = GC.GetAllocatedBytesForCurrentThread();
        Kernels.Attention.Compute(q, keyCache, valueCache, capacity - 1, output);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        _device.Synchronize();
        _output.WriteLine($"one decode-attention call on {_device.Name} ({plan}) allocated {allocated} bytes");

        // No buffers, no per-call arrays: whatever ILGPU's two launches box stays far below one partial buffer.
        Assert.True(allocated < 4096, $"a decode-attention call allocated {allocated} bytes");
    }

    private static Gen<GpuAttentionCase> Cases(Gen<int> tokens, Gen<int> capacityBeyondTokens, bool forcePlan) =>
        from hkv in Gen.Choose(1, 3)
        from grp in Gen.Elements(1, 2, 3)
        from dh in Gen.Elements(1, 3, 8, 17, 64)
        from t in tokens
        from extra in capacityBeyondTokens
        from startFraction in Gen.Choose(0, 100)
        from seed in Gen.Choose(0, int.MaxValue)
        from threads in Gen.Elements(32, 64)
        from keyTile in Gen.Elements(1, 3, 8, 16, 32)
        from rows in Gen.Choose(1, 7)
        from tilesPerChunk in Gen.Elements(1, 2, 3, 1000)
        let capacity = t + extra
        let start = (extra - 1) * startFraction / 100
        select new GpuAttentionCase(hkv, grp, dh, capacity, start, t, seed,
            forcePlan ? threads : 0, forcePlan ? keyTile : 0, forcePlan ? rows : 0, forcePlan ? tilesPerChunk : 0);

    private static float[] Values(int count, int seed)
    {
        Random random = new(seed);
        float[] values = new float[count];
        for (int i = 0; i < count; i++)
        {
            values[i] = random.Next(-200, 201) / 100f;
        }

        return values;
    }

    private bool Check(GpuAttentionCase c)
    {
        // Keys, values and queries on the grid; the cache filled through Append in two pieces.
        int width = c.Hkv * c.Dh;
        int length = c.Start + c.Tokens;
        float[] k = Values(length * width, c.Seed);
        float[] v = Values(length * width, c.Seed ^ 0x5bd1e995);
        float[] q = Values(c.Tokens * c.H * c.Dh, c.Seed + 7);
        using Tensor keyCache = Tensor.FromArray(new float[c.Hkv * c.Dh * c.Capacity], [c.Hkv, c.Dh, c.Capacity], _device);
        using Tensor valueCache = Tensor.FromArray(new float[c.Hkv * c.Dh * c.Capacity], [c.Hkv, c.Dh, c.Capacity], _device);
        int firstPiece = c.Start / 2;
        foreach ((int from, int count) in new[] { (0, firstPiece), (firstPiece, length - firstPiece) })
        {
            using Tensor kPiece = Tensor.FromArray(k.AsSpan(from * width, count * width), [count, width], _device);
            using Tensor vPiece = Tensor.FromArray(v.AsSpan(from * width, count * width), [count, width], _device);
            Kernels.Attention.Append(kPiece, vPiece, keyCache, valueCache, from);
        }

        // Attend, with the forced plan or through the public entry point.
        using Tensor query = Tensor.FromArray(q, [c.Tokens, c.H, c.Dh], _device);
        using Tensor output = Tensor.Empty([c.Tokens, c.H, c.Dh], device: _device);
        if (c.Rows > 0)
        {
            int chunkLength = c.KeyTile * Math.Min(c.TilesPerChunk, (length + c.KeyTile - 1) / c.KeyTile);
            int chunks = (length + chunkLength - 1) / chunkLength;
            AttentionPlan plan = new(c.Threads, c.KeyTile, c.Rows, chunks, chunkLength);
            GpuAttention.Compute(_device, query, keyCache, valueCache, c.Start, output, plan);
        }
        else
        {
            Kernels.Attention.Compute(query, keyCache, valueCache, c.Start, output);
        }

        _device.Synchronize();
        double[] expected = Kernels.Attention.Reference(q, c.Tokens, c.H, c.Dh, keyCache.ToArray(), valueCache.ToArray(), c.Hkv, c.Capacity, c.Start);
        float[] actual = output.ToArray();
        for (int i = 0; i < actual.Length; i++)
        {
            if (!(Math.Abs(actual[i] - expected[i]) <= Tolerance + (Tolerance * Math.Abs(expected[i]))))
            {
                throw new Xunit.Sdk.XunitException($"{c} on {_device.Name}: output[{i}] = {actual[i]}, expected {expected[i]}");
            }
        }

        return true;
    }
}

/// <summary>The ILGPU attention properties at O1.</summary>
public sealed class AttentionGpuPropertiesO1 : AttentionGpuProperties, IClassFixture<IlgpuO1Fixture>
{
    /// <summary>Uses the class's O1 accelerator.</summary>
    public AttentionGpuPropertiesO1(IlgpuO1Fixture fixture, ITestOutputHelper output)
        : base(fixture.Device, output)
    {
    }
}

/// <summary>The ILGPU attention properties at O2.</summary>
public sealed class AttentionGpuPropertiesO2 : AttentionGpuProperties, IClassFixture<IlgpuO2Fixture>
{
    /// <summary>Uses the class's O2 accelerator.</summary>
    public AttentionGpuPropertiesO2(IlgpuO2Fixture fixture, ITestOutputHelper output)
        : base(fixture.Device, output)
    {
    }
}

/// <summary>The default plans fit ILGPU's 48 KB of shared memory for every supported head width.</summary>
public sealed class AttentionPlanTests : IClassFixture<IlgpuO1Fixture>
{
    private readonly Accelerator _accelerator;

    /// <summary>Uses the class's accelerator for its group and warp sizes.</summary>
    public AttentionPlanTests(IlgpuO1Fixture fixture)
    {
        _accelerator = fixture.Device.Accelerator;
    }

    /// <summary>Every Dh up to 256, GQA ratios up to 8, T up to 64: within budget and valid.</summary>
    [Fact]
    public void DefaultPlans_FitTheSharedMemoryBudget()
    {
        for (int dh = 1; dh <= GpuAttention.MaxHeadDim; dh++)
        {
            foreach (int group in new[] { 1, 2, 3, 4, 8 })
            {
                foreach (int t in new[] { 1, 2, 17, 64 })
                {
                    AttentionPlan plan = GpuAttention.Plan(_accelerator, t, 2 * group, 2, dh, 4096);
                    Assert.True(plan.SharedFloats(dh) * sizeof(float) <= 48 * 1024, $"Dh {dh}: {plan}");
                    GpuAttention.CheckPlan(plan, dh, _accelerator);
                    Assert.True(plan.ChunkLength * plan.Chunks >= 4096 && plan.ChunkLength * (plan.Chunks - 1) < 4096, $"{plan}");
                }
            }
        }
    }

    /// <summary>Short contexts run one chunk; long decode contexts split into chunks of at least 256 positions.</summary>
    [Fact]
    public void DecodePlans_SplitOnlyLongContexts()
    {
        Assert.Equal(1, GpuAttention.Plan(_accelerator, 1, 8, 1, 64, 200).Chunks);
        AttentionPlan longContext = GpuAttention.Plan(_accelerator, 1, 8, 1, 64, 4096);
        Assert.True(longContext.Chunks > 1 && longContext.ChunkLength >= GpuAttention.MinChunkLength, $"{longContext}");
    }

    /// <summary>A plan that needs more than 48 KB is refused with a message naming the budget.</summary>
    [Fact]
    public void OversizedPlan_IsRefused()
    {
        AttentionPlan plan = new(Threads: 64, KeyTile: 32, Rows: 64, Chunks: 1, ChunkLength: 32);
        InvalidOperationException error = Assert.Throws<InvalidOperationException>(() => GpuAttention.CheckPlan(plan, 256, _accelerator));
        Assert.Contains("48 KB", error.Message);
    }
}
