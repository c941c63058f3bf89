// The decode cache of one Mamba-3 mixer for one sequence: everything the exponential-trapezoidal recurrence needs
// to continue after the last token it saw (the official module's four states, batch 1):
//   Angles  [H, K]     the accumulated rotation angles θ, kept in [0, 2π)
//   State   [H, P, N]  the state S = h_{t} (the official layout: P rows of N)
//   PrevKey [R, H, N]  the previous token's key K (normed, biased, rotated by its own angles)
//   PrevX   [H, P]     the previous token's raw x (MIMO re-scales it by mimo_x when it is used)
// A fresh sequence starts from zeros: K_prev = 0 and x_prev = 0 make the first token's β term vanish. The cache is
// allocated once and its size does not depend on the sequence length; Reset clears it for the next sequence. It lives
// on the mixer's device (cpu, or an ILGPU device where the mixer's kernels update it in place).
using Kiln.Devices;

namespace Kiln.Models.Mamba;

/// <summary>The recurrent state of one Mamba-3 mixer for one sequence (float32, on one device). Dispose frees it.</summary>
public sealed class Mamba3Cache : IDisposable
{
    /// <summary>
    /// Allocates a zero cache (a fresh sequence) for <paramref name="config"/> on <paramref name="device"/> (the
    /// default cpu device when null).
    /// </summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public Mamba3Cache(Mamba3Config config, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Config = config;
        Device = device ?? CpuDevice.Default;
        Angles = Tensor.Empty([config.Heads, config.AngleCount], device: Device);
        State = Tensor.Empty([config.Heads, config.HeadDim, config.DState], device: Device);
        PrevKey = Tensor.Empty([config.Rank, config.Heads, config.DState], device: Device);
        PrevX = Tensor.Empty([config.Heads, config.HeadDim], device: Device);
    }

    /// <summary>The configuration the sizes follow.</summary>
    public Mamba3Config Config { get; }

    /// <summary>The device the four states live on.</summary>
    public Device Device { get; }

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
        foreach (Tensor tensor in (Tensor[])[Angles, State, PrevKey, PrevX])
        {
            if (Device is CpuDevice)
            {
                tensor.AsSpan().Clear();
            }
            else
            {
                tensor.Clear();
            }
        }

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

        Narrow(state.Angles, Angles);
        Narrow(state.State, State);
        Narrow(state.PrevKey, PrevKey);
        Narrow(state.PrevX, PrevX);
    }

    /// <summary>Frees the states.</summary>
    public void Dispose()
    {
        Angles.Dispose();
        State.Dispose();
        PrevKey.Dispose();
        PrevX.Dispose();
    }

    private static void Narrow(double[] source, Tensor destination)
    {
        float[] values = new float[source.Length];
        for (int i = 0; i < source.Length; i++)
        {
            values[i] = (float)source[i];
        }

        destination.CopyFrom(values);
    }
}
