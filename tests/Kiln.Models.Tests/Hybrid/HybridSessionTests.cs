// HybridSession against the float64 reference (HybridReference) for random small hybrids with both mixers (SISO
// and MIMO, RoPE on and off, GQA), decode after prefill and prefill in pieces against one pass, the all-A hybrid
// against LlamaSession on the same weights, Reset and reuse, allocation-free decode, context and id errors.
//
// Tolerance against the reference: max |logit - ref| <= 2e-5 · max(max |ref|, 1). The session computes in float32
// (about 6e-8 relative per rounding); each layer adds the mixer's few 1e-6 relative at most (see Mamba3MixerTests)
// and the matrix products' rounding, over up to 6 layers (measured: at most 9.3e-7 relative over 370 random cases);
// 2e-5 leaves a 20x margin and still fails any wrong term, which moves logits by far more. The floor 1 covers
// logits that cancel to near zero. Float32 paths that should agree (pieces, decode, reuse) are held
// to 1e-5 of the same scale.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Models.Hybrid;
using Kiln.Models.Llama;
using Xunit;

namespace Kiln.Models.Tests.Hybrid;

public sealed class HybridSessionTests
{
    private const double ReferenceTolerance = 2e-5;
    private const double Float32Tolerance = 1e-5;

    [Property(MaxTest = 40)]
    public Property Siso_MatchesTheFloat64Reference() => Prop.ForAll(HybridCases.Cases([1]).ToArbitrary(), MatchesReference);

    [Property(MaxTest = 30)]
    public Property Mimo_MatchesTheFloat64Reference() => Prop.ForAll(HybridCases.Cases([2]).ToArbitrary(), MatchesReference);

    [Property(MaxTest = 30)]
    public Property PrefillInPieces_EqualsOnePiece() => Prop.ForAll(
        HybridCases.Cases([1, 2]).ToArbitrary(),
        Gen.Choose(0, 1000).Two().ToArbitrary(),
        (c, splits) =>
        {
            using HybridWeights weights = HybridWeights.CreateRandom(c.Config, c.Seed);
            using HybridSession session = new(weights, new SessionOptions());
            float[] whole = session.Forward(c.Tokens).ToArray();

            // Up to three pieces at two random points (never empty).
            int t = c.Tokens.Length;
            int first = 1 + (splits.Item1 % t), second = first + (splits.Item2 % (t - first + 1));
            session.Reset();
            float[] last = [];
            foreach ((int from, int to) in new[] { (0, first), (first, second), (second, t) })
            {
                if (to > from)
                {
                    last = session.Forward(c.Tokens.AsSpan(from, to - from)).ToArray();
                }
            }

            return Close(whole, last, Float32Tolerance).Label($"{c} pieces at {first}, {second}");
        });

    [Property(MaxTest = 30)]
    public Property DecodeAfterPrefill_EqualsOnePass() => Prop.ForAll(
        HybridCases.Cases([1, 2]).ToArbitrary(),
        Gen.Choose(0, 1000).ToArbitrary(),
        (c, split) =>
        {
            using HybridWeights weights = HybridWeights.CreateRandom(c.Config, c.Seed);
            using HybridSession whole = new(weights, new SessionOptions());
            using HybridSession stepped = new(weights, new SessionOptions());
            int t = c.Tokens.Length, prompt = 1 + (split % t);

            // A prefill of the prompt, then one step per token; each step's logits against one pass over the prefix.
            stepped.Forward(c.Tokens.AsSpan(0, prompt));
            for (int i = prompt; i < t; i++)
            {
                float[] step = stepped.Forward(c.Tokens.AsSpan(i, 1)).ToArray();
                whole.Reset();
                float[] pass = whole.Forward(c.Tokens.AsSpan(0, i + 1)).ToArray();
                if (!Close(pass, step, Float32Tolerance))
                {
                    return false.Label($"{c} prompt {prompt} step {i}");
                }
            }

            return true.Label(c.ToString());
        });

    [Fact]
    public void LongPrompt_RunsInChunks_AndMatchesTheReference()
    {
        // 300 tokens: two internal chunks of the session (256 + 44), several mixer chunks, then decode steps.
        HybridConfig config = HybridCases.Small(2) with { LayerPattern = "MAMMA", Layers = 5, HiddenDim = 10 };
        config = config with { Mamba3 = config.Mamba3! with { ChunkSize = 7 }, Attention = config.Attention! with { Rope = true } };
        using HybridWeights weights = HybridWeights.CreateRandom(config, 11);
        int[] tokens = HybridCases.Tokens(304, config.VocabSize, 11);
        double[] reference = HybridReference.Forward(weights, tokens);
        using HybridSession session = new(weights, new SessionOptions());
        AssertRow(reference, 299, config.VocabSize, session.Forward(tokens.AsSpan(0, 300)), ReferenceTolerance);
        for (int i = 300; i < 304; i++)
        {
            AssertRow(reference, i, config.VocabSize, session.Forward(tokens.AsSpan(i, 1)), ReferenceTolerance);
        }
    }

    [Property(MaxTest = 20)]
    public Property AllAttention_EqualsLlamaSession() => Prop.ForAll(
        HybridCases.Cases([1]).ToArbitrary(),
        c =>
        {
            // The same weights as a Llama model: an all-A hybrid with RoPE is exactly a Llama block stack.
            HybridConfig config = c.Config with { LayerPattern = "A", Attention = c.Config.Attention! with { Rope = true } };
            using HybridWeights weights = HybridWeights.CreateRandom(config, c.Seed);
            using LlamaWeights llama = LlamaWeights.Allocate(config.ToLlamaConfig());
            IEnumerable<Tensor> hybridTensors = weights.Named().Select(static n => n.Tensor);
            foreach ((Tensor source, Tensor target) in hybridTensors.Zip(llama.Tensors))
            {
                source.AsSpan().CopyTo(target.AsSpan());
            }

            using HybridSession hybrid = new(weights, new SessionOptions());
            using LlamaSession dense = new(llama, new SessionOptions());
            int prompt = Math.Max(1, c.Tokens.Length / 2);
            bool same = Close(dense.Forward(c.Tokens.AsSpan(0, prompt)).ToArray(), hybrid.Forward(c.Tokens.AsSpan(0, prompt)).ToArray(), 1e-5, absolute: true);
            for (int i = prompt; i < c.Tokens.Length && same; i++)
            {
                same = Close(dense.Forward(c.Tokens.AsSpan(i, 1)).ToArray(), hybrid.Forward(c.Tokens.AsSpan(i, 1)).ToArray(), 1e-5, absolute: true);
            }

            return same.Label(c.ToString());
        });

    [Fact]
    public void Reset_ThenReuse_EqualsAFreshSession()
    {
        HybridConfig config = HybridCases.Small(2) with { LayerPattern = "MAMMA", Layers = 5 };
        using HybridWeights weights = HybridWeights.CreateRandom(config, 21);
        int[] first = HybridCases.Tokens(17, config.VocabSize, 1), second = HybridCases.Tokens(13, config.VocabSize, 2);
        using HybridSession used = new(weights, new SessionOptions { ContextLength = 20 });
        used.Forward(first);
        used.Reset();
        Assert.Equal(0, used.Position);
        float[] again = used.Forward(second).ToArray();
        using HybridSession fresh = new(weights, new SessionOptions { ContextLength = 20 });
        Assert.Equal(fresh.Forward(second).ToArray(), again);
    }

    [Fact]
    public void Decode_AllocatesNothing()
    {
        HybridConfig config = HybridCases.Small(2) with { LayerPattern = "MAMMA", Layers = 5 };
        using HybridWeights weights = HybridWeights.CreateRandom(config, 5);
        using HybridSession session = new(weights, new SessionOptions { ContextLength = 200 });
        int[] tokens = HybridCases.Tokens(200, config.VocabSize, 5);
        session.Forward(tokens.AsSpan(0, 20));
        for (int i = 20; i < 40; i++)
        {
            session.Forward(tokens.AsSpan(i, 1));
        }

        int next = 40;
        long bytes = Allocations.Measure(() =>
        {
            for (int i = 0; i < 50; i++)
            {
                session.Forward(tokens.AsSpan(next++, 1));
            }
        });
        Assert.Equal(0, bytes);
    }

    [Fact]
    public void BadCalls_GiveOneLineErrors()
    {
        HybridConfig config = HybridCases.Small(1) with { LayerPattern = "MA", Layers = 2, VocabSize = 9 };
        using HybridWeights weights = HybridWeights.CreateRandom(config, 3);
        using HybridSession session = new(weights, new SessionOptions { ContextLength = 4 });
        Assert.Contains("at least one token", Assert.Throws<ArgumentException>(() => session.Forward([])).Message);
        Assert.Contains("outside the vocabulary", Assert.Throws<ArgumentException>(() => session.Forward([9])).Message);
        session.Forward([1, 2, 3]);
        InvalidOperationException full = Assert.Throws<InvalidOperationException>(() => session.Forward([1, 2]));
        Assert.Contains("1 of the context's 4 positions are left", full.Message);
        Assert.Equal(3, session.Position);
        Assert.Throws<ArgumentOutOfRangeException>(() => new HybridSession(weights, new SessionOptions { ContextLength = 513 }));
        session.Dispose();
        Assert.Throws<ObjectDisposedException>(() => session.Forward([1]));
    }

    // Prefill of a random prompt, then decode steps: every logits row against the reference.
    private static Property MatchesReference(HybridCase c)
    {
        using HybridWeights weights = HybridWeights.CreateRandom(c.Config, c.Seed);
        double[] reference = HybridReference.Forward(weights, c.Tokens);
        using HybridSession session = new(weights, new SessionOptions());
        int v = c.Config.VocabSize, t = c.Tokens.Length, prompt = 1 + (int)(c.Seed % (ulong)t);
        double worst = 0;
        for (int done = 0; done < t;)
        {
            int count = done == 0 ? prompt : 1;
            ReadOnlySpan<float> logits = session.Forward(c.Tokens.AsSpan(done, count));
            done += count;
            (double err, double max) = HybridCases.Compare(reference.AsSpan((done - 1) * v, v), logits);
            worst = Math.Max(worst, err / Math.Max(max, 1));
        }

        return (worst <= ReferenceTolerance).Label($"{c}: relative error {worst:E2}");
    }

    private static void AssertRow(double[] reference, int row, int v, ReadOnlySpan<float> logits, double tolerance)
    {
        (double err, double max) = HybridCases.Compare(reference.AsSpan(row * v, v), logits);
        Assert.True(err <= tolerance * Math.Max(max, 1), $"row {row}: err {err} max {max}");
    }

    private static bool Close(float[] expected, float[] actual, double tolerance, bool absolute = false)
    {
        double err = 0, max = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            err = Math.Max(err, Math.Abs(actual[i] - expected[i]));
            max = Math.Max(max, Math.Abs(expected[i]));
        }

        return err <= (absolute ? tolerance : tolerance * Math.Max(max, 1));
    }
}
