// Bad checkpoint files: each must fail with a ModelFormatException whose one-line message names the file and the
// problem, before any allocation proportional to what the header claims.

using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class CheckpointValidationTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    // The stories260K header fields: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len.
    private static int[] StoriesFields => [64, 172, 5, 8, 4, 512, 512];

    [Fact]
    public void MissingFile_NamesThePath()
    {
        string path = _temp.File("absent.bin");

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, "does not exist");
        Assert.Equal(path, e.Path);
    }

    [Fact]
    public void Directory_IsRejected()
    {
        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(_temp.Path));

        AssertOneLine(e.Message, _temp.Path, "is a directory");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(27)]
    public void HeaderShorterThan28Bytes_IsTruncated(int length)
    {
        string path = _temp.File("short.bin");
        File.WriteAllBytes(path, new byte[length]);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, "shorter than the 28-byte");
    }

    [Fact]
    public void Version1HeaderCutShort_IsTruncated()
    {
        string path = _temp.File("v1-short.bin");
        File.WriteAllBytes(path, File.ReadAllBytes(TestData.StoriesModelV1).AsSpan(0, 100).ToArray());

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, "256-byte version-1 header");
    }

    [Theory]
    [InlineData(2, "version-2 (int8-quantized)")]
    [InlineData(7, "version 7")]
    public void Version1Magic_WithAnotherVersion_IsRejected(int version, string expected)
    {
        string path = _temp.File("v.bin");
        byte[] bytes = File.ReadAllBytes(TestData.StoriesModelV1);
        BitConverter.TryWriteBytes(bytes.AsSpan(4), version);
        File.WriteAllBytes(path, bytes);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, expected);
    }

    [Fact]
    public void Version1_SharedByteOtherThan0Or1_IsRejected()
    {
        string path = _temp.File("v1-shared.bin");
        byte[] bytes = File.ReadAllBytes(TestData.StoriesModelV1);
        bytes[36] = 7;
        File.WriteAllBytes(path, bytes);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, "shared_classifier byte 7");
    }

    [Theory]
    [InlineData(0, 0, "dim = 0")]
    [InlineData(0, -64, "dim = -64")]
    [InlineData(1, 0, "hidden_dim = 0")]
    [InlineData(2, -1, "n_layers = -1")]
    [InlineData(3, 0, "n_heads = 0")]
    [InlineData(4, 0, "n_kv_heads = 0")]
    [InlineData(5, 0, "vocab_size = 0")]
    [InlineData(6, -512, "seq_len = -512")]
    [InlineData(0, 1 << 30, "dim = 1073741824")]
    [InlineData(2, 100_000, "n_layers = 100000")]
    [InlineData(3, 128, "n_heads = 128")]
    [InlineData(4, 16, "n_kv_heads = 16")]
    [InlineData(5, int.MinValue, "vocab_size = -2147483648")]
    [InlineData(6, int.MaxValue, "seq_len = 2147483647")]
    public void HeaderFieldZeroNegativeOrAbsurd_IsNamed(int field, int value, string expected)
    {
        int[] fields = StoriesFields;
        fields[field] = value;
        string path = _temp.File("field.bin");
        CheckpointFiles.WriteLegacyHeader(path, fields, payloadBytes: 1024);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, expected);
    }

    [Theory]
    [InlineData(new[] { 64, 172, 5, 6, 6, 512, 512 }, "dim 64 not divisible by n_heads 6")]
    [InlineData(new[] { 64, 172, 5, 8, 3, 512, 512 }, "n_heads 8 not divisible by n_kv_heads 3")]
    [InlineData(new[] { 60, 172, 5, 4, 4, 512, 512 }, "odd head size 15")]
    [InlineData(new[] { 65536, 65536, 5, 8, 4, 512, 512 }, "more than 2147483647 elements")]
    public void InconsistentFields_AreExplained(int[] fields, string expected)
    {
        string path = _temp.File("inconsistent.bin");
        CheckpointFiles.WriteLegacyHeader(path, fields, payloadBytes: 1024);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, expected);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4096)]
    [InlineData(1_000_000)]
    public void TruncatedLegacyFile_SaysTruncated(int missing)
    {
        string path = _temp.File("cut.bin");
        byte[] bytes = File.ReadAllBytes(TestData.StoriesModel);
        File.WriteAllBytes(path, bytes.AsSpan(0, bytes.Length - missing).ToArray());

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, $"is {bytes.Length - missing} bytes");
        Assert.Contains("implies 1056540", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void TruncatedVersion1File_SaysTruncated()
    {
        string path = _temp.File("cut-v1.bin");
        byte[] bytes = File.ReadAllBytes(TestData.StoriesModelV1);
        File.WriteAllBytes(path, bytes.AsSpan(0, bytes.Length - 4).ToArray());

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, "version-1 header");
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void TrailingData_SaysExtraData()
    {
        string path = _temp.File("long.bin");
        byte[] bytes = File.ReadAllBytes(TestData.StoriesModel);
        File.WriteAllBytes(path, [.. bytes, 0, 0, 0, 0]);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, "extra data");
    }

    [Fact]
    public void LegacyWithNegativeVocab_WithoutTheClassifier_IsTruncated()
    {
        // A negative vocab_size promises a classifier at the end; the stories260K body has none.
        string path = _temp.File("negative-vocab.bin");
        byte[] bytes = File.ReadAllBytes(TestData.StoriesModel);
        BitConverter.TryWriteBytes(bytes.AsSpan(20), -512);
        File.WriteAllBytes(path, bytes);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        AssertOneLine(e.Message, path, "separate classifier");
    }

    [Theory]
    [InlineData(new[] { 8192, 28672, 80, 64, 8, 128256, 8192 })] // a 70B-class header (~280 GB) on a 1 KiB file
    [InlineData(new[] { 4096, 65536, 4, 32, 32, 32000, 4096 })] // ~4.5 GB: would fit in memory if allocated first
    [InlineData(new[] { 64, 172, 5, 8, 4, 512, 16_000_000 })] // only the RoPE tables (~512 MB) are absurd
    public void LyingHeader_FailsWithoutAllocating(int[] fields)
    {
        string path = _temp.File("lying.bin");
        CheckpointFiles.WriteLegacyHeader(path, fields, payloadBytes: 1024);
        long managedBefore = GC.GetAllocatedBytesForCurrentThread();
        long residentBefore = Environment.WorkingSet;

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));

        // Tensors live in native memory, so the resident set is checked as well as managed allocations.
        long managed = GC.GetAllocatedBytesForCurrentThread() - managedBefore;
        long resident = Environment.WorkingSet - residentBefore;
        AssertOneLine(e.Message, path, "is 1052 bytes but its legacy header");
        Assert.True(managed < 64L << 20, $"{managed} managed bytes allocated");
        Assert.True(resident < 512L << 20, $"the resident set grew by {resident} bytes");
    }

    [Fact]
    public void ReadHeader_GivesTheSameErrorAsLoad()
    {
        string path = _temp.File("cut.bin");
        File.WriteAllBytes(path, File.ReadAllBytes(TestData.StoriesModel).AsSpan(0, 5000).ToArray());

        ModelFormatException load = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.Load(path));
        ModelFormatException header = Assert.Throws<ModelFormatException>(() => Llama2cCheckpoint.ReadHeader(path));

        Assert.Equal(load.Message, header.Message);
    }

    [Fact]
    public void Allocate_RejectsAnInvalidConfig()
    {
        LlamaConfig config = CheckpointTests.SmallConfig() with { HeadDim = 3 };

        ArgumentException e = Assert.Throws<ArgumentException>(() => LlamaWeights.Allocate(config));

        Assert.Contains("head_dim 3 is odd", e.Message);
    }

    /// <summary>Asserts a single line that names the file and contains the expected problem.</summary>
    internal static void AssertOneLine(string message, string path, string expected)
    {
        Assert.DoesNotContain('\n', message);
        Assert.DoesNotContain('\r', message);
        Assert.Contains(path, message);
        Assert.Contains(expected, message);
    }
}
