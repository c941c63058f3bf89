// The attention step of a KvCompressedSession (IAttentionStep of LlamaSession): dense causal attention over a KV cache
// that the step keeps itself and can compact once, at the end of the prompt.
//
// Two positions per cached token. The logical position is where the token sits in the sequence; RoPE rotated its key
// there (LlamaBlock rotates at the session's Position, which counts every token appended). The physical slot is where
// it sits in the cache. Before compression they are equal. Compression gathers each layer's kept slots to the front, in
// position order, so afterwards a layer holding n slots appends the next token at slot n while the session keeps
// counting logical positions from the prompt length T: new tokens are rotated at T, T + 1, ..., and attend over the
// kept slots plus themselves. The attention kernel is the dense one (Attention.Compute) called with the physical start,
// whose causal extent is exactly "every slot before me and me".
//
// Layout: per layer keys and values [Hkv, Dh, S] (the attention kernel's transposed layout), the logical position of
// each slot [S], and for the layers that score (the leaders of the reuse pattern) the rotated queries of the last w
// tokens seen, [w, H, Dh], kept while the prompt runs. Compression (Compress) goes layer by layer: a leader scores and
// selects (KvSelection), a follower takes the selection of its leader (IndexCachePattern.SourceOf, the lookup IndexCache
// uses for its shared top-k), and both compact their own keys and values with it. Every device runs it: on cpu the
// scoring reads and the compaction rewrites the caches in place; on an ILGPU device (cuda, ilgpu-cpu) the attention
// runs there, the window's query rows are copied back while the prompt runs, and compression copies each layer's caches
// to the host, compacts them and copies them back (once per prompt; decode steps stay on the device).
using System.Diagnostics;
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Dsa;
using Kiln.Models.Llama;

namespace Kiln.Models.KvCompression;

/// <summary>What one compression did.</summary>
/// <param name="PromptLength">T, the tokens in the cache when it was compressed.</param>
/// <param name="Budget">The tokens the budget allowed per layer (the window included).</param>
/// <param name="Kept">The slots each layer kept.</param>
/// <param name="ScoredLayers">The layers that scored and selected (the others reused a selection, or none was
/// needed).</param>
/// <param name="Elapsed">The wall time of the compression (scoring, selection, compaction).</param>
public sealed record KvCompressionResult(int PromptLength, int Budget, IReadOnlyList<int> Kept, int ScoredLayers, TimeSpan Elapsed);

/// <summary>Dense attention over a compactable KV cache (see the file header).</summary>
internal sealed class KvCompressionStep : IAttentionStep
{
    private readonly LlamaConfig _config;
    private readonly KvCompressionOptions _options;
    private readonly int _capacity;
    private readonly Tensor[] _keys;          // per layer [Hkv, Dh, S]
    private readonly Tensor[] _values;        // per layer [Hkv, Dh, S]
    private readonly int[][] _positions;      // per layer [S]: the logical position of each slot
    private readonly int[] _lengths;          // per layer: slots in use
    private readonly float[]?[] _window;      // per leader layer [w, H, Dh]: the last w rotated queries
    private readonly int[] _windowRows;       // per layer: rows of _window filled (at most w)

    private readonly float[]? _hostQueries;   // [chunk, H·Dh]: a chunk's queries copied back (ILGPU devices only)

    public KvCompressionStep(AttentionStepSetup setup, KvCompressionOptions options)
    {
        LlamaConfig c = setup.Config;
        _hostQueries = setup.Device is CpuDevice ? null : new float[setup.Chunk * c.QueryDim];
        _config = c;
        _options = options;
        _capacity = setup.ContextLength;
        Pattern = IndexCachePattern.FromFrequency(c.Layers, options.ReuseGroup, offset: 1);
        _keys = new Tensor[c.Layers];
        _values = new Tensor[c.Layers];
        _positions = new int[c.Layers][];
        _lengths = new int[c.Layers];
        _window = new float[c.Layers][];
        _windowRows = new int[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            _keys[l] = Tensor.Empty([c.KvHeads, c.HeadDim, _capacity], device: setup.Device);
            _values[l] = Tensor.Empty([c.KvHeads, c.HeadDim, _capacity], device: setup.Device);
            _positions[l] = new int[_capacity];
            bool scores = Pattern.IsFull(l) && options.Method != KvCompressionMethod.StreamingLlm;
            _window[l] = scores ? new float[options.Window * c.QueryDim] : null;
        }
    }

    /// <summary>Which layers select (F) and which reuse their leader's selection (S).</summary>
    public IndexCachePattern Pattern { get; }

    /// <summary>Whether the cache was compressed since the last reset.</summary>
    public bool Compressed { get; private set; }

    public bool KeepsOwnCache => true;

    /// <summary>The slots layer <paramref name="layer"/> holds.</summary>
    public int Length(int layer) => _lengths[layer];

    /// <summary>The logical positions of layer <paramref name="layer"/>'s slots, ascending.</summary>
    public int[] Positions(int layer) => _positions[layer].AsSpan(0, _lengths[layer]).ToArray();

    public void Reset()
    {
        Array.Clear(_lengths);
        Array.Clear(_windowRows);
        Compressed = false;
    }

    public void Attend(in AttentionStepInput input)
    {
        int layer = input.Layer, t = input.Queries.Size(0), slot = _lengths[layer];

        // Append the chunk behind the layer's last slot and remember the logical positions.
        Attention.Append(input.Keys, input.Values, _keys[layer], _values[layer], slot);
        for (int i = 0; i < t; i++)
        {
            _positions[layer][slot + i] = input.Start + i;
        }

        // While the prompt runs, a scoring layer keeps its last w queries.
        if (!Compressed && _window[layer] is float[] window)
        {
            RememberQueries(window, ref _windowRows[layer], HostRows(input.Queries, t), t);
        }

        // Dense causal attention over the slots: the chunk's slots start at `slot`.
        Attention.Compute(input.Queries, _keys[layer], _values[layer], slot, input.Output);
        _lengths[layer] = slot + t;
    }

    // The rows of a [T, H, Dh] tensor as host floats: the tensor itself on cpu, a copy on an ILGPU device.
    private ReadOnlySpan<float> HostRows(Tensor rows, int t)
    {
        if (_hostQueries is null)
        {
            return rows.AsSpan();
        }

        Span<float> host = _hostQueries.AsSpan(0, t * _config.QueryDim);
        rows.CopyTo(host);
        return host;
    }

    // Keeps the last w rows of [rows, H·Dh] query chunks in `window`.
    private void RememberQueries(float[] window, ref int filled, ReadOnlySpan<float> queries, int t)
    {
        int width = _config.QueryDim, w = _options.Window;
        if (t >= w)
        {
            queries.Slice((t - w) * width, w * width).CopyTo(window);
            filled = w;
            return;
        }

        int drop = Math.Max(0, filled + t - w);
        if (drop > 0)
        {
            window.AsSpan(drop * width, (filled - drop) * width).CopyTo(window);
            filled -= drop;
        }

        queries[..(t * width)].CopyTo(window.AsSpan(filled * width));
        filled += t;
    }

    /// <summary>The tokens the budget keeps of a <paramref name="promptLength"/>-token prompt; throws when a fractional
    /// budget comes out below the method's minimum.</summary>
    public int BudgetFor(int promptLength)
    {
        int budget = _options.Budget.TokensFor(promptLength);
        if (budget < promptLength && budget < _options.MinimumBudget)
        {
            throw new InvalidOperationException(
                $"KV budget {_options.Budget} of a {promptLength}-token prompt is {budget} tokens, below the {_options.MinimumBudget} "
                + $"this method needs ({_options.Describe()}); give a larger budget or a smaller window.");
        }

        return budget;
    }

    /// <summary>Compresses every layer's cache to the budget (see the file header).</summary>
    public KvCompressionResult Compress()
    {
        if (Compressed)
        {
            throw new InvalidOperationException("The KV cache is already compressed; Reset the session before compressing again.");
        }

        int promptLength = _lengths[0];
        if (promptLength == 0)
        {
            throw new InvalidOperationException("There is nothing to compress: run the prompt through Forward first.");
        }

        long start = Stopwatch.GetTimestamp();
        int budget = BudgetFor(promptLength);
        Compressed = true;
        int layers = _config.Layers;
        if (budget >= promptLength)
        {
            return new KvCompressionResult(promptLength, budget, [.. _lengths], 0, Stopwatch.GetElapsedTime(start));
        }

        // Leaders select, followers reuse the selection of their leader; every layer compacts its own cache.
        int[][] kept = new int[layers][];
        int scored = 0;
        for (int l = 0; l < layers; l++)
        {
            int leader = Pattern.SourceOf(l);
            if (leader == l)
            {
                kept[l] = Select(l, promptLength, budget);
                scored++;
            }
            else
            {
                kept[l] = kept[leader];
            }

            Compact(l, kept[l]);
        }

        return new KvCompressionResult(promptLength, budget, [.. _lengths], scored, Stopwatch.GetElapsedTime(start));
    }

    // The kept slots of one leader layer: scores (or recency), optional pooling, chunk selection.
    private int[] Select(int layer, int promptLength, int budget)
    {
        LlamaConfig c = _config;
        int w = _options.Window, prefix = promptLength - w;
        double[] scores;
        if (_options.Method == KvCompressionMethod.StreamingLlm)
        {
            scores = KvSelection.RecencyScores(prefix, _options.Sinks);
        }
        else
        {
            Tensor keys = _keys[layer];
            ReadOnlySpan<float> hostKeys = keys.Device is CpuDevice ? keys.AsSpan() : keys.ToArray();
            scores = KvSelection.WindowScores(_window[layer], w, c.Heads, hostKeys, c.KvHeads, c.HeadDim, _capacity, promptLength);
            scores = KvSelection.Pool(scores, _options.Pooling);
        }

        return KvSelection.Select(scores, promptLength, w, _options.EffectiveChunkSize, budget);
    }

    // Gathers the kept slots (ascending, so each moves down or stays) to the front of every row of the layer's caches;
    // on an ILGPU device through a host copy.
    private void Compact(int layer, int[] kept)
    {
        int rows = _config.KvHeads * _config.HeadDim;
        foreach (Tensor cache in new[] { _keys[layer], _values[layer] })
        {
            if (cache.Device is CpuDevice)
            {
                Gather(cache.AsSpan(), rows, kept);
                continue;
            }

            float[] host = cache.ToArray();
            Gather(host, rows, kept);
            cache.CopyFrom(host);
        }

        int[] positions = _positions[layer];
        for (int j = 0; j < kept.Length; j++)
        {
            positions[j] = positions[kept[j]];
        }

        _lengths[layer] = kept.Length;
    }

    private void Gather(Span<float> cache, int rows, int[] kept)
    {
        for (int r = 0; r < rows; r++)
        {
            Span<float> row = cache.Slice(r * _capacity, _capacity);
            for (int j = 0; j < kept.Length; j++)
            {
                row[j] = row[kept[j]];
            }
        }
    }

    public void Dispose()
    {
        foreach (Tensor cache in _keys.Concat(_values))
        {
            cache?.Dispose();
        }
    }
}
