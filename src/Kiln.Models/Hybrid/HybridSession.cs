// The fast session of a hybrid model on any device (cpu, cuda, ilgpu-cpu): whole prompts as batches, one-token decode steps that
// allocate nothing, layers of attention and Mamba-3 mixers in the config's pattern, each followed by its MLP.
//
// Per chunk of T tokens at positions [p, p + T), with x [T, D] the residual stream:
//   x = embedding[tokens]
//   for each layer l:
//     A: x += attention(RmsNorm(x))    LlamaBlock.Attention: q/k/v projections, RoPE when the config rotates,
//                                     the layer's KV cache [Hkv, Dh, S], causal GQA attention, Wo with the add fused
//     M: x += mixer(RmsNorm(x))        Mamba3Mixer.Forward from the layer's Mamba3Cache (chunked scan when T >= 2,
//                                     the recurrent step when T = 1), then the residual add
//     x += MLP(RmsNorm(x))             LlamaBlock.FeedForward: SwiGLU
//   logits = RmsNorm(x[T - 1], norm) classifierᵀ (the last token only)
// Every cache is allocated once for the session's context: a KV cache per attention layer, a Mamba3Cache (angles,
// state, previous key and x; its size does not depend on the context) per Mamba-3 layer. Long prompts run in chunks
// of at most PrefillChunk tokens, which gives the same result as one piece: attention reads the caches earlier
// chunks filled, the mixers continue from their caches.
//
// On an ILGPU device every op queues kernels (the Mamba-3 mixers through Mamba3GpuMixer) and every cache lives on
// the device; Forward uploads the token ids (checked on the host first) and copies the V logits back, which waits
// for the queued work.
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Llama;
using Kiln.Models.Mamba;

namespace Kiln.Models.Hybrid;

/// <summary>
/// A hybrid (attention and Mamba-3) model's generation session on the weights' device (cpu, cuda, ilgpu-cpu):
/// batched prefill in chunks, allocation-free decode on the cpu, all caches sized once. Not thread-safe.
/// </summary>
public sealed class HybridSession : IInferenceSession
{
    /// <summary>The most tokens pushed through the layers at once; longer prompts run in chunks of this size.</summary>
    public const int PrefillChunk = 256;

    private readonly HybridWeights _weights;
    private readonly IReadOnlyList<HybridLayerKind> _kinds;
    private readonly float _eps;
    private readonly int _chunk;
    private readonly Tensor? _cos;             // [S, Dh/2] when the attention rotates
    private readonly Tensor? _sin;             // [S, Dh/2]
    private readonly Tensor?[] _keyCache;      // per attention layer [Hkv, Dh, S]
    private readonly Tensor?[] _valueCache;    // per attention layer [Hkv, Dh, S]
    private readonly Mamba3Mixer?[] _mixers;   // per Mamba-3 layer
    private readonly Mamba3Cache?[] _caches;   // per Mamba-3 layer
    private readonly Tensor _logits;           // [1, V]
    private readonly float[]? _hostLogits;     // [V] the logits copied back, on ILGPU devices only
    private readonly BlockBuffers _buffers;
    private readonly Dictionary<int, BlockBuffers> _views = new();
    private bool _disposed;

    /// <summary>Creates a session over <paramref name="weights"/> (which must outlive it).</summary>
    /// <exception cref="ArgumentException">The weights are not on cpu, cuda or ilgpu-cpu.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The context length is outside 1..seq_len.</exception>
    /// <exception cref="InsufficientMemoryException">The KV caches for the context cannot fit in this machine's (or the device's) memory.</exception>
    public HybridSession(HybridWeights weights, SessionOptions options)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(options);
        Device device = weights.Device;
        if (device is not (CpuDevice or IlgpuDevice))
        {
            throw new ArgumentException($"The hybrid session runs on cpu, cuda and ilgpu-cpu; these weights are on {device.Name}.", nameof(weights));
        }

        HybridConfig c = weights.Config;
        _weights = weights;
        HybridConfig = c;
        Config = c.ToLlamaConfig();
        ContextLength = options.ResolveContextLength(Config);
        _kinds = c.Kinds;
        _eps = c.NormEps;
        _chunk = Math.Min(PrefillChunk, ContextLength);
        int layers = c.Layers;

        // Refuse KV caches the machine (or the device, next to the weights and the chunk's activations) cannot hold
        // before allocating any of them.
        long cacheBytes = 2L * c.AttentionLayers * Config.KvDim * ContextLength * sizeof(float);
        if (device is IlgpuDevice ilgpu)
        {
            long weightBytes = weights.Named().Sum(static t => t.Tensor.ByteLength);
            long perRow = (2L * Config.Dim) + (2L * Config.QueryDim) + (2L * Config.KvDim) + (2L * Config.HiddenDim) + 1;
            long otherBytes = (_chunk * perRow * sizeof(float)) + ((c.VocabSize + 1L) * sizeof(float));
            if (c.Mamba3 is not null)
            {
                otherBytes += c.Mamba3Layers * Mamba3GpuMixer.ScratchBytes(c.Mamba3, _chunk);
            }

            SessionMemory.EnsureDeviceFits(device.Name, ilgpu.Accelerator.MemorySize - weightBytes, cacheBytes, otherBytes, ContextLength, c.SeqLen);
        }
        else
        {
            SessionMemory.EnsureCacheFits(cacheBytes, ContextLength, c.SeqLen);
        }

        _keyCache = new Tensor?[layers];
        _valueCache = new Tensor?[layers];
        _mixers = new Mamba3Mixer?[layers];
        _caches = new Mamba3Cache?[layers];
        _buffers = new BlockBuffers(Config, _chunk, device);
        _logits = Tensor.Empty([1, c.VocabSize], device: device);
        _hostLogits = device is CpuDevice ? null : new float[c.VocabSize];
        _views[_chunk] = _buffers;
        _views[1] = _buffers.Rows(1);
        try
        {
            if (c.AttentionLayers > 0 && c.Attention!.Rope)
            {
                (_cos, _sin) = Ops.RopeTables(ContextLength, c.Attention.HeadDim, c.Attention.RopeTheta, device);
            }

            for (int l = 0; l < layers; l++)
            {
                if (_kinds[l] == HybridLayerKind.Attention)
                {
                    _keyCache[l] = Tensor.Empty([Config.KvHeads, Config.HeadDim, ContextLength], device: device);
                    _valueCache[l] = Tensor.Empty([Config.KvHeads, Config.HeadDim, ContextLength], device: device);
                }
                else
                {
                    Mamba3Mixer mixer = new(weights.Layers[l].Mamba!, device, maxTokens: _chunk);
                    _mixers[l] = mixer;
                    _caches[l] = mixer.CreateCache();
                }
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The hybrid configuration this session runs.</summary>
    public HybridConfig HybridConfig { get; }

    /// <inheritdoc />
    /// <remarks>The Llama view of <see cref="HybridConfig"/> (<see cref="HybridConfig.ToLlamaConfig"/>).</remarks>
    public LlamaConfig Config { get; }

    /// <inheritdoc />
    public int ContextLength { get; }

    /// <inheritdoc />
    public int Position { get; private set; }

    /// <summary>The bytes of every cache: the KV caches of the attention layers and the Mamba-3 states.</summary>
    public long CacheBytes =>
        _keyCache.Concat(_valueCache).Sum(static t => t is null ? 0L : t.Length * sizeof(float)) + _caches.Sum(static m => m?.Bytes ?? 0L);

    /// <inheritdoc />
    public void Reset()
    {
        // KV caches need no clearing (attention never reads at or beyond Position); the recurrent states do.
        ObjectDisposedException.ThrowIf(_disposed, this);
        Position = 0;
        foreach (Mamba3Cache? cache in _caches)
        {
            cache?.Reset();
        }
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
            throw new InvalidOperationException($"{tokens.Length} tokens do not fit: {ContextLength - Position} of the context's {ContextLength} positions are left; Reset the session or create it with a longer SessionOptions.ContextLength.");
        }

        Embedding.CheckIds(tokens, Config.VocabSize, nameof(tokens));
        for (int done = 0; done < tokens.Length; done += _chunk)
        {
            int count = Math.Min(_chunk, tokens.Length - done);
            BlockBuffers b = ViewsFor(count);
            b.Tokens.CopyFrom(tokens.Slice(done, count));
            Run(b, count == tokens.Length - done);
        }

        // On an ILGPU device, copy the logits back (this waits for the queued kernels).
        if (_hostLogits is null)
        {
            return _logits.AsSpan();
        }

        _logits.CopyTo(_hostLogits);
        return _hostLogits;
    }

    // Runs the chunk in b through every layer at Position; only the last chunk of a call needs logits.
    private void Run(BlockBuffers b, bool withLogits)
    {
        int start = Position;
        Embedding.Lookup(_weights.TokenEmbedding, b.Tokens, b.X);
        for (int l = 0; l < _kinds.Count; l++)
        {
            HybridLayerWeights w = _weights.Layers[l];
            if (_kinds[l] == HybridLayerKind.Attention)
            {
                LlamaBlock.Attention(
                    b, l, start, w.MixerNorm, w.Wq!, w.Wk!, w.Wv!, w.Wo!, _eps, _cos, _sin, Config.RopeLayout, _keyCache[l], _valueCache[l], DenseAttentionStep.Instance);
            }
            else
            {
                // x += mixer(RmsNorm(x)); the mixer writes its output over its input.
                Ops.RmsNorm(b.X, w.MixerNorm, _eps, b.Xb);
                _mixers[l]!.Forward(b.Xb, b.Xb, _caches[l]!);
                Ops.Add(b.X, b.Xb, b.X);
            }

            LlamaBlock.FeedForward(b, w.FfnNorm, w.W1, w.W2, w.W3, _eps);
        }

        Position += b.Count;
        if (withLogits)
        {
            (Tensor lastX, Tensor lastXb) = b.LastRow;
            Ops.RmsNorm(lastX, _weights.FinalNorm, _eps, lastXb);
            MatMul.Compute(lastXb, _weights.Classifier, _logits);
        }
    }

    // Views for a chunk of `count` tokens, made once per distinct count (decode always uses count 1).
    private BlockBuffers ViewsFor(int count)
    {
        if (!_views.TryGetValue(count, out BlockBuffers? views))
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
        _buffers?.Dispose();
        _logits?.Dispose();
        _cos?.Dispose();
        _sin?.Dispose();
        foreach (Tensor? cache in (_keyCache ?? []).Concat(_valueCache ?? []))
        {
            cache?.Dispose();
        }

        foreach (Mamba3Mixer? mixer in _mixers ?? [])
        {
            mixer?.Dispose();
        }

        foreach (Mamba3Cache? cache in _caches ?? [])
        {
            cache?.Dispose();
        }
    }
}
