using Kiln.Kernels;

namespace Kiln;

// ResidualAdd: a matrix-product epilogue, out = a · wᵀ + residual, so that an attention output projection or a
// feed-forward down projection adds the residual stream as it stores its result instead of in a second pass over
// memory. residual is [M, N], or [N] to add a bias. Generated op: Ops.ResidualAdd(a, w, residual, output), which
// runs Kiln.Kernels.MatMul with the epilogue fused.

public static partial class Ops
{
    /// <summary>The definition of the <c>ResidualAdd</c> epilogue: acc + residual, where acc is (a · wᵀ)[m, n].</summary>
    [Epilogue]
    public static float ResidualAdd(float acc, float residual) => acc + residual;

    public static partial class Reference
    {
        /// <summary>
        /// (a · wᵀ)[m, n] + residual[(m · N + n) mod |residual|] in float64, for a [M, K] and w [N, K], row-major.
        /// </summary>
        public static double[] ResidualAdd(
            ReadOnlySpan<float> a,
            ReadOnlySpan<float> w,
            ReadOnlySpan<float> residual,
            int m,
            int k,
            int n)
        {
            double[] result = new double[m * n];
            for (int row = 0; row < m; row++)
            {
                for (int column = 0; column < n; column++)
                {
                    double acc = 0;
                    for (int i = 0; i < k; i++)
                    {
                        acc += (double)a[(row * k) + i] * w[(column * k) + i];
                    }

                    result[(row * n) + column] = acc + residual[((row * n) + column) % residual.Length];
                }
            }

            return result;
        }
    }
}
