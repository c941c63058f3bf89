// The IndexCache layer pattern (arXiv 2603.12201): for each DSA layer, F (Full: it runs its own lightning indexer
// and top-k) or S (Shared: it runs no indexer and reuses the top-k selection of the nearest Full layer before it;
// it still runs sparse attention over its own cache). Layer 0 is always F, so every S layer has a source.
//
// Three ways to build one, each a single function shared by training, calibration and inference:
// - Parse("FSSF..."): one character per layer, exactly the model's layer count (the THUDM/vLLM/SGLang
//   index_topk_pattern form);
// - FromKeepRatio(N, r): ceil(N·r) Full layers evenly spaced, layer i·N/F rounded down for i = 0..F-1 (layer 0 first);
// - FromFrequency(N, freq, offset): the vLLM / transformers GLM-MoE-DSA schedule, layer l Shared exactly when
//   max(l - offset + 1, 0) mod freq ≠ 0. offset 2 is the THUDM patches' formula (FFSSSFSSS... for freq 4),
//   offset 3 is GLM-5.2's (FFFSSSFSSS...), offset 1 the plain l mod freq (FSSSFSSS...).
// The pattern is stored expanded (one flag per layer) with each layer's source precomputed.
// KV-cache compression reuses it for ChunkKV's layer-wise index reuse (KvCompression/KvCompressionStep.cs): there a Full
// layer scores and selects the positions its cache keeps, and a Shared layer keeps the positions of its source,
// FromFrequency(L, N, offset 1) being "the first layer of each group of N selects".
using System.Text;

namespace Kiln.Models.Dsa;

/// <summary>
/// Which DSA layers run their own indexer (Full, <c>F</c>) and which reuse the top-k selection of the nearest Full layer
/// at or before them (Shared, <c>S</c>). Layer 0 is always Full. Immutable.
/// </summary>
public sealed class IndexCachePattern : IEquatable<IndexCachePattern>
{
    private readonly bool[] _full;
    private readonly int[] _source;

    private IndexCachePattern(bool[] full)
    {
        // Every layer's source: itself when Full, else the source of the layer before.
        _full = full;
        _source = new int[full.Length];
        for (int layer = 0; layer < full.Length; layer++)
        {
            _source[layer] = full[layer] ? layer : _source[layer - 1];
        }

        FullCount = full.Count(static f => f);
    }

    /// <summary>The number of DSA layers N.</summary>
    public int Layers => _full.Length;

    /// <summary>How many layers are Full (run their own indexer).</summary>
    public int FullCount { get; }

    /// <summary>The share of Full layers, FullCount / Layers.</summary>
    public double KeepRatio => (double)FullCount / Layers;

    /// <summary>A pattern with every layer Full (plain DSA).</summary>
    /// <param name="layers">N, at least 1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layers"/> is below 1.</exception>
    public static IndexCachePattern AllFull(int layers)
    {
        RequireLayers(layers);
        bool[] full = new bool[layers];
        Array.Fill(full, true);
        return new IndexCachePattern(full);
    }

    /// <summary>
    /// Parses a pattern of <c>F</c> and <c>S</c>, one character per layer, for example <c>"FSSSFSSS"</c>.
    /// </summary>
    /// <param name="pattern">The pattern; it must start with F.</param>
    /// <param name="layers">The model's DSA layer count; the pattern must have exactly this length.</param>
    /// <exception cref="ArgumentException">The pattern is empty, has the wrong length, starts with S, or holds another
    /// character.</exception>
    public static IndexCachePattern Parse(string pattern, int layers)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        RequireLayers(layers);
        if (pattern.Length != layers)
        {
            throw new ArgumentException(
                $"IndexCache pattern \"{pattern}\" has {pattern.Length} characters but the model has {layers} DSA layers; "
                + "give one F or S per layer.",
                nameof(pattern));
        }

        return Parse(pattern);
    }

    /// <summary>Parses a pattern of <c>F</c> and <c>S</c>; its length is the layer count.</summary>
    /// <param name="pattern">The pattern, at least one character, starting with F.</param>
    /// <exception cref="ArgumentException">The pattern is empty, starts with S, or holds a character other than F or S.</exception>
    public static IndexCachePattern Parse(string pattern)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        if (pattern.Length == 0)
        {
            throw new ArgumentException(
                "IndexCache pattern is empty; give one F or S per DSA layer, starting with F.", nameof(pattern));
        }

        // Each character must be F or S.
        bool[] full = new bool[pattern.Length];
        for (int layer = 0; layer < pattern.Length; layer++)
        {
            char c = pattern[layer];
            if (c != 'F' && c != 'S')
            {
                throw new ArgumentException(
                    $"IndexCache pattern \"{pattern}\" has '{c}' at layer {layer}; use only F (Full) and S (Shared).",
                    nameof(pattern));
            }

            full[layer] = c == 'F';
        }

        // Layer 0 has no earlier Full layer to share from.
        if (!full[0])
        {
            throw new ArgumentException(
                $"IndexCache pattern \"{pattern}\" starts with S, but a Shared layer needs a Full layer before it; "
                + "make layer 0 F.",
                nameof(pattern));
        }

        return new IndexCachePattern(full);
    }

    /// <summary>
    /// The pattern that keeps the fraction <paramref name="keep"/> of the indexers: F = ceil(N·keep) Full layers
    /// (N·keep rounded to 1e-9 first, so that 10 × 0.7 gives 7), at layers floor(i·N / F) for i = 0..F-1. Layer 0 is
    /// always Full; the Full layers are as evenly spaced as integers allow. keep = 1 is all Full; any keep &gt; 0 keeps
    /// at least layer 0.
    /// </summary>
    /// <param name="layers">N, at least 1.</param>
    /// <param name="keep">The share of layers that run their indexer, in (0, 1].</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    /// <example>N = 8, keep 0.25: F at 0 and 4, <c>FSSSFSSS</c>; N = 8, keep 0.5: <c>FSFSFSFS</c>.</example>
    public static IndexCachePattern FromKeepRatio(int layers, double keep)
    {
        RequireLayers(layers);
        if (!(keep > 0 && keep <= 1))
        {
            throw new ArgumentOutOfRangeException(
                nameof(keep), keep, "IndexCache keep ratio must be in (0, 1]; 0.25 keeps a quarter of the indexers.");
        }

        // F Full layers, layer floor(i·N / F) for the i-th.
        int fullCount = Math.Clamp((int)Math.Ceiling(Math.Round(layers * keep, 9)), 1, layers);
        bool[] full = new bool[layers];
        for (int i = 0; i < fullCount; i++)
        {
            full[(int)((long)i * layers / fullCount)] = true;
        }

        return new IndexCachePattern(full);
    }

    /// <summary>
    /// The periodic schedule of vLLM and transformers (index_topk_freq with index_skip_topk_offset): layer l is Shared
    /// exactly when <c>max(l - offset + 1, 0) mod freq ≠ 0</c>. offset 2 is the THUDM patches' formula, offset 3
    /// GLM-5.2's, offset 1 the plain <c>l mod freq</c>; freq 1 is all Full.
    /// </summary>
    /// <param name="layers">N, at least 1.</param>
    /// <param name="frequency">index_topk_freq, at least 1.</param>
    /// <param name="offset">index_skip_topk_offset, at least 1 (0 would make layer 0 Shared).</param>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range.</exception>
    /// <example>freq 4: offset 1 <c>FSSSFSSS</c>, offset 2 <c>FFSSSFSS</c>, offset 3 <c>FFFSSSFS</c>.</example>
    public static IndexCachePattern FromFrequency(int layers, int frequency, int offset = 2)
    {
        RequireLayers(layers);
        if (frequency < 1)
        {
            throw new ArgumentOutOfRangeException(
                nameof(frequency), frequency, "IndexCache frequency must be at least 1 (1 = every layer Full).");
        }

        if (offset < 1)
        {
            throw new ArgumentOutOfRangeException(
                nameof(offset), offset, "IndexCache offset must be at least 1; offset 0 would make layer 0 Shared.");
        }

        bool[] full = new bool[layers];
        for (int layer = 0; layer < layers; layer++)
        {
            full[layer] = Math.Max(layer - offset + 1, 0) % frequency == 0;
        }

        return new IndexCachePattern(full);
    }

    /// <summary>Whether <paramref name="layer"/> runs its own indexer.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The layer is outside [0, Layers).</exception>
    public bool IsFull(int layer) => _full[RequireLayer(layer)];

    /// <summary>The Full layer whose selection <paramref name="layer"/> uses: itself when Full, else the nearest Full
    /// layer before it.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The layer is outside [0, Layers).</exception>
    public int SourceOf(int layer) => _source[RequireLayer(layer)];

    /// <summary>This pattern with <paramref name="layer"/> switched to Shared (one greedy calibration step).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The layer is 0 or outside the pattern.</exception>
    public IndexCachePattern WithShared(int layer)
    {
        RequireLayer(layer);
        if (layer == 0)
        {
            throw new ArgumentOutOfRangeException(
                nameof(layer), layer, "IndexCache layer 0 must stay Full: it is the first layer's selection source.");
        }

        bool[] full = (bool[])_full.Clone();
        full[layer] = false;
        return new IndexCachePattern(full);
    }

    /// <summary>The pattern as F/S characters, one per layer; <see cref="Parse(string)"/> reads it back.</summary>
    public override string ToString()
    {
        StringBuilder text = new(_full.Length);
        foreach (bool full in _full)
        {
            text.Append(full ? 'F' : 'S');
        }

        return text.ToString();
    }

    /// <inheritdoc />
    public bool Equals(IndexCachePattern? other) => other is not null && _full.AsSpan().SequenceEqual(other._full);

    /// <inheritdoc />
    public override bool Equals(object? obj) => Equals(obj as IndexCachePattern);

    /// <inheritdoc />
    public override int GetHashCode() => ToString().GetHashCode(StringComparison.Ordinal);

    private int RequireLayer(int layer)
    {
        if ((uint)layer >= (uint)_full.Length)
        {
            throw new ArgumentOutOfRangeException(
                nameof(layer), layer, $"IndexCache layer must be in [0, {_full.Length}) for this pattern.");
        }

        return layer;
    }

    private static void RequireLayers(int layers)
    {
        if (layers < 1)
        {
            throw new ArgumentOutOfRangeException(
                nameof(layers), layers, "IndexCache layer count must be at least 1; pass the model's DSA layer count.");
        }
    }
}
