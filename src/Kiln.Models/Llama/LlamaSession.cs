// The fast Llama forward pass: whole prompts as batches through matrix products, one-token decode steps that
// allocate nothing, built from Kiln's kernels (generated RMSNorm, RoPE and epilogues; the packed matrix product;
// the attention kernel over a transposed KV cache).
//
// Per chunk of T tokens at positions [p, p + T), with x [T, D] the residual stream:
//   x = embedding[tokens]
//   for each layer:
//     xb = RmsNorm(x, attention_norm)
//     q = xb Wqᵀ [T, H·Dh], k = xb Wkᵀ, v = xb Wvᵀ [T, Hkv·Dh]; RoPE on q and k at positions p..p+T-1
//     append k, v to the layer's cache; att = causal GQA attention of q over positions [0, p + T)
//     x = x + att Woᵀ                                  (residual add fused into the product's epilogue)
//     xb = RmsNorm(x, ffn_norm); up = xb W3ᵀ
//     gate = silu(xb W1ᵀ) ⊙ up                         (SwiGLU fused into the product's epilogue)
//     x = x + gate W2ᵀ                                 (residual add fused)
//   logits = RmsNorm(x[T - 1], final_norm) classifierᵀ   (only the last token's logits are computed)
// Long prompts run in chunks of at most PrefillChunk tokens, which gives the same result as one piece because
// every step is per token except attention, which reads the cache that earlier chunks filled.
// Deliberately left out: devices other than cpu (the attention kernel and the embedding lookup are CPU-only for
// now; the generated ops and the matrix product already run on ILGPU).
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Models.Llama;

/// <summary>
/// The fast Llama session on the cpu device: batched prefill, allocation-free decode, KV cache sized to the
/// context. Not thread-safe; its ops use the device's worker threads.
/// </summary>
public sealed unsafe class LlamaSession : IInferenceSession
{
    /// <summary>The most tokens pushed through the blocks at once; longer prompts run in chunks of this size.</summary>
    public const int PrefillChunk = 256;

    /// <summary>The longest context this session runs: the attention kernel's limit (its scores live on the stack).</summary>
    public const int MaxContextLength = Attention.MaxContext;

    private readonly LlamaWeights _weights;
    private readonly CpuDevice _device;
    private readonly int _chunk;
    private readonly Tensor _cos;            // [S, Dh/2]
    private readonly Tensor _sin;            // [S, Dh/2]
    private readonly Tensor[] _keyCache;     // per layer [Hkv, Dh, S]
    private readonly Tensor[] _valueCache;   // per layer [Hkv, Dh, S]
    private readonly Tensor _logits;         // [1, V]
    private readonly Buffers _buffers;
    private readonly Dictionary<int, Buffers> _views = new();
    private bool _disposed;

    /// <summary>Creates a session over <paramref name="weights"/>, which must outlive it.</summary>
    /// <exception cref="ArgumentException">The weights are not on a cpu device.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// The context length is outside 1..seq_len or longer than <see cref="MaxContextLength"/>.
    /// </exception>
    /// <exception cref="InsufficientMemoryException">The KV cache for the context cannot fit in this machine's memory.</exception>
    public LlamaSession(LlamaWeights weights, SessionOptions options)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(options);
        if (weights.Device is not CpuDevice device)
        {
            throw new ArgumentException($"The fast Llama session runs on the cpu device; these weights are on {weights.Device.Name}. Load them with --device cpu.", nameof(weights));
        }

        LlamaConfig c = weights.Config;
        _weights = weights;
        _device = device;
        Config = c;
        ContextLength = options.ResolveContextLength(c);
        if (ContextLength > MaxContextLength)
        {
            throw new ArgumentOutOfRangeException(nameof(options), $"The context length {ContextLength} (the model's seq_len is {c.SeqLen}) is longer than the fast session runs; pass SessionOptions.ContextLength of at most {MaxContextLength}.");
        }

        _chunk = Math.Min(PrefillChunk, ContextLength);

        // Refuse a cache this machine cannot hold before allocating any of it.
        SessionMemory.EnsureCacheFits(2L * c.Layers * c.KvDim * ContextLength * sizeof(float), ContextLength, c.SeqLen);

        // RoPE tables for every position of the context.
        (_cos, _sin) = Ops.RopeTables(ContextLength, c.HeadDim, c.RopeTheta, device);

        // Caches, transposed for the attention kernel.
        _keyCache = new Tensor[c.Layers];
        _valueCache = new Tensor[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            _keyCache[l] = Tensor.Empty([c.KvHeads, c.HeadDim, ContextLength], device: device);
            _valueCache[l] = Tensor.Empty([c.KvHeads, c.HeadDim, ContextLength], device: device);
        }

        // Activations for the largest chunk; smaller chunks use views of them.
        _buffers = new Buffers(c, _chunk, device);
        _logits = Tensor.Empty([1, c.VocabSize], device: device);
        _views[_chunk] = _buffers;
        _views[1] = _buffers.Rows(1);
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
        // The caches need no clearing: attention never reads a position at or beyond Position.
        Position = 0;
    }

    /// <inheritdoc />
    public ReadOnlySpan<float> Forward(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokens.IsEmpty)
        {
            throw new ArgumentException("Forward needs at least one token.", nameof(tokens));
        }

        if (tokens.Length > ContextLength - Position)
        {
            throw new InvalidOperationException($"{tokens.Length} tokens do not fit: {ContextLength - Position} of the context's {ContextLength} positions are left.");
        }

        foreach (int token in tokens)
        {
            if ((uint)token >= (uint)Config.VocabSize)
            {
                throw new ArgumentException($"Token id {token} is outside the vocabulary of {Config.VocabSize}.", nameof(tokens));
            }
        }

        // Run the tokens through the blocks a chunk at a time; only the last chunk's last row needs logits.
        for (int done = 0; done < tokens.Length; done += _chunk)
        {
            int count = Math.Min(_chunk, tokens.Length - done);
            Run(tokens.Slice(done, count), count == tokens.Length - done);
        }

        return _logits.AsSpan();
    }

    private void Run(ReadOnlySpan<int> tokens, bool withLogits)
    {
        LlamaConfig c = Config;
        int start = Position;
        Buffers b = ViewsFor(tokens.Length);

        // Embed the tokens.
        Embed(tokens, b.X);

        for (int l = 0; l < c.Layers; l++)
        {
            LlamaLayerWeights w = _weights.Layers[l];

            // Attention: norm, projections, rotation, cache, attention, output projection with the residual add.
            Ops.RmsNorm(b.X, w.AttentionNorm, c.NormEps, b.Xb);
            MatMul.Compute(b.Xb, w.Wq, b.Q);
            MatMul.Compute(b.Xb, w.Wk, b.K);
            MatMul.Compute(b.Xb, w.Wv, b.V);
            Ops.Rope(b.QHeads, _cos, _sin, start, c.RopeLayout, b.QHeads);
            Ops.Rope(b.KHeads, _cos, _sin, start, c.RopeLayout, b.KHeads);
            Attention.Append(b.K, b.V, _keyCache[l], _valueCache[l], start);
            Attention.Compute(b.QHeads, _keyCache[l], _valueCache[l], start, b.AttentionHeads);
            Ops.ResidualAdd(b.Attention, w.Wo, b.X, b.X);

            // Feed-forward: norm, up projection, gate projection with SwiGLU, down projection with the residual add.
            Ops.RmsNorm(b.X, w.FfnNorm, c.NormEps, b.Xb);
            MatMul.Compute(b.Xb, w.W3, b.Up);
            LlamaOps.SwiGluGate(b.Xb, w.W1, b.Up, b.Gate);
            Ops.ResidualAdd(b.Gate, w.W2, b.X, b.X);
        }

        Position += tokens.Length;
        if (withLogits)
        {
            // Classify the last token only.
            (Tensor lastX, Tensor lastXb) = b.LastRow;
            Ops.RmsNorm(lastX, _weights.FinalNorm, c.NormEps, lastXb);
            MatMul.Compute(lastXb, _weights.Classifier, _logits);
        }
    }

    private void Embed(ReadOnlySpan<int> tokens, Tensor x)
    {
        int d = Config.Dim;
        Tensor table = _weights.TokenEmbedding;
        Span<float> rows = x.AsSpan();
        for (int t = 0; t < tokens.Length; t++)
        {
            Span<float> row = rows.Slice(t * d, d);
            long offset = (long)tokens[t] * d;
            switch (table.DType)
            {
                case DType.Float32:
                    new ReadOnlySpan<float>(table.FloatPointer + offset, d).CopyTo(row);
                    break;
                case DType.Float16:
                    System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>((Half*)table.DataPointer + offset, d), row);
                    break;
                default:
                    ushort* bits = (ushort*)table.DataPointer + offset;
                    for (int i = 0; i < d; i++)
                    {
                        row[i] = DTypes.BFloat16ToSingle(bits[i]);
                    }

                    break;
            }
        }
    }

    // Views for a chunk of `count` tokens, made once per distinct count (decode always uses count 1).
    private Buffers ViewsFor(int count)
    {
        if (!_views.TryGetValue(count, out Buffers? views))
        {
            views = _buffers.Rows(count);
            _views[count] = views;
        }

        return views;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _buffers.Dispose();
        _logits.Dispose();
        _cos.Dispose();
        _sin.Dispose();
        foreach (Tensor cache in _keyCache.Concat(_valueCache))
        {
            cache.Dispose();
        }
    }

    // The activations of a chunk: owning tensors for the largest chunk, views of their first rows otherwise.
    private sealed class Buffers : IDisposable
    {
        private readonly LlamaConfig _config;
        private readonly bool _owner;
        private (Tensor X, Tensor Xb)? _lastRow;

        public Buffers(LlamaConfig c, int rows, Device device)
            : this(c, rows, owner: true,
                Tensor.Empty([rows, c.Dim], device: device),
                Tensor.Empty([rows, c.Dim], device: device),
                Tensor.Empty([rows, c.QueryDim], device: device),
                Tensor.Empty([rows, c.KvDim], device: device),
                Tensor.Empty([rows, c.KvDim], device: device),
                Tensor.Empty([rows, c.QueryDim], device: device),
                Tensor.Empty([rows, c.HiddenDim], device: device),
                Tensor.Empty([rows, c.HiddenDim], device: device))
        {
        }

        private Buffers(LlamaConfig c, int rows, bool owner, Tensor x, Tensor xb, Tensor q, Tensor k, Tensor v, Tensor attention, Tensor up, Tensor gate)
        {
            _config = c;
            _owner = owner;
            Count = rows;
            X = x;
            Xb = xb;
            Q = q;
            K = k;
            V = v;
            Attention = attention;
            Up = up;
            Gate = gate;
            QHeads = q.Reshape(rows, c.Heads, c.HeadDim);
            KHeads = k.Reshape(rows, c.KvHeads, c.HeadDim);
            AttentionHeads = attention.Reshape(rows, c.Heads, c.HeadDim);
        }

        public int Count { get; }

        public Tensor X { get; }            // [T, D]

        public Tensor Xb { get; }           // [T, D]

        public Tensor Q { get; }            // [T, H·Dh]

        public Tensor K { get; }            // [T, Hkv·Dh]

        public Tensor V { get; }            // [T, Hkv·Dh]

        public Tensor Attention { get; }    // [T, H·Dh]

        public Tensor Up { get; }           // [T, F]

        public Tensor Gate { get; }         // [T, F]

        public Tensor QHeads { get; }       // [T, H, Dh]

        public Tensor KHeads { get; }       // [T, Hkv, Dh]

        public Tensor AttentionHeads { get; } // [T, H, Dh]

        // The last row of X and of Xb, for the classifier; made on first use.
        public (Tensor X, Tensor Xb) LastRow => _lastRow ??= (X.Slice(Count - 1, 1), Xb.Slice(Count - 1, 1));

        public Buffers Rows(int rows) => new(
            _config, rows, owner: false,
            X.Slice(0, rows), Xb.Slice(0, rows), Q.Slice(0, rows), K.Slice(0, rows), V.Slice(0, rows),
            Attention.Slice(0, rows), Up.Slice(0, rows), Gate.Slice(0, rows));

        public void Dispose()
        {
            if (_owner)
            {
                foreach (Tensor tensor in new[] { X, Xb, Q, K, V, Attention, Up, Gate })
                {
                    tensor.Dispose();
                }
            }
        }
    }
}
