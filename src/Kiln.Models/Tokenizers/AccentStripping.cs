// Accent stripping as BERT's uncased tokenizers do it (Unicode NFD, then every non-spacing mark dropped), computed one
// character at a time from the generated table in AccentStripping.Table.cs, because string.Normalize does not
// decompose non-ASCII text under the invariant globalization this repository builds with. Hangul syllables decompose by
// the Unicode formula into their leading consonant, vowel and optional trailing consonant jamo.

using System.Globalization;
using System.Text;

namespace Kiln.Models.Tokenizers;

/// <summary>Accent stripping without ICU: canonical decomposition with non-spacing marks removed.</summary>
internal static partial class AccentStripping
{
    private static readonly Lazy<Dictionary<int, string>> s_map = new(Parse);

    /// <summary><paramref name="text"/> decomposed (NFD) with the non-spacing marks (category Mn) dropped.</summary>
    public static string Strip(string text)
    {
        StringBuilder result = new(text.Length);
        Dictionary<int, string> map = s_map.Value;
        for (int i = 0; i < text.Length; i++)
        {
            int cp = char.IsSurrogatePair(text, i) ? char.ConvertToUtf32(text[i], text[i + 1]) : text[i];
            int units = cp > 0xFFFF ? 2 : 1;
            if (cp is >= 0xAC00 and <= 0xD7A3)
            {
                // Hangul: S = 0xAC00 + (L * 21 + V) * 28 + T.
                int s = cp - 0xAC00;
                result.Append((char)(0x1100 + (s / (21 * 28))));
                result.Append((char)(0x1161 + (s % (21 * 28) / 28)));
                if (s % 28 != 0)
                {
                    result.Append((char)(0x11A7 + (s % 28)));
                }
            }
            else if (map.TryGetValue(cp, out string? stripped))
            {
                result.Append(stripped);
            }
            else if (CharUnicodeInfo.GetUnicodeCategory(cp) != UnicodeCategory.NonSpacingMark)
            {
                result.Append(text, i, units);
            }

            i += units - 1;
        }

        return result.ToString();
    }

    private static Dictionary<int, string> Parse()
    {
        Dictionary<int, string> map = [];
        foreach (string entry in Table.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            int key = char.ConvertToUtf32(entry, 0);
            map[key] = entry[(key > 0xFFFF ? 2 : 1)..];
        }

        return map;
    }
}
