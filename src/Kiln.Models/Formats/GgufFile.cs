// Reads GGUF files (the llama.cpp / ggml container, ggml-org/ggml docs/gguf.md), versions 2 and 3, little-endian:
//
//   "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count × { string key | u32 value type | value }          string = u64 byte length + UTF-8 bytes
//   tensor_count × { string name | u32 n_dims | u64 dims[n_dims] (innermost first) | u32 ggml type | u64 offset }
//   zero padding to general.alignment (u32, default 32)
//   the data section: each tensor at data start + offset, offsets multiples of the alignment
//
// Nothing in the header is trusted. Every count, length and offset is checked against the bytes that remain before it
// is used: a string may not be longer than what follows it (nor 64 MiB), an array may not hold more elements than the
// remaining bytes could encode at their smallest (so a count of 2^63 fails at once), kv_count and tensor_count are
// bounded the same way, arrays nest at most 8 deep, a tensor has 1 to 4 dimensions whose product may not overflow, its
// innermost dimension is a whole number of blocks of its type, and its byte range lies inside the data section, starts
// at a multiple of the alignment and overlaps no other tensor. So a crafted or truncated file fails with one line that
// names the file, the field and the fix (a ModelFormatException), never with a huge allocation, an overflow, a read
// past the end or a hang; allocation is bounded by the file's own length.
//
// Version 1 (u32 counts, 2023) is rejected with a hint; versions 2 and 3 share the layout above (3 only added the
// big-endian variant, which is detected and rejected). Metadata strings are decoded as UTF-8 with invalid sequences
// replaced by U+FFFD. Tensor data is read on demand through a fresh stream: F32, F16 and BF16 as Kiln tensors (outermost
// first, the dims reversed), any type as its raw bytes (Q8_0: 34-byte blocks of an f16 scale and 32 int8).

using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Kiln.Devices;

namespace Kiln.Models.Formats;

/// <summary>One tensor entry of a GGUF file, validated against the file.</summary>
/// <param name="Name">The tensor name (for example <c>blk.0.attn_q.weight</c>).</param>
/// <param name="Dims">The dimensions as stored: innermost (contiguous) first, as ggml's <c>ne</c>.</param>
/// <param name="Type">The ggml type.</param>
/// <param name="Offset">The offset from the start of the data section, as stored.</param>
/// <param name="FileOffset">The offset of the first byte from the start of the file.</param>
/// <param name="ByteSize">The number of bytes, from the dims and the type's block layout.</param>
public sealed record GgufTensorInfo(string Name, long[] Dims, GgufTensorType Type, long Offset, long FileOffset, long ByteSize)
{
    /// <summary>The number of elements (the product of the dims).</summary>
    public long ElementCount => Dims.Aggregate(1L, static (product, dim) => product * dim);

    /// <summary>The shape outermost first (Kiln's and PyTorch's order: the dims reversed).</summary>
    /// <exception cref="OverflowException">A dimension exceeds int.MaxValue.</exception>
    public int[] Shape => [.. Dims.Reverse().Select(static d => checked((int)d))];

    /// <summary>The shape for messages, outermost first: "[512, 64]".</summary>
    public string ShapeText => $"[{string.Join(", ", Dims.Reverse())}]";
}

/// <summary>
/// A validated GGUF file: version, metadata, tensor entries and alignment. Tensor data is read on demand; the file is
/// not held open between reads.
/// </summary>
public sealed class GgufFile
{
    /// <summary>"GGUF" read as a little-endian u32.</summary>
    public const uint Magic = 0x46554747;

    /// <summary>The alignment of tensor data when <c>general.alignment</c> is absent.</summary>
    public const int DefaultAlignment = 32;

    /// <summary>The metadata key that sets the alignment (a u32 power of two).</summary>
    public const string AlignmentKey = "general.alignment";

    /// <summary>The longest string accepted (key, value, tensor name or array item), in bytes.</summary>
    public const long MaxStringBytes = 64L << 20;

    /// <summary>The deepest nesting of arrays accepted.</summary>
    public const int MaxArrayDepth = 8;

    /// <summary>The most dimensions a tensor may have (ggml's GGML_MAX_DIMS).</summary>
    public const int MaxDims = 4;

    // Tensor data is copied and converted in pieces of this many bytes.
    private const int ChunkBytes = 1 << 20;

    private readonly Dictionary<string, GgufValue> _metadata;
    private readonly Dictionary<string, GgufTensorInfo> _tensorsByName;
    private readonly Func<Stream> _openData;

    private GgufFile(
        string path,
        uint version,
        int alignment,
        long dataOffset,
        long fileLength,
        List<string> keys,
        Dictionary<string, GgufValue> metadata,
        List<GgufTensorInfo> tensors,
        Func<Stream> openData)
    {
        Path = path;
        Version = version;
        Alignment = alignment;
        DataOffset = dataOffset;
        FileLength = fileLength;
        Keys = keys;
        _metadata = metadata;
        Tensors = tensors;
        _tensorsByName = tensors.ToDictionary(static t => t.Name, StringComparer.Ordinal);
        _openData = openData;
    }

    /// <summary>The file read (used in messages).</summary>
    public string Path { get; }

    /// <summary>The GGUF version (2 or 3).</summary>
    public uint Version { get; }

    /// <summary>The alignment of tensor data in bytes (a power of two).</summary>
    public int Alignment { get; }

    /// <summary>The byte offset of the data section (the end of the header rounded up to the alignment).</summary>
    public long DataOffset { get; }

    /// <summary>The file length in bytes.</summary>
    public long FileLength { get; }

    /// <summary>The metadata keys in file order.</summary>
    public IReadOnlyList<string> Keys { get; }

    /// <summary>The metadata by key.</summary>
    public IReadOnlyDictionary<string, GgufValue> Metadata => _metadata;

    /// <summary>The tensor entries in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    /// <summary>Whether the file at <paramref name="path"/> starts with the GGUF magic (false when unreadable).</summary>
    public static bool IsGguf(string path)
    {
        try
        {
            using FileStream stream = new(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            Span<byte> magic = stackalloc byte[4];
            return stream.ReadAtLeast(magic, 4, throwOnEndOfStream: false) == 4 && BinaryPrimitives.ReadUInt32LittleEndian(magic) == Magic;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Reads and validates the header of the GGUF file at <paramref name="path"/>.</summary>
    /// <exception cref="ModelFormatException">
    /// The file is missing, unreadable, truncated, or its header is malformed or inconsistent with its length: one
    /// line naming the file, the field and the fix.
    /// </exception>
    public static GgufFile Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("GGUF files are read on little-endian machines only.");
        }

        if (Directory.Exists(path))
        {
            throw new ModelFormatException(path, $"{path}: is a directory; pass the .gguf file itself.");
        }

        if (!File.Exists(path))
        {
            throw new ModelFormatException(path, $"{path}: does not exist; check the path of the .gguf file.");
        }

        try
        {
            using FileStream stream = new(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan);
            return Read(path, stream, () => new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"{path}: could not be read ({OneLine(e.Message)}); check that the file is readable and not being written.", e);
        }
    }

    /// <summary>Reads and validates a GGUF file held in memory; <paramref name="name"/> names it in messages.</summary>
    /// <exception cref="ModelFormatException">See <see cref="Open"/>.</exception>
    public static GgufFile Parse(string name, byte[] bytes)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        using MemoryStream stream = new(bytes, writable: false);
        return Read(name, stream, () => new MemoryStream(bytes, writable: false));
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Metadata accessors.

    /// <summary>Whether the metadata holds <paramref name="key"/>.</summary>
    public bool Contains(string key) => _metadata.ContainsKey(key);

    /// <summary>The value of <paramref name="key"/>, or null when absent.</summary>
    public GgufValue? Find(string key) => _metadata.GetValueOrDefault(key);

    /// <summary>The value of <paramref name="key"/>.</summary>
    /// <exception cref="ModelFormatException">The key is missing.</exception>
    public GgufValue Get(string key) => _metadata.TryGetValue(key, out GgufValue? value)
        ? value
        : throw new ModelFormatException(Path, $"{Path}: has no metadata key '{key}'; the file was written for another architecture or by an incomplete converter, convert the model again (kiln info lists its keys).");

    /// <summary>The string value of <paramref name="key"/>.</summary>
    /// <exception cref="ModelFormatException">The key is missing or not a string.</exception>
    public string GetString(string key) => (string)Expect(key, GgufValueType.String).Value;

    /// <summary>The u32 value of <paramref name="key"/>.</summary>
    /// <exception cref="ModelFormatException">The key is missing or not a u32.</exception>
    public uint GetUInt32(string key) => (uint)Expect(key, GgufValueType.UInt32).Value;

    /// <summary>The f32 value of <paramref name="key"/>.</summary>
    /// <exception cref="ModelFormatException">The key is missing or not an f32.</exception>
    public float GetFloat32(string key) => (float)Expect(key, GgufValueType.Float32).Value;

    /// <summary>The bool value of <paramref name="key"/>.</summary>
    /// <exception cref="ModelFormatException">The key is missing or not a bool.</exception>
    public bool GetBool(string key) => (bool)Expect(key, GgufValueType.Bool).Value;

    /// <summary>
    /// The value of <paramref name="key"/> as an integer in [<paramref name="min"/>, <paramref name="max"/>], whichever
    /// of the eight integer types it is stored as (converters differ: u32 is usual, i32 and u64 occur).
    /// </summary>
    /// <exception cref="ModelFormatException">The key is missing, not an integer, or out of range.</exception>
    public long GetInteger(string key, long min = long.MinValue, long max = long.MaxValue)
    {
        GgufValue value = Get(key);
        if (!value.TryGetInteger(out long number))
        {
            throw new ModelFormatException(Path, $"{Path}: metadata key '{key}' is {Article(value.TypeName)} ({value}), expected an integer; the file was written by an incompatible converter, convert the model again.");
        }

        if (number < min || number > max)
        {
            throw new ModelFormatException(Path, $"{Path}: metadata key '{key}' is {number}, outside the valid range {min}..{max}; the file is damaged or the model is not supported.");
        }

        return number;
    }

    /// <summary>The value of an optional integer key, or <paramref name="fallback"/> when absent; see <see cref="GetInteger"/>.</summary>
    /// <exception cref="ModelFormatException">The key is present but not an integer in range.</exception>
    public long GetInteger(string key, long fallback, long min, long max) => Contains(key) ? GetInteger(key, min, max) : fallback;

    /// <summary>The elements of the array <paramref name="key"/>, whose element type must map to <typeparamref name="T"/>.</summary>
    /// <exception cref="ModelFormatException">The key is missing, not an array, or an array of another type.</exception>
    public T[] GetArray<T>(string key)
    {
        GgufValue value = Get(key);
        if (value.Value is T[] items && value.Type == GgufValueType.Array)
        {
            return items;
        }

        string expected = typeof(T) == typeof(GgufValue) ? "an array of arrays" : $"an array of {ElementName(typeof(T))}";
        throw new ModelFormatException(Path, $"{Path}: metadata key '{key}' is {Article(value.TypeName)}, expected {expected}; the file was written by an incompatible converter, convert the model again.");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Tensor accessors.

    /// <summary>The entry of tensor <paramref name="name"/>, or null when the file has none.</summary>
    public GgufTensorInfo? FindTensor(string name) => _tensorsByName.GetValueOrDefault(name);

    /// <summary>The entry of tensor <paramref name="name"/>.</summary>
    /// <exception cref="ModelFormatException">The file has no such tensor.</exception>
    public GgufTensorInfo GetTensor(string name) => FindTensor(name)
        ?? throw new ModelFormatException(Path, $"{Path}: has no tensor '{name}' (it holds {Tensors.Count} tensors); the file is incomplete or for another architecture, convert the model again.");

    /// <summary>Reads the raw bytes of <paramref name="tensor"/> into <paramref name="destination"/> (exactly its byte size).</summary>
    /// <exception cref="ArgumentException">The destination's length is not the tensor's byte size.</exception>
    /// <exception cref="ModelFormatException">The file changed or became unreadable since it was opened.</exception>
    public void ReadTensorBytes(GgufTensorInfo tensor, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (destination.Length != tensor.ByteSize)
        {
            throw new ArgumentException($"Tensor '{tensor.Name}' has {tensor.ByteSize} bytes; the destination holds {destination.Length}.", nameof(destination));
        }

        using Stream stream = OpenData(tensor);
        ReadData(stream, tensor, destination);
    }

    /// <summary>The raw bytes of tensor <paramref name="name"/> in a new array.</summary>
    /// <exception cref="ModelFormatException">No such tensor, it is larger than an array holds, or the file changed.</exception>
    public byte[] ReadTensorBytes(string name)
    {
        GgufTensorInfo tensor = GetTensor(name);
        if (tensor.ByteSize > Array.MaxLength)
        {
            throw new ModelFormatException(Path, $"{Path}: tensor '{name}' has {tensor.ByteSize} bytes, more than one array holds; read it in pieces with ReadTensorBytes(info, span).");
        }

        byte[] bytes = new byte[tensor.ByteSize];
        ReadTensorBytes(tensor, bytes);
        return bytes;
    }

    /// <summary>
    /// Reads tensor <paramref name="name"/> (F32, F16 or BF16) into a new Kiln tensor on <paramref name="device"/>
    /// (cpu when null), shaped outermost first, in <paramref name="dtype"/> (default: the stored type; a 16-bit type is
    /// widened to float32 exactly, float32 narrowed with round-to-nearest-even).
    /// </summary>
    /// <exception cref="ModelFormatException">
    /// No such tensor, a type Kiln does not hold as a tensor (quantized types), a shape larger than a tensor, or the file
    /// changed since it was opened.
    /// </exception>
    public Tensor LoadTensor(string name, DType? dtype = null, Device? device = null)
    {
        GgufTensorInfo info = GetTensor(name);
        DType stored = StoredDType(info);
        DType target = dtype ?? stored;
        if (!target.IsFloatingPoint() && !(target == DType.Q8_0 && stored == DType.Q8_0))
        {
            throw new ArgumentException($"LoadTensor converts to float32, float16 or bfloat16 (q8_0 only from Q8_0), not {target.Name()}.", nameof(dtype));
        }

        if (info.ElementCount > Tensor.MaxElements || info.Dims.Any(static d => d > int.MaxValue))
        {
            throw new ModelFormatException(Path, $"{Path}: tensor '{name}' of shape {info.ShapeText} has more elements than a Kiln tensor holds ({Tensor.MaxElements}); the model is too large for Kiln.");
        }

        // Read into a CPU tensor, then move it when another device was asked for.
        Tensor host = Tensor.Empty(info.Shape, target);
        try
        {
            ReadInto(info, host);
            if (device is null || device is CpuDevice)
            {
                return host;
            }

            using (host)
            {
                return host.To(device);
            }
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads <paramref name="info"/> (F32, F16, BF16 or Q8_0) into <paramref name="host"/>, a contiguous CPU tensor of the
    /// same shape in any floating-point dtype (converted piece by piece when it differs from the stored one), or q8_0
    /// for Q8_0 data (copied as it is).
    /// </summary>
    internal void ReadInto(GgufTensorInfo info, Tensor host)
    {
        DType stored = StoredDType(info);
        bool fits = host.DType.IsFloatingPoint() || (host.DType == DType.Q8_0 && stored == DType.Q8_0);
        if (host.Device is not CpuDevice || !host.IsContiguous || !fits || !host.Shape.SequenceEqual(info.Shape))
        {
            throw new ArgumentException($"Tensor '{info.Name}' {info.ShapeText} is read into a contiguous floating-point CPU tensor of its shape, not {host}.", nameof(host));
        }

        using Stream stream = OpenData(info);
        FillTensor(stream, info, stored, host);
    }

    private DType StoredDType(GgufTensorInfo info) => info.Type switch
    {
        GgufTensorType.F32 => DType.Float32,
        GgufTensorType.F16 => DType.Float16,
        GgufTensorType.BF16 => DType.BFloat16,
        GgufTensorType.Q8_0 => DType.Q8_0,
        _ => throw new ModelFormatException(Path, $"{Path}: tensor '{info.Name}' is {info.Type.Name()}, which Kiln does not load as a tensor yet (F32, F16, BF16 and Q8_0 only); convert the model with --dtype f32, f16 or q8_0."),
    };

    // ---------------------------------------------------------------------------------------------------------------
    // Parsing.

    /// <summary>Parses and validates the header from <paramref name="stream"/>, positioned at the start of the file.</summary>
    internal static GgufFile Read(string path, Stream stream, Func<Stream> openData)
    {
        BoundedReader reader = new(path, stream);

        // The fixed header: magic, version, the two counts.
        if (reader.Length < 4 || reader.ReadUInt32("the magic") != Magic)
        {
            throw Fail(path, "does not start with the GGUF magic \"GGUF\"", "it is not a GGUF file; pass a .gguf model or a llama2.c .bin checkpoint");
        }

        uint version = reader.ReadUInt32("the version");
        if (version == 1)
        {
            throw Fail(path, "is GGUF version 1 (2023, 32-bit counts), which Kiln does not read", "convert the model again with a current llama.cpp (versions 2 and 3 are read)");
        }

        if (version is not (2 or 3))
        {
            string hint = BinaryPrimitives.ReverseEndianness(version) is 2 or 3 ? "a big-endian GGUF file, which Kiln does not read; convert it little-endian" : "the file is damaged or newer than this Kiln";
            throw Fail(path, $"has GGUF version {version}; Kiln reads versions 2 and 3", hint);
        }

        ulong tensorCount = reader.ReadUInt64("the tensor count");
        ulong kvCount = reader.ReadUInt64("the metadata count");

        // A key/value pair takes at least 13 bytes (empty key, type, a 1-byte value); a tensor entry at least 28 (empty
        // name, n_dims, one dim, type, offset). Counts beyond what the rest of the file could hold are lies.
        if (kvCount > (ulong)(reader.Remaining / 13))
        {
            throw Fail(path, $"declares {kvCount} metadata entries but only {reader.Remaining} bytes follow the header (an entry takes at least 13)", Truncated);
        }

        if (tensorCount > (ulong)(reader.Remaining / 28))
        {
            throw Fail(path, $"declares {tensorCount} tensors but only {reader.Remaining} bytes follow the header (a tensor entry takes at least 28)", Truncated);
        }

        // The metadata.
        List<string> keys = new((int)kvCount);
        Dictionary<string, GgufValue> metadata = new((int)kvCount, StringComparer.Ordinal);
        for (ulong i = 0; i < kvCount; i++)
        {
            string key = reader.ReadString($"the key of metadata entry {i}");
            uint type = reader.ReadUInt32($"the type of metadata key '{key}'");
            GgufValue value = ReadValue(reader, type, key, depth: 0);
            if (!metadata.TryAdd(key, value))
            {
                throw Fail(path, $"has metadata key '{key}' twice", Damaged);
            }

            keys.Add(key);
        }

        // The alignment: a u32 power of two.
        int alignment = DefaultAlignment;
        if (metadata.TryGetValue(AlignmentKey, out GgufValue? alignmentValue))
        {
            if (alignmentValue.Type != GgufValueType.UInt32)
            {
                throw Fail(path, $"has {AlignmentKey} of type {alignmentValue.TypeName}; it must be a u32", Damaged);
            }

            uint declared = (uint)alignmentValue.Value;
            if (declared == 0 || !uint.IsPow2(declared) || declared > 1u << 30)
            {
                throw Fail(path, $"has {AlignmentKey} = {declared}; the alignment must be a power of two (1 to 2^30, usually 32)", Damaged);
            }

            alignment = (int)declared;
        }

        // The tensor entries, then the data section they point into.
        List<(string Name, long[] Dims, GgufTensorType Type, ulong Offset, long Bytes)> entries = new((int)tensorCount);
        HashSet<string> names = new(StringComparer.Ordinal);
        for (ulong i = 0; i < tensorCount; i++)
        {
            entries.Add(ReadTensorEntry(reader, i, names));
        }

        long headerEnd = reader.Position;
        long dataOffset = headerEnd + ((alignment - (headerEnd % alignment)) % alignment);
        long dataLength = reader.Length - dataOffset;
        List<GgufTensorInfo> tensors = new(entries.Count);
        foreach ((string name, long[] dims, GgufTensorType type, ulong offset, long bytes) in entries)
        {
            if (offset % (ulong)alignment != 0)
            {
                throw Fail(path, $"has tensor '{name}' at data offset {offset}, not a multiple of the alignment {alignment}", Damaged);
            }

            if (dataLength < 0 || offset > (ulong)dataLength || bytes > dataLength - (long)offset)
            {
                long available = Math.Max(0, dataLength);
                throw Fail(path, $"has tensor '{name}' ({type.Name()} {ShapeOf(dims)}, {bytes} bytes) at data offset {offset}, past the end of the file ({available} data bytes from byte {dataOffset})", Truncated);
            }

            tensors.Add(new GgufTensorInfo(name, dims, type, (long)offset, dataOffset + (long)offset, bytes));
        }

        // No two tensors may share bytes.
        GgufTensorInfo[] sorted = [.. tensors.Where(static t => t.ByteSize > 0).OrderBy(static t => t.Offset)];
        for (int i = 1; i < sorted.Length; i++)
        {
            if (sorted[i].Offset < sorted[i - 1].Offset + sorted[i - 1].ByteSize)
            {
                throw Fail(path, $"has overlapping tensors '{sorted[i - 1].Name}' (bytes {sorted[i - 1].Offset}..{sorted[i - 1].Offset + sorted[i - 1].ByteSize}) and '{sorted[i].Name}' (from {sorted[i].Offset}) in its data section", Damaged);
            }
        }

        return new GgufFile(path, version, alignment, dataOffset, reader.Length, keys, metadata, tensors, openData);
    }

    private static (string Name, long[] Dims, GgufTensorType Type, ulong Offset, long Bytes) ReadTensorEntry(BoundedReader reader, ulong index, HashSet<string> names)
    {
        string path = reader.Path;
        string name = reader.ReadString($"the name of tensor {index}");
        if (!names.Add(name))
        {
            throw Fail(path, $"has tensor '{name}' twice", Damaged);
        }

        // Dimensions: 1 to 4 of them (0 allowed: an empty tensor), with a product that fits a long.
        uint rank = reader.ReadUInt32($"the dimension count of tensor '{name}'");
        if (rank < 1 || rank > MaxDims)
        {
            throw Fail(path, $"has tensor '{name}' with {rank} dimensions; GGUF tensors have 1 to {MaxDims}", Damaged);
        }

        long[] dims = new long[rank];
        long count = 1;
        for (int d = 0; d < rank; d++)
        {
            ulong dim = reader.ReadUInt64($"dimension {d} of tensor '{name}'");
            if (dim > long.MaxValue || (dim > 0 && count > long.MaxValue / (long)dim))
            {
                throw Fail(path, $"has tensor '{name}' whose dimensions overflow a 64-bit element count (dimension {d} is {dim})", Damaged);
            }

            dims[d] = (long)dim;
            count *= (long)dim;
        }

        // The type and its block layout: the innermost dimension holds whole blocks.
        uint code = reader.ReadUInt32($"the type of tensor '{name}'");
        GgufTensorType type = (GgufTensorType)code;
        if (!GgufTypes.TryGetLayout(type, out int blockElements, out int blockBytes))
        {
            throw Fail(path, $"has tensor '{name}' of unknown ggml type {code}", "the file is damaged or was written by a newer ggml; Kiln knows the types ggml defines up to MXFP4 (39)");
        }

        if (dims[0] % blockElements != 0)
        {
            throw Fail(path, $"has tensor '{name}' of type {type.Name()} whose innermost dimension {dims[0]} is not a multiple of its block of {blockElements}", Damaged);
        }

        long rows = dims[0] == 0 ? 0 : count / dims[0];
        long blocks = dims[0] / blockElements;
        long bytesPerRow = blocks * blockBytes;
        if (blocks > long.MaxValue / blockBytes || (rows > 0 && bytesPerRow > long.MaxValue / rows))
        {
            throw Fail(path, $"has tensor '{name}' whose byte size overflows a 64-bit count", Damaged);
        }

        ulong offset = reader.ReadUInt64($"the data offset of tensor '{name}'");
        return (name, dims, type, offset, bytesPerRow * rows);
    }

    private static GgufValue ReadValue(BoundedReader reader, uint code, string key, int depth)
    {
        GgufValueType type = (GgufValueType)code;
        if (!GgufTypes.IsDefined(type))
        {
            throw Fail(reader.Path, $"has metadata key '{key}' of unknown value type {code}", "the file is damaged or was written by a newer GGUF writer (types 0..12 are defined)");
        }

        string what = $"the value of metadata key '{key}'";
        switch (type)
        {
            case GgufValueType.UInt8: return GgufValue.UInt8(reader.ReadBytes(1, what)[0]);
            case GgufValueType.Int8: return GgufValue.Int8((sbyte)reader.ReadBytes(1, what)[0]);
            case GgufValueType.UInt16: return GgufValue.UInt16(BinaryPrimitives.ReadUInt16LittleEndian(reader.ReadBytes(2, what)));
            case GgufValueType.Int16: return GgufValue.Int16(BinaryPrimitives.ReadInt16LittleEndian(reader.ReadBytes(2, what)));
            case GgufValueType.UInt32: return GgufValue.UInt32(reader.ReadUInt32(what));
            case GgufValueType.Int32: return GgufValue.Int32((int)reader.ReadUInt32(what));
            case GgufValueType.Float32: return GgufValue.Float32(BitConverter.UInt32BitsToSingle(reader.ReadUInt32(what)));
            case GgufValueType.Bool: return GgufValue.Bool(ReadBool(reader, reader.ReadBytes(1, what)[0], key));
            case GgufValueType.String: return GgufValue.String(reader.ReadString(what));
            case GgufValueType.UInt64: return GgufValue.UInt64(reader.ReadUInt64(what));
            case GgufValueType.Int64: return GgufValue.Int64((long)reader.ReadUInt64(what));
            case GgufValueType.Float64: return GgufValue.Float64(BitConverter.UInt64BitsToDouble(reader.ReadUInt64(what)));
            default: return ReadArray(reader, key, depth);
        }
    }

    private static GgufValue ReadArray(BoundedReader reader, string key, int depth)
    {
        string path = reader.Path;
        if (depth >= MaxArrayDepth)
        {
            throw Fail(path, $"has metadata key '{key}' with arrays nested more than {MaxArrayDepth} deep", Damaged);
        }

        // The element type and the count, bounded by what the remaining bytes could hold.
        uint code = reader.ReadUInt32($"the element type of array '{key}'");
        GgufValueType elementType = (GgufValueType)code;
        if (!GgufTypes.IsDefined(elementType))
        {
            throw Fail(path, $"has array '{key}' of unknown element type {code}", "the file is damaged or was written by a newer GGUF writer (types 0..12 are defined)");
        }

        ulong count = reader.ReadUInt64($"the length of array '{key}'");
        int minimum = GgufTypes.MinimumBytes(elementType);
        if (count > (ulong)(reader.Remaining / minimum) || count > (ulong)Array.MaxLength)
        {
            throw Fail(path, $"has array '{key}' of {count} {elementType.Name()} elements but only {reader.Remaining} bytes follow (each takes at least {minimum})", Truncated);
        }

        int n = (int)count;
        string what = $"the elements of array '{key}'";
        switch (elementType)
        {
            case GgufValueType.String:
                string[] strings = new string[n];
                string arrayName = $"array '{key}'";
                for (int i = 0; i < n; i++)
                {
                    strings[i] = reader.ReadString(new Field(arrayName, i));
                }

                return GgufValue.Array(GgufValueType.String, strings);
            case GgufValueType.Array:
                GgufValue[] nested = new GgufValue[n];
                for (int i = 0; i < n; i++)
                {
                    nested[i] = ReadArray(reader, key, depth + 1);
                }

                return GgufValue.Array(GgufValueType.Array, nested);
            case GgufValueType.Bool:
                byte[] raw = reader.ReadBytes(n, what).ToArray();
                bool[] flags = new bool[n];
                for (int i = 0; i < n; i++)
                {
                    flags[i] = ReadBool(reader, raw[i], key);
                }

                return GgufValue.Array(GgufValueType.Bool, flags);
            default:
                // Fixed-size numbers: one read into the typed array (the file and .NET are both little-endian).
                Array items = System.Array.CreateInstance(GgufValue.ArrayType(elementType).GetElementType()!, n);
                Span<byte> target = MemoryMarshal.AsBytes(SpanOf(items));
                reader.ReadInto(target, what);
                return GgufValue.Array(elementType, items);
        }
    }

    private static Span<byte> SpanOf(Array items) => items switch
    {
        byte[] a => a,
        sbyte[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        ushort[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        short[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        uint[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        int[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        float[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        ulong[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        long[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        double[] a => MemoryMarshal.AsBytes(a.AsSpan()),
        _ => throw new InvalidOperationException($"No fixed-size span for {items.GetType().Name}."),
    };

    private static bool ReadBool(BoundedReader reader, byte value, string key) => value switch
    {
        0 => false,
        1 => true,
        _ => throw Fail(reader.Path, $"has metadata key '{key}' with bool byte {value} (must be 0 or 1)", Damaged),
    };

    // ---------------------------------------------------------------------------------------------------------------
    // Data.

    private Stream OpenData(GgufTensorInfo tensor)
    {
        try
        {
            Stream stream = _openData();
            long length = stream.Length;
            if (length != FileLength)
            {
                stream.Dispose();
                throw new ModelFormatException(Path, $"{Path}: is now {length} bytes, not the {FileLength} it had when opened; the file changed, open it again.");
            }

            stream.Position = tensor.FileOffset;
            return stream;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(Path, $"{Path}: tensor '{tensor.Name}' could not be read ({OneLine(e.Message)}); check that the file is still readable.", e);
        }
    }

    private void ReadData(Stream stream, GgufTensorInfo tensor, Span<byte> destination)
    {
        try
        {
            stream.ReadExactly(destination);
        }
        catch (Exception e) when (e is IOException or EndOfStreamException)
        {
            throw new ModelFormatException(Path, $"{Path}: tensor '{tensor.Name}' could not be read ({OneLine(e.Message)}); the file may have changed, open it again.", e);
        }
    }

    private unsafe void FillTensor(Stream stream, GgufTensorInfo info, DType stored, Tensor host)
    {
        byte* destination = (byte*)host.DataPointer;
        long total = info.ByteSize;
        if (stored == host.DType)
        {
            // Same dtype: read straight into the tensor's memory.
            for (long done = 0; done < total; done += ChunkBytes)
            {
                ReadData(stream, info, new Span<byte>(destination + done, (int)Math.Min(ChunkBytes, total - done)));
            }

            return;
        }

        // Convert piece by piece through a float32 staging buffer (whole Q8_0 blocks per piece).
        int targetSize = host.DType.SizeOf();
        int pieceBytes = stored == DType.Q8_0 ? ChunkBytes / Q8_0Blocks.BlockBytes * Q8_0Blocks.BlockBytes : ChunkBytes;
        byte[] chunk = new byte[pieceBytes];
        float[] values = new float[stored == DType.Q8_0 ? pieceBytes / Q8_0Blocks.BlockBytes * Q8_0Blocks.BlockElements : ChunkBytes / stored.SizeOf()];
        long written = 0;
        for (long done = 0; done < total; done += pieceBytes)
        {
            int bytes = (int)Math.Min(pieceBytes, total - done);
            int count = stored == DType.Q8_0 ? bytes / Q8_0Blocks.BlockBytes * Q8_0Blocks.BlockElements : bytes / stored.SizeOf();
            ReadData(stream, info, chunk.AsSpan(0, bytes));
            Widen(chunk.AsSpan(0, bytes), stored, values.AsSpan(0, count));
            Narrow(values.AsSpan(0, count), host.DType, new Span<byte>(destination + written, count * targetSize));
            written += (long)count * targetSize;
        }
    }

    /// <summary>Widens stored F32/F16/BF16 values to float32 and dequantizes Q8_0 blocks.</summary>
    internal static void Widen(ReadOnlySpan<byte> source, DType stored, Span<float> destination)
    {
        switch (stored)
        {
            case DType.Q8_0:
                Q8_0Blocks.Dequantize(source, destination);
                break;
            case DType.Float32:
                MemoryMarshal.Cast<byte, float>(source).CopyTo(destination);
                break;
            case DType.Float16:
                ReadOnlySpan<Half> halves = MemoryMarshal.Cast<byte, Half>(source);
                for (int i = 0; i < halves.Length; i++)
                {
                    destination[i] = (float)halves[i];
                }

                break;
            default:
                ReadOnlySpan<ushort> bits = MemoryMarshal.Cast<byte, ushort>(source);
                for (int i = 0; i < bits.Length; i++)
                {
                    destination[i] = DTypes.BFloat16ToSingle(bits[i]);
                }

                break;
        }
    }

    /// <summary>Narrows float32 values to F32/F16/BF16 bytes (round to nearest even).</summary>
    internal static void Narrow(ReadOnlySpan<float> source, DType target, Span<byte> destination)
    {
        switch (target)
        {
            case DType.Float32:
                MemoryMarshal.AsBytes(source).CopyTo(destination);
                break;
            case DType.Float16:
                Span<Half> halves = MemoryMarshal.Cast<byte, Half>(destination);
                for (int i = 0; i < source.Length; i++)
                {
                    halves[i] = (Half)source[i];
                }

                break;
            default:
                Span<ushort> bits = MemoryMarshal.Cast<byte, ushort>(destination);
                for (int i = 0; i < source.Length; i++)
                {
                    bits[i] = DTypes.SingleToBFloat16(source[i]);
                }

                break;
        }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Messages.

    private const string Damaged = "the file is damaged or not a valid GGUF file, download or convert it again";
    private const string Truncated = "the file is truncated or damaged, download or convert it again";

    private GgufValue Expect(string key, GgufValueType type)
    {
        GgufValue value = Get(key);
        if (value.Type != type)
        {
            throw new ModelFormatException(Path, $"{Path}: metadata key '{key}' is {Article(value.TypeName)}, expected {Article(type.Name())}; the file was written by an incompatible converter, convert the model again.");
        }

        return value;
    }

    private static string ElementName(Type type) => type == typeof(string) ? "string"
        : type == typeof(float) ? "f32"
        : type == typeof(int) ? "i32"
        : type == typeof(uint) ? "u32"
        : type == typeof(byte) ? "u8"
        : type == typeof(sbyte) ? "i8"
        : type == typeof(short) ? "i16"
        : type == typeof(ushort) ? "u16"
        : type == typeof(long) ? "i64"
        : type == typeof(ulong) ? "u64"
        : type == typeof(double) ? "f64"
        : type == typeof(bool) ? "bool"
        : type.Name;

    // "an i32", "an f32", "an array of ...", but "a u32", "a string", "a bool".
    private static string Article(string typeName) => typeName[0] is 'a' or 'i' or 'f' ? $"an {typeName}" : $"a {typeName}";

    private static string ShapeOf(long[] dims) => $"[{string.Join(", ", dims.Reverse())}]";

    internal static ModelFormatException Fail(string path, string problem, string fix) => new(path, $"{path}: {problem}; {fix}.");

    private static string OneLine(string text) => text.ReplaceLineEndings(" ").Trim();

    /// <summary>
    /// What a read is for, in messages: a text, optionally one element of it and optionally its length prefix. Built
    /// into a string only when a message needs it, so reading a 150,000-string array allocates no descriptions.
    /// </summary>
    private readonly record struct Field(string Text, int Element = -1, bool Length = false)
    {
        public static implicit operator Field(string text) => new(text);

        public override string ToString() => (Length ? "the length of " : string.Empty) + (Element >= 0 ? $"element {Element} of {Text}" : Text);
    }

    /// <summary>Reads little-endian fields from a stream, checking each against the bytes left before reading.</summary>
    private sealed class BoundedReader
    {
        private readonly Stream _stream;
        private readonly byte[] _scratch = new byte[8];
        private byte[] _text = new byte[256];

        public BoundedReader(string path, Stream stream)
        {
            Path = path;
            _stream = stream;
            Length = stream.Length;
            Position = stream.Position;
        }

        public string Path { get; }

        public long Length { get; }

        public long Position { get; private set; }

        public long Remaining => Length - Position;

        public uint ReadUInt32(Field what) => BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4, what));

        public ulong ReadUInt64(Field what) => BinaryPrimitives.ReadUInt64LittleEndian(ReadBytes(8, what));

        /// <summary>Up to 8 bytes into a scratch buffer (valid until the next read).</summary>
        public ReadOnlySpan<byte> ReadBytes(int count, Field what)
        {
            if (count <= _scratch.Length)
            {
                Span<byte> span = _scratch.AsSpan(0, count);
                ReadInto(span, what);
                return span;
            }

            byte[] bytes = new byte[count];
            ReadInto(bytes, what);
            return bytes;
        }

        public void ReadInto(Span<byte> destination, Field what)
        {
            Require(destination.Length, what);
            _stream.ReadExactly(destination);
            Position += destination.Length;
        }

        public string ReadString(Field what)
        {
            ulong length = ReadUInt64(what with { Length = true });
            if (length > (ulong)Remaining)
            {
                throw Fail(Path, $"has {what} of {length} bytes but only {Remaining} bytes follow (at byte {Position})", Truncated);
            }

            if (length > MaxStringBytes)
            {
                throw Fail(Path, $"has {what} of {length} bytes, more than the {MaxStringBytes} a GGUF string may have here", Damaged);
            }

            if (length == 0)
            {
                return string.Empty;
            }

            // Decode through a reused buffer, so a string costs only itself.
            if (_text.Length < (int)length)
            {
                _text = new byte[Math.Max((int)length, Math.Min(2 * _text.Length, (int)MaxStringBytes))];
            }

            Span<byte> bytes = _text.AsSpan(0, (int)length);
            ReadInto(bytes, what);
            return Encoding.UTF8.GetString(bytes);
        }

        private void Require(long count, Field what)
        {
            if (count > Remaining)
            {
                throw Fail(Path, $"ends at byte {Length} inside {what} (at byte {Position}, {count} bytes needed)", Truncated);
            }
        }
    }
}
