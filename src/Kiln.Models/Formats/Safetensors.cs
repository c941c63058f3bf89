// The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the
// tensor data. The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to
// the start of the data, end exclusive) and may hold "__metadata__", a map of strings to strings.
//
// Reading trusts nothing: the header length must fit the file and a fixed ceiling (100 MiB) before it is read; every
// dtype must be one Kiln knows (F32, F16, BF16, I32, F64); every shape dimension non-negative with an element count that
// neither overflows nor exceeds a tensor's limit; every byte range must equal count × element size, lie inside the data
// and not overlap another. No allocation depends on a size before that size has been checked against the file.
// Kiln computes in float32 and has no float64 tensors: an F64 entry loads as float32 (narrowed, round to nearest),
// LoadFloat32 widens F16/BF16 (and narrows F64) to float32, and ReadDoubles reads any float entry exactly as float64
// (for reference data such as expected outputs).
// Writing lays tensors out in the order given, contiguous, with the header padded by spaces to a multiple of 8 bytes;
// float64 arrays can be written next to the tensors.
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Kiln.Devices;

namespace Kiln.Models.Formats;

/// <summary>One tensor's entry in a safetensors header.</summary>
/// <param name="Name">The tensor name.</param>
/// <param name="DType">Its dtype.</param>
/// <param name="Shape">Its shape (outermost first).</param>
/// <param name="Offset">The byte offset of its data from the start of the file.</param>
/// <param name="Length">The byte length of its data in the file.</param>
/// <remarks>An F64 entry has <see cref="DType"/> float32, the dtype <see cref="SafetensorsFile.Load"/> gives it, and
/// <see cref="FileDType"/> "F64".</remarks>
public sealed record SafetensorsEntry(string Name, DType DType, int[] Shape, long Offset, long Length)
{
    /// <summary>The dtype as the file names it: F32, F16, BF16, I32 or F64.</summary>
    public string FileDType { get; init; } = "F32";

    /// <summary>Whether the file stores the values as float64.</summary>
    public bool IsFloat64 => FileDType == "F64";

    /// <summary>Whether the values are floating point (F32, F16, BF16 or F64).</summary>
    public bool IsFloat => FileDType is "F32" or "F16" or "BF16" or "F64";
}

/// <summary>A validated safetensors file: its metadata and tensor entries; tensors are read on demand.</summary>
public sealed unsafe class SafetensorsFile
{
    /// <summary>The largest header accepted (bytes of JSON).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    private readonly Dictionary<string, SafetensorsEntry> _entries;

    private SafetensorsFile(string path, Dictionary<string, string> metadata, Dictionary<string, SafetensorsEntry> entries)
    {
        Path = path;
        Metadata = metadata;
        _entries = entries;
    }

    /// <summary>The file read.</summary>
    public string Path { get; }

    /// <summary>The <c>__metadata__</c> strings (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The tensor entries by name.</summary>
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries => _entries;

    /// <summary>Reads and validates the header of <paramref name="path"/>.</summary>
    /// <exception cref="ModelFormatException">The file is missing, truncated, or its header is malformed or lies.</exception>
    public static SafetensorsFile Open(string path)
    {
        try
        {
            using FileStream stream = new(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            return Read(path, stream);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"{path}: cannot read the safetensors file ({e.Message}); check the path.", e);
        }
    }

    /// <summary>Reads tensor <paramref name="name"/> into a new tensor on <paramref name="device"/> (cpu when null).</summary>
    /// <exception cref="ModelFormatException">No such tensor, or the file changed since it was opened.</exception>
    public Tensor Load(string name, Device? device = null)
    {
        if (!_entries.TryGetValue(name, out SafetensorsEntry? entry))
        {
            throw new ModelFormatException(Path, $"{Path}: has no tensor \"{name}\"; the file holds {_entries.Count} others (kiln info lists them).");
        }

        // Float64 data is narrowed to a float32 tensor.
        if (entry.IsFloat64)
        {
            return LoadFloat32(name, device);
        }

        // Read into a CPU tensor, then move it when another device was asked for.
        Tensor tensor = Tensor.Empty(entry.Shape, entry.DType);
        try
        {
            using FileStream stream = new(Path, FileMode.Open, FileAccess.Read, FileShare.Read);
            stream.Position = entry.Offset;
            ReadBytes(stream, tensor);
            if (!BitConverter.IsLittleEndian)
            {
                throw new PlatformNotSupportedException("safetensors data is little-endian; this machine is not.");
            }

            if (device is null || device is CpuDevice)
            {
                return tensor;
            }

            using (tensor)
            {
                return tensor.To(device);
            }
        }
        catch (Exception e) when (e is IOException or EndOfStreamException)
        {
            tensor.Dispose();
            throw new ModelFormatException(Path, $"{Path}: tensor \"{name}\" could not be read ({e.Message}); the file may have changed, re-save it.", e);
        }
    }

    /// <summary>
    /// Reads float tensor <paramref name="name"/> (F32, F16, BF16 or F64) into a new float32 tensor on
    /// <paramref name="device"/> (cpu when null): 16-bit values are widened exactly, float64 values rounded to nearest.
    /// </summary>
    /// <exception cref="ModelFormatException">No such tensor, it is not floating point, or the file changed.</exception>
    public Tensor LoadFloat32(string name, Device? device = null)
    {
        SafetensorsEntry entry = FloatEntry(name);
        if (!entry.IsFloat64)
        {
            Tensor loaded = Load(name);
            if (loaded.DType == DType.Float32 && (device is null || device is CpuDevice))
            {
                return loaded;
            }

            // Widen 16-bit values on the host, then move.
            using (loaded)
            {
                float[] values = loaded.ToArray();
                return Tensor.FromArray(values, entry.Shape, device ?? CpuDevice.Default);
            }
        }

        double[] doubles = ReadDoubles(name);
        float[] narrowed = new float[doubles.Length];
        for (int i = 0; i < doubles.Length; i++)
        {
            narrowed[i] = (float)doubles[i];
        }

        return Tensor.FromArray(narrowed, entry.Shape, device ?? CpuDevice.Default);
    }

    /// <summary>
    /// Reads tensor <paramref name="name"/> into <paramref name="destination"/>, a contiguous CPU tensor with the same
    /// element count: the bytes as stored when the dtypes match, else (a float32 destination) the values widened from
    /// F16/BF16 or narrowed from F64.
    /// </summary>
    /// <exception cref="ModelFormatException">No such tensor, a different element count, a dtype that cannot be
    /// converted to the destination's, or the file changed.</exception>
    public void ReadInto(string name, Tensor destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (!_entries.TryGetValue(name, out SafetensorsEntry? entry))
        {
            throw new ModelFormatException(Path, $"{Path}: has no tensor \"{name}\"; the file holds {_entries.Count} others (kiln info lists them).");
        }

        long count = entry.Shape.Aggregate(1L, static (n, d) => n * d);
        if (count != destination.Length || destination.Device is not CpuDevice)
        {
            throw new ModelFormatException(Path, $"{Path}: tensor \"{name}\" has {count} elements but the destination {destination} has {destination.Length}; pass a CPU tensor of its shape.");
        }

        // The stored dtype: copy the bytes straight in.
        if (!entry.IsFloat64 && entry.DType == destination.DType)
        {
            try
            {
                using FileStream stream = new(Path, FileMode.Open, FileAccess.Read, FileShare.Read);
                stream.Position = entry.Offset;
                ReadBytes(stream, destination);
                return;
            }
            catch (Exception e) when (e is IOException or EndOfStreamException)
            {
                throw new ModelFormatException(Path, $"{Path}: tensor \"{name}\" could not be read ({e.Message}); the file may have changed, re-save it.", e);
            }
        }

        // Another float dtype into float32: convert through the float32 reader.
        if (destination.DType != DType.Float32 || !entry.IsFloat)
        {
            throw new ModelFormatException(Path, $"{Path}: tensor \"{name}\" is {entry.FileDType} and cannot be read into a {destination.DType.Name()} tensor; convert the file to that dtype.");
        }

        using Tensor widened = LoadFloat32(name);
        destination.CopyFrom(widened.AsSpan());
    }

    /// <summary>Reads float tensor <paramref name="name"/> (F32, F16, BF16 or F64) exactly as float64 values, row-major.</summary>
    /// <exception cref="ModelFormatException">No such tensor, it is not floating point, or the file changed.</exception>
    public double[] ReadDoubles(string name)
    {
        SafetensorsEntry entry = FloatEntry(name);
        if (!entry.IsFloat64)
        {
            using Tensor loaded = Load(name);
            float[] values = loaded.ToArray();
            double[] widened = new double[values.Length];
            for (int i = 0; i < values.Length; i++)
            {
                widened[i] = values[i];
            }

            return widened;
        }

        double[] result = new double[entry.Length / sizeof(double)];
        try
        {
            using FileStream stream = new(Path, FileMode.Open, FileAccess.Read, FileShare.Read);
            stream.Position = entry.Offset;
            stream.ReadExactly(System.Runtime.InteropServices.MemoryMarshal.AsBytes(result.AsSpan()));
            return result;
        }
        catch (Exception e) when (e is IOException or EndOfStreamException)
        {
            throw new ModelFormatException(Path, $"{Path}: tensor \"{name}\" could not be read ({e.Message}); the file may have changed, re-save it.", e);
        }
    }

    private SafetensorsEntry FloatEntry(string name)
    {
        if (!_entries.TryGetValue(name, out SafetensorsEntry? entry))
        {
            throw new ModelFormatException(Path, $"{Path}: has no tensor \"{name}\"; the file holds {_entries.Count} others (kiln info lists them).");
        }

        if (!entry.IsFloat)
        {
            throw new ModelFormatException(Path, $"{Path}: tensor \"{name}\" is {entry.FileDType}; a float tensor (F32, F16, BF16 or F64) is needed.");
        }

        return entry;
    }

    /// <summary>Reads the header from <paramref name="stream"/> (positioned at the start) and validates every entry.</summary>
    internal static SafetensorsFile Read(string path, Stream stream)
    {
        // The header length: 8 bytes, then it must fit both the file and the ceiling.
        long fileLength = stream.Length;
        if (fileLength < 8)
        {
            throw Bad(path, $"is {fileLength} bytes, shorter than the 8-byte header length");
        }

        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)(fileLength - 8) || headerLength > MaxHeaderBytes)
        {
            throw Bad(path, $"declares a {headerLength}-byte header but the file has {fileLength - 8} bytes after the length "
                + $"(and headers are limited to {MaxHeaderBytes} bytes)");
        }

        byte[] header = new byte[(int)headerLength];
        stream.ReadExactly(header);
        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;

        // Parse the JSON and check each entry.
        Dictionary<string, string> metadata = new(StringComparer.Ordinal);
        Dictionary<string, SafetensorsEntry> entries = new(StringComparer.Ordinal);
        try
        {
            using JsonDocument document = JsonDocument.Parse(header);
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw Bad(path, "has a header that is not a JSON object");
            }

            foreach (JsonProperty property in document.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    ReadMetadata(path, property.Value, metadata);
                    continue;
                }

                SafetensorsEntry entry = ReadEntry(path, property, dataStart, dataLength);
                if (!entries.TryAdd(entry.Name, entry))
                {
                    throw Bad(path, $"names tensor \"{entry.Name}\" twice");
                }
            }
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, $"{path}: the safetensors header is not valid JSON ({e.Message}); the file is damaged or not safetensors.", e);
        }

        // No two byte ranges may overlap.
        SafetensorsEntry[] sorted = entries.Values.Where(static e => e.Length > 0).OrderBy(static e => e.Offset).ToArray();
        for (int i = 1; i < sorted.Length; i++)
        {
            if (sorted[i].Offset < sorted[i - 1].Offset + sorted[i - 1].Length)
            {
                throw Bad(path, $"has overlapping data for tensors \"{sorted[i - 1].Name}\" and \"{sorted[i].Name}\"");
            }
        }

        return new SafetensorsFile(path, metadata, entries);
    }

    private static void ReadMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw Bad(path, "has a __metadata__ that is not an object of strings");
        }

        foreach (JsonProperty item in value.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
            {
                throw Bad(path, $"has __metadata__ entry \"{item.Name}\" that is not a string");
            }

            metadata[item.Name] = item.Value.GetString()!;
        }
    }

    private static SafetensorsEntry ReadEntry(string path, JsonProperty property, long dataStart, long dataLength)
    {
        string name = property.Name;
        JsonElement value = property.Value;
        if (value.ValueKind != JsonValueKind.Object
            || !value.TryGetProperty("dtype", out JsonElement dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String
            || !value.TryGetProperty("shape", out JsonElement shapeElement) || shapeElement.ValueKind != JsonValueKind.Array
            || !value.TryGetProperty("data_offsets", out JsonElement offsetsElement) || offsetsElement.ValueKind != JsonValueKind.Array
            || offsetsElement.GetArrayLength() != 2)
        {
            throw Bad(path, $"has tensor \"{name}\" without a string dtype, a shape array and two data_offsets");
        }

        // The dtype, then the shape with an overflow-checked element count.
        string fileDType = dtypeElement.GetString()!;
        (DType dtype, int elementSize) = fileDType switch
        {
            "F32" => (DType.Float32, 4),
            "F16" => (DType.Float16, 2),
            "BF16" => (DType.BFloat16, 2),
            "I32" => (DType.Int32, 4),
            "F64" => (DType.Float32, 8),
            _ => throw Bad(path, $"has tensor \"{name}\" of dtype {fileDType}; Kiln reads F32, F16, BF16, I32 and F64"),
        };
        if (shapeElement.GetArrayLength() > 8)
        {
            throw Bad(path, $"has tensor \"{name}\" with {shapeElement.GetArrayLength()} dimensions; at most 8 are supported");
        }

        int[] shape = new int[shapeElement.GetArrayLength()];
        long count = 1;
        int index = 0;
        foreach (JsonElement dim in shapeElement.EnumerateArray())
        {
            if (!dim.TryGetInt64(out long size) || size < 0 || size > int.MaxValue)
            {
                throw Bad(path, $"has tensor \"{name}\" with shape dimension {dim.GetRawText()}; dimensions are 0..{int.MaxValue}");
            }

            shape[index++] = (int)size;
            count = size == 0 ? 0 : count > Tensor.MaxElements / size ? long.MaxValue : count * size;
        }

        if (count > Tensor.MaxElements)
        {
            throw Bad(path, $"has tensor \"{name}\" with more elements than a tensor holds ({Tensor.MaxElements})");
        }

        // The byte range: begin ≤ end ≤ data length, and end - begin = count × element size.
        long[] offsets = new long[2];
        index = 0;
        foreach (JsonElement offset in offsetsElement.EnumerateArray())
        {
            if (!offset.TryGetInt64(out offsets[index++]) || offsets[index - 1] < 0)
            {
                throw Bad(path, $"has tensor \"{name}\" with data offset {offset.GetRawText()}; offsets are non-negative integers");
            }
        }

        if (offsets[0] > offsets[1] || offsets[1] > dataLength)
        {
            throw Bad(path, $"has tensor \"{name}\" with data [{offsets[0]}, {offsets[1]}) outside the {dataLength} data bytes");
        }

        long bytes = count * elementSize;
        if (offsets[1] - offsets[0] != bytes)
        {
            throw Bad(path, $"has tensor \"{name}\" of {Tensor.FormatShape(shape)} {dtypeElement.GetString()} ({bytes} bytes) "
                + $"but data_offsets span {offsets[1] - offsets[0]} bytes");
        }

        return new SafetensorsEntry(name, dtype, shape, dataStart + offsets[0], bytes) { FileDType = fileDType };
    }

    // Reads a contiguous CPU tensor's bytes in pieces of at most 1 GiB (a span holds fewer than 2^31 bytes).
    private static void ReadBytes(Stream stream, Tensor tensor)
    {
        byte* data = (byte*)tensor.DataPointer;
        long total = tensor.Length * tensor.DType.SizeOf();
        for (long done = 0; done < total; done += 1 << 30)
        {
            stream.ReadExactly(new Span<byte>(data + done, (int)Math.Min(1L << 30, total - done)));
        }
    }

    private static ModelFormatException Bad(string path, string what) =>
        new(path, $"{path}: the safetensors header {what}; the file is damaged or was not written as safetensors.");
}

/// <summary>Writes safetensors files.</summary>
public static unsafe class Safetensors
{
    /// <summary>
    /// Writes <paramref name="tensors"/> (any device; each copied to the host) in the order given, with
    /// <paramref name="metadata"/> as <c>__metadata__</c>.
    /// </summary>
    /// <exception cref="ArgumentException">Two tensors share a name, or a name is <c>__metadata__</c>.</exception>
    public static void Write(string path, IEnumerable<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null) =>
        Write(path, tensors, [], metadata);

    /// <summary>
    /// Writes <paramref name="tensors"/> (any device; each copied to the host), then the float64 arrays
    /// <paramref name="float64"/> (dtype F64, row-major values of the given shape), with <paramref name="metadata"/>
    /// as <c>__metadata__</c>.
    /// </summary>
    /// <exception cref="ArgumentException">Two entries share a name, a name is <c>__metadata__</c>, or a float64 array's
    /// length is not its shape's element count.</exception>
    public static void Write(
        string path,
        IEnumerable<(string Name, Tensor Tensor)> tensors,
        IEnumerable<(string Name, int[] Shape, double[] Values)> float64,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        ArgumentNullException.ThrowIfNull(float64);
        List<(string Name, Tensor Tensor)> list = tensors.ToList();
        List<(string Name, int[] Shape, double[] Values)> doubles = float64.ToList();
        List<string> names = [.. list.Select(static t => t.Name), .. doubles.Select(static d => d.Name)];
        if (names.Distinct(StringComparer.Ordinal).Count() != names.Count || names.Contains("__metadata__"))
        {
            throw new ArgumentException("Safetensors.Write: tensor names must be distinct and not \"__metadata__\".", nameof(tensors));
        }

        foreach ((string name, int[] shape, double[] values) in doubles)
        {
            if (shape.Aggregate(1L, static (n, d) => n * d) != values.Length)
            {
                throw new ArgumentException(
                    $"Safetensors.Write: float64 entry \"{name}\" has {values.Length} values but shape {Tensor.FormatShape(shape)}; pass as many values as the shape holds.",
                    nameof(float64));
            }
        }

        // The header: metadata first, then each entry with its running offsets.
        using MemoryStream headerBuffer = new();
        using (Utf8JsonWriter writer = new(headerBuffer))
        {
            writer.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                writer.WriteStartObject("__metadata__");
                foreach ((string key, string value) in metadata)
                {
                    writer.WriteString(key, value);
                }

                writer.WriteEndObject();
            }

            long offset = 0;
            foreach ((string name, Tensor tensor) in list)
            {
                string dtype = tensor.DType switch
                {
                    DType.Float32 => "F32",
                    DType.Float16 => "F16",
                    DType.BFloat16 => "BF16",
                    _ => "I32",
                };
                offset = WriteEntry(writer, name, dtype, tensor.Shape, offset, tensor.Length * tensor.DType.SizeOf());
            }

            foreach ((string name, int[] shape, double[] values) in doubles)
            {
                offset = WriteEntry(writer, name, "F64", shape, offset, values.LongLength * sizeof(double));
            }

            writer.WriteEndObject();
        }

        // Pad the header with spaces to a multiple of 8, then the length, the header and the data.
        byte[] header = headerBuffer.ToArray();
        int padded = (header.Length + 7) / 8 * 8;
        using FileStream stream = File.Create(path);
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
        stream.Write(length);
        stream.Write(header);
        for (int i = header.Length; i < padded; i++)
        {
            stream.WriteByte((byte)' ');
        }

        foreach ((_, Tensor tensor) in list)
        {
            if (tensor.Device is CpuDevice && tensor.IsContiguous)
            {
                WriteBytes(stream, tensor);
            }
            else
            {
                using Tensor host = tensor.To(CpuDevice.Default);
                WriteBytes(stream, host);
            }
        }

        foreach ((_, _, double[] values) in doubles)
        {
            stream.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
        }
    }

    // One header entry: {"dtype", "shape", "data_offsets"}; returns the offset after it.
    private static long WriteEntry(Utf8JsonWriter writer, string name, string dtype, ReadOnlySpan<int> shape, long offset, long bytes)
    {
        writer.WriteStartObject(name);
        writer.WriteString("dtype", dtype);
        writer.WriteStartArray("shape");
        foreach (int dim in shape)
        {
            writer.WriteNumberValue(dim);
        }

        writer.WriteEndArray();
        writer.WriteStartArray("data_offsets");
        writer.WriteNumberValue(offset);
        writer.WriteNumberValue(offset + bytes);
        writer.WriteEndArray();
        writer.WriteEndObject();
        return offset + bytes;
    }

    // Writes a contiguous CPU tensor's bytes in pieces of at most 1 GiB.
    private static void WriteBytes(Stream stream, Tensor tensor)
    {
        byte* data = (byte*)tensor.DataPointer;
        long total = tensor.Length * tensor.DType.SizeOf();
        for (long done = 0; done < total; done += 1 << 30)
        {
            stream.Write(new ReadOnlySpan<byte>(data + done, (int)Math.Min(1L << 30, total - done)));
        }
    }

    /// <summary>The UTF-8 text of a header, for tests that craft files.</summary>
    internal static byte[] Utf8(string text) => Encoding.UTF8.GetBytes(text);
}
