using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Core.Tests.Ops;

// The test-only definitions of TestKernels, generated and run on the CPU (one thread) and on ILGPU's CPU accelerator
// (at O1 and, in a second class, at O2, where a known ILGPU bug crashes only) against their float64 references: the generator's handling of every function, conditional, broadcast,
// reduction and kind, beyond what the built-in ops use.

/// <summary>Devices for the custom kernel tests.</summary>
public sealed class CustomKernelDevices : IDisposable
{
    /// <summary>A single-threaded CPU device.</summary>
    public CpuDevice Cpu { get; } = new(1);

    /// <summary>ILGPU's CPU accelerator at O1.</summary>
    public IlgpuDevice Ilgpu { get; } = IlgpuDevice.CreateCpuAccelerator();

    /// <summary>Both, for theories.</summary>
    public IEnumerable<Device> All => new Device[] { Cpu, Ilgpu };

    /// <inheritdoc />
    public void Dispose()
    {
        Cpu.Dispose();
        Ilgpu.Dispose();
    }
}

/// <summary>The test-only kernel definitions against their references, on the devices a derived class picks.</summary>
public abstract class CustomKernelTests
{
    private readonly Device[] _devices;

    /// <summary>Creates the tests over <paramref name="devices"/>.</summary>
    protected CustomKernelTests(params Device[] devices)
    {
        _devices = devices;
    }

    /// <summary>
    /// AllFunctions: the CPU uses .NET's vector Exp/Log/Sin/Cos (a few ulp) and the Tanh of VectorMath; terms reach
    /// about 30, so 2e-6 relative and 1e-5 absolute.
    /// </summary>
    [Property(MaxTest = 40, Arbitrary = new[] { typeof(TinyCases) })]
    public void AllFunctions_MatchesReference(PointwiseCase c)
    {
        float[] third = c.A.Select((v, i) => c.B[i % c.B.Length] - v).ToArray();
        foreach (Device device in _devices)
        {
            using TensorScope scope = new(device);
            Tensor output = scope.Zeros(c.Shape);
            TestKernels.AllFunctions(
                scope.From(c.A, c.Shape),
                scope.From(c.B, c.BShape),
                scope.From(third, c.Shape),
                output);
            double[] expected = c.A.Select((a, i) => TestKernels.Reference.AllFunctions(a, c.B[i % c.B.Length], third[i])).ToArray();
            Close.Check(expected, output.ToArray(), 2e-6, 1e-5, $"AllFunctions on {device.Name} ({c})");
        }
    }

    /// <summary>Conditionals are exact: every branch is one or two exact operations on grid values.</summary>
    [Property(MaxTest = 40, Arbitrary = new[] { typeof(TinyCases) })]
    public void Conditionals_MatchesReference(PointwiseCase c)
    {
        // Small integers make ties (x == y, x == 1) common.
        float[] x = c.A.Select(v => MathF.Round(v / 2f)).ToArray();
        float[] y = c.B.Select(v => MathF.Round(v / 2f)).ToArray();
        foreach (Device device in _devices)
        {
            using TensorScope scope = new(device);
            Tensor output = scope.Zeros(c.Shape);
            TestKernels.Conditionals(scope.From(x, c.Shape), scope.From(y, c.BShape), output);
            double[] expected = x.Select((v, i) => TestKernels.Reference.Conditionals(v, y[i % y.Length])).ToArray();
            Close.Check(expected, output.ToArray(), 0, 0, $"Conditionals on {device.Name} ({c})");
        }
    }

    /// <summary>ThreeInputs: two products and a sum of grid values and one constant: 1e-6 relative and absolute.</summary>
    [Property(MaxTest = 40, Arbitrary = new[] { typeof(TinyCases) })]
    public void ThreeInputs_MatchesReference(PointwiseCase c, bool lastIsFull)
    {
        int[] cShape = lastIsFull ? c.Shape : [c.Shape[^1]];
        float[] third = Enumerable.Range(0, OpGen.Count(cShape)).Select(i => ((i * 37) % 29) / 8f).ToArray();
        foreach (Device device in _devices)
        {
            using TensorScope scope = new(device);
            Tensor output = scope.Zeros(c.Shape);
            TestKernels.ThreeInputs(scope.From(c.A, c.Shape), scope.From(c.B, c.BShape), scope.From(third, cShape), output);
            double[] expected = c.A.Select((a, i) => TestKernels.Reference.ThreeInputs(a, c.B[i % c.B.Length], third[i % third.Length])).ToArray();
            Close.Check(
                expected,
                output.ToArray(),
                1e-6,
                1e-6,
                $"ThreeInputs on {device.Name} ({c}, c {Tensor.FormatShape(cShape)})");
        }
    }

    /// <summary>
    /// LayerNorm: the variance comes from Σx² - (Σx)²/n in float32, which loses digits when the mean is large against
    /// the spread; grid values in [-8, 8] keep it within 1e-4 relative and 1e-4 absolute.
    /// </summary>
    [Property(MaxTest = 40, Arbitrary = new[] { typeof(TinyCases) })]
    public void LayerNorm_MatchesReference(RowCase c)
    {
        float[] bias = c.Weight.Select(v => v / 2f).ToArray();
        foreach (Device device in _devices)
        {
            using TensorScope scope = new(device);
            Tensor output = scope.Zeros(c.Shape);
            TestKernels.LayerNorm(
                scope.From(c.X, c.Shape),
                scope.From(c.Weight, c.WeightShape),
                scope.From(bias, c.WeightShape),
                0.5f,
                output);
            double[] expected = TestKernels.Reference.LayerNorm(c.X, c.Weight, bias, c.RowLength, 0.5f);
            Close.Check(expected, output.ToArray(), 1e-4, 1e-4, $"LayerNorm on {device.Name} ({c})");
        }
    }

    /// <summary>ScaleByOtherMax: a max and a product and difference of grid values: exact.</summary>
    [Property(MaxTest = 40, Arbitrary = new[] { typeof(TinyCases) })]
    public void ScaleByOtherMax_MatchesReference(RowCase c)
    {
        foreach (Device device in _devices)
        {
            using TensorScope scope = new(device);
            Tensor output = scope.Zeros(c.Shape);
            TestKernels.ScaleByOtherMax(scope.From(c.X, c.Shape), scope.From(c.Weight, c.WeightShape), output);
            double[] expected = TestKernels.Reference.ScaleByOtherMax(c.X, c.Weight, c.RowLength);
            Close.Check(expected, output.ToArray(), 0, 0, $"ScaleByOtherMax on {device.Name} ({c})");
        }
    }

    /// <summary>TimesSumExp: the online sum of exponentials within 1e-5 relative, as in Softmax.</summary>
    [Property(MaxTest = 40, Arbitrary = new[] { typeof(TinyCases) })]
    public void TimesSumExp_MatchesReference(RowCase c)
    {
        foreach (Device device in _devices)
        {
            using TensorScope scope = new(device);
            Tensor output = scope.Zeros(c.Shape);
            TestKernels.TimesSumExp(scope.From(c.X, c.Shape), output);
            Close.Check(
                TestKernels.Reference.TimesSumExp(c.X, c.RowLength),
                output.ToArray(),
                1e-5,
                1e-7,
                $"TimesSumExp on {device.Name} ({c})");
        }
    }

    /// <summary>ScaledSilu: an exact product (grid values), then exp, sqrt and a division: 2e-6 relative, 1e-6 absolute.</summary>
    [Property(MaxTest = 25, Arbitrary = new[] { typeof(TinyCases) })]
    public void ScaledSilu_MatchesReference(EpilogueCase c, bool quarter)
    {
        float scale = quarter ? 0.25f : 3f;
        foreach (Device device in _devices)
        {
            using TensorScope scope = new(device);
            Tensor output = scope.Zeros([c.M, c.N]);
            TestKernels.ScaledSilu(scope.From(c.A, [c.M, c.K]), scope.From(c.W, [c.N, c.K]), scale, output);
            double[] expected = TestKernels.Reference.ScaledSilu(c.A, c.W, c.M, c.K, c.N, scale);
            Close.Check(expected, output.ToArray(), 2e-6, 1e-6, $"ScaledSilu on {device.Name} ({c}, scale {scale})");
        }
    }

    /// <summary>Shear: one product and one sum per element of grid values and table values: 1e-6 relative, 1e-5 absolute.</summary>
    [Property(MaxTest = 40, Arbitrary = new[] { typeof(TinyCases) })]
    public void Shear_MatchesReference(RopeCase c)
    {
        int half = c.Shape[^1] / 2;
        float[] table = Enumerable.Range(0, c.Positions * half).Select(i => ((i * 13) % 17) / 16f).ToArray();
        int rowsPerToken = c.Shape.Length == 3 ? c.Shape[1] : 1;
        double[] expected = new double[c.X.Length];
        for (int row = 0; row < c.X.Length / c.Shape[^1]; row++)
        {
            for (int i = 0; i < half; i++)
            {
                int first = (row * c.Shape[^1]) + (c.Layout == RopeLayout.Adjacent ? 2 * i : i);
                int second = first + (c.Layout == RopeLayout.Adjacent ? 1 : half);
                double t = table[((c.StartPosition + (row / rowsPerToken)) * half) + i];
                expected[first] = (c.X[first] * t) + 1.5;
                expected[second] = c.X[second] - (1.5 * t);
            }
        }

        foreach (Device device in _devices)
        {
            using TensorScope scope = new(device);
            Tensor x = scope.From(c.X, c.Shape);
            TestKernels.Shear(x, scope.From(table, [c.Positions, half]), 1.5f, c.StartPosition, c.Layout, x);
            Close.Check(expected, x.ToArray(), 1e-6, 1e-5, $"Shear on {device.Name} ({c})");
        }
    }
}

/// <summary>The custom kernels on the CPU and on the ILGPU CPU accelerator at O1.</summary>
public sealed class CustomKernelTestsO1 : CustomKernelTests, IClassFixture<CustomKernelDevices>
{
    /// <summary>Uses the shared CPU and O1 devices.</summary>
    public CustomKernelTestsO1(CustomKernelDevices devices)
        : base(devices.Cpu, devices.Ilgpu)
    {
    }
}

/// <summary>The custom kernels' ILGPU path at O2.</summary>
public sealed class CustomKernelTestsO2 : CustomKernelTests, IClassFixture<Kiln.Core.Tests.MatMul.IlgpuO2Fixture>
{
    /// <summary>Uses the shared O2 accelerator.</summary>
    public CustomKernelTestsO2(Kiln.Core.Tests.MatMul.IlgpuO2Fixture fixture)
        : base(fixture.Device)
    {
    }
}
