// Causal grouped-query attention on ILGPU devices: the same contract and cache layout as the CPU kernel in
// Attention.cs (keys and values transposed, [Hkv, Dh, S]; scores scaled by 1/sqrt(Dh); query token t at position
// start + t sees positions [0, start + t]).
//
// AppendKernel: one thread per new cache cell, T·Hkv·Dh threads; thread i reads k/v[i] (coalesced) and writes
// cache[(i % (Hkv·Dh))·S + start + i / (Hkv·Dh)] (strided by S, which is unavoidable for the transposed layout and
// is a few KB per token).
//
// FlashKernel (prefill and decode, FlashAttention-style online softmax): one group of 128 threads (64 on the test
// accelerator) per (key chunk, row block, key/value head). The rows of a KV head g are its (token, query head)
// pairs t·G + j for the G = H / Hkv query heads sharing g; a row block is R consecutive pairs, so one K/V tile
// load serves every query head of the GQA group and several tokens. The group walks the keys of its chunk in
// tiles of BK positions (only up to the block's last causal position):
//   load K[g, :, tile] into shared [Dh, BK+1]  ->  scores P[r, c] = q̂[r] · K[:, c] (masked: -inf)  ->
//   load V tile into the same buffer and, one thread per row, m' = max(m, max_c P), α = exp(m - m'),
//   P = exp(P - m'), l = α·l + Σ P  ->  O[r, d] = α·O[r, d] + Σ_c P[r, c]·V[d, c].
// The row stride BK+1 keeps both the score loop (threads along c) and the PV loop (threads along d) free of bank
// conflicts. Shared memory, in floats: Q [R, Dh] + O [R, Dh] + K/V [Dh, BK+1] + P [R, BK] + m, l, α [R]; R and BK
// are chosen from Dh so that this stays within ILGPU's 48 KB per group (checked in Plan, for Dh up to 256).
// The shared memory is static, in three size classes (FlashKernel16K/32K/48K; the plan takes the smallest that
// fits), so small decode groups keep occupancy high, and the PTX has no `.extern .shared` dynamic-memory line.
// With one chunk the group writes the normalized output; with several (split-K, "flash-decoding") each group
// writes its rows' partial (max, sum of exp, un-normalized output) and CombineKernel (one thread per output element)
// merges the chunks in a fixed order: no atomics, no ordering between groups, the same result on every run.
//
// Chunk count: enough groups to give every multiprocessor of the device 4 groups (an H200: 132 SMs, so 528
// groups), but chunks of at least 256 positions, so short contexts run one chunk and pay nothing for the split.
// The partials live in a per-device scratch buffer sized for the cache's full capacity on first use and grown
// only when a call needs more (a larger T); decode steps after the first reuse it.
//
// Kernel rules (docs/reference/dotnet-stack.md §0): a·b + c rather than an FMA intrinsic, MathF.Exp (lowered to
// ex2.approx on PTX), no System.Half, no exceptions inside kernels.
using System.Reflection;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;

namespace Kiln.Kernels;

/// <summary>The launch shape of one attention call on an ILGPU device (see the file header).</summary>
/// <param name="Threads">Threads per group (a multiple of the warp size).</param>
/// <param name="KeyTile">Key positions per shared-memory tile (BK).</param>
/// <param name="Rows">(token, query head) rows per group (R).</param>
/// <param name="Chunks">Key chunks (1: no split, the flash kernel writes the output).</param>
/// <param name="ChunkLength">Key positions per chunk (a multiple of <paramref name="KeyTile"/>).</param>
internal readonly record struct AttentionPlan(int Threads, int KeyTile, int Rows, int Chunks, int ChunkLength)
{
    /// <summary>Floats of dynamic shared memory one group of this plan uses for head width <paramref name="dh"/>.</summary>
    public int SharedFloats(int dh) => (2 * Rows * dh) + (dh * (KeyTile + 1)) + (Rows * KeyTile) + (3 * Rows);
}

/// <summary>The scalar arguments of <see cref="GpuAttention.FlashKernel16K"/>.</summary>
internal struct FlashArgs
{
    /// <summary>Query tokens (T).</summary>
    public int Tokens;

    /// <summary>Query heads (H).</summary>
    public int Heads;

    /// <summary>Query heads per key/value head (G = H / Hkv).</summary>
    public int Group;

    /// <summary>Head width (Dh).</summary>
    public int HeadDim;

    /// <summary>Cache capacity in positions (S).</summary>
    public int Capacity;

    /// <summary>Position of the first query token.</summary>
    public int Start;

    /// <summary>Rows per group (R).</summary>
    public int Rows;

    /// <summary>Key positions per tile (BK).</summary>
    public int KeyTile;

    /// <summary>Key positions per chunk.</summary>
    public int ChunkLength;

    /// <summary>Chunks; 1 writes the normalized output, more write partials.</summary>
    public int Chunks;

    /// <summary>1 / sqrt(Dh).</summary>
    public float Scale;
}

/// <summary>The ILGPU attention kernels and their launch (see the file header for the launch shapes).</summary>
internal static class GpuAttention
{
    /// <summary>ILGPU's shared memory per group on CUDA (48 KB), in floats.</summary>
    public const int SharedBudgetFloats = 48 * 1024 / sizeof(float);

    /// <summary>Shared floats of the small flash kernel (16 KB).</summary>
    public const int SharedFloats16K = 4096;

    /// <summary>Shared floats of the medium flash kernel (32 KB).</summary>
    public const int SharedFloats32K = 8192;

    /// <summary>Shared floats of the large flash kernel (48 KB).</summary>
    public const int SharedFloats48K = SharedBudgetFloats;

    /// <summary>The widest head the planner supports within <see cref="SharedBudgetFloats"/>.</summary>
    public const int MaxHeadDim = 256;

    /// <summary>The fewest key positions per chunk when the keys are split (short contexts run one chunk).</summary>
    public const int MinChunkLength = 256;

    /// <summary>The most chunks one call splits the keys into.</summary>
    public const int MaxChunks = 128;

    private static readonly object AppendKey = new();
    private static readonly object Flash16Key = new();
    private static readonly object Flash32Key = new();
    private static readonly object Flash48Key = new();
    private static readonly object CombineKey = new();
    private static readonly ConditionalWeakTable<IlgpuDevice, Scratch> Scratches = new();

    /// <summary>The hand-written kernels, for offline PTX compilation.</summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } =
    [
        new("AttentionAppend", Method(nameof(AppendKernel)), IsExplicitlyGrouped: false),
        new("AttentionFlash16K", Method(nameof(FlashKernel16K)), IsExplicitlyGrouped: true),
        new("AttentionFlash32K", Method(nameof(FlashKernel32K)), IsExplicitlyGrouped: true),
        new("AttentionFlash48K", Method(nameof(FlashKernel48K)), IsExplicitlyGrouped: true),
        new("AttentionCombine", Method(nameof(CombineKernel)), IsExplicitlyGrouped: false),
    ];

    /// <summary>Queues the scatter of T new key and value rows into the caches (arguments checked by the caller).</summary>
    public static void Append(IlgpuDevice device, Tensor k, Tensor v, Tensor keyCache, Tensor valueCache, int start)
    {
        int width = keyCache.Size(0) * keyCache.Size(1);
        long cells = k.Length;
        if (cells == 0)
        {
            return;
        }

        Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int> kernel =
            device.GetKernel(AppendKey, static accelerator =>
                accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                    ArrayView<float>, int, int, int>(AppendKernel));
        kernel((int)cells, k.View<float>(), v.View<float>(), keyCache.View<float>(), valueCache.View<float>(),
            width, keyCache.Size(2), start);
    }

    /// <summary>Queues attention with the default plan for the device (arguments checked by the caller).</summary>
    public static void Compute(IlgpuDevice device, Tensor q, Tensor keyCache, Tensor valueCache, int start, Tensor output)
    {
        // No query tokens: nothing to plan (the plan divides by the number of row blocks) and nothing to write.
        if (q.Length == 0)
        {
            return;
        }

        int hkv = keyCache.Size(0), dh = keyCache.Size(1);
        int t = q.Size(0);
        int h = (int)(q.Length / t / dh);
        AttentionPlan plan = Plan(device.Accelerator, t, h, hkv, dh, start + t);
        Compute(device, q, keyCache, valueCache, start, output, plan);
    }

    /// <summary>Queues attention with an explicit <paramref name="plan"/> (tests force small tiles and many chunks).</summary>
    public static void Compute(
        IlgpuDevice device,
        Tensor q,
        Tensor keyCache,
        Tensor valueCache,
        int start,
        Tensor output,
        AttentionPlan plan)
    {
        int hkv = keyCache.Size(0), dh = keyCache.Size(1), s = keyCache.Size(2);
        int t = q.Size(0);
        if (q.Length == 0)
        {
            return;
        }

        int h = (int)(q.Length / t / dh);
        int group = h / hkv;
        CheckPlan(plan, dh, device.Accelerator);
        FlashArgs args = new()
        {
            Tokens = t,
            Heads = h,
            Group = group,
            HeadDim = dh,
            Capacity = s,
            Start = start,
            Rows = plan.Rows,
            KeyTile = plan.KeyTile,
            ChunkLength = plan.ChunkLength,
            Chunks = plan.Chunks,
            Scale = 1f / MathF.Sqrt(dh),
        };
        int rowBlocks = (int)(((long)t * group + plan.Rows - 1) / plan.Rows);
        KernelConfig config = new(new Index3D(plan.Chunks, rowBlocks, hkv), new Index3D(plan.Threads, 1, 1));
        Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, FlashArgs> flash =
            FlashFor(device, plan.SharedFloats(dh));
        if (plan.Chunks == 1)
        {
            // One chunk: the flash kernel normalizes and writes the output itself; the partials view is unused.
            ArrayView<float> outputView = output.View<float>();
            flash(config, q.View<float>(), keyCache.View<float>(), valueCache.View<float>(), outputView, outputView, args);
            return;
        }

        // Several chunks: partials [chunks, T·H, Dh] then maxima and sums [chunks, T·H] in the device's scratch,
        // merged by the combine kernel. The lock keeps two callers from interleaving their pairs of launches on it.
        long rows = (long)t * h;
        long partialFloats = plan.Chunks * rows * (dh + 2);
        Scratch scratch = Scratches.GetValue(device, static _ => new Scratch());
        Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, int> combine = Combine(device);
        lock (scratch)
        {
            // Size the scratch for the whole cache the first time (and for a larger T later), never per step.
            AttentionPlan widest = Plan(device.Accelerator, t, h, hkv, dh, s);
            long capacityFloats = Math.Max(partialFloats, widest.Chunks * rows * (dh + 2));
            ArrayView<float> partials = scratch.Get(device.Accelerator, partialFloats, capacityFloats);
            flash(config, q.View<float>(), keyCache.View<float>(), valueCache.View<float>(), output.View<float>(), partials, args);
            combine((int)(rows * dh), partials, output.View<float>(), (int)rows, dh, plan.Chunks);
        }
    }

    /// <summary>The flash kernel with the least static shared memory that holds <paramref name="floats"/> floats.</summary>
    private static Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, FlashArgs> FlashFor(
        IlgpuDevice device,
        int floats)
    {
        if (floats <= SharedFloats16K)
        {
            return device.GetKernel(Flash16Key, static accelerator =>
                accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                    ArrayView<float>, FlashArgs>(FlashKernel16K));
        }

        if (floats <= SharedFloats32K)
        {
            return device.GetKernel(Flash32Key, static accelerator =>
                accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                    ArrayView<float>, FlashArgs>(FlashKernel32K));
        }

        return device.GetKernel(Flash48Key, static accelerator =>
            accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                ArrayView<float>, FlashArgs>(FlashKernel48K));
    }

    /// <summary>
    /// The default plan for T query tokens, H heads over Hkv key/value heads of width Dh, attending up to key
    /// position <paramref name="keyEnd"/> (exclusive) on <paramref name="accelerator"/>.
    /// </summary>
    public static AttentionPlan Plan(Accelerator accelerator, int t, int h, int hkv, int dh, int keyEnd)
    {
        // Groups of 4 warps (128 threads) on GPUs: several groups per SM for latency hiding; fewer where capped.
        int warp = accelerator.WarpSize;
        int threads = Math.Max(warp, Math.Min(128, accelerator.MaxNumThreadsPerGroup) / warp * warp);

        // Key tiles of one warp's width (coalesced 128-byte rows) up to Dh 128, half that for wider heads.
        int keyTile = dh <= 128 ? 32 : 16;

        // As many rows as fit in 48 KB, at most 64, and no more than there are rows.
        int group = h / hkv;
        int fit = (SharedBudgetFloats - (dh * (keyTile + 1))) / ((2 * dh) + keyTile + 3);
        int rows = (int)Math.Clamp(Math.Min(fit, 64), 1, Math.Max(1, (long)t * group));

        // Split the keys only when the row blocks alone leave multiprocessors idle, in chunks of >= 256 positions.
        long groups = (((long)t * group + rows - 1) / rows) * hkv;
        long wanted = Math.Max(1, (4L * accelerator.NumMultiprocessors + groups - 1) / groups);
        int longest = Math.Max(1, (keyEnd + MinChunkLength - 1) / MinChunkLength);
        int chunks = (int)Math.Min(Math.Min(wanted, longest), MaxChunks);
        int chunkLength = RoundUp((Math.Max(keyEnd, 1) + chunks - 1) / chunks, keyTile);
        chunks = Math.Max(1, (keyEnd + chunkLength - 1) / chunkLength);
        return new AttentionPlan(threads, keyTile, rows, chunks, chunkLength);
    }

    /// <summary>Throws when <paramref name="plan"/> does not fit the device or ILGPU's 48 KB of shared memory.</summary>
    internal static void CheckPlan(AttentionPlan plan, int dh, Accelerator accelerator)
    {
        if (plan.Threads < 1 || plan.Threads > accelerator.MaxNumThreadsPerGroup || plan.KeyTile < 1 || plan.Rows < 1
            || plan.Chunks < 1 || plan.ChunkLength < plan.KeyTile || plan.ChunkLength % plan.KeyTile != 0)
        {
            throw new InvalidOperationException($"GpuAttention: the plan {plan} is not valid for {accelerator.Name}.");
        }

        if (plan.SharedFloats(dh) > SharedBudgetFloats)
        {
            throw new InvalidOperationException(
                $"GpuAttention: the plan {plan} needs {plan.SharedFloats(dh) * sizeof(float)} bytes of shared memory "
                + $"for Dh = {dh}, more than ILGPU's 48 KB per group; use heads of at most {MaxHeadDim}.");
        }
    }

    /// <summary>Cache cell writes: thread i copies element i of k and v ([T, Hkv·Dh]) into the transposed caches.</summary>
    internal static void AppendKernel(
        Index1D index,
        ArrayView<float> k,
        ArrayView<float> v,
        ArrayView<float> keyCache,
        ArrayView<float> valueCache,
        int width,
        int capacity,
        int start)
    {
        // Element i is column i % width of row i / width: cache cell (column · S) + start + row.
        int i = index.X;
        int row = i / width;
        int column = i - (row * width);
        long at = ((long)column * capacity) + start + row;
        keyCache[at] = k[i];
        valueCache[at] = v[i];
    }

    /// <summary>
    /// The online-softmax attention of one (chunk, row block, key/value head) per group (see the file header), with
    /// 16 KB of shared memory. With one chunk it writes normalized rows to <paramref name="output"/>; otherwise it writes the chunk's
    /// un-normalized rows, maxima and sums to <paramref name="partials"/>.
    /// </summary>
    internal static void FlashKernel16K(
        ArrayView<float> q,
        ArrayView<float> keys,
        ArrayView<float> values,
        ArrayView<float> output,
        ArrayView<float> partials,
        FlashArgs args)
    {
        Flash(SharedMemory.Allocate<float>(SharedFloats16K), q, keys, values, output, partials, args);
    }

    /// <summary><see cref="FlashKernel16K"/> with 32 KB of shared memory.</summary>
    internal static void FlashKernel32K(
        ArrayView<float> q,
        ArrayView<float> keys,
        ArrayView<float> values,
        ArrayView<float> output,
        ArrayView<float> partials,
        FlashArgs args)
    {
        Flash(SharedMemory.Allocate<float>(SharedFloats32K), q, keys, values, output, partials, args);
    }

    /// <summary><see cref="FlashKernel16K"/> with 48 KB of shared memory, ILGPU's limit per group.</summary>
    internal static void FlashKernel48K(
        ArrayView<float> q,
        ArrayView<float> keys,
        ArrayView<float> values,
        ArrayView<float> output,
        ArrayView<float> partials,
        FlashArgs args)
    {
        Flash(SharedMemory.Allocate<float>(SharedFloats48K), q, keys, values, output, partials, args);
    }

    /// <summary>The body of the flash kernels over the group's shared memory <paramref name="shared"/>.</summary>
    private static void Flash(
        ArrayView<float> shared,
        ArrayView<float> q,
        ArrayView<float> keys,
        ArrayView<float> values,
        ArrayView<float> output,
        ArrayView<float> partials,
        FlashArgs args)
    {
        int chunk = Grid.IdxX;
        int block = Grid.IdxY;
        int kvHead = Grid.IdxZ;
        int thread = Group.IdxX;
        int threads = Group.DimX;
        int dh = args.HeadDim;
        int rows = args.Rows;
        int tile = args.KeyTile;
        int stride = tile + 1;
        int group = args.Group;

        // Shared layout (floats): Q [R, Dh], O [R, Dh], K/V [Dh, BK+1], P [R, BK], m [R], l [R], α [R].
        int qAt = 0;
        int oAt = rows * dh;
        int kvAt = 2 * rows * dh;
        int pAt = kvAt + (dh * stride);
        int mAt = pAt + (rows * tile);
        int lAt = mAt + rows;
        int alphaAt = lAt + rows;

        // This block's rows are the pairs [firstPair, firstPair + valid) of (token, head in group).
        int pairs = args.Tokens * group;
        int firstPair = block * rows;
        int valid = XMin(rows, pairs - firstPair);
        int lastToken = (firstPair + valid - 1) / group;
        int keyEnd = args.Start + lastToken + 1;
        int keyBegin = chunk * args.ChunkLength;
        int chunkEnd = XMin(keyBegin + args.ChunkLength, keyEnd);

        // Load the block's queries, pre-scaled by 1/sqrt(Dh); zero the accumulators.
        for (int e = thread; e < rows * dh; e += threads)
        {
            int r = e / dh;
            int d = e - (r * dh);
            float value = 0f;
            if (r < valid)
            {
                value = q[(QueryRow(args, kvHead, firstPair + r) * dh) + d] * args.Scale;
            }

            shared[qAt + e] = value;
            shared[oAt + e] = 0f;
        }

        for (int r = thread; r < rows; r += threads)
        {
            shared[mAt + r] = float.NegativeInfinity;
            shared[lAt + r] = 0f;
        }

        Group.Barrier();

        long kvBase = (long)kvHead * dh * args.Capacity;
        for (int s0 = keyBegin; s0 < chunkEnd; s0 += tile)
        {
            int n = XMin(tile, chunkEnd - s0);

            // Load K[g, :, s0 .. s0+n) as [Dh, BK+1]: consecutive threads read consecutive positions.
            for (int e = thread; e < dh * tile; e += threads)
            {
                int d = e / tile;
                int c = e - (d * tile);
                shared[kvAt + (d * stride) + c] = c < n ? keys[kvBase + ((long)d * args.Capacity) + s0 + c] : 0f;
            }

            Group.Barrier();

            // Scores of the visible positions (row r at position start + token sees keys up to it), -inf elsewhere.
            for (int e = thread; e < rows * tile; e += threads)
            {
                int r = e / tile;
                int c = e - (r * tile);
                float score = float.NegativeInfinity;
                if (r < valid && c < n && s0 + c <= args.Start + ((firstPair + r) / group))
                {
                    float dot = 0f;
                    for (int d = 0; d < dh; d++)
                    {
                        dot += shared[qAt + (r * dh) + d] * shared[kvAt + (d * stride) + c];
                    }

                    score = dot;
                }

                shared[pAt + e] = score;
            }

            Group.Barrier();

            // Load the value tile over the key tile (its scores are done) ...
            for (int e = thread; e < dh * tile; e += threads)
            {
                int d = e / tile;
                int c = e - (d * tile);
                shared[kvAt + (d * stride) + c] = c < n ? values[kvBase + ((long)d * args.Capacity) + s0 + c] : 0f;
            }

            // ... while one thread per row rescales its running max and sum and turns scores into weights.
            for (int r = thread; r < valid; r += threads)
            {
                int rowAt = pAt + (r * tile);
                float tileMax = float.NegativeInfinity;
                for (int c = 0; c < n; c++)
                {
                    tileMax = XMax(tileMax, shared[rowAt + c]);
                }

                if (tileMax == float.NegativeInfinity)
                {
                    // Nothing visible in this tile: weights 0, state unchanged.
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

            // O[r, d] = α[r]·O[r, d] + Σ_c P[r, c]·V[d, c]: consecutive threads own consecutive dimensions.
            for (int e = thread; e < valid * dh; e += threads)
            {
                int r = e / dh;
                int d = e - (r * dh);
                int rowAt = pAt + (r * tile);
                float acc = shared[oAt + e] * shared[alphaAt + r];
                for (int c = 0; c < n; c++)
                {
                    acc += shared[rowAt + c] * shared[kvAt + (d * stride) + c];
                }

                shared[oAt + e] = acc;
            }

            Group.Barrier();
        }

        // Write the rows: normalized with one chunk, else the chunk's partial (O, m, l) for the combine kernel.
        long totalRows = (long)args.Tokens * args.Heads;
        for (int e = thread; e < valid * dh; e += threads)
        {
            int r = e / dh;
            int d = e - (r * dh);
            long row = QueryRow(args, kvHead, firstPair + r);
            if (args.Chunks == 1)
            {
                output[(row * dh) + d] = shared[oAt + e] / shared[lAt + r];
            }
            else
            {
                partials[((((long)chunk * totalRows) + row) * dh) + d] = shared[oAt + e];
            }
        }

        if (args.Chunks > 1)
        {
            long statsAt = (long)args.Chunks * totalRows * dh;
            for (int r = thread; r < valid; r += threads)
            {
                long row = QueryRow(args, kvHead, firstPair + r);
                partials[statsAt + ((long)chunk * totalRows) + row] = shared[mAt + r];
                partials[statsAt + ((long)args.Chunks * totalRows) + ((long)chunk * totalRows) + row] = shared[lAt + r];
            }
        }
    }

    /// <summary>The combine kernel on <paramref name="device"/>, loaded once per device.</summary>
    internal static Action<Index1D, ArrayView<float>, ArrayView<float>, int, int, int> Combine(IlgpuDevice device) =>
        device.GetKernel(CombineKey, static accelerator =>
            accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int, int>(CombineKernel));

    /// <summary>
    /// Merges the chunks' partials: out[row, d] = Σ_c e^(m_c - m)·O_c[row, d] / Σ_c e^(m_c - m)·l_c with m the
    /// largest m_c, summed in chunk order (chunks that saw no key have m_c = -inf and weigh 0; a row no chunk saw a
    /// key for is 0, which sparse attention needs and dense attention never meets). Serves dense and sparse
    /// attention alike.
    /// </summary>
    internal static void CombineKernel(Index1D index, ArrayView<float> partials, ArrayView<float> output, int rows, int dh, int chunks)
    {
        int i = index.X;
        int row = i / dh;
        long statsAt = (long)chunks * rows * dh;
        long sumsAt = statsAt + ((long)chunks * rows);

        // The largest chunk maximum (in dense attention chunk 0 always sees position 0, so it is finite).
        float max = float.NegativeInfinity;
        for (int c = 0; c < chunks; c++)
        {
            max = XMax(max, partials[statsAt + ((long)c * rows) + row]);
        }

        // Rescale each chunk to the common maximum and sum.
        float numerator = 0f;
        float denominator = 0f;
        for (int c = 0; c < chunks; c++)
        {
            float chunkMax = partials[statsAt + ((long)c * rows) + row];
            if (chunkMax != float.NegativeInfinity)
            {
                float weight = MathF.Exp(chunkMax - max);
                numerator += weight * partials[((long)c * rows * dh) + i];
                denominator += weight * partials[sumsAt + ((long)c * rows) + row];
            }
        }

        output[i] = denominator > 0f ? numerator / denominator : 0f;
    }

    /// <summary>The query row (token · H + head) of pair <paramref name="pair"/> = token · G + j of KV head g.</summary>
    private static long QueryRow(FlashArgs args, int kvHead, int pair)
    {
        int token = pair / args.Group;
        int j = pair - (token * args.Group);
        return ((long)token * args.Heads) + ((long)kvHead * args.Group) + j;
    }

    private static int XMin(int a, int b) => a < b ? a : b;

    private static float XMax(float a, float b) => a > b ? a : b;

    private static int RoundUp(int value, int multiple) => (value + multiple - 1) / multiple * multiple;

    private static MethodInfo Method(string name) =>
        typeof(GpuAttention).GetMethod(name, BindingFlags.Static | BindingFlags.NonPublic)
            ?? throw new InvalidOperationException($"GpuAttention: kernel method {name} not found.");

    /// <summary>A device's partial-result buffer for split-key attention, grown on demand and then reused.</summary>
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
