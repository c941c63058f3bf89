// Sparse causal grouped-query attention on the CPU (DSA, eq. 2 of the DeepSeek-V3.2-Exp report): query token t of
// every head attends only to the positions selected for row t (TopK.Select), gathered from the same transposed
// key/value cache [Hkv, Dh, S] that dense Attention reads, so that a model can switch per layer.
//
// Math (token t at absolute position p = start + t, query head h, its key/value head g = h / (H / Hkv), selected
// positions sel[t, 0..c) with c the number of leading non-negative entries of the row):
//   scores[i] = (q[t, h, :] · K[g, :, sel[i]]) / sqrt(Dh)
//   weights   = softmax(scores), stable (the max is subtracted before exp)
//   out[t, h, d] = Σ_i weights[i] · V[g, d, sel[i]]
// With sel[t] = 0..p this is exactly Attention.Compute, and the loops follow Attention's order of operations (blocks of
// 16 positions with one FMA per dimension, then 8, then single positions; four output dimensions per pass), so the
// two agree to float32 rounding of the gathered loads, which is none: they are the same numbers.
//
// Gathers. Eight positions of one cache row are loaded with one AVX2 gather (two for a Vector512 block); the index
// vector is the selected positions themselves, the base the row's start. Every selected position is checked against
// [0, p] before the kernel runs, so a gather can never read outside the written prefix of the cache.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Devices;

namespace Kiln.Kernels;

/// <summary>
/// Causal grouped-query attention of new query tokens over the cache positions selected per token (the same selection
/// for every head), reading the dense attention cache layout [Hkv, Dh, S].
/// </summary>
public static unsafe class SparseAttention
{
    /// <summary>
    /// Attends the query tokens at positions [start, start + T) over their selected positions. Row t of
    /// <paramref name="indices"/> holds distinct positions in [0, start + t], then -1 padding; its count is the number
    /// of leading non-negative entries (a row with none gives zeros).
    /// </summary>
    /// <param name="q">Queries, [T, H, Dh] (or [T, H * Dh]) with H a multiple of Hkv.</param>
    /// <param name="keyCache">The layer's keys, [Hkv, Dh, S], holding positions up to start + T.</param>
    /// <param name="valueCache">The layer's values, [Hkv, Dh, S].</param>
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
        // Check the cache, the queries and the output, as dense attention does.
        RequireCache(keyCache, nameof(keyCache));
        RequireCache(valueCache, nameof(valueCache));
        if (!keyCache.Shape.SequenceEqual(valueCache.Shape))
        {
            throw new ArgumentException(
                $"SparseAttention: valueCache {valueCache} must have the shape of keyCache {Tensor.FormatShape(keyCache.Shape)}.",
                nameof(valueCache));
        }

        RequireCpuFloat(q, nameof(q));
        RequireCpuFloat(output, nameof(output));
        int hkv = keyCache.Size(0), dh = keyCache.Size(1), capacity = keyCache.Size(2);
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

        RequireCausalSelection(indices, t, k, start);

        // Split the (token, head) pairs across threads, as dense attention does.
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
                Group = h / hkv,
                HeadDim = dh,
                Capacity = capacity,
                Start = start,
                Scale = 1f / MathF.Sqrt(dh),
            };
            long workPerItem = (long)Math.Min(k, start + ((t + 1) / 2)) * dh * 2;
            int grain = (int)Math.Clamp(32_768 / Math.Max(workPerItem, 1), 1, int.MaxValue);
            ((CpuDevice)q.Device).Pool.For(t * h, grain, &Run, &state);
        }
    }

    /// <summary>
    /// The float64 reference for tests: attention over the selected positions only, with the cache as plain arrays
    /// [Hkv, Dh, S] and the selection [T, K] (-1 padded).
    /// </summary>
    public static double[] Reference(
        float[] q,
        int t,
        int h,
        int dh,
        float[] keys,
        float[] values,
        int hkv,
        int capacity,
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
                        dot += (double)q[(((token * h) + head) * dh) + d] * keys[(((g * dh) + d) * capacity) + selected[i]];
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
                        acc += Math.Exp(scores[i] - max) / sum * values[(((g * dh) + d) * capacity) + selected[i]];
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
        public int Group;
        public int HeadDim;
        public int Capacity;
        public int Start;
        public float Scale;
    }

    // The scores are fully written before they are read, so the stack buffer is not zeroed.
    [SkipLocalsInit]
    private static void Run(void* statePointer, int begin, int end)
    {
        ref State state = ref Unsafe.AsRef<State>(statePointer);
        int dh = state.HeadDim;
        int lastToken = (end - 1) / state.Heads;
        Span<float> scores = stackalloc float[Math.Min(state.K, state.Start + lastToken + 1)];
        for (int item = begin; item < end; item++)
        {
            // The row's selection and its count (leading non-negative entries).
            int token = item / state.Heads;
            int head = item % state.Heads;
            int* selection = state.Indices + ((long)token * state.K);
            int count = 0;
            while (count < state.K && selection[count] >= 0)
            {
                count++;
            }

            float* output = state.Output + ((long)item * dh);
            if (count == 0)
            {
                new Span<float>(output, dh).Clear();
                continue;
            }

            long kvBase = (long)(head / state.Group) * dh * state.Capacity;
            float* query = state.Q + ((long)item * dh);
            Span<float> weights = scores[..count];

            // Scores over the selected positions, a stable softmax, then the weighted gathered values.
            Scores(query, state.Keys + kvBase, state.Capacity, dh, state.Scale, selection, weights);
            Ops.SoftmaxRow(weights, weights);
            WeightedSums(weights, state.Values + kvBase, state.Capacity, dh, selection, output);
        }
    }

    // Eight positions of one cache row, by their indices.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Gather8(float* row, Vector256<int> positions) =>
        Avx2.GatherVector256(row, positions, 4);

    private static void Scores(float* query, float* keys, int capacity, int dh, float scale, int* selection, Span<float> scores)
    {
        int n = scores.Length;
        int i = 0;
        fixed (float* result = scores)
        {
            if (Vector512.IsHardwareAccelerated && Avx2.IsSupported)
            {
                for (; i + 16 <= n; i += 16)
                {
                    // Sixteen positions: one pair of gathers and one FMA per dimension.
                    Vector256<int> low = Vector256.Load(selection + i), high = Vector256.Load(selection + i + 8);
                    Vector512<float> acc = Vector512<float>.Zero;
                    for (int d = 0; d < dh; d++)
                    {
                        float* row = keys + ((long)d * capacity);
                        Vector512<float> k = Vector512.Create(Gather8(row, low), Gather8(row, high));
                        acc = Vector512.FusedMultiplyAdd(Vector512.Create(query[d]), k, acc);
                    }

                    (acc * scale).Store(result + i);
                }
            }

            if (Vector256.IsHardwareAccelerated && Avx2.IsSupported)
            {
                for (; i + 8 <= n; i += 8)
                {
                    Vector256<int> positions = Vector256.Load(selection + i);
                    Vector256<float> acc = Vector256<float>.Zero;
                    for (int d = 0; d < dh; d++)
                    {
                        Vector256<float> k = Gather8(keys + ((long)d * capacity), positions);
                        acc = Vector256.FusedMultiplyAdd(Vector256.Create(query[d]), k, acc);
                    }

                    (acc * scale).Store(result + i);
                }
            }

            for (; i < n; i++)
            {
                float acc = 0f;
                long position = selection[i];
                for (int d = 0; d < dh; d++)
                {
                    acc = MathF.FusedMultiplyAdd(query[d], keys[((long)d * capacity) + position], acc);
                }

                result[i] = acc * scale;
            }
        }
    }

    // output[d] = Σ_i weights[i] · values[d, sel[i]]: four dimensions per pass, so each block of weights and indices is
    // loaded once for four value rows and the four sums run as independent chains.
    private static void WeightedSums(Span<float> weights, float* values, int capacity, int dh, int* selection, float* output)
    {
        int n = weights.Length;
        fixed (float* w = weights)
        {
            int d = 0;
            if (Vector512.IsHardwareAccelerated && Avx2.IsSupported)
            {
                for (; d + 4 <= dh; d += 4)
                {
                    float* v0 = values + ((long)d * capacity);
                    float* v1 = v0 + capacity;
                    float* v2 = v1 + capacity;
                    float* v3 = v2 + capacity;
                    Vector512<float> acc0 = Vector512<float>.Zero, acc1 = Vector512<float>.Zero;
                    Vector512<float> acc2 = Vector512<float>.Zero, acc3 = Vector512<float>.Zero;
                    int i = 0;
                    for (; i + 16 <= n; i += 16)
                    {
                        Vector256<int> low = Vector256.Load(selection + i), high = Vector256.Load(selection + i + 8);
                        Vector512<float> block = Vector512.Load(w + i);
                        acc0 = Vector512.FusedMultiplyAdd(block, Vector512.Create(Gather8(v0, low), Gather8(v0, high)), acc0);
                        acc1 = Vector512.FusedMultiplyAdd(block, Vector512.Create(Gather8(v1, low), Gather8(v1, high)), acc1);
                        acc2 = Vector512.FusedMultiplyAdd(block, Vector512.Create(Gather8(v2, low), Gather8(v2, high)), acc2);
                        acc3 = Vector512.FusedMultiplyAdd(block, Vector512.Create(Gather8(v3, low), Gather8(v3, high)), acc3);
                    }

                    float sum0 = Vector512.Sum(acc0), sum1 = Vector512.Sum(acc1);
                    float sum2 = Vector512.Sum(acc2), sum3 = Vector512.Sum(acc3);
                    for (; i < n; i++)
                    {
                        long position = selection[i];
                        sum0 = MathF.FusedMultiplyAdd(w[i], v0[position], sum0);
                        sum1 = MathF.FusedMultiplyAdd(w[i], v1[position], sum1);
                        sum2 = MathF.FusedMultiplyAdd(w[i], v2[position], sum2);
                        sum3 = MathF.FusedMultiplyAdd(w[i], v3[position], sum3);
                    }

                    output[d] = sum0;
                    output[d + 1] = sum1;
                    output[d + 2] = sum2;
                    output[d + 3] = sum3;
                }
            }

            // The remaining dimensions (all of them without Vector512): one gathered dot product each.
            for (; d < dh; d++)
            {
                float* row = values + ((long)d * capacity);
                float sum = 0f;
                for (int i = 0; i < n; i++)
                {
                    sum = MathF.FusedMultiplyAdd(w[i], row[selection[i]], sum);
                }

                output[d] = sum;
            }
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

    private static void RequireCache(Tensor cache, string name)
    {
        RequireCpuFloat(cache, name);
        if (cache.Rank != 3 || cache.Size(0) == 0 || cache.Size(1) == 0)
        {
            throw new ArgumentException(
                $"SparseAttention: {name} {cache} must be [Hkv, Dh, S] with Hkv and Dh at least 1.", name);
        }
    }

    private static void RequireCpuFloat(Tensor tensor, string name)
    {
        ArgumentNullException.ThrowIfNull(tensor, name);
        if (tensor.Device is not CpuDevice || tensor.DType != DType.Float32 || !tensor.IsContiguous)
        {
            throw new ArgumentException(
                $"SparseAttention: {name} {tensor} must be a contiguous float32 tensor on the cpu device.", name);
        }
    }
}
