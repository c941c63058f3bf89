// The fast cpu path of Block Attention Residuals (the rule is in AttentionResiduals.cs): the depth sources of one
// chunk of T tokens and the mix that forms each sublayer's input from them, for LlamaSession.
//
// Buffers, allocated once per session for the prefill chunk (decode uses views of their first row, made up front):
//   slot 0      b_0, the chunk's embeddings                                [T, D]
//   slot n + 1  the sum of block n's outputs (0-based n): the partial sum while block n runs, b_{n+1} after it  [T, D]
// so N + 1 slots of [T, D] hold every source of the forward pass; nothing outlives it, and the KV cache is unchanged.
// A sublayer of block n reads slots 0..n, plus slot n + 1 when it is not the block's first sublayer, and adds its
// output into slot n + 1 (cleared at the block's first sublayer) through the product epilogue that standard Llama
// uses for its residual add. The readout mixes slots 0..N for the row that is classified.
//
// The mix of one row over k sources v_i (k <= N + 1):
//   logit_i = (w ⊙ g) · v_i / √(mean(v_i²) + eps)      (= w · (g ⊙ RmsNorm(v_i)); w ⊙ g is formed once per session)
//   α = softmax(logit) with the maximum subtracted;  out = Σ_i α_i v_i
// each step a vectorised TensorPrimitives call (sum of squares, dot, multiply-add) over D; rows run on the worker pool.
using System.Numerics.Tensors;
using Kiln.Devices;

namespace Kiln.Models.Llama;

/// <summary>The depth sources of a chunk and the Block AttnRes mix over them (cpu; see the file header).</summary>
internal sealed unsafe class AttentionResidualsStream : IDisposable
{
    private readonly CpuDevice _device;
    private readonly int _dim;
    private readonly float _eps;
    private readonly Tensor[] _slots;              // N + 1 of [T, D]
    private readonly nint[] _slotPointers;         // pinned: the slots' first elements
    private readonly float[] _keys;                // pinned [2L + 1, D]: w ⊙ g per sublayer, then the readout's
    private readonly int[] _blockOf;               // [2L] the 0-based block of each sublayer
    private readonly bool[] _startsBlock;          // [2L] whether the sublayer is its block's first
    private readonly int _blocks;
    private readonly Dictionary<int, Tensor[]> _views = new();

    /// <summary>Allocates the slots for chunks of up to <paramref name="chunk"/> tokens and reads the vectors.</summary>
    public AttentionResidualsStream(LlamaWeights weights, int chunk, CpuDevice device)
    {
        LlamaConfig c = weights.Config;
        AttentionResidualsConfig option = c.AttentionResiduals!;
        AttentionResidualsWeights vectors = weights.AttentionResiduals!;
        _device = device;
        _dim = c.Dim;
        _eps = c.NormEps;
        _blocks = option.Blocks;
        int sublayers = 2 * c.Layers;

        // The block map of the sublayers.
        _blockOf = new int[sublayers];
        _startsBlock = new bool[sublayers];
        for (int s = 0; s < sublayers; s++)
        {
            _blockOf[s] = option.BlockOf(s, sublayers);
            _startsBlock[s] = option.BlockStart(_blockOf[s], sublayers) == s;
        }

        // The keys' weights w ⊙ g, one row per sublayer and one for the readout.
        _keys = GC.AllocateArray<float>((sublayers + 1) * _dim, pinned: true);
        TensorPrimitives.Multiply(vectors.Queries.AsSpan(), vectors.KeyNorms.AsSpan(), _keys);

        // The slots, and views of their first row for decode.
        _slots = new Tensor[_blocks + 1];
        _slotPointers = GC.AllocateArray<nint>(_blocks + 1, pinned: true);
        for (int i = 0; i < _slots.Length; i++)
        {
            _slots[i] = Tensor.Empty([chunk, _dim], device: device);
            _slotPointers[i] = (nint)_slots[i].FloatPointer;
        }

        _views[chunk] = _slots;
        Views(1);
    }

    /// <summary>Where the embeddings of a chunk of <paramref name="count"/> tokens go: slot 0. [T, D]</summary>
    public Tensor Embeddings(int count) => Views(count)[0];

    /// <summary>Writes sublayer <paramref name="sublayer"/>'s input for the chunk's first <paramref name="count"/> rows into <paramref name="output"/> [T, D].</summary>
    public void Mix(int sublayer, int count, Tensor output)
    {
        int block = _blockOf[sublayer];
        int sources = block + 1 + (_startsBlock[sublayer] ? 0 : 1);
        MixRows(sublayer, sources, 0, count, output.FloatPointer);
    }

    /// <summary>
    /// The tensor sublayer <paramref name="sublayer"/> adds its output into: its block's slot, cleared first when the
    /// sublayer starts the block. [T, D]
    /// </summary>
    public Tensor Residual(int sublayer, int count)
    {
        Tensor slot = Views(count)[_blockOf[sublayer] + 1];
        if (_startsBlock[sublayer])
        {
            slot.AsSpan().Clear();
        }

        return slot;
    }

    /// <summary>Writes the readout mix of chunk row <paramref name="row"/> over every block into <paramref name="output"/> [1, D].</summary>
    public void Readout(int row, Tensor output) => MixRows(_blockOf.Length, _blocks + 1, row, row + 1, output.FloatPointer);

    // Mixes the slots' rows [start, end) over the first `sources` slots with the keys of row `keyRow` into output,
    // whose first row receives row `start`.
    private void MixRows(int keyRow, int sources, int start, int end, float* output)
    {
        fixed (float* keys = &_keys[keyRow * _dim])
        fixed (nint* slots = _slotPointers)
        {
            MixState state = new()
            {
                Slots = slots, Sources = sources, Key = keys, Output = output, Dim = _dim, Eps = _eps, Start = start,
            };

            // About 3·k·D flops a row: split in parts of at least 16 rows, so decode stays on this thread.
            _device.Pool.For(end - start, 16, &MixBody, &state);
        }
    }

    private static void MixBody(void* pointer, int from, int to)
    {
        MixState* s = (MixState*)pointer;
        int d = s->Dim, k = s->Sources;
        ReadOnlySpan<float> key = new(s->Key, d);
        Span<float> alpha = stackalloc float[k];
        for (int t = s->Start + from; t < s->Start + to; t++)
        {
            long offset = (long)t * d;

            // Logits: the key weights against each RMS-normalised source, then the softmax with the maximum subtracted.
            float max = float.NegativeInfinity;
            for (int i = 0; i < k; i++)
            {
                ReadOnlySpan<float> v = new((float*)s->Slots[i] + offset, d);
                float meanSquare = TensorPrimitives.SumOfSquares(v) / d;
                alpha[i] = TensorPrimitives.Dot(key, v) / MathF.Sqrt(meanSquare + s->Eps);
                max = MathF.Max(max, alpha[i]);
            }

            float sum = 0f;
            for (int i = 0; i < k; i++)
            {
                alpha[i] = MathF.Exp(alpha[i] - max);
                sum += alpha[i];
            }

            // The weighted sum of the sources.
            Span<float> output = new(s->Output + ((long)(t - s->Start) * d), d);
            TensorPrimitives.Multiply(new ReadOnlySpan<float>((float*)s->Slots[0] + offset, d), alpha[0] / sum, output);
            for (int i = 1; i < k; i++)
            {
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>((float*)s->Slots[i] + offset, d), alpha[i] / sum, output, output);
            }
        }
    }

    // Views of the first `count` rows of every slot, made once per distinct count (decode always uses 1). The lambda
    // lives in its own method: a closure over `count` here would be allocated on every call, found or not.
    private Tensor[] Views(int count)
    {
        if (!_views.TryGetValue(count, out Tensor[]? views))
        {
            views = SliceSlots(count);
            _views[count] = views;
        }

        return views;
    }

    private Tensor[] SliceSlots(int count) => [.. _slots.Select(slot => slot.Slice(0, count))];

    /// <summary>Frees the slots.</summary>
    public void Dispose()
    {
        foreach (Tensor slot in _slots)
        {
            slot.Dispose();
        }
    }

    private struct MixState
    {
        public nint* Slots;
        public int Sources;
        public float* Key;
        public float* Output;
        public int Dim;
        public float Eps;
        public int Start;
    }
}
