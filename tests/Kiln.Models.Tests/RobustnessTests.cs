// Adversarial inputs found while trying to break Kiln, each pinned by a test: crafted headers whose context length
// asks for more memory than the machine has, and command-line values at the edges of their ranges. Every case
// must fail fast with one clear line (or succeed using only the memory it needs), never exhaust the machine.

using Kiln.Cli;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class RobustnessTests : IDisposable
{
    // A tiny model whose header claims the largest context the reader accepts: 64 layers × 2 × 64 × 2^24 floats
    // of KV cache (512 GiB) for about 5 MB of weights.
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

    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void FastSession_CacheLargerThanTheMachine_ThrowsBeforeAllocating()
    {
        using LlamaWeights weights = LlamaWeights.Allocate(s_hugeContext);

        InsufficientMemoryException e = Assert.Throws<InsufficientMemoryException>(
            () => new LlamaSession(weights, new SessionOptions()));

        Assert.Contains("SessionOptions.ContextLength", e.Message);
        using LlamaSession small = new(weights, new SessionOptions { ContextLength = 8 });
        Assert.Equal(512, small.Forward([1, 2]).Length);
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
        string path = WriteVersion1(s_hugeContext);

        (int code, _, string stderr) = Run("bench", "decode", "-m", path);

        Assert.Equal(1, code);
        string line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("kiln: error: The KV cache for a context of 16777216 positions", line);
        Assert.Contains("--context", line);
    }

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
