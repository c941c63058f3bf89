// Causal top-k selection over index scores, on the CPU: for query token t at absolute position p = start + t, the
// positions of the min(K, p + 1) largest scores among positions 0..p (never a later one).
//
// Ranking. Each score is mapped to its bits as an unsigned integer in score order (negative floats have all bits
// flipped, positive ones the sign bit set; -0 counts as +0; NaN becomes 0, below -∞). A candidate's 64-bit key is
// those bits over ~s, so that of two equal scores the lower position ranks higher. Keys are distinct, so the
// selection is deterministic and equals "sort descending, take K".
//
// Selection. A prefilter histograms the top 11 bits of every visible score (sign, exponent, two mantissa bits) and
// finds the bucket that holds the K-th largest; only scores in that bucket or above become candidates (usually a few
// times K, at worst all p + 1). Quickselect (Hoare partition around a median of three) then moves the K largest keys
// to the front in O(candidates) expected time; past 2·log2(n) + 8 rounds it sorts the remaining range instead, which
// bounds the worst case at O(n log n). The K chosen positions are sorted ascending (K log K, small next to p), so a
// row is canonical: the same set always reads the same, and the attention gathers walk the cache forwards.
//
// Output. indices [T, K] int32, row t holding its min(K, p + 1) positions ascending, then -1 padding. When p + 1 ≤ K
// the row is exactly 0..p (dense causal attention).
//
// Devices. Select(scores, start, k, Tensor indices) writes an int32 tensor on the scores' device: this kernel on cpu,
// the radix select of GpuTopK.cs on ILGPU devices, which gives exactly the same rows (ties and NaN included).
using System.Buffers;
using System.Runtime.CompilerServices;
using Kiln.Devices;

namespace Kiln.Kernels;

/// <summary>
/// Causal top-k selection of index scores: per query row, the ascending positions of the min(K, start + t + 1)
/// largest scores among positions 0..start + t, padded with -1 (see <see cref="RowCount"/>).
/// </summary>
/// <remarks>
/// Ties go to the lower position; NaN ranks below every number, -∞ included; -0 and +0 are equal. Rows are split
/// across the tensor's worker pool; the result does not depend on the thread count.
/// </remarks>
public static unsafe class TopK
{
    // The histogram of the prefilter: the top 11 bits of a score's ordered bits (sign, exponent, 2 mantissa bits).
    private const int BucketShift = 21;
    private const int Buckets = 1 << (32 - BucketShift);

    /// <summary>The number of selected positions in row <paramref name="token"/>: min(K, start + token + 1).</summary>
    public static int RowCount(int start, int token, int k) => Math.Min(k, start + token + 1);

    /// <summary>
    /// Selects, for each query token t (absolute position start + t), the positions of the min(K, start + t + 1) largest
    /// scores among <c>scores[t, 0..start + t]</c>, ascending, into <c>indices[t * K .. t * K + K)</c>, padding the
    /// rest of the row with -1.
    /// </summary>
    /// <param name="scores">Index scores, [T, L] with L ≥ start + T (entries after a row's position are not read).</param>
    /// <param name="start">The absolute position of the first query token.</param>
    /// <param name="k">K, the number of positions to keep per row; at least 1.</param>
    /// <param name="indices">The selection, [T, K] row-major (at least T·K entries).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="k"/> is below 1, or the positions do not fit.</exception>
    /// <exception cref="ArgumentException">The scores are not a CPU float32 matrix, or indices is too short.</exception>
    public static void Select(Tensor scores, int start, int k, Span<int> indices)
    {
        // Check K, the scores and the destination.
        ArgumentNullException.ThrowIfNull(scores);
        if (k < 1)
        {
            throw new ArgumentOutOfRangeException(
                nameof(k), k, "TopK.Select: k must be at least 1; pass the number of positions each query attends to.");
        }

        if (scores.Device is not CpuDevice cpu || scores.DType != DType.Float32 || !scores.IsContiguous || scores.Rank != 2)
        {
            throw new ArgumentException(
                $"TopK.Select: scores {scores} must be a contiguous float32 [T, L] tensor on the cpu device.", nameof(scores));
        }

        int t = scores.Size(0), length = scores.Size(1);
        if (start < 0 || start + t > length)
        {
            throw new ArgumentOutOfRangeException(
                nameof(start),
                $"TopK.Select: positions [{start}, {start + t}) do not fit in scores of {length} columns; make L at least start + T.");
        }

        if (indices.Length < (long)t * k)
        {
            throw new ArgumentException(
                $"TopK.Select: indices hold {indices.Length} entries but [T, K] = [{t}, {k}] needs {(long)t * k}.",
                nameof(indices));
        }

        // Split the rows across the pool; a row costs about its visible length.
        fixed (int* destination = indices)
        {
            State state = new()
            {
                Scores = scores.FloatPointer,
                Indices = destination,
                Length = length,
                Start = start,
                K = k,
            };
            int grain = (int)Math.Clamp(32_768L / Math.Max(start + ((t + 1) / 2), 1), 1, int.MaxValue);
            cpu.Pool.For(t, grain, &Run, &state);
        }
    }

    /// <summary>
    /// <see cref="Select(Tensor, int, int, Span{int})"/> into an int32 tensor [T, K] on the scores' device: on the cpu
    /// the same kernel, on an ILGPU device (cuda, ilgpu-cpu) one group per row (GpuTopK.cs) queued on its stream, so
    /// the selection stays on the device. Both give exactly the same rows for the same scores.
    /// </summary>
    /// <param name="scores">Index scores, [T, L] float32 with L ≥ start + T.</param>
    /// <param name="start">The absolute position of the first query token.</param>
    /// <param name="k">K, the number of positions to keep per row; at least 1.</param>
    /// <param name="indices">The selection, a contiguous int32 tensor [T, K] on the device of the scores.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="k"/> is below 1, or the positions do not fit.</exception>
    /// <exception cref="ArgumentException">A dtype, shape or device does not fit.</exception>
    public static void Select(Tensor scores, int start, int k, Tensor indices)
    {
        // Check the destination, then the scores as the span overload does.
        ArgumentNullException.ThrowIfNull(scores);
        ArgumentNullException.ThrowIfNull(indices);
        if (k < 1)
        {
            throw new ArgumentOutOfRangeException(
                nameof(k), k, "TopK.Select: k must be at least 1; pass the number of positions each query attends to.");
        }

        if (scores.Device is IlgpuDevice && (scores.DType != DType.Float32 || !scores.IsContiguous || scores.Rank != 2))
        {
            throw new ArgumentException(
                $"TopK.Select: scores {scores} must be a contiguous float32 [T, L] tensor.", nameof(scores));
        }

        int t = scores.Rank == 2 ? scores.Size(0) : 0;
        if (!(indices.Device == scores.Device || (indices.Device is CpuDevice && scores.Device is CpuDevice)) || indices.DType != DType.Int32 || !indices.IsContiguous || indices.Rank != 2
            || indices.Size(0) != t || indices.Size(1) != k)
        {
            throw new ArgumentException(
                $"TopK.Select: indices {indices} must be a contiguous int32 [{t}, {k}] tensor on {scores.Device.Name}, the "
                + "device of the scores.",
                nameof(indices));
        }

        if (scores.Device is not IlgpuDevice ilgpu)
        {
            Select(scores, start, k, indices.AsSpan<int>());
            return;
        }

        int length = scores.Size(1);
        if (start < 0 || start + t > length)
        {
            throw new ArgumentOutOfRangeException(
                nameof(start),
                $"TopK.Select: positions [{start}, {start + t}) do not fit in scores of {length} columns; make L at least start + T.");
        }

        GpuTopK.Select(ilgpu, scores, start, k, indices);
    }

    /// <summary>
    /// The reference for tests: the same selection by a full sort (descending score, then ascending position, NaN
    /// last), the chosen positions ascending, -1 padded. <paramref name="scores"/> is [T, L] row-major.
    /// </summary>
    public static int[] Reference(float[] scores, int t, int length, int start, int k)
    {
        int[] result = new int[t * k];
        Array.Fill(result, -1);
        for (int token = 0; token < t; token++)
        {
            int visible = start + token + 1;
            int row = token;
            int[] order = Enumerable.Range(0, visible).ToArray();
            Array.Sort(order, (a, b) =>
            {
                // Larger first; NaN last; equal scores by position.
                double x = scores[(row * length) + a], y = scores[(row * length) + b];
                int byScore = double.IsNaN(x) ? (double.IsNaN(y) ? 0 : 1) : double.IsNaN(y) ? -1 : y.CompareTo(x);
                return byScore != 0 && !(x == y) ? byScore : a.CompareTo(b);
            });
            int[] chosen = order.Take(Math.Min(k, visible)).Order().ToArray();
            chosen.CopyTo(result, token * k);
        }

        return result;
    }

    /// <summary>The score's bits as an unsigned integer in the order of the scores: NaN is 0, below -∞; -0 is +0.</summary>
    internal static uint OrderedBits(float score)
    {
        uint bits = BitConverter.SingleToUInt32Bits(score + 0f);
        return float.IsNaN(score) ? 0u : (bits & 0x8000_0000u) != 0 ? ~bits : bits | 0x8000_0000u;
    }

    /// <summary>The ranking key of (score, position): larger key = higher rank, all keys distinct.</summary>
    internal static ulong RankKey(uint orderedBits, int position) => ((ulong)orderedBits << 32) | (uint)~position;

    private struct State
    {
        public float* Scores;
        public int* Indices;
        public int Length;
        public int Start;
        public int K;
    }

    private static void Run(void* statePointer, int begin, int end)
    {
        ref State state = ref Unsafe.AsRef<State>(statePointer);
        int k = state.K;
        ulong[]? keys = null;
        uint[]? ordered = null;
        Span<int> histogram = stackalloc int[Buckets];
        try
        {
            for (int token = begin; token < end; token++)
            {
                int visible = state.Start + token + 1;
                Span<int> row = new(state.Indices + ((long)token * k), k);

                // A short context keeps every position: the row is 0..p.
                if (visible <= k)
                {
                    for (int s = 0; s < visible; s++)
                    {
                        row[s] = s;
                    }

                    row[visible..].Fill(-1);
                    continue;
                }

                // Order the visible scores as integers and histogram their top 11 bits (sign, exponent, 2 bits).
                if (keys is null || keys.Length < visible)
                {
                    if (keys is not null)
                    {
                        ArrayPool<ulong>.Shared.Return(keys);
                        ArrayPool<uint>.Shared.Return(ordered!);
                    }

                    keys = ArrayPool<ulong>.Shared.Rent(state.Start + end);
                    ordered = ArrayPool<uint>.Shared.Rent(state.Start + end);
                }

                float* scores = state.Scores + ((long)token * state.Length);
                histogram.Clear();
                for (int s = 0; s < visible; s++)
                {
                    uint bits = OrderedBits(scores[s]);
                    ordered![s] = bits;
                    histogram[(int)(bits >> BucketShift)]++;
                }

                // The bucket that holds the K-th largest score: fewer than K scores lie in the buckets above it.
                int bucket = Buckets - 1, above = 0;
                while (above + histogram[bucket] < k)
                {
                    above += histogram[bucket];
                    bucket--;
                }

                // Only scores in that bucket or above can be selected: rank those, then move the K largest forward.
                int candidates = 0;
                for (int s = 0; s < visible; s++)
                {
                    if ((int)(ordered![s] >> BucketShift) >= bucket)
                    {
                        keys[candidates++] = RankKey(ordered[s], s);
                    }
                }

                Span<ulong> ranked = keys.AsSpan(0, candidates);
                SelectLargest(ranked, k);

                // Recover the positions from the low halves and sort them ascending.
                for (int i = 0; i < k; i++)
                {
                    row[i] = ~(int)(uint)ranked[i];
                }

                row.Sort();
            }
        }
        finally
        {
            if (keys is not null)
            {
                ArrayPool<ulong>.Shared.Return(keys);
                ArrayPool<uint>.Shared.Return(ordered!);
            }
        }
    }

    /// <summary>Reorders <paramref name="keys"/> so that its first <paramref name="k"/> entries are the k largest.</summary>
    internal static void SelectLargest(Span<ulong> keys, int k)
    {
        int lo = 0, hi = keys.Length - 1;
        int target = k - 1;
        int budget = (2 * (32 - int.LeadingZeroCount(keys.Length))) + 8;
        while (lo < hi)
        {
            // Too many rounds (an adversarial order): sort what is left, descending, and stop.
            if (budget-- == 0)
            {
                Span<ulong> rest = keys[lo..(hi + 1)];
                rest.Sort();
                rest.Reverse();
                return;
            }

            // Pivot: the median of the first, middle and last keys of the range.
            ulong a = keys[lo], b = keys[lo + ((hi - lo) >> 1)], c = keys[hi];
            ulong pivot = Math.Max(Math.Min(a, b), Math.Min(Math.Max(a, b), c));

            // Hoare partition, descending: [lo, j] ≥ pivot ≥ [i, hi], and (j, i) equals the pivot.
            int i = lo, j = hi;
            while (i <= j)
            {
                while (keys[i] > pivot)
                {
                    i++;
                }

                while (keys[j] < pivot)
                {
                    j--;
                }

                if (i <= j)
                {
                    (keys[i], keys[j]) = (keys[j], keys[i]);
                    i++;
                    j--;
                }
            }

            // Continue in the part that holds the boundary position k - 1.
            if (target <= j)
            {
                hi = j;
            }
            else if (target >= i)
            {
                lo = i;
            }
            else
            {
                return;
            }
        }
    }
}
