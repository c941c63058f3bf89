// End-to-end generation on the real checkpoints with the reference session: the exact greedy continuation of
// ../shared/reference/stories260K-greedy.md, the context limit of aidreams260K, and independence of successive
// generations.

using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class GenerationTests
{
    [Fact]
    public void Stories260K_Greedy_ReproducesReferenceIdsAndText()
    {
        using LlamaReferenceSession session = new(TestData.Stories);
        TextGenerator generator = new(session, TestData.StoriesTok, new Sampler(512, SamplerOptions.Greedy));

        GenerationResult result = generator.Generate("Once upon a time", 60);

        int[] all = [.. result.PromptTokens.Skip(1), .. result.GeneratedTokens];
        Assert.Equal(TestData.GreedyReferenceIds, all);
        Assert.Equal(StopReason.MaxTokens, result.StopReason);
        Assert.Equal(TestData.GreedyReferenceText, "Once upon a time" + result.Text);
    }
}
