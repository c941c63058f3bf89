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
// ScoresKernel: a group of P threads (128 on a GPU) scores one query token against a tile of 4·P positions:
//   scores[t, s] = Σ_j w[t, j] · ReLU(q[t, j, :] · k[:, s]),  -∞ for s > start + t.
// The token's queries sit in shared memory (a chunk of heads at a time, at most 32 KB); thread i owns positions
// s0 + i + {0, 1, 2, 3}·P, so each key load of a dimension is one coalesced 128-byte row per warp. Heads are taken four
// at a time: per dimension a thread loads 4 keys (L1/L2; the tile of keys is reused by every head block) and 4
// query values (shared-memory broadcasts) for 16 multiply-adds, 16 accumulators in registers. Then ReLU, the head
// weight, and the sum over heads in head order. Tiles that lie wholly after the token's position only write -∞.
// Grid: (position tiles, T). A decode step over L positions runs L / 512 groups (128 at 64K positions), each streaming
// its keys once from memory; a prefill chunk runs T times as many, the keys then coming from L2.
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

    /// <summary>Heads whose queries are loaded into shared memory at once.</summary>
    public int HeadChunk;
}

/// <summary>The ILGPU kernels of the lightning indexer and their launches (see the file header).</summary>
internal static class GpuIndexer
{
    /// <summary>Floats of shared memory the score kernel holds queries in (32 KB): Di may be at most this.</summary>
    public const int QueryFloats = 8192;

    /// <summary>Positions each thread of the score kernel scores.</summary>
    public const int PositionsPerThread = 4;

    /// <summary>The group size of the score kernel on a GPU.</summary>
    public const int ScoreThreads = 128;

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

        int threads = Threads(device.Accelerator);
        int tile = threads * PositionsPerThread;
        IndexerScoreArgs args = new()
        {
            Heads = hi,
            HeadDim = di,
            Capacity = keyCache.Size(1),
            Length = length,
            Start = start,
            HeadChunk = Math.Min(hi, QueryFloats / di),
        };
        Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, IndexerScoreArgs> kernel =
            device.GetKernel(ScoresKey, static accelerator =>
                accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>,
                    IndexerScoreArgs>(ScoresKernel));
        KernelConfig config = new(new Index2D((length + tile - 1) / tile, t), new Index2D(threads, 1));
        kernel(config, q.View<float>(), weights.View<float>(), keyCache.View<float>(), scores.View<float>(), args);
    }

    /// <summary>The score kernel's group size on <paramref name="accelerator"/>: 128 threads, whole warps, within its limit.</summary>
    public static int Threads(Accelerator accelerator)
    {
        int warp = accelerator.WarpSize;
        return Math.Max(warp, Math.Min(ScoreThreads, accelerator.MaxNumThreadsPerGroup) / warp * warp);
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

    /// <summary>The scores of one token against one tile of 4·P positions per group (see the file header).</summary>
    internal static void ScoresKernel(
        ArrayView<float> q,
        ArrayView<float> weights,
        ArrayView<float> keys,
        ArrayView<float> scores,
        IndexerScoreArgs args)
    {
        ArrayView<float> queries = SharedMemory.Allocate<float>(QueryFloats);
        int token = Grid.IdxY;
        int threads = Group.DimX;
        int thread = Group.IdxX;
        int di = args.HeadDim;
        int length = args.Length;
        int s0 = (Grid.IdxX * threads * PositionsPerThread) + thread;
        int s1 = s0 + threads;
        int s2 = s1 + threads;
        int s3 = s2 + threads;
        int visible = args.Start + token + 1;
        long rowAt = (long)token * length;

        // The whole tile after the token's position (the same for every thread of the group): only -∞ to write.
        if (Grid.IdxX * threads * PositionsPerThread >= visible)
        {
            WriteScore(scores, rowAt, s0, length, float.NegativeInfinity);
            WriteScore(scores, rowAt, s1, length, float.NegativeInfinity);
            WriteScore(scores, rowAt, s2, length, float.NegativeInfinity);
            WriteScore(scores, rowAt, s3, length, float.NegativeInfinity);
            return;
        }

        // Key columns: positions past the scores' end read the last column instead and are not written.
        long k0 = XMin(s0, length - 1);
        long k1 = XMin(s1, length - 1);
        long k2 = XMin(s2, length - 1);
        long k3 = XMin(s3, length - 1);
        float score0 = 0f, score1 = 0f, score2 = 0f, score3 = 0f;
        long capacity = args.Capacity;
        for (int chunk = 0; chunk < args.Heads; chunk += args.HeadChunk)
        {
            // This chunk's queries into shared memory (after every thread is done with the previous chunk).
            int heads = XMin(args.HeadChunk, args.Heads - chunk);
            long queryAt = (((long)token * args.Heads) + chunk) * di;
            Group.Barrier();
            for (int e = thread; e < heads * di; e += threads)
            {
                queries[e] = q[queryAt + e];
            }

            Group.Barrier();
            for (int j = 0; j < heads; j += 4)
            {
                // Four heads (the last block may have fewer: its missing heads read head j's queries and are dropped).
                int j1 = j + 1 < heads ? j + 1 : j;
                int j2 = j + 2 < heads ? j + 2 : j;
                int j3 = j + 3 < heads ? j + 3 : j;
                float a00 = 0f, a01 = 0f, a02 = 0f, a03 = 0f;
                float a10 = 0f, a11 = 0f, a12 = 0f, a13 = 0f;
                float a20 = 0f, a21 = 0f, a22 = 0f, a23 = 0f;
                float a30 = 0f, a31 = 0f, a32 = 0f, a33 = 0f;
                for (int d = 0; d < di; d++)
                {
                    long column = d * capacity;
                    float key0 = keys[column + k0];
                    float key1 = keys[column + k1];
                    float key2 = keys[column + k2];
                    float key3 = keys[column + k3];
                    float q0 = queries[(j * di) + d];
                    float q1 = queries[(j1 * di) + d];
                    float q2 = queries[(j2 * di) + d];
                    float q3 = queries[(j3 * di) + d];
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

                // ReLU per head, then the weighted sum in head order.
                long weightAt = ((long)token * args.Heads) + chunk + j;
                float w0 = weights[weightAt];
                score0 += w0 * Relu(a00);
                score1 += w0 * Relu(a01);
                score2 += w0 * Relu(a02);
                score3 += w0 * Relu(a03);
                if (j + 1 < heads)
                {
                    float w1 = weights[weightAt + 1];
                    score0 += w1 * Relu(a10);
                    score1 += w1 * Relu(a11);
                    score2 += w1 * Relu(a12);
                    score3 += w1 * Relu(a13);
                }

                if (j + 2 < heads)
                {
                    float w2 = weights[weightAt + 2];
                    score0 += w2 * Relu(a20);
                    score1 += w2 * Relu(a21);
                    score2 += w2 * Relu(a22);
                    score3 += w2 * Relu(a23);
                }

                if (j + 3 < heads)
                {
                    float w3 = weights[weightAt + 3];
                    score0 += w3 * Relu(a30);
                    score1 += w3 * Relu(a31);
                    score2 += w3 * Relu(a32);
                    score3 += w3 * Relu(a33);
                }
            }
        }

        // Positions after the token's own are masked.
        WriteScore(scores, rowAt, s0, length, s0 < visible ? score0 : float.NegativeInfinity);
        WriteScore(scores, rowAt, s1, length, s1 < visible ? score1 : float.NegativeInfinity);
        WriteScore(scores, rowAt, s2, length, s2 < visible ? score2 : float.NegativeInfinity);
        WriteScore(scores, rowAt, s3, length, s3 < visible ? score3 : float.NegativeInfinity);
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
