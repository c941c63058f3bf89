// tokenizer.json through Microsoft.ML.Tokenizers: the stories260K vocabulary written as a tokenizer.json encodes every
// text (FsCheck, with byte fallback and whitespace runs) as the llama2.c tokenizer does and decodes the reference ids to
// the reference text; the Llama 2 vocabulary (from llama.cpp's llama-spm test file) as a SentencePiece-style
// tokenizer.json and GPT-2's (from its gpt-2 test file) as a byte-level one reproduce all 46 of llama.cpp's reference
// encodings; files Kiln does not read are refused by name.

using System.Text;
using System.Text.Json.Nodes;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Models.Formats;
using Kiln.Models.Tests.Gguf;
using Kiln.Models.Tokenizers;
using Xunit;

namespace Kiln.Models.Tests.HuggingFace;

public sealed class HuggingFaceTokenizerTests
{
    private static readonly Lazy<string> s_storiesJson = new(() => HuggingFaceTokenizer.ToJson(TestData.StoriesTok));
    private static readonly Lazy<HuggingFaceTokenizer> s_stories = new(() => Parse(s_storiesJson.Value));

    // Text over the characters stories260K knows, spaces and newlines, and some it does not (byte fallback). Not '▁':
    // SentencePiece (and so a tokenizer.json) reads it as a space, llama2.c's run.c as a character of its own.
    private static readonly Arbitrary<string> s_texts = Gen.OneOf(
            Gen.Choose(97, 122), Gen.Choose(32, 126), Gen.Elements(32, 32, 10, 9, 0xE9, 0x4E2D, 0x1F600))
        .ArrayOf().Select(static cs => string.Concat(cs.Select(char.ConvertFromUtf32))).ToArbitrary();

    [Theory]
    [InlineData("Once upon a time")]
    [InlineData("")]
    [InlineData(" ")]
    [InlineData("Lily  and\tTom\n\nsaw a big, red ball!")]
    [InlineData("naïve café 中文 😀")]
    public void StoriesJson_EncodesAsLlama2c(string text)
    {
        Assert.Equal(TestData.StoriesTok.Encode(text), s_stories.Value.Encode(text));
        Assert.Equal(TestData.StoriesTok.Encode(text, bos: false), s_stories.Value.Encode(text, bos: false));
    }

    [Property(MaxTest = 200)]
    public Property StoriesJson_EncodesEveryTextAsLlama2c() => Prop.ForAll(s_texts, text =>
    {
        int[] expected = TestData.StoriesTok.Encode(text);
        int[] actual = s_stories.Value.Encode(text);
        return expected.SequenceEqual(actual).Label($"'{text}': llama2.c [{string.Join(' ', expected)}], tokenizer.json [{string.Join(' ', actual)}]");
    });

    [Fact]
    public void StoriesJson_DecodesTheReferenceIds_AndDescribesItself()
    {
        HuggingFaceTokenizer tokenizer = s_stories.Value;
        int[] ids = [1, .. TestData.GreedyReferenceIds];

        Assert.Equal(TestData.GreedyReferenceText, tokenizer.Decode(ids));
        Assert.Equal(HuggingFaceTokenizerKind.SentencePieceBpe, tokenizer.Kind);
        Assert.Equal((512, 1, 2, true, false), (tokenizer.VocabSize, tokenizer.BosId, tokenizer.EosId, tokenizer.AddBos, tokenizer.AddEos));
        Assert.Equal("é", tokenizer.Decode(tokenizer.Encode("é")));
        Assert.Contains("\"byte_fallback\": true", s_storiesJson.Value);
    }

    [Fact]
    public void LlamaVocabulary_AsTokenizerJson_ReproducesAll46ReferenceEncodings()
    {
        LlamaSpmTokenizer llama = LlamaSpmTokenizer.FromGguf(GgufFile.Open(GgufValidationTests.VocabPath));
        HuggingFaceTokenizer tokenizer = Parse(HuggingFaceTokenizer.ToJson(llama.Tokens, llama.Scores, llama.TokenTypes, llama.BosId));

        AssertReferenceEncodings(tokenizer, GgufValidationTests.VocabPath);
        Assert.Equal([1, 15043, 3186], tokenizer.Encode("Hello world"));
        Assert.Equal("Hello world", tokenizer.Decode([1, 15043, 3186]));
    }

    [Fact]
    public void Gpt2Vocabulary_AsByteLevelJson_ReproducesAll46ReferenceEncodings()
    {
        string path = ByteLevelBpeTokenizerTests.VocabPath("ggml-vocab-gpt-2.gguf");
        HuggingFaceTokenizer tokenizer = Parse(ByteLevelJson(GgufFile.Open(path)));

        Assert.Equal(HuggingFaceTokenizerKind.ByteLevelBpe, tokenizer.Kind);
        AssertReferenceEncodings(tokenizer, path);
        Assert.Equal([15496, 995], tokenizer.Encode("Hello world"));
        Assert.Equal(" Führer 😀 <|endoftext|>", tokenizer.Decode(tokenizer.Encode(" Führer 😀 <|endoftext|>")) + "<|endoftext|>");
    }

    [Theory]
    [InlineData("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "has a WordPiece model")]
    [InlineData("{\"version\": \"1.0\"}", "has no \"model\" object")]
    [InlineData("{\"model\": ", "is not valid JSON")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 2}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "has no token of id 1")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "has merge \"a\", not two pieces")]
    [InlineData("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}", "neither ByteLevel nor '▁' (Metaspace)")]
    public void UnreadableFiles_AreNamed(string json, string expected)
    {
        ModelFormatException error = Assert.Throws<ModelFormatException>(() => Parse(json));
        Assert.Contains(expected, error.Message);
        Assert.StartsWith("tokenizer.json: ", error.Message);
    }

    [Fact]
    public void OtherNormalizers_AreRefused()
    {
        JsonObject root = JsonNode.Parse(s_storiesJson.Value)!.AsObject();
        root["normalizer"]!["normalizers"]!.AsArray().Add(new JsonObject { ["type"] = "Lowercase" });

        ModelFormatException error = Assert.Throws<ModelFormatException>(() => Parse(root.ToJsonString()));
        Assert.Contains("has a Lowercase normalizer", error.Message);
    }

    [Fact]
    public void TokenizerConfig_DecidesBosAndEos()
    {
        byte[] json = Encoding.UTF8.GetBytes(s_storiesJson.Value);
        byte[] config = "{\"add_bos_token\": false, \"add_eos_token\": true, \"eos_token\": {\"content\": \"</s>\"}}"u8.ToArray();

        HuggingFaceTokenizer tokenizer = HuggingFaceTokenizer.Parse("tokenizer.json", json, config);

        Assert.Equal([.. TestData.StoriesTok.Encode("Hi there", bos: false), 2], tokenizer.Encode("Hi there"));
    }

    internal static HuggingFaceTokenizer Parse(string json) => HuggingFaceTokenizer.Parse("tokenizer.json", Encoding.UTF8.GetBytes(json));

    private static void AssertReferenceEncodings(HuggingFaceTokenizer tokenizer, string vocabPath)
    {
        string[] texts = File.ReadAllText(vocabPath + ".inp").Split("\n__ggml_vocab_test__\n")[..^1];
        string[] lines = File.ReadAllText(vocabPath + ".out").Split('\n')[..^1];
        Assert.Equal(46, texts.Length);

        List<string> failures = [];
        for (int i = 0; i < texts.Length; i++)
        {
            int[] expected = [.. lines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse)];
            int[] actual = tokenizer.Encode(texts[i], bos: false);
            if (!actual.SequenceEqual(expected))
            {
                failures.Add($"#{i} {texts[i]}: expected [{string.Join(' ', expected)}], got [{string.Join(' ', actual)}]");
            }
        }

        Assert.True(failures.Count == 0, string.Join('\n', failures));
    }

    // A byte-level tokenizer.json (as transformers writes GPT-2's) from a GGUF gpt2 vocabulary: its tokens, merges and
    // control tokens, the ByteLevel pre-tokenizer and decoder, no BOS.
    private static string ByteLevelJson(GgufFile file)
    {
        string[] tokens = file.GetArray<string>("tokenizer.ggml.tokens");
        string[] merges = file.GetArray<string>("tokenizer.ggml.merges");
        int[] types = file.GetArray<int>("tokenizer.ggml.token_type");
        JsonObject vocab = [];
        for (int id = 0; id < tokens.Length; id++)
        {
            vocab[tokens[id]] = id;
        }

        JsonArray added = [];
        for (int id = 0; id < tokens.Length; id++)
        {
            if (types[id] == (int)GgufTokenType.Control)
            {
                added.Add(new JsonObject { ["id"] = id, ["content"] = tokens[id], ["special"] = true });
            }
        }

        JsonObject root = new()
        {
            ["version"] = "1.0",
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["post_processor"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = false, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["vocab"] = vocab,
                ["merges"] = new JsonArray([.. merges.Select(static m => JsonValue.Create(m))]),
            },
        };
        return root.ToJsonString();
    }
}
