// The Llama session's device paths: sampling on the device (IDeviceSampling) against the host Sampler on cpu, and
// the whole session on ILGPU's CPU accelerator (the GPU code path without a GPU) against the cpu session:
// stories260K's greedy ids through TextGenerator's device path, prefill in pieces against one piece, ForwardAndSample
// against the argmax of Forward, and the refusal of a context that does not fit the device's memory. The
// accelerator is slow: one per class, short runs (a few dozen tokens of a 260K model, a tiny random model).
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Xunit;

namespace Kiln.Models.Tests;

/// <summary>Device sampling on the cpu device: the same ids as the host Sampler, greedy and with temperature.</summary>
public sealed class CpuDeviceSamplingTests
{
    /// <summary>A session seen only through IInferenceSession, so TextGenerator takes the host path.</summary>
    private sealed class HostOnly(IInferenceSession inner) : IInferenceSession
    {
        public LlamaConfig Config => inner.Config;

        public int ContextLength => inner.ContextLength;

        public int Position => inner.Position;

        public void Reset() => inner.Reset();

        public ReadOnlySpan<float> Forward(ReadOnlySpan<int> tokens) => inner.Forward(tokens);

        public void Dispose()
        {
        }
    }

    [Theory]
    [InlineData(0f, 0UL)]
    [InlineData(0.8f, 7UL)]
    [InlineData(1.5f, 123UL)]
    public void TextGenerator_DevicePath_GivesTheHostPathsIds(float temperature, ulong seed)
    {
        SamplerOptions options = new() { Temperature = temperature, Seed = seed };
        using LlamaSession session = new(TestData.Stories, new SessionOptions());
        Sampler sampler = new(512, options);
        Assert.True(sampler.CanSampleOnDevice);

        GenerationResult device = new TextGenerator(session, TestData.StoriesTok, sampler).Generate("Once upon a time", 80);
        GenerationResult host = new TextGenerator(new HostOnly(session), TestData.StoriesTok, sampler).Generate("Once upon a time", 80);

        Assert.Equal(host.GeneratedTokens, device.GeneratedTokens);
        if (temperature == 0f)
        {
            Assert.Equal(TestData.GreedyReferenceIds[4..], device.GeneratedTokens[..60]);
        }
    }

    [Fact]
    public void CanSampleOnDevice_OnlyWithoutTopKOrTopP()
    {
        Assert.True(new Sampler(512, new SamplerOptions { TopK = 512 }).CanSampleOnDevice);
        Assert.False(new Sampler(512, new SamplerOptions { TopK = 40 }).CanSampleOnDevice);
        Assert.False(new Sampler(512, new SamplerOptions { TopP = 0.9f }).CanSampleOnDevice);
    }

    [Fact]
    public void DeviceSamplingRule_IsTheSamplersRule()
    {
        // Random logits with NaN and -inf; the Sampler's next uniform number fed to the CPU rule must give its id.
        Random random = new(5);
        foreach (int vocab in new[] { 1, 2, 17, 100, 513 })
        {
            SamplerOptions options = new() { Temperature = 0.7f, Seed = (ulong)vocab };
            Sampler sampler = new(vocab, options);
            Sampler twin = new(vocab, options);
            for (int draw = 0; draw < 50; draw++)
            {
                float[] logits = Enumerable.Range(0, vocab).Select(_ => random.Next(20) switch
                {
                    0 => float.NaN,
                    1 => float.NegativeInfinity,
                    _ => random.Next(-40, 40) / 4f,
                }).ToArray();
                if (logits.All(l => !float.IsFinite(l)))
                {
                    logits[0] = 0f;
                }

                int expected = sampler.Sample(logits);
                Assert.Equal(expected, DeviceSampling.Sample(logits, 0.7f, twin.NextUniform()));
            }
        }
    }

    [Fact]
    public void ForwardAndSample_DecodeAllocatesNothing()
    {
        using LlamaSession session = new(TestData.Stories, new SessionOptions());
        int next = session.ForwardAndSample([1, 403, 407], 0.9f, 0.5);
        next = session.ForwardAndSample([next], 0f, 0);

        // Fed-back ids (embedded from the sampled-id buffer) and other ids, greedy and with temperature.
        long allocated = Allocations.Measure(() =>
        {
            for (int i = 0; i < 25; i++)
            {
                next = session.ForwardAndSample([next], 0.9f, (i % 10) / 10.0);
                session.ForwardAndSample([378], 0f, 0);
            }
        });

        Assert.Equal(0, allocated);
    }

    [Fact]
    public void ForwardAndSample_Greedy_IsTheArgMaxOfForward()
    {
        using LlamaSession sampling = new(TestData.Stories, new SessionOptions { ContextLength = 32 });
        using LlamaSession forward = new(TestData.Stories, new SessionOptions { ContextLength = 32 });
        int[] prompt = [1, 403, 407, 261];
        int next = sampling.ForwardAndSample(prompt, 0f, 0);
        int expected = Sampler.ArgMax(forward.Forward(prompt));
        for (int step = 0; step < 10; step++)
        {
            Assert.Equal(expected, next);
            next = sampling.ForwardAndSample([next], 0f, 0);
            expected = Sampler.ArgMax(forward.Forward([expected]));
        }
    }
}

/// <summary>ILGPU's CPU accelerator and stories260K's weights on it, shared by one test class.</summary>
public sealed class IlgpuStoriesFixture : IDisposable
{
    /// <summary>
    /// The accelerator (O1, Kiln's default), simulating 4 lanes × 4 warps: every simulated thread is an OS thread
    /// that each barrier and shuffle synchronizes, so a whole model runs about 20x faster than on the 32 × 2 device
    /// the kernel properties use, and the kernels also run at narrow group shapes (4×4 matrix-product tiles).
    /// </summary>
    public IlgpuDevice Device { get; } = IlgpuDevice.CreateCpuAccelerator(ILGPU.OptimizationLevel.O1, threadsPerWarp: 4, warpsPerGroup: 4);

    /// <summary>stories260K on the device.</summary>
    public LlamaWeights Stories { get; }

    /// <summary>Copies the weights to the device.</summary>
    public IlgpuStoriesFixture()
    {
        Stories = TestData.Stories.To(Device);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Stories.Dispose();
        Device.Dispose();
    }
}

/// <summary>The Llama session on ILGPU's CPU accelerator against the cpu session.</summary>
public sealed class IlgpuSessionTests : IClassFixture<IlgpuStoriesFixture>
{
    private readonly IlgpuStoriesFixture _fixture;

    /// <summary>Uses the class's accelerator.</summary>
    public IlgpuSessionTests(IlgpuStoriesFixture fixture)
    {
        _fixture = fixture;
    }

    [Fact]
    public void Stories260K_Greedy_ThroughTheDevicePath_GivesTheCpuIds()
    {
        // 30 new tokens through TextGenerator: prefill, then one id read back per step.
        SessionFactory factory = InferenceSessions.Default;
        using IInferenceSession session = factory(_fixture.Stories, new SessionOptions { ContextLength = 40 });
        Assert.IsType<LlamaSession>(session);
        TextGenerator generator = new(session, TestData.StoriesTok, new Sampler(512, SamplerOptions.Greedy));

        GenerationResult result = generator.Generate("Once upon a time", 30);

        int[] all = [.. result.PromptTokens.Skip(1), .. result.GeneratedTokens];
        Assert.Equal(TestData.GreedyReferenceIds[..34], all);
    }

    [Fact]
    public void PrefillInPieces_EqualsOnePiece_AndTheCpuSession()
    {
        int[] tokens = [1, .. TestData.GreedyReferenceIds[..8]];
        using LlamaSession device = new(_fixture.Stories, new SessionOptions { ContextLength = 16 });
        using LlamaSession cpu = new(TestData.Stories, new SessionOptions { ContextLength = 16 });

        float[] expected = cpu.Forward(tokens).ToArray();
        float[] whole = device.Forward(tokens).ToArray();
        device.Reset();
        device.Forward(tokens.AsSpan(0, 4));
        device.Forward(tokens.AsSpan(4, 1));
        float[] pieces = device.Forward(tokens.AsSpan(5)).ToArray();

        // Tolerance: 1e-4 absolute (logits are O(10)); float32 sums in other orders than the cpu kernels'.
        AssertClose(expected, whole, 1e-4, "one piece");
        AssertClose(whole, pieces, 1e-4, "pieces");
    }

    [Fact]
    public void ForwardAndSample_Greedy_IsTheArgMaxOfForward()
    {
        using LlamaSession sampling = new(_fixture.Stories, new SessionOptions { ContextLength = 16 });
        using LlamaSession forward = new(_fixture.Stories, new SessionOptions { ContextLength = 16 });
        int[] prompt = [1, 403, 407];
        int next = sampling.ForwardAndSample(prompt, 0f, 0);
        int expected = Sampler.ArgMax(forward.Forward(prompt));
        for (int step = 0; step < 4; step++)
        {
            Assert.Equal(expected, next);
            next = sampling.ForwardAndSample([next], 0f, 0);
            expected = Sampler.ArgMax(forward.Forward([expected]));
        }

        Assert.Equal(expected, next);
    }

    [Fact]
    public void AContextThatDoesNotFitTheDevice_IsRefused()
    {
        // Pretend the device holds the weights plus 4 MiB (everything fits), then plus 1 MiB: the buffers (about
        // 0.7 MiB, mostly one prefill chunk's activations) fit but the 512-position cache (2·5·32·512·4 B = 640 KiB)
        // does not, and the message suggests a shorter context.
        long weights = _fixture.Stories.Tensors.Sum(t => t.Length * t.DType.SizeOf());
        using (new LlamaSession(_fixture.Stories, new SessionOptions(), weights + (4L << 20)))
        {
        }

        InsufficientMemoryException error = Assert.Throws<InsufficientMemoryException>(
            () => new LlamaSession(_fixture.Stories, new SessionOptions(), weights + (1L << 20)));
        Assert.Contains("on ilgpu-cpu", error.Message);
        Assert.Contains("SessionOptions.ContextLength", error.Message);
    }

    [Fact]
    public void ForwardAndSample_ATokenOtherThanTheLastDraw_IsUploaded()
    {
        // After a draw, feed a different id: the session must embed that id, not the one it drew.
        using LlamaSession sampling = new(_fixture.Stories, new SessionOptions { ContextLength = 8 });
        using LlamaSession forward = new(_fixture.Stories, new SessionOptions { ContextLength = 8 });
        int[] prompt = [1, 403];
        int drawn = sampling.ForwardAndSample(prompt, 0f, 0);
        forward.Forward(prompt);
        int other = (drawn + 7) % 512;

        int next = sampling.ForwardAndSample([other], 0f, 0);

        Assert.Equal(Sampler.ArgMax(forward.Forward([other])), next);
    }

    [Fact]
    public void ForwardAndSample_IdsOutsideTheVocabulary_AreRefusedBeforeAnythingRuns()
    {
        // -1 is also the "nothing drawn yet" marker: it must not pass for the last draw.
        using LlamaSession session = new(_fixture.Stories, new SessionOptions { ContextLength = 8 });
        foreach (int id in new[] { -1, 512 })
        {
            ArgumentException draw = Assert.Throws<ArgumentException>(() => session.ForwardAndSample([id], 0f, 0));
            Assert.Contains($"token id {id} (position 0) is outside the vocabulary of 512", draw.Message);
            ArgumentException forward = Assert.Throws<ArgumentException>(() => session.Forward([1, id]));
            Assert.Contains($"token id {id} (position 1)", forward.Message);
            Assert.Equal(0, session.Position);
        }

        // Bad draw arguments are refused before the tokens run, too.
        Assert.Throws<ArgumentOutOfRangeException>(() => session.ForwardAndSample([1], -1f, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => session.ForwardAndSample([1], 1f, 1.0));
        Assert.Equal(0, session.Position);
    }

    [Fact]
    public void Reset_ThenReuse_RepeatsTheRun_AndFillsTheContextExactly()
    {
        // A context of 3: a 2-token prompt and one decode step fill it; the next token does not fit. (Each call
        // costs about a second on this device: the steps are few.)
        using LlamaSession session = new(_fixture.Stories, new SessionOptions { ContextLength = 3 });
        int[] Run()
        {
            int first = session.ForwardAndSample([1, 403], 0f, 0);
            return [first, session.ForwardAndSample([first], 0f, 0)];
        }

        int[] ids = Run();
        Assert.Equal(3, session.Position);
        InvalidOperationException full = Assert.Throws<InvalidOperationException>(() => session.ForwardAndSample([ids[^1]], 0f, 0));
        Assert.Contains("0 of the context's 3 positions are left", full.Message);
        Assert.Equal(3, session.Position);

        session.Reset();
        Assert.Equal(ids, Run());

        // After a reset, the last draw fed first is that token at position 0.
        session.Reset();
        int again = session.ForwardAndSample([ids[^1]], 0f, 0);
        using LlamaSession fresh = new(_fixture.Stories, new SessionOptions { ContextLength = 3 });
        Assert.Equal(Sampler.ArgMax(fresh.Forward([ids[^1]])), again);
    }

    [Fact]
    public void Dispose_Twice_IsHarmless_AndUseAfterDispose_Throws()
    {
        LlamaSession session = new(_fixture.Stories, new SessionOptions { ContextLength = 4 });
        int drawn = session.ForwardAndSample([1], 0f, 0);
        session.Dispose();
        session.Dispose();

        Assert.Throws<ObjectDisposedException>(() => session.Forward([1]));
        Assert.Throws<ObjectDisposedException>(() => session.ForwardAndSample([drawn], 0f, 0));
        Assert.Throws<ObjectDisposedException>(() => session.ForwardAndSample([1], 0.5f, 0.5));
    }

    private static void AssertClose(float[] expected, float[] actual, double tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance, $"{what}: logit {i} is {actual[i]}, expected {expected[i]} within {tolerance}");
        }
    }
}
