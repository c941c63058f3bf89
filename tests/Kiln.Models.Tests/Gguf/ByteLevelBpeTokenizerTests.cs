// The byte-level BPE (`gpt2`) tokenizer of GGUF files: all 46 reference encodings of llama.cpp's test vectors for the
// GPT-2 and DeepSeek LLM vocabularies, their metadata and special tokens, the merge loop against a plain reference
// (lowest rank first, leftmost on ties, rescanning the whole fragment after every merge) on random text (FsCheck),
// encode → decode round trips on ASCII and non-ASCII text (FsCheck), control-token parsing, fragments that cover the
// text for every pre-tokenizer (FsCheck), the pre-tokenizers on strings that tell them apart (directly and
// through a tiny vocabulary written with GgufWriter), and one-line errors for damaged vocabularies.

using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Models.Formats;
using Kiln.Models.Tokenizers;
using Xunit;

namespace Kiln.Models.Tests.Gguf;

public sealed class ByteLevelBpeTokenizerTests
{
    private static readonly Lazy<ByteLevelBpeTokenizer> s_gpt2 = new(() => Load("ggml-vocab-gpt-2.gguf"));
    private static readonly Lazy<ByteLevelBpeTokenizer> s_deepSeek = new(() => Load("ggml-vocab-deepseek-llm.gguf"));

    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ByteLevelBpeTokenizer, Dictionary<string, int>> s_ids = [];
    private static readonly Lazy<Dictionary<(string, string), int>> s_gpt2Ranks = new(() => Ranks("ggml-vocab-gpt-2.gguf"));
    private static readonly Lazy<Dictionary<(string, string), int>> s_deepSeekRanks = new(() => Ranks("ggml-vocab-deepseek-llm.gguf"));

    // Random text: mostly ASCII letters, digits, spaces and punctuation, with newlines, tabs, accented Latin, Cyrillic,
    // CJK, Hangul, emoji and a zero-width joiner.
    private static readonly Arbitrary<string> s_texts = Gen.OneOf(
            Gen.Choose(32, 126), Gen.Choose(32, 126), Gen.Choose(97, 122), Gen.Elements(32, 32, 48, 49, 55),
            Gen.Elements(9, 10, 13, 0xE9, 0xFC, 0x439, 0x416, 0x20AC, 0x4E2D, 0x6587, 0xAC00, 0x1F999, 0x1F600, 0x200D, 0x3000, 0xFF01))
        .ArrayOf().Select(static cs => string.Concat(cs.Select(char.ConvertFromUtf32))).ToArbitrary();

    internal static string VocabPath(string file) => Path.Combine(TestData.Shared, "tokenizers", "llamacpp-vocab", file);

    [Theory]
    [InlineData("ggml-vocab-gpt-2.gguf")]
    [InlineData("ggml-vocab-deepseek-llm.gguf")]
    public void Vocabulary_ReproducesAll46ReferenceEncodings(string file)
    {
        ByteLevelBpeTokenizer tok = file.Contains("gpt-2", StringComparison.Ordinal) ? s_gpt2.Value : s_deepSeek.Value;
        string[] texts = File.ReadAllText(VocabPath(file) + ".inp").Split("\n__ggml_vocab_test__\n")[..^1];
        string[] lines = File.ReadAllText(VocabPath(file) + ".out").Split('\n')[..^1];
        Assert.Equal(46, texts.Length);
        Assert.Equal(46, lines.Length);

        List<string> failures = [];
        for (int i = 0; i < texts.Length; i++)
        {
            int[] expected = [.. lines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse)];
            int[] actual = tok.Encode(texts[i], bos: false);
            if (!actual.SequenceEqual(expected))
            {
                failures.Add($"#{i} {texts[i]}: expected [{string.Join(' ', expected)}], got [{string.Join(' ', actual)}]");
            }
        }

        Assert.True(failures.Count == 0, string.Join('\n', failures));
    }

    [Fact]
    public void Gpt2Vocabulary_MetadataAndSpecialTokens()
    {
        ByteLevelBpeTokenizer tok = s_gpt2.Value;

        Assert.Equal(50257, tok.VocabSize);
        Assert.Equal((50256, 50256, 50256), (tok.BosId, tok.EosId, tok.StopTokenId));
        Assert.False(tok.AddBos);
        Assert.Equal("gpt-2", tok.PreTokenizer.Name);
        Assert.Equal([15496, 995], tok.Encode("Hello world"));
        Assert.Equal([15496, 995], tok.Encode("Hello world", bos: true));
        Assert.Empty(tok.Encode(string.Empty));
        Assert.Equal('Ġ', ByteLevelBpeTokenizer.ByteToChar((byte)' '));
        Assert.Equal('Ċ', ByteLevelBpeTokenizer.ByteToChar((byte)'\n'));
    }

    [Fact]
    public void DeepSeekVocabulary_AddsBosAndMatchesUserDefinedTokens()
    {
        ByteLevelBpeTokenizer tok = s_deepSeek.Value;

        Assert.Equal(102400, tok.VocabSize);
        Assert.Equal((100000, 100001), (tok.BosId, tok.EosId));
        Assert.True(tok.AddBos);
        Assert.Equal([100000, 37, 100014, 71, 6245], tok.Encode("Führer"));
        Assert.Equal([37, 100014, 71, 6245], tok.Encode("Führer", bos: false));
        Assert.Equal(GgufTokenType.UserDefined, tok.TokenTypes[100014]);
    }

    [Fact]
    public void ControlTokenText_IsATokenOnlyWhenParsingSpecials()
    {
        ByteLevelBpeTokenizer tok = s_gpt2.Value;

        int[] parsed = tok.Encode("a<|endoftext|>b", addSpecial: false, parseSpecial: true);
        int[] plain = tok.Encode("a<|endoftext|>b", addSpecial: false, parseSpecial: false);

        Assert.Equal([tok.Encode("a")[0], 50256, tok.Encode("b")[0]], parsed);
        Assert.DoesNotContain(50256, plain);
        Assert.Equal("a<|endoftext|>b", tok.Decode(plain));
        Assert.Equal("ab", tok.Decode(parsed));
    }

    [Property(MaxTest = 150)]
    public Property EncodeThenDecode_GivesTheTextBack() => Prop.ForAll(
        Gen.OneOf(Gen.Choose(32, 126), Gen.Choose(32, 126), Gen.Elements(9, 10, 13, 0xE9, 0xFC, 0x439, 0x20AC, 0x4E2D, 0xAC00, 0x1F999, 0x1F600, 0x200D))
            .ArrayOf().Select(static cs => string.Concat(cs.Select(char.ConvertFromUtf32))).ToArbitrary(),
        text =>
        {
            int[] gpt2 = s_gpt2.Value.Encode(text, bos: false);
            int[] deepSeek = s_deepSeek.Value.Encode(text);
            return (s_gpt2.Value.Decode(gpt2) == text).Label($"gpt-2 [{string.Join(' ', gpt2)}]")
                .And((s_deepSeek.Value.Decode(deepSeek) == text).Label($"deepseek-llm [{string.Join(' ', deepSeek)}]"));
        });

    [Property(MaxTest = 100)]
    public Property Merges_MatchAPlainReference() => Prop.ForAll(
        s_texts,
        text =>
        {
            foreach ((ByteLevelBpeTokenizer tok, Dictionary<(string, string), int> ranks) in new[] { (s_gpt2.Value, s_gpt2Ranks.Value), (s_deepSeek.Value, s_deepSeekRanks.Value) })
            {
                // User-defined tokens are left out of the text so that only the merge loop decides the ids.
                if (tok.TokenTypes.Select((type, id) => (type, id)).Any(t => t.type == GgufTokenType.UserDefined && text.Contains(tok.Tokens[t.id], StringComparison.Ordinal)))
                {
                    continue;
                }

                int[] expected = [.. tok.PreTokenizer.SplitToStrings(text).SelectMany(fragment => ReferenceMerge(tok, ranks, fragment))];
                int[] actual = tok.Encode(text, bos: false);
                if (!actual.SequenceEqual(expected))
                {
                    return false.Label($"{tok.PreTokenizer.Name}: expected [{string.Join(' ', expected)}], got [{string.Join(' ', actual)}]");
                }
            }

            return true.ToProperty();
        });

    [Property(MaxTest = 100)]
    public Property PreTokenizers_CoverTheTextWithNonEmptyFragments() => Prop.ForAll(
        s_texts,
        text => BpePreTokenizer.SupportedNames.All(name =>
        {
            string[] fragments = BpePreTokenizer.ForName(name).SplitToStrings(text);
            return string.Concat(fragments) == text && fragments.All(static f => f.Length > 0);
        }));

    [Fact]
    public void Decode_NonAsciiText()
    {
        foreach (ByteLevelBpeTokenizer tok in new[] { s_gpt2.Value, s_deepSeek.Value })
        {
            foreach (string text in new[] { "Hello world", "Cửa Việt", "🦙.cpp 🚀 (normal) 😶‍🌫️", "Führer 中文 한국어", "\t\n\n  x" })
            {
                Assert.Equal(text, tok.Decode(tok.Encode(text)));
            }
        }
    }

    // Pre-tokenizers on strings that tell them apart: digit grouping, contractions, newlines, CJK, whitespace runs.
    [Theory]
    [InlineData("gpt-2", "12345", "12345")]
    [InlineData("llama3", "12345", "123|45")]
    [InlineData("qwen2", "12345", "1|2|3|4|5")]
    [InlineData("starcoder", "12345", "1|2|3|4|5")]
    [InlineData("refact", "x 12", "x| |1|2")]
    [InlineData("falcon", "12345", "123|45")]
    [InlineData("default", "12345", "123|45")]
    [InlineData("deepseek-llm", "12345", "12345")]
    [InlineData("deepseek-coder", "12345", "1|2|3|4|5")]
    [InlineData("gpt-2", "I'm you'LL", "I|'m| you|'|LL")]
    [InlineData("llama3", "I'm you'LL", "I|'m| you|'LL")]
    [InlineData("gpt-2", "a\n\nb", "a|\n|\n|b")]
    [InlineData("llama3", "a\n\nb", "a|\n\n|b")]
    [InlineData("deepseek-llm", "a\n\nb", "a|\n|\n|b")]
    [InlineData("gpt-2", "a   b", "a|  | b")]
    [InlineData("mpt", "a   b", "a|  | b")]
    [InlineData("deepseek-llm", "a   b  ", "a|  | b|  ")]
    [InlineData("deepseek-llm", "中文abc", "中文|abc")]
    [InlineData("deepseek-coder", "中文abc", "中文|abc")]
    [InlineData("deepseek-coder", "Ωx", "Ωx")]
    [InlineData("gpt-2", "x+=y;", "x|+=|y|;")]
    [InlineData("falcon", "x+=y;", "x|+=|y|;")]
    [InlineData("default", "hi!!?", "hi|!!?")]
    [InlineData("deepseek-llm", "Ω𐐀ж", "Ω𐐀ж")]
    [InlineData("deepseek-llm", "Ωx", "Ω|x")]
    public void PreTokenizer_Splits(string name, string text, string expected)
    {
        string[] fragments = BpePreTokenizer.ForName(name).SplitToStrings(text);

        Assert.Equal(expected.Split('|'), fragments);
        Assert.Equal(text, string.Concat(fragments));
    }

    // The same digit runs through a tiny vocabulary written with GgufWriter: the merges are the same for every
    // pre-tokenizer, so only the file's tokenizer.ggml.pre changes the ids.
    [Theory]
    [InlineData("gpt-2", "12 34 5")]
    [InlineData("gpt-2", "123 45", "repeated-merge")]
    [InlineData("mpt", "12 34 5")]
    [InlineData("deepseek-llm", "12 34 5")]
    [InlineData("llama3", "123 45")]
    [InlineData("falcon", "123 45")]
    [InlineData("default", "123 45")]
    [InlineData("qwen2", "1 2 3 4 5")]
    [InlineData("starcoder", "1 2 3 4 5")]
    [InlineData("refact", "1 2 3 4 5")]
    [InlineData("deepseek-coder", "1 2 3 4 5")]
    public void TinyVocabulary_DigitsFollowThePreTokenizer(string pre, string expectedPieces, string damage = "")
    {
        GgufFile file = TinyVocabulary(pre, damage);
        ByteLevelBpeTokenizer tok = Assert.IsType<ByteLevelBpeTokenizer>(GgufTokenizers.Load(file));

        int[] ids = tok.Encode("12345", bos: false);

        Assert.Equal(expectedPieces, string.Join(' ', ids.Select(id => tok.Tokens[id])));
        Assert.Equal("12345", tok.Decode(ids));
    }

    [Theory]
    [InlineData("llama3", true, "99")]
    [InlineData("llama-bpe", true, "99")]
    [InlineData("falcon3", true, "99")]
    [InlineData("gpt-2", false, "9 9")]
    [InlineData("qwen2", false, "9|9")]
    public void Llama3Family_TakesWholeTokensAndAddsBos(string pre, bool llama3, string expectedPieces)
    {
        ByteLevelBpeTokenizer tok = Assert.IsType<ByteLevelBpeTokenizer>(GgufTokenizers.Load(TinyVocabulary(pre)));

        int[] ids = tok.Encode("99", bos: false);

        Assert.Equal(llama3, tok.IgnoreMerges);
        Assert.Equal(llama3, tok.AddBos);
        Assert.Equal(expectedPieces.Replace('|', ' '), string.Join(' ', ids.Select(id => tok.Tokens[id])));
        Assert.Equal(llama3 ? [tok.BosId, .. ids] : ids, tok.Encode("99"));
    }

    [Theory]
    [InlineData("no-merges", "has no tokenizer.ggml.merges")]
    [InlineData("unknown-merge", "Merge 1 '1 xyz' in tokenizer.ggml.merges needs token 'xyz', which is not in tokenizer.ggml.tokens")]
    [InlineData("merge-result", "Merge 1 '2 5' in tokenizer.ggml.merges needs token '25', which is not in tokenizer.ggml.tokens")]
    [InlineData("bad-merge", "Merge 1 '12' in tokenizer.ggml.merges is not two tokens separated by a space")]
    [InlineData("bos", "metadata key 'tokenizer.ggml.bos_token_id' is 300, outside the valid range 0..")]
    [InlineData("pre", "has tokenizer.ggml.pre 'gpt-5', which Kiln does not know; supported: default, gpt-2,")]
    [InlineData("byte", "has no token for byte 0x41 ('A'); a byte-level BPE vocabulary needs all 256")]
    [InlineData("types", "has 3 entries in tokenizer.ggml.token_type but")]
    [InlineData("merges-type", "metadata key 'tokenizer.ggml.merges' is an array of i32, expected an array of string")]
    public void DamagedVocabulary_IsNamed(string damage, string expected)
    {
        GgufFile file = TinyVocabulary("gpt-2", damage);

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => GgufTokenizers.Load(file));

        CheckpointValidationTests.AssertOneLine(e.Message, "tiny.gguf", expected);
    }

    [Fact]
    public void UnknownPreTokenizerName_ListsTheSupportedOnes()
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => BpePreTokenizer.ForName("gpt-5"));

        Assert.Contains("Unknown BPE pre-tokenizer 'gpt-5'; Kiln knows default, gpt-2,", e.Message);
        Assert.Contains("deepseek-llm", e.Message);
    }

    // 256 byte tokens, the merged digit pieces, "99" (no merge makes it), and a control token, with the merges "3 4",
    // "1 2", "12 3", "4 5" (most important first); damage breaks one part ("repeated-merge": "4 5" first and again last,
    // where only the first copy may count).
    private static GgufFile TinyVocabulary(string pre, string damage = "")
    {
        List<string> tokens = [.. Enumerable.Range(0, 256).Select(b => ByteLevelBpeTokenizer.ByteToChar((byte)b).ToString())];
        if (damage == "byte")
        {
            tokens[(byte)'A'] = "AA";
        }

        tokens.AddRange(["34", "12", "123", "45", "99", "<|end|>"]);
        string[] merges = damage switch
        {
            "unknown-merge" => ["3 4", "1 xyz"],
            "merge-result" => ["3 4", "2 5"],
            "bad-merge" => ["3 4", "12"],
            "repeated-merge" => ["4 5", "3 4", "1 2", "12 3", "4 5"],
            _ => ["3 4", "1 2", "12 3", "4 5"],
        };
        int[] types = [.. tokens.Select((_, id) => id == tokens.Count - 1 ? 3 : 1)];

        GgufWriter writer = new();
        writer.Add("tokenizer.ggml.model", GgufValue.String("gpt2"));
        writer.Add("tokenizer.ggml.pre", GgufValue.String(damage == "pre" ? "gpt-5" : pre));
        writer.Add("tokenizer.ggml.tokens", GgufValue.Array(tokens.ToArray()));
        writer.Add("tokenizer.ggml.token_type", GgufValue.Array(damage == "types" ? [1, 1, 1] : types));
        if (damage == "merges-type")
        {
            writer.Add("tokenizer.ggml.merges", GgufValue.Array(new[] { 1, 2 }));
        }
        else if (damage != "no-merges")
        {
            writer.Add("tokenizer.ggml.merges", GgufValue.Array(merges));
        }

        writer.Add("tokenizer.ggml.bos_token_id", GgufValue.UInt32(damage == "bos" ? 300u : (uint)(tokens.Count - 1)));
        return GgufFile.Parse("tiny.gguf", GgufRoundTripTests.Write(writer));
    }

    // The merge loop written plainly: spell the fragment's bytes in the byte alphabet, then as long as some adjacent pair
    // has a merge rule, merge the pair with the lowest rank (the leftmost of equal pairs), scanning the whole fragment
    // again after each merge.
    private static IEnumerable<int> ReferenceMerge(ByteLevelBpeTokenizer tok, Dictionary<(string, string), int> ranks, string fragment)
    {
        List<string> symbols = [.. System.Text.Encoding.UTF8.GetBytes(fragment).Select(b => ByteLevelBpeTokenizer.ByteToChar(b).ToString())];
        while (true)
        {
            int best = -1, bestRank = int.MaxValue;
            for (int i = 0; i + 1 < symbols.Count; i++)
            {
                if (ranks.TryGetValue((symbols[i], symbols[i + 1]), out int rank) && rank < bestRank)
                {
                    (best, bestRank) = (i, rank);
                }
            }

            if (best < 0)
            {
                break;
            }

            symbols[best] += symbols[best + 1];
            symbols.RemoveAt(best + 1);
        }

        Dictionary<string, int> ids = s_ids.GetValue(tok, static t =>
        {
            Dictionary<string, int> byText = new(StringComparer.Ordinal);
            for (int id = 0; id < t.VocabSize; id++)
            {
                byText.TryAdd(t.Tokens[id], id);
            }

            return byText;
        });
        return symbols.Select(symbol => ids[symbol]);
    }

    private static Dictionary<(string, string), int> Ranks(string file)
    {
        string[] merges = GgufFile.Open(VocabPath(file)).GetArray<string>("tokenizer.ggml.merges");
        Dictionary<(string, string), int> ranks = [];
        for (int rank = 0; rank < merges.Length; rank++)
        {
            int space = merges[rank].IndexOf(' ', 1);
            ranks.TryAdd((merges[rank][..space], merges[rank][(space + 1)..]), rank);
        }

        return ranks;
    }

    private static ByteLevelBpeTokenizer Load(string file) =>
        Assert.IsType<ByteLevelBpeTokenizer>(GgufTokenizers.Load(GgufFile.Open(VocabPath(file))));
}
