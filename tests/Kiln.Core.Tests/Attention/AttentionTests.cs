// Properties of the CPU attention kernel against its float64 reference: random head counts, head widths
// (1, odd, 8, not multiples of 16), context capacities, start positions and token counts (one token: decode; more:
// prefill blocks of 8 with ragged last blocks), on one and two threads, at every vector width.
using FsCheck;
using FsCheck.Fluent;
using Kiln.Devices;
using Kiln.Kernels;
using Xunit;

namespace Kiln.Core.Tests.Attention;

public sealed class AttentionTests : IDisposable
{
    private readonly CpuDevice _one = new(1);
    private readonly CpuDevice _two = new(2);

    public void Dispose()
    {
        _one.Dispose();
        _two.Dispose();
    }

    public sealed record Case(int Hkv, int Group, int Dh, int Capacity, int Start, int Tokens, int Seed, bool TwoThreads);

    private static Gen<Case> Cases() =>
        from hkv in Gen.Choose(1, 3)
        from grp in Gen.Choose(1, 3)
        from dh in Gen.Elements(1, 3, 8, 16, 17, 33)
        from capacity in Gen.Choose(1, 80)
        from start in Gen.Choose(0, capacity - 1)
        from tokens in Gen.Choose(1, capacity - start)
        from seed in Gen.Choose(0, int.MaxValue)
        from two in Gen.Elements(false, true)
        select new Case(hkv, grp, dh, capacity, start, tokens, seed, two);

    [Fact]
    public void MatchesFloat64Reference()
    {
        Prop.ForAll(Cases().ToArbitrary(), Check).Check(Config.QuickThrowOnFailure.WithMaxTest(150));
    }

    [Fact]
    public void AppendThenAttendOverLongContextSplitsAcrossThreads()
    {
        // 300 cached positions x 8 heads is enough work for the pool to split.
        Check(new Case(Hkv: 2, Group: 4, Dh: 8, Capacity: 320, Start: 299, Tokens: 1, Seed: 7, TwoThreads: true));
        Check(new Case(Hkv: 4, Group: 2, Dh: 16, Capacity: 200, Start: 0, Tokens: 200, Seed: 8, TwoThreads: true));

        // Prefill blocks of 8 tokens over hundreds of keys, with a ragged last block and an odd head width.
        Check(new Case(Hkv: 1, Group: 2, Dh: 65, Capacity: 700, Start: 13, Tokens: 683, Seed: 9, TwoThreads: true));
    }

    [Fact]
    public void RejectsPositionsBeyondTheCache()
    {
        using Tensor q = Tensor.Empty([2, 4], device: _one);
        using Tensor cache = Tensor.Empty([1, 4, 8], device: _one);
        using Tensor output = Tensor.Empty([2, 4], device: _one);
        ArgumentOutOfRangeException error = Assert.Throws<ArgumentOutOfRangeException>(() => Kernels.Attention.Compute(q, cache, cache, 7, output));
        Assert.Contains("do not fit", error.Message);
    }

    [Fact]
    public void RejectsScalarInputsAndEmptyHeads_WithArgumentException()
    {
        // A rank-0 query or key and a cache with Dh = 0 or Hkv = 0 are argument errors, not index or division faults.
        using Tensor scalar = Tensor.Empty([], device: _one);
        using Tensor rows = Tensor.Empty([2, 4], device: _one);
        using Tensor cache = Tensor.Empty([1, 4, 8], device: _one);
        using Tensor noWidth = Tensor.Empty([1, 0, 8], device: _one);
        using Tensor noHeads = Tensor.Empty([0, 4, 8], device: _one);
        Assert.Throws<ArgumentException>(() => Kernels.Attention.Compute(scalar, cache, cache, 0, scalar));
        Assert.Throws<ArgumentException>(() => Kernels.Attention.Append(scalar, scalar, cache, cache, 0));
        Assert.Throws<ArgumentException>(() => Kernels.Attention.Compute(rows, noWidth, noWidth, 0, rows));
        Assert.Throws<ArgumentException>(() => Kernels.Attention.Compute(rows, noHeads, noHeads, 0, rows));
    }

    private bool Check(Case c)
    {
        CpuDevice device = c.TwoThreads ? _two : _one;
        int h = c.Hkv * c.Group;
        Random random = new(c.Seed);
        float Next() => random.Next(-200, 201) / 100f;

        // Fill the cache through Append, in two pieces, so that the scatter is tested too.
        float[] k = Enumerable.Range(0, (c.Start + c.Tokens) * c.Hkv * c.Dh).Select(_ => Next()).ToArray();
        float[] v = Enumerable.Range(0, k.Length).Select(_ => Next()).ToArray();
        float[] q = Enumerable.Range(0, c.Tokens * h * c.Dh).Select(_ => Next()).ToArray();
        using Tensor keyCache = Tensor.Empty([c.Hkv, c.Dh, c.Capacity], device: device);
        using Tensor valueCache = Tensor.Empty([c.Hkv, c.Dh, c.Capacity], device: device);
        int width = c.Hkv * c.Dh;
        int firstPiece = c.Start / 2;
        foreach ((int from, int count) in new[] { (0, firstPiece), (firstPiece, c.Start + c.Tokens - firstPiece) })
        {
            using Tensor kPiece = Tensor.FromArray(k.AsSpan(from * width, count * width), [count, width], device);
            using Tensor vPiece = Tensor.FromArray(v.AsSpan(from * width, count * width), [count, width], device);
            Kernels.Attention.Append(kPiece, vPiece, keyCache, valueCache, from);
        }

        using Tensor query = Tensor.FromArray(q, [c.Tokens, h, c.Dh], device);
        using Tensor output = Tensor.Empty([c.Tokens, h, c.Dh], device: device);
        double[] expected = Kernels.Attention.Reference(q, c.Tokens, h, c.Dh, keyCache.ToArray(), valueCache.ToArray(), c.Hkv, c.Capacity, c.Start);

        // Every vector width, whatever this machine has (a width it lacks runs in software), so that the kernels of
        // both widths are tested on both kinds of machine.
        foreach (KernelWidth kernelWidth in new[] { KernelWidth.Vector512, KernelWidth.Vector256, KernelWidth.Scalar })
        {
            Kernels.Attention.WidthOverride = kernelWidth;
            try
            {
                Kernels.Attention.Compute(query, keyCache, valueCache, c.Start, output);
            }
            finally
            {
                Kernels.Attention.WidthOverride = null;
            }

            // Outputs are convex mixes of values in [-2, 2]; float32 accumulation stays within 1e-5 here.
            float[] actual = output.ToArray();
            for (int i = 0; i < actual.Length; i++)
            {
                if (Math.Abs(actual[i] - expected[i]) > 1e-5 + (1e-5 * Math.Abs(expected[i])))
                {
                    throw new Xunit.Sdk.XunitException($"{c} {kernelWidth}: output[{i}] = {actual[i]}, expected {expected[i]}");
                }
            }
        }

        // The cache holds exactly what was appended, transposed.
        float[] cachedKeys = keyCache.ToArray();
        for (int p = 0; p < c.Start + c.Tokens; p++)
        {
            for (int j = 0; j < width; j++)
            {
                Assert.Equal(k[(p * width) + j], cachedKeys[(j * c.Capacity) + p]);
            }
        }

        return true;
    }
}
