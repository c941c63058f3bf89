// The whole-model speed benchmark behind `kiln bench decode`: a decode run from BOS to a full context (greedy,
// each token fed back alone), then a prefill of that same sequence in one Forward call. One warm-up run, then
// the best of the measured runs. A decode step is timed with the choice of the next token: on a session that
// samples on its device (IDeviceSampling) that is the on-device argmax and the one id read back, which is what a
// real decode step costs there; elsewhere the host argmax over the returned logits. Prefill times one Forward.

using System.Diagnostics;
using Kiln.Models;
using Kiln.Models.Sampling;

namespace Kiln.Cli.Bench;

/// <summary>Measures prefill and decode speed of a session.</summary>
public static class DecodeBench
{
    /// <summary>The figures of one benchmark.</summary>
    /// <param name="Context">The positions used: the decode run fills them all.</param>
    /// <param name="PrefillTokensPerSecond">Tokens per second of one Forward call over the whole context.</param>
    /// <param name="DecodeTokensPerSecond">Tokens per second of single-token Forward calls (positions 1..S-1).</param>
    public sealed record Result(int Context, double PrefillTokensPerSecond, double DecodeTokensPerSecond);

    /// <summary>
    /// Runs one warm-up and <paramref name="runs"/> measured rounds on <paramref name="session"/>, starting each
    /// decode run from <paramref name="bosId"/>, and returns the best speeds.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Runs is below 1.</exception>
    public static Result Measure(IInferenceSession session, int bosId, int runs)
    {
        ArgumentNullException.ThrowIfNull(session);
        ArgumentOutOfRangeException.ThrowIfLessThan(runs, 1);
        int context = session.ContextLength;
        int[] tokens = new int[context]; // [S] the greedy sequence of the decode run

        double bestPrefill = 0;
        double bestDecode = 0;
        for (int run = 0; run <= runs; run++)
        {
            // Decode: BOS, then each greedy token fed back alone until the context is full.
            session.Reset();
            tokens[0] = bosId;
            int next = Greedy(session, tokens.AsSpan(0, 1));
            long decodeTicks = 0;
            for (int pos = 1; pos < context; pos++)
            {
                tokens[pos] = next;
                long start = Stopwatch.GetTimestamp();
                next = Greedy(session, tokens.AsSpan(pos, 1));
                decodeTicks += Stopwatch.GetTimestamp() - start;
            }

            // Prefill: the same sequence in one call.
            session.Reset();
            long prefillStart = Stopwatch.GetTimestamp();
            session.Forward(tokens);
            long prefillTicks = Stopwatch.GetTimestamp() - prefillStart;

            // Run 0 warms up (JIT, caches); the others count.
            if (run > 0)
            {
                bestDecode = Math.Max(bestDecode, SessionTiming.PerSecond(context - 1, decodeTicks));
                bestPrefill = Math.Max(bestPrefill, SessionTiming.PerSecond(context, prefillTicks));
            }
        }

        return new Result(context, bestPrefill, bestDecode);
    }

    // Appends the tokens and returns the greedy next token, on the session's device when it samples there.
    private static int Greedy(IInferenceSession session, ReadOnlySpan<int> tokens) =>
        session is IDeviceSampling device ? device.ForwardAndSample(tokens, 0f, 0) : Sampler.ArgMax(session.Forward(tokens));

}
