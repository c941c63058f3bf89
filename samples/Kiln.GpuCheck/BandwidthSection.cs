// Section b, bandwidth: the device-to-device copy bandwidth (one buffer copied into another, bytes read + bytes
// written), then the effective bandwidth of each memory-bound kernel at sizes far beyond the L2 cache, as the bytes
// the kernel must move (formula per entry: every input read once, every output written once; small broadcast
// operands such as a norm weight counted once) divided by its median time, and its ratio to the copy bandwidth.
// Target (issue 3): fused memory-bound kernels at 80% of the copy bandwidth or more.

using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;
using Device = Kiln.Devices.Device;
using Kiln.Kernels;

namespace Kiln.GpuCheck;

/// <summary>The bandwidth section.</summary>
internal static class BandwidthSection
{
    /// <summary>The section's columns.</summary>
    public static readonly Column[] Columns =
    [
        new("kernel", "kernel"),
        new("shape", "shape"),
        new("bytes", "bytes moved"),
        new("time_us", "median µs", "0.0"),
        new("gb_per_s", "GB/s", "0.0"),
        new("of_copy", "of copy", "0.00"),
        new("note", "note"),
    ];

    /// <summary>Measures the copy bandwidth and every memory-bound kernel.</summary>
    public static void Run(CheckContext context)
    {
        Report.Table table = context.Report.Section(
            "bandwidth",
            $"Bandwidth on {context.Device.Name} (median of {context.Size.BandwidthRepeat.Repetitions} × "
            + $"{context.Size.BandwidthRepeat.Batch} launches after warm-up)",
            Columns);

        // The copy first: every other row is a fraction of it.
        double copy = MeasureCopy(context, table);
        CheckSize size = context.Size;
        IlgpuDevice device = context.Device;

        // RmsNorm over [T, D] with weight [D]: read x and weight, write out.
        (int rows, int dim) = size.BandwidthRows;
        Measure(context, table, copy, "RmsNorm", $"[{rows}, {dim}]", 4L * ((2L * rows * dim) + dim), s =>
        {
            Tensor x = s.Add(Filled(device, [rows, dim], 1));
            Tensor weight = s.Add(Filled(device, [dim], 2, offset: 1f));
            Tensor output = s.Add(Tensor.Empty([rows, dim], DType.Float32, device));
            return () => Ops.RmsNorm(x, weight, 1e-5f, output);
        });

        // Softmax over [T, D]: read x, write out (the online max-and-sum pass reads x a second time; counted once).
        Measure(context, table, copy, "Softmax", $"[{rows}, {dim}]", 4L * 2L * rows * dim, s =>
        {
            Tensor x = s.Add(Filled(device, [rows, dim], 3, amplitude: 8f));
            Tensor output = s.Add(Tensor.Empty([rows, dim], DType.Float32, device));
            return () => Ops.Softmax(x, output);
        });

        // SiluMul and Add over n elements: read two inputs, write one output.
        int n = size.BandwidthElements;
        Measure(context, table, copy, "SiluMul", $"[{n}]", 4L * 3L * n, s =>
        {
            Tensor gate = s.Add(Filled(device, [n], 4));
            Tensor up = s.Add(Filled(device, [n], 5));
            Tensor output = s.Add(Tensor.Empty([n], DType.Float32, device));
            return () => Ops.SiluMul(gate, up, output);
        });
        Measure(context, table, copy, "Add", $"[{n}]", 4L * 3L * n, s =>
        {
            Tensor a = s.Add(Filled(device, [n], 6));
            Tensor b = s.Add(Filled(device, [n], 7));
            Tensor output = s.Add(Tensor.Empty([n], DType.Float32, device));
            return () => Ops.Add(a, b, output);
        });

        // RoPE over [T, H, Dh] at positions 0..T-1: read x and both tables' rows [T, Dh/2], write out.
        (int tokens, int heads, int headDim) = size.BandwidthRope;
        long ropeElements = (long)tokens * heads * headDim;
        Measure(context, table, copy, "Rope", $"[{tokens}, {heads}, {headDim}]", 4L * ((2L * ropeElements) + ((long)tokens * headDim)), s =>
        {
            Tensor x = s.Add(Filled(device, [tokens, heads, headDim], 8));
            (Tensor cos, Tensor sin) = Ops.RopeTables(tokens, headDim, 10000f, device);
            s.Add(cos);
            s.Add(sin);
            Tensor output = s.Add(Tensor.Empty([tokens, heads, headDim], DType.Float32, device));
            return () => Ops.Rope(x, cos, sin, 0, RopeLayout.Adjacent, output);
        });

        // The embedding lookup of T tokens from a float16 table [V, D]: read T ids and T rows, write T float32 rows.
        int vocab = Math.Max(2, rows * 2);
        Measure(context, table, copy, "Embedding float16", $"[{rows}] ids from [{vocab}, {dim}]",
            ((long)rows * dim * (2 + 4)) + (4L * rows), s =>
            {
                Random random = new(context.Seed);
                int[] ids = new int[rows];
                for (int i = 0; i < ids.Length; i++)
                {
                    ids[i] = random.Next(vocab);
                }

                Tensor embedding = s.Add(Filled(device, [vocab, dim], 12, DType.Float16));
                Tensor idTensor = s.Add(Tensor.FromArray(ids, [rows], device));
                Tensor output = s.Add(Tensor.Empty([rows, dim], DType.Float32, device));
                return () => Embedding.Lookup(embedding, idTensor, output);
            });

        // The matrix-vector product (decode's projections): read W [N, K] once, read x [K], write y [N].
        (int rowsN, int columnsK) = size.BandwidthMatVec;
        foreach (DType dtype in (DType[])[DType.Float32, DType.Float16])
        {
            long bytes = ((long)rowsN * columnsK * dtype.SizeOf()) + (4L * columnsK) + (4L * rowsN);
            Measure(context, table, copy, $"MatMul M=1 {dtype.Name()}", $"[1, {columnsK}] · [{rowsN}, {columnsK}]ᵀ", bytes, s =>
            {
                Tensor x = s.Add(Filled(device, [1, columnsK], 9));
                Tensor w = s.Add(Filled(device, [rowsN, columnsK], 10, dtype: dtype, amplitude: 0.05f));
                Tensor output = s.Add(Tensor.Empty([1, rowsN], DType.Float32, device));
                return () => MatMul.Compute(x, w, output);
            });
        }
    }

    /// <summary>
    /// The device-to-device copy bandwidth in bytes per second (bytes read + bytes written, over the median time),
    /// measured once per run and kept in the context.
    /// </summary>
    public static double MeasureCopy(CheckContext context, Report.Table? table)
    {
        if (context.CopyBandwidth is double known && table is null)
        {
            return known;
        }

        int floats = (int)(context.Size.CopyBytes / sizeof(float));
        using Tensor source = Filled(context.Device, [floats], 11);
        using Tensor target = Tensor.Empty([floats], DType.Float32, context.Device);
        ArrayView<float> from = source.View<float>();
        ArrayView<float> to = target.View<float>();
        double seconds = Timing.Median(context.Device, context.Size.BandwidthRepeat, () => from.CopyTo(to));
        long bytes = 2L * floats * sizeof(float);
        double bandwidth = bytes / seconds;
        context.CopyBandwidth = bandwidth;
        table?.Add("copy (device to device)", $"{context.Size.CopyBytes >> 20} MiB", bytes, seconds * 1e6,
            bandwidth / 1e9, 1.0, "read + write");
        return bandwidth;
    }

    /// <summary>A float32 (or <paramref name="dtype"/>) tensor on the device filled with grid values.</summary>
    internal static Tensor Filled(
        Device device,
        int[] shape,
        uint seed,
        DType dtype = DType.Float32,
        float amplitude = 1f,
        float offset = 0f)
    {
        Tensor tensor = Tensor.Empty(shape, dtype, device);
        DeviceFill.Uniform(tensor, seed, amplitude, offset);
        return tensor;
    }

    private static void Measure(
        CheckContext context,
        Report.Table table,
        double copy,
        string name,
        string shape,
        long bytes,
        Func<TensorScope, Action> setup)
    {
        context.Log.WriteLine($"kiln-gpucheck: bandwidth: {name} {shape}");
        using TensorScope scope = new();
        try
        {
            Action run = setup(scope);
            double seconds = Timing.Median(context.Device, context.Size.BandwidthRepeat, run);
            double bandwidth = bytes / seconds;
            table.Add(name, shape, bytes, seconds * 1e6, bandwidth / 1e9, bandwidth / copy, "");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            context.Errors++;
            table.Add(name, shape, bytes, double.NaN, double.NaN, double.NaN, $"error: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
        }
    }
}
