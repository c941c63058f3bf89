// What the indexer's KL warm-up (DeepSeek-V3.2-Exp report §2.1, eq. 3) trains against: the DENSE model run over a
// token sequence, recording per layer
//   x [T, D]  the attention-normed input RmsNorm(x, attention_norm), the indexer's input;
//   p [T, T]  the dense attention distribution summed over the H query heads and L1-normalised along the keys:
//             p[t, s] = (1/H) Σ_h softmax_s(q[t, h] · k[s, g(h)] / √Dh) for s ≤ t, and 0 for s > t.
// It runs the fast LlamaSession (batched prefill) with an attention step that does dense attention and records both,
// so x and the queries/keys are exactly the fast session's. p is recomputed from the rotated queries and the key cache
// in float64 (softmax with the max subtracted), one row at a time on the worker pool's thread: O(T²·H·Dh) per layer.
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Llama;

namespace Kiln.Models.Dsa;

/// <summary>
/// The attention-normed inputs x [T, D] and the head-summed, L1-normalised dense attention distributions p [T, T] of
/// every layer of a dense Llama model over one token sequence (the targets of indexer training).
/// </summary>
public sealed class DenseAttentionCapture
{
    private readonly float[][] _inputs;
    private readonly float[][] _distributions;

    private DenseAttentionCapture(int tokens, int dim, int layers, float[] logits)
    {
        Tokens = tokens;
        Dim = dim;
        _inputs = new float[layers][];
        _distributions = new float[layers][];
        for (int l = 0; l < layers; l++)
        {
            _inputs[l] = new float[(long)tokens * dim <= Array.MaxLength ? tokens * dim : throw new ArgumentOutOfRangeException(nameof(tokens))];
            _distributions[l] = new float[checked(tokens * tokens)];
        }

        LastLogits = logits;
    }

    /// <summary>T, the number of tokens captured.</summary>
    public int Tokens { get; }

    /// <summary>D, the model width.</summary>
    public int Dim { get; }

    /// <summary>The number of layers.</summary>
    public int Layers => _inputs.Length;

    /// <summary>Per layer, the attention-normed input x, [T, D] row-major.</summary>
    public IReadOnlyList<float[]> NormedInputs => _inputs;

    /// <summary>Per layer, the head-summed, L1-normalised dense attention p, [T, T] row-major (zero above the diagonal).</summary>
    public IReadOnlyList<float[]> Distributions => _distributions;

    /// <summary>The logits [V] of the last token (the dense model's output).</summary>
    public float[] LastLogits { get; }

    /// <summary>
    /// Runs the dense model over <paramref name="tokens"/> from position 0 and captures every layer's x and p.
    /// </summary>
    /// <param name="weights">Dense float32 (or 16-bit) weights on the cpu device.</param>
    /// <param name="tokens">The sequence, 1..seq_len ids.</param>
    /// <exception cref="ArgumentException">The weights are not on the cpu device, the sequence is empty or longer than
    /// seq_len, or an id is outside the vocabulary.</exception>
    public static DenseAttentionCapture Run(LlamaWeights weights, ReadOnlySpan<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (weights.Device is not CpuDevice)
        {
            throw new ArgumentException(
                $"DenseAttentionCapture runs on the cpu device; these weights are on {weights.Device.Name}. Load them on cpu.",
                nameof(weights));
        }

        LlamaConfig c = weights.Config;
        if (tokens.IsEmpty || tokens.Length > c.SeqLen)
        {
            throw new ArgumentException(
                $"DenseAttentionCapture: {tokens.Length} tokens; pass 1..{c.SeqLen} (the model's seq_len).", nameof(tokens));
        }

        // Run the fast session with the recording step, then keep the last logits.
        DenseAttentionCapture capture = new(tokens.Length, c.Dim, c.Layers, new float[c.VocabSize]);
        using LlamaSession session = new(
            weights, new SessionOptions { ContextLength = tokens.Length }, _ => new CaptureStep(capture));
        session.Forward(tokens).CopyTo(capture.LastLogits);
        return capture;
    }

    // Dense attention, then a copy of x and the computation of p for the chunk's rows.
    private sealed class CaptureStep(DenseAttentionCapture capture) : IAttentionStep
    {
        public void Attend(in AttentionStepInput input)
        {
            // The dense step itself.
            Attention.Compute(input.Queries, input.KeyCache!, input.ValueCache!, input.Start, input.Output);

            // Copy the normed input rows of the chunk.
            int t = input.Queries.Size(0), h = input.Queries.Size(1), dh = input.Queries.Size(2);
            int d = capture.Dim;
            input.NormedInput.AsSpan().Slice(0, t * d).CopyTo(capture._inputs[input.Layer].AsSpan(input.Start * d, t * d));

            // p rows: softmax per head over positions 0..pos, summed over heads, divided by H.
            ReadOnlySpan<float> q = input.Queries.AsSpan();
            Tensor keyCache = input.KeyCache!;
            ReadOnlySpan<float> keys = keyCache.AsSpan();
            int hkv = keyCache.Size(0), capacity = keyCache.Size(2);
            int group = h / hkv;
            int total = capture.Tokens;
            double scale = 1.0 / Math.Sqrt(dh);
            double[] scores = new double[input.Start + t];
            double[] row = new double[input.Start + t];
            for (int token = 0; token < t; token++)
            {
                int pos = input.Start + token;
                Array.Clear(row, 0, pos + 1);
                for (int head = 0; head < h; head++)
                {
                    // Scores of head `head` against its key/value head's keys, [pos + 1].
                    int qBase = ((token * h) + head) * dh;
                    int kBase = head / group * dh * capacity;
                    double max = double.NegativeInfinity;
                    for (int s = 0; s <= pos; s++)
                    {
                        double dot = 0;
                        for (int i = 0; i < dh; i++)
                        {
                            dot += (double)q[qBase + i] * keys[kBase + (i * capacity) + s];
                        }

                        scores[s] = dot * scale;
                        max = Math.Max(max, scores[s]);
                    }

                    // Stable softmax, accumulated into the head sum.
                    double sum = 0;
                    for (int s = 0; s <= pos; s++)
                    {
                        scores[s] = Math.Exp(scores[s] - max);
                        sum += scores[s];
                    }

                    for (int s = 0; s <= pos; s++)
                    {
                        row[s] += scores[s] / sum;
                    }
                }

                // L1-normalise: each head's softmax sums to 1, so the head sum sums to H.
                Span<float> destination = capture._distributions[input.Layer].AsSpan(pos * total, total);
                for (int s = 0; s <= pos; s++)
                {
                    destination[s] = (float)(row[s] / h);
                }
            }
        }

        public void Dispose()
        {
        }
    }
}
