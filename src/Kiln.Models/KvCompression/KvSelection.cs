// Which KV positions one layer keeps when a T-token prompt is compressed to a budget of B tokens (window included).
//
// 1. Scores (SnapKV / ChunkKV, arXiv 2502.00299 Algorithm 1): the last w prompt tokens are the observation window.
//    For window query i at position p = T − w + i and every query head h (all heads, whichever KV head g they share):
//      a[i, h, s] = softmax_s( q[i, h] · K[g(h), s] / √Dh )   over s ∈ [0, p]   (causal, as in the forward pass)
//      score[s]   = Σ_i Σ_h a[i, h, s]                        for s in the prefix [0, T − w)
//    One score per position and so one kept set per layer, shared by every head (what makes reuse across layers cheap).
//    Optional smoothing (SnapKV's reference port): score'[s] = mean of score over [s − P/2, s + P/2] ∩ the prefix.
//    StreamingLLM does not score: score[s] = +∞ for the first `sinks` positions, else s (the most recent win).
// 2. Chunks: the prefix is cut into ⌈(T − w) / c⌉ contiguous chunks of c tokens (the last may be shorter); a chunk's
//    score is the sum of its tokens' scores.
// 3. Keep: the ⌊(B − w) / c⌋ best chunks (ties: the earlier chunk), whole, in position order, then the window
//    [T − w, T). So at most B positions are kept, and exactly B when c divides B − w. c = 1 is SnapKV's token top-k.
//    A budget B ≥ T keeps every position.
using System.Numerics.Tensors;

namespace Kiln.Models.KvCompression;

/// <summary>The scoring and selection of positions to keep (see the file header for the math).</summary>
public static class KvSelection
{
    /// <summary>
    /// The observation-window scores of the prefix positions [0, T − w): the causal softmax attention of the last w
    /// prompt tokens' rotated queries, summed over those queries and over all query heads. float32 dot products and
    /// softmax, float64 sums.
    /// </summary>
    /// <param name="queries">The window's rotated queries, [w, H, Dh], for positions T − w .. T − 1.</param>
    /// <param name="window">w.</param>
    /// <param name="heads">H, a multiple of <paramref name="kvHeads"/>.</param>
    /// <param name="keys">The layer's rotated keys, [Hkv, Dh, capacity], positions [0, T) written.</param>
    /// <param name="kvHeads">Hkv.</param>
    /// <param name="headDim">Dh.</param>
    /// <param name="capacity">The cache's position capacity S (its innermost stride).</param>
    /// <param name="promptLength">T, more than <paramref name="window"/>.</param>
    /// <returns>score[s] for s in [0, T − w).</returns>
    public static double[] WindowScores(
        ReadOnlySpan<float> queries,
        int window,
        int heads,
        ReadOnlySpan<float> keys,
        int kvHeads,
        int headDim,
        int capacity,
        int promptLength)
    {
        int prefix = promptLength - window, group = heads / kvHeads;
        float scale = 1f / MathF.Sqrt(headDim);
        double[] scores = new double[prefix];
        float[] logits = new float[promptLength];
        for (int i = 0; i < window; i++)
        {
            int visible = prefix + i + 1;
            Span<float> row = logits.AsSpan(0, visible);
            for (int h = 0; h < heads; h++)
            {
                // Logits of the window query against every visible key: Σ_d q[d] · K[g, d, 0..visible).
                ReadOnlySpan<float> q = queries.Slice(((i * heads) + h) * headDim, headDim);
                int g = h / group;
                row.Clear();
                for (int d = 0; d < headDim; d++)
                {
                    ReadOnlySpan<float> keyRow = keys.Slice((((g * headDim) + d) * capacity), visible);
                    TensorPrimitives.MultiplyAdd(keyRow, q[d], row, row);
                }

                // Stable softmax: scale, subtract the max, exponentiate, normalise.
                TensorPrimitives.Multiply(row, scale, row);
                float max = TensorPrimitives.Max(row);
                TensorPrimitives.Subtract(row, max, row);
                TensorPrimitives.Exp(row, row);
                double inverse = 1.0 / TensorPrimitives.Sum(row);

                // Add the prefix positions' probabilities.
                for (int s = 0; s < prefix; s++)
                {
                    scores[s] += row[s] * inverse;
                }
            }
        }

        return scores;
    }

    /// <summary>The float64 reference of <see cref="WindowScores"/>, one position at a time (tests).</summary>
    public static double[] WindowScoresReference(
        float[] queries, int window, int heads, float[] keys, int kvHeads, int headDim, int capacity, int promptLength)
    {
        int prefix = promptLength - window, group = heads / kvHeads;
        double[] scores = new double[prefix];
        for (int i = 0; i < window; i++)
        {
            int visible = prefix + i + 1;
            for (int h = 0; h < heads; h++)
            {
                int g = h / group;
                double[] a = new double[visible];
                for (int s = 0; s < visible; s++)
                {
                    double dot = 0;
                    for (int d = 0; d < headDim; d++)
                    {
                        dot += (double)queries[(((i * heads) + h) * headDim) + d] * keys[(((g * headDim) + d) * capacity) + s];
                    }

                    a[s] = dot / Math.Sqrt(headDim);
                }

                double max = a.Max(), sum = a.Sum(z => Math.Exp(z - max));
                for (int s = 0; s < prefix; s++)
                {
                    scores[s] += Math.Exp(a[s] - max) / sum;
                }
            }
        }

        return scores;
    }

    /// <summary>StreamingLLM's scores over a prefix of <paramref name="prefix"/> positions: the first
    /// <paramref name="sinks"/> +∞, then the position itself (later is better).</summary>
    public static double[] RecencyScores(int prefix, int sinks)
    {
        double[] scores = new double[prefix];
        for (int s = 0; s < prefix; s++)
        {
            scores[s] = s < sinks ? double.PositiveInfinity : s;
        }

        return scores;
    }

    /// <summary>The mean of <paramref name="scores"/> over a centred window of <paramref name="width"/> positions
    /// (odd), clipped at the ends; width 1 returns the scores unchanged.</summary>
    public static double[] Pool(double[] scores, int width)
    {
        ArgumentNullException.ThrowIfNull(scores);
        if (width <= 1)
        {
            return scores;
        }

        int half = width / 2;
        double[] pooled = new double[scores.Length];
        for (int s = 0; s < scores.Length; s++)
        {
            int from = Math.Max(0, s - half), to = Math.Min(scores.Length, s + half + 1);
            double sum = 0;
            for (int j = from; j < to; j++)
            {
                sum += scores[j];
            }

            pooled[s] = sum / (to - from);
        }

        return pooled;
    }

    /// <summary>
    /// The positions kept of a <paramref name="promptLength"/>-token prompt: the best ⌊(budget − window) / chunk⌋ whole
    /// chunks of the prefix [0, T − w) by summed score, then the window [T − w, T); ascending. Every position when the
    /// budget is at least T.
    /// </summary>
    /// <param name="scores">One score per prefix position, T − w of them.</param>
    /// <param name="promptLength">T.</param>
    /// <param name="window">w, at least 1.</param>
    /// <param name="chunk">c, at least 1.</param>
    /// <param name="budget">B, tokens kept, the window included; at least w + c when below T.</param>
    /// <exception cref="ArgumentException">An argument is out of range.</exception>
    public static int[] Select(ReadOnlySpan<double> scores, int promptLength, int window, int chunk, int budget)
    {
        if (budget >= promptLength)
        {
            return Enumerable.Range(0, promptLength).ToArray();
        }

        int prefix = promptLength - window;
        if (window < 1 || chunk < 1 || prefix < 1 || scores.Length != prefix || budget < window + chunk)
        {
            throw new ArgumentException(
                $"KvSelection.Select: prompt {promptLength}, window {window}, chunk {chunk}, budget {budget}, {scores.Length} scores: "
                + "need window ≥ 1, chunk ≥ 1, a prefix before the window, one score per prefix position and budget ≥ window + chunk.");
        }

        // Chunk scores: the sum over each chunk's tokens (the last chunk may be shorter).
        int chunks = (prefix + chunk - 1) / chunk;
        double[] chunkScores = new double[chunks];
        for (int s = 0; s < prefix; s++)
        {
            chunkScores[s / chunk] += scores[s];
        }

        // The best chunks, ties to the earlier one, then in position order.
        int keep = Math.Min(chunks, (budget - window) / chunk);
        int[] order = Enumerable.Range(0, chunks).ToArray();
        Array.Sort(order, (a, b) =>
        {
            int byScore = chunkScores[b].CompareTo(chunkScores[a]);
            return byScore != 0 ? byScore : a.CompareTo(b);
        });
        int[] chosen = order[..keep];
        Array.Sort(chosen);

        // Expand the chunks into positions and append the window.
        List<int> kept = new(budget);
        foreach (int id in chosen)
        {
            for (int s = id * chunk; s < Math.Min(prefix, (id + 1) * chunk); s++)
            {
                kept.Add(s);
            }
        }

        for (int s = prefix; s < promptLength; s++)
        {
            kept.Add(s);
        }

        return [.. kept];
    }

    /// <summary>The Jaccard similarity |a ∩ b| / |a ∪ b| of two ascending position sets (1 when both are empty).</summary>
    public static double Jaccard(ReadOnlySpan<int> a, ReadOnlySpan<int> b)
    {
        int i = 0, j = 0, common = 0;
        while (i < a.Length && j < b.Length)
        {
            if (a[i] == b[j])
            {
                common++;
                i++;
                j++;
            }
            else if (a[i] < b[j])
            {
                i++;
            }
            else
            {
                j++;
            }
        }

        int union = a.Length + b.Length - common;
        return union == 0 ? 1 : (double)common / union;
    }
}
