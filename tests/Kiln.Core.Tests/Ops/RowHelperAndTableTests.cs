using FsCheck.Xunit;
using Kiln.Devices;

namespace Kiln.Core.Tests.Ops;

// The single-row span helpers that row ops generate for hand-written kernels (RmsNormRow, SoftmaxRow), RopeTables
// against an independently written formula, and the claim that the CPU ops allocate nothing.

/// <summary>Row span helpers, RoPE tables and allocation-free CPU ops.</summary>
public sealed class RowHelperAndTableTests : IClassFixture<CpuDevicesFixture>
{
    private readonly CpuDevicesFixture _devices;

    /// <summary>Creates the tests over the shared devices.</summary>
    public RowHelperAndTableTests(CpuDevicesFixture devices)
    {
        _devices = devices;
    }

    /// <summary>RmsNormRow and SoftmaxRow on one row (in place or not) match the references, with the ops' tolerances.</summary>
    [Property(MaxTest = 100, Arbitrary = new[] { typeof(CpuCases) })]
    public void RowHelpers_MatchReference(RowCase c, bool inPlace)
    {
        // One row: the first row of the case, and a weight of that length.
        int n = c.RowLength;
        float[] x = c.X[..n];
        float[] weight = Enumerable.Range(0, n).Select(i => c.Weight[i % c.Weight.Length]).ToArray();

        float[] normalised = inPlace ? (float[])x.Clone() : new float[n];
        Kiln.Ops.RmsNormRow(inPlace ? normalised : x, weight, c.Eps, normalised);
        Close.Check(Kiln.Ops.Reference.RmsNorm(x, weight, n, c.Eps), normalised, 1e-5, 1e-6, $"RmsNormRow ({c})");

        float[] probabilities = inPlace ? (float[])x.Clone() : new float[n];
        Kiln.Ops.SoftmaxRow(inPlace ? probabilities : x, probabilities);
        Close.Check(Kiln.Ops.Reference.Softmax(x, n), probabilities, 1e-5, 1e-7, $"SoftmaxRow ({c})");
    }

    /// <summary>
    /// RopeTables: entry [pos, i] is cos/sin of pos · θ^(-2i/Dh), here recomputed as pos · exp(-ln θ · 2i / Dh) in
    /// float64; both round once to float32, so they agree within one float32 rounding (6e-8) of values in [-1, 1].
    /// </summary>
    [Theory]
    [InlineData(1, 2, 10000f)]
    [InlineData(64, 8, 10000f)]
    [InlineData(300, 64, 500000f)]
    [InlineData(9, 6, 100f)]
    public void RopeTables_MatchTheFormula(int positions, int headDim, float theta)
    {
        (Tensor cos, Tensor sin) = Kiln.Ops.RopeTables(positions, headDim, theta, _devices.OneThread);
        using (cos)
        using (sin)
        {
            Assert.Equal(new[] { positions, headDim / 2 }, cos.Shape.ToArray());
            Assert.Equal(new[] { positions, headDim / 2 }, sin.Shape.ToArray());
            float[] cosValues = cos.ToArray();
            float[] sinValues = sin.ToArray();
            for (int position = 0; position < positions; position++)
            {
                for (int i = 0; i < headDim / 2; i++)
                {
                    double angle = position * Math.Exp(-Math.Log(theta) * 2 * i / headDim);
                    Assert.Equal(Math.Cos(angle), cosValues[(position * headDim / 2) + i], 1.2e-7);
                    Assert.Equal(Math.Sin(angle), sinValues[(position * headDim / 2) + i], 1.2e-7);
                }
            }
        }
    }

    /// <summary>After a warm-up, the CPU ops allocate nothing on the calling thread, on one or two threads.</summary>
    [Fact]
    public void CpuOps_AfterWarmUp_AllocateNothing()
    {
        foreach (CpuDevice device in new[] { _devices.OneThread, _devices.TwoThreads })
        {
            using TensorScope scope = new(device);
            Tensor x = scope.Zeros([64, 1024]);
            Tensor weight = scope.Zeros([1024]);
            Tensor output = scope.Zeros([64, 1024]);
            (Tensor cos, Tensor sin) = Kiln.Ops.RopeTables(80, 128, 10000f, device);
            using (cos)
            using (sin)
            {
                Tensor heads = x.Reshape(64, 8, 128);
                void RunAll()
                {
                    Kiln.Ops.Add(x, weight, output);
                    Kiln.Ops.Scale(x, 0.5f, output);
                    Kiln.Ops.SiluMul(x, output, output);
                    Kiln.Ops.RmsNorm(x, weight, 1e-5f, output);
                    Kiln.Ops.Softmax(x, output);
                    Kiln.Ops.Rope(heads, cos, sin, 3, Kernels.RopeLayout.Adjacent, heads);
                    Kiln.Ops.Rope(heads, cos, sin, 3, Kernels.RopeLayout.HalfSplit, heads);
                    Kiln.Ops.RmsNormRow(weight.AsSpan(), weight.AsSpan(), 1e-5f, weight.AsSpan());
                }

                RunAll();
                long before = GC.GetAllocatedBytesForCurrentThread();
                RunAll();
                long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                Assert.True(allocated == 0, $"The CPU ops allocated {allocated} bytes on {device.Threads} thread(s).");
                heads.Dispose();
            }
        }
    }
}
