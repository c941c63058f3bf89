using Kiln.Kernels;

namespace Kiln.Core.Tests.Ops;

// Kernel definitions that exist only to test the generator's output end to end: every supported MathF function,
// conditionals with && || and every comparison, three broadcast inputs with a constant-only uniform, a row op with
// two reductions of one input plus a third input, a reduction of a non-lead input, an epilogue with a scalar and
// no extra operand, and a rotary op with a scalar. Each has a float64 reference next to it; CustomKernelTests runs
// them on the CPU and on ILGPU, and the PTX tests compile their kernels.

/// <summary>Test-only kernel definitions and their float64 references.</summary>
[Kernels]
public static partial class TestKernels
{
    /// <summary>Every supported function once; the arguments keep Sqrt and Log in their domains.</summary>
    [Pointwise]
    public static float AllFunctions(float a, float b, float c) =>
        MathF.Abs(a) + MathF.Sqrt(MathF.Abs(b)) + MathF.Exp(a * 0.25f) + MathF.Log(MathF.Abs(b) + 1f)
        + MathF.Max(a, b) - MathF.Min(a, c) + (MathF.Sin(a) * MathF.Cos(b)) + MathF.Tanh(a)
        + MathF.Floor(a) + MathF.Ceiling(b) + MathF.Round(c) + MathF.Truncate(b) + MathF.FusedMultiplyAdd(a, b, c);

    /// <summary>Conditionals: every comparison, && and ||, nested, with precedence that needs parentheses.</summary>
    [Pointwise]
    public static float Conditionals(float x, float y) =>
        (x > 0f && y <= 1f) || x == y ? x * (y - 1f) : x != 1f ? -(x - y) : (x >= 2f || y < -2f ? y : 0.5f);

    /// <summary>Three inputs with their own broadcasts, and a uniform made of constants only.</summary>
    [Pointwise]
    public static float ThreeInputs(float a, float b, float c) => a * b + c * MathF.Sqrt(2f / MathF.PI);

    /// <summary>LayerNorm with bias: mean and variance from Σx and Σx² of one pass.</summary>
    [Row]
    public static float LayerNorm(
        float x,
        float weight,
        float bias,
        [Reduce(Reduction.Sum, nameof(x))] float sum,
        [Reduce(Reduction.SumOfSquares, nameof(x))] float sumOfSquares,
        [RowLength] int n,
        [Scalar] float eps)
        => (x - sum / n) * weight / MathF.Sqrt(sumOfSquares / n - (sum / n) * (sum / n) + eps) + bias;

    /// <summary>A reduction of the second input (broadcast), and a standalone max.</summary>
    [Row]
    public static float ScaleByOtherMax(float x, float y, [Reduce(Reduction.Max, nameof(y))] float peak) => x * peak - y;

    /// <summary>A softmax-style SumExp without a Max parameter: x · Σ exp(x - max).</summary>
    [Row]
    public static float TimesSumExp(float x, [Reduce(Reduction.SumExp, nameof(x))] float total) => x / total;

    /// <summary>An epilogue with a scalar and no extra operand: a scaled SiLU of the product.</summary>
    [Epilogue]
    public static float ScaledSilu(float acc, [Scalar] float scale) => acc * MathF.Sqrt(scale) / (1f + MathF.Exp(-acc));

    /// <summary>A rotary op with one table and a scalar.</summary>
    [Rotary]
    public static (float, float) Shear(float x0, float x1, float c, [Scalar] float g) => (x0 * c + g, x1 - (g * c));

    /// <summary>Float64 references of the test kernels.</summary>
    public static class Reference
    {
        /// <summary>Reference of <see cref="AllFunctions(float, float, float)"/> for one element.</summary>
        public static double AllFunctions(double a, double b, double c) =>
            Math.Abs(a) + Math.Sqrt(Math.Abs(b)) + Math.Exp(a * 0.25) + Math.Log(Math.Abs(b) + 1)
            + Math.Max(a, b) - Math.Min(a, c) + (Math.Sin(a) * Math.Cos(b)) + Math.Tanh(a)
            + Math.Floor(a) + Math.Ceiling(b) + Math.Round(c) + Math.Truncate(b) + (a * b) + c;

        /// <summary>Reference of <see cref="Conditionals(float, float)"/> for one element.</summary>
        public static double Conditionals(double x, double y) =>
            (x > 0 && y <= 1) || x == y ? x * (y - 1) : x != 1 ? -(x - y) : (x >= 2 || y < -2 ? y : 0.5);

        /// <summary>Reference of <see cref="ThreeInputs(float, float, float)"/> for one element.</summary>
        public static double ThreeInputs(double a, double b, double c) => (a * b) + (c * Math.Sqrt(2 / Math.PI));

        /// <summary>Reference of <see cref="LayerNorm"/> over rows of <paramref name="n"/>.</summary>
        public static double[] LayerNorm(float[] x, float[] weight, float[] bias, int n, float eps)
        {
            double[] result = new double[x.Length];
            for (int start = 0; start < x.Length; start += n)
            {
                double mean = 0;
                for (int i = 0; i < n; i++)
                {
                    mean += x[start + i];
                }

                mean /= n;
                double variance = 0;
                for (int i = 0; i < n; i++)
                {
                    variance += (x[start + i] - mean) * (x[start + i] - mean);
                }

                variance /= n;
                for (int i = 0; i < n; i++)
                {
                    int at = start + i;
                    result[at] = ((x[at] - mean) * weight[at % weight.Length] / Math.Sqrt(variance + eps)) + bias[at % bias.Length];
                }
            }

            return result;
        }

        /// <summary>Reference of <see cref="ScaleByOtherMax"/> over rows of <paramref name="n"/>.</summary>
        public static double[] ScaleByOtherMax(float[] x, float[] y, int n)
        {
            double[] result = new double[x.Length];
            for (int start = 0; start < x.Length; start += n)
            {
                double peak = double.NegativeInfinity;
                for (int i = 0; i < n; i++)
                {
                    peak = Math.Max(peak, y[(start + i) % y.Length]);
                }

                for (int i = 0; i < n; i++)
                {
                    result[start + i] = (x[start + i] * peak) - y[(start + i) % y.Length];
                }
            }

            return result;
        }

        /// <summary>Reference of <see cref="TimesSumExp"/> over rows of <paramref name="n"/>.</summary>
        public static double[] TimesSumExp(float[] x, int n)
        {
            double[] result = new double[x.Length];
            for (int start = 0; start < x.Length; start += n)
            {
                double max = double.NegativeInfinity;
                for (int i = 0; i < n; i++)
                {
                    max = Math.Max(max, x[start + i]);
                }

                double total = 0;
                for (int i = 0; i < n; i++)
                {
                    total += Math.Exp(x[start + i] - max);
                }

                for (int i = 0; i < n; i++)
                {
                    result[start + i] = x[start + i] / total;
                }
            }

            return result;
        }

        /// <summary>Reference of the <see cref="ScaledSilu"/> epilogue applied to a [M, K] · [N, K]ᵀ product.</summary>
        public static double[] ScaledSilu(float[] a, float[] w, int m, int k, int n, float scale)
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

                    result[(row * n) + column] = acc * Math.Sqrt(scale) / (1 + Math.Exp(-acc));
                }
            }

            return result;
        }
    }
}
