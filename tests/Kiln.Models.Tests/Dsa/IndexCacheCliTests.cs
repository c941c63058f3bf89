// `kiln indexcache fit` → `kiln generate` (cpu, and ilgpu-cpu:4x4 giving the cpu's text) / `kiln info` on stories260K
// (a few steps), `kiln indexcache calibrate`
// on a random-weight tiny DSA model (--random), the calibration search's structure and determinism, and the error
// cases (keep outside (0, 1], text shorter than a window, a non-DSA model, K < 1). In-process through KilnCli.Run.
using Kiln.Cli;
using Kiln.Models.Dsa;
using Xunit;
using Xunit.Abstractions;

namespace Kiln.Models.Tests.Dsa;

public sealed class IndexCacheCliTests(ITestOutputHelper output) : IDisposable
{
    private const string Story = "Once upon a time, there was a little girl named Lily. She liked to play in the park with her dog. ";
    private readonly string _dir = Directory.CreateTempSubdirectory("kiln-dsa-cli").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Fit_ThenGenerateAndInfo_RunTheDsaCheckpoint()
    {
        // Fit three steps on a short text, write the checkpoint.
        string data = Path.Combine(_dir, "data.txt"), model = Path.Combine(_dir, "fitted.safetensors");
        File.WriteAllText(data, string.Concat(Enumerable.Repeat(Story, 12)));
        (int code, _, string err) = Run("indexcache", "fit", "-m", TestData.StoriesModel, "--tokenizer", TestData.StoriesTokenizer,
            "--data", data, "--steps", "3", "--window", "16", "--heads", "2", "--head-dim", "8", "--rope-dims", "4", "--top-k", "4",
            "--pattern", "FFSFS", "-o", model);
        output.WriteLine(err);
        Assert.True(code == 0, err);
        Assert.True(DsaCheckpoint.IsDsaCheckpoint(model));
        using (DsaWeights loaded = DsaCheckpoint.Load(model))
        {
            Assert.Equal("FFSFS", loaded.Config.Pattern.ToString());
            Assert.Equal(4, loaded.Config.TopK);
            Assert.Null(loaded.Indexers[2]);
        }

        // Generate greedily through DsaSession, twice: the same text.
        string[] generate = ["generate", "-m", model, "--tokenizer", TestData.StoriesTokenizer, "-p", "Once upon", "-n", "12", "--temp", "0"];
        (int g1, string out1, string err1) = Run(generate);
        (_, string out2, _) = Run(generate);
        Assert.True(g1 == 0, err1);
        Assert.Contains("dsa session", err1, StringComparison.Ordinal);
        Assert.StartsWith("Once upon", out1, StringComparison.Ordinal);
        Assert.True(out1.Length > "Once upon".Length + 1, out1);
        Assert.Equal(out1, out2);

        // The same checkpoint on the GPU code path (ILGPU's CPU accelerator): the cpu's greedy text.
        (int gd, string outDevice, string errDevice) = Run([.. generate, "--device", "ilgpu-cpu:4x4"]);
        Assert.True(gd == 0, errDevice);
        Assert.Contains("dsa session", errDevice, StringComparison.Ordinal);
        Assert.Equal(out1, outDevice);

        // --pattern runs another pattern (as a string or from calibrate's file); a Full layer without an indexer
        // (layer 2 was Shared when fitted) is refused.
        string patternFile = Path.Combine(_dir, "pattern.txt");
        File.WriteAllText(patternFile, "FSSSS\n");
        (int p1, string outString, string errString) = Run([.. generate, "--pattern", "FSSSS"]);
        (int p2, string outFile, _) = Run([.. generate, "--pattern", patternFile]);
        Assert.True(p1 == 0, errString);
        Assert.Equal(0, p2);
        Assert.Contains("pattern FSSSS", errString, StringComparison.Ordinal);
        Assert.Equal(outString, outFile);
        (int p3, _, string errMissing) = Run([.. generate, "--pattern", "FFFFF"]);
        Assert.NotEqual(0, p3);
        Assert.Contains("Layer 2 is Full", errMissing, StringComparison.Ordinal);
        Assert.Single(errMissing.TrimEnd('\n').Split('\n'));

        // Info shows the DSA config.
        (int i, string info, _) = Run("info", "-m", model);
        Assert.Equal(0, i);
        Assert.Contains("\"index_topk_pattern\": \"FFSFS\"", info, StringComparison.Ordinal);
        Assert.Contains("pattern: FFSFS", info, StringComparison.Ordinal);
    }

    [Fact]
    public void BenchIndexCache_Json_OneLinePerKeepRatio()
    {
        (int code, string stdout, string err) = Run("bench", "indexcache", "--json", "-c", "40", "--decode", "2", "--runs", "1");
        Assert.True(code == 0, err);
        string[] lines = stdout.TrimEnd('\n').Split('\n');
        Assert.Equal(3, lines.Length);
        double[] keeps = [1, 0.5, 0.25];
        string[] patterns = ["FFFFFFFF", "FSFSFSFS", "FSSSFSSS"];
        for (int i = 0; i < 3; i++)
        {
            using System.Text.Json.JsonDocument line = System.Text.Json.JsonDocument.Parse(lines[i]);
            System.Text.Json.JsonElement o = line.RootElement;
            Assert.Equal(40, o.GetProperty("context").GetInt32());
            Assert.Equal(keeps[i], o.GetProperty("keep").GetDouble());
            Assert.Equal(patterns[i], o.GetProperty("pattern").GetString());
            foreach (string field in new[] { "prefill_tok_s", "decode_tok_s", "dense_prefill_tok_s", "dense_decode_tok_s", "prefill_speedup", "decode_speedup" })
            {
                Assert.True(o.GetProperty(field).GetDouble() > 0, $"{field} in {lines[i]}");
            }
        }

        // All-F is the speed-up baseline.
        using System.Text.Json.JsonDocument first = System.Text.Json.JsonDocument.Parse(lines[0]);
        Assert.Equal(1.0, first.RootElement.GetProperty("prefill_speedup").GetDouble());
        Assert.Equal(1.0, first.RootElement.GetProperty("decode_speedup").GetDouble());

        // A context out of range is a one-line error.
        (int bad, _, string badErr) = Run("bench", "indexcache", "-c", "0");
        Assert.NotEqual(0, bad);
        Assert.Contains("--context", badErr, StringComparison.Ordinal);
        Assert.Single(badErr.TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public void Calibrate_Random_IsDeterministicAndKeepsTheTargetCount()
    {
        string model = RandomModel("FFFFFF");
        string[] args = ["indexcache", "calibrate", "-m", model, "--keep", "0.34", "--random", "--window", "8", "--windows", "2"];
        (int code, string first, string err) = Run(args);
        output.WriteLine(err);
        Assert.True(code == 0, err);
        (_, string second, _) = Run(args);
        Assert.Equal(first, second);
        IndexCachePattern pattern = IndexCachePattern.Parse(first.Trim());
        Assert.Equal(IndexCachePattern.FromKeepRatio(6, 0.34).FullCount, pattern.FullCount);
        Assert.True(pattern.IsFull(0));
        Assert.Equal(3, err.Split('\n').Count(line => line.StartsWith("flip layer ", StringComparison.Ordinal)));
    }

    [Fact]
    public void Search_NeverFlipsLayer0_HitsTheCount_IsDeterministic()
    {
        // KL to all-F on random windows of a random 8-layer model, keep 0.25 (2 Full layers).
        using DsaWeights weights = DsaWeights.CreateRandom(DsaSessionTests.SmallConfig("FFFFFFFF", 3), 7);
        IReadOnlyList<int[]> windows = IndexCacheCalibration.RandomWindows(13, 10, 2, 5);
        Func<DsaWeights, double> loss = IndexCacheCalibration.DivergenceFromAllFull(weights, windows);
        List<IndexCacheCalibrationStep> steps = [];
        IndexCachePattern found = IndexCacheCalibration.Search(weights, 0.25, loss, steps.Add);
        IndexCachePattern again = IndexCacheCalibration.Search(weights, 0.25, loss);
        Assert.Equal(found, again);
        Assert.Equal(2, found.FullCount);
        Assert.True(found.IsFull(0));
        Assert.Equal(6, steps.Count);
        Assert.DoesNotContain(steps, step => step.Layer == 0);
        Assert.Equal("FFFFFFFF", weights.Config.Pattern.ToString());

        // Greedy is not guaranteed to beat the uniform pattern: log both, assert nothing about their order.
        IndexCachePattern uniform = IndexCachePattern.FromKeepRatio(8, 0.25);
        weights.WithPattern(found);
        double foundLoss = loss(weights);
        weights.WithPattern(uniform);
        output.WriteLine($"found {found}: KL {foundLoss:F6}; uniform {uniform}: KL {loss(weights):F6}");
    }

    [Theory]
    [InlineData("keep0")]
    [InlineData("keep2")]
    [InlineData("short")]
    [InlineData("dense")]
    [InlineData("k0")]
    [InlineData("pattern-length")]
    [InlineData("pattern-s")]
    [InlineData("pattern-dense")]
    public void Errors_AreOneLineWithAFailureCode(string which)
    {
        string model = RandomModel("FFFF");
        string shortText = Path.Combine(_dir, "short.txt");
        File.WriteAllText(shortText, "Hi");
        string[] args = which switch
        {
            "keep0" => ["indexcache", "calibrate", "-m", model, "--keep", "0", "--random"],
            "keep2" => ["indexcache", "calibrate", "-m", model, "--keep", "1.5", "--random"],
            "short" => ["indexcache", "calibrate", "-m", StoriesShapedModel(), "--keep", "0.5", "--data", shortText, "--tokenizer", TestData.StoriesTokenizer, "--window", "8"],
            "dense" => ["indexcache", "calibrate", "-m", TestData.StoriesModel, "--keep", "0.5", "--random"],
            "pattern-length" => ["generate", "-m", StoriesShapedModel(), "--tokenizer", TestData.StoriesTokenizer, "--pattern", "FFS", "-n", "1"],
            "pattern-s" => ["generate", "-m", StoriesShapedModel(), "--tokenizer", TestData.StoriesTokenizer, "--pattern", "SFFFF", "-n", "1"],
            "pattern-dense" => ["generate", "-m", TestData.StoriesModel, "--pattern", "FFFFF", "-n", "1"],
            _ => ["indexcache", "fit", "-m", TestData.StoriesModel, "--top-k", "0", "--steps", "1"],
        };
        string expected = which switch
        {
            "keep0" or "keep2" => "--keep",
            "short" => "shorter than one window",
            "dense" => "not a Kiln DSA checkpoint",
            "pattern-length" => "has 3 characters but the model has 5",
            "pattern-s" => "starts with S",
            "pattern-dense" => "applies to DSA checkpoints only",
            _ => "index_topk (K) is 0",
        };
        (int code, _, string err) = Run(args);
        Assert.NotEqual(0, code);
        Assert.Contains(expected, err, StringComparison.Ordinal);
        Assert.Single(err.TrimEnd('\n').Split('\n'));
    }

    // A random-weight DSA model (vocab 13, seq_len 16; the tokenizer file does not fit it, so only --random and the
    // error checks before tokenizing use it) saved as a checkpoint.
    private string RandomModel(string pattern)
    {
        string path = Path.Combine(_dir, $"random-{pattern}.safetensors");
        using DsaWeights weights = DsaWeights.CreateRandom(DsaSessionTests.SmallConfig(pattern, 3), 3);
        DsaCheckpoint.Save(weights, path);
        return path;
    }

    // A random-weight DSA model with stories260K's sizes (vocab 512, so tok512.bin fits it).
    private string StoriesShapedModel()
    {
        string path = Path.Combine(_dir, "random-stories.safetensors");
        DsaConfig config = DsaSessionTests.SmallConfig("FFFFF", 4) with { Llama = TestData.Stories.Config };
        using DsaWeights weights = DsaWeights.CreateRandom(config, 5);
        DsaCheckpoint.Save(weights, path);
        return path;
    }

    private (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        using StringWriter stdout = new() { NewLine = "\n" };
        using StringWriter stderr = new() { NewLine = "\n" };
        int code = KilnCli.Run(args, stdout, stderr, new CliEnvironment(null, _dir));
        return (code, stdout.ToString(), stderr.ToString());
    }
}
