using Kiln.Kernels;

namespace Kiln;

// Kiln's built-in pointwise, row, rotary and epilogue ops. Each op is a kernel definition (a static method whose body
// is one scalar float expression) in its own file, next to a float64 scalar reference in Ops.Reference that the
// property tests compare every path against. The Kiln generator adds, for each definition, the public op over
// tensors (same name; inputs, scalars, then the output), its vectorized multi-threaded CPU loop and its ILGPU
// kernel (see the generated Kiln.Ops.g.cs). Hand-written kernels (matrix product, attention) live elsewhere.

/// <summary>
/// Kiln's built-in tensor ops: <c>Add</c>, <c>Scale</c>, <c>SiluMul</c>, <c>RmsNorm</c>, <c>Softmax</c>, <c>Rope</c>
/// and the matrix-product epilogue <c>ResidualAdd</c>, each generated for the CPU and for ILGPU devices from the
/// definition of the same name.
/// </summary>
[Kernels]
public static partial class Ops
{
    /// <summary>Float64 scalar references of the ops, for tests: straightforward loops, no vectors, no threads.</summary>
    /// <remarks>Broadcast inputs are indexed modulo their length, which is what suffix broadcasting amounts to.</remarks>
    public static partial class Reference
    {
    }
}
