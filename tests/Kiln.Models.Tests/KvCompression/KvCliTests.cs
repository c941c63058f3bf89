// `kiln kv eval` on stories260K with the built-in stories (short prompts, one budget) and `kiln bench kv --json` on a
// short context: the rows they print and their invariants; bad budgets and flags fail with one line and a failure code.
// In-process through KilnCli.Run.
using System.Text.Json;
using Kiln.Cli;
using Xunit;

namespace Kiln.Models.Tests.KvCompression;

public sealed class KvCliTests
{
    [Fact]
    public void KvEval_Json_OneRowPerMethodAndBudget()
    {
        (int code, string stdout, string err) = Run(
            "kv", "eval", "-m", TestData.StoriesModel, "--prefill", "96", "--continue", "8", "--kv-budget", "40", "0.5",
            "--chunk", "8", "--json");
        Assert.True(code == 0, err);
        JsonElement[] rows = [.. stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement)];

        // streamingllm, snapkv, snapkv-pool5, chunkkv-c8, chunkkv-c8-reuse2 at two budgets.
        Assert.Equal(10, rows.Length);
        Assert.Equal(["streamingllm", "snapkv", "snapkv-pool5", "chunkkv-c8", "chunkkv-c8-reuse2"], rows.Select(r => r.GetProperty("method").GetString()).Distinct());
        foreach (JsonElement row in rows)
        {
            double kept = row.GetProperty("kept").GetDouble();
            Assert.InRange(kept, 1, row.GetProperty("budget").GetString() == "40" ? 40 : 48);
            Assert.True(row.GetProperty("kl").GetDouble() >= 0);
            Assert.InRange(row.GetProperty("top1").GetDouble(), 0, 1);
            Assert.InRange(row.GetProperty("jaccard").GetDouble(), 0, 1);
        }

        // Reuse makes the follower of each pair hold its leader's positions: its adjacent-layer overlap is higher.
        double Jaccard(string method) => rows.First(r => r.GetProperty("method").GetString() == method).GetProperty("jaccard").GetDouble();
        Assert.True(Jaccard("chunkkv-c8-reuse2") > Jaccard("chunkkv-c8"));
        Assert.Equal(1.0, Jaccard("streamingllm"));
    }

    [Fact]
    public void BenchKv_Json_OneLinePerMethod()
    {
        (int code, string stdout, string err) = Run("bench", "kv", "--json", "-c", "400", "--decode", "4", "-t", "1");
        Assert.True(code == 0, err);
        JsonElement[] rows = [.. stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement)];
        Assert.Equal(["chunkkv", "chunkkv-reuse", "snapkv", "streamingllm"], rows.Select(r => r.GetProperty("method").GetString()));
        foreach (JsonElement row in rows)
        {
            Assert.Equal(400, row.GetProperty("context").GetInt32());
            Assert.Equal(0.1, row.GetProperty("kept").GetDouble());
            Assert.True(row.GetProperty("kept_tokens").GetDouble() <= 40 + 4);
            Assert.True(row.GetProperty("decode_tok_s").GetDouble() > 0 && row.GetProperty("full_decode_tok_s").GetDouble() > 0);
        }

        Assert.Equal(2, rows[1].GetProperty("scored_layers").GetInt32());
        Assert.Equal(4, rows[0].GetProperty("scored_layers").GetInt32());
    }

    [Theory]
    [InlineData("1.5", "--kv-budget 1.5: KV budget \"1.5\" is not a token count or a fraction")]
    [InlineData("0", "whole number of tokens")]
    [InlineData("20", "--kv-budget 20 (chunkkv-c8): KV budget 20 tokens is below the 24")]
    [InlineData("0.001", "--kv-budget 0.001 (streamingllm): keeps 0 of the 448 prompt tokens, below the 20")]
    public void KvEval_BadBudgets_FailWithOneLine(string budget, string expected)
    {
        (int code, _, string err) = Run("kv", "eval", "-m", TestData.StoriesModel, "--kv-budget", budget, "--chunk", "8");
        Assert.NotEqual(0, code);
        Assert.Contains(expected, err);
        Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void KvEval_BinaryData_FailsWithOneLine()
    {
        string path = Path.Combine(Path.GetTempPath(), $"kiln-kv-binary-{Guid.NewGuid():N}.dat");
        byte[] bytes = new byte[4096];
        new Random(7).NextBytes(bytes);
        File.WriteAllBytes(path, bytes);
        try
        {
            (int code, string stdout, string err) = Run("kv", "eval", "-m", TestData.StoriesModel, "--data", path, "--prefill", "16", "--continue", "4", "--kv-budget", "24", "--chunk", "4", "--window", "8");
            Assert.Equal(2, code);
            Assert.Equal("", stdout);
            Assert.Contains("is not UTF-8 text", err);
            Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void BenchKv_BadFlags_FailWithOneLine()
    {
        (int code, _, string err) = Run("bench", "kv", "--kept", "1.5");
        Assert.NotEqual(0, code);
        Assert.Contains("fractions in (0, 1)", err);
        (int tooFew, _, string tooFewErr) = Run("bench", "kv", "-c", "100", "--kept", "0.1");
        Assert.NotEqual(0, tooFew);
        Assert.Contains("fewer than 32 tokens", tooFewErr);
        (int tooLong, _, string tooLongErr) = Run("bench", "kv", "-c", "512", "--decode", "100000000");
        Assert.Equal(2, tooLong);
        Assert.Contains("--context 512 --decode 100000000: the longest context plus the decode steps must be at most 65536", tooLongErr);
        (int indexCache, _, string indexCacheErr) = Run("bench", "indexcache", "-c", "64", "--decode", "100000");
        Assert.Equal(2, indexCache);
        Assert.Contains("--decode 100000 --runs 3: both must be at least 1, and the longest context plus the decode steps at most 65536", indexCacheErr);
    }

    private static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        using StringWriter stdout = new() { NewLine = "\n" };
        using StringWriter stderr = new() { NewLine = "\n" };
        int code = KilnCli.Run(args, stdout, stderr, new CliEnvironment(null, Path.GetTempPath()));
        return (code, stdout.ToString(), stderr.ToString());
    }
}
