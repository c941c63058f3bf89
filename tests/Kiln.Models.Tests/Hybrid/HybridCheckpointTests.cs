// Hybrid checkpoints: save and load give the same weights and the same logits; the documented names; damaged files
// (no metadata, an invalid config, a missing tensor, a misshapen or non-float tensor) give one-line errors that name
// the file and the problem.
using Kiln.Models.Formats;
using Kiln.Models.Hybrid;
using Xunit;

namespace Kiln.Models.Tests.Hybrid;

public sealed class HybridCheckpointTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kiln-hybrid-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Theory]
    [InlineData(1, true)]
    [InlineData(2, false)]
    public void SaveThenLoad_GivesTheSameModel(int rank, bool tied)
    {
        HybridConfig config = HybridCases.Small(rank) with { SharedClassifier = tied };
        config = config with { Mamba3 = config.Mamba3! with { IsOutProjNorm = true } };
        using HybridWeights weights = HybridWeights.CreateRandom(config, 8);
        string path = Path.Combine(_directory, "model.safetensors");
        weights.Save(path);
        Assert.True(HybridWeights.IsHybridCheckpoint(path));

        using HybridWeights loaded = HybridWeights.Load(path);
        Assert.Equal(config, loaded.Config);
        Assert.Equal(weights.Named().Select(static n => n.Name), loaded.Named().Select(static n => n.Name));
        foreach (((_, Tensor a), (_, Tensor b)) in weights.Named().Zip(loaded.Named()))
        {
            Assert.Equal(a.ToArray(), b.ToArray());
        }

        int[] tokens = HybridCases.Tokens(9, config.VocabSize, 8);
        using HybridSession first = new(weights, new SessionOptions());
        using HybridSession second = new(loaded, new SessionOptions());
        Assert.Equal(first.Forward(tokens).ToArray(), second.Forward(tokens).ToArray());
    }

    [Fact]
    public void Names_FollowTheDocumentedScheme()
    {
        using HybridWeights weights = new(HybridCases.Small(1) with { SharedClassifier = false });
        string[] names = weights.Named().Select(static n => n.Name).ToArray();
        Assert.Equal("tok_embeddings", names[0]);
        Assert.Contains("layers.0.mixer_norm", names);
        Assert.Contains("layers.0.mixer.in_proj.weight", names);
        Assert.Contains("layers.1.attention_norm", names);
        Assert.Contains("layers.1.wq", names);
        Assert.Contains("layers.4.w2", names);
        Assert.DoesNotContain("layers.1.mixer_norm", names);
        Assert.Equal(["norm", "output"], names[^2..]);
    }

    [Fact]
    public void PlainSafetensors_IsRefused()
    {
        string path = Path.Combine(_directory, "plain.safetensors");
        using Tensor t = Tensor.FromArray(new float[] { 1, 2 }, [2]);
        Safetensors.Write(path, [("x", t)]);
        Assert.False(HybridWeights.IsHybridCheckpoint(path));
        ModelFormatException e = Assert.Throws<ModelFormatException>(() => HybridWeights.Load(path));
        Assert.Contains("without the kiln-hybrid metadata", e.Message);
    }

    [Fact]
    public void InvalidConfig_IsRefused()
    {
        using HybridWeights weights = HybridWeights.CreateRandom(HybridCases.Small(1), 2);
        string path = Path.Combine(_directory, "bad-config.safetensors");
        string json = weights.Config.ToJson().Replace("\"MAMMA\"", "\"MAXMA\"", StringComparison.Ordinal);
        Safetensors.Write(path, weights.Named(), new Dictionary<string, string> { ["format"] = HybridWeights.Format, ["config"] = json });
        ModelFormatException e = Assert.Throws<ModelFormatException>(() => HybridWeights.Load(path));
        Assert.Contains("config in the metadata is invalid", e.Message);
        Assert.Contains("'X' at position 2", e.Message);
    }

    [Fact]
    public void ConfigLargerThanTheFile_IsRefusedBeforeAllocating()
    {
        // The metadata claims 40,000 layers; the file holds five.
        using HybridWeights weights = HybridWeights.CreateRandom(HybridCases.Small(1), 2);
        string path = Path.Combine(_directory, "lying.safetensors");
        string json = weights.Config.ToJson().Replace("\"n_layers\": 5", "\"n_layers\": 40000", StringComparison.Ordinal);
        Assert.Contains("40000", json);
        Safetensors.Write(path, weights.Named(), new Dictionary<string, string> { ["format"] = HybridWeights.Format, ["config"] = json });
        long before = GC.GetAllocatedBytesForCurrentThread();
        ModelFormatException e = Assert.Throws<ModelFormatException>(() => HybridWeights.Load(path));
        Assert.Contains("parameters but the file's tensors hold", e.Message);
        Assert.InRange(GC.GetAllocatedBytesForCurrentThread() - before, 0, 4 << 20);
    }

    [Theory]
    [InlineData("missing")]
    [InlineData("shape")]
    [InlineData("dtype")]
    public void DamagedTensor_IsRefused(string damage)
    {
        using HybridWeights weights = HybridWeights.CreateRandom(HybridCases.Small(1), 2);
        string victim = damage == "shape" ? "layers.2.mixer.out_proj.weight" : "layers.1.wk";
        using Tensor wrongShape = Tensor.Empty([3, 3]);
        using Tensor wrongType = Tensor.Empty([8, 8], DType.Int32);
        IEnumerable<(string, Tensor)> tensors = weights.Named()
            .Where(n => damage != "missing" || n.Name != victim)
            .Select(n => n.Name != victim ? n : (n.Name, damage == "shape" ? wrongShape : wrongType));
        string path = Path.Combine(_directory, $"{damage}.safetensors");
        Safetensors.Write(path, tensors, new Dictionary<string, string> { ["format"] = HybridWeights.Format, ["config"] = weights.Config.ToJson() });
        ModelFormatException e = Assert.Throws<ModelFormatException>(() => HybridWeights.Load(path));
        Assert.Contains(victim, e.Message);
        Assert.Contains(damage == "missing" ? "is missing" : "but the config needs", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
