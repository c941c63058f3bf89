// The attention step of a DSA session (IAttentionStep of LlamaSession): DeepSeek sparse attention with IndexCache.
// For a chunk of T tokens at positions [p, p + T) in layer l:
//   Full layer (pattern F):
//     q_I = x Wq_Iᵀ [T, Hi·Di]; w = (x W_projᵀ) · Hi^-1/2 · Di^-1/2 [T, Hi]; k_I = x Wk_Iᵀ [T, Di]
//     RoPE on dims [0, RopeDims) of each q_I head at positions p..p+T-1 (the indexer's layout)
//     LightningIndexer.AppendKeys: LayerNorm + the same RoPE on k_I, written into the layer's key cache [Di, S]
//     I = LightningIndexer.Scores [T, S] (-∞ after each token's position), then TopK.Select into the shared
//     selection [T, K] (ascending, -1 padded, min(K, pos + 1) per row)
//   Shared layer (pattern S): nothing of the above (no projections, no key append, no key cache); the shared selection
//     still holds the rows of the nearest Full layer before it, because layers run in order within a chunk.
//   Every layer: the chunk's keys and values appended to the layer's KV cache, then SparseAttention.Compute of its
//     rotated queries over that cache with the shared selection.
// The step keeps the KV caches itself, position-major [S, Hkv, Dh], so that a selected key is Dh contiguous floats
// (the session's dense caches are transposed for streaming every position). Indexer key caches exist for Full
// layers only. Buffers are allocated once for the largest chunk; views per chunk length are
// made once, so a decode step allocates nothing. CPU only: the indexer, top-k and sparse kernels are CPU kernels.
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Llama;

namespace Kiln.Models.Dsa;

/// <summary>DeepSeek sparse attention with an IndexCache pattern, as a <see cref="LlamaSession"/> attention step.</summary>
internal sealed unsafe class DsaAttentionStep : IAttentionStep
{
    private readonly DsaWeights _weights;
    private readonly DsaConfig _config;
    private readonly int _contextLength;
    private readonly Tensor? _cos;            // [S, RopeDims/2]
    private readonly Tensor? _sin;            // [S, RopeDims/2]
    private readonly Tensor?[] _keyCaches;    // per Full layer [Di, S]; null for Shared layers
    private readonly Tensor[] _keys;          // per layer [S, Hkv, Dh], the attention keys
    private readonly Tensor[] _values;        // per layer [S, Hkv, Dh], the attention values
    private readonly Tensor _queries;         // [chunk, Hi·Di]
    private readonly Tensor _headWeights;     // [chunk, Hi]
    private readonly Tensor _indexerKeys;     // [chunk, Di]
    private readonly Tensor _scores;          // [chunk, S]
    private readonly int[] _selection;        // [chunk, K] the shared selection of the current chunk
    private readonly int[][]? _recorded;      // per layer [S, K]: the selection each layer used, by absolute position
    private readonly Dictionary<int, (Tensor Q, Tensor W, Tensor K, Tensor Scores)> _views = new();
    private readonly float _headScale;

    public DsaAttentionStep(DsaWeights weights, AttentionStepSetup setup, bool record)
    {
        DsaConfig c = weights.Config;
        _weights = weights;
        _config = c;
        _contextLength = setup.ContextLength;
        int chunk = setup.Chunk;
        _headScale = LightningIndexer.HeadWeightScale(c.IndexerHeads, c.IndexerHeadDim);
        if (c.IndexerRopeDims > 0)
        {
            (_cos, _sin) = Ops.RopeTables(_contextLength, c.IndexerRopeDims, c.Llama.RopeTheta);
        }

        // Indexer key caches for Full layers only: a Shared layer never reads or writes one.
        _keyCaches = new Tensor?[c.Llama.Layers];
        _keys = new Tensor[c.Llama.Layers];
        _values = new Tensor[c.Llama.Layers];
        for (int l = 0; l < _keyCaches.Length; l++)
        {
            _keyCaches[l] = c.Pattern.IsFull(l) ? Tensor.Empty([c.IndexerHeadDim, _contextLength]) : null;
            _keys[l] = Tensor.Empty([_contextLength, c.Llama.KvHeads, c.Llama.HeadDim]);
            _values[l] = Tensor.Empty([_contextLength, c.Llama.KvHeads, c.Llama.HeadDim]);
        }

        _queries = Tensor.Empty([chunk, c.IndexerQueryDim]);
        _headWeights = Tensor.Empty([chunk, c.IndexerHeads]);
        _indexerKeys = Tensor.Empty([chunk, c.IndexerHeadDim]);
        _scores = Tensor.Empty([chunk, _contextLength]);
        _selection = new int[chunk * c.TopK];
        if (record)
        {
            _recorded = new int[c.Llama.Layers][];
            for (int l = 0; l < _recorded.Length; l++)
            {
                _recorded[l] = new int[(long)_contextLength * c.TopK];
            }
        }
    }

    /// <summary>The selection layer <paramref name="layer"/> used for positions [0, count), [count, K] (recording only).</summary>
    public int[] Recorded(int layer, int count)
    {
        if (_recorded is null)
        {
            throw new InvalidOperationException("This DSA session does not record selections; create it with recordSelections: true.");
        }

        return _recorded[layer].AsSpan(0, count * _config.TopK).ToArray();
    }

    public bool KeepsOwnCache => true;

    public void Attend(in AttentionStepInput input)
    {
        int t = input.Queries.Size(0), layer = input.Layer, start = input.Start, k = _config.TopK;
        int width = _config.Llama.KvDim;
        input.Keys.AsSpan().CopyTo(_keys[layer].AsSpan().Slice(start * width, t * width));
        input.Values.AsSpan().CopyTo(_values[layer].AsSpan().Slice(start * width, t * width));
        Span<int> selection = _selection.AsSpan(0, t * k);
        if (_config.Pattern.IsFull(layer))
        {
            SelectFull(input.NormedInput, layer, start, t, selection);
        }

        // Sparse attention over this layer's own cache with the (own or shared) selection.
        SparseAttention.Compute(input.Queries, _keys[layer], _values[layer], selection, k, start, input.Output);
        if (_recorded is not null)
        {
            selection.CopyTo(_recorded[layer].AsSpan(start * k, t * k));
        }
    }

    // The indexer of a Full layer: projections, RoPE, key append, scores, top-k into the shared selection.
    private void SelectFull(Tensor x, int layer, int start, int t, Span<int> selection)
    {
        DsaConfig c = _config;
        DsaIndexerWeights w = _weights.Indexers[layer]!;
        (Tensor q, Tensor headWeights, Tensor keys, Tensor scores) = ViewsFor(t);

        // Project the queries, the head weights and the keys from the attention-normed input.
        MatMul.Compute(x, w.Wq, q);
        MatMul.Compute(x, w.WProj, headWeights);
        MatMul.Compute(x, w.Wk, keys);

        // Fold Hi^-1/2 · Di^-1/2 into the head weights, and rotate the queries' leading dims.
        Span<float> weightSpan = headWeights.AsSpan();
        for (int i = 0; i < weightSpan.Length; i++)
        {
            weightSpan[i] *= _headScale;
        }

        RotateQueries(q, start, t);

        // Normalise, rotate and store the keys, then score the chunk against every cached key and select.
        LightningIndexer.AppendKeys(
            keys, w.KNormWeight, w.KNormBias, c.IndexerNormEps, _cos ?? keys, _sin ?? keys, c.IndexerRopeDims,
            c.IndexerRopeLayout, _keyCaches[layer]!, start);
        LightningIndexer.Scores(q, headWeights, _keyCaches[layer]!, start, scores);
        TopK.Select(scores, start, c.TopK, selection);
    }

    // RoPE on dims [0, RopeDims) of every indexer query head, token t at position start + t.
    private void RotateQueries(Tensor q, int start, int t)
    {
        int half = _config.IndexerRopeDims / 2;
        if (half == 0)
        {
            return;
        }

        int hi = _config.IndexerHeads, di = _config.IndexerHeadDim;
        bool adjacent = _config.IndexerRopeLayout == RopeLayout.Adjacent;
        float* data = q.FloatPointer;
        for (int token = 0; token < t; token++)
        {
            float* cos = _cos!.FloatPointer + ((long)(start + token) * half);
            float* sin = _sin!.FloatPointer + ((long)(start + token) * half);
            for (int head = 0; head < hi; head++)
            {
                float* row = data + ((long)((token * hi) + head) * di);
                for (int i = 0; i < half; i++)
                {
                    // The pair by layout, turned by the angle of pair index i.
                    int first = adjacent ? 2 * i : i;
                    int second = adjacent ? first + 1 : first + half;
                    float x0 = row[first], x1 = row[second];
                    row[first] = (x0 * cos[i]) - (x1 * sin[i]);
                    row[second] = (x0 * sin[i]) + (x1 * cos[i]);
                }
            }
        }
    }

    // Row views of the buffers for a chunk of `count` tokens, made once per distinct count.
    private (Tensor Q, Tensor W, Tensor K, Tensor Scores) ViewsFor(int count)
    {
        if (!_views.TryGetValue(count, out (Tensor Q, Tensor W, Tensor K, Tensor Scores) views))
        {
            views = (_queries.Slice(0, count), _headWeights.Slice(0, count), _indexerKeys.Slice(0, count), _scores.Slice(0, count));
            _views[count] = views;
        }

        return views;
    }

    public void Dispose()
    {
        _cos?.Dispose();
        _sin?.Dispose();
        foreach (Tensor? cache in _keyCaches)
        {
            cache?.Dispose();
        }

        foreach (Tensor cache in _keys.Concat(_values))
        {
            cache?.Dispose();
        }

        _queries.Dispose();
        _headWeights.Dispose();
        _indexerKeys.Dispose();
        _scores.Dispose();
    }
}
