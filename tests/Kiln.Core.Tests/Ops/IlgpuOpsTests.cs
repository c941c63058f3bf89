using FsCheck.Xunit;
using Kiln.Devices;

namespace Kiln.Core.Tests.Ops;

// Every built-in op's ILGPU kernel, run on ILGPU's CPU accelerator (a simulated warp-32 GPU) against the float64
// reference, at optimisation levels O1 and O2. The accelerator is slow, so cases are tiny and few, and each test
// class shares one accelerator; the kernels are compiled once per accelerator.

/// <summary>The built-in ops' ILGPU kernels, for one accelerator.</summary>
public abstract class IlgpuOpsTests
{
    private readonly IlgpuDevice _device;

    /// <summary>Creates the tests for <paramref name="device"/>.</summary>
    protected IlgpuOpsTests(IlgpuDevice device)
    {
        _device = device;
    }

    /// <summary>Add matches the reference.</summary>
    [Property(MaxTest = 25, Arbitrary = new[] { typeof(TinyCases) })]
    public void Add_MatchesReference(PointwiseCase c, bool inPlace) => OpProperties.Add(_device, c, inPlace);

    /// <summary>Scale matches the reference.</summary>
    [Property(MaxTest = 15, Arbitrary = new[] { typeof(TinyCases) })]
    public void Scale_MatchesReference(PointwiseCase c, bool inPlace) => OpProperties.Scale(_device, c, inPlace);

    /// <summary>SiluMul matches the reference.</summary>
    [Property(MaxTest = 25, Arbitrary = new[] { typeof(TinyCases) })]
    public void SiluMul_MatchesReference(PointwiseCase c, bool inPlace) => OpProperties.SiluMul(_device, c, inPlace);

    /// <summary>RmsNorm matches the reference (rows longer than a group exercise the strided loop).</summary>
    [Property(MaxTest = 25, Arbitrary = new[] { typeof(TinyCases) })]
    public void RmsNorm_MatchesReference(RowCase c, bool inPlace) => OpProperties.RmsNorm(_device, c, inPlace);

    /// <summary>Softmax matches the reference, also on wide logits.</summary>
    [Property(MaxTest = 25, Arbitrary = new[] { typeof(TinyCases) })]
    public void Softmax_MatchesReference(RowCase c, bool inPlace, bool wide)
    {
        RowCase scaled = wide ? c with { X = c.X.Select(v => v * 125f).ToArray() } : c;
        OpProperties.Softmax(_device, scaled, inPlace);
    }

    /// <summary>Rope matches the reference in both layouts.</summary>
    [Property(MaxTest = 25, Arbitrary = new[] { typeof(TinyCases) })]
    public void Rope_MatchesReference(RopeCase c, bool inPlace) => OpProperties.Rope(_device, c, inPlace);

    /// <summary>ResidualAdd (MatMul.ComputeGpu with the generated GPU epilogue) matches the reference.</summary>
    [Property(MaxTest = 15, Arbitrary = new[] { typeof(TinyCases) })]
    public void ResidualAdd_MatchesReference(EpilogueCase c) => OpProperties.ResidualAdd(_device, c);
}

/// <summary>The ILGPU kernels at optimisation level O1.</summary>
public sealed class IlgpuO1OpsTests : IlgpuOpsTests, IClassFixture<IlgpuO1Fixture>
{
    /// <summary>Creates the tests on the shared O1 accelerator.</summary>
    public IlgpuO1OpsTests(IlgpuO1Fixture fixture)
        : base(fixture.Device)
    {
    }
}

/// <summary>The ILGPU kernels at optimisation level O2.</summary>
public sealed class IlgpuO2OpsTests : IlgpuOpsTests, IClassFixture<IlgpuO2Fixture>
{
    /// <summary>Creates the tests on the shared O2 accelerator.</summary>
    public IlgpuO2OpsTests(IlgpuO2Fixture fixture)
        : base(fixture.Device)
    {
    }
}
