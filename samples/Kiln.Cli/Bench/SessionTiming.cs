// Timing of an inference session, shared by the model benchmarks: one prefill from position 0, then one-token
// decode steps after it, each reported in tokens per second of wall time.
using System.Diagnostics;
using Kiln.Models;

namespace Kiln.Cli.Bench;

/// <summary>Prefill and decode speed of one measured run of a session.</summary>
internal static class SessionTiming
{
    /// <summary>
    /// Resets <paramref name="session"/>, times the prefill of prompt[..^decode] from position 0, then the last
    /// <paramref name="decode"/> tokens one at a time.
    /// </summary>
    public static (double Prefill, double Decode) PrefillThenDecode(IInferenceSession session, ReadOnlySpan<int> prompt, int decode)
    {
        int prefillLength = prompt.Length - decode;
        session.Reset();
        long start = Stopwatch.GetTimestamp();
        session.Forward(prompt[..prefillLength]);
        double prefill = PerSecond(prefillLength, Stopwatch.GetTimestamp() - start);
        start = Stopwatch.GetTimestamp();
        for (int i = prefillLength; i < prompt.Length; i++)
        {
            session.Forward(prompt.Slice(i, 1));
        }

        return (prefill, PerSecond(decode, Stopwatch.GetTimestamp() - start));
    }

    /// <summary>Tokens per second of <paramref name="tokens"/> in <paramref name="ticks"/> Stopwatch ticks (0 for none).</summary>
    public static double PerSecond(int tokens, long ticks) => ticks > 0 ? tokens * (double)Stopwatch.Frequency / ticks : 0;
}
