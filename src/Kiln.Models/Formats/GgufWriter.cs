// Writes GGUF version 3 files in the layout GgufFile reads (see its header): the magic, version 3, the counts, the
// metadata in the order added (general.alignment first, as a u32), the tensor entries with their dims innermost first
// and offsets relative to the data section, zero padding to the alignment, then each tensor's bytes followed by zero
// padding to the alignment (the last one too, as llama.cpp's writer does).
//
// Tensors come from Kiln tensors (shape outermost first; float32, float16 or bfloat16 on any device) stored as F32, F16,
// BF16 or Q8_0: float32 narrows to F16/BF16 with round-to-nearest-even and quantizes to Q8_0 with Q8_0Blocks (ggml's
// reference quantizer), whose blocks run along the innermost dimension, so that dimension must be a multiple of 32. Raw
// bytes of any ggml type can be added as they are. Nothing is converted until Write, so the tensors must stay alive
// until then; conversion goes piece by piece, never holding a second copy of a whole tensor.

using System.Buffers.Binary;
using System.Text;
using Kiln.Devices;

namespace Kiln.Models.Formats;

/// <summary>Collects GGUF metadata and tensors, then writes them as one GGUF version-3 file.</summary>
public sealed class GgufWriter
{
    // Values are converted in pieces of this many (a multiple of the Q8_0 block).
    private const int ChunkValues = 1 << 16;

    private readonly List<(string Key, GgufValue Value)> _metadata = [];
    private readonly HashSet<string> _keys = new(StringComparer.Ordinal);
    private readonly List<Entry> _tensors = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private uint _alignment = GgufFile.DefaultAlignment;

    /// <summary>The alignment of tensor data in bytes (a power of two; default 32). Written as <c>general.alignment</c>.</summary>
    /// <exception cref="ArgumentException">The value is not a power of two between 1 and 2^30.</exception>
    public int Alignment
    {
        get => (int)_alignment;
        set
        {
            if (value < 1 || value > 1 << 30 || !int.IsPow2(value))
            {
                throw new ArgumentException($"Alignment {value} is not a power of two between 1 and 2^30; GGUF files use 32.", nameof(value));
            }

            _alignment = (uint)value;
        }
    }

    /// <summary>The number of tensors added.</summary>
    public int TensorCount => _tensors.Count;

    /// <summary>
    /// Adds metadata <paramref name="key"/>. <c>general.alignment</c> sets <see cref="Alignment"/> instead (it must be a
    /// u32) and is always written first.
    /// </summary>
    /// <exception cref="ArgumentException">The key was already added, or the alignment is not a u32 power of two.</exception>
    public void Add(string key, GgufValue value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        if (key == GgufFile.AlignmentKey)
        {
            if (value.Type != GgufValueType.UInt32)
            {
                throw new ArgumentException($"{GgufFile.AlignmentKey} must be a u32, not {value.TypeName}.", nameof(value));
            }

            uint alignment = (uint)value.Value;
            Alignment = alignment > int.MaxValue ? 0 : (int)alignment;
            return;
        }

        if (!_keys.Add(key))
        {
            throw new ArgumentException($"Metadata key '{key}' was already added; each key appears once in a GGUF file.", nameof(key));
        }

        _metadata.Add((key, value));
    }

    /// <summary>
    /// Adds a tensor given as raw bytes of <paramref name="type"/> with <paramref name="dims"/> innermost first (GGUF's
    /// order). The bytes are written as they are.
    /// </summary>
    /// <exception cref="ArgumentException">
    /// The name is taken, the type unknown, the dims invalid (1 to 4, innermost a multiple of the block), or the byte
    /// count is not the one the dims and type imply.
    /// </exception>
    public void AddRaw(string name, GgufTensorType type, long[] dims, ReadOnlyMemory<byte> data)
    {
        long bytes = CheckEntry(name, type, dims);
        if (data.Length != bytes)
        {
            throw new ArgumentException($"Tensor '{name}' ({type.Name()}, dims {string.Join('x', dims)}) takes {bytes} bytes; {data.Length} were given.", nameof(data));
        }

        Add(new Entry(name, type, [.. dims], bytes, stream => stream.Write(data.Span)));
    }

    /// <summary>
    /// Adds <paramref name="tensor"/> (float32, float16 or bfloat16, any device, shape outermost first) stored as
    /// <paramref name="storeAs"/>: F32, F16, BF16 or Q8_0. The tensor is read when <see cref="Write(string)"/> runs.
    /// </summary>
    /// <exception cref="ArgumentException">
    /// The name is taken, the tensor is not floating point or has more than 4 dimensions, the type is not one Kiln writes,
    /// or (Q8_0) the innermost dimension is not a multiple of 32.
    /// </exception>
    public void AddTensor(string name, Tensor tensor, GgufTensorType storeAs)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (!tensor.DType.IsFloatingPoint() && tensor.DType != DType.Q8_0)
        {
            throw new ArgumentException($"Tensor '{name}' is {tensor.DType.Name()}; GGUF tensors are written from float32, float16, bfloat16 or q8_0.", nameof(tensor));
        }

        if (storeAs is not (GgufTensorType.F32 or GgufTensorType.F16 or GgufTensorType.BF16 or GgufTensorType.Q8_0))
        {
            throw new ArgumentException($"Kiln writes tensors as F32, F16, BF16 or Q8_0, not {storeAs.Name()}; add other types with AddRaw.", nameof(storeAs));
        }

        long[] dims = [.. tensor.Shape.ToArray().Reverse().Select(static d => (long)d)];
        if (dims.Length == 0)
        {
            dims = [1];
        }

        long bytes = CheckEntry(name, storeAs, dims);
        Add(new Entry(name, storeAs, dims, bytes, stream => WriteConverted(stream, tensor, storeAs)));
    }

    /// <summary>Writes the file to <paramref name="path"/> (created or replaced).</summary>
    /// <exception cref="IOException">The file cannot be written.</exception>
    public void Write(string path)
    {
        using FileStream stream = new(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        Write(stream);
    }

    /// <summary>Writes the file to <paramref name="stream"/> from its current position.</summary>
    public void Write(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        long written = 0;
        void Put(ReadOnlySpan<byte> bytes)
        {
            stream.Write(bytes);
            written += bytes.Length;
        }

        // The header: magic, version, counts; general.alignment first, then the metadata in the order added.
        Span<byte> scratch = stackalloc byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(scratch, GgufFile.Magic);
        Put(scratch[..4]);
        BinaryPrimitives.WriteUInt32LittleEndian(scratch, 3);
        Put(scratch[..4]);
        BinaryPrimitives.WriteUInt64LittleEndian(scratch, (ulong)_tensors.Count);
        Put(scratch);
        BinaryPrimitives.WriteUInt64LittleEndian(scratch, (ulong)_metadata.Count + 1);
        Put(scratch);
        using (MemoryStream header = new())
        {
            WriteString(header, GgufFile.AlignmentKey);
            WriteValue(header, GgufValue.UInt32(_alignment));
            foreach ((string key, GgufValue value) in _metadata)
            {
                WriteString(header, key);
                WriteValue(header, value);
            }

            // The tensor entries, each at the next aligned offset of the data section.
            long offset = 0;
            foreach (Entry entry in _tensors)
            {
                WriteString(header, entry.Name);
                WriteUInt32(header, (uint)entry.Dims.Length);
                foreach (long dim in entry.Dims)
                {
                    WriteUInt64(header, (ulong)dim);
                }

                WriteUInt32(header, (uint)entry.Type);
                WriteUInt64(header, (ulong)offset);
                offset += Padded(entry.Bytes);
            }

            Put(header.GetBuffer().AsSpan(0, (int)header.Length));
        }

        // Padding to the data section, then each tensor and its padding.
        Pad(stream, Padded(written) - written);
        foreach (Entry entry in _tensors)
        {
            long before = stream.CanSeek ? stream.Position : -1;
            entry.Write(stream);
            if (before >= 0 && stream.Position - before != entry.Bytes)
            {
                throw new InvalidOperationException($"Tensor '{entry.Name}' wrote {stream.Position - before} bytes instead of {entry.Bytes}; this is a bug in GgufWriter.");
            }

            Pad(stream, Padded(entry.Bytes) - entry.Bytes);
        }

    }

    private long Padded(long bytes) => (bytes + _alignment - 1) / _alignment * _alignment;

    private static void Pad(Stream stream, long count)
    {
        Span<byte> zeros = stackalloc byte[256];
        zeros.Clear();
        for (long left = count; left > 0; left -= zeros.Length)
        {
            stream.Write(zeros[..(int)Math.Min(zeros.Length, left)]);
        }
    }

    private void Add(Entry entry)
    {
        _names.Add(entry.Name);
        _tensors.Add(entry);
    }

    private long CheckEntry(string name, GgufTensorType type, long[] dims)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(dims);
        if (_names.Contains(name))
        {
            throw new ArgumentException($"Tensor '{name}' was already added; tensor names are unique in a GGUF file.", nameof(name));
        }

        if (!GgufTypes.TryGetLayout(type, out int blockElements, out int blockBytes))
        {
            throw new ArgumentException($"{type.Name()} is not a ggml tensor type.", nameof(type));
        }

        if (dims.Length is < 1 or > GgufFile.MaxDims || dims.Any(static d => d < 0))
        {
            throw new ArgumentException($"Tensor '{name}' has dims [{string.Join(", ", dims)}]; GGUF tensors have 1 to {GgufFile.MaxDims} non-negative dims.", nameof(dims));
        }

        if (dims[0] % blockElements != 0)
        {
            throw new ArgumentException($"Tensor '{name}' has innermost dimension {dims[0]}, not a multiple of the {blockElements}-value blocks of {type.Name()}; store it as F32 or F16.", nameof(dims));
        }

        long rows = dims.Skip(1).Aggregate(1L, static (product, d) => checked(product * d));
        return checked(dims[0] / blockElements * blockBytes * rows);
    }

    // Reads the tensor as float32 in pieces (copying it to the host first when it lives elsewhere) and writes each
    // piece in the stored type; 16-bit data stored as the same type is copied as it is.
    private static unsafe void WriteConverted(Stream stream, Tensor tensor, GgufTensorType storeAs)
    {
        using Tensor? copy = tensor.Device is CpuDevice && tensor.IsContiguous ? null : tensor.To(CpuDevice.Default);
        Tensor host = copy ?? tensor;
        byte* data = (byte*)host.DataPointer;
        long count = host.Length;
        DType type = host.DType;
        bool same = (storeAs, type) is (GgufTensorType.F32, DType.Float32) or (GgufTensorType.F16, DType.Float16) or (GgufTensorType.BF16, DType.BFloat16) or (GgufTensorType.Q8_0, DType.Q8_0);
        if (same)
        {
            for (long done = 0; done < count; done += ChunkValues)
            {
                stream.Write(new ReadOnlySpan<byte>(data + type.ByteCount(done), (int)type.ByteCount(Math.Min(ChunkValues, count - done))));
            }

            return;
        }

        float[] values = new float[ChunkValues];
        byte[] output = new byte[ChunkValues * 4];
        for (long done = 0; done < count; done += ChunkValues)
        {
            int n = (int)Math.Min(ChunkValues, count - done);
            GgufFile.Widen(new ReadOnlySpan<byte>(data + type.ByteCount(done), (int)type.ByteCount(n)), type, values.AsSpan(0, n));
            int bytes;
            if (storeAs == GgufTensorType.Q8_0)
            {
                bytes = (int)Q8_0Blocks.ByteCount(n);
                Q8_0Blocks.Quantize(values.AsSpan(0, n), output.AsSpan(0, bytes));
            }
            else
            {
                DType target = storeAs switch
                {
                    GgufTensorType.F32 => DType.Float32,
                    GgufTensorType.F16 => DType.Float16,
                    _ => DType.BFloat16,
                };
                bytes = n * target.SizeOf();
                GgufFile.Narrow(values.AsSpan(0, n), target, output.AsSpan(0, bytes));
            }

            stream.Write(output, 0, bytes);
        }
    }

    private static void WriteValue(Stream stream, GgufValue value)
    {
        WriteUInt32(stream, (uint)value.Type);
        if (value.Type == GgufValueType.Array)
        {
            WriteArray(stream, value);
        }
        else
        {
            WriteScalar(stream, value.Value);
        }
    }

    private static void WriteArray(Stream stream, GgufValue value)
    {
        WriteUInt32(stream, (uint)value.ElementType);
        Array items = (Array)value.Value;
        WriteUInt64(stream, (ulong)items.Length);
        switch (items)
        {
            case GgufValue[] nested:
                foreach (GgufValue item in nested)
                {
                    WriteArray(stream, item);
                }

                break;
            case string[] strings:
                foreach (string item in strings)
                {
                    WriteString(stream, item);
                }

                break;
            default:
                foreach (object item in items)
                {
                    WriteScalar(stream, item);
                }

                break;
        }
    }

    private static void WriteScalar(Stream stream, object value)
    {
        Span<byte> bytes = stackalloc byte[8];
        int length;
        switch (value)
        {
            case byte v: bytes[0] = v; length = 1; break;
            case sbyte v: bytes[0] = (byte)v; length = 1; break;
            case bool v: bytes[0] = v ? (byte)1 : (byte)0; length = 1; break;
            case ushort v: BinaryPrimitives.WriteUInt16LittleEndian(bytes, v); length = 2; break;
            case short v: BinaryPrimitives.WriteInt16LittleEndian(bytes, v); length = 2; break;
            case uint v: BinaryPrimitives.WriteUInt32LittleEndian(bytes, v); length = 4; break;
            case int v: BinaryPrimitives.WriteInt32LittleEndian(bytes, v); length = 4; break;
            case float v: BinaryPrimitives.WriteSingleLittleEndian(bytes, v); length = 4; break;
            case ulong v: BinaryPrimitives.WriteUInt64LittleEndian(bytes, v); length = 8; break;
            case long v: BinaryPrimitives.WriteInt64LittleEndian(bytes, v); length = 8; break;
            case double v: BinaryPrimitives.WriteDoubleLittleEndian(bytes, v); length = 8; break;
            case string s: WriteString(stream, s); return;
            default: throw new InvalidOperationException($"GgufValue holds a {value.GetType().Name}; this is a bug in GgufValue.");
        }

        stream.Write(bytes[..length]);
    }

    private static void WriteString(Stream stream, string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        WriteUInt64(stream, (ulong)bytes.Length);
        stream.Write(bytes);
    }

    private static void WriteUInt32(Stream stream, uint value)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, value);
        stream.Write(bytes);
    }

    private static void WriteUInt64(Stream stream, ulong value)
    {
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, value);
        stream.Write(bytes);
    }

    private sealed record Entry(string Name, GgufTensorType Type, long[] Dims, long Bytes, Action<Stream> Write);
}
