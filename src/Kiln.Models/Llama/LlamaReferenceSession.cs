// The scalar float32 reference forward pass of a Llama model, one token at a time, written to follow
// karpathy/llama2.c run.c operation for operation (same accumulation order, same float functions), so that it
// reproduces that program's logits and greedy text. It is the oracle the fast sessions are tested against.
//
// Per token at position pos, with x [D] the residual stream:
//   x = embedding[token]
//   for each layer l:
//     xb = rmsnorm(x, attention_norm)                      rmsnorm(v, w)_j = w_j * (v_j / sqrt(mean(v²) + eps))
//     q = Wq xb [H·Dh], k = Wk xb, v = Wv xb [Hkv·Dh]; rotate q and k by RoPE at pos; store k, v in the cache
//     for each query head h (key/value head h / (H / Hkv), grouped-query attention):
//       score_t = q_h · k_t / sqrt(Dh) for t = 0..pos (causal), softmax with the max subtracted,
//       out_h = Σ_t softmax_t v_t
//     x += Wo out
//     xb = rmsnorm(x, ffn_norm);  x += W2 (silu(W1 xb) ⊙ (W3 xb))          silu(z) = z / (1 + exp(-z))
//   logits = classifier · rmsnorm(x, final_norm)
// RoPE: pair i of a head (elements 2i, 2i+1 when adjacent; i, i + Dh/2 when half-split) turns by the angle
// pos · freq_i with freq_i = 1 / theta^(2i / Dh), computed in float as run.c does.
// Deliberately left out: batching, threads and SIMD (the fast session's job). Float32 CPU weights are read in
// place; weights on another device or in a 16-bit dtype are widened once, at construction, into pinned arrays.

using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Models.Llama;

/// <summary>
/// The scalar float32 reference forward pass (llama2.c math), token by token over a KV cache sized to the
/// context. Decoding allocates nothing. Not thread-safe.
/// </summary>
public sealed unsafe class LlamaReferenceSession : IInferenceSession
{
    private readonly LlamaWeights _weights;
    private readonly LayerView[] _layers;
    private readonly WeightView _embedding;   // [V, D]
    private readonly WeightView _finalNorm;   // [D]
    private readonly WeightView _classifier;  // [V, D]

    private readonly float[] _x;            // [D] residual stream
    private readonly float[] _xb;           // [D] normed input, then attention output per head
    private readonly float[] _xb2;          // [D] projection output
    private readonly float[] _q;            // [H·Dh]
    private readonly float[] _attention;    // [H·Dh] attention output before Wo
    private readonly float[] _hb;           // [F] gate
    private readonly float[] _hb2;          // [F] up
    private readonly float[] _scores;       // [S] attention weights of one head
    private readonly float[] _logits;       // [V]
    private readonly float[] _keyCache;     // [L, S, Hkv·Dh]
    private readonly float[] _valueCache;   // [L, S, Hkv·Dh]
    private bool _disposed;

    /// <summary>Creates a session over <paramref name="weights"/> with the context length of the model.</summary>
    public LlamaReferenceSession(LlamaWeights weights)
        : this(weights, new SessionOptions())
    {
    }

    /// <summary>Creates a session over <paramref name="weights"/>, which must outlive it.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The context length is outside 1..seq_len.</exception>
    /// <exception cref="ArgumentException">The model has the attention residuals option, which this reference leaves out.</exception>
    /// <exception cref="InsufficientMemoryException">The KV cache for the context cannot fit in this machine's memory.</exception>
    public LlamaReferenceSession(LlamaWeights weights, SessionOptions options)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(options);
        LlamaConfig config = weights.Config;
        if (config.AttentionResiduals is not null)
        {
            throw new ArgumentException("The llama2.c reference session has no attention residuals; run this model with LlamaSession.", nameof(weights));
        }

        ContextLength = options.ResolveContextLength(config);
        Config = config;

        // View the weights as float32 on the CPU (in place when they already are).
        _weights = weights;
        _embedding = new WeightView(weights.TokenEmbedding);
        _finalNorm = new WeightView(weights.FinalNorm);
        bool shared = ReferenceEquals(weights.Classifier, weights.TokenEmbedding);
        _classifier = shared ? _embedding : new WeightView(weights.Classifier);
        _layers = new LayerView[config.Layers];
        for (int l = 0; l < _layers.Length; l++)
        {
            _layers[l] = new LayerView(weights.Layers[l]);
        }

        // Activations and caches, allocated once.
        _x = new float[config.Dim];
        _xb = new float[config.Dim];
        _xb2 = new float[config.Dim];
        _q = new float[config.QueryDim];
        _attention = new float[config.QueryDim];
        _hb = new float[config.HiddenDim];
        _hb2 = new float[config.HiddenDim];
        _scores = new float[ContextLength];
        _logits = new float[config.VocabSize];
        long cacheLength = (long)config.Layers * ContextLength * config.KvDim;
        if (cacheLength > Array.MaxLength)
        {
            throw new ArgumentOutOfRangeException(nameof(options), $"A KV cache of {config.Layers} layers × {ContextLength} positions × {config.KvDim} is too large for the reference session; pass a shorter context length.");
        }

        SessionMemory.EnsureCacheFits(2 * cacheLength * sizeof(float), ContextLength, config.SeqLen);
        _keyCache = new float[cacheLength];
        _valueCache = new float[cacheLength];
    }

    /// <inheritdoc />
    public LlamaConfig Config { get; }

    /// <inheritdoc />
    public int ContextLength { get; }

    /// <inheritdoc />
    public int Position { get; private set; }

    /// <inheritdoc />
    public void Reset()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Position = 0;
    }

    /// <inheritdoc />
    public ReadOnlySpan<float> Forward(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);

        // Check every token and the room left before touching the cache.
        if (tokens.IsEmpty)
        {
            throw new ArgumentException("Forward needs at least one token; pass the prompt (prefill) or the last sampled token (decode).", nameof(tokens));
        }

        for (int i = 0; i < tokens.Length; i++)
        {
            if ((uint)tokens[i] >= (uint)Config.VocabSize)
            {
                throw new ArgumentException($"Token {i} is id {tokens[i]}, outside the vocabulary 0..{Config.VocabSize - 1}; encode text with the model's own tokenizer.", nameof(tokens));
            }
        }

        if (tokens.Length > ContextLength - Position)
        {
            throw new InvalidOperationException($"{tokens.Length} tokens do not fit: the context holds {ContextLength} and {Position} are used; call Reset() or start a shorter sequence.");
        }

        // Token by token: the reference has no batched path.
        foreach (int token in tokens)
        {
            ForwardToken(token, Position);
            Position++;
        }

        return _logits;
    }

    /// <summary>Ends the session; the caller's weights are untouched.</summary>
    public void Dispose()
    {
        _disposed = true;
    }

    /// <summary>The weights this session reads.</summary>
    internal LlamaWeights Weights => _weights;

    private void ForwardToken(int token, int pos)
    {
        LlamaConfig c = Config;
        int dim = c.Dim;
        int kvDim = c.KvDim;
        int headDim = c.HeadDim;
        int groupSize = c.Heads / c.KvHeads;

        // Start from the token's embedding row.
        _embedding.Span.Slice(token * dim, dim).CopyTo(_x);

        for (int l = 0; l < _layers.Length; l++)
        {
            LayerView layer = _layers[l];
            // This layer's cache rows [S, Hkv·Dh]; the constructor checked that the whole cache fits an array.
            int cacheBase = l * ContextLength * kvDim;
            Span<float> keyRow = _keyCache.AsSpan(cacheBase + (pos * kvDim), kvDim);
            Span<float> valueRow = _valueCache.AsSpan(cacheBase + (pos * kvDim), kvDim);

            // Attention: normalize, project q/k/v (k and v straight into the cache row of this position).
            RmsNorm(_xb, _x, layer.AttentionNorm.Span, c.NormEps);
            MatVec(_q, _xb, layer.Wq.Span, c.QueryDim, dim);
            MatVec(keyRow, _xb, layer.Wk.Span, kvDim, dim);
            MatVec(valueRow, _xb, layer.Wv.Span, kvDim, dim);

            // Rotate the queries and this position's keys.
            for (int h = 0; h < c.Heads; h++)
            {
                Rope(_q.AsSpan(h * headDim, headDim), pos, c.RopeTheta, c.RopeLayout);
            }

            for (int h = 0; h < c.KvHeads; h++)
            {
                Rope(keyRow.Slice(h * headDim, headDim), pos, c.RopeTheta, c.RopeLayout);
            }

            // Causal attention over positions 0..pos, one query head at a time.
            float scale = MathF.Sqrt(headDim);
            for (int h = 0; h < c.Heads; h++)
            {
                ReadOnlySpan<float> q = _q.AsSpan(h * headDim, headDim);
                int kvOffset = h / groupSize * headDim;
                Span<float> scores = _scores.AsSpan(0, pos + 1);
                for (int t = 0; t <= pos; t++)
                {
                    ReadOnlySpan<float> k = _keyCache.AsSpan(cacheBase + (t * kvDim) + kvOffset, headDim);
                    float score = 0f;
                    for (int i = 0; i < headDim; i++)
                    {
                        score += q[i] * k[i];
                    }

                    scores[t] = score / scale;
                }

                Softmax(scores);

                // Weighted sum of the values.
                Span<float> output = _attention.AsSpan(h * headDim, headDim);
                output.Clear();
                for (int t = 0; t <= pos; t++)
                {
                    ReadOnlySpan<float> v = _valueCache.AsSpan(cacheBase + (t * kvDim) + kvOffset, headDim);
                    float a = scores[t];
                    for (int i = 0; i < headDim; i++)
                    {
                        output[i] += a * v[i];
                    }
                }
            }

            // Output projection and residual.
            MatVec(_xb2, _attention, layer.Wo.Span, dim, c.QueryDim);
            Accumulate(_x, _xb2);

            // Feed-forward: x += W2 (silu(W1 xb) ⊙ (W3 xb)).
            RmsNorm(_xb, _x, layer.FfnNorm.Span, c.NormEps);
            MatVec(_hb, _xb, layer.W1.Span, c.HiddenDim, dim);
            MatVec(_hb2, _xb, layer.W3.Span, c.HiddenDim, dim);
            for (int i = 0; i < _hb.Length; i++)
            {
                float value = _hb[i];
                value *= 1.0f / (1.0f + MathF.Exp(-value));
                value *= _hb2[i];
                _hb[i] = value;
            }

            MatVec(_xb2, _hb, layer.W2.Span, dim, c.HiddenDim);
            Accumulate(_x, _xb2);
        }

        // Final norm (in place, as run.c does) and the classifier.
        RmsNorm(_x, _x, _finalNorm.Span, c.NormEps);
        MatVec(_logits, _x, _classifier.Span, c.VocabSize, dim);
    }

    /// <summary>out = weight ⊙ (x / sqrt(mean(x²) + eps)); out may be x.</summary>
    private static void RmsNorm(Span<float> output, ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps)
    {
        float ss = 0f;
        for (int j = 0; j < x.Length; j++)
        {
            ss += x[j] * x[j];
        }

        ss /= x.Length;
        ss += eps;
        ss = 1.0f / MathF.Sqrt(ss);
        for (int j = 0; j < x.Length; j++)
        {
            output[j] = weight[j] * (ss * x[j]);
        }
    }

    /// <summary>out[i] = Σ_j w[i, j] x[j] for w [rows, cols] row-major, summed left to right in float.</summary>
    private static void MatVec(Span<float> output, ReadOnlySpan<float> x, ReadOnlySpan<float> w, int rows, int cols)
    {
        for (int i = 0; i < rows; i++)
        {
            ReadOnlySpan<float> row = w.Slice(i * cols, cols);
            float sum = 0f;
            for (int j = 0; j < cols; j++)
            {
                sum += row[j] * x[j];
            }

            output[i] = sum;
        }
    }

    /// <summary>In-place softmax with the maximum subtracted first (no overflow for large scores).</summary>
    private static void Softmax(Span<float> x)
    {
        float max = x[0];
        for (int i = 1; i < x.Length; i++)
        {
            if (x[i] > max)
            {
                max = x[i];
            }
        }

        float sum = 0f;
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = MathF.Exp(x[i] - max);
            sum += x[i];
        }

        for (int i = 0; i < x.Length; i++)
        {
            x[i] /= sum;
        }
    }

    /// <summary>Rotates the pairs of one head by position × theta^(-2i / Dh).</summary>
    private static void Rope(Span<float> head, int pos, float theta, RopeLayout layout)
    {
        int pairs = head.Length / 2;
        for (int i = 0; i < pairs; i++)
        {
            // The angle as run.c computes it: in float, from the pair's even offset within the head.
            float freq = 1.0f / MathF.Pow(theta, (2 * i) / (float)head.Length);
            float angle = pos * freq;
            float cos = MathF.Cos(angle);
            float sin = MathF.Sin(angle);
            int a = layout == RopeLayout.Adjacent ? 2 * i : i;
            int b = layout == RopeLayout.Adjacent ? (2 * i) + 1 : i + pairs;
            float v0 = head[a];
            float v1 = head[b];
            head[a] = (v0 * cos) - (v1 * sin);
            head[b] = (v0 * sin) + (v1 * cos);
        }
    }

    private static void Accumulate(Span<float> x, ReadOnlySpan<float> delta)
    {
        for (int i = 0; i < x.Length; i++)
        {
            x[i] += delta[i];
        }
    }

    /// <summary>
    /// A float32 view of one weight tensor: the tensor's own memory when it is a contiguous float32 CPU tensor,
    /// else a pinned float32 copy made once.
    /// </summary>
    private readonly struct WeightView
    {
        private readonly float* _pointer;
        private readonly int _length;
        private readonly float[]? _copy;

        public WeightView(Tensor tensor)
        {
            _length = checked((int)tensor.Length);
            if (tensor.Device is CpuDevice && tensor.DType == DType.Float32 && tensor.IsContiguous)
            {
                _pointer = tensor.FloatPointer;
            }
            else
            {
                // Widen or fetch once; a pinned array never moves, so its address stays valid.
                _copy = GC.AllocateUninitializedArray<float>(_length, pinned: true);
                tensor.ToArray().CopyTo(_copy, 0);
                _pointer = (float*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref _copy[0]);
            }
        }

        public ReadOnlySpan<float> Span => new(_pointer, _length);
    }

    /// <summary>One layer's weights as float32 views.</summary>
    private sealed class LayerView
    {
        public LayerView(LlamaLayerWeights layer)
        {
            AttentionNorm = new WeightView(layer.AttentionNorm);
            Wq = new WeightView(layer.Wq);
            Wk = new WeightView(layer.Wk);
            Wv = new WeightView(layer.Wv);
            Wo = new WeightView(layer.Wo);
            FfnNorm = new WeightView(layer.FfnNorm);
            W1 = new WeightView(layer.W1);
            W2 = new WeightView(layer.W2);
            W3 = new WeightView(layer.W3);
        }

        public WeightView AttentionNorm { get; }

        public WeightView Wq { get; }

        public WeightView Wk { get; }

        public WeightView Wv { get; }

        public WeightView Wo { get; }

        public WeightView FfnNorm { get; }

        public WeightView W1 { get; }

        public WeightView W2 { get; }

        public WeightView W3 { get; }
    }
}
