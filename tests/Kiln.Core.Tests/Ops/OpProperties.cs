using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Core.Tests.Ops;

// The body of every op property, shared by the CPU and ILGPU test classes: build the tensors on the device, run the
// op (optionally in place, writing over its first input), copy the result back and compare it with the float64
// reference. Tolerances are stated per op, with the reason.

/// <summary>Runs one case of one op on a device and checks it against the reference.</summary>
public static class OpProperties
{
    /// <summary>Add: inputs on a 1/64 grid in [-8, 8] add exactly in float32, so the result is exact.</summary>
    public static void Add(Device device, PointwiseCase c, bool inPlace)
    {
        using TensorScope scope = new(device);
        Tensor a = scope.From(c.A, c.Shape);
        Tensor b = scope.From(c.B, c.BShape);
        Tensor output = inPlace ? a : scope.Zeros(c.Shape);
        Kiln.Ops.Add(a, b, output);
        Close.Check(
            Kiln.Ops.Reference.Add(c.A, c.B),
            output.ToArray(),
            0,
            0,
            $"Add on {device.Name} ({c}, in place {inPlace})");
    }

    /// <summary>Scale: a 1/64-grid value times a 1/32-grid scalar is exact in float32.</summary>
    public static void Scale(Device device, PointwiseCase c, bool inPlace)
    {
        using TensorScope scope = new(device);
        Tensor x = scope.From(c.A, c.Shape);
        Tensor output = inPlace ? x : scope.Zeros(c.Shape);
        Kiln.Ops.Scale(x, c.Scalar, output);
        Close.Check(
            Kiln.Ops.Reference.Scale(c.A, c.Scalar),
            output.ToArray(),
            0,
            0,
            $"Scale on {device.Name} ({c}, in place {inPlace})");
    }

    /// <summary>SiluMul: exp is accurate to a few ulp, then one division and one product: 2e-6 relative, 1e-7 absolute.</summary>
    public static void SiluMul(Device device, PointwiseCase c, bool inPlace)
    {
        using TensorScope scope = new(device);
        Tensor gate = scope.From(c.A, c.Shape);
        Tensor up = scope.From(c.B, c.BShape);
        Tensor output = inPlace ? gate : scope.Zeros(c.Shape);
        Kiln.Ops.SiluMul(gate, up, output);
        Close.Check(
            Kiln.Ops.Reference.SiluMul(c.A, c.B),
            output.ToArray(),
            2e-6,
            1e-7,
            $"SiluMul on {device.Name} ({c}, in place {inPlace})");
    }

    /// <summary>
    /// RmsNorm: the float32 sum of squares (up to a few thousand terms, lane-wise then across lanes) is within about
    /// 1e-6 relative; then a square root and two roundings: 1e-5 relative, 1e-6 absolute.
    /// </summary>
    public static void RmsNorm(Device device, RowCase c, bool inPlace)
    {
        using TensorScope scope = new(device);
        Tensor x = scope.From(c.X, c.Shape);
        Tensor weight = scope.From(c.Weight, c.WeightShape);
        Tensor output = inPlace ? x : scope.Zeros(c.Shape);
        Kiln.Ops.RmsNorm(x, weight, c.Eps, output);
        double[] expected = Kiln.Ops.Reference.RmsNorm(c.X, c.Weight, c.RowLength, c.Eps);
        Close.Check(expected, output.ToArray(), 1e-5, 1e-6, $"RmsNorm on {device.Name} ({c}, in place {inPlace})");
    }

    /// <summary>
    /// Softmax: every exp is accurate to a few ulp and the sum to about 1e-6 relative: 1e-5 relative, and 1e-7
    /// absolute for the probabilities that underflow towards 0.
    /// </summary>
    public static void Softmax(Device device, RowCase c, bool inPlace)
    {
        using TensorScope scope = new(device);
        Tensor x = scope.From(c.X, c.Shape);
        Tensor output = inPlace ? x : scope.Zeros(c.Shape);
        Kiln.Ops.Softmax(x, output);
        double[] expected = Kiln.Ops.Reference.Softmax(c.X, c.RowLength);
        Close.Check(expected, output.ToArray(), 1e-5, 1e-7, $"Softmax on {device.Name} ({c}, in place {inPlace})");
    }

    /// <summary>
    /// Rope: each output is x0·c ∓ x1·s with |x| ≤ 8 and |c|, |s| ≤ 1, so three float32 roundings of terms up to 8
    /// bound the error by about 3 · 2⁻²⁴ · 16: 1e-5 absolute, 1e-6 relative.
    /// </summary>
    public static void Rope(Device device, RopeCase c, bool inPlace)
    {
        (Tensor cosTable, Tensor sinTable) = Kiln.Ops.RopeTables(c.Positions, c.Shape[^1], c.Theta, device);
        using (cosTable)
        using (sinTable)
        {
            using TensorScope scope = new(device);
            Tensor x = scope.From(c.X, c.Shape);
            Tensor output = inPlace ? x : scope.Zeros(c.Shape);
            Kiln.Ops.Rope(x, cosTable, sinTable, c.StartPosition, c.Layout, output);
            int rowsPerToken = c.Shape.Length == 3 ? c.Shape[1] : 1;
            double[] expected = Kiln.Ops.Reference.Rope(
                c.X,
                rowsPerToken,
                c.Shape[^1],
                cosTable.ToArray(),
                sinTable.ToArray(),
                c.StartPosition,
                c.Layout);
            Close.Check(expected, output.ToArray(), 1e-6, 1e-5, $"Rope on {device.Name} ({c}, in place {inPlace})");
        }
    }

    /// <summary>
    /// ResidualAdd: a and w are on a 1/8 grid in [-2, 2] and K ≤ 40, so every partial sum is exact in float32
    /// whatever the summation order; the residual adds one rounding: 1e-6 relative and absolute.
    /// </summary>
    public static void ResidualAdd(Device device, EpilogueCase c)
    {
        using TensorScope scope = new(device);
        Tensor a = scope.From(c.A, [c.M, c.K]);
        Tensor w = scope.From(c.W, [c.N, c.K]);
        Tensor residual = scope.From(c.Residual, c.ResidualShape);
        Tensor output = scope.Zeros([c.M, c.N]);
        Kiln.Ops.ResidualAdd(a, w, residual, output);
        double[] expected = Kiln.Ops.Reference.ResidualAdd(c.A, c.W, c.Residual, c.M, c.K, c.N);
        Close.Check(expected, output.ToArray(), 1e-6, 1e-6, $"ResidualAdd on {device.Name} ({c})");
    }
}
