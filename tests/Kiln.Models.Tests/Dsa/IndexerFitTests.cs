// Fitting indexers on stories260K: a tiny fit (seconds) lowers the warm-up loss on a held-out window; the training
// forward's index scores equal the inference kernels' (LightningIndexer.AppendKeys/Scores); with K >= T the DSA forward
// equals the dense one; the capture's p rows are causal distributions; bad settings get clear errors.
using Kiln.Kernels;
using Kiln.Models.Dsa;
using Xunit;

namespace Kiln.Models.Tests.Dsa;

public sealed class IndexerFitTests
{
    private static readonly Lazy<int[]> s_text = new(() => IndexerFitter.SampleText(TestData.Stories, 1200, 1.0f, 5));

    [Fact]
    public void TinyFit_LowersTheWarmupLossOnHeldOutText()
    {
        // Train on the first 1000 tokens, measure on a window after them.
        int[] text = s_text.Value;
        IndexerFitOptions options = new() { Heads = 2, HeadDim = 16, RopeDims = 8, Steps = 40, Window = 48, LearningRate = 1e-2f, Seed = 3 };
        int[] held = text[1100..1148];
        using Owned start = Initial(options);
        double before = IndexerFitter.WarmupLoss(TestData.Stories, held, start.Items);
        IndexerParameters?[] fitted = IndexerFitter.Fit(TestData.Stories, text[..1000], options);
        try
        {
            double after = IndexerFitter.WarmupLoss(TestData.Stories, held, fitted);
            Assert.True(after < 0.8 * before, $"held-out warm-up loss {before:F4} -> {after:F4}: not 20% lower");
        }
        finally
        {
            foreach (IndexerParameters? indexer in fitted)
            {
                indexer?.Dispose();
            }
        }
    }

    [Fact]
    public void TrainingScores_EqualTheInferenceKernels()
    {
        // Layer-2 input of a real window, an indexer with random weights, both layouts.
        int[] window = s_text.Value[..37];
        foreach (RopeLayout layout in new[] { RopeLayout.Adjacent, RopeLayout.HalfSplit })
        {
            IndexerShape shape = new(TestData.Stories.Config.Dim, 3, 12, 6, layout, TestData.Stories.Config.RopeTheta);
            using IndexerParameters indexer = IndexerParameters.Random(shape, 11);
            using IndexerWindowForward forward = new(TestData.Stories, 37);
            using IndexerWarmupLoss loss = new(shape, 37);
            float[]? kernel = null;
            float[]? training = null;
            forward.Run(window, (layer, x, p) =>
            {
                if (layer == 2)
                {
                    kernel = IndexerWindowForward.IndexerScores(indexer, x);
                    loss.Compute(indexer, x, p, null);
                    training = loss.LastScores.ToArray();
                }
            });
            for (int i = 0; i < kernel!.Length; i++)
            {
                // Tolerance: float32 products in different orders, 1e-4 relative to the row's largest |score| + 1e-5.
                if (float.IsNegativeInfinity(kernel[i]))
                {
                    Assert.True(float.IsNegativeInfinity(training![i]), $"score {i} is masked by the kernel only");
                    continue;
                }

                Assert.True(Math.Abs(kernel[i] - training![i]) <= (1e-4 * Math.Abs(kernel[i])) + 1e-5, $"score {i}: {kernel[i]} vs {training[i]} ({layout})");
            }
        }
    }

    [Fact]
    public void DsaWithKAtLeastTheWindow_EqualsDense_AndPIsCausal()
    {
        int[] window = s_text.Value[..23];
        IndexerShape shape = new(TestData.Stories.Config.Dim, 2, 8, 4, RopeLayout.HalfSplit);
        using IndexerWindowForward forward = new(TestData.Stories, 23);
        float[] dense = forward.Run(window, (layer, x, p) =>
        {
            for (int t = 0; t < 23; t++)
            {
                double sum = 0;
                for (int s = 0; s < 23; s++)
                {
                    Assert.True(s <= t || p[(t * 23) + s] == 0f, $"p[{t}, {s}] is a future position");
                    sum += p[(t * 23) + s];
                }

                Assert.True(Math.Abs(sum - 1) < 1e-5, $"row {t} of layer {layer} sums to {sum}");
            }
        }).ToArray();
        using IndexerParameters first = IndexerParameters.Random(shape, 1);
        IndexerParameters?[] indexers = [first, null, null, null, null];
        float[] sparse = forward.Run(window, null, indexers, 23).ToArray();
        Assert.Equal(dense, sparse);

        // A small K changes the result (the selection is really applied).
        float[] narrow = forward.Run(window, null, indexers, 2).ToArray();
        Assert.NotEqual(dense, narrow);
    }

    [Fact]
    public void Fit_RejectsTextShorterThanAWindow()
    {
        ArgumentException e = Assert.Throws<ArgumentException>(
            () => IndexerFitter.Fit(TestData.Stories, new int[10], new IndexerFitOptions { Window = 16 }));
        Assert.Contains("a window needs 16", e.Message, StringComparison.Ordinal);
    }

    private static Owned Initial(IndexerFitOptions options)
    {
        IndexerShape shape = new(TestData.Stories.Config.Dim, options.Heads, options.HeadDim, options.RopeDims, options.Layout, TestData.Stories.Config.RopeTheta);
        return new Owned(Enumerable.Range(0, TestData.Stories.Config.Layers).Select(l => (IndexerParameters?)IndexerParameters.Random(shape, options.Seed + (1000 * l))).ToArray());
    }

    private sealed class Owned(IndexerParameters?[] items) : IDisposable
    {
        public IndexerParameters?[] Items { get; } = items;

        public void Dispose()
        {
            foreach (IndexerParameters? item in Items)
            {
                item?.Dispose();
            }
        }
    }
}
