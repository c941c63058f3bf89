// The attention step of the fast Llama session as a per-layer strategy. LlamaSession runs everything around it
// (norm, q/k/v projections, RoPE, the KV-cache append, the output projection); the strategy turns the rotated
// queries of a chunk and the layer's caches into the attention output. A step may keep its KV cache itself, in the
// layout its kernel reads best (DSA gathers whole keys from a position-major cache): then the session allocates no
// cache, appends nothing, and hands the step the chunk's rotated keys and values instead. Dense causal attention is the default
// (DenseAttentionStep); DeepSeek sparse attention (Dsa/DsaAttentionStep) and the capture of the dense attention
// distribution for indexer training (Dsa/DenseAttentionCapture) are the other two.
//
// Shapes, for a chunk of T tokens at positions [Start, Start + T):
//   NormedInput [T, D]       the attention-normed residual stream (RmsNorm(x, attention_norm))
//   Queries     [T, H, Dh]   rotated queries
//   Keys        [T, Hkv·Dh]  the chunk's rotated keys
//   Values      [T, Hkv·Dh]  the chunk's values
//   KeyCache    [Hkv, Dh, S] the layer's keys, positions [0, Start + T) written (this chunk's included); null when
//                            the step keeps its own cache
//   ValueCache  [Hkv, Dh, S]
//   Output      [T, H, Dh]   what the step writes
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Models.Llama;

/// <summary>The inputs and the output of one layer's attention for one chunk (see the file header for shapes).</summary>
/// <param name="Layer">The layer index, 0-based.</param>
/// <param name="Start">The absolute position of the chunk's first token.</param>
/// <param name="NormedInput">The attention-normed input x, [T, D].</param>
/// <param name="Queries">The rotated queries, [T, H, Dh].</param>
/// <param name="Keys">The chunk's rotated keys, [T, Hkv·Dh].</param>
/// <param name="Values">The chunk's values, [T, Hkv·Dh].</param>
/// <param name="KeyCache">The layer's key cache, [Hkv, Dh, S], already holding this chunk's keys; null when the step
/// keeps its own cache (<see cref="IAttentionStep.KeepsOwnCache"/>).</param>
/// <param name="ValueCache">The layer's value cache, [Hkv, Dh, S], already holding this chunk's values; null when the
/// step keeps its own cache.</param>
/// <param name="Output">Where the attention output goes, [T, H, Dh].</param>
public readonly record struct AttentionStepInput(
    int Layer,
    int Start,
    Tensor NormedInput,
    Tensor Queries,
    Tensor Keys,
    Tensor Values,
    Tensor? KeyCache,
    Tensor? ValueCache,
    Tensor Output);

/// <summary>What a session tells an attention step when it is created: sizes and the device.</summary>
/// <param name="Config">The model configuration.</param>
/// <param name="ContextLength">The session's context length S.</param>
/// <param name="Chunk">The most tokens one call carries (T ≤ Chunk).</param>
/// <param name="Device">The device of the weights and caches.</param>
public readonly record struct AttentionStepSetup(LlamaConfig Config, int ContextLength, int Chunk, Device Device);

/// <summary>
/// The attention of a Llama session's layers: called once per layer per chunk, after the keys and values of the
/// chunk were appended to the layer's cache. Owns whatever per-layer state it needs (for DSA: indexer key caches and
/// the shared selection). The session disposes it.
/// </summary>
public interface IAttentionStep : IDisposable
{
    /// <summary>
    /// Whether the step keeps the layers' keys and values itself (from <see cref="AttentionStepInput.Keys"/> and
    /// <see cref="AttentionStepInput.Values"/>); the session then allocates and fills no KV cache.
    /// </summary>
    bool KeepsOwnCache => false;

    /// <summary>Writes the attention output of one layer for one chunk into <see cref="AttentionStepInput.Output"/>.</summary>
    void Attend(in AttentionStepInput input);
}

/// <summary>Dense causal grouped-query attention (<see cref="Attention.Compute"/>): the plain Llama step.</summary>
public sealed class DenseAttentionStep : IAttentionStep
{
    /// <summary>The one instance: the step holds no state.</summary>
    public static DenseAttentionStep Instance { get; } = new();

    /// <inheritdoc />
    public void Attend(in AttentionStepInput input)
    {
        Attention.Compute(input.Queries, input.KeyCache!, input.ValueCache!, input.Start, input.Output);
    }

    /// <inheritdoc />
    public void Dispose()
    {
    }
}
