// The float32 CPU mixer (chunked prefill and recurrent step) against the float64 sequential reference, for SISO and
// MIMO (R = 2, 4): outputs and all four final states, from fresh and random cached states, over lengths 1, 2,
// C - 1, C, C + 1 and ragged ones; prefill in pieces and decode after prefill against one pass; bitwise
// repeatability and thread-count independence; a 32K-token run with large Δ; no allocation while decoding; bad input.
//
// Tolerance: max |y - y_ref| <= 1e-4 · max(max |y_ref|, 1e-3), the same for the state S, and 1e-4 rad for the
// angles (compared on the circle). Float32 rounds every product to about 6e-8 relative; the chunked form sums up to
// C·R terms per row and the decays and rotations add a few roundings each, so errors of a few 1e-6 relative are
// expected (200 random cases measured at most 4.7e-6); 1e-4 leaves margin while still failing any wrong term, which
// changes outputs by far more than 1e-4 of their size. The floor 1e-3 covers outputs that cancel to near zero,
// where the error is set by the size of the intermediate terms, not of the result.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Devices;
using Kiln.Models.Mamba;
using Xunit;

namespace Kiln.Models.Tests.Mamba;

public sealed class Mamba3MixerTests
{
    private const double Tolerance = 1e-4;
    private static readonly CpuDevice s_device = new(threads: 2);
    private static readonly CpuDevice s_single = new(threads: 1);

    [Property(MaxTest = 80)]
    public Property Siso_MatchesTheFloat64Reference() => Prop.ForAll(Mamba3Cases.Cases([1]).ToArbitrary(), MatchesReference);

    [Property(MaxTest = 80)]
    public Property Mimo_MatchesTheFloat64Reference() => Prop.ForAll(Mamba3Cases.Cases([2, 4]).ToArbitrary(), MatchesReference);

    [Property(MaxTest = 60)]
    public Property PrefillInPieces_EqualsOnePass() => Prop.ForAll(
        Mamba3Cases.Cases([1, 2, 4]).ToArbitrary(),
        Gen.Choose(0, 1000).Two().ToArbitrary(),
        (c, splits) =>
        {
            using Mamba3Weights weights = Mamba3Cases.Weights(c.Config, c.Seed);
            float[] input = Mamba3Cases.Input(c.Config, c.Tokens, c.Seed);
            Mamba3ReferenceState start = Mamba3Cases.Start(c.Config, c.CachedStart, c.Seed);
            using Mamba3Mixer mixer = new(weights, s_device);
            (float[] whole, Mamba3Cache wholeCache) = Run(mixer, start, input, [c.Tokens]);

            // Three pieces at two random (not chunk-aligned) points, one of which may be empty.
            int first = splits.Item1 % (c.Tokens + 1), second = first + (splits.Item2 % (c.Tokens - first + 1));
            (float[] pieces, Mamba3Cache piecesCache) = Run(mixer, start, input, [first, second - first, c.Tokens - second]);
            using (wholeCache)
            using (piecesCache)
            {
                return Close(whole, pieces, wholeCache, piecesCache, $"{c} pieces [{first}, {second})");
            }
        });

    [Property(MaxTest = 60)]
    public Property DecodeAfterPrefill_EqualsOnePass() => Prop.ForAll(
        Mamba3Cases.Cases([1, 2, 4]).ToArbitrary(),
        Gen.Choose(0, 1000).ToArbitrary(),
        (c, split) =>
        {
            using Mamba3Weights weights = Mamba3Cases.Weights(c.Config, c.Seed);
            float[] input = Mamba3Cases.Input(c.Config, c.Tokens, c.Seed);
            Mamba3ReferenceState start = Mamba3Cases.Start(c.Config, c.CachedStart, c.Seed);
            using Mamba3Mixer mixer = new(weights, s_device);
            (float[] whole, Mamba3Cache wholeCache) = Run(mixer, start, input, [c.Tokens]);

            // A prefill of the first `prompt` tokens, then one step per remaining token.
            int prompt = split % (c.Tokens + 1);
            int[] lengths = [prompt, .. Enumerable.Repeat(1, c.Tokens - prompt)];
            (float[] decoded, Mamba3Cache decodedCache) = Run(mixer, start, input, lengths);
            using (wholeCache)
            using (decodedCache)
            {
                return Close(whole, decoded, wholeCache, decodedCache, $"{c} prompt {prompt}");
            }
        });

    [Property(MaxTest = 30)]
    public Property RepeatedRuns_AreBitwiseIdentical_OnAnyThreadCount() => Prop.ForAll(
        Mamba3Cases.Cases([1, 2, 4]).ToArbitrary(),
        c =>
        {
            using Mamba3Weights weights = Mamba3Cases.Weights(c.Config, c.Seed);
            float[] input = Mamba3Cases.Input(c.Config, c.Tokens, c.Seed);
            Mamba3ReferenceState start = Mamba3Cases.Start(c.Config, c.CachedStart, c.Seed);
            using Mamba3Mixer two = new(weights, s_device);
            using Mamba3Mixer one = new(weights, s_single);
            (float[] a, Mamba3Cache ca) = Run(two, start, input, [c.Tokens]);
            (float[] b, Mamba3Cache cb) = Run(two, start, input, [c.Tokens]);
            (float[] single, Mamba3Cache cs) = Run(one, start, input, [c.Tokens]);
            using (ca)
            using (cb)
            using (cs)
            {
                bool same = a.AsSpan().SequenceEqual(b) && a.AsSpan().SequenceEqual(single)
                    && ca.State.ToArray().AsSpan().SequenceEqual(cs.State.ToArray()) && cb.PrevKey.ToArray().AsSpan().SequenceEqual(cs.PrevKey.ToArray());
                return same.Label(c.ToString());
            }
        });

    [Fact]
    public void SmallPieces_MatchOnePiece()
    {
        // A mixer whose scratch holds 3 tokens runs a 29-token call in pieces of 3 (chunk 2 gives pieces of 2).
        Mamba3Config config = new() { DModel = 6, DState = 8, HeadDim = 4, Expand = 2, ChunkSize = 2, IsMimo = true, MimoRank = 2 };
        using Mamba3Weights weights = Mamba3Cases.Weights(config, 5);
        float[] input = Mamba3Cases.Input(config, 29, 5);
        Mamba3ReferenceState start = Mamba3Cases.Start(config, true, 5);
        using Mamba3Mixer small = new(weights, s_device, maxTokens: 3);
        using Mamba3Mixer large = new(weights, s_device);
        Assert.Equal(2, small.MaxTokens);
        (float[] a, Mamba3Cache ca) = Run(small, start, input, [29]);
        (float[] b, Mamba3Cache cb) = Run(large, start, input, [29]);
        using (ca)
        using (cb)
        {
            (double err, double max) = Mamba3Cases.Compare(b.Select(v => (double)v).ToArray(), a);
            Assert.True(err <= Tolerance * Math.Max(max, 1e-3), $"err {err} max {max}");
            Assert.Equal(29, ca.Tokens);
        }
    }

    [Theory]
    [InlineData(false, Mamba3AActivation.Softplus)]
    [InlineData(false, Mamba3AActivation.HeavyTail)]
    [InlineData(true, Mamba3AActivation.HeavyTail)]
    public void LongSequence_WithLargeDt_StaysFinite(bool mimo, Mamba3AActivation activation)
    {
        // 32K tokens through a tiny mixer whose Δ is about 8 (dt_bias 8) and inputs of size 10: no NaN, no infinity,
        // the angles stay wrapped. Large Δ makes α = e^{Δ·A} underflow and the γ terms large.
        Mamba3Config config = new() { DModel = 4, DState = 4, HeadDim = 2, Expand = 1, ChunkSize = 16, IsMimo = mimo, MimoRank = 2, AActivation = activation, RopeFraction = 1 };
        const int tokens = 32768;
        using Mamba3Weights weights = Mamba3Cases.Weights(config, 9);
        weights.DtBias.AsSpan().Fill(8f);
        float[] input = Mamba3Cases.Input(config, tokens, 9).Select(v => v * 5).ToArray();
        using Mamba3Mixer mixer = new(weights, s_device, maxTokens: 4096);
        using Mamba3Cache cache = mixer.CreateCache();
        using Tensor x = Tensor.FromArray(input, [tokens, config.DModel]);
        using Tensor y = Tensor.Empty([tokens, config.DModel]);
        mixer.Forward(x, y, cache);
        Assert.All(y.ToArray(), v => Assert.True(float.IsFinite(v)));
        Assert.All(cache.State.ToArray(), v => Assert.True(float.IsFinite(v)));
        Assert.All(cache.Angles.ToArray(), v => Assert.True(v >= 0 && v < 2 * MathF.PI, $"angle {v}"));

        // Then a few decode steps from the long state, also finite.
        using Tensor one = Tensor.FromArray(input.AsSpan(0, config.DModel), [1, config.DModel]);
        using Tensor oneOut = Tensor.Empty([1, config.DModel]);
        for (int i = 0; i < 8; i++)
        {
            mixer.Forward(one, oneOut, cache);
            Assert.All(oneOut.ToArray(), v => Assert.True(float.IsFinite(v)));
        }
    }

    [Fact]
    public void Decode_AllocatesNothing()
    {
        Mamba3Config config = new() { DModel = 16, DState = 8, HeadDim = 4, ChunkSize = 4, IsMimo = true, MimoRank = 2, IsOutProjNorm = true };
        using Mamba3Weights weights = Mamba3Cases.Weights(config, 3);
        using Mamba3Mixer mixer = new(weights, s_device);
        using Mamba3Cache cache = mixer.CreateCache();
        using Tensor x = Tensor.FromArray(Mamba3Cases.Input(config, 1, 3), [1, config.DModel]);
        using Tensor y = Tensor.Empty([1, config.DModel]);
        for (int i = 0; i < 20; i++)
        {
            mixer.Forward(x, y, cache);
        }

        long bytes = Allocations.Measure(() =>
        {
            for (int i = 0; i < 50; i++)
            {
                mixer.Forward(x, y, cache);
            }
        });
        Assert.Equal(0, bytes);
    }

    [Fact]
    public void InPlace_EqualsSeparateOutput()
    {
        Mamba3Config config = new() { DModel = 8, DState = 8, HeadDim = 4, ChunkSize = 3 };
        using Mamba3Weights weights = Mamba3Cases.Weights(config, 4);
        float[] input = Mamba3Cases.Input(config, 11, 4);
        using Mamba3Mixer mixer = new(weights, s_device, maxTokens: 6);
        using Mamba3Cache c1 = mixer.CreateCache(), c2 = mixer.CreateCache();
        using Tensor x = Tensor.FromArray(input, [1, 11, config.DModel]);
        using Tensor y = Tensor.Empty([1, 11, config.DModel]);
        mixer.Forward(x, y, c1);
        mixer.Forward(x, x, c2);
        Assert.Equal(y.ToArray(), x.ToArray());
    }

    [Fact]
    public void BadInput_GivesOneLineErrors()
    {
        Mamba3Config config = new() { DModel = 8, DState = 8, HeadDim = 4, ChunkSize = 3 };
        using Mamba3Weights weights = Mamba3Cases.Weights(config, 4);
        using Mamba3Mixer mixer = new(weights, s_device);
        using Mamba3Cache cache = mixer.CreateCache();
        using Mamba3Cache other = new(config with { DState = 4 });
        using Tensor good = Tensor.Empty([3, 8]), wrongWidth = Tensor.Empty([3, 7]), batch = Tensor.Empty([2, 3, 8]), empty = Tensor.Empty([0, 8]);
        using Tensor longer = Tensor.Empty([4, 8]), big = Tensor.Empty([8, 8]);
        using Tensor shifted = big.Slice(1, 3);
        using Tensor front = big.Slice(0, 3);

        Assert.Contains("d_model 8", Assert.Throws<ArgumentException>(() => mixer.Forward(wrongWidth, good, cache)).Message);
        Assert.Contains("one sequence", Assert.Throws<ArgumentException>(() => mixer.Forward(batch, batch, cache)).Message);
        Assert.Contains("T >= 1", Assert.Throws<ArgumentException>(() => mixer.Forward(empty, empty, cache)).Message);
        Assert.Contains("like the input", Assert.Throws<ArgumentException>(() => mixer.Forward(good, longer, cache)).Message);
        Assert.Contains("another config", Assert.Throws<ArgumentException>(() => mixer.Forward(good, good, other)).Message);
        Assert.Contains("partly overlaps", Assert.Throws<ArgumentException>(() => mixer.Forward(front, shifted, cache)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new Mamba3Mixer(weights, s_device, maxTokens: 0));
    }

    // Runs the mixer from `start` over `input` in calls of the given lengths (a length may be 0: skipped).
    private static (float[] Output, Mamba3Cache Cache) Run(Mamba3Mixer mixer, Mamba3ReferenceState start, float[] input, int[] lengths)
    {
        int d = mixer.Config.DModel;
        Mamba3Cache cache = Mamba3Cases.Cache(mixer.Config, start);
        float[] output = new float[input.Length];
        int done = 0;
        foreach (int length in lengths)
        {
            if (length == 0)
            {
                continue;
            }

            using Tensor x = Tensor.FromArray(input.AsSpan(done * d, length * d), [length, d]);
            using Tensor y = Tensor.Empty([length, d]);
            mixer.Forward(x, y, cache);
            y.ToArray().CopyTo(output, done * d);
            done += length;
        }

        return (output, cache);
    }

    private static bool MatchesReference(Mamba3Case c)
    {
        using Mamba3Weights weights = Mamba3Cases.Weights(c.Config, c.Seed);
        float[] input = Mamba3Cases.Input(c.Config, c.Tokens, c.Seed);
        Mamba3ReferenceState state = Mamba3Cases.Start(c.Config, c.CachedStart, c.Seed);
        using Mamba3Mixer mixer = new(weights, s_device);
        (float[] actual, Mamba3Cache cache) = Run(mixer, state, input, [c.Tokens]);
        using (cache)
        {
            double[] expected = Mamba3Reference.Forward(weights, input, c.Tokens, state);
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

    private static Property Close(float[] expected, float[] actual, Mamba3Cache expectedCache, Mamba3Cache actualCache, string label)
    {
        (double err, double max) = Mamba3Cases.Compare(expected.Select(v => (double)v).ToArray(), actual);
        (double stateErr, double stateMax) = Mamba3Cases.Compare(expectedCache.State.ToArray().Select(v => (double)v).ToArray(), actualCache.State.ToArray());
        double angleErr = Mamba3Cases.AngleError(expectedCache.Angles.ToArray().Select(v => (double)v).ToArray(), actualCache.Angles.ToArray());
        (double xErr, double xMax) = Mamba3Cases.Compare(expectedCache.PrevX.ToArray().Select(v => (double)v).ToArray(), actualCache.PrevX.ToArray());
        bool ok = err <= Tolerance * Math.Max(max, 1e-3) && stateErr <= Tolerance * Math.Max(stateMax, 1e-3) && angleErr <= 1e-4
            && xErr <= Tolerance * Math.Max(xMax, 1e-3);
        return ok.Label($"{label}: output err {err:E3} (max {max:E3}), state err {stateErr:E3} (max {stateMax:E3}), angle err {angleErr:E3}, x err {xErr:E3}");
    }
}
