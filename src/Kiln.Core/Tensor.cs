using System.Runtime.InteropServices;
using System.Text;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;
using Device = Kiln.Devices.Device;
using Kiln.Memory;

namespace Kiln;

/// <summary>
/// An n-dimensional array on one device: shape (outermost first, row-major, as in PyTorch), element strides,
/// a dtype and the device that holds it. Tensors made by <see cref="Empty"/>, <see cref="FromArray"/> and
/// <see cref="To"/> own their memory and release it once, on <see cref="Dispose"/> or finalization; views made
/// by <see cref="Slice"/> and <see cref="Reshape"/> share it and must not outlive the owner.
/// </summary>
public sealed unsafe class Tensor : IDisposable
{
    /// <summary>The largest tensor Kiln allocates: 2^31 - 1 elements, the limit of a span.</summary>
    public const long MaxElements = int.MaxValue;

    private readonly TensorStorage _storage;
    private readonly int[] _shape;
    private readonly long[] _strides;
    private readonly long _offset;
    private readonly bool _ownsStorage;

    private Tensor(TensorStorage storage, int[] shape, long[] strides, long offset, DType dtype, bool ownsStorage)
    {
        _storage = storage;
        _shape = shape;
        _strides = strides;
        _offset = offset;
        DType = dtype;
        _ownsStorage = ownsStorage;
        Length = ElementCount(shape);
    }

    /// <summary>The dimensions, outermost first.</summary>
    public ReadOnlySpan<int> Shape => _shape;

    /// <summary>The distance in elements between neighbours along each dimension.</summary>
    public ReadOnlySpan<long> Strides => _strides;

    /// <summary>The number of dimensions.</summary>
    public int Rank => _shape.Length;

    /// <summary>The number of elements.</summary>
    public long Length { get; }

    /// <summary>The element type.</summary>
    public DType DType { get; }

    /// <summary>The device that holds the data.</summary>
    public Device Device => _storage.Device;

    /// <summary>Whether the elements are stored row-major without gaps.</summary>
    public bool IsContiguous
    {
        get
        {
            long expected = 1;
            for (int i = _shape.Length - 1; i >= 0; i--)
            {
                if (_shape[i] != 1 && _strides[i] != expected)
                {
                    return false;
                }

                expected *= _shape[i];
            }

            return true;
        }
    }

    /// <summary>The size of dimension <paramref name="dim"/>; negative values count from the end (-1 is the last).</summary>
    public int Size(int dim) => _shape[dim < 0 ? _shape.Length + dim : dim];

    /// <summary>Allocates a zero-filled tensor.</summary>
    /// <exception cref="ArgumentException">A dimension is negative or the tensor would exceed <see cref="MaxElements"/>.</exception>
    public static Tensor Empty(ReadOnlySpan<int> shape, DType dtype = DType.Float32, Device? device = null)
    {
        int[] dims = shape.ToArray();
        long count = ElementCount(dims);
        if (dtype == DType.Q8_0 && (dims.Length == 0 || dims[^1] % Q8_0Blocks.BlockElements != 0))
        {
            throw new ArgumentException(
                $"A q8_0 tensor of shape {FormatShape(dims)} needs an innermost dimension that is a multiple of "
                + $"{Q8_0Blocks.BlockElements} (whole blocks per row); store this tensor as float32 or float16.", nameof(shape));
        }

        TensorStorage storage = TensorStorage.Allocate(device ?? CpuDevice.Default, dtype.ByteCount(count));
        return new Tensor(storage, dims, ContiguousStrides(dims), 0, dtype, ownsStorage: true);
    }

    /// <summary>Copies float32 values into a new tensor of the given shape.</summary>
    public static Tensor FromArray(ReadOnlySpan<float> data, ReadOnlySpan<int> shape, Device? device = null)
    {
        Tensor tensor = Empty(shape, DType.Float32, device);
        if (data.Length != tensor.Length)
        {
            tensor.Dispose();
            throw new ArgumentException($"The data holds {data.Length} values but shape {FormatShape(shape)} needs {tensor.Length}.", nameof(data));
        }

        tensor.CopyFrom(data);
        return tensor;
    }

    /// <summary>Copies int32 values (token ids) into a new int32 tensor of the given shape.</summary>
    /// <exception cref="ArgumentException">The data does not hold exactly the shape's element count.</exception>
    public static Tensor FromArray(ReadOnlySpan<int> data, ReadOnlySpan<int> shape, Device? device = null)
    {
        Tensor tensor = Empty(shape, DType.Int32, device);
        if (data.Length != tensor.Length)
        {
            tensor.Dispose();
            throw new ArgumentException($"The data holds {data.Length} values but shape {FormatShape(shape)} needs {tensor.Length}.", nameof(data));
        }

        tensor.CopyFromBytes(MemoryMarshal.AsBytes(data));
        return tensor;
    }

    /// <summary>
    /// Copies ggml Q8_0 blocks (34 bytes per 32 elements, see <see cref="Q8_0Blocks"/>) into a new q8_0 tensor whose
    /// innermost dimension is a multiple of 32.
    /// </summary>
    /// <exception cref="ArgumentException">The shape's innermost dimension is not a multiple of 32, or the byte count
    /// does not match the shape.</exception>
    public static Tensor FromQ8_0(ReadOnlySpan<byte> blocks, ReadOnlySpan<int> shape, Device? device = null)
    {
        Tensor tensor = Empty(shape, DType.Q8_0, device);
        long bytes = DType.Q8_0.ByteCount(tensor.Length);
        if (blocks.Length != bytes)
        {
            tensor.Dispose();
            throw new ArgumentException($"The data holds {blocks.Length} bytes but a q8_0 tensor of shape {FormatShape(shape)} takes {bytes}.", nameof(blocks));
        }

        tensor.CopyFromBytes(blocks);
        return tensor;
    }

    /// <summary>Quantizes float32 values to a new q8_0 tensor (ggml's reference quantizer, <see cref="Q8_0Blocks.Quantize"/>).</summary>
    /// <exception cref="ArgumentException">The innermost dimension is not a multiple of 32, or the count does not match the shape.</exception>
    public static Tensor QuantizeQ8_0(ReadOnlySpan<float> values, ReadOnlySpan<int> shape, Device? device = null)
    {
        Tensor tensor = Empty(shape, DType.Q8_0, device);
        if (values.Length != tensor.Length)
        {
            tensor.Dispose();
            throw new ArgumentException($"The data holds {values.Length} values but shape {FormatShape(shape)} needs {tensor.Length}.", nameof(values));
        }

        byte[] blocks = new byte[DType.Q8_0.ByteCount(tensor.Length)];
        Q8_0Blocks.Quantize(values, blocks);
        tensor.CopyFromBytes(blocks);
        return tensor;
    }

    /// <summary>Copies raw 16-bit values (float16 or bfloat16 bit patterns) into a new tensor.</summary>
    public static Tensor FromBits(ReadOnlySpan<ushort> bits, ReadOnlySpan<int> shape, DType dtype, Device? device = null)
    {
        if (dtype is not (DType.Float16 or DType.BFloat16))
        {
            throw new ArgumentException($"FromBits takes a 16-bit dtype, not {dtype.Name()}.", nameof(dtype));
        }

        Tensor tensor = Empty(shape, dtype, device);
        if (bits.Length != tensor.Length)
        {
            tensor.Dispose();
            throw new ArgumentException($"The data holds {bits.Length} values but shape {FormatShape(shape)} needs {tensor.Length}.", nameof(bits));
        }

        tensor.CopyFromBytes(MemoryMarshal.AsBytes(bits));
        return tensor;
    }

    /// <summary>The elements of a contiguous float32 CPU tensor.</summary>
    public Span<float> AsSpan() => AsSpan<float>();

    /// <summary>
    /// The elements of a contiguous CPU tensor as <typeparamref name="T"/> (float, Half or ushort for bfloat16, int for
    /// int32).
    /// </summary>
    public Span<T> AsSpan<T>()
        where T : unmanaged
    {
        RequireContiguous(nameof(AsSpan));
        if (DType == DType.Q8_0 || sizeof(T) != DType.SizeOf())
        {
            throw new InvalidOperationException($"A {DType.Name()} tensor cannot be viewed as {typeof(T).Name}.");
        }

        return new Span<T>(DataPointer, checked((int)Length));
    }

    /// <summary>The address of the first element of a CPU tensor. Valid while the owning tensor lives.</summary>
    public void* DataPointer
    {
        get
        {
            if (_storage is not CpuStorage cpu)
            {
                throw new InvalidOperationException($"The tensor is on {Device.Name}; only CPU tensors have a host pointer. Copy it with To(cpu) first.");
            }

            return cpu.Pointer + DType.ByteCount(_offset);
        }
    }

    /// <summary>The address of the first element of a float32 CPU tensor.</summary>
    public float* FloatPointer
    {
        get
        {
            RequireDType(DType.Float32, nameof(FloatPointer));
            return (float*)DataPointer;
        }
    }

    /// <summary>Bytes from the start of the storage to element 0 (kernels check load alignment with it).</summary>
    internal long ByteOffset => DType.ByteCount(_offset);

    /// <summary>The bytes the elements take (for q8_0 the whole blocks).</summary>
    public long ByteLength => DType.ByteCount(Length);

    /// <summary>The elements of a contiguous tensor on an ILGPU device, viewed as <typeparamref name="T"/>.</summary>
    public ArrayView<T> View<T>()
        where T : unmanaged
    {
        RequireContiguous(nameof(View));
        if (_storage is not IlgpuStorage ilgpu)
        {
            throw new InvalidOperationException($"The tensor is on {Device.Name}; only ILGPU device tensors have a view.");
        }

        if (DType == DType.Q8_0 || sizeof(T) != DType.SizeOf())
        {
            throw new InvalidOperationException($"A {DType.Name()} tensor cannot be viewed as {typeof(T).Name}.");
        }

        ArrayView<byte> bytes = ilgpu.Buffer.View;
        return bytes.SubView(_offset * sizeof(T), Length * sizeof(T)).Cast<T>();
    }

    /// <summary>
    /// The blocks of a contiguous q8_0 tensor on an ILGPU device as 16-bit words: 17 per block of 32 elements (the
    /// float16 scale, then the 32 int8 two per word, the lower address in the low byte).
    /// </summary>
    internal ArrayView<ushort> BlockWords()
    {
        RequireDType(DType.Q8_0, nameof(BlockWords));
        RequireContiguous(nameof(BlockWords));
        if (_storage is not IlgpuStorage ilgpu)
        {
            throw new InvalidOperationException($"The tensor is on {Device.Name}; only ILGPU device tensors have a view.");
        }

        ArrayView<byte> bytes = ilgpu.Buffer.View;
        return bytes.SubView(ByteOffset, ByteLength).Cast<ushort>();
    }

    /// <summary>Copies float32 values into this contiguous tensor (any device).</summary>
    public void CopyFrom(ReadOnlySpan<float> data)
    {
        RequireDType(DType.Float32, nameof(CopyFrom));
        if (data.Length != Length)
        {
            throw new ArgumentException($"Cannot copy {data.Length} values into a tensor of {Length} elements.", nameof(data));
        }

        CopyFromBytes(MemoryMarshal.AsBytes(data));
    }

    /// <summary>Copies int32 values into this contiguous int32 tensor (any device).</summary>
    /// <exception cref="InvalidOperationException">The tensor is not int32.</exception>
    /// <exception cref="ArgumentException">The span's length is not the tensor's.</exception>
    public void CopyFrom(ReadOnlySpan<int> data)
    {
        RequireDType(DType.Int32, nameof(CopyFrom));
        if (data.Length != Length)
        {
            throw new ArgumentException($"Cannot copy {data.Length} values into a tensor of {Length} elements.", nameof(data));
        }

        CopyFromBytes(MemoryMarshal.AsBytes(data));
    }

    /// <summary>
    /// Copies the elements of this contiguous int32 tensor into <paramref name="destination"/> (any device; on an
    /// ILGPU device this waits for the queued kernels and reads back). Allocates nothing.
    /// </summary>
    /// <exception cref="InvalidOperationException">The tensor is not int32.</exception>
    /// <exception cref="ArgumentException">The span's length is not the tensor's.</exception>
    public void CopyTo(Span<int> destination)
    {
        RequireDType(DType.Int32, nameof(CopyTo));
        if (destination.Length != Length)
        {
            throw new ArgumentException($"Cannot copy a tensor of {Length} elements into {destination.Length} values.", nameof(destination));
        }

        RequireContiguous(nameof(CopyTo));
        CopyToBytes(MemoryMarshal.AsBytes(destination));
    }

    /// <summary>
    /// Copies the elements of this contiguous float32 tensor into <paramref name="destination"/> (any device; on an
    /// ILGPU device this waits for the queued kernels and reads back). Allocates nothing.
    /// </summary>
    /// <exception cref="InvalidOperationException">The tensor is not float32.</exception>
    /// <exception cref="ArgumentException">The span's length is not the tensor's.</exception>
    public void CopyTo(Span<float> destination)
    {
        RequireDType(DType.Float32, nameof(CopyTo));
        if (destination.Length != Length)
        {
            throw new ArgumentException($"Cannot copy a tensor of {Length} elements into {destination.Length} values.", nameof(destination));
        }

        RequireContiguous(nameof(CopyTo));
        CopyToBytes(MemoryMarshal.AsBytes(destination));
    }

    /// <summary>Copies the elements of an int32 tensor to a new array (any device).</summary>
    /// <exception cref="InvalidOperationException">The tensor is not int32.</exception>
    public int[] ToInt32Array()
    {
        RequireDType(DType.Int32, nameof(ToInt32Array));
        int[] result = new int[Length];
        CopyTo(result);
        return result;
    }

    /// <summary>Copies the elements to a new float32 array, widening 16-bit dtypes and dequantizing q8_0 (any device).</summary>
    /// <exception cref="InvalidOperationException">The tensor is int32 (use <see cref="ToInt32Array"/>).</exception>
    public float[] ToArray()
    {
        RequireContiguous(nameof(ToArray));
        if (DType == DType.Int32)
        {
            throw new InvalidOperationException($"ToArray returns float32 values but {this} holds int32 token ids; use ToInt32Array.");
        }

        byte[] bytes = new byte[ByteLength];
        CopyToBytes(bytes);
        float[] result = new float[Length];
        switch (DType)
        {
            case DType.Float32:
                MemoryMarshal.Cast<byte, float>(bytes).CopyTo(result);
                break;
            case DType.Float16:
                ReadOnlySpan<System.Half> halves = MemoryMarshal.Cast<byte, System.Half>(bytes);
                for (int i = 0; i < result.Length; i++)
                {
                    result[i] = (float)halves[i];
                }

                break;
            case DType.BFloat16:
                ReadOnlySpan<ushort> bits = MemoryMarshal.Cast<byte, ushort>(bytes);
                for (int i = 0; i < result.Length; i++)
                {
                    result[i] = DTypes.BFloat16ToSingle(bits[i]);
                }

                break;
            case DType.Q8_0:
                Q8_0Blocks.Dequantize(bytes, result);
                break;
        }

        return result;
    }

    /// <summary>Copies this tensor to <paramref name="device"/> (a new owning tensor, even on the same device).</summary>
    public Tensor To(Device device)
    {
        RequireContiguous(nameof(To));
        Tensor copy = Empty(_shape, DType, device);
        byte[] bytes = new byte[ByteLength];
        CopyToBytes(bytes);
        copy.CopyFromBytes(bytes);
        return copy;
    }

    /// <summary>A view of rows [<paramref name="start"/>, start + <paramref name="length"/>) of dimension 0.</summary>
    public Tensor Slice(int start, int length)
    {
        if (Rank == 0 || start < 0 || length < 0 || start > _shape[0] - length)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"Rows [{start}, {start + length}) are outside a tensor of shape {FormatShape(_shape)}.");
        }

        int[] shape = (int[])_shape.Clone();
        shape[0] = length;
        long offset = _offset + (start * _strides[0]);
        if (DType == DType.Q8_0 && offset % Q8_0Blocks.BlockElements != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"Row {start} of a q8_0 tensor of shape {FormatShape(_shape)} does not start a 32-element block; slice whole blocks.");
        }

        return new Tensor(_storage, shape, (long[])_strides.Clone(), offset, DType, ownsStorage: false);
    }

    /// <summary>A view of this contiguous tensor with another shape of the same element count; one dimension may be -1.</summary>
    public Tensor Reshape(params int[] shape)
    {
        RequireContiguous(nameof(Reshape));
        int[] dims = (int[])shape.Clone();
        int inferred = Array.IndexOf(dims, -1);
        if (inferred >= 0)
        {
            long known = 1;
            for (int i = 0; i < dims.Length; i++)
            {
                known *= i == inferred ? 1 : dims[i];
            }

            dims[inferred] = known == 0 ? 0 : (int)(Length / known);
        }

        if (ElementCount(dims) != Length)
        {
            throw new ArgumentException($"Cannot reshape {FormatShape(_shape)} ({Length} elements) to {FormatShape(shape)}.", nameof(shape));
        }

        if (DType == DType.Q8_0 && (dims.Length == 0 || dims[^1] % Q8_0Blocks.BlockElements != 0))
        {
            throw new ArgumentException($"Cannot reshape a q8_0 tensor to {FormatShape(dims)}: the innermost dimension must stay a multiple of {Q8_0Blocks.BlockElements} (whole blocks per row).", nameof(shape));
        }

        return new Tensor(_storage, dims, ContiguousStrides(dims), _offset, DType, ownsStorage: false);
    }

    /// <summary>Fills the tensor with zeros.</summary>
    public void Clear()
    {
        RequireContiguous(nameof(Clear));
        CopyFromBytes(new byte[ByteLength]);
    }

    /// <summary>Releases the memory if this tensor owns it; views release nothing.</summary>
    public void Dispose()
    {
        if (_ownsStorage)
        {
            _storage.Dispose();
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"Tensor({FormatShape(_shape)}, {DType.Name()}, {Device.Name})";

    /// <summary>Formats a shape as [a, b, c].</summary>
    public static string FormatShape(ReadOnlySpan<int> shape)
    {
        StringBuilder text = new("[");
        for (int i = 0; i < shape.Length; i++)
        {
            text.Append(i == 0 ? string.Empty : ", ").Append(shape[i]);
        }

        return text.Append(']').ToString();
    }

    private void CopyFromBytes(ReadOnlySpan<byte> source)
    {
        RequireContiguous(nameof(CopyFrom));
        switch (_storage)
        {
            case CpuStorage:
                source.CopyTo(new Span<byte>(DataPointer, source.Length));
                break;
            case IlgpuStorage ilgpu:
                ArrayView<byte> view = ilgpu.Buffer.View.SubView(DType.ByteCount(_offset), source.Length);
                view.CopyFromCPU(source);
                break;
        }
    }

    private void CopyToBytes(Span<byte> destination)
    {
        switch (_storage)
        {
            case CpuStorage:
                new ReadOnlySpan<byte>(DataPointer, destination.Length).CopyTo(destination);
                break;
            case IlgpuStorage ilgpu:
                ArrayView<byte> view = ilgpu.Buffer.View.SubView(DType.ByteCount(_offset), destination.Length);
                view.CopyToCPU(destination);
                break;
        }
    }

    private void RequireContiguous(string operation)
    {
        if (!IsContiguous)
        {
            throw new InvalidOperationException($"{operation} needs a contiguous tensor; {this} has strides [{string.Join(", ", _strides)}].");
        }
    }

    private void RequireDType(DType dtype, string operation)
    {
        if (DType != dtype)
        {
            throw new InvalidOperationException($"{operation} needs a {dtype.Name()} tensor; this one is {DType.Name()}.");
        }
    }

    private static long ElementCount(ReadOnlySpan<int> shape)
    {
        long count = 1;
        foreach (int dim in shape)
        {
            if (dim < 0)
            {
                throw new ArgumentException($"Shape {FormatShape(shape)} has a negative dimension.", nameof(shape));
            }

            count *= dim;
            if (count > MaxElements)
            {
                throw new ArgumentException($"Shape {FormatShape(shape)} has more than {MaxElements} elements.", nameof(shape));
            }
        }

        return count;
    }

    private static long[] ContiguousStrides(int[] shape)
    {
        long[] strides = new long[shape.Length];
        long stride = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            strides[i] = stride;
            stride *= shape[i];
        }

        return strides;
    }
}
