using Kiln;
using Kiln.Devices;

namespace CustomOps;

// A tiny two-layer MLP built from the fused ops of FusedOps and Kiln's ResidualAdd, on any device:
//   layer 1 (classic):  x += W2 · BiasGelu(W1 · LayerNorm(x) + b1)
//   layer 2 (gated):    x += Wd · GeluTanhGated(Wg · LayerNorm(x), Wu · LayerNorm(x))
// Activations are [T, D]; hidden widths F. Weights are [out, in], as PyTorch's Linear stores them. Sizes are odd on
// purpose, so that every vector loop has a tail.

/// <summary>The weights of the tiny MLP on one device, and its forward pass.</summary>
public sealed class TinyMlp : IDisposable
{
    private readonly List<Tensor> _owned = new();
    private readonly Tensor _norm1Weight;
    private readonly Tensor _norm1Bias;
    private readonly Tensor _w1;
    private readonly Tensor _b1;
    private readonly Tensor _w2;
    private readonly Tensor _norm2Weight;
    private readonly Tensor _norm2Bias;
    private readonly Tensor _wGate;
    private readonly Tensor _wUp;
    private readonly Tensor _wDown;

    /// <summary>Creates the weights from <paramref name="seed"/> on <paramref name="device"/> (same seed, same values).</summary>
    public TinyMlp(Device device, int width, int hidden, int seed)
    {
        Device = device;
        Width = width;
        Hidden = hidden;
        Random random = new(seed);
        _norm1Weight = Parameter(random, [width], 0.2f, 1f);
        _norm1Bias = Parameter(random, [width], 0.1f, 0f);
        _w1 = Parameter(random, [hidden, width], 1f / MathF.Sqrt(width), 0f);
        _b1 = Parameter(random, [hidden], 0.1f, 0f);
        _w2 = Parameter(random, [width, hidden], 1f / MathF.Sqrt(hidden), 0f);
        _norm2Weight = Parameter(random, [width], 0.2f, 1f);
        _norm2Bias = Parameter(random, [width], 0.1f, 0f);
        _wGate = Parameter(random, [hidden, width], 1f / MathF.Sqrt(width), 0f);
        _wUp = Parameter(random, [hidden, width], 1f / MathF.Sqrt(width), 0f);
        _wDown = Parameter(random, [width, hidden], 1f / MathF.Sqrt(hidden), 0f);
    }

    /// <summary>The device that holds the weights and runs the ops.</summary>
    public Device Device { get; }

    /// <summary>D, the model width.</summary>
    public int Width { get; }

    /// <summary>F, the hidden width.</summary>
    public int Hidden { get; }

    /// <summary>Runs both layers on <paramref name="x"/> [T, D] and returns a new tensor [T, D].</summary>
    public Tensor Forward(Tensor x)
    {
        int tokens = x.Shape[0];
        using Tensor normed = Tensor.Empty([tokens, Width], DType.Float32, Device);
        using Tensor hidden = Tensor.Empty([tokens, Hidden], DType.Float32, Device);
        using Tensor gate = Tensor.Empty([tokens, Hidden], DType.Float32, Device);
        using Tensor middle = Tensor.Empty([tokens, Width], DType.Float32, Device);
        Tensor output = Tensor.Empty([tokens, Width], DType.Float32, Device);

        // Layer 1: LayerNorm, a projection with the bias and GELU fused in, a projection with the residual fused in.
        FusedOps.LayerNorm(x, _norm1Weight, _norm1Bias, 1e-5f, normed);
        FusedOps.BiasGelu(normed, _w1, _b1, hidden);
        Ops.ResidualAdd(hidden, _w2, x, middle);

        // Layer 2: LayerNorm, gate and up projections, the gated GELU in place, the down projection plus residual.
        FusedOps.LayerNorm(middle, _norm2Weight, _norm2Bias, 1e-5f, normed);
        FusedOps.Project(normed, _wGate, 1f, gate);
        FusedOps.Project(normed, _wUp, 1f, hidden);
        FusedOps.GeluTanhGated(gate, hidden, hidden);
        Ops.ResidualAdd(hidden, _wDown, middle, output);
        return output;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (Tensor tensor in _owned)
        {
            tensor.Dispose();
        }
    }

    private Tensor Parameter(Random random, int[] shape, float scale, float offset)
    {
        // Uniform in [offset - scale, offset + scale], drawn in a fixed order.
        int count = shape.Aggregate(1, static (product, dim) => product * dim);
        float[] values = new float[count];
        for (int i = 0; i < count; i++)
        {
            values[i] = offset + (scale * ((2f * random.NextSingle()) - 1f));
        }

        Tensor tensor = Tensor.FromArray(values, shape, Device);
        _owned.Add(tensor);
        return tensor;
    }
}
