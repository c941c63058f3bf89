// The llama architecture in GGUF: stories260K written as F32/F16/BF16 GGUF and loaded back gives the same config, the
// same (or correctly rounded) tensors, the llama2.c logits and the reference greedy continuation (which also checks
// that GGUF `llama` files use adjacent-pair RoPE); random configs with grouped-query attention and a separate
// classifier round-trip; a Q8_0 model keeps its blocks and matches its dequantized float32 twin, one Q8_0 matrix among
// F32 ones is widened, Q8_0 on an ILGPU device is refused; missing, misshapen and extra tensors and other
// architectures are named; GGUF → llama2.c version 1 reproduces the shipped version-1 file byte for byte.

using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Kiln.Models.Tokenizers;
using Xunit;

namespace Kiln.Models.Tests.Gguf;

public sealed class GgufLlamaTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Theory]
    [InlineData(GgufTensorType.F32, DType.Float32)]
    [InlineData(GgufTensorType.F16, DType.Float16)]
    [InlineData(GgufTensorType.BF16, DType.BFloat16)]
    public void Stories_ThroughGguf_GeneratesTheReferenceText(GgufTensorType type, DType dtype)
    {
        string path = _temp.File($"stories-{type}.gguf");
        GgufLlama.Write(path, TestData.Stories, TestData.StoriesTok, type, "stories260K");

        GgufFile file = GgufFile.Open(path);
        using LlamaWeights weights = GgufLlama.Load(file);
        ITokenizer tokenizer = GgufTokenizers.Load(file);

        Assert.Equal(TestData.Stories.Config, weights.Config);
        Assert.Equal(dtype, weights.DType);
        using IInferenceSession session = InferenceSessions.Default(weights, new SessionOptions { ContextLength = 64 });
        TextGenerator generator = new(session, tokenizer, new Sampler(512, SamplerOptions.Greedy));
        GenerationResult result = generator.Generate("Once upon a time", maxNewTokens: 60);
        int[] ids = [.. result.PromptTokens[1..], .. result.GeneratedTokens];
        Assert.Equal(TestData.GreedyReferenceIds, ids);
        Assert.Equal(TestData.GreedyReferenceText, "Once upon a time" + result.Text);
    }

    [Fact]
    public void Stories_F32Gguf_HasTheLlama2cTensorsAndLogits()
    {
        string path = _temp.File("stories.gguf");
        GgufLlama.Write(path, TestData.Stories, TestData.StoriesTok, GgufTensorType.F32);

        using LlamaWeights weights = GgufLlama.Load(path);

        Assert.Equal(TestData.Stories.Tensors.Select(static t => t.ToArray()), weights.Tensors.Select(static t => t.ToArray()));
        Assert.Same(weights.TokenEmbedding, weights.Classifier);
        int[] tokens = [1, 403, 407];
        using IInferenceSession reference = InferenceSessions.Default(TestData.Stories, new SessionOptions { ContextLength = 8 });
        using IInferenceSession gguf = InferenceSessions.Default(weights, new SessionOptions { ContextLength = 8 });
        Assert.Equal(reference.Forward(tokens).ToArray(), gguf.Forward(tokens).ToArray());

        // The layout llama.cpp read: the peer's numpy writer produced a file of exactly this length.
        Assert.Equal(1_054_368, new FileInfo(path).Length);
    }

    [Fact]
    public void Stories_F16Gguf_HoldsTheRoundedWeights()
    {
        string path = _temp.File("stories16.gguf");
        GgufLlama.Write(path, TestData.Stories, null, GgufTensorType.F16);

        using LlamaWeights weights = GgufLlama.Load(path);

        float[] expected = [.. TestData.Stories.Layers[2].W2.ToArray().Select(static v => (float)(Half)v)];
        Assert.Equal(expected, weights.Layers[2].W2.ToArray());
        Assert.Equal(TestData.Stories.FinalNorm.ToArray(), weights.FinalNorm.ToArray());
        Assert.Equal(DType.Float32, weights.FinalNorm.DType);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void RandomConfig_WithGqaAndSeparateClassifier_RoundTrips(bool f16)
    {
        LlamaConfig config = CheckpointTests.SmallConfig() with { SharedClassifier = false, NormEps = 1e-6f, RopeTheta = 500000f, HeadDim = 6 };
        using LlamaWeights original = CheckpointFiles.RandomWeights(config, seed: 9);
        string path = _temp.File("random.gguf");
        GgufLlama.Write(path, original, null, f16 ? GgufTensorType.F16 : GgufTensorType.F32);

        using LlamaWeights loaded = GgufLlama.Load(path);

        // The grid values (multiples of 1/64 in [-1, 1]) are exact in float16 too.
        Assert.Equal(config, loaded.Config);
        Assert.NotSame(loaded.TokenEmbedding, loaded.Classifier);
        Assert.Equal(original.Tensors.Select(static t => t.ToArray()), loaded.Tensors.Select(static t => t.ToArray()));
    }

    [Fact]
    public void MixedMatrixTypes_AreWidenedToFloat32()
    {
        GgufWriter writer = StoriesWriter(GgufTensorType.F16, replace: ("blk.1.attn_q.weight", GgufTensorType.F32));
        string path = _temp.File("mixed.gguf");
        writer.Write(path);

        using LlamaWeights weights = GgufLlama.Load(path);

        // Every matrix holds the float16-rounded weights, the one stored as F32 included (it was copied from the F16 file).
        Assert.Equal(DType.Float32, weights.DType);
        Assert.Equal(TestData.Stories.Layers[1].Wq.ToArray().Select(static v => (float)(Half)v), weights.Layers[1].Wq.ToArray());
        Assert.Equal(TestData.Stories.Layers[3].W3.ToArray().Select(static v => (float)(Half)v), weights.Layers[3].W3.ToArray());
    }

    [Fact]
    public void Q8_0MixedWithF32_IsWidenedToFloat32()
    {
        GgufWriter writer = StoriesWriter(GgufTensorType.F32, replace: ("blk.0.attn_q.weight", GgufTensorType.Q8_0));
        string path = _temp.File("q8mixed.gguf");
        writer.Write(path);

        using LlamaWeights weights = GgufLlama.Load(path);

        // The one Q8_0 matrix comes back dequantized (scale · int8), the others as they were.
        float[] original = TestData.Stories.Layers[0].Wq.ToArray();
        byte[] blocks = new byte[Q8_0Blocks.ByteCount(original.Length)];
        Q8_0Blocks.Quantize(original, blocks);
        float[] expected = new float[original.Length];
        Q8_0Blocks.Dequantize(blocks, expected);
        Assert.Equal(DType.Float32, weights.DType);
        Assert.Equal(expected, weights.Layers[0].Wq.ToArray());
        Assert.Equal(TestData.Stories.Layers[1].Wq.ToArray(), weights.Layers[1].Wq.ToArray());
    }

    /// <summary>A Q8_0 model (dims multiples of 32) keeps its blocks and computes the logits of the same model with the
    /// dequantized weights in float32, for a prefill of 40 tokens (the packed path) and decode steps (the streaming
    /// path). Widening is exact, so the only differences are float32 summation order: 1e-4 relative to the largest
    /// logit.</summary>
    [Fact]
    public void Q8_0Model_KeepsBlocksAndMatchesItsDequantizedWeights()
    {
        LlamaConfig config = Q8Config();
        using LlamaWeights original = CheckpointFiles.RandomWeights(config, seed: 4);
        string path = _temp.File("q8.gguf");
        GgufLlama.Write(path, original, null, GgufTensorType.Q8_0);

        using LlamaWeights q8 = GgufLlama.Load(path);
        using LlamaWeights widened = LlamaWeights.Allocate(config);
        foreach ((Tensor from, Tensor to) in q8.Tensors.Zip(widened.Tensors))
        {
            to.CopyFrom(from.ToArray());
        }

        Assert.Equal(DType.Q8_0, q8.DType);
        Assert.Equal(DType.Q8_0, q8.Layers[1].W2.DType);
        Assert.Equal(DType.Float32, q8.FinalNorm.DType);
        using IInferenceSession quantized = InferenceSessions.Default(q8, new SessionOptions { ContextLength = 64 });
        using IInferenceSession reference = InferenceSessions.Default(widened, new SessionOptions { ContextLength = 64 });
        Random random = new(8);
        int[] prompt = Enumerable.Range(0, 40).Select(_ => random.Next(config.VocabSize)).ToArray();
        AssertClose(reference.Forward(prompt).ToArray(), quantized.Forward(prompt).ToArray(), "prefill", 1e-4f);

        // Decode's one-row products quantize the activations to int16 per block of 32 (within 2^-15 of the block's
        // largest value where the CPU has AVX-512BW), which moves these logits by about 1e-4 of the largest.
        for (int step = 0; step < 5; step++)
        {
            int token = random.Next(config.VocabSize);
            AssertClose(reference.Forward([token]).ToArray(), quantized.Forward([token]).ToArray(), $"decode step {step}", 1e-3f);
        }
    }

    /// <summary>
    /// A Q8_0 model loads onto an ILGPU device in its blocks and computes what the same device computes with the
    /// dequantized float32 weights: the kernels widen each weight exactly, so only the summation may differ.
    /// </summary>
    [Fact]
    public void Q8_0Model_OnAnIlgpuDevice_MatchesItsDequantizedWeights()
    {
        LlamaConfig config = Q8Config();
        using LlamaWeights original = CheckpointFiles.RandomWeights(config, seed: 5);
        string path = _temp.File("q8gpu.gguf");
        GgufLlama.Write(path, original, null, GgufTensorType.Q8_0);
        using Kiln.Devices.IlgpuDevice device = Kiln.Devices.IlgpuDevice.CreateCpuAccelerator(
            ILGPU.OptimizationLevel.O1, threadsPerWarp: 4, warpsPerGroup: 4);

        using LlamaWeights q8 = GgufLlama.Load(path, device);
        using LlamaWeights cpu = GgufLlama.Load(path);
        using LlamaWeights widenedCpu = LlamaWeights.Allocate(config);
        foreach ((Tensor from, Tensor to) in cpu.Tensors.Zip(widenedCpu.Tensors))
        {
            to.CopyFrom(from.ToArray());
        }

        using LlamaWeights widened = widenedCpu.To(device);
        Assert.Equal(DType.Q8_0, q8.Layers[0].Wq.DType);
        Assert.Equal(DType.Q8_0, q8.TokenEmbedding.DType);
        using IInferenceSession quantized = InferenceSessions.Default(q8, new SessionOptions { ContextLength = 32 });
        using IInferenceSession reference = InferenceSessions.Default(widened, new SessionOptions { ContextLength = 32 });
        int[] prompt = [1, 77, 300, 5, 511, 42, 9];
        AssertClose(reference.Forward(prompt).ToArray(), quantized.Forward(prompt).ToArray(), "prefill on ilgpu-cpu", 1e-5f);
        for (int token = 2; token < 5; token++)
        {
            AssertClose(reference.Forward([token]).ToArray(), quantized.Forward([token]).ToArray(), $"decode {token} on ilgpu-cpu", 1e-5f);
        }
    }

    internal static LlamaConfig Q8Config() => new()
    {
        Dim = 64,
        HiddenDim = 96,
        Layers = 2,
        Heads = 4,
        KvHeads = 2,
        VocabSize = 512,
        SeqLen = 64,
        HeadDim = 16,
    };

    private static void AssertClose(float[] expected, float[] actual, string what, float relative)
    {
        float scale = expected.Max(MathF.Abs);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(expected[i] - actual[i]) <= relative * scale, $"{what}: logit {i} is {actual[i]}, the dequantized float32 model gives {expected[i]} (max |logit| {scale}).");
        }
    }

    [Theory]
    [InlineData("missing", "has no tensor 'blk.4.ffn_up.weight'")]
    [InlineData("shape", "has tensor 'output_norm.weight' of shape [63], but the llama config")]
    [InlineData("extra", "has tensor 'rope_freqs.weight', which Kiln's llama model does not use")]
    [InlineData("architecture", "is a 'mamba' model (general.architecture)")]
    [InlineData("rope", "rotates 4 of the 8 dimensions of each head")]
    [InlineData("key", "has no metadata key 'llama.block_count'")]
    public void BrokenModels_AreNamed(string damage, string expected)
    {
        GgufWriter writer = new();
        string architecture = damage == "architecture" ? "mamba" : "llama";
        LlamaConfig c = TestData.Stories.Config;
        writer.Add("general.architecture", GgufValue.String(architecture));
        foreach ((string key, int value) in new[] { ("embedding_length", c.Dim), ("feed_forward_length", c.HiddenDim), ("block_count", c.Layers), ("attention.head_count", c.Heads), ("attention.head_count_kv", c.KvHeads), ("context_length", c.SeqLen), ("rope.dimension_count", damage == "rope" ? 4 : c.HeadDim) })
        {
            if (!(damage == "key" && key == "block_count"))
            {
                writer.Add($"llama.{key}", GgufValue.UInt32((uint)value));
            }
        }

        writer.Add("llama.attention.layer_norm_rms_epsilon", GgufValue.Float32(1e-5f));
        using LlamaWeights weights = LlamaWeights.Allocate(c);
        writer.AddTensor("token_embd.weight", weights.TokenEmbedding, GgufTensorType.F32);
        for (int l = 0; l < c.Layers; l++)
        {
            LlamaLayerWeights layer = weights.Layers[l];
            foreach ((string suffix, Tensor tensor) in new[] { ("attn_norm", layer.AttentionNorm), ("attn_q", layer.Wq), ("attn_k", layer.Wk), ("attn_v", layer.Wv), ("attn_output", layer.Wo), ("ffn_norm", layer.FfnNorm), ("ffn_gate", layer.W1), ("ffn_down", layer.W2), ("ffn_up", layer.W3) })
            {
                if (!(damage == "missing" && l == 4 && suffix == "ffn_up"))
                {
                    writer.AddTensor($"blk.{l}.{suffix}.weight", tensor, GgufTensorType.F32);
                }
            }
        }

        using Tensor shortNorm = Tensor.Empty([63]);
        writer.AddTensor("output_norm.weight", damage == "shape" ? shortNorm : weights.FinalNorm, GgufTensorType.F32);
        if (damage == "extra")
        {
            writer.AddTensor("rope_freqs.weight", shortNorm, GgufTensorType.F32);
        }

        string path = _temp.File("broken.gguf");
        writer.Write(path);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => GgufLlama.Load(path));

        CheckpointValidationTests.AssertOneLine(e.Message, path, expected);
    }

    [Fact]
    public void GgufToLlama2cVersion1_IsTheShippedVersion1File()
    {
        string gguf = _temp.File("s.gguf");
        string bin = _temp.File("s.bin");
        GgufLlama.Write(gguf, TestData.Stories, TestData.StoriesTok, GgufTensorType.F32);
        using LlamaWeights weights = GgufLlama.Load(gguf);

        Llama2cCheckpoint.WriteVersion1(bin, weights);

        Assert.Equal(File.ReadAllBytes(TestData.StoriesModelV1), File.ReadAllBytes(bin));
    }

    [Fact]
    public void Llama2cExport_RefusesWhatLlama2cCannotExpress()
    {
        LlamaConfig config = CheckpointTests.SmallConfig() with { RopeTheta = 500000f };
        using LlamaWeights weights = LlamaWeights.Allocate(config);

        ArgumentException e = Assert.Throws<ArgumentException>(() => Llama2cCheckpoint.WriteVersion1(_temp.File("x.bin"), weights));

        Assert.Contains("rope_theta 500000", e.Message);
        Assert.Contains("keep it in GGUF", e.Message);
    }

    // stories260K as GGUF with matrices of `type`, except one tensor stored as another type.
    private static GgufWriter StoriesWriter(GgufTensorType type, (string Name, GgufTensorType Type) replace)
    {
        GgufWriter source = GgufLlama.CreateWriter(TestData.Stories, TestData.StoriesTok, type);
        using MemoryStream stream = new();
        source.Write(stream);
        GgufFile file = GgufFile.Parse("stories.gguf", stream.ToArray());

        // Copy every key and tensor, re-storing the one named.
        GgufWriter writer = new();
        foreach (string key in file.Keys.Where(static k => k != GgufFile.AlignmentKey))
        {
            writer.Add(key, file.Metadata[key]);
        }

        foreach (GgufTensorInfo info in file.Tensors)
        {
            if (info.Name == replace.Name)
            {
                using Tensor values = file.LoadTensor(info.Name, DType.Float32);
                GgufWriter single = new();
                single.AddTensor(info.Name, values, replace.Type);
                GgufFile one = GgufFile.Parse("one.gguf", GgufRoundTripTests.Write(single));
                writer.AddRaw(info.Name, replace.Type, info.Dims, one.ReadTensorBytes(info.Name));
            }
            else
            {
                writer.AddRaw(info.Name, info.Type, info.Dims, file.ReadTensorBytes(info.Name));
            }
        }

        return writer;
    }
}
