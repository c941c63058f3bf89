// Adversarial inputs found while trying to break Kiln, each pinned by a test: crafted headers whose context length
// asks for more memory than the machine has, sampling at extreme temperatures, and command-line values at the edges
// of their ranges. Every case
// must fail fast with one clear line (or succeed using only the memory it needs), never exhaust the machine.

using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Cli;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class RobustnessTests : IDisposable
{
    // A tiny model whose header claims the largest context the reader accepts (2^24 positions, 512 GiB of KV cache
    // for 64 layers × 2 × 64 floats per position) for about 5 MB of weights.
    private static readonly LlamaConfig s_hugeContext = new()
    {
        Dim = 64,
        HiddenDim = 8,
        Layers = 64,
        Heads = 1,
        KvHeads = 1,
        VocabSize = 512,
        SeqLen = 1 << 24,
        HeadDim = 64,
    };

    // A model whose KV cache exceeds the machine even within the fast session's longest context: 1024 layers × 2 ×
    // 128 floats × 65536 positions = 64 GiB, for 282 MB of weights.
    private static readonly LlamaConfig s_hugeCache = new()
    {
        Dim = 128,
        HiddenDim = 8,
        Layers = 1024,
        Heads = 2,
        KvHeads = 2,
        VocabSize = 512,
        SeqLen = LlamaSession.MaxContextLength,
        HeadDim = 64,
    };

    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void FastSession_CacheLargerThanTheMachine_ThrowsBeforeAllocating()
    {
        Assert.True(2L * 1024 * 128 * 65536 * sizeof(float) > GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, "the case must exceed this machine's memory");
        using LlamaWeights weights = LlamaWeights.Allocate(s_hugeCache);

        InsufficientMemoryException e = Assert.Throws<InsufficientMemoryException>(
            () => new LlamaSession(weights, new SessionOptions()));

        Assert.Contains("SessionOptions.ContextLength", e.Message);
        using LlamaSession small = new(weights, new SessionOptions { ContextLength = 8 });
        Assert.Equal(512, small.Forward([1, 2]).Length);
    }

    [Fact]
    public void FastSession_ContextBeyondTheAttentionKernel_IsRejectedUpFront()
    {
        // seq_len 2^17 but the attention kernel holds at most 2^16 positions: position 65536 used to fail mid-run.
        LlamaConfig config = s_hugeContext with { Layers = 1, SeqLen = 1 << 17 };
        using LlamaWeights weights = LlamaWeights.Allocate(config);

        ArgumentOutOfRangeException e = Assert.Throws<ArgumentOutOfRangeException>(
            () => new LlamaSession(weights, new SessionOptions()));

        Assert.Contains($"at most {LlamaSession.MaxContextLength}", e.Message);
        using LlamaSession session = new(weights, new SessionOptions { ContextLength = LlamaSession.MaxContextLength });
        Assert.Equal(LlamaSession.MaxContextLength, session.ContextLength);
    }

    [Fact]
    public void Cli_GenerateUntilTheEnd_OnAContextBeyondTheAttentionKernel_Runs()
    {
        // Weights that make BOS (the stop token) the greedy choice at once: every embedding row is c · ones with
        // c = 2 for BOS and 1 otherwise, the final norm is ones, and every block adds zero.
        LlamaConfig config = s_hugeContext with { Layers = 1, SeqLen = 1 << 17 };
        string path = WriteVersion1(config);
        using (FileStream stream = new(path, FileMode.Open, FileAccess.Write))
        using (BinaryWriter writer = new(stream))
        {
            stream.Seek(Llama2cCheckpoint.Version1HeaderBytes + (2L * config.Layers * config.Dim * sizeof(float)), SeekOrigin.Begin);
            for (int i = 0; i < config.Dim * (1 + config.VocabSize); i++)
            {
                writer.Write(i / config.Dim == 2 ? 2f : 1f);
            }
        }

        (int code, string stdout, string stderr) = Run(
            "generate", "-m", path, "--tokenizer", TestData.StoriesTokenizer, "-p", "hi", "-n", "-1", "--temp", "0");

        Assert.True(code == 0, stderr);
        Assert.Equal("hi\n", stdout);
        Assert.Contains("0 new tokens (end token)", stderr);
    }

    [Fact]
    public void Cli_GenerateOnAHugeContextHeader_UsesOnlyWhatTheRunNeeds()
    {
        string path = WriteVersion1(s_hugeContext);

        (int code, string stdout, string stderr) = Run(
            "generate", "-m", path, "--tokenizer", TestData.StoriesTokenizer, "-p", "hi", "-n", "3", "--temp", "0");

        Assert.True(code == 0, stderr);
        Assert.StartsWith("hi", stdout);
        Assert.Contains("3 new tokens", stderr);
    }

    [Fact]
    public void Cli_BenchDecodeOnAHugeContextHeader_IsOneLineWithAHint()
    {
        string path = WriteVersion1(s_hugeCache);

        (int code, _, string stderr) = Run("bench", "decode", "-m", path);

        Assert.Equal(1, code);
        string line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("kiln: error: The KV cache for a context of 65536 positions", line);
        Assert.Contains("--context", line);
    }

    [Theory]
    [InlineData("100000", "100000", "100000", "A [M, K]")]
    [InlineData("1", "65536", "65537", "W [N, K]")]
    [InlineData("50000", "50000", "1", "C [M, N]")]
    public void Cli_BenchGemmWithAMatrixTooLargeForATensor_IsAUsageError(string m, string n, string k, string matrix)
    {
        // These products overflow int (M·K = 10^10 wrapped to 1.4·10^9 floats were allocated before the check).
        (int code, string stdout, string stderr) = Run("bench", "gemm", "--m", m, "--n", n, "--k", k);

        Assert.Equal(2, code);
        Assert.Equal(string.Empty, stdout);
        string line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"kiln: error: --m {m} --n {n} --k {k}: {matrix}", line);
        Assert.Contains("smaller sizes", line);
    }

    /// <summary>
    /// Top-k keeps the K largest logits whatever the temperature: at 1e30 every weight rounds to 1 and at 1e-30 all
    /// but the maximum round to 0, but the kept set must still be the K best logits (ties: lower id).
    /// </summary>
    [Property(MaxTest = 300)]
    public Property TopK_AtExtremeTemperatures_KeepsTheLargestLogits() => Prop.ForAll(
        (from n in Gen.Choose(2, 300)
         from logits in Gen.Choose(-500, 500).Select(i => i / 100f).ArrayOf(n)
         from topK in Gen.Choose(1, n - 1)
         from exponent in Gen.Elements(-30, -20, -8, 8, 20, 30)
         select (logits, topK, exponent)).ToArbitrary(),
        sample =>
        {
            (float[] logits, int topK, int exponent) = sample;
            float temperature = MathF.Pow(10f, exponent);
            Sampler sampler = new(logits.Length, new SamplerOptions { Temperature = temperature, TopK = topK, Seed = 3 });
            int[] ids = new int[logits.Length];
            float[] probabilities = new float[logits.Length];
            int count = sampler.GetCandidates(logits, ids, probabilities);

            // Reference: ids ordered by logit descending, then id ascending; the first K are kept.
            int[] expected = [.. Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(topK)];
            int drawn = sampler.Sample(logits);
            return (ids.AsSpan(0, count).SequenceEqual(expected) && expected.Contains(drawn))
                .Label($"T 1e{exponent}, top-k {topK}: kept {string.Join(',', ids.Take(count))}, expected {string.Join(',', expected)}, drew {drawn}");
        });

    // Writes a version-1 header for config followed by zero weights of exactly the right length (sparse on disk).
    private string WriteVersion1(LlamaConfig config)
    {
        string path = _temp.File("huge-context.bin");
        byte[] header = new byte[Llama2cCheckpoint.Version1HeaderBytes];
        BitConverter.TryWriteBytes(header.AsSpan(0), Llama2cCheckpoint.Version1Magic);
        BitConverter.TryWriteBytes(header.AsSpan(4), 1);
        int[] fields = [config.Dim, config.HiddenDim, config.Layers, config.Heads, config.KvHeads, config.VocabSize, config.SeqLen];
        for (int i = 0; i < fields.Length; i++)
        {
            BitConverter.TryWriteBytes(header.AsSpan(8 + (4 * i)), fields[i]);
        }

        header[8 + (4 * fields.Length)] = 1;
        using FileStream stream = File.Create(path);
        stream.Write(header);
        stream.SetLength(header.Length + (config.ParameterCount * sizeof(float)));
        return path;
    }

    private (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        using StringWriter stdout = new() { NewLine = "\n" };
        using StringWriter stderr = new() { NewLine = "\n" };
        int code = KilnCli.Run(args, stdout, stderr, new CliEnvironment(null, _temp.Path));
        return (code, stdout.ToString(), stderr.ToString());
    }
}
