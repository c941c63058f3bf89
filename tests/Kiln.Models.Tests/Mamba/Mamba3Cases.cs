// Random small Mamba-3 mixers for the property tests: SISO and MIMO (R = 2, 4), odd head widths and state sizes,
// groups, both rotation layouts, both A activations, the output norm on and off, chunk sizes 1..8 and lengths
// around them (1, 2, C - 1, C, C + 1, ragged), fresh or random cached start states. Weights are drawn wider than
// the official initialisation (Δ from about 0.05 to 2, biases and skips away from 1) so that every term matters.
using FsCheck;
using FsCheck.Fluent;
using Kiln.Kernels;
using Kiln.Models.Mamba;
using Kiln.Models.Sampling;

namespace Kiln.Models.Tests.Mamba;

/// <summary>A mixer case: config, weight seed, the input and (optionally) a random start state.</summary>
public sealed record Mamba3Case(Mamba3Config Config, ulong Seed, int Tokens, bool CachedStart)
{
    public override string ToString() =>
        $"R {Config.Rank} H {Config.Heads} P {Config.HeadDim} N {Config.DState} G {Config.Groups} D {Config.DModel} f {Config.RopeFraction} "
        + $"{Config.AngleLayout} {Config.AActivation} norm {Config.IsOutProjNorm} C {Config.ChunkSize} T {Tokens} cached {CachedStart} seed {Seed}";
}

internal static class Mamba3Cases
{
    /// <summary>Random cases; <paramref name="ranks"/> picks SISO (1) and MIMO ranks.</summary>
    public static Gen<Mamba3Case> Cases(int[] ranks, int maxTokens = 40) =>
        from rank in Gen.Elements(ranks)
        from heads in Gen.Choose(1, 3)
        from p in Gen.Elements(1, 2, 3, 5, 8)
        from n in Gen.Elements(2, 3, 4, 5, 8, 16)
        from full in Gen.Elements(true, false)
        from groups in Gen.Elements(1, heads)
        from twice in Gen.Elements(true, false)
        from chunk in Gen.Choose(1, 8)
        from lengthKind in Gen.Choose(0, 6)
        from free in Gen.Choose(1, maxTokens)
        from layout in Gen.Elements<RopeLayout?>(null, RopeLayout.Adjacent, RopeLayout.HalfSplit)
        from heavy in Gen.Elements(true, false)
        from norm in Gen.Elements(true, false)
        from cached in Gen.Elements(true, false)
        from seed in Gen.Choose(0, 1_000_000)
        let dInner = heads * p
        let expand = twice && dInner % 2 == 0 ? 2 : 1
        let fraction = full || n < 4 ? 1.0 : 0.5
        let tokens = lengthKind switch { 0 => 1, 1 => 2, 2 => Math.Max(1, chunk - 1), 3 => chunk, 4 => chunk + 1, 5 => (2 * chunk) + 3, _ => free }
        select new Mamba3Case(
            new Mamba3Config
            {
                DModel = dInner / expand,
                Expand = expand,
                HeadDim = p,
                DState = n,
                Groups = groups,
                RopeFraction = fraction,
                IsMimo = rank > 1,
                MimoRank = rank,
                ChunkSize = chunk,
                RopeLayout = layout,
                AActivation = heavy ? Mamba3AActivation.HeavyTail : Mamba3AActivation.Softplus,
                IsOutProjNorm = norm,
            },
            (ulong)seed,
            tokens,
            cached);

    /// <summary>Weights for a case: seeded, drawn wide (see the file header).</summary>
    public static Mamba3Weights Weights(Mamba3Config config, ulong seed)
    {
        Mamba3Weights w = Mamba3Weights.CreateRandom(config, seed);
        XorShiftRandom random = new(seed ^ 0x9E3779B97F4A7C15UL);
        Uniform(w.InProj, -1.5f / MathF.Sqrt(config.DModel), 1.5f / MathF.Sqrt(config.DModel), ref random);
        Uniform(w.DtBias, -3f, 1.5f, ref random);
        Uniform(w.BBias, 0f, 2f, ref random);
        Uniform(w.CBias, 0f, 2f, ref random);
        Uniform(w.BNorm, 0.5f, 1.5f, ref random);
        Uniform(w.CNorm, 0.5f, 1.5f, ref random);
        Uniform(w.D, -1f, 2f, ref random);
        foreach (Tensor? t in new[] { w.MimoX, w.MimoZ, w.MimoO, w.Norm })
        {
            if (t is not null)
            {
                Uniform(t, 0.2f, 1.5f, ref random);
            }
        }

        return w;
    }

    /// <summary>The input [T, D], uniform in [-2, 2).</summary>
    public static float[] Input(Mamba3Config config, int tokens, ulong seed)
    {
        XorShiftRandom random = new(seed + 17);
        float[] input = new float[tokens * config.DModel];
        for (int i = 0; i < input.Length; i++)
        {
            input[i] = (float)((random.NextDouble() * 4) - 2);
        }

        return input;
    }

    /// <summary>A random start state (angles in [0, 2π), the rest in [-1, 1)), or zeros.</summary>
    public static Mamba3ReferenceState Start(Mamba3Config config, bool cached, ulong seed)
    {
        Mamba3ReferenceState state = new(config);
        if (!cached)
        {
            return state;
        }

        XorShiftRandom random = new(seed + 31);
        foreach (double[] values in new[] { state.State, state.PrevKey, state.PrevX })
        {
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = (float)((random.NextDouble() * 2) - 1);
            }
        }

        for (int i = 0; i < state.Angles.Length; i++)
        {
            state.Angles[i] = (float)(random.NextDouble() * 2 * Math.PI);
        }

        return state;
    }

    /// <summary>A cache holding <paramref name="state"/> (rounded to float32).</summary>
    public static Mamba3Cache Cache(Mamba3Config config, Mamba3ReferenceState state)
    {
        Mamba3Cache cache = new(config);
        cache.CopyFrom(state);
        return cache;
    }

    /// <summary>max |actual - expected| and max |expected|.</summary>
    public static (double MaxErr, double MaxRef) Compare(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual)
    {
        double err = 0, max = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            err = Math.Max(err, Math.Abs(actual[i] - expected[i]));
            max = Math.Max(max, Math.Abs(expected[i]));
        }

        return (err, max);
    }

    /// <summary>Angles compared modulo 2π: the largest distance on the circle.</summary>
    public static double AngleError(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double diff = Math.Abs(Mamba3Reference.Wrap(actual[i] - expected[i] + Math.PI) - Math.PI);
            worst = Math.Max(worst, diff);
        }

        return worst;
    }

    private static void Uniform(Tensor tensor, float low, float high, ref XorShiftRandom random)
    {
        Span<float> data = tensor.AsSpan();
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = low + (float)(random.NextDouble() * (high - low));
        }
    }
}
