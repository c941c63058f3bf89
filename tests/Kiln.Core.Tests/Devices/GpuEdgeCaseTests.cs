// Edge cases of the GPU path, on two simulated devices: ilgpu-cpu:4x4 (16-thread groups, 4-lane warps, 4×4 GEMM
// tiles, several sampling chunks per row) and the default ilgpu-cpu (32 lanes × 2 warps). Each case is one that a
// random property rarely hits: attention with the cache exactly full or the start at its end, head widths that are
// multiples of nothing, shapes that must be refused; sampling rows of -inf, NaN and +inf spread over several chunks;
// the matrix product at K = 1, N = 1, M = 17 (the first tiled size) and over views that start off 16-byte
// alignment. References: AttentionOp.Reference and MatMulOp.Reference (float64), DeviceSampling's CPU rule (the
// Sampler's). Values come from integer grids; tolerance |got - expected| <= 2e-5 + 2e-5·|expected|.
using ILGPU;
using AttentionOp = Kiln.Kernels.Attention;
using MatMulOp = Kiln.Kernels.MatMul;
using Kiln.Devices;
using Kiln.Kernels;
using Xunit;

namespace Kiln.Core.Tests.Devices;

/// <summary>An ilgpu-cpu:4x4 device at O1, shared by one test class.</summary>
public sealed class NarrowIlgpuFixture : IDisposable
{
    /// <summary>The device: 4 lanes per warp, 4 warps per group.</summary>
    public IlgpuDevice Device { get; } = IlgpuDevice.CreateCpuAccelerator(OptimizationLevel.O1, 4, 4);

    /// <inheritdoc />
    public void Dispose() => Device.Dispose();
}

/// <summary>An ilgpu-cpu device (32 lanes × 2 warps) at O1, shared by one test class.</summary>
public sealed class WideIlgpuFixture : IDisposable
{
    /// <summary>The device: 32 lanes per warp, 2 warps per group.</summary>
    public IlgpuDevice Device { get; } = IlgpuDevice.CreateCpuAccelerator(OptimizationLevel.O1);

    /// <inheritdoc />
    public void Dispose() => Device.Dispose();
}

/// <summary>The edge cases on one simulated device; derived classes pick it.</summary>
public abstract class GpuEdgeCaseTests
{
    private const double Tolerance = 2e-5;

    private readonly IlgpuDevice _device;

    /// <summary>Runs the cases on <paramref name="device"/>.</summary>
    protected GpuEdgeCaseTests(IlgpuDevice device)
    {
        _device = device;
    }

    /// <summary>Prefill that fills the cache exactly, then decode at the last position, Dh a multiple of nothing.</summary>
    [Theory]
    [InlineData(2, 3, 7, 5)]
    [InlineData(1, 1, 1, 3)]
    [InlineData(3, 2, 13, 1)]
    public void Attention_CacheExactlyFull_MatchesReference(int hkv, int group, int dh, int capacity)
    {
        int h = hkv * group;
        float[] k = Grid(capacity * hkv * dh, 1);
        float[] v = Grid(capacity * hkv * dh, 2);
        using Tensor keyCache = Tensor.Empty([hkv, dh, capacity], device: _device);
        using Tensor valueCache = Tensor.Empty([hkv, dh, capacity], device: _device);
        using Tensor keys = Tensor.FromArray(k, [capacity, hkv * dh], _device);
        using Tensor values = Tensor.FromArray(v, [capacity, hkv * dh], _device);

        // T = S from position 0: every position of the cache written and attended.
        AttentionOp.Append(keys, values, keyCache, valueCache, 0);
        float[] q = Grid(capacity * h * dh, 3);
        using Tensor query = Tensor.FromArray(q, [capacity, h, dh], _device);
        using Tensor output = Tensor.Empty([capacity, h, dh], device: _device);
        AttentionOp.Compute(query, keyCache, valueCache, 0, output);
        AssertClose(AttentionOp.Reference(q, capacity, h, dh, k.Transposed(capacity, hkv * dh), v.Transposed(capacity, hkv * dh), hkv, capacity, 0), output);

        // The last query alone, at position S - 1.
        float[] last = q.AsSpan((capacity - 1) * h * dh).ToArray();
        using Tensor lastQuery = Tensor.FromArray(last, [1, h, dh], _device);
        using Tensor lastOutput = Tensor.Empty([1, h, dh], device: _device);
        AttentionOp.Compute(lastQuery, keyCache, valueCache, capacity - 1, lastOutput);
        AssertClose(AttentionOp.Reference(last, 1, h, dh, k.Transposed(capacity, hkv * dh), v.Transposed(capacity, hkv * dh), hkv, capacity, capacity - 1), lastOutput);
    }

    /// <summary>At the cache's end, nothing more fits: no tokens is a no-op, one token is refused by name.</summary>
    [Fact]
    public void Attention_StartAtCacheEnd_TakesNothingMore()
    {
        using Tensor keyCache = Tensor.FromArray(Grid(2 * 3 * 4, 4), [2, 3, 4], _device);
        using Tensor valueCache = Tensor.FromArray(Grid(2 * 3 * 4, 5), [2, 3, 4], _device);
        float[] before = keyCache.ToArray();
        using Tensor none = Tensor.Empty([0, 6], device: _device);
        using Tensor noQuery = Tensor.Empty([0, 2, 3], device: _device);
        using Tensor one = Tensor.Empty([1, 6], device: _device);
        using Tensor oneQuery = Tensor.Empty([1, 2, 3], device: _device);

        AttentionOp.Append(none, none, keyCache, valueCache, 4);
        AttentionOp.Compute(noQuery, keyCache, valueCache, 4, noQuery);
        Assert.Equal(before, keyCache.ToArray());

        ArgumentOutOfRangeException append = Assert.Throws<ArgumentOutOfRangeException>(() => AttentionOp.Append(one, one, keyCache, valueCache, 4));
        Assert.Contains("positions [4, 5) do not fit in a cache of 4 positions", append.Message);
        ArgumentOutOfRangeException compute = Assert.Throws<ArgumentOutOfRangeException>(() => AttentionOp.Compute(oneQuery, keyCache, valueCache, 4, oneQuery));
        Assert.Contains("positions [4, 5) do not fit", compute.Message);
    }

    /// <summary>Query heads that are not a multiple of the key/value heads, or rows of another head width, are refused.</summary>
    [Fact]
    public void Attention_HeadsThatDoNotDivide_AreRefused()
    {
        using Tensor cache = Tensor.Empty([2, 6, 4], device: _device);
        using Tensor threeHeads = Tensor.Empty([1, 3, 6], device: _device);
        using Tensor wrongWidth = Tensor.Empty([1, 4, 3], device: _device);

        ArgumentException heads = Assert.Throws<ArgumentException>(() => AttentionOp.Compute(threeHeads, cache, cache, 0, threeHeads));
        Assert.Contains("H a multiple of 2", heads.Message);

        // [T, 4, 3] holds 12 floats per token, which two heads of 6 would also hold: the head width must match.
        ArgumentException width = Assert.Throws<ArgumentException>(() => AttentionOp.Compute(wrongWidth, cache, cache, 0, wrongWidth));
        Assert.Contains("[1, 4, 3]", width.Message);
        Assert.Contains("Dh = 6", width.Message);
    }

    /// <summary>Degenerate logit rows spread over several groups' worth of ids give the Sampler's ids.</summary>
    [Fact]
    public void Sampling_NonFiniteLogits_FollowTheSamplerRule()
    {
        const int Vocab = 37;
        float nan = float.NaN, inf = float.PositiveInfinity, minus = float.NegativeInfinity;
        float[][] rows =
        [
            Fill(Vocab, minus, []),
            Fill(Vocab, nan, []),
            Fill(Vocab, nan, [(20, minus), (33, minus)]),
            Fill(Vocab, 1f, [(0, nan), (19, inf), (36, inf)]),
            Fill(Vocab, minus, [(0, nan), (35, 2f), (17, 2f)]),
            Fill(Vocab, nan, [(36, -3f)]),
            Fill(Vocab, 0.5f, [(3, inf), (2, minus)]),
        ];
        using Tensor id = Tensor.Empty([1], DType.Int32, _device);
        foreach (float[] row in rows)
        {
            using Tensor logits = Tensor.FromArray(row, [1, Vocab], _device);
            foreach (double u in new[] { 0.0, 0.5, 0.999 })
            {
                DeviceSampling.Sample(logits, 0.7f, u, id);
                Assert.Equal(DeviceSampling.Sample(row, 0.7f, u), id.ToInt32Array()[0]);
            }

            DeviceSampling.ArgMax(logits, id);
            Assert.Equal(DeviceSampling.ArgMax(row), id.ToInt32Array()[0]);
        }
    }

    /// <summary>K = 1, N = 1 and M = 17 (one row past the matrix-vector kernel) match the float64 product.</summary>
    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(17, 1, 1)]
    [InlineData(17, 5, 1)]
    [InlineData(17, 1, 9)]
    [InlineData(3, 1, 1)]
    [InlineData(16, 1, 19)]
    [InlineData(17, 33, 19)]
    public void MatMul_DegenerateSides_MatchReference(int m, int n, int k)
    {
        float[] a = Grid(m * k, 6);
        float[] w = Grid(n * k, 7);
        using Tensor at = Tensor.FromArray(a, [m, k], _device);
        using Tensor wt = Tensor.FromArray(w, [n, k], _device);
        using Tensor output = Tensor.Empty([m, n], device: _device);
        MatMulOp.Compute(at, wt, output);
        double[] expected = new double[m * n];
        MatMulOp.Reference(a, w, m, n, k, expected);
        AssertClose(expected, output);
    }

    /// <summary>
    /// Views that start one element past a 16-byte boundary with K a multiple of 8 (the matrix-vector kernel's wide
    /// loads must not be taken), and row slices at odd K; the output is a view too.
    /// </summary>
    [Theory]
    [InlineData(1, 8, 16, DType.Float32)]
    [InlineData(3, 9, 16, DType.Float16)]
    [InlineData(2, 5, 8, DType.BFloat16)]
    [InlineData(18, 7, 8, DType.Float32)]
    [InlineData(17, 3, 5, DType.Float16)]
    public void MatMul_MisalignedViews_MatchReference(int m, int n, int k, DType dtype)
    {
        // One extra element in front of A, W and the output; views skip it.
        float[] a = Grid((m * k) + 1, 8);
        float[] w = Grid((n * k) + 1, 9);
        using Tensor aAll = Tensor.FromArray(a, [(m * k) + 1], _device);
        using Tensor wAll = Weights(w, [(n * k) + 1], dtype);
        using Tensor output = Tensor.Empty([(m * n) + 1], device: _device);
        Tensor aView = aAll.Slice(1, m * k).Reshape(m, k);
        Tensor wView = wAll.Slice(1, n * k).Reshape(n, k);
        Tensor outView = output.Slice(1, m * n).Reshape(m, n);
        Assert.NotEqual(0, aView.ByteOffset % 16);
        Assert.NotEqual(0, wView.ByteOffset % 16);

        MatMulOp.Compute(aView, wView, outView);
        double[] expected = new double[m * n];
        MatMulOp.Reference(a.AsSpan(1), w.AsSpan(1), m, n, k, expected);
        AssertClose(expected, outView);
        Assert.Equal(0f, output.ToArray()[0]);
    }

    private Tensor Weights(float[] values, int[] shape, DType dtype) => dtype switch
    {
        DType.Float32 => Tensor.FromArray(values, shape, _device),
        DType.Float16 => Tensor.FromBits(values.Select(static x => BitConverter.HalfToUInt16Bits((System.Half)x)).ToArray(), shape, dtype, _device),
        _ => Tensor.FromBits(values.Select(DTypes.SingleToBFloat16).ToArray(), shape, dtype, _device),
    };

    private void AssertClose(double[] expected, Tensor output)
    {
        _device.Synchronize();
        float[] actual = output.ToArray();
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < actual.Length; i++)
        {
            Assert.True(Math.Abs(actual[i] - expected[i]) <= Tolerance + (Tolerance * Math.Abs(expected[i])),
                $"element {i} on {_device.Name} ({_device.Accelerator.WarpSize} lanes): {actual[i]}, expected {expected[i]}");
        }
    }

    // Values k/8 for k in [-16, 16]: exact in float32, float16 and bfloat16.
    private static float[] Grid(int count, int seed)
    {
        Random random = new(seed);
        float[] values = new float[count];
        for (int i = 0; i < count; i++)
        {
            values[i] = random.Next(-16, 17) / 8f;
        }

        return values;
    }

    private static float[] Fill(int count, float value, (int Index, float Value)[] overrides)
    {
        float[] row = Enumerable.Repeat(value, count).ToArray();
        foreach ((int index, float at) in overrides)
        {
            row[index] = at;
        }

        return row;
    }
}

/// <summary>The edge cases on ilgpu-cpu:4x4.</summary>
public sealed class GpuEdgeCaseTestsNarrow : GpuEdgeCaseTests, IClassFixture<NarrowIlgpuFixture>
{
    /// <summary>Uses the class's 4x4 device.</summary>
    public GpuEdgeCaseTestsNarrow(NarrowIlgpuFixture fixture)
        : base(fixture.Device)
    {
    }
}

/// <summary>The edge cases on ilgpu-cpu (32x2).</summary>
public sealed class GpuEdgeCaseTestsWide : GpuEdgeCaseTests, IClassFixture<WideIlgpuFixture>
{
    /// <summary>Uses the class's 32x2 device.</summary>
    public GpuEdgeCaseTestsWide(WideIlgpuFixture fixture)
        : base(fixture.Device)
    {
    }
}

/// <summary>Row-major [rows, cols] to the attention cache's transposed [cols, rows] (cols = Hkv·Dh, rows = S).</summary>
internal static class TransposeExtensions
{
    /// <summary>The transposed copy.</summary>
    public static float[] Transposed(this float[] values, int rows, int cols)
    {
        float[] result = new float[values.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                result[(c * rows) + r] = values[(r * cols) + c];
            }
        }

        return result;
    }
}
