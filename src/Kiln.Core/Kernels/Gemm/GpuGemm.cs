// The ILGPU matrix product C[M, N] = epilogue(A[M, K] · W[N, K]ᵀ), same contract as the CPU path: any M, N, K,
// the epilogue applied once per output at store with (row, col), float32/float16/bfloat16 weights widened in
// registers. Launch shapes come from the accelerator (warp size, threads per group, multiprocessors), so the test
// CPU accelerator (warp 32, 64 threads per group) runs the same kernels at small shapes that CUDA runs at full size.
//
// VectorKernel (M <= 16, memory-bound): 8 warps per group (256 threads on CUDA), groups = min(N / 8, SMs × resident
// groups) with warps walking columns at a grid-wide stride; per column each lane reads 8 consecutive weights as one
// 16-byte load (two for float32) so a warp streams 512–1024 contiguous bytes per step; A's rows (4 per pass, grid Y)
// sit in dynamic shared memory when they fit 32 KB; a shuffle butterfly sums the lanes. K % 8 != 0 or misaligned
// views fall back to scalar loads in the same kernel.
// TiledKernel (M > 16, compute-bound): S×S threads (S = 16 on CUDA, 8 on the test accelerator), an 8S×8S tile per
// group, 8×8 outputs per thread in registers, K in steps of 8 through two shared stages (16.5 KB, asserted under
// ILGPU's 48 KB) so one barrier per step suffices. Predictions for an H200 are in docs/PERFORMANCE.md (not measured).
//
// No FMA intrinsic (a·b + c lets ptxas fuse), no System.Half, no throw inside kernels.
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;
using GpuHalf = ILGPU.Half;

// ILGPU's CPU accelerator runs kernels from a generated assembly that must see the internal weight readers.
[assembly: System.Runtime.CompilerServices.InternalsVisibleTo("ILGPURuntime")]

namespace Kiln.Kernels.Gemm;

/// <summary>Four floats: one 16-byte load or store (ld.global.v4.f32 when the address is 16-byte aligned).</summary>
internal struct Float4
{
    /// <summary>The elements.</summary>
    public float X, Y, Z, W;
}

/// <summary>Four 32-bit words: one 16-byte load of 8 float16 or bfloat16 weights.</summary>
internal struct UInt4
{
    /// <summary>The words, lowest address first.</summary>
    public uint X, Y, Z, W;
}

/// <summary>Eight floats held in registers: eight consecutive weights, or one row of a thread's 8×8 outputs.</summary>
internal struct Float8
{
    /// <summary>The elements.</summary>
    public float V0, V1, V2, V3, V4, V5, V6, V7;
}

/// <summary>Reads weights, widened to float32, inside an ILGPU kernel.</summary>
internal interface IGpuWeights
{
    /// <summary>Element <paramref name="index"/> of the row-major [N, K] weights.</summary>
    float Load(long index);

    /// <summary>
    /// Elements [index, index + 8) as one 16-byte load (float16, bfloat16) or two (float32). The caller guarantees
    /// that <paramref name="index"/> is a multiple of 8 and that the view starts 16-byte aligned.
    /// </summary>
    Float8 Load8(long index);
}

/// <summary>float32 weights.</summary>
internal struct GpuFloat32Weights : IGpuWeights
{
    /// <summary>The [N, K] weights.</summary>
    public ArrayView<float> Data;

    /// <inheritdoc />
    public readonly float Load(long index) => Data[index];

    /// <inheritdoc />
    public readonly Float8 Load8(long index)
    {
        // Two 16-byte loads.
        ArrayView<Float4> quads = Data.Cast<Float4>();
        Float4 lo = quads[index / 4];
        Float4 hi = quads[(index / 4) + 1];
        return new Float8 { V0 = lo.X, V1 = lo.Y, V2 = lo.Z, V3 = lo.W, V4 = hi.X, V5 = hi.Y, V6 = hi.Z, V7 = hi.W };
    }
}

/// <summary>float16 weights, as ILGPU.Half (System.Half does not compile in kernels).</summary>
internal struct GpuFloat16Weights : IGpuWeights
{
    /// <summary>The [N, K] weights.</summary>
    public ArrayView<GpuHalf> Data;

    /// <inheritdoc />
    public readonly float Load(long index) => (float)Data[index];

    /// <inheritdoc />
    public readonly Float8 Load8(long index)
    {
        // One 16-byte load; each word holds two halves, the lower address in the low bits.
        UInt4 words = Data.Cast<UInt4>()[index / 8];
        return new Float8
        {
            V0 = Widen(words.X & 0xFFFF), V1 = Widen(words.X >> 16),
            V2 = Widen(words.Y & 0xFFFF), V3 = Widen(words.Y >> 16),
            V4 = Widen(words.Z & 0xFFFF), V5 = Widen(words.Z >> 16),
            V6 = Widen(words.W & 0xFFFF), V7 = Widen(words.W >> 16),
        };
    }

    private static float Widen(uint bits) => (float)Interop.IntAsFloat((ushort)bits);
}

/// <summary>bfloat16 weights, stored as ushort bits and widened by a 16-bit shift.</summary>
internal struct GpuBFloat16Weights : IGpuWeights
{
    /// <summary>The [N, K] weights as bit patterns.</summary>
    public ArrayView<ushort> Data;

    /// <inheritdoc />
    public readonly float Load(long index) => Interop.IntAsFloat((uint)Data[index] << 16);

    /// <inheritdoc />
    public readonly Float8 Load8(long index)
    {
        // One 16-byte load; a bfloat16 is the high half of a float32.
        UInt4 words = Data.Cast<UInt4>()[index / 8];
        return new Float8
        {
            V0 = Interop.IntAsFloat(words.X << 16), V1 = Interop.IntAsFloat(words.X & 0xFFFF0000u),
            V2 = Interop.IntAsFloat(words.Y << 16), V3 = Interop.IntAsFloat(words.Y & 0xFFFF0000u),
            V4 = Interop.IntAsFloat(words.Z << 16), V5 = Interop.IntAsFloat(words.Z & 0xFFFF0000u),
            V6 = Interop.IntAsFloat(words.W << 16), V7 = Interop.IntAsFloat(words.W & 0xFFFF0000u),
        };
    }
}

/// <summary>
/// Q8_0 weights (ggml's 34-byte blocks: a float16 scale d, then 32 int8 q; value = d·q) read as 16-bit words, 17 per
/// block: every block starts 2-byte aligned, so the scale is one word and the int8 pairs are words. Element i is in
/// block i / 32 at position i % 32. Widened in registers, exact in float32 like the CPU's widening.
/// </summary>
internal struct GpuQ8_0Weights : IGpuWeights
{
    /// <summary>Words per block.</summary>
    public const int BlockWords = 17;

    /// <summary>The [N, K] blocks as words (K a multiple of 32).</summary>
    public ArrayView<ushort> Words;

    /// <inheritdoc />
    public readonly float Load(long index)
    {
        long block = (index >> 5) * BlockWords;
        int position = (int)(index & 31);
        uint pair = Words[block + 1 + (position >> 1)];
        return Scale(block) * Low(pair >> (8 * (position & 1)));
    }

    /// <inheritdoc />
    /// <remarks>Needs only the 2-byte alignment every block has; the 8 elements never cross a block.</remarks>
    public readonly Float8 Load8(long index)
    {
        long block = (index >> 5) * BlockWords;
        long first = block + 1 + ((index & 31) >> 1);
        float d = Scale(block);
        uint w0 = Words[first], w1 = Words[first + 1], w2 = Words[first + 2], w3 = Words[first + 3];
        return new Float8
        {
            V0 = d * Low(w0), V1 = d * Low(w0 >> 8),
            V2 = d * Low(w1), V3 = d * Low(w1 >> 8),
            V4 = d * Low(w2), V5 = d * Low(w2 >> 8),
            V6 = d * Low(w3), V7 = d * Low(w3 >> 8),
        };
    }

    private readonly float Scale(long block) => (float)Interop.IntAsFloat(Words[block]);

    // The low byte of bits as a signed int8, converted to float.
    private static float Low(uint bits) => (int)(bits << 24) >> 24;
}

/// <summary>The ILGPU kernels of the matrix product and their launch.</summary>
internal static class GpuGemm
{
    /// <summary>Rows of A a matrix-vector group serves per pass; M up to <see cref="MaxVectorRows"/> uses it.</summary>
    public const int RowsPerPass = 4;

    /// <summary>The largest M that runs the matrix-vector kernel (at most 4 passes over W); larger M is tiled.</summary>
    public const int MaxVectorRows = 16;

    /// <summary>Weights each lane reads per step of the matrix-vector kernel: one 16-byte load of halves.</summary>
    public const int VectorWidth = 8;

    /// <summary>Bytes of A rows a matrix-vector group caches in shared memory at most (of ILGPU's 48 KB).</summary>
    public const int MaxCachedBytes = 32 * 1024;

    /// <summary>Warps per matrix-vector group on a GPU (256 threads).</summary>
    public const int VectorWarps = 8;

    /// <summary>Steps of K staged in shared memory per pass of the tiled kernel.</summary>
    public const int TileK = 8;

    /// <summary>Rows (and columns) of the largest tile: 16×16 threads × 8 outputs each way.</summary>
    public const int MaxTile = 128;

    /// <summary>
    /// Floats between the k-rows of a shared tile: <see cref="MaxTile"/> + 4, which keeps 16-byte alignment and
    /// spreads the 8 k values one thread stores over 8 different banks.
    /// </summary>
    public const int TileStride = MaxTile + 4;

    /// <summary>Floats of one shared buffer (A or W, one stage).</summary>
    public const int TileFloats = TileK * TileStride;

    /// <summary>Shared memory of the tiled kernel: A and W tiles, double-buffered.</summary>
    public const int TiledSharedBytes = 2 * 2 * TileFloats * sizeof(float);

    /// <summary>ILGPU's shared-memory limit per group on CUDA (it never opts in to the larger carve-out).</summary>
    public const int MaxSharedBytes = 48 * 1024;

    /// <summary>
    /// Every kernel of the matrix product, closed over each weight reader with <see cref="IdentityEpilogue"/>, and
    /// over float32 weights with the generated ResidualAdd epilogue, for offline PTX compilation by the tests. The
    /// kernels read their tile shape from the launch (Group.DimX), so the PTX compiled here is the one CUDA runs at
    /// full size (16×16 threads, 128×128 tiles; 8 warps per matrix-vector group).
    /// </summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } = ListKernels();

    private static GeneratedKernel[] ListKernels()
    {
        List<GeneratedKernel> kernels = new();
        (string Op, string Method)[] methods = [("GemmTiled", nameof(TiledKernel)), ("GemmVector", nameof(VectorKernel))];
        Type[] readers = [typeof(GpuFloat32Weights), typeof(GpuFloat16Weights), typeof(GpuBFloat16Weights), typeof(GpuQ8_0Weights)];
        foreach ((string op, string name) in methods)
        {
            MethodInfo method = typeof(GpuGemm).GetMethod(name, BindingFlags.Static | BindingFlags.NonPublic)!;
            foreach (Type reader in readers)
            {
                kernels.Add(new GeneratedKernel(op, method.MakeGenericMethod(reader, typeof(IdentityEpilogue)), true));
            }

            kernels.Add(new GeneratedKernel(
                op, method.MakeGenericMethod(typeof(GpuFloat32Weights), typeof(Ops.ResidualAddGpuEpilogue)), true));
        }

        return kernels.ToArray();
    }

    /// <summary>Queues C = epilogue(A · Wᵀ) on the device's default stream.</summary>
    public static void Launch<TEpilogue>(IlgpuDevice device, Tensor a, Tensor w, Tensor c, int m, int n, int k, TEpilogue epilogue)
        where TEpilogue : struct, IGpuMatMulEpilogue
    {
        if (m == 0 || n == 0)
        {
            return;
        }

        switch (w.DType)
        {
            case DType.Float32:
                Launch(device, a, new GpuFloat32Weights { Data = w.View<float>() }, w.ByteOffset, c, m, n, k, epilogue);
                break;
            case DType.Float16:
                Launch(device, a, new GpuFloat16Weights { Data = w.View<GpuHalf>() }, w.ByteOffset, c, m, n, k, epilogue);
                break;
            case DType.Q8_0:
                // Its 8-element loads need 2-byte alignment only, which every block has: pass an aligned offset.
                Launch(device, a, new GpuQ8_0Weights { Words = w.BlockWords() }, 0, c, m, n, k, epilogue);
                break;
            default:
                ArrayView<ushort> bf16 = w.View<ushort>();
                Launch(device, a, new GpuBFloat16Weights { Data = bf16 }, w.ByteOffset, c, m, n, k, epilogue);
                break;
        }
    }

    /// <summary>The launch shape of the matrix-vector kernel on an accelerator.</summary>
    /// <param name="Warps">Warps per group.</param>
    /// <param name="Groups">Groups along N (each warp then loops over columns with a stride of all warps).</param>
    internal readonly record struct VectorShape(int Warps, int Groups)
    {
        /// <summary>
        /// Up to <see cref="VectorWarps"/> warps per group, and enough groups to fill every multiprocessor to its
        /// thread limit but no more than one column per warp (more would only reload the cached A rows).
        /// </summary>
        public static VectorShape For(Accelerator accelerator, int n)
        {
            int warp = accelerator.WarpSize;
            int warps = Math.Clamp(accelerator.MaxNumThreadsPerGroup / warp, 1, VectorWarps);
            int resident = Math.Max(1, accelerator.MaxNumThreadsPerMultiprocessor / (warps * warp));
            long fill = (long)accelerator.NumMultiprocessors * resident;
            int groups = (int)Math.Clamp(fill, 1, (n + warps - 1) / warps);
            return new VectorShape(warps, groups);
        }
    }

    /// <summary>
    /// The launch shape of the tiled kernel: S×S threads, the largest S of 16, 8, 4, 2 whose square fits a group
    /// (16 on CUDA; 8 on the default test accelerator's 64 threads; less on narrower simulated devices), so tiles
    /// are 8S×8S.
    /// </summary>
    internal static int TiledSide(Accelerator accelerator)
    {
        int side = 16;
        while (side > 2 && side * side > accelerator.MaxNumThreadsPerGroup)
        {
            side /= 2;
        }

        return side;
    }

    private static void Launch<TWeights, TEpilogue>(
        IlgpuDevice device,
        Tensor a,
        TWeights weights,
        long weightByteOffset,
        Tensor c,
        int m,
        int n,
        int k,
        TEpilogue epilogue)
        where TWeights : struct, IGpuWeights
        where TEpilogue : struct, IGpuMatMulEpilogue
    {
        Accelerator accelerator = device.Accelerator;
        ArrayView<float> aView = a.View<float>();
        if (m <= MaxVectorRows)
        {
            // Wide loads need every weight row and A row to start 16-byte aligned: K a multiple of 8 and aligned views.
            VectorShape shape = VectorShape.For(accelerator, n);
            bool wide = k % VectorWidth == 0 && weightByteOffset % 16 == 0 && a.ByteOffset % 16 == 0;
            int rows = Math.Min(m, RowsPerPass);
            bool cache = (long)rows * k * sizeof(float) <= MaxCachedBytes;
            Action<KernelConfig, ArrayView<float>, TWeights, ArrayView<float>, VectorArguments, TEpilogue> vector =
                device.GetKernel(Keys<TWeights, TEpilogue>.Vector, static acc =>
                    acc.LoadStreamKernel<ArrayView<float>, TWeights, ArrayView<float>, VectorArguments, TEpilogue>(
                        VectorKernel<TWeights, TEpilogue>));
            KernelConfig config = new(
                new Index2D(shape.Groups, (m + RowsPerPass - 1) / RowsPerPass),
                new Index2D(shape.Warps * accelerator.WarpSize, 1),
                SharedMemoryConfig.RequestDynamic<float>(cache ? rows * k : 1));
            VectorArguments arguments = new() { M = m, N = n, K = k, Wide = wide ? 1 : 0, Cached = cache ? 1 : 0 };
            vector(config, aView, weights, c.View<float>(), arguments, epilogue);
            return;
        }

        // S×S threads per group, each computing 8×8 outputs; the shared budget is fixed at compile time.
        if (TiledSharedBytes > MaxSharedBytes)
        {
            throw new InvalidOperationException(
                $"GpuGemm: the tiled kernel needs {TiledSharedBytes} bytes of shared memory, over ILGPU's {MaxSharedBytes}.");
        }

        int side = TiledSide(accelerator);
        int tile = 8 * side;
        Action<KernelConfig, ArrayView<float>, TWeights, ArrayView<float>, int, int, int, TEpilogue> tiled =
            device.GetKernel(Keys<TWeights, TEpilogue>.Tiled, static acc =>
                acc.LoadStreamKernel<ArrayView<float>, TWeights, ArrayView<float>, int, int, int, TEpilogue>(
                    TiledKernel<TWeights, TEpilogue>));
        KernelConfig tiles = new(new Index2D((n + tile - 1) / tile, (m + tile - 1) / tile), new Index2D(side, side));
        tiled(tiles, aView, weights, c.View<float>(), m, n, k, epilogue);
    }

    /// <summary>The cache keys of one kernel instantiation (compared by reference).</summary>
    private static class Keys<TWeights, TEpilogue>
    {
        public static readonly object Tiled = new();
        public static readonly object Vector = new();
    }

    /// <summary>The scalar arguments of the matrix-vector kernel.</summary>
    internal struct VectorArguments
    {
        /// <summary>Rows of A and C.</summary>
        public int M;

        /// <summary>Columns of C (rows of W).</summary>
        public int N;

        /// <summary>The reduced dimension.</summary>
        public int K;

        /// <summary>1 when rows start 16-byte aligned and K is a multiple of 8: lanes read 8 weights per load.</summary>
        public int Wide;

        /// <summary>1 when the group's A rows are copied into dynamic shared memory first.</summary>
        public int Cached;
    }

    /// <summary>
    /// The matrix-vector product for M &lt;= 16: group (gx, gy) serves A rows [4·gy, 4·gy + 4) and every warp of the
    /// grid walks the columns warp, warp + all warps, ... Per column, each lane reads 8 consecutive weights (one
    /// 16-byte load of halves, two of floats) at k = 8·lane + 256·step, so a warp streams 512 (or 1024) contiguous
    /// bytes of W per step; it keeps one sum per A row, and a butterfly of shuffles gives every lane the column's
    /// sums. W is read once per pass of 4 rows. A rows come from shared memory when they fit, else from global
    /// memory (L1/L2-resident).
    /// </summary>
    internal static void VectorKernel<TWeights, TEpilogue>(
        ArrayView<float> a,
        TWeights w,
        ArrayView<float> c,
        VectorArguments args,
        TEpilogue epilogue)
        where TWeights : struct, IGpuWeights
        where TEpilogue : struct, IGpuMatMulEpilogue
    {
        int k = args.K;
        int row0 = Grid.IdxY * RowsPerPass;
        int rows = Math.Min(RowsPerPass, args.M - row0);

        // Stage this pass's A rows [rows, K] in shared memory, coalesced over the whole group.
        ArrayView<float> shared = SharedMemory.GetDynamic<float>();
        ArrayView<float> x = a.SubView((long)row0 * k, (long)rows * k);
        if (args.Cached != 0)
        {
            for (int i = Group.IdxX; i < rows * k; i += Group.DimX)
            {
                shared[i] = x[i];
            }

            Group.Barrier();
            x = shared.SubView(0, rows * k);
        }

        int warps = Group.DimX / Warp.WarpSize;
        int stride = Grid.DimX * warps;
        for (int col = (Grid.IdxX * warps) + Warp.WarpIdx; col < args.N; col += stride)
        {
            // Each lane accumulates its share of the column for up to 4 rows.
            long wRow = (long)col * k;
            float s0 = 0f, s1 = 0f, s2 = 0f, s3 = 0f;
            if (args.Wide != 0)
            {
                for (int i = Warp.LaneIdx * VectorWidth; i < k; i += Warp.WarpSize * VectorWidth)
                {
                    Float8 wv = w.Load8(wRow + i);
                    s0 += Dot8(x, i, wv);
                    if (rows > 1)
                    {
                        s1 += Dot8(x, k + i, wv);
                    }

                    if (rows > 2)
                    {
                        s2 += Dot8(x, (2 * k) + i, wv);
                    }

                    if (rows > 3)
                    {
                        s3 += Dot8(x, (3 * k) + i, wv);
                    }
                }
            }
            else
            {
                for (int i = Warp.LaneIdx; i < k; i += Warp.WarpSize)
                {
                    float wv = w.Load(wRow + i);
                    s0 += x[i] * wv;
                    if (rows > 1)
                    {
                        s1 += x[k + i] * wv;
                    }

                    if (rows > 2)
                    {
                        s2 += x[(2 * k) + i] * wv;
                    }

                    if (rows > 3)
                    {
                        s3 += x[(3 * k) + i] * wv;
                    }
                }
            }

            // Butterfly reduction: every lane ends with the four totals; lane r stores row r.
            for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            {
                s0 += Warp.ShuffleXor(s0, offset);
                s1 += Warp.ShuffleXor(s1, offset);
                s2 += Warp.ShuffleXor(s2, offset);
                s3 += Warp.ShuffleXor(s3, offset);
            }

            int lane = Warp.LaneIdx;
            if (lane < rows)
            {
                float sum = lane == 0 ? s0 : lane == 1 ? s1 : lane == 2 ? s2 : s3;
                int row = row0 + lane;
                c[((long)row * args.N) + col] = epilogue.Apply(sum, row, col, args.N);
            }
        }
    }

    /// <summary>Σ x[offset + j] · w.Vj over j &lt; 8.</summary>
    private static float Dot8(ArrayView<float> x, int offset, Float8 w) =>
        (x[offset] * w.V0) + (x[offset + 1] * w.V1) + (x[offset + 2] * w.V2) + (x[offset + 3] * w.V3)
        + (x[offset + 4] * w.V4) + (x[offset + 5] * w.V5) + (x[offset + 6] * w.V6) + (x[offset + 7] * w.V7);

    /// <summary>
    /// The shared-memory tiled product for M &gt; 16. A group of S×S threads computes the 8S×8S tile of C at rows
    /// [gy·8S, +8S), columns [gx·8S, +8S). Thread (tx, ty) owns 8 rows {4ty + i, 4S + 4ty + i} × 8 columns
    /// {4tx + j, 4S + 4tx + j} (i, j &lt; 4): the two halves keep each thread's shared reads 4-float contiguous and
    /// neighbouring threads' stores contiguous. K advances 8 at a time through two shared stages (A and W tiles,
    /// k-major, stride 132): while the group multiplies stage p it loads the next 8 k into stage 1 - p, so one
    /// barrier per step suffices. Zeros fill past M, N and K, so any size works.
    /// </summary>
    internal static void TiledKernel<TWeights, TEpilogue>(
        ArrayView<float> a,
        TWeights w,
        ArrayView<float> c,
        int m,
        int n,
        int k,
        TEpilogue epilogue)
        where TWeights : struct, IGpuWeights
        where TEpilogue : struct, IGpuMatMulEpilogue
    {
        // Two stages of [TileK, TileStride] for A and for W: 16.5 KB (TiledSharedBytes), under ILGPU's 48 KB.
        ArrayView<float> aTiles = SharedMemory.Allocate<float>(2 * TileFloats);
        ArrayView<float> wTiles = SharedMemory.Allocate<float>(2 * TileFloats);

        int side = Group.DimX;
        int tile = 8 * side;
        int half = 4 * side;
        int tx = Group.IdxX;
        int ty = Group.IdxY;
        int row0 = Grid.IdxY * tile;
        int col0 = Grid.IdxX * tile;
        int thread = (ty * side) + tx;
        int threads = side * side;

        Float8 c0 = default, c1 = default, c2 = default, c3 = default;
        Float8 c4 = default, c5 = default, c6 = default, c7 = default;

        // Stage 0 holds k [0, 8) before the loop.
        LoadStage(a, w, aTiles, wTiles, 0, m, n, k, row0, col0, tile, thread, threads, 0);
        Group.Barrier();

        int stage = 0;
        for (int k0 = 0; k0 < k; k0 += TileK)
        {
            // Prefetch the next step into the other stage; nobody reads it until after the barrier below.
            if (k0 + TileK < k)
            {
                LoadStage(a, w, aTiles, wTiles, (1 - stage) * TileFloats, m, n, k, row0, col0, tile, thread, threads, k0 + TileK);
            }

            // Multiply: 8 rank-one updates of this thread's 8×8 sums, operands read 4 floats at a time.
            int offset = stage * TileFloats;
            for (int kk = 0; kk < TileK; kk++)
            {
                int at = offset + (kk * TileStride);
                Float4 aLo = aTiles.SubView(at + (4 * ty), 4).Cast<Float4>()[0];
                Float4 aHi = aTiles.SubView(at + half + (4 * ty), 4).Cast<Float4>()[0];
                Float4 wLo = wTiles.SubView(at + (4 * tx), 4).Cast<Float4>()[0];
                Float4 wHi = wTiles.SubView(at + half + (4 * tx), 4).Cast<Float4>()[0];
                c0 = Update(c0, aLo.X, wLo, wHi);
                c1 = Update(c1, aLo.Y, wLo, wHi);
                c2 = Update(c2, aLo.Z, wLo, wHi);
                c3 = Update(c3, aLo.W, wLo, wHi);
                c4 = Update(c4, aHi.X, wLo, wHi);
                c5 = Update(c5, aHi.Y, wLo, wHi);
                c6 = Update(c6, aHi.Z, wLo, wHi);
                c7 = Update(c7, aHi.W, wLo, wHi);
            }

            // Barrier: the next stage is complete, and this one may be overwritten.
            Group.Barrier();
            stage = 1 - stage;
        }

        // Store the outputs that lie inside C through the epilogue.
        int rowLo = row0 + (4 * ty);
        int rowHi = row0 + half + (4 * ty);
        int colLo = col0 + (4 * tx);
        int colHi = col0 + half + (4 * tx);
        StoreRow(c, epilogue, m, n, rowLo, colLo, colHi, c0);
        StoreRow(c, epilogue, m, n, rowLo + 1, colLo, colHi, c1);
        StoreRow(c, epilogue, m, n, rowLo + 2, colLo, colHi, c2);
        StoreRow(c, epilogue, m, n, rowLo + 3, colLo, colHi, c3);
        StoreRow(c, epilogue, m, n, rowHi, colLo, colHi, c4);
        StoreRow(c, epilogue, m, n, rowHi + 1, colLo, colHi, c5);
        StoreRow(c, epilogue, m, n, rowHi + 2, colLo, colHi, c6);
        StoreRow(c, epilogue, m, n, rowHi + 3, colLo, colHi, c7);
    }

    /// <summary>
    /// Copies A[row0 .. +tile, k0 .. +8] and W[col0 .. +tile, k0 .. +8] into one stage, k-major: consecutive
    /// threads read consecutive k of one row (a 32-byte sector per row), zeros outside the matrices.
    /// </summary>
    private static void LoadStage<TWeights>(
        ArrayView<float> a,
        TWeights w,
        ArrayView<float> aTiles,
        ArrayView<float> wTiles,
        int offset,
        int m,
        int n,
        int k,
        int row0,
        int col0,
        int tile,
        int thread,
        int threads,
        int k0)
        where TWeights : struct, IGpuWeights
    {
        for (int l = thread; l < tile * TileK; l += threads)
        {
            int r = l / TileK;
            int kk = l - (r * TileK);
            int gk = k0 + kk;
            int gr = row0 + r;
            int gc = col0 + r;
            int at = offset + (kk * TileStride) + r;
            aTiles[at] = gr < m && gk < k ? a[((long)gr * k) + gk] : 0f;
            wTiles[at] = gc < n && gk < k ? w.Load(((long)gc * k) + gk) : 0f;
        }
    }

    /// <summary>acc + a · [wLo, wHi]: one row of a thread's rank-one update.</summary>
    private static Float8 Update(Float8 acc, float a, Float4 wLo, Float4 wHi) => new()
    {
        V0 = acc.V0 + (a * wLo.X),
        V1 = acc.V1 + (a * wLo.Y),
        V2 = acc.V2 + (a * wLo.Z),
        V3 = acc.V3 + (a * wLo.W),
        V4 = acc.V4 + (a * wHi.X),
        V5 = acc.V5 + (a * wHi.Y),
        V6 = acc.V6 + (a * wHi.Z),
        V7 = acc.V7 + (a * wHi.W),
    };

    /// <summary>Stores one row of a thread's outputs: columns colLo + [0, 4) from V0..V3, colHi + [0, 4) from V4..V7.</summary>
    private static void StoreRow<TEpilogue>(
        ArrayView<float> c,
        TEpilogue epilogue,
        int m,
        int n,
        int row,
        int colLo,
        int colHi,
        Float8 v)
        where TEpilogue : struct, IGpuMatMulEpilogue
    {
        if (row >= m)
        {
            return;
        }

        Store(c, epilogue, n, row, colLo, v.V0, v.V1, v.V2, v.V3);
        Store(c, epilogue, n, row, colHi, v.V4, v.V5, v.V6, v.V7);
    }

    private static void Store<TEpilogue>(
        ArrayView<float> c,
        TEpilogue epilogue,
        int n,
        int row,
        int col,
        float v0,
        float v1,
        float v2,
        float v3)
        where TEpilogue : struct, IGpuMatMulEpilogue
    {
        long start = ((long)row * n) + col;
        if (col < n)
        {
            c[start] = epilogue.Apply(v0, row, col, n);
        }

        if (col + 1 < n)
        {
            c[start + 1] = epilogue.Apply(v1, row, col + 1, n);
        }

        if (col + 2 < n)
        {
            c[start + 2] = epilogue.Apply(v2, row, col + 2, n);
        }

        if (col + 3 < n)
        {
            c[start + 3] = epilogue.Apply(v3, row, col + 3, n);
        }
    }
}
