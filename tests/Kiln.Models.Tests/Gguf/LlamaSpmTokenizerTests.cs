// The `llama` (SentencePiece-style) tokenizer of GGUF files: all 46 reference encodings of llama.cpp's test vectors for
// the Llama vocabulary (ggml-vocab-llama-spm.gguf), the stories260K vocabulary converted to GGUF encoding every text as
// the llama2.c tokenizer does (FsCheck) and decoding the reference ids to the reference text, the conversion back to a
// tok512.bin that is byte-identical, and the errors for other tokenizer models and damaged vocabularies.

using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Models.Formats;
using Kiln.Models.Tokenizers;
using Xunit;

namespace Kiln.Models.Tests.Gguf;

public sealed class LlamaSpmTokenizerTests
{
    private static readonly Lazy<LlamaSpmTokenizer> s_llama = new(() => LlamaSpmTokenizer.FromGguf(GgufFile.Open(GgufValidationTests.VocabPath)));
    private static readonly Lazy<LlamaSpmTokenizer> s_stories = new(() => LlamaSpmTokenizer.FromGguf(StoriesVocabulary()));

    [Fact]
    public void LlamaVocabulary_ReproducesAll46ReferenceEncodings()
    {
        string inputs = File.ReadAllText(GgufValidationTests.VocabPath + ".inp");
        string[] texts = inputs.Split("\n__ggml_vocab_test__\n")[..^1];
        string[] lines = File.ReadAllText(GgufValidationTests.VocabPath + ".out").Split('\n')[..^1];
        Assert.Equal(46, texts.Length);
        Assert.Equal(46, lines.Length);

        List<string> failures = [];
        for (int i = 0; i < texts.Length; i++)
        {
            int[] expected = [.. lines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse)];
            int[] actual = s_llama.Value.Encode(texts[i], bos: false);
            if (!actual.SequenceEqual(expected))
            {
                failures.Add($"#{i} {texts[i]}: expected [{string.Join(' ', expected)}], got [{string.Join(' ', actual)}]");
            }
        }

        Assert.True(failures.Count == 0, string.Join('\n', failures));
    }

    [Fact]
    public void LlamaVocabulary_MetadataAndSpecialTokens()
    {
        LlamaSpmTokenizer tok = s_llama.Value;

        Assert.Equal(32000, tok.VocabSize);
        Assert.Equal((1, 2, 0), (tok.BosId, tok.EosId, tok.UnknownId));
        Assert.True(tok.AddBos);
        Assert.Equal(2, tok.StopTokenId);
        Assert.Equal([1, 15043, 3186], tok.Encode("Hello world"));
        Assert.Empty(tok.Encode(string.Empty, bos: false));
        Assert.Equal(GgufTokenType.Byte, tok.TokenTypes[13]);
    }

    [Fact]
    public void LlamaVocabulary_DecodesWhatItEncodes()
    {
        LlamaSpmTokenizer tok = s_llama.Value;
        foreach (string text in new[] { "Hello world", " this is 🦙.cpp", "Cửa Việt", "  two spaces", "tab\tand\nnewline" })
        {
            Assert.Equal(text, tok.Decode(tok.Encode(text)));
        }

        Assert.Equal("\u2585", tok.Decode([0]));
    }

    [Property(MaxTest = 200)]
    public Property StoriesVocabularyInGguf_EncodesAsTheLlama2cTokenizer() => Prop.ForAll(
        Gen.OneOf(Gen.Choose(32, 126), Gen.Choose(32, 126), Gen.Elements(10, 9, 0xE9, 0x20AC, 0x65E5, 0x1F600))
            .ArrayOf().Select(static cs => string.Concat(cs.Select(char.ConvertFromUtf32))).ToArbitrary(),
        text =>
        {
            int[] gguf = s_stories.Value.Encode(text);
            int[] llama2c = TestData.StoriesTok.Encode(text);
            return gguf.SequenceEqual(llama2c).Label($"gguf [{string.Join(' ', gguf)}], llama2.c [{string.Join(' ', llama2c)}]")
                .And(s_stories.Value.Decode(gguf) == TestData.StoriesTok.Decode(llama2c));
        });

    [Fact]
    public void StoriesVocabularyInGguf_DecodesTheReferenceIds()
    {
        Assert.Equal([1, 403, 407, 261, 378], s_stories.Value.Encode("Once upon a time"));
        Assert.Equal(TestData.GreedyReferenceText, s_stories.Value.Decode([1, .. TestData.GreedyReferenceIds]));
    }

    [Fact]
    public void StoriesVocabulary_BackToLlama2c_IsTheSameFile()
    {
        byte[] bytes = GgufLlama.Llama2cTokenizerBytes(s_stories.Value);

        Assert.Equal(File.ReadAllBytes(TestData.StoriesTokenizer), bytes);
    }

    [Theory]
    [InlineData("rwkv", "has tokenizer model 'rwkv', which Kiln does not support yet (it reads 'llama', 'gpt2' and 'bert')")]
    [InlineData("sentencepiece", "has unknown tokenizer model 'sentencepiece'")]
    public void OtherTokenizerModels_AreNamed(string model, string expected)
    {
        GgufWriter writer = new();
        writer.Add("tokenizer.ggml.model", GgufValue.String(model));
        writer.Add("tokenizer.ggml.tokens", GgufValue.Array(new[] { "a" }));
        GgufFile file = GgufFile.Parse("other.gguf", GgufRoundTripTests.Write(writer));

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => GgufTokenizers.Load(file));

        CheckpointValidationTests.AssertOneLine(e.Message, "other.gguf", expected);
    }

    [Theory]
    [InlineData("scores", "has 3 entries in tokenizer.ggml.scores but 4 tokens")]
    [InlineData("types", "has token type 9 for token 1")]
    [InlineData("bos", "metadata key 'tokenizer.ggml.bos_token_id' is 4, outside the valid range 0..3")]
    [InlineData("model", "holds no tokenizer")]
    [InlineData("tokens-type", "metadata key 'tokenizer.ggml.tokens' is an array of i32, expected an array of string")]
    public void DamagedVocabulary_IsNamed(string damage, string expected)
    {
        GgufWriter writer = new();
        if (damage != "model")
        {
            writer.Add("tokenizer.ggml.model", GgufValue.String("llama"));
        }

        writer.Add("tokenizer.ggml.tokens", damage == "tokens-type" ? GgufValue.Array(new[] { 1, 2, 3, 4 }) : GgufValue.Array(new[] { "<unk>", "<s>", "</s>", "a" }));
        writer.Add("tokenizer.ggml.scores", GgufValue.Array(damage == "scores" ? new[] { 0f, 0f, 0f } : new[] { 0f, 0f, 0f, -1f }));
        writer.Add("tokenizer.ggml.token_type", GgufValue.Array(damage == "types" ? new[] { 2, 9, 3, 1 } : new[] { 2, 3, 3, 1 }));
        writer.Add("tokenizer.ggml.bos_token_id", GgufValue.UInt32(damage == "bos" ? 4u : 1u));
        GgufFile file = GgufFile.Parse("vocab.gguf", GgufRoundTripTests.Write(writer));

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => GgufTokenizers.Load(file));

        CheckpointValidationTests.AssertOneLine(e.Message, "vocab.gguf", expected);
    }

    // The stories260K vocabulary written as GGUF metadata (as kiln convert does) and read back.
    private static GgufFile StoriesVocabulary()
    {
        GgufWriter writer = new();
        GgufLlama.AddVocabulary(writer, TestData.StoriesTok);
        return GgufFile.Parse("stories-vocab.gguf", GgufRoundTripTests.Write(writer));
    }
}
