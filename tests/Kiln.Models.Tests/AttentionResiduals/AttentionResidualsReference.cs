// The float64 scalar reference of a Llama forward pass with (or without) Block Attention Residuals, the oracle of
// AttentionResidualsTests. It is written from the rule in src/Kiln.Models/Llama/AttentionResiduals.cs, not from the
// fast path: the block partition is derived here from the block count, the depth sources are a plain list per token,
// and every sum is a double. Token by token over a double KV cache; it returns the logits of every position.
//
// Per token, with S = 2L sublayers cut into N blocks (the first S mod N blocks one longer):
//   b_0 = embedding; for each block n, for each sublayer s of it (attention of layer s/2 when s is even, else MLP):
//     sources = [b_0, .., b_n] (completed blocks), plus p (the block's partial sum) unless s starts the block
//     h = Σ_i softmax_i(w_s · (g_s ⊙ v_i / √(mean(v_i²) + eps))) v_i
//     p += sublayer(h)           (the sublayer normalises h with its own RMSNorm, as standard Llama does)
//   b_{n+1} = p after the block's last sublayer
//   logits = classifier · RmsNorm(mix over [b_0 .. b_N] with row 2L, final_norm)
// Without the option: x = embedding, x += sublayer(x) for every sublayer, logits = classifier · RmsNorm(x, final_norm).
using Kiln.Kernels;
using Kiln.Models.Llama;

namespace Kiln.Models.Tests;

/// <summary>The float64 reference forward of a Llama model with or without Block AttnRes (see the file header).</summary>
internal sealed class AttentionResidualsReference
{
    private readonly LlamaConfig _c;
    private readonly double[] _embedding;      // [V, D]
    private readonly double[] _finalNorm;      // [D]
    private readonly double[] _classifier;     // [V, D]
    private readonly double[][][] _layers;     // [L][attention norm, wq, wk, wv, wo, ffn norm, w1, w2, w3]
    private readonly double[]? _queries;       // [2L + 1, D]
    private readonly double[]? _gains;         // [2L + 1, D]
    private readonly List<double[]>[] _keys;   // per layer, per position [Hkv·Dh]
    private readonly List<double[]>[] _values;

    /// <summary>Reads the weights (float32 on the cpu) into doubles.</summary>
    public AttentionResidualsReference(LlamaWeights weights)
    {
        _c = weights.Config;
        _embedding = Widen(weights.TokenEmbedding.ToArray());
        _finalNorm = Widen(weights.FinalNorm.ToArray());
        _classifier = Widen(weights.Classifier.ToArray());
        _layers = [.. weights.Layers.Select(l => new[] { l.AttentionNorm, l.Wq, l.Wk, l.Wv, l.Wo, l.FfnNorm, l.W1, l.W2, l.W3 }.Select(t => Widen(t.ToArray())).ToArray())];
        if (weights.AttentionResiduals is { } vectors)
        {
            _queries = Widen(vectors.Queries.ToArray());
            _gains = Widen(vectors.KeyNorms.ToArray());
        }

        _keys = [.. Enumerable.Range(0, _c.Layers).Select(_ => new List<double[]>())];
        _values = [.. Enumerable.Range(0, _c.Layers).Select(_ => new List<double[]>())];
    }

    /// <summary>The logits after each of <paramref name="tokens"/>, run from position 0. [T][V]</summary>
    public static double[][] Run(LlamaWeights weights, IReadOnlyList<int> tokens)
    {
        AttentionResidualsReference reference = new(weights);
        return [.. tokens.Select((token, pos) => reference.Token(token, pos))];
    }

    private double[] Token(int token, int pos)
    {
        int d = _c.Dim, sublayers = 2 * _c.Layers;
        double[] embedding = _embedding.AsSpan(token * d, d).ToArray();
        double[] readout;
        if (_c.AttentionResiduals is not { } option)
        {
            // Standard residual stream.
            double[] x = embedding;
            for (int s = 0; s < sublayers; s++)
            {
                Add(x, Sublayer(s, x, pos));
            }

            readout = x;
        }
        else
        {
            // Block AttnRes: the completed block sums after the embedding, and the running sum of the current block.
            List<double[]> completed = [embedding];
            int s = 0;
            for (int n = 0; n < option.Blocks; n++)
            {
                int size = (sublayers / option.Blocks) + (n < sublayers % option.Blocks ? 1 : 0);
                double[] partial = new double[d];
                for (int i = 0; i < size; i++, s++)
                {
                    List<double[]> sources = i == 0 ? completed : [.. completed, partial];
                    Add(partial, Sublayer(s, Mix(s, sources), pos));
                }

                completed.Add(partial);
            }

            readout = Mix(sublayers, completed);
        }

        // Final norm and classifier.
        double[] normed = RmsNorm(readout, _finalNorm);
        return MatVec(_classifier, normed, _c.VocabSize, d);
    }

    // The softmax-weighted mix of the sources with the query and gain of row `row`.
    private double[] Mix(int row, List<double[]> sources)
    {
        int d = _c.Dim;
        double[] logits = new double[sources.Count];
        for (int i = 0; i < sources.Count; i++)
        {
            double[] v = sources[i];
            double meanSquare = v.Sum(e => e * e) / d;
            double scale = 1.0 / Math.Sqrt(meanSquare + _c.NormEps);
            double dot = 0;
            for (int j = 0; j < d; j++)
            {
                dot += _queries![(row * d) + j] * _gains![(row * d) + j] * v[j] * scale;
            }

            logits[i] = dot;
        }

        double max = logits.Max();
        double[] alpha = [.. logits.Select(z => Math.Exp(z - max))];
        double total = alpha.Sum();
        double[] output = new double[d];
        for (int i = 0; i < sources.Count; i++)
        {
            for (int j = 0; j < d; j++)
            {
                output[j] += alpha[i] / total * sources[i][j];
            }
        }

        return output;
    }

    // Sublayer s on its input h: attention of layer s / 2 when s is even, its MLP when odd.
    private double[] Sublayer(int s, double[] h, int pos)
    {
        double[][] w = _layers[s / 2];
        int d = _c.Dim;
        if (s % 2 == 1)
        {
            // MLP: W2 (silu(W1 xb) ⊙ (W3 xb)).
            double[] xb = RmsNorm(h, w[5]);
            double[] gate = MatVec(w[6], xb, _c.HiddenDim, d);
            double[] up = MatVec(w[8], xb, _c.HiddenDim, d);
            double[] hidden = [.. gate.Select((g, i) => g / (1 + Math.Exp(-g)) * up[i])];
            return MatVec(w[7], hidden, d, _c.HiddenDim);
        }

        // Attention: projections, RoPE, causal softmax over the cache, grouped-query heads, Wo.
        int layer = s / 2, dh = _c.HeadDim, group = _c.Heads / _c.KvHeads;
        double[] normed = RmsNorm(h, w[0]);
        double[] q = MatVec(w[1], normed, _c.QueryDim, d);
        double[] k = MatVec(w[2], normed, _c.KvDim, d);
        double[] v = MatVec(w[3], normed, _c.KvDim, d);
        for (int head = 0; head < _c.Heads; head++)
        {
            Rope(q.AsSpan(head * dh, dh), pos);
        }

        for (int head = 0; head < _c.KvHeads; head++)
        {
            Rope(k.AsSpan(head * dh, dh), pos);
        }

        _keys[layer].Add(k);
        _values[layer].Add(v);
        double[] attention = new double[_c.QueryDim];
        for (int head = 0; head < _c.Heads; head++)
        {
            int kv = head / group * dh;
            double[] scores = new double[pos + 1];
            for (int t = 0; t <= pos; t++)
            {
                double dot = 0;
                for (int i = 0; i < dh; i++)
                {
                    dot += q[(head * dh) + i] * _keys[layer][t][kv + i];
                }

                scores[t] = dot / Math.Sqrt(dh);
            }

            double max = scores.Max();
            double[] p = [.. scores.Select(z => Math.Exp(z - max))];
            double total = p.Sum();
            for (int t = 0; t <= pos; t++)
            {
                for (int i = 0; i < dh; i++)
                {
                    attention[(head * dh) + i] += p[t] / total * _values[layer][t][kv + i];
                }
            }
        }

        return MatVec(w[4], attention, d, _c.QueryDim);
    }

    private void Rope(Span<double> head, int pos)
    {
        int pairs = head.Length / 2;
        for (int i = 0; i < pairs; i++)
        {
            double angle = pos / Math.Pow(_c.RopeTheta, 2.0 * i / head.Length);
            int a = _c.RopeLayout == RopeLayout.Adjacent ? 2 * i : i;
            int b = _c.RopeLayout == RopeLayout.Adjacent ? (2 * i) + 1 : i + pairs;
            (double v0, double v1) = (head[a], head[b]);
            head[a] = (v0 * Math.Cos(angle)) - (v1 * Math.Sin(angle));
            head[b] = (v0 * Math.Sin(angle)) + (v1 * Math.Cos(angle));
        }
    }

    private double[] RmsNorm(double[] x, double[] weight)
    {
        double scale = 1.0 / Math.Sqrt((x.Sum(e => e * e) / x.Length) + _c.NormEps);
        return [.. x.Select((e, j) => weight[j] * e * scale)];
    }

    // y = W x with W [rows, cols].
    private static double[] MatVec(double[] w, double[] x, int rows, int cols)
    {
        double[] y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double sum = 0;
            for (int j = 0; j < cols; j++)
            {
                sum += w[(r * cols) + j] * x[j];
            }

            y[r] = sum;
        }

        return y;
    }

    private static void Add(double[] x, double[] delta)
    {
        for (int j = 0; j < x.Length; j++)
        {
            x[j] += delta[j];
        }
    }

    private static double[] Widen(float[] values) => [.. values.Select(v => (double)v)];
}
