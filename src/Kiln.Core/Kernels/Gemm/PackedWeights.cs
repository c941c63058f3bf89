// Weights prepacked for the CPU matrix product: W [N, K] transposed and widened to float32 once, in the packed
// path's micro-panel layout for the whole K, [ceil(N / NR)][K][NR] with NR = 32 (Vector512) or 16 (Vector256)
// and zeros past N. A prefill (M above 32, 16 for Q8_0: CpuGemv.Handles) then reads its W slices straight from here
// instead of packing them on every call. Decode steps and small batches stream the original tensor, which the object
// keeps a reference to.
// Memory: 4·K bytes per weight row, rounded up to NR rows (twice the original size for 16-bit weights).
using Kiln.Kernels.Gemm;
using Kiln.Memory;

namespace Kiln.Kernels;

/// <summary>
/// A weight matrix packed once for <see cref="MatMul.Compute(Tensor, PackedWeights, Tensor)"/>; made by
/// <see cref="MatMul.Prepack"/>. Owns the packed copy (release it with <see cref="Dispose"/>); the original tensor
/// stays owned by the caller and must outlive this object.
/// </summary>
public sealed unsafe class PackedWeights : IDisposable
{
    private readonly NativeBuffer? _buffer;

    internal PackedWeights(Tensor source, NativeBuffer? buffer, KernelWidth width, int tileColumns)
    {
        Source = source;
        _buffer = buffer;
        Width = width;
        TileColumns = tileColumns;
    }

    /// <summary>The original weights [N, K] (float32, float16 or bfloat16).</summary>
    public Tensor Source { get; }

    /// <summary>Rows of W: the output width N.</summary>
    public int N => Source.Size(0);

    /// <summary>Columns of W: the reduced dimension K.</summary>
    public int K => Source.Size(1);

    /// <summary>The kernel family the panels were packed for.</summary>
    internal KernelWidth Width { get; }

    /// <summary>Columns per micro-panel (32 or 16).</summary>
    internal int TileColumns { get; }

    /// <summary>The packed panels [ceil(N / NR)][K][NR], or null for the scalar family (nothing to pack).</summary>
    internal float* Panels => _buffer is null ? null : (float*)_buffer.Pointer;

    /// <summary>Releases the packed copy (not the original tensor).</summary>
    public void Dispose() => _buffer?.Dispose();
}
