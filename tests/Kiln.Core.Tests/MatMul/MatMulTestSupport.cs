// Shared pieces of the matrix-product tests: problem generation on integer grids (so every value is exact in
// float32, float16 and bfloat16) or, for Q8_0 weights, random raw blocks (any float16 scale of moderate size, zero
// scales, every int8 from -128 to 127) whose dequantized values are the reference's W, the float64 reference with the test epilogue, the tolerance check, and the
// test epilogues (C = 2·acc + residual[row, col]) for the CPU and ILGPU paths.
//
// Tolerance: float32 accumulation of K products differs from the float64 sum by at most about K·eps·Σ|a·w|
// and typically sqrt(K)·eps·Σ|a·w|; the tests allow 1e-5·sqrt(K)·Σ_k |a[m,k]·w[n,k]| per element (eps = 6e-8,
// so this is about 80 sqrt(K) ulps of the magnitude sum), times 2 for the epilogue's scale, plus 1e-6·|residual|.
// The same bound holds for Q8_0: the kernels widen each weight to scale · int8 exactly in float32 (an 11-bit scale
// mantissa times a 7-bit integer fits 24 bits), so the only error is the float32 accumulation of exact products.
using System.Runtime.Intrinsics;
using ILGPU;
using Half = System.Half;
using ILGPU.Runtime;
using Kiln.Kernels;

namespace Kiln.Core.Tests.MatMul;

/// <summary>One random product: sizes, weight dtype, values (exact in every dtype) and a residual.</summary>
public sealed record GemmCase(int M, int N, int K, DType WType, bool UseEpilogue, int Seed)
{
    /// <summary>A [M, K], values i/64 for i in [-64, 64].</summary>
    public float[] A { get; } = Values(M * K, Seed, 64, 64f);

    /// <summary>For Q8_0 weights, the raw blocks [N, K / 32] of 34 bytes; null for the other dtypes.</summary>
    public byte[]? Blocks { get; } = WType == DType.Q8_0 ? RandomBlocks(N * K, Seed + 1) : null;

    /// <summary>W [N, K], values i/16 for i in [-32, 32]: exact in bfloat16 (8 significant bits) and float16; for Q8_0
    /// the dequantized <see cref="Blocks"/>.</summary>
    public float[] W { get; } = WType == DType.Q8_0 ? Dequantized(N * K, Seed + 1) : Values(N * K, Seed + 1, 32, 16f);

    /// <summary>The residual [M, N] the test epilogue adds, values i/8 for i in [-16, 16].</summary>
    public float[] Residual { get; } = Values(M * N, Seed + 2, 16, 8f);

    /// <summary>Makes the weight tensor in <see cref="WType"/> on <paramref name="device"/>.</summary>
    public Tensor WeightTensor(Kiln.Devices.Device device)
    {
        int[] shape = [N, K];
        return WType switch
        {
            DType.Float32 => Tensor.FromArray(W, shape, device),
            DType.Q8_0 => Tensor.FromQ8_0(Blocks, shape, device),
            DType.Float16 => Tensor.FromBits(W.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray(), shape, DType.Float16, device),
            _ => Tensor.FromBits(W.Select(DTypes.SingleToBFloat16).ToArray(), shape, DType.BFloat16, device),
        };
    }

    /// <summary>Checks <paramref name="actual"/> [M, N] against the float64 reference; throws with the worst element.</summary>
    public void Check(ReadOnlySpan<float> actual, string path)
    {
        double[] expected = new double[M * N];
        Kiln.Kernels.MatMul.Reference(A, W, M, N, K, expected);
        for (int row = 0; row < M; row++)
        {
            for (int col = 0; col < N; col++)
            {
                // The magnitude sum that bounds the rounding error of this element.
                double magnitude = 0;
                for (int i = 0; i < K; i++)
                {
                    magnitude += Math.Abs((double)A[(row * K) + i] * W[(col * K) + i]);
                }

                int index = (row * N) + col;
                double want = expected[index];
                double tolerance = 1e-5 * Math.Sqrt(K) * magnitude;
                if (UseEpilogue)
                {
                    want = (2 * want) + Residual[index];
                    tolerance = (2 * tolerance) + (1e-6 * Math.Abs(Residual[index]));
                }

                if (!(Math.Abs(actual[index] - want) <= tolerance))
                {
                    throw new Xunit.Sdk.XunitException(
                        $"{path}: {this} element [{row}, {col}] is {actual[index]} but the reference is {want} "
                        + $"(tolerance {tolerance:G3}).");
                }
            }
        }
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"M={M} N={N} K={K} w={WType.Name()} epilogue={(UseEpilogue ? "2acc+residual" : "identity")} seed={Seed}";

    /// <summary>Random Q8_0 blocks: one scale in eight is zero, one in eight a float16 subnormal, the others
    /// ±2^e·(1 + f) for e in [-12, 0]; every int8 value is possible, -128 included (ggml's quantizer never writes it,
    /// but a file may hold it).</summary>
    internal static byte[] RandomBlocks(int count, int seed)
    {
        Random random = new(seed);
        byte[] blocks = new byte[count / Q8_0Blocks.BlockElements * Q8_0Blocks.BlockBytes];
        for (int b = 0; b < blocks.Length; b += Q8_0Blocks.BlockBytes)
        {
            int kind = random.Next(8);
            float sign = random.Next(2) == 0 ? 1 : -1;
            Half scale = kind == 0 ? (Half)0f
                : kind == 1 ? BitConverter.UInt16BitsToHalf((ushort)(random.Next(1, 0x400) | (sign < 0 ? 0x8000 : 0)))
                : (Half)(sign * MathF.ScaleB(1f + random.NextSingle(), random.Next(-12, 1)));
            BitConverter.TryWriteBytes(blocks.AsSpan(b), scale);
            random.NextBytes(blocks.AsSpan(b + 2, Q8_0Blocks.BlockElements));
        }

        return blocks;
    }

    private static float[] Dequantized(int count, int seed)
    {
        float[] values = new float[count];
        Q8_0Blocks.Dequantize(RandomBlocks(count, seed), values);
        return values;
    }

    private static float[] Values(int count, int seed, int steps, float denominator)
    {
        // i / denominator for i in [-steps, steps].
        Random random = new(seed);
        float[] values = new float[count];
        for (int i = 0; i < count; i++)
        {
            values[i] = random.Next(-steps, steps + 1) / denominator;
        }

        return values;
    }
}

/// <summary>The CPU test epilogue: C[row, col] = 2·acc + residual[row, col].</summary>
public unsafe struct ResidualEpilogue : IMatMulEpilogue
{
    /// <summary>The residual [M, N].</summary>
    public float* Residual;

    /// <summary>Columns of the output.</summary>
    public int N;

    /// <inheritdoc />
    public readonly Vector512<float> Apply(Vector512<float> acc, int row, int col) =>
        (acc * 2f) + Vector512.Load(Residual + ((long)row * N) + col);

    /// <inheritdoc />
    public readonly Vector256<float> Apply(Vector256<float> acc, int row, int col) =>
        (acc * 2f) + Vector256.Load(Residual + ((long)row * N) + col);

    /// <inheritdoc />
    public readonly float Apply(float acc, int row, int col) => (acc * 2f) + Residual[((long)row * N) + col];
}

/// <summary>The ILGPU test epilogue: C[row, col] = 2·acc + residual[row, col].</summary>
public struct GpuResidualEpilogue : IGpuMatMulEpilogue
{
    /// <summary>The residual [M, N].</summary>
    public ArrayView<float> Residual;

    /// <inheritdoc />
    public readonly float Apply(float acc, int row, int col, int n) => (acc * 2f) + Residual[((long)row * n) + col];
}
