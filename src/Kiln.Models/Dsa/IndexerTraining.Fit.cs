// Fitting lightning indexers to a dense Llama model (the dense warm-up of DeepSeek-V3.2, tech report §2.1): the dense
// model never changes; for each training window it runs once (DenseAttentionCapture) and hands every Full layer its
// detached input x [T, D] and target p [T, T]; each Full layer's indexer then takes one Adam step on its own
// loss L = (1/T) Σ_t KL(p_t ‖ softmax(I_t)). The indexer sizes and the pattern come from the DsaWeights' DsaConfig; the
// Full layers' indexers are (re)initialised seeded, Shared layers get none (they reuse the Full layer's selection).
// Adam (Kingma & Ba 2015): m = β1·m + (1-β1)·g, v = β2·v + (1-β2)·g², θ -= lr·m̂/(√v̂ + ε) with bias-corrected m̂, v̂.
// Windows are drawn from the token stream at seeded random offsets. Progress goes to an ILogger and to a callback.
using Kiln.Models.Sampling;
using Kiln.Models.Llama;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Models.Dsa;

/// <summary>The settings of an indexer fit.</summary>
public sealed record IndexerFitOptions
{
    /// <summary>Adam steps (one window each).</summary>
    public int Steps { get; init; } = 300;

    /// <summary>Adam's learning rate (DeepSeek's warm-up: 1e-3).</summary>
    public float LearningRate { get; init; } = 1e-3f;

    /// <summary>Tokens per training window.</summary>
    public int Window { get; init; } = 128;

    /// <summary>The seed of the initial parameters and of the window offsets.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Adam's β1.</summary>
    public float Beta1 { get; init; } = 0.9f;

    /// <summary>Adam's β2.</summary>
    public float Beta2 { get; init; } = 0.999f;

    /// <summary>Adam's ε.</summary>
    public float Epsilon { get; init; } = 1e-8f;

    /// <summary>Report progress every this many steps (and at the last).</summary>
    public int ReportEvery { get; init; } = 25;
}

/// <summary>The progress of a fit: the step just taken and each layer's loss on its window (NaN on Shared layers).</summary>
public sealed record IndexerFitProgress(int Step, int Steps, IReadOnlyList<double> LayerLosses)
{
    /// <summary>The mean loss over the Full layers.</summary>
    public double MeanLoss => LayerLosses.Where(loss => !double.IsNaN(loss)).DefaultIfEmpty(double.NaN).Average();
}

/// <summary>Adam over one layer's indexer parameters.</summary>
public sealed class IndexerAdam
{
    private readonly float[][] _m;
    private readonly float[][] _v;
    private readonly IndexerFitOptions _options;
    private int _step;

    /// <summary>Zero moments for indexer weights shaped by <paramref name="config"/>.</summary>
    public IndexerAdam(DsaConfig config, IndexerFitOptions options)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        using DsaIndexerWeights probe = new(config);
        _m = probe.Tensors.Select(tensor => new float[tensor.Length]).ToArray();
        _v = probe.Tensors.Select(tensor => new float[tensor.Length]).ToArray();
        _options = options;
    }

    /// <summary>One Adam update of <paramref name="parameters"/> by <paramref name="gradients"/>.</summary>
    public void Step(DsaIndexerWeights parameters, DsaIndexerWeights gradients)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(gradients);
        _step++;
        double b1 = _options.Beta1, b2 = _options.Beta2;
        double correction1 = 1 - Math.Pow(b1, _step), correction2 = 1 - Math.Pow(b2, _step);
        for (int i = 0; i < _m.Length; i++)
        {
            Span<float> theta = parameters.Tensors[i].AsSpan(), g = gradients.Tensors[i].AsSpan();
            float[] m = _m[i], v = _v[i];
            for (int e = 0; e < m.Length; e++)
            {
                // Moments, bias correction, update.
                m[e] = (float)((b1 * m[e]) + ((1 - b1) * g[e]));
                v[e] = (float)((b2 * v[e]) + ((1 - b2) * g[e] * g[e]));
                double mHat = m[e] / correction1, vHat = v[e] / correction2;
                theta[e] -= (float)(_options.LearningRate * mHat / (Math.Sqrt(vHat) + _options.Epsilon));
            }
        }
    }
}

/// <summary>Fits a lightning indexer per Full layer of a dense Llama model to its dense attention (the warm-up loss).</summary>
public static class IndexerFitter
{
    /// <summary>
    /// Fits the indexers of <paramref name="weights"/>' Full layers (its config's pattern) on windows of
    /// <paramref name="tokens"/>: each Full layer gets a seeded random indexer, then one Adam step per window; Shared
    /// layers' indexers are removed. The dense weights never change.
    /// </summary>
    /// <param name="weights">The DSA model: float32 dense weights on the cpu device, the indexer sizes in its config.</param>
    /// <param name="tokens">The training token stream (at least one window long).</param>
    /// <param name="options">Optimiser settings.</param>
    /// <param name="logger">Progress lines (information level); silent when null.</param>
    /// <param name="progress">Called after every reported step.</param>
    /// <exception cref="ArgumentException">The stream is shorter than one window, or a setting is out of range.</exception>
    public static void Fit(
        DsaWeights weights,
        IReadOnlyList<int> tokens,
        IndexerFitOptions options,
        ILogger? logger = null,
        Action<IndexerFitProgress>? progress = null)
    {
        // Check the settings and the data.
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(options);
        logger ??= NullLogger.Instance;
        DsaConfig config = weights.Config;
        if (options.Window < 2 || options.Window > config.Llama.SeqLen || tokens.Count < options.Window)
        {
            throw new ArgumentException(
                $"IndexerFitter: the training text has {tokens.Count} tokens and a window needs {options.Window} (2..seq_len "
                + $"{config.Llama.SeqLen}); pass more text or a shorter window.",
                nameof(tokens));
        }

        if (options.Steps < 1 || !(options.LearningRate > 0))
        {
            throw new ArgumentException(
                $"IndexerFitter: steps {options.Steps} must be at least 1 and the learning rate {options.LearningRate} positive.",
                nameof(options));
        }

        // Seeded indexers and optimisers for the Full layers; Shared layers lose theirs.
        IndexCachePattern pattern = config.Pattern;
        IndexerAdam?[] optimisers = new IndexerAdam?[config.Llama.Layers];
        XorShiftRandom init = new((ulong)options.Seed);
        for (int l = 0; l < config.Llama.Layers; l++)
        {
            DsaIndexerWeights? indexer = null;
            if (pattern.IsFull(l))
            {
                indexer = new DsaIndexerWeights(config);
                indexer.Randomize(ref init);
                optimisers[l] = new IndexerAdam(config, options);
            }

            weights.SetIndexer(l, indexer);
        }

        logger.LogInformation(
            "Fitting {Full} indexers ({Heads} heads x {HeadDim}, rope {Rope} {Layout}) on {Tokens} tokens: {Steps} steps of {Window} tokens, lr {Lr}",
            pattern.FullCount, config.IndexerHeads, config.IndexerHeadDim, config.IndexerRopeDims, config.IndexerRopeLayout,
            tokens.Count, options.Steps, options.Window, options.LearningRate);

        // One dense pass per window, then one Adam step per Full layer on its captured input and target.
        using IndexerWarmupLoss loss = new(config, options.Window);
        using DsaIndexerWeights gradients = new(config);
        Random random = new(options.Seed);
        int[] window = new int[options.Window];
        double[] losses = new double[config.Llama.Layers];
        for (int step = 1; step <= options.Steps; step++)
        {
            int offset = random.Next(0, tokens.Count - options.Window + 1);
            for (int i = 0; i < window.Length; i++)
            {
                window[i] = tokens[offset + i];
            }

            DenseAttentionCapture capture = DenseAttentionCapture.Run(weights.Dense, window);
            for (int l = 0; l < config.Llama.Layers; l++)
            {
                losses[l] = double.NaN;
                if (weights.Indexers[l] is DsaIndexerWeights indexer)
                {
                    using Tensor x = Tensor.FromArray(capture.NormedInputs[l], [window.Length, config.Llama.Dim]);
                    losses[l] = loss.Compute(indexer, x, capture.Distributions[l], gradients);
                    optimisers[l]!.Step(indexer, gradients);
                }
            }

            if (step % Math.Max(options.ReportEvery, 1) == 0 || step == options.Steps || step == 1)
            {
                IndexerFitProgress report = new(step, options.Steps, (double[])losses.Clone());
                logger.LogInformation("step {Step}/{Steps}: mean KL {Loss:F4} nats/token", step, options.Steps, report.MeanLoss);
                progress?.Invoke(report);
            }
        }
    }

    /// <summary>
    /// The mean warm-up loss over the layers of <paramref name="weights"/> that have an indexer, on one window (no update).
    /// </summary>
    /// <exception cref="ArgumentException">No layer has an indexer, or the window does not fit the model.</exception>
    public static double WarmupLoss(DsaWeights weights, ReadOnlySpan<int> window)
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (weights.Indexers.All(indexer => indexer is null))
        {
            throw new ArgumentException("IndexerFitter.WarmupLoss: no layer has an indexer; fit or add indexers first.", nameof(weights));
        }

        DsaConfig config = weights.Config;
        DenseAttentionCapture capture = DenseAttentionCapture.Run(weights.Dense, window);
        using IndexerWarmupLoss loss = new(config, window.Length);
        double total = 0;
        int count = 0;
        for (int l = 0; l < config.Llama.Layers; l++)
        {
            if (weights.Indexers[l] is DsaIndexerWeights indexer)
            {
                using Tensor x = Tensor.FromArray(capture.NormedInputs[l], [window.Length, config.Llama.Dim]);
                total += loss.Compute(indexer, x, capture.Distributions[l], null);
                count++;
            }
        }

        return total / count;
    }

    /// <summary>
    /// Training text sampled from the dense model itself: stories started at BOS (id 1) and sampled at
    /// <paramref name="temperature"/> until BOS comes again or <paramref name="maxStory"/> tokens, concatenated (each
    /// story keeps its leading BOS) until <paramref name="count"/> tokens.
    /// </summary>
    public static int[] SampleText(LlamaWeights weights, int count, float temperature, int seed, int maxStory = 256)
    {
        ArgumentNullException.ThrowIfNull(weights);
        using LlamaReferenceSession session = new(weights, new SessionOptions { ContextLength = Math.Min(maxStory, weights.Config.SeqLen) });
        Random random = new(seed);
        List<int> text = new(count);
        double[] probabilities = new double[weights.Config.VocabSize];
        while (text.Count < count)
        {
            // One story: BOS, then sample until BOS or the story length.
            session.Reset();
            int token = 1;
            text.Add(token);
            while (text.Count < count && session.Position < session.ContextLength)
            {
                ReadOnlySpan<float> logits = session.Forward([token]);
                double max = double.NegativeInfinity, sum = 0;
                foreach (float value in logits)
                {
                    max = Math.Max(max, value);
                }

                for (int i = 0; i < logits.Length; i++)
                {
                    probabilities[i] = Math.Exp((logits[i] - max) / temperature);
                    sum += probabilities[i];
                }

                double u = random.NextDouble() * sum;
                token = logits.Length - 1;
                for (int i = 0; i < logits.Length; i++)
                {
                    u -= probabilities[i];
                    if (u <= 0)
                    {
                        token = i;
                        break;
                    }
                }

                if (token == 1)
                {
                    break;
                }

                text.Add(token);
            }
        }

        return text.ToArray();
    }
}
