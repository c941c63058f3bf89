// The matrix product of a linear layer: C[M, N] = epilogue(A[M, K] · W[N, K]ᵀ), as torch.nn.functional.linear
// without bias (y = x Wᵀ). Weights are stored [out, in] = [N, K]; A and C are float32, W is float32, float16,
// bfloat16 or Q8_0 and is widened to float32 in registers inside the kernels: Q8_0 weights are never expanded in
// memory, each load becomes scale · int8 (Gemm/Widen.cs on the CPU, GpuQ8_0Weights on ILGPU devices), except that
// the CPU's one-row product quantizes A to int16 and multiplies integers (Gemm/CpuGemv.cs).
// Q8_0 needs K to be a multiple of 32 (whole blocks per row). A may have any rank: its leading dimensions are
// flattened into M. This file holds the public entry points, the argument checks and the float64 reference;
// the CPU kernels live in Gemm/CpuGemm.cs (packed panels) and Gemm/CpuGemv.cs (M <= 32, streaming), the ILGPU
// kernels in Gemm/GpuGemm.cs.
using System.Runtime.InteropServices;
using Kiln.Devices;
using Kiln.Kernels.Gemm;

namespace Kiln.Kernels;

/// <summary>
/// The matrix product <c>C[M, N] = epilogue(A[M, K] · W[N, K]ᵀ)</c> on the CPU (packed panels and a Vector512
/// register-blocked micro-kernel, or a streaming kernel for M &lt;= 32) and on ILGPU devices
/// (shared-memory tiles, or a streaming matrix-vector kernel for M &lt;= 16).
/// </summary>
/// <remarks>
/// <para>Results do not depend on the thread count: every output element is summed by one thread in the same
/// order whatever the split. They may differ from a float64 sum by float32 rounding, about 1e-7·sqrt(K) relative
/// to Σ|a·w|.</para>
/// <para>The epilogue is applied exactly once to each output element, after its whole sum over K is known.
/// Partial sums never pass through the output, so the epilogue may read the output tensor itself (an in-place
/// residual add) at the element it transforms. <c>Apply</c> must be pure: CPU threads call it concurrently on
/// copies of the struct.</para>
/// </remarks>
public static unsafe partial class MatMul
{
    /// <summary>Computes <c>output[M, N] = a[M, K] · w[N, K]ᵀ</c>.</summary>
    /// <param name="a">The activations, float32, shape [..., K] (leading dimensions are flattened into M).</param>
    /// <param name="w">The weights, float32, float16, bfloat16 or (CPU only, K a multiple of 32) q8_0, shape [N, K]
    /// (PyTorch's [out, in]).</param>
    /// <param name="output">The result, float32, shape [..., N] holding M rows; must not overlap a or w.</param>
    /// <exception cref="ArgumentException">Shapes, dtypes, devices or layouts do not fit together.</exception>
    public static void Compute(Tensor a, Tensor w, Tensor output)
    {
        IdentityEpilogue identity = default;
        Compute(a, w, output, ref identity);
    }

    /// <summary>Computes <c>output[M, N] = epilogue(a[M, K] · w[N, K]ᵀ)</c> on the tensors' device.</summary>
    /// <remarks>
    /// On an ILGPU device the CPU epilogue cannot run; the product runs with <see cref="IdentityEpilogue"/> only
    /// when <typeparamref name="TEpilogue"/> is that type. Use <see cref="ComputeGpu{TGpuEpilogue}"/> with an
    /// <see cref="IGpuMatMulEpilogue"/> for other epilogues on ILGPU devices.
    /// </remarks>
    /// <exception cref="ArgumentException">Shapes, dtypes, devices or layouts do not fit together.</exception>
    /// <exception cref="NotSupportedException">A non-identity CPU epilogue was given for ILGPU tensors.</exception>
    public static void Compute<TEpilogue>(Tensor a, Tensor w, Tensor output, ref TEpilogue epilogue)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        Shape shape = Validate(a, w, output);
        switch (a.Device)
        {
            case CpuDevice cpu:
                ComputeCpu(cpu.Pool, (float*)a.DataPointer, w.DataPointer, w.DType, (float*)output.DataPointer,
                    shape.M, shape.N, shape.K, ref epilogue, CpuGemm.BestWidth);
                break;
            case IlgpuDevice ilgpu when typeof(TEpilogue) == typeof(IdentityEpilogue):
                GpuGemm.Launch(ilgpu, a, w, output, shape.M, shape.N, shape.K, default(IdentityEpilogue));
                break;
            case IlgpuDevice:
                throw new NotSupportedException(
                    $"MatMul.Compute: the CPU epilogue {typeof(TEpilogue).Name} cannot run on {a.Device.Name}; "
                    + "call MatMul.ComputeGpu with an IGpuMatMulEpilogue for ILGPU tensors.");
            default:
                throw new NotSupportedException($"MatMul.Compute: device {a.Device.Name} is not supported.");
        }
    }

    /// <summary>
    /// Computes <c>output[M, N] = epilogue(a[M, K] · w[N, K]ᵀ)</c> on an ILGPU device (CUDA, or ILGPU's CPU
    /// accelerator). The launch is queued on the accelerator's default stream; it is not waited for.
    /// </summary>
    /// <remarks>
    /// M &lt;= 16 runs a matrix-vector kernel (16-byte weight loads, 4 rows of A per pass), larger M a
    /// shared-memory tiled kernel (128×128 tiles, 8×8 outputs per thread on GPUs). The epilogue is constrained to <c>struct</c>, not <c>unmanaged</c>: an epilogue that reads another
    /// tensor holds an <see cref="ILGPU.ArrayView{T}"/>, which contains a reference. Kernels are compiled once per
    /// device and (weight dtype, epilogue type).
    /// </remarks>
    /// <exception cref="ArgumentException">Shapes, dtypes, devices or layouts do not fit together, or the tensors are
    /// not on an ILGPU device.</exception>
    public static void ComputeGpu<TGpuEpilogue>(Tensor a, Tensor w, Tensor output, TGpuEpilogue epilogue)
        where TGpuEpilogue : struct, IGpuMatMulEpilogue
    {
        Shape shape = Validate(a, w, output);
        if (a.Device is not IlgpuDevice ilgpu)
        {
            throw new ArgumentException(
                $"MatMul.ComputeGpu: tensor a is on {a.Device.Name}, not an ILGPU device; use MatMul.Compute for "
                + "CPU tensors or move them with To(device).", nameof(a));
        }

        GpuGemm.Launch(ilgpu, a, w, output, shape.M, shape.N, shape.K, epilogue);
    }

    /// <summary>
    /// The scalar float64 reference: <c>output[m, n] = Σ_k a[m, k] · w[n, k]</c>, summed in order in double
    /// precision. Widen float16/bfloat16 weights to float32 before calling it.
    /// </summary>
    /// <param name="a">[M, K] row-major.</param>
    /// <param name="w">[N, K] row-major.</param>
    /// <param name="m">Rows of a and of the output.</param>
    /// <param name="n">Rows of w, columns of the output.</param>
    /// <param name="k">The reduced dimension.</param>
    /// <param name="output">[M, N] row-major.</param>
    /// <exception cref="ArgumentException">A span is shorter than its shape needs.</exception>
    public static void Reference(ReadOnlySpan<float> a, ReadOnlySpan<float> w, int m, int n, int k, Span<double> output)
    {
        if (a.Length < (long)m * k || w.Length < (long)n * k || output.Length < (long)m * n)
        {
            throw new ArgumentException(
                $"MatMul.Reference: spans of {a.Length}, {w.Length} and {output.Length} values are too short for "
                + $"M={m}, N={n}, K={k}; pass a [M, K], w [N, K] and output [M, N].");
        }

        for (int row = 0; row < m; row++)
        {
            ReadOnlySpan<float> aRow = a.Slice(row * k, k);
            for (int col = 0; col < n; col++)
            {
                // One dot product in float64, in order.
                ReadOnlySpan<float> wRow = w.Slice(col * k, k);
                double sum = 0;
                for (int i = 0; i < k; i++)
                {
                    sum += (double)aRow[i] * wRow[i];
                }

                output[(row * n) + col] = sum;
            }
        }
    }

    /// <summary>
    /// The CPU product over raw pointers: a [M, K] float32, w [N, K] of <paramref name="wType"/>, output [M, N].
    /// <paramref name="width"/> picks the kernel family (tests force the narrower ones on AVX-512 machines).
    /// </summary>
    internal static void ComputeCpu<TEpilogue>(
        WorkerPool pool,
        float* a,
        void* w,
        DType wType,
        float* output,
        int m,
        int n,
        int k,
        ref TEpilogue epilogue,
        KernelWidth width)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        // Decode and tiny batches stream the weights once; larger batches pack panels.
        if (CpuGemv.Handles(m, wType, width))
        {
            CpuGemv.Run(pool, a, w, wType, output, m, n, k, ref epilogue, width);
        }
        else
        {
            CpuGemm.Run(pool, a, w, wType, output, m, n, k, ref epilogue, width);
        }
    }

    private readonly record struct Shape(int M, int N, int K);

    private static Shape Validate(Tensor a, Tensor w, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(output);

        // Devices: one device for all three tensors.
        if (!ReferenceEquals(a.Device, w.Device) || !ReferenceEquals(a.Device, output.Device))
        {
            throw new ArgumentException(
                $"MatMul: a is on {a.Device.Name}, w on {w.Device.Name} and output on {output.Device.Name}; "
                + "move them to one device with To(device) first.", nameof(w));
        }

        // Dtypes: float32 activations and output, float32/float16/bfloat16 weights.
        if (a.DType != DType.Float32)
        {
            throw new ArgumentException($"MatMul: a is {a.DType.Name()}; the activations must be float32.", nameof(a));
        }

        if (!w.DType.IsFloatingPoint() && w.DType != DType.Q8_0)
        {
            throw new ArgumentException(
                $"MatMul: w is {w.DType.Name()}; the weights must be float32, float16, bfloat16 or q8_0.", nameof(w));
        }

        if (output.DType != DType.Float32)
        {
            throw new ArgumentException(
                $"MatMul: output is {output.DType.Name()}; the output must be float32.", nameof(output));
        }

        // Shapes: w is [N, K], a is [..., K], output is [..., N] with as many rows as a.
        if (w.Rank != 2)
        {
            throw new ArgumentException(
                $"MatMul: w has shape {Tensor.FormatShape(w.Shape)}; weights must be 2-D [N, K] ([out, in]).", nameof(w));
        }

        int n = w.Size(0);
        int k = w.Size(1);
        if (a.Rank < 1 || a.Size(-1) != k)
        {
            throw new ArgumentException(
                $"MatMul: a has shape {Tensor.FormatShape(a.Shape)} but w {Tensor.FormatShape(w.Shape)} needs a last "
                + $"dimension of K = {k}; pass a as [..., {k}].", nameof(a));
        }

        if (w.DType == DType.Q8_0 && k % Q8_0Blocks.BlockElements != 0)
        {
            throw new ArgumentException(
                $"MatMul: w is q8_0 with shape {Tensor.FormatShape(w.Shape)}; K = {k} is not a multiple of 32, store "
                + "this matrix as float32 or float16.", nameof(w));
        }

        if (k == 0)
        {
            throw new ArgumentException(
                $"MatMul: w has shape {Tensor.FormatShape(w.Shape)}, an empty inner dimension; K must be at least 1.",
                nameof(w));
        }

        long m = a.Length / k;
        if (output.Rank < 1 || output.Size(-1) != n || output.Length != m * n)
        {
            throw new ArgumentException(
                $"MatMul: output has shape {Tensor.FormatShape(output.Shape)} but a {Tensor.FormatShape(a.Shape)} and "
                + $"w {Tensor.FormatShape(w.Shape)} give {m} rows of N = {n}; pass an output of shape [..., {n}] "
                + $"holding {m * n} elements.", nameof(output));
        }

        // Layout: the kernels read plain row-major memory.
        RequireContiguous(a, nameof(a));
        RequireContiguous(w, nameof(w));
        RequireContiguous(output, nameof(output));

        // Aliasing: the output is written while a and w are still being read.
        if (a.Device is CpuDevice && m * n > 0)
        {
            if (Overlaps(output, a) || Overlaps(output, w))
            {
                throw new ArgumentException(
                    "MatMul: output overlaps a or w; the product cannot be computed in place, pass a separate output "
                    + "tensor.", nameof(output));
            }
        }

        return new Shape((int)m, n, k);
    }

    private static void RequireContiguous(Tensor tensor, string name)
    {
        if (!tensor.IsContiguous)
        {
            throw new ArgumentException(
                $"MatMul: {name} {tensor} is not contiguous (strides [{string.Join(", ", tensor.Strides.ToArray())}]); "
                + "copy it into a contiguous tensor first.", name);
        }
    }

    private static bool Overlaps(Tensor x, Tensor y)
    {
        if (x.Length == 0 || y.Length == 0)
        {
            return false;
        }

        byte* xStart = (byte*)x.DataPointer;
        byte* yStart = (byte*)y.DataPointer;
        byte* xEnd = xStart + x.ByteLength;
        byte* yEnd = yStart + y.ByteLength;
        return xStart < yEnd && yStart < xEnd;
    }
}

/// <summary>Which SIMD width a CPU kernel uses; <see cref="CpuGemm.BestWidth"/> is the widest the machine runs well.</summary>
internal enum KernelWidth
{
    /// <summary>Plain scalar loops (no SIMD acceleration).</summary>
    Scalar,

    /// <summary>Vector256 (AVX2 + FMA): 6×16 micro-tiles.</summary>
    Vector256,

    /// <summary>Vector512 (AVX-512F): 14×32 micro-tiles.</summary>
    Vector512,
}
