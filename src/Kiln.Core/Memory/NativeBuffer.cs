using System.Runtime.InteropServices;

namespace Kiln.Memory;

/// <summary>
/// A block of 64-byte aligned, zero-initialised native memory, released exactly once: by
/// <see cref="SafeHandle.Dispose()"/> or, if the owner forgot, by the finalizer.
/// </summary>
public sealed unsafe class NativeBuffer : SafeHandle
{
    /// <summary>Alignment of every buffer: one cache line, one Vector512.</summary>
    public const int Alignment = 64;

    /// <summary>Allocates <paramref name="byteLength"/> zeroed bytes.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The length is negative.</exception>
    /// <exception cref="OutOfMemoryException">The system cannot provide the memory.</exception>
    public NativeBuffer(long byteLength)
        : base(IntPtr.Zero, ownsHandle: true)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(byteLength);
        ByteLength = byteLength;

        // Round up to whole cache lines so vector tails may over-read inside the allocation.
        nuint rounded = (nuint)((byteLength + Alignment - 1) / Alignment * Alignment);
        void* memory = NativeMemory.AlignedAlloc(Math.Max(rounded, Alignment), Alignment);
        NativeMemory.Clear(memory, Math.Max(rounded, Alignment));
        SetHandle((IntPtr)memory);
        if (byteLength > 0)
        {
            GC.AddMemoryPressure(byteLength);
        }
    }

    /// <summary>The usable length in bytes.</summary>
    public long ByteLength { get; }

    /// <summary>The start of the memory. Valid until the buffer is disposed.</summary>
    /// <exception cref="ObjectDisposedException">
    /// The buffer was disposed: its memory is released, and reading or writing it would corrupt the native heap.
    /// </exception>
    public void* Pointer
    {
        get
        {
            if (IsClosed)
            {
                throw new ObjectDisposedException(nameof(NativeBuffer), "This memory was released by Dispose; a tensor, its views (Slice, Reshape) and packed weights cannot be used after their owner is disposed.");
            }

            return (void*)handle;
        }
    }

    /// <inheritdoc />
    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <inheritdoc />
    protected override bool ReleaseHandle()
    {
        NativeMemory.AlignedFree((void*)handle);
        if (ByteLength > 0)
        {
            GC.RemoveMemoryPressure(ByteLength);
        }

        return true;
    }
}
