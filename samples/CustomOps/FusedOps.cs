using Kiln.Kernels;

namespace CustomOps;

// A model author's own fused ops, written as Kiln kernel definitions: the generator turns each into a vectorized,
// multi-threaded CPU loop, an ILGPU kernel, and a public op over tensors (FusedOps.GeluTanhGated(gate, up, output),
// FusedOps.LayerNorm(x, weight, bias, eps, output), FusedOps.BiasGelu(a, w, bias, output), FusedOps.Project(a, w,
// scale, output)). Only the scalar formula is written here; shapes, broadcasting, threads and devices come free.

/// <summary>Fused ops for the tiny MLP of this sample.</summary>
[Kernels]
public static partial class FusedOps
{
    // √(2/π), the constant of the tanh approximation of GELU.
    private const float SqrtTwoOverPi = 0.7978845608f;

    /// <summary>GELU (tanh approximation, as GPT-2 and Gemma use it) of the gate, times the up projection.</summary>
    [Pointwise]
    public static float GeluTanhGated(float gate, float up) =>
        0.5f * gate * (1f + MathF.Tanh(SqrtTwoOverPi * (gate + 0.044715f * gate * gate * gate))) * up;

    /// <summary>LayerNorm with a bias, (x - mean) / √(var + eps) · weight + bias, from Σx and Σx² of one pass.</summary>
    [Row]
    public static float LayerNorm(
        float x,
        float weight,
        float bias,
        [Reduce(Reduction.Sum, nameof(x))] float sum,
        [Reduce(Reduction.SumOfSquares, nameof(x))] float sumOfSquares,
        [RowLength] int n,
        [Scalar] float eps)
        => (x - sum / n) / MathF.Sqrt(sumOfSquares / n - (sum / n) * (sum / n) + eps) * weight + bias;

    /// <summary>A matrix-product epilogue: GELU (tanh) of the product plus a bias, fused into the product's store.</summary>
    [Epilogue]
    public static float BiasGelu(float acc, float bias) =>
        0.5f * (acc + bias)
        * (1f + MathF.Tanh(SqrtTwoOverPi * ((acc + bias) + 0.044715f * (acc + bias) * (acc + bias) * (acc + bias))));

    /// <summary>A matrix-product epilogue that scales the product: a plain projection when the scale is 1.</summary>
    [Epilogue]
    public static float Project(float acc, [Scalar] float scale) => acc * scale;
}
