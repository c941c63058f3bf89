// The shape and the fixed numerical choices of a Llama model: widths, head counts, context length, RMSNorm
// epsilon, RoPE base and pair layout, and whether the classifier shares the token-embedding matrix.
// JSON names are snake_case, as in llama2.c and Hugging Face configs; the RoPE layout is written as its name.
// Letters used in shape comments: D model width, F feed-forward width, L layers, H query heads, Hkv key/value
// heads, Dh head width, V vocabulary, S context length.

using System.Text.Json;
using System.Text.Json.Serialization;
using Kiln.Kernels;

namespace Kiln.Models.Llama;

/// <summary>The configuration of a Llama model (llama2.c, Meta, Hugging Face families).</summary>
public sealed record LlamaConfig
{
    private static readonly JsonSerializerOptions s_jsonOptions = new() { WriteIndented = true };

    /// <summary>The model width D.</summary>
    [JsonPropertyName("dim")]
    public required int Dim { get; init; }

    /// <summary>The feed-forward width F (rows of the gate and up projections).</summary>
    [JsonPropertyName("hidden_dim")]
    public required int HiddenDim { get; init; }

    /// <summary>The number of transformer blocks L.</summary>
    [JsonPropertyName("n_layers")]
    public required int Layers { get; init; }

    /// <summary>The number of query heads H.</summary>
    [JsonPropertyName("n_heads")]
    public required int Heads { get; init; }

    /// <summary>The number of key/value heads Hkv (Hkv = H: multi-head attention; Hkv &lt; H: grouped-query).</summary>
    [JsonPropertyName("n_kv_heads")]
    public required int KvHeads { get; init; }

    /// <summary>The vocabulary size V.</summary>
    [JsonPropertyName("vocab_size")]
    public required int VocabSize { get; init; }

    /// <summary>The context length S the model was trained for: the most positions a session holds.</summary>
    [JsonPropertyName("seq_len")]
    public required int SeqLen { get; init; }

    /// <summary>The width of one head Dh (D / H for llama2.c checkpoints).</summary>
    [JsonPropertyName("head_dim")]
    public required int HeadDim { get; init; }

    /// <summary>The epsilon added to the mean square in RMSNorm.</summary>
    [JsonPropertyName("norm_eps")]
    public float NormEps { get; init; } = 1e-5f;

    /// <summary>The RoPE base: pair i of a head turns by position × theta^(-2i / Dh).</summary>
    [JsonPropertyName("rope_theta")]
    public float RopeTheta { get; init; } = 10000f;

    /// <summary>Which elements of a head form the RoPE pairs.</summary>
    [JsonPropertyName("rope_layout")]
    [JsonConverter(typeof(RopeLayoutJsonConverter))]
    public RopeLayout RopeLayout { get; init; } = RopeLayout.Adjacent;

    /// <summary>Whether the output classifier is the token-embedding matrix.</summary>
    [JsonPropertyName("shared_classifier")]
    public bool SharedClassifier { get; init; } = true;

    /// <summary>
    /// Block Attention Residuals (each sublayer reads a softmax-weighted mix over block outputs instead of the
    /// residual sum; see <see cref="AttentionResidualsConfig"/>), or null for the standard residual stream (the default).
    /// </summary>
    [JsonPropertyName("attention_residuals")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public AttentionResidualsConfig? AttentionResiduals { get; init; }

    /// <summary>The query width H × Dh.</summary>
    [JsonIgnore]
    public int QueryDim => Heads * HeadDim;

    /// <summary>The key/value width Hkv × Dh.</summary>
    [JsonIgnore]
    public int KvDim => KvHeads * HeadDim;

    /// <summary>The number of parameters: weights of every tensor, the classifier counted once when shared.</summary>
    [JsonIgnore]
    public long ParameterCount
    {
        get
        {
            // Per layer: two norms, the four attention projections, the three feed-forward projections.
            long perLayer = (2L * Dim) + ((long)QueryDim * Dim * 2) + ((long)KvDim * Dim * 2) + (3L * HiddenDim * Dim);
            long embedding = (long)VocabSize * Dim;
            long classifier = SharedClassifier ? 0 : embedding;
            long attentionResiduals = AttentionResiduals is null ? 0 : 2L * ((2L * Layers) + 1) * Dim;
            return (Layers * perLayer) + Dim + embedding + classifier + attentionResiduals;
        }
    }

    /// <summary>
    /// Checks that every size is positive and consistent (heads divide the width evenly, key/value heads divide
    /// the query heads, the head width is even for RoPE pairs, the epsilon and base are positive).
    /// </summary>
    /// <exception cref="ArgumentException">A value is out of range; the message names it and says what fits.</exception>
    public void Validate()
    {
        RequirePositive(Dim, "dim");
        RequirePositive(HiddenDim, "hidden_dim");
        RequirePositive(Layers, "n_layers");
        RequirePositive(Heads, "n_heads");
        RequirePositive(KvHeads, "n_kv_heads");
        RequirePositive(VocabSize, "vocab_size");
        RequirePositive(SeqLen, "seq_len");
        RequirePositive(HeadDim, "head_dim");
        if (Heads % KvHeads != 0)
        {
            throw new ArgumentException($"n_heads {Heads} is not a multiple of n_kv_heads {KvHeads}; each key/value head must serve a whole group of query heads.");
        }

        if (HeadDim % 2 != 0)
        {
            throw new ArgumentException($"head_dim {HeadDim} is odd; RoPE rotates pairs, so the head width must be even.");
        }

        if (!(NormEps > 0) || !float.IsFinite(NormEps))
        {
            throw new ArgumentException($"norm_eps {NormEps} must be a positive finite number (llama2.c uses 1e-5).");
        }

        if (!(RopeTheta > 0) || !float.IsFinite(RopeTheta))
        {
            throw new ArgumentException($"rope_theta {RopeTheta} must be a positive finite number (llama2.c uses 10000).");
        }

        AttentionResiduals?.Validate(Layers);
    }

    /// <summary>The config as indented JSON with snake_case names.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, s_jsonOptions);

    /// <summary>Reads a config written by <see cref="ToJson"/> (or any JSON with the same names) and validates it.</summary>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    /// <exception cref="JsonException">The text is not a config.</exception>
    public static LlamaConfig FromJson(string json)
    {
        LlamaConfig config = JsonSerializer.Deserialize<LlamaConfig>(json, s_jsonOptions)
            ?? throw new JsonException("The JSON text is null; expected an object with dim, hidden_dim, n_layers, ...");
        config.Validate();
        return config;
    }

    private static void RequirePositive(int value, string name)
    {
        if (value <= 0)
        {
            throw new ArgumentException($"{name} is {value}; it must be at least 1.");
        }
    }
}

/// <summary>Writes <see cref="Kiln.Kernels.RopeLayout"/> as snake_case names: "adjacent", "half_split".</summary>
internal sealed class RopeLayoutJsonConverter : JsonStringEnumConverter<RopeLayout>
{
    /// <summary>Creates the converter (snake_case, integers rejected).</summary>
    public RopeLayoutJsonConverter()
        : base(JsonNamingPolicy.SnakeCaseLower, allowIntegerValues: false)
    {
    }
}
