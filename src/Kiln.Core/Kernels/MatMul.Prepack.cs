// Prepacked weights for the CPU matrix product: pack W once at load time, then every prefill-sized product
// (M > 32) skips the packing pass. Same math and results as the unpacked Compute, bit for bit: the packed panels
// hold exactly the values the per-call packing would produce, and the K blocks are the same.
using Kiln.Devices;
using Kiln.Kernels.Gemm;
using Kiln.Memory;

namespace Kiln.Kernels;

public static unsafe partial class MatMul
{
    /// <summary>
    /// Packs CPU weights <paramref name="w"/> [N, K] (float32, float16 or bfloat16) once for
    /// <see cref="Compute{TEpilogue}(Tensor, PackedWeights, Tensor, ref TEpilogue)"/>.
    /// </summary>
    /// <remarks>The packed copy takes 4·K bytes per row (float32) in addition to <paramref name="w"/>, which must stay
    /// alive and unchanged while the packed weights are used (decode steps read it directly).</remarks>
    /// <exception cref="ArgumentException">w is not a contiguous 2-D CPU tensor with K ≥ 1.</exception>
    public static PackedWeights Prepack(Tensor w)
    {
        ArgumentNullException.ThrowIfNull(w);
        if (w.Device is not CpuDevice || w.Rank != 2 || !w.IsContiguous || w.Size(1) == 0)
        {
            throw new ArgumentException(
                $"MatMul.Prepack: w is {w} with shape {Tensor.FormatShape(w.Shape)}; prepacking needs contiguous 2-D "
                + "[N, K] CPU weights with K ≥ 1.", nameof(w));
        }

        // The scalar family reads W directly: nothing to pack.
        KernelWidth width = CpuGemm.BestWidth;
        if (width == KernelWidth.Scalar)
        {
            return new PackedWeights(w, null, width, 1);
        }

        // [ceil(N / NR)][K][NR] floats, zero past N.
        int tileColumns = width == KernelWidth.Vector512 ? 32 : 16;
        int n = w.Size(0);
        int k = w.Size(1);
        long panels = (n + tileColumns - 1) / tileColumns;
        NativeBuffer buffer = new(panels * k * tileColumns * sizeof(float));
        CpuGemm.PackPanels(w.DataPointer, w.DType, n, k, tileColumns, (float*)buffer.Pointer);
        return new PackedWeights(w, buffer, width, tileColumns);
    }

    /// <summary>Computes <c>output[M, N] = a[M, K] · w[N, K]ᵀ</c> with prepacked weights.</summary>
    /// <exception cref="ArgumentException">Shapes, dtypes, devices or layouts do not fit together.</exception>
    public static void Compute(Tensor a, PackedWeights w, Tensor output)
    {
        IdentityEpilogue identity = default;
        Compute(a, w, output, ref identity);
    }

    /// <summary>
    /// Computes <c>output[M, N] = epilogue(a[M, K] · w[N, K]ᵀ)</c> with prepacked weights: small M (up to 32, 16 for
    /// Q8_0) streams the original weights, larger M reads the packed panels instead of packing W again.
    /// </summary>
    /// <exception cref="ArgumentException">Shapes, dtypes, devices or layouts do not fit together.</exception>
    public static void Compute<TEpilogue>(Tensor a, PackedWeights w, Tensor output, ref TEpilogue epilogue)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        ArgumentNullException.ThrowIfNull(w);
        Shape shape = Validate(a, w.Source, output);
        CpuDevice cpu = (CpuDevice)a.Device;
        if (CpuGemv.Handles(shape.M, w.Source.DType, w.Width) || w.Panels is null)
        {
            ComputeCpu(cpu.Pool, (float*)a.DataPointer, w.Source.DataPointer, w.Source.DType, (float*)output.DataPointer,
                shape.M, shape.N, shape.K, ref epilogue, w.Width);
            return;
        }

        CpuGemm.Run(cpu.Pool, (float*)a.DataPointer, w.Source.DataPointer, w.Source.DType, (float*)output.DataPointer,
            shape.M, shape.N, shape.K, ref epilogue, w.Width, w.Panels);
    }
}
