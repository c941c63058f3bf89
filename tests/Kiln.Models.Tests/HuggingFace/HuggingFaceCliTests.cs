// Hugging Face folders on the command line: kiln convert writes stories260K as a folder (one file, three shards, f16),
// generate --temp 0 on it prints the llama2.c reference text with the folder's tokenizer.json, info and tokenize read
// it, bench decode runs it, and the folder converts back to GGUF and llama2.c (the shipped version-1 file byte for byte,
// a tok512.bin with the same pieces and encodings); the errors: no tokenizer.json, a non-empty output folder, --shards on a file output.

using Kiln.Cli;
using Kiln.Models.Formats;
using Xunit;

namespace Kiln.Models.Tests.HuggingFace;

public sealed class HuggingFaceCliTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Theory]
    [InlineData(new string[0], "1 file", "float32")]
    [InlineData(new[] { "--shards", "3" }, "3 shards", "float32")]
    [InlineData(new[] { "--dtype", "bf16" }, "1 file", "bfloat16")]
    public void ConvertToFolder_ThenGenerate_PrintsTheReferenceText(string[] flags, string files, string dtype)
    {
        string folder = _temp.File("stories-hf");

        (int convert, _, string convertErr) = Run(["convert", "-m", TestData.StoriesModel, "-o", folder, "--format", "hf", .. flags]);
        (int code, string stdout, string stderr) = Run("generate", "-m", folder, "-p", "Once upon a time", "-n", "60", "--temp", "0");

        Assert.True(convert == 0, convertErr);
        Assert.Contains("Hugging Face folder, config.json + ", convertErr);
        Assert.True(File.Exists(Path.Combine(folder, "tokenizer.json")));
        Assert.True(code == 0, stderr);
        Assert.Contains($"Hugging Face folder (LlamaForCausalLM, {files}, {dtype})", stderr);
        if (dtype == "float32")
        {
            Assert.Equal(TestData.GreedyReferenceText + "\n", stdout);
        }
        else
        {
            Assert.StartsWith("Once upon a time, there was a little girl", stdout);
        }
    }

    [Fact]
    public void Folder_InfoTokenizeAndBench()
    {
        string folder = _temp.File("stories-hf/");
        Assert.Equal(0, Run("convert", "-m", TestData.StoriesModel, "-o", folder).Code);

        (int info, string infoOut, _) = Run("info", "-m", folder);
        (int tokenize, string tokens, string tokenizeErr) = Run("tokenize", "-m", folder, "Once upon a time");
        (int bench, string benchOut, string benchErr) = Run("bench", "decode", "-m", folder, "--context", "16", "--runs", "1");

        Assert.Equal(0, info);
        Assert.Contains("format: Hugging Face folder (LlamaForCausalLM; model.safetensors", infoOut);
        Assert.Contains("tokenizer: tokenizer.json (SentencePiece-style BPE, 512 tokens)", infoOut);
        Assert.Contains("\"rope_layout\": \"half_split\"", infoOut);
        Assert.Contains("parameters: 260,032", infoOut);
        Assert.True(tokenize == 0, tokenizeErr);
        Assert.Equal(string.Join(' ', TestData.StoriesTok.Encode("Once upon a time")) + "\n", tokens);
        Assert.True(bench == 0, benchErr);
        Assert.Contains("context 16", benchOut);
    }

    [Fact]
    public void FolderBackToGgufAndLlama2c_GivesTheReferenceText_AndTheShippedFiles()
    {
        string folder = _temp.File("hf");
        string gguf = _temp.File("back.gguf");
        Directory.CreateDirectory(_temp.File("bin"));
        string bin = Path.Combine(_temp.File("bin"), "stories.bin");
        Assert.Equal(0, Run("convert", "-m", TestData.StoriesModel, "-o", folder, "--format", "hf", "--shards", "2").Code);

        (int toGguf, _, string ggufErr) = Run("convert", "-m", folder, "-o", gguf);
        (int toBin, _, string binErr) = Run("convert", "-m", folder, "-o", bin);
        (int generate, string stdout, _) = Run("generate", "-m", gguf, "-p", "Once upon a time", "-n", "60", "--temp", "0");

        Assert.True(toGguf == 0, ggufErr);
        Assert.Contains("RoPE rows adjacent", ggufErr);
        Assert.Contains("vocabulary of 512 tokens", ggufErr);
        Assert.Equal(0, generate);
        Assert.Equal(TestData.GreedyReferenceText + "\n", stdout);
        Assert.True(toBin == 0, binErr);
        Assert.Equal(File.ReadAllBytes(TestData.StoriesModelV1), File.ReadAllBytes(bin));

        // The tokenizer comes back with the same pieces and merge order (scores from merge ranks, not the original values).
        Tokenizers.Llama2cTokenizer back = Tokenizers.Llama2cTokenizer.Load(Path.Combine(_temp.File("bin"), "tok512.bin"), 512);
        Assert.All(Enumerable.Range(0, 512), id => Assert.Equal(TestData.StoriesTok.Piece(id).ToArray(), back.Piece(id).ToArray()));
        foreach (string text in new[] { "Once upon a time", "Lily  and\tTom saw a big, red ball!\n", "café 中文" })
        {
            Assert.Equal(TestData.StoriesTok.Encode(text), back.Encode(text));
        }
    }

    [Fact]
    public void FolderWithoutTokenizerJson_NeedsTokenizer()
    {
        string folder = _temp.File("hf");
        Assert.Equal(0, Run("convert", "-m", TestData.StoriesModel, "-o", folder, "--format", "hf").Code);
        File.Delete(Path.Combine(folder, "tokenizer.json"));

        (int code, _, string stderr) = Run("generate", "-m", folder, "-n", "4");
        (int withFlag, string stdout, _) = Run("generate", "-m", folder, "--tokenizer", TestData.StoriesTokenizer, "-p", "Once upon a time", "-n", "60", "--temp", "0");

        CliTests.AssertError(code, stderr, CliException.FailureExitCode, "has no tokenizer.json; pass the model's tokenizer with --tokenizer");
        Assert.Equal(0, withFlag);
        Assert.Equal(TestData.GreedyReferenceText + "\n", stdout);
    }

    [Fact]
    public void ConvertErrors_AreOneLine()
    {
        string folder = _temp.File("hf");
        Assert.Equal(0, Run("convert", "-m", TestData.StoriesModel, "-o", folder, "--format", "hf").Code);

        (int notEmpty, _, string notEmptyErr) = Run("convert", "-m", TestData.StoriesModel, "-o", folder, "--format", "hf");
        (int shards, _, string shardsErr) = Run("convert", "-m", TestData.StoriesModel, "-o", _temp.File("x.gguf"), "--shards", "2");
        (int badFormat, _, string badFormatErr) = Run("convert", "-m", TestData.StoriesModel, "-o", _temp.File("x"), "--format", "onnx");
        File.WriteAllText(Path.Combine(folder, "config.json"), "{\"architectures\": [\"LlamaForCausalLM\"]}");
        (int broken, _, string brokenErr) = Run("info", "-m", folder);

        CliTests.AssertError(notEmpty, notEmptyErr, CliException.UsageExitCode, "the folder is not empty");
        CliTests.AssertError(shards, shardsErr, CliException.UsageExitCode, "--shards: applies to Hugging Face folder outputs");
        CliTests.AssertError(badFormat, badFormatErr, CliException.UsageExitCode, "--format onnx: unknown container");
        CliTests.AssertError(broken, brokenErr, CliException.FailureExitCode, "config.json: has no hidden_size");
    }

    private (int Code, string Stdout, string Stderr) Run(params string[] args) =>
        CliTests.Run(new CliEnvironment(null, _temp.Path), args);
}
