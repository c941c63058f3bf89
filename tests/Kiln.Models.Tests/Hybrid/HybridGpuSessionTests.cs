// HybridSession on ILGPU's CPU accelerator (the cuda code path at small sizes) against the cpu session on the same
// weights: a prefill with a ragged last chunk, then decode steps, for SISO and MIMO (R = 2) hybrids with GQA
// attention and RoPE; Reset and a second run give bitwise the same logits.
//
// Tolerance: max |logit - cpu| <= 1e-5 · max(max |cpu logit|, 1). Both sessions compute in float32; the device's
// matrix products, norms and Mamba-3 kernels sum in other orders than the cpu's (measured: at most 2.5e-7 relative
// over the 5 layers and 5 steps here); 1e-5 leaves a 40x margin and still fails a wrong term, which moves logits by
// far more than 1e-5 of their size.
using Kiln.Devices;
using Kiln.Models.Hybrid;
using Kiln.Models.Tests.Mamba;
using Xunit;
using Xunit.Abstractions;

namespace Kiln.Models.Tests.Hybrid;

public sealed class HybridGpuSessionTests : IClassFixture<IlgpuMixerFixture>
{
    private const double Tolerance = 1e-5;
    private readonly IlgpuDevice _device;
    private readonly ITestOutputHelper _output;

    public HybridGpuSessionTests(IlgpuMixerFixture fixture, ITestOutputHelper output)
    {
        _device = fixture.Device;
        _output = output;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void DecodeAfterPrefill_MatchesTheCpuSession(int rank)
    {
        HybridConfig config = HybridCases.Small(rank);
        using HybridWeights host = HybridWeights.CreateRandom(config, 21);
        using HybridWeights weights = host.To(_device);
        using HybridSession cpu = new(host, new SessionOptions());
        using HybridSession gpu = new(weights, new SessionOptions());
        int[] tokens = HybridCases.Tokens(12, config.VocabSize, 21);

        // A prompt of 7 tokens (chunks of 3: a ragged last chunk), then 5 one-token steps.
        double worst = 0;
        for (int at = 7; at <= tokens.Length; at++)
        {
            ReadOnlySpan<int> feed = at == 7 ? tokens.AsSpan(0, 7) : tokens.AsSpan(at - 1, 1);
            float[] expected = cpu.Forward(feed).ToArray();
            float[] actual = gpu.Forward(feed).ToArray();
            (double err, double max) = HybridCases.Compare(expected.Select(v => (double)v).ToArray(), actual);
            double relative = err / Math.Max(max, 1);
            worst = Math.Max(worst, relative);
            Assert.True(relative <= Tolerance, $"rank {rank}, position {at}: err {err:E3} (max {max:E3})");
        }

        _output.WriteLine($"rank {rank}: worst relative logit error {worst:E3}");
        Assert.Equal(tokens.Length, gpu.Position);
    }

    [Fact]
    public void Reset_AndRerun_AreBitwiseIdentical()
    {
        HybridConfig config = HybridCases.Small(2);
        using HybridWeights host = HybridWeights.CreateRandom(config, 8);
        using HybridWeights weights = host.To(_device);
        using HybridSession session = new(weights, new SessionOptions());
        int[] tokens = HybridCases.Tokens(6, config.VocabSize, 8);
        float[] first = session.Forward(tokens).ToArray();
        float[] firstStep = session.Forward([tokens[0]]).ToArray();
        session.Reset();
        float[] second = session.Forward(tokens).ToArray();
        float[] secondStep = session.Forward([tokens[0]]).ToArray();
        Assert.Equal(first, second);
        Assert.Equal(firstStep, secondStep);
    }
}
