// Bad input to MatMul.Compute: each case must throw ArgumentException whose message names the input and says
// what is wrong. Also: a decode step (M = 1) allocates nothing on the calling thread once warmed up.
using Kiln.Devices;
using Kiln.Kernels;
using Xunit;

namespace Kiln.Core.Tests.MatMul;

/// <summary>Argument checks and the allocation-free decode step.</summary>
public sealed class MatMulValidationTests
{
    private static readonly CpuDevice Cpu = new(2);

    [Fact]
    public void RejectsMismatchedInnerDimension()
    {
        using Tensor a = Tensor.Empty([3, 5], DType.Float32, Cpu);
        using Tensor w = Tensor.Empty([4, 6], DType.Float32, Cpu);
        using Tensor output = Tensor.Empty([3, 4], DType.Float32, Cpu);

        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Compute(a, w, output));

        Assert.Equal("a", error.ParamName);
        Assert.Contains("K = 6", error.Message);
    }

    [Fact]
    public void RejectsWrongOutputShape()
    {
        using Tensor a = Tensor.Empty([3, 5], DType.Float32, Cpu);
        using Tensor w = Tensor.Empty([4, 5], DType.Float32, Cpu);
        using Tensor output = Tensor.Empty([4, 3], DType.Float32, Cpu);

        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Compute(a, w, output));

        Assert.Equal("output", error.ParamName);
        Assert.Contains("[..., 4]", error.Message);
    }

    [Fact]
    public void RejectsWeightsThatAreNotMatrices()
    {
        using Tensor a = Tensor.Empty([3, 5], DType.Float32, Cpu);
        using Tensor w = Tensor.Empty([2, 4, 5], DType.Float32, Cpu);
        using Tensor output = Tensor.Empty([3, 4], DType.Float32, Cpu);

        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Compute(a, w, output));

        Assert.Equal("w", error.ParamName);
        Assert.Contains("2-D [N, K]", error.Message);
    }

    [Fact]
    public void RejectsHalfPrecisionActivationsAndOutput()
    {
        using Tensor a16 = Tensor.Empty([3, 5], DType.Float16, Cpu);
        using Tensor a = Tensor.Empty([3, 5], DType.Float32, Cpu);
        using Tensor w = Tensor.Empty([4, 5], DType.BFloat16, Cpu);
        using Tensor output = Tensor.Empty([3, 4], DType.Float32, Cpu);
        using Tensor output16 = Tensor.Empty([3, 4], DType.BFloat16, Cpu);

        ArgumentException activations = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Compute(a16, w, output));
        ArgumentException result = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Compute(a, w, output16));

        Assert.Contains("must be float32", activations.Message);
        Assert.Contains("must be float32", result.Message);
    }

    [Fact]
    public void RejectsTensorsOnDifferentDevices()
    {
        using CpuDevice other = new(1);
        using Tensor a = Tensor.Empty([3, 5], DType.Float32, Cpu);
        using Tensor w = Tensor.Empty([4, 5], DType.Float32, other);
        using Tensor output = Tensor.Empty([3, 4], DType.Float32, Cpu);

        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Compute(a, w, output));

        Assert.Contains("one device", error.Message);
    }

    [Fact]
    public void RejectsOutputOverlappingInput()
    {
        using Tensor buffer = Tensor.Empty([8, 4], DType.Float32, Cpu);
        using Tensor w = Tensor.Empty([4, 4], DType.Float32, Cpu);
        using Tensor a = buffer.Slice(0, 4);
        using Tensor output = buffer.Slice(2, 4);

        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Compute(a, w, output));

        Assert.Equal("output", error.ParamName);
        Assert.Contains("overlaps", error.Message);
    }

    [Fact]
    public void RejectsEmptyInnerDimension()
    {
        using Tensor a = Tensor.Empty([3, 0], DType.Float32, Cpu);
        using Tensor w = Tensor.Empty([4, 0], DType.Float32, Cpu);
        using Tensor output = Tensor.Empty([3, 4], DType.Float32, Cpu);

        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Compute(a, w, output));

        Assert.Contains("K must be at least 1", error.Message);
    }

    [Fact]
    public void AcceptsEmptyBatch()
    {
        using Tensor a = Tensor.Empty([0, 5], DType.Float32, Cpu);
        using Tensor w = Tensor.Empty([4, 5], DType.Float32, Cpu);
        using Tensor output = Tensor.Empty([0, 4], DType.Float32, Cpu);

        Kiln.Kernels.MatMul.Compute(a, w, output);
    }

    /// <summary>A decode step (M = 1) allocates nothing, with the identity and a user epilogue, on 1 and 2 threads.</summary>
    [Theory]
    [InlineData(1, DType.Float32)]
    [InlineData(2, DType.BFloat16)]
    [InlineData(2, DType.Float16)]
    public unsafe void DecodeStepAllocatesNothing(int threads, DType wType)
    {
        using CpuDevice device = new(threads);
        GemmCase c = new(M: 1, N: 1000, K: 512, WType: wType, UseEpilogue: true, Seed: 5);
        using Tensor a = Tensor.FromArray(c.A, [1, c.K], device);
        using Tensor w = c.WeightTensor(device);
        using Tensor residual = Tensor.FromArray(c.Residual, [1, c.N], device);
        using Tensor output = Tensor.Empty([1, c.N], DType.Float32, device);
        ResidualEpilogue epilogue = new() { Residual = residual.FloatPointer, N = c.N };

        // Warm up (JIT, tiering), then count the bytes of many steps.
        for (int i = 0; i < 50; i++)
        {
            Kiln.Kernels.MatMul.Compute(a, w, output, ref epilogue);
            Kiln.Kernels.MatMul.Compute(a, w, output);
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            Kiln.Kernels.MatMul.Compute(a, w, output, ref epilogue);
            Kiln.Kernels.MatMul.Compute(a, w, output);
        }

        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
    }

    /// <summary>After a first call sized its buffers, a prefill-shaped product allocates nothing either.</summary>
    [Fact]
    public void PrefillStepAllocatesNothingOnceWarm()
    {
        using CpuDevice device = new(1);
        GemmCase c = new(M: 40, N: 100, K: 600, WType: DType.Float32, UseEpilogue: false, Seed: 9);
        using Tensor a = Tensor.FromArray(c.A, [c.M, c.K], device);
        using Tensor w = c.WeightTensor(device);
        using Tensor output = Tensor.Empty([c.M, c.N], DType.Float32, device);
        for (int i = 0; i < 5; i++)
        {
            Kiln.Kernels.MatMul.Compute(a, w, output);
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++)
        {
            Kiln.Kernels.MatMul.Compute(a, w, output);
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }
}
