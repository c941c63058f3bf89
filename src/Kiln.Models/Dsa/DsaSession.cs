// The fast DSA session: LlamaSession (batched prefill in chunks, one-token decode, KV caches) with its attention step
// replaced by DsaAttentionStep (lightning indexer in Full layers, top-k, sparse attention in every layer, IndexCache
// reuse in Shared layers). Prefill chunks and decode steps both run the indexer. CPU only: the indexer, top-k and
// sparse-attention kernels exist for the cpu device; other devices are refused with an error saying so.
using Kiln.Devices;
using Kiln.Models.Llama;

namespace Kiln.Models.Dsa;

/// <summary>
/// A DSA model's generation session on the cpu device: a <see cref="LlamaSession"/> whose layers attend sparsely over
/// the top-K positions chosen by their own (Full) or the nearest earlier Full layer's (Shared) lightning indexer.
/// Not thread-safe.
/// </summary>
public sealed class DsaSession : IInferenceSession
{
    private readonly LlamaSession _session;
    private readonly DsaAttentionStep _step;

    /// <summary>Creates a session over <paramref name="weights"/> (which must outlive it) with their config's pattern.</summary>
    /// <param name="weights">The DSA weights, on the cpu device.</param>
    /// <param name="options">The context length.</param>
    /// <param name="recordSelections">Keep every layer's selection per position for <see cref="Selection"/> (tests).</param>
    /// <exception cref="ArgumentException">The weights are not on the cpu device, or a Full layer has no indexer.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The context length is out of range.</exception>
    public DsaSession(DsaWeights weights, SessionOptions options, bool recordSelections = false)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(options);
        if (weights.Device is not CpuDevice)
        {
            throw new ArgumentException(
                $"The DSA session runs on the cpu device only (its indexer, top-k and sparse attention kernels are CPU "
                + $"kernels); these weights are on {weights.Device.Name}. Load the model with --device cpu.",
                nameof(weights));
        }

        weights.RequireIndexers(weights.Config.Pattern);
        Weights = weights;
        DsaConfig = weights.Config;
        DsaAttentionStep? step = null;
        _session = new LlamaSession(weights.Dense, options, setup => step = new DsaAttentionStep(weights, setup, recordSelections));
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
