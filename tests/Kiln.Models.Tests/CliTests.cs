// The `kiln` command line, run in-process through KilnCli.Run with captured writers and a controlled
// environment: the reference generation on stdout, tokenize/info/bench output, default model locations, and
// every bad input as a one-line error with the right exit code and no stack trace.

using System.CommandLine;
using System.Text.Json;
using Kiln.Cli;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class CliTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Generate_Greedy_PrintsTheReferenceText()
    {
        (int code, string stdout, string stderr) = Run("generate", "-m", TestData.StoriesModel, "-p", "Once upon a time", "-n", "60", "--temp", "0");

        Assert.Equal(0, code);
        Assert.Equal(TestData.GreedyReferenceText + "\n", stdout);
        Assert.Contains("prefill 5 tokens at", stderr);
        Assert.Contains("decode 59 tokens at", stderr);
        Assert.Contains("greedy", stderr);
    }

    [Fact]
    public void Generate_OneToken_CountsInTheSingular()
    {
        // An empty prompt is BOS alone, and -n 1 takes the one new token from the prefill's logits.
        (int code, _, string stderr) = Run("generate", "-m", TestData.StoriesModel, "-p", "", "-n", "1", "--temp", "0");

        Assert.True(code == 0, stderr);
        Assert.Contains("prefill 1 token at", stderr);
        Assert.Contains("decode 0 tokens at", stderr);
        Assert.Contains("; 1 new token (", stderr);
    }

    [Fact]
    public void Help_EveryValueOption_HasAPlaceholder()
    {
        using StringWriter sink = new();
        RootCommand root = KilnCli.BuildRoot(new CliContext(sink, sink, new CliEnvironment(null, _temp.Path)));
        List<string> lower = [];
        Visit(root, string.Empty);
        Assert.True(lower.Count == 0, string.Join("; ", lower));

        void Visit(Command command, string path)
        {
            // A value's placeholder is a word in capitals (<FILE>) or the list of its literal choices (<f32|f16>),
            // never the option's own name in lower case, which is what the parser prints when none is set.
            foreach (Option option in command.Options.Where(o => o.ValueType != typeof(bool) && o.Arity.MaximumNumberOfValues > 0))
            {
                if (option.HelpName is not { Length: > 0 } name || name == option.Name.TrimStart('-'))
                {
                    lower.Add($"{path} {option.Name} <{option.HelpName}>");
                }
            }

            foreach (Command sub in command.Subcommands)
            {
                Visit(sub, $"{path} {sub.Name}");
            }
        }
    }

    [Fact]
    public void Generate_Version1File_PrintsTheSameText()
    {
        (int code, string stdout, _) = Run("generate", "-m", TestData.StoriesModelV1, "-p", "Once upon a time", "-n", "60", "--temp", "0");

        Assert.Equal(0, code);
        Assert.Equal(TestData.GreedyReferenceText + "\n", stdout);
    }

    [Fact]
    public void Generate_SameSeed_SameText()
    {
        string[] args = ["generate", "-m", TestData.StoriesModel, "-p", "Tom", "-n", "40", "--seed", "17", "--top-k", "20", "--top-p", "0.9", "--temp", "1"];

        (int code1, string first, string stderr) = Run(args);
        (int code2, string second, _) = Run(args);

        Assert.Equal((0, 0), (code1, code2));
        Assert.Equal(first, second);
        Assert.StartsWith("Tom", first);
        Assert.Contains("seed 17", stderr);
    }

    [Fact]
    public void Generate_MoreTokensThanTheContextHolds_StopsWithANote()
    {
        (int code, string stdout, string stderr) = Run("generate", "-m", TestData.AidreamsModel, "-n", "1000", "--temp", "0");

        Assert.Equal(0, code);
        Assert.True(stdout.Length > 100);
        Assert.Contains("kiln: context full: all 128 positions are used", stderr);
        Assert.DoesNotContain("error", stderr);
    }

    [Fact]
    public void Tokenize_PrintsIdsWithBos_OnOneLine()
    {
        (int code, string stdout, string stderr) = Run("tokenize", "-m", TestData.StoriesModel, "Once upon a time");

        Assert.Equal(0, code);
        Assert.Equal("1 403 407 261 378\n", stdout);
        Assert.Equal(string.Empty, stderr);
    }

    [Fact]
    public void Info_PrintsConfigAndParameterCount()
    {
        (int code, string stdout, _) = Run("info", "-m", TestData.StoriesModel);

        Assert.Equal(0, code);
        Assert.Contains("format: llama2.c legacy", stdout);
        Assert.Contains("\"n_kv_heads\": 4", stdout);
        Assert.Contains("\"seq_len\": 512", stdout);
        Assert.Contains("parameters: 260,032", stdout);
    }

    [Fact]
    public void BenchDecode_Json_IsOneObjectOnOneLine()
    {
        (int code, string stdout, _) = Run("bench", "decode", "-m", TestData.StoriesModel, "-t", "1", "--json", "--context", "48", "--runs", "1");

        Assert.Equal(0, code);
        string line = Assert.Single(stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        using JsonDocument json = JsonDocument.Parse(line);
        JsonElement root = json.RootElement;
        Assert.Equal("stories260K", root.GetProperty("model").GetString());
        Assert.Equal(1, root.GetProperty("threads").GetInt32());
        Assert.Equal(48, root.GetProperty("context").GetInt32());
        Assert.True(root.GetProperty("prefill_tok_s").GetDouble() > 0);
        Assert.True(root.GetProperty("decode_tok_s").GetDouble() > 0);
    }

    [Fact]
    public void DefaultModel_ComesFromKilnModel()
    {
        (int code, string stdout, _) = Run(new CliEnvironment(TestData.StoriesModel, _temp.Path), "tokenize", "Once upon a time");

        Assert.Equal(0, code);
        Assert.Equal("1 403 407 261 378\n", stdout);
    }

    [Fact]
    public void DefaultModel_ComesFromTheUserCache()
    {
        string directory = Path.Combine(_temp.Path, ".cache", "kiln", "models", "stories260K");
        Directory.CreateDirectory(directory);
        File.CreateSymbolicLink(Path.Combine(directory, "stories260K.bin"), TestData.StoriesModel);
        File.CreateSymbolicLink(Path.Combine(directory, "tok512.bin"), TestData.StoriesTokenizer);

        (int code, string stdout, _) = Run(new CliEnvironment(null, _temp.Path), "generate", "-p", "Once upon a time", "-n", "60", "--temp", "0");

        Assert.Equal(0, code);
        Assert.Equal(TestData.GreedyReferenceText + "\n", stdout);
    }

    [Fact]
    public void NoModelAnywhere_SaysWhereToGetOne()
    {
        (int code, string stdout, string stderr) = Run(new CliEnvironment(null, _temp.Path), "generate");

        AssertError(code, stderr, 1, "no model given");
        Assert.Contains("-m PATH", stderr);
        Assert.Contains("karpathy/tinyllamas", stderr);
        Assert.Equal(string.Empty, stdout);
    }

    [Fact]
    public void NoModel_HomeThatDoesNotExist_IsNamed()
    {
        string home = Path.Combine(_temp.Path, "no-such-home");

        (int code, _, string stderr) = Run(new CliEnvironment(null, home), "generate");

        AssertError(code, stderr, 1, Path.Combine(home, ".cache", "kiln", "models", "stories260K", "stories260K.bin") + " does not exist");
    }

    [Fact]
    public void KilnModel_PointingNowhere_IsNamed()
    {
        string missing = _temp.File("gone.bin");

        (int code, _, string stderr) = Run(new CliEnvironment(missing, _temp.Path), "info");

        AssertError(code, stderr, 1, $"KILN_MODEL is '{missing}'");
    }

    [Theory]
    [InlineData(2, "--temp -1", "generate", "--temp", "-1")]
    [InlineData(2, "--temp NaN", "generate", "--temp", "NaN")]
    [InlineData(2, "--top-p 0", "generate", "--top-p", "0")]
    [InlineData(2, "--top-p 1.5", "generate", "--top-p", "1.5")]
    [InlineData(2, "--top-k -1", "generate", "--top-k", "-1")]
    [InlineData(2, "-t 0", "generate", "-t", "0")]
    [InlineData(2, "-t -3", "bench", "decode", "-t", "-3")]
    [InlineData(2, "-n -2", "generate", "-n", "-2")]
    [InlineData(2, "--device tpu", "generate", "--device", "tpu")]
    [InlineData(2, "--device ilgpu-cpu:3x4: unknown device 'ilgpu-cpu:3x4'; the simulated GPU is", "generate", "--device", "ilgpu-cpu:3x4")]
    [InlineData(2, "--device ilgpu-cpu:4x8: unknown device", "generate", "--device", "ilgpu-cpu:4x8")]
    [InlineData(2, "--device ilgpu-cpuz: unknown device", "bench", "decode", "--device", "ilgpu-cpuz")]
    [InlineData(2, "--context 513", "bench", "decode", "--context", "513")]
    [InlineData(2, "--device tpu", "bench", "indexcache", "--device", "tpu")]
    [InlineData(2, "-t 0", "bench", "indexcache", "-t", "0")]
    [InlineData(2, "--m 0", "bench", "gemm", "--m", "0")]
    [InlineData(2, "--k -5", "bench", "gemm", "--k", "-5")]
    [InlineData(2, "'--bogus'", "generate", "--bogus")]
    [InlineData(2, "'abc' for option '--temp' as a number", "generate", "--temp", "abc")]
    [InlineData(2, "'-5' for option '--seed' as a whole number >= 0", "generate", "-s", "-5")]
    [InlineData(2, "Unrecognized command or argument 'frobnicate'", "frobnicate")]
    [InlineData(2, "Required command", "bench")]
    [InlineData(2, "Option '--weights' is required; see 'kiln check-layer mamba3 --help'", "check-layer", "mamba3", "--config", "c.json")]
    [InlineData(2, "see 'kiln bench kv --help'", "bench", "kv", "--bogus")]
    public void BadFlags_AreOneLineErrors(int exitCode, string expected, params string[] args)
    {
        // A valid model, so that only the flag under test is wrong (bench gemm, bench indexcache and check-layer take
        // no model).
        bool noModel = args is ["bench", "gemm" or "indexcache", ..] or ["check-layer", ..];
        (int code, string stdout, string stderr) = Run(noModel ? args : [.. args, "-m", TestData.StoriesModel]);

        AssertError(code, stderr, exitCode, expected);
        Assert.Equal(string.Empty, stdout);
    }

    [Theory]
    [InlineData("generate")]
    [InlineData("tokenize")]
    [InlineData("info")]
    [InlineData("bench")]
    public void MissingModelFile_IsNamed(string command)
    {
        string missing = _temp.File("missing.bin");
        string[] args = command switch
        {
            "tokenize" => ["tokenize", "-m", missing, "hi"],
            "bench" => ["bench", "decode", "-m", missing],
            _ => [command, "-m", missing],
        };

        (int code, _, string stderr) = Run(args);

        AssertError(code, stderr, 1, $"model file '{missing}' does not exist");
    }

    [Fact]
    public void TruncatedCheckpoint_IsNamed()
    {
        string path = _temp.File("stories260K.bin");
        byte[] bytes = File.ReadAllBytes(TestData.StoriesModel);
        File.WriteAllBytes(path, bytes.AsSpan(0, bytes.Length / 2).ToArray());

        (int code, _, string stderr) = Run("generate", "-m", path, "--tokenizer", TestData.StoriesTokenizer);

        AssertError(code, stderr, 1, path);
        Assert.Contains("truncated", stderr);
    }

    [Theory]
    [InlineData(0, 0, "dim = 0")]
    [InlineData(1, -172, "hidden_dim = -172")]
    [InlineData(5, 1 << 30, "vocab_size = 1073741824")]
    [InlineData(2, 1 << 20, "n_layers = 1048576")]
    public void BadHeaderSizes_AreNamed(int field, int value, string expected)
    {
        int[] fields = [64, 172, 5, 8, 4, 512, 512];
        fields[field] = value;
        string path = _temp.File("bad.bin");
        CheckpointFiles.WriteLegacyHeader(path, fields, 4096);

        (int code, _, string stderr) = Run("generate", "-m", path, "--tokenizer", TestData.StoriesTokenizer);

        AssertError(code, stderr, 1, expected);
        Assert.Contains(path, stderr);
    }

    [Fact]
    public void TokenizerOfAnotherVocabularySize_IsNamed()
    {
        string tokenizer = _temp.File("tok500.bin");
        CheckpointFiles.WriteTokenizer(tokenizer, CheckpointFiles.StoriesRecords(500));

        (int code, _, string stderr) = Run("generate", "-m", TestData.StoriesModel, "--tokenizer", tokenizer);

        AssertError(code, stderr, 1, $"tokenizer file '{tokenizer}'");
        Assert.Contains("tokenizer that came with the model", stderr);
    }

    [Fact]
    public void NoTokenizerNextToTheModel_AsksForTheFlag()
    {
        string model = _temp.File("alone.bin");
        File.CreateSymbolicLink(model, TestData.StoriesModel);

        (int code, _, string stderr) = Run("tokenize", "-m", model, "hi");

        AssertError(code, stderr, 1, "no tokenizer next to the model");
        Assert.Contains("--tokenizer", stderr);
        Assert.Contains(_temp.File("tok512.bin"), stderr);
    }

    [Fact]
    public void PromptLongerThanTheContext_NamesTheFlag()
    {
        string prompt = string.Join(' ', Enumerable.Repeat("dreams of glass and quiet vectors", 40));

        (int code, string stdout, string stderr) = Run("generate", "-m", TestData.AidreamsModel, "-p", prompt);

        AssertError(code, stderr, 2, "-p: the prompt is");
        Assert.Contains("context holds 128", stderr);
        Assert.Equal(string.Empty, stdout);
    }

    [Fact]
    public void Verbose_AddsTheStackTrace()
    {
        (int code, _, string stderr) = Run("info", "-m", _temp.File("missing.bin"), "--verbose");

        Assert.Equal(1, code);
        Assert.StartsWith("kiln: error: model file", stderr);
        Assert.Contains("ModelFormatException", stderr);
        Assert.Contains("   at ", stderr);
    }

    [Fact]
    public void Help_ListsTheCommands()
    {
        (int code, string stdout, _) = Run("--help");

        Assert.Equal(0, code);
        foreach (string command in new[] { "generate", "tokenize", "info", "bench" })
        {
            Assert.Contains(command, stdout);
        }
    }

    [Fact]
    public void DeviceCuda_WithoutAGpu_IsAOneLineError()
    {
        // CI machines have no CUDA device; where one exists this case does not apply.
        using (Kiln.Devices.IlgpuDevice? gpu = Kiln.Devices.IlgpuDevice.TryCreateCuda())
        {
            if (gpu is not null)
            {
                return;
            }
        }

        (int code, string stdout, string stderr) = Run("generate", "-m", TestData.StoriesModel, "--device", "cuda", "-n", "4");

        AssertError(code, stderr, 1, "--device cuda: no CUDA device was found on this machine; use --device cpu or auto");
        Assert.Equal(string.Empty, stdout);
    }

    [Fact]
    public void DeviceAuto_SaysWhichDeviceItChose()
    {
        (int code, string stdout, string stderr) = Run("bench", "decode", "-m", TestData.StoriesModel, "--device", "auto", "-t", "1", "--context", "8", "--runs", "1");

        Assert.Equal(0, code);
        string line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Matches(@"^kiln: --device auto: using (cuda \(.+\): a CUDA GPU was found|cpu \(1 thread\): no CUDA GPU was found)\.$", line);
        Assert.Contains("fast session on", stdout);
    }

    [Fact]
    public void BenchDecode_RunsOnIlgpuCpu()
    {
        (int code, string stdout, string stderr) = Run("bench", "decode", "-m", TestData.StoriesModel, "--device", "ilgpu-cpu:4x4", "--context", "4", "--runs", "1");

        Assert.True(code == 0, stderr);
        Assert.Contains("fast session on ilgpu-cpu", stdout);
    }

    [Theory]
    [InlineData("--temp 0 --top-k 0 --top-p 1")]
    [InlineData("--top-k 5")]
    public void Generate_OnIlgpuCpu_GivesTheCpuText(string flags)
    {
        // Greedy without top-k/top-p samples on the device; --top-k 5 (with the default temperature and top-p)
        // copies the logits back and samples on the host. Same seed, same text as on cpu.
        string[] args = ["generate", "-m", TestData.StoriesModel, "-p", "Once", "-n", "3", "--seed", "3", .. flags.Split(' ')];
        (int code, string stdout, string stderr) = Run([.. args, "--device", "ilgpu-cpu:4x4"]);
        (int cpuCode, string cpuStdout, _) = Run([.. args, "--device", "cpu"]);

        Assert.True(code == 0, stderr);
        Assert.Equal(0, cpuCode);
        Assert.StartsWith("Once", stdout);
        Assert.Equal(cpuStdout, stdout);
    }

    private (int Code, string Stdout, string Stderr) Run(params string[] args) =>
        Run(new CliEnvironment(null, _temp.Path), args);

    internal static (int Code, string Stdout, string Stderr) Run(CliEnvironment environment, params string[] args)
    {
        using StringWriter stdout = new() { NewLine = "\n" };
        using StringWriter stderr = new() { NewLine = "\n" };
        int code = KilnCli.Run(args, stdout, stderr, environment);
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Asserts the exit code and exactly one stderr line, containing the text, without a stack trace.</summary>
    internal static void AssertError(int code, string stderr, int exitCode, string expected)
    {
        Assert.Equal(exitCode, code);
        string line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("kiln: error: ", line);
        Assert.Contains(expected, line);
        Assert.DoesNotContain("   at ", stderr);
        Assert.DoesNotContain("Exception", stderr);
    }
}
