// FsCheck properties of the ILGPU matrix product run on ILGPU's CPU accelerator (a simulated warp-32 GPU with
// 64 threads per group, so the tiled kernel uses 8×8 threads and 32×32 tiles) at optimization levels O1 and O2,
// against the float64 reference with the tolerances of MatMulTestSupport.cs. The accelerator is slow: sizes
// stay tiny but still cross the 32-wide tile and the 16-deep K step, and include 1 and odd sizes. One
// accelerator per test class (class fixture), not per case.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using ILGPU;
using Kiln.Devices;
using Kiln.Kernels;
using Xunit;

namespace Kiln.Core.Tests.MatMul;

/// <summary>An ILGPU CPU accelerator at O1, shared by one test class.</summary>
public sealed class IlgpuO1Fixture : IDisposable
{
    /// <summary>The device.</summary>
    public IlgpuDevice Device { get; } = IlgpuDevice.CreateCpuAccelerator(OptimizationLevel.O1);

    /// <inheritdoc />
    public void Dispose() => Device.Dispose();
}

/// <summary>An ILGPU CPU accelerator at O2, shared by one test class.</summary>
public sealed class IlgpuO2Fixture : IDisposable
{
    /// <summary>The device.</summary>
    public IlgpuDevice Device { get; } = IlgpuDevice.CreateCpuAccelerator(OptimizationLevel.O2);

    /// <inheritdoc />
    public void Dispose() => Device.Dispose();
}

/// <summary>The ILGPU kernels against the reference; derived classes pick the optimization level.</summary>
public abstract class MatMulGpuProperties
{
    private readonly IlgpuDevice _device;

    /// <summary>Runs the properties on <paramref name="device"/>.</summary>
    protected MatMulGpuProperties(IlgpuDevice device)
    {
        _device = device;
    }

    /// <summary>M > 1: the shared-memory tiled kernel, with the test epilogue or the identity.</summary>
    [Property(MaxTest = 12)]
    public Property TiledKernelMatchesReference() =>
        Prop.ForAll(MatMulCpuProperties.Cases(MatMulCpuProperties.Size(2, 40, 2, 3, 31, 32, 33),
            MatMulCpuProperties.Size(1, 70, 1, 7, 31, 32, 33, 65),
            MatMulCpuProperties.Size(1, 40, 1, 15, 16, 17, 33)).ToArbitrary(), Check);

    /// <summary>M = 1: the warp-per-column matrix-vector kernel.</summary>
    [Property(MaxTest = 12)]
    public Property VectorKernelMatchesReference() =>
        Prop.ForAll(MatMulCpuProperties.Cases(Gen.Constant(1), MatMulCpuProperties.Size(1, 40, 1, 2, 3, 31, 33),
            MatMulCpuProperties.Size(1, 100, 1, 31, 32, 33, 64, 65)).ToArbitrary(), Check);

    /// <summary>MatMul.Compute on ILGPU tensors runs the identity epilogue on the device; other CPU epilogues are refused.</summary>
    [Fact]
    public unsafe void ComputeDispatchesToTheDevice()
    {
        GemmCase c = new(M: 5, N: 9, K: 21, WType: DType.Float16, UseEpilogue: false, Seed: 4);
        using Tensor a = Tensor.FromArray(c.A, [c.M, c.K], _device);
        using Tensor w = c.WeightTensor(_device);
        using Tensor output = Tensor.Empty([c.M, c.N], DType.Float32, _device);

        Kiln.Kernels.MatMul.Compute(a, w, output);
        _device.Synchronize();

        c.Check(output.ToArray(), $"ILGPU Compute ({_device.Name})");
        ResidualEpilogue cpuEpilogue = default;
        Assert.Throws<NotSupportedException>(() => Kiln.Kernels.MatMul.Compute(a, w, output, ref cpuEpilogue));
    }

    private void Check(GemmCase c)
    {
        using Tensor a = Tensor.FromArray(c.A, [c.M, c.K], _device);
        using Tensor w = c.WeightTensor(_device);
        using Tensor residual = Tensor.FromArray(c.Residual, [c.M, c.N], _device);
        using Tensor output = Tensor.Empty([c.M, c.N], DType.Float32, _device);
        if (c.UseEpilogue)
        {
            Kiln.Kernels.MatMul.ComputeGpu(a, w, output, new GpuResidualEpilogue { Residual = residual.View<float>() });
        }
        else
        {
            Kiln.Kernels.MatMul.ComputeGpu(a, w, output, default(IdentityEpilogue));
        }

        _device.Synchronize();
        c.Check(output.ToArray(), $"ILGPU ({_device.Name})");
    }
}

/// <summary>The ILGPU properties at O1.</summary>
public sealed class MatMulGpuPropertiesO1 : MatMulGpuProperties, IClassFixture<IlgpuO1Fixture>
{
    /// <summary>Uses the class's O1 accelerator.</summary>
    public MatMulGpuPropertiesO1(IlgpuO1Fixture fixture)
        : base(fixture.Device)
    {
    }
}

/// <summary>The ILGPU properties at O2.</summary>
public sealed class MatMulGpuPropertiesO2 : MatMulGpuProperties, IClassFixture<IlgpuO2Fixture>
{
    /// <summary>Uses the class's O2 accelerator.</summary>
    public MatMulGpuPropertiesO2(IlgpuO2Fixture fixture)
        : base(fixture.Device)
    {
    }
}
