using Kiln.Kernels;

namespace Kiln;

// Softmax over the last axis, stable: out = exp(x - max) / Σ exp(x - max), written as a product with the reciprocal
// of the sum (computed once per row; a division per element would bound the last pass by the divider). Subtracting
// the row's max keeps every exponent ≤ 0, so large logits cannot overflow (TensorPrimitives.SoftMax skips this and
// returns NaN on them).
// On the GPU the max and the sum come from one online pass over the row (the sum is rescaled by
// exp(old max - new max) when the max grows, as in Milakov & Gimelshein 2018), then one pass writes the output. On
// the CPU, where exp is the cost, the generator sees that the map reuses exp(x - max) and computes each
// exponential once: a max pass, a pass writing the exponentials to the output and summing them, a scaling pass.
// Generated op: Ops.Softmax(x, output), plus Ops.SoftmaxRow(x, output) over spans.
// NOTE: a row whose elements are all -∞ has no softmax; it comes out as 0/0 = NaN.

public static partial class Ops
{
    /// <summary>The definition of <c>Softmax</c>: exp(x - max) · (1 / sum), with max and sum reduced over the row.</summary>
    [Row]
    public static float Softmax(
        float x,
        [Reduce(Reduction.Max, nameof(x))] float max,
        [Reduce(Reduction.SumExp, nameof(x))] float sum)
        => MathF.Exp(x - max) * (1f / sum);

    public static partial class Reference
    {
        /// <summary>The softmax of every row of <paramref name="x"/>, rows of <paramref name="rowLength"/>, in float64.</summary>
        public static double[] Softmax(ReadOnlySpan<float> x, int rowLength)
        {
            double[] result = new double[x.Length];
            for (int start = 0; start < x.Length; start += rowLength)
            {
                // Max, then the sum of shifted exponentials, then normalise.
                double max = double.NegativeInfinity;
                for (int i = 0; i < rowLength; i++)
                {
                    max = Math.Max(max, x[start + i]);
                }

                double sum = 0;
                for (int i = 0; i < rowLength; i++)
                {
                    sum += Math.Exp(x[start + i] - max);
                }

                for (int i = 0; i < rowLength; i++)
                {
                    result[start + i] = Math.Exp(x[start + i] - max) / sum;
                }
            }

            return result;
        }
    }
}
