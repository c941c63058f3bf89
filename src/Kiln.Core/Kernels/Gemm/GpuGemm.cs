// The ILGPU matrix product C[M, N] = epilogue(A[M, K] · W[N, K]ᵀ), same contract as the CPU path.
//
// TiledKernel (M > 1): explicitly grouped, a group of S×S threads (S = 16 on GPUs, 8 where a group holds fewer
// than 256 threads, as on the test CPU accelerator) computes a (4S)×(4S) tile of C, 4×4 outputs per thread at
// rows ty + i·S and columns tx + j·S (so neighbouring threads store neighbouring columns). K advances in steps
// of 16: the group copies A[rows, 16] and W[cols, 16] into shared memory, k-major with a padded stride of 65
// floats (no bank conflicts; 2 × 16 × 65 floats = 8.3 KB, far below ILGPU's 48 KB per group), with zeros past
// M, N and K, so any size works; then every thread runs 16 rank-one updates of its 16 sums from shared memory.
// VectorKernel (M = 1): one warp per output column, lanes stride K by the warp size, then a shuffle reduction.
//
// Weights are read through IGpuWeights: float32, float16 as ILGPU.Half, bfloat16 as ushort widened with
// Interop.IntAsFloat(bits << 16). No FMA intrinsic (a·b + c lets ptxas fuse), no System.Half, no throw.
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;
using GpuHalf = ILGPU.Half;

// ILGPU's CPU accelerator runs kernels from a generated assembly that must see the internal weight readers.
[assembly: System.Runtime.CompilerServices.InternalsVisibleTo("ILGPURuntime")]

namespace Kiln.Kernels.Gemm;

/// <summary>Reads one weight element, widened to float32, inside an ILGPU kernel.</summary>
internal interface IGpuWeights
{
    /// <summary>Element <paramref name="index"/> of the row-major [N, K] weights.</summary>
    float Load(long index);
}

/// <summary>float32 weights.</summary>
internal struct GpuFloat32Weights : IGpuWeights
{
    /// <summary>The [N, K] weights.</summary>
    public ArrayView<float> Data;

    /// <inheritdoc />
    public readonly float Load(long index) => Data[index];
}

/// <summary>float16 weights, as ILGPU.Half (System.Half does not compile in kernels).</summary>
internal struct GpuFloat16Weights : IGpuWeights
{
    /// <summary>The [N, K] weights.</summary>
    public ArrayView<GpuHalf> Data;

    /// <inheritdoc />
    public readonly float Load(long index) => (float)Data[index];
}

/// <summary>bfloat16 weights, stored as ushort bits and widened by a 16-bit shift.</summary>
internal struct GpuBFloat16Weights : IGpuWeights
{
    /// <summary>The [N, K] weights as bit patterns.</summary>
    public ArrayView<ushort> Data;

    /// <inheritdoc />
    public readonly float Load(long index) => Interop.IntAsFloat((uint)Data[index] << 16);
}

/// <summary>The ILGPU kernels of the matrix product and their launch.</summary>
internal static class GpuGemm
{
    /// <summary>Steps of K staged in shared memory per pass.</summary>
    public const int TileK = 16;

    /// <summary>Rows (and columns) of the largest group tile: 16 threads × 4 outputs.</summary>
    public const int MaxTile = 64;

    /// <summary>
    /// Floats between the k-rows of a shared tile: one more than <see cref="MaxTile"/>, so that the 16 threads
    /// storing one row's 16 k values hit 16 different banks.
    /// </summary>
    public const int TileStride = MaxTile + 1;

    /// <summary>
    /// Every kernel of the matrix product, closed over each weight reader with <see cref="IdentityEpilogue"/>, and
    /// over float32 weights with the generated ResidualAdd epilogue, for offline PTX compilation by the tests.
    /// </summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } = ListKernels();

    private static GeneratedKernel[] ListKernels()
    {
        List<GeneratedKernel> kernels = new();
        (string Op, string Method)[] methods = [("GemmTiled", nameof(TiledKernel)), ("GemmVector", nameof(VectorKernel))];
        Type[] readers = [typeof(GpuFloat32Weights), typeof(GpuFloat16Weights), typeof(GpuBFloat16Weights)];
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
                Launch(device, a, new GpuFloat32Weights { Data = w.View<float>() }, c, m, n, k, epilogue);
                break;
            case DType.Float16:
                Launch(device, a, new GpuFloat16Weights { Data = w.View<GpuHalf>() }, c, m, n, k, epilogue);
                break;
            default:
                Launch(device, a, new GpuBFloat16Weights { Data = w.View<ushort>() }, c, m, n, k, epilogue);
                break;
        }
    }

    private static void Launch<TWeights, TEpilogue>(
        IlgpuDevice device,
        Tensor a,
        TWeights weights,
        Tensor c,
        int m,
        int n,
        int k,
        TEpilogue epilogue)
        where TWeights : struct, IGpuWeights
        where TEpilogue : struct, IGpuMatMulEpilogue
    {
        Accelerator accelerator = device.Accelerator;
        int maxGroup = accelerator.MaxNumThreadsPerGroup;
        if (m == 1)
        {
            // One warp per column; as many warps per group as fit, up to 8.
            int warp = accelerator.WarpSize;
            int warps = Math.Max(1, Math.Min(8, maxGroup / warp));
            Action<KernelConfig, ArrayView<float>, TWeights, ArrayView<float>, int, int, int, TEpilogue> vector =
                device.GetKernel(Keys<TWeights, TEpilogue>.Vector, static acc =>
                    acc.LoadStreamKernel<ArrayView<float>, TWeights, ArrayView<float>, int, int, int, TEpilogue>(
                        VectorKernel<TWeights, TEpilogue>));
            KernelConfig config = new(new Index2D((n + warps - 1) / warps, m), new Index2D(warps * warp, 1));
            vector(config, a.View<float>(), weights, c.View<float>(), m, n, k, epilogue);
            return;
        }

        // S×S threads per group, each computing 4×4 outputs.
        int side = maxGroup >= 256 ? 16 : 8;
        int tile = 4 * side;
        Action<KernelConfig, ArrayView<float>, TWeights, ArrayView<float>, int, int, int, TEpilogue> tiled =
            device.GetKernel(Keys<TWeights, TEpilogue>.Tiled, static acc =>
                acc.LoadStreamKernel<ArrayView<float>, TWeights, ArrayView<float>, int, int, int, TEpilogue>(
                    TiledKernel<TWeights, TEpilogue>));
        KernelConfig tiles = new(new Index2D((n + tile - 1) / tile, (m + tile - 1) / tile), new Index2D(side, side));
        tiled(tiles, a.View<float>(), weights, c.View<float>(), m, n, k, epilogue);
    }

    /// <summary>The cache keys of one kernel instantiation (compared by reference).</summary>
    private static class Keys<TWeights, TEpilogue>
    {
        public static readonly object Tiled = new();
        public static readonly object Vector = new();
    }

    /// <summary>
    /// The shared-memory tiled product: group (gx, gy) computes C rows [gy·4S, +4S), columns [gx·4S, +4S).
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
        // Shared tiles, k-major: aTile[kk·TileStride + r] = A[row0 + r, k0 + kk], wTile likewise for W rows.
        ArrayView<float> aTile = SharedMemory.Allocate<float>(TileK * TileStride);
        ArrayView<float> wTile = SharedMemory.Allocate<float>(TileK * TileStride);

        int tx = Group.IdxX;
        int ty = Group.IdxY;
        int side = Group.DimX;
        int tile = 4 * side;
        int row0 = Grid.IdxY * tile;
        int col0 = Grid.IdxX * tile;
        int thread = (ty * side) + tx;
        int threads = side * side;

        float s00 = 0f, s01 = 0f, s02 = 0f, s03 = 0f;
        float s10 = 0f, s11 = 0f, s12 = 0f, s13 = 0f;
        float s20 = 0f, s21 = 0f, s22 = 0f, s23 = 0f;
        float s30 = 0f, s31 = 0f, s32 = 0f, s33 = 0f;

        for (int k0 = 0; k0 < k; k0 += TileK)
        {
            // Load: consecutive threads read consecutive k of one row (coalesced), zeros outside the matrices.
            for (int l = thread; l < tile * TileK; l += threads)
            {
                int r = l / TileK;
                int kk = l - (r * TileK);
                int gk = k0 + kk;
                int gr = row0 + r;
                int gc = col0 + r;
                aTile[(kk * TileStride) + r] = gr < m && gk < k ? a[((long)gr * k) + gk] : 0f;
                wTile[(kk * TileStride) + r] = gc < n && gk < k ? w.Load(((long)gc * k) + gk) : 0f;
            }

            // Barrier: the tiles are complete.
            Group.Barrier();

            // Multiply: 16 rank-one updates of this thread's 4×4 sums.
            for (int kk = 0; kk < TileK; kk++)
            {
                int offset = kk * TileStride;
                float a0 = aTile[offset + ty];
                float a1 = aTile[offset + ty + side];
                float a2 = aTile[offset + ty + (2 * side)];
                float a3 = aTile[offset + ty + (3 * side)];
                float w0 = wTile[offset + tx];
                float w1 = wTile[offset + tx + side];
                float w2 = wTile[offset + tx + (2 * side)];
                float w3 = wTile[offset + tx + (3 * side)];
                s00 += a0 * w0; s01 += a0 * w1; s02 += a0 * w2; s03 += a0 * w3;
                s10 += a1 * w0; s11 += a1 * w1; s12 += a1 * w2; s13 += a1 * w3;
                s20 += a2 * w0; s21 += a2 * w1; s22 += a2 * w2; s23 += a2 * w3;
                s30 += a3 * w0; s31 += a3 * w1; s32 += a3 * w2; s33 += a3 * w3;
            }

            // Barrier: everyone is done reading before the next load overwrites the tiles.
            Group.Barrier();
        }

        // Store the 16 outputs that lie inside C through the epilogue.
        int row = row0 + ty;
        int col = col0 + tx;
        Store(c, epilogue, m, n, row, col, side, s00, s01, s02, s03);
        Store(c, epilogue, m, n, row + side, col, side, s10, s11, s12, s13);
        Store(c, epilogue, m, n, row + (2 * side), col, side, s20, s21, s22, s23);
        Store(c, epilogue, m, n, row + (3 * side), col, side, s30, s31, s32, s33);
    }

    private static void Store<TEpilogue>(
        ArrayView<float> c,
        TEpilogue epilogue,
        int m,
        int n,
        int row,
        int col,
        int side,
        float v0,
        float v1,
        float v2,
        float v3)
        where TEpilogue : struct, IGpuMatMulEpilogue
    {
        if (row >= m)
        {
            return;
        }

        long rowStart = (long)row * n;
        if (col < n)
        {
            c[rowStart + col] = epilogue.Apply(v0, row, col, n);
        }

        if (col + side < n)
        {
            c[rowStart + col + side] = epilogue.Apply(v1, row, col + side, n);
        }

        if (col + (2 * side) < n)
        {
            c[rowStart + col + (2 * side)] = epilogue.Apply(v2, row, col + (2 * side), n);
        }

        if (col + (3 * side) < n)
        {
            c[rowStart + col + (3 * side)] = epilogue.Apply(v3, row, col + (3 * side), n);
        }
    }

    /// <summary>
    /// The matrix-vector product: warp w of group g computes C[Grid.IdxY, g·warps + w], its lanes striding K by the
    /// warp size, then summing with shuffles.
    /// </summary>
    internal static void VectorKernel<TWeights, TEpilogue>(
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
        int warps = Group.DimX / Warp.WarpSize;
        int col = (Grid.IdxX * warps) + Warp.WarpIdx;
        int row = Grid.IdxY;

        // Each lane sums every warp-size-th product of the row (coalesced reads).
        float sum = 0f;
        if (col < n && row < m)
        {
            long aRow = (long)row * k;
            long wRow = (long)col * k;
            for (int i = Warp.LaneIdx; i < k; i += Warp.WarpSize)
            {
                sum += a[aRow + i] * w.Load(wRow + i);
            }
        }

        // Reduce across the warp; every lane takes part in the shuffles.
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            sum += Warp.ShuffleDown(sum, offset);
        }

        if (Warp.IsFirstLane && col < n && row < m)
        {
            c[((long)row * n) + col] = epilogue.Apply(sum, row, col, n);
        }
    }
}
