// The CPU matrix product for M <= 32 (decode steps and small batches): C[M, N] = epilogue(A[M, K] · W[N, K]ᵀ)
// without packing. Each W row is a dot product with each A row, so the kernel streams W once, row after row,
// widening float16/bfloat16/Q8_0 on the fly; it is bound by memory bandwidth for large W.
//
//   M = 1:     16 W rows at a time, one Vector512 running sum per row (16 independent chains). The 16 sums are
//              reduced and transposed into one vector with a shuffle tree (16 -> 8 -> 4 -> 2 -> 1 vectors) and
//              stored through the vector epilogue: C[0, n .. n + 15].
//              With Vector256: 8 W rows at a time, reduced with horizontal adds.
//   M = 2..32: 4 W rows at a time, read from memory once, against A in chunks of 4 rows (from cache): 4 × 4
//              running sums (missing A rows repeat row 0 and are not stored), reduced with the same tree, stored
//              through the scalar epilogue. With Vector256, A in chunks of 2 rows (4 × 2 sums, 16 registers).
//   Q8_0, any M (Vector512 with AVX-512BW): integer products. A's rows are quantized once per call to int16 in blocks
//              of 32 with a power-of-two scale (error at most 2^-14 of the block's largest |a|; values on a fine
//              enough grid are exact); each W block's 32 int8 are sign-extended to int16 and multiplied in pairs
//              (vpmaddwd) into exact int32 sums, converted once and scaled once by weight scale × activation
//              scale. The 16 rows' float16 scales of a block are gathered and widened together. Measured on a
//              4096 × 4096 matrix, 2 threads: 4-5x faster than widening every weight to float32 (docs/PERFORMANCE.md).
//              With M > 1 each group of 16 W rows meets every A row in turn while it is in cache.
//   Q8_0, any M (Vector256 with AVX2): the same integer scheme, 8 W rows at a time, each block of 32 as two
//              halves of 16 int16 products in pairs.
//   Tails:     K not a multiple of 16 is finished with scalar products; W rows past the last whole group go
//              through a one-row dot product.
//
// Threads split N into contiguous ranges of row groups; products below SingleThreadWork multiply-adds stay on
// the calling thread (no pool synchronisation). Nothing is allocated.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kiln.Devices;

namespace Kiln.Kernels.Gemm;

/// <summary>The streaming matrix-vector CPU kernel for M &lt;= <see cref="MaxRows"/>.</summary>
internal static unsafe class CpuGemv
{
    /// <summary>The largest M this path handles; above it, packing W pays for itself.</summary>
    public const int MaxRows = 32;

    /// <summary>Products below this many multiply-adds run on the calling thread.</summary>
    public const long SingleThreadWork = 1L << 17;

    /// <summary>W rows per group: 16 for M = 1 and for Q8_0 in integers, otherwise 4 for M = 2..32.</summary>
    private static int GroupRows(int m, bool integer) => m == 1 || integer ? 16 : 4;

    /// <summary>
    /// The largest M this path handles for Q8_0 weights in integers: each A row costs a pass of the integer kernel over
    /// the cached W group, so above this the packed product is faster (measured on an AVX2 machine, 110M model: 16
    /// rows 300 tok/s here against about the same packed, 32 rows 211 against 448).
    /// </summary>
    public const int MaxIntegerRows = 16;

    /// <summary>Whether this path, rather than the packed product, computes an M-row product of these weights.</summary>
    public static bool Handles(int m, DType wType, KernelWidth width) =>
        m <= (wType == DType.Q8_0 && HasInt16Kernel(width) ? MaxIntegerRows : MaxRows);

    /// <summary>Whether Q8_0 decode multiplies integers at this width: AVX-512BW for Vector512, AVX2 for Vector256.</summary>
    private static bool HasInt16Kernel(KernelWidth width) =>
        width == KernelWidth.Vector512 ? Avx512BW.IsSupported : width == KernelWidth.Vector256 && Avx2.IsSupported;

    /// <summary>Computes C = epilogue(A · Wᵀ) for M &lt;= 32 on the pool's threads.</summary>
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
        KernelWidth width)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        switch (wType)
        {
            case DType.Float32:
                Run<Float32Weights, TEpilogue>(pool, a, (byte*)w, c, m, n, k, ref epilogue, width);
                break;
            case DType.Float16:
                Run<Float16Weights, TEpilogue>(pool, a, (byte*)w, c, m, n, k, ref epilogue, width);
                break;
            case DType.Q8_0:
                Run<Q8_0Weights, TEpilogue>(pool, a, (byte*)w, c, m, n, k, ref epilogue, width);
                break;
            default:
                Run<BFloat16Weights, TEpilogue>(pool, a, (byte*)w, c, m, n, k, ref epilogue, width);
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
        KernelWidth width)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
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
        };

        // Q8_0 multiplies integers: A's rows are quantized once here, on the calling thread, for all workers, and each
        // group of W rows meets every A row while it is in cache. (The kernels gather the rows' scales with 32-bit
        // offsets, so rows must be under 256 MiB: K below 250 million.)
        bool integer = typeof(TWeights) == typeof(Q8_0Weights) && HasInt16Kernel(width)
            && TWeights.RowBytes(k) <= int.MaxValue / 8;
        if (integer)
        {
            int blocks = k / Q8_0Blocks.BlockElements;
            GemmScratch.Current.Int16Blocks(m * blocks, out job.QuantizedA, out job.QuantizedAScales);
            for (int row = 0; row < m; row++)
            {
                QuantizeInt16(a + ((long)row * k), k, job.QuantizedA + ((long)row * k),
                    job.QuantizedAScales + (row * blocks));
            }
        }

        // Split N in groups of W rows; small products run inline on the caller.
        int groupRows = GroupRows(m, integer);
        int groups = (n + groupRows - 1) / groupRows;
        int grain = (long)m * n * k < SingleThreadWork ? groups : 1;
        pool.For(groups, grain, &Body<TWeights, TEpilogue>, &job);
    }

    /// <summary>The arguments of one product; lives on the caller's stack during the loop.</summary>
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

        // For Q8_0: A's rows quantized to int16 per 32-element block, and the block scales, row after row.
        public short* QuantizedA;
        public float* QuantizedAScales;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Body<TWeights, TEpilogue>(void* state, int start, int end)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        Job<TEpilogue>* job = (Job<TEpilogue>*)state;
        TEpilogue epilogue = job->Epilogue;
        int m = job->M;
        int n = job->N;
        int k = job->K;
        int groupRows = GroupRows(m, job->QuantizedA != null);
        int rowStart = start * groupRows;
        int rowEnd = Math.Min(end * groupRows, n);
        long rowBytes = TWeights.RowBytes(k);

        // Whole groups go through the wide kernels, everything else through one-row dot products.
        int wRow = rowStart;
        if (job->QuantizedA != null)
        {
            // Q8_0 in integers: each group of 16 (8) W rows against every A row, the group read from memory once.
            int blocks = k / Q8_0Blocks.BlockElements;
            int step = job->Width == KernelWidth.Vector512 ? 16 : 8;
            for (; wRow + step <= rowEnd; wRow += step)
            {
                for (int row = 0; row < m; row++)
                {
                    short* quantized = job->QuantizedA + ((long)row * k);
                    float* scales = job->QuantizedAScales + (row * blocks);
                    float* c = job->C + ((long)row * n) + wRow;
                    if (step == 16)
                    {
                        Dot16x1Q8_0(quantized, scales, job->W + (wRow * rowBytes), rowBytes, k, c, row, wRow,
                            ref epilogue);
                    }
                    else
                    {
                        Dot8x1Q8_0(quantized, scales, job->W + (wRow * rowBytes), rowBytes, k, c, row, wRow,
                            ref epilogue);
                    }
                }
            }
        }
        else if (job->Width == KernelWidth.Vector512)
        {
            if (m == 1)
            {
                for (; wRow + 16 <= rowEnd; wRow += 16)
                {
                    Dot16x1<TWeights, TEpilogue>(job->A, job->W + (wRow * rowBytes), rowBytes, k, job->C + wRow, wRow,
                        ref epilogue);
                }
            }
            else
            {
                // Each group of 4 W rows is read from memory once and meets A in chunks of 4 rows from cache.
                for (; wRow + 4 <= rowEnd; wRow += 4)
                {
                    for (int row = 0; row < m; row += 4)
                    {
                        Dot4x4<TWeights, TEpilogue>(job->A + ((long)row * k), Math.Min(4, m - row), row,
                            job->W + (wRow * rowBytes), rowBytes, k, job->C, n, wRow, ref epilogue);
                    }
                }
            }
        }
        else if (job->Width == KernelWidth.Vector256 && m == 1)
        {
            for (; wRow + 8 <= rowEnd; wRow += 8)
            {
                Dot8x1<TWeights, TEpilogue>(job->A, job->W + (wRow * rowBytes), rowBytes, k, job->C + wRow, wRow,
                    ref epilogue);
            }
        }
        else if (job->Width == KernelWidth.Vector256)
        {
            // As with Vector512, but A in chunks of 2 rows: 4 × 2 running sums fit the 16 registers.
            for (; wRow + 4 <= rowEnd; wRow += 4)
            {
                for (int row = 0; row < m; row += 2)
                {
                    Dot4x2<TWeights, TEpilogue>(job->A + ((long)row * k), Math.Min(2, m - row), row,
                        job->W + (wRow * rowBytes), rowBytes, k, job->C, n, wRow, ref epilogue);
                }
            }
        }

        for (; wRow < rowEnd; wRow++)
        {
            byte* wPointer = job->W + (wRow * rowBytes);
            for (int row = 0; row < m; row++)
            {
                float dot = Dot1<TWeights>(job->A + ((long)row * k), wPointer, k, job->Width);
                job->C[((long)row * n) + wRow] = epilogue.Apply(dot, row, wRow);
            }
        }
    }

    /// <summary>
    /// C[0, col .. col + 15] = epilogue(A[0, :] · W[col .. col + 15, :]ᵀ): 16 W rows of <paramref name="rowBytes"/>
    /// bytes each, one running sum per row.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot16x1<TWeights, TEpilogue>(
        float* a,
        byte* w,
        long rowBytes,
        int k,
        float* c,
        int col,
        ref TEpilogue epilogue)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        // Four base pointers (rows 0, 4, 8, 12) plus offsets of 1, 2 and 3 rows address all 16 rows.
        nint r1 = (nint)rowBytes;
        nint r2 = 2 * r1;
        nint r3 = 3 * r1;
        byte* p0 = w;
        byte* p4 = w + (4 * r1);
        byte* p8 = w + (8 * r1);
        byte* p12 = w + (12 * r1);
        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default;
        Vector512<float> s6 = default, s7 = default, s8 = default, s9 = default, s10 = default, s11 = default;
        Vector512<float> s12 = default, s13 = default, s14 = default, s15 = default;

        // Stream 16 values of each row per step against 16 values of A.
        int i = 0;
        for (; i + 16 <= k; i += 16)
        {
            Vector512<float> x = Vector512.Load(a + i);
            s0 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p0, i), x, s0);
            s1 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p0 + r1, i), x, s1);
            s2 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p0 + r2, i), x, s2);
            s3 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p0 + r3, i), x, s3);
            s4 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p4, i), x, s4);
            s5 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p4 + r1, i), x, s5);
            s6 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p4 + r2, i), x, s6);
            s7 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p4 + r3, i), x, s7);
            s8 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p8, i), x, s8);
            s9 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p8 + r1, i), x, s9);
            s10 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p8 + r2, i), x, s10);
            s11 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p8 + r3, i), x, s11);
            s12 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p12, i), x, s12);
            s13 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p12 + r1, i), x, s13);
            s14 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p12 + r2, i), x, s14);
            s15 = Avx512F.FusedMultiplyAdd(TWeights.Load16(p12 + r3, i), x, s15);
        }

        // Reduce the 16 running sums into one vector: lane j holds the dot product of row j.
        Vector512<float> sums = Reduce16(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15);

        // Finish a ragged K with scalar products.
        if (i < k)
        {
            sums += TailDots16<TWeights>(a, w, rowBytes, i, k, 1, 16);
        }

        epilogue.Apply(sums, 0, col).Store(c);
    }

    /// <summary>
    /// <see cref="Dot16x1{TWeights, TEpilogue}"/> for Vector256: C[0, col .. col + 7] from 8 W rows, one running sum
    /// per row.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot8x1<TWeights, TEpilogue>(
        float* a,
        byte* w,
        long rowBytes,
        int k,
        float* c,
        int col,
        ref TEpilogue epilogue)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        nint r1 = (nint)rowBytes;
        nint r2 = 2 * r1;
        nint r3 = 3 * r1;
        byte* p0 = w;
        byte* p4 = w + (4 * r1);
        Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
        Vector256<float> s4 = default, s5 = default, s6 = default, s7 = default;

        int i = 0;
        for (; i + 8 <= k; i += 8)
        {
            Vector256<float> x = Vector256.Load(a + i);
            s0 = Fma.MultiplyAdd(TWeights.Load8(p0, i), x, s0);
            s1 = Fma.MultiplyAdd(TWeights.Load8(p0 + r1, i), x, s1);
            s2 = Fma.MultiplyAdd(TWeights.Load8(p0 + r2, i), x, s2);
            s3 = Fma.MultiplyAdd(TWeights.Load8(p0 + r3, i), x, s3);
            s4 = Fma.MultiplyAdd(TWeights.Load8(p4, i), x, s4);
            s5 = Fma.MultiplyAdd(TWeights.Load8(p4 + r1, i), x, s5);
            s6 = Fma.MultiplyAdd(TWeights.Load8(p4 + r2, i), x, s6);
            s7 = Fma.MultiplyAdd(TWeights.Load8(p4 + r3, i), x, s7);
        }

        Vector256<float> sums = Reduce8(s0, s1, s2, s3, s4, s5, s6, s7);

        // Finish a ragged K with scalar products.
        if (i < k)
        {
            float* tails = stackalloc float[8];
            TailDots<TWeights>(tails, 8, a, w, rowBytes, i, k, 1, 8);
            sums += Vector256.Load(tails);
        }

        epilogue.Apply(sums, 0, col).Store(c);
    }

    /// <summary>
    /// <see cref="Dot16x1{TWeights, TEpilogue}"/> for Q8_0 weights against A's row quantized to int16
    /// (<see cref="QuantizeInt16"/>), one block of 32 per step: the 32 int8 weights of a row are sign-extended to int16
    /// and multiplied with the 32 int16 activations in pairs into 16 exact int32 sums (vpmaddwd), which are converted
    /// once and scaled once by weight scale × activation scale into the row's running sum. Against widening every
    /// weight to float32 this is about half the vector operations per weight. K is a multiple of 32 (MatMul checks it).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot16x1Q8_0<TEpilogue>(
        short* a,
        float* aScales,
        byte* w,
        long rowBytes,
        int k,
        float* c,
        int row,
        int col,
        ref TEpilogue epilogue)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        nint r1 = (nint)rowBytes;
        nint r2 = 2 * r1;
        nint r3 = 3 * r1;
        byte* p0 = w;
        byte* p4 = w + (4 * r1);
        byte* p8 = w + (8 * r1);
        byte* p12 = w + (12 * r1);
        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default;
        Vector512<float> s6 = default, s7 = default, s8 = default, s9 = default, s10 = default, s11 = default;
        Vector512<float> s12 = default, s13 = default, s14 = default, s15 = default;

        // Block b of every W row starts at byte 34·b: the float16 scale, then 32 int8 values. The 16 rows' scales of a
        // block are gathered (4 bytes at each block start; the low 16 bits are the scale) and widened together, times
        // the activation scale, into a stack buffer that each row's step broadcasts from.
        Vector256<int> rowOffsets = Vector256.Create(0, (int)r1, (int)r2, (int)r3, 4 * (int)r1, 5 * (int)r1, 6 * (int)r1, 7 * (int)r1);
        float* scales = stackalloc float[16];

        // The 16 rows are one contiguous run of 16 · 34 bytes per block step, which this loop reads 16 places at a time
        // (one block per row). Rows shorter than a 4 KiB page put several rows in a page, read at a stride the hardware
        // prefetchers do not take for a stream; so with short rows each step also prefetches the next 9 lines (576
        // bytes) of the next 16 rows, walking them front to back. Longer rows stream on their own. (Prefetches never
        // fault, past the matrix's end included.)
        byte* next = w + (16 * r1);
        bool prefetch = rowBytes < 4096;
        nint blockBytes = 0;
        for (int b = 0; b < k / Q8_0Blocks.BlockElements; b++, blockBytes += Q8_0Blocks.BlockBytes)
        {
            if (prefetch)
            {
                PrefetchLines(next + (b * 9 * 64), 9);
            }

            Vector256<int> low = Avx2.GatherVector256((int*)(p0 + blockBytes), rowOffsets, 1);
            Vector256<int> high = Avx2.GatherVector256((int*)(p8 + blockBytes), rowOffsets, 1);
            Vector512<uint> bits = Vector512.Create(low, high).AsUInt32() & Vector512.Create(0xFFFFu);
            (Widen.HalfBits(bits) * Vector512.Create(aScales[b])).Store(scales);

            Vector512<short> x = Vector512.Load(a + (b * Q8_0Blocks.BlockElements));
            s0 = Block(p0 + blockBytes, x, scales[0], s0);
            s1 = Block(p0 + r1 + blockBytes, x, scales[1], s1);
            s2 = Block(p0 + r2 + blockBytes, x, scales[2], s2);
            s3 = Block(p0 + r3 + blockBytes, x, scales[3], s3);
            s4 = Block(p4 + blockBytes, x, scales[4], s4);
            s5 = Block(p4 + r1 + blockBytes, x, scales[5], s5);
            s6 = Block(p4 + r2 + blockBytes, x, scales[6], s6);
            s7 = Block(p4 + r3 + blockBytes, x, scales[7], s7);
            s8 = Block(p8 + blockBytes, x, scales[8], s8);
            s9 = Block(p8 + r1 + blockBytes, x, scales[9], s9);
            s10 = Block(p8 + r2 + blockBytes, x, scales[10], s10);
            s11 = Block(p8 + r3 + blockBytes, x, scales[11], s11);
            s12 = Block(p12 + blockBytes, x, scales[12], s12);
            s13 = Block(p12 + r1 + blockBytes, x, scales[13], s13);
            s14 = Block(p12 + r2 + blockBytes, x, scales[14], s14);
            s15 = Block(p12 + r3 + blockBytes, x, scales[15], s15);
        }

        Vector512<float> sums = Reduce16(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15);
        epilogue.Apply(sums, row, col).Store(c);

        // sum + scale · Σ q·x (scale = weight scale · activation scale), the integer products exact in int32.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector512<float> Block(byte* block, Vector512<short> x, float scale, Vector512<float> sum)
        {
            Vector512<short> q = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)(block + 2)));
            Vector512<float> dot = Avx512F.ConvertToVector512Single(Avx512BW.MultiplyAddAdjacent(q, x));
            return Avx512F.FusedMultiplyAdd(dot, Vector512.Create(scale), sum);
        }
    }

    /// <summary>
    /// <see cref="Dot16x1Q8_0{TEpilogue}"/> for AVX2: 8 W rows, each block of 32 as two halves of 16 int8 weights
    /// sign-extended to int16 and multiplied with the activations in pairs (vpmaddwd), the two halves' 8 int32 sums
    /// added, converted once and scaled once into the row's running sum.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot8x1Q8_0<TEpilogue>(
        short* a,
        float* aScales,
        byte* w,
        long rowBytes,
        int k,
        float* c,
        int row,
        int col,
        ref TEpilogue epilogue)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        nint r1 = (nint)rowBytes;
        nint r2 = 2 * r1;
        nint r3 = 3 * r1;
        byte* p0 = w;
        byte* p4 = w + (4 * r1);
        Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
        Vector256<float> s4 = default, s5 = default, s6 = default, s7 = default;
        Vector256<int> rowOffsets = Vector256.Create(0, (int)r1, (int)r2, (int)r3, 4 * (int)r1, 5 * (int)r1, 6 * (int)r1, 7 * (int)r1);
        float* scales = stackalloc float[8];

        // As in the 16-row kernel: short rows share pages, so walk the next 8 rows ahead of the loop, 5 lines (at
        // least the 8 · 34 bytes this step reads) per block step.
        byte* next = w + (8 * r1);
        bool prefetch = rowBytes < 4096;
        nint blockBytes = 0;
        for (int b = 0; b < k / Q8_0Blocks.BlockElements; b++, blockBytes += Q8_0Blocks.BlockBytes)
        {
            if (prefetch)
            {
                PrefetchLines(next + (b * 5 * 64), 5);
            }

            Vector256<uint> bits = Avx2.GatherVector256((int*)(p0 + blockBytes), rowOffsets, 1).AsUInt32() & Vector256.Create(0xFFFFu);
            (Widen.HalfBits(bits) * Vector256.Create(aScales[b])).Store(scales);

            short* x = a + (b * Q8_0Blocks.BlockElements);
            Vector256<short> xLow = Vector256.Load(x);
            Vector256<short> xHigh = Vector256.Load(x + 16);
            s0 = Block(p0 + blockBytes, xLow, xHigh, scales[0], s0);
            s1 = Block(p0 + r1 + blockBytes, xLow, xHigh, scales[1], s1);
            s2 = Block(p0 + r2 + blockBytes, xLow, xHigh, scales[2], s2);
            s3 = Block(p0 + r3 + blockBytes, xLow, xHigh, scales[3], s3);
            s4 = Block(p4 + blockBytes, xLow, xHigh, scales[4], s4);
            s5 = Block(p4 + r1 + blockBytes, xLow, xHigh, scales[5], s5);
            s6 = Block(p4 + r2 + blockBytes, xLow, xHigh, scales[6], s6);
            s7 = Block(p4 + r3 + blockBytes, xLow, xHigh, scales[7], s7);
        }

        epilogue.Apply(Reduce8(s0, s1, s2, s3, s4, s5, s6, s7), row, col).Store(c);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static Vector256<float> Block(byte* block, Vector256<short> xLow, Vector256<short> xHigh, float scale, Vector256<float> sum)
        {
            Vector256<short> qLow = Avx2.ConvertToVector256Int16((sbyte*)(block + 2));
            Vector256<short> qHigh = Avx2.ConvertToVector256Int16((sbyte*)(block + 18));
            Vector256<int> dot = Avx2.MultiplyAddAdjacent(qLow, xLow) + Avx2.MultiplyAddAdjacent(qHigh, xHigh);
            return Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), Vector256.Create(scale), sum);
        }
    }

    /// <summary>Prefetches <paramref name="lines"/> cache lines from <paramref name="start"/> on into all cache levels.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchLines(byte* start, int lines)
    {
        for (int line = 0; line < lines; line++)
        {
            Sse.Prefetch0(start + (line * 64));
        }
    }

    /// <summary>
    /// Reduces 8 vectors to one whose lane j is the sum of the lanes of vector j: horizontal adds within 128-bit
    /// halves, then the two halves added.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Reduce8(
        Vector256<float> v0,
        Vector256<float> v1,
        Vector256<float> v2,
        Vector256<float> v3,
        Vector256<float> v4,
        Vector256<float> v5,
        Vector256<float> v6,
        Vector256<float> v7)
    {
        // Per 128-bit half: [v0, v1, v2, v3] partial sums, then [v4 .. v7].
        Vector256<float> low = Avx.HorizontalAdd(Avx.HorizontalAdd(v0, v1), Avx.HorizontalAdd(v2, v3));
        Vector256<float> high = Avx.HorizontalAdd(Avx.HorizontalAdd(v4, v5), Avx.HorizontalAdd(v6, v7));
        return Avx.Permute2x128(low, high, 0x20) + Avx.Permute2x128(low, high, 0x31);
    }

    /// <summary>
    /// Quantizes A's row [k] (k a multiple of 32) to int16 in blocks of 32 for <see cref="Dot16x1Q8_0"/> and
    /// <see cref="Dot8x1Q8_0"/> (AVX-512 or AVX2 code, the same values either way): each block
    /// gets a power-of-two scale p = 2^(e - 14), e = floor(log2 max|x|), so that x / p is at most 32768 in magnitude; the
    /// values are x / p rounded to nearest (even) and saturated to ±32767. Division by a power of two is exact, so each
    /// value is off by at most p (half a unit from rounding, one at the saturated top), at most 2^-14 of the block's
    /// largest magnitude, and values on a grid as fine as p come through exactly. A block whose largest magnitude is
    /// zero or below 2^-96 contributes nothing (its scale is 0); a block holding NaN or ±Inf gets a NaN scale, so the
    /// products it meets are NaN, as the float product would be.
    /// </summary>
    internal static void QuantizeInt16(float* a, int k, short* values, float* scales)
    {
        for (int b = 0; b < k / Q8_0Blocks.BlockElements; b++)
        {
            float* x = a + (b * Q8_0Blocks.BlockElements);
            float max = MathF.Abs(TensorPrimitives.MaxMagnitude(new ReadOnlySpan<float>(x, Q8_0Blocks.BlockElements)));
            short* q = values + (b * Q8_0Blocks.BlockElements);
            if (!float.IsFinite(max))
            {
                scales[b] = float.NaN;
                Vector512<short>.Zero.Store(q);
                continue;
            }

            if (max < 1.2621774e-29f) // 2^-96
            {
                scales[b] = 0f;
                Vector512<short>.Zero.Store(q);
                continue;
            }

            // Round to nearest even (the conversions' default mode), saturate to int16.
            int exponent = MathF.ILogB(max) - 14;
            float inverse = MathF.ScaleB(1f, -exponent);
            if (Avx512BW.IsSupported)
            {
                Vector512<int> lowInts = Avx512F.ConvertToVector512Int32(Vector512.Load(x) * inverse);
                Vector512<int> highInts = Avx512F.ConvertToVector512Int32(Vector512.Load(x + 16) * inverse);
                Vector256<short> lowShorts = Avx512F.ConvertToVector256Int16WithSaturation(lowInts);
                Vector256<short> highShorts = Avx512F.ConvertToVector256Int16WithSaturation(highInts);
                Vector512.Create(lowShorts, highShorts).Store(q);
            }
            else
            {
                // vpackssdw packs within 128-bit halves; the permute puts the four quarters back in order.
                for (int half = 0; half < 2; half++)
                {
                    Vector256<int> first = Avx.ConvertToVector256Int32(Vector256.Load(x + (16 * half)) * inverse);
                    Vector256<int> second = Avx.ConvertToVector256Int32(Vector256.Load(x + (16 * half) + 8) * inverse);
                    Vector256<short> packed = Avx2.PackSignedSaturate(first, second);
                    Avx2.Permute4x64(packed.AsInt64(), 0b11_01_10_00).AsInt16().Store(q + (16 * half));
                }
            }

            scales[b] = MathF.ScaleB(1f, exponent);
        }
    }

    /// <summary>
    /// C[row0 .. row0 + m, col .. col + 3] = epilogue(A[0..m, :] · W[col .. col + 3, :]ᵀ) for m in 1..4: 4 W rows ×
    /// 4 A rows of running sums (A rows past m repeat row 0 and are dropped); <paramref name="a"/> points at row row0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot4x4<TWeights, TEpilogue>(
        float* a,
        int m,
        int row0,
        byte* w,
        long rowBytes,
        int k,
        float* c,
        int ldc,
        int col,
        ref TEpilogue epilogue)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        // Rows of A (missing ones alias row 0) and of W.
        float* a0 = a;
        float* a1 = m > 1 ? a + k : a;
        float* a2 = m > 2 ? a + (2 * k) : a;
        float* a3 = m > 3 ? a + (3 * k) : a;
        nint r1 = (nint)rowBytes;
        byte* w0 = w;
        byte* w1 = w + r1;
        byte* w2 = w + (2 * r1);
        byte* w3 = w + (3 * r1);
        Vector512<float> s00 = default, s01 = default, s02 = default, s03 = default;
        Vector512<float> s10 = default, s11 = default, s12 = default, s13 = default;
        Vector512<float> s20 = default, s21 = default, s22 = default, s23 = default;
        Vector512<float> s30 = default, s31 = default, s32 = default, s33 = default;

        // Each step: 4 W loads, 4 A loads, 16 fused multiply-adds.
        int i = 0;
        for (; i + 16 <= k; i += 16)
        {
            Vector512<float> v0 = TWeights.Load16(w0, i);
            Vector512<float> v1 = TWeights.Load16(w1, i);
            Vector512<float> v2 = TWeights.Load16(w2, i);
            Vector512<float> v3 = TWeights.Load16(w3, i);
            Vector512<float> x = Vector512.Load(a0 + i);
            s00 = Avx512F.FusedMultiplyAdd(v0, x, s00); s01 = Avx512F.FusedMultiplyAdd(v1, x, s01);
            s02 = Avx512F.FusedMultiplyAdd(v2, x, s02); s03 = Avx512F.FusedMultiplyAdd(v3, x, s03);
            x = Vector512.Load(a1 + i);
            s10 = Avx512F.FusedMultiplyAdd(v0, x, s10); s11 = Avx512F.FusedMultiplyAdd(v1, x, s11);
            s12 = Avx512F.FusedMultiplyAdd(v2, x, s12); s13 = Avx512F.FusedMultiplyAdd(v3, x, s13);
            x = Vector512.Load(a2 + i);
            s20 = Avx512F.FusedMultiplyAdd(v0, x, s20); s21 = Avx512F.FusedMultiplyAdd(v1, x, s21);
            s22 = Avx512F.FusedMultiplyAdd(v2, x, s22); s23 = Avx512F.FusedMultiplyAdd(v3, x, s23);
            x = Vector512.Load(a3 + i);
            s30 = Avx512F.FusedMultiplyAdd(v0, x, s30); s31 = Avx512F.FusedMultiplyAdd(v1, x, s31);
            s32 = Avx512F.FusedMultiplyAdd(v2, x, s32); s33 = Avx512F.FusedMultiplyAdd(v3, x, s33);
        }

        // Lane 4·r + j holds A row r · W row j.
        Vector512<float> sums = Reduce16(s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33);
        if (i < k)
        {
            sums += TailDots16<TWeights>(a, w, rowBytes, i, k, m, 4);
        }

        float* lanes = stackalloc float[16];
        sums.Store(lanes);
        StoreRows(lanes, m, row0, c, ldc, col, ref epilogue);
    }

    /// <summary>
    /// Stores the m valid rows of a 4-column kernel through the scalar epilogue: lane 4·r + j is C[row0 + r, col + j].
    /// </summary>
    private static void StoreRows<TEpilogue>(float* lanes, int m, int row0, float* c, int ldc, int col, ref TEpilogue epilogue)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        for (int r = 0; r < m; r++)
        {
            float* destination = c + ((long)(row0 + r) * ldc) + col;
            for (int j = 0; j < 4; j++)
            {
                destination[j] = epilogue.Apply(lanes[(4 * r) + j], row0 + r, col + j);
            }
        }
    }

    /// <summary>
    /// <see cref="Dot4x4{TWeights, TEpilogue}"/> for Vector256: C[row0 .. row0 + m, col .. col + 3] for m in 1..2, 4 W
    /// rows × 2 A rows of running sums (a missing second A row repeats row 0 and is dropped).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Dot4x2<TWeights, TEpilogue>(
        float* a,
        int m,
        int row0,
        byte* w,
        long rowBytes,
        int k,
        float* c,
        int ldc,
        int col,
        ref TEpilogue epilogue)
        where TWeights : unmanaged, IWeightFormat
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        float* a0 = a;
        float* a1 = m > 1 ? a + k : a;
        nint r1 = (nint)rowBytes;
        byte* w0 = w;
        byte* w1 = w + r1;
        byte* w2 = w + (2 * r1);
        byte* w3 = w + (3 * r1);
        Vector256<float> s00 = default, s01 = default, s02 = default, s03 = default;
        Vector256<float> s10 = default, s11 = default, s12 = default, s13 = default;

        // Each step: 4 W loads, 2 A loads, 8 fused multiply-adds.
        int i = 0;
        for (; i + 8 <= k; i += 8)
        {
            Vector256<float> v0 = TWeights.Load8(w0, i);
            Vector256<float> v1 = TWeights.Load8(w1, i);
            Vector256<float> v2 = TWeights.Load8(w2, i);
            Vector256<float> v3 = TWeights.Load8(w3, i);
            Vector256<float> x = Vector256.Load(a0 + i);
            s00 = Fma.MultiplyAdd(v0, x, s00); s01 = Fma.MultiplyAdd(v1, x, s01);
            s02 = Fma.MultiplyAdd(v2, x, s02); s03 = Fma.MultiplyAdd(v3, x, s03);
            x = Vector256.Load(a1 + i);
            s10 = Fma.MultiplyAdd(v0, x, s10); s11 = Fma.MultiplyAdd(v1, x, s11);
            s12 = Fma.MultiplyAdd(v2, x, s12); s13 = Fma.MultiplyAdd(v3, x, s13);
        }

        // Lane 4·r + j holds A row r · W row j.
        Vector256<float> sums = Reduce8(s00, s01, s02, s03, s10, s11, s12, s13);
        float* lanes = stackalloc float[8];
        if (i < k)
        {
            TailDots<TWeights>(lanes, 8, a, w, rowBytes, i, k, m, 4);
            sums += Vector256.Load(lanes);
        }

        sums.Store(lanes);
        StoreRows(lanes, m, row0, c, ldc, col, ref epilogue);
    }

    /// <summary>
    /// The scalar products over k in [<paramref name="from"/>, <paramref name="k"/>) of a Dot kernel's 16 lanes:
    /// lane <c>r·wRows + j</c> is A row r (row 0 when r ≥ m) · W row j.
    /// </summary>
    private static Vector512<float> TailDots16<TWeights>(float* a, byte* w, long rowBytes, int from, int k, int m, int wRows)
        where TWeights : unmanaged, IWeightFormat
    {
        float* lanes = stackalloc float[16];
        TailDots<TWeights>(lanes, 16, a, w, rowBytes, from, k, m, wRows);
        return Vector512.Load(lanes);
    }

    /// <summary>
    /// Writes <paramref name="count"/> lanes of scalar products over k in [<paramref name="from"/>, <paramref name="k"/>):
    /// lane <c>r·wRows + j</c> is A row r (row 0 when r ≥ m) · W row j.
    /// </summary>
    private static void TailDots<TWeights>(float* lanes, int count, float* a, byte* w, long rowBytes, int from, int k, int m, int wRows)
        where TWeights : unmanaged, IWeightFormat
    {
        for (int lane = 0; lane < count; lane++)
        {
            int r = lane / wRows;
            float* aRow = a + ((long)(r < m ? r : 0) * k);
            byte* wRow = w + ((lane % wRows) * rowBytes);
            float sum = 0f;
            for (int i = from; i < k; i++)
            {
                sum += aRow[i] * TWeights.Load1(wRow, i);
            }

            lanes[lane] = sum;
        }
    }

    /// <summary>
    /// Reduces 16 vectors to one whose lane j is the sum of the lanes of vector j: pairwise adds of 256-bit halves,
    /// then 128-bit blocks, then pairs and single lanes within blocks, then one permute to put lanes in order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Reduce16(
        Vector512<float> v0,
        Vector512<float> v1,
        Vector512<float> v2,
        Vector512<float> v3,
        Vector512<float> v4,
        Vector512<float> v5,
        Vector512<float> v6,
        Vector512<float> v7,
        Vector512<float> v8,
        Vector512<float> v9,
        Vector512<float> v10,
        Vector512<float> v11,
        Vector512<float> v12,
        Vector512<float> v13,
        Vector512<float> v14,
        Vector512<float> v15)
    {
        // 16 -> 8: lanes 0-7 hold 8 partial sums of the first vector, lanes 8-15 of the second.
        Vector512<float> u0 = Halves(v0, v1);
        Vector512<float> u1 = Halves(v2, v3);
        Vector512<float> u2 = Halves(v4, v5);
        Vector512<float> u3 = Halves(v6, v7);
        Vector512<float> u4 = Halves(v8, v9);
        Vector512<float> u5 = Halves(v10, v11);
        Vector512<float> u6 = Halves(v12, v13);
        Vector512<float> u7 = Halves(v14, v15);

        // 8 -> 4: 128-bit block b holds 4 partial sums of vector (4·pair + b).
        Vector512<float> t0 = Blocks(u0, u1);
        Vector512<float> t1 = Blocks(u2, u3);
        Vector512<float> t2 = Blocks(u4, u5);
        Vector512<float> t3 = Blocks(u6, u7);

        // 4 -> 2 -> 1 within blocks: block b ends as [vector b, b + 4, b + 8, b + 12].
        Vector512<float> q0 = Pairs(t0, t1);
        Vector512<float> q1 = Pairs(t2, t3);
        Vector512<float> all = Pairs(q0, q1);

        // Lane 4·b + i holds vector 4·i + b; permute so that lane j holds vector j.
        Vector512<int> order = Vector512.Create(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        return Avx512F.PermuteVar16x32(all, order);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Halves(Vector512<float> x, Vector512<float> y)
    {
        // [x.lo, y.lo] + [x.hi, y.hi]
        Vector512<float> low = Avx512F.Shuffle4x128(x, y, 0b01_00_01_00);
        Vector512<float> high = Avx512F.Shuffle4x128(x, y, 0b11_10_11_10);
        return low + high;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Blocks(Vector512<float> x, Vector512<float> y)
    {
        // x and y each hold two vectors' 8 partials; the result holds four vectors' 4 partials, one per block.
        Vector512<float> even = Avx512F.Shuffle4x128(x, y, 0b10_00_10_00);
        Vector512<float> odd = Avx512F.Shuffle4x128(x, y, 0b11_01_11_01);
        return even + odd;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Pairs(Vector512<float> x, Vector512<float> y)
    {
        // Within each 128-bit block: [x0 + x1, x2 + x3, y0 + y1, y2 + y3].
        Vector512<float> even = Avx512F.Shuffle(x, y, 0b10_00_10_00);
        Vector512<float> odd = Avx512F.Shuffle(x, y, 0b11_01_11_01);
        return even + odd;
    }

    /// <summary>One dot product of an A row with a W row, in the given width.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Dot1<TWeights>(float* a, byte* w, int k, KernelWidth width)
        where TWeights : unmanaged, IWeightFormat
    {
        int i = 0;
        float sum = 0f;
        if (width == KernelWidth.Vector512)
        {
            Vector512<float> s = default;
            for (; i + 16 <= k; i += 16)
            {
                s = Avx512F.FusedMultiplyAdd(TWeights.Load16(w, i), Vector512.Load(a + i), s);
            }

            sum = Vector512.Sum(s);
        }
        else if (width == KernelWidth.Vector256)
        {
            Vector256<float> s0 = default;
            Vector256<float> s1 = default;
            for (; i + 16 <= k; i += 16)
            {
                s0 = Fma.MultiplyAdd(TWeights.Load8(w, i), Vector256.Load(a + i), s0);
                s1 = Fma.MultiplyAdd(TWeights.Load8(w, i + 8), Vector256.Load(a + i + 8), s1);
            }

            sum = Vector256.Sum(s0 + s1);
        }

        for (; i < k; i++)
        {
            sum += a[i] * TWeights.Load1(w, i);
        }

        return sum;
    }
}
