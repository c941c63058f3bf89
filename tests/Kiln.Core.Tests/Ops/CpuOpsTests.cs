using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Devices;

namespace Kiln.Core.Tests.Ops;

// Every built-in op on the CPU path against its float64 reference: single-threaded over random small shapes
// (size 1, odd sizes, sizes not divisible by 16, broadcast suffixes, in place), and on two threads over shapes large
// enough that the worker pool splits them (more than 2 × 16384 floats).

/// <summary>CPU devices shared by the CPU op tests: one thread, and two threads.</summary>
public sealed class CpuDevicesFixture : IDisposable
{
    /// <summary>A single-threaded CPU device.</summary>
    public CpuDevice OneThread { get; } = new(1);

    /// <summary>A two-threaded CPU device.</summary>
    public CpuDevice TwoThreads { get; } = new(2);

    /// <inheritdoc />
    public void Dispose()
    {
        OneThread.Dispose();
        TwoThreads.Dispose();
    }
}

/// <summary>FsCheck arbitraries for the multi-threaded CPU properties: cases of 40k to 100k floats.</summary>
public static class LargeCases
{
    /// <summary>Pointwise cases with at least 40000 elements.</summary>
    public static Arbitrary<PointwiseCase> Pointwise() =>
        Gen.Where(OpGen.Pointwise(100_000), c => OpGen.Count(c.Shape) >= 40_000).ToArbitrary();

    /// <summary>Row cases of at least 40000 elements with rows of 16 to 4096.</summary>
    public static Arbitrary<RowCase> Row() =>
        (from rows in Gen.Choose(3, 400)
         from rowLength in Gen.Elements(17, 128, 1000, 4095)
         where rows * rowLength >= 40_000 && rows * rowLength <= 100_000
         from x in OpGen.Values(rows * rowLength)
         from weight in OpGen.Values(rowLength)
         select new RowCase([rows, rowLength], x, [rowLength], weight, 1e-5f)).ToArbitrary();

    /// <summary>Rotary cases of at least 40000 elements.</summary>
    public static Arbitrary<RopeCase> Rope() =>
        (from tokens in Gen.Choose(40, 80)
         from heads in Gen.Elements(8, 12)
         from headDim in Gen.Elements(64, 128, 66)
         from x in OpGen.Values(tokens * heads * headDim)
         from layout in Gen.Elements(Kernels.RopeLayout.Adjacent, Kernels.RopeLayout.HalfSplit)
         select new RopeCase([tokens, heads, headDim], x, tokens + 7, 7, 10000f, layout)).ToArbitrary();
}

/// <summary>The built-in ops on the CPU path.</summary>
public sealed class CpuOpsTests : IClassFixture<CpuDevicesFixture>
{
    private readonly CpuDevicesFixture _devices;

    /// <summary>Creates the tests over the shared devices.</summary>
    public CpuOpsTests(CpuDevicesFixture devices)
    {
        _devices = devices;
    }

    /// <summary>Add matches the reference.</summary>
    [Property(MaxTest = 150, Arbitrary = new[] { typeof(CpuCases) })]
    public void Add_MatchesReference(PointwiseCase c, bool inPlace) => OpProperties.Add(_devices.OneThread, c, inPlace);

    /// <summary>Scale matches the reference.</summary>
    [Property(MaxTest = 100, Arbitrary = new[] { typeof(CpuCases) })]
    public void Scale_MatchesReference(PointwiseCase c, bool inPlace) => OpProperties.Scale(_devices.OneThread, c, inPlace);

    /// <summary>SiluMul matches the reference.</summary>
    [Property(MaxTest = 150, Arbitrary = new[] { typeof(CpuCases) })]
    public void SiluMul_MatchesReference(PointwiseCase c, bool inPlace) => OpProperties.SiluMul(_devices.OneThread, c, inPlace);

    /// <summary>RmsNorm matches the reference.</summary>
    [Property(MaxTest = 150, Arbitrary = new[] { typeof(CpuCases) })]
    public void RmsNorm_MatchesReference(RowCase c, bool inPlace) => OpProperties.RmsNorm(_devices.OneThread, c, inPlace);

    /// <summary>Softmax matches the reference, also on logits up to ±1000 (where an unshifted exp overflows).</summary>
    [Property(MaxTest = 150, Arbitrary = new[] { typeof(CpuCases) })]
    public void Softmax_MatchesReference(RowCase c, bool inPlace, bool wide)
    {
        RowCase scaled = wide ? c with { X = c.X.Select(v => v * 125f).ToArray() } : c;
        OpProperties.Softmax(_devices.OneThread, scaled, inPlace);
    }

    /// <summary>Rope matches the reference in both layouts.</summary>
    [Property(MaxTest = 150, Arbitrary = new[] { typeof(CpuCases) })]
    public void Rope_MatchesReference(RopeCase c, bool inPlace) => OpProperties.Rope(_devices.OneThread, c, inPlace);

    /// <summary>ResidualAdd (through MatMul with the fused epilogue) matches the reference.</summary>
    [Property(MaxTest = 100, Arbitrary = new[] { typeof(CpuCases) })]
    public void ResidualAdd_MatchesReference(EpilogueCase c) => OpProperties.ResidualAdd(_devices.OneThread, c);

    /// <summary>The pointwise ops split across two threads match the reference.</summary>
    [Property(MaxTest = 6, Arbitrary = new[] { typeof(LargeCases) })]
    public void PointwiseOps_OnTwoThreads_MatchReference(PointwiseCase c, bool inPlace)
    {
        OpProperties.Add(_devices.TwoThreads, c, inPlace);
        OpProperties.SiluMul(_devices.TwoThreads, c, inPlace);
        OpProperties.Scale(_devices.TwoThreads, c, inPlace);
    }

    /// <summary>The row ops split across two threads match the reference.</summary>
    [Property(MaxTest = 6, Arbitrary = new[] { typeof(LargeCases) })]
    public void RowOps_OnTwoThreads_MatchReference(RowCase c, bool inPlace)
    {
        OpProperties.RmsNorm(_devices.TwoThreads, c, inPlace);
        OpProperties.Softmax(_devices.TwoThreads, c, inPlace);
    }

    /// <summary>Rope split across two threads matches the reference.</summary>
    [Property(MaxTest = 6, Arbitrary = new[] { typeof(LargeCases) })]
    public void Rope_OnTwoThreads_MatchesReference(RopeCase c, bool inPlace) => OpProperties.Rope(_devices.TwoThreads, c, inPlace);
}
