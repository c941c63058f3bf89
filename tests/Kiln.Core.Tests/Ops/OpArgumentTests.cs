using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Core.Tests.Ops;

// Bad arguments to the generated ops: each is rejected before any work with an ArgumentException whose message names
// the op, the tensor and its shape, and says what to pass instead.

/// <summary>The argument checks of the generated ops.</summary>
public sealed class OpArgumentTests : IClassFixture<CpuDevicesFixture>
{
    private readonly CpuDevice _cpu;

    /// <summary>Creates the tests over the shared devices.</summary>
    public OpArgumentTests(CpuDevicesFixture devices)
    {
        _cpu = devices.OneThread;
    }

    /// <summary>An input that does not broadcast names itself, both shapes and a fitting example.</summary>
    [Fact]
    public void Add_WithNonBroadcastingInput_NamesTheInputAndShapes()
    {
        using TensorScope scope = new(_cpu);
        Tensor a = scope.Zeros([2, 4]);
        Tensor b = scope.Zeros([3]);
        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Ops.Add(a, b, scope.Zeros([2, 4])));
        Assert.Equal("b", error.ParamName);
        Assert.Contains("Add: b has shape [3], which does not broadcast to a [2, 4]", error.Message);
        Assert.Contains("such as [4] or [2, 4]", error.Message);
    }

    /// <summary>Empty tensors of matching shapes are valid and leave nothing to do.</summary>
    [Fact]
    public void EmptyTensors_OfMatchingShapes_AreAccepted()
    {
        using TensorScope scope = new(_cpu);
        Kiln.Ops.Add(scope.Zeros([0, 4]), scope.Zeros([0, 4]), scope.Zeros([0, 4]));
        Kiln.Ops.RmsNorm(scope.Zeros([0, 4]), scope.Zeros([4]), 1e-5f, scope.Zeros([0, 4]));
        Kiln.Ops.ResidualAdd(scope.Zeros([0, 3]), scope.Zeros([4, 3]), scope.Zeros([0, 4]), scope.Zeros([0, 4]));
    }

    /// <summary>An output of the wrong shape is named with both shapes.</summary>
    [Fact]
    public void RmsNorm_WithWrongOutputShape_NamesTheOutput()
    {
        using TensorScope scope = new(_cpu);
        ArgumentException error = Assert.Throws<ArgumentException>(
            () => Kiln.Ops.RmsNorm(scope.Zeros([2, 4]), scope.Zeros([4]), 1e-5f, scope.Zeros([4, 2])));
        Assert.Equal("output", error.ParamName);
        Assert.Contains("RmsNorm: output has shape [4, 2] but x has shape [2, 4]", error.Message);
    }

    /// <summary>A row op's other input must hold whole rows: a single value does not broadcast to rows of 4.</summary>
    [Fact]
    public void RmsNorm_WithWeightShorterThanARow_IsRejected()
    {
        using TensorScope scope = new(_cpu);
        ArgumentException error = Assert.Throws<ArgumentException>(
            () => Kiln.Ops.RmsNorm(scope.Zeros([2, 4]), scope.Zeros([1]), 1e-5f, scope.Zeros([2, 4])));
        Assert.Equal("weight", error.ParamName);
    }

    /// <summary>A 16-bit tensor is named with its dtype.</summary>
    [Fact]
    public void Scale_WithFloat16Input_NamesTheDType()
    {
        using Tensor x = Tensor.FromBits(new ushort[4], [4], DType.Float16, _cpu);
        using TensorScope scope = new(_cpu);
        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Ops.Scale(x, 2f, scope.Zeros([4])));
        Assert.Contains("Scale: x is float16 [4], but this op computes in float32", error.Message);
    }

    /// <summary>Tensors on two devices are named with both devices.</summary>
    [Fact]
    public void SiluMul_AcrossDevices_NamesBothDevices()
    {
        using CpuDevice other = new(1);
        using TensorScope here = new(_cpu);
        using TensorScope there = new(other);
        ArgumentException error = Assert.Throws<ArgumentException>(
            () => Kiln.Ops.SiluMul(here.Zeros([4]), there.Zeros([4]), here.Zeros([4])));
        Assert.Equal("up", error.ParamName);
        Assert.Contains("SiluMul: up is on another cpu device but gate is on cpu", error.Message);
    }

    /// <summary>A row op needs at least one axis to reduce over.</summary>
    [Fact]
    public void Softmax_OnAScalarTensor_AsksForRows()
    {
        using TensorScope scope = new(_cpu);
        Tensor scalar = scope.Zeros([]);
        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Ops.Softmax(scalar, scalar));
        Assert.Equal("x", error.ParamName);
        Assert.Contains("Softmax: x has shape [] but needs at least 1 dimension(s), laid out [..., N]", error.Message);
    }

    /// <summary>Rope checks Dh's parity, the tables' width and length, and the start position.</summary>
    [Fact]
    public void Rope_WithBadShapesOrPositions_SaysWhatToPass()
    {
        using TensorScope scope = new(_cpu);
        (Tensor cos, Tensor sin) = Kiln.Ops.RopeTables(8, 4, 10000f, _cpu);
        using (cos)
        using (sin)
        {
            Tensor odd = scope.Zeros([2, 5]);
            Assert.Contains(
                "must be even",
                Assert.Throws<ArgumentException>(() => Kiln.Ops.Rope(odd, cos, sin, 0, RopeLayout.Adjacent, odd)).Message);

            Tensor wide = scope.Zeros([2, 6]);
            ArgumentException table = Assert.Throws<ArgumentException>(() => Kiln.Ops.Rope(wide, cos, sin, 0, RopeLayout.Adjacent, wide));
            Assert.Contains("Rope: cos has shape [8, 2] but a table for heads of width 6 is [S, 3]", table.Message);

            Tensor x = scope.Zeros([3, 4]);
            ArgumentException late = Assert.Throws<ArgumentException>(() => Kiln.Ops.Rope(x, cos, sin, 6, RopeLayout.HalfSplit, x));
            Assert.Contains("cos holds 8 positions but tokens 6..8 need 9", late.Message);

            Assert.Equal(
                "startPosition",
                Assert.Throws<ArgumentException>(() => Kiln.Ops.Rope(x, cos, sin, -1, RopeLayout.HalfSplit, x)).ParamName);
            Assert.Equal(
                "layout",
                Assert.Throws<ArgumentException>(() => Kiln.Ops.Rope(x, cos, sin, 0, (RopeLayout)7, x)).ParamName);
        }
    }

    /// <summary>An epilogue op checks the product's shapes.</summary>
    [Fact]
    public void ResidualAdd_WithMismatchedK_NamesBothOperands()
    {
        using TensorScope scope = new(_cpu);
        ArgumentException error = Assert.Throws<ArgumentException>(
            () => Kiln.Ops.ResidualAdd(scope.Zeros([2, 3]), scope.Zeros([4, 5]), scope.Zeros([2, 4]), scope.Zeros([2, 4])));
        Assert.Contains("a [2, 3] and w [4, 5] do not form a product", error.Message);
    }

    /// <summary>The span helper of a row op checks that every span holds one row.</summary>
    [Fact]
    public void RmsNormRow_WithShortWeight_NamesTheSpan()
    {
        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Ops.RmsNormRow(new float[4], new float[3], 1e-5f, new float[4]));
        Assert.Equal("weight", error.ParamName);
        Assert.Contains("RmsNormRow: weight holds 3 values but x holds 4", error.Message);
    }

    /// <summary>RopeTables rejects an odd head width with the fix.</summary>
    [Fact]
    public void RopeTables_WithOddHeadDim_SaysWhatToPass()
    {
        ArgumentOutOfRangeException error = Assert.Throws<ArgumentOutOfRangeException>(() => Kiln.Ops.RopeTables(8, 5, 10000f));
        Assert.Equal("headDim", error.ParamName);
        Assert.Contains("must be even", error.Message);
    }

    /// <summary>Empty tensors are valid and nothing is computed.</summary>
    [Fact]
    public void Ops_OnEmptyTensors_DoNothing()
    {
        using TensorScope scope = new(_cpu);
        Tensor empty = scope.Zeros([0, 4]);
        Kiln.Ops.Add(empty, scope.Zeros([4]), empty);
        Kiln.Ops.RmsNorm(empty, scope.Zeros([4]), 1e-5f, empty);
        Kiln.Ops.Softmax(empty, empty);
        Assert.Equal(0, empty.Length);
    }
}
