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
    private short* _int16Blocks;
    private float* _int16Scales;
    private int _int16BlocksCapacity;

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
        NativeMemory.AlignedFree(_int16Blocks);
        NativeMemory.AlignedFree(_int16Scales);
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

    /// <summary>
    /// An activation row quantized to int16 in blocks of 32 (see <c>CpuGemv.QuantizeInt16</c>): the values
    /// [blocks · 32] and one scale per block, at least <paramref name="blocks"/> blocks long.
    /// </summary>
    public void Int16Blocks(int blocks, out short* values, out float* scales)
    {
        if (blocks > _int16BlocksCapacity)
        {
            NativeMemory.AlignedFree(_int16Blocks);
            NativeMemory.AlignedFree(_int16Scales);
            _int16Blocks = null;
            _int16Scales = null;
            _int16Blocks = (short*)NativeMemory.AlignedAlloc((nuint)blocks * 32 * sizeof(short), 64);
            _int16Scales = Allocate(blocks);
            _int16BlocksCapacity = blocks;
        }

        values = _int16Blocks;
        scales = _int16Scales;
    }

    private static float* Allocate(long floats) => (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);
}
