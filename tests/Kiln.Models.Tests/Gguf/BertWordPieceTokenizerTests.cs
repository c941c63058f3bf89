// The WordPiece (`bert`) tokenizer of GGUF files on tiny vocabularies written with GgufWriter in llama.cpp's spelling
// ('▁' starts a word, continuation pieces bare, bracketed specials): [CLS]/[SEP], punctuation and CJK splitting,
// lower-casing and accent stripping for an uncased vocabulary (and neither for a cased one), [UNK] for words that do not
// split, decoding, user-defined tokens, and one-line errors for damaged vocabularies.

using Kiln.Models.Formats;
using Kiln.Models.Tokenizers;
using Xunit;

namespace Kiln.Models.Tests.Gguf;

public sealed class BertWordPieceTokenizerTests
{
    private static readonly string[] s_uncased =
    [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "▁hello", "▁world", "▁un", "aff", "able", "▁,", "▁!", "▁的", "▁中",
        "▁cafe", "▁a", "b", "▁ab", "▁naive", "<tag>",
    ];

    [Theory]
    [InlineData("Hello, world!", "[CLS] ▁hello ▁, ▁world ▁! [SEP]")]
    [InlineData("unaffable", "[CLS] ▁un aff able [SEP]")]
    [InlineData("  hello\t\nworld  ", "[CLS] ▁hello ▁world [SEP]")]
    [InlineData("Café NAÏVE", "[CLS] ▁cafe ▁naive [SEP]")]
    [InlineData("中的", "[CLS] ▁中 ▁的 [SEP]")]
    [InlineData("hello unaffablex world", "[CLS] ▁hello [UNK] ▁world [SEP]")]
    [InlineData("abb", "[CLS] ▁ab b [SEP]")]
    [InlineData("hello<tag>world", "[CLS] ▁hello <tag> ▁world [SEP]")]
    [InlineData("", "[CLS] [SEP]")]
    [InlineData("a\u0000b\u200B", "[CLS] ▁ab [SEP]")]
    public void UncasedVocabulary_Encodes(string text, string expected)
    {
        BertWordPieceTokenizer tok = Load(Vocabulary(s_uncased));

        int[] ids = tok.Encode(text);

        Assert.True(tok.Uncased);
        Assert.Equal(expected, string.Join(' ', ids.Select(id => tok.Tokens[id])));
    }

    [Fact]
    public void CasedVocabulary_KeepsCaseAndAccents()
    {
        BertWordPieceTokenizer tok = Load(Vocabulary(["[UNK]", "[CLS]", "[SEP]", "▁Hello", "▁hello", "▁Café", "▁!"]));

        Assert.False(tok.Uncased);
        Assert.Equal("[CLS] ▁Hello ▁hello ▁Café [UNK] ▁! [SEP]", string.Join(' ', tok.Encode("Hello hello Café HELLO!").Select(id => tok.Tokens[id])));
    }

    [Fact]
    public void WithoutSpecials_AndDecoding()
    {
        BertWordPieceTokenizer tok = Load(Vocabulary(s_uncased));

        int[] ids = tok.Encode("Hello, unaffable world!", bos: false);

        Assert.Equal([5, 10, 7, 8, 9, 6, 11], ids);
        Assert.Equal("hello , unaffable world !", tok.Decode(ids));
        Assert.Equal("hello world", tok.Decode(tok.Encode("hello world")));
        Assert.Equal((2, 3, 3, 1), (tok.BosId, tok.EosId, tok.StopTokenId, tok.UnknownId));
    }

    [Fact]
    public void ControlTokenText_IsATokenOnlyWhenParsingSpecials()
    {
        BertWordPieceTokenizer tok = Load(Vocabulary(s_uncased));

        Assert.Equal([5, 4, 6], tok.Encode("hello[MASK]world", addSpecial: false, parseSpecial: true));
        Assert.Equal([5, 1, 1, 1, 6], tok.Encode("hello[MASK]world", addSpecial: false, parseSpecial: false));
    }

    [Fact]
    public void LongWord_IsUnknown()
    {
        BertWordPieceTokenizer tok = Load(Vocabulary(s_uncased));

        Assert.Equal([1], tok.Encode("a" + new string('b', BertWordPieceTokenizer.MaxWordChars), bos: false));
        Assert.Equal([17, .. Enumerable.Repeat(16, BertWordPieceTokenizer.MaxWordChars - 2)], tok.Encode("a" + new string('b', BertWordPieceTokenizer.MaxWordChars - 1), bos: false));
    }

    [Theory]
    [InlineData("Ångström", "Angstrom")]
    [InlineData("Cửa Việt ǅ", "Cua Viet ǅ")]
    [InlineData("e\u0301\u0327x", "ex")]
    [InlineData("한", "\u1112\u1161\u11AB")]
    [InlineData("plain 中文 🦙", "plain 中文 🦙")]
    public void AccentStripping_IsNfdWithoutMarks(string text, string expected) => Assert.Equal(expected, AccentStripping.Strip(text));

    [Theory]
    [InlineData("unk", "names no an unknown token")]
    [InlineData("sep", "names no a [SEP] token")]
    [InlineData("cls-range", "metadata key 'tokenizer.ggml.cls_token_id' is 99, outside the valid range 0..")]
    public void DamagedVocabulary_IsNamed(string damage, string expected)
    {
        string[] tokens = damage == "unk" ? ["[PAD]", "[CLS]", "[SEP]", "▁a"] : ["[UNK]", "[CLS]", "[SEP]", "▁a"];
        GgufWriter writer = new();
        writer.Add("tokenizer.ggml.model", GgufValue.String("bert"));
        writer.Add("tokenizer.ggml.tokens", GgufValue.Array(tokens));
        writer.Add("tokenizer.ggml.cls_token_id", GgufValue.UInt32(damage == "cls-range" ? 99u : 1u));
        if (damage != "sep")
        {
            writer.Add("tokenizer.ggml.seperator_token_id", GgufValue.UInt32(2));
        }

        GgufFile file = GgufFile.Parse("bert.gguf", GgufRoundTripTests.Write(writer));

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => GgufTokenizers.Load(file));

        CheckpointValidationTests.AssertOneLine(e.Message, "bert.gguf", expected);
    }

    // A bert vocabulary: types from the spelling ("[X]" control, "<tag>" user-defined), [UNK]/[CLS]/[SEP] by name.
    private static GgufFile Vocabulary(string[] tokens)
    {
        int[] types = [.. tokens.Select(t => t == "[UNK]" ? 2 : t.StartsWith('[') ? 3 : t.StartsWith('<') ? 4 : 1)];
        GgufWriter writer = new();
        writer.Add("tokenizer.ggml.model", GgufValue.String("bert"));
        writer.Add("tokenizer.ggml.tokens", GgufValue.Array(tokens));
        writer.Add("tokenizer.ggml.token_type", GgufValue.Array(types));
        writer.Add("tokenizer.ggml.unknown_token_id", GgufValue.UInt32((uint)Array.IndexOf(tokens, "[UNK]")));
        writer.Add("tokenizer.ggml.cls_token_id", GgufValue.UInt32((uint)Array.IndexOf(tokens, "[CLS]")));
        writer.Add("tokenizer.ggml.seperator_token_id", GgufValue.UInt32((uint)Array.IndexOf(tokens, "[SEP]")));
        return GgufFile.Parse("bert.gguf", GgufRoundTripTests.Write(writer));
    }

    private static BertWordPieceTokenizer Load(GgufFile file) => Assert.IsType<BertWordPieceTokenizer>(GgufTokenizers.Load(file));
}
