// Safetensors reader/writer: round trips (values, shapes, metadata), the DSA checkpoint round trip (same logits), and
// crafted headers the reader must reject with ModelFormatException: offsets past the file, overlapping ranges, element
// count overflow, an unknown dtype, a header length larger than the file, a size that disagrees with the shape.
using System.Buffers.Binary;
using System.Text;
using Kiln.Models.Dsa;
using Kiln.Models.Formats;
using Xunit;

namespace Kiln.Models.Tests.Dsa;

public sealed class SafetensorsTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kiln-safetensors-").FullName;

    [Fact]
    public void RoundTrip_KeepsValuesShapesAndMetadata()
    {
        using Tensor a = Tensor.FromArray([1f, -2.5f, 3f, 4f, 5f, 6f], [2, 3]);
        using Tensor b = Tensor.FromArray([7, -8, 9], [3]);
        string path = Path.Combine(_directory, "a.safetensors");
        Safetensors.Write(path, [("a", a), ("b", b)], new Dictionary<string, string> { ["k"] = "v" });

        SafetensorsFile file = SafetensorsFile.Open(path);
        Assert.Equal("v", file.Metadata["k"]);
        using Tensor a2 = file.Load("a");
        using Tensor b2 = file.Load("b");
        Assert.Equal(a.ToArray(), a2.ToArray());
        Assert.Equal([2, 3], a2.Shape.ToArray());
        Assert.Equal(b.ToInt32Array(), b2.ToInt32Array());
    }

    [Fact]
    public void DsaCheckpoint_RoundTrip_GivesTheSameLogits()
    {
        DsaConfig config = DsaSessionTests.SmallConfig("FSFS", topK: 3);
        using DsaWeights weights = DsaWeights.CreateRandom(config, seed: 3);
        weights.SetIndexer(3, null);
        string path = Path.Combine(_directory, "m.safetensors");
        DsaCheckpoint.Save(weights, path);
        Assert.True(DsaCheckpoint.IsDsaCheckpoint(path));
        using DsaWeights loaded = DsaCheckpoint.Load(path);
        Assert.Equal(config.ToJson(), loaded.Config.ToJson());
        Assert.Null(loaded.Indexers[3]);

        int[] tokens = [1, 2, 3, 4, 5, 6, 7, 8];
        using DsaSession first = new(weights, new SessionOptions());
        using DsaSession second = new(loaded, new SessionOptions());
        Assert.Equal(first.Forward(tokens).ToArray(), second.Forward(tokens).ToArray());
    }

    [Theory]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, "outside")]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"u\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16, "overlapping")]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[2147483647,2147483647,4],\"data_offsets\":[0,8]}}", 8, "more elements")]
    [InlineData("{\"t\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "dtype I64")]
    [InlineData("{\"t\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "span 8 bytes")]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "span 8 bytes")]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,8]}}", 8, "dimension -1")]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside")]
    [InlineData("[1,2]", 0, "not a JSON object")]
    [InlineData("{\"t\":", 0, "not valid JSON")]
    public void CraftedHeaders_AreRejected(string header, int dataBytes, string expected)
    {
        string path = Path.Combine(_directory, "bad.safetensors");
        byte[] json = Encoding.UTF8.GetBytes(header);
        byte[] file = new byte[8 + json.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(file, (ulong)json.Length);
        json.CopyTo(file, 8);
        File.WriteAllBytes(path, file);

        ModelFormatException error = Assert.Throws<ModelFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(1000UL)]
    [InlineData(ulong.MaxValue)]
    public void HeaderLengthPastTheFile_IsRejectedBeforeAllocating(ulong declared)
    {
        string path = Path.Combine(_directory, "long.safetensors");
        byte[] file = new byte[8 + 16];
        BinaryPrimitives.WriteUInt64LittleEndian(file, declared);
        File.WriteAllBytes(path, file);
        Assert.Contains("header", Assert.Throws<ModelFormatException>(() => SafetensorsFile.Open(path)).Message, StringComparison.Ordinal);
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);
}
