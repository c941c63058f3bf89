// Causal grouped-query attention over a key/value cache, on the CPU.
//
// Layout. The cache of one layer holds keys and values transposed, [Hkv, Dh, S]: for each key/value head and each
// dimension d, the values at all positions are contiguous. Scores for a vector of positions (16 with AVX-512, 8 with
// AVX2) are then one FMA per dimension (no horizontal sums, whatever Dh is), and each output dimension is one dot
// product over positions. The vector kernels are written once over IFloatLanes and run at the machine's width.
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
            Width = t_width ?? BestWidth,
        };
        int blocks = (t + TokenBlock - 1) / TokenBlock;
        long workPerItem = (long)(start + ((t + 1) / 2)) * dh * 2 * Math.Min(t, TokenBlock);
        int grain = (int)Math.Clamp(32_768 / Math.Max(workPerItem, 1), 1, int.MaxValue);
        WorkerPool pool = ((CpuDevice)q.Device).Pool;
        pool.For(blocks * h, grain, &Run, &state);
    }

    /// <summary>Query tokens of one head that prefill attends together (one work item).</summary>
    private const int TokenBlock = 8;

    // The widest vectors this machine runs in hardware.
    private static readonly KernelWidth BestWidth =
        Vector512.IsHardwareAccelerated ? KernelWidth.Vector512
        : Vector256.IsHardwareAccelerated ? KernelWidth.Vector256
        : KernelWidth.Scalar;

    [ThreadStatic]
    private static KernelWidth? t_width;

    /// <summary>
    /// For tests: the vector width of the CPU kernels that this thread's <see cref="Compute"/> calls run (null: the
    /// machine's widest). A width the hardware lacks still computes correctly, in software, slowly.
    /// </summary>
    internal static KernelWidth? WidthOverride
    {
        get => t_width;
        set => t_width = value;
    }

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
        public KernelWidth Width;
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
            if (rows > 1 && state.Width == KernelWidth.Vector512)
            {
                BlockScores<Lanes512, Vector512<float>>(query, tokenStride, rows, state.Keys + kvBase, capacity, dh, state.Scale, scores, stride, keys);
            }
            else if (rows > 1 && state.Width == KernelWidth.Vector256)
            {
                BlockScores<Lanes256, Vector256<float>>(query, tokenStride, rows, state.Keys + kvBase, capacity, dh, state.Scale, scores, stride, keys);
            }
            else
            {
                for (int r = 0; r < rows; r++)
                {
                    Scores(query + (r * tokenStride), state.Keys + kvBase, capacity, dh, state.Scale, new Span<float>(scores + ((long)r * stride), keys), state.Width);
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

            if (rows > 1 && state.Width == KernelWidth.Vector512)
            {
                BlockWeightedSums<Lanes512, Vector512<float>>(scores, stride, rows, keys, state.Values + kvBase, capacity, dh, output, tokenStride);
            }
            else if (rows > 1 && state.Width == KernelWidth.Vector256)
            {
                BlockWeightedSums<Lanes256, Vector256<float>>(scores, stride, rows, keys, state.Values + kvBase, capacity, dh, output, tokenStride);
            }
            else
            {
                for (int r = 0; r < rows; r++)
                {
                    WeightedSums(new Span<float>(scores + ((long)r * stride), keys), state.Values + kvBase, capacity, dh, output + (r * tokenStride), state.Width);
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
            Scores(state.Q + ((long)head * dh), state.Keys + kvBase, capacity, dh, state.Scale, weights, state.Width);
            Softmax(weights);
            WeightedSums(weights, state.Values + kvBase, capacity, dh, state.Output + ((long)head * dh), state.Width);
        }
    }

    // scores[r, s] = (q_r · K[:, s]) · scale for the block's rows r < rows (2..8) and positions s < keys, one vector of
    // positions at a time (16 or 8): each key vector is loaded once for 8 rows (rows past the block's end repeat row 0
    // and are stored in the spare score rows, never read). Positions past the last whole vector are done one at a time
    // per row.
    private static void BlockScores<TLanes, TVector>(float* query, long tokenStride, int rows, float* keys, int capacity, int dh, float scale, float* scores, int stride, int count)
        where TLanes : IFloatLanes<TVector>
        where TVector : unmanaged
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
        for (; s + TLanes.Count <= count; s += TLanes.Count)
        {
            TVector a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            float* k = keys + s;
            for (int d = 0; d < dh; d++)
            {
                TVector key = TLanes.Load(k + ((long)d * capacity));
                a0 = TLanes.MultiplyAdd(TLanes.Splat(q0[d]), key, a0);
                a1 = TLanes.MultiplyAdd(TLanes.Splat(q1[d]), key, a1);
                a2 = TLanes.MultiplyAdd(TLanes.Splat(q2[d]), key, a2);
                a3 = TLanes.MultiplyAdd(TLanes.Splat(q3[d]), key, a3);
                a4 = TLanes.MultiplyAdd(TLanes.Splat(q4[d]), key, a4);
                a5 = TLanes.MultiplyAdd(TLanes.Splat(q5[d]), key, a5);
                a6 = TLanes.MultiplyAdd(TLanes.Splat(q6[d]), key, a6);
                a7 = TLanes.MultiplyAdd(TLanes.Splat(q7[d]), key, a7);
            }

            float* row = scores + s;
            TLanes.Store(TLanes.Multiply(a0, scale), row);
            TLanes.Store(TLanes.Multiply(a1, scale), row + stride);
            TLanes.Store(TLanes.Multiply(a2, scale), row + (2 * stride));
            TLanes.Store(TLanes.Multiply(a3, scale), row + (3 * stride));
            TLanes.Store(TLanes.Multiply(a4, scale), row + (4 * stride));
            TLanes.Store(TLanes.Multiply(a5, scale), row + (5 * stride));
            TLanes.Store(TLanes.Multiply(a6, scale), row + (6 * stride));
            TLanes.Store(TLanes.Multiply(a7, scale), row + (7 * stride));
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

    // output_r[d] = Σ_s weights[r, s] · values[d, s] for the block's rows (2..8): each value vector is loaded once for 8
    // rows (rows past the block's end repeat row 0, not stored). With 16-float vectors two dimensions share a pass over
    // the positions (16 running sums, of the 32 registers); with 8-float vectors, whose machines have 16 registers, one.
    private static void BlockWeightedSums<TLanes, TVector>(float* weights, int stride, int rows, int count, float* values, int capacity, int dh, float* output, long tokenStride)
        where TLanes : IFloatLanes<TVector>
        where TVector : unmanaged
    {
        bool pair = TLanes.Count == 16;
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
        for (; d < dh; d += pair ? 2 : 1)
        {
            // The last odd dimension pairs with itself; its duplicate sums are not stored.
            float* v0 = values + ((long)d * capacity);
            float* v1 = pair && d + 1 < dh ? v0 + capacity : v0;
            TVector a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            TVector b0 = default, b1 = default, b2 = default, b3 = default, b4 = default, b5 = default, b6 = default, b7 = default;
            int s = 0;
            for (; s + TLanes.Count <= count; s += TLanes.Count)
            {
                TVector x = TLanes.Load(v0 + s);
                TVector y = pair ? TLanes.Load(v1 + s) : x;
                TVector w = TLanes.Load(w0 + s);
                a0 = TLanes.MultiplyAdd(w, x, a0);
                b0 = pair ? TLanes.MultiplyAdd(w, y, b0) : b0;
                w = TLanes.Load(w1 + s);
                a1 = TLanes.MultiplyAdd(w, x, a1);
                b1 = pair ? TLanes.MultiplyAdd(w, y, b1) : b1;
                w = TLanes.Load(w2 + s);
                a2 = TLanes.MultiplyAdd(w, x, a2);
                b2 = pair ? TLanes.MultiplyAdd(w, y, b2) : b2;
                w = TLanes.Load(w3 + s);
                a3 = TLanes.MultiplyAdd(w, x, a3);
                b3 = pair ? TLanes.MultiplyAdd(w, y, b3) : b3;
                w = TLanes.Load(w4 + s);
                a4 = TLanes.MultiplyAdd(w, x, a4);
                b4 = pair ? TLanes.MultiplyAdd(w, y, b4) : b4;
                w = TLanes.Load(w5 + s);
                a5 = TLanes.MultiplyAdd(w, x, a5);
                b5 = pair ? TLanes.MultiplyAdd(w, y, b5) : b5;
                w = TLanes.Load(w6 + s);
                a6 = TLanes.MultiplyAdd(w, x, a6);
                b6 = pair ? TLanes.MultiplyAdd(w, y, b6) : b6;
                w = TLanes.Load(w7 + s);
                a7 = TLanes.MultiplyAdd(w, x, a7);
                b7 = pair ? TLanes.MultiplyAdd(w, y, b7) : b7;
            }

            sums[0] = TLanes.Sum(a0); sums[1] = TLanes.Sum(a1); sums[2] = TLanes.Sum(a2); sums[3] = TLanes.Sum(a3);
            sums[4] = TLanes.Sum(a4); sums[5] = TLanes.Sum(a5); sums[6] = TLanes.Sum(a6); sums[7] = TLanes.Sum(a7);
            sums[8] = TLanes.Sum(b0); sums[9] = TLanes.Sum(b1); sums[10] = TLanes.Sum(b2); sums[11] = TLanes.Sum(b3);
            sums[12] = TLanes.Sum(b4); sums[13] = TLanes.Sum(b5); sums[14] = TLanes.Sum(b6); sums[15] = TLanes.Sum(b7);
            for (int r = 0; r < rows; r++)
            {
                float* w = weights + ((long)r * stride);
                float x = sums[r];
                for (int p = s; p < count; p++)
                {
                    x = MathF.FusedMultiplyAdd(w[p], v0[p], x);
                }

                output[(r * tokenStride) + d] = x;
                if (pair && d + 1 < dh)
                {
                    float y = sums[TokenBlock + r];
                    for (int p = s; p < count; p++)
                    {
                        y = MathF.FusedMultiplyAdd(w[p], v1[p], y);
                    }

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
    private static void WeightedSums(Span<float> weights, float* values, int capacity, int dh, float* output, KernelWidth width)
    {
        int n = weights.Length;
        fixed (float* w = weights)
        {
            int d = width == KernelWidth.Vector512 ? WeightedSums4<Lanes512, Vector512<float>>(w, n, values, capacity, dh, output)
                : width == KernelWidth.Vector256 ? WeightedSums4<Lanes256, Vector256<float>>(w, n, values, capacity, dh, output)
                : 0;

            // The remaining dimensions (all of them without vector hardware): one dot product each.
            for (; d < dh; d++)
            {
                output[d] = TensorPrimitives.Dot((ReadOnlySpan<float>)weights, new ReadOnlySpan<float>(values + ((long)d * capacity), n));
            }
        }
    }

    // The whole groups of four dimensions of WeightedSums; returns how many dimensions it wrote.
    private static int WeightedSums4<TLanes, TVector>(float* w, int n, float* values, int capacity, int dh, float* output)
        where TLanes : IFloatLanes<TVector>
        where TVector : unmanaged
    {
        int d = 0;
        for (; d + 4 <= dh; d += 4)
        {
            float* v0 = values + ((long)d * capacity);
            float* v1 = v0 + capacity;
            float* v2 = v1 + capacity;
            float* v3 = v2 + capacity;
            TVector acc0 = default, acc1 = default, acc2 = default, acc3 = default;
            int s = 0;
            for (; s + TLanes.Count <= n; s += TLanes.Count)
            {
                TVector block = TLanes.Load(w + s);
                acc0 = TLanes.MultiplyAdd(block, TLanes.Load(v0 + s), acc0);
                acc1 = TLanes.MultiplyAdd(block, TLanes.Load(v1 + s), acc1);
                acc2 = TLanes.MultiplyAdd(block, TLanes.Load(v2 + s), acc2);
                acc3 = TLanes.MultiplyAdd(block, TLanes.Load(v3 + s), acc3);
            }

            float sum0 = TLanes.Sum(acc0), sum1 = TLanes.Sum(acc1);
            float sum2 = TLanes.Sum(acc2), sum3 = TLanes.Sum(acc3);
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

        return d;
    }

    private static void Scores(float* query, float* keys, int capacity, int dh, float scale, Span<float> scores, KernelWidth width)
    {
        int n = scores.Length;
        int s = 0;
        fixed (float* result = scores)
        {
            if (width == KernelWidth.Vector512)
            {
                s = ScoreVectors<Lanes512, Vector512<float>>(query, keys, capacity, dh, scale, result, s, n);
            }

            if (width >= KernelWidth.Vector256)
            {
                s = ScoreVectors<Lanes256, Vector256<float>>(query, keys, capacity, dh, scale, result, s, n);
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

    // Scores of whole vectors of positions from position s on; returns the first position it did not write. Four
    // vectors of positions at a time first: four independent sums, and each key row is read in runs of four vectors
    // (whole cache lines) rather than one.
    private static int ScoreVectors<TLanes, TVector>(float* query, float* keys, int capacity, int dh, float scale, float* result, int s, int n)
        where TLanes : IFloatLanes<TVector>
        where TVector : unmanaged
    {
        int width = TLanes.Count;
        for (; s + (4 * width) <= n; s += 4 * width)
        {
            TVector acc0 = default, acc1 = default, acc2 = default, acc3 = default;
            for (int d = 0; d < dh; d++)
            {
                TVector q = TLanes.Splat(query[d]);
                float* k = keys + ((long)d * capacity) + s;
                acc0 = TLanes.MultiplyAdd(q, TLanes.Load(k), acc0);
                acc1 = TLanes.MultiplyAdd(q, TLanes.Load(k + width), acc1);
                acc2 = TLanes.MultiplyAdd(q, TLanes.Load(k + (2 * width)), acc2);
                acc3 = TLanes.MultiplyAdd(q, TLanes.Load(k + (3 * width)), acc3);
            }

            TLanes.Store(TLanes.Multiply(acc0, scale), result + s);
            TLanes.Store(TLanes.Multiply(acc1, scale), result + s + width);
            TLanes.Store(TLanes.Multiply(acc2, scale), result + s + (2 * width));
            TLanes.Store(TLanes.Multiply(acc3, scale), result + s + (3 * width));
        }

        for (; s + TLanes.Count <= n; s += TLanes.Count)
        {
            TVector acc = default;
            for (int d = 0; d < dh; d++)
            {
                acc = TLanes.MultiplyAdd(TLanes.Splat(query[d]), TLanes.Load(keys + ((long)d * capacity) + s), acc);
            }

            TLanes.Store(TLanes.Multiply(acc, scale), result + s);
        }

        return s;
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
