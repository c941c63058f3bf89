// A Llama generation session whose KV cache is compressed once, after the prompt (ChunkKV, SnapKV or StreamingLLM; see
// KvCompressionOptions and KvSelection): a LlamaSession with its attention step replaced by KvCompressionStep. Decode
// appends new tokens uncompressed behind the kept ones; their positions, and so their RoPE rotation, continue from the
// prompt length, not from the shortened cache. Decode reads only the kept slots, which is where the speed-up comes from.
using Kiln.Models.Dsa;
using Kiln.Models.Llama;

namespace Kiln.Models.KvCompression;

/// <summary>
/// A Llama session (cpu, cuda or ilgpu-cpu) that compresses its KV cache after the prompt (see the file header). By default
/// the first <see cref="Forward"/> after creation or <see cref="Reset"/> is the prompt, and the cache is compressed at
/// its end; with <see cref="KvCompressionOptions.CompressAfterPrompt"/> false the caller calls <see cref="Compress"/>.
/// Not thread-safe.
/// </summary>
public sealed class KvCompressedSession : IInferenceSession, IDeviceSampling
{
    private readonly LlamaSession _session;
    private readonly KvCompressionStep _step;
    private bool _promptDone;

    /// <summary>Creates a session over <paramref name="weights"/> on their device; they must outlive it.</summary>
    /// <exception cref="ArgumentException">A compression setting is out of range, or the weights are on a device the
    /// session cannot run on.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The context length is out of range.</exception>
    /// <exception cref="InsufficientMemoryException">The caches cannot fit.</exception>
    public KvCompressedSession(LlamaWeights weights, SessionOptions options, KvCompressionOptions compression)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(compression);
        compression.Validate();
        Compression = compression;
        KvCompressionStep? step = null;
        _session = new LlamaSession(weights, options, setup => step = new KvCompressionStep(setup, compression));
        _step = step!;
    }

    /// <summary>The compression settings.</summary>
    public KvCompressionOptions Compression { get; }

    /// <summary>Which layers score and select (F) and which reuse the selection of the nearest one before (S).</summary>
    public IndexCachePattern Pattern => _step.Pattern;

    /// <summary>Whether the cache has been compressed since creation or the last reset.</summary>
    public bool Compressed => _step.Compressed;

    /// <summary>What the last compression did; null before one.</summary>
    public KvCompressionResult? LastCompression { get; private set; }

    /// <inheritdoc />
    public LlamaConfig Config => _session.Config;

    /// <inheritdoc />
    public int ContextLength => _session.ContextLength;

    /// <inheritdoc />
    public int Position => _session.Position;

    /// <summary>The cache slots layer <paramref name="layer"/> holds (Position before compression).</summary>
    public int CacheLength(int layer) => _step.Length(RequireLayer(layer));

    /// <summary>The logical positions of the tokens layer <paramref name="layer"/> holds, ascending.</summary>
    public int[] KeptPositions(int layer) => _step.Positions(RequireLayer(layer));

    /// <inheritdoc />
    public void Reset()
    {
        _session.Reset();
        _step.Reset();
        _promptDone = false;
        LastCompression = null;
    }

    /// <inheritdoc />
    /// <exception cref="InvalidOperationException">A fractional budget leaves fewer tokens of this prompt than the
    /// method needs.</exception>
    public ReadOnlySpan<float> Forward(ReadOnlySpan<int> tokens)
    {
        bool prompt = BeforePrompt(tokens.Length);
        ReadOnlySpan<float> logits = _session.Forward(tokens);
        AfterPrompt(prompt);
        return logits;
    }

    /// <inheritdoc />
    public int ForwardAndSample(ReadOnlySpan<int> tokens, float temperature, double uniform)
    {
        bool prompt = BeforePrompt(tokens.Length);
        int next = _session.ForwardAndSample(tokens, temperature, uniform);
        AfterPrompt(prompt);
        return next;
    }

    /// <summary>Compresses every layer's cache now, with the last <see cref="KvCompressionOptions.Window"/> tokens as
    /// the observation window. Once per prompt: <see cref="Reset"/> starts over.</summary>
    /// <exception cref="InvalidOperationException">The cache is empty or already compressed, or the budget leaves fewer
    /// tokens than the method needs.</exception>
    public KvCompressionResult Compress()
    {
        _promptDone = true;
        LastCompression = _step.Compress();
        return LastCompression;
    }

    // Whether this call is the prompt that compression follows; a fractional budget is checked before it runs.
    private bool BeforePrompt(int count)
    {
        if (_promptDone || _step.Compressed || !Compression.CompressAfterPrompt)
        {
            return false;
        }

        if (count > 0 && count <= ContextLength - Position)
        {
            _step.BudgetFor(Position + count);
        }

        return true;
    }

    private void AfterPrompt(bool prompt)
    {
        if (prompt)
        {
            Compress();
        }
    }

    private int RequireLayer(int layer)
    {
        if ((uint)layer >= (uint)Config.Layers)
        {
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"The model has layers 0..{Config.Layers - 1}.");
        }

        return layer;
    }

    /// <inheritdoc />
    public void Dispose() => _session.Dispose();
}
