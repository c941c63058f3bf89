// Properties of the DSA kernels on ILGPU devices (GpuIndexer.cs, GpuTopK.cs, GpuSparseAttention.cs), run on ILGPU's
// CPU accelerator in two shapes: 4 lanes × 4 warps (NarrowIlgpuFixture: groups of 16, many warps per group) and
// 32 lanes × 2 warps (WideIlgpuFixture: warp-32 code). Each kernel is checked against the CPU kernel and/or the
// float64 reference:
//   - AppendKeys: within 2e-6·(1 + m) + 3e-7·κ·m of the CPU kernel for a column of largest magnitude m whose key row
//     has κ = (Σx²/n) / var (the one-pass variance loses digits as κ grows, and the two round it differently), cells
//     outside the new columns exactly untouched; RotateQueries within 1e-6 + 1e-6·|x| (the same arithmetic);
//   - Scores: exactly the float64 reference on grid values (every product and sum is exact in float32), -∞ after
//     each token's position, head counts not a multiple of 4 and over one head block, head widths over one staged
//     chunk of 32 dimensions, several position tiles, start > 0, T = 1;
//   - TopK.Select: exactly the CPU selection, on rows full of ties (3 levels), with NaN, ±0, ±∞, K ≥ context, T = 1;
//   - SparseAttention: within 2e-5 of the float64 reference on random causal selections (random order, -1 padded),
//     with forced small plans (1..32-entry tiles, 1..G heads per group, many chunks) and the default plan; future
//     and negative entries are skipped; Append writes exactly the new rows.
// Failures print the case and FsCheck's replay seed. Sizes stay tiny: every simulated thread is an OS thread.
using FsCheck;
using FsCheck.Fluent;
using Kiln.Core.Tests.Devices;
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Core.Tests.Sparse;

/// <summary>The DSA kernels on one simulated device; derived classes pick its shape.</summary>
public abstract class SparseGpuProperties
{
    private readonly IlgpuDevice _device;
    private readonly CpuDevice _cpu = CpuDevice.Default;

    /// <summary>Runs the properties on <paramref name="device"/>.</summary>
    protected SparseGpuProperties(IlgpuDevice device)
    {
        _device = device;
    }

    public sealed record AppendCase(int HeadDim, int RopeHalf, RopeLayout Layout, int Tokens, int Start, int Extra, int Seed);

    /// <summary>AppendKeys on the device writes the CPU kernel's columns and nothing else.</summary>
    [Fact]
    public void AppendKeys_MatchesTheCpuKernel()
    {
        Gen<AppendCase> cases =
            from di in Gen.Elements(1, 2, 3, 7, 16, 17, 33)
            from ropeHalf in Gen.Choose(0, 8)
            from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
            from tokens in Gen.Choose(1, 9)
            from start in Gen.Choose(0, 20)
            from extra in Gen.Choose(0, 5)
            from seed in Gen.Choose(0, int.MaxValue)
            select new AppendCase(di, Math.Min(ropeHalf, di / 2), layout, tokens, start, extra, seed);
        Prop.ForAll(cases.ToArbitrary(), c =>
        {
            Random random = new(c.Seed);
            int capacity = c.Start + c.Tokens + c.Extra;
            float[] keys = Values(random, c.Tokens * c.HeadDim, 3f);
            float[] weight = Values(random, c.HeadDim, 1f);
            float[] bias = Values(random, c.HeadDim, 0.5f);
            float[] before = Values(random, c.HeadDim * capacity, 1f);
            float[] expected = RunAppend(_cpu, c, capacity, keys, weight, bias, before);
            float[] actual = RunAppend(_device, c, capacity, keys, weight, bias, before);
            for (int d = 0; d < c.HeadDim; d++)
            {
                for (int s = 0; s < capacity; s++)
                {
                    // Untouched columns exactly; a new column within float32 rounding of the one-pass variance, whose
                    // error grows with the row's κ = (Σx²/n) / var (CPU and device round it differently).
                    int at = (d * capacity) + s;
                    int token = s - c.Start;
                    double allowed = token < 0 || token >= c.Tokens ? 0 : AppendTolerance(keys.AsSpan(token * c.HeadDim, c.HeadDim), expected, c, capacity, s);
                    if (!(Math.Abs(actual[at] - expected[at]) <= allowed))
                    {
                        throw new Xunit.Sdk.XunitException($"{c} on {_device.Name}: cache[{d}, {s}] = {actual[at]}, cpu {expected[at]} (allowed {allowed:G3})");
                    }
                }
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(25));
    }

    /// <summary>RotateQueries on the device is the CPU rotation, for every rotated width and both layouts.</summary>
    [Fact]
    public void RotateQueries_MatchesTheCpuRotation()
    {
        Gen<(int Heads, AppendCase Case)> cases =
            from heads in Gen.Choose(1, 5)
            from di in Gen.Elements(2, 3, 8, 17)
            from ropeHalf in Gen.Choose(1, 8)
            from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
            from tokens in Gen.Choose(1, 9)
            from start in Gen.Choose(0, 20)
            from seed in Gen.Choose(0, int.MaxValue)
            select (heads, new AppendCase(di, Math.Min(ropeHalf, di / 2), layout, tokens, start, 0, seed));
        Prop.ForAll(cases.ToArbitrary(), h =>
        {
            AppendCase c = h.Case;
            float[] q = Values(new Random(c.Seed), c.Tokens * h.Heads * c.HeadDim, 2f);
            float[] expected = RunRotate(_cpu, c, h.Heads, q);
            float[] actual = RunRotate(_device, c, h.Heads, q);
            AssertClose(expected, actual, 1e-6, $"{c} heads {h.Heads}");
            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(20));
    }

    /// <summary>Scores equal the float64 reference exactly on grid values, -∞ after each token's position.</summary>
    [Fact]
    public void Scores_MatchTheFloat64Reference()
    {
        Gen<IndexerTests.Case> cases =
            from heads in Gen.Choose(1, 19)
            from headDim in Gen.Elements(1, 3, 7, 16, 33, 65)
            from capacity in Gen.Choose(1, 300)
            from tokens in Gen.Choose(1, Math.Min(6, capacity))
            from start in Gen.Choose(0, capacity - tokens)
            from extra in Gen.Choose(0, capacity - tokens - start)
            from seed in Gen.Choose(0, int.MaxValue)
            select new IndexerTests.Case(heads, headDim, capacity, start, tokens, extra, seed, false);
        Prop.ForAll(cases.ToArbitrary(), c =>
        {
            Random random = new(c.Seed);
            float[] q = IndexerTests.Grid(random, c.Tokens * c.Heads * c.HeadDim, 8, 8);
            float[] w = IndexerTests.Grid(random, c.Tokens * c.Heads, 4, 4);
            float[] keys = IndexerTests.Grid(random, c.HeadDim * c.Capacity, 8, 8);
            int length = c.Start + c.Tokens + c.Extra;
            double[] expected = LightningIndexer.Reference(q, w, c.Tokens, c.Heads, c.HeadDim, keys, c.Capacity, c.Start, length);
            using Tensor query = Tensor.FromArray(q, [c.Tokens, c.Heads, c.HeadDim], _device);
            using Tensor weights = Tensor.FromArray(w, [c.Tokens, c.Heads], _device);
            using Tensor cache = Tensor.FromArray(keys, [c.HeadDim, c.Capacity], _device);
            using Tensor scores = Tensor.FromArray(new float[c.Tokens * length], [c.Tokens, length], _device);
            LightningIndexer.Scores(query, weights, cache, c.Start, scores);
            float[] actual = scores.ToArray();
            for (int i = 0; i < actual.Length; i++)
            {
                if (actual[i] != expected[i])
                {
                    throw new Xunit.Sdk.XunitException($"{c} on {_device.Name}: score[{i / length}, {i % length}] = {actual[i]}, expected {expected[i]}");
                }
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(20));
    }

    public sealed record SelectCase(int Length, int Start, int Tokens, int K, int Levels, bool Specials, int Seed);

    /// <summary>The device selection is exactly the CPU selection, ties, NaN, ±0 and ±∞ included.</summary>
    [Fact]
    public void TopK_EqualsTheCpuSelection()
    {
        Gen<SelectCase> cases =
            from tokens in Gen.Frequency((1, Gen.Constant(1)), (3, Gen.Choose(1, 8)))
            from start in Gen.Choose(0, 400)
            from extra in Gen.Choose(0, 5)
            from k in Gen.Frequency((3, Gen.Choose(1, 40)), (1, Gen.Choose(1, start + tokens + 10)))
            from levels in Gen.Elements(1, 3, 50, 100_000)
            from specials in Gen.Elements(false, true)
            from seed in Gen.Choose(0, int.MaxValue)
            select new SelectCase(start + tokens + extra, start, tokens, k, levels, specials, seed);
        Prop.ForAll(cases.ToArbitrary(), c =>
        {
            Random random = new(c.Seed);
            float[] scores = new float[c.Tokens * c.Length];
            float[] special = [float.NaN, -0f, 0f, float.PositiveInfinity, float.NegativeInfinity];
            for (int i = 0; i < scores.Length; i++)
            {
                scores[i] = c.Specials && random.Next(6) == 0
                    ? special[random.Next(special.Length)]
                    : random.Next(-c.Levels, c.Levels + 1) / 7f;
            }

            int[] expected = TopK.Reference(scores, c.Tokens, c.Length, c.Start, c.K);
            using Tensor cpuScores = Tensor.FromArray(scores, [c.Tokens, c.Length], _cpu);
            using Tensor cpuIndices = Tensor.Empty([c.Tokens, c.K], DType.Int32, _cpu);
            TopK.Select(cpuScores, c.Start, c.K, cpuIndices);
            using Tensor deviceScores = Tensor.FromArray(scores, [c.Tokens, c.Length], _device);
            using Tensor deviceIndices = Tensor.FromArray(Enumerable.Repeat(7, c.Tokens * c.K).ToArray(), [c.Tokens, c.K], _device);
            TopK.Select(deviceScores, c.Start, c.K, deviceIndices);
            Assert.Equal(expected, cpuIndices.ToInt32Array());
            int[] actual = deviceIndices.ToInt32Array();
            if (!expected.AsSpan().SequenceEqual(actual))
            {
                int at = Enumerable.Range(0, actual.Length).First(i => actual[i] != expected[i]);
                throw new Xunit.Sdk.XunitException($"{c} on {_device.Name}: entry [{at / c.K}, {at % c.K}] = {actual[at]}, cpu {expected[at]}");
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(40));
    }

    /// <summary>A row of equal scores longer than K keeps the lowest positions; a row of NaN does too.</summary>
    [Fact]
    public void TopK_AllEqualRows_KeepTheLowestPositions()
    {
        const int length = 300, k = 17;
        float[] scores = new float[2 * length];
        Array.Fill(scores, 0.5f, 0, length);
        Array.Fill(scores, float.NaN, length, length);
        using Tensor deviceScores = Tensor.FromArray(scores, [2, length], _device);
        using Tensor indices = Tensor.Empty([2, k], DType.Int32, _device);
        TopK.Select(deviceScores, length - 2, k, indices);
        int[] actual = indices.ToInt32Array();
        Assert.Equal(Enumerable.Range(0, k).Concat(Enumerable.Range(0, k)), actual);
    }

    public sealed record AttentionCase(int Hkv, int Group, int Dh, int Capacity, int Start, int Tokens, int K, int Seed, int Tile, int Rows, int TilesPerChunk);

    /// <summary>Sparse attention over random causal selections matches the float64 reference within 2e-5.</summary>
    [Fact]
    public void SparseAttention_MatchesTheFloat64Reference()
    {
        Prop.ForAll(AttentionCases(Gen.Choose(1, 8)).ToArbitrary(), c => CheckAttention(c, withJunk: false))
            .Check(Config.QuickThrowOnFailure.WithMaxTest(20));
    }

    /// <summary>Decode (T = 1) with many chunks combined, and entries after the position or below -1 skipped.</summary>
    [Fact]
    public void SparseAttention_Decode_SplitAndGuarded()
    {
        Prop.ForAll(AttentionCases(Gen.Constant(1)).ToArbitrary(), c => CheckAttention(c, withJunk: true))
            .Check(Config.QuickThrowOnFailure.WithMaxTest(20));
    }

    /// <summary>Append copies the rows into the position-major caches and leaves every other row.</summary>
    [Fact]
    public void Append_WritesExactlyTheNewRows()
    {
        const int capacity = 11, hkv = 2, dh = 3, t = 4, start = 5;
        float[] before = Values(new Random(3), capacity * hkv * dh, 1f);
        float[] rows = Values(new Random(4), t * hkv * dh, 1f);
        using Tensor keys = Tensor.FromArray(before, [capacity, hkv, dh], _device);
        using Tensor values = Tensor.FromArray(before, [capacity, hkv, dh], _device);
        using Tensor k = Tensor.FromArray(rows, [t, hkv * dh], _device);
        using Tensor v = Tensor.FromArray(rows.Select(static x => -x).ToArray(), [t, hkv * dh], _device);
        SparseAttention.Append(k, v, keys, values, start);
        float[] expectedKeys = (float[])before.Clone();
        float[] expectedValues = (float[])before.Clone();
        rows.CopyTo(expectedKeys, start * hkv * dh);
        rows.Select(static x => -x).ToArray().CopyTo(expectedValues, start * hkv * dh);
        Assert.Equal(expectedKeys, keys.ToArray());
        Assert.Equal(expectedValues, values.ToArray());
    }

    /// <summary>Device tensors get specific errors: mixed devices, a float selection, a cpu selection, K mismatch.</summary>
    [Fact]
    public void RejectsBadArguments()
    {
        using Tensor q = Tensor.Empty([2, 2, 4], device: _device);
        using Tensor cache = Tensor.Empty([8, 1, 4], device: _device);
        using Tensor output = Tensor.Empty([2, 2, 4], device: _device);
        using Tensor indices = Tensor.Empty([2, 3], DType.Int32, _device);
        using Tensor floatIndices = Tensor.Empty([2, 3], device: _device);
        using Tensor cpuIndices = Tensor.Empty([2, 3], DType.Int32);
        using Tensor cpuOutput = Tensor.Empty([2, 2, 4]);
        Assert.Contains("int32", Assert.Throws<ArgumentException>(() => SparseAttention.Compute(q, cache, cache, floatIndices, 3, 0, output)).Message);
        Assert.Contains(_device.Name, Assert.Throws<ArgumentException>(() => SparseAttention.Compute(q, cache, cache, cpuIndices, 3, 0, output)).Message);
        Assert.Contains("[2, 4]", Assert.Throws<ArgumentException>(() => SparseAttention.Compute(q, cache, cache, indices, 4, 0, output)).Message);
        Assert.Contains("output", Assert.Throws<ArgumentException>(() => SparseAttention.Compute(q, cache, cache, indices, 3, 0, cpuOutput)).Message);
        Assert.Contains("span overload", Assert.Throws<ArgumentException>(() => SparseAttention.Compute(q, cache, cache, new int[6], 3, 0, output)).Message);

        using Tensor scores = Tensor.Empty([2, 8], device: _device);
        Assert.Contains("int32", Assert.Throws<ArgumentException>(() => TopK.Select(scores, 0, 3, floatIndices)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => TopK.Select(scores, 7, 3, indices));
        Assert.Throws<ArgumentOutOfRangeException>(() => TopK.Select(scores, 0, 0, indices));

        using Tensor keyCache = Tensor.Empty([4, 8], device: _device);
        using Tensor weights = Tensor.Empty([2, 2], device: _device);
        using Tensor cpuWeights = Tensor.Empty([2, 2]);
        Assert.Contains("weights", Assert.Throws<ArgumentException>(() => LightningIndexer.Scores(q, cpuWeights, keyCache, 0, scores)).Message);
        Assert.Contains("do not fit", Assert.Throws<ArgumentOutOfRangeException>(() => LightningIndexer.Scores(q, weights, keyCache, 7, scores)).Message);
    }

    // The plan: Tile 0 means the device's default plan.
    private static Gen<AttentionCase> AttentionCases(Gen<int> tokens) =>
        from hkv in Gen.Choose(1, 3)
        from grp in Gen.Elements(1, 2, 3, 5)
        from dh in Gen.Elements(1, 3, 8, 17, 64)
        from t in tokens
        from extra in Gen.Choose(1, 120)
        from startFraction in Gen.Choose(0, 100)
        from k in Gen.Frequency((3, Gen.Choose(1, 40)), (1, Gen.Choose(1, 140)))
        from seed in Gen.Choose(0, int.MaxValue)
        from tile in Gen.Elements(0, 0, 1, 3, 8, 32)
        from rows in Gen.Choose(1, grp)
        from tilesPerChunk in Gen.Elements(1, 2, 3, 1000)
        let capacity = t + extra
        let start = (extra - 1) * startFraction / 100
        select new AttentionCase(hkv, grp, dh, capacity, start, t, k, seed, tile, rows, tilesPerChunk);

    private bool CheckAttention(AttentionCase c, bool withJunk)
    {
        Random random = new(c.Seed);
        int h = c.Hkv * c.Group;
        float[] keys = IndexerTests.Grid(random, c.Capacity * c.Hkv * c.Dh, 200, 100);
        float[] values = IndexerTests.Grid(random, keys.Length, 200, 100);
        float[] q = IndexerTests.Grid(random, c.Tokens * h * c.Dh, 200, 100);

        // A random distinct causal subset per row, in random order, -1 padded; with junk, some padding slots hold a
        // future position or a negative number that the kernel must skip (the reference sees the clean row).
        int[] clean = new int[c.Tokens * c.K];
        int[] given = new int[c.Tokens * c.K];
        for (int t = 0; t < c.Tokens; t++)
        {
            int visible = c.Start + t + 1;
            int count = 1 + random.Next(TopK.RowCount(c.Start, t, c.K));
            int[] chosen = Enumerable.Range(0, visible).OrderBy(_ => random.Next()).Take(count).ToArray();
            Array.Fill(clean, -1, t * c.K, c.K);
            chosen.CopyTo(clean, t * c.K);
            for (int i = 0; i < c.K; i++)
            {
                int entry = clean[(t * c.K) + i];
                // Future positions stay inside the cache, so that a kernel without the guard reads wrong rows
                // (and fails the comparison) rather than memory outside the buffer.
                given[(t * c.K) + i] = withJunk && entry < 0 && random.Next(2) == 0
                    ? (random.Next(2) == 0 && visible < c.Capacity ? visible + random.Next(c.Capacity - visible) : -2 - random.Next(5))
                    : entry;
            }
        }

        using Tensor keyCache = Tensor.FromArray(keys, [c.Capacity, c.Hkv, c.Dh], _device);
        using Tensor valueCache = Tensor.FromArray(values, [c.Capacity, c.Hkv, c.Dh], _device);
        using Tensor query = Tensor.FromArray(q, [c.Tokens, h, c.Dh], _device);
        using Tensor indices = Tensor.FromArray(given, [c.Tokens, c.K], _device);
        using Tensor output = Tensor.FromArray(Enumerable.Repeat(99f, q.Length).ToArray(), [c.Tokens, h, c.Dh], _device);
        string plan = "default";
        if (c.Tile > 0)
        {
            int entries = Math.Min(c.K, c.Start + c.Tokens);
            int chunkLength = c.Tile * Math.Min(c.TilesPerChunk, (entries + c.Tile - 1) / c.Tile);
            SparsePlan forced = new(Math.Min(32, _device.Accelerator.MaxNumThreadsPerGroup), c.Tile, c.Rows,
                (entries + chunkLength - 1) / chunkLength, chunkLength);
            plan = forced.ToString();
            GpuSparseAttention.Compute(_device, query, keyCache, valueCache, indices, c.K, c.Start, output, forced);
        }
        else
        {
            SparseAttention.Compute(query, keyCache, valueCache, indices, c.K, c.Start, output);
        }

        float[] actual = output.ToArray();
        double[] expected = SparseAttention.Reference(q, c.Tokens, h, c.Dh, keys, values, c.Hkv, clean, c.K);
        for (int i = 0; i < actual.Length; i++)
        {
            if (!(Math.Abs(actual[i] - expected[i]) <= 2e-5 + (2e-5 * Math.Abs(expected[i]))))
            {
                throw new Xunit.Sdk.XunitException($"{c} plan {plan} on {_device.Name}: output[{i}] = {actual[i]}, expected {expected[i]}");
            }
        }

        return true;
    }

    private static float[] RunAppend(Device device, AppendCase c, int capacity, float[] keys, float[] weight, float[] bias, float[] before)
    {
        int rope = 2 * c.RopeHalf;
        (Tensor cos, Tensor sin) = Kiln.Ops.RopeTables(capacity, Math.Max(rope, 2), 10000f, device);
        using (cos)
        using (sin)
        {
            using Tensor k = Tensor.FromArray(keys, [c.Tokens, c.HeadDim], device);
            using Tensor w = Tensor.FromArray(weight, [c.HeadDim], device);
            using Tensor b = Tensor.FromArray(bias, [c.HeadDim], device);
            using Tensor cache = Tensor.FromArray(before, [c.HeadDim, capacity], device);
            LightningIndexer.AppendKeys(k, w, b, 1e-6f, cos, sin, rope, c.Layout, cache, c.Start);
            return cache.ToArray();
        }
    }

    // 2e-6·(1 + m) + 3e-7·κ·m for a column whose largest magnitude is m and whose key row has κ = (Σx²/n) / var.
    private static double AppendTolerance(ReadOnlySpan<float> row, float[] cache, AppendCase c, int capacity, int column)
    {
        double mean = 0, squares = 0;
        foreach (float x in row)
        {
            mean += x;
            squares += (double)x * x;
        }

        mean /= row.Length;
        double variance = Math.Max((squares / row.Length) - (mean * mean), 1e-30);
        double kappa = squares / row.Length / variance;
        double largest = 0;
        for (int d = 0; d < c.HeadDim; d++)
        {
            largest = Math.Max(largest, Math.Abs(cache[(d * capacity) + column]));
        }

        return (2e-6 * (1 + largest)) + (3e-7 * kappa * largest);
    }

    private static float[] RunRotate(Device device, AppendCase c, int heads, float[] values)
    {
        int rope = 2 * c.RopeHalf;
        (Tensor cos, Tensor sin) = Kiln.Ops.RopeTables(c.Start + c.Tokens, rope, 10000f, device);
        using (cos)
        using (sin)
        {
            using Tensor q = Tensor.FromArray(values, [c.Tokens, heads, c.HeadDim], device);
            LightningIndexer.RotateQueries(q, cos, sin, rope, c.Layout, c.Start);
            return q.ToArray();
        }
    }

    private static float[] Values(Random random, int count, float scale) =>
        Enumerable.Range(0, count).Select(_ => (float)((random.NextDouble() * 2) - 1) * scale).ToArray();

    private void AssertClose(float[] expected, float[] actual, double tolerance, string what)
    {
        for (int i = 0; i < expected.Length; i++)
        {
            if (!(Math.Abs(actual[i] - expected[i]) <= tolerance + (tolerance * Math.Abs(expected[i]))))
            {
                throw new Xunit.Sdk.XunitException($"{what} on {_device.Name}: element {i} = {actual[i]}, cpu {expected[i]}");
            }
        }
    }
}

/// <summary>The DSA kernel properties on 4 lanes × 4 warps.</summary>
public sealed class SparseGpuPropertiesNarrow : SparseGpuProperties, IClassFixture<NarrowIlgpuFixture>
{
    /// <summary>Uses the class's device.</summary>
    public SparseGpuPropertiesNarrow(NarrowIlgpuFixture fixture)
        : base(fixture.Device)
    {
    }
}

/// <summary>The DSA kernel properties on 32 lanes × 2 warps.</summary>
public sealed class SparseGpuPropertiesWide : SparseGpuProperties, IClassFixture<WideIlgpuFixture>
{
    /// <summary>Uses the class's device.</summary>
    public SparseGpuPropertiesWide(WideIlgpuFixture fixture)
        : base(fixture.Device)
    {
    }
}
