// The configuration of a DSA model: a Llama model (LlamaConfig) whose attention in every layer is DeepSeek sparse
// attention (DeepSeek-V3.2-Exp report, eq. 1-2), plus the IndexCache pattern (arXiv 2603.12201) saying which layers
// run their own lightning indexer (F) and which reuse the selection of the nearest Full layer before them (S).
//
// The indexer of layer l reads the attention-normed input x [T, D] (no MLA low-rank query path: Kiln's DSA models
// project q straight from x):
//   q_I = x Wq_Iᵀ [T, Hi·Di], w = (x W_projᵀ) · Hi^-1/2 · Di^-1/2 [T, Hi], k_I = LayerNorm(x Wk_Iᵀ) [T, Di],
//   RoPE on the first RopeDims dims of every q_I head and of k_I (layout IndexerRopeLayout, half-split by default,
//   as DeepSeek-V3.2 after its November 2025 fix), then I[t, s] = Σ_j w[t, j] · ReLU(q_I[t, j] · k_I[s]) and the
//   top-K positions per query (causal). Every layer attends sparsely over its own KV cache with its selection.
//
// JSON: one flat object, the Llama fields (LlamaConfig's names) followed by index_n_heads, index_head_dim,
// index_rope_dims, index_topk, indexer_rope_layout ("half_split" | "adjacent"), indexer_norm_eps and
// index_topk_pattern (F/S string, one character per layer). Safetensors checkpoints keep it in __metadata__.
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Kiln.Kernels;
using Kiln.Models.Llama;

namespace Kiln.Models.Dsa;

/// <summary>The configuration of a DSA model: the Llama blocks, the lightning indexer's sizes, top-k and the pattern.</summary>
public sealed record DsaConfig
{
    private static readonly JsonSerializerOptions s_jsonOptions = new() { WriteIndented = true };

    /// <summary>The dense model's configuration (widths, heads, RoPE of the attention, context length).</summary>
    public required LlamaConfig Llama { get; init; }

    /// <summary>Hi, the number of indexer heads.</summary>
    public required int IndexerHeads { get; init; }

    /// <summary>Di, the width of one indexer head and of the indexer key.</summary>
    public required int IndexerHeadDim { get; init; }

    /// <summary>How many leading dimensions of each indexer query head and of the key RoPE rotates (even, 0..Di).</summary>
    public required int IndexerRopeDims { get; init; }

    /// <summary>K, the number of positions each query attends to (at least 1).</summary>
    public required int TopK { get; init; }

    /// <summary>The pair layout of the indexer's RoPE (half-split by default, as DeepSeek-V3.2).</summary>
    public RopeLayout IndexerRopeLayout { get; init; } = RopeLayout.HalfSplit;

    /// <summary>The epsilon of the LayerNorm on the indexer key (DeepSeek: 1e-6).</summary>
    public float IndexerNormEps { get; init; } = 1e-6f;

    /// <summary>Which layers run their own indexer; its length is the layer count.</summary>
    public required IndexCachePattern Pattern { get; init; }

    /// <summary>The indexer query width Hi × Di.</summary>
    public int IndexerQueryDim => IndexerHeads * IndexerHeadDim;

    /// <summary>
    /// Checks the Llama config, then every indexer size and the pattern against the layer count.
    /// </summary>
    /// <exception cref="ArgumentException">A value is out of range; the message names it and says what fits.</exception>
    public void Validate()
    {
        ArgumentNullException.ThrowIfNull(Llama, nameof(Llama));
        ArgumentNullException.ThrowIfNull(Pattern, nameof(Pattern));
        Llama.Validate();
        if (IndexerHeads < 1)
        {
            throw new ArgumentException($"index_n_heads is {IndexerHeads}; the indexer needs at least 1 head.");
        }

        if (IndexerHeadDim < 1)
        {
            throw new ArgumentException($"index_head_dim is {IndexerHeadDim}; it must be at least 1.");
        }

        if (IndexerRopeDims < 0 || IndexerRopeDims > IndexerHeadDim || IndexerRopeDims % 2 != 0)
        {
            throw new ArgumentException(
                $"index_rope_dims is {IndexerRopeDims}; it must be even and within 0..index_head_dim ({IndexerHeadDim}).");
        }

        if (TopK < 1)
        {
            throw new ArgumentException($"index_topk (K) is {TopK}; each query must attend to at least 1 position, pass K >= 1.");
        }

        if (!(IndexerNormEps > 0) || !float.IsFinite(IndexerNormEps))
        {
            throw new ArgumentException($"indexer_norm_eps {IndexerNormEps} must be a positive finite number (DeepSeek uses 1e-6).");
        }

        if (Pattern.Layers != Llama.Layers)
        {
            throw new ArgumentException(
                $"IndexCache pattern \"{Pattern}\" has {Pattern.Layers} layers but the model has n_layers {Llama.Layers}; "
                + "give one F or S per layer.");
        }
    }

    /// <summary>The same config with another pattern (validated against the layer count).</summary>
    /// <exception cref="ArgumentException">The pattern's length is not the layer count.</exception>
    public DsaConfig WithPattern(IndexCachePattern pattern)
    {
        DsaConfig result = this with { Pattern = pattern };
        result.Validate();
        return result;
    }

    /// <summary>The config as one flat JSON object: the Llama fields, then the DSA fields.</summary>
    public string ToJson()
    {
        JsonObject root = JsonNode.Parse(Llama.ToJson())!.AsObject();
        root["index_n_heads"] = IndexerHeads;
        root["index_head_dim"] = IndexerHeadDim;
        root["index_rope_dims"] = IndexerRopeDims;
        root["index_topk"] = TopK;
        root["indexer_rope_layout"] = IndexerRopeLayout == RopeLayout.Adjacent ? "adjacent" : "half_split";
        root["indexer_norm_eps"] = IndexerNormEps;
        root["index_topk_pattern"] = Pattern.ToString();
        return root.ToJsonString(s_jsonOptions);
    }

    /// <summary>Whether <paramref name="json"/> is a DSA config (it has an index_topk field).</summary>
    public static bool IsDsaJson(string json)
    {
        try
        {
            return JsonNode.Parse(json) is JsonObject root && root.ContainsKey("index_topk");
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>Reads a config written by <see cref="ToJson"/> and validates it.</summary>
    /// <exception cref="ArgumentException">A value is out of range or the pattern is malformed.</exception>
    /// <exception cref="JsonException">The text is not a DSA config (a field is missing or of the wrong type).</exception>
    public static DsaConfig FromJson(string json)
    {
        LlamaConfig llama = LlamaConfig.FromJson(json);
        DsaFields fields = JsonSerializer.Deserialize<DsaFields>(json, s_jsonOptions)
            ?? throw new JsonException("The JSON text is null; expected a DSA config object.");
        if (fields.Pattern is null)
        {
            throw new JsonException("The DSA config has no index_topk_pattern; add one F or S per layer (\"FFFF...\" for plain DSA).");
        }

        DsaConfig config = new()
        {
            Llama = llama,
            IndexerHeads = fields.Heads,
            IndexerHeadDim = fields.HeadDim,
            IndexerRopeDims = fields.RopeDims,
            TopK = fields.TopK,
            IndexerRopeLayout = fields.RopeLayout,
            IndexerNormEps = fields.NormEps,
            Pattern = IndexCachePattern.Parse(fields.Pattern, llama.Layers),
        };
        config.Validate();
        return config;
    }

    // The DSA fields of the flat JSON object.
    private sealed record DsaFields
    {
        [JsonPropertyName("index_n_heads")]
        [JsonRequired]
        public int Heads { get; init; }

        [JsonPropertyName("index_head_dim")]
        [JsonRequired]
        public int HeadDim { get; init; }

        [JsonPropertyName("index_rope_dims")]
        [JsonRequired]
        public int RopeDims { get; init; }

        [JsonPropertyName("index_topk")]
        [JsonRequired]
        public int TopK { get; init; }

        [JsonPropertyName("indexer_rope_layout")]
        [JsonConverter(typeof(RopeLayoutJsonConverter))]
        public RopeLayout RopeLayout { get; init; } = RopeLayout.HalfSplit;

        [JsonPropertyName("indexer_norm_eps")]
        public float NormEps { get; init; } = 1e-6f;

        [JsonPropertyName("index_topk_pattern")]
        public string? Pattern { get; init; }
    }
}
