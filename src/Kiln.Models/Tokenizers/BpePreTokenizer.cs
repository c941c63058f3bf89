// The pre-tokenizers of byte-level BPE vocabularies (tokenizer.ggml.pre in GGUF files): before any merge, the text is cut
// into fragments and BPE runs on each fragment alone, so no token ever spans two fragments. Each pre-tokenizer is a
// sequence of regular expressions applied one after the other, as llama.cpp does: every expression splits each current
// fragment into its matches and the gaps between them (gaps stay fragments of their own), and the next expression works
// on the result. Most vocabularies need one expression; deepseek-llm needs six.
//
// The expressions are those llama.cpp uses for each name (which follow the models' Hugging Face tokenizer.json):
//   gpt-2, mpt, olmo, jais   contractions | optional space + letters | optional space + digits | optional space + other
//                            symbols | a whitespace run not followed by a non-space (so one space stays for the next word)
//   default                  punctuation runs first, then the gpt-2 split, then digit runs, then ASCII digit triples
//   falcon                   punctuation/symbol runs first, then the gpt-2 split, then ASCII digit triples
//   starcoder, refact, ...   every digit alone, then the gpt-2 split
//   llama3 (llama-bpe)       case-insensitive contractions | one non-letter/digit + letters | 1 to 3 digits | optional
//                            space + symbols + newlines | whitespace ending in newlines | trailing whitespace runs
//   qwen2                    as llama3 but each digit alone
//   deepseek-llm             newlines alone; optional whitespace + letters of an explicit list of cased-letter ranges;
//                            optional whitespace + ASCII/full-width punctuation; whitespace at the end of a fragment;
//                            CJK/Hangul runs; digit runs
//   deepseek-coder           newlines alone; optional whitespace + letters; optional whitespace + punctuation; CJK/Hangul
//                            runs; each digit alone
// .NET regular expressions work on UTF-16 code units, so a class over code points above U+FFFF is written as surrogate
// pairs (CodePointClass); \p{L} and \p{N} in .NET do not match letters or digits above U+FFFF (math alphanumerics,
// some historic scripts), which then fall to the "other symbols" alternatives: a known difference from llama.cpp for
// such text. `$` is written \z (.NET's `$` also matches before a final newline).

using System.Text;
using System.Text.RegularExpressions;

namespace Kiln.Models.Tokenizers;

/// <summary>Splits text into the fragments that byte-level BPE encodes separately.</summary>
public sealed class BpePreTokenizer
{
    // The gpt-2 split as llama.cpp writes it (its trailing `\s+` alternative is the gap any remaining whitespace forms).
    private const string Gpt2 = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

    // The llama3 split with the contractions spelled case by case (equivalent to (?i:...) on ASCII, without .NET's
    // culture-aware case folding).
    private const string Llama3Contractions = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
    private const string Llama3Tail = @"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string Llama3 = Llama3Contractions + @"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}" + Llama3Tail;
    private const string Qwen2 = Llama3Contractions + @"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}" + Llama3Tail;

    // CJK unified ideographs, the range U+0800..U+4E00 and Hangul syllables, as the deepseek vocabularies group them.
    private const string DeepSeekCjk = @"[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+";

    // The cased-letter ranges of the deepseek-llm letter class (code points, inclusive).
    private static readonly (int First, int Last)[] s_deepSeekLetters =
    [
        (0x0041, 0x005A), (0x0061, 0x007A), (0x00B5, 0x00B5), (0x00C0, 0x00D6), (0x00D8, 0x00F6), (0x00F8, 0x01BA),
        (0x01BC, 0x01BF), (0x01C4, 0x0293), (0x0295, 0x02AF), (0x0370, 0x0373), (0x0376, 0x0377), (0x037B, 0x037D),
        (0x037F, 0x037F), (0x0386, 0x0386), (0x0388, 0x038A), (0x038C, 0x038C), (0x038E, 0x03A1), (0x03A3, 0x03F5),
        (0x03F7, 0x0481), (0x048A, 0x052F), (0x0531, 0x0556), (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD),
        (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B), (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15),
        (0x1F18, 0x1F1D), (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B),
        (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4),
        (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC),
        (0x2102, 0x2102), (0x2107, 0x2107), (0x210A, 0x2113), (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124),
        (0x2126, 0x2126), (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2134), (0x2139, 0x2139), (0x213C, 0x213F),
        (0x2145, 0x2149), (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE),
        (0x2CF2, 0x2CF3), (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F), (0xA771, 0xA787), (0xA78B, 0xA78E),
        (0xAB70, 0xABBF), (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0x10400, 0x1044F),
        (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF),
        (0x1E900, 0x1E943),
    ];

    private static readonly string[] s_default = [@"[\p{P}\$\+<=>\^~\|]+", Gpt2, @"\p{N}+", "[0-9][0-9][0-9]"];
    private static readonly string[] s_gpt2 = [Gpt2];
    private static readonly string[] s_falcon = [@"[\p{P}\$\+<=>\^~\|`]+", Gpt2, "[0-9][0-9][0-9]"];
    private static readonly string[] s_starCoder = [@"\p{N}", Gpt2];
    private static readonly string[] s_llama3 = [Llama3];
    private static readonly string[] s_qwen2 = [Qwen2];
    private static readonly string[] s_deepSeekCoder = [@"[\r\n]", @"\s?\p{L}+", @"\s?\p{P}+", DeepSeekCjk, @"\p{N}"];
    private static readonly string[] s_deepSeekLlm =
    [
        @"[\r\n]",
        @"\s?" + CodePointClass(s_deepSeekLetters) + "+",
        @"\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
        @"\s+\z",
        DeepSeekCjk,
        @"\p{N}+",
    ];

    // Each supported tokenizer.ggml.pre value and its expressions (aliases share them, as in llama.cpp).
    private static readonly Dictionary<string, string[]> s_byName = new(StringComparer.Ordinal)
    {
        ["default"] = s_default,
        ["gpt-2"] = s_gpt2,
        ["mpt"] = s_gpt2,
        ["olmo"] = s_gpt2,
        ["jais"] = s_gpt2,
        ["phi-2"] = s_gpt2,
        ["jina-es"] = s_gpt2,
        ["jina-de"] = s_gpt2,
        ["jina-v2-es"] = s_gpt2,
        ["jina-v2-de"] = s_gpt2,
        ["gigachat"] = s_gpt2,
        ["llama3"] = s_llama3,
        ["llama-v3"] = s_llama3,
        ["llama-bpe"] = s_llama3,
        ["falcon3"] = s_llama3,
        ["falcon-h1"] = s_llama3,
        ["pixtral"] = s_llama3,
        ["dbrx"] = s_llama3,
        ["smaug-bpe"] = s_llama3,
        ["deepseek-llm"] = s_deepSeekLlm,
        ["deepseek-coder"] = s_deepSeekCoder,
        ["falcon"] = s_falcon,
        ["starcoder"] = s_starCoder,
        ["refact"] = s_starCoder,
        ["command-r"] = s_starCoder,
        ["smollm"] = s_starCoder,
        ["codeshell"] = s_starCoder,
        ["exaone"] = s_starCoder,
        ["minerva-7b"] = s_starCoder,
        ["qwen2"] = s_qwen2,
        ["stablelm2"] = s_qwen2,
        ["deepseek-r1-qwen"] = s_qwen2,
    };

    private static readonly Dictionary<string, BpePreTokenizer> s_cache = new(StringComparer.Ordinal);

    private readonly Regex[] _steps;

    private BpePreTokenizer(string name, string[] patterns)
    {
        Name = name;
        _steps = [.. patterns.Select(static p => new Regex(p, RegexOptions.CultureInvariant))];
    }

    /// <summary>The tokenizer.ggml.pre names this class knows, in a stable order.</summary>
    public static IReadOnlyList<string> SupportedNames { get; } = [.. s_byName.Keys];

    /// <summary>The pre-tokenizer name.</summary>
    public string Name { get; }

    /// <summary>The regular expressions, in the order they are applied.</summary>
    public IReadOnlyList<string> Patterns => [.. _steps.Select(static r => r.ToString())];

    /// <summary>
    /// Whether <paramref name="name"/> belongs to the llama3 family, whose vocabularies take a fragment that is itself a
    /// token whole (ignore_merges) and start sequences with BOS unless the file says otherwise, as in llama.cpp.
    /// </summary>
    public static bool IsLlama3Family(string name) => name is "llama3" or "llama-v3" or "llama-bpe" or "falcon3" or "falcon-h1" or "pixtral";

    /// <summary>Whether <paramref name="name"/> is a supported tokenizer.ggml.pre value.</summary>
    public static bool IsSupported(string name) => s_byName.ContainsKey(name);

    /// <summary>The pre-tokenizer llama.cpp uses for the tokenizer.ggml.pre value <paramref name="name"/>.</summary>
    /// <exception cref="ArgumentException">The name is not one of <see cref="SupportedNames"/>.</exception>
    public static BpePreTokenizer ForName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        lock (s_cache)
        {
            if (s_cache.TryGetValue(name, out BpePreTokenizer? cached))
            {
                return cached;
            }

            if (!s_byName.TryGetValue(name, out string[]? patterns))
            {
                throw new ArgumentException($"Unknown BPE pre-tokenizer '{name}'; Kiln knows {string.Join(", ", SupportedNames)}.", nameof(name));
            }

            BpePreTokenizer created = new(name, patterns);
            s_cache[name] = created;
            return created;
        }
    }

    /// <summary>The fragments of <paramref name="text"/> as (start, length) pairs in text order, covering all of it.</summary>
    public List<(int Start, int Length)> Split(ReadOnlySpan<char> text)
    {
        List<(int Start, int Length)> fragments = text.IsEmpty ? [] : [(0, text.Length)];
        List<(int Start, int Length)> next = [];
        foreach (Regex step in _steps)
        {
            next.Clear();
            foreach ((int start, int length) in fragments)
            {
                // Matches and the gaps between them, all kept; empty matches cut nothing.
                int position = 0;
                foreach (ValueMatch match in step.EnumerateMatches(text.Slice(start, length)))
                {
                    if (match.Length == 0)
                    {
                        continue;
                    }

                    if (match.Index > position)
                    {
                        next.Add((start + position, match.Index - position));
                    }

                    next.Add((start + match.Index, match.Length));
                    position = match.Index + match.Length;
                }

                if (position < length)
                {
                    next.Add((start + position, length - position));
                }
            }

            (fragments, next) = (next, fragments);
        }

        return fragments;
    }

    /// <summary>The fragments of <paramref name="text"/> as strings (for tests and diagnostics).</summary>
    public string[] SplitToStrings(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return [.. Split(text).Select(f => text.Substring(f.Start, f.Length))];
    }

    // A .NET pattern matching one code point in any of the inclusive ranges: the ranges below U+10000 as one class, the
    // others as high surrogate + low-surrogate class alternatives.
    private static string CodePointClass((int First, int Last)[] ranges)
    {
        StringBuilder bmp = new("[");
        List<string> astral = [];
        foreach ((int first, int last) in ranges)
        {
            if (last < 0x10000)
            {
                bmp.Append($@"\u{first:X4}-\u{last:X4}");
                continue;
            }

            // Cut the range where the high surrogate changes.
            for (int from = first; from <= last;)
            {
                int high = 0xD800 + ((from - 0x10000) >> 10);
                int blockEnd = Math.Min(last, 0x10000 + (((from - 0x10000) >> 10) << 10) + 0x3FF);
                int lowFirst = 0xDC00 + ((from - 0x10000) & 0x3FF);
                int lowLast = 0xDC00 + ((blockEnd - 0x10000) & 0x3FF);
                astral.Add($@"\u{high:X4}[\u{lowFirst:X4}-\u{lowLast:X4}]");
                from = blockEnd + 1;
            }
        }

        return "(?:" + bmp.Append(']') + (astral.Count > 0 ? "|" + string.Join('|', astral) : string.Empty) + ")";
    }
}
