using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;
using Device = Kiln.Devices.Device;

namespace Kiln.Memory;

/// <summary>The memory behind one or more tensors: native memory on the CPU, an ILGPU buffer elsewhere.</summary>
internal abstract class TensorStorage : IDisposable
{
    protected TensorStorage(Device device, long byteLength)
    {
        Device = device;
        ByteLength = byteLength;
    }

    public Device Device { get; }

    public long ByteLength { get; }

    public static TensorStorage Allocate(Device device, long byteLength) => device switch
    {
        CpuDevice => new CpuStorage(device, byteLength),
        IlgpuDevice ilgpu => new IlgpuStorage(ilgpu, byteLength),
        _ => throw new NotSupportedException($"Device '{device.Name}' cannot hold tensors."),
    };

    public abstract void Dispose();
}

/// <summary>64-byte aligned native memory.</summary>
internal sealed unsafe class CpuStorage : TensorStorage
{
    private readonly NativeBuffer _buffer;

    public CpuStorage(Device device, long byteLength)
        : base(device, byteLength)
    {
        _buffer = new NativeBuffer(byteLength);
    }

    public byte* Pointer => (byte*)_buffer.Pointer;

    public override void Dispose() => _buffer.Dispose();
}

/// <summary>A zeroed ILGPU buffer of bytes, viewed as the tensor's element type by the kernels.</summary>
internal sealed class IlgpuStorage : TensorStorage
{
    public IlgpuStorage(IlgpuDevice device, long byteLength)
        : base(device, byteLength)
    {
        // Keep at least 4 bytes so that every typed view of an empty tensor is valid.
        Buffer = device.Accelerator.Allocate1D<byte>(Math.Max(4, (byteLength + 3) / 4 * 4));
        Buffer.MemSetToZero();
    }

    public MemoryBuffer1D<byte, Stride1D.Dense> Buffer { get; }

    public override void Dispose() => Buffer.Dispose();
}
