// The two halves of a pre-norm Llama block on a chunk of T tokens, shared by every session built from them
// (LlamaSession, DsaSession through it, and the attention and MLP layers of HybridSession), and the activation
// buffers they run in. On cpu the ops run on the worker pool; on ILGPU devices they queue kernels.
//
//   Attention half (x [T, D] the residual stream, positions [start, start + T)):
//     xb = RmsNorm(x, norm); q = xb Wqᵀ [T, H·Dh], k = xb Wkᵀ, v = xb Wvᵀ [T, Hkv·Dh]
//     RoPE on q and k at positions start.. (when the model rotates; the Mamba-3 paper's hybrids do not)
//     append k, v to the layer's cache (unless the step keeps its own), att = the attention step's output
//     x = x + att Woᵀ                                    (the residual add fused into the product's epilogue)
//   MLP half:
//     xb = RmsNorm(x, norm); up = xb W3ᵀ; gate = silu(xb W1ᵀ) ⊙ up (fused); x = x + gate W2ᵀ (fused)
// With Block Attention Residuals (AttentionResidualsStream.cs) x holds the sublayer's mixed input and the output is
// added into a separate residual tensor, the running sum of the sublayer's block, instead of into x.
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Models.Llama;

/// <summary>The attention and MLP halves of a Llama block over one chunk (see the file header).</summary>
internal static class LlamaBlock
{
    /// <summary>
    /// x += attention(RmsNorm(x)) for the chunk in <paramref name="b"/> at positions [start, start + T). RoPE runs
    /// when <paramref name="cos"/> and <paramref name="sin"/> are given; the caches are null when the step keeps its own.
    /// The output is added into <paramref name="residual"/> [T, D] when given, else into x.
    /// </summary>
    public static void Attention(
        BlockBuffers b,
        int layer,
        int start,
        Tensor norm,
        Tensor wq,
        Tensor wk,
        Tensor wv,
        Tensor wo,
        float eps,
        Tensor? cos,
        Tensor? sin,
        RopeLayout layout,
        Tensor? keyCache,
        Tensor? valueCache,
        IAttentionStep step,
        Tensor? residual = null)
    {
        // Norm, projections, rotation.
        Ops.RmsNorm(b.X, norm, eps, b.Xb);
        MatMul.Compute(b.Xb, wq, b.Q);
        MatMul.Compute(b.Xb, wk, b.K);
        MatMul.Compute(b.Xb, wv, b.V);
        if (cos is not null && sin is not null)
        {
            Ops.Rope(b.QHeads, cos, sin, start, layout, b.QHeads);
            Ops.Rope(b.KHeads, cos, sin, start, layout, b.KHeads);
        }

        // Cache, attention, output projection with the residual add.
        if (keyCache is not null && valueCache is not null)
        {
            Kernels.Attention.Append(b.K, b.V, keyCache, valueCache, start);
        }

        step.Attend(new AttentionStepInput(layer, start, b.Xb, b.QHeads, b.K, b.V, keyCache, valueCache, b.AttentionHeads));
        Ops.ResidualAdd(b.Attention, wo, residual ?? b.X, residual ?? b.X);
    }

    /// <summary>
    /// x += W2 (silu(W1 h) ⊙ (W3 h)) with h = RmsNorm(x, norm), for the chunk in <paramref name="b"/>; the output is
    /// added into <paramref name="residual"/> [T, D] instead of x when given.
    /// </summary>
    public static void FeedForward(BlockBuffers b, Tensor norm, Tensor w1, Tensor w2, Tensor w3, float eps, Tensor? residual = null)
    {
        Ops.RmsNorm(b.X, norm, eps, b.Xb);
        MatMul.Compute(b.Xb, w3, b.Up);
        LlamaOps.SwiGluGate(b.Xb, w1, b.Up, b.Gate);
        Ops.ResidualAdd(b.Gate, w2, residual ?? b.X, residual ?? b.X);
    }
}

/// <summary>
/// The activations of a chunk of Llama blocks: owning tensors for the largest chunk, views of their first rows for
/// smaller ones (<see cref="Rows"/>).
/// </summary>
internal sealed class BlockBuffers : IDisposable
{
    private readonly LlamaConfig _config;
    private readonly bool _owner;
    private (Tensor X, Tensor Xb)? _lastRow;

    /// <summary>Allocates the buffers of a chunk of <paramref name="rows"/> tokens for <paramref name="c"/>.</summary>
    public BlockBuffers(LlamaConfig c, int rows, Device device)
        : this(c, rows, owner: true,
            Tensor.Empty([rows], DType.Int32, device),
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

    private BlockBuffers(LlamaConfig c, int rows, bool owner, Tensor tokens, Tensor x, Tensor xb, Tensor q, Tensor k, Tensor v, Tensor attention, Tensor up, Tensor gate)
    {
        _config = c;
        _owner = owner;
        Count = rows;
        Tokens = tokens;
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

    /// <summary>The number of tokens T.</summary>
    public int Count { get; }

    /// <summary>The token ids. [T] int32</summary>
    public Tensor Tokens { get; }

    /// <summary>The residual stream. [T, D]</summary>
    public Tensor X { get; }

    /// <summary>The normed input of a half block (and scratch of the same shape). [T, D]</summary>
    public Tensor Xb { get; }

    /// <summary>The queries. [T, H·Dh]</summary>
    public Tensor Q { get; }

    /// <summary>The keys. [T, Hkv·Dh]</summary>
    public Tensor K { get; }

    /// <summary>The values. [T, Hkv·Dh]</summary>
    public Tensor V { get; }

    /// <summary>The attention output. [T, H·Dh]</summary>
    public Tensor Attention { get; }

    /// <summary>The MLP up projection. [T, F]</summary>
    public Tensor Up { get; }

    /// <summary>The gated MLP activation. [T, F]</summary>
    public Tensor Gate { get; }

    /// <summary>The queries by head. [T, H, Dh]</summary>
    public Tensor QHeads { get; }

    /// <summary>The keys by head. [T, Hkv, Dh]</summary>
    public Tensor KHeads { get; }

    /// <summary>The attention output by head. [T, H, Dh]</summary>
    public Tensor AttentionHeads { get; }

    /// <summary>The last row of X and of Xb, for the classifier; made on first use.</summary>
    public (Tensor X, Tensor Xb) LastRow => _lastRow ??= (X.Slice(Count - 1, 1), Xb.Slice(Count - 1, 1));

    /// <summary>Views of the first <paramref name="rows"/> rows of every buffer.</summary>
    public BlockBuffers Rows(int rows) => new(
        _config, rows, owner: false,
        Tokens.Slice(0, rows), X.Slice(0, rows), Xb.Slice(0, rows), Q.Slice(0, rows), K.Slice(0, rows),
        V.Slice(0, rows), Attention.Slice(0, rows), Up.Slice(0, rows), Gate.Slice(0, rows));

    /// <summary>Frees the tensors when this object owns them (views free nothing).</summary>
    public void Dispose()
    {
        if (_owner)
        {
            foreach (Tensor tensor in new[] { Tokens, X, Xb, Q, K, V, Attention, Up, Gate })
            {
                tensor.Dispose();
            }
        }
    }
}
