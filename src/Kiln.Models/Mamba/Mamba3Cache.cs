// The decode cache of one Mamba-3 mixer for one sequence: everything the exponential-trapezoidal recurrence needs
// to continue after the last token it saw (the official module's four states, batch 1):
//   Angles  [H, K]     the accumulated rotation angles θ, kept in [0, 2π)
//   State   [H, P, N]  the state S = h_{t} (the official layout: P rows of N)
//   PrevKey [R, H, N]  the previous token's key K (normed, biased, rotated by its own angles)
//   PrevX   [H, P]     the previous token's raw x (MIMO re-scales it by mimo_x when it is used)
// A fresh sequence starts from zeros: K_prev = 0 and x_prev = 0 make the first token's β term vanish. The cache is
// allocated once and its size does not depend on the sequence length; Reset clears it for the next sequence.
namespace Kiln.Models.Mamba;

/// <summary>The recurrent state of one Mamba-3 mixer for one sequence (float32, CPU). Dispose frees it.</summary>
public sealed class Mamba3Cache : IDisposable
{
    /// <summary>Allocates a zero cache (a fresh sequence) for <paramref name="config"/>.</summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public Mamba3Cache(Mamba3Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Config = config;
        Angles = Tensor.Empty([config.Heads, config.AngleCount]);
        State = Tensor.Empty([config.Heads, config.HeadDim, config.DState]);
        PrevKey = Tensor.Empty([config.Rank, config.Heads, config.DState]);
        PrevX = Tensor.Empty([config.Heads, config.HeadDim]);
    }

    /// <summary>The configuration the sizes follow.</summary>
    public Mamba3Config Config { get; }

    /// <summary>The accumulated angles θ in [0, 2π). [H, K]</summary>
    public Tensor Angles { get; }

    /// <summary>The state S after the last token. [H, P, N]</summary>
    public Tensor State { get; }

    /// <summary>The last token's rotated key. [R, H, N]</summary>
    public Tensor PrevKey { get; }

    /// <summary>The last token's raw x. [H, P]</summary>
    public Tensor PrevX { get; }

    /// <summary>How many tokens the cache has seen since it was made or reset.</summary>
    public long Tokens { get; internal set; }

    /// <summary>The bytes the four states take.</summary>
    public long Bytes => (Angles.Length + State.Length + PrevKey.Length + PrevX.Length) * sizeof(float);

    /// <summary>Clears every state: the next token starts a new sequence.</summary>
    public void Reset()
    {
        Angles.AsSpan().Clear();
        State.AsSpan().Clear();
        PrevKey.AsSpan().Clear();
        PrevX.AsSpan().Clear();
        Tokens = 0;
    }

    /// <summary>Sets the states from a float64 reference state (rounded to float32), for tests and state import.</summary>
    /// <exception cref="ArgumentException">The state belongs to another config.</exception>
    public void CopyFrom(Mamba3ReferenceState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state.Config != Config)
        {
            throw new ArgumentException("Mamba3Cache.CopyFrom: the state was made for another config; use one config for both.", nameof(state));
        }

        Narrow(state.Angles, Angles.AsSpan());
        Narrow(state.State, State.AsSpan());
        Narrow(state.PrevKey, PrevKey.AsSpan());
        Narrow(state.PrevX, PrevX.AsSpan());
    }

    /// <summary>Frees the states.</summary>
    public void Dispose()
    {
        Angles.Dispose();
        State.Dispose();
        PrevKey.Dispose();
        PrevX.Dispose();
    }

    private static void Narrow(double[] source, Span<float> destination)
    {
        for (int i = 0; i < source.Length; i++)
        {
            destination[i] = (float)source[i];
        }
    }
}
