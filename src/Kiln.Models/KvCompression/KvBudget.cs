// How much of a prompt's KV cache a compressed session keeps, per attention layer: either a number of tokens or a
// fraction of the prompt. One rule everywhere (API, `kiln kv eval`, `kiln bench kv`, `--kv-budget`):
//   - a whole number N >= 1 is N tokens kept;
//   - a number in (0, 1) is the fraction kept, floor(fraction · T) tokens of a T-token prompt (the paper's "10%");
//   - the observation window is counted inside the budget: B = window + the tokens selected before it;
//   - a budget at or above the prompt length keeps everything (the cache is not touched).
using System.Globalization;

namespace Kiln.Models.KvCompression;

/// <summary>
/// A KV-cache budget: tokens kept per layer (a whole number) or the fraction of the prompt kept (in (0, 1)). The
/// observation window counts inside it. Immutable.
/// </summary>
public readonly record struct KvBudget
{
    private KvBudget(int tokens, double fraction)
    {
        FixedTokens = tokens;
        Fraction = fraction;
    }

    /// <summary>The tokens kept when the budget is absolute; 0 when it is a fraction.</summary>
    public int FixedTokens { get; }

    /// <summary>The fraction of the prompt kept when the budget is relative; 0 when it is absolute.</summary>
    public double Fraction { get; }

    /// <summary>Whether the budget is a fraction of the prompt rather than a number of tokens.</summary>
    public bool IsFraction => FixedTokens == 0;

    /// <summary>A budget of <paramref name="tokens"/> tokens per layer, the observation window included.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="tokens"/> is below 1.</exception>
    public static KvBudget Tokens(int tokens)
    {
        if (tokens < 1)
        {
            throw new ArgumentOutOfRangeException(
                nameof(tokens), tokens, "KV budget must keep at least 1 token; give a token count such as 128 or a fraction such as 0.1.");
        }

        return new KvBudget(tokens, 0);
    }

    /// <summary>A budget of floor(<paramref name="fraction"/> · T) tokens of a T-token prompt, the window included.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="fraction"/> is not in (0, 1).</exception>
    public static KvBudget OfPrompt(double fraction)
    {
        if (!(fraction > 0 && fraction < 1))
        {
            throw new ArgumentOutOfRangeException(
                nameof(fraction), fraction, "KV budget fraction must be in (0, 1), the share of the prompt kept (0.1 keeps 10%); give a whole number for tokens.");
        }

        return new KvBudget(0, fraction);
    }

    /// <summary>
    /// Reads a budget as the CLI's <c>--kv-budget</c> does: a whole number is tokens kept, a number in (0, 1) the
    /// fraction kept.
    /// </summary>
    /// <exception cref="FormatException">The text is neither a whole number ≥ 1 nor a number in (0, 1).</exception>
    public static KvBudget Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int tokens) && tokens >= 1)
        {
            return Tokens(tokens);
        }

        if (!text.Contains('e', StringComparison.OrdinalIgnoreCase)
            && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double fraction)
            && fraction > 0 && fraction < 1)
        {
            return OfPrompt(fraction);
        }

        throw new FormatException(
            $"KV budget \"{text}\" is not a token count or a fraction: give a whole number of tokens kept per layer "
            + "(for example 128) or the fraction of the prompt kept, in (0, 1) (for example 0.1).");
    }

    /// <summary>The tokens this budget keeps of a <paramref name="promptLength"/>-token prompt.</summary>
    public int TokensFor(int promptLength) =>
        IsFraction ? (int)Math.Floor(Math.Round(Fraction * promptLength, 9)) : FixedTokens;

    /// <summary>The budget as <see cref="Parse"/> reads it: the token count, or the fraction.</summary>
    public override string ToString() =>
        IsFraction ? Fraction.ToString("R", CultureInfo.InvariantCulture) : FixedTokens.ToString(CultureInfo.InvariantCulture);
}
