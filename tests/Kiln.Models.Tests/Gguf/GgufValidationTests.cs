// Bad GGUF input: every cut of a small valid file, and crafted headers that lie (a tensor outside the file, overlapping
// tensors, unknown types, a string longer than the file, counts of 2^63, a zero or odd alignment, dims whose product
// overflows, ...). Each must fail with a one-line ModelFormatException that names the file and the field, allocating
// no more than a few KiB of managed memory, without reading past the end or hanging.

using System.Buffers.Binary;
using System.Text;
using Kiln.Models.Formats;
using Xunit;

namespace Kiln.Models.Tests.Gguf;

public sealed class GgufValidationTests
{
    private const string Name = "bad.gguf";

    // A crafted file must fail within this many managed bytes (the reader's own small buffers and the exception).
    private const long SmallAllocation = 64 << 10;

    [Fact]
    public void EveryCut_OfASmallFile_FailsCleanly_OrReadsTheSameFile()
    {
        // A file with metadata of several types and two tensors; the data of the last ends at `end`.
        GgufWriter writer = new();
        writer.Add("general.architecture", GgufValue.String("llama"));
        writer.Add("n", GgufValue.UInt32(7));
        writer.Add("words", GgufValue.Array(["a", "▁bc", ""]));
        writer.Add("nested", GgufValue.Array(GgufValueType.Array, new[] { GgufValue.Array([1f, 2f]), GgufValue.Array([3]) }));
        writer.AddRaw("f", GgufTensorType.F32, [3, 2], new byte[24]);
        writer.AddRaw("q", GgufTensorType.Q8_0, [32, 2], Enumerable.Range(0, 68).Select(static i => (byte)i).ToArray());
        byte[] whole = GgufRoundTripTests.Write(writer);
        GgufFile reference = GgufFile.Parse(Name, whole);
        GgufTensorInfo last = reference.Tensors[^1];
        long end = last.FileOffset + last.ByteSize;

        for (int cut = 0; cut < whole.Length; cut++)
        {
            byte[] bytes = whole[..cut];
            if (cut < end)
            {
                // Before the end of the last tensor's data every cut is an error, cheaply found.
                AssertFails(bytes, string.Empty);
            }
            else
            {
                // Only the trailing padding is missing: the same file.
                GgufFile file = GgufFile.Parse(Name, bytes);
                Assert.Equal(reference.Keys, file.Keys);
                Assert.Equal(reference.Tensors, file.Tensors, static (a, b) => a.Name == b.Name && a.FileOffset == b.FileOffset && a.ByteSize == b.ByteSize);
                Assert.Equal(whole.AsSpan((int)last.FileOffset, (int)last.ByteSize).ToArray(), file.ReadTensorBytes("q"));
            }
        }
    }

    [Fact]
    public void CutsOfTheLlamaVocabulary_FailCleanly()
    {
        byte[] whole = File.ReadAllBytes(VocabPath);
        foreach (int cut in new[] { 3, 23, 24, 100, 1000, 50_000, 400_000, whole.Length - 1 })
        {
            // The strings read before the cut are real: allow what they cost (about 16 bytes per byte of file at most).
            AssertFails(whole[..cut], cut < 4 ? "GGUF magic" : "truncated", bytesPerFileByte: 16);
        }
    }

    [Fact]
    public void TensorOutsideTheFile_IsNamed()
    {
        byte[] file = new RawGguf().Header(tensors: 1, kvs: 0).Tensor("w", GgufTensorType.F32, [4], offset: 0).Pad().Zeros(8).ToArray();
        AssertFails(file, "has tensor 'w' (F32 [4], 16 bytes) at data offset 0, past the end of the file (8 data bytes");

        byte[] far = new RawGguf().Header(tensors: 1, kvs: 0).Tensor("w", GgufTensorType.F32, [4], offset: 1UL << 63).Pad().Zeros(64).ToArray();
        AssertFails(far, "at data offset 9223372036854775808, past the end of the file");
    }

    [Fact]
    public void OverlappingTensors_AreNamed()
    {
        byte[] file = new RawGguf().Header(tensors: 2, kvs: 0)
            .Tensor("a", GgufTensorType.F32, [16], offset: 0)
            .Tensor("b", GgufTensorType.F32, [8], offset: 32)
            .Pad().Zeros(96).ToArray();

        AssertFails(file, "has overlapping tensors 'a' (bytes 0..64) and 'b' (from 32)");
    }

    [Theory]
    [InlineData(4u, "unknown ggml type 4")]
    [InlineData(99u, "unknown ggml type 99")]
    [InlineData(31u, "unknown ggml type 31")]
    public void UnknownTensorType_IsNamed(uint type, string expected)
    {
        byte[] file = new RawGguf().Header(tensors: 1, kvs: 0).Tensor("w", (GgufTensorType)type, [32], offset: 0).Pad().Zeros(64).ToArray();

        AssertFails(file, expected);
    }

    [Fact]
    public void QuantizedTypeWithARaggedRow_IsNamed()
    {
        byte[] file = new RawGguf().Header(tensors: 1, kvs: 0).Tensor("w", GgufTensorType.Q8_0, [33], offset: 0).Pad().Zeros(64).ToArray();

        AssertFails(file, "innermost dimension 33 is not a multiple of its block of 32");
    }

    [Theory]
    [InlineData(1000UL)]
    [InlineData(ulong.MaxValue)]
    [InlineData(1UL << 63)]
    public void StringLongerThanTheFile_IsNamed(ulong declared)
    {
        byte[] value = new RawGguf().Header(tensors: 0, kvs: 1).String("a").U32((uint)GgufValueType.String).U64(declared).Zeros(40).ToArray();
        AssertFails(value, $"the value of metadata key 'a' of {declared} bytes but only 40 bytes follow");

        byte[] key = new RawGguf().Header(tensors: 0, kvs: 1).U64(declared).Zeros(40).ToArray();
        AssertFails(key, $"the key of metadata entry 0 of {declared} bytes but only 40 bytes follow");
    }

    [Theory]
    [InlineData(GgufValueType.UInt8)]
    [InlineData(GgufValueType.String)]
    [InlineData(GgufValueType.Array)]
    [InlineData(GgufValueType.Float64)]
    public void ArrayCountOf2To63_IsNamed(GgufValueType element)
    {
        byte[] file = new RawGguf().Header(tensors: 0, kvs: 1).String("a").U32((uint)GgufValueType.Array).U32((uint)element).U64(1UL << 63).Zeros(100).ToArray();

        AssertFails(file, $"has array 'a' of 9223372036854775808 {element.Name()} elements but only 100 bytes follow");
    }

    [Fact]
    public void TensorCountOf2To63_IsNamed()
    {
        byte[] file = new RawGguf().Header(tensors: 1UL << 63, kvs: 0).Zeros(100).ToArray();

        AssertFails(file, "declares 9223372036854775808 tensors but only 100 bytes follow the header");
    }

    [Fact]
    public void MetadataCountOf2To63_IsNamed()
    {
        byte[] file = new RawGguf().Header(tensors: 0, kvs: 1UL << 63).Zeros(100).ToArray();

        AssertFails(file, "declares 9223372036854775808 metadata entries but only 100 bytes follow the header");
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(3u)]
    [InlineData(48u)]
    [InlineData(0x80000000u)]
    public void AlignmentZeroOrNotAPowerOfTwo_IsNamed(uint alignment)
    {
        byte[] file = new RawGguf().Header(tensors: 0, kvs: 1).String(GgufFile.AlignmentKey).U32((uint)GgufValueType.UInt32).U32(alignment).ToArray();

        AssertFails(file, $"has general.alignment = {alignment}; the alignment must be a power of two");
    }

    [Fact]
    public void AlignmentOfAnotherType_IsNamed()
    {
        byte[] file = new RawGguf().Header(tensors: 0, kvs: 1).String(GgufFile.AlignmentKey).U32((uint)GgufValueType.UInt64).U64(32).ToArray();

        AssertFails(file, "has general.alignment of type u64; it must be a u32");
    }

    [Theory]
    [InlineData(new ulong[] { 1UL << 32, 1UL << 32 }, "whose dimensions overflow a 64-bit element count (dimension 1 is 4294967296)")]
    [InlineData(new ulong[] { ulong.MaxValue }, "whose dimensions overflow a 64-bit element count (dimension 0 is 18446744073709551615)")]
    [InlineData(new ulong[] { 3, 1UL << 62 }, "whose dimensions overflow a 64-bit element count (dimension 1 is 4611686018427387904)")]
    public void DimsWhoseProductOverflows_AreNamed(ulong[] dims, string expected)
    {
        byte[] file = new RawGguf().Header(tensors: 1, kvs: 0).Tensor("w", GgufTensorType.F32, dims, offset: 0).Pad().Zeros(64).ToArray();

        AssertFails(file, expected);
    }

    [Fact]
    public void ByteSizeThatOverflows_IsNamed()
    {
        // 2^63 - 32 elements fit a long, but their (2^58 - 1) blocks × 34 bytes do not.
        byte[] file = new RawGguf().Header(tensors: 1, kvs: 0).Tensor("w", GgufTensorType.Q8_0, [(1UL << 63) - 32], offset: 0).Pad().Zeros(64).ToArray();

        AssertFails(file, "whose byte size overflows");
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(5u)]
    [InlineData(uint.MaxValue)]
    public void DimensionCountOutside1To4_IsNamed(uint rank)
    {
        byte[] file = new RawGguf().Header(tensors: 1, kvs: 0).String("w").U32(rank).Zeros(64).ToArray();

        AssertFails(file, $"has tensor 'w' with {rank} dimensions; GGUF tensors have 1 to 4");
    }

    [Fact]
    public void MisalignedTensorOffset_IsNamed()
    {
        byte[] file = new RawGguf().Header(tensors: 1, kvs: 0).Tensor("w", GgufTensorType.F32, [1], offset: 4).Pad().Zeros(64).ToArray();

        AssertFails(file, "has tensor 'w' at data offset 4, not a multiple of the alignment 32");
    }

    [Theory]
    [InlineData(new byte[] { 0x47, 0x47, 0x4D, 0x4C, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 })]
    [InlineData(new byte[] { 0x47, 0x47 })]
    [InlineData(new byte[0])]
    public void NotGguf_IsNamed(byte[] bytes)
    {
        AssertFails(bytes, "does not start with the GGUF magic");
    }

    [Theory]
    [InlineData(1u, "is GGUF version 1 (2023")]
    [InlineData(4u, "has GGUF version 4; Kiln reads versions 2 and 3")]
    [InlineData(0x03000000u, "a big-endian GGUF file")]
    public void UnsupportedVersion_IsNamed(uint version, string expected)
    {
        byte[] file = new RawGguf().Header(tensors: 0, kvs: 0, version: version).ToArray();

        AssertFails(file, expected);
    }

    [Fact]
    public void Version2_IsRead()
    {
        byte[] file = new RawGguf().Header(tensors: 0, kvs: 1, version: 2).String("k").U32((uint)GgufValueType.Int16).Bytes(0xFE, 0xFF).ToArray();

        GgufFile gguf = GgufFile.Parse(Name, file);

        Assert.Equal(2u, gguf.Version);
        Assert.Equal(-2, gguf.GetInteger("k"));
    }

    [Fact]
    public void DuplicateKeyOrTensor_IsNamed()
    {
        byte[] keys = new RawGguf().Header(tensors: 0, kvs: 2)
            .String("k").U32((uint)GgufValueType.UInt8).Bytes(1)
            .String("k").U32((uint)GgufValueType.UInt8).Bytes(2).ToArray();
        AssertFails(keys, "has metadata key 'k' twice");

        byte[] tensors = new RawGguf().Header(tensors: 2, kvs: 0)
            .Tensor("w", GgufTensorType.F32, [1], offset: 0)
            .Tensor("w", GgufTensorType.F32, [1], offset: 32).Pad().Zeros(64).ToArray();
        AssertFails(tensors, "has tensor 'w' twice");
    }

    [Fact]
    public void ArraysNestedTooDeep_AreNamed()
    {
        RawGguf raw = new RawGguf().Header(tensors: 0, kvs: 1).String("deep").U32((uint)GgufValueType.Array);
        for (int depth = 0; depth < 12; depth++)
        {
            raw.U32((uint)GgufValueType.Array).U64(1);
        }

        AssertFails(raw.Zeros(16).ToArray(), "has metadata key 'deep' with arrays nested more than 8 deep");
    }

    [Theory]
    [InlineData(13u, "of unknown value type 13")]
    [InlineData(0xFFFFFFFFu, "of unknown value type 4294967295")]
    public void UnknownValueType_IsNamed(uint type, string expected)
    {
        byte[] file = new RawGguf().Header(tensors: 0, kvs: 1).String("k").U32(type).Zeros(16).ToArray();

        AssertFails(file, expected);
    }

    [Fact]
    public void BoolOtherThan0Or1_IsNamed()
    {
        byte[] file = new RawGguf().Header(tensors: 0, kvs: 1).String("b").U32((uint)GgufValueType.Bool).Bytes(2).ToArray();

        AssertFails(file, "has metadata key 'b' with bool byte 2");
    }

    [Fact]
    public void MissingFileOrDirectory_IsNamed()
    {
        using TempDirectory temp = new();
        string missing = temp.File("absent.gguf");

        Assert.Contains("does not exist", Assert.Throws<ModelFormatException>(() => GgufFile.Open(missing)).Message);
        Assert.Contains("is a directory", Assert.Throws<ModelFormatException>(() => GgufFile.Open(temp.Path)).Message);
        Assert.False(GgufFile.IsGguf(missing));
    }

    [Fact]
    public void FileChangedAfterOpening_IsNamed()
    {
        using TempDirectory temp = new();
        string path = temp.File("m.gguf");
        GgufWriter writer = new();
        writer.AddRaw("w", GgufTensorType.F32, [4], new byte[16]);
        writer.Write(path);
        GgufFile file = GgufFile.Open(path);
        File.WriteAllBytes(path, File.ReadAllBytes(path)[..^20]);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => file.ReadTensorBytes("w"));

        Assert.Contains("the file changed, open it again", e.Message);
    }

    internal static string VocabPath => Path.Combine(TestData.Shared, "tokenizers", "llamacpp-vocab", "ggml-vocab-llama-spm.gguf");

    /// <summary>Asserts that parsing fails with one line naming the file and containing <paramref name="expected"/>.</summary>
    private static void AssertFails(byte[] bytes, string expected, int bytesPerFileByte = 3)
    {
        long allocated = Allocations.Measure(() =>
        {
            ModelFormatException e = Assert.Throws<ModelFormatException>(() => GgufFile.Parse(Name, bytes));
            Assert.StartsWith(Name + ": ", e.Message);
            Assert.Contains(expected, e.Message);
            Assert.DoesNotContain('\n', e.Message);
            Assert.EndsWith(".", e.Message);
        });
        Assert.True(allocated < SmallAllocation + ((long)bytesPerFileByte * bytes.Length), $"{allocated} bytes allocated for a {bytes.Length}-byte file");
    }

    /// <summary>Writes GGUF fields one by one, true or not.</summary>
    private sealed class RawGguf
    {
        private readonly MemoryStream _stream = new();

        public RawGguf Header(ulong tensors, ulong kvs, uint version = 3) => U32(GgufFile.Magic).U32(version).U64(tensors).U64(kvs);

        public RawGguf U32(uint value)
        {
            Span<byte> bytes = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(bytes, value);
            _stream.Write(bytes);
            return this;
        }

        public RawGguf U64(ulong value)
        {
            Span<byte> bytes = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(bytes, value);
            _stream.Write(bytes);
            return this;
        }

        public RawGguf String(string text)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(text);
            return U64((ulong)bytes.Length).Bytes(bytes);
        }

        public RawGguf Bytes(params byte[] bytes)
        {
            _stream.Write(bytes);
            return this;
        }

        public RawGguf Zeros(int count) => Bytes(new byte[count]);

        public RawGguf Tensor(string name, GgufTensorType type, ulong[] dims, ulong offset)
        {
            String(name).U32((uint)dims.Length);
            foreach (ulong dim in dims)
            {
                U64(dim);
            }

            return U32((uint)type).U64(offset);
        }

        /// <summary>Zero padding to the default alignment of 32.</summary>
        public RawGguf Pad() => Zeros((int)((32 - (_stream.Length % 32)) % 32));

        public byte[] ToArray() => _stream.ToArray();
    }
}
