// The fast batched session against the reference session: the llama2.c logits and greedy text of stories260K,
// random small models (GQA groupings, both RoPE layouts, separate classifiers, widths that cross the matrix
// product's vector and packing paths) prefilled in one piece, in pieces and token by token, prompts longer than
// one prefill chunk, and allocation-free decode steps.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Kernels;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class FastSessionTests
{
    [Fact]
    public void Stories260K_Greedy_ReproducesReferenceIdsAndText()
    {
        using LlamaSession session = new(TestData.Stories, new SessionOptions());
        TextGenerator generator = new(session, TestData.StoriesTok, new Sampler(512, SamplerOptions.Greedy));

        GenerationResult result = generator.Generate("Once upon a time", 60);

        int[] all = [.. result.PromptTokens.Skip(1), .. result.GeneratedTokens];
        Assert.Equal(TestData.GreedyReferenceIds, all);
        Assert.Equal(TestData.GreedyReferenceText, "Once upon a time" + result.Text);
    }

    [Fact]
    public void Generation_LogsItsSummary_AndAFullContextAsAWarning()
    {
        using LlamaSession session = new(TestData.Stories, new SessionOptions { ContextLength = 12 });
        ListLogger logger = new();
        TextGenerator generator = new(session, TestData.StoriesTok, new Sampler(512, SamplerOptions.Greedy), logger);

        generator.Generate("Once upon a time", 100);

        Assert.Collection(
            logger.Entries,
            warning =>
            {
                Assert.Equal(Microsoft.Extensions.Logging.LogLevel.Warning, warning.Level);
                Assert.Contains("context full: all 12 positions are used", warning.Message);
            },
            summary =>
            {
                Assert.Equal(Microsoft.Extensions.Logging.LogLevel.Information, summary.Level);
                Assert.Contains("Generated 8 tokens (ContextFull): prefill 5 tokens", summary.Message);
            });
    }

    [Fact]
    public void TwoPromptsInARow_GiveWhatEachGivesAlone()
    {
        SamplerOptions options = new() { Temperature = 0.8f, TopK = 40, TopP = 0.95f, Seed = 7 };
        GenerationResult Alone(string prompt)
        {
            using LlamaSession session = new(TestData.Stories, new SessionOptions());
            return new TextGenerator(session, TestData.StoriesTok, new Sampler(512, options)).Generate(prompt, 80);
        }

        using LlamaSession shared = new(TestData.Stories, new SessionOptions());
        TextGenerator generator = new(shared, TestData.StoriesTok, new Sampler(512, options));
        GenerationResult first = generator.Generate("The dog ran", 80);
        GenerationResult second = generator.Generate("Tom had a red car", 80);

        Assert.Equal(Alone("The dog ran").GeneratedTokens, first.GeneratedTokens);
        Assert.Equal(Alone("Tom had a red car").GeneratedTokens, second.GeneratedTokens);
    }

    [Fact]
    public void Stories260K_Logits_MatchReferenceSession_OneTokenAtATime()
    {
        using LlamaSession fast = new(TestData.Stories, new SessionOptions());
        using LlamaReferenceSession reference = new(TestData.Stories);
        int[] tokens = [1, .. TestData.GreedyReferenceIds[..40]];

        // Tolerance: 1e-4 absolute, the precision of the llama2.c reference printout.
        foreach (int token in tokens)
        {
            AssertClose(reference.Forward([token]).ToArray(), fast.Forward([token]).ToArray(), 1e-4, $"position {fast.Position - 1}");
        }
    }

    [Fact]
    public void Stories260K_LongPrompt_PrefillsInChunks_LikeTheReference()
    {
        // 300 tokens: more than one prefill chunk of 256.
        int[] tokens = [1, .. Enumerable.Range(0, 299).Select(i => TestData.GreedyReferenceIds[i % TestData.GreedyReferenceIds.Length])];
        using LlamaSession fast = new(TestData.Stories, new SessionOptions());
        using LlamaReferenceSession reference = new(TestData.Stories);

        float[] expected = reference.Forward(tokens).ToArray();
        float[] actual = fast.Forward(tokens).ToArray();

        AssertClose(expected, actual, 2e-4, "300-token prefill");
        Assert.Equal(300, fast.Position);
    }

    [Property(MaxTest = 30)]
    public Property RandomModels_PrefillPiecesAndDecode_MatchReference() => Prop.ForAll(
        Models().ToArbitrary(),
        model =>
        {
            (LlamaConfig config, int seed, int[] tokens, int split) = model;
            using LlamaWeights weights = CheckpointFiles.RandomWeights(config, seed);
            using LlamaReferenceSession reference = new(weights);
            using LlamaSession fast = new(weights, new SessionOptions());

            // One piece, then the same tokens in two pieces, then the last one decoded alone.
            float[] expected = reference.Forward(tokens).ToArray();
            float[] whole = fast.Forward(tokens).ToArray();
            fast.Reset();
            if (split > 0)
            {
                fast.Forward(tokens.AsSpan(0, split));
            }

            if (split < tokens.Length - 1)
            {
                fast.Forward(tokens.AsSpan(split, tokens.Length - 1 - split));
            }

            float[] decoded = fast.Forward(tokens.AsSpan(tokens.Length - 1)).ToArray();

            // Tolerance: 1e-4 relative to (1 + |logit|); float32 sums in another order than the reference's.
            double worst = Math.Max(Worst(expected, whole), Worst(expected, decoded));
            return (worst <= 1e-4).Label($"{config.ToJson().ReplaceLineEndings(" ")} seed {seed} split {split}: worst {worst}");
        });

    [Fact]
    public void Decode_AllocatesNothingPerStep()
    {
        using LlamaSession session = new(TestData.Stories, new SessionOptions());
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
    public void RejectsTokensBeyondTheContextAndOutsideTheVocabulary()
    {
        using LlamaSession session = new(TestData.Stories, new SessionOptions { ContextLength = 4 });
        Assert.Throws<ArgumentException>(() => session.Forward([512]));
        Assert.Throws<InvalidOperationException>(() => session.Forward([1, 2, 3, 4, 5]));
        session.Forward([1, 2, 3, 4]);
        Assert.Throws<InvalidOperationException>(() => session.Forward([1]));
    }

    private static Gen<(LlamaConfig Config, int Seed, int[] Tokens, int Split)> Models() =>
        from headDim in Gen.Elements(2, 6, 8, 16, 18)
        from kvHeads in Gen.Choose(1, 3)
        from groupSize in Gen.Choose(1, 3)
        from hidden in Gen.Elements(1, 17, 40, 96)
        from layers in Gen.Choose(1, 2)
        from vocab in Gen.Choose(3, 70)
        from seqLen in Gen.Choose(1, 60)
        from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
        from shared in Gen.Elements(true, false)
        from seed in Gen.Choose(0, 1_000_000)
        from count in Gen.Choose(1, seqLen)
        from split in Gen.Choose(0, count - 1) // tokens before the second piece; 0: no first piece
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
        }, seed, tokens, split);

    private static double Worst(float[] expected, float[] actual)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / (1 + Math.Abs(expected[i])));
        }

        return worst;
    }

    private static void AssertClose(float[] expected, float[] actual, double tolerance, string where)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance, $"{where}, logit {i}: {actual[i]} vs {expected[i]}");
        }
    }

    // Records what a generator logs.
    private sealed class ListLogger : Microsoft.Extensions.Logging.ILogger
    {
        public List<(Microsoft.Extensions.Logging.LogLevel Level, string Message)> Entries { get; } = [];

        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => true;

        public void Log<TState>(
            Microsoft.Extensions.Logging.LogLevel logLevel,
            Microsoft.Extensions.Logging.EventId eventId,
            TState state,
            Exception? exception,
            Func<TState, Exception?, string> formatter) => Entries.Add((logLevel, formatter(state, exception)));
    }
}
