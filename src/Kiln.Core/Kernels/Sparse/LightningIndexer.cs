// The lightning indexer of DeepSeek Sparse Attention (DeepSeek-V3.2-Exp tech report, eq. 1), on the CPU, in the
// float32 form of the brief (no Hadamard rotation, no FP8: both drop out of the exact scores).
//
// Math. For query token t at absolute position p = start + t and every earlier or equal position s ≤ p:
//   I[t, s] = Σ_j w[t, j] · ReLU(q[t, j, :] · k[s, :])         j over the Hi indexer heads
// q [T, Hi, Di] are the indexer queries, already projected and rotated by the caller; w [T, Hi] the head weights with
// every scale folded in (DeepSeek: weights_proj(x) · Hi^-1/2 · Di^-1/2, see HeadWeightScale); k the one key per
// token that all heads share. The ReLU is applied per head, before the weighted sum (not to (Σ_j w_j q_j) · k).
//
// Key cache layout. One layer's indexer keys are stored transposed, [Di, S]: for each dimension d the keys of all
// positions are contiguous, as the attention cache [Hkv, Dh, S] is (Attention.cs). The score of 16 positions for one
// head is then one Vector512 FMA per dimension, with no horizontal sums and no packing of the keys, in decode as in
// prefill; a block of keys is the [Di × s-block] operand of the blocked product. AppendKeys writes keys into it after
// LayerNorm (weight, bias) and RoPE on the first ropeDims dimensions, with an explicit RopeLayout.
//
// Blocking. A work item is one query token and a chunk of 512 positions. Inside it, 64 positions (four Vector512
// accumulators) times two heads are reduced over Di at once: per dimension four key loads and two query broadcasts
// feed eight FMAs. Then ReLU, the head weights, and the sum over heads, in head order. Tokens are visited in a
// zig-zag order (0, T-1, 1, T-2, ...) so that the worker pool's contiguous ranges get equal shares of the causal
// triangle. Every lane computes exactly what the scalar loop computes (same FMA order), so the Vector512, Vector256
// and scalar paths agree bit for bit, and no result depends on the thread count.
//
// Devices. AppendKeys, RotateQueries and Scores dispatch by the key cache's device: the loops here on cpu, the kernels
// of GpuIndexer.cs on ILGPU devices (cuda, ilgpu-cpu), queued on the device's stream, with the same checks.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Kiln.Devices;
using Kiln.Kernels.Gemm;

namespace Kiln.Kernels;

/// <summary>
/// The DSA lightning indexer on the CPU: index scores <c>I[t, s] = Σ_j w[t, j] · ReLU(q[t, j] · k[s])</c> of new query
/// tokens against a layer's transposed indexer key cache [Di, S], and the key append (LayerNorm, RoPE, write).
/// </summary>
/// <remarks>
/// Scores of positions after a query's own position are set to -∞, so a row is safe to rank whole. Results do not
/// depend on the thread count or on the vector width: every lane follows the scalar loop's order of operations.
/// </remarks>
public static unsafe class LightningIndexer
{
    // Positions per work item: a chunk of keys [Di, 512] stays in L2 while one token's heads run over it.
    private const int Chunk = 512;

    /// <summary>
    /// The factor DeepSeek-V3.2 folds into the head weights: Hi^-1/2 · Di^-1/2 (the head count's and the softmax
    /// scale's). Multiply the weight projection's output by it before calling <see cref="Scores"/>.
    /// </summary>
    /// <param name="heads">Hi, the number of indexer heads (at least 1).</param>
    /// <param name="headDim">Di, the indexer head width (at least 1).</param>
    /// <exception cref="ArgumentOutOfRangeException">A size is below 1.</exception>
    public static float HeadWeightScale(int heads, int headDim)
    {
        if (heads < 1 || headDim < 1)
        {
            throw new ArgumentOutOfRangeException(
                heads < 1 ? nameof(heads) : nameof(headDim),
                $"LightningIndexer.HeadWeightScale: heads {heads} and headDim {headDim} must both be at least 1.");
        }

        return (float)(1.0 / Math.Sqrt((double)heads * headDim));
    }

    /// <summary>
    /// Normalises and rotates the keys of tokens [start, start + T) and writes them into the indexer key cache:
    /// <c>k = LayerNorm(keys[t]) · weight + bias</c>, then RoPE on dimensions [0, ropeDims) at position start + t
    /// with the given pair layout (the other dimensions are not rotated), then <c>keyCache[:, start + t] = k</c>.
    /// </summary>
    /// <param name="keys">The projected keys before the norm, [T, Di].</param>
    /// <param name="normWeight">The LayerNorm weight, [Di].</param>
    /// <param name="normBias">The LayerNorm bias, [Di].</param>
    /// <param name="eps">The LayerNorm epsilon (DeepSeek: 1e-6).</param>
    /// <param name="cos">The RoPE cosine table [P, ropeDims / 2] from <c>Ops.RopeTables(P, ropeDims, θ)</c>, P ≥ start + T.</param>
    /// <param name="sin">The RoPE sine table, the shape of <paramref name="cos"/>.</param>
    /// <param name="ropeDims">How many leading dimensions are rotated: even, 0..Di (0 rotates nothing).</param>
    /// <param name="layout">How the rotated dimensions pair: (2i, 2i+1) or (i, i + ropeDims/2).</param>
    /// <param name="keyCache">The layer's indexer key cache, [Di, S].</param>
    /// <param name="start">The position of the first new token.</param>
    /// <exception cref="ArgumentException">Shapes, dtypes or devices do not fit together.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The positions do not fit the cache or the tables.</exception>
    [SkipLocalsInit]
    public static void AppendKeys(
        Tensor keys,
        Tensor normWeight,
        Tensor normBias,
        float eps,
        Tensor cos,
        Tensor sin,
        int ropeDims,
        RopeLayout layout,
        Tensor keyCache,
        int start)
    {
        // Check the cache, the keys, the norm parameters and the tables.
        RequireKeyCache(keyCache);
        int di = keyCache.Size(0), capacity = keyCache.Size(1);
        RequireFloat(keys, nameof(keys), keyCache.Device);
        if (keys.Rank != 2 || keys.Size(1) != di)
        {
            throw new ArgumentException(
                $"LightningIndexer.AppendKeys: keys {keys} must be [T, {di}] for a key cache of {Tensor.FormatShape(keyCache.Shape)}.",
                nameof(keys));
        }

        RequireVector(normWeight, di, nameof(normWeight), keyCache.Device);
        RequireVector(normBias, di, nameof(normBias), keyCache.Device);
        int t = keys.Size(0);
        if (start < 0 || start > capacity - t)
        {
            throw new ArgumentOutOfRangeException(
                nameof(start),
                $"LightningIndexer.AppendKeys: positions [{start}, {start + t}) do not fit in a key cache of {capacity} positions.");
        }

        if (ropeDims < 0 || ropeDims > di || ropeDims % 2 != 0)
        {
            throw new ArgumentOutOfRangeException(
                nameof(ropeDims),
                $"LightningIndexer.AppendKeys: ropeDims {ropeDims} must be even and within [0, {di}]; pass the rotated width.");
        }

        int half = ropeDims / 2;
        if (ropeDims > 0)
        {
            RequireFloat(cos, nameof(cos), keyCache.Device);
            RequireFloat(sin, nameof(sin), keyCache.Device);
            if (cos.Rank != 2 || cos.Size(1) != half || cos.Size(0) < start + t || !cos.Shape.SequenceEqual(sin.Shape))
            {
                throw new ArgumentException(
                    $"LightningIndexer.AppendKeys: tables cos {cos} and sin {sin} must both be [P >= {start + t}, {half}]; "
                    + $"build them with Ops.RopeTables(P, {ropeDims}, theta).",
                    nameof(cos));
            }
        }

        // ILGPU devices queue the kernel (one group per token).
        if (keyCache.Device is IlgpuDevice ilgpu)
        {
            GpuIndexer.AppendKeys(ilgpu, keys, normWeight, normBias, eps, cos, sin, ropeDims, layout, keyCache, start);
            return;
        }

        // Normalise each row on the stack, rotate its leading dimensions, and scatter it into the cache's column.
        Span<float> row = stackalloc float[di];
        float* source = keys.FloatPointer;
        float* cache = keyCache.FloatPointer;
        ReadOnlySpan<float> weight = normWeight.AsSpan(), bias = normBias.AsSpan();
        for (int token = 0; token < t; token++)
        {
            int position = start + token;
            IndexerOps.LayerNormRow(new ReadOnlySpan<float>(source + ((long)token * di), di), weight, bias, eps, row);
            if (half > 0)
            {
                float* c = cos.FloatPointer + ((long)position * half);
                float* s = sin.FloatPointer + ((long)position * half);
                for (int i = 0; i < half; i++)
                {
                    // The pair (first, second) by layout, rotated by the angle of pair index i.
                    int first = layout == RopeLayout.Adjacent ? 2 * i : i;
                    int second = layout == RopeLayout.Adjacent ? first + 1 : first + half;
                    float x0 = row[first], x1 = row[second];
                    row[first] = (x0 * c[i]) - (x1 * s[i]);
                    row[second] = (x0 * s[i]) + (x1 * c[i]);
                }
            }

            for (int d = 0; d < di; d++)
            {
                cache[((long)d * capacity) + position] = row[d];
            }
        }
    }

    /// <summary>
    /// Rotates the indexer queries in place: RoPE on dimensions [0, ropeDims) of every head of token t at position
    /// start + t, with the pair layout of the keys (<see cref="AppendKeys"/>), so that q · k sees the relative angle.
    /// On an ILGPU device the kernel is queued, not waited for.
    /// </summary>
    /// <param name="q">The indexer queries, [T, Hi, Di], rotated in place.</param>
    /// <param name="cos">The RoPE cosine table [P, ropeDims / 2], P ≥ start + T, on the device of q.</param>
    /// <param name="sin">The RoPE sine table, the shape of <paramref name="cos"/>.</param>
    /// <param name="ropeDims">How many leading dimensions of each head are rotated: even, 0..Di (0 does nothing).</param>
    /// <param name="layout">How the rotated dimensions pair: (2i, 2i+1) or (i, i + ropeDims/2).</param>
    /// <param name="start">The position of the first token.</param>
    /// <exception cref="ArgumentException">Shapes, dtypes or devices do not fit together.</exception>
    /// <exception cref="ArgumentOutOfRangeException">ropeDims or the positions are out of range.</exception>
    public static void RotateQueries(Tensor q, Tensor cos, Tensor sin, int ropeDims, RopeLayout layout, int start)
    {
        // Check the queries, the width and the tables.
        ArgumentNullException.ThrowIfNull(q);
        if (q.Device is not CpuDevice and not IlgpuDevice)
        {
            throw new NotSupportedException($"LightningIndexer.RotateQueries: q {q} is on {q.Device.Name}; use cpu, cuda or ilgpu-cpu.");
        }

        RequireFloat(q, nameof(q), q.Device);
        if (q.Rank != 3 || q.Size(2) == 0)
        {
            throw new ArgumentException($"LightningIndexer.RotateQueries: q {q} must be [T, Hi, Di] with Di at least 1.", nameof(q));
        }

        int t = q.Size(0), hi = q.Size(1), di = q.Size(2);
        if (ropeDims < 0 || ropeDims > di || ropeDims % 2 != 0)
        {
            throw new ArgumentOutOfRangeException(
                nameof(ropeDims),
                $"LightningIndexer.RotateQueries: ropeDims {ropeDims} must be even and within [0, {di}]; pass the rotated width.");
        }

        int half = ropeDims / 2;
        if (half == 0 || t == 0 || hi == 0)
        {
            return;
        }

        RequireFloat(cos, nameof(cos), q.Device);
        RequireFloat(sin, nameof(sin), q.Device);
        if (start < 0 || cos.Rank != 2 || cos.Size(1) != half || cos.Size(0) < start + t || !cos.Shape.SequenceEqual(sin.Shape))
        {
            throw new ArgumentException(
                $"LightningIndexer.RotateQueries: tables cos {cos} and sin {sin} must both be [P >= {start + t}, {half}] and start "
                + $"{start} not negative; build them with Ops.RopeTables(P, {ropeDims}, theta).",
                nameof(cos));
        }

        if (q.Device is IlgpuDevice ilgpu)
        {
            GpuIndexer.RotateQueries(ilgpu, q, hi, di, cos, sin, ropeDims, layout, start);
            return;
        }

        // Every head of every token: the pair by layout, turned by the angle of pair index i.
        bool adjacent = layout == RopeLayout.Adjacent;
        float* data = q.FloatPointer;
        for (int token = 0; token < t; token++)
        {
            float* c = cos.FloatPointer + ((long)(start + token) * half);
            float* s = sin.FloatPointer + ((long)(start + token) * half);
            for (int head = 0; head < hi; head++)
            {
                float* row = data + ((long)((token * hi) + head) * di);
                for (int i = 0; i < half; i++)
                {
                    int first = adjacent ? 2 * i : i;
                    int second = adjacent ? first + 1 : first + half;
                    float x0 = row[first], x1 = row[second];
                    row[first] = (x0 * c[i]) - (x1 * s[i]);
                    row[second] = (x0 * s[i]) + (x1 * c[i]);
                }
            }
        }
    }

    /// <summary>
    /// Computes the index scores of the query tokens at positions [start, start + T) against the cached keys:
    /// <c>scores[t, s] = Σ_j w[t, j] · ReLU(q[t, j, :] · keyCache[:, s])</c> for s ≤ start + t, and -∞ for
    /// start + t &lt; s &lt; L.
    /// </summary>
    /// <param name="q">Indexer queries, [T, Hi, Di] or [T, Hi * Di], projected and rotated.</param>
    /// <param name="weights">Head weights with their scales folded in, [T, Hi].</param>
    /// <param name="keyCache">The layer's indexer keys, [Di, S], holding positions [0, start + T).</param>
    /// <param name="start">The absolute position of the first query token.</param>
    /// <param name="scores">The result, [T, L] with start + T ≤ L ≤ S.</param>
    /// <exception cref="ArgumentException">Shapes, dtypes or devices do not fit together.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The positions do not fit the cache or the scores.</exception>
    public static void Scores(Tensor q, Tensor weights, Tensor keyCache, int start, Tensor scores)
    {
        Scores(q, weights, keyCache, start, scores, CpuGemm.BestWidth);
    }

    /// <summary>The score kernel with a chosen vector width (tests force the narrower paths).</summary>
    internal static void Scores(Tensor q, Tensor weights, Tensor keyCache, int start, Tensor scores, KernelWidth width)
    {
        // Check the shapes: Hi from the weights, Di from the cache, T from both.
        RequireKeyCache(keyCache);
        RequireFloat(q, nameof(q), keyCache.Device);
        RequireFloat(weights, nameof(weights), keyCache.Device);
        RequireFloat(scores, nameof(scores), keyCache.Device);
        int di = keyCache.Size(0), capacity = keyCache.Size(1);
        if (weights.Rank != 2 || weights.Size(1) < 1)
        {
            throw new ArgumentException(
                $"LightningIndexer.Scores: weights {weights} must be [T, Hi] with Hi at least 1.", nameof(weights));
        }

        int t = weights.Size(0), hi = weights.Size(1);
        if (q.Rank < 2 || q.Size(0) != t || q.Length != (long)t * hi * di)
        {
            throw new ArgumentException(
                $"LightningIndexer.Scores: queries {q} must be [{t}, {hi}, {di}] (T and Hi from weights {weights}, Di from "
                + $"the key cache {Tensor.FormatShape(keyCache.Shape)}).",
                nameof(q));
        }

        if (scores.Rank != 2 || scores.Size(0) != t || scores.Size(1) > capacity)
        {
            throw new ArgumentException(
                $"LightningIndexer.Scores: scores {scores} must be [{t}, L] with L at most the cache's {capacity} positions.",
                nameof(scores));
        }

        int length = scores.Size(1);
        if (start < 0 || start + t > length)
        {
            throw new ArgumentOutOfRangeException(
                nameof(start),
                $"LightningIndexer.Scores: positions [{start}, {start + t}) do not fit in scores of {length} columns; "
                + "make L at least start + T.");
        }

        // ILGPU devices queue the kernel (a group per token and tile of positions).
        if (keyCache.Device is IlgpuDevice ilgpu)
        {
            GpuIndexer.Scores(ilgpu, q, weights, keyCache, start, scores);
            return;
        }

        // Split (token, chunk) items across the pool; a chunk is about Hi·Di·512 multiply-adds.
        int chunks = (length + Chunk - 1) / Chunk;
        State state = new()
        {
            Q = q.FloatPointer,
            Weights = weights.FloatPointer,
            Keys = keyCache.FloatPointer,
            Scores = scores.FloatPointer,
            Tokens = t,
            Heads = hi,
            HeadDim = di,
            Capacity = capacity,
            Length = length,
            Chunks = chunks,
            Start = start,
            Width = width,
        };
        long workPerItem = (long)hi * di * Math.Min(Chunk, start + ((t + 1) / 2) + 1);
        int grain = (int)Math.Clamp(65_536 / Math.Max(workPerItem, 1), 1, int.MaxValue);
        ((CpuDevice)q.Device).Pool.For(t * chunks, grain, &Run, &state);
    }

    /// <summary>
    /// The float64 reference of <see cref="Scores"/> for tests: q [T, Hi, Di], w [T, Hi], keys [Di, S] as plain arrays;
    /// returns [T, L] with -∞ after each token's position.
    /// </summary>
    public static double[] Reference(float[] q, float[] w, int t, int hi, int di, float[] keys, int capacity, int start, int length)
    {
        double[] result = new double[t * length];
        for (int token = 0; token < t; token++)
        {
            for (int s = 0; s < length; s++)
            {
                // Visible positions get the weighted sum of per-head ReLU'd dot products.
                if (s > start + token)
                {
                    result[(token * length) + s] = double.NegativeInfinity;
                    continue;
                }

                double score = 0;
                for (int j = 0; j < hi; j++)
                {
                    double dot = 0;
                    for (int d = 0; d < di; d++)
                    {
                        dot += (double)q[(((token * hi) + j) * di) + d] * keys[((long)d * capacity) + s];
                    }

                    score += w[(token * hi) + j] * Math.Max(dot, 0.0);
                }

                result[(token * length) + s] = score;
            }
        }

        return result;
    }

    private struct State
    {
        public float* Q;
        public float* Weights;
        public float* Keys;
        public float* Scores;
        public int Tokens;
        public int Heads;
        public int HeadDim;
        public int Capacity;
        public int Length;
        public int Chunks;
        public int Start;
        public KernelWidth Width;
    }

    private static void Run(void* statePointer, int begin, int end)
    {
        ref State state = ref Unsafe.AsRef<State>(statePointer);
        for (int item = begin; item < end; item++)
        {
            // Zig-zag token order: item rows 0, 1, 2, 3 are tokens 0, T-1, 1, T-2, balancing the causal triangle.
            int rank = item / state.Chunks;
            int token = (rank & 1) == 0 ? rank >> 1 : state.Tokens - 1 - (rank >> 1);
            int first = (item % state.Chunks) * Chunk;
            int last = Math.Min(first + Chunk, state.Length);
            int visible = Math.Clamp(state.Start + token + 1, first, last);
            float* query = state.Q + ((long)token * state.Heads * state.HeadDim);
            float* weights = state.Weights + ((long)token * state.Heads);
            float* output = state.Scores + ((long)token * state.Length);

            // Score the visible positions of the chunk, widest blocks first.
            int s = first;
            if (state.Width == KernelWidth.Vector512)
            {
                for (; s + 64 <= visible; s += 64)
                {
                    Block512x4(query, weights, state.Keys + s, state.Capacity, state.Heads, state.HeadDim, output + s);
                }

                for (; s + 16 <= visible; s += 16)
                {
                    Block512x1(query, weights, state.Keys + s, state.Capacity, state.Heads, state.HeadDim, output + s);
                }
            }

            if (state.Width != KernelWidth.Scalar)
            {
                for (; s + 32 <= visible; s += 32)
                {
                    Block256x4(query, weights, state.Keys + s, state.Capacity, state.Heads, state.HeadDim, output + s);
                }

                for (; s + 8 <= visible; s += 8)
                {
                    Block256x1(query, weights, state.Keys + s, state.Capacity, state.Heads, state.HeadDim, output + s);
                }
            }

            for (; s < visible; s++)
            {
                output[s] = ScalarScore(query, weights, state.Keys + s, state.Capacity, state.Heads, state.HeadDim);
            }

            // Positions after the token's own are masked.
            for (; s < last; s++)
            {
                output[s] = float.NegativeInfinity;
            }
        }
    }

    // Scores of 64 positions: two heads at a time, four Vector512 accumulators per head.
    private static void Block512x4(float* query, float* weights, float* keys, int capacity, int hi, int di, float* output)
    {
        Vector512<float> zero = Vector512<float>.Zero;
        Vector512<float> score0 = zero, score1 = zero, score2 = zero, score3 = zero;
        int j = 0;
        for (; j + 2 <= hi; j += 2)
        {
            // Reduce both heads over Di: four key loads and two broadcasts feed eight FMAs per dimension.
            float* q0 = query + ((long)j * di);
            float* q1 = q0 + di;
            Vector512<float> a00 = zero, a01 = zero, a02 = zero, a03 = zero;
            Vector512<float> a10 = zero, a11 = zero, a12 = zero, a13 = zero;
            float* k = keys;
            for (int d = 0; d < di; d++, k += capacity)
            {
                Vector512<float> k0 = Vector512.Load(k), k1 = Vector512.Load(k + 16);
                Vector512<float> k2 = Vector512.Load(k + 32), k3 = Vector512.Load(k + 48);
                Vector512<float> b0 = Vector512.Create(q0[d]), b1 = Vector512.Create(q1[d]);
                a00 = Vector512.FusedMultiplyAdd(b0, k0, a00);
                a01 = Vector512.FusedMultiplyAdd(b0, k1, a01);
                a02 = Vector512.FusedMultiplyAdd(b0, k2, a02);
                a03 = Vector512.FusedMultiplyAdd(b0, k3, a03);
                a10 = Vector512.FusedMultiplyAdd(b1, k0, a10);
                a11 = Vector512.FusedMultiplyAdd(b1, k1, a11);
                a12 = Vector512.FusedMultiplyAdd(b1, k2, a12);
                a13 = Vector512.FusedMultiplyAdd(b1, k3, a13);
            }

            // ReLU per head, then the weighted sum in head order.
            Vector512<float> w0 = Vector512.Create(weights[j]), w1 = Vector512.Create(weights[j + 1]);
            score0 = Vector512.FusedMultiplyAdd(w1, Vector512.Max(a10, zero), Vector512.FusedMultiplyAdd(w0, Vector512.Max(a00, zero), score0));
            score1 = Vector512.FusedMultiplyAdd(w1, Vector512.Max(a11, zero), Vector512.FusedMultiplyAdd(w0, Vector512.Max(a01, zero), score1));
            score2 = Vector512.FusedMultiplyAdd(w1, Vector512.Max(a12, zero), Vector512.FusedMultiplyAdd(w0, Vector512.Max(a02, zero), score2));
            score3 = Vector512.FusedMultiplyAdd(w1, Vector512.Max(a13, zero), Vector512.FusedMultiplyAdd(w0, Vector512.Max(a03, zero), score3));
        }

        if (j < hi)
        {
            // The last head of an odd count.
            float* q0 = query + ((long)j * di);
            Vector512<float> a00 = zero, a01 = zero, a02 = zero, a03 = zero;
            float* k = keys;
            for (int d = 0; d < di; d++, k += capacity)
            {
                Vector512<float> b0 = Vector512.Create(q0[d]);
                a00 = Vector512.FusedMultiplyAdd(b0, Vector512.Load(k), a00);
                a01 = Vector512.FusedMultiplyAdd(b0, Vector512.Load(k + 16), a01);
                a02 = Vector512.FusedMultiplyAdd(b0, Vector512.Load(k + 32), a02);
                a03 = Vector512.FusedMultiplyAdd(b0, Vector512.Load(k + 48), a03);
            }

            Vector512<float> w0 = Vector512.Create(weights[j]);
            score0 = Vector512.FusedMultiplyAdd(w0, Vector512.Max(a00, zero), score0);
            score1 = Vector512.FusedMultiplyAdd(w0, Vector512.Max(a01, zero), score1);
            score2 = Vector512.FusedMultiplyAdd(w0, Vector512.Max(a02, zero), score2);
            score3 = Vector512.FusedMultiplyAdd(w0, Vector512.Max(a03, zero), score3);
        }

        score0.Store(output);
        score1.Store(output + 16);
        score2.Store(output + 32);
        score3.Store(output + 48);
    }

    // Scores of 16 positions, one head at a time.
    private static void Block512x1(float* query, float* weights, float* keys, int capacity, int hi, int di, float* output)
    {
        Vector512<float> zero = Vector512<float>.Zero;
        Vector512<float> score = zero;
        for (int j = 0; j < hi; j++)
        {
            float* q0 = query + ((long)j * di);
            Vector512<float> acc = zero;
            float* k = keys;
            for (int d = 0; d < di; d++, k += capacity)
            {
                acc = Vector512.FusedMultiplyAdd(Vector512.Create(q0[d]), Vector512.Load(k), acc);
            }

            score = Vector512.FusedMultiplyAdd(Vector512.Create(weights[j]), Vector512.Max(acc, zero), score);
        }

        score.Store(output);
    }

    // Scores of 32 positions with Vector256: two heads at a time, four accumulators per head.
    private static void Block256x4(float* query, float* weights, float* keys, int capacity, int hi, int di, float* output)
    {
        Vector256<float> zero = Vector256<float>.Zero;
        Vector256<float> score0 = zero, score1 = zero, score2 = zero, score3 = zero;
        int j = 0;
        for (; j + 2 <= hi; j += 2)
        {
            // Reduce both heads over Di.
            float* q0 = query + ((long)j * di);
            float* q1 = q0 + di;
            Vector256<float> a00 = zero, a01 = zero, a02 = zero, a03 = zero;
            Vector256<float> a10 = zero, a11 = zero, a12 = zero, a13 = zero;
            float* k = keys;
            for (int d = 0; d < di; d++, k += capacity)
            {
                Vector256<float> k0 = Vector256.Load(k), k1 = Vector256.Load(k + 8);
                Vector256<float> k2 = Vector256.Load(k + 16), k3 = Vector256.Load(k + 24);
                Vector256<float> b0 = Vector256.Create(q0[d]), b1 = Vector256.Create(q1[d]);
                a00 = Vector256.FusedMultiplyAdd(b0, k0, a00);
                a01 = Vector256.FusedMultiplyAdd(b0, k1, a01);
                a02 = Vector256.FusedMultiplyAdd(b0, k2, a02);
                a03 = Vector256.FusedMultiplyAdd(b0, k3, a03);
                a10 = Vector256.FusedMultiplyAdd(b1, k0, a10);
                a11 = Vector256.FusedMultiplyAdd(b1, k1, a11);
                a12 = Vector256.FusedMultiplyAdd(b1, k2, a12);
                a13 = Vector256.FusedMultiplyAdd(b1, k3, a13);
            }

            // ReLU per head, then the weighted sum in head order.
            Vector256<float> w0 = Vector256.Create(weights[j]), w1 = Vector256.Create(weights[j + 1]);
            score0 = Vector256.FusedMultiplyAdd(w1, Vector256.Max(a10, zero), Vector256.FusedMultiplyAdd(w0, Vector256.Max(a00, zero), score0));
            score1 = Vector256.FusedMultiplyAdd(w1, Vector256.Max(a11, zero), Vector256.FusedMultiplyAdd(w0, Vector256.Max(a01, zero), score1));
            score2 = Vector256.FusedMultiplyAdd(w1, Vector256.Max(a12, zero), Vector256.FusedMultiplyAdd(w0, Vector256.Max(a02, zero), score2));
            score3 = Vector256.FusedMultiplyAdd(w1, Vector256.Max(a13, zero), Vector256.FusedMultiplyAdd(w0, Vector256.Max(a03, zero), score3));
        }

        if (j < hi)
        {
            // The last head of an odd count.
            float* q0 = query + ((long)j * di);
            Vector256<float> a00 = zero, a01 = zero, a02 = zero, a03 = zero;
            float* k = keys;
            for (int d = 0; d < di; d++, k += capacity)
            {
                Vector256<float> b0 = Vector256.Create(q0[d]);
                a00 = Vector256.FusedMultiplyAdd(b0, Vector256.Load(k), a00);
                a01 = Vector256.FusedMultiplyAdd(b0, Vector256.Load(k + 8), a01);
                a02 = Vector256.FusedMultiplyAdd(b0, Vector256.Load(k + 16), a02);
                a03 = Vector256.FusedMultiplyAdd(b0, Vector256.Load(k + 24), a03);
            }

            Vector256<float> w0 = Vector256.Create(weights[j]);
            score0 = Vector256.FusedMultiplyAdd(w0, Vector256.Max(a00, zero), score0);
            score1 = Vector256.FusedMultiplyAdd(w0, Vector256.Max(a01, zero), score1);
            score2 = Vector256.FusedMultiplyAdd(w0, Vector256.Max(a02, zero), score2);
            score3 = Vector256.FusedMultiplyAdd(w0, Vector256.Max(a03, zero), score3);
        }

        score0.Store(output);
        score1.Store(output + 8);
        score2.Store(output + 16);
        score3.Store(output + 24);
    }

    // Scores of 8 positions with Vector256, one head at a time.
    private static void Block256x1(float* query, float* weights, float* keys, int capacity, int hi, int di, float* output)
    {
        Vector256<float> zero = Vector256<float>.Zero;
        Vector256<float> score = zero;
        for (int j = 0; j < hi; j++)
        {
            float* q0 = query + ((long)j * di);
            Vector256<float> acc = zero;
            float* k = keys;
            for (int d = 0; d < di; d++, k += capacity)
            {
                acc = Vector256.FusedMultiplyAdd(Vector256.Create(q0[d]), Vector256.Load(k), acc);
            }

            score = Vector256.FusedMultiplyAdd(Vector256.Create(weights[j]), Vector256.Max(acc, zero), score);
        }

        score.Store(output);
    }

    // The score of one position, in the lanes' order of operations.
    private static float ScalarScore(float* query, float* weights, float* keys, int capacity, int hi, int di)
    {
        float score = 0f;
        for (int j = 0; j < hi; j++)
        {
            float* q0 = query + ((long)j * di);
            float acc = 0f;
            for (int d = 0; d < di; d++)
            {
                acc = MathF.FusedMultiplyAdd(q0[d], keys[(long)d * capacity], acc);
            }

            score = MathF.FusedMultiplyAdd(weights[j], MathF.Max(acc, 0f), score);
        }

        return score;
    }

    private static void RequireKeyCache(Tensor cache)
    {
        ArgumentNullException.ThrowIfNull(cache, "keyCache");
        if (cache.Device is not CpuDevice and not IlgpuDevice)
        {
            throw new NotSupportedException(
                $"LightningIndexer: keyCache {cache} is on {cache.Device.Name}, which the indexer does not support; use cpu, cuda or ilgpu-cpu.");
        }

        RequireFloat(cache, "keyCache", cache.Device);
        if (cache.Rank != 2 || cache.Size(0) == 0)
        {
            throw new ArgumentException(
                $"LightningIndexer: keyCache {cache} must be [Di, S] (transposed: one row per dimension) with Di at least 1.",
                "keyCache");
        }
    }

    private static void RequireVector(Tensor tensor, int length, string name, Device device)
    {
        RequireFloat(tensor, name, device);
        if (tensor.Rank != 1 || tensor.Size(0) != length)
        {
            throw new ArgumentException($"LightningIndexer: {name} {tensor} must be [{length}] (Di of the key cache).", name);
        }
    }

    private static void RequireFloat(Tensor tensor, string name, Device device)
    {
        ArgumentNullException.ThrowIfNull(tensor, name);
        if (!(tensor.Device == device || (tensor.Device is CpuDevice && device is CpuDevice)) || tensor.DType != DType.Float32 || !tensor.IsContiguous)
        {
            throw new ArgumentException(
                $"LightningIndexer: {name} {tensor} must be a contiguous float32 tensor on {device.Name}, the device of the "
                + "key cache; convert it or move it with To(device).",
                name);
        }
    }
}
