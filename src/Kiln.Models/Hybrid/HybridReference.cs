// The float64 reference forward pass of a hybrid model over a whole sequence from position 0, written straight from
// the math with no chunking, no SIMD and no threads: the oracle HybridSession is tested against.
//
// For tokens t = 0..T-1, with x [T, D] the residual stream:
//   x = embedding[tokens]
//   per layer l:
//     h = RmsNorm(x, mixer_norm_l)                   RmsNorm(v, w)_j = w_j · v_j / √(mean(v²) + eps)
//     A: q = h Wqᵀ, k = h Wkᵀ, v = h Wvᵀ; RoPE on q and k at position t when the config rotates (pair i of a head
//        turns by t · theta^(-2i / Dh), pairs (2i, 2i+1) or (i, i + Dh/2)); per query head (key/value head
//        head / (H / Hkv)) causal softmax(q · k_s / √Dh) over s <= t, out = Σ_s softmax_s v_s; x += out Woᵀ
//     M: x += Mamba3Reference.Forward(mixer_l, h) from a fresh state (the float64 sequential recurrence)
//     h = RmsNorm(x, ffn_norm_l); x += (silu(h W1ᵀ) ⊙ (h W3ᵀ)) W2ᵀ     silu(z) = z / (1 + e^-z)
//   logits [T, V] = RmsNorm(x, norm) classifierᵀ
using Kiln.Kernels;
using Kiln.Models.Mamba;

namespace Kiln.Models.Hybrid;

/// <summary>The float64 forward pass of a hybrid model: the oracle for <see cref="HybridSession"/>.</summary>
public static class HybridReference
{
    /// <summary>The logits [T, V] (row t: the logits after token t) of <paramref name="tokens"/> from position 0.</summary>
    /// <exception cref="ArgumentException">The sequence is empty or an id is outside the vocabulary.</exception>
    public static double[] Forward(HybridWeights weights, ReadOnlySpan<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(weights);
        HybridConfig c = weights.Config;
        if (tokens.IsEmpty)
        {
            throw new ArgumentException("HybridReference.Forward needs at least one token.", nameof(tokens));
        }

        Embedding.CheckIds(tokens, c.VocabSize, nameof(tokens));
        int t = tokens.Length, d = c.DModel;
        double[] x = new double[t * d];
        ReadOnlySpan<float> embedding = weights.TokenEmbedding.AsSpan();
        for (int i = 0; i < t; i++)
        {
            for (int j = 0; j < d; j++)
            {
                x[(i * d) + j] = embedding[(tokens[i] * d) + j];
            }
        }

        for (int l = 0; l < c.Layers; l++)
        {
            HybridLayerWeights w = weights.Layers[l];
            double[] h = RmsNorm(x, w.MixerNorm.AsSpan(), d, c.NormEps);
            double[] mixed = w.Kind == HybridLayerKind.Attention
                ? Attention(c.Attention!, w, h, t, d)
                : Mamba3Reference.Forward(w.Mamba!, h, t, new Mamba3ReferenceState(c.Mamba3!));
            Accumulate(x, mixed);

            // The SwiGLU MLP.
            double[] f = RmsNorm(x, w.FfnNorm.AsSpan(), d, c.NormEps);
            double[] gate = Project(f, w.W1.AsSpan(), t, d, c.HiddenDim);
            double[] up = Project(f, w.W3.AsSpan(), t, d, c.HiddenDim);
            for (int i = 0; i < gate.Length; i++)
            {
                gate[i] = gate[i] / (1 + Math.Exp(-gate[i])) * up[i];
            }

            Accumulate(x, Project(gate, w.W2.AsSpan(), t, c.HiddenDim, d));
        }

        return Project(RmsNorm(x, weights.FinalNorm.AsSpan(), d, c.NormEps), weights.Classifier.AsSpan(), t, d, c.VocabSize);
    }

    // Causal grouped-query attention of the whole sequence, with the optional RoPE, then Wo. [T, D]
    private static double[] Attention(HybridAttentionConfig a, HybridLayerWeights w, double[] h, int t, int d)
    {
        int heads = a.Heads, kvHeads = a.KvHeads, dh = a.HeadDim;
        double[] q = Project(h, w.Wq!.AsSpan(), t, d, heads * dh);
        double[] k = Project(h, w.Wk!.AsSpan(), t, d, kvHeads * dh);
        double[] v = Project(h, w.Wv!.AsSpan(), t, d, kvHeads * dh);
        if (a.Rope)
        {
            Rope(q, t, heads, dh, a.RopeTheta, a.RopeLayout);
            Rope(k, t, kvHeads, dh, a.RopeTheta, a.RopeLayout);
        }

        double[] output = new double[t * heads * dh];
        double[] scores = new double[t];
        double scale = 1 / Math.Sqrt(dh);
        for (int i = 0; i < t; i++)
        {
            for (int head = 0; head < heads; head++)
            {
                int g = head / (heads / kvHeads);

                // Scores over positions 0..i, then a softmax with the max subtracted.
                double max = double.NegativeInfinity;
                for (int s = 0; s <= i; s++)
                {
                    double dot = 0;
                    for (int e = 0; e < dh; e++)
                    {
                        dot += q[(((i * heads) + head) * dh) + e] * k[(((s * kvHeads) + g) * dh) + e];
                    }

                    scores[s] = dot * scale;
                    max = Math.Max(max, scores[s]);
                }

                double sum = 0;
                for (int s = 0; s <= i; s++)
                {
                    scores[s] = Math.Exp(scores[s] - max);
                    sum += scores[s];
                }

                for (int s = 0; s <= i; s++)
                {
                    for (int e = 0; e < dh; e++)
                    {
                        output[(((i * heads) + head) * dh) + e] += scores[s] / sum * v[(((s * kvHeads) + g) * dh) + e];
                    }
                }
            }
        }

        return Project(output, w.Wo!.AsSpan(), t, heads * dh, d);
    }

    // RoPE over whole heads [T, heads, Dh] at positions 0..T-1.
    private static void Rope(double[] x, int t, int heads, int dh, float theta, RopeLayout layout)
    {
        int half = dh / 2;
        for (int i = 0; i < t; i++)
        {
            for (int pair = 0; pair < half; pair++)
            {
                double angle = i * Math.Pow(theta, -2.0 * pair / dh);
                (double sin, double cos) = Math.SinCos(angle);
                int first = layout == RopeLayout.Adjacent ? 2 * pair : pair;
                int second = layout == RopeLayout.Adjacent ? first + 1 : pair + half;
                for (int head = 0; head < heads; head++)
                {
                    int at = ((i * heads) + head) * dh;
                    double v0 = x[at + first], v1 = x[at + second];
                    x[at + first] = (v0 * cos) - (v1 * sin);
                    x[at + second] = (v0 * sin) + (v1 * cos);
                }
            }
        }
    }

    // Row-wise RMSNorm of x [rows, d] with weight [d].
    private static double[] RmsNorm(double[] x, ReadOnlySpan<float> weight, int d, float eps)
    {
        double[] result = new double[x.Length];
        for (int row = 0; row < x.Length / d; row++)
        {
            double squares = 0;
            for (int j = 0; j < d; j++)
            {
                squares += x[(row * d) + j] * x[(row * d) + j];
            }

            double scale = 1 / Math.Sqrt((squares / d) + eps);
            for (int j = 0; j < d; j++)
            {
                result[(row * d) + j] = weight[j] * x[(row * d) + j] * scale;
            }
        }

        return result;
    }

    // y [rows, output] = x [rows, input] Wᵀ with W [output, input].
    private static double[] Project(double[] x, ReadOnlySpan<float> w, int rows, int input, int output)
    {
        double[] y = new double[rows * output];
        for (int i = 0; i < rows; i++)
        {
            for (int o = 0; o < output; o++)
            {
                double sum = 0;
                for (int j = 0; j < input; j++)
                {
                    sum += x[(i * input) + j] * w[(o * input) + j];
                }

                y[(i * output) + o] = sum;
            }
        }

        return y;
    }

    private static void Accumulate(double[] x, double[] delta)
    {
        for (int i = 0; i < x.Length; i++)
        {
            x[i] += delta[i];
        }
    }
}
