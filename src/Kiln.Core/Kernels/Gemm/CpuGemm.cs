// The packed CPU matrix product C[M, N] = epilogue(A[M, K] · W[N, K]ᵀ) for M too large for CpuGemv, after the
// GotoBLAS/BLIS layering, written for this project:
//
//   for each column block jc of NBlock columns             (the thread's share of N, or all of N)
//     for each K block pc (K split evenly, <= KBlock)      W slice [kc, NBlock] packed once, kept in L2
//       pack W[jc.., pc..] into micro-panels [kc][NR]      (transposed and widened to float32)
//       for each micro-panel of MR rows ir                 A rows [MR, kc] copied to a fixed stride, kept in L1
//         for each W micro-panel jr                        streamed from L2
//           micro-kernel: MR×NR tile += A[ir, pc..] · W[jr, pc..]ᵀ, in registers
//
// Micro-tiles are 14×32 with Vector512 (28 zmm accumulators, 2 for W, 1 broadcast of A) or 6×16 with Vector256
// (12 ymm accumulators, as 16 ymm registers allow). The copied A rows sit MaxKBlock + 16 floats apart, a constant,
// so each broadcast of A is one instruction with a constant displacement. When K spans several K blocks the
// running sums of each tile live in a per-thread partial buffer, never in C: the epilogue sees only finished
// sums and may read C itself. Ragged edges: A rows beyond M are zero, W columns beyond N are packed as zeros,
// and tiles that cross M or N are staged in a small tile and stored with vector epilogues for whole groups of
// 16 or 8 columns and scalar ones for the rest. Threads split N (each packs only its columns of W) unless N has
// too few micro-panels, then M; tiny products stay on the calling thread.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Devices;

namespace Kiln.Kernels.Gemm;

/// <summary>The packed, register-blocked CPU matrix product for M that <see cref="CpuGemv.Handles"/> declines.</summary>
internal static unsafe class CpuGemm
{
    /// <summary>Rows of the largest micro-tile (Vector512).</summary>
    public const int MaxTileRows = 14;

    /// <summary>Columns of the largest micro-tile (Vector512: two vectors).</summary>
    public const int MaxTileColumns = 32;

    /// <summary>The largest K block the A buffer is laid out for.</summary>
    public const int MaxKBlock = 512;

    /// <summary>Floats between copied A rows: MaxKBlock plus one cache line (an odd number of lines, so rows spread
    /// over cache sets). A constant, so that every broadcast of A has a constant displacement.</summary>
    public const int PackedAStride = MaxKBlock + 16;

    /// <summary>
    /// K block (at most <see cref="MaxKBlock"/>, a multiple of 16): one W micro-panel [KBlock, 32] is 32 KiB and
    /// one A micro-panel [14, KBlock] 14 KiB at 256. Settable for tuning sweeps only.
    /// </summary>
    internal static int KBlock = 256;

    /// <summary>Column block (a multiple of 32): the packed W slice [KBlock, NBlock] is 512 KiB at 256 × 512, a
    /// quarter of the 2 MiB L2. Settable for tuning sweeps only.</summary>
    internal static int NBlock = 512;

    /// <summary>Products below this many multiply-adds run on the calling thread: waking workers costs more.</summary>
    public const long SingleThreadWork = 1L << 20;

    /// <summary>The widest kernel family this machine runs well.</summary>
    public static KernelWidth BestWidth { get; } =
        Vector512.IsHardwareAccelerated && Avx512F.IsSupported ? KernelWidth.Vector512
        : Vector256.IsHardwareAccelerated && Fma.IsSupported ? KernelWidth.Vector256
        : KernelWidth.Scalar;

    /// <summary>Computes C = epilogue(A · Wᵀ) with packed panels on the pool's threads.</summary>
    public static void Run<TEpilogue>(
        WorkerPool pool,
        float* a,
        void* w,
        DType wType,
        float* c,
        int m,
        int n,
        int k,
        ref TEpilogue epilogue,
        KernelWidth width,
        float* prepacked = null)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        switch (wType)
        {
            case DType.Float32:
                Run<Float32Weights, TEpilogue>(pool, a, (byte*)w, c, m, n, k, ref epilogue, width, prepacked);
                break;
            case DType.Float16:
                Run<Float16Weights, TEpilogue>(pool, a, (byte*)w, c, m, n, k, ref epilogue, width, prepacked);
                break;
            case DType.Q8_0:
                Run<Q8_0Weights, TEpilogue>(pool, a, (byte*)w, c, m, n, k, ref epilogue, width, prepacked);
                break;
            default:
                Run<BFloat16Weights, TEpilogue>(pool, a, (byte*)w, c, m, n, k, ref epilogue, width, prepacked);
                break;
        }
    }

    /// <summary>
    /// Packs all of W [N, K] into micro-panels for the whole K, [ceil(N / NR)][K][NR] (the layout
    /// <see cref="MatMul.Prepack"/> stores and <see cref="Run{TEpilogue}"/> reads when given prepacked panels).
    /// </summary>
    public static void PackPanels(void* w, DType wType, int n, int k, int tileColumns, float* panels)
    {
        switch (wType)
        {
            case DType.Float32:
                PackW<Float32Weights>((byte*)w, k, 0, n, 0, k, tileColumns, panels);
                break;
            case DType.Float16:
                PackW<Float16Weights>((byte*)w, k, 0, n, 0, k, tileColumns, panels);
                break;
            case DType.Q8_0:
                PackW<Q8_0Weights>((byte*)w, k, 0, n, 0, k, tileColumns, panels);
                break;
            default:
                PackW<BFloat16Weights>((byte*)w, k, 0, n, 0, k, tileColumns, panels);
                break;
        }
    }

    private static void Run<TWeights, TEpilogue>(
        WorkerPool pool,
        float* a,
        byte* w,
        float* c,
        int m,
        int n,
        int k,
        ref TEpilogue epilogue,
        KernelWidth width,
        float* prepacked)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        // Tile shape of the kernel family.
        int tileRows = width == KernelWidth.Vector512 ? 14 : width == KernelWidth.Vector256 ? 6 : 1;
        int tileColumns = width == KernelWidth.Vector512 ? 32 : width == KernelWidth.Vector256 ? 16 : 1;
        Job<TEpilogue> job = new()
        {
            A = a,
            W = w,
            C = c,
            M = m,
            N = n,
            K = k,
            Epilogue = epilogue,
            Width = width,
            TileRows = tileRows,
            TileColumns = tileColumns,
            Prepacked = prepacked,
        };

        // Split N when it has enough micro-panels for every thread, else M; tiny products are not split.
        int threads = (long)m * n * k < SingleThreadWork ? 1 : pool.ThreadCount;
        int panels = (n + tileColumns - 1) / tileColumns;
        int rowGroups = (m + tileRows - 1) / tileRows;
        job.SplitColumns = panels >= 2 * threads || panels >= rowGroups;
        int count = job.SplitColumns ? panels : rowGroups;
        int grain = threads == 1 ? count : 1;
        pool.For(count, grain, &Body<TWeights, TEpilogue>, &job);
    }

    /// <summary>Everything a thread needs to compute its share; lives on the caller's stack during the loop.</summary>
    private struct Job<TEpilogue>
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        public float* A;
        public byte* W;
        public float* C;
        public int M;
        public int N;
        public int K;
        public TEpilogue Epilogue;
        public KernelWidth Width;
        public int TileRows;
        public int TileColumns;
        public bool SplitColumns;
        public float* Prepacked;
    }

    private static void Body<TWeights, TEpilogue>(void* state, int start, int end)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        // Turn the range of micro-panels or row groups into a block of C.
        Job<TEpilogue>* job = (Job<TEpilogue>*)state;
        int rowStart = 0;
        int rowEnd = job->M;
        int colStart = 0;
        int colEnd = job->N;
        if (job->SplitColumns)
        {
            colStart = start * job->TileColumns;
            colEnd = Math.Min(end * job->TileColumns, job->N);
        }
        else
        {
            rowStart = start * job->TileRows;
            rowEnd = Math.Min(end * job->TileRows, job->M);
        }

        // Each thread applies its own copy of the epilogue.
        TEpilogue epilogue = job->Epilogue;
        if (job->Width == KernelWidth.Scalar)
        {
            ScalarBlock<TWeights, TEpilogue>(job, rowStart, rowEnd, colStart, colEnd, ref epilogue);
        }
        else
        {
            Block<TWeights, TEpilogue>(job, rowStart, rowEnd, colStart, colEnd, ref epilogue);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block<TWeights, TEpilogue>(
        Job<TEpilogue>* job,
        int rowStart,
        int rowEnd,
        int colStart,
        int colEnd,
        ref TEpilogue epilogue)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        GemmScratch scratch = GemmScratch.Current;
        bool wide = job->Width == KernelWidth.Vector512;
        int tileRows = job->TileRows;
        int tileColumns = job->TileColumns;
        int k = job->K;
        int n = job->N;
        int kBlock = KBlock;
        int nBlock = NBlock;
        bool blockedK = k > kBlock;
        int kStep = BalancedKStep(k, kBlock);
        int rowGroups = (rowEnd - rowStart + tileRows - 1) / tileRows;

        for (int jc = colStart; jc < colEnd; jc += nBlock)
        {
            // The column block and its buffers: packed W [panels][kc][NR], partial tiles [rowGroups][panels].
            int nc = Math.Min(nBlock, colEnd - jc);
            int panels = (nc + tileColumns - 1) / tileColumns;
            float* packedW = job->Prepacked is null ? scratch.PackedW((long)panels * tileColumns * kBlock) : null;
            float* partials = blockedK ? scratch.Partials((long)rowGroups * panels * tileRows * tileColumns) : null;

            for (int pc = 0; pc < k; pc += kStep)
            {
                // Pack the W slice [jc .. jc + nc, pc .. pc + kc) once for all rows.
                int kc = Math.Min(kStep, k - pc);
                bool accumulate = pc > 0;
                bool final = pc + kc == k;
                if (job->Prepacked is null)
                {
                    PackW<TWeights>(job->W, k, jc, nc, pc, kc, tileColumns, packedW);
                }

                for (int ir = rowStart, group = 0; ir < rowEnd; ir += tileRows, group++)
                {
                    // Copy the A rows of this micro-panel to the fixed stride, zero rows past M.
                    int rows = Math.Min(tileRows, rowEnd - ir);
                    CopyA(job->A + ((long)ir * k) + pc, k, rows, kc, tileRows, scratch.PackedA);

                    for (int p = 0; p < panels; p++)
                    {
                        // One micro-tile: C[ir.., col..] over this K block.
                        int col = jc + (p * tileColumns);
                        int cols = Math.Min(tileColumns, jc + nc - col);
                        float* tile = blockedK ? partials + ((((long)group * panels) + p) * tileRows * tileColumns) : null;
                        float* packedPanel = job->Prepacked is null
                            ? packedW + ((long)p * kc * tileColumns)
                            : job->Prepacked + (((((long)jc / tileColumns) + p) * k) + pc) * tileColumns;
                        float* cTile = job->C + ((long)ir * n) + col;
                        if (wide)
                        {
                            Kernel14x32(scratch.PackedA, packedPanel, kc, tile, accumulate, final, cTile, n, ir, col,
                                rows, cols, ref epilogue, scratch.EdgeTile);
                        }
                        else
                        {
                            Kernel6x16(scratch.PackedA, packedPanel, kc, tile, accumulate, final, cTile, n, ir, col,
                                rows, cols, ref epilogue, scratch.EdgeTile);
                        }
                    }
                }
            }
        }
    }

    /// <summary>
    /// The K block size for a product over <paramref name="k"/>: K split into equal blocks of at most
    /// <paramref name="kBlock"/>, rounded up to whole 16-float cache lines (K = 288 gives 144 + 144, not 256 + 32).
    /// </summary>
    private static int BalancedKStep(int k, int kBlock)
    {
        int blocks = (k + kBlock - 1) / kBlock;
        int step = (k + blocks - 1) / blocks;
        return Math.Min(kBlock, (step + 15) / 16 * 16);
    }

    /// <summary>
    /// Packs W rows [n0, n0 + nc), columns [k0, k0 + kc) into micro-panels of <paramref name="tileColumns"/> rows:
    /// panel p holds, for each k, the widened values of W rows n0 + p·NR .. + NR - 1 (zeros past n0 + nc).
    /// With AVX-512, 16 rows × 16 k at a time are loaded along k and transposed in registers; with AVX2, 8 rows × 8 k.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackW<TWeights>(byte* w, int k, int n0, int nc, int k0, int kc, int tileColumns, float* packed)
        where TWeights : unmanaged, IWeightFormat
    {
        long rowBytes = TWeights.RowBytes(k);
        int panels = (nc + tileColumns - 1) / tileColumns;
        for (int p = 0; p < panels; p++)
        {
            float* panel = packed + ((long)p * kc * tileColumns);
            for (int half = 0; half < tileColumns; half += 16)
            {
                // Sixteen W rows (fewer at the edge of N) fill columns [half, half + 16) of the panel.
                int first = (p * tileColumns) + half;
                int valid = Math.Clamp(nc - first, 0, 16);
                byte* source = w + ((n0 + (long)first) * rowBytes);
                int i = 0;
                if (Avx512F.IsSupported && valid == 16)
                {
                    for (; i + 16 <= kc; i += 16)
                    {
                        Transpose16<TWeights>(source, rowBytes, k0 + i, panel + ((long)i * tileColumns) + half, tileColumns);
                    }
                }
                else if (Avx.IsSupported && valid == 16)
                {
                    for (; i + 8 <= kc; i += 8)
                    {
                        float* destination = panel + ((long)i * tileColumns) + half;
                        Transpose8<TWeights>(source, rowBytes, k0 + i, destination, tileColumns);
                        Transpose8<TWeights>(source + (8 * rowBytes), rowBytes, k0 + i, destination + 8, tileColumns);
                    }
                }

                // The rest, element by element: the k tail, and panels that cross the end of N.
                for (; i < kc; i++)
                {
                    float* destination = panel + ((long)i * tileColumns) + half;
                    int j = 0;
                    for (; j < valid; j++)
                    {
                        destination[j] = TWeights.Load1(source + (j * rowBytes), k0 + i);
                    }

                    for (; j < 16; j++)
                    {
                        destination[j] = 0f;
                    }
                }
            }
        }
    }

    /// <summary>
    /// <see cref="Transpose16{TWeights}"/> for AVX: 8 values along k of each of 8 W rows, stored transposed (8 floats
    /// at each of 8 destination rows).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8<TWeights>(byte* source, long rowBytes, int index, float* destination, int stride)
        where TWeights : unmanaged, IWeightFormat
    {
        // Stage 1: interleave pairs of rows; per 128-bit half H, t0 = [r0[4H], r1[4H], r0[4H+1], r1[4H+1]].
        Vector256<float> r0 = TWeights.Load8(source, index);
        Vector256<float> r1 = TWeights.Load8(source + rowBytes, index);
        Vector256<float> t0 = Avx.UnpackLow(r0, r1);
        Vector256<float> t1 = Avx.UnpackHigh(r0, r1);
        Vector256<float> r2 = TWeights.Load8(source + (2 * rowBytes), index);
        Vector256<float> r3 = TWeights.Load8(source + (3 * rowBytes), index);
        Vector256<float> t2 = Avx.UnpackLow(r2, r3);
        Vector256<float> t3 = Avx.UnpackHigh(r2, r3);
        Vector256<float> r4 = TWeights.Load8(source + (4 * rowBytes), index);
        Vector256<float> r5 = TWeights.Load8(source + (5 * rowBytes), index);
        Vector256<float> t4 = Avx.UnpackLow(r4, r5);
        Vector256<float> t5 = Avx.UnpackHigh(r4, r5);
        Vector256<float> r6 = TWeights.Load8(source + (6 * rowBytes), index);
        Vector256<float> r7 = TWeights.Load8(source + (7 * rowBytes), index);
        Vector256<float> t6 = Avx.UnpackLow(r6, r7);
        Vector256<float> t7 = Avx.UnpackHigh(r6, r7);

        // Stage 2: per half H, u0 = rows 0-3 of column 4H, u1 of column 4H + 1, u2 of 4H + 2, u3 of 4H + 3; u4-u7 the
        // same for rows 4-7.
        Vector256<float> u0 = Avx.Shuffle(t0, t2, 0x44);
        Vector256<float> u1 = Avx.Shuffle(t0, t2, 0xEE);
        Vector256<float> u2 = Avx.Shuffle(t1, t3, 0x44);
        Vector256<float> u3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> u4 = Avx.Shuffle(t4, t6, 0x44);
        Vector256<float> u5 = Avx.Shuffle(t4, t6, 0xEE);
        Vector256<float> u6 = Avx.Shuffle(t5, t7, 0x44);
        Vector256<float> u7 = Avx.Shuffle(t5, t7, 0xEE);

        // Stage 3: join the halves: column c < 4 from the low halves, column c + 4 from the high ones.
        Avx.Permute2x128(u0, u4, 0x20).Store(destination + (0 * stride));
        Avx.Permute2x128(u1, u5, 0x20).Store(destination + (1 * stride));
        Avx.Permute2x128(u2, u6, 0x20).Store(destination + (2 * stride));
        Avx.Permute2x128(u3, u7, 0x20).Store(destination + (3 * stride));
        Avx.Permute2x128(u0, u4, 0x31).Store(destination + (4 * stride));
        Avx.Permute2x128(u1, u5, 0x31).Store(destination + (5 * stride));
        Avx.Permute2x128(u2, u6, 0x31).Store(destination + (6 * stride));
        Avx.Permute2x128(u3, u7, 0x31).Store(destination + (7 * stride));
    }

    /// <summary>
    /// Loads 16 values along k (from element <paramref name="index"/>) of each of 16 W rows (<paramref name="rowBytes"/> apart) and stores them
    /// transposed: destination row kk (<paramref name="stride"/> floats apart) gets the 16 rows' values at kk.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose16<TWeights>(byte* source, long rowBytes, int index, float* destination, int stride)
        where TWeights : unmanaged, IWeightFormat
    {
        // Stage 1: interleave pairs of rows; per 128-bit block L, t0 = [r0[4L], r1[4L], r0[4L+1], r1[4L+1]].
        Vector512<float> r0 = TWeights.Load16(source + (0 * rowBytes), index);
        Vector512<float> r1 = TWeights.Load16(source + (1 * rowBytes), index);
        Vector512<double> t0 = Avx512F.UnpackLow(r0, r1).AsDouble();
        Vector512<double> t1 = Avx512F.UnpackHigh(r0, r1).AsDouble();
        Vector512<float> r2 = TWeights.Load16(source + (2 * rowBytes), index);
        Vector512<float> r3 = TWeights.Load16(source + (3 * rowBytes), index);
        Vector512<double> t2 = Avx512F.UnpackLow(r2, r3).AsDouble();
        Vector512<double> t3 = Avx512F.UnpackHigh(r2, r3).AsDouble();
        Vector512<float> r4 = TWeights.Load16(source + (4 * rowBytes), index);
        Vector512<float> r5 = TWeights.Load16(source + (5 * rowBytes), index);
        Vector512<double> t4 = Avx512F.UnpackLow(r4, r5).AsDouble();
        Vector512<double> t5 = Avx512F.UnpackHigh(r4, r5).AsDouble();
        Vector512<float> r6 = TWeights.Load16(source + (6 * rowBytes), index);
        Vector512<float> r7 = TWeights.Load16(source + (7 * rowBytes), index);
        Vector512<double> t6 = Avx512F.UnpackLow(r6, r7).AsDouble();
        Vector512<double> t7 = Avx512F.UnpackHigh(r6, r7).AsDouble();
        Vector512<float> r8 = TWeights.Load16(source + (8 * rowBytes), index);
        Vector512<float> r9 = TWeights.Load16(source + (9 * rowBytes), index);
        Vector512<double> t8 = Avx512F.UnpackLow(r8, r9).AsDouble();
        Vector512<double> t9 = Avx512F.UnpackHigh(r8, r9).AsDouble();
        Vector512<float> r10 = TWeights.Load16(source + (10 * rowBytes), index);
        Vector512<float> r11 = TWeights.Load16(source + (11 * rowBytes), index);
        Vector512<double> t10 = Avx512F.UnpackLow(r10, r11).AsDouble();
        Vector512<double> t11 = Avx512F.UnpackHigh(r10, r11).AsDouble();
        Vector512<float> r12 = TWeights.Load16(source + (12 * rowBytes), index);
        Vector512<float> r13 = TWeights.Load16(source + (13 * rowBytes), index);
        Vector512<double> t12 = Avx512F.UnpackLow(r12, r13).AsDouble();
        Vector512<double> t13 = Avx512F.UnpackHigh(r12, r13).AsDouble();
        Vector512<float> r14 = TWeights.Load16(source + (14 * rowBytes), index);
        Vector512<float> r15 = TWeights.Load16(source + (15 * rowBytes), index);
        Vector512<double> t14 = Avx512F.UnpackLow(r14, r15).AsDouble();
        Vector512<double> t15 = Avx512F.UnpackHigh(r14, r15).AsDouble();

        // Stage 2: interleave pairs of pairs as doubles; block L of u[4g + c] is column 4L + c of rows 4g .. 4g + 3.
        Vector512<float> u0 = Avx512F.UnpackLow(t0, t2).AsSingle();
        Vector512<float> u1 = Avx512F.UnpackHigh(t0, t2).AsSingle();
        Vector512<float> u2 = Avx512F.UnpackLow(t1, t3).AsSingle();
        Vector512<float> u3 = Avx512F.UnpackHigh(t1, t3).AsSingle();
        Vector512<float> u4 = Avx512F.UnpackLow(t4, t6).AsSingle();
        Vector512<float> u5 = Avx512F.UnpackHigh(t4, t6).AsSingle();
        Vector512<float> u6 = Avx512F.UnpackLow(t5, t7).AsSingle();
        Vector512<float> u7 = Avx512F.UnpackHigh(t5, t7).AsSingle();
        Vector512<float> u8 = Avx512F.UnpackLow(t8, t10).AsSingle();
        Vector512<float> u9 = Avx512F.UnpackHigh(t8, t10).AsSingle();
        Vector512<float> u10 = Avx512F.UnpackLow(t9, t11).AsSingle();
        Vector512<float> u11 = Avx512F.UnpackHigh(t9, t11).AsSingle();
        Vector512<float> u12 = Avx512F.UnpackLow(t12, t14).AsSingle();
        Vector512<float> u13 = Avx512F.UnpackHigh(t12, t14).AsSingle();
        Vector512<float> u14 = Avx512F.UnpackLow(t13, t15).AsSingle();
        Vector512<float> u15 = Avx512F.UnpackHigh(t13, t15).AsSingle();

        // Stages 3 and 4: gather 128-bit blocks; column 4L + c = [u[c].L, u[4 + c].L, u[8 + c].L, u[12 + c].L].
        Vector512<float> e0 = Avx512F.Shuffle4x128(u0, u4, 0x88);
        Vector512<float> o0 = Avx512F.Shuffle4x128(u0, u4, 0xDD);
        Vector512<float> eh0 = Avx512F.Shuffle4x128(u8, u12, 0x88);
        Vector512<float> oh0 = Avx512F.Shuffle4x128(u8, u12, 0xDD);
        Avx512F.Shuffle4x128(e0, eh0, 0x88).Store(destination + (0 * stride));
        Avx512F.Shuffle4x128(o0, oh0, 0x88).Store(destination + (4 * stride));
        Avx512F.Shuffle4x128(e0, eh0, 0xDD).Store(destination + (8 * stride));
        Avx512F.Shuffle4x128(o0, oh0, 0xDD).Store(destination + (12 * stride));
        Vector512<float> e1 = Avx512F.Shuffle4x128(u1, u5, 0x88);
        Vector512<float> o1 = Avx512F.Shuffle4x128(u1, u5, 0xDD);
        Vector512<float> eh1 = Avx512F.Shuffle4x128(u9, u13, 0x88);
        Vector512<float> oh1 = Avx512F.Shuffle4x128(u9, u13, 0xDD);
        Avx512F.Shuffle4x128(e1, eh1, 0x88).Store(destination + (1 * stride));
        Avx512F.Shuffle4x128(o1, oh1, 0x88).Store(destination + (5 * stride));
        Avx512F.Shuffle4x128(e1, eh1, 0xDD).Store(destination + (9 * stride));
        Avx512F.Shuffle4x128(o1, oh1, 0xDD).Store(destination + (13 * stride));
        Vector512<float> e2 = Avx512F.Shuffle4x128(u2, u6, 0x88);
        Vector512<float> o2 = Avx512F.Shuffle4x128(u2, u6, 0xDD);
        Vector512<float> eh2 = Avx512F.Shuffle4x128(u10, u14, 0x88);
        Vector512<float> oh2 = Avx512F.Shuffle4x128(u10, u14, 0xDD);
        Avx512F.Shuffle4x128(e2, eh2, 0x88).Store(destination + (2 * stride));
        Avx512F.Shuffle4x128(o2, oh2, 0x88).Store(destination + (6 * stride));
        Avx512F.Shuffle4x128(e2, eh2, 0xDD).Store(destination + (10 * stride));
        Avx512F.Shuffle4x128(o2, oh2, 0xDD).Store(destination + (14 * stride));
        Vector512<float> e3 = Avx512F.Shuffle4x128(u3, u7, 0x88);
        Vector512<float> o3 = Avx512F.Shuffle4x128(u3, u7, 0xDD);
        Vector512<float> eh3 = Avx512F.Shuffle4x128(u11, u15, 0x88);
        Vector512<float> oh3 = Avx512F.Shuffle4x128(u11, u15, 0xDD);
        Avx512F.Shuffle4x128(e3, eh3, 0x88).Store(destination + (3 * stride));
        Avx512F.Shuffle4x128(o3, oh3, 0x88).Store(destination + (7 * stride));
        Avx512F.Shuffle4x128(e3, eh3, 0xDD).Store(destination + (11 * stride));
        Avx512F.Shuffle4x128(o3, oh3, 0xDD).Store(destination + (15 * stride));
    }

    /// <summary>Copies A rows [rows, kc] (row stride <paramref name="lda"/>) to the packed stride, zeroing rows up to
    /// <paramref name="tileRows"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void CopyA(float* a, int lda, int rows, int kc, int tileRows, float* packed)
    {
        for (int r = 0; r < tileRows; r++)
        {
            Span<float> destination = new(packed + (r * PackedAStride), kc);
            if (r < rows)
            {
                new ReadOnlySpan<float>(a + ((long)r * lda), kc).CopyTo(destination);
            }
            else
            {
                destination.Clear();
            }
        }
    }

    /// <summary>
    /// The Vector512 micro-kernel: a 14×32 tile of C over one K block. A rows are PackedAStride floats apart,
    /// W is [kc][32]. Starts from the partial tile when <paramref name="accumulate"/>, and either stores the
    /// partial tile or, when <paramref name="final"/>, applies the epilogue and stores C.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel14x32<TEpilogue>(
        float* a,
        float* w,
        int kc,
        float* tile,
        bool accumulate,
        bool final,
        float* c,
        int ldc,
        int row,
        int col,
        int rows,
        int cols,
        ref TEpilogue epilogue,
        float* edge)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        const int S = PackedAStride;
        Vector512<float> c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61;
        Vector512<float> c70, c71, c80, c81, c90, c91, ca0, ca1, cb0, cb1, cc0, cc1, cd0, cd1;

        // Start from the running sums of earlier K blocks, or from zero.
        if (accumulate)
        {
            c00 = Vector512.Load(tile + 0); c01 = Vector512.Load(tile + 16);
            c10 = Vector512.Load(tile + 32); c11 = Vector512.Load(tile + 48);
            c20 = Vector512.Load(tile + 64); c21 = Vector512.Load(tile + 80);
            c30 = Vector512.Load(tile + 96); c31 = Vector512.Load(tile + 112);
            c40 = Vector512.Load(tile + 128); c41 = Vector512.Load(tile + 144);
            c50 = Vector512.Load(tile + 160); c51 = Vector512.Load(tile + 176);
            c60 = Vector512.Load(tile + 192); c61 = Vector512.Load(tile + 208);
            c70 = Vector512.Load(tile + 224); c71 = Vector512.Load(tile + 240);
            c80 = Vector512.Load(tile + 256); c81 = Vector512.Load(tile + 272);
            c90 = Vector512.Load(tile + 288); c91 = Vector512.Load(tile + 304);
            ca0 = Vector512.Load(tile + 320); ca1 = Vector512.Load(tile + 336);
            cb0 = Vector512.Load(tile + 352); cb1 = Vector512.Load(tile + 368);
            cc0 = Vector512.Load(tile + 384); cc1 = Vector512.Load(tile + 400);
            cd0 = Vector512.Load(tile + 416); cd1 = Vector512.Load(tile + 432);
        }
        else
        {
            c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = c60 = c61 = default;
            c70 = c71 = c80 = c81 = c90 = c91 = ca0 = ca1 = cb0 = cb1 = cc0 = cc1 = cd0 = cd1 = default;
        }

        // The K loop: two W vectors, fourteen broadcasts of A, 28 fused multiply-adds per step.
        for (int i = 0; i < kc; i++, a++, w += 32)
        {
            Vector512<float> w0 = Vector512.Load(w);
            Vector512<float> w1 = Vector512.Load(w + 16);
            Vector512<float> x = Vector512.Create(a[0]);
            c00 = Avx512F.FusedMultiplyAdd(x, w0, c00); c01 = Avx512F.FusedMultiplyAdd(x, w1, c01);
            x = Vector512.Create(a[S]);
            c10 = Avx512F.FusedMultiplyAdd(x, w0, c10); c11 = Avx512F.FusedMultiplyAdd(x, w1, c11);
            x = Vector512.Create(a[2 * S]);
            c20 = Avx512F.FusedMultiplyAdd(x, w0, c20); c21 = Avx512F.FusedMultiplyAdd(x, w1, c21);
            x = Vector512.Create(a[3 * S]);
            c30 = Avx512F.FusedMultiplyAdd(x, w0, c30); c31 = Avx512F.FusedMultiplyAdd(x, w1, c31);
            x = Vector512.Create(a[4 * S]);
            c40 = Avx512F.FusedMultiplyAdd(x, w0, c40); c41 = Avx512F.FusedMultiplyAdd(x, w1, c41);
            x = Vector512.Create(a[5 * S]);
            c50 = Avx512F.FusedMultiplyAdd(x, w0, c50); c51 = Avx512F.FusedMultiplyAdd(x, w1, c51);
            x = Vector512.Create(a[6 * S]);
            c60 = Avx512F.FusedMultiplyAdd(x, w0, c60); c61 = Avx512F.FusedMultiplyAdd(x, w1, c61);
            x = Vector512.Create(a[7 * S]);
            c70 = Avx512F.FusedMultiplyAdd(x, w0, c70); c71 = Avx512F.FusedMultiplyAdd(x, w1, c71);
            x = Vector512.Create(a[8 * S]);
            c80 = Avx512F.FusedMultiplyAdd(x, w0, c80); c81 = Avx512F.FusedMultiplyAdd(x, w1, c81);
            x = Vector512.Create(a[9 * S]);
            c90 = Avx512F.FusedMultiplyAdd(x, w0, c90); c91 = Avx512F.FusedMultiplyAdd(x, w1, c91);
            x = Vector512.Create(a[10 * S]);
            ca0 = Avx512F.FusedMultiplyAdd(x, w0, ca0); ca1 = Avx512F.FusedMultiplyAdd(x, w1, ca1);
            x = Vector512.Create(a[11 * S]);
            cb0 = Avx512F.FusedMultiplyAdd(x, w0, cb0); cb1 = Avx512F.FusedMultiplyAdd(x, w1, cb1);
            x = Vector512.Create(a[12 * S]);
            cc0 = Avx512F.FusedMultiplyAdd(x, w0, cc0); cc1 = Avx512F.FusedMultiplyAdd(x, w1, cc1);
            x = Vector512.Create(a[13 * S]);
            cd0 = Avx512F.FusedMultiplyAdd(x, w0, cd0); cd1 = Avx512F.FusedMultiplyAdd(x, w1, cd1);
        }

        // A whole tile with finished sums goes straight to C through the epilogue.
        if (final && rows == 14 && cols == 32)
        {
            Store2(ref epilogue, c, row, col, c00, c01); c += ldc;
            Store2(ref epilogue, c, row + 1, col, c10, c11); c += ldc;
            Store2(ref epilogue, c, row + 2, col, c20, c21); c += ldc;
            Store2(ref epilogue, c, row + 3, col, c30, c31); c += ldc;
            Store2(ref epilogue, c, row + 4, col, c40, c41); c += ldc;
            Store2(ref epilogue, c, row + 5, col, c50, c51); c += ldc;
            Store2(ref epilogue, c, row + 6, col, c60, c61); c += ldc;
            Store2(ref epilogue, c, row + 7, col, c70, c71); c += ldc;
            Store2(ref epilogue, c, row + 8, col, c80, c81); c += ldc;
            Store2(ref epilogue, c, row + 9, col, c90, c91); c += ldc;
            Store2(ref epilogue, c, row + 10, col, ca0, ca1); c += ldc;
            Store2(ref epilogue, c, row + 11, col, cb0, cb1); c += ldc;
            Store2(ref epilogue, c, row + 12, col, cc0, cc1); c += ldc;
            Store2(ref epilogue, c, row + 13, col, cd0, cd1);
            return;
        }

        // Otherwise store the tile: running sums to the partial tile, a ragged final tile to the edge tile.
        float* t = final ? edge : tile;
        c00.Store(t + 0); c01.Store(t + 16); c10.Store(t + 32); c11.Store(t + 48);
        c20.Store(t + 64); c21.Store(t + 80); c30.Store(t + 96); c31.Store(t + 112);
        c40.Store(t + 128); c41.Store(t + 144); c50.Store(t + 160); c51.Store(t + 176);
        c60.Store(t + 192); c61.Store(t + 208); c70.Store(t + 224); c71.Store(t + 240);
        c80.Store(t + 256); c81.Store(t + 272); c90.Store(t + 288); c91.Store(t + 304);
        ca0.Store(t + 320); ca1.Store(t + 336); cb0.Store(t + 352); cb1.Store(t + 368);
        cc0.Store(t + 384); cc1.Store(t + 400); cd0.Store(t + 416); cd1.Store(t + 432);
        if (final)
        {
            StoreEdge(edge, 32, c, ldc, row, col, rows, cols, ref epilogue, wide: true);
        }
    }

    /// <summary>
    /// The Vector256 micro-kernel: a 6×16 tile of C over one K block (16 ymm registers: 12 sums, 2 for W,
    /// 1 broadcast). Same contract as <see cref="Kernel14x32"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x16<TEpilogue>(
        float* a,
        float* w,
        int kc,
        float* tile,
        bool accumulate,
        bool final,
        float* c,
        int ldc,
        int row,
        int col,
        int rows,
        int cols,
        ref TEpilogue epilogue,
        float* edge)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        const int S = PackedAStride;
        Vector256<float> c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;

        // Start from the running sums of earlier K blocks, or from zero.
        if (accumulate)
        {
            c00 = Vector256.Load(tile + 0); c01 = Vector256.Load(tile + 8);
            c10 = Vector256.Load(tile + 16); c11 = Vector256.Load(tile + 24);
            c20 = Vector256.Load(tile + 32); c21 = Vector256.Load(tile + 40);
            c30 = Vector256.Load(tile + 48); c31 = Vector256.Load(tile + 56);
            c40 = Vector256.Load(tile + 64); c41 = Vector256.Load(tile + 72);
            c50 = Vector256.Load(tile + 80); c51 = Vector256.Load(tile + 88);
        }
        else
        {
            c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = default;
        }

        // The K loop: two W vectors, six broadcasts of A, 12 fused multiply-adds per step.
        for (int i = 0; i < kc; i++, a++, w += 16)
        {
            Vector256<float> w0 = Vector256.Load(w);
            Vector256<float> w1 = Vector256.Load(w + 8);
            Vector256<float> x = Vector256.Create(a[0]);
            c00 = Fma.MultiplyAdd(x, w0, c00); c01 = Fma.MultiplyAdd(x, w1, c01);
            x = Vector256.Create(a[S]);
            c10 = Fma.MultiplyAdd(x, w0, c10); c11 = Fma.MultiplyAdd(x, w1, c11);
            x = Vector256.Create(a[2 * S]);
            c20 = Fma.MultiplyAdd(x, w0, c20); c21 = Fma.MultiplyAdd(x, w1, c21);
            x = Vector256.Create(a[3 * S]);
            c30 = Fma.MultiplyAdd(x, w0, c30); c31 = Fma.MultiplyAdd(x, w1, c31);
            x = Vector256.Create(a[4 * S]);
            c40 = Fma.MultiplyAdd(x, w0, c40); c41 = Fma.MultiplyAdd(x, w1, c41);
            x = Vector256.Create(a[5 * S]);
            c50 = Fma.MultiplyAdd(x, w0, c50); c51 = Fma.MultiplyAdd(x, w1, c51);
        }

        // A whole tile with finished sums goes straight to C through the epilogue.
        if (final && rows == 6 && cols == 16)
        {
            Store2(ref epilogue, c, row, col, c00, c01); c += ldc;
            Store2(ref epilogue, c, row + 1, col, c10, c11); c += ldc;
            Store2(ref epilogue, c, row + 2, col, c20, c21); c += ldc;
            Store2(ref epilogue, c, row + 3, col, c30, c31); c += ldc;
            Store2(ref epilogue, c, row + 4, col, c40, c41); c += ldc;
            Store2(ref epilogue, c, row + 5, col, c50, c51);
            return;
        }

        // Otherwise store the tile: running sums to the partial tile, a ragged final tile to the edge tile.
        float* t = final ? edge : tile;
        c00.Store(t + 0); c01.Store(t + 8); c10.Store(t + 16); c11.Store(t + 24);
        c20.Store(t + 32); c21.Store(t + 40); c30.Store(t + 48); c31.Store(t + 56);
        c40.Store(t + 64); c41.Store(t + 72); c50.Store(t + 80); c51.Store(t + 88);
        if (final)
        {
            StoreEdge(edge, 16, c, ldc, row, col, rows, cols, ref epilogue, wide: false);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store2<TEpilogue>(
        ref TEpilogue epilogue,
        float* c,
        int row,
        int col,
        Vector512<float> v0,
        Vector512<float> v1)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        epilogue.Apply(v0, row, col).Store(c);
        epilogue.Apply(v1, row, col + 16).Store(c + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store2<TEpilogue>(
        ref TEpilogue epilogue,
        float* c,
        int row,
        int col,
        Vector256<float> v0,
        Vector256<float> v1)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        epilogue.Apply(v0, row, col).Store(c);
        epilogue.Apply(v1, row, col + 8).Store(c + 8);
    }

    /// <summary>
    /// Stores the valid [rows, cols] corner of a staged tile to C through the epilogue: Vector512 for whole groups
    /// of 16 columns (when <paramref name="wide"/>), Vector256 for groups of 8, scalar for the rest.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void StoreEdge<TEpilogue>(
        float* tile,
        int tileStride,
        float* c,
        int ldc,
        int row,
        int col,
        int rows,
        int cols,
        ref TEpilogue epilogue,
        bool wide)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        for (int r = 0; r < rows; r++)
        {
            float* source = tile + (r * tileStride);
            float* destination = c + ((long)r * ldc);
            int j = 0;
            if (wide)
            {
                for (; j + 16 <= cols; j += 16)
                {
                    epilogue.Apply(Vector512.Load(source + j), row + r, col + j).Store(destination + j);
                }
            }

            for (; j + 8 <= cols; j += 8)
            {
                epilogue.Apply(Vector256.Load(source + j), row + r, col + j).Store(destination + j);
            }

            for (; j < cols; j++)
            {
                destination[j] = epilogue.Apply(source[j], row + r, col + j);
            }
        }
    }

    /// <summary>The scalar fallback for machines without SIMD: one float sum per element, in k order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ScalarBlock<TWeights, TEpilogue>(
        Job<TEpilogue>* job,
        int rowStart,
        int rowEnd,
        int colStart,
        int colEnd,
        ref TEpilogue epilogue)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        int k = job->K;
        for (int row = rowStart; row < rowEnd; row++)
        {
            float* aRow = job->A + ((long)row * k);
            for (int col = colStart; col < colEnd; col++)
            {
                byte* wRow = job->W + ((long)col * TWeights.RowBytes(k));
                float sum = 0f;
                for (int i = 0; i < k; i++)
                {
                    sum += aRow[i] * TWeights.Load1(wRow, i);
                }

                job->C[((long)row * job->N) + col] = epilogue.Apply(sum, row, col);
            }
        }
    }
}
