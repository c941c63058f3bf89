// The configuration of one Mamba-3 mixer (Lahoti et al., "Mamba-3", arXiv 2603.15569; the official module is
// mamba_ssm/modules/mamba3.py in state-spaces/mamba). JSON names are the official constructor's keyword arguments
// (d_model, d_state, expand, headdim, ngroups, rope_fraction, dt_min, dt_max, dt_init_floor, A_floor,
// is_outproj_norm, is_mimo, mimo_rank, chunk_size) plus three choices the official module hard-codes or changed
// over time and Kiln makes explicit:
//   a_activation  "softplus" (the March 2026 release, which the published checkpoints predate) or "heavy_tail"
//                 (f(a) = 1 + a for a >= 0, 1 / (1 - a) below; the module since June 2026). A = -f(a_A), clamped
//                 to A <= -A_floor. Loading weights with the other activation changes the model silently.
//   rope_layout   which state dimensions the data-dependent rotation pairs: "adjacent" (2k, 2k+1), the official
//                 SISO path, or "half_split" (k, k + N/2), the official MIMO path. Absent: the official choice.
//   norm_eps      the epsilon of the B/C RMSNorms and of the optional output norm (1e-5 in the module).
// Unknown keys are ignored and reported as warnings (the official module absorbs dropout, layer_idx, ...).
//
// Derived sizes (shape letters of DESIGN.md): D = d_model, d_inner = expand·D, P = headdim, H = d_inner / P,
// N = d_state, G = ngroups, R = mimo_rank (1 without MIMO), K = the number of rotary angles: ⌊N·f⌋ made even,
// halved. The input projection maps D to 2·d_inner + 2·G·R·N + 3·H + K values, split in this order:
//   [ z (d_inner) | x (d_inner) | B (R·G·N, rank outermost) | C (R·G·N) | dt (H) | A (H) | trap (H) | angles (K) ]
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Kiln.Kernels;
using Microsoft.Extensions.Logging;

namespace Kiln.Models.Mamba;

/// <summary>How the data-dependent decay A is made from its projection: A = -f(a), then A &lt;= -A_floor.</summary>
public enum Mamba3AActivation
{
    /// <summary>f = softplus (the official release of March 2026 and the paper's runs).</summary>
    Softplus,

    /// <summary>f(a) = 1 + a for a &gt;= 0 and 1 / (1 - a) for a &lt; 0 (the official module since June 2026).</summary>
    HeavyTail,
}

/// <summary>The configuration of one Mamba-3 mixer (SISO or MIMO); JSON uses the official constructor names.</summary>
public sealed record Mamba3Config
{
    /// <summary>The largest intra-chunk block C·R accepted: it bounds the per-thread scratch of the chunked scan.</summary>
    public const int MaxChunkRows = 1024;

    private static readonly JsonSerializerOptions s_jsonOptions = new() { WriteIndented = true };

    /// <summary>The model width D.</summary>
    [JsonPropertyName("d_model")]
    public required int DModel { get; init; }

    /// <summary>The state size N per head (rows of the state; B and C have N values).</summary>
    [JsonPropertyName("d_state")]
    public int DState { get; init; } = 128;

    /// <summary>The expansion E: d_inner = E·D.</summary>
    [JsonPropertyName("expand")]
    public int Expand { get; init; } = 2;

    /// <summary>The head width P.</summary>
    [JsonPropertyName("headdim")]
    public int HeadDim { get; init; } = 64;

    /// <summary>The number of B/C groups G; head h reads group h / (H / G).</summary>
    [JsonPropertyName("ngroups")]
    public int Groups { get; init; } = 1;

    /// <summary>The fraction f of the state dimensions the rotation covers (the official module allows 0.5 and 1).</summary>
    [JsonPropertyName("rope_fraction")]
    public double RopeFraction { get; init; } = 0.5;

    /// <summary>The smallest Δ of the dt_bias initialisation (random weights only).</summary>
    [JsonPropertyName("dt_min")]
    public double DtMin { get; init; } = 1e-3;

    /// <summary>The largest Δ of the dt_bias initialisation (random weights only).</summary>
    [JsonPropertyName("dt_max")]
    public double DtMax { get; init; } = 0.1;

    /// <summary>The floor of the initial Δ of the dt_bias initialisation (random weights only).</summary>
    [JsonPropertyName("dt_init_floor")]
    public double DtInitFloor { get; init; } = 1e-4;

    /// <summary>The decay floor: A = min(-f(a), -A_floor), so every step decays the state by at least exp(-Δ·A_floor).</summary>
    [JsonPropertyName("A_floor")]
    public double AFloor { get; init; } = 1e-4;

    /// <summary>Whether the pre-gate grouped RMSNorm (group size P, weight norm.weight [d_inner]) runs before the gate.</summary>
    [JsonPropertyName("is_outproj_norm")]
    public bool IsOutProjNorm { get; init; }

    /// <summary>Whether the mixer is MIMO (rank <see cref="MimoRank"/>) rather than SISO.</summary>
    [JsonPropertyName("is_mimo")]
    public bool IsMimo { get; init; }

    /// <summary>The MIMO rank R when <see cref="IsMimo"/> (ignored otherwise, as in the official module).</summary>
    [JsonPropertyName("mimo_rank")]
    public int MimoRank { get; init; } = 4;

    /// <summary>The chunk length C in tokens of the chunked prefill (official: 64 for SISO, 64/R for MIMO).</summary>
    [JsonPropertyName("chunk_size")]
    public int ChunkSize { get; init; } = 64;

    /// <summary>The activation that makes A from its projection (must match the weights' training).</summary>
    [JsonPropertyName("a_activation")]
    [JsonConverter(typeof(AActivationJsonConverter))]
    public Mamba3AActivation AActivation { get; init; } = Mamba3AActivation.Softplus;

    /// <summary>The rotation's pair layout; null means the official choice (adjacent for SISO, half-split for MIMO).</summary>
    [JsonPropertyName("rope_layout")]
    [JsonConverter(typeof(NullableRopeLayoutJsonConverter))]
    public RopeLayout? RopeLayout { get; init; }

    /// <summary>The epsilon of the B/C RMSNorms and of the output norm.</summary>
    [JsonPropertyName("norm_eps")]
    public float NormEps { get; init; } = 1e-5f;

    /// <summary>d_inner = E·D, the width of x, z and the mixer's output before out_proj.</summary>
    [JsonIgnore]
    public int DInner => Expand * DModel;

    /// <summary>The number of heads H = d_inner / P.</summary>
    [JsonIgnore]
    public int Heads => DInner / HeadDim;

    /// <summary>The rank R: <see cref="MimoRank"/> for MIMO, 1 for SISO.</summary>
    [JsonIgnore]
    public int Rank => IsMimo ? MimoRank : 1;

    /// <summary>The number of rotary angles K per head: ⌊N·f⌋ rounded down to even, halved.</summary>
    [JsonIgnore]
    public int AngleCount
    {
        get
        {
            int rotated = (int)Math.Floor(DState * RopeFraction);
            return (rotated - (rotated % 2)) / 2;
        }
    }

    /// <summary>The pair layout actually used: <see cref="RopeLayout"/>, or the official one for the path.</summary>
    [JsonIgnore]
    public RopeLayout AngleLayout => RopeLayout ?? (IsMimo ? Kernels.RopeLayout.HalfSplit : Kernels.RopeLayout.Adjacent);

    /// <summary>The width of B (and of C) in the projection: R·G·N.</summary>
    [JsonIgnore]
    public int BcDim => Rank * Groups * DState;

    /// <summary>The output width of in_proj: 2·d_inner + 2·R·G·N + 3·H + K.</summary>
    [JsonIgnore]
    public int InProjDim => (2 * DInner) + (2 * BcDim) + (3 * Heads) + AngleCount;

    /// <summary>Offset of z in a projected row.</summary>
    [JsonIgnore]
    public int ZOffset => 0;

    /// <summary>Offset of x in a projected row.</summary>
    [JsonIgnore]
    public int XOffset => DInner;

    /// <summary>Offset of B in a projected row ([R, G, N], rank outermost).</summary>
    [JsonIgnore]
    public int BOffset => 2 * DInner;

    /// <summary>Offset of C in a projected row ([R, G, N]).</summary>
    [JsonIgnore]
    public int COffset => BOffset + BcDim;

    /// <summary>Offset of the Δ projections [H] in a projected row.</summary>
    [JsonIgnore]
    public int DtOffset => COffset + BcDim;

    /// <summary>Offset of the A projections [H] in a projected row.</summary>
    [JsonIgnore]
    public int AOffset => DtOffset + Heads;

    /// <summary>Offset of the trapezoid (λ) projections [H] in a projected row.</summary>
    [JsonIgnore]
    public int TrapOffset => AOffset + Heads;

    /// <summary>Offset of the angle projections [K] in a projected row (shared by all heads).</summary>
    [JsonIgnore]
    public int AngleOffset => TrapOffset + Heads;

    /// <summary>The number of parameters of the mixer.</summary>
    [JsonIgnore]
    public long ParameterCount
    {
        get
        {
            long h = Heads, r = Rank, n = DState, p = HeadDim;
            long count = ((long)InProjDim * DModel) + ((long)DModel * DInner) + h + (2 * h * r * n) + (2 * n) + h;
            count += IsMimo ? 3 * h * r * p : 0;
            count += IsOutProjNorm ? DInner : 0;
            return count;
        }
    }

    /// <summary>
    /// Checks every size and choice: positive sizes, P divides d_inner, G divides H, a rotary angle exists, the
    /// intra-chunk block C·R fits <see cref="MaxChunkRows"/>, the projection fits a tensor, floors and epsilons
    /// are positive.
    /// </summary>
    /// <exception cref="ArgumentException">A value is out of range; the message names it and says what fits.</exception>
    public void Validate()
    {
        RequirePositive(DModel, "d_model");
        RequirePositive(DState, "d_state");
        RequirePositive(Expand, "expand");
        RequirePositive(HeadDim, "headdim");
        RequirePositive(Groups, "ngroups");
        RequirePositive(ChunkSize, "chunk_size");
        if (IsMimo)
        {
            RequirePositive(MimoRank, "mimo_rank");
        }

        if ((long)Expand * DModel > int.MaxValue / 4)
        {
            throw new ArgumentException($"expand {Expand} × d_model {DModel} is too large for one mixer; use smaller sizes.");
        }

        if (DInner % HeadDim != 0)
        {
            throw new ArgumentException(
                $"headdim {HeadDim} does not divide d_inner = expand·d_model = {DInner}; pick a headdim that divides {DInner} (official: 64).");
        }

        if (Heads % Groups != 0)
        {
            throw new ArgumentException(
                $"ngroups {Groups} does not divide the head count H = {Heads}; each B/C group must serve a whole number of heads (official: 1).");
        }

        if (!(RopeFraction > 0) || RopeFraction > 1)
        {
            throw new ArgumentException($"rope_fraction is {RopeFraction}; it must be in (0, 1] (official: 0.5 or 1).");
        }

        if (AngleCount < 1)
        {
            throw new ArgumentException(
                $"rope_fraction {RopeFraction} of d_state {DState} rotates no pair of dimensions; raise rope_fraction or d_state so that ⌊N·f⌋ >= 2.");
        }

        if ((long)ChunkSize * Rank > MaxChunkRows)
        {
            throw new ArgumentException(
                $"chunk_size {ChunkSize} × rank {Rank} = {(long)ChunkSize * Rank} rows per chunk exceeds {MaxChunkRows}; use chunk_size <= {MaxChunkRows / Rank} (official: 64 for SISO, 64/R for MIMO).");
        }

        if ((long)InProjDim * DModel > Tensor.MaxElements || (long)Rank * Heads * DState * Math.Max(HeadDim, DState) > Tensor.MaxElements)
        {
            throw new ArgumentException($"d_model {DModel}, d_state {DState}, expand {Expand}, rank {Rank}: the weights exceed {Tensor.MaxElements} elements per tensor; use smaller sizes.");
        }

        if (!(AFloor > 0) || !double.IsFinite(AFloor))
        {
            throw new ArgumentException($"A_floor is {AFloor}; it must be a positive finite number (official: 1e-4), or the state could stop decaying.");
        }

        if (!(DtMin > 0) || !(DtMax >= DtMin) || !double.IsFinite(DtMax) || !(DtInitFloor >= 0))
        {
            throw new ArgumentException(
                $"dt_min {DtMin}, dt_max {DtMax}, dt_init_floor {DtInitFloor}: need 0 < dt_min <= dt_max (finite) and dt_init_floor >= 0 (official: 1e-3, 0.1, 1e-4).");
        }

        if (!(NormEps > 0) || !float.IsFinite(NormEps))
        {
            throw new ArgumentException($"norm_eps is {NormEps}; it must be a positive finite number (official: 1e-5).");
        }

        if (!Enum.IsDefined(AActivation))
        {
            throw new ArgumentException($"a_activation {(int)AActivation} is unknown; use softplus or heavy_tail.");
        }
    }

    /// <summary>The config as indented JSON with the official names.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, s_jsonOptions);

    /// <summary>
    /// Reads a config (the official names; unknown keys are ignored and each gives one line in
    /// <paramref name="warnings"/>) and validates it.
    /// </summary>
    /// <exception cref="ArgumentException">A value is out of range, or a_activation / rope_layout is unknown.</exception>
    /// <exception cref="JsonException">The text is not a JSON object, or a field has the wrong type.</exception>
    public static Mamba3Config FromJson(string json, out IReadOnlyList<string> warnings)
    {
        ArgumentNullException.ThrowIfNull(json);
        if (JsonNode.Parse(json) is not JsonObject root)
        {
            throw new JsonException("The Mamba-3 config is not a JSON object; expected {\"d_model\": ..., \"d_state\": ..., ...}.");
        }

        if (!root.ContainsKey("d_model"))
        {
            throw new JsonException("The Mamba-3 config has no d_model; add the model width, e.g. \"d_model\": 512.");
        }

        // Unknown keys: one warning each, in the file's order.
        List<string> notes = [];
        foreach ((string key, _) in root)
        {
            if (!s_knownKeys.Contains(key))
            {
                notes.Add($"Mamba-3 config key \"{key}\" is not used by Kiln; it is ignored.");
            }
        }

        // The activation and layout names are checked here for a message that lists what fits.
        CheckName(root, "a_activation", ["softplus", "heavy_tail"]);
        CheckName(root, "rope_layout", ["adjacent", "half_split"]);
        Mamba3Config config = root.Deserialize<Mamba3Config>(s_jsonOptions)
            ?? throw new JsonException("The JSON text is null; expected a Mamba-3 config object.");
        config.Validate();
        warnings = notes;
        return config;
    }

    /// <summary>Reads a config as <see cref="FromJson(string, out IReadOnlyList{string})"/>, logging each warning.</summary>
    /// <exception cref="ArgumentException">A value is out of range, or a_activation / rope_layout is unknown.</exception>
    /// <exception cref="JsonException">The text is not a JSON object, or a field has the wrong type.</exception>
    public static Mamba3Config FromJson(string json, ILogger? logger = null)
    {
        Mamba3Config config = FromJson(json, out IReadOnlyList<string> warnings);
        foreach (string warning in warnings)
        {
            logger?.LogWarning("{Warning}", warning);
        }

        return config;
    }

    private static readonly HashSet<string> s_knownKeys = typeof(Mamba3Config).GetProperties()
        .Select(static p => p.GetCustomAttributes(typeof(JsonPropertyNameAttribute), false).FirstOrDefault() as JsonPropertyNameAttribute)
        .Where(static a => a is not null)
        .Select(static a => a!.Name)
        .ToHashSet(StringComparer.Ordinal);

    private static void CheckName(JsonObject root, string key, string[] allowed)
    {
        if (!root.TryGetPropertyValue(key, out JsonNode? node) || node is null)
        {
            return;
        }

        string? text = node.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : null;
        if (text is null || !allowed.Contains(text))
        {
            throw new ArgumentException($"{key} {node.ToJsonString()} is unknown; use one of {string.Join(", ", allowed.Select(static a => $"\"{a}\""))}.");
        }
    }

    private static void RequirePositive(int value, string name)
    {
        if (value <= 0)
        {
            throw new ArgumentException($"{name} is {value}; it must be at least 1.");
        }
    }

    /// <summary>Writes the activation as "softplus" / "heavy_tail".</summary>
    private sealed class AActivationJsonConverter : JsonStringEnumConverter<Mamba3AActivation>
    {
        public AActivationJsonConverter()
            : base(JsonNamingPolicy.SnakeCaseLower, allowIntegerValues: false)
        {
        }
    }

    /// <summary>Writes an optional RoPE layout as "adjacent" / "half_split", or null.</summary>
    private sealed class NullableRopeLayoutJsonConverter : JsonConverter<RopeLayout?>
    {
        public override bool HandleNull => true;

        public override RopeLayout? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
            reader.TokenType == JsonTokenType.Null ? null : reader.GetString() switch
            {
                "adjacent" => Kernels.RopeLayout.Adjacent,
                "half_split" => Kernels.RopeLayout.HalfSplit,
                string other => throw new JsonException($"rope_layout \"{other}\" is unknown; use \"adjacent\" or \"half_split\"."),
                null => null,
            };

        public override void Write(Utf8JsonWriter writer, RopeLayout? value, JsonSerializerOptions options)
        {
            if (value is null)
            {
                writer.WriteNullValue();
                return;
            }

            writer.WriteStringValue(value == Kernels.RopeLayout.Adjacent ? "adjacent" : "half_split");
        }
    }
}
