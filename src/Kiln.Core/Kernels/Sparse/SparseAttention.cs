// Sparse causal grouped-query attention on the CPU (DSA, eq. 2 of the DeepSeek-V3.2-Exp report): query token t of
// every head attends only to the positions selected for row t (TopK.Select), gathered from a position-major KV cache
// [S, Hkv, Dh], in which the key (or value) of one position and head is Dh contiguous floats.
//
// Math (token t at absolute position p = start + t, query head h, its key/value head g = h / (H / Hkv), selected
// positions sel[t, 0..c) with c the number of leading non-negative entries of the row):
//   scores[i] = (q[t, h, :] · K[sel[i], g, :]) / sqrt(Dh)
//   weights   = softmax(scores), stable (the max is subtracted before exp)
//   out[t, h, d] = Σ_i weights[i] · V[sel[i], g, d]
//
// Why position-major. Dense attention streams every position, so its cache is transposed ([Hkv, Dh, S]) for
// vector loads along S. Sparse attention reads K scattered positions: in the transposed layout each gathered float
// is its own cache line (Dh lines per key), in this layout a key is Dh/16 lines read with full-width loads. At
// Dh = 64, K = 128 that is 256 KB against 4 MB of memory traffic per token and head group.
//
// Work items are (token, key/value head) pairs: the query heads of a group share each key row while it is in L1.
// Each score is one vectorized dot product; the values are summed in register blocks of 64 dimensions (four
// Vector512 accumulators), so a value row is read once per head. Every selected position is checked against [0, p]
// before the kernel runs, so no load can read outside the written prefix of the cache. The result of a token does
// not depend on the chunk it came in or on the thread count: prefill in pieces is bitwise prefill in one piece.
//
// Devices. Compute with the selection as an int32 tensor, and Append (the chunk's rows into the position-major
// caches), dispatch by the cache's device: the code here on cpu, GpuSparseAttention.cs on ILGPU devices, where the
// selection stays on the device and the kernel skips entries outside [0, p] instead of the host checking them.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Devices;

namespace Kiln.Kernels;

/// <summary>
/// Causal grouped-query attention of new query tokens over the cache positions selected per token (the same selection
/// for every head), reading a position-major KV cache [S, Hkv, Dh].
/// </summary>
public static unsafe class SparseAttention
{
    /// <summary>
    /// Attends the query tokens at positions [start, start + T) over their selected positions. Row t of
    /// <paramref name="indices"/> holds distinct positions in [0, start + t], then -1 padding; its count is the number
    /// of leading non-negative entries (a row with none gives zeros).
    /// </summary>
    /// <param name="q">Queries, [T, H, Dh] (or [T, H * Dh]) with H a multiple of Hkv.</param>
    /// <param name="keyCache">The layer's keys, [S, Hkv, Dh] (position-major), holding positions up to start + T.</param>
    /// <param name="valueCache">The layer's values, [S, Hkv, Dh].</param>
    /// <param name="indices">The selection, [T, K] row-major (from <see cref="TopK.Select"/>).</param>
    /// <param name="k">K, the row length of <paramref name="indices"/>; at least 1.</param>
    /// <param name="start">The position of the first query token.</param>
    /// <param name="output">The result, the shape of <paramref name="q"/>.</param>
    /// <exception cref="ArgumentException">Shapes, dtypes or devices do not fit, or a row selects a future or
    /// negative position.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="k"/> is below 1, or the positions do not fit.</exception>
    public static void Compute(
        Tensor q,
        Tensor keyCache,
        Tensor valueCache,
        ReadOnlySpan<int> indices,
        int k,
        int start,
        Tensor output)
    {
        // Check the tensors (on the cpu), then the selection: causal, -1 padding only at the end.
        (int t, int hkv, int dh) = CheckShapes(q, keyCache, valueCache, k, start, output);
        if (keyCache.Device is not CpuDevice)
        {
            throw new ArgumentException(
                $"SparseAttention: the span overload runs on the cpu device; keyCache is on {keyCache.Device.Name}: pass the "
                + "selection as an int32 tensor on that device.",
                nameof(indices));
        }

        long width = q.Length / t;
        RequireCausalSelection(indices, t, k, start);

        // Split the (token, key/value head) pairs across threads.
        int h = (int)(width / dh);
        fixed (int* selection = indices)
        {
            State state = new()
            {
                Q = q.FloatPointer,
                Keys = keyCache.FloatPointer,
                Values = valueCache.FloatPointer,
                Output = output.FloatPointer,
                Indices = selection,
                K = k,
                Heads = h,
                KvHeads = hkv,
                Group = h / hkv,
                HeadDim = dh,
                Start = start,
                Scale = 1f / MathF.Sqrt(dh),
            };
            long workPerItem = (long)Math.Min(k, start + ((t + 1) / 2)) * dh * 2 * (h / hkv);
            int grain = (int)Math.Clamp(32_768 / Math.Max(workPerItem, 1), 1, int.MaxValue);
            ((CpuDevice)q.Device).Pool.For(t * hkv, grain, &Run, &state);
        }
    }

    /// <summary>
    /// <see cref="Compute(Tensor, Tensor, Tensor, ReadOnlySpan{int}, int, int, Tensor)"/> with the selection as an int32
    /// tensor [T, K] on the cache's device. On the cpu the rows are checked and attended as by the span overload. On
    /// an ILGPU device (cuda, ilgpu-cpu) the selection may have been written by a kernel (TopK.Select), so the host
    /// does not read it: the kernels (GpuSparseAttention.cs) read only the first min(K, start + t + 1) entries of row t
    /// and skip every entry outside [0, start + t]; for every selection the cpu accepts both attend the same rows.
    /// The launches are queued, not waited for, and a call allocates no device memory once the device's split-K
    /// scratch exists.
    /// </summary>
    /// <param name="q">Queries, [T, H, Dh] (or [T, H * Dh]) with H a multiple of Hkv.</param>
    /// <param name="keyCache">The layer's keys, [S, Hkv, Dh] (position-major), holding positions up to start + T.</param>
    /// <param name="valueCache">The layer's values, [S, Hkv, Dh].</param>
    /// <param name="indices">The selection, a contiguous int32 tensor [T, K] on the cache's device.</param>
    /// <param name="k">K, the row length of <paramref name="indices"/>; at least 1.</param>
    /// <param name="start">The position of the first query token.</param>
    /// <param name="output">The result, the shape of <paramref name="q"/>.</param>
    /// <exception cref="ArgumentException">Shapes, dtypes or devices do not fit; on the cpu also a row that selects a
    /// future or negative position.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="k"/> is below 1, or the positions do not fit.</exception>
    public static void Compute(Tensor q, Tensor keyCache, Tensor valueCache, Tensor indices, int k, int start, Tensor output)
    {
        (int t, int _, int dh) = CheckShapes(q, keyCache, valueCache, k, start, output);
        ArgumentNullException.ThrowIfNull(indices);
        if (!(indices.Device == keyCache.Device || (indices.Device is CpuDevice && keyCache.Device is CpuDevice)) || indices.DType != DType.Int32 || !indices.IsContiguous || indices.Length != (long)t * k)
        {
            throw new ArgumentException(
                $"SparseAttention: indices {indices} must be a contiguous int32 [{t}, {k}] tensor on {keyCache.Device.Name}, "
                + "the device of the key cache.",
                nameof(indices));
        }

        if (keyCache.Device is not IlgpuDevice ilgpu)
        {
            Compute(q, keyCache, valueCache, indices.AsSpan<int>(), k, start, output);
            return;
        }

        if (dh > GpuSparseAttention.MaxHeadDim)
        {
            throw new ArgumentException(
                $"SparseAttention: the cache {Tensor.FormatShape(keyCache.Shape)} has heads of Dh = {dh}; the {ilgpu.Name} kernel "
                + $"holds at most {GpuSparseAttention.MaxHeadDim} in shared memory.",
                nameof(keyCache));
        }

        GpuSparseAttention.Compute(ilgpu, q, keyCache, valueCache, indices, k, start, output);
    }

    /// <summary>
    /// Writes the keys and values of tokens [start, start + T) into a layer's position-major caches: rows
    /// [start, start + T) of [S, Hkv, Dh] become the rows of <paramref name="k"/> and <paramref name="v"/>. All
    /// tensors are contiguous float32 on the caches' device; on an ILGPU device the copy is queued, not waited for.
    /// </summary>
    /// <param name="k">New keys, [T, Hkv * Dh].</param>
    /// <param name="v">New values, [T, Hkv * Dh].</param>
    /// <param name="keyCache">The layer's keys, [S, Hkv, Dh].</param>
    /// <param name="valueCache">The layer's values, [S, Hkv, Dh].</param>
    /// <param name="start">The position of the first new token.</param>
    /// <exception cref="ArgumentException">Shapes, dtypes or devices do not fit.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The rows do not fit behind <paramref name="start"/>.</exception>
    public static void Append(Tensor k, Tensor v, Tensor keyCache, Tensor valueCache, int start)
    {
        // Check the caches, then the rows.
        RequireCache(keyCache, nameof(keyCache));
        RequireCache(valueCache, nameof(valueCache));
        RequireFloat(valueCache, nameof(valueCache), keyCache.Device);
        RequireFloat(k, nameof(k), keyCache.Device);
        RequireFloat(v, nameof(v), keyCache.Device);
        int capacity = keyCache.Size(0), width = keyCache.Size(1) * keyCache.Size(2);
        int t = k.Rank == 2 ? k.Size(0) : -1;
        if (!keyCache.Shape.SequenceEqual(valueCache.Shape) || k.Rank != 2 || k.Size(1) != width
            || !k.Shape.SequenceEqual(v.Shape))
        {
            throw new ArgumentException(
                $"SparseAttention.Append: k {k} and v {v} must both be [T, {width}] for caches {Tensor.FormatShape(keyCache.Shape)} "
                + $"and {Tensor.FormatShape(valueCache.Shape)} of one shape.",
                nameof(k));
        }

        if (start < 0 || start > capacity - t)
        {
            throw new ArgumentOutOfRangeException(
                nameof(start), $"SparseAttention.Append: positions [{start}, {start + t}) do not fit in a cache of {capacity} positions.");
        }

        if (keyCache.Device is IlgpuDevice ilgpu)
        {
            GpuSparseAttention.Append(ilgpu, k, v, keyCache, valueCache, start);
            return;
        }

        k.AsSpan().CopyTo(keyCache.AsSpan().Slice(start * width, t * width));
        v.AsSpan().CopyTo(valueCache.AsSpan().Slice(start * width, t * width));
    }

    /// <summary>
    /// The float64 reference for tests: attention over the selected positions only, with the cache as plain arrays
    /// [S, Hkv, Dh] and the selection [T, K] (-1 padded).
    /// </summary>
    public static double[] Reference(
        float[] q,
        int t,
        int h,
        int dh,
        float[] keys,
        float[] values,
        int hkv,
        int[] indices,
        int k)
    {
        double[] output = new double[t * h * dh];
        double scale = 1.0 / Math.Sqrt(dh);
        for (int token = 0; token < t; token++)
        {
            int[] selected = indices.Skip(token * k).Take(k).TakeWhile(static s => s >= 0).ToArray();
            for (int head = 0; head < h; head++)
            {
                // Scores over the selection, a stable softmax, then the weighted values.
                int g = head / (h / hkv);
                double[] scores = new double[selected.Length];
                for (int i = 0; i < selected.Length; i++)
                {
                    double dot = 0;
                    for (int d = 0; d < dh; d++)
                    {
                        dot += (double)q[(((token * h) + head) * dh) + d] * keys[(((selected[i] * hkv) + g) * dh) + d];
                    }

                    scores[i] = dot * scale;
                }

                double max = scores.Length > 0 ? scores.Max() : 0;
                double sum = scores.Sum(x => Math.Exp(x - max));
                for (int d = 0; d < dh; d++)
                {
                    double acc = 0;
                    for (int i = 0; i < selected.Length; i++)
                    {
                        acc += Math.Exp(scores[i] - max) / sum * values[(((selected[i] * hkv) + g) * dh) + d];
                    }

                    output[(((token * h) + head) * dh) + d] = acc;
                }
            }
        }

        return output;
    }

    private struct State
    {
        public float* Q;
        public float* Keys;
        public float* Values;
        public float* Output;
        public int* Indices;
        public int K;
        public int Heads;
        public int KvHeads;
        public int Group;
        public int HeadDim;
        public int Start;
        public float Scale;
    }

    // The most scores held on the stack at once (64 KB): the heads of a group are scored together while they fit.
    private const int StackScores = 16_384;

    // The scores are fully written before they are read, so the stack buffer is not zeroed.
    [SkipLocalsInit]
    private static void Run(void* statePointer, int begin, int end)
    {
        ref State state = ref Unsafe.AsRef<State>(statePointer);
        int dh = state.HeadDim, hkv = state.KvHeads, group = state.Group;
        long rowStride = (long)hkv * dh;
        int most = Math.Min(state.K, state.Start + ((end - 1) / hkv) + 1);
        int together = Math.Clamp(StackScores / most, 1, group);
        Span<float> scores = stackalloc float[together * most];
        for (int item = begin; item < end; item++)
        {
            // The row's selection and its count (leading non-negative entries).
            int token = item / hkv;
            int g = item % hkv;
            int* selection = state.Indices + ((long)token * state.K);
            int count = 0;
            while (count < state.K && selection[count] >= 0)
            {
                count++;
            }

            float* keys = state.Keys + ((long)g * dh);
            float* values = state.Values + ((long)g * dh);
            for (int first = 0; first < group; first += together)
            {
                int heads = Math.Min(together, group - first);
                long head = ((long)token * state.Heads) + ((long)g * group) + first;
                float* query = state.Q + (head * dh);
                float* output = state.Output + (head * dh);
                if (count == 0)
                {
                    new Span<float>(output, heads * dh).Clear();
                    continue;
                }

                // Scores of the heads over the selected positions (each key row loaded once for all of them), a
                // stable softmax per head, then each head's weighted sum of the value rows.
                Scores(query, heads, keys, rowStride, dh, state.Scale, selection, count, scores);
                for (int j = 0; j < heads; j++)
                {
                    Span<float> weights = scores.Slice(j * count, count);
                    Ops.SoftmaxRow(weights, weights);
                    fixed (float* w = weights)
                    {
                        WeightedSum(w, values, rowStride, dh, selection, count, output + ((long)j * dh));
                    }
                }
            }
        }
    }

    // scores[j, i] = (query_j · keys[sel[i]]) · scale for the `heads` consecutive query heads j.
    private static void Scores(
        float* query, int heads, float* keys, long rowStride, int dh, float scale, int* selection, int count, Span<float> scores)
    {
        fixed (float* result = scores)
        {
            for (int i = 0; i < count; i++)
            {
                float* key = keys + (selection[i] * rowStride);
                if (Sse.IsSupported && i + 4 < count)
                {
                    // The row four selections ahead: its positions are random, so no hardware prefetcher sees it.
                    float* ahead = keys + (selection[i + 4] * rowStride);
                    for (int line = 0; line < dh; line += 16)
                    {
                        Sse.Prefetch0(ahead + line);
                    }
                }

                for (int j = 0; j < heads; j++)
                {
                    result[(j * count) + i] = Dot(query + ((long)j * dh), key, dh) * scale;
                }
            }
        }
    }

    // Σ_d a[d] · b[d]: two Vector512 chains, then one Vector256 block, then single floats.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot(float* a, float* b, int n)
    {
        int d = 0;
        float sum = 0f;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<float> acc0 = Vector512<float>.Zero, acc1 = Vector512<float>.Zero;
            for (; d + 32 <= n; d += 32)
            {
                acc0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + d), Vector512.Load(b + d), acc0);
                acc1 = Vector512.FusedMultiplyAdd(Vector512.Load(a + d + 16), Vector512.Load(b + d + 16), acc1);
            }

            if (d + 16 <= n)
            {
                acc0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + d), Vector512.Load(b + d), acc0);
                d += 16;
            }

            sum = Vector512.Sum(acc0 + acc1);
        }

        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<float> acc = Vector256<float>.Zero;
            for (; d + 8 <= n; d += 8)
            {
                acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + d), Vector256.Load(b + d), acc);
            }

            sum += Vector256.Sum(acc);
        }

        for (; d < n; d++)
        {
            sum = MathF.FusedMultiplyAdd(a[d], b[d], sum);
        }

        return sum;
    }

    // output[d] = Σ_i w[i] · values[sel[i], d]: the dimensions in register blocks (64 with Vector512, then 16, then 8,
    // then single floats), each block summed over every selected row before it is stored.
    private static void WeightedSum(float* w, float* values, long rowStride, int dh, int* selection, int count, float* output)
    {
        int d = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; d + 64 <= dh; d += 64)
            {
                Vector512<float> acc0 = Vector512<float>.Zero, acc1 = Vector512<float>.Zero;
                Vector512<float> acc2 = Vector512<float>.Zero, acc3 = Vector512<float>.Zero;
                for (int i = 0; i < count; i++)
                {
                    float* row = values + (selection[i] * rowStride) + d;
                    Vector512<float> weight = Vector512.Create(w[i]);
                    acc0 = Vector512.FusedMultiplyAdd(weight, Vector512.Load(row), acc0);
                    acc1 = Vector512.FusedMultiplyAdd(weight, Vector512.Load(row + 16), acc1);
                    acc2 = Vector512.FusedMultiplyAdd(weight, Vector512.Load(row + 32), acc2);
                    acc3 = Vector512.FusedMultiplyAdd(weight, Vector512.Load(row + 48), acc3);
                }

                acc0.Store(output + d);
                acc1.Store(output + d + 16);
                acc2.Store(output + d + 32);
                acc3.Store(output + d + 48);
            }

            for (; d + 16 <= dh; d += 16)
            {
                Vector512<float> acc = Vector512<float>.Zero;
                for (int i = 0; i < count; i++)
                {
                    acc = Vector512.FusedMultiplyAdd(Vector512.Create(w[i]), Vector512.Load(values + (selection[i] * rowStride) + d), acc);
                }

                acc.Store(output + d);
            }
        }

        if (Vector256.IsHardwareAccelerated)
        {
            for (; d + 8 <= dh; d += 8)
            {
                Vector256<float> acc = Vector256<float>.Zero;
                for (int i = 0; i < count; i++)
                {
                    acc = Vector256.FusedMultiplyAdd(Vector256.Create(w[i]), Vector256.Load(values + (selection[i] * rowStride) + d), acc);
                }

                acc.Store(output + d);
            }
        }

        for (; d < dh; d++)
        {
            float sum = 0f;
            for (int i = 0; i < count; i++)
            {
                sum = MathF.FusedMultiplyAdd(w[i], values[(selection[i] * rowStride) + d], sum);
            }

            output[d] = sum;
        }
    }

    private static void RequireCausalSelection(ReadOnlySpan<int> indices, int t, int k, int start)
    {
        // Every row: positions in [0, start + t], then only -1.
        if (indices.Length < (long)t * k)
        {
            throw new ArgumentException(
                $"SparseAttention: indices hold {indices.Length} entries but [T, K] = [{t}, {k}] needs {(long)t * k}.",
                nameof(indices));
        }

        for (int token = 0; token < t; token++)
        {
            ReadOnlySpan<int> row = indices.Slice(token * k, k);
            int limit = start + token;
            int i = 0;
            for (; i < k && row[i] >= 0; i++)
            {
                if (row[i] > limit)
                {
                    throw new ArgumentException(
                        $"SparseAttention: indices row {token} selects position {row[i]}, after the query's position "
                        + $"{limit}; the selection must be causal (TopK.Select with the same start).",
                        nameof(indices));
                }
            }

            for (; i < k; i++)
            {
                if (row[i] != -1)
                {
                    throw new ArgumentException(
                        $"SparseAttention: indices row {token} holds {row[i]} after its padding; pad rows with -1 only "
                        + "after the selected positions.",
                        nameof(indices));
                }
            }
        }
    }

    // Checks the cache, the queries, the output, K and the positions (as dense attention does); returns T, Hkv, Dh.
    private static (int T, int Hkv, int Dh) CheckShapes(Tensor q, Tensor keyCache, Tensor valueCache, int k, int start, Tensor output)
    {
        RequireCache(keyCache, nameof(keyCache));
        RequireCache(valueCache, nameof(valueCache));
        RequireFloat(valueCache, nameof(valueCache), keyCache.Device);
        if (!keyCache.Shape.SequenceEqual(valueCache.Shape))
        {
            throw new ArgumentException(
                $"SparseAttention: valueCache {valueCache} must have the shape of keyCache {Tensor.FormatShape(keyCache.Shape)}.",
                nameof(valueCache));
        }

        RequireFloat(q, nameof(q), keyCache.Device);
        RequireFloat(output, nameof(output), keyCache.Device);
        int capacity = keyCache.Size(0), hkv = keyCache.Size(1), dh = keyCache.Size(2);
        int t = q.Rank >= 2 ? q.Size(0) : -1;
        long width = t > 0 ? q.Length / t : 0;
        if (t < 1 || width % dh != 0 || width == 0 || (width / dh) % hkv != 0)
        {
            throw new ArgumentException(
                $"SparseAttention: queries {q} are not [T, H, {dh}] with T ≥ 1 and H a multiple of {hkv} "
                + $"(cache {Tensor.FormatShape(keyCache.Shape)}).",
                nameof(q));
        }

        if (output.Length != q.Length || output.Size(0) != t)
        {
            throw new ArgumentException(
                $"SparseAttention: output {output} must have the shape of the queries {q}.", nameof(output));
        }

        if (k < 1)
        {
            throw new ArgumentOutOfRangeException(
                nameof(k), k, "SparseAttention: k must be at least 1; pass the row length of the selection.");
        }

        if (start < 0 || start > capacity - t || start + t > Attention.MaxContext)
        {
            throw new ArgumentOutOfRangeException(
                nameof(start),
                $"SparseAttention: positions [{start}, {start + t}) do not fit in a cache of {capacity} positions "
                + $"(at most {Attention.MaxContext}).");
        }

        return (t, hkv, dh);
    }

    private static void RequireCache(Tensor cache, string name)
    {
        ArgumentNullException.ThrowIfNull(cache, name);
        if (cache.Device is not CpuDevice and not IlgpuDevice)
        {
            throw new NotSupportedException(
                $"SparseAttention: {name} {cache} is on {cache.Device.Name}, which sparse attention does not support; use cpu, cuda or ilgpu-cpu.");
        }

        RequireFloat(cache, name, cache.Device);
        if (cache.Rank != 3 || cache.Size(1) == 0 || cache.Size(2) == 0)
        {
            throw new ArgumentException(
                $"SparseAttention: {name} {cache} must be [S, Hkv, Dh] (position-major) with Hkv and Dh at least 1.", name);
        }
    }

    private static void RequireFloat(Tensor tensor, string name, Device device)
    {
        ArgumentNullException.ThrowIfNull(tensor, name);
        if (!(tensor.Device == device || (tensor.Device is CpuDevice && device is CpuDevice)) || tensor.DType != DType.Float32 || !tensor.IsContiguous)
        {
            throw new ArgumentException(
                $"SparseAttention: {name} {tensor} must be a contiguous float32 tensor on {device.Name}, the device of the "
                + "key cache; convert it or move it with To(device).",
                name);
        }
    }
}
