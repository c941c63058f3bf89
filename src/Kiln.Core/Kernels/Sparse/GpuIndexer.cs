// The DSA lightning indexer on ILGPU devices (cuda, ilgpu-cpu): the same contracts and layouts as the CPU kernels in
// LightningIndexer.cs (indexer key cache transposed, [Di, S]; scores -∞ after each query's position).
//
// AppendKeysKernel: one group per new token. The group reduces Σx and Σx² of the token's key row (warp shuffles, one
// partial per warp in shared memory: GroupReduce.Sum), then each thread writes dimensions d of
//   k = (x - mean) / √(max(Σx²/n - mean², 0) + eps) · weight + bias      (the CPU op's one-pass form)
// rotated on [0, ropeDims) by the token's angle (a thread computes both elements of d's pair from the row, so no
// exchange is needed), into keyCache[d, start + t]. A token is Di scattered stores: a few hundred bytes.
//
// RotateQueriesKernel: one thread per rotated pair of every (token, indexer head): RoPE on the leading ropeDims of
// each head of q [T, Hi, Di], in place, in the pair layout given.
//
// ScoresKernel: a group scores one query token against a tile of 64 positions (a blocked product
//   A[j, c] = q[t, j, :] · k[:, s0 + c],   then   scores[t, s0 + c] = Σ_j w[t, j] · ReLU(A[j, c]),  -∞ after p).
// Its 256 threads (fewer on small devices) are 16 position groups × 16 head groups; thread (h, g) owns positions
// g + {0, 16, 32, 48} and heads 4h..4h+3 of a block of 64 heads: 16 accumulators in registers. The reduction over Di
// runs in chunks of 32 dimensions: the group stages the key tile [32, 64] (each row 64 consecutive positions, one
// coalesced load) and the block's queries [64, 32] in shared memory, then each thread does 4 key and 4 query loads
// (conflict-free or broadcast) per 16 multiply-adds. After the last chunk each thread applies ReLU and its heads'
// weights; the 16 head groups' partial sums meet in shared memory and are added in head-group order. Each key is read
// from memory once per token (Hi ≤ 64: one head block), shared memory is 20 KB per group, and a decode step over L
// positions runs L / 64 groups (1024 at 64K positions), enough to fill an H200. Tiles wholly after the token's
// position only write -∞. At 4 shared loads per 4 multiply-adds the loop is bound by shared-memory bandwidth at about
// half the FP32 peak: about 30 µs per Full layer for Hi·Di = 64·128 at 64K positions (1 GFLOP, 32 MB of keys).
//
// Kernel rules (docs/reference/dotnet-stack.md §0): a·b + c rather than an FMA intrinsic, no exceptions, no
// System.Half; shared memory is static and below ILGPU's 48 KB per group.
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;

namespace Kiln.Kernels;

/// <summary>The scalar arguments of <see cref="GpuIndexer.AppendKeysKernel"/>.</summary>
internal struct IndexerAppendArgs
{
    /// <summary>Di, the key width.</summary>
    public int HeadDim;

    /// <summary>S, the key cache's capacity in positions.</summary>
    public int Capacity;

    /// <summary>The position of the first new token.</summary>
    public int Start;

    /// <summary>ropeDims / 2: the number of rotated pairs (0: none).</summary>
    public int Half;

    /// <summary>1 for adjacent pairs (2i, 2i + 1), 0 for half-split pairs (i, i + half).</summary>
    public int Adjacent;

    /// <summary>The LayerNorm epsilon.</summary>
    public float Eps;
}

/// <summary>The scalar arguments of <see cref="GpuIndexer.ScoresKernel"/>.</summary>
internal struct IndexerScoreArgs
{
    /// <summary>Hi, the indexer heads.</summary>
    public int Heads;

    /// <summary>Di, the head width.</summary>
    public int HeadDim;

    /// <summary>S, the key cache's capacity.</summary>
    public int Capacity;

    /// <summary>L, the scores' row length.</summary>
    public int Length;

    /// <summary>The position of the first query token.</summary>
    public int Start;

    /// <summary>Position groups of the group (16, or the whole group on devices with fewer threads).</summary>
    public int PositionGroups;
}

/// <summary>The ILGPU kernels of the lightning indexer and their launches (see the file header).</summary>
internal static class GpuIndexer
{
    /// <summary>The largest group of the score kernel: 16 position groups × 16 head groups.</summary>
    public const int ScoreThreads = 256;

    /// <summary>Position groups of a full score group; each thread scores 4 positions, so a tile is 64.</summary>
    public const int PositionGroups = 16;

    /// <summary>Dimensions of the reduction staged in shared memory at once.</summary>
    public const int DimChunk = 32;

    /// <summary>Shared floats of the key tile [DimChunk, 4 · PositionGroups].</summary>
    public const int KeyTileFloats = DimChunk * 4 * PositionGroups;

    /// <summary>Shared floats of the query tile [64 heads, DimChunk + 1].</summary>
    public const int QueryTileFloats = 4 * (ScoreThreads / PositionGroups) * (DimChunk + 1);

    /// <summary>Shared floats of the head groups' partial sums [16, 4 · PositionGroups].</summary>
    public const int PartialFloats = (ScoreThreads / PositionGroups) * 4 * PositionGroups;

    private static readonly object AppendKey = new();
    private static readonly object RotateKey = new();
    private static readonly object ScoresKey = new();

    /// <summary>The kernels, for offline PTX compilation.</summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } =
    [
        new("LightningIndexer.AppendKeys", Method(nameof(AppendKeysKernel)), IsExplicitlyGrouped: true),
        new("LightningIndexer.RotateQueries", Method(nameof(RotateQueriesKernel)), IsExplicitlyGrouped: false),
        new("LightningIndexer.Scores", Method(nameof(ScoresKernel)), IsExplicitlyGrouped: true),
    ];

    /// <summary>Queues the key append (arguments checked by the caller; cos and sin unused when ropeDims is 0).</summary>
    public static void AppendKeys(
        IlgpuDevice device,
        Tensor keys,
        Tensor normWeight,
        Tensor normBias,
        float eps,
        Tensor? cos,
        Tensor? sin,
        int ropeDims,
        RopeLayout layout,
        Tensor keyCache,
        int start)
    {
        int t = keys.Size(0), di = keyCache.Size(0);
        if (t == 0)
        {
            return;
        }

        IndexerAppendArgs args = new()
        {
            HeadDim = di,
            Capacity = keyCache.Size(1),
            Start = start,
            Half = ropeDims / 2,
            Adjacent = layout == RopeLayout.Adjacent ? 1 : 0,
            Eps = eps,
        };

        // Without rotation the tables are never read: any float view stands in for them.
        ArrayView<float> cosView = ropeDims > 0 ? cos!.View<float>() : keys.View<float>();
        ArrayView<float> sinView = ropeDims > 0 ? sin!.View<float>() : keys.View<float>();
        Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, IndexerAppendArgs> kernel =
            device.GetKernel(AppendKey, static accelerator =>
                accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                    ArrayView<float>, ArrayView<float>, IndexerAppendArgs>(AppendKeysKernel));
        KernelConfig config = new(t, GroupReduce.GroupSize(device.Accelerator, di));
        kernel(config, keys.View<float>(), normWeight.View<float>(), normBias.View<float>(), cosView, sinView,
            keyCache.View<float>(), args);
    }

    /// <summary>Queues RoPE on the leading ropeDims of every head of q [T, Hi, Di] (checked by the caller).</summary>
    public static void RotateQueries(
        IlgpuDevice device, Tensor q, int heads, int headDim, Tensor cos, Tensor sin, int ropeDims, RopeLayout layout, int start)
    {
        int half = ropeDims / 2;
        long pairs = q.Length / headDim * half;
        if (pairs == 0)
        {
            return;
        }

        Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int> kernel =
            device.GetKernel(RotateKey, static accelerator =>
                accelerator.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                    int, int, int, int, int>(RotateQueriesKernel));
        kernel((int)pairs, q.View<float>(), cos.View<float>(), sin.View<float>(), heads, headDim, half,
            layout == RopeLayout.Adjacent ? 1 : 0, start);
    }

    /// <summary>Queues the scores of T tokens against the key cache (checked by the caller).</summary>
    public static void Scores(IlgpuDevice device, Tensor q, Tensor weights, Tensor keyCache, int start, Tensor scores)
    {
        int t = weights.Size(0), hi = weights.Size(1), di = keyCache.Size(0), length = scores.Size(1);
        if (t == 0 || length == 0)
        {
            return;
        }

        (int threads, int positionGroups) = ScoreShape(device.Accelerator);
        int tile = 4 * positionGroups;
        IndexerScoreArgs args = new()
        {
            Heads = hi,
            HeadDim = di,
            Capacity = keyCache.Size(1),
            Length = length,
            Start = start,
            PositionGroups = positionGroups,
        };
        Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, IndexerScoreArgs> kernel =
            device.GetKernel(ScoresKey, static accelerator =>
                accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                    IndexerScoreArgs>(ScoresKernel));
        KernelConfig config = new(new Index2D((length + tile - 1) / tile, t), new Index2D(threads, 1));
        kernel(config, q.View<float>(), weights.View<float>(), keyCache.View<float>(), scores.View<float>(), args);
    }

    /// <summary>
    /// The score kernel's group on <paramref name="accelerator"/>: up to 256 threads in whole warps and whole sets of
    /// 16 position groups; a device whose groups hold fewer than 16 threads uses one head group of all its threads.
    /// </summary>
    public static (int Threads, int PositionGroups) ScoreShape(Accelerator accelerator)
    {
        int warp = accelerator.WarpSize;
        int unit = Math.Max(warp, PositionGroups);
        int threads = Math.Min(ScoreThreads, accelerator.MaxNumThreadsPerGroup) / unit * unit;
        if (threads == 0)
        {
            int all = Math.Max(warp, accelerator.MaxNumThreadsPerGroup / warp * warp);
            return (all, Math.Min(all, PositionGroups));
        }

        return (threads, PositionGroups);
    }

    /// <summary>LayerNorm, RoPE and the transposed write of one token's key per group (see the file header).</summary>
    internal static void AppendKeysKernel(
        ArrayView<float> keys,
        ArrayView<float> weight,
        ArrayView<float> bias,
        ArrayView<float> cos,
        ArrayView<float> sin,
        ArrayView<float> cache,
        IndexerAppendArgs args)
    {
        ArrayView<float> scratch = SharedMemory.Allocate<float>(GroupReduce.ScratchLength);
        int token = Grid.IdxX;
        int di = args.HeadDim;
        long row = (long)token * di;

        // The row's sum and sum of squares, then its mean and inverse standard deviation.
        float sum = 0f;
        float squares = 0f;
        for (int d = Group.IdxX; d < di; d += Group.DimX)
        {
            float x = keys[row + d];
            sum += x;
            squares += x * x;
        }

        sum = GroupReduce.Sum(sum, scratch);
        squares = GroupReduce.Sum(squares, scratch);
        float mean = sum / di;
        float inverse = 1f / MathF.Sqrt(Relu((squares / di) - (mean * mean)) + args.Eps);

        // Each dimension normalized, its pair rotated, and written into the cache's column start + token.
        int position = args.Start + token;
        int half = args.Half;
        for (int d = Group.IdxX; d < di; d += Group.DimX)
        {
            float value;
            if (d < 2 * half)
            {
                // The pair index i of d, and whether d is the pair's first element.
                int pair = args.Adjacent != 0 ? d >> 1 : (d < half ? d : d - half);
                bool first = args.Adjacent != 0 ? (d & 1) == 0 : d < half;
                int firstDim = args.Adjacent != 0 ? 2 * pair : pair;
                int secondDim = args.Adjacent != 0 ? firstDim + 1 : firstDim + half;
                float x0 = ((keys[row + firstDim] - mean) * inverse * weight[firstDim]) + bias[firstDim];
                float x1 = ((keys[row + secondDim] - mean) * inverse * weight[secondDim]) + bias[secondDim];
                float c = cos[((long)position * half) + pair];
                float s = sin[((long)position * half) + pair];
                value = first ? (x0 * c) - (x1 * s) : (x0 * s) + (x1 * c);
            }
            else
            {
                value = ((keys[row + d] - mean) * inverse * weight[d]) + bias[d];
            }

            cache[((long)d * args.Capacity) + position] = value;
        }
    }

    /// <summary>Thread i rotates pair i % half of row i / half of q [T·Hi, Di] at position start + row / Hi.</summary>
    internal static void RotateQueriesKernel(
        Index1D index,
        ArrayView<float> q,
        ArrayView<float> cos,
        ArrayView<float> sin,
        int heads,
        int headDim,
        int half,
        int adjacent,
        int start)
    {
        int i = index.X;
        int row = i / half;
        int pair = i - (row * half);
        int token = row / heads;
        long at = (long)row * headDim;
        int firstDim = adjacent != 0 ? 2 * pair : pair;
        int secondDim = adjacent != 0 ? firstDim + 1 : firstDim + half;
        float x0 = q[at + firstDim];
        float x1 = q[at + secondDim];
        long table = ((long)(start + token) * half) + pair;
        float c = cos[table];
        float s = sin[table];
        q[at + firstDim] = (x0 * c) - (x1 * s);
        q[at + secondDim] = (x0 * s) + (x1 * c);
    }

    /// <summary>The scores of one token against one tile of 4 · position-groups positions per group (see the file header).</summary>
    internal static void ScoresKernel(
        ArrayView<float> q,
        ArrayView<float> weights,
        ArrayView<float> keys,
        ArrayView<float> scores,
        IndexerScoreArgs args)
    {
        ArrayView<float> keyTile = SharedMemory.Allocate<float>(KeyTileFloats);
        ArrayView<float> queryTile = SharedMemory.Allocate<float>(QueryTileFloats);
        ArrayView<float> partials = SharedMemory.Allocate<float>(PartialFloats);
        int threads = Group.DimX;
        int thread = Group.IdxX;
        int groups = args.PositionGroups;
        int tile = 4 * groups;
        int headGroups = threads / groups;
        int blockHeads = 4 * headGroups;
        int position = thread % groups;
        int headGroup = thread / groups;
        int token = Grid.IdxY;
        int first = Grid.IdxX * tile;
        int visible = args.Start + token + 1;
        int length = args.Length;
        int di = args.HeadDim;
        long rowAt = (long)token * length;

        // The whole tile after the token's position (the same for every thread of the group): only -∞ to write.
        if (first >= visible)
        {
            for (int c = thread; c < tile; c += threads)
            {
                WriteScore(scores, rowAt, first + c, length, float.NegativeInfinity);
            }

            return;
        }

        // This thread's share of the scores of its 4 positions: Σ over its heads of w · ReLU(q · k).
        float score0 = 0f, score1 = 0f, score2 = 0f, score3 = 0f;
        int stride = DimChunk + 1;
        for (int block = 0; block < args.Heads; block += blockHeads)
        {
            float a00 = 0f, a01 = 0f, a02 = 0f, a03 = 0f;
            float a10 = 0f, a11 = 0f, a12 = 0f, a13 = 0f;
            float a20 = 0f, a21 = 0f, a22 = 0f, a23 = 0f;
            float a30 = 0f, a31 = 0f, a32 = 0f, a33 = 0f;
            for (int d0 = 0; d0 < di; d0 += DimChunk)
            {
                // Stage keys [dims, positions] (rows of consecutive positions; past the scores' end, the last one)
                // and the block's queries [heads, dims] (zero for heads past Hi), once every thread is done with the
                // previous chunk.
                int dims = XMin(DimChunk, di - d0);
                Group.Barrier();
                for (int e = thread; e < DimChunk * tile; e += threads)
                {
                    int dd = e / tile;
                    int c = e - (dd * tile);
                    keyTile[e] = dd < dims ? keys[((long)(d0 + dd) * args.Capacity) + XMin(first + c, length - 1)] : 0f;
                }

                for (int e = thread; e < blockHeads * DimChunk; e += threads)
                {
                    int h = e / DimChunk;
                    int dd = e - (h * DimChunk);
                    queryTile[(h * stride) + dd] = dd < dims && block + h < args.Heads
                        ? q[((((long)token * args.Heads) + block + h) * di) + d0 + dd]
                        : 0f;
                }

                Group.Barrier();
                int queryAt = 4 * headGroup * stride;
                for (int dd = 0; dd < dims; dd++)
                {
                    int keyAt = (dd * tile) + position;
                    float key0 = keyTile[keyAt];
                    float key1 = keyTile[keyAt + groups];
                    float key2 = keyTile[keyAt + (2 * groups)];
                    float key3 = keyTile[keyAt + (3 * groups)];
                    float q0 = queryTile[queryAt + dd];
                    float q1 = queryTile[queryAt + stride + dd];
                    float q2 = queryTile[queryAt + (2 * stride) + dd];
                    float q3 = queryTile[queryAt + (3 * stride) + dd];
                    a00 += q0 * key0;
                    a01 += q0 * key1;
                    a02 += q0 * key2;
                    a03 += q0 * key3;
                    a10 += q1 * key0;
                    a11 += q1 * key1;
                    a12 += q1 * key2;
                    a13 += q1 * key3;
                    a20 += q2 * key0;
                    a21 += q2 * key1;
                    a22 += q2 * key2;
                    a23 += q2 * key3;
                    a30 += q3 * key0;
                    a31 += q3 * key1;
                    a32 += q3 * key2;
                    a33 += q3 * key3;
                }
            }

            // ReLU per head, then the head's weight, in head order; heads past Hi are dropped.
            int head = block + (4 * headGroup);
            long weightAt = ((long)token * args.Heads) + head;
            if (head < args.Heads)
            {
                float w = weights[weightAt];
                score0 += w * Relu(a00);
                score1 += w * Relu(a01);
                score2 += w * Relu(a02);
                score3 += w * Relu(a03);
            }

            if (head + 1 < args.Heads)
            {
                float w = weights[weightAt + 1];
                score0 += w * Relu(a10);
                score1 += w * Relu(a11);
                score2 += w * Relu(a12);
                score3 += w * Relu(a13);
            }

            if (head + 2 < args.Heads)
            {
                float w = weights[weightAt + 2];
                score0 += w * Relu(a20);
                score1 += w * Relu(a21);
                score2 += w * Relu(a22);
                score3 += w * Relu(a23);
            }

            if (head + 3 < args.Heads)
            {
                float w = weights[weightAt + 3];
                score0 += w * Relu(a30);
                score1 += w * Relu(a31);
                score2 += w * Relu(a32);
                score3 += w * Relu(a33);
            }
        }

        // The head groups' shares meet in shared memory and are summed in head-group order; -∞ after the position.
        int partialAt = (headGroup * tile) + position;
        partials[partialAt] = score0;
        partials[partialAt + groups] = score1;
        partials[partialAt + (2 * groups)] = score2;
        partials[partialAt + (3 * groups)] = score3;
        Group.Barrier();
        for (int c = thread; c < tile; c += threads)
        {
            float sum = 0f;
            for (int g = 0; g < headGroups; g++)
            {
                sum += partials[(g * tile) + c];
            }

            WriteScore(scores, rowAt, first + c, length, first + c < visible ? sum : float.NegativeInfinity);
        }
    }

    private static void WriteScore(ArrayView<float> scores, long rowAt, int position, int length, float value)
    {
        if (position < length)
        {
            scores[rowAt + position] = value;
        }
    }

    // max(x, 0) with NaN passed through, as the CPU kernel's MathF.Max and Vector512.Max do (NaN < 0 is false).
    private static float Relu(float x) => x < 0f ? 0f : x;

    private static int XMin(int a, int b) => a < b ? a : b;

    private static MethodInfo Method(string name) =>
        typeof(GpuIndexer).GetMethod(name, BindingFlags.Static | BindingFlags.NonPublic)
            ?? throw new InvalidOperationException($"GpuIndexer: kernel method {name} not found.");
}
