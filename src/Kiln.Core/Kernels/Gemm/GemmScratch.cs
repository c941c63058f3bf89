// Per-thread packing buffers of the CPU matrix product. Each thread that runs part of a product (the caller and
// the pool's workers) owns one set, grown on demand and reused by every later product, so steady-state calls
// allocate nothing. The memory is native, 64-byte aligned, and released when the owning thread's set is
// collected.
using System.Runtime.InteropServices;

namespace Kiln.Kernels.Gemm;

/// <summary>The packing buffers of one thread: packed W slice, copied A rows, partial-sum tiles, an edge tile.</summary>
internal sealed unsafe class GemmScratch
{
    [ThreadStatic]
    private static GemmScratch? t_current;

    private float* _packedW;
    private long _packedWCapacity;
    private float* _partials;
    private long _partialsCapacity;

    private GemmScratch()
    {
        // The A rows of one micro-panel and one micro-tile for ragged edges have fixed sizes.
        PackedA = Allocate(CpuGemm.MaxTileRows * CpuGemm.PackedAStride);
        EdgeTile = Allocate(CpuGemm.MaxTileRows * CpuGemm.MaxTileColumns);
    }

    ~GemmScratch()
    {
        NativeMemory.AlignedFree(_packedW);
        NativeMemory.AlignedFree(_partials);
        NativeMemory.AlignedFree(PackedA);
        NativeMemory.AlignedFree(EdgeTile);
    }

    /// <summary>The calling thread's buffers.</summary>
    public static GemmScratch Current => t_current ??= new GemmScratch();

    /// <summary>A rows of one micro-panel: [MaxTileRows, PackedAStride].</summary>
    public float* PackedA { get; }

    /// <summary>One micro-tile [MaxTileRows, MaxTileColumns], staging stores of ragged edge tiles.</summary>
    public float* EdgeTile { get; }

    /// <summary>The packed W slice, at least <paramref name="floats"/> long.</summary>
    public float* PackedW(long floats)
    {
        if (floats > _packedWCapacity)
        {
            NativeMemory.AlignedFree(_packedW);
            _packedW = null;
            _packedW = Allocate(floats);
            _packedWCapacity = floats;
        }

        return _packedW;
    }

    /// <summary>The partial-sum tiles, at least <paramref name="floats"/> long.</summary>
    public float* Partials(long floats)
    {
        if (floats > _partialsCapacity)
        {
            NativeMemory.AlignedFree(_partials);
            _partials = null;
            _partials = Allocate(floats);
            _partialsCapacity = floats;
        }

        return _partials;
    }

    private static float* Allocate(long floats) => (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);
}
