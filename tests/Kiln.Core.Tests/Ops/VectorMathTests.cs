using System.Runtime.Intrinsics;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Kernels;

namespace Kiln.Core.Tests.Ops;

// The SIMD helpers the generated CPU code calls: tanh against Math.Tanh in float64 (over the whole range, near zero
// where the textbook formula loses its relative precision, at saturation, ±∞ and NaN), the horizontal max, and the
// pair (de)interleave used for adjacent RoPE pairs.

/// <summary>Tests of <see cref="VectorMath"/>.</summary>
public sealed class VectorMathTests
{
    // 4 ulp of float32 relative to the value (2⁻²³ · 4 ≈ 4.8e-7), plus the smallest subnormal.
    private const double TanhRelative = 4.8e-7;

    // 2 ulp of float32 relative to the value (2⁻²³ · 2 ≈ 2.4e-7), plus the smallest subnormal.
    private const double ExpRelative = 2.4e-7;

    /// <summary>Values on a 1/1024 grid over exp's finite float32 range, underflow included ([-110, 88.68]).</summary>
    public static class ExpArbitraries
    {
        public static Arbitrary<float[]> ExpInputs() =>
            Gen.Choose(-110 * 1024, (88 * 1024) + 700).Select(i => i / 1024f).ArrayOf(16).ToArbitrary();
    }

    /// <summary>Exp of both widths is within 2 ulp of Math.Exp rounded to float32, subnormal results included.</summary>
    [Property(MaxTest = 500, Arbitrary = new[] { typeof(ExpArbitraries) })]
    public void Exp_IsWithinTwoUlp(float[] values)
    {
        Vector512<float> wide = VectorMath.Exp(Vector512.Create(values));
        Vector256<float> lower = VectorMath.Exp(Vector256.Create(values.AsSpan(0, 8)));
        double[] expected = values.Select(v => (double)(float)Math.Exp(v)).ToArray();
        float[] actual512 = new float[16];
        float[] actual256 = new float[8];
        wide.CopyTo(actual512);
        lower.CopyTo(actual256);
        Close.Check(expected, actual512, ExpRelative, 1.5e-45, "VectorMath.Exp(Vector512)");
        Close.Check(expected[..8], actual256, ExpRelative, 1.5e-45, "VectorMath.Exp(Vector256)");
    }

    /// <summary>Exp overflows to +∞, underflows to 0, maps -∞ to 0 and keeps NaN.</summary>
    [Fact]
    public void Exp_EdgeValues()
    {
        float[] inputs = [float.PositiveInfinity, float.NegativeInfinity, float.NaN, 89f, -200f, 0f, -0f, 88.72f, -87.33f, -103.9f, 1e-30f, -1e-30f, 1f, -1f, 10f, -10f];
        float[] actual = new float[16];
        VectorMath.Exp(Vector512.Create(inputs)).CopyTo(actual);
        Assert.Equal(float.PositiveInfinity, actual[0]);
        Assert.Equal(0f, actual[1]);
        Assert.True(float.IsNaN(actual[2]));
        Assert.Equal(float.PositiveInfinity, actual[3]);
        Assert.Equal(0f, actual[4]);
        Assert.Equal(1f, actual[5]);
        Assert.Equal(1f, actual[6]);
        Assert.True(float.IsFinite(actual[7]) && actual[7] > 3.3e38f);
        for (int i = 8; i < 16; i++)
        {
            double expected = (float)Math.Exp(inputs[i]);
            Assert.True(Math.Abs(actual[i] - expected) <= (ExpRelative * Math.Abs(expected)) + 1.5e-45, $"exp({inputs[i]}) = {actual[i]}, expected {expected}");
        }
    }

    /// <summary>Values on a 1/256 grid in [-12, 12] and their scaled-down copies down to 1e-30.</summary>
    public static Arbitrary<float[]> TanhInputs() =>
        (from values in Gen.Choose(-3072, 3072).Select(i => i / 256f).ArrayOf(16)
         from exponent in Gen.Choose(0, 30)
         select values.Select(v => v * MathF.Pow(10f, -exponent)).ToArray()).ToArbitrary();

    /// <summary>Tanh of both widths is within 4 ulp of Math.Tanh, lane by lane.</summary>
    [Property(MaxTest = 300, Arbitrary = new[] { typeof(VectorMathTests) })]
    public void Tanh_IsWithinFourUlp(float[] values)
    {
        Vector512<float> wide = VectorMath.Tanh(Vector512.Create(values));
        Vector256<float> lower = VectorMath.Tanh(Vector256.Create(values.AsSpan(0, 8)));
        double[] expected = values.Select(v => Math.Tanh(v)).ToArray();
        float[] actual512 = new float[16];
        float[] actual256 = new float[8];
        wide.CopyTo(actual512);
        lower.CopyTo(actual256);
        Close.Check(expected, actual512, TanhRelative, 1e-45, "VectorMath.Tanh(Vector512)");
        Close.Check(expected[..8], actual256, TanhRelative, 1e-45, "VectorMath.Tanh(Vector256)");
    }

    /// <summary>Tanh saturates to ±1, keeps ±0, and propagates NaN.</summary>
    [Fact]
    public void Tanh_AtTheEdges_SaturatesAndPropagatesNaN()
    {
        Vector256<float> result = VectorMath.Tanh(Vector256.Create(float.PositiveInfinity, float.NegativeInfinity, 20f, -20f, 0f, -0f, float.NaN, 9.5f));
        Assert.Equal(1f, result[0]);
        Assert.Equal(-1f, result[1]);
        Assert.Equal(1f, result[2]);
        Assert.Equal(-1f, result[3]);
        Assert.True(result[4] == 0f && !float.IsNegative(result[4]));
        Assert.True(result[5] == 0f && float.IsNegative(result[5]));
        Assert.True(float.IsNaN(result[6]));
        Assert.Equal((float)Math.Tanh(9.5), result[7]);
    }

    /// <summary>The horizontal max finds the largest lane wherever it is.</summary>
    [Property(MaxTest = 100)]
    public void MaxAcross_FindsTheLargestLane(int seed)
    {
        Random random = new(seed);
        float[] values = Enumerable.Range(0, 16).Select(_ => (float)random.Next(-1000, 1000)).ToArray();
        Assert.Equal(values.Max(), VectorMath.MaxAcross(Vector512.Create(values)));
        Assert.Equal(values[..8].Max(), VectorMath.MaxAcross(Vector256.Create(values.AsSpan(0, 8))));
    }

    /// <summary>Deinterleave splits adjacent pairs into first and second elements, and Interleave undoes it.</summary>
    [Fact]
    public void Deinterleave_ThenInterleave_RoundTrips()
    {
        // Pairs (2i, 2i + 1) hold the values 2i and 2i + 1.
        float[] pairs = Enumerable.Range(0, 32).Select(i => (float)i).ToArray();
        VectorMath.Deinterleave(
            Vector512.Create(pairs.AsSpan(0, 16)),
            Vector512.Create(pairs.AsSpan(16, 16)),
            out Vector512<float> first,
            out Vector512<float> second);
        for (int i = 0; i < 16; i++)
        {
            Assert.Equal(2 * i, first[i]);
            Assert.Equal((2 * i) + 1, second[i]);
        }

        VectorMath.Interleave(first, second, out Vector512<float> low, out Vector512<float> high);
        Assert.Equal(pairs, low.ToArray().Concat(high.ToArray()));

        VectorMath.Deinterleave(
            Vector256.Create(pairs.AsSpan(0, 8)),
            Vector256.Create(pairs.AsSpan(8, 8)),
            out Vector256<float> first8,
            out Vector256<float> second8);
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal(2 * i, first8[i]);
            Assert.Equal((2 * i) + 1, second8[i]);
        }

        VectorMath.Interleave(first8, second8, out Vector256<float> low8, out Vector256<float> high8);
        Assert.Equal(pairs[..16], low8.ToArray().Concat(high8.ToArray()));
    }
}

/// <summary>Lane access helpers for the tests.</summary>
internal static class VectorExtensions
{
    /// <summary>The lanes as an array.</summary>
    public static float[] ToArray(this Vector512<float> vector)
    {
        float[] lanes = new float[16];
        vector.CopyTo(lanes);
        return lanes;
    }

    /// <summary>The lanes as an array.</summary>
    public static float[] ToArray(this Vector256<float> vector)
    {
        float[] lanes = new float[8];
        vector.CopyTo(lanes);
        return lanes;
    }
}
