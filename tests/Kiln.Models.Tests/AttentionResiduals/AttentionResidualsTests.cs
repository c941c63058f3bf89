// Block Attention Residuals in the fast session: random models with random non-zero queries and gains against the
// float64 reference (AttentionResidualsReference.cs) for prefill, prefill in pieces and decode after prefill; the
// zero-query equivalence with the standard model (exact up to the norm epsilon, on random models and on stories260K);
// the block partition, the config, the loaders' defaults, the refusals and the generate flag.
//
// Why zero queries give the standard model only up to eps: sublayer s reads the mean of its k_s sources, which is the
// standard stream x_s divided by k_s (the blocks partition the outputs, b_0 is the embedding alone). Its RMSNorm then
// gives x_s / √(mean(x_s²) + k_s² eps) instead of x_s / √(mean(x_s²) + eps): the same for every block count when
// eps = 0, and off by about (k_s² - 1) eps / (2 mean(x_s²)) relatively otherwise, which grows with the number of
// sources (k_s <= N + 1 before a block's first sublayer and N + 2 inside it, N + 1 at the readout). So the claim holds for
// every block count, tightly when eps is negligible next to mean(x²) / k², and more loosely as N grows.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Kernels;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class AttentionResidualsTests
{
    // Fast float32 path against the float64 reference: |fast - reference| <= Tolerance · (1 + |reference|) per logit.
    // Float32 rounding of sums over D, F and T in another order than the reference; measured worst about 1e-5.
    private const double Tolerance = 1e-4;

    [Property(MaxTest = 40)]
    public Property RandomModels_PrefillPiecesAndDecode_MatchFloat64Reference() => Prop.ForAll(
        Models().ToArbitrary(),
        model =>
        {
            (LlamaConfig config, int seed, int[] tokens, int split) = model;
            using LlamaWeights weights = CheckpointFiles.RandomWeights(config, seed);
            weights.AttentionResiduals?.Randomize((ulong)seed + 1, 0.5f);
            double[][] expected = AttentionResidualsReference.Run(weights, tokens);

            // The whole prompt in one piece.
            using LlamaSession fast = new(weights, new SessionOptions());
            double worst = Worst(expected[^1], fast.Forward(tokens));

            // The first `split` tokens as a prefill, then the rest decoded one at a time, each step checked.
            fast.Reset();
            if (split > 0)
            {
                worst = Math.Max(worst, Worst(expected[split - 1], fast.Forward(tokens.AsSpan(0, split))));
            }

            for (int i = split; i < tokens.Length; i++)
            {
                worst = Math.Max(worst, Worst(expected[i], fast.Forward(tokens.AsSpan(i, 1))));
            }

            return (worst <= Tolerance).Label($"{config.ToJson().ReplaceLineEndings(" ")} seed {seed} split {split}: worst {worst}");
        });

    [Fact]
    public void LongPrompt_PrefillsInChunks_LikeTheReference()
    {
        // 300 tokens cross the 256-token prefill chunk; 3 blocks over 4 sublayers put a partial sum in every mix.
        LlamaConfig config = Small(layers: 2, blocks: 3, seqLen: 310);
        using LlamaWeights weights = CheckpointFiles.RandomWeights(config, 11);
        weights.AttentionResiduals!.Randomize(5, 0.5f);
        int[] tokens = [.. Enumerable.Range(0, 302).Select(i => (i * 7) % config.VocabSize)];
        double[][] expected = AttentionResidualsReference.Run(weights, tokens);

        using LlamaSession fast = new(weights, new SessionOptions());
        double worst = Worst(expected[299], fast.Forward(tokens.AsSpan(0, 300)));
        worst = Math.Max(worst, Worst(expected[300], fast.Forward(tokens.AsSpan(300, 1))));
        worst = Math.Max(worst, Worst(expected[301], fast.Forward(tokens.AsSpan(301, 1))));

        Assert.True(worst <= Tolerance, $"worst {worst}");
    }

    [Property(MaxTest = 25)]
    public Property ZeroQueries_NegligibleEps_EqualTheStandardModel_ForEveryBlockCount() => Prop.ForAll(
        Models().ToArbitrary(),
        model =>
        {
            // eps 1e-30: the k² eps of the scaled stream stays far below mean(x²), so only float32 rounding differs.
            (LlamaConfig config, int seed, int[] tokens, _) = model;
            config = config with { NormEps = 1e-30f, AttentionResiduals = config.AttentionResiduals ?? new() { Blocks = 1 } };
            using LlamaWeights standard = CheckpointFiles.RandomWeights(config with { AttentionResiduals = null }, seed);
            using LlamaWeights residuals = CheckpointFiles.RandomWeights(config, seed);

            // Queries zero; the gains stay random, which a uniform softmax cannot see.
            residuals.AttentionResiduals!.Queries.CopyFrom(new float[residuals.AttentionResiduals.Queries.Length]);
            using LlamaSession expected = new(standard, new SessionOptions());
            using LlamaSession actual = new(residuals, new SessionOptions());
            float[] want = expected.Forward(tokens).ToArray();
            double worst = Worst([.. want.Select(v => (double)v)], actual.Forward(tokens));

            return (worst <= Tolerance).Label($"{config.ToJson().ReplaceLineEndings(" ")} seed {seed}: worst {worst}");
        });

    [Theory]
    [InlineData(1, 8e-3)]
    [InlineData(2, 8e-3)]
    [InlineData(3, 8e-3)]
    [InlineData(5, 1e-2)]
    [InlineData(10, 3e-2)]
    public void Stories260K_ZeroQueries_SameGreedyIds_LogitsWithinTheEpsEffect(int blocks, double tolerance)
    {
        // stories260K: 5 layers, 10 sublayers, norm_eps 1e-5. N = 10 is Full AttnRes (up to 11 sources). The
        // tolerances are absolute, about twice the eps effect measured (N = 1, 2, 3, 5, 10: 3.8e-3, 3.0e-3, 3.4e-3,
        // 4.7e-3, 1.4e-2); the test below shows it is the eps effect and nothing else.
        using LlamaWeights weights = Llama2cCheckpoint.Load(TestData.StoriesModel, attentionResiduals: new() { Blocks = blocks });
        using LlamaSession session = new(weights, new SessionOptions());
        TextGenerator generator = new(session, TestData.StoriesTok, new Sampler(512, SamplerOptions.Greedy));
        GenerationResult result = generator.Generate("Once upon a time", 60);
        int[] ids = [.. result.PromptTokens.Skip(1), .. result.GeneratedTokens];
        Assert.Equal(TestData.GreedyReferenceIds, ids);

        // Logits after a 200-token prompt, then after each of 20 decode steps.
        int[] tokens = [1, .. Enumerable.Range(0, 219).Select(i => TestData.GreedyReferenceIds[i % TestData.GreedyReferenceIds.Length])];
        using LlamaSession standard = new(TestData.Stories, new SessionOptions());
        session.Reset();
        double worst = MaxAbs(standard.Forward(tokens.AsSpan(0, 200)), session.Forward(tokens.AsSpan(0, 200)));
        for (int i = 200; i < tokens.Length; i++)
        {
            worst = Math.Max(worst, MaxAbs(standard.Forward(tokens.AsSpan(i, 1)), session.Forward(tokens.AsSpan(i, 1))));
        }

        Assert.True(worst <= tolerance, $"{blocks} blocks: worst logit difference {worst}");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(10)]
    public void Stories260K_ZeroQueries_NegligibleEps_LeaveOnlyFloatRounding(int blocks)
    {
        // The same weights with norm_eps 1e-30: the difference of the test above falls to float32 rounding, so it
        // was the eps effect and nothing else.
        using LlamaWeights standard = StoriesWithEps(1e-30f, null);
        using LlamaWeights residuals = StoriesWithEps(1e-30f, new() { Blocks = blocks });
        using LlamaSession expected = new(standard, new SessionOptions());
        using LlamaSession actual = new(residuals, new SessionOptions());
        int[] tokens = [1, .. Enumerable.Range(0, 199).Select(i => TestData.GreedyReferenceIds[i % TestData.GreedyReferenceIds.Length])];

        double worst = MaxAbs(expected.Forward(tokens), actual.Forward(tokens));
        for (int i = 0; i < 10; i++)
        {
            worst = Math.Max(worst, MaxAbs(expected.Forward(tokens.AsSpan(i, 1)), actual.Forward(tokens.AsSpan(i, 1))));
        }

        Assert.True(worst <= 2e-4, $"{blocks} blocks: worst logit difference {worst}");
    }

    [Fact]
    public void Stories260K_NonZeroQueries_ChangeTheLogits()
    {
        // The option is not a no-op: random queries move the logits far beyond the eps effect.
        using LlamaWeights weights = Llama2cCheckpoint.Load(TestData.StoriesModel, attentionResiduals: new() { Blocks = 3 });
        weights.AttentionResiduals!.Randomize(3, 0.2f);
        using LlamaSession session = new(weights, new SessionOptions());
        using LlamaSession standard = new(TestData.Stories, new SessionOptions());
        int[] tokens = [1, .. TestData.GreedyReferenceIds[..30]];

        Assert.True(MaxAbs(standard.Forward(tokens), session.Forward(tokens)) > 0.5);
    }

    [Theory]
    [InlineData(24, 8, new[] { 6, 6, 6, 6, 6, 6, 6, 6 })]
    [InlineData(5, 3, new[] { 4, 3, 3 })]
    [InlineData(5, 10, new[] { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 })]
    [InlineData(3, 4, new[] { 2, 2, 1, 1 })]
    [InlineData(2, 1, new[] { 4 })]
    public void Partition_LongerBlocksFirst_AndBlockOfAgreesWithBlockStart(int layers, int blocks, int[] sizes)
    {
        AttentionResidualsConfig option = new() { Blocks = blocks };
        int sublayers = 2 * layers;

        int[] actual = [.. Enumerable.Range(0, blocks).Select(n => option.BlockStart(n + 1, sublayers) - option.BlockStart(n, sublayers))];
        Assert.Equal(sizes, actual);
        Assert.Equal(sublayers, option.BlockStart(blocks, sublayers));
        for (int s = 0; s < sublayers; s++)
        {
            int n = option.BlockOf(s, sublayers);
            Assert.InRange(s, option.BlockStart(n, sublayers), option.BlockStart(n + 1, sublayers) - 1);
        }
    }

    [Fact]
    public void Config_RoundTripsThroughJson_CountsItsVectors_AndRejectsBadBlockCounts()
    {
        LlamaConfig config = Small(layers: 3, blocks: 4, seqLen: 8);

        LlamaConfig read = LlamaConfig.FromJson(config.ToJson());
        Assert.Equal(4, read.AttentionResiduals!.Blocks);
        Assert.Contains("\"attention_residuals\"", config.ToJson());
        Assert.DoesNotContain("attention_residuals", (config with { AttentionResiduals = null }).ToJson());
        Assert.Equal(2 * 7 * config.Dim, config.ParameterCount - (config with { AttentionResiduals = null }).ParameterCount);

        ArgumentException zero = Assert.Throws<ArgumentException>(() => (config with { AttentionResiduals = new() { Blocks = 0 } }).Validate());
        Assert.Contains("attention_residuals.blocks is 0; it must be 1..6", zero.Message);
        Assert.Throws<ArgumentException>(() => (config with { AttentionResiduals = new() { Blocks = 7 } }).Validate());
    }

    [Fact]
    public void Loader_GivesDefaultVectors_AndWritersAndTheReferenceRefuseTheOption()
    {
        using LlamaWeights weights = Llama2cCheckpoint.Load(TestData.StoriesModel, attentionResiduals: new() { Blocks = 2 });
        AttentionResidualsWeights vectors = weights.AttentionResiduals!;
        Assert.Equal([11, 64], vectors.Queries.Shape.ToArray());
        Assert.All(vectors.Queries.ToArray(), q => Assert.Equal(0f, q));
        Assert.All(vectors.KeyNorms.ToArray(), g => Assert.Equal(1f, g));
        Assert.Contains(vectors.Queries, weights.Tensors);

        using TempDirectory temp = new();
        Assert.Contains("no place for the attention residuals", Assert.Throws<ArgumentException>(() => Llama2cCheckpoint.WriteVersion1(Path.Combine(temp.Path, "m.bin"), weights)).Message);
        Assert.Contains("GGUF has no tensor names", Assert.Throws<ArgumentException>(() => GgufLlama.CreateWriter(weights, null, GgufTensorType.F32)).Message);
        Assert.Contains("run this model with LlamaSession", Assert.Throws<ArgumentException>(() => new LlamaReferenceSession(weights)).Message);
        Assert.Throws<ArgumentException>(() => Llama2cCheckpoint.Load(TestData.StoriesModel, attentionResiduals: new() { Blocks = 11 }));
    }

    [Fact]
    public void Decode_AllocatesNothingPerStep()
    {
        using LlamaWeights weights = Llama2cCheckpoint.Load(TestData.StoriesModel, attentionResiduals: new() { Blocks = 3 });
        using LlamaSession session = new(weights, new SessionOptions());
        session.Forward([1, 403, 407]);
        session.Forward([261]);

        long allocated = Allocations.Measure(() =>
        {
            for (int i = 0; i < 50; i++)
            {
                session.Forward([378]);
            }
        });

        Assert.Equal(0, allocated);
    }

    [Fact]
    public void Cli_Generate_WithAttentionResiduals_PrintsTheReferenceText_AndRefusesBadBlockCounts()
    {
        using TempDirectory temp = new();
        Kiln.Cli.CliEnvironment environment = new(null, temp.Path);
        (int code, string stdout, string stderr) = CliTests.Run(environment, "generate", "-m", TestData.StoriesModel, "-p", "Once upon a time", "-n", "60", "--temp", "0", "--attn-res-blocks", "3");
        Assert.Equal(0, code);
        Assert.Equal(TestData.GreedyReferenceText + "\n", stdout);
        Assert.Contains("Block Attention Residuals over 3 blocks of the 10 sublayers", stderr);

        (code, _, stderr) = CliTests.Run(environment, "generate", "-m", TestData.StoriesModel, "-n", "3", "--attn-res-blocks", "11");
        CliTests.AssertError(code, stderr, 2, "--attn-res-blocks 11: attention_residuals.blocks is 11; it must be 1..10");
    }

    [Fact]
    public void Cli_BenchAttnRes_PrintsBothModelsWithRatios_AndRefusesBadFlags()
    {
        using TempDirectory temp = new();
        Kiln.Cli.CliEnvironment environment = new(null, temp.Path);
        (int code, string stdout, string stderr) = CliTests.Run(environment, "bench", "attnres", "--layers", "1", "--dim", "64", "--blocks", "2", "-c", "9", "--decode", "2", "--runs", "1", "-t", "1", "--json");
        Assert.Equal(0, code);
        string[] lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);
        using System.Text.Json.JsonDocument baseline = System.Text.Json.JsonDocument.Parse(lines[0]);
        using System.Text.Json.JsonDocument option = System.Text.Json.JsonDocument.Parse(lines[1]);
        Assert.Equal("llama", baseline.RootElement.GetProperty("model").GetString());
        Assert.Equal(1.0, baseline.RootElement.GetProperty("prefill_vs_llama").GetDouble());
        Assert.Equal("llama-attnres", option.RootElement.GetProperty("model").GetString());
        Assert.Equal(2, option.RootElement.GetProperty("blocks").GetInt32());
        Assert.Equal(3 * 11 * 64 * 4, option.RootElement.GetProperty("extra_bytes").GetInt64());
        Assert.True(option.RootElement.GetProperty("decode_tok_s").GetDouble() > 0);
        Assert.True(option.RootElement.GetProperty("decode_cpu_vs_llama").GetDouble() > 0);
        Assert.Contains("attnres bench: 1 layers, width 64", stderr);

        (code, _, stderr) = CliTests.Run(environment, "bench", "attnres", "--layers", "1", "--blocks", "3");
        CliTests.AssertError(code, stderr, 2, "--blocks 3: the option needs 1..2 blocks for 1 layers");
        (code, _, stderr) = CliTests.Run(environment, "bench", "attnres", "--dim", "100");
        CliTests.AssertError(code, stderr, 2, "use 1..256 layers and a width of 64..8192 in steps of 64");
    }

    // Random small models: head widths, GQA groupings, odd feed-forward widths and vocabularies, both RoPE layouts,
    // separate classifiers, 1 to 3 layers, and a block count from 1 to 2L (0: the standard model, which checks the
    // reference's own Llama part against the fast session).
    private static Gen<(LlamaConfig Config, int Seed, int[] Tokens, int Split)> Models() =>
        from headDim in Gen.Elements(2, 6, 8, 18)
        from kvHeads in Gen.Choose(1, 3)
        from groupSize in Gen.Choose(1, 2)
        from hidden in Gen.Elements(1, 17, 40)
        from layers in Gen.Choose(1, 3)
        from blocks in Gen.Choose(0, 2 * layers)
        from vocab in Gen.Choose(3, 41)
        from seqLen in Gen.Choose(1, 24)
        from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
        from shared in Gen.Elements(true, false)
        from seed in Gen.Choose(0, 1_000_000)
        from count in Gen.Choose(1, seqLen)
        from split in Gen.Choose(0, count - 1)
        from tokens in Gen.Choose(0, vocab - 1).ArrayOf(count)
        let heads = kvHeads * groupSize
        select (new LlamaConfig
        {
            Dim = heads * headDim,
            HiddenDim = hidden,
            Layers = layers,
            Heads = heads,
            KvHeads = kvHeads,
            VocabSize = vocab,
            SeqLen = seqLen,
            HeadDim = headDim,
            RopeLayout = layout,
            SharedClassifier = shared,
            AttentionResiduals = blocks == 0 ? null : new() { Blocks = blocks },
        }, seed, tokens, split);

    // stories260K's tensors under its config with another norm_eps and the given option (vectors at their defaults).
    private static LlamaWeights StoriesWithEps(float eps, AttentionResidualsConfig? option)
    {
        LlamaWeights weights = LlamaWeights.Allocate(TestData.Stories.Config with { NormEps = eps, AttentionResiduals = option });
        foreach ((Tensor from, Tensor to) in TestData.Stories.Tensors.Zip(weights.Tensors))
        {
            to.CopyFrom(from.ToArray());
        }

        return weights;
    }

    private static LlamaConfig Small(int layers, int blocks, int seqLen) => new()
    {
        Dim = 12,
        HiddenDim = 19,
        Layers = layers,
        Heads = 2,
        KvHeads = 1,
        VocabSize = 23,
        SeqLen = seqLen,
        HeadDim = 6,
        AttentionResiduals = new() { Blocks = blocks },
    };

    private static double Worst(double[] expected, ReadOnlySpan<float> actual)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double error = Math.Abs(actual[i] - expected[i]) / (1 + Math.Abs(expected[i]));
            worst = double.IsNaN(error) ? double.PositiveInfinity : Math.Max(worst, error);
        }

        return worst;
    }

    private static double MaxAbs(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        float[] want = expected.ToArray();
        double worst = 0;
        for (int i = 0; i < want.Length; i++)
        {
            worst = Math.Max(worst, Math.Abs(actual[i] - want[i]));
        }

        return worst;
    }
}
