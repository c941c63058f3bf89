// `kiln convert` and GGUF files in generate/info/tokenize: stories260K → GGUF (f32, f16) → generate --temp 0 prints the
// llama2.c reference text, GGUF → llama2.c → the same text (and the shipped version-1 file and tok512.bin byte for
// byte), tokenize on the vocabulary-only llama-spm file, info on GGUF files, and the conversion errors.

using Kiln.Cli;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Kiln.Models.Tokenizers;
using Xunit;

namespace Kiln.Models.Tests.Gguf;

public sealed class GgufCliTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Theory]
    [InlineData("f32")]
    [InlineData("f16")]
    public void ConvertToGguf_ThenGenerate_PrintsTheReferenceText(string dtype)
    {
        string gguf = _temp.File($"stories-{dtype}.gguf");

        (int convert, _, string convertErr) = Run("convert", "-m", TestData.StoriesModel, "-o", gguf, "--dtype", dtype);
        (int code, string stdout, string stderr) = Run("generate", "-m", gguf, "-p", "Once upon a time", "-n", "60", "--temp", "0");

        Assert.Equal(0, convert);
        Assert.Contains($"GGUF v3, {dtype.ToUpperInvariant()} matrices, 47 tensors", convertErr);
        Assert.Equal(0, code);
        Assert.Equal(TestData.GreedyReferenceText + "\n", stdout);
        Assert.Contains($"GGUF v3 {dtype.ToUpperInvariant()}, 260,032 parameters", stderr);
    }

    [Fact]
    public void GgufBackToLlama2c_GeneratesTheSameText_AndIsTheShippedFile()
    {
        string gguf = _temp.File("stories.gguf");
        Directory.CreateDirectory(_temp.File("back"));
        string bin = Path.Combine(_temp.File("back"), "stories.bin");
        Assert.Equal(0, Run("convert", "-m", TestData.StoriesModel, "-o", gguf).Code);

        (int code, _, string stderr) = Run("convert", "-m", gguf, "-o", bin);
        (int generate, string stdout, _) = Run("generate", "-m", bin, "-p", "Once upon a time", "-n", "60", "--temp", "0");

        Assert.Equal(0, code);
        Assert.Contains("llama2.c version 1, float32", stderr);
        Assert.Equal(0, generate);
        Assert.Equal(TestData.GreedyReferenceText + "\n", stdout);
        Assert.Equal(File.ReadAllBytes(TestData.StoriesModelV1), File.ReadAllBytes(bin));
        Assert.Equal(File.ReadAllBytes(TestData.StoriesTokenizer), File.ReadAllBytes(Path.Combine(_temp.File("back"), "tok512.bin")));
    }

    [Theory]
    [InlineData("Hello world", "1 15043 3186")]
    [InlineData(" Hello World!", "1 29871 15043 2787 29991")]
    [InlineData("", "1")]
    public void Tokenize_OnTheVocabularyOnlyLlamaFile(string text, string expected)
    {
        (int code, string stdout, string stderr) = Run("tokenize", "-m", GgufValidationTests.VocabPath, text);

        Assert.Equal(0, code);
        Assert.Equal(expected + "\n", stdout);
        Assert.Equal(string.Empty, stderr);
    }

    [Theory]
    [InlineData("ggml-vocab-gpt-2.gguf", new string[0], "Hello world", "15496 995")]
    [InlineData("ggml-vocab-gpt-2.gguf", new[] { "--no-bos" }, " Hello World!", "18435 2159 0")]
    [InlineData("ggml-vocab-deepseek-llm.gguf", new string[0], "Führer", "100000 37 100014 71 6245")]
    [InlineData("ggml-vocab-deepseek-llm.gguf", new[] { "--no-bos" }, "Führer", "37 100014 71 6245")]
    [InlineData("ggml-vocab-llama-spm.gguf", new[] { "--no-bos" }, "Hello world", "15043 3186")]
    public void Tokenize_OnTheVocabularyOnlyBpeFiles(string file, string[] flags, string text, string expected)
    {
        (int code, string stdout, string stderr) = Run(["tokenize", "-m", ByteLevelBpeTokenizerTests.VocabPath(file), .. flags, text]);

        Assert.Equal(0, code);
        Assert.Equal(expected + "\n", stdout);
        Assert.Equal(string.Empty, stderr);
    }

    [Fact]
    public void BenchTokenize_ReportsSpeedAndAnExactRoundTrip()
    {
        (int code, string stdout, string stderr) = Run("bench", "tokenize", "-m", ByteLevelBpeTokenizerTests.VocabPath("ggml-vocab-deepseek-llm.gguf"), "--repeat", "2", "--runs", "1", "--json");
        (int bad, _, string badErr) = Run("bench", "tokenize", "-m", ByteLevelBpeTokenizerTests.VocabPath("ggml-vocab-gpt-2.gguf"), "--repeat", "0");

        Assert.Equal(0, code);
        Assert.Equal(string.Empty, stderr);
        Assert.Contains("\"bench\":\"tokenize\",\"model\":\"ggml-vocab-deepseek-llm.gguf\"", stdout);
        Assert.Contains("\"round_trip\":true", stdout);
        CliTests.AssertError(bad, badErr, 2, "--repeat 0 --runs 3: repeat must be 1..1000000 and runs at least 1");
    }

    [Fact]
    public void Tokenize_GgufModelWithALlama2cTokenizerFlag_UsesTheFlag()
    {
        string gguf = _temp.File("stories.gguf");
        Assert.Equal(0, Run("convert", "-m", TestData.StoriesModel, "-o", gguf).Code);

        (int code, string stdout, _) = Run("tokenize", "-m", gguf, "--tokenizer", TestData.StoriesTokenizer, "Once upon a time");

        Assert.Equal(0, code);
        Assert.Equal("1 403 407 261 378\n", stdout);
    }

    [Fact]
    public void Info_OnGgufFiles()
    {
        string gguf = _temp.File("stories.gguf");
        Assert.Equal(0, Run("convert", "-m", TestData.StoriesModel, "-o", gguf, "--dtype", "f16").Code);

        (int code, string stdout, _) = Run("info", "-m", gguf);
        (int vocabCode, string vocabOut, _) = Run("info", "-m", GgufValidationTests.VocabPath, "--verbose");

        Assert.Equal(0, code);
        Assert.Contains("format: GGUF v3 (535,712 bytes, alignment 32, 23 metadata keys, 47 tensors)", stdout);
        Assert.Contains("tensors: 47 (F32 11, F16 36), 260,032 elements", stdout);
        Assert.Contains("\"n_kv_heads\": 4", stdout);
        Assert.Contains("parameters: 260,032", stdout);
        Assert.Equal(0, vocabCode);
        Assert.Contains("tokenizer: llama (32,000 tokens)", vocabOut);
        Assert.Contains("runnable: no (has no tensor 'token_embd.weight'", vocabOut);
        Assert.Contains("  tokenizer.ggml.tokens (array of string): [32000 × string]", vocabOut);
    }

    /// <summary>A Q8_0 GGUF model (dims multiples of 32, the stories vocabulary) runs in generate, info and bench decode;
    /// generate prints the greedy text of the same weights run in process.</summary>
    [Fact]
    public void Q8_0Model_RunsInGenerateInfoAndBench()
    {
        string gguf = _temp.File("q8.gguf");
        using (LlamaWeights original = CheckpointFiles.RandomWeights(GgufLlamaTests.Q8Config(), seed: 12))
        {
            GgufLlama.Write(gguf, original, TestData.StoriesTok, GgufTensorType.Q8_0);
        }

        (int code, string stdout, string stderr) = Run("generate", "-m", gguf, "-p", "Once upon a time", "-n", "12", "--temp", "0");
        (int infoCode, string info, _) = Run("info", "-m", gguf);
        (int benchCode, string bench, string benchErr) = Run("bench", "decode", "-m", gguf, "-c", "32", "--runs", "1", "--json");

        GgufFile file = GgufFile.Open(gguf);
        using LlamaWeights weights = GgufLlama.Load(file);
        using IInferenceSession session = InferenceSessions.Default(weights, new SessionOptions { ContextLength = 64 });
        GenerationResult expected = new TextGenerator(session, GgufTokenizers.Load(file), new Sampler(512, SamplerOptions.Greedy)).Generate("Once upon a time", maxNewTokens: 12);
        Assert.True(code == 0, stderr);
        Assert.Equal("Once upon a time" + expected.Text, stdout.TrimEnd('\n'));
        Assert.Equal(0, infoCode);
        Assert.Contains("Q8_0", info);
        Assert.True(benchCode == 0, benchErr);
        Assert.Contains("decode_tok_s", bench);
    }

    [Theory]
    [InlineData("q8_0", 2, "--dtype q8_0: Tensor 'blk.0.ffn_down.weight' has rows of 172 values, not a multiple of the 32-value Q8_0 block")]
    [InlineData("int4", 2, "--dtype int4: unknown type; use f32, f16, bf16 or q8_0")]
    public void ConvertToGguf_BadDType_IsAUsageError(string dtype, int exitCode, string expected)
    {
        string output = _temp.File("x.gguf");

        (int code, string stdout, string stderr) = Run("convert", "-m", TestData.StoriesModel, "-o", output, "--dtype", dtype);

        CliTests.AssertError(code, stderr, exitCode, expected);
        Assert.Equal(string.Empty, stdout);
        Assert.False(File.Exists(output));
    }

    [Fact]
    public void Convert_Errors_AreOneLine()
    {
        string gguf = _temp.File("stories.gguf");
        Assert.Equal(0, Run("convert", "-m", TestData.StoriesModel, "-o", gguf).Code);

        (int same, _, string sameErr) = Run("convert", "-m", gguf, "-o", gguf);
        CliTests.AssertError(same, sameErr, 2, "is the input model itself");

        (int toGguf, _, string toGgufErr) = Run("convert", "-m", gguf, "-o", _temp.File("again.gguf"));
        CliTests.AssertError(toGguf, toGgufErr, 2, "GGUF → GGUF is not supported");

        (int dtype, _, string dtypeErr) = Run("convert", "-m", gguf, "-o", _temp.File("x.bin"), "--dtype", "f16");
        CliTests.AssertError(dtype, dtypeErr, 2, "llama2.c checkpoints hold float32 only");

        (int noOutput, _, string noOutputErr) = Run("convert", "-m", gguf);
        Assert.Equal(2, noOutput);
        Assert.Contains("--output", noOutputErr);
    }

    [Fact]
    public void Generate_OnAVocabularyOnlyFile_SaysWhatIsMissing()
    {
        (int code, string stdout, string stderr) = Run("generate", "-m", GgufValidationTests.VocabPath, "-n", "1");

        CliTests.AssertError(code, stderr, 1, "has no tensor 'token_embd.weight'");
        Assert.Equal(string.Empty, stdout);
    }

    [Fact]
    public void Generate_TruncatedGguf_IsNamed()
    {
        string gguf = _temp.File("stories.gguf");
        Assert.Equal(0, Run("convert", "-m", TestData.StoriesModel, "-o", gguf).Code);
        byte[] bytes = File.ReadAllBytes(gguf);
        File.WriteAllBytes(gguf, bytes[..(bytes.Length / 2)]);

        (int code, _, string stderr) = Run("generate", "-m", gguf, "-n", "1");

        CliTests.AssertError(code, stderr, 1, "past the end of the file");
    }

    private (int Code, string Stdout, string Stderr) Run(params string[] args) =>
        CliTests.Run(new CliEnvironment(null, _temp.Path), args);
}
