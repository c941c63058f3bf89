// The fast DSA session: LlamaSession (batched prefill in chunks, one-token decode, KV caches) with its attention step
// replaced by DsaAttentionStep (lightning indexer in Full layers, top-k, sparse attention in every layer, IndexCache
// reuse in Shared layers). Prefill chunks and decode steps both run the indexer. It runs on the weights' device
// (cpu, cuda, ilgpu-cpu: DsaWeights.To copies a model there); on an ILGPU device a decode step through
// ForwardAndSample queues kernels only and reads back the one sampled id, as LlamaSession does.
using Kiln.Devices;
using Kiln.Models.Llama;

namespace Kiln.Models.Dsa;

/// <summary>
/// A DSA model's generation session on the weights' device: a <see cref="LlamaSession"/> whose layers attend sparsely
/// over the top-K positions chosen by their own (Full) or the nearest earlier Full layer's (Shared) lightning indexer,
/// with sampling on the device (<see cref="IDeviceSampling"/>). Not thread-safe.
/// </summary>
public sealed class DsaSession : IInferenceSession, IDeviceSampling
{
    private readonly LlamaSession _session;
    private readonly DsaAttentionStep _step;

    /// <summary>Creates a session over <paramref name="weights"/> (which must outlive it) with their config's pattern.</summary>
    /// <param name="weights">The DSA weights, on cpu, cuda or ilgpu-cpu.</param>
    /// <param name="options">The context length.</param>
    /// <param name="recordSelections">Keep every layer's selection per position for <see cref="Selection"/> (tests;
    /// on an ILGPU device each layer's rows are copied back, a host round trip per layer).</param>
    /// <exception cref="ArgumentException">The weights are on a device the session cannot run on, or a Full layer
    /// has no indexer.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The context length is out of range.</exception>
    /// <exception cref="InsufficientMemoryException">The caches cannot fit.</exception>
    public DsaSession(DsaWeights weights, SessionOptions options, bool recordSelections = false)
        : this(weights, options, recordSelections, deviceMemoryBytes: null)
    {
    }

    // deviceMemoryBytes, when set, replaces the accelerator's memory size in the fit checks (tests of the refusal).
    internal DsaSession(DsaWeights weights, SessionOptions options, bool recordSelections, long? deviceMemoryBytes)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(options);
        weights.RequireIndexers(weights.Config.Pattern);
        Weights = weights;
        DsaConfig = weights.Config;
        DsaAttentionStep? step = null;
        _session = new LlamaSession(
            weights.Dense, options, deviceMemoryBytes, setup => step = new DsaAttentionStep(weights, setup, recordSelections, deviceMemoryBytes));
        _step = step!;
    }

    /// <summary>The DSA weights this session runs.</summary>
    public DsaWeights Weights { get; }

    /// <summary>
    /// The DSA configuration this session runs, pattern included: the weights' config when the session was created
    /// (a later <see cref="DsaWeights.WithPattern"/> does not change a running session).
    /// </summary>
    public DsaConfig DsaConfig { get; }

    /// <inheritdoc />
    public LlamaConfig Config => _session.Config;

    /// <inheritdoc />
    public int ContextLength => _session.ContextLength;

    /// <inheritdoc />
    public int Position => _session.Position;

    /// <inheritdoc />
    public void Reset() => _session.Reset();

    /// <inheritdoc />
    public ReadOnlySpan<float> Forward(ReadOnlySpan<int> tokens) => _session.Forward(tokens);

    /// <inheritdoc />
    public int ForwardAndSample(ReadOnlySpan<int> tokens, float temperature, double uniform) =>
        _session.ForwardAndSample(tokens, temperature, uniform);

    /// <summary>
    /// The selection layer <paramref name="layer"/> attended with for positions [0, Position): [Position, K] row-major,
    /// ascending positions then -1 padding. Only for sessions created with <c>recordSelections: true</c>.
    /// </summary>
    /// <exception cref="InvalidOperationException">The session does not record selections.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The layer does not exist.</exception>
    public int[] Selection(int layer)
    {
        if ((uint)layer >= (uint)Config.Layers)
        {
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"The model has layers 0..{Config.Layers - 1}.");
        }

        return _step.Recorded(layer, Position);
    }

    /// <inheritdoc />
    public void Dispose() => _session.Dispose();
}
