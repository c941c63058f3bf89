using System.Runtime.Intrinsics;

namespace Kiln.Kernels;

/// <summary>
/// What a CPU matrix product does to each output element before storing it. Implementations are unmanaged
/// structs (pointers to extra operands, scalars) so that the product can run them on every thread without
/// allocating. <c>row</c> and <c>col</c> locate the first element of the vector in the [M, N] output.
/// </summary>
public interface IMatMulEpilogue
{
    /// <summary>Transforms output elements [row, col .. col + 15].</summary>
    Vector512<float> Apply(Vector512<float> acc, int row, int col);

    /// <summary>Transforms output elements [row, col .. col + 7].</summary>
    Vector256<float> Apply(Vector256<float> acc, int row, int col);

    /// <summary>Transforms output element [row, col].</summary>
    float Apply(float acc, int row, int col);
}

/// <summary>
/// What an ILGPU matrix-product kernel does to each output element before storing it. Implementations are
/// structs holding ArrayViews and scalars, passed to the kernel by value.
/// </summary>
public interface IGpuMatMulEpilogue
{
    /// <summary>Transforms output element [row, col] of an output with <paramref name="n"/> columns.</summary>
    float Apply(float acc, int row, int col, int n);
}

/// <summary>The epilogue that stores the product unchanged.</summary>
public readonly struct IdentityEpilogue : IMatMulEpilogue, IGpuMatMulEpilogue
{
    /// <inheritdoc />
    public Vector512<float> Apply(Vector512<float> acc, int row, int col) => acc;

    /// <inheritdoc />
    public Vector256<float> Apply(Vector256<float> acc, int row, int col) => acc;

    /// <inheritdoc />
    public float Apply(float acc, int row, int col) => acc;

    /// <inheritdoc />
    public float Apply(float acc, int row, int col, int n) => acc;
}
