// Sparse causal grouped-query attention on ILGPU devices: the contract of SparseAttention.cs (position-major KV cache
// [S, Hkv, Dh], scores scaled by 1/√Dh, the selection [T, K] shared by every head) with the selection on the device.
//
// Device-side selection. The host cannot check a selection another kernel wrote without a round trip, so the kernel
// guards instead: row t reads only its first min(K, p + 1) entries (p = start + t; a causal row of distinct
// positions has no more), and skips every entry outside [0, p] (the -1 padding, or a bad entry), so no load leaves the
// written prefix of the cache. For every selection the CPU path accepts (distinct positions, -1 padding at the end)
// both attend to the same rows; a row with no entry gives zeros, as on the CPU.
//
// AppendKernel: one thread per element of the chunk's keys and values [T, Hkv·Dh]: cache rows [start, start + T) are
// the chunk's rows, a contiguous, coalesced copy.
//
// AttendKernel (FlashAttention-style online softmax over gathered rows): a group per (entry chunk, head block, token
// and key/value head g). Its rows are R of the G = H / Hkv query heads of g, which share every gathered key and value
// row. The group walks its chunk of the token's selection in tiles of BK entries:
//   entries -> positions in shared memory (-1 when skipped)  ->  K rows [BK, Dh] gathered into shared (row stride
//   Dh + 1; each row is Dh contiguous floats, so a warp's load is coalesced)  ->  P[r, c] = q̂[r] · K[c]  ->  V rows
//   into the same buffer while one thread per head updates m, l and turns P into weights  ->  O = α·O + P·V.
// Shared floats: Q [R, Dh] + O [R, Dh] + K/V [BK, Dh + 1] + P [R, BK] + m, l, α [R], in two static size classes
// (16 KB, and 48 KB minus the entry tile, ILGPU's limit per group; the plan takes the smaller that fits).
// Decode has one token: T·Hkv groups would leave most of a GPU idle, so the selection is split into chunks of at
// least two tiles (split-K, as in GpuAttention.cs) until about four groups run per multiprocessor; each chunk writes
// its partial (O, m, l) and the combine kernel it shares with dense attention (GpuAttention.CombineKernel) merges
// the chunks in a fixed order (no atomics; a row whose chunks saw no entry gives zeros).
using System.Reflection;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;

namespace Kiln.Kernels;

/// <summary>The launch shape of one sparse-attention call on an ILGPU device (see the file header).</summary>
/// <param name="Threads">Threads per group.</param>
/// <param name="Tile">Selection entries per shared-memory tile (BK).</param>
/// <param name="Rows">Query heads per group (R).</param>
/// <param name="Chunks">Chunks of the selection (1: the kernel writes the output itself).</param>
/// <param name="ChunkLength">Entries per chunk, a multiple of <paramref name="Tile"/>.</param>
internal readonly record struct SparsePlan(int Threads, int Tile, int Rows, int Chunks, int ChunkLength)
{
    /// <summary>Floats of shared memory one group uses for head width <paramref name="dh"/>.</summary>
    public int SharedFloats(int dh) => (2 * Rows * dh) + (Tile * (dh + 1)) + (Rows * Tile) + (3 * Rows);
}

/// <summary>The scalar arguments of <see cref="GpuSparseAttention.AttendKernel16K"/>.</summary>
internal struct SparseArgs
{
    /// <summary>Query tokens (T).</summary>
    public int Tokens;

    /// <summary>Query heads (H).</summary>
    public int Heads;

    /// <summary>Key/value heads (Hkv).</summary>
    public int KvHeads;

    /// <summary>Query heads per key/value head (G).</summary>
    public int Group;

    /// <summary>Head width (Dh).</summary>
    public int HeadDim;

    /// <summary>The selection's row length (K).</summary>
    public int K;

    /// <summary>Position of the first query token.</summary>
    public int Start;

    /// <summary>Query heads per group (R).</summary>
    public int Rows;

    /// <summary>Entries per tile (BK).</summary>
    public int Tile;

    /// <summary>Entries per chunk.</summary>
    public int ChunkLength;

    /// <summary>Chunks; 1 writes the normalized output, more write partials.</summary>
    public int Chunks;

    /// <summary>1 / √Dh.</summary>
    public float Scale;
}

/// <summary>The ILGPU sparse-attention kernels and their launch (see the file header).</summary>
internal static class GpuSparseAttention
{
    /// <summary>Shared floats of the small kernel (16 KB).</summary>
    public const int SmallFloats = 4096;

    /// <summary>Shared floats of the large kernel: 48 KB less the entry tile's ints.</summary>
    public const int LargeFloats = (48 * 1024 / sizeof(float)) - MaxTile;

    /// <summary>The widest entry tile.</summary>
    public const int MaxTile = 32;

    /// <summary>The widest head the plan fits in shared memory (one head per group, tiles of 16).</summary>
    public const int MaxHeadDim = 256;

    /// <summary>The most chunks one call splits the selection into.</summary>
    public const int MaxChunks = 128;

    private static readonly object AppendKey = new();
    private static readonly object Attend16Key = new();
    private static readonly object Attend48Key = new();
    private static readonly ConditionalWeakTable<IlgpuDevice, Scratch> Scratches = new();

    /// <summary>The kernels, for offline PTX compilation.</summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } =
    [
        new("SparseAttention.Append", Method(nameof(AppendKernel)), IsExplicitlyGrouped: false),
        new("SparseAttention.Attend16K", Method(nameof(AttendKernel16K)), IsExplicitlyGrouped: true),
        new("SparseAttention.Attend48K", Method(nameof(AttendKernel48K)), IsExplicitlyGrouped: true),
    ];

    /// <summary>Queues the copy of the chunk's key and value rows into the caches (checked by the caller).</summary>
    public static void Append(IlgpuDevice device, Tensor k, Tensor v, Tensor keyCache, Tensor valueCache, int start)
    {
        if (k.Length == 0)
        {
            return;
        }

        long offset = (long)start * keyCache.Size(1) * keyCache.Size(2);
        Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>> kernel =
            device.GetKernel(AppendKey, static accelerator =>
                accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                    ArrayView<float>>(AppendKernel));
        kernel((int)k.Length, k.View<float>(), v.View<float>(), keyCache.View<float>().SubView(offset, k.Length),
            valueCache.View<float>().SubView(offset, k.Length));
    }

    /// <summary>Queues sparse attention with the default plan for the device (checked by the caller).</summary>
    public static void Compute(IlgpuDevice device, Tensor q, Tensor keyCache, Tensor valueCache, Tensor indices, int k, int start, Tensor output)
    {
        int t = q.Size(0), hkv = keyCache.Size(1), dh = keyCache.Size(2);
        int h = (int)(q.Length / t / dh);
        Compute(device, q, keyCache, valueCache, indices, k, start, output, Plan(device.Accelerator, t, h, hkv, dh, Math.Min(k, start + t)));
    }

    /// <summary>Queues sparse attention with an explicit <paramref name="plan"/> (tests force small tiles and many chunks).</summary>
    public static void Compute(
        IlgpuDevice device,
        Tensor q,
        Tensor keyCache,
        Tensor valueCache,
        Tensor indices,
        int k,
        int start,
        Tensor output,
        SparsePlan plan)
    {
        int t = q.Size(0), hkv = keyCache.Size(1), dh = keyCache.Size(2);
        int h = (int)(q.Length / t / dh);
        int group = h / hkv;
        CheckPlan(plan, dh, device.Accelerator);
        SparseArgs args = new()
        {
            Tokens = t,
            Heads = h,
            KvHeads = hkv,
            Group = group,
            HeadDim = dh,
            K = k,
            Start = start,
            Rows = plan.Rows,
            Tile = plan.Tile,
            ChunkLength = plan.ChunkLength,
            Chunks = plan.Chunks,
            Scale = 1f / MathF.Sqrt(dh),
        };
        int headBlocks = (group + plan.Rows - 1) / plan.Rows;
        KernelConfig config = new(new Index3D(plan.Chunks, headBlocks, t * hkv), new Index3D(plan.Threads, 1, 1));
        Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, SparseArgs> attend =
            plan.SharedFloats(dh) <= SmallFloats
                ? device.GetKernel(Attend16Key, static accelerator => accelerator.LoadStreamKernel<ArrayView<float>,
                    ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, SparseArgs>(AttendKernel16K))
                : device.GetKernel(Attend48Key, static accelerator => accelerator.LoadStreamKernel<ArrayView<float>,
                    ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, SparseArgs>(AttendKernel48K));
        if (plan.Chunks == 1)
        {
            ArrayView<float> outputView = output.View<float>();
            attend(config, q.View<float>(), keyCache.View<float>(), valueCache.View<float>(), indices.View<int>(), outputView, outputView, args);
            return;
        }

        // Partials [chunks, T·H, Dh], maxima and sums [chunks, T·H] in the device's scratch, then the combine. The
        // scratch is sized for the cache's whole capacity the first time, so later decode steps reuse it.
        long rows = (long)t * h;
        long floats = plan.Chunks * rows * (dh + 2);
        Scratch scratch = Scratches.GetValue(device, static _ => new Scratch());
        Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, int> combine = GpuAttention.Combine(device);
        lock (scratch)
        {
            SparsePlan widest = Plan(device.Accelerator, t, h, hkv, dh, Math.Min(k, keyCache.Size(0)));
            ArrayView<float> partials = scratch.Get(device.Accelerator, floats, Math.Max(floats, widest.Chunks * rows * (dh + 2)));
            attend(config, q.View<float>(), keyCache.View<float>(), valueCache.View<float>(), indices.View<int>(), output.View<float>(), partials, args);
            combine((int)(rows * dh), partials, output.View<float>(), (int)rows, dh, plan.Chunks);
        }
    }

    /// <summary>
    /// The default plan for T tokens, H heads over Hkv key/value heads of width Dh, with <paramref name="entries"/>
    /// selection entries per row that can be valid (min(K, start + T)).
    /// </summary>
    public static SparsePlan Plan(Accelerator accelerator, int t, int h, int hkv, int dh, int entries)
    {
        // Groups of 4 warps where the device allows; tiles of one warp's width up to Dh 128, half that above.
        int warp = accelerator.WarpSize;
        int threads = Math.Max(warp, Math.Min(128, accelerator.MaxNumThreadsPerGroup) / warp * warp);
        int tile = dh <= 128 ? MaxTile : MaxTile / 2;

        // As many heads of the group as fit in the large class, at most 64.
        int group = h / hkv;
        int fit = (LargeFloats - (tile * (dh + 1))) / ((2 * dh) + tile + 3);
        int rows = Math.Clamp(Math.Min(fit, 64), 1, group);

        // Split the selection when the (token, head) groups alone leave multiprocessors idle, chunks of two tiles or more.
        long groups = (long)t * hkv * ((group + rows - 1) / rows);
        long wanted = Math.Max(1, ((4L * accelerator.NumMultiprocessors) + groups - 1) / groups);
        int longest = Math.Max(1, (entries + (2 * tile) - 1) / (2 * tile));
        int chunks = (int)Math.Min(Math.Min(wanted, longest), MaxChunks);
        int chunkLength = RoundUp((Math.Max(entries, 1) + chunks - 1) / chunks, tile);
        chunks = Math.Max(1, (entries + chunkLength - 1) / chunkLength);
        return new SparsePlan(threads, tile, rows, chunks, chunkLength);
    }

    /// <summary>Throws when <paramref name="plan"/> does not fit the device or the shared memory of its size class.</summary>
    internal static void CheckPlan(SparsePlan plan, int dh, Accelerator accelerator)
    {
        if (plan.Threads < 1 || plan.Threads > accelerator.MaxNumThreadsPerGroup || plan.Tile < 1 || plan.Tile > MaxTile
            || plan.Rows < 1 || plan.Chunks < 1 || plan.ChunkLength < plan.Tile || plan.ChunkLength % plan.Tile != 0)
        {
            throw new InvalidOperationException($"SparseAttention: the plan {plan} is not valid for {accelerator.Name}.");
        }

        if (plan.SharedFloats(dh) > LargeFloats)
        {
            throw new InvalidOperationException(
                $"SparseAttention: the plan {plan} needs {plan.SharedFloats(dh) * sizeof(float)} bytes of shared memory for "
                + $"Dh = {dh}, more than ILGPU's 48 KB per group; use heads of at most {MaxHeadDim}.");
        }
    }

    /// <summary>Element i of the chunk's keys and values into the caches' rows from start on (views given).</summary>
    internal static void AppendKernel(
        Index1D index,
        ArrayView<float> k,
        ArrayView<float> v,
        ArrayView<float> keyRows,
        ArrayView<float> valueRows)
    {
        keyRows[index] = k[index];
        valueRows[index] = v[index];
    }

    /// <summary>The attention of one (chunk, head block, token and key/value head) per group, 16 KB of shared memory.</summary>
    internal static void AttendKernel16K(
        ArrayView<float> q,
        ArrayView<float> keys,
        ArrayView<float> values,
        ArrayView<int> indices,
        ArrayView<float> output,
        ArrayView<float> partials,
        SparseArgs args)
    {
        Attend(SharedMemory.Allocate<float>(SmallFloats), SharedMemory.Allocate<int>(MaxTile), q, keys, values, indices, output, partials, args);
    }

    /// <summary><see cref="AttendKernel16K"/> with 48 KB of shared memory, ILGPU's limit per group.</summary>
    internal static void AttendKernel48K(
        ArrayView<float> q,
        ArrayView<float> keys,
        ArrayView<float> values,
        ArrayView<int> indices,
        ArrayView<float> output,
        ArrayView<float> partials,
        SparseArgs args)
    {
        Attend(SharedMemory.Allocate<float>(LargeFloats), SharedMemory.Allocate<int>(MaxTile), q, keys, values, indices, output, partials, args);
    }

    /// <summary>The body of the attend kernels (see the file header).</summary>
    private static void Attend(
        ArrayView<float> shared,
        ArrayView<int> positions,
        ArrayView<float> q,
        ArrayView<float> keys,
        ArrayView<float> values,
        ArrayView<int> indices,
        ArrayView<float> output,
        ArrayView<float> partials,
        SparseArgs args)
    {
        int chunk = Grid.IdxX;
        int block = Grid.IdxY;
        int token = Grid.IdxZ / args.KvHeads;
        int kvHead = Grid.IdxZ - (token * args.KvHeads);
        int thread = Group.IdxX;
        int threads = Group.DimX;
        int dh = args.HeadDim;
        int rows = args.Rows;
        int tile = args.Tile;
        int stride = dh + 1;

        // Shared layout (floats): Q [R, Dh], O [R, Dh], K/V [BK, Dh+1], P [R, BK], m [R], l [R], α [R].
        int oAt = rows * dh;
        int kvAt = 2 * rows * dh;
        int pAt = kvAt + (tile * stride);
        int mAt = pAt + (rows * tile);
        int lAt = mAt + rows;
        int alphaAt = lAt + rows;

        // This group's query heads, and the entries of the token's row it reads.
        int firstHead = (kvHead * args.Group) + (block * rows);
        int valid = XMin(rows, args.Group - (block * rows));
        int limit = args.Start + token;
        int rowEntries = XMin(args.K, limit + 1);
        int entryBegin = chunk * args.ChunkLength;
        int entryEnd = XMin(entryBegin + args.ChunkLength, rowEntries);
        long kvStride = (long)args.KvHeads * dh;

        // Queries pre-scaled by 1/√Dh; accumulators zero.
        for (int e = thread; e < rows * dh; e += threads)
        {
            int r = e / dh;
            float value = 0f;
            if (r < valid)
            {
                value = q[(((long)token * args.Heads) + firstHead + r) * dh + (e - (r * dh))] * args.Scale;
            }

            shared[e] = value;
            shared[oAt + e] = 0f;
        }

        for (int r = thread; r < rows; r += threads)
        {
            shared[mAt + r] = float.NegativeInfinity;
            shared[lAt + r] = 0f;
        }

        for (int e0 = entryBegin; e0 < entryEnd; e0 += tile)
        {
            int n = XMin(tile, entryEnd - e0);

            // The tile's positions; entries outside [0, p] are skipped (-1).
            Group.Barrier();
            for (int c = thread; c < tile; c += threads)
            {
                int position = c < n ? indices[((long)token * args.K) + e0 + c] : -1;
                positions[c] = position >= 0 && position <= limit ? position : -1;
            }

            Group.Barrier();

            // Gather the key rows: consecutive threads read consecutive dimensions of a row.
            for (int e = thread; e < tile * dh; e += threads)
            {
                int c = e / dh;
                int d = e - (c * dh);
                int position = positions[c];
                shared[kvAt + (c * stride) + d] = position >= 0 ? keys[(position * kvStride) + ((long)kvHead * dh) + d] : 0f;
            }

            Group.Barrier();

            // Scores of the kept entries, -∞ for skipped ones.
            for (int e = thread; e < rows * tile; e += threads)
            {
                int r = e / tile;
                int c = e - (r * tile);
                float score = float.NegativeInfinity;
                if (r < valid && positions[c] >= 0)
                {
                    float dot = 0f;
                    for (int d = 0; d < dh; d++)
                    {
                        dot += shared[(r * dh) + d] * shared[kvAt + (c * stride) + d];
                    }

                    score = dot;
                }

                shared[pAt + e] = score;
            }

            Group.Barrier();

            // Gather the value rows over the key rows ...
            for (int e = thread; e < tile * dh; e += threads)
            {
                int c = e / dh;
                int d = e - (c * dh);
                int position = positions[c];
                shared[kvAt + (c * stride) + d] = position >= 0 ? values[(position * kvStride) + ((long)kvHead * dh) + d] : 0f;
            }

            // ... while one thread per head rescales its running max and sum and turns scores into weights.
            for (int r = thread; r < valid; r += threads)
            {
                int rowAt = pAt + (r * tile);
                float tileMax = float.NegativeInfinity;
                for (int c = 0; c < tile; c++)
                {
                    tileMax = XMax(tileMax, shared[rowAt + c]);
                }

                if (tileMax == float.NegativeInfinity)
                {
                    // No kept entry in this tile: weights 0, state unchanged.
                    for (int c = 0; c < tile; c++)
                    {
                        shared[rowAt + c] = 0f;
                    }

                    shared[alphaAt + r] = 1f;
                }
                else
                {
                    float oldMax = shared[mAt + r];
                    float newMax = XMax(oldMax, tileMax);
                    float alpha = MathF.Exp(oldMax - newMax);
                    float sum = 0f;
                    for (int c = 0; c < tile; c++)
                    {
                        float score = shared[rowAt + c];
                        float weight = score == float.NegativeInfinity ? 0f : MathF.Exp(score - newMax);
                        shared[rowAt + c] = weight;
                        sum += weight;
                    }

                    shared[mAt + r] = newMax;
                    shared[lAt + r] = (shared[lAt + r] * alpha) + sum;
                    shared[alphaAt + r] = alpha;
                }
            }

            Group.Barrier();

            // O[r, d] = α[r]·O[r, d] + Σ_c P[r, c]·V[c, d]: consecutive threads own consecutive dimensions.
            for (int e = thread; e < valid * dh; e += threads)
            {
                int r = e / dh;
                int d = e - (r * dh);
                int rowAt = pAt + (r * tile);
                float acc = shared[oAt + e] * shared[alphaAt + r];
                for (int c = 0; c < n; c++)
                {
                    acc += shared[rowAt + c] * shared[kvAt + (c * stride) + d];
                }

                shared[oAt + e] = acc;
            }
        }

        Group.Barrier();

        // Normalized rows with one chunk (zeros for a row that kept nothing), else the chunk's partial for the combine.
        long totalRows = (long)args.Tokens * args.Heads;
        for (int e = thread; e < valid * dh; e += threads)
        {
            int r = e / dh;
            long row = ((long)token * args.Heads) + firstHead + r;
            long at = (row * dh) + (e - (r * dh));
            if (args.Chunks == 1)
            {
                float sum = shared[lAt + r];
                output[at] = sum > 0f ? shared[oAt + e] / sum : 0f;
            }
            else
            {
                partials[((long)chunk * totalRows * dh) + at] = shared[oAt + e];
            }
        }

        if (args.Chunks > 1)
        {
            long statsAt = (long)args.Chunks * totalRows * dh;
            for (int r = thread; r < valid; r += threads)
            {
                long row = ((long)token * args.Heads) + firstHead + r;
                partials[statsAt + ((long)chunk * totalRows) + row] = shared[mAt + r];
                partials[statsAt + ((long)args.Chunks * totalRows) + ((long)chunk * totalRows) + row] = shared[lAt + r];
            }
        }
    }

    private static int XMin(int a, int b) => a < b ? a : b;

    private static float XMax(float a, float b) => a > b ? a : b;

    private static int RoundUp(int value, int multiple) => (value + multiple - 1) / multiple * multiple;

    private static MethodInfo Method(string name) =>
        typeof(GpuSparseAttention).GetMethod(name, BindingFlags.Static | BindingFlags.NonPublic)
            ?? throw new InvalidOperationException($"GpuSparseAttention: kernel method {name} not found.");

    /// <summary>A device's partial-result buffer for split selections, grown on demand and then reused.</summary>
    private sealed class Scratch
    {
        private MemoryBuffer1D<float, Stride1D.Dense>? _buffer;

        /// <summary>A view of <paramref name="floats"/> floats, reallocating to <paramref name="capacity"/> when short.</summary>
        public ArrayView<float> Get(Accelerator accelerator, long floats, long capacity)
        {
            if (_buffer is null || _buffer.Length < floats)
            {
                // Growth happens outside the steady state: let queued kernels finish with the old buffer first.
                if (_buffer is not null)
                {
                    accelerator.Synchronize();
                    _buffer.Dispose();
                }

                _buffer = accelerator.Allocate1D<float>(Math.Max(floats, capacity));
            }

            return _buffer.View.SubView(0, floats);
        }
    }
}
