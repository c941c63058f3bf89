// A whole-window forward pass of a Llama model (positions 0..T-1, llama2.c math) that serves indexer fitting:
//   - capture: per layer, x [T, D] = RMSNorm(h)·attention_norm (the attention's, and the indexer's, input) and
//     p [T, T] = (1/H) Σ_h softmax(q_h·k_hᵀ/√Dh) over s ≤ t (the dense attention summed over heads, L1-normalised);
//   - DSA: with an indexer per Full layer, each query attends only to the min(K, t+1) positions its layer's top-k
//     picks (the nearest Full layer's selection on Shared layers), through LightningIndexer.AppendKeys/Scores and
//     TopK.Select: the same kernels as inference. All heads share a token's selection.
// Projections go through MatMul.Compute; attention, norms and the MLP's pointwise step are scalar loops (the windows
// of a fit are short). Logits [T, V] of every position are returned for the LM loss.
// NOTE: this is the fitter's own DSA forward; the DSA session of the model family (branch dsamodel) replaces it for
// inference and should agree with it (same kernels, same selection).
using Kiln.Kernels;
using Kiln.Models.Llama;

namespace Kiln.Models.Dsa;

/// <summary>
/// Runs a Llama model over one window of tokens (positions 0..T-1), capturing each layer's attention input and
/// head-averaged dense attention, or restricting attention to a lightning indexer's top-k (DSA).
/// </summary>
public sealed unsafe class IndexerWindowForward : IDisposable
{
    private readonly LlamaWeights _weights;
    private readonly LlamaConfig _config;
    private readonly Tensor _h, _x, _q, _k, _v, _attn, _o, _gate, _up, _logits; // activations for MaxTokens rows
    private readonly Tensor _cos, _sin;                                        // model RoPE [S, Dh/2]
    private readonly float[] _row;
    private readonly bool[] _selected;                                         // [T, T] current selection mask

    /// <summary>Creates the forward pass over float32 CPU <paramref name="weights"/> for windows of up to
    /// <paramref name="maxTokens"/> tokens.</summary>
    /// <exception cref="ArgumentException">The weights are not float32 on the CPU, or the window is longer than the
    /// model's context.</exception>
    public IndexerWindowForward(LlamaWeights weights, int maxTokens)
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (weights.DType != DType.Float32 || weights.Device is not Kiln.Devices.CpuDevice)
        {
            throw new ArgumentException(
                $"IndexerWindowForward: weights are {weights.DType.Name()} on {weights.Device.Name}; fitting needs float32 "
                + "weights on the cpu device (load the checkpoint as float32).",
                nameof(weights));
        }

        if (maxTokens < 1 || maxTokens > weights.Config.SeqLen)
        {
            throw new ArgumentException(
                $"IndexerWindowForward: a window of {maxTokens} tokens must be within 1..{weights.Config.SeqLen} "
                + "(the model's context); pass a shorter --window.",
                nameof(maxTokens));
        }

        _weights = weights;
        _config = weights.Config;
        MaxTokens = maxTokens;
        LlamaConfig c = _config;
        _h = Tensor.Empty([maxTokens * c.Dim]);
        _x = Tensor.Empty([maxTokens * c.Dim]);
        _q = Tensor.Empty([maxTokens * c.QueryDim]);
        _k = Tensor.Empty([maxTokens * c.KvDim]);
        _v = Tensor.Empty([maxTokens * c.KvDim]);
        _attn = Tensor.Empty([maxTokens * c.QueryDim]);
        _o = Tensor.Empty([maxTokens * c.Dim]);
        _gate = Tensor.Empty([maxTokens * c.HiddenDim]);
        _up = Tensor.Empty([maxTokens * c.HiddenDim]);
        _logits = Tensor.Empty([maxTokens * c.VocabSize]);
        (_cos, _sin) = Ops.RopeTables(maxTokens, c.HeadDim, c.RopeTheta);
        _row = new float[maxTokens];
        _selected = new bool[maxTokens * maxTokens];
    }

    /// <summary>The longest window.</summary>
    public int MaxTokens { get; }

    /// <summary>The model's configuration.</summary>
    public LlamaConfig Config => _config;

    /// <summary>
    /// Runs the window. When <paramref name="capture"/> is given it is called once per layer with x [T, D] (a view,
    /// valid during the call) and p [T, T]. When <paramref name="indexers"/> is given (one entry per layer, null on
    /// Shared layers; layer 0 must have one), attention is restricted to each query's top <paramref name="topK"/>.
    /// </summary>
    /// <returns>The logits of every position, [T, V] row-major (valid until the next call).</returns>
    /// <exception cref="ArgumentException">Tokens out of range, or indexers that do not fit the model.</exception>
    public ReadOnlySpan<float> Run(
        ReadOnlySpan<int> tokens,
        Action<int, Tensor, float[]>? capture = null,
        IReadOnlyList<IndexerParameters?>? indexers = null,
        int topK = 0)
    {
        // Check the window, the tokens and the indexers.
        LlamaConfig c = _config;
        int t = tokens.Length;
        if (t < 1 || t > MaxTokens)
        {
            throw new ArgumentException($"IndexerWindowForward.Run: {t} tokens; pass 1..{MaxTokens}.", nameof(tokens));
        }

        for (int i = 0; i < t; i++)
        {
            if ((uint)tokens[i] >= (uint)c.VocabSize)
            {
                throw new ArgumentException(
                    $"IndexerWindowForward.Run: token {i} is id {tokens[i]}, outside the vocabulary 0..{c.VocabSize - 1}.",
                    nameof(tokens));
            }
        }

        if (indexers is not null)
        {
            if (indexers.Count != c.Layers || indexers[0] is null)
            {
                throw new ArgumentException(
                    $"IndexerWindowForward.Run: {indexers.Count} indexers for {c.Layers} layers (layer 0 must have one); "
                    + "pass one per layer, null on Shared layers.",
                    nameof(indexers));
            }

            if (topK < 1)
            {
                throw new ArgumentOutOfRangeException(nameof(topK), topK, "IndexerWindowForward.Run: top-k must be at least 1.");
            }
        }

        // Embed, then run each block on the whole window.
        float* h = _h.FloatPointer, x = _x.FloatPointer;
        float* embedding = _weights.TokenEmbedding.FloatPointer;
        for (int i = 0; i < t; i++)
        {
            new ReadOnlySpan<float>(embedding + ((long)tokens[i] * c.Dim), c.Dim).CopyTo(new Span<float>(h + ((long)i * c.Dim), c.Dim));
        }

        Tensor xView = View(_x, t, c.Dim);
        float[]? p = capture is null ? null : new float[t * t];
        for (int l = 0; l < c.Layers; l++)
        {
            LlamaLayerWeights layer = _weights.Layers[l];
            RmsNorm(h, layer.AttentionNorm.FloatPointer, x, t);
            if (indexers?[l] is IndexerParameters indexer)
            {
                Select(indexer, xView, t, topK);
            }

            MatMul.Compute(xView, layer.Wq, View(_q, t, c.QueryDim));
            MatMul.Compute(xView, layer.Wk, View(_k, t, c.KvDim));
            MatMul.Compute(xView, layer.Wv, View(_v, t, c.KvDim));
            Attend(t, indexers is not null, p);
            capture?.Invoke(l, xView, p!);
            MatMul.Compute(View(_attn, t, c.QueryDim), layer.Wo, View(_o, t, c.Dim));
            Add(h, _o.FloatPointer, t * c.Dim);

            // Feed-forward: h += W2 (silu(W1 x) ⊙ W3 x).
            RmsNorm(h, layer.FfnNorm.FloatPointer, x, t);
            MatMul.Compute(xView, layer.W1, View(_gate, t, c.HiddenDim));
            MatMul.Compute(xView, layer.W3, View(_up, t, c.HiddenDim));
            float* gate = _gate.FloatPointer, up = _up.FloatPointer;
            for (long i = 0; i < (long)t * c.HiddenDim; i++)
            {
                float value = gate[i];
                gate[i] = value / (1f + MathF.Exp(-value)) * up[i];
            }

            MatMul.Compute(View(_gate, t, c.HiddenDim), layer.W2, View(_o, t, c.Dim));
            Add(h, _o.FloatPointer, t * c.Dim);
        }

        // Final norm and the classifier.
        RmsNorm(h, _weights.FinalNorm.FloatPointer, x, t);
        MatMul.Compute(xView, _weights.Classifier, View(_logits, t, c.VocabSize));
        return _logits.AsSpan()[..(t * c.VocabSize)];
    }

    /// <summary>
    /// The mean next-token negative log-likelihood (nats) of a window: positions 0..T-2 predict tokens 1..T-1.
    /// </summary>
    public double LanguageModelLoss(ReadOnlySpan<int> tokens, IReadOnlyList<IndexerParameters?>? indexers = null, int topK = 0)
    {
        ReadOnlySpan<float> logits = Run(tokens, null, indexers, topK);
        int v = _config.VocabSize;
        double total = 0;
        for (int i = 0; i + 1 < tokens.Length; i++)
        {
            ReadOnlySpan<float> row = logits.Slice(i * v, v);
            float max = float.NegativeInfinity;
            foreach (float value in row)
            {
                max = Math.Max(max, value);
            }

            double sum = 0;
            foreach (float value in row)
            {
                sum += Math.Exp(value - max);
            }

            total += max + Math.Log(sum) - row[tokens[i + 1]];
        }

        return total / Math.Max(tokens.Length - 1, 1);
    }

    /// <summary>Greedy continuation of <paramref name="prompt"/> by <paramref name="count"/> tokens (each step reruns
    /// the whole window, so the DSA selection is recomputed exactly as a prefill would).</summary>
    public int[] Greedy(ReadOnlySpan<int> prompt, int count, IReadOnlyList<IndexerParameters?>? indexers = null, int topK = 0)
    {
        List<int> tokens = [.. prompt.ToArray()];
        int v = _config.VocabSize;
        for (int n = 0; n < count && tokens.Count < MaxTokens; n++)
        {
            ReadOnlySpan<float> logits = Run(tokens.ToArray(), null, indexers, topK);
            ReadOnlySpan<float> last = logits.Slice((tokens.Count - 1) * v, v);
            int best = 0;
            for (int i = 1; i < v; i++)
            {
                best = last[i] > last[best] ? i : best;
            }

            tokens.Add(best);
        }

        return tokens.Skip(prompt.Length).ToArray();
    }

    /// <summary>Frees the activations.</summary>
    public void Dispose()
    {
        foreach (Tensor tensor in new[] { _h, _x, _q, _k, _v, _attn, _o, _gate, _up, _logits, _cos, _sin })
        {
            tensor.Dispose();
        }
    }

    /// <summary>
    /// The indexer's scores of a window through the inference kernels (projection, partial RoPE on q, AppendKeys,
    /// LightningIndexer.Scores): [T, T], -∞ after each row's position.
    /// </summary>
    public static float[] IndexerScores(IndexerParameters indexer, Tensor x)
    {
        ArgumentNullException.ThrowIfNull(indexer);
        ArgumentNullException.ThrowIfNull(x);
        IndexerShape shape = indexer.Shape;
        int t = x.Size(0), hi = shape.Heads, di = shape.HeadDim, half = shape.RopeDims / 2;
        using Tensor q = Tensor.Empty([t, hi, di]);
        using Tensor keys = Tensor.Empty([t, di]);
        using Tensor w = Tensor.Empty([t, hi]);
        using Tensor cache = Tensor.Empty([di, t]);
        using Tensor scores = Tensor.Empty([t, t]);
        (Tensor cos, Tensor sin) = half > 0 ? Ops.RopeTables(t, shape.RopeDims, shape.RopeTheta) : (Tensor.Empty([1, 1]), Tensor.Empty([1, 1]));
        using (cos)
        using (sin)
        {
            // Project, rotate the queries' leading dims, scale the head weights, write the keys, score.
            MatMul.Compute(x, indexer.Wq, q.Reshape(t, hi * di));
            MatMul.Compute(x, indexer.Wk, keys);
            MatMul.Compute(x, indexer.WProj, w);
            Span<float> weights = w.AsSpan();
            float scale = LightningIndexer.HeadWeightScale(hi, di);
            for (int i = 0; i < weights.Length; i++)
            {
                weights[i] *= scale;
            }

            Span<float> qs = q.AsSpan();
            ReadOnlySpan<float> c = cos.AsSpan(), s = sin.AsSpan();
            for (int token = 0; token < t && half > 0; token++)
            {
                for (int j = 0; j < hi; j++)
                {
                    Span<float> head = qs.Slice(((token * hi) + j) * di, di);
                    for (int i = 0; i < half; i++)
                    {
                        int first = shape.Layout == RopeLayout.Adjacent ? 2 * i : i;
                        int second = shape.Layout == RopeLayout.Adjacent ? first + 1 : first + half;
                        float x0 = head[first], x1 = head[second], cc = c[(token * half) + i], ss = s[(token * half) + i];
                        head[first] = (x0 * cc) - (x1 * ss);
                        head[second] = (x0 * ss) + (x1 * cc);
                    }
                }
            }

            LightningIndexer.AppendKeys(keys, indexer.NormWeight, indexer.NormBias, shape.NormEps, cos, sin, shape.RopeDims, shape.Layout, cache, 0);
            LightningIndexer.Scores(q, w, cache, 0, scores);
            return scores.ToArray();
        }
    }

    // Marks each query's top-k positions (shared by every head) for the layers up to the next Full layer.
    private void Select(IndexerParameters indexer, Tensor x, int t, int topK)
    {
        float[] scores = IndexerScores(indexer, x);
        using Tensor scoreTensor = Tensor.FromArray(scores, [t, t]);
        int k = Math.Min(topK, t);
        int[] indices = new int[t * k];
        TopK.Select(scoreTensor, 0, k, indices);
        Array.Clear(_selected);
        for (int row = 0; row < t; row++)
        {
            for (int i = 0; i < k; i++)
            {
                int s = indices[(row * k) + i];
                if (s >= 0)
                {
                    _selected[(row * MaxTokens) + s] = true;
                }
            }
        }
    }

    // Rotates q and k, then causal attention per head (over the selection when sparse); p gets the head average.
    private void Attend(int t, bool sparse, float[]? p)
    {
        LlamaConfig c = _config;
        int dh = c.HeadDim, half = dh / 2, group = c.Heads / c.KvHeads;
        float* q = _q.FloatPointer, k = _k.FloatPointer, v = _v.FloatPointer, output = _attn.FloatPointer;
        float* cos = _cos.FloatPointer, sin = _sin.FloatPointer;
        for (int token = 0; token < t; token++)
        {
            for (int head = 0; head < c.Heads + c.KvHeads; head++)
            {
                float* vector = head < c.Heads
                    ? q + ((long)token * c.QueryDim) + (head * dh)
                    : k + ((long)token * c.KvDim) + ((head - c.Heads) * dh);
                for (int i = 0; i < half; i++)
                {
                    int first = c.RopeLayout == RopeLayout.Adjacent ? 2 * i : i;
                    int second = c.RopeLayout == RopeLayout.Adjacent ? first + 1 : first + half;
                    float x0 = vector[first], x1 = vector[second];
                    float cc = cos[(token * half) + i], ss = sin[(token * half) + i];
                    vector[first] = (x0 * cc) - (x1 * ss);
                    vector[second] = (x0 * ss) + (x1 * cc);
                }
            }
        }

        if (p is not null)
        {
            Array.Clear(p);
        }

        float scale = 1f / MathF.Sqrt(dh);
        for (int token = 0; token < t; token++)
        {
            for (int head = 0; head < c.Heads; head++)
            {
                // Scores over visible (and, when sparse, selected) positions, softmax with the max subtracted.
                float* query = q + ((long)token * c.QueryDim) + (head * dh);
                int kvOffset = head / group * dh;
                float max = float.NegativeInfinity;
                for (int s = 0; s <= token; s++)
                {
                    if (sparse && !_selected[(token * MaxTokens) + s])
                    {
                        _row[s] = float.NegativeInfinity;
                        continue;
                    }

                    float* key = k + ((long)s * c.KvDim) + kvOffset;
                    float dot = 0f;
                    for (int e = 0; e < dh; e++)
                    {
                        dot += query[e] * key[e];
                    }

                    _row[s] = dot * scale;
                    max = Math.Max(max, _row[s]);
                }

                float sum = 0f;
                for (int s = 0; s <= token; s++)
                {
                    _row[s] = float.IsNegativeInfinity(_row[s]) ? 0f : MathF.Exp(_row[s] - max);
                    sum += _row[s];
                }

                // The weighted sum of values, and the head's share of p.
                float* result = output + ((long)token * c.QueryDim) + (head * dh);
                new Span<float>(result, dh).Clear();
                for (int s = 0; s <= token; s++)
                {
                    float a = _row[s] / sum;
                    if (a == 0f)
                    {
                        continue;
                    }

                    float* value = v + ((long)s * c.KvDim) + kvOffset;
                    for (int e = 0; e < dh; e++)
                    {
                        result[e] += a * value[e];
                    }

                    if (p is not null)
                    {
                        p[(token * t) + s] += a / c.Heads;
                    }
                }
            }
        }
    }

    // out = weight ⊙ (x / √(mean(x²) + eps)) per row.
    private void RmsNorm(float* input, float* weight, float* output, int t)
    {
        int d = _config.Dim;
        for (int token = 0; token < t; token++)
        {
            float* row = input + ((long)token * d), result = output + ((long)token * d);
            float ss = 0f;
            for (int e = 0; e < d; e++)
            {
                ss += row[e] * row[e];
            }

            float inverse = 1f / MathF.Sqrt((ss / d) + _config.NormEps);
            for (int e = 0; e < d; e++)
            {
                result[e] = weight[e] * (inverse * row[e]);
            }
        }
    }

    private static void Add(float* target, float* delta, long count)
    {
        for (long i = 0; i < count; i++)
        {
            target[i] += delta[i];
        }
    }

    private static Tensor View(Tensor flat, int rows, int cols) => flat.Slice(0, rows * cols).Reshape(rows, cols);
}
