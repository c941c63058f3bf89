// Fitting indexers on stories260K: a tiny fit (seconds) lowers the warm-up loss on a held-out window and leaves the
// dense weights alone; the warm-up loss's index scores equal a float64 reference of the indexer on the same captured x;
// bad settings get clear errors.
using Kiln.Kernels;
using Kiln.Models.Dsa;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Xunit;

namespace Kiln.Models.Tests.Dsa;

public sealed class IndexerFitTests
{
    private static readonly Lazy<int[]> s_text = new(() => IndexerFitter.SampleText(TestData.Stories, 1200, 1.0f, 5));

    [Fact]
    public void TinyFit_LowersTheWarmupLossOnHeldOutText_AndKeepsTheDenseWeights()
    {
        // Train on the first 1000 tokens, measure on a window after them; layer 3 Shared.
        int[] text = s_text.Value;
        using DsaWeights weights = StoriesDsa("FFFSF", RopeLayout.HalfSplit);
        IndexerFitOptions options = new() { Steps = 40, Window = 48, LearningRate = 1e-2f, Seed = 3 };
        int[] held = text[1100..1148];
        float[] embedding = weights.Dense.TokenEmbedding.ToArray();
        IndexerFitter.Fit(weights, text[..1000], options with { Steps = 1, LearningRate = 1e-9f });
        double before = IndexerFitter.WarmupLoss(weights, held);
        IndexerFitter.Fit(weights, text[..1000], options);
        double after = IndexerFitter.WarmupLoss(weights, held);
        Assert.True(after < 0.8 * before, $"held-out warm-up loss {before:F4} -> {after:F4}: not 20% lower");
        Assert.Null(weights.Indexers[3]);
        Assert.Equal(embedding, weights.Dense.TokenEmbedding.ToArray());
    }

    [Fact]
    public void TrainingScores_EqualAFloat64Indexer()
    {
        // Layer-2 input of a real window, random indexer weights, both layouts.
        int[] window = s_text.Value[..37];
        DenseAttentionCapture capture = DenseAttentionCapture.Run(TestData.Stories, window);
        foreach (RopeLayout layout in new[] { RopeLayout.Adjacent, RopeLayout.HalfSplit })
        {
            using DsaWeights weights = StoriesDsa("FFFFF", layout, heads: 3, headDim: 12, ropeDims: 6);
            weights.AddRandomIndexers(11);
            using IndexerWarmupLoss loss = new(weights.Config, 37);
            using Tensor x = Tensor.FromArray(capture.NormedInputs[2], [37, weights.Config.Llama.Dim]);
            loss.Compute(weights.Indexers[2]!, x, capture.Distributions[2], null);
            float[] training = loss.LastScores.ToArray();
            double[] reference = DsaSessionTests.IndexerScores(weights, 2, Array.ConvertAll(capture.NormedInputs[2], v => (double)v));
            for (int row = 0; row < 37; row++)
            {
                for (int s = 0; s < 37; s++)
                {
                    // Tolerance: float32 products vs float64, 1e-4 · (1 + |score|); masked entries are -∞.
                    int i = (row * 37) + s;
                    if (s > row)
                    {
                        Assert.True(float.IsNegativeInfinity(training[i]), $"score [{row}, {s}] is not masked ({layout})");
                        continue;
                    }

                    Assert.True(Math.Abs(training[i] - reference[i]) <= 1e-4 * (1 + Math.Abs(reference[i])), $"score [{row}, {s}]: {training[i]} vs {reference[i]} ({layout})");
                }
            }
        }
    }

    [Fact]
    public void Fit_RejectsTextShorterThanAWindow()
    {
        using DsaWeights weights = StoriesDsa("FFFFF", RopeLayout.HalfSplit);
        ArgumentException e = Assert.Throws<ArgumentException>(
            () => IndexerFitter.Fit(weights, new int[10], new IndexerFitOptions { Window = 16 }));
        Assert.Contains("a window needs 16", e.Message, StringComparison.Ordinal);
    }

    // A DSA model over a fresh copy of stories260K (the DSA weights own and free it).
    private static DsaWeights StoriesDsa(string pattern, RopeLayout layout, int heads = 2, int headDim = 16, int ropeDims = 8)
    {
        LlamaWeights dense = Llama2cCheckpoint.Load(TestData.StoriesModel);
        DsaConfig config = new()
        {
            Llama = dense.Config,
            IndexerHeads = heads,
            IndexerHeadDim = headDim,
            IndexerRopeDims = ropeDims,
            IndexerRopeLayout = layout,
            TopK = 8,
            Pattern = IndexCachePattern.Parse(pattern, dense.Config.Layers),
        };
        return new DsaWeights(config, dense);
    }
}
