// Causal grouped-query attention over a key/value cache, on the CPU.
//
// Layout. The cache of one layer holds keys and values transposed, [Hkv, Dh, S]: for each key/value head and each
// dimension d, the values at all positions are contiguous. Scores for 16 positions are then one Vector512 FMA per
// dimension (no horizontal sums, whatever Dh is), and each output dimension is one dot product over positions.
// S is the session's context length; positions at or beyond the current length are never read.
//
// Math (one query token t at absolute position p = start + t, query head h, its key/value head g = h / (H / Hkv)):
//   scores[s] = (q[t, h, :] · K[g, :, s]) / sqrt(Dh)          for s in [0, p]   (causal: never a later position)
//   weights   = softmax(scores), stable: the max is subtracted before exp
//   out[t, h, d] = Σ_s weights[s] · V[g, d, s]
// Decode (one query token) keeps its scores on the stack (at most MaxContext floats). Prefill attends blocks of up
// to 8 consecutive query tokens of one head together: each key and value vector loaded from the cache serves all of
// the block's rows (8 FMAs per load instead of 1), which turns long-context prefill from memory-bound into
// compute-bound; the block's score rows live in a per-thread native buffer that grows once and is reused. Rows of a
// block see different numbers of keys (row r of a block starting at token t0 sees start + t0 + r + 1): scores are
// computed up to the last row's length, and each row's softmax covers its own keys with the rest of its row zeroed.
// On ILGPU devices (cuda, ilgpu-cpu) the same two entry points, with the same checks, queue the kernels of
// GpuAttention.cs (flash-style online softmax, split over key chunks for decode) on the device's stream.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Kiln.Devices;

namespace Kiln.Kernels;

/// <summary>Causal grouped-query attention of new query tokens against a transposed key/value cache.</summary>
public static unsafe class Attention
{
    /// <summary>
    /// The longest context attention accepts, on every device (the CPU kernel's scores live on the thread's stack).
    /// </summary>
    public const int MaxContext = 65536;

    /// <summary>
    /// Writes the keys and values of tokens [start, start + T) into a layer's cache. All tensors must be contiguous
    /// float32 on the cache's device; on an ILGPU device the copy is queued on its stream, not waited for.
    /// </summary>
    /// <param name="k">New keys, [T, Hkv * Dh].</param>
    /// <param name="v">New values, [T, Hkv * Dh].</param>
    /// <param name="keyCache">The layer's keys, [Hkv, Dh, S].</param>
    /// <param name="valueCache">The layer's values, [Hkv, Dh, S].</param>
    /// <param name="start">The position of the first new token.</param>
    public static void Append(Tensor k, Tensor v, Tensor keyCache, Tensor valueCache, int start)
    {
        // Check the shapes: the new rows must fit behind `start`.
        RequireCache(keyCache, nameof(keyCache));
        RequireSameShape(keyCache, valueCache, nameof(valueCache));
        int hkv = keyCache.Size(0), dh = keyCache.Size(1), s = keyCache.Size(2);
        int t = k.Rank == 2 ? k.Size(0) : 0;
        if (k.Rank != 2 || k.Size(1) != hkv * dh || v.Rank != 2 || v.Size(0) != t || v.Size(1) != hkv * dh)
        {
            throw new ArgumentException($"Attention.Append: k {k} and v {v} must both be [T, {hkv * dh}] for a cache of {Tensor.FormatShape(keyCache.Shape)}.");
        }

        if (start < 0 || start > s - t)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"Attention.Append: positions [{start}, {start + t}) do not fit in a cache of {s} positions.");
        }

        RequireFloat(k, nameof(k), keyCache.Device);
        RequireFloat(v, nameof(v), keyCache.Device);
        if (keyCache.Device is IlgpuDevice ilgpu)
        {
            GpuAttention.Append(ilgpu, k, v, keyCache, valueCache, start);
            return;
        }

        // Scatter each row into the transposed caches.
        float* kSrc = k.FloatPointer, vSrc = v.FloatPointer;
        float* kDst = keyCache.FloatPointer, vDst = valueCache.FloatPointer;
        for (int row = 0; row < t; row++)
        {
            long position = start + row;
            for (int j = 0; j < hkv * dh; j++)
            {
                // Column j of the row is (head j / Dh, dimension j % Dh): cache index (j * S) + position.
                long at = ((long)j * s) + position;
                kDst[at] = kSrc[((long)row * hkv * dh) + j];
                vDst[at] = vSrc[((long)row * hkv * dh) + j];
            }
        }
    }

    /// <summary>
    /// Attends the query tokens at positions [start, start + T) over the cached positions [0, start + T).
    /// All tensors must be contiguous float32 on the cache's device. On an ILGPU device (cuda, ilgpu-cpu) the
    /// kernels are queued on its stream, not waited for, and a call allocates no device memory once the device's
    /// split-key scratch exists (sized for the cache's capacity on the first call that splits).
    /// </summary>
    /// <param name="q">Queries, [T, H, Dh] (or [T, H * Dh]) with H a multiple of Hkv; the last dimension of a
    /// rank-3 query is Dh.</param>
    /// <param name="keyCache">The layer's keys, [Hkv, Dh, S], already holding positions up to start + T.</param>
    /// <param name="valueCache">The layer's values, [Hkv, Dh, S].</param>
    /// <param name="start">The position of the first query token.</param>
    /// <param name="output">The result, the same shape as <paramref name="q"/>.</param>
    public static void Compute(Tensor q, Tensor keyCache, Tensor valueCache, int start, Tensor output)
    {
        // Check the shapes and work out H from the query width.
        RequireCache(keyCache, nameof(keyCache));
        RequireSameShape(keyCache, valueCache, nameof(valueCache));
        RequireFloat(q, nameof(q), keyCache.Device);
        RequireFloat(output, nameof(output), keyCache.Device);
        int hkv = keyCache.Size(0), dh = keyCache.Size(1), s = keyCache.Size(2);
        if (q.Rank < 2)
        {
            throw new ArgumentException($"Attention: queries {q} must be [T, H, {dh}] or [T, H * {dh}].", nameof(q));
        }

        // Rows of heads must have the cache's head width: [T, 4, 3] would otherwise pass for two heads of 6.
        if (q.Rank >= 3 && q.Size(-1) != dh)
        {
            throw new ArgumentException($"Attention: queries {q} have heads of {q.Size(-1)} but the cache {Tensor.FormatShape(keyCache.Shape)} holds heads of Dh = {dh}; pass [T, H, {dh}] or [T, H * {dh}].", nameof(q));
        }

        int t = q.Size(0);
        long width = q.Length / Math.Max(t, 1);
        if (width % dh != 0 || (width / dh) % hkv != 0 || t == 0 && q.Length != 0)
        {
            throw new ArgumentException($"Attention: queries {q} are not [T, H, {dh}] with H a multiple of {hkv} (cache {Tensor.FormatShape(keyCache.Shape)}).", nameof(q));
        }

        if (output.Length != q.Length || output.Size(0) != t)
        {
            throw new ArgumentException($"Attention: output {output} must have the shape of the queries {q}.", nameof(output));
        }

        if (start < 0 || start > s - t || start + t > MaxContext)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"Attention: positions [{start}, {start + t}) do not fit in a cache of {s} positions (at most {MaxContext}).");
        }

        // ILGPU devices queue the GPU kernels.
        if (keyCache.Device is IlgpuDevice ilgpu)
        {
            GpuAttention.Compute(ilgpu, q, keyCache, valueCache, start, output);
            return;
        }

        // Split the (token block, head) pairs across threads; keep small problems on the calling thread.
        int h = (int)(width / dh);
        State state = new()
        {
            Q = q.FloatPointer,
            Keys = keyCache.FloatPointer,
            Values = valueCache.FloatPointer,
            Output = output.FloatPointer,
            Heads = h,
            Group = h / hkv,
            HeadDim = dh,
            Capacity = s,
            Start = start,
            Tokens = t,
            Scale = 1f / MathF.Sqrt(dh),
        };
        int blocks = (t + TokenBlock - 1) / TokenBlock;
        long workPerItem = (long)(start + ((t + 1) / 2)) * dh * 2 * Math.Min(t, TokenBlock);
        int grain = (int)Math.Clamp(32_768 / Math.Max(workPerItem, 1), 1, int.MaxValue);
        WorkerPool pool = ((CpuDevice)q.Device).Pool;
        pool.For(blocks * h, grain, &Run, &state);
    }

    /// <summary>Query tokens of one head that prefill attends together (one work item).</summary>
    private const int TokenBlock = 8;

    private struct State
    {
        public float* Q;
        public float* Keys;
        public float* Values;
        public float* Output;
        public int Heads;
        public int Group;
        public int HeadDim;
        public int Capacity;
        public int Start;
        public int Tokens;
        public float Scale;
    }

    // The scores are fully written before they are read, so the stack buffer is not zeroed.
    [SkipLocalsInit]
    private static void Run(void* statePointer, int begin, int end)
    {
        ref State state = ref Unsafe.AsRef<State>(statePointer);
        if (state.Tokens == 1)
        {
            Decode(ref state, begin, end);
            return;
        }

        // Items are (block, head) pairs, block-major; the range's last block has the longest rows.
        int dh = state.HeadDim;
        int capacity = state.Capacity;
        long tokenStride = (long)state.Heads * dh;
        int lastBlock = (end - 1) / state.Heads;
        int longest = state.Start + Math.Min(state.Tokens, (lastBlock + 1) * TokenBlock);
        int stride = (longest + 15) & ~15;
        float* scores = ScoreRows.Current.Rows((long)TokenBlock * stride);
        for (int item = begin; item < end; item++)
        {
            int block = item / state.Heads;
            int head = item % state.Heads;
            int first = block * TokenBlock;
            int rows = Math.Min(TokenBlock, state.Tokens - first);
            int keys = state.Start + first + rows;
            long kvBase = (long)(head / state.Group) * dh * capacity;
            float* query = state.Q + ((first * tokenStride) + ((long)head * dh));
            float* output = state.Output + ((first * tokenStride) + ((long)head * dh));
            if (Vector512.IsHardwareAccelerated && rows > 1)
            {
                BlockScores(query, tokenStride, rows, state.Keys + kvBase, capacity, dh, state.Scale, scores, stride, keys);
            }
            else
            {
                for (int r = 0; r < rows; r++)
                {
                    Scores(query + (r * tokenStride), state.Keys + kvBase, capacity, dh, state.Scale, new Span<float>(scores + ((long)r * stride), keys));
                }
            }

            // Each row's softmax over its own keys; the later positions of its row weigh nothing.
            for (int r = 0; r < rows; r++)
            {
                int visible = keys - rows + r + 1;
                Span<float> row = new(scores + ((long)r * stride), keys);
                Softmax(row[..visible]);
                row[visible..].Clear();
            }

            if (Vector512.IsHardwareAccelerated && rows > 1)
            {
                BlockWeightedSums(scores, stride, rows, keys, state.Values + kvBase, capacity, dh, output, tokenStride);
            }
            else
            {
                for (int r = 0; r < rows; r++)
                {
                    WeightedSums(new Span<float>(scores + ((long)r * stride), keys), state.Values + kvBase, capacity, dh, output + (r * tokenStride));
                }
            }
        }
    }

    // One query token: items are heads; the scores of one head live on the stack.
    [SkipLocalsInit]
    private static void Decode(ref State state, int begin, int end)
    {
        int dh = state.HeadDim;
        int capacity = state.Capacity;
        int keys = state.Start + 1;
        Span<float> weights = stackalloc float[keys];
        for (int head = begin; head < end; head++)
        {
            long kvBase = (long)(head / state.Group) * dh * capacity;
            Scores(state.Q + ((long)head * dh), state.Keys + kvBase, capacity, dh, state.Scale, weights);
            Softmax(weights);
            WeightedSums(weights, state.Values + kvBase, capacity, dh, state.Output + ((long)head * dh));
        }
    }

    // scores[r, s] = (q_r · K[:, s]) · scale for the block's rows r < rows (2..8) and positions s < keys, 16 positions
    // at a time: each key vector is loaded once for 8 rows (rows past the block's end repeat row 0 and are stored in
    // the spare score rows, never read). Positions past the last whole 16 are done one at a time per row.
    private static void BlockScores(float* query, long tokenStride, int rows, float* keys, int capacity, int dh, float scale, float* scores, int stride, int count)
    {
        float* q0 = query;
        float* q1 = rows > 1 ? query + tokenStride : query;
        float* q2 = rows > 2 ? query + (2 * tokenStride) : query;
        float* q3 = rows > 3 ? query + (3 * tokenStride) : query;
        float* q4 = rows > 4 ? query + (4 * tokenStride) : query;
        float* q5 = rows > 5 ? query + (5 * tokenStride) : query;
        float* q6 = rows > 6 ? query + (6 * tokenStride) : query;
        float* q7 = rows > 7 ? query + (7 * tokenStride) : query;
        int s = 0;
        for (; s + Vector512<float>.Count <= count; s += Vector512<float>.Count)
        {
            Vector512<float> a0 = Vector512<float>.Zero, a1 = Vector512<float>.Zero, a2 = Vector512<float>.Zero, a3 = Vector512<float>.Zero;
            Vector512<float> a4 = Vector512<float>.Zero, a5 = Vector512<float>.Zero, a6 = Vector512<float>.Zero, a7 = Vector512<float>.Zero;
            float* k = keys + s;
            for (int d = 0; d < dh; d++)
            {
                Vector512<float> key = Vector512.Load(k + ((long)d * capacity));
                a0 = Vector512.FusedMultiplyAdd(Vector512.Create(q0[d]), key, a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Create(q1[d]), key, a1);
                a2 = Vector512.FusedMultiplyAdd(Vector512.Create(q2[d]), key, a2);
                a3 = Vector512.FusedMultiplyAdd(Vector512.Create(q3[d]), key, a3);
                a4 = Vector512.FusedMultiplyAdd(Vector512.Create(q4[d]), key, a4);
                a5 = Vector512.FusedMultiplyAdd(Vector512.Create(q5[d]), key, a5);
                a6 = Vector512.FusedMultiplyAdd(Vector512.Create(q6[d]), key, a6);
                a7 = Vector512.FusedMultiplyAdd(Vector512.Create(q7[d]), key, a7);
            }

            float* row = scores + s;
            (a0 * scale).Store(row);
            (a1 * scale).Store(row + stride);
            (a2 * scale).Store(row + (2 * stride));
            (a3 * scale).Store(row + (3 * stride));
            (a4 * scale).Store(row + (4 * stride));
            (a5 * scale).Store(row + (5 * stride));
            (a6 * scale).Store(row + (6 * stride));
            (a7 * scale).Store(row + (7 * stride));
        }

        for (int r = 0; r < rows; r++)
        {
            float* q = query + (r * tokenStride);
            for (int p = s; p < count; p++)
            {
                float acc = 0f;
                for (int d = 0; d < dh; d++)
                {
                    acc = MathF.FusedMultiplyAdd(q[d], keys[((long)d * capacity) + p], acc);
                }

                scores[((long)r * stride) + p] = acc * scale;
            }
        }
    }

    // output_r[d] = Σ_s weights[r, s] · values[d, s] for the block's rows (2..8), two dimensions per pass over the
    // positions: each value vector is loaded once for 8 rows (rows past the block's end repeat row 0, not stored).
    private static void BlockWeightedSums(float* weights, int stride, int rows, int count, float* values, int capacity, int dh, float* output, long tokenStride)
    {
        float* w0 = weights;
        float* w1 = rows > 1 ? weights + stride : weights;
        float* w2 = rows > 2 ? weights + (2 * stride) : weights;
        float* w3 = rows > 3 ? weights + (3 * stride) : weights;
        float* w4 = rows > 4 ? weights + (4 * stride) : weights;
        float* w5 = rows > 5 ? weights + (5 * stride) : weights;
        float* w6 = rows > 6 ? weights + (6 * stride) : weights;
        float* w7 = rows > 7 ? weights + (7 * stride) : weights;
        Span<float> sums = stackalloc float[2 * TokenBlock];
        int d = 0;
        for (; d < dh; d += 2)
        {
            // The last odd dimension pairs with itself; its duplicate sums are not stored.
            float* v0 = values + ((long)d * capacity);
            float* v1 = d + 1 < dh ? v0 + capacity : v0;
            Vector512<float> a0 = Vector512<float>.Zero, a1 = Vector512<float>.Zero, a2 = Vector512<float>.Zero, a3 = Vector512<float>.Zero;
            Vector512<float> a4 = Vector512<float>.Zero, a5 = Vector512<float>.Zero, a6 = Vector512<float>.Zero, a7 = Vector512<float>.Zero;
            Vector512<float> b0 = Vector512<float>.Zero, b1 = Vector512<float>.Zero, b2 = Vector512<float>.Zero, b3 = Vector512<float>.Zero;
            Vector512<float> b4 = Vector512<float>.Zero, b5 = Vector512<float>.Zero, b6 = Vector512<float>.Zero, b7 = Vector512<float>.Zero;
            int s = 0;
            for (; s + Vector512<float>.Count <= count; s += Vector512<float>.Count)
            {
                Vector512<float> x = Vector512.Load(v0 + s);
                Vector512<float> y = Vector512.Load(v1 + s);
                Vector512<float> w = Vector512.Load(w0 + s);
                a0 = Vector512.FusedMultiplyAdd(w, x, a0);
                b0 = Vector512.FusedMultiplyAdd(w, y, b0);
                w = Vector512.Load(w1 + s);
                a1 = Vector512.FusedMultiplyAdd(w, x, a1);
                b1 = Vector512.FusedMultiplyAdd(w, y, b1);
                w = Vector512.Load(w2 + s);
                a2 = Vector512.FusedMultiplyAdd(w, x, a2);
                b2 = Vector512.FusedMultiplyAdd(w, y, b2);
                w = Vector512.Load(w3 + s);
                a3 = Vector512.FusedMultiplyAdd(w, x, a3);
                b3 = Vector512.FusedMultiplyAdd(w, y, b3);
                w = Vector512.Load(w4 + s);
                a4 = Vector512.FusedMultiplyAdd(w, x, a4);
                b4 = Vector512.FusedMultiplyAdd(w, y, b4);
                w = Vector512.Load(w5 + s);
                a5 = Vector512.FusedMultiplyAdd(w, x, a5);
                b5 = Vector512.FusedMultiplyAdd(w, y, b5);
                w = Vector512.Load(w6 + s);
                a6 = Vector512.FusedMultiplyAdd(w, x, a6);
                b6 = Vector512.FusedMultiplyAdd(w, y, b6);
                w = Vector512.Load(w7 + s);
                a7 = Vector512.FusedMultiplyAdd(w, x, a7);
                b7 = Vector512.FusedMultiplyAdd(w, y, b7);
            }

            sums[0] = Vector512.Sum(a0); sums[1] = Vector512.Sum(a1); sums[2] = Vector512.Sum(a2); sums[3] = Vector512.Sum(a3);
            sums[4] = Vector512.Sum(a4); sums[5] = Vector512.Sum(a5); sums[6] = Vector512.Sum(a6); sums[7] = Vector512.Sum(a7);
            sums[8] = Vector512.Sum(b0); sums[9] = Vector512.Sum(b1); sums[10] = Vector512.Sum(b2); sums[11] = Vector512.Sum(b3);
            sums[12] = Vector512.Sum(b4); sums[13] = Vector512.Sum(b5); sums[14] = Vector512.Sum(b6); sums[15] = Vector512.Sum(b7);
            for (int r = 0; r < rows; r++)
            {
                float* w = weights + ((long)r * stride);
                float x = sums[r], y = sums[TokenBlock + r];
                for (int p = s; p < count; p++)
                {
                    x = MathF.FusedMultiplyAdd(w[p], v0[p], x);
                    y = MathF.FusedMultiplyAdd(w[p], v1[p], y);
                }

                output[(r * tokenStride) + d] = x;
                if (d + 1 < dh)
                {
                    output[(r * tokenStride) + d + 1] = y;
                }
            }
        }
    }

    /// <summary>A thread's score rows for prefill blocks: native, 64-byte aligned, grown on demand, freed with the
    /// thread's holder.</summary>
    private sealed class ScoreRows
    {
        [ThreadStatic]
        private static ScoreRows? t_current;

        private float* _rows;
        private long _capacity;

        ~ScoreRows()
        {
            NativeMemory.AlignedFree(_rows);
        }

        public static ScoreRows Current => t_current ??= new ScoreRows();

        /// <summary>At least <paramref name="floats"/> floats.</summary>
        public float* Rows(long floats)
        {
            if (floats > _capacity)
            {
                NativeMemory.AlignedFree(_rows);
                _rows = null;
                _rows = (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);
                _capacity = floats;
            }

            return _rows;
        }
    }

    // output[d] = Σ_s weights[s] · values[d, s] for every d: four dimensions per pass over the positions, so each
    // block of weights is loaded once for four value rows and the four sums run as independent chains.
    private static void WeightedSums(Span<float> weights, float* values, int capacity, int dh, float* output)
    {
        int n = weights.Length;
        fixed (float* w = weights)
        {
            int d = 0;
            if (Vector512.IsHardwareAccelerated)
            {
                for (; d + 4 <= dh; d += 4)
                {
                    float* v0 = values + ((long)d * capacity);
                    float* v1 = v0 + capacity;
                    float* v2 = v1 + capacity;
                    float* v3 = v2 + capacity;
                    Vector512<float> acc0 = Vector512<float>.Zero, acc1 = Vector512<float>.Zero;
                    Vector512<float> acc2 = Vector512<float>.Zero, acc3 = Vector512<float>.Zero;
                    int s = 0;
                    for (; s + Vector512<float>.Count <= n; s += Vector512<float>.Count)
                    {
                        Vector512<float> block = Vector512.Load(w + s);
                        acc0 = Vector512.FusedMultiplyAdd(block, Vector512.Load(v0 + s), acc0);
                        acc1 = Vector512.FusedMultiplyAdd(block, Vector512.Load(v1 + s), acc1);
                        acc2 = Vector512.FusedMultiplyAdd(block, Vector512.Load(v2 + s), acc2);
                        acc3 = Vector512.FusedMultiplyAdd(block, Vector512.Load(v3 + s), acc3);
                    }

                    float sum0 = Vector512.Sum(acc0), sum1 = Vector512.Sum(acc1);
                    float sum2 = Vector512.Sum(acc2), sum3 = Vector512.Sum(acc3);
                    for (; s < n; s++)
                    {
                        sum0 = MathF.FusedMultiplyAdd(w[s], v0[s], sum0);
                        sum1 = MathF.FusedMultiplyAdd(w[s], v1[s], sum1);
                        sum2 = MathF.FusedMultiplyAdd(w[s], v2[s], sum2);
                        sum3 = MathF.FusedMultiplyAdd(w[s], v3[s], sum3);
                    }

                    output[d] = sum0;
                    output[d + 1] = sum1;
                    output[d + 2] = sum2;
                    output[d + 3] = sum3;
                }
            }

            // The remaining dimensions (all of them without Vector512): one dot product each.
            for (; d < dh; d++)
            {
                output[d] = TensorPrimitives.Dot((ReadOnlySpan<float>)weights, new ReadOnlySpan<float>(values + ((long)d * capacity), n));
            }
        }
    }

    private static void Scores(float* query, float* keys, int capacity, int dh, float scale, Span<float> scores)
    {
        int n = scores.Length;
        int s = 0;
        fixed (float* result = scores)
        {
            if (Vector512.IsHardwareAccelerated)
            {
                for (; s + Vector512<float>.Count <= n; s += Vector512<float>.Count)
                {
                    Vector512<float> acc = Vector512<float>.Zero;
                    for (int d = 0; d < dh; d++)
                    {
                        Vector512<float> k = Vector512.Load(keys + ((long)d * capacity) + s);
                        acc = Vector512.FusedMultiplyAdd(Vector512.Create(query[d]), k, acc);
                    }

                    (acc * scale).Store(result + s);
                }
            }

            if (Vector256.IsHardwareAccelerated)
            {
                for (; s + Vector256<float>.Count <= n; s += Vector256<float>.Count)
                {
                    Vector256<float> acc = Vector256<float>.Zero;
                    for (int d = 0; d < dh; d++)
                    {
                        Vector256<float> k = Vector256.Load(keys + ((long)d * capacity) + s);
                        acc = Vector256.FusedMultiplyAdd(Vector256.Create(query[d]), k, acc);
                    }

                    (acc * scale).Store(result + s);
                }
            }

            for (; s < n; s++)
            {
                float acc = 0f;
                for (int d = 0; d < dh; d++)
                {
                    acc = MathF.FusedMultiplyAdd(query[d], keys[((long)d * capacity) + s], acc);
                }

                result[s] = acc * scale;
            }
        }
    }

    private static void Softmax(Span<float> x)
    {
        Ops.SoftmaxRow(x, x);
    }

    /// <summary>
    /// The float64 reference: the same attention computed one position at a time, for tests.
    /// Arguments as in <see cref="Compute"/>, with the cache as plain arrays [Hkv, Dh, S].
    /// </summary>
    public static double[] Reference(float[] q, int t, int h, int dh, float[] keys, float[] values, int hkv, int capacity, int start)
    {
        double[] output = new double[t * h * dh];
        double scale = 1.0 / Math.Sqrt(dh);
        for (int token = 0; token < t; token++)
        {
            for (int head = 0; head < h; head++)
            {
                int g = head / (h / hkv);
                int n = start + token + 1;
                double[] scores = new double[n];
                double max = double.NegativeInfinity;
                for (int s = 0; s < n; s++)
                {
                    double dot = 0;
                    for (int d = 0; d < dh; d++)
                    {
                        dot += (double)q[(((token * h) + head) * dh) + d] * keys[(((g * dh) + d) * capacity) + s];
                    }

                    scores[s] = dot * scale;
                    max = Math.Max(max, scores[s]);
                }

                double sum = 0;
                for (int s = 0; s < n; s++)
                {
                    scores[s] = Math.Exp(scores[s] - max);
                    sum += scores[s];
                }

                for (int d = 0; d < dh; d++)
                {
                    double acc = 0;
                    for (int s = 0; s < n; s++)
                    {
                        acc += scores[s] / sum * values[(((g * dh) + d) * capacity) + s];
                    }

                    output[(((token * h) + head) * dh) + d] = acc;
                }
            }
        }

        return output;
    }

    private static void RequireCache(Tensor cache, string name)
    {
        if (cache.Device is not CpuDevice and not IlgpuDevice)
        {
            throw new NotSupportedException($"Attention: {name} {cache} is on {cache.Device.Name}, which attention does not support; use cpu, cuda or ilgpu-cpu.");
        }

        RequireFloat(cache, name, cache.Device);
        if (cache.Rank != 3 || cache.Size(0) == 0 || cache.Size(1) == 0)
        {
            throw new ArgumentException($"Attention: {name} {cache} must be [Hkv, Dh, S] with Hkv and Dh at least 1.", name);
        }
    }

    private static void RequireSameShape(Tensor expected, Tensor actual, string name)
    {
        if (!expected.Shape.SequenceEqual(actual.Shape))
        {
            throw new ArgumentException($"Attention: {name} {actual} must have the shape {Tensor.FormatShape(expected.Shape)}.", name);
        }

        RequireFloat(actual, name, expected.Device);
    }

    private static void RequireFloat(Tensor tensor, string name, Device device)
    {
        if (tensor.Device != device || tensor.DType != DType.Float32 || !tensor.IsContiguous)
        {
            throw new ArgumentException($"Attention: {name} {tensor} must be a contiguous float32 tensor on {device.Name}, the device of the key cache; convert it or move it with To(device).", name);
        }
    }
}
