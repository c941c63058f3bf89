using Kiln.Kernels;

namespace Kiln;

// Scale: out = x · s for one scalar s (attention's 1/√Dh, logit temperature). Pointwise; generated op:
// Ops.Scale(Tensor x, float s, Tensor output).

public static partial class Ops
{
    /// <summary>The definition of <c>Scale</c>: x · s.</summary>
    [Pointwise]
    public static float Scale(float x, [Scalar] float s) => x * s;

    public static partial class Reference
    {
        /// <summary>x[i] · s in float64.</summary>
        public static double[] Scale(ReadOnlySpan<float> x, float s)
        {
            double[] result = new double[x.Length];
            for (int i = 0; i < x.Length; i++)
            {
                result[i] = (double)x[i] * s;
            }

            return result;
        }
    }
}
