// End-to-end generation with the reference session: the exact greedy continuation of
// ../shared/reference/stories260K-greedy.md, legacy and version-1 files generating alike, aidreams260K running
// into its 128-position context, independence of successive generations, and the prompt-length limit.

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
        List<string> streamed = [];
        generator.TextGenerated += streamed.Add;

        GenerationResult result = generator.Generate("Once upon a time", 60);

        int[] all = [.. result.PromptTokens.Skip(1), .. result.GeneratedTokens];
        Assert.Equal(TestData.GreedyReferenceIds, all);
        Assert.Equal(StopReason.MaxTokens, result.StopReason);
        Assert.Equal(TestData.GreedyReferenceText, "Once upon a time" + result.Text);
        Assert.Equal(result.Text, string.Concat(streamed));
        Assert.Equal(59, result.DecodeSteps);
        Assert.True(result.PrefillTokensPerSecond > 0 && result.DecodeTokensPerSecond > 0);
    }

    [Fact]
    public void Stories260K_LegacyAndVersion1_GenerateIdentically()
    {
        using LlamaWeights v1 = Llama2cCheckpoint.Load(TestData.StoriesModelV1);
        SamplerOptions options = new() { Temperature = 0.9f, TopK = 30, TopP = 0.9f, Seed = 99 };

        GenerationResult fromLegacy = Generate(TestData.Stories, options, "The cat", 120);
        GenerationResult fromV1 = Generate(v1, options, "The cat", 120);

        Assert.Equal(fromLegacy.GeneratedTokens, fromV1.GeneratedTokens);
        Assert.Equal(fromLegacy.Text, fromV1.Text);
    }

    [Fact]
    public void Aidreams260K_GeneratesToItsContextLimit_WithANote()
    {
        using LlamaReferenceSession session = new(TestData.Aidreams);
        TextGenerator generator = new(session, TestData.AidreamsTok, new Sampler(512, SamplerOptions.Greedy));
        List<string> notes = [];
        generator.Note += notes.Add;

        GenerationResult result = generator.Generate("Echoes of", 1000);

        // 128 positions: the prompt's, then each generated token fed back but the last.
        Assert.Equal(StopReason.ContextFull, result.StopReason);
        Assert.Equal(128 - result.PromptTokens.Length + 1, result.GeneratedTokens.Length);
        Assert.Equal(128, session.Position);
        string note = Assert.Single(notes);
        Assert.Contains("context full", note);
        Assert.Contains("128 positions", note);
        Assert.Contains("of the 1000 requested", note);
        Assert.DoesNotContain('\n', note);
        Assert.DoesNotContain('\uFFFD', result.Text);
    }

    [Fact]
    public void StopToken_EndsGeneration_WithoutPrintingIt()
    {
        // Sampled stories end with BOS, which separates stories: generation stops there and prints nothing for it.
        SamplerOptions options = new() { Temperature = 0.8f, TopK = 40, TopP = 0.95f, Seed = 42 };

        GenerationResult result = Generate(TestData.Stories, options, "Lily", -1);

        Assert.Equal(StopReason.StopToken, result.StopReason);
        Assert.DoesNotContain(1, result.GeneratedTokens);
        Assert.DoesNotContain("<s>", result.Text);
    }

    [Fact]
    public void TwoPrompts_OneAfterTheOther_EqualEachAlone()
    {
        SamplerOptions options = new() { Temperature = 1.0f, TopP = 0.9f, Seed = 3 };
        using LlamaReferenceSession session = new(TestData.Stories);
        TextGenerator generator = new(session, TestData.StoriesTok, new Sampler(512, options));

        GenerationResult firstInSequence = generator.Generate("Once upon a time", 50);
        GenerationResult secondInSequence = generator.Generate("The little dog", 50);
        GenerationResult firstAlone = Generate(TestData.Stories, options, "Once upon a time", 50);
        GenerationResult secondAlone = Generate(TestData.Stories, options, "The little dog", 50);

        Assert.Equal(firstAlone.GeneratedTokens, firstInSequence.GeneratedTokens);
        Assert.Equal(secondAlone.GeneratedTokens, secondInSequence.GeneratedTokens);
        Assert.NotEqual(firstAlone.GeneratedTokens, secondAlone.GeneratedTokens);
    }

    [Fact]
    public void PromptLongerThanTheContext_IsAClearError()
    {
        using LlamaReferenceSession session = new(TestData.Aidreams);
        TextGenerator generator = new(session, TestData.AidreamsTok, new Sampler(512, SamplerOptions.Greedy));
        string prompt = string.Join(' ', Enumerable.Repeat("dreams of glass and quiet vectors", 40));

        PromptTooLongException e = Assert.Throws<PromptTooLongException>(() => generator.Generate(prompt, 10));

        Assert.Equal(128, e.ContextLength);
        Assert.True(e.PromptTokens > 128);
        Assert.Contains("context holds 128", e.Message);
        Assert.Equal(0, session.Position);
    }

    [Fact]
    public void PromptFillingTheContext_StillGivesOneToken()
    {
        using LlamaReferenceSession session = new(TestData.Aidreams, new SessionOptions { ContextLength = 5 });
        TextGenerator generator = new(session, TestData.AidreamsTok, new Sampler(512, SamplerOptions.Greedy));
        int[] prompt = TestData.AidreamsTok.Encode("the quiet hum of precision and light")[..5];

        GenerationResult result = generator.Generate(prompt, 10);

        Assert.Single(result.GeneratedTokens);
        Assert.Equal(StopReason.ContextFull, result.StopReason);
        Assert.Equal(0, result.DecodeSteps);
    }

    [Fact]
    public void ZeroNewTokens_GeneratesNothing()
    {
        GenerationResult result = Generate(TestData.Stories, SamplerOptions.Greedy, "Once", 0);

        Assert.Empty(result.GeneratedTokens);
        Assert.Equal(string.Empty, result.Text);
        Assert.Equal(StopReason.MaxTokens, result.StopReason);
    }

    [Fact]
    public void MismatchedVocabularies_AreRejected()
    {
        using LlamaReferenceSession session = new(TestData.Stories);

        ArgumentException e = Assert.Throws<ArgumentException>(() => new TextGenerator(session, TestData.StoriesTok, new Sampler(511, SamplerOptions.Greedy)));

        Assert.Contains("sampler 511", e.Message);
    }

    private static GenerationResult Generate(LlamaWeights weights, SamplerOptions options, string prompt, int count)
    {
        using IInferenceSession session = InferenceSessions.Default(weights, new SessionOptions());
        Models.Tokenizers.Llama2cTokenizer tokenizer = weights.Config.SeqLen == 128 ? TestData.AidreamsTok : TestData.StoriesTok;
        TextGenerator generator = new(session, tokenizer, new Sampler(weights.Config.VocabSize, options));
        return generator.Generate(prompt, count);
    }
}
