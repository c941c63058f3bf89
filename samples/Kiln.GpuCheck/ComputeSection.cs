// Section c, compute: the matrix product's throughput, 2 · M · N · K floating-point operations over the median
// time, at prefill-sized shapes (4096³ and 8192 × 4096 × 4096 on a GPU), with float32 and float16 weights
// (activations and accumulation are float32 in both).

using Kiln.Kernels;

namespace Kiln.GpuCheck;

/// <summary>The compute section.</summary>
internal static class ComputeSection
{
    /// <summary>The section's columns.</summary>
    public static readonly Column[] Columns =
    [
        new("product", "product"),
        new("shape", "M × N × K"),
        new("weights", "weights"),
        new("time_ms", "median ms", "0.000"),
        new("tflops", "TFLOP/s", "0.00"),
        new("note", "note"),
    ];

    /// <summary>Measures every shape of the size with float32 and float16 weights.</summary>
    public static void Run(CheckContext context)
    {
        Report.Table table = context.Report.Section(
            "compute",
            $"Compute on {context.Device.Name}: the matrix product C = A · Wᵀ (median of "
            + $"{context.Size.ComputeRepeat.Repetitions} × {context.Size.ComputeRepeat.Batch} after warm-up)",
            Columns);
        foreach ((int m, int n, int k) in context.Size.ComputeShapes)
        {
            foreach (DType dtype in (DType[])[DType.Float32, DType.Float16])
            {
                string shape = $"{m} × {n} × {k}";
                context.Log.WriteLine($"kiln-gpucheck: compute: MatMul {shape} {dtype.Name()}");
                try
                {
                    using Tensor a = BandwidthSection.Filled(context.Device, [m, k], 21);
                    using Tensor w = BandwidthSection.Filled(context.Device, [n, k], 22, dtype, amplitude: 0.05f);
                    using Tensor c = Tensor.Empty([m, n], DType.Float32, context.Device);
                    double seconds = Timing.Median(context.Device, context.Size.ComputeRepeat, () => MatMul.Compute(a, w, c));
                    double flops = 2.0 * m * n * k;
                    table.Add("MatMul", shape, dtype.Name(), seconds * 1e3, flops / seconds / 1e12, "");
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    context.Errors++;
                    table.Add("MatMul", shape, dtype.Name(), double.NaN, double.NaN,
                        $"error: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
                }
            }
        }
    }
}
