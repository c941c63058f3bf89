// The configuration of a hybrid model: a stack of pre-norm blocks whose mixer is, layer by layer, either causal
// self-attention (A) or a Mamba-3 mixer (M), each followed by a SwiGLU MLP, as in the Mamba-3 paper's hybrids
// (§3.3: five Mamba-3 layers to one attention layer without RoPE) and in Llama. A pure transformer is the pattern
// all-A, a pure Mamba-3 model all-M.
//
// Per layer l, with x [T, D] the residual stream:
//   x = x + mixer_l(RmsNorm(x, mixer_norm_l))           mixer: attention (A) or Mamba-3 (M)
//   x = x + W2 (silu(W1 h) ⊙ (W3 h)),  h = RmsNorm(x, ffn_norm_l)
// then logits = classifier · RmsNorm(x, final_norm).
//
// JSON (snake_case; Kiln's own fields are strict, an unknown one is an error):
//   {
//     "d_model": 512, "vocab_size": 512, "n_layers": 12, "seq_len": 32768, "hidden_dim": 1536,
//     "norm_eps": 1e-5, "shared_classifier": true,
//     "layer_pattern": "MMMMMA",          one letter per layer, A attention, M Mamba-3; a shorter pattern is
//                                        repeated to n_layers and must fill it exactly ("MMMMMA" for 12 layers is
//                                        MMMMMAMMMMMA)
//     "attention": { "n_heads": 8, "n_kv_heads": 8, "head_dim": 64, "rope": false, "rope_theta": 10000,
//                    "rope_layout": "adjacent" },           needed when the pattern has an A
//     "mamba3": { "d_state": 64, "headdim": 64, ... }       Mamba3Config's official names, needed when the
//                                                          pattern has an M; d_model may be left out (it is the
//                                                          model's), unknown keys are warnings as for Mamba3Config
//   }
// Letters of DESIGN.md: D width, V vocabulary, L layers, F MLP width, H / Hkv / Dh the attention heads.
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Kiln.Kernels;
using Kiln.Models.Llama;
using Kiln.Models.Mamba;

namespace Kiln.Models.Hybrid;

/// <summary>The mixer of one layer of a hybrid model.</summary>
public enum HybridLayerKind
{
    /// <summary>Causal grouped-query self-attention over a KV cache (pattern letter A).</summary>
    Attention,

    /// <summary>A Mamba-3 mixer with its recurrent cache (pattern letter M).</summary>
    Mamba3,
}

/// <summary>The attention section of a hybrid config: heads, head width and the optional RoPE.</summary>
public sealed record HybridAttentionConfig
{
    /// <summary>The number of query heads H.</summary>
    [JsonPropertyName("n_heads")]
    [JsonRequired]
    public int Heads { get; init; }

    /// <summary>The number of key/value heads Hkv (a divisor of H).</summary>
    [JsonPropertyName("n_kv_heads")]
    [JsonRequired]
    public int KvHeads { get; init; }

    /// <summary>The head width Dh (even).</summary>
    [JsonPropertyName("head_dim")]
    [JsonRequired]
    public int HeadDim { get; init; }

    /// <summary>Whether queries and keys are rotated by RoPE; the Mamba-3 paper's hybrids run attention without it.</summary>
    [JsonPropertyName("rope")]
    public bool Rope { get; init; } = true;

    /// <summary>The RoPE base (used when <see cref="Rope"/>).</summary>
    [JsonPropertyName("rope_theta")]
    public float RopeTheta { get; init; } = 10000f;

    /// <summary>The RoPE pair layout (used when <see cref="Rope"/>).</summary>
    [JsonPropertyName("rope_layout")]
    [JsonConverter(typeof(RopeLayoutJsonConverter))]
    public RopeLayout RopeLayout { get; init; } = RopeLayout.Adjacent;
}

/// <summary>The configuration of a hybrid (attention and Mamba-3) model; see the file header for the JSON.</summary>
public sealed record HybridConfig
{
    private static readonly JsonSerializerOptions s_jsonOptions = new()
    {
        WriteIndented = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };

    /// <summary>The model width D.</summary>
    [JsonPropertyName("d_model")]
    [JsonRequired]
    public int DModel { get; init; }

    /// <summary>The vocabulary size V.</summary>
    [JsonPropertyName("vocab_size")]
    [JsonRequired]
    public int VocabSize { get; init; }

    /// <summary>The number of layers L.</summary>
    [JsonPropertyName("n_layers")]
    [JsonRequired]
    public int Layers { get; init; }

    /// <summary>The longest context a session holds.</summary>
    [JsonPropertyName("seq_len")]
    [JsonRequired]
    public int SeqLen { get; init; }

    /// <summary>The MLP width F (rows of W1 and W3).</summary>
    [JsonPropertyName("hidden_dim")]
    [JsonRequired]
    public int HiddenDim { get; init; }

    /// <summary>The epsilon of the block and final RMSNorms.</summary>
    [JsonPropertyName("norm_eps")]
    public float NormEps { get; init; } = 1e-5f;

    /// <summary>Whether the classifier is the token-embedding matrix.</summary>
    [JsonPropertyName("shared_classifier")]
    public bool SharedClassifier { get; init; } = true;

    /// <summary>
    /// The layer pattern: one letter per layer, A (attention) or M (Mamba-3). A pattern shorter than
    /// <see cref="Layers"/> is repeated and must fill the layer count exactly.
    /// </summary>
    [JsonPropertyName("layer_pattern")]
    [JsonRequired]
    public string LayerPattern { get; init; } = "";

    /// <summary>The attention section; required when the pattern has an A.</summary>
    [JsonPropertyName("attention")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public HybridAttentionConfig? Attention { get; init; }

    /// <summary>The Mamba-3 mixer's config (its d_model is <see cref="DModel"/>); required when the pattern has an M.</summary>
    [JsonIgnore]
    public Mamba3Config? Mamba3 { get; init; }

    /// <summary>The mixer of every layer, the pattern repeated to <see cref="Layers"/> (validate first).</summary>
    [JsonIgnore]
    public IReadOnlyList<HybridLayerKind> Kinds => ExpandPattern(LayerPattern, Layers);

    /// <summary>The number of attention layers.</summary>
    [JsonIgnore]
    public int AttentionLayers => Kinds.Count(static k => k == HybridLayerKind.Attention);

    /// <summary>The number of Mamba-3 layers.</summary>
    [JsonIgnore]
    public int Mamba3Layers => Kinds.Count(static k => k == HybridLayerKind.Mamba3);

    /// <summary>The number of parameters (the classifier counted once when shared).</summary>
    [JsonIgnore]
    public long ParameterCount
    {
        get
        {
            long d = DModel;
            long mlp = (2 * d) + (3L * HiddenDim * d);   // the two block norms and W1, W2, W3
            long attention = Attention is { } a ? (2L * a.Heads * a.HeadDim * d) + (2L * a.KvHeads * a.HeadDim * d) : 0;
            long mamba = Mamba3?.ParameterCount ?? 0;
            long embedding = (long)VocabSize * d;
            return (Layers * mlp) + (AttentionLayers * attention) + (Mamba3Layers * mamba) + d + embedding + (SharedClassifier ? 0 : embedding);
        }
    }

    /// <summary>
    /// The Llama view of this config, which the session interface reports: width, MLP width, layers, vocabulary,
    /// context, norm epsilon, classifier sharing and the attention section. Without an attention section (an all-M
    /// pattern) the head fields are placeholders (one head of width 2) that no layer uses.
    /// </summary>
    public LlamaConfig ToLlamaConfig() => new()
    {
        Dim = DModel,
        HiddenDim = HiddenDim,
        Layers = Layers,
        Heads = Attention?.Heads ?? 1,
        KvHeads = Attention?.KvHeads ?? 1,
        HeadDim = Attention?.HeadDim ?? 2,
        VocabSize = VocabSize,
        SeqLen = SeqLen,
        NormEps = NormEps,
        RopeTheta = Attention?.RopeTheta ?? 10000f,
        RopeLayout = Attention?.RopeLayout ?? RopeLayout.Adjacent,
        SharedClassifier = SharedClassifier,
    };

    /// <summary>
    /// Checks every field: positive sizes, the pattern (letters, repetition), the sections the pattern needs, the
    /// attention heads, and the Mamba-3 config (its d_model must be the model's).
    /// </summary>
    /// <exception cref="ArgumentException">A value is out of range; the message names it and says what fits.</exception>
    public void Validate()
    {
        RequirePositive(DModel, "d_model");
        RequirePositive(VocabSize, "vocab_size");
        RequirePositive(Layers, "n_layers");
        RequirePositive(SeqLen, "seq_len");
        RequirePositive(HiddenDim, "hidden_dim");
        if (!(NormEps > 0) || !float.IsFinite(NormEps))
        {
            throw new ArgumentException($"norm_eps is {NormEps}; it must be a positive finite number (usually 1e-5).");
        }

        IReadOnlyList<HybridLayerKind> kinds = ExpandPattern(LayerPattern, Layers);
        if (kinds.Contains(HybridLayerKind.Attention))
        {
            if (Attention is null)
            {
                throw new ArgumentException($"layer_pattern \"{LayerPattern}\" has attention layers (A) but the config has no attention section; add \"attention\": {{\"n_heads\": ..., \"n_kv_heads\": ..., \"head_dim\": ...}}.");
            }

            if (SeqLen > Kernels.Attention.MaxContext)
            {
                throw new ArgumentException($"seq_len {SeqLen} is longer than attention layers run ({Kernels.Attention.MaxContext}); use seq_len <= {Kernels.Attention.MaxContext} or a pattern without A.");
            }
        }

        if (Attention is { } a)
        {
            RequirePositive(a.Heads, "attention.n_heads");
            RequirePositive(a.KvHeads, "attention.n_kv_heads");
            RequirePositive(a.HeadDim, "attention.head_dim");
            if (a.Heads % a.KvHeads != 0)
            {
                throw new ArgumentException($"attention.n_heads {a.Heads} is not a multiple of attention.n_kv_heads {a.KvHeads}; each key/value head must serve a whole group of query heads.");
            }

            if (a.HeadDim % 2 != 0)
            {
                throw new ArgumentException($"attention.head_dim {a.HeadDim} is odd; use an even head width (RoPE turns pairs).");
            }

            if (!(a.RopeTheta > 0) || !float.IsFinite(a.RopeTheta))
            {
                throw new ArgumentException($"attention.rope_theta {a.RopeTheta} must be a positive finite number (usually 10000).");
            }

            if ((long)a.Heads * a.HeadDim * DModel > Tensor.MaxElements)
            {
                throw new ArgumentException($"attention: {a.Heads} heads of {a.HeadDim} at d_model {DModel} exceed {Tensor.MaxElements} elements per projection; use smaller sizes.");
            }
        }

        if (kinds.Contains(HybridLayerKind.Mamba3) && Mamba3 is null)
        {
            throw new ArgumentException($"layer_pattern \"{LayerPattern}\" has Mamba-3 layers (M) but the config has no mamba3 section; add \"mamba3\": {{\"d_state\": ..., \"headdim\": ...}}.");
        }

        if (Mamba3 is { } m)
        {
            if (m.DModel != DModel)
            {
                throw new ArgumentException($"mamba3.d_model {m.DModel} differs from d_model {DModel}; leave mamba3.d_model out or make it {DModel}.");
            }

            m.Validate();
        }

        if ((long)VocabSize * DModel > Tensor.MaxElements || (long)HiddenDim * DModel > Tensor.MaxElements)
        {
            throw new ArgumentException($"vocab_size {VocabSize} or hidden_dim {HiddenDim} at d_model {DModel} exceeds {Tensor.MaxElements} elements per tensor; use smaller sizes.");
        }
    }

    /// <summary>
    /// The mixer of each of <paramref name="layers"/> layers: <paramref name="pattern"/> (letters A and M) repeated.
    /// </summary>
    /// <exception cref="ArgumentException">The pattern is empty, has another letter, or its repetition does not fill the layer count.</exception>
    public static IReadOnlyList<HybridLayerKind> ExpandPattern(string? pattern, int layers)
    {
        if (string.IsNullOrEmpty(pattern))
        {
            throw new ArgumentException("layer_pattern is empty; give one letter per layer, A (attention) or M (Mamba-3), e.g. \"MMMMMA\".");
        }

        for (int i = 0; i < pattern.Length; i++)
        {
            if (pattern[i] is not ('A' or 'M'))
            {
                throw new ArgumentException($"layer_pattern \"{pattern}\" has '{pattern[i]}' at position {i}; use only A (attention) and M (Mamba-3).");
            }
        }

        if (layers < 1 || layers % pattern.Length != 0)
        {
            throw new ArgumentException(
                $"layer_pattern \"{pattern}\" ({pattern.Length} letters) repeated does not fill n_layers {layers}; use a pattern whose length divides {layers}, or one letter per layer.");
        }

        HybridLayerKind[] kinds = new HybridLayerKind[layers];
        for (int l = 0; l < layers; l++)
        {
            kinds[l] = pattern[l % pattern.Length] == 'A' ? HybridLayerKind.Attention : HybridLayerKind.Mamba3;
        }

        return kinds;
    }

    /// <summary>The config as indented JSON (the mamba3 section with the official names).</summary>
    public string ToJson()
    {
        JsonObject root = JsonSerializer.SerializeToNode(this, s_jsonOptions)!.AsObject();
        if (Mamba3 is not null)
        {
            root["mamba3"] = JsonNode.Parse(Mamba3.ToJson());
        }

        return root.ToJsonString(s_jsonOptions);
    }

    /// <summary>
    /// Reads a config (see the file header) and validates it; unknown keys of the mamba3 section each give one line
    /// in <paramref name="warnings"/>, unknown keys elsewhere are errors.
    /// </summary>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    /// <exception cref="JsonException">The text is not a config: not an object, a field missing, unknown or of the wrong type.</exception>
    public static HybridConfig FromJson(string json, out IReadOnlyList<string> warnings)
    {
        ArgumentNullException.ThrowIfNull(json);
        if (JsonNode.Parse(json) is not JsonObject root)
        {
            throw new JsonException("The hybrid config is not a JSON object; expected {\"d_model\": ..., \"layer_pattern\": ..., ...}.");
        }

        // The mamba3 section goes through Mamba3Config's own reader, with the model's d_model filled in.
        Mamba3Config? mamba = null;
        warnings = [];
        if (root.TryGetPropertyValue("mamba3", out JsonNode? section))
        {
            root.Remove("mamba3");
            if (section is not JsonObject mambaObject)
            {
                throw new JsonException("mamba3 is not a JSON object; expected \"mamba3\": {\"d_state\": ..., \"headdim\": ...}.");
            }

            if (!mambaObject.ContainsKey("d_model") && root.TryGetPropertyValue("d_model", out JsonNode? width) && width is not null)
            {
                mambaObject["d_model"] = width.DeepClone();
            }

            try
            {
                mamba = Mamba3Config.FromJson(mambaObject.ToJsonString(), out warnings);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"mamba3: {e.Message}", e);
            }
            catch (JsonException e)
            {
                throw new JsonException($"mamba3: {e.Message}", e);
            }
        }

        HybridConfig config = (root.Deserialize<HybridConfig>(s_jsonOptions)
            ?? throw new JsonException("The JSON text is null; expected a hybrid config object.")) with { Mamba3 = mamba };
        config.Validate();
        return config;
    }

    /// <summary>Reads a config as <see cref="FromJson(string, out IReadOnlyList{string})"/>, dropping the warnings.</summary>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    /// <exception cref="JsonException">The text is not a config.</exception>
    public static HybridConfig FromJson(string json) => FromJson(json, out _);

    private static void RequirePositive(int value, string name)
    {
        if (value <= 0)
        {
            throw new ArgumentException($"{name} is {value}; it must be at least 1.");
        }
    }
}
