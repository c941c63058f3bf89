using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln;

// Rope: rotary position embedding (Su et al. 2021). Each pair (x0, x1) of a head is rotated by the angle
// pos · θ^(-2i/Dh) of its pair index i: y0 = x0·cos - x1·sin, y1 = x0·sin + x1·cos. Which elements pair up is the
// model's RopeLayout: adjacent (2i, 2i + 1) as in llama2.c/Meta/GGUF, or half-split (i, i + Dh/2) as in Hugging
// Face/NeoX. The cos/sin tables [S, Dh/2] come from RopeTables; token t of x [T, ..., Dh] reads row
// startPosition + t. Generated op: Ops.Rope(x, cos, sin, startPosition, layout, output).

public static partial class Ops
{
    /// <summary>The definition of <c>Rope</c>: the pair (x0, x1) rotated by the angle of the given cosine and sine.</summary>
    [Rotary]
    public static (float, float) Rope(float x0, float x1, float cos, float sin) =>
        (x0 * cos - x1 * sin, x0 * sin + x1 * cos);

    /// <summary>
    /// The cos and sin tables [<paramref name="maxPositions"/>, <paramref name="headDim"/> / 2] for <c>Rope</c>:
    /// entry [pos, i] is cos (sin) of pos · θ^(-2i / Dh). Angles and their cosines are computed in float64 and
    /// rounded once to float32.
    /// </summary>
    /// <param name="maxPositions">The number of positions (rows); at least 1.</param>
    /// <param name="headDim">Dh, the head width; even and at least 2.</param>
    /// <param name="theta">The RoPE base θ (10000 for Llama 2, 500000 for Llama 3); positive.</param>
    /// <param name="device">Where the tables go; the default CPU device when null.</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    public static (Tensor Cos, Tensor Sin) RopeTables(int maxPositions, int headDim, float theta, Device? device = null)
    {
        // Check the arguments.
        if (maxPositions < 1)
        {
            throw new ArgumentOutOfRangeException(
                nameof(maxPositions),
                maxPositions,
                "RopeTables: maxPositions must be at least 1; pass the context length.");
        }

        if (headDim < 2 || headDim % 2 != 0)
        {
            throw new ArgumentOutOfRangeException(
                nameof(headDim),
                headDim,
                "RopeTables: headDim must be even and at least 2; pass the model's head width Dh.");
        }

        if (!(theta > 0) || float.IsInfinity(theta))
        {
            throw new ArgumentOutOfRangeException(
                nameof(theta),
                theta,
                "RopeTables: theta must be a positive finite number; pass the model's RoPE base (e.g. 10000).");
        }

        // Fill both tables in float64, rounding once.
        int half = headDim / 2;
        float[] cos = new float[maxPositions * half];
        float[] sin = new float[maxPositions * half];
        for (int i = 0; i < half; i++)
        {
            double frequency = Math.Pow(theta, -2.0 * i / headDim);
            for (int position = 0; position < maxPositions; position++)
            {
                double angle = position * frequency;
                cos[(position * half) + i] = (float)Math.Cos(angle);
                sin[(position * half) + i] = (float)Math.Sin(angle);
            }
        }

        Device target = device ?? CpuDevice.Default;
        return (Tensor.FromArray(cos, [maxPositions, half], target), Tensor.FromArray(sin, [maxPositions, half], target));
    }

    public static partial class Reference
    {
        /// <summary>
        /// Rope in float64 over x [T, rowsPerToken, Dh] (flattened), with the tables [S, Dh / 2] and the positions
        /// startPosition + t.
        /// </summary>
        public static double[] Rope(
            ReadOnlySpan<float> x,
            int rowsPerToken,
            int headDim,
            ReadOnlySpan<float> cos,
            ReadOnlySpan<float> sin,
            int startPosition,
            RopeLayout layout)
        {
            double[] result = new double[x.Length];
            int half = headDim / 2;
            for (int row = 0; row < x.Length / headDim; row++)
            {
                int table = (startPosition + (row / rowsPerToken)) * half;
                for (int i = 0; i < half; i++)
                {
                    // The pair's two positions in the row, by layout.
                    int first = (row * headDim) + (layout == RopeLayout.Adjacent ? 2 * i : i);
                    int second = first + (layout == RopeLayout.Adjacent ? 1 : half);
                    double x0 = x[first];
                    double x1 = x[second];
                    double c = cos[table + i];
                    double s = sin[table + i];
                    result[first] = (x0 * c) - (x1 * s);
                    result[second] = (x0 * s) + (x1 * c);
                }
            }

            return result;
        }
    }
}
