// Properties of the lightning indexer against its float64 reference: random indexer head counts (1..8), odd and
// vector-unfriendly head widths, capacities up to a few hundred, start > 0, 1..40 query tokens, every vector width,
// one and two threads. Also the per-head ReLU, the key append (LayerNorm + RoPE by layout), and the argument checks.
using FsCheck;
using FsCheck.Fluent;
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Core.Tests.Sparse;

public sealed class IndexerTests : IDisposable
{
    private readonly CpuDevice _one = new(1);
    private readonly CpuDevice _two = new(2);

    public void Dispose()
    {
        _one.Dispose();
        _two.Dispose();
    }

    public sealed record Case(int Heads, int HeadDim, int Capacity, int Start, int Tokens, int Extra, int Seed, bool TwoThreads);

    internal static Gen<Case> Cases() =>
        from heads in Gen.Choose(1, 8)
        from headDim in Gen.Elements(1, 3, 7, 16, 17, 33, 64)
        from capacity in Gen.Choose(1, 300)
        from tokens in Gen.Choose(1, Math.Min(40, capacity))
        from start in Gen.Choose(0, capacity - tokens)
        from extra in Gen.Choose(0, capacity - tokens - start)
        from seed in Gen.Choose(0, int.MaxValue)
        from two in Gen.Elements(false, true)
        select new Case(heads, headDim, capacity, start, tokens, extra, seed, two);

    /// <summary>
    /// Scores equal the float64 reference on grid values (q, k in k/8, w in k/4: every product and sum is exact in
    /// float32, so the tolerance is 0), masked positions are -∞, and every vector width gives the same bits.
    /// </summary>
    [Fact]
    public void Scores_MatchFloat64Reference_OnEveryWidth()
    {
        Prop.ForAll(Cases().ToArbitrary(), c =>
        {
            CpuDevice device = c.TwoThreads ? _two : _one;
            Random random = new(c.Seed);
            float[] q = Grid(random, c.Tokens * c.Heads * c.HeadDim, 8, 8);
            float[] w = Grid(random, c.Tokens * c.Heads, 4, 4);
            float[] keys = Grid(random, c.HeadDim * c.Capacity, 8, 8);
            int length = c.Start + c.Tokens + c.Extra;
            double[] expected = LightningIndexer.Reference(q, w, c.Tokens, c.Heads, c.HeadDim, keys, c.Capacity, c.Start, length);
            foreach (KernelWidth width in new[] { KernelWidth.Vector512, KernelWidth.Vector256, KernelWidth.Scalar })
            {
                float[] actual = RunScores(device, q, w, keys, c, length, width);
                for (int i = 0; i < actual.Length; i++)
                {
                    if (actual[i] != expected[i])
                    {
                        throw new Xunit.Sdk.XunitException($"{c} {width}: score[{i / length}, {i % length}] = {actual[i]}, expected {expected[i]}");
                    }
                }
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(120));
    }

    /// <summary>On arbitrary floats (not a grid), the vector paths and the scalar loop agree bit for bit, on 1 or 2 threads.</summary>
    [Fact]
    public void Scores_AreBitIdenticalAcrossWidthsAndThreads()
    {
        Prop.ForAll(Cases().ToArbitrary(), c =>
        {
            Random random = new(c.Seed);
            float[] q = Enumerable.Range(0, c.Tokens * c.Heads * c.HeadDim).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] w = Enumerable.Range(0, c.Tokens * c.Heads).Select(_ => (float)random.NextDouble() - 0.3f).ToArray();
            float[] keys = Enumerable.Range(0, c.HeadDim * c.Capacity).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            int length = c.Start + c.Tokens + c.Extra;
            float[] scalar = RunScores(_one, q, w, keys, c, length, KernelWidth.Scalar);
            Assert.Equal(scalar, RunScores(_two, q, w, keys, c, length, KernelWidth.Vector512));
            Assert.Equal(scalar, RunScores(_one, q, w, keys, c, length, KernelWidth.Vector256));
            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(60));
    }

    /// <summary>
    /// The ReLU is applied per head before the weighted sum: with some negative dot products the score differs from
    /// (Σ_j w_j q_j) · k, and it matches the per-head reference.
    /// </summary>
    [Fact]
    public void Scores_ApplyReluPerHead_NotToTheMergedQuery()
    {
        // Two heads with opposite queries: per-head ReLU gives |q·k|, the merged query gives 0.
        const int di = 5, capacity = 20, heads = 3;
        Random random = new(11);
        float[] keys = Grid(random, di * capacity, 8, 8);
        float[] q = new float[heads * di];
        for (int d = 0; d < di; d++)
        {
            q[d] = random.Next(-8, 9) / 8f;
            q[di + d] = -q[d];
            q[(2 * di) + d] = random.Next(-8, 9) / 8f;
        }

        float[] w = [1f, 1f, 0.5f];
        Case c = new(heads, di, capacity, Start: capacity - 1, Tokens: 1, Extra: 0, Seed: 0, TwoThreads: false);
        float[] actual = RunScores(_one, q, w, keys, c, capacity, KernelWidth.Vector512);
        double[] expected = LightningIndexer.Reference(q, w, 1, heads, di, keys, capacity, capacity - 1, capacity);

        int differing = 0;
        for (int s = 0; s < capacity; s++)
        {
            // The merged form (Σ_j w_j q_j) · k, which a wrong port computes.
            double merged = 0;
            for (int d = 0; d < di; d++)
            {
                double combined = (w[0] * q[d]) + (w[1] * q[di + d]) + (w[2] * q[(2 * di) + d]);
                merged += combined * keys[(d * capacity) + s];
            }

            Assert.Equal(expected[s], actual[s], 6);
            if (Math.Abs(merged - actual[s]) > 1e-3)
            {
                differing++;
            }
        }

        Assert.True(differing > capacity / 2, $"only {differing} of {capacity} scores differ from the merged-query form");
    }

    /// <summary>Scoring tokens in two pieces (the second with start > 0) gives the rows of one piece, bit for bit.</summary>
    [Fact]
    public void Scores_InPieces_EqualOnePiece()
    {
        Prop.ForAll(Cases().Where(static c => c.Tokens >= 2).ToArbitrary(), c =>
        {
            CpuDevice device = c.TwoThreads ? _two : _one;
            Random random = new(c.Seed);
            float[] q = Enumerable.Range(0, c.Tokens * c.Heads * c.HeadDim).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] w = Enumerable.Range(0, c.Tokens * c.Heads).Select(_ => (float)random.NextDouble()).ToArray();
            float[] keys = Enumerable.Range(0, c.HeadDim * c.Capacity).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            int length = c.Start + c.Tokens;
            float[] whole = RunScores(device, q, w, keys, c, length, KernelWidth.Vector512);

            // The first piece ends at `split`; the second starts there, with its own L.
            int split = 1 + (c.Seed % (c.Tokens - 1));
            Case first = c with { Tokens = split, Extra = 0 };
            Case second = c with { Start = c.Start + split, Tokens = c.Tokens - split, Extra = 0 };
            int width = c.Heads * c.HeadDim;
            float[] a = RunScores(device, q[..(split * width)], w[..(split * c.Heads)], keys, first, c.Start + split, KernelWidth.Vector512);
            float[] b = RunScores(device, q[(split * width)..], w[(split * c.Heads)..], keys, second, length, KernelWidth.Vector512);
            for (int t = 0; t < c.Tokens; t++)
            {
                // Compare the visible prefix of each row.
                int visible = c.Start + t + 1;
                float[] piece = t < split ? a.AsSpan(t * (c.Start + split), visible).ToArray() : b.AsSpan((t - split) * length, visible).ToArray();
                Assert.Equal(whole.AsSpan(t * length, visible).ToArray(), piece);
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(60));
    }

    /// <summary>AppendKeys equals LayerNorm then RoPE (by layout) on the leading dims, in float64, written transposed.</summary>
    [Fact]
    public void AppendKeys_MatchesLayerNormThenRope()
    {
        Gen<(int Di, int Rope, int Capacity, int Start, int Tokens, RopeLayout Layout, int Seed)> cases =
            from di in Gen.Choose(2, 40)
            from ropeHalf in Gen.Choose(0, di / 2)
            from capacity in Gen.Choose(1, 60)
            from tokens in Gen.Choose(1, capacity)
            from start in Gen.Choose(0, capacity - tokens)
            from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
            from seed in Gen.Choose(0, int.MaxValue)
            select (di, ropeHalf * 2, capacity, start, tokens, layout, seed);
        Prop.ForAll(cases.ToArbitrary(), c =>
        {
            Random random = new(c.Seed);
            float[] x = Grid(random, c.Tokens * c.Di, 16, 32);
            float[] weight = Grid(random, c.Di, 8, 16);
            float[] bias = Grid(random, c.Di, 8, 8);
            float[] cache = AppendAndRead(_one, x, weight, bias, c.Di, c.Rope, c.Capacity, c.Start, c.Layout, 10000f, out float[] cos, out float[] sin);

            // Reference: LayerNorm in float64, then rotate the leading Rope dims of each row by its position.
            double[] normed = IndexerOps.Reference.LayerNorm(x, weight, bias, c.Di, 1e-6f);
            for (int t = 0; t < c.Tokens; t++)
            {
                double[] row = normed.AsSpan(t * c.Di, c.Di).ToArray();
                if (c.Rope > 0)
                {
                    float[] slice = row[..c.Rope].Select(static v => (float)v).ToArray();
                    double[] rotated = Kiln.Ops.Reference.Rope(slice, 1, c.Rope, cos, sin, c.Start + t, c.Layout);
                    rotated.CopyTo(row, 0);
                }

                for (int d = 0; d < c.Di; d++)
                {
                    // LayerNorm of grid data in float32 (one-pass variance) is within 2e-5 of float64 for |out| ≤ ~10.
                    double actual = cache[(d * c.Capacity) + c.Start + t];
                    Assert.True(Math.Abs(actual - row[d]) <= 2e-5 + (2e-5 * Math.Abs(row[d])), $"{c}: key[{t}, {d}] = {actual}, expected {row[d]}");
                }
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(80));
    }

    /// <summary>
    /// The layout flag pairs (2i, 2i+1) for Adjacent and (i, i + rope/2) for HalfSplit, on a known vector; dimensions
    /// past ropeDims are not rotated; the two layouts give different scores.
    /// </summary>
    [Fact]
    public void AppendKeys_LayoutFlagPairsAsSpecified()
    {
        // LayerNorm with weight 1 and bias 0 maps [-3, -1, 1, 3, -2, 2] (mean 0) to x / σ; rotate the first 4 dims.
        const int di = 6, rope = 4, capacity = 8, position = 5;
        float[] raw = [-3f, -1f, 1f, 3f, -2f, 2f];
        float[] ones = Enumerable.Repeat(1f, di).ToArray();
        float[] zeros = new float[di];
        double sigma = Math.Sqrt(raw.Select(static v => (double)v * v).Average() + 1e-6);
        double[] n = raw.Select(v => v / sigma).ToArray();
        double angle0 = position * 1.0, angle1 = position * Math.Pow(10000, -2.0 / rope);
        (double c0, double s0, double c1, double s1) = (Math.Cos(angle0), Math.Sin(angle0), Math.Cos(angle1), Math.Sin(angle1));

        float[] adjacent = AppendAndRead(_one, raw, ones, zeros, di, rope, capacity, position, RopeLayout.Adjacent, 10000f, out _, out _);
        double[] expectAdjacent =
        [
            (n[0] * c0) - (n[1] * s0), (n[0] * s0) + (n[1] * c0),
            (n[2] * c1) - (n[3] * s1), (n[2] * s1) + (n[3] * c1),
            n[4], n[5],
        ];
        float[] halfSplit = AppendAndRead(_one, raw, ones, zeros, di, rope, capacity, position, RopeLayout.HalfSplit, 10000f, out _, out _);
        double[] expectHalf =
        [
            (n[0] * c0) - (n[2] * s0), (n[1] * c1) - (n[3] * s1),
            (n[0] * s0) + (n[2] * c0), (n[1] * s1) + (n[3] * c1),
            n[4], n[5],
        ];
        for (int d = 0; d < di; d++)
        {
            Assert.Equal(expectAdjacent[d], adjacent[(d * capacity) + position], 5);
            Assert.Equal(expectHalf[d], halfSplit[(d * capacity) + position], 5);
        }

        // The same query scores the two caches differently at that position.
        float[] q = [1f, 0.5f, -0.25f, 2f, 0f, 0f];
        Case c = new(1, di, capacity, Start: position, Tokens: 1, Extra: 0, Seed: 0, TwoThreads: false);
        float a = RunScores(_one, q, [1f], adjacent, c, position + 1, KernelWidth.Vector512)[position];
        float b = RunScores(_one, q, [1f], halfSplit, c, position + 1, KernelWidth.Vector512)[position];
        Assert.True(Math.Abs(a - b) > 0.1, $"layouts gave scores {a} and {b}");
    }

    /// <summary>The generated LayerNorm op and its row helper match the float64 reference.</summary>
    [Fact]
    public void LayerNorm_MatchesFloat64Reference()
    {
        Gen<(int Rows, int N, int Seed)> cases =
            from rows in Gen.Choose(1, 9)
            from n in Gen.Elements(1, 2, 7, 16, 17, 33, 100)
            from seed in Gen.Choose(0, int.MaxValue)
            select (rows, n, seed);
        Prop.ForAll(cases.ToArbitrary(), c =>
        {
            Random random = new(c.Seed);
            float[] x = Grid(random, c.Rows * c.N, 64, 32);
            float[] weight = Grid(random, c.N, 8, 8);
            float[] bias = Grid(random, c.N, 8, 8);
            using Tensor input = Tensor.FromArray(x, [c.Rows, c.N], _two);
            using Tensor w = Tensor.FromArray(weight, [c.N], _two);
            using Tensor b = Tensor.FromArray(bias, [c.N], _two);
            using Tensor output = Tensor.Empty([c.Rows, c.N], device: _two);
            IndexerOps.LayerNorm(input, w, b, 1e-6f, output);
            double[] expected = IndexerOps.Reference.LayerNorm(x, weight, bias, c.N, 1e-6f);
            float[] actual = output.ToArray();
            float[] row = new float[c.N];
            IndexerOps.LayerNormRow(x.AsSpan(0, c.N), weight, bias, 1e-6f, row);
            for (int i = 0; i < actual.Length; i++)
            {
                // Outputs are at most ~ |w|·√N + |b|; one-pass float32 statistics stay within 3e-5 of that scale.
                double tolerance = 3e-5 * (1 + Math.Abs(expected[i]));
                Assert.True(Math.Abs(actual[i] - expected[i]) <= tolerance, $"{c}: [{i}] = {actual[i]}, expected {expected[i]}");
                if (i < c.N)
                {
                    Assert.True(Math.Abs(row[i] - expected[i]) <= tolerance, $"{c}: row [{i}] = {row[i]}, expected {expected[i]}");
                }
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(80));
    }

    [Fact]
    public void BadInput_GetsSpecificMessages()
    {
        using Tensor cache = Tensor.Empty([4, 10], device: _one);
        using Tensor q = Tensor.Empty([2, 3, 4], device: _one);
        using Tensor w = Tensor.Empty([2, 3], device: _one);
        using Tensor scores = Tensor.Empty([2, 10], device: _one);

        // Query width not Hi·Di, weights of another T, scores too short for the positions, a 3-D cache.
        using Tensor wideQ = Tensor.Empty([2, 3, 5], device: _one);
        Assert.Contains("must be [2, 3, 4]", Assert.Throws<ArgumentException>(() => LightningIndexer.Scores(wideQ, w, cache, 0, scores)).Message);
        using Tensor otherW = Tensor.Empty([3, 3], device: _one);
        Assert.Throws<ArgumentException>(() => LightningIndexer.Scores(q, otherW, cache, 0, scores));
        using Tensor shortScores = Tensor.Empty([2, 4], device: _one);
        Assert.Contains("make L at least", Assert.Throws<ArgumentOutOfRangeException>(() => LightningIndexer.Scores(q, w, cache, 3, shortScores)).Message);
        using Tensor cube = Tensor.Empty([1, 4, 10], device: _one);
        Assert.Contains("[Di, S]", Assert.Throws<ArgumentException>(() => LightningIndexer.Scores(q, w, cube, 0, scores)).Message);

        // AppendKeys: odd ropeDims, tables of the wrong width, keys of the wrong width, positions past the cache.
        using Tensor keys = Tensor.Empty([2, 4], device: _one);
        using Tensor norm = Tensor.Empty([4], device: _one);
        (Tensor cos, Tensor sin) = Kiln.Ops.RopeTables(10, 2, 10000f, _one);
        using (cos)
        using (sin)
        {
            Assert.Throws<ArgumentOutOfRangeException>(() => LightningIndexer.AppendKeys(keys, norm, norm, 1e-6f, cos, sin, 3, RopeLayout.HalfSplit, cache, 0));
            Assert.Contains("Ops.RopeTables", Assert.Throws<ArgumentException>(() => LightningIndexer.AppendKeys(keys, norm, norm, 1e-6f, cos, sin, 4, RopeLayout.HalfSplit, cache, 0)).Message);
            Assert.Throws<ArgumentException>(() => LightningIndexer.AppendKeys(wideQ, norm, norm, 1e-6f, cos, sin, 2, RopeLayout.HalfSplit, cache, 0));
            Assert.Contains("do not fit", Assert.Throws<ArgumentOutOfRangeException>(() => LightningIndexer.AppendKeys(keys, norm, norm, 1e-6f, cos, sin, 2, RopeLayout.HalfSplit, cache, 9)).Message);
        }

        Assert.Throws<ArgumentOutOfRangeException>(() => LightningIndexer.HeadWeightScale(0, 64));
        Assert.Equal(1f / 16f, LightningIndexer.HeadWeightScale(4, 64));
    }

    internal static float[] Grid(Random random, int count, int range, int denominator) =>
        Enumerable.Range(0, count).Select(_ => random.Next(-range, range + 1) / (float)denominator).ToArray();

    internal static float[] RunScores(CpuDevice device, float[] q, float[] w, float[] keys, Case c, int length, KernelWidth width)
    {
        using Tensor query = Tensor.FromArray(q, [c.Tokens, c.Heads, c.HeadDim], device);
        using Tensor weights = Tensor.FromArray(w, [c.Tokens, c.Heads], device);
        using Tensor cache = Tensor.FromArray(keys, [c.HeadDim, c.Capacity], device);
        using Tensor scores = Tensor.Empty([c.Tokens, length], device: device);
        LightningIndexer.Scores(query, weights, cache, c.Start, scores, width);
        return scores.ToArray();
    }

    internal static float[] AppendAndRead(
        CpuDevice device,
        float[] x,
        float[] weight,
        float[] bias,
        int di,
        int rope,
        int capacity,
        int start,
        RopeLayout layout,
        float theta,
        out float[] cos,
        out float[] sin)
    {
        int tokens = x.Length / di;
        (Tensor cosTable, Tensor sinTable) = Kiln.Ops.RopeTables(capacity, Math.Max(rope, 2), theta, device);
        using (cosTable)
        using (sinTable)
        {
            using Tensor keys = Tensor.FromArray(x, [tokens, di], device);
            using Tensor w = Tensor.FromArray(weight, [di], device);
            using Tensor b = Tensor.FromArray(bias, [di], device);
            using Tensor cache = Tensor.Empty([di, capacity], device: device);
            cache.Clear();
            LightningIndexer.AppendKeys(keys, w, b, 1e-6f, cosTable, sinTable, rope, layout, cache, start);
            cos = cosTable.ToArray();
            sin = sinTable.ToArray();
            return cache.ToArray();
        }
    }
}
