// A small, fast, seeded pseudo-random generator with a sequence fixed by this file (not by the runtime, unlike
// System.Random): xorshift64* (Marsaglia's xorshift with Vigna's multiplicative output, the generator llama2.c
// uses), with the seed first passed through one splitmix64 step so that every seed, 0 included, gives a
// non-zero, well-mixed state.

namespace Kiln.Models.Sampling;

/// <summary>xorshift64*: a seeded, reproducible pseudo-random generator (a mutable struct: pass it by ref).</summary>
public struct XorShiftRandom
{
    private ulong _state;

    /// <summary>Starts the sequence for <paramref name="seed"/>.</summary>
    public XorShiftRandom(ulong seed)
    {
        _state = Mix(seed);
    }

    /// <summary>The next 64 random bits.</summary>
    public ulong NextUInt64()
    {
        // One xorshift step on the state, then a multiply to scramble the low bits of the output.
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        return _state * 0x2545F4914F6CDD1DUL;
    }

    /// <summary>A uniform double in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>splitmix64's finalizer on seed + golden gamma; never returns 0 for the state of a seed.</summary>
    private static ulong Mix(ulong seed)
    {
        ulong z = seed + 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return z == 0 ? 0x9E3779B97F4A7C15UL : z;
    }
}
