// Properties of the causal top-k selection and of sparse attention: the selection equals a full sort's (ties to the
// lower position, NaN last), is causal and has min(K, p + 1) entries per row; sparse attention matches its float64
// reference on random selections and equals dense Attention.Compute when K covers the context; the whole chain
// (indexer scores -> top-k -> sparse attention) run in two pieces equals one piece.
using FsCheck;
using FsCheck.Fluent;
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Core.Tests.Sparse;

public sealed class SelectionAndSparseAttentionTests : IDisposable
{
    private readonly CpuDevice _one = new(1);
    private readonly CpuDevice _two = new(2);

    public void Dispose()
    {
        _one.Dispose();
        _two.Dispose();
    }

    public sealed record SelectCase(int Length, int Start, int Tokens, int K, int Levels, bool WithNaN, int Seed, bool TwoThreads);

    private static Gen<SelectCase> SelectCases() =>
        from tokens in Gen.Choose(1, 40)
        from start in Gen.Choose(0, 300)
        from extra in Gen.Choose(0, 5)
        from k in Gen.Choose(1, start + tokens + 10)
        from levels in Gen.Elements(3, 50, 100_000)
        from nan in Gen.Elements(false, false, true)
        from seed in Gen.Choose(0, int.MaxValue)
        from two in Gen.Elements(false, true)
        select new SelectCase(start + tokens + extra, start, tokens, k, levels, nan, seed, two);

    /// <summary>
    /// The selection equals the full sort's first min(K, p + 1) positions (ascending, -1 padded), including on data full
    /// of ties (3 levels) and with NaN scores; it never selects a future position.
    /// </summary>
    [Fact]
    public void TopK_EqualsFullSortSelection_AndIsCausal()
    {
        Prop.ForAll(SelectCases().ToArbitrary(), c =>
        {
            Random random = new(c.Seed);
            float[] scores = new float[c.Tokens * c.Length];
            for (int i = 0; i < scores.Length; i++)
            {
                scores[i] = c.WithNaN && random.Next(10) == 0 ? float.NaN : random.Next(-c.Levels, c.Levels + 1) / 7f;
            }

            int[] actual = RunTopK(c.TwoThreads ? _two : _one, scores, c.Tokens, c.Length, c.Start, c.K);
            int[] expected = TopK.Reference(scores, c.Tokens, c.Length, c.Start, c.K);
            Assert.Equal(expected, actual);
            for (int t = 0; t < c.Tokens; t++)
            {
                // Row t: min(K, p + 1) positions, all ≤ p, then only -1.
                int[] row = actual.AsSpan(t * c.K, c.K).ToArray();
                int count = TopK.RowCount(c.Start, t, c.K);
                Assert.All(row[..count], s => Assert.InRange(s, 0, c.Start + t));
                Assert.All(row[count..], static s => Assert.Equal(-1, s));
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(150));
    }

    /// <summary>On tie-free data the selected set is exactly the set of the K largest scores (compared as sets).</summary>
    [Fact]
    public void TopK_SelectsTheLargestScores_AsASet()
    {
        Prop.ForAll(SelectCases().ToArbitrary(), c =>
        {
            // A random permutation of distinct values per row: no ties.
            Random random = new(c.Seed);
            float[] scores = new float[c.Tokens * c.Length];
            for (int t = 0; t < c.Tokens; t++)
            {
                int[] permutation = Enumerable.Range(0, c.Length).OrderBy(_ => random.Next()).ToArray();
                for (int s = 0; s < c.Length; s++)
                {
                    scores[(t * c.Length) + s] = permutation[s] - (c.Length / 2f);
                }
            }

            int[] actual = RunTopK(_one, scores, c.Tokens, c.Length, c.Start, c.K);
            for (int t = 0; t < c.Tokens; t++)
            {
                int visible = c.Start + t + 1;
                HashSet<int> expected = Enumerable.Range(0, visible).OrderByDescending(s => scores[(t * c.Length) + s]).Take(c.K).ToHashSet();
                Assert.True(expected.SetEquals(actual.AsSpan(t * c.K, Math.Min(c.K, visible)).ToArray()), $"{c}: row {t}");
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(100));
    }

    /// <summary>Quickselect keeps its contract on orders that defeat naive pivots (sorted, reversed, organ pipe).</summary>
    [Fact]
    public void SelectLargest_HandlesAdversarialOrders()
    {
        foreach (int n in new[] { 1, 2, 3, 17, 1000, 4097 })
        {
            ulong[][] orders =
            [
                Enumerable.Range(0, n).Select(static i => (ulong)i).ToArray(),
                Enumerable.Range(0, n).Select(i => (ulong)(n - i)).ToArray(),
                Enumerable.Range(0, n).Select(i => (ulong)Math.Min(i, n - i)).ToArray(),
                Enumerable.Range(0, n).Select(static i => (ulong)(i % 2)).ToArray(),
            ];
            foreach (ulong[] order in orders)
            {
                foreach (int k in new[] { 1, n / 2 + 1, n }.Where(k => k >= 1 && k <= n))
                {
                    ulong[] keys = (ulong[])order.Clone();
                    TopK.SelectLargest(keys, k);
                    ulong[] expected = order.OrderDescending().Take(k).Order().ToArray();
                    Assert.Equal(expected, keys.Take(k).Order().ToArray());
                }
            }
        }
    }

    public sealed record AttentionCase(int Hkv, int Group, int Dh, int Capacity, int Start, int Tokens, int K, int Seed, bool TwoThreads);

    private static Gen<AttentionCase> AttentionCases() =>
        from hkv in Gen.Choose(1, 3)
        from grp in Gen.Choose(1, 3)
        from dh in Gen.Elements(1, 3, 8, 16, 17, 33)
        from capacity in Gen.Choose(1, 200)
        from tokens in Gen.Choose(1, Math.Min(40, capacity))
        from start in Gen.Choose(0, capacity - tokens)
        from k in Gen.Choose(1, capacity + 5)
        from seed in Gen.Choose(0, int.MaxValue)
        from two in Gen.Elements(false, true)
        select new AttentionCase(hkv, grp, dh, capacity, start, tokens, k, seed, two);

    /// <summary>Sparse attention over random causal selections matches the float64 reference within 1e-5.</summary>
    [Fact]
    public void SparseAttention_MatchesFloat64Reference()
    {
        Prop.ForAll(AttentionCases().ToArbitrary(), c =>
        {
            CpuDevice device = c.TwoThreads ? _two : _one;
            Random random = new(c.Seed);
            int h = c.Hkv * c.Group;
            float[] keys = IndexerTests.Grid(random, c.Hkv * c.Dh * c.Capacity, 200, 100);
            float[] values = IndexerTests.Grid(random, keys.Length, 200, 100);
            float[] q = IndexerTests.Grid(random, c.Tokens * h * c.Dh, 200, 100);

            // A random distinct causal subset per row, in random order, -1 padded.
            int[] indices = new int[c.Tokens * c.K];
            for (int t = 0; t < c.Tokens; t++)
            {
                int count = 1 + random.Next(TopK.RowCount(c.Start, t, c.K));
                int[] chosen = Enumerable.Range(0, c.Start + t + 1).OrderBy(_ => random.Next()).Take(count).ToArray();
                Array.Fill(indices, -1, t * c.K, c.K);
                chosen.CopyTo(indices, t * c.K);
            }

            float[] actual = RunSparse(device, q, keys, values, c, indices);
            double[] expected = SparseAttention.Reference(q, c.Tokens, h, c.Dh, keys, values, c.Hkv, indices, c.K);

            // Convex mixes of values in [-2, 2] over at most 200 positions: float32 stays within 1e-5.
            for (int i = 0; i < actual.Length; i++)
            {
                if (Math.Abs(actual[i] - expected[i]) > 1e-5 + (1e-5 * Math.Abs(expected[i])))
                {
                    throw new Xunit.Sdk.XunitException($"{c}: output[{i}] = {actual[i]}, expected {expected[i]}");
                }
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(120));
    }

    /// <summary>
    /// With K ≥ the context, top-k keeps every earlier position and sparse attention equals dense Attention.Compute
    /// over the transposed cache (the sums run in another order, and values lie in [-2, 2] over at most 205
    /// positions: within 1e-5).
    /// </summary>
    [Fact]
    public void SparseAttention_WithKCoveringTheContext_EqualsDenseAttention()
    {
        Prop.ForAll(AttentionCases().ToArbitrary(), c =>
        {
            CpuDevice device = c.TwoThreads ? _two : _one;
            Random random = new(c.Seed);
            int h = c.Hkv * c.Group;
            int k = c.Start + c.Tokens + (c.Seed % 3);
            float[] keys = Enumerable.Range(0, c.Hkv * c.Dh * c.Capacity).Select(_ => (float)random.NextDouble() * 4 - 2).ToArray();
            float[] values = Enumerable.Range(0, keys.Length).Select(_ => (float)random.NextDouble() * 4 - 2).ToArray();
            float[] q = Enumerable.Range(0, c.Tokens * h * c.Dh).Select(_ => (float)random.NextDouble() * 4 - 2).ToArray();
            float[] scores = Enumerable.Range(0, c.Tokens * (c.Start + c.Tokens)).Select(_ => (float)random.NextDouble()).ToArray();
            int[] indices = RunTopK(device, scores, c.Tokens, c.Start + c.Tokens, c.Start, k);
            for (int t = 0; t < c.Tokens; t++)
            {
                Assert.Equal(Enumerable.Range(0, c.Start + t + 1), indices.AsSpan(t * k, c.Start + t + 1).ToArray());
            }

            float[] sparse = RunSparse(device, q, keys, values, c with { K = k }, indices);
            using Tensor query = Tensor.FromArray(q, [c.Tokens, h, c.Dh], device);
            // Dense attention reads the transposed layout [Hkv, Dh, S] of the same numbers.
            using Tensor keyCache = Tensor.FromArray(Transpose(keys, c), [c.Hkv, c.Dh, c.Capacity], device);
            using Tensor valueCache = Tensor.FromArray(Transpose(values, c), [c.Hkv, c.Dh, c.Capacity], device);
            using Tensor dense = Tensor.Empty([c.Tokens, h, c.Dh], device: device);
            Kernels.Attention.Compute(query, keyCache, valueCache, c.Start, dense);
            float[] expected = dense.ToArray();
            for (int i = 0; i < sparse.Length; i++)
            {
                Assert.True(Math.Abs(sparse[i] - expected[i]) <= 1e-5 * (1 + Math.Abs(expected[i])), $"{c}: [{i}] sparse {sparse[i]} dense {expected[i]}");
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(100));
    }

    /// <summary>
    /// Indexer scores, top-k and sparse attention for T tokens in one piece equal the same chain run in two pieces
    /// (the second with start > 0), bit for bit: selections and outputs.
    /// </summary>
    [Fact]
    public void Chain_InPieces_EqualsOnePiece()
    {
        Prop.ForAll(AttentionCases().Where(static c => c.Tokens >= 2).ToArbitrary(), c =>
        {
            CpuDevice device = c.TwoThreads ? _two : _one;
            Random random = new(c.Seed);
            int h = c.Hkv * c.Group, hi = 1 + (c.Seed % 4), di = 1 + (c.Seed % 19);
            float[] keys = Enumerable.Range(0, c.Hkv * c.Dh * c.Capacity).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] values = Enumerable.Range(0, keys.Length).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] q = Enumerable.Range(0, c.Tokens * h * c.Dh).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] iq = Enumerable.Range(0, c.Tokens * hi * di).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
            float[] iw = Enumerable.Range(0, c.Tokens * hi).Select(_ => (float)random.NextDouble() - 0.3f).ToArray();
            float[] ik = Enumerable.Range(0, di * c.Capacity).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();

            (int[] Indices, float[] Output) Piece(int from, int count)
            {
                IndexerTests.Case ic = new(hi, di, c.Capacity, from + c.Start, count, 0, 0, false);
                float[] scores = IndexerTests.RunScores(device, iq[(from * hi * di)..((from + count) * hi * di)], iw[(from * hi)..((from + count) * hi)], ik, ic, c.Start + from + count, KernelWidth.Vector512);
                int[] indices = RunTopK(device, scores, count, c.Start + from + count, c.Start + from, c.K);
                AttentionCase piece = c with { Start = c.Start + from, Tokens = count };
                return (indices, RunSparse(device, q[(from * h * c.Dh)..((from + count) * h * c.Dh)], keys, values, piece, indices));
            }

            int split = 1 + (c.Seed % (c.Tokens - 1));
            (int[] wholeIndices, float[] wholeOutput) = Piece(0, c.Tokens);
            (int[] firstIndices, float[] firstOutput) = Piece(0, split);
            (int[] secondIndices, float[] secondOutput) = Piece(split, c.Tokens - split);
            Assert.Equal(wholeIndices, firstIndices.Concat(secondIndices).ToArray());
            Assert.Equal(wholeOutput, firstOutput.Concat(secondOutput).ToArray());
            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(80));
    }

    [Fact]
    public void BadInput_GetsSpecificMessages()
    {
        using Tensor scores = Tensor.Empty([2, 6], device: _one);
        int[] indices = new int[8];

        // K < 1, a too-short index buffer, positions past the scores.
        Assert.Contains("at least 1", Assert.Throws<ArgumentOutOfRangeException>(() => TopK.Select(scores, 0, 0, indices)).Message);
        Assert.Contains("needs 10", Assert.Throws<ArgumentException>(() => TopK.Select(scores, 0, 5, indices)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => TopK.Select(scores, 5, 2, indices));

        // Sparse attention: K < 1, a future position, garbage after the padding, queries of the wrong width.
        using Tensor cache = Tensor.Empty([8, 1, 4], device: _one);
        using Tensor q = Tensor.Empty([2, 2, 4], device: _one);
        using Tensor output = Tensor.Empty([2, 2, 4], device: _one);
        cache.Clear();
        q.Clear();
        Assert.Throws<ArgumentOutOfRangeException>(() => SparseAttention.Compute(q, cache, cache, new int[4], 0, 0, output));
        ArgumentException future = Assert.Throws<ArgumentException>(() => SparseAttention.Compute(q, cache, cache, [0, 2, 0, 1], 2, 0, output));
        Assert.Contains("row 0 selects position 2", future.Message);
        Assert.Contains("after its padding", Assert.Throws<ArgumentException>(() => SparseAttention.Compute(q, cache, cache, [0, -1, -1, 0, -1, 1], 3, 0, output)).Message);
        using Tensor wide = Tensor.Empty([2, 5], device: _one);
        Assert.Throws<ArgumentException>(() => SparseAttention.Compute(wide, cache, cache, new int[4], 2, 0, wide));
        using Tensor otherValues = Tensor.Empty([9, 1, 4], device: _one);
        Assert.Throws<ArgumentException>(() => SparseAttention.Compute(q, cache, otherValues, new int[4], 2, 0, output));
    }

    // [S, Hkv, Dh] → [Hkv, Dh, S].
    private static float[] Transpose(float[] cache, AttentionCase c)
    {
        float[] result = new float[cache.Length];
        for (int s = 0; s < c.Capacity; s++)
        {
            for (int g = 0; g < c.Hkv; g++)
            {
                for (int d = 0; d < c.Dh; d++)
                {
                    result[(((g * c.Dh) + d) * c.Capacity) + s] = cache[(((s * c.Hkv) + g) * c.Dh) + d];
                }
            }
        }

        return result;
    }

    private static int[] RunTopK(CpuDevice device, float[] scores, int tokens, int length, int start, int k)
    {
        using Tensor tensor = Tensor.FromArray(scores, [tokens, length], device);
        int[] indices = new int[tokens * k];
        TopK.Select(tensor, start, k, indices);
        return indices;
    }

    private static float[] RunSparse(CpuDevice device, float[] q, float[] keys, float[] values, AttentionCase c, int[] indices)
    {
        int h = c.Hkv * c.Group;
        using Tensor query = Tensor.FromArray(q, [c.Tokens, h, c.Dh], device);
        using Tensor keyCache = Tensor.FromArray(keys, [c.Capacity, c.Hkv, c.Dh], device);
        using Tensor valueCache = Tensor.FromArray(values, [c.Capacity, c.Hkv, c.Dh], device);
        using Tensor output = Tensor.Empty([c.Tokens, h, c.Dh], device: device);
        SparseAttention.Compute(query, keyCache, valueCache, indices, c.K, c.Start, output);
        return output.ToArray();
    }
}
