// Hugging Face Llama folders: stories260K (llama2.c, adjacent RoPE pairs) written as a folder (half-split order, one
// file or three shards with an index) loads back with the permuted rows and gives the llama2.c reference's greedy text
// and its logits, with the folder's own tokenizer.json; a written folder of a random grouped-query model round-trips bit for bit.

using Kiln.Kernels;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Kiln.Models.Tokenizers;
using Xunit;

namespace Kiln.Models.Tests.HuggingFace;

public sealed class HuggingFaceLlamaTests : IDisposable
{
    // Logits of the folder (half-split RoPE on permuted rows) against llama2.c's (adjacent RoPE): the same products
    // summed in another order, so equal up to float32 rounding (4e-6 measured at the first differing position).
    private const float LogitTolerance = 1e-4f;

    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Stories_AsFolder_GivesTheReferenceGreedyTextAndLogits(int shards)
    {
        string folder = _temp.File($"stories-{shards}");
        HuggingFaceLlama.Write(folder, TestData.Stories, shards, HuggingFaceTokenizer.ToJson(TestData.StoriesTok));

        HuggingFaceModel model = HuggingFaceLlama.Open(folder);
        using LlamaWeights weights = HuggingFaceLlama.Load(model);

        // The files: one model.safetensors, or the shards with their index (and never both).
        string[] expectedFiles = shards == 1
            ? [HuggingFaceLlama.SingleFile]
            : [.. Enumerable.Range(0, shards).Select(s => HuggingFaceLlama.ShardName(s, shards)), HuggingFaceLlama.IndexFile];
        Assert.Equal(expectedFiles.Order(), Directory.GetFiles(folder, "model*").Select(Path.GetFileName).Order());
        Assert.Equal(shards, model.Shards.Count);

        // The config is llama2.c's with half-split pairs; the query and key rows are permuted, the rest as stored.
        Assert.Equal(TestData.Stories.Config with { RopeLayout = RopeLayout.HalfSplit }, weights.Config);
        Assert.Equal(DType.Float32, weights.DType);
        LlamaConfig c = TestData.Stories.Config;
        for (int l = 0; l < c.Layers; l++)
        {
            LlamaLayerWeights original = TestData.Stories.Layers[l];
            LlamaLayerWeights loaded = weights.Layers[l];
            Assert.Equal(HalfSplitRows(original.Wq.ToArray(), c.Heads, c.HeadDim, c.Dim), loaded.Wq.ToArray());
            Assert.Equal(HalfSplitRows(original.Wk.ToArray(), c.KvHeads, c.HeadDim, c.Dim), loaded.Wk.ToArray());
            Assert.Equal(original.Wv.ToArray(), loaded.Wv.ToArray());
            Assert.Equal(original.W2.ToArray(), loaded.W2.ToArray());
        }

        Assert.Equal(TestData.Stories.TokenEmbedding.ToArray(), weights.TokenEmbedding.ToArray());

        // Greedy generation with the folder's own tokenizer.json reproduces llama2.c's reference run.
        HuggingFaceTokenizer tokenizer = HuggingFaceTokenizer.Load(Path.Combine(folder, HuggingFaceTokenizer.FileName));
        using (IInferenceSession session = InferenceSessions.Default(weights, new SessionOptions { ContextLength = 64 }))
        {
            TextGenerator generator = new(session, tokenizer, new Sampler(512, SamplerOptions.Greedy));
            GenerationResult result = generator.Generate("Once upon a time", maxNewTokens: 60);
            int[] ids = [.. result.PromptTokens[1..], .. result.GeneratedTokens];
            Assert.Equal(TestData.GreedyReferenceIds, ids);
            Assert.Equal(TestData.GreedyReferenceText, "Once upon a time" + result.Text);
        }

        // Logits at every position of a prompt, against the llama2.c weights.
        int[] tokens = [1, .. TestData.GreedyReferenceIds[..20]];
        using IInferenceSession reference = InferenceSessions.Default(TestData.Stories, new SessionOptions { ContextLength = 32 });
        using IInferenceSession folderSession = InferenceSessions.Default(weights, new SessionOptions { ContextLength = 32 });
        foreach (int token in tokens)
        {
            float[] expected = reference.Forward([token]).ToArray();
            float[] actual = folderSession.Forward([token]).ToArray();
            float worst = expected.Zip(actual, static (e, a) => MathF.Abs(e - a)).Max();
            Assert.True(worst <= LogitTolerance, $"logits differ by {worst} at token {token}");
        }
    }

    [Fact]
    public void ShardedIndex_NamesEveryTensorOnce_AndTheTotalSize()
    {
        string folder = _temp.File("stories-3");
        HuggingFaceLlama.Write(folder, TestData.Stories, 3);

        string index = File.ReadAllText(Path.Combine(folder, HuggingFaceLlama.IndexFile));
        using System.Text.Json.JsonDocument document = System.Text.Json.JsonDocument.Parse(index);
        Dictionary<string, string> map = document.RootElement.GetProperty("weight_map").EnumerateObject()
            .ToDictionary(static p => p.Name, static p => p.Value.GetString()!);

        // 5 layers × 9 tensors, the embedding and the final norm (the classifier is tied, so no lm_head).
        Assert.Equal(47, map.Count);
        Assert.DoesNotContain("lm_head.weight", map.Keys);
        Assert.Equal(3, map.Values.Distinct().Count());
        Assert.Equal(TestData.Stories.Tensors.Sum(static t => t.ByteLength), document.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
    }

    [Theory]
    [InlineData(DType.Float32, 1)]
    [InlineData(DType.Float16, 2)]
    [InlineData(DType.BFloat16, 4)]
    public void RandomGqaModel_RoundTripsBitForBit(DType dtype, int shards)
    {
        // 4 query heads on 2 key/value heads, odd widths, an untied classifier, a non-default base and epsilon.
        LlamaConfig config = new()
        {
            Dim = 19, HiddenDim = 23, Layers = 2, Heads = 4, KvHeads = 2, VocabSize = 37, SeqLen = 48, HeadDim = 6,
            NormEps = 1e-6f, RopeTheta = 50000f, RopeLayout = RopeLayout.HalfSplit, SharedClassifier = false,
        };
        using LlamaWeights random = CheckpointFiles.RandomWeights(config, seed: 11);
        using LlamaWeights typed = dtype == DType.Float32 ? random.To(Devices.CpuDevice.Default) : ToDType(random, dtype);
        string folder = _temp.File($"gqa-{dtype}");

        HuggingFaceLlama.Write(folder, typed, shards);
        using LlamaWeights loaded = HuggingFaceLlama.Load(folder);

        Assert.Equal(config, loaded.Config);
        Assert.Equal(dtype, loaded.DType);
        Assert.Equal(typed.Tensors.Select(static t => t.ToArray()), loaded.Tensors.Select(static t => t.ToArray()));
        Assert.NotSame(loaded.TokenEmbedding, loaded.Classifier);
    }

    [Fact]
    public void Load_PutsTheWeightsOnTheCpuDeviceAskedFor()
    {
        // A CPU device other than the default (its own thread count): the session runs on the weights' device.
        string folder = _temp.File("stories-device");
        HuggingFaceLlama.Write(folder, TestData.Stories);
        using Devices.CpuDevice oneThread = new(1);

        using LlamaWeights weights = HuggingFaceLlama.Load(folder, oneThread);

        Assert.Same(oneThread, weights.Device);
        Assert.All(weights.Tensors, tensor => Assert.Same(oneThread, tensor.Device));
    }

    [Fact]
    public void ConfigJson_IsWhatTransformersReads()
    {
        string json = HuggingFaceLlama.ConfigJson(TestData.Stories.Config, DType.Float32);
        string path = _temp.File("config.json");
        File.WriteAllText(path, json);

        (LlamaConfig config, string architecture, string? torchDType) = HuggingFaceLlama.ReadConfig(path);

        Assert.Equal(TestData.Stories.Config with { RopeLayout = RopeLayout.HalfSplit }, config);
        Assert.Equal("LlamaForCausalLM", architecture);
        Assert.Equal("float32", torchDType);
        Assert.Contains("\"model_type\": \"llama\"", json);
        Assert.Contains("\"tie_word_embeddings\": true", json);
    }

    /// <summary>The rows of each head reordered from adjacent pairs to half-split pairs: new[i] = old[2i], new[i + Dh/2] = old[2i + 1].</summary>
    internal static float[] HalfSplitRows(float[] matrix, int heads, int headDim, int columns)
    {
        float[] result = new float[matrix.Length];
        for (int h = 0; h < heads; h++)
        {
            for (int r = 0; r < headDim; r++)
            {
                int source = r < headDim / 2 ? 2 * r : (2 * (r - (headDim / 2))) + 1;
                Array.Copy(matrix, ((h * headDim) + source) * columns, result, ((h * headDim) + r) * columns, columns);
            }
        }

        return result;
    }

    // The weights with matrices rounded to a 16-bit dtype (the random values are exact in both).
    private static LlamaWeights ToDType(LlamaWeights weights, DType dtype)
    {
        LlamaWeights typed = LlamaWeights.Allocate(weights.Config, Devices.CpuDevice.Default, dtype);
        foreach ((Tensor source, Tensor target) in weights.Tensors.Zip(typed.Tensors))
        {
            if (target.DType == DType.Float32)
            {
                target.CopyFrom(source.AsSpan());
                continue;
            }

            Span<ushort> bits = target.AsSpan<ushort>();
            ReadOnlySpan<float> values = source.AsSpan();
            for (int i = 0; i < bits.Length; i++)
            {
                bits[i] = dtype == DType.Float16
                    ? BitConverter.HalfToUInt16Bits((Half)values[i])
                    : (ushort)(BitConverter.SingleToUInt32Bits(values[i]) >> 16);
            }
        }

        return typed;
    }
}
