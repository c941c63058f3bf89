// The settings of one-shot KV-cache compression at the end of a prompt (ChunkKV, arXiv 2502.00299, and the SnapKV and
// StreamingLLM baselines run through the same selection code; see KvSelection.cs for the math):
//   Method       ChunkKv: score with the observation window's attention, keep the best whole chunks of ChunkSize tokens;
//                SnapKv: the same scorer, token by token (chunk 1), optionally smoothed by an average pool;
//                StreamingLlm: no scoring, keep the first Sinks tokens and the most recent ones.
//   Budget       tokens kept per layer, the observation window included (KvBudget).
//   Window       w, the last prompt tokens whose queries score the context; always kept.
//   ReuseGroup   N: layer-wise index reuse. Only the first layer of each group of N consecutive layers scores and
//                selects; the others keep the same positions (IndexCachePattern.FromFrequency(L, N, offset 1), the
//                same leader lookup IndexCache uses). 1 is no reuse.
namespace Kiln.Models.KvCompression;

/// <summary>Which positions a compressed KV cache keeps.</summary>
public enum KvCompressionMethod
{
    /// <summary>ChunkKV: the whole chunks of <see cref="KvCompressionOptions.ChunkSize"/> tokens with the most
    /// observation-window attention, plus the window.</summary>
    ChunkKv,

    /// <summary>SnapKV: the single tokens with the most observation-window attention (optionally pooled), plus the
    /// window.</summary>
    SnapKv,

    /// <summary>StreamingLLM: the first <see cref="KvCompressionOptions.Sinks"/> tokens and the most recent ones.</summary>
    StreamingLlm,
}

/// <summary>
/// How a <see cref="KvCompressedSession"/> compresses its cache after the prompt. The budget counts the observation
/// window: with budget B and window w, B − w tokens are selected before the window (whole chunks for ChunkKV, so up to
/// c − 1 fewer), and the window's w tokens are kept as well.
/// </summary>
public sealed record KvCompressionOptions
{
    /// <summary>Tokens kept per layer, the window included (<see cref="KvBudget"/>).</summary>
    public required KvBudget Budget { get; init; }

    /// <summary>The selection method.</summary>
    public KvCompressionMethod Method { get; init; } = KvCompressionMethod.ChunkKv;

    /// <summary>ChunkKV's chunk size c in tokens (the paper's default is 10). SnapKV and StreamingLLM use 1.</summary>
    public int ChunkSize { get; init; } = 10;

    /// <summary>The observation window w: the last prompt tokens, whose queries score the context; always kept.</summary>
    public int Window { get; init; } = 16;

    /// <summary>Layer-wise index reuse group N: the first layer of each N consecutive layers selects, the others reuse
    /// its positions. 1 is no reuse.</summary>
    public int ReuseGroup { get; init; } = 1;

    /// <summary>The width of the average pool over token scores (odd; 1 is none; SnapKV's reference port uses 5).</summary>
    public int Pooling { get; init; } = 1;

    /// <summary>StreamingLLM's attention sinks: the first tokens, always kept.</summary>
    public int Sinks { get; init; } = 4;

    /// <summary>Compress at the end of the first <see cref="KvCompressedSession.Forward"/> after creation or reset (the
    /// prompt). When false, the caller calls <see cref="KvCompressedSession.Compress"/>.</summary>
    public bool CompressAfterPrompt { get; init; } = true;

    /// <summary>ChunkKV with chunks of <paramref name="chunkSize"/> tokens and reuse group <paramref name="reuse"/>.</summary>
    public static KvCompressionOptions ChunkKv(KvBudget budget, int chunkSize = 10, int reuse = 1, int window = 16) =>
        new() { Budget = budget, Method = KvCompressionMethod.ChunkKv, ChunkSize = chunkSize, ReuseGroup = reuse, Window = window };

    /// <summary>SnapKV token selection (chunk 1) with an optional average pool of width <paramref name="pooling"/>.</summary>
    public static KvCompressionOptions SnapKv(KvBudget budget, int pooling = 1, int window = 16) =>
        new() { Budget = budget, Method = KvCompressionMethod.SnapKv, ChunkSize = 1, Pooling = pooling, Window = window };

    /// <summary>StreamingLLM: <paramref name="sinks"/> first tokens plus the most recent ones.</summary>
    public static KvCompressionOptions StreamingLlm(KvBudget budget, int sinks = 4, int window = 16) =>
        new() { Budget = budget, Method = KvCompressionMethod.StreamingLlm, ChunkSize = 1, Sinks = sinks, Window = window };

    /// <summary>The chunk size the selection uses: <see cref="ChunkSize"/> for ChunkKV, 1 otherwise.</summary>
    public int EffectiveChunkSize => Method == KvCompressionMethod.ChunkKv ? ChunkSize : 1;

    /// <summary>The fewest tokens a budget may keep: the window plus one chunk (ChunkKV), one token (SnapKV) or the
    /// sinks (StreamingLLM).</summary>
    public int MinimumBudget => Window + (Method == KvCompressionMethod.StreamingLlm ? Sinks : EffectiveChunkSize);

    /// <summary>Checks every setting, and an absolute budget against <see cref="MinimumBudget"/>.</summary>
    /// <exception cref="ArgumentException">A setting is out of range; the message names it and the fix.</exception>
    public void Validate()
    {
        if (Budget.FixedTokens == 0 && !(Budget.Fraction > 0 && Budget.Fraction < 1))
        {
            throw new ArgumentException("KV compression needs a budget: KvBudget.Tokens(n) or KvBudget.OfPrompt(fraction).", nameof(Budget));
        }

        if (!Enum.IsDefined(Method))
        {
            throw new ArgumentException($"KV compression method {(int)Method} is unknown; use ChunkKv, SnapKv or StreamingLlm.", nameof(Method));
        }

        if (ChunkSize < 1)
        {
            throw new ArgumentException($"KV compression chunk size {ChunkSize} must be at least 1 token (1 is token-level selection).", nameof(ChunkSize));
        }

        if (Window < 1)
        {
            throw new ArgumentException($"KV compression window {Window} must be at least 1: its queries score the context.", nameof(Window));
        }

        if (ReuseGroup < 1)
        {
            throw new ArgumentException($"KV compression reuse group {ReuseGroup} must be at least 1 (1 = every layer selects).", nameof(ReuseGroup));
        }

        if (Pooling < 1 || Pooling % 2 == 0)
        {
            throw new ArgumentException($"KV compression pooling {Pooling} must be an odd width of at least 1 (1 = none, 5 as in SnapKV).", nameof(Pooling));
        }

        if (Sinks < 0)
        {
            throw new ArgumentException($"KV compression sinks {Sinks} must be 0 or more.", nameof(Sinks));
        }

        if (!Budget.IsFraction && Budget.FixedTokens < MinimumBudget)
        {
            throw new ArgumentException(
                $"KV budget {Budget.FixedTokens} tokens is below the {MinimumBudget} this method needs ({Describe()}); "
                + $"give a budget of at least {MinimumBudget} or a smaller window.",
                nameof(Budget));
        }
    }

    /// <summary>What the minimum budget is made of, for messages.</summary>
    internal string Describe() => Method switch
    {
        KvCompressionMethod.StreamingLlm => $"window {Window} + {Sinks} sinks",
        KvCompressionMethod.SnapKv => $"window {Window} + 1 token",
        _ => $"window {Window} + one chunk of {ChunkSize}",
    };
}
