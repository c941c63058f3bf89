using FsCheck;
using FsCheck.Fluent;
using ILGPU;
using Kiln.Devices;
using Kiln.Kernels;
using Xunit.Sdk;

namespace Kiln.Core.Tests.Ops;

// Shared machinery of the op property tests: random cases (shapes with size 1, odd sizes and sizes that are not
// multiples of 16, broadcast suffixes, values on integer grids so they are exact in float32), the comparison
// against the float64 references with stated tolerances, and tensors on a device. FsCheck prints the failing case
// and its replay seed; paste it into Replay = "(s1, s2, size)" to rerun it.

/// <summary>A pointwise case: the output shape, input a of that shape, b broadcast, and a scalar.</summary>
public sealed record PointwiseCase(int[] Shape, float[] A, int[] BShape, float[] B, float Scalar)
{
    /// <inheritdoc />
    public override string ToString() => $"a {Tensor.FormatShape(Shape)}, b {Tensor.FormatShape(BShape)}, s {Scalar}";
}

/// <summary>A row case: x [..., N], a broadcast weight holding whole rows, and a scalar.</summary>
public sealed record RowCase(int[] Shape, float[] X, int[] WeightShape, float[] Weight, float Eps)
{
    /// <summary>N, the row length.</summary>
    public int RowLength => Shape[^1];

    /// <inheritdoc />
    public override string ToString() =>
        $"x {Tensor.FormatShape(Shape)}, weight {Tensor.FormatShape(WeightShape)}, eps {Eps}";
}

/// <summary>A rotary case: x [T, H, Dh] (or [T, Dh]), the tables' length S, the start position and layout.</summary>
public sealed record RopeCase(int[] Shape, float[] X, int Positions, int StartPosition, float Theta, RopeLayout Layout)
{
    /// <inheritdoc />
    public override string ToString() =>
        $"x {Tensor.FormatShape(Shape)}, S {Positions}, start {StartPosition}, theta {Theta}, {Layout}";
}

/// <summary>An epilogue case: a [M, K], w [N, K], residual [M, N] or [N].</summary>
public sealed record EpilogueCase(int M, int K, int N, float[] A, float[] W, int[] ResidualShape, float[] Residual)
{
    /// <inheritdoc />
    public override string ToString() => $"a [{M}, {K}], w [{N}, {K}], residual {Tensor.FormatShape(ResidualShape)}";
}

/// <summary>Generators of op cases. Sizes scale with <c>budget</c>: the largest element count of a case.</summary>
public static class OpGen
{
    /// <summary>Sizes that stress vector tails: 1, odd sizes, around multiples of 8 and 16.</summary>
    private static readonly int[] s_edgeSizes = { 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 129 };

    /// <summary>A dimension: small random sizes, often an edge size.</summary>
    public static Gen<int> Dimension(int max) =>
        Gen.Frequency((2, Gen.Choose(1, Math.Min(max, 24))), (2, Gen.Elements(s_edgeSizes.Where(d => d <= max).ToArray())));

    /// <summary>A shape of rank 1 to <paramref name="maxRank"/>, at most <paramref name="budget"/> elements.</summary>
    public static Gen<int[]> Shape(int maxRank, int budget, int maxDimension = 129) =>
        Gen.Choose(1, maxRank)
            .SelectMany(rank => Dimension(maxDimension).ArrayOf(rank))
            .Select(shape => Fit(shape, budget));

    /// <summary>Values on a grid of 1/64 in [-range, range]: exact in float32.</summary>
    public static Gen<float[]> Values(int count, int range = 8) =>
        Gen.Choose(-range * 64, range * 64).Select(i => i / 64f).ArrayOf(count);

    /// <summary>
    /// A shape that broadcasts to <paramref name="shape"/>: one of its suffixes (at least <paramref name="minRank"/>
    /// dimensions; the empty suffix is written [1]), sometimes with a leading 1.
    /// </summary>
    public static Gen<int[]> BroadcastShape(int[] shape, int minRank) =>
        Gen.Choose(minRank, shape.Length).SelectMany(rank => Gen.Elements(false, true).Select(leadingOne =>
        {
            int[] suffix = shape[(shape.Length - rank)..];
            if (suffix.Length == 0)
            {
                return new[] { 1 };
            }

            return leadingOne ? new[] { 1 }.Concat(suffix).ToArray() : suffix;
        }));

    /// <summary>Pointwise cases of at most <paramref name="budget"/> elements.</summary>
    public static Gen<PointwiseCase> Pointwise(int budget) =>
        from shape in Shape(3, budget)
        from a in Values(Count(shape))
        from bShape in BroadcastShape(shape, 0)
        from b in Values(Count(bShape))
        from s in Gen.Choose(-256, 256).Select(i => i / 32f)
        select new PointwiseCase(shape, a, bShape, b, s);

    /// <summary>Row cases of at most <paramref name="budget"/> elements, values in [-range, range].</summary>
    public static Gen<RowCase> Row(int budget, int range = 8, int maxRowLength = 129) =>
        from shape in Shape(3, budget, maxRowLength)
        from x in Values(Count(shape), range)
        from weightShape in BroadcastShape(shape, 1)
        from weight in Values(Count(weightShape))
        from eps in Gen.Elements(1e-5f, 1e-6f, 0.5f)
        select new RowCase(shape, x, weightShape, weight, eps);

    /// <summary>Rotary cases of at most <paramref name="budget"/> elements.</summary>
    public static Gen<RopeCase> Rope(int budget, int maxHalf = 70) =>
        from rank in Gen.Choose(2, 3)
        from tokens in Gen.Choose(1, 5)
        from heads in Gen.Elements(1, 2, 3, 4)
        from half in Gen.Frequency(
            (2, Gen.Choose(1, Math.Min(maxHalf, 24))),
            (2, Gen.Elements(new[] { 1, 7, 8, 9, 15, 16, 17, 32, 33, 64 }.Where(h => h <= maxHalf).ToArray())))
        let shape = Fit(rank == 2 ? new[] { tokens, 2 * half } : new[] { tokens, heads, 2 * half }, budget, keepLast: true)
        from x in Values(Count(shape))
        from start in Gen.Choose(0, 9)
        from extra in Gen.Choose(0, 3)
        from theta in Gen.Elements(10000f, 500000f, 100f)
        from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
        select new RopeCase(shape, x, start + shape[0] + extra, start, theta, layout);

    /// <summary>Epilogue cases with at most <paramref name="maxM"/> rows and <paramref name="maxN"/> columns.</summary>
    public static Gen<EpilogueCase> Epilogue(int maxM, int maxK, int maxN) =>
        from m in Gen.Choose(1, maxM)
        from k in Gen.Choose(1, maxK)
        from n in Dimension(maxN)
        from a in Gen.Choose(-16, 16).Select(i => i / 8f).ArrayOf(m * k)
        from w in Gen.Choose(-16, 16).Select(i => i / 8f).ArrayOf(n * k)
        from residualShape in Gen.Elements(new[] { m, n }, new[] { n }, new[] { 1, n })
        from residual in Values(Count(residualShape))
        select new EpilogueCase(m, k, n, a, w, residualShape, residual);

    /// <summary>The number of elements of a shape.</summary>
    public static int Count(int[] shape) => shape.Aggregate(1, (product, dim) => product * dim);

    private static int[] Fit(int[] shape, int budget, bool keepLast = false)
    {
        // Halve the largest dimension (never the last when asked) until the shape fits the budget.
        int[] fitted = (int[])shape.Clone();
        while (Count(fitted) > budget)
        {
            int largest = 0;
            for (int i = 1; i < fitted.Length - (keepLast ? 1 : 0); i++)
            {
                largest = fitted[i] > fitted[largest] ? i : largest;
            }

            fitted[largest] = Math.Max(1, fitted[largest] / 2);
            if (fitted.Length == 1 || (keepLast && fitted.Take(fitted.Length - 1).All(d => d == 1)))
            {
                break;
            }
        }

        return fitted;
    }
}

/// <summary>Comparison with a reference under a stated tolerance.</summary>
public static class Close
{
    /// <summary>
    /// Requires |actual[i] - expected[i]| ≤ absolute + relative · |expected[i]| for every i, else throws with the
    /// first offending index, both values and the context.
    /// </summary>
    public static void Check(double[] expected, float[] actual, double relative, double absolute, string context)
    {
        if (expected.Length != actual.Length)
        {
            throw new XunitException($"{context}: {actual.Length} values, expected {expected.Length}.");
        }

        for (int i = 0; i < expected.Length; i++)
        {
            double error = Math.Abs(actual[i] - expected[i]);
            if (!(error <= absolute + (relative * Math.Abs(expected[i]))))
            {
                throw new XunitException(
                    $"{context}: element {i} is {actual[i]:R}, expected {expected[i]:R} "
                    + $"(error {error:E2} > {absolute:E1} + {relative:E1}·|expected|).");
            }
        }
    }
}

/// <summary>Tensors made for one test case on one device, disposed together.</summary>
public sealed class TensorScope : IDisposable
{
    private readonly List<Tensor> _tensors = new();
    private readonly Device _device;

    /// <summary>Creates a scope for <paramref name="device"/>.</summary>
    public TensorScope(Device device)
    {
        _device = device;
    }

    /// <summary>A tensor holding <paramref name="data"/> with <paramref name="shape"/>.</summary>
    public Tensor From(float[] data, int[] shape)
    {
        Tensor tensor = Tensor.FromArray(data, shape, _device);
        _tensors.Add(tensor);
        return tensor;
    }

    /// <summary>A zero tensor of <paramref name="shape"/>.</summary>
    public Tensor Zeros(int[] shape)
    {
        Tensor tensor = Tensor.Empty(shape, DType.Float32, _device);
        _tensors.Add(tensor);
        return tensor;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (Tensor tensor in _tensors)
        {
            tensor.Dispose();
        }
    }
}

/// <summary>FsCheck arbitraries for the CPU properties (budget: a few thousand elements).</summary>
public static class CpuCases
{
    /// <summary>Pointwise cases.</summary>
    public static Arbitrary<PointwiseCase> Pointwise() => OpGen.Pointwise(4096).ToArbitrary();

    /// <summary>Row cases.</summary>
    public static Arbitrary<RowCase> Row() => OpGen.Row(4096).ToArbitrary();

    /// <summary>Rotary cases.</summary>
    public static Arbitrary<RopeCase> Rope() => OpGen.Rope(4096).ToArbitrary();

    /// <summary>Epilogue cases.</summary>
    public static Arbitrary<EpilogueCase> Epilogue() => OpGen.Epilogue(6, 40, 70).ToArbitrary();
}

/// <summary>FsCheck arbitraries for ILGPU's CPU accelerator: tiny cases, which it runs slowly.</summary>
public static class TinyCases
{
    /// <summary>Pointwise cases.</summary>
    public static Arbitrary<PointwiseCase> Pointwise() => OpGen.Pointwise(300).ToArbitrary();

    /// <summary>Row cases (rows up to 70 long, more than one group of 64).</summary>
    public static Arbitrary<RowCase> Row() => OpGen.Row(300, maxRowLength: 100).ToArbitrary();

    /// <summary>Rotary cases.</summary>
    public static Arbitrary<RopeCase> Rope() => OpGen.Rope(300, maxHalf: 33).ToArbitrary();

    /// <summary>Epilogue cases.</summary>
    public static Arbitrary<EpilogueCase> Epilogue() => OpGen.Epilogue(4, 12, 33).ToArbitrary();
}

/// <summary>An ILGPU CPU-accelerator device at O1, shared by a test class.</summary>
public sealed class IlgpuO1Fixture : IDisposable
{
    /// <summary>The device.</summary>
    public IlgpuDevice Device { get; } = IlgpuDevice.CreateCpuAccelerator(OptimizationLevel.O1);

    /// <inheritdoc />
    public void Dispose() => Device.Dispose();
}

/// <summary>An ILGPU CPU-accelerator device at O2, shared by a test class.</summary>
public sealed class IlgpuO2Fixture : IDisposable
{
    /// <summary>The device.</summary>
    public IlgpuDevice Device { get; } = IlgpuDevice.CreateCpuAccelerator(OptimizationLevel.O2);

    /// <inheritdoc />
    public void Dispose() => Device.Dispose();
}
