// Loading real llama2.c checkpoints: configs, parameter counts, legacy and version-1 files giving identical
// weights, separate classifiers, other devices, and the config's JSON form.

using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class CheckpointTests
{
    [Fact]
    public void Stories260K_Legacy_HasTheDocumentedConfig()
    {
        LlamaWeights weights = TestData.Stories;
        LlamaConfig c = weights.Config;

        Assert.Equal((64, 172, 5, 8, 4, 512, 512, 8), (c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.VocabSize, c.SeqLen, c.HeadDim));
        Assert.Equal(RopeLayout.Adjacent, c.RopeLayout);
        Assert.Equal(1e-5f, c.NormEps);
        Assert.Equal(10000f, c.RopeTheta);
        Assert.True(c.SharedClassifier);
        Assert.Same(weights.TokenEmbedding, weights.Classifier);

        // 260,032 trained values (README), the RoPE tables excluded.
        Assert.Equal(260_032, weights.ParameterCount);
        Assert.Equal(260_032, weights.Tensors.Sum(t => t.Length));
        Assert.Equal([32, 64], weights.Layers[0].Wk.Shape.ToArray());
        Assert.Equal([64, 172], weights.Layers[4].W2.Shape.ToArray());
    }

    [Fact]
    public void Stories260K_ReadHeader_DetectsBothContainers()
    {
        Llama2cHeader legacy = Llama2cCheckpoint.ReadHeader(TestData.StoriesModel);
        Llama2cHeader v1 = Llama2cCheckpoint.ReadHeader(TestData.StoriesModelV1);

        Assert.Equal(Llama2cFormat.Legacy, legacy.Format);
        Assert.Equal(1_056_540, legacy.FileBytes);
        Assert.Equal(Llama2cFormat.Version1, v1.Format);
        Assert.Equal(1_040_384, v1.FileBytes);
        Assert.Equal(legacy.Config, v1.Config);
    }

    [Fact]
    public void Stories260K_LegacyAndVersion1_LoadIdenticalWeights()
    {
        using LlamaWeights v1 = Llama2cCheckpoint.Load(TestData.StoriesModelV1);
        LlamaWeights legacy = TestData.Stories;

        Tensor[] a = [.. legacy.Tensors];
        Tensor[] b = [.. v1.Tensors];
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++)
        {
            Assert.Equal(a[i].Shape.ToArray(), b[i].Shape.ToArray());
            Assert.True(a[i].AsSpan().SequenceEqual(b[i].AsSpan()), $"tensor {i} differs");
        }
    }

    [Fact]
    public void Writer_ReproducesTheRealFiles_ByteForByte()
    {
        // The test writers must produce the real layouts, or the crafted-file tests would prove nothing.
        using TempDirectory temp = new();
        CheckpointFiles.WriteVersion1(temp.File("v1.bin"), TestData.Stories);
        CheckpointFiles.WriteLegacy(temp.File("legacy.bin"), TestData.Stories);

        Assert.Equal(File.ReadAllBytes(TestData.StoriesModelV1), File.ReadAllBytes(temp.File("v1.bin")));
        byte[] real = File.ReadAllBytes(TestData.StoriesModel);
        byte[] written = File.ReadAllBytes(temp.File("legacy.bin"));
        Assert.Equal(real.Length, written.Length);

        // Equal except the RoPE tables, which the writer leaves zero and the reader skips.
        int ropeStart = real.Length - (512 * 8 * 4);
        Assert.True(real.AsSpan(0, ropeStart).SequenceEqual(written.AsSpan(0, ropeStart)));
    }

    [Fact]
    public void Aidreams260K_IsMultiHeadWithAShortContext()
    {
        LlamaConfig c = TestData.Aidreams.Config;

        Assert.Equal((64, 172, 4, 4, 4, 512, 128, 16), (c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.VocabSize, c.SeqLen, c.HeadDim));
        Assert.Equal(233_024 - (2 * 128 * 8), TestData.Aidreams.ParameterCount);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SeparateClassifier_RoundTripsInBothContainers(bool version1)
    {
        LlamaConfig config = SmallConfig() with { SharedClassifier = false };
        using LlamaWeights original = CheckpointFiles.RandomWeights(config, seed: 5);
        using TempDirectory temp = new();
        string path = temp.File("separate.bin");
        if (version1)
        {
            CheckpointFiles.WriteVersion1(path, original);
        }
        else
        {
            CheckpointFiles.WriteLegacy(path, original);
        }

        using LlamaWeights loaded = Llama2cCheckpoint.Load(path);

        Assert.False(loaded.Config.SharedClassifier);
        Assert.NotSame(loaded.TokenEmbedding, loaded.Classifier);
        Assert.Equal(config, loaded.Config);
        Assert.Equal(original.Tensors.Select(t => t.ToArray()), loaded.Tensors.Select(t => t.ToArray()));
        Assert.Equal(config.ParameterCount, loaded.Tensors.Sum(t => t.Length));
    }

    [Fact]
    public void Load_OnAnotherDevice_HoldsTheSameValues()
    {
        using IlgpuDevice device = IlgpuDevice.CreateCpuAccelerator();
        using LlamaWeights onDevice = Llama2cCheckpoint.Load(TestData.StoriesModel, device);

        Assert.Same(device, onDevice.Device);
        Assert.All(onDevice.Tensors, t => Assert.Same(device, t.Device));
        Assert.Equal(TestData.Stories.Tensors.Select(t => t.ToArray()), onDevice.Tensors.Select(t => t.ToArray()));
    }

    [Fact]
    public void Config_Json_RoundTripsWithSnakeCaseNames()
    {
        LlamaConfig config = TestData.Stories.Config with { RopeLayout = RopeLayout.HalfSplit, SharedClassifier = false };

        string json = config.ToJson();

        Assert.Contains("\"n_kv_heads\": 4", json);
        Assert.Contains("\"rope_layout\": \"half_split\"", json);
        Assert.Equal(config, LlamaConfig.FromJson(json));
    }

    [Fact]
    public void Config_FromJson_RejectsInconsistentSizes()
    {
        string json = TestData.Stories.Config.ToJson().Replace("\"n_kv_heads\": 4", "\"n_kv_heads\": 3");

        ArgumentException e = Assert.Throws<ArgumentException>(() => LlamaConfig.FromJson(json));
        Assert.Contains("n_kv_heads 3", e.Message);
    }

    /// <summary>A small GQA config for crafted files.</summary>
    internal static LlamaConfig SmallConfig() => new()
    {
        Dim = 16,
        HiddenDim = 24,
        Layers = 2,
        Heads = 4,
        KvHeads = 2,
        VocabSize = 32,
        SeqLen = 10,
        HeadDim = 4,
    };
}
