// Generated row ops of the DSA lightning indexer. LayerNorm with weight and bias over the last axis (Ba et al. 2016;
// torch.nn.functional.layer_norm), as DeepSeek-V3.2's indexer applies it to its key projection in float32:
//   mean = Σx / n,  var = max(Σx² / n - mean², 0),  out = (x - mean) · 1/√(var + eps) · weight + bias.
// Both sums come from one pass over the row; the variance is clamped at 0 because the one-pass form can round
// slightly below it for near-constant rows. Generated op: IndexerOps.LayerNorm(x, weight, bias, eps, output), plus
// the single-row helper IndexerOps.LayerNormRow(x, weight, bias, eps, output) over spans.
// NOTE: the one-pass variance loses precision when |mean| ≫ standard deviation; the indexer's key projections are
// centred enough for that not to matter (the test states the tolerance).
namespace Kiln.Kernels;

/// <summary>Row ops of the DSA lightning indexer (<c>LayerNorm</c> with weight and bias), generated for CPU and ILGPU.</summary>
[Kernels]
public static partial class IndexerOps
{
    /// <summary>The definition of <c>LayerNorm</c>: (x - mean) / √(var + eps) · weight + bias over the last axis.</summary>
    [Row]
    public static float LayerNorm(
        float x,
        float weight,
        float bias,
        [Reduce(Reduction.Sum, nameof(x))] float sum,
        [Reduce(Reduction.SumOfSquares, nameof(x))] float sumOfSquares,
        [RowLength] int n,
        [Scalar] float eps)
        => (x - sum / n) * (1f / MathF.Sqrt(MathF.Max(sumOfSquares / n - (sum / n) * (sum / n), 0f) + eps)) * weight
            + bias;

    /// <summary>Float64 scalar references of the indexer's ops, for tests.</summary>
    public static class Reference
    {
        /// <summary>LayerNorm of every row of <paramref name="x"/> (rows of <paramref name="rowLength"/>) in float64.</summary>
        public static double[] LayerNorm(
            ReadOnlySpan<float> x,
            ReadOnlySpan<float> weight,
            ReadOnlySpan<float> bias,
            int rowLength,
            float eps)
        {
            double[] result = new double[x.Length];
            for (int start = 0; start < x.Length; start += rowLength)
            {
                // Two-pass mean and variance, then normalise, scale and shift.
                double mean = 0;
                for (int i = 0; i < rowLength; i++)
                {
                    mean += x[start + i];
                }

                mean /= rowLength;
                double variance = 0;
                for (int i = 0; i < rowLength; i++)
                {
                    variance += (x[start + i] - mean) * (x[start + i] - mean);
                }

                double scale = 1.0 / Math.Sqrt((variance / rowLength) + eps);
                for (int i = 0; i < rowLength; i++)
                {
                    result[start + i] = ((x[start + i] - mean) * scale * weight[i]) + bias[i];
                }
            }

            return result;
        }
    }
}
