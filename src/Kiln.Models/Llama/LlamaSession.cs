// The fast Llama forward pass: whole prompts as batches through matrix products, one-token decode steps that
// allocate nothing, built from Kiln's kernels (generated RMSNorm, RoPE and epilogues; the matrix product; the
// attention kernel over a transposed KV cache; the embedding lookup; device sampling).
//
// One class for every device: on cpu the ops run as vectorized loops on the worker pool, on ILGPU devices (cuda,
// ilgpu-cpu) the same calls queue kernels. Everything a step touches is allocated once per session on the weights'
// device: RoPE tables, KV caches, activations, the int32 token-id buffer, the logits and the sampled-id buffer.
//
// Per chunk of T tokens at positions [p, p + T), with x [T, D] the residual stream:
//   x = embedding[tokens]                              (Embedding.Lookup over the int32 token-id buffer)
//   for each layer:
//     xb = RmsNorm(x, attention_norm)
//     q = xb Wqᵀ [T, H·Dh], k = xb Wkᵀ, v = xb Wvᵀ [T, Hkv·Dh]; RoPE on q and k at positions p..p+T-1
//     append k, v to the layer's cache (unless the step keeps its own); att = the layer's attention step (IAttentionStep; by default causal GQA
//     attention of q over positions [0, p + T), DSA sessions attend over a top-k selection)
//     x = x + att Woᵀ                                  (residual add fused into the product's epilogue)
//     xb = RmsNorm(x, ffn_norm); up = xb W3ᵀ
//     gate = silu(xb W1ᵀ) ⊙ up                         (SwiGLU fused into the product's epilogue)
//     x = x + gate W2ᵀ                                 (residual add fused)
//   logits = RmsNorm(x[T - 1], final_norm) classifierᵀ   (only the last token's logits are computed)
// The two halves of the block and the chunk's buffers live in LlamaBlock.cs (HybridSession runs them too).
// With the config's Block Attention Residuals (cpu only) the embeddings and the sublayers' outputs go into the depth
// sources of AttentionResidualsStream.cs, and x is each sublayer's mixed input and, for the last token, the readout.
// Long prompts run in chunks of at most PrefillChunk tokens, which gives the same result as one piece because
// every step is per token except attention, which reads the cache that earlier chunks filled.
//
// Host traffic on an ILGPU device: Forward uploads the token ids (checked on the host first) and copies the V
// logits back; ForwardAndSample draws the next id on the device (DeviceSampling) and copies back only that id, and
// when the token fed next is that id alone, the embedding reads it from the sampled-id buffer, so a decode step
// uploads nothing. Positions reach the kernels as scalars.
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Models.Llama;

/// <summary>
/// The fast Llama session on any device (cpu, cuda, ilgpu-cpu): batched prefill, allocation-free decode, KV cache
/// sized to the context, and sampling on the device (<see cref="IDeviceSampling"/>). Not thread-safe.
/// </summary>
public sealed unsafe class LlamaSession : IInferenceSession, IDeviceSampling
{
    /// <summary>The most tokens pushed through the blocks at once; longer prompts run in chunks of this size.</summary>
    public const int PrefillChunk = 256;

    /// <summary>The longest context this session runs: the attention kernel's limit (its scores live on the stack).</summary>
    public const int MaxContextLength = Attention.MaxContext;

    private readonly LlamaWeights _weights;
    private readonly int _chunk;
    private readonly Tensor _cos;            // [S, Dh/2]
    private readonly Tensor _sin;            // [S, Dh/2]
    private readonly Tensor[] _keyCache;     // per layer [Hkv, Dh, S]
    private readonly Tensor[] _valueCache;   // per layer [Hkv, Dh, S]
    private readonly Tensor _logits;         // [1, V]
    private readonly Tensor _sampled;        // [1] int32: the id the last ForwardAndSample drew
    private readonly float[]? _hostLogits;   // [V] the logits copied back, on ILGPU devices only
    private readonly int[] _readBack = new int[1];
    private readonly BlockBuffers _buffers;
    private readonly Dictionary<int, BlockBuffers> _views = new();
    private readonly IAttentionStep _attention;
    private readonly AttentionResidualsStream? _residuals;   // the depth sources with Block AttnRes, else null
    private int _lastSampled = -1;           // the id held by _sampled; -1 before the first draw
    private bool _disposed;

    /// <summary>Creates a session over <paramref name="weights"/> on their device; the weights must outlive it.</summary>
    /// <exception cref="ArgumentException">The weights are on a device that cannot run the session.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// The context length is outside 1..seq_len or longer than <see cref="MaxContextLength"/>.
    /// </exception>
    /// <exception cref="InsufficientMemoryException">
    /// The KV cache for the context cannot fit in this machine's memory (cpu), or the session's buffers cannot fit
    /// in the device memory the weights leave (ILGPU devices).
    /// </exception>
    public LlamaSession(LlamaWeights weights, SessionOptions options)
        : this(weights, options, deviceMemoryBytes: null)
    {
    }

    /// <summary>
    /// Creates a session whose layers attend through the step <paramref name="attention"/> makes (dense causal
    /// attention when null); the session disposes the step.
    /// </summary>
    /// <exception cref="ArgumentException">The weights are on a device that cannot run the session.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The context length is out of range.</exception>
    /// <exception cref="InsufficientMemoryException">The caches cannot fit.</exception>
    public LlamaSession(LlamaWeights weights, SessionOptions options, Func<AttentionStepSetup, IAttentionStep>? attention)
        : this(weights, options, deviceMemoryBytes: null, attention)
    {
    }

    // deviceMemoryBytes, when set, replaces the accelerator's memory size in the fit check (tests of the refusal).
    internal LlamaSession(
        LlamaWeights weights,
        SessionOptions options,
        long? deviceMemoryBytes,
        Func<AttentionStepSetup, IAttentionStep>? attention = null)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(options);
        Device device = weights.Device;
        if (device is not (CpuDevice or IlgpuDevice))
        {
            throw new ArgumentException($"The Llama session runs on cpu, cuda and ilgpu-cpu; these weights are on {device.Name}.", nameof(weights));
        }

        LlamaConfig c = weights.Config;
        _weights = weights;
        Config = c;
        ContextLength = options.ResolveContextLength(c);
        if (ContextLength > MaxContextLength)
        {
            throw new ArgumentOutOfRangeException(nameof(options), $"The context length {ContextLength} (the model's seq_len is {c.SeqLen}) is longer than the fast session runs; pass SessionOptions.ContextLength of at most {MaxContextLength}.");
        }

        _chunk = Math.Min(PrefillChunk, ContextLength);
        if (c.AttentionResiduals is not null && device is not CpuDevice)
        {
            throw new ArgumentException($"Block Attention Residuals run on the cpu device only; these weights are on {device.Name}. Load them on cpu.", nameof(weights));
        }

        // Refuse a cache the machine or the device cannot hold before allocating any of it.
        long cacheBytes = 2L * c.Layers * c.KvDim * ContextLength * sizeof(float);
        if (device is IlgpuDevice ilgpu)
        {
            long memory = deviceMemoryBytes ?? ilgpu.Accelerator.MemorySize;
            long weightBytes = weights.Tensors.Sum(static t => t.ByteLength);
            SessionMemory.EnsureDeviceFits(device.Name, memory - weightBytes, cacheBytes, BufferBytes(c, ContextLength, _chunk), ContextLength, c.SeqLen);
        }
        else
        {
            SessionMemory.EnsureCacheFits(cacheBytes, ContextLength, c.SeqLen);
        }

        // RoPE tables for every position of the context.
        (_cos, _sin) = Ops.RopeTables(ContextLength, c.HeadDim, c.RopeTheta, device);

        // Activations for the largest chunk; smaller chunks use views of them. Then logits and the sampled id.
        _buffers = new BlockBuffers(c, _chunk, device);
        _logits = Tensor.Empty([1, c.VocabSize], device: device);
        _sampled = Tensor.Empty([1], DType.Int32, device);
        _hostLogits = device is CpuDevice ? null : new float[c.VocabSize];
        _views[_chunk] = _buffers;
        _views[1] = _buffers.Rows(1);
        _residuals = c.AttentionResiduals is null ? null : new AttentionResidualsStream(weights, _chunk, (CpuDevice)device);

        // The attention step, then the caches (transposed for the attention kernel) unless the step keeps its own;
        // a step that refuses the setup leaves nothing half-made but this session.
        try
        {
            _attention = attention is null ? DenseAttentionStep.Instance : attention(new AttentionStepSetup(c, ContextLength, _chunk, device));
        }
        catch
        {
            Dispose();
            throw;
        }

        int cached = _attention.KeepsOwnCache ? 0 : c.Layers;
        _keyCache = new Tensor[cached];
        _valueCache = new Tensor[cached];
        for (int l = 0; l < cached; l++)
        {
            _keyCache[l] = Tensor.Empty([c.KvHeads, c.HeadDim, ContextLength], device: device);
            _valueCache[l] = Tensor.Empty([c.KvHeads, c.HeadDim, ContextLength], device: device);
        }
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
        Append(tokens);

        // On an ILGPU device, copy the logits back (this waits for the queued kernels).
        if (_hostLogits is null)
        {
            return _logits.AsSpan();
        }

        _logits.CopyTo(_hostLogits);
        return _hostLogits;
    }

    /// <inheritdoc />
    public int ForwardAndSample(ReadOnlySpan<int> tokens, float temperature, double uniform)
    {
        // Refuse bad draw arguments before the tokens move the position.
        DeviceSampling.CheckDraw(temperature, uniform);

        // The id just drawn, fed back alone, is embedded from where the draw wrote it: nothing to upload. Before
        // the first draw _lastSampled is -1, which must be refused as an id, not taken for the buffer's content.
        if (tokens.Length == 1 && _lastSampled >= 0 && tokens[0] == _lastSampled)
        {
            CheckRoom(tokens);
            Run(_sampled, withLogits: true);
        }
        else
        {
            Append(tokens);
        }

        // Draw on the device, then read back the one id.
        DeviceSampling.Sample(_logits, temperature, uniform, _sampled);
        _sampled.CopyTo(_readBack);
        _lastSampled = _readBack[0];
        return _lastSampled;
    }

    // Checks the tokens, then runs them through the blocks a chunk at a time; only the last chunk needs logits.
    private void Append(ReadOnlySpan<int> tokens)
    {
        CheckRoom(tokens);
        Embedding.CheckIds(tokens, Config.VocabSize, nameof(tokens));
        for (int done = 0; done < tokens.Length; done += _chunk)
        {
            int count = Math.Min(_chunk, tokens.Length - done);
            BlockBuffers b = ViewsFor(count);
            b.Tokens.CopyFrom(tokens.Slice(done, count));
            Run(b.Tokens, count == tokens.Length - done);
        }
    }

    private void CheckRoom(ReadOnlySpan<int> tokens)
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
    }

    // Runs T ids (an int32 tensor on the device, T <= the chunk) through the blocks at Position.
    private void Run(Tensor ids, bool withLogits)
    {
        LlamaConfig c = Config;
        int start = Position;
        int count = (int)ids.Length;
        BlockBuffers b = ViewsFor(count);

        // Embed the tokens (into the first depth source with attention residuals).
        Embedding.Lookup(_weights.TokenEmbedding, ids, _residuals?.Embeddings(count) ?? b.X);

        for (int l = 0; l < c.Layers; l++)
        {
            LlamaLayerWeights w = _weights.Layers[l];

            // Attention (norm, projections, rotation, cache, attention, output projection with the residual add),
            // then the feed-forward half.
            Tensor? keyCache = _keyCache.Length > 0 ? _keyCache[l] : null;
            Tensor? valueCache = _valueCache.Length > 0 ? _valueCache[l] : null;
            // With attention residuals, each half reads its mix of the depth sources and adds into its block's sum.
            _residuals?.Mix(2 * l, count, b.X);
            LlamaBlock.Attention(b, l, start, w.AttentionNorm, w.Wq, w.Wk, w.Wv, w.Wo, c.NormEps, _cos, _sin, c.RopeLayout, keyCache, valueCache, _attention, _residuals?.Residual(2 * l, count));
            _residuals?.Mix((2 * l) + 1, count, b.X);
            LlamaBlock.FeedForward(b, w.FfnNorm, w.W1, w.W2, w.W3, c.NormEps, _residuals?.Residual((2 * l) + 1, count));
        }

        Position += count;
        if (withLogits)
        {
            // Classify the last token only.
            (Tensor lastX, Tensor lastXb) = b.LastRow;
            _residuals?.Readout(count - 1, lastX);
            Ops.RmsNorm(lastX, _weights.FinalNorm, c.NormEps, lastXb);
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

    // Bytes a session allocates besides its KV cache: RoPE tables, one chunk's activations and ids, logits, the id.
    private static long BufferBytes(LlamaConfig c, int context, int chunk)
    {
        long tables = 2L * context * (c.HeadDim / 2) * sizeof(float);
        long perRow = (2L * c.Dim) + (2L * c.QueryDim) + (2L * c.KvDim) + (2L * c.HiddenDim) + 1;
        return tables + (chunk * perRow * sizeof(float)) + ((c.VocabSize + 1L) * sizeof(float));
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _attention?.Dispose();
        _residuals?.Dispose();
        _buffers.Dispose();
        _logits.Dispose();
        _sampled.Dispose();
        _cos.Dispose();
        _sin.Dispose();
        foreach (Tensor? cache in (_keyCache ?? []).Concat(_valueCache ?? []))
        {
            cache?.Dispose();
        }
    }
}
