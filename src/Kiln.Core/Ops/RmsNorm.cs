using Kiln.Kernels;

namespace Kiln;

// RmsNorm: root-mean-square normalisation of every row (Zhang & Sennrich 2019; Llama's RMSNorm),
// out = weight · (x · 1/√(mean(x²) + eps)), over the last axis N of x [..., N] with weight [N], in the order of
// operations of llama2.c's rmsnorm. A row op: the generated code first reduces Σ x² over the row (one vectorized
// pass), then maps every element; 1/√(...) is the same for the whole row and is computed once per row, so the map
// is two multiplications (a division per element would bound the loop by the divider). Generated op:
// Ops.RmsNorm(x, weight, eps, output), plus the single-row helper Ops.RmsNormRow(x, weight, eps, output) over spans.

public static partial class Ops
{
    /// <summary>The definition of <c>RmsNorm</c>: weight · (x · 1 / √(Σx² / n + eps)), in llama2.c's order.</summary>
    [Row]
    public static float RmsNorm(
        float x,
        float weight,
        [Reduce(Reduction.SumOfSquares, nameof(x))] float sumOfSquares,
        [RowLength] int n,
        [Scalar] float eps)
        => weight * (x * (1f / MathF.Sqrt(sumOfSquares / n + eps)));

    public static partial class Reference
    {
        /// <summary>RmsNorm of every row of <paramref name="x"/>, rows of <paramref name="rowLength"/>, in float64.</summary>
        public static double[] RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, int rowLength, float eps)
        {
            double[] result = new double[x.Length];
            for (int start = 0; start < x.Length; start += rowLength)
            {
                // Mean of squares, then scale.
                double sumOfSquares = 0;
                for (int i = 0; i < rowLength; i++)
                {
                    sumOfSquares += (double)x[start + i] * x[start + i];
                }

                double scale = 1.0 / Math.Sqrt((sumOfSquares / rowLength) + eps);
                for (int i = 0; i < rowLength; i++)
                {
                    result[start + i] = x[start + i] * scale * weight[(start + i) % weight.Length];
                }
            }

            return result;
        }
    }
}
