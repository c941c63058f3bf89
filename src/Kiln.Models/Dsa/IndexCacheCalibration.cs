// The greedy IndexCache pattern search (arXiv 2603.12201, §3): start all Full, then repeatedly switch to Shared the Full
// layer whose switch raises the calibration loss least (layer 0 never switches), until FromKeepRatio's Full count for
// the requested keep is reached. Every candidate is scored on the same windows with one WithPattern switch of the same
// DsaWeights (the indexers of every layer stay loaded; a Shared layer's indexer is simply not run).
// Losses (nats per predicted token, averaged over the windows):
//   LM:  the mean next-token negative log-likelihood of each window (positions 0..T-2 predict tokens 1..T-1);
//   KL:  the mean KL(P_ref ‖ P_candidate) of the next-token distributions at every position, P_ref from the all-F model.
// Evaluation runs through IInferenceSession (DsaSession for DSA models) one token at a time, which gives every
// position's logits; the session tests show that this equals one prefill.
using Kiln.Models.Llama;
using Kiln.Models.Sampling;

namespace Kiln.Models.Dsa;

/// <summary>One step of the greedy search: the layer switched to Shared, the loss with it switched, the new pattern.</summary>
public sealed record IndexCacheCalibrationStep(int Layer, double Loss, IndexCachePattern Pattern);

/// <summary>Next-token losses and greedy decoding through any inference session, one token at a time.</summary>
public static class SessionEvaluation
{
    /// <summary>
    /// The log-probabilities (float64) of the next token after every position of <paramref name="window"/>, [T, V]
    /// row-major. Resets the session first; its context must hold the window.
    /// </summary>
    /// <exception cref="ArgumentException">The window is empty or longer than the session's context.</exception>
    public static double[] LogProbabilities(IInferenceSession session, ReadOnlySpan<int> window)
    {
        ArgumentNullException.ThrowIfNull(session);
        if (window.IsEmpty || window.Length > session.ContextLength)
        {
            throw new ArgumentException(
                $"SessionEvaluation: a window of {window.Length} tokens; pass 1..{session.ContextLength} (the session's context).",
                nameof(window));
        }

        // One decode step per position, each row turned into log-softmax.
        int v = session.Config.VocabSize;
        double[] result = new double[window.Length * v];
        session.Reset();
        for (int t = 0; t < window.Length; t++)
        {
            ReadOnlySpan<float> logits = session.Forward(window.Slice(t, 1));
            Span<double> row = result.AsSpan(t * v, v);
            double max = double.NegativeInfinity;
            foreach (float value in logits)
            {
                max = Math.Max(max, value);
            }

            double sum = 0;
            foreach (float value in logits)
            {
                sum += Math.Exp(value - max);
            }

            double log = max + Math.Log(sum);
            for (int i = 0; i < v; i++)
            {
                row[i] = logits[i] - log;
            }
        }

        return result;
    }

    /// <summary>The mean next-token negative log-likelihood (nats) of a window of at least 2 tokens.</summary>
    /// <exception cref="ArgumentException">The window has fewer than 2 tokens or does not fit the session.</exception>
    public static double LanguageModelLoss(IInferenceSession session, ReadOnlySpan<int> window)
    {
        ArgumentNullException.ThrowIfNull(session);
        if (window.Length < 2)
        {
            throw new ArgumentException($"SessionEvaluation: a window of {window.Length} tokens predicts nothing; pass at least 2.", nameof(window));
        }

        double[] logProbabilities = LogProbabilities(session, window[..^1]);
        int v = session.Config.VocabSize;
        double total = 0;
        for (int t = 0; t + 1 < window.Length; t++)
        {
            total -= logProbabilities[(t * v) + window[t + 1]];
        }

        return total / (window.Length - 1);
    }

    /// <summary>Greedy continuation of <paramref name="prompt"/> by up to <paramref name="count"/> tokens (fewer when the context fills).</summary>
    public static int[] Greedy(IInferenceSession session, ReadOnlySpan<int> prompt, int count)
    {
        ArgumentNullException.ThrowIfNull(session);
        session.Reset();
        List<int> output = new(count);
        int[] next = new int[1];
        ReadOnlySpan<float> logits = session.Forward(prompt);
        while (output.Count < count)
        {
            int best = 0;
            for (int i = 1; i < logits.Length; i++)
            {
                best = logits[i] > logits[best] ? i : best;
            }

            output.Add(best);
            if (session.Position >= session.ContextLength || output.Count == count)
            {
                break;
            }

            next[0] = best;
            logits = session.Forward(next);
        }

        return output.ToArray();
    }
}

/// <summary>The greedy search for an IndexCache pattern and its calibration losses.</summary>
public static class IndexCacheCalibration
{
    /// <summary>
    /// Runs the greedy search on <paramref name="weights"/> (which must have an indexer in every layer) and returns the
    /// pattern with FromKeepRatio's Full count for <paramref name="keep"/>. The weights' pattern is restored afterwards.
    /// </summary>
    /// <param name="weights">The DSA model.</param>
    /// <param name="keep">The share of indexers to keep, in (0, 1].</param>
    /// <param name="loss">The calibration loss of the weights under their current pattern (lower is better).</param>
    /// <param name="progress">Called once per switched layer.</param>
    /// <exception cref="ArgumentOutOfRangeException">keep is outside (0, 1].</exception>
    /// <exception cref="ArgumentException">A layer has no indexer.</exception>
    public static IndexCachePattern Search(
        DsaWeights weights, double keep, Func<DsaWeights, double> loss, Action<IndexCacheCalibrationStep>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(loss);
        int layers = weights.Config.Llama.Layers;
        int target = IndexCachePattern.FromKeepRatio(layers, keep).FullCount;
        IndexCachePattern current = IndexCachePattern.AllFull(layers);
        weights.RequireIndexers(current);
        IndexCachePattern original = weights.Config.Pattern;
        try
        {
            // Each step tries every Full layer but 0 and keeps the cheapest switch (the lowest layer on ties).
            while (current.FullCount > target)
            {
                int bestLayer = -1;
                double bestLoss = double.PositiveInfinity;
                for (int layer = 1; layer < layers; layer++)
                {
                    if (!current.IsFull(layer))
                    {
                        continue;
                    }

                    weights.WithPattern(current.WithShared(layer));
                    double candidate = loss(weights);
                    if (bestLayer < 0 || candidate < bestLoss)
                    {
                        bestLayer = layer;
                        bestLoss = candidate;
                    }
                }

                current = current.WithShared(bestLayer);
                progress?.Invoke(new IndexCacheCalibrationStep(bestLayer, bestLoss, current));
            }

            return current;
        }
        finally
        {
            weights.WithPattern(original);
        }
    }

    /// <summary>The mean LM loss of the windows under the weights' current pattern (a DsaSession per call).</summary>
    public static Func<DsaWeights, double> LanguageModelLoss(IReadOnlyList<int[]> windows)
    {
        RequireWindows(windows);
        return weights =>
        {
            using DsaSession session = new(weights, new SessionOptions { ContextLength = windows.Max(w => w.Length) });
            return windows.Average(window => SessionEvaluation.LanguageModelLoss(session, window));
        };
    }

    /// <summary>
    /// The mean KL divergence from the all-F model's next-token distributions (computed here, once) to the current
    /// pattern's, over every position of every window.
    /// </summary>
    public static Func<DsaWeights, double> DivergenceFromAllFull(DsaWeights weights, IReadOnlyList<int[]> windows)
    {
        ArgumentNullException.ThrowIfNull(weights);
        RequireWindows(windows);
        int context = windows.Max(w => w.Length);
        IndexCachePattern original = weights.Config.Pattern;
        double[][] reference;
        weights.WithPattern(IndexCachePattern.AllFull(weights.Config.Llama.Layers));
        try
        {
            using DsaSession session = new(weights, new SessionOptions { ContextLength = context });
            reference = windows.Select(window => SessionEvaluation.LogProbabilities(session, window)).ToArray();
        }
        finally
        {
            weights.WithPattern(original);
        }

        return candidate =>
        {
            using DsaSession session = new(candidate, new SessionOptions { ContextLength = context });
            double total = 0;
            long rows = 0;
            int v = candidate.Config.Llama.VocabSize;
            for (int w = 0; w < windows.Count; w++)
            {
                double[] log = SessionEvaluation.LogProbabilities(session, windows[w]);
                double[] logRef = reference[w];
                for (int i = 0; i < log.Length; i++)
                {
                    total += Math.Exp(logRef[i]) * (logRef[i] - log[i]);
                }

                rows += log.Length / v;
            }

            return total / rows;
        };
    }

    /// <summary>Consecutive windows of <paramref name="length"/> tokens from <paramref name="tokens"/>, at most <paramref name="count"/>.</summary>
    /// <exception cref="ArgumentException">The text is shorter than one window.</exception>
    public static IReadOnlyList<int[]> TextWindows(int[] tokens, int length, int count)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (length < 2 || tokens.Length < length)
        {
            throw new ArgumentException(
                $"IndexCache calibration: the calibration text has {tokens.Length} tokens, shorter than one window of {length} "
                + "(at least 2); pass a longer text or a shorter window.",
                nameof(tokens));
        }

        int available = tokens.Length / length;
        return Enumerable.Range(0, Math.Min(Math.Max(count, 1), available)).Select(i => tokens[(i * length)..((i + 1) * length)]).ToArray();
    }

    /// <summary>Seeded windows of uniformly random token ids (xorshift64*), each starting with BOS (id 1) when the vocabulary has it.</summary>
    public static IReadOnlyList<int[]> RandomWindows(int vocabSize, int length, int count, ulong seed)
    {
        if (vocabSize < 1 || length < 2 || count < 1)
        {
            throw new ArgumentException(
                $"IndexCache calibration: random windows need vocab >= 1, length >= 2 and count >= 1 (got {vocabSize}, {length}, {count}).");
        }

        XorShiftRandom random = new(seed);
        int[][] windows = new int[count][];
        for (int w = 0; w < count; w++)
        {
            windows[w] = new int[length];
            for (int i = 0; i < length; i++)
            {
                windows[w][i] = i == 0 && vocabSize > 1 ? 1 : (int)(random.NextUInt64() % (ulong)vocabSize);
            }
        }

        return windows;
    }

    private static void RequireWindows(IReadOnlyList<int[]> windows)
    {
        ArgumentNullException.ThrowIfNull(windows);
        if (windows.Count == 0 || windows.Any(window => window.Length < 2))
        {
            throw new ArgumentException("IndexCache calibration: pass at least one window of at least 2 tokens.", nameof(windows));
        }
    }
}
