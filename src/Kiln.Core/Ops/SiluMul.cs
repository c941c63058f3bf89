using Kiln.Kernels;

namespace Kiln;

// SiluMul: the SwiGLU gate of a Llama feed-forward block, out = silu(gate) · up with silu(g) = g / (1 + e^-g)
// (= g · sigmoid(g), PyTorch's F.silu). Pointwise over [T, F]; generated op: Ops.SiluMul(gate, up, output).
// For very negative g, e^-g overflows to +∞ and the quotient is -0, which is the limit.

public static partial class Ops
{
    /// <summary>The definition of <c>SiluMul</c>: silu(gate) · up.</summary>
    [Pointwise]
    public static float SiluMul(float gate, float up) => gate / (1f + MathF.Exp(-gate)) * up;

    public static partial class Reference
    {
        /// <summary>silu(gate[i]) · up[i mod |up|] in float64.</summary>
        public static double[] SiluMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up)
        {
            double[] result = new double[gate.Length];
            for (int i = 0; i < gate.Length; i++)
            {
                double g = gate[i];
                result[i] = g / (1.0 + Math.Exp(-g)) * up[i % up.Length];
            }

            return result;
        }
    }
}
