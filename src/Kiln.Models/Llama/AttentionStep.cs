// The attention step of the fast Llama session as a per-layer strategy. LlamaSession runs everything around it
// (norm, q/k/v projections, RoPE, the KV-cache append, the output projection); the strategy turns the rotated
// queries of a chunk and the layer's caches into the attention output. Dense causal attention is the default
// (DenseAttentionStep); DeepSeek sparse attention (Dsa/DsaAttentionStep) and the capture of the dense attention
// distribution for indexer training (Dsa/DenseAttentionCapture) are the other two.
//
// Shapes, for a chunk of T tokens at positions [Start, Start + T):
//   NormedInput [T, D]       the attention-normed residual stream (RmsNorm(x, attention_norm))
//   Queries     [T, H, Dh]   rotated queries
//   KeyCache    [Hkv, Dh, S] the layer's keys, positions [0, Start + T) written (this chunk's included)
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
/// <param name="KeyCache">The layer's key cache, [Hkv, Dh, S], already holding this chunk's keys.</param>
/// <param name="ValueCache">The layer's value cache, [Hkv, Dh, S], already holding this chunk's values.</param>
/// <param name="Output">Where the attention output goes, [T, H, Dh].</param>
public readonly record struct AttentionStepInput(
    int Layer,
    int Start,
    Tensor NormedInput,
    Tensor Queries,
    Tensor KeyCache,
    Tensor ValueCache,
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
        Attention.Compute(input.Queries, input.KeyCache, input.ValueCache, input.Start, input.Output);
    }

    /// <inheritdoc />
    public void Dispose()
    {
    }
}
