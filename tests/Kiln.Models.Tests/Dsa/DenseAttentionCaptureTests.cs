// The capture hook for indexer training: x and p of every layer against an independent float64 forward pass written
// here (embedding, RmsNorm, projections, RoPE, softmax per head), and the invariants of p (rows sum to 1, nothing
// above the diagonal), on random small models and on stories260K.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Kernels;
using Kiln.Models.Dsa;
using Kiln.Models.Llama;
using Xunit;

namespace Kiln.Models.Tests.Dsa;

public sealed class DenseAttentionCaptureTests
{
    [Property(MaxTest = 20)]
    public Property Capture_MatchesAFloat64Forward() => Prop.ForAll(
        (from heads in Gen.Choose(1, 3)
         from grp in Gen.Choose(1, 2)
         from headDim in Gen.Elements(2, 4, 6)
         from layers in Gen.Choose(1, 2)
         from t in Gen.Choose(1, 11)
         from seed in Gen.Choose(0, 100_000)
         from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
         select (heads, grp, headDim, layers, t, seed, layout)).ToArbitrary(),
        c =>
        {
            LlamaConfig config = new()
            {
                Dim = c.heads * c.grp * c.headDim, HiddenDim = 5, Layers = c.layers, Heads = c.heads * c.grp,
                KvHeads = c.heads, VocabSize = 17, SeqLen = 12, HeadDim = c.headDim, RopeLayout = c.layout,
            };
            using LlamaWeights weights = CheckpointFiles.RandomWeights(config, c.seed);
            int[] tokens = Enumerable.Range(0, c.t).Select(i => (i * 7 + c.seed) % 17).ToArray();
            DenseAttentionCapture capture = DenseAttentionCapture.Run(weights, tokens);
            (double[][] x, double[][] p) = DenseReference.Capture(weights, tokens);

            // Tolerance: 1e-3 absolute on x (float32 session vs float64), 1e-3 on p (probabilities).
            double worst = 0;
            for (int l = 0; l < config.Layers; l++)
            {
                worst = Math.Max(worst, MaxError(capture.NormedInputs[l], x[l]));
                worst = Math.Max(worst, MaxError(capture.Distributions[l], p[l]));
            }

            return (worst <= 1e-3).Label($"{config.ToJson().ReplaceLineEndings(" ")} seed {c.seed} T {c.t}: worst {worst}");
        });

    [Fact]
    public void Stories_RowsAreDistributionsAndLogitsMatchTheSession()
    {
        int[] tokens = TestData.StoriesTok.Encode("Once upon a time, there was a little girl named Lily.");
        DenseAttentionCapture capture = DenseAttentionCapture.Run(TestData.Stories, tokens);
        using LlamaSession session = new(TestData.Stories, new SessionOptions());
        float[] expected = session.Forward(tokens).ToArray();

        Assert.Equal(expected, capture.LastLogits);
        int t = tokens.Length;
        for (int l = 0; l < capture.Layers; l++)
        {
            for (int row = 0; row < t; row++)
            {
                ReadOnlySpan<float> p = capture.Distributions[l].AsSpan(row * t, t);
                Assert.InRange(p[..(row + 1)].ToArray().Sum(), 1 - 1e-5, 1 + 1e-5);
                Assert.All(p[(row + 1)..].ToArray(), v => Assert.Equal(0f, v));
            }
        }
    }

    private static double MaxError(float[] actual, double[] expected)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]));
        }

        return worst;
    }
}
