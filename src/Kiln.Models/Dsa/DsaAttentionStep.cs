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
// layers only. Every device (cpu, cuda, ilgpu-cpu) runs the same calls: caches, RoPE tables, projections, scores and
// the int32 selection [chunk, K] are tensors on the weights' device, allocated once for the largest chunk, with views
// per chunk length made once; so a decode step allocates nothing, and on an ILGPU device it queues kernels only: the
// selection goes from TopK.Select to SparseAttention.Compute without leaving the device. The head-weight scale is the
// generated Ops.Scale, the query rotation LightningIndexer.RotateQueries, the KV append SparseAttention.Append.
// Recording selections (tests) copies each layer's rows back to the host.
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Llama;

namespace Kiln.Models.Dsa;

/// <summary>DeepSeek sparse attention with an IndexCache pattern, as a <see cref="LlamaSession"/> attention step.</summary>
internal sealed class DsaAttentionStep : IAttentionStep
{
    private readonly DsaWeights _weights;
    private readonly DsaConfig _config;
    private readonly Tensor? _cos;            // [S, RopeDims/2]
    private readonly Tensor? _sin;            // [S, RopeDims/2]
    private readonly Tensor?[] _keyCaches;    // per Full layer [Di, S]; null for Shared layers
    private readonly Tensor[] _keys;          // per layer [S, Hkv, Dh], the attention keys
    private readonly Tensor[] _values;        // per layer [S, Hkv, Dh], the attention values
    private readonly Tensor _queries;         // [chunk, Hi·Di]
    private readonly Tensor _headWeights;     // [chunk, Hi]
    private readonly Tensor _indexerKeys;     // [chunk, Di]
    private readonly Tensor _scores;          // [chunk, S]
    private readonly Tensor _selection;       // [chunk, K] int32: the shared selection of the current chunk
    private readonly int[][]? _recorded;      // per layer [S, K]: the selection each layer used, by absolute position
    private readonly Dictionary<int, Views> _views = new();
    private readonly float _headScale;

    // deviceMemoryBytes, when set, replaces the accelerator's memory size in the fit check (tests of the refusal).
    public DsaAttentionStep(DsaWeights weights, AttentionStepSetup setup, bool record, long? deviceMemoryBytes = null)
    {
        DsaConfig c = weights.Config;
        Device device = setup.Device;
        _weights = weights;
        _config = c;
        int context = setup.ContextLength;
        int chunk = setup.Chunk;
        if (device is IlgpuDevice ilgpu)
        {
            EnsureDeviceFits(weights, ilgpu, deviceMemoryBytes ?? ilgpu.Accelerator.MemorySize, context, chunk);
        }

        _headScale = LightningIndexer.HeadWeightScale(c.IndexerHeads, c.IndexerHeadDim);
        if (c.IndexerRopeDims > 0)
        {
            (_cos, _sin) = Ops.RopeTables(context, c.IndexerRopeDims, c.Llama.RopeTheta, device);
        }

        // Indexer key caches for Full layers only: a Shared layer never reads or writes one.
        _keyCaches = new Tensor?[c.Llama.Layers];
        _keys = new Tensor[c.Llama.Layers];
        _values = new Tensor[c.Llama.Layers];
        for (int l = 0; l < _keyCaches.Length; l++)
        {
            _keyCaches[l] = c.Pattern.IsFull(l) ? Tensor.Empty([c.IndexerHeadDim, context], device: device) : null;
            _keys[l] = Tensor.Empty([context, c.Llama.KvHeads, c.Llama.HeadDim], device: device);
            _values[l] = Tensor.Empty([context, c.Llama.KvHeads, c.Llama.HeadDim], device: device);
        }

        _queries = Tensor.Empty([chunk, c.IndexerQueryDim], device: device);
        _headWeights = Tensor.Empty([chunk, c.IndexerHeads], device: device);
        _indexerKeys = Tensor.Empty([chunk, c.IndexerHeadDim], device: device);
        _scores = Tensor.Empty([chunk, context], device: device);
        _selection = Tensor.Empty([chunk, c.TopK], DType.Int32, device);
        if (record)
        {
            _recorded = new int[c.Llama.Layers][];
            for (int l = 0; l < _recorded.Length; l++)
            {
                _recorded[l] = new int[(long)context * c.TopK];
            }
        }
    }

    // Refuses a context whose caches and buffers do not fit in what all the weights leave of the device's memory:
    // the position-major KV caches (the session counted them too, but does not allocate its own), the Full layers'
    // indexer key caches, the scores [chunk, S] and the chunk's indexer buffers and selection, the RoPE tables.
    private static void EnsureDeviceFits(DsaWeights weights, IlgpuDevice device, long memory, int context, int chunk)
    {
        DsaConfig c = weights.Config;
        long weightBytes = weights.Dense.Tensors.Concat(weights.Indexers.SelectMany(static i => i?.Tensors ?? []))
            .Sum(static t => t.Length * t.DType.SizeOf());
        int full = Enumerable.Range(0, c.Llama.Layers).Count(c.Pattern.IsFull);
        long cacheBytes = ((2L * c.Llama.Layers * c.Llama.KvDim) + ((long)full * c.IndexerHeadDim)) * context * sizeof(float);
        long otherBytes = (((long)chunk * (context + c.IndexerQueryDim + c.IndexerHeads + c.IndexerHeadDim + c.TopK))
            + ((long)context * c.IndexerRopeDims)) * sizeof(float);
        SessionMemory.EnsureDeviceFits(device.Name, memory - weightBytes, cacheBytes, otherBytes, context, c.Llama.SeqLen);
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
        Views views = ViewsFor(t);
        SparseAttention.Append(input.Keys, input.Values, _keys[layer], _values[layer], start);
        if (_config.Pattern.IsFull(layer))
        {
            SelectFull(input.NormedInput, layer, start, views);
        }

        // Sparse attention over this layer's own cache with the (own or shared) selection.
        SparseAttention.Compute(input.Queries, _keys[layer], _values[layer], views.Selection, k, start, input.Output);
        if (_recorded is not null)
        {
            views.Selection.CopyTo(_recorded[layer].AsSpan(start * k, t * k));
        }
    }

    // The indexer of a Full layer: projections, RoPE, key append, scores, top-k into the shared selection.
    private void SelectFull(Tensor x, int layer, int start, Views views)
    {
        DsaConfig c = _config;
        DsaIndexerWeights w = _weights.Indexers[layer]!;

        // Project the queries, the head weights and the keys from the attention-normed input.
        MatMul.Compute(x, w.Wq, views.Queries);
        MatMul.Compute(x, w.WProj, views.HeadWeights);
        MatMul.Compute(x, w.Wk, views.Keys);

        // Fold Hi^-1/2 · Di^-1/2 into the head weights, and rotate the queries' leading dims.
        Ops.Scale(views.HeadWeights, _headScale, views.HeadWeights);
        if (_cos is not null)
        {
            LightningIndexer.RotateQueries(views.QueryHeads, _cos, _sin!, c.IndexerRopeDims, c.IndexerRopeLayout, start);
        }

        // Normalise, rotate and store the keys, then score the chunk against every cached key and select.
        LightningIndexer.AppendKeys(
            views.Keys, w.KNormWeight, w.KNormBias, c.IndexerNormEps, _cos ?? views.Keys, _sin ?? views.Keys, c.IndexerRopeDims,
            c.IndexerRopeLayout, _keyCaches[layer]!, start);
        LightningIndexer.Scores(views.Queries, views.HeadWeights, _keyCaches[layer]!, start, views.Scores);
        TopK.Select(views.Scores, start, c.TopK, views.Selection);
    }

    // Row views of the buffers for a chunk of `count` tokens, made once per distinct count.
    private Views ViewsFor(int count)
    {
        if (!_views.TryGetValue(count, out Views? views))
        {
            Tensor queries = _queries.Slice(0, count);
            views = new Views(
                queries,
                queries.Reshape(count, _config.IndexerHeads, _config.IndexerHeadDim),
                _headWeights.Slice(0, count),
                _indexerKeys.Slice(0, count),
                _scores.Slice(0, count),
                _selection.Slice(0, count));
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
        _selection.Dispose();
    }

    // The buffers' first rows for one chunk length.
    private sealed record Views(Tensor Queries, Tensor QueryHeads, Tensor HeadWeights, Tensor Keys, Tensor Scores, Tensor Selection);
}
