// Kiln against llama.cpp (through LLamaSharp 0.30.0) on the same file: stories260K written by Kiln as a GGUF F32 file
// loads in llama.cpp, and llama.cpp's greedy continuation of "Once upon a time" (60 tokens, the prompt as Kiln
// tokenizes it) equals Kiln's token for token, with flash attention off and on. When the native library cannot load,
// the test fails with llama.cpp's reason; it is never skipped.

using Kiln.Cli.Bench;
using Kiln.Models.Formats;
using Kiln.Models.Sampling;
using Xunit;

namespace Kiln.Models.Tests.Peer;

public sealed class LlamaCppPeerTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Stories_KilnGgufF32_LlamaCppGreedyEqualsKiln()
    {
        string path = _temp.File("stories-f32.gguf");
        GgufLlama.Write(path, TestData.Stories, TestData.StoriesTok, GgufTensorType.F32, "stories260K");
        using IInferenceSession session = InferenceSessions.Default(TestData.Stories, new SessionOptions { ContextLength = 128 });
        GenerationResult kiln = new TextGenerator(session, TestData.StoriesTok, new Sampler(512, SamplerOptions.Greedy)).Generate("Once upon a time", maxNewTokens: 60);

        using LlamaCppPeer peer = LlamaCppPeer.Load(path);
        int[] off = peer.Greedy(kiln.PromptTokens, 60, threads: 2, flashAttention: false);
        int[] on = peer.Greedy(kiln.PromptTokens, 60, threads: 2, flashAttention: true);

        Assert.Equal(512, peer.VocabSize);
        Assert.Equal(60, kiln.GeneratedTokens.Length);
        Assert.Equal(kiln.GeneratedTokens, off);
        Assert.Equal(kiln.GeneratedTokens, on);
    }
}
