using Kiln.Kernels;

namespace Kiln;

// Add: the residual connection, out = a + b, with b broadcast over a's leading dimensions (a bias [D] against
// activations [T, D]). Pointwise; generated op: Ops.Add(Tensor a, Tensor b, Tensor output).

public static partial class Ops
{
    /// <summary>The definition of <c>Add</c>: a + b.</summary>
    [Pointwise]
    public static float Add(float a, float b) => a + b;

    public static partial class Reference
    {
        /// <summary>a[i] + b[i mod |b|] in float64.</summary>
        public static double[] Add(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
        {
            double[] result = new double[a.Length];
            for (int i = 0; i < a.Length; i++)
            {
                result[i] = (double)a[i] + b[i % b.Length];
            }

            return result;
        }
    }
}
