// A float64 Llama forward pass over a whole sequence, written for the DSA tests independently of the sessions:
// it returns, per layer, the attention-normed input x [T, D] and the head-summed, L1-normalised attention p [T, T].
using Kiln.Kernels;
using Kiln.Models.Llama;

namespace Kiln.Models.Tests.Dsa;

internal static class DenseReference
{
    /// <summary>x [L][T·D] and p [L][T·T] of the dense model over <paramref name="tokens"/> (float32 CPU weights).</summary>
    public static (double[][] X, double[][] P) Capture(LlamaWeights weights, int[] tokens)
    {
        Result result = Forward(weights, tokens, null, 0);
        return (result.X, result.P);
    }

    /// <summary>What <see cref="Forward"/> computes.</summary>
    public sealed record Result(double[][] X, double[][] P, double[] LastLogits);

    /// <summary>
    /// The float64 forward pass; with <paramref name="selections"/> (per layer [T, K], -1 padded) each layer attends only
    /// to its selected positions (sparse attention), otherwise densely.
    /// </summary>
    public static Result Forward(LlamaWeights weights, int[] tokens, int[][]? selections, int topK)
    {
        LlamaConfig c = weights.Config;
        int t = tokens.Length, d = c.Dim, dh = c.HeadDim, h = c.Heads, hkv = c.KvHeads;
        double[] x = new double[t * d];
        float[] embedding = weights.TokenEmbedding.ToArray();
        for (int i = 0; i < t; i++)
        {
            for (int j = 0; j < d; j++)
            {
                x[(i * d) + j] = embedding[(tokens[i] * d) + j];
            }
        }

        double[][] xs = new double[c.Layers][], ps = new double[c.Layers][];
        for (int l = 0; l < c.Layers; l++)
        {
            LlamaLayerWeights w = weights.Layers[l];
            double[] xb = RmsNorm(x, w.AttentionNorm.ToArray(), d, c.NormEps);
            xs[l] = xb;
            double[] q = Project(xb, w.Wq.ToArray(), t, d, h * dh);
            double[] k = Project(xb, w.Wk.ToArray(), t, d, hkv * dh);
            double[] v = Project(xb, w.Wv.ToArray(), t, d, hkv * dh);
            Rope(q, t, h, dh, c.RopeTheta, c.RopeLayout);
            Rope(k, t, hkv, dh, c.RopeTheta, c.RopeLayout);

            // Causal softmax attention per head; p accumulates the head sum / H.
            double[] p = new double[t * t];
            double[] att = new double[t * h * dh];
            for (int i = 0; i < t; i++)
            {
                for (int head = 0; head < h; head++)
                {
                    int g = head / (h / hkv);
                    double[] s = new double[i + 1];
                    for (int j = 0; j <= i; j++)
                    {
                        if (selections is not null && Array.IndexOf(selections[l], j, i * topK, topK) < 0)
                        {
                            s[j] = double.NegativeInfinity;
                            continue;
                        }

                        double dot = 0;
                        for (int e = 0; e < dh; e++)
                        {
                            dot += q[(((i * h) + head) * dh) + e] * k[(((j * hkv) + g) * dh) + e];
                        }

                        s[j] = dot / Math.Sqrt(dh);
                    }

                    double max = s.Max(), sum = s.Sum(z => Math.Exp(z - max));
                    for (int j = 0; j <= i; j++)
                    {
                        double a = Math.Exp(s[j] - max) / sum;
                        p[(i * t) + j] += a / h;
                        for (int e = 0; e < dh; e++)
                        {
                            att[(((i * h) + head) * dh) + e] += a * v[(((j * hkv) + g) * dh) + e];
                        }
                    }
                }
            }

            ps[l] = p;
            Add(x, Project(att, w.Wo.ToArray(), t, h * dh, d));

            // SwiGLU feed-forward.
            double[] fb = RmsNorm(x, w.FfnNorm.ToArray(), d, c.NormEps);
            double[] gate = Project(fb, w.W1.ToArray(), t, d, c.HiddenDim);
            double[] up = Project(fb, w.W3.ToArray(), t, d, c.HiddenDim);
            for (int i = 0; i < gate.Length; i++)
            {
                gate[i] = gate[i] / (1 + Math.Exp(-gate[i])) * up[i];
            }

            Add(x, Project(gate, w.W2.ToArray(), t, c.HiddenDim, d));
        }

        // The classifier on the last token.
        double[] last = RmsNorm(x[((t - 1) * d)..], weights.FinalNorm.ToArray(), d, c.NormEps);
        double[] logits = Project(last, weights.Classifier.ToArray(), 1, d, c.VocabSize);
        return new Result(xs, ps, logits);
    }

    private static double[] RmsNorm(double[] x, float[] weight, int d, float eps)
    {
        double[] result = new double[x.Length];
        for (int row = 0; row < x.Length / d; row++)
        {
            double ss = 0;
            for (int j = 0; j < d; j++)
            {
                ss += x[(row * d) + j] * x[(row * d) + j];
            }

            double scale = 1 / Math.Sqrt((ss / d) + eps);
            for (int j = 0; j < d; j++)
            {
                result[(row * d) + j] = weight[j] * x[(row * d) + j] * scale;
            }
        }

        return result;
    }

    /// <summary>y [T, out] = x [T, in] Wᵀ with W [out, in].</summary>
    public static double[] Project(double[] x, float[] w, int t, int input, int output)
    {
        double[] y = new double[t * output];
        for (int i = 0; i < t; i++)
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

    /// <summary>RoPE over whole heads [T, heads, dh] at positions 0..T-1.</summary>
    public static void Rope(double[] x, int t, int heads, int dh, float theta, RopeLayout layout)
    {
        RopePartial(x, t, heads, dh, dh, theta, layout);
    }

    /// <summary>RoPE on the first <paramref name="ropeDims"/> dims of each head [T, heads, dh], positions 0..T-1.</summary>
    public static void RopePartial(double[] x, int t, int heads, int dh, int ropeDims, float theta, RopeLayout layout)
    {
        int half = ropeDims / 2;
        for (int i = 0; i < t; i++)
        {
            for (int head = 0; head < heads; head++)
            {
                int b = ((i * heads) + head) * dh;
                for (int pair = 0; pair < half; pair++)
                {
                    double angle = i * Math.Pow(theta, -2.0 * pair / ropeDims);
                    int a0 = layout == RopeLayout.Adjacent ? 2 * pair : pair;
                    int a1 = layout == RopeLayout.Adjacent ? a0 + 1 : pair + half;
                    double v0 = x[b + a0], v1 = x[b + a1];
                    x[b + a0] = (v0 * Math.Cos(angle)) - (v1 * Math.Sin(angle));
                    x[b + a1] = (v0 * Math.Sin(angle)) + (v1 * Math.Cos(angle));
                }
            }
        }
    }

    private static void Add(double[] x, double[] delta)
    {
        for (int i = 0; i < x.Length; i++)
        {
            x[i] += delta[i];
        }
    }
}
