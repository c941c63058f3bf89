// Causal top-k selection on ILGPU devices: exactly TopK.Select's result (the same ranking, ties to the lower position,
// NaN below -∞, -0 equal to +0; rows ascending, -1 padded), computed by one group per query row.
//
// Ranking key. A score's 32 bits are mapped to an unsigned integer in score order (TopK.OrderedBits): NaN is 0,
// -0 is +0, negative floats have every bit flipped, others the sign bit set. Of equal keys the lower position ranks
// higher, so the selection of a row is: every position whose key is above a threshold key θ, plus the lowest
// `take` positions whose key equals θ, where θ is the K-th largest key and `take` the number of those K that equal θ.
//
// Radix select (θ and take). Four passes over the row's visible keys, 8 bits each from the top: a pass histograms the
// next digit of the keys that match the digits found so far (per-warp histograms of 256 bins in shared memory, so
// that warps do not contend on one bin's atomics; 32 KB for 32 warps), sums them, and warp 0 finds the bin holding
// the remaining rank (a shuffle scan over runs of bins from the top, then one lane walks its run). After four passes
// the digits are θ and the rank left is `take`.
//
// Compaction. The group walks the positions in order, a group-width block at a time: a group-wide exclusive scan of
// "equals θ" gives each position its rank among the equal keys (taken while below `take`), a second scan of "taken"
// gives its slot in the output. Slots are filled in position order, so the row comes out ascending with no sort, and
// the walk stops once K positions are written. A row whose visible prefix is at most K is 0..p then -1s.
//
// Cost per row of p visible positions: 4 reads of the row for the histograms, at most one for the compaction, from
// L2 at long contexts. Rows are independent groups: a prefill chunk of T rows fills the GPU; a decode step's single
// row runs on one multiprocessor (512 threads, a few microseconds per 64K positions).
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;

namespace Kiln.Kernels;

/// <summary>The scalar arguments of <see cref="GpuTopK.SelectKernel"/>.</summary>
internal struct TopKArgs
{
    /// <summary>L, the scores' row length.</summary>
    public int Length;

    /// <summary>The absolute position of row 0.</summary>
    public int Start;

    /// <summary>K, the selection's row length.</summary>
    public int K;
}

/// <summary>The result of a group-wide exclusive scan: this thread's prefix and the group's total.</summary>
internal struct GroupScan
{
    /// <summary>The sum over the threads before this one.</summary>
    public int Before;

    /// <summary>The sum over the whole group.</summary>
    public int Total;
}

/// <summary>The ILGPU top-k kernel and its launch (see the file header).</summary>
internal static class GpuTopK
{
    /// <summary>The group size on a GPU.</summary>
    public const int Threads = 512;

    /// <summary>Bins per radix pass (8 bits).</summary>
    public const int Bins = 256;

    /// <summary>Ints of shared memory for the per-warp histograms: 32 warps at most.</summary>
    public const int HistogramInts = 32 * Bins;

    private static readonly object SelectKey = new();

    /// <summary>The kernel, for offline PTX compilation.</summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } =
    [
        new("TopK.Select", ((Action<ArrayView<float>, ArrayView<int>, TopKArgs>)SelectKernel).Method, IsExplicitlyGrouped: true),
    ];

    /// <summary>Queues the selection of T rows (arguments checked by the caller).</summary>
    public static void Select(IlgpuDevice device, Tensor scores, int start, int k, Tensor indices)
    {
        int t = scores.Size(0);
        if (t == 0)
        {
            return;
        }

        int warp = device.Accelerator.WarpSize;
        int threads = Math.Max(warp, Math.Min(Threads, device.Accelerator.MaxNumThreadsPerGroup) / warp * warp);
        Action<KernelConfig, ArrayView<float>, ArrayView<int>, TopKArgs> kernel = device.GetKernel(SelectKey,
            static accelerator => accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, TopKArgs>(SelectKernel));
        TopKArgs args = new() { Length = scores.Size(1), Start = start, K = k };
        kernel(new KernelConfig(t, threads), scores.View<float>(), indices.View<int>(), args);
    }

    /// <summary>One row per group: radix select of the threshold key, then the ordered compaction.</summary>
    internal static void SelectKernel(ArrayView<float> scores, ArrayView<int> indices, TopKArgs args)
    {
        ArrayView<int> histogram = SharedMemory.Allocate<int>(HistogramInts);
        ArrayView<int> scratch = SharedMemory.Allocate<int>(34);
        int row = Grid.IdxX;
        int thread = Group.IdxX;
        int threads = Group.DimX;
        int k = args.K;
        int visible = args.Start + row + 1;
        long rowAt = (long)row * args.Length;
        long outAt = (long)row * k;

        // A short context keeps every position: 0..p, then -1.
        if (visible <= k)
        {
            for (int i = thread; i < k; i += threads)
            {
                indices[outAt + i] = i < visible ? i : -1;
            }

            return;
        }

        // Radix select, 8 bits a pass from the top: `prefix` holds the digits found, `remaining` the rank within them.
        int warps = threads / Warp.WarpSize;
        int warpBins = Warp.WarpIdx * Bins;
        uint prefix = 0u;
        uint mask = 0u;
        int remaining = k;
        for (int shift = 24; shift >= 0; shift -= 8)
        {
            for (int b = thread; b < warps * Bins; b += threads)
            {
                histogram[b] = 0;
            }

            Group.Barrier();
            for (int s = thread; s < visible; s += threads)
            {
                uint key = OrderedBits(scores[rowAt + s]);
                if ((key & mask) == prefix)
                {
                    Atomic.Add(ref histogram[warpBins + (int)((key >> shift) & 255u)], 1);
                }
            }

            Group.Barrier();

            // Sum the warps' histograms into warp 0's bins (each thread owns whole bins, so no races).
            for (int b = thread; b < Bins; b += threads)
            {
                int total = histogram[b];
                for (int w = 1; w < warps; w++)
                {
                    total += histogram[(w * Bins) + b];
                }

                histogram[b] = total;
            }

            Group.Barrier();

            // The bin where the count from the top reaches the remaining rank holds the next digit. Warp 0 finds it:
            // lane l sums the l-th run of bins from the top, a shuffle scan gives each lane the count above its
            // run, and the one lane whose run crosses the rank walks it bin by bin.
            if (Warp.WarpIdx == 0)
            {
                int lane = Warp.LaneIdx;
                int run = Bins / Warp.WarpSize;
                int top = Bins - (lane * run);
                int local = 0;
                for (int b = top - run; b < top; b++)
                {
                    local += histogram[b];
                }

                int inclusive = local;
                for (int offset = 1; offset < Warp.WarpSize; offset *= 2)
                {
                    int other = Warp.ShuffleUp(inclusive, offset);
                    if (lane >= offset)
                    {
                        inclusive += other;
                    }
                }

                int above = inclusive - local;
                if (above < remaining && remaining <= inclusive)
                {
                    int digit = top - run;
                    for (int b = top - 1; b >= top - run; b--)
                    {
                        int count = histogram[b];
                        if (above + count >= remaining)
                        {
                            digit = b;
                            break;
                        }

                        above += count;
                    }

                    scratch[32] = digit;
                    scratch[33] = remaining - above;
                }
            }

            Group.Barrier();
            prefix |= (uint)scratch[32] << shift;
            mask |= 255u << shift;
            remaining = scratch[33];
            Group.Barrier();
        }

        // Compaction in position order: keys above θ, and the first `take` keys equal to θ.
        uint threshold = prefix;
        int take = remaining;
        int written = 0;
        int equalSeen = 0;
        for (int first = 0; first < visible && written < k; first += threads)
        {
            int s = first + thread;
            uint key = s < visible ? OrderedBits(scores[rowAt + s]) : 0u;
            bool above = s < visible && key > threshold;
            bool equal = s < visible && key == threshold;
            GroupScan equals = ExclusiveScan(equal ? 1 : 0, scratch);
            bool taken = above || (equal && equalSeen + equals.Before < take);
            GroupScan slots = ExclusiveScan(taken ? 1 : 0, scratch);
            if (taken)
            {
                indices[outAt + written + slots.Before] = s;
            }

            written += slots.Total;
            equalSeen += equals.Total;
        }
    }

    /// <summary>The score's bits in score order (TopK.OrderedBits): NaN 0, -0 as +0, negatives flipped.</summary>
    internal static uint OrderedBits(float score)
    {
        uint bits = (uint)Interop.FloatAsInt(score);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u)
        {
            return 0u;
        }

        if (bits == 0x8000_0000u)
        {
            bits = 0u;
        }

        return (bits & 0x8000_0000u) != 0 ? ~bits : bits | 0x8000_0000u;
    }

    /// <summary>
    /// The exclusive prefix sum of <paramref name="value"/> over the group's threads, and the total: a shuffle scan
    /// in each warp, the warp totals scanned by warp 0 through <paramref name="scratch"/> (32 ints). Every thread of
    /// the group must call it; the group has at most as many warps as a warp has lanes.
    /// </summary>
    internal static GroupScan ExclusiveScan(int value, ArrayView<int> scratch)
    {
        int lane = Warp.LaneIdx;
        int inclusive = value;
        for (int offset = 1; offset < Warp.WarpSize; offset *= 2)
        {
            int other = Warp.ShuffleUp(inclusive, offset);
            if (lane >= offset)
            {
                inclusive += other;
            }
        }

        if (lane == Warp.WarpSize - 1)
        {
            scratch[Warp.WarpIdx] = inclusive;
        }

        Group.Barrier();
        int warps = Group.DimX / Warp.WarpSize;
        if (Warp.WarpIdx == 0)
        {
            int total = lane < warps ? scratch[lane] : 0;
            for (int offset = 1; offset < Warp.WarpSize; offset *= 2)
            {
                int other = Warp.ShuffleUp(total, offset);
                if (lane >= offset)
                {
                    total += other;
                }
            }

            if (lane < warps)
            {
                scratch[lane] = total;
            }
        }

        Group.Barrier();
        GroupScan result;
        result.Before = (Warp.WarpIdx > 0 ? scratch[Warp.WarpIdx - 1] : 0) + inclusive - value;
        result.Total = scratch[warps - 1];

        // Keep the scratch until every thread has read it.
        Group.Barrier();
        return result;
    }
}
