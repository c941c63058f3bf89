// The reference forward pass: stories260K logits at positions 0..2 against the values printed by llama2.c's
// run.c (../shared/reference), a float64 transcription of the Llama math on both real models and on random small
// models (GQA groupings, both RoPE layouts, separate classifiers), prefill equal to token-by-token decode,
// allocation-free decode steps, and the session's error cases.

using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Kernels;
using Kiln.Models.Llama;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class ReferenceSessionTests
{
    // From ../shared/reference/stories260K-greedy.md: per position the token fed, argmax, max, sum, first16.
    private static readonly (int Token, int ArgMax, double Max, double Sum, double[] First16)[] s_reference =
    [
        (1, 403, 17.023516, -1070.171674,
        [
            -6.222911, 8.404342, -6.223737, -6.222542, -6.221951, -6.222875, -6.221880, -6.223416,
            -6.223077, -6.223024, -6.221830, -6.222826, -5.181735, 6.449806, -6.223356, -6.222801,
        ]),
        (403, 407, 18.459986, -2162.157880,
        [
            -9.589458, 3.841276, -9.590532, -9.589193, -9.588642, -9.590147, -9.588483, -9.590077,
            -9.590058, -9.589869, -9.588421, -9.589366, -8.416579, -1.481575, -9.589803, -9.589470,
        ]),
        (407, 261, 17.136963, -2808.686215,
        [
            -12.141099, 1.776247, -12.142951, -12.141023, -12.140549, -12.142582, -12.139871, -12.141809,
            -12.142374, -12.142152, -12.140350, -12.140642, -10.299404, -4.126080, -12.141816, -12.140813,
        ]),
    ];

    [Fact]
    public void Stories260K_LogitsAtPositions0To2_MatchLlama2c()
    {
        using LlamaReferenceSession session = new(TestData.Stories);

        foreach ((int token, int argMax, double max, double sum, double[] first16) in s_reference)
        {
            float[] logits = session.Forward([token]).ToArray();

            // Tolerance 1e-4 absolute on every printed value (the reference prints 6 decimals).
            Assert.Equal(argMax, Array.IndexOf(logits, logits.Max()));
            Assert.Equal(max, logits.Max(), 1e-4);
            Assert.Equal(sum, logits.Sum(v => (double)v), 1e-4 * 512);
            for (int i = 0; i < 16; i++)
            {
                Assert.True(Math.Abs(first16[i] - logits[i]) <= 1e-4, $"position {session.Position - 1}, logit {i}: {logits[i]} vs {first16[i]}");
            }
        }
    }

    [Theory]
    [InlineData("stories")]
    [InlineData("aidreams")]
    public void RealModels_MatchAFloat64Forward(string model)
    {
        LlamaWeights weights = model == "stories" ? TestData.Stories : TestData.Aidreams;
        int[] tokens = model == "stories" ? [1, .. TestData.GreedyReferenceIds[..23]] : TestData.AidreamsTok.Encode("I dream of vectors and quiet light");
        using LlamaReferenceSession session = new(weights);
        Float64Forward oracle = new(weights);

        // Tolerance: |float32 - float64| <= 2e-3 (1 + |logit|), over every position and every logit.
        for (int t = 0; t < tokens.Length; t++)
        {
            float[] actual = session.Forward([tokens[t]]).ToArray();
            double[] expected = oracle.Forward(tokens[t]);
            AssertClose(expected, actual, 2e-3, $"{model} position {t}");
        }
    }

    [Property(MaxTest = 40)]
    public Property RandomSmallModels_MatchAFloat64Forward() => Prop.ForAll(
        SmallModels().ToArbitrary(),
        model =>
        {
            (LlamaConfig config, int seed, int[] tokens) = model;
            using LlamaWeights weights = CheckpointFiles.RandomWeights(config, seed);
            using LlamaReferenceSession session = new(weights);
            Float64Forward oracle = new(weights);
            double worst = 0;
            foreach (int token in tokens)
            {
                float[] actual = session.Forward([token]).ToArray();
                double[] expected = oracle.Forward(token);
                for (int i = 0; i < actual.Length; i++)
                {
                    worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]) / (1 + Math.Abs(expected[i])));
                }
            }

            // Tolerance: 1e-3 relative to (1 + |logit|).
            return (worst <= 1e-3).Label($"{config.ToJson().ReplaceLineEndings(" ")} seed {seed}: worst {worst}");
        });

    [Fact]
    public void Prefill_EqualsTokenByToken_AndResetStartsOver()
    {
        int[] tokens = [1, .. TestData.GreedyReferenceIds[..30]];
        using LlamaReferenceSession session = new(TestData.Stories);

        float[] prefill = session.Forward(tokens).ToArray();
        Assert.Equal(31, session.Position);
        session.Reset();
        Assert.Equal(0, session.Position);
        float[] pieces = session.Forward(tokens.AsSpan(0, 11)).ToArray();
        pieces = session.Forward(tokens.AsSpan(11, 19)).ToArray();
        foreach (int token in tokens[30..])
        {
            pieces = session.Forward([token]).ToArray();
        }

        Assert.Equal(prefill, pieces);
    }

    [Fact]
    public void Decode_AllocatesNothingPerStep()
    {
        using LlamaReferenceSession session = new(TestData.Stories);
        int[] token = [1];
        session.Forward(token);

        long allocated = Allocations.Measure(() =>
        {
            for (int i = 0; i < 50; i++)
            {
                session.Forward(token);
            }
        });

        Assert.Equal(0, allocated);
    }

    [Fact]
    public void Forward_BeyondTheContext_Throws_AndLeavesThePositionAlone()
    {
        using LlamaReferenceSession session = new(TestData.Aidreams, new SessionOptions { ContextLength = 8 });
        session.Forward([1, 2, 3, 4, 5, 6]);

        InvalidOperationException e = Assert.Throws<InvalidOperationException>(() => session.Forward([1, 2, 3]));

        Assert.Contains("the context holds 8 and 6 are used", e.Message);
        Assert.Equal(6, session.Position);
        session.Forward([1, 2]);
        Assert.Equal(8, session.Position);
    }

    [Fact]
    public void Forward_BadTokens_Throw()
    {
        using LlamaReferenceSession session = new(TestData.Stories);

        ArgumentException outside = Assert.Throws<ArgumentException>(() => session.Forward([1, 512]));
        ArgumentException negative = Assert.Throws<ArgumentException>(() => session.Forward([-1]));
        ArgumentException empty = Assert.Throws<ArgumentException>(() => session.Forward([]));

        Assert.Contains("Token 1 is id 512", outside.Message);
        Assert.Contains("id -1", negative.Message);
        Assert.Contains("at least one token", empty.Message);
        Assert.Equal(0, session.Position);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(129)]
    public void ContextLength_OutsideTheModel_Throws(int length)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new LlamaReferenceSession(TestData.Aidreams, new SessionOptions { ContextLength = length }));
    }

    [Fact]
    public void Session_OverWeightsOnAnotherDevice_GivesTheSameLogits()
    {
        using Kiln.Devices.IlgpuDevice device = Kiln.Devices.IlgpuDevice.CreateCpuAccelerator();
        using LlamaWeights onDevice = TestData.Stories.To(device);
        using LlamaReferenceSession remote = new(onDevice);
        using LlamaReferenceSession local = new(TestData.Stories);

        Assert.Equal(local.Forward([1, 403, 407]).ToArray(), remote.Forward([1, 403, 407]).ToArray());
    }

    private static void AssertClose(double[] expected, float[] actual, double tolerance, string where)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            double error = Math.Abs(actual[i] - expected[i]);
            Assert.True(error <= tolerance * (1 + Math.Abs(expected[i])), $"{where}, logit {i}: {actual[i]} vs {expected[i]}");
        }
    }

    /// <summary>
    /// Random valid configs: head width 2..8 (even), 1..4 KV heads times a group of 1..3, hidden 1..23 (odd
    /// sizes included), 1..3 layers, vocab 3..40, context 1..12, both RoPE layouts, shared or separate classifier;
    /// plus a seed and a token sequence that fills 1..context positions.
    /// </summary>
    private static Gen<(LlamaConfig Config, int Seed, int[] Tokens)> SmallModels() =>
        from headDim in Gen.Elements(2, 4, 6, 8)
        from kvHeads in Gen.Choose(1, 4)
        from groupSize in Gen.Choose(1, 3)
        from hidden in Gen.Choose(1, 23)
        from layers in Gen.Choose(1, 3)
        from vocab in Gen.Choose(3, 40)
        from seqLen in Gen.Choose(1, 12)
        from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
        from shared in Gen.Elements(true, false)
        from seed in Gen.Choose(0, 1_000_000)
        from count in Gen.Choose(1, seqLen)
        from tokens in Gen.Choose(0, vocab - 1).ArrayOf(count)
        select (new LlamaConfig
        {
            Dim = kvHeads * groupSize * headDim,
            HiddenDim = hidden,
            Layers = layers,
            Heads = kvHeads * groupSize,
            KvHeads = kvHeads,
            VocabSize = vocab,
            SeqLen = seqLen,
            HeadDim = headDim,
            RopeLayout = layout,
            RopeTheta = 10000f,
            SharedClassifier = shared,
        }, seed, tokens);
}

/// <summary>
/// An independent float64 transcription of the Llama forward pass (written from the math, not from the session):
/// RMSNorm, RoPE in both layouts, grouped-query causal attention over a growing cache, SwiGLU, the classifier.
/// </summary>
internal sealed class Float64Forward
{
    private readonly LlamaConfig _c;
    private readonly double[] _embedding;
    private readonly double[] _classifier;
    private readonly double[] _finalNorm;
    private readonly double[][][] _layers; // [layer][attention norm, wq, wk, wv, wo, ffn norm, w1, w2, w3]
    private readonly List<double[]>[] _keys;
    private readonly List<double[]>[] _values;

    public Float64Forward(LlamaWeights weights)
    {
        _c = weights.Config;
        _embedding = ToDoubles(weights.TokenEmbedding);
        _classifier = ToDoubles(weights.Classifier);
        _finalNorm = ToDoubles(weights.FinalNorm);
        _layers = [.. weights.Layers.Select(l => l.Tensors.Select(ToDoubles).ToArray())];
        _keys = [.. Enumerable.Range(0, _c.Layers).Select(_ => new List<double[]>())];
        _values = [.. Enumerable.Range(0, _c.Layers).Select(_ => new List<double[]>())];
    }

    public double[] Forward(int token)
    {
        int pos = _keys[0].Count;
        int d = _c.Dim;
        int dh = _c.HeadDim;
        double[] x = _embedding.AsSpan(token * d, d).ToArray();
        for (int l = 0; l < _c.Layers; l++)
        {
            double[][] w = _layers[l];
            double[] h = Norm(x, w[0]);
            double[] q = Linear(w[1], h);
            double[] k = Linear(w[2], h);
            double[] v = Linear(w[3], h);
            for (int head = 0; head < _c.Heads; head++)
            {
                Rotate(q, head * dh, pos);
            }

            for (int head = 0; head < _c.KvHeads; head++)
            {
                Rotate(k, head * dh, pos);
            }

            _keys[l].Add(k);
            _values[l].Add(v);
            double[] attention = new double[_c.QueryDim];
            int group = _c.Heads / _c.KvHeads;
            for (int head = 0; head < _c.Heads; head++)
            {
                int kv = head / group * dh;
                double[] scores = new double[pos + 1];
                for (int t = 0; t <= pos; t++)
                {
                    double dot = 0;
                    for (int i = 0; i < dh; i++)
                    {
                        dot += q[(head * dh) + i] * _keys[l][t][kv + i];
                    }

                    scores[t] = dot / Math.Sqrt(dh);
                }

                double max = scores.Max();
                double[] p = [.. scores.Select(s => Math.Exp(s - max))];
                double total = p.Sum();
                for (int t = 0; t <= pos; t++)
                {
                    for (int i = 0; i < dh; i++)
                    {
                        attention[(head * dh) + i] += p[t] / total * _values[l][t][kv + i];
                    }
                }
            }

            Add(x, Linear(w[4], attention));
            double[] f = Norm(x, w[5]);
            double[] gate = Linear(w[6], f);
            double[] up = Linear(w[8], f);
            double[] hidden = [.. gate.Select((g, i) => g / (1 + Math.Exp(-g)) * up[i])];
            Add(x, Linear(w[7], hidden));
        }

        return Linear(_classifier, Norm(x, _finalNorm));
    }

    private void Rotate(double[] vector, int offset, int pos)
    {
        int half = _c.HeadDim / 2;
        for (int i = 0; i < half; i++)
        {
            double angle = pos * Math.Pow(_c.RopeTheta, -2.0 * i / _c.HeadDim);
            (int a, int b) = _c.RopeLayout == RopeLayout.Adjacent ? (2 * i, (2 * i) + 1) : (i, i + half);
            double x0 = vector[offset + a];
            double x1 = vector[offset + b];
            vector[offset + a] = (x0 * Math.Cos(angle)) - (x1 * Math.Sin(angle));
            vector[offset + b] = (x0 * Math.Sin(angle)) + (x1 * Math.Cos(angle));
        }
    }

    private double[] Norm(double[] x, double[] weight)
    {
        double scale = 1 / Math.Sqrt((x.Sum(v => v * v) / x.Length) + _c.NormEps);
        return [.. x.Select((v, i) => v * scale * weight[i])];
    }

    private static double[] Linear(double[] w, double[] x)
    {
        int rows = w.Length / x.Length;
        double[] y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < x.Length; c++)
            {
                y[r] += w[(r * x.Length) + c] * x[c];
            }
        }

        return y;
    }

    private static void Add(double[] x, double[] delta)
    {
        for (int i = 0; i < x.Length; i++)
        {
            x[i] += delta[i];
        }
    }

    private static double[] ToDoubles(Tensor tensor) => [.. tensor.ToArray().Select(v => (double)v)];
}
