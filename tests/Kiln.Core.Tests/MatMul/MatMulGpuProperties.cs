// FsCheck properties of the ILGPU matrix product run on ILGPU's CPU accelerator (a simulated warp-32 GPU with
// 64 threads per group, so the tiled kernel uses 8×8 threads and 64×64 tiles, the matrix-vector kernel 2 warps)
// at optimization levels O1 and O2, against the float64 reference with the tolerances of MatMulTestSupport.cs.
// Every path is covered: M = 1 and small M (2..16, 4 rows per pass) through the matrix-vector kernel, with
// 16-byte loads (K a multiple of 8, aligned views) or scalar loads (odd K, misaligned views), A rows cached in
// shared memory or read from global memory (over 32 KB); M > 16 through the tiled kernel. Sizes stay tiny but
// cross the 64-wide tile, the 8-deep K step, the 4-row pass and the 256-wide warp step, and include 1 and odd
// sizes. One accelerator per test class (class fixture), not per case.
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

    /// <summary>M > 16: the shared-memory tiled kernel (64×64 tiles here), with the test epilogue or the identity.</summary>
    [Property(MaxTest = 12)]
    public Property TiledKernelMatchesReference() =>
        Prop.ForAll(MatMulCpuProperties.FloatCases(MatMulCpuProperties.Size(17, 70, 17, 63, 64, 65),
            MatMulCpuProperties.Size(1, 70, 1, 7, 63, 64, 65),
            MatMulCpuProperties.Size(1, 40, 1, 7, 8, 9, 16, 17, 33)).ToArbitrary(), Check);

    /// <summary>M = 1: the matrix-vector kernel, wide (K % 8 = 0) and scalar loads, across the 256-wide warp step.</summary>
    [Property(MaxTest = 10)]
    public Property VectorKernelMatchesReference() =>
        Prop.ForAll(MatMulCpuProperties.FloatCases(Gen.Constant(1), MatMulCpuProperties.Size(1, 40, 1, 2, 3, 31, 33),
            MatMulCpuProperties.Size(1, 300, 1, 7, 8, 9, 248, 255, 256, 257, 264, 512)).ToArbitrary(), Check);

    /// <summary>2 &lt;= M &lt;= 16: the matrix-vector kernel over passes of 4 rows (partial last pass included).</summary>
    [Property(MaxTest = 10)]
    public Property SmallBatchMatchesReference() =>
        Prop.ForAll(MatMulCpuProperties.FloatCases(MatMulCpuProperties.Size(2, 16, 2, 3, 4, 5, 8, 9, 16),
            MatMulCpuProperties.Size(1, 20, 1, 3, 17),
            MatMulCpuProperties.Size(1, 300, 1, 8, 9, 256, 264)).ToArbitrary(), Check);

    /// <summary>
    /// Q8_0 weights through every kernel (M = 1, passes of 4 rows, tiled), K a multiple of 32: widened exactly in
    /// registers, so the float32 weights' bound holds.
    /// </summary>
    [Property(MaxTest = 10)]
    public Property Q8_0WeightsMatchReference() =>
        Prop.ForAll(MatMulCpuProperties.Cases(Gen.Elements(1, 2, 5, 16, 17, 40), MatMulCpuProperties.Size(1, 40, 1, 3, 17, 33),
            MatMulCpuProperties.Size(1, 300, 32, 64, 256, 288), DType.Q8_0).ToArbitrary(), Check);

    /// <summary>A pass's rows over 32 KB are read from global memory instead of shared memory.</summary>
    [Property(MaxTest = 4)]
    public Property UncachedRowsMatchReference() =>
        Prop.ForAll(MatMulCpuProperties.FloatCases(Gen.Elements(1, 3, 6), Gen.Choose(1, 3), Gen.Elements(8200, 8201)).ToArbitrary(), Check);

    /// <summary>
    /// Views that do not start 16-byte aligned (a tensor sliced at element 1) use scalar loads even when K is a
    /// multiple of 8; the result is the same.
    /// </summary>
    [Theory]
    [InlineData(1, 5, 16)]
    [InlineData(3, 4, 264)]
    [InlineData(20, 3, 24)]
    public void MisalignedViewsMatchReference(int m, int n, int k)
    {
        GemmCase c = new(M: m, N: n, K: k, WType: DType.Float32, UseEpilogue: false, Seed: m + n + k);
        using Tensor aBacking = Tensor.FromArray(new float[1].Concat(c.A).ToArray(), [1 + (m * k)], _device);
        using Tensor wBacking = Tensor.FromArray(new float[1].Concat(c.W).ToArray(), [1 + (n * k)], _device);
        using Tensor a = aBacking.Slice(1, m * k).Reshape(m, k);
        using Tensor w = wBacking.Slice(1, n * k).Reshape(n, k);
        using Tensor output = Tensor.Empty([m, n], DType.Float32, _device);

        Kiln.Kernels.MatMul.ComputeGpu(a, w, output, default(IdentityEpilogue));
        _device.Synchronize();

        c.Check(output.ToArray(), $"ILGPU misaligned ({_device.Name})");
    }

    /// <summary>
    /// A generated epilogue from Kiln.Models (LlamaOps.SwiGluGate: silu(acc) · up) through every kernel path.
    /// Tolerance: the product's (1e-5·sqrt(K)·Σ|a·w|) times |up| (silu' is at most 1.1), plus 1e-6 relative for exp.
    /// </summary>
    [Property(MaxTest = 9)]
    public Property GeneratedEpilogueMatchesReference() =>
        Prop.ForAll(MatMulCpuProperties.FloatCases(Gen.Elements(1, 6, 19), MatMulCpuProperties.Size(1, 20, 1, 17),
            MatMulCpuProperties.Size(1, 40, 1, 8, 9, 33)).ToArbitrary(), CheckSwiGlu);

    private void CheckSwiGlu(GemmCase c)
    {
        using Tensor a = Tensor.FromArray(c.A, [c.M, c.K], _device);
        using Tensor w = c.WeightTensor(_device);
        using Tensor up = Tensor.FromArray(c.Residual, [c.M, c.N], _device);
        using Tensor output = Tensor.Empty([c.M, c.N], DType.Float32, _device);

        Kiln.Models.Llama.LlamaOps.SwiGluGate(a, w, up, output);
        _device.Synchronize();

        // Reference in float64 on the widened weights (c.W holds values exact in every dtype).
        float[] actual = output.ToArray();
        for (int row = 0; row < c.M; row++)
        {
            for (int col = 0; col < c.N; col++)
            {
                double z = 0;
                double magnitude = 0;
                for (int i = 0; i < c.K; i++)
                {
                    double product = (double)c.A[(row * c.K) + i] * c.W[(col * c.K) + i];
                    z += product;
                    magnitude += Math.Abs(product);
                }

                double u = c.Residual[(row * c.N) + col];
                double want = z / (1 + Math.Exp(-z)) * u;
                double tolerance = (1.1e-5 * Math.Sqrt(c.K) * magnitude * Math.Abs(u)) + (1e-6 * Math.Abs(want)) + 1e-30;
                double got = actual[(row * c.N) + col];
                Assert.True(
                    Math.Abs(got - want) <= tolerance,
                    $"SwiGluGate on {_device.Name} {c}: [{row}, {col}] = {got}, expected {want} (tolerance {tolerance:G3}).");
            }
        }
    }

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
