// LlamaRopeLayout on grouped-query shapes: permuting rows adjacent → half-split → adjacent (and the reverse) is the
// identity, and every attention score q·k of a float64 reference with half-split RoPE on the original weights equals
// the score with adjacent RoPE on the permuted weights, the keys permuted per key/value head (Hkv of them) and the
// queries per query head (H). Permuting the keys per query head instead (a known converter bug) changes the scores,
// which a test checks, so the property is able to fail. A whole model converted either way gives the same logits.

using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Kernels;
using Kiln.Models.Llama;
using Xunit;

namespace Kiln.Models.Tests.HuggingFace;

public sealed class LlamaRopeLayoutTests
{
    // Scores in float64 from float32 weights: only the order of the terms differs between the layouts.
    private const double ScoreTolerance = 1e-9;

    [Property(MaxTest = 60)]
    public Property GqaPermutation_KeepsEveryScore_AndRoundTrips() => Prop.ForAll(
        (from kvHeads in Gen.Choose(1, 3)
         from groupSize in Gen.Choose(1, 3)
         from half in Gen.Choose(1, 5)
         from dim in Gen.Choose(1, 13)
         from seed in Gen.Choose(0, 100000)
         select (kvHeads, heads: kvHeads * groupSize, headDim: 2 * half, dim, seed)).ToArbitrary(),
        shape =>
        {
            (int kvHeads, int heads, int headDim, int dim, int seed) = shape;
            Random random = new(seed);
            float[] wq = RandomMatrix(random, heads * headDim, dim);
            float[] wk = RandomMatrix(random, kvHeads * headDim, dim);
            double[][] inputs = [.. Enumerable.Range(0, 3).Select(_ => RandomVector(random, dim))];
            int[] positions = [0, 5, 17];

            // Half-split weights (as in a Hugging Face folder) → adjacent rows, each projection per head of its own count.
            using Tensor q = Tensor.FromArray(wq, [heads * headDim, dim]);
            using Tensor k = Tensor.FromArray(wk, [kvHeads * headDim, dim]);
            LlamaRopeLayout.PermuteRows(q, heads, headDim, RopeLayout.Adjacent);
            LlamaRopeLayout.PermuteRows(k, kvHeads, headDim, RopeLayout.Adjacent);
            float[] wqAdjacent = q.ToArray();
            float[] wkAdjacent = k.ToArray();

            double[] expected = Scores(wq, wk, heads, kvHeads, headDim, dim, inputs, positions, RopeLayout.HalfSplit);
            double[] actual = Scores(wqAdjacent, wkAdjacent, heads, kvHeads, headDim, dim, inputs, positions, RopeLayout.Adjacent);
            double worst = expected.Zip(actual, static (e, a) => Math.Abs(e - a) / Math.Max(1, Math.Abs(e))).Max();

            // And back: the identity, both ways round.
            LlamaRopeLayout.PermuteRows(q, heads, headDim, RopeLayout.HalfSplit);
            LlamaRopeLayout.PermuteRows(k, kvHeads, headDim, RopeLayout.HalfSplit);
            bool identity = q.ToArray().SequenceEqual(wq) && k.ToArray().SequenceEqual(wk);
            LlamaRopeLayout.PermuteRows(k, kvHeads, headDim, RopeLayout.HalfSplit);
            LlamaRopeLayout.PermuteRows(k, kvHeads, headDim, RopeLayout.Adjacent);
            identity &= k.ToArray().SequenceEqual(wk);
            bool moved = headDim == 2 || !wqAdjacent.SequenceEqual(wq);
            return (worst <= ScoreTolerance && identity && moved).Label($"worst score difference {worst}, identity {identity}, rows moved {moved}");
        });

    [Fact]
    public void KeysPermutedPerQueryHead_ChangeTheScores()
    {
        // 4 query heads on 2 key/value heads of width 8: the wrong key permutation (4 heads of width 4) is defined.
        const int heads = 4, kvHeads = 2, headDim = 8, dim = 9;
        Random random = new(7);
        float[] wq = RandomMatrix(random, heads * headDim, dim);
        float[] wk = RandomMatrix(random, kvHeads * headDim, dim);
        double[][] inputs = [RandomVector(random, dim), RandomVector(random, dim)];
        int[] positions = [3, 11];
        using Tensor q = Tensor.FromArray(wq, [heads * headDim, dim]);
        using Tensor right = Tensor.FromArray(wk, [kvHeads * headDim, dim]);
        using Tensor wrong = Tensor.FromArray(wk, [kvHeads * headDim, dim]);

        LlamaRopeLayout.PermuteRows(q, heads, headDim, RopeLayout.Adjacent);
        LlamaRopeLayout.PermuteRows(right, kvHeads, headDim, RopeLayout.Adjacent);
        LlamaRopeLayout.PermuteRows(wrong, heads, kvHeads * headDim / heads, RopeLayout.Adjacent);

        double[] expected = Scores(wq, wk, heads, kvHeads, headDim, dim, inputs, positions, RopeLayout.HalfSplit);
        double[] good = Scores(q.ToArray(), right.ToArray(), heads, kvHeads, headDim, dim, inputs, positions, RopeLayout.Adjacent);
        double[] bad = Scores(q.ToArray(), wrong.ToArray(), heads, kvHeads, headDim, dim, inputs, positions, RopeLayout.Adjacent);
        Assert.True(expected.Zip(good).All(static p => Math.Abs(p.First - p.Second) <= ScoreTolerance));
        Assert.True(expected.Zip(bad).Max(static p => Math.Abs(p.First - p.Second)) > 0.01);
    }

    [Theory]
    [InlineData(RopeLayout.Adjacent)]
    [InlineData(RopeLayout.HalfSplit)]
    public void ConvertedGqaModel_GivesTheSameLogits(RopeLayout start)
    {
        LlamaConfig config = new()
        {
            Dim = 21, HiddenDim = 17, Layers = 2, Heads = 6, KvHeads = 2, VocabSize = 29, SeqLen = 32, HeadDim = 12,
            RopeLayout = start, SharedClassifier = false,
        };
        using LlamaWeights original = CheckpointFiles.RandomWeights(config, seed: 5);
        RopeLayout other = start == RopeLayout.Adjacent ? RopeLayout.HalfSplit : RopeLayout.Adjacent;

        using LlamaWeights converted = LlamaRopeLayout.Convert(original, other);
        using LlamaWeights back = LlamaRopeLayout.Convert(converted, start);

        Assert.Equal(other, converted.Config.RopeLayout);
        Assert.Equal(original.Tensors.Select(static t => t.ToArray()), back.Tensors.Select(static t => t.ToArray()));
        Assert.NotEqual(original.Layers[1].Wk.ToArray(), converted.Layers[1].Wk.ToArray());
        using IInferenceSession a = InferenceSessions.Reference(original, new SessionOptions { ContextLength = 16 });
        using IInferenceSession b = InferenceSessions.Default(converted, new SessionOptions { ContextLength = 16 });
        foreach (int token in new[] { 1, 7, 28, 3, 3, 15, 0, 22, 9 })
        {
            float[] expected = a.Forward([token]).ToArray();
            float[] actual = b.Forward([token]).ToArray();
            Assert.True(expected.Zip(actual).All(static p => Math.Abs(p.First - p.Second) <= 1e-4f * Math.Max(1f, Math.Abs(p.First))), $"token {token}");
        }
    }

    // Every score q_h(i) · k_g(h)(j) for query head h, its key/value head g = h / (H / Hkv) and tokens i, j, with RoPE
    // of the given layout applied at each token's position, in float64.
    private static double[] Scores(
        float[] wq,
        float[] wk,
        int heads,
        int kvHeads,
        int headDim,
        int dim,
        double[][] inputs,
        int[] positions,
        RopeLayout layout)
    {
        List<double> scores = [];
        int group = heads / kvHeads;
        for (int h = 0; h < heads; h++)
        {
            for (int i = 0; i < inputs.Length; i++)
            {
                double[] query = Rope(Project(wq, h * headDim, headDim, dim, inputs[i]), positions[i], layout);
                for (int j = 0; j < inputs.Length; j++)
                {
                    double[] key = Rope(Project(wk, h / group * headDim, headDim, dim, inputs[j]), positions[j], layout);
                    scores.Add(query.Zip(key, static (a, b) => a * b).Sum());
                }
            }
        }

        return [.. scores];
    }

    private static double[] Project(float[] matrix, int firstRow, int rows, int dim, double[] x)
    {
        double[] result = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < dim; c++)
            {
                result[r] += matrix[((firstRow + r) * dim) + c] * x[c];
            }
        }

        return result;
    }

    // RoPE with base 10000: pair i turns by pos · 10000^(-2i / Dh); adjacent pairs (2i, 2i + 1), half-split (i, i + Dh/2).
    private static double[] Rope(double[] head, int pos, RopeLayout layout)
    {
        int half = head.Length / 2;
        double[] result = (double[])head.Clone();
        for (int i = 0; i < half; i++)
        {
            double angle = pos * Math.Pow(10000, -2.0 * i / head.Length);
            (int a, int b) = layout == RopeLayout.Adjacent ? (2 * i, (2 * i) + 1) : (i, i + half);
            result[a] = (head[a] * Math.Cos(angle)) - (head[b] * Math.Sin(angle));
            result[b] = (head[a] * Math.Sin(angle)) + (head[b] * Math.Cos(angle));
        }

        return result;
    }

    private static float[] RandomMatrix(Random random, int rows, int columns) =>
        [.. Enumerable.Range(0, rows * columns).Select(_ => (float)((random.NextDouble() * 2) - 1))];

    private static double[] RandomVector(Random random, int length) =>
        [.. Enumerable.Range(0, length).Select(_ => (random.NextDouble() * 2) - 1)];
}
