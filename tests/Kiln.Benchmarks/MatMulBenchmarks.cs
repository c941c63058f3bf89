// BenchmarkDotNet suite of the CPU matrix product: the prefill shape (1024³), a decode step (M = 1, 4096 × 4096,
// float32 and bfloat16 weights), a small batch (M = 8) and the tiny model shape (M = 1, N = 172, K = 64) that must
// stay overhead-free. Run: dotnet run -c Release --project tests/Kiln.Benchmarks -- --filter '*MatMul*'.
// The side-by-side comparison with OpenBLAS is `kiln bench gemm` (samples/Kiln.Cli/Bench/GemmBench.cs).
using BenchmarkDotNet.Attributes;
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Benchmarks;

/// <summary>Kiln's CPU matrix product on model-shaped problems; reports time per call (FLOPs are 2·M·N·K).</summary>
[MemoryDiagnoser]
public class MatMulBenchmarks
{
    private CpuDevice _device = null!;
    private Tensor _a = null!;
    private Tensor _w = null!;
    private Tensor _c = null!;

    /// <summary>The problem: "M×N×K dtype".</summary>
    [Params("1024x1024x1024 float32", "1x4096x4096 float32", "1x4096x4096 bfloat16", "8x4096x4096 float32",
        "1x172x64 float32")]
    public string Shape { get; set; } = string.Empty;

    /// <summary>Worker threads, the caller included.</summary>
    [Params(1, 2)]
    public int Threads { get; set; }

    /// <summary>Allocates the operands once.</summary>
    [GlobalSetup]
    public void Setup()
    {
        string[] parts = Shape.Split(' ');
        int[] dims = parts[0].Split('x').Select(int.Parse).ToArray();
        DType wType = parts[1] == "bfloat16" ? DType.BFloat16 : DType.Float32;
        (int m, int n, int k) = (dims[0], dims[1], dims[2]);
        _device = new CpuDevice(Threads);
        Random random = new(1);
        _a = Tensor.FromArray(Enumerable.Range(0, m * k).Select(_ => (float)random.NextDouble() - 0.5f).ToArray(), [m, k], _device);
        float[] weights = Enumerable.Range(0, n * k).Select(_ => (float)random.NextDouble() - 0.5f).ToArray();
        _w = wType == DType.Float32
            ? Tensor.FromArray(weights, [n, k], _device)
            : Tensor.FromBits(weights.Select(DTypes.SingleToBFloat16).ToArray(), [n, k], DType.BFloat16, _device);
        _c = Tensor.Empty([m, n], DType.Float32, _device);
    }

    /// <summary>Frees the operands and the device.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _a.Dispose();
        _w.Dispose();
        _c.Dispose();
        _device.Dispose();
    }

    /// <summary>One product C = A · Wᵀ.</summary>
    [Benchmark]
    public void Compute() => MatMul.Compute(_a, _w, _c);
}
