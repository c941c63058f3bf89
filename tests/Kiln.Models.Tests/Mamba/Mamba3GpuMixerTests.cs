// The Mamba-3 mixer's ILGPU path (Mamba3Kernels) on ILGPU's CPU accelerator, at small sizes (the accelerator runs
// every simulated thread as an OS thread, so cases are tiny and few): against the float64 reference for SISO and
// MIMO (R = 2) over lengths 1, C - 1, C + 1 and ragged ones from fresh and cached start states; decode after prefill
// against one pass; a long run with large Δ stays finite; repeated runs are bitwise identical; device errors.
//
// Tolerances as in Mamba3MixerTests (1e-4 of the output's size, 1e-4 rad for angles): the kernels compute in
// float32 like the cpu path, in another summation order (one thread per output element, sequential sums over N, P
// and a chunk's columns), so their error is of the same few 1e-6 relative.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Devices;
using Kiln.Models.Mamba;
using Xunit;

namespace Kiln.Models.Tests.Mamba;

/// <summary>One narrow simulated GPU (4 lanes × 4 warps) shared by the device mixer tests.</summary>
public sealed class IlgpuMixerFixture : IDisposable
{
    /// <summary>The accelerator.</summary>
    public IlgpuDevice Device { get; } = IlgpuDevice.CreateCpuAccelerator(ILGPU.OptimizationLevel.O1, threadsPerWarp: 4, warpsPerGroup: 4);

    /// <inheritdoc />
    public void Dispose() => Device.Dispose();
}

public sealed class Mamba3GpuMixerTests : IClassFixture<IlgpuMixerFixture>
{
    private const double Tolerance = 1e-4;
    private readonly IlgpuDevice _device;

    public Mamba3GpuMixerTests(IlgpuMixerFixture fixture)
    {
        _device = fixture.Device;
    }

    [Property(MaxTest = 12)]
    public Property Siso_MatchesTheFloat64Reference() => Prop.ForAll(Mamba3Cases.Cases([1], maxTokens: 20).ToArbitrary(), MatchesReference);

    [Property(MaxTest = 12)]
    public Property Mimo_MatchesTheFloat64Reference() => Prop.ForAll(Mamba3Cases.Cases([2], maxTokens: 20).ToArbitrary(), MatchesReference);

    [Theory]
    [InlineData(1, 1, false)]
    [InlineData(1, 1, true)]
    [InlineData(1, 3, true)]
    [InlineData(1, 5, true)]
    [InlineData(1, 13, true)]
    [InlineData(2, 1, true)]
    [InlineData(2, 3, false)]
    [InlineData(2, 5, true)]
    [InlineData(2, 13, true)]
    public void FixedLengths_MatchTheFloat64Reference(int rank, int tokens, bool cached)
    {
        // Chunk 4: lengths 1, C - 1, C + 1 and a ragged 3 chunks + 1, from a fresh or a random cached state.
        Mamba3Config config = new()
        {
            DModel = 6, DState = 8, HeadDim = 3, Expand = 2, Groups = 2, ChunkSize = 4, IsMimo = rank > 1, MimoRank = rank, IsOutProjNorm = true,
        };
        Assert.True(MatchesReference(new Mamba3Case(config, 11, tokens, cached)));
    }

    [Property(MaxTest = 8)]
    public Property DecodeAfterPrefill_EqualsOnePass() => Prop.ForAll(
        Mamba3Cases.Cases([1, 2], maxTokens: 12).ToArbitrary(),
        Gen.Choose(0, 1000).ToArbitrary(),
        (c, split) =>
        {
            using Mamba3Weights host = Mamba3Cases.Weights(c.Config, c.Seed);
            using Mamba3Weights weights = host.To(_device);
            float[] input = Mamba3Cases.Input(c.Config, c.Tokens, c.Seed);
            Mamba3ReferenceState start = Mamba3Cases.Start(c.Config, c.CachedStart, c.Seed);
            using Mamba3Mixer mixer = new(weights, _device);
            (float[] whole, float[] wholeState) = Run(mixer, start, input, [c.Tokens]);

            // A prefill of the first `prompt` tokens, then one step per remaining token.
            int prompt = split % (c.Tokens + 1);
            int[] lengths = [prompt, .. Enumerable.Repeat(1, c.Tokens - prompt)];
            (float[] decoded, float[] decodedState) = Run(mixer, start, input, lengths);
            (double err, double max) = Mamba3Cases.Compare(whole.Select(v => (double)v).ToArray(), decoded);
            (double stateErr, double stateMax) = Mamba3Cases.Compare(wholeState.Select(v => (double)v).ToArray(), decodedState);
            bool ok = err <= Tolerance * Math.Max(max, 1e-3) && stateErr <= Tolerance * Math.Max(stateMax, 1e-3);
            return ok.Label($"{c} prompt {prompt}: output err {err:E3} (max {max:E3}), state err {stateErr:E3} (max {stateMax:E3})");
        });

    [Fact]
    public void SmallPieces_MatchTheReference()
    {
        // A mixer whose scratch holds 2 tokens (chunk 2) runs a 9-token call in pieces, then a step after it.
        Mamba3Config config = new() { DModel = 6, DState = 8, HeadDim = 4, Expand = 2, ChunkSize = 2, IsMimo = true, MimoRank = 2 };
        using Mamba3Weights host = Mamba3Cases.Weights(config, 5);
        using Mamba3Weights weights = host.To(_device);
        float[] input = Mamba3Cases.Input(config, 10, 5);
        Mamba3ReferenceState start = Mamba3Cases.Start(config, true, 5);
        Mamba3ReferenceState state = Mamba3Cases.Start(config, true, 5);
        using Mamba3Mixer mixer = new(weights, _device, maxTokens: 3);
        Assert.Equal(2, mixer.MaxTokens);
        (float[] actual, float[] actualState) = Run(mixer, start, input, [9, 1]);
        double[] expected = Mamba3Reference.Forward(host, input, 10, state);
        (double err, double max) = Mamba3Cases.Compare(expected, actual);
        (double stateErr, double stateMax) = Mamba3Cases.Compare(state.State, actualState);
        Assert.True(err <= Tolerance * Math.Max(max, 1e-3), $"output err {err} max {max}");
        Assert.True(stateErr <= Tolerance * Math.Max(stateMax, 1e-3), $"state err {stateErr} max {stateMax}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LongSequence_WithLargeDt_StaysFinite(bool mimo)
    {
        // 2048 tokens (pieces of 512) through a tiny mixer whose Δ is about 8 and inputs of size 10: α = e^{Δ·A}
        // underflows and the γ terms are large; no NaN, no infinity, the angles stay wrapped, then a few steps.
        Mamba3Config config = new()
        {
            DModel = 4, DState = 4, HeadDim = 2, Expand = 1, ChunkSize = 16, IsMimo = mimo, MimoRank = 2, AActivation = Mamba3AActivation.HeavyTail, RopeFraction = 1,
        };
        const int tokens = 2048;
        using Mamba3Weights host = Mamba3Cases.Weights(config, 9);
        host.DtBias.AsSpan().Fill(8f);
        using Mamba3Weights weights = host.To(_device);
        float[] input = Mamba3Cases.Input(config, tokens, 9).Select(v => v * 5).ToArray();
        using Mamba3Mixer mixer = new(weights, _device, maxTokens: 512);
        using Mamba3Cache cache = mixer.CreateCache();
        using Tensor x = Tensor.FromArray(input, [tokens, config.DModel], _device);
        using Tensor y = Tensor.Empty([tokens, config.DModel], device: _device);
        mixer.Forward(x, y, cache);
        Assert.All(y.ToArray(), v => Assert.True(float.IsFinite(v)));
        Assert.All(cache.State.ToArray(), v => Assert.True(float.IsFinite(v)));
        Assert.All(cache.Angles.ToArray(), v => Assert.True(v >= 0 && v < 2 * MathF.PI, $"angle {v}"));

        using Tensor one = Tensor.FromArray(input.AsSpan(0, config.DModel), [1, config.DModel], _device);
        using Tensor oneOut = Tensor.Empty([1, config.DModel], device: _device);
        for (int i = 0; i < 4; i++)
        {
            mixer.Forward(one, oneOut, cache);
            Assert.All(oneOut.ToArray(), v => Assert.True(float.IsFinite(v)));
        }

        Assert.All(cache.State.ToArray(), v => Assert.True(float.IsFinite(v)));
    }

    [Property(MaxTest = 6)]
    public Property RepeatedRuns_AreBitwiseIdentical() => Prop.ForAll(
        Mamba3Cases.Cases([1, 2], maxTokens: 16).ToArbitrary(),
        c =>
        {
            using Mamba3Weights host = Mamba3Cases.Weights(c.Config, c.Seed);
            using Mamba3Weights weights = host.To(_device);
            float[] input = Mamba3Cases.Input(c.Config, c.Tokens + 1, c.Seed);
            Mamba3ReferenceState start = Mamba3Cases.Start(c.Config, c.CachedStart, c.Seed);
            using Mamba3Mixer mixer = new(weights, _device);

            // A prefill, then one step.
            (float[] a, float[] sa) = Run(mixer, start, input, [c.Tokens, 1]);
            (float[] b, float[] sb) = Run(mixer, start, input, [c.Tokens, 1]);
            return (a.AsSpan().SequenceEqual(b) && sa.AsSpan().SequenceEqual(sb)).Label(c.ToString());
        });

    [Fact]
    public void InPlace_EqualsSeparateOutput()
    {
        Mamba3Config config = new() { DModel = 8, DState = 8, HeadDim = 4, ChunkSize = 3 };
        using Mamba3Weights host = Mamba3Cases.Weights(config, 4);
        using Mamba3Weights weights = host.To(_device);
        float[] input = Mamba3Cases.Input(config, 11, 4);
        using Mamba3Mixer mixer = new(weights, _device, maxTokens: 6);
        using Mamba3Cache c1 = mixer.CreateCache(), c2 = mixer.CreateCache();
        using Tensor x = Tensor.FromArray(input, [1, 11, config.DModel], _device);
        using Tensor y = Tensor.Empty([1, 11, config.DModel], device: _device);
        mixer.Forward(x, y, c1);
        mixer.Forward(x, x, c2);
        Assert.Equal(y.ToArray(), x.ToArray());
    }

    [Fact]
    public void DeviceMismatches_GiveOneLineErrors()
    {
        Mamba3Config config = new() { DModel = 8, DState = 8, HeadDim = 4, ChunkSize = 3 };
        using Mamba3Weights host = Mamba3Cases.Weights(config, 4);
        using Mamba3Weights weights = host.To(_device);
        using Mamba3Mixer mixer = new(weights, _device);
        using Mamba3Cache cpuCache = new(config);
        using Mamba3Cache cache = mixer.CreateCache();
        using Tensor cpuInput = Tensor.Empty([3, 8]);
        using Tensor input = Tensor.Empty([3, 8], device: _device);

        Assert.Contains("weights.To(device)", Assert.Throws<ArgumentException>(() => new Mamba3Mixer(host, _device)).Message);
        Assert.Contains("weights.To(device)", Assert.Throws<ArgumentException>(() => new Mamba3Mixer(weights, CpuDevice.Default)).Message);
        Assert.Contains("ilgpu-cpu tensor", Assert.Throws<ArgumentException>(() => mixer.Forward(cpuInput, input, cache)).Message);
        Assert.Contains("mixer.CreateCache()", Assert.Throws<ArgumentException>(() => mixer.Forward(input, input, cpuCache)).Message);
    }

    // Runs the mixer from `start` over `input` in calls of the given lengths (0: skipped); the output and the state.
    private (float[] Output, float[] State) Run(Mamba3Mixer mixer, Mamba3ReferenceState start, float[] input, int[] lengths)
    {
        int d = mixer.Config.DModel;
        using Mamba3Cache cache = new(mixer.Config, _device);
        cache.CopyFrom(start);
        float[] output = new float[input.Length];
        int done = 0;
        foreach (int length in lengths)
        {
            if (length == 0)
            {
                continue;
            }

            using Tensor x = Tensor.FromArray(input.AsSpan(done * d, length * d), [length, d], _device);
            using Tensor y = Tensor.Empty([length, d], device: _device);
            mixer.Forward(x, y, cache);
            y.ToArray().CopyTo(output, done * d);
            done += length;
        }

        return (output, cache.State.ToArray());
    }

    private bool MatchesReference(Mamba3Case c)
    {
        using Mamba3Weights host = Mamba3Cases.Weights(c.Config, c.Seed);
        using Mamba3Weights weights = host.To(_device);
        float[] input = Mamba3Cases.Input(c.Config, c.Tokens, c.Seed);
        Mamba3ReferenceState state = Mamba3Cases.Start(c.Config, c.CachedStart, c.Seed);
        using Mamba3Mixer mixer = new(weights, _device);
        using Mamba3Cache cache = new(c.Config, _device);
        cache.CopyFrom(state);
        using Tensor x = Tensor.FromArray(input, [c.Tokens, c.Config.DModel], _device);
        using Tensor y = Tensor.Empty([c.Tokens, c.Config.DModel], device: _device);
        mixer.Forward(x, y, cache);
        float[] actual = y.ToArray();

        double[] expected = Mamba3Reference.Forward(host, input, c.Tokens, state);
        (double err, double max) = Mamba3Cases.Compare(expected, actual);
        (double stateErr, double stateMax) = Mamba3Cases.Compare(state.State, cache.State.ToArray());
        (double keyErr, double keyMax) = Mamba3Cases.Compare(state.PrevKey, cache.PrevKey.ToArray());
        (double xErr, double xMax) = Mamba3Cases.Compare(state.PrevX, cache.PrevX.ToArray());
        double angleErr = Mamba3Cases.AngleError(state.Angles, cache.Angles.ToArray());
        bool ok = err <= Tolerance * Math.Max(max, 1e-3) && stateErr <= Tolerance * Math.Max(stateMax, 1e-3)
            && keyErr <= Tolerance * Math.Max(keyMax, 1e-3) && xErr <= Tolerance * Math.Max(xMax, 1e-3) && angleErr <= 1e-4;
        if (!ok)
        {
            throw new Xunit.Sdk.XunitException($"{c}: output err {err:E3} (max {max:E3}), state err {stateErr:E3} (max {stateMax:E3}), key err {keyErr:E3}, x err {xErr:E3}, angle err {angleErr:E3}");
        }

        return ok;
    }
}
