// FsCheck properties of the token kernels (Embedding.Lookup, DeviceSampling.ArgMax and Sample) on the cpu device
// and on ILGPU's CPU accelerator at O1 and O2 (one accelerator per class, shared with the matrix-product tests'
// fixtures), against float64 scalar references written here. Values come from integer grids: table entries k/8
// (exact in float16 and bfloat16, so the lookup must be exact), logits k/4 in [-8, 8] with some NaN and -inf.
// Sizes: 1, odd sizes, and sizes around the test accelerator's group of 64 threads so the sampling scan crosses
// chunk boundaries. FsCheck prints the failing case and its replay seed.
//
// The draw: the float64 reference gives weights w_i = exp((l_i - max) / T), cumulative sums C_i and the target
// u·C_V. The device (float32, tree sums) may differ from it only where rounding moves a boundary across the target,
// so an id j is accepted when w_j > 0 and C_(j-1) - tol <= target < C_j + tol with tol = 1e-5·mass (float32 sums
// of a few hundred terms err by well under that; exp on the test accelerator is MathF.Exp). Outside that band the
// accepted id is unique and equals the reference's. The cpu path must equal the float64-sum rule exactly.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Core.Tests.MatMul;
using Kiln.Devices;
using Kiln.Kernels;
using Xunit;

namespace Kiln.Core.Tests.Sampling;

/// <summary>An embedding case: a table [V, D] of one dtype with grid values, and T ids in range.</summary>
public sealed record EmbeddingCase(int Vocab, int Dim, DType DType, float[] Table, int[] Ids)
{
    /// <inheritdoc />
    public override string ToString() => $"table [{Vocab}, {Dim}] {DType.Name()}, ids [{string.Join(", ", Ids)}]";
}

/// <summary>A sampling case: V logits, a temperature and a uniform number.</summary>
public sealed record SamplingCase(float[] Logits, float Temperature, double Uniform)
{
    /// <inheritdoc />
    public override string ToString() =>
        $"V {Logits.Length}, T {Temperature}, u {Uniform}, logits [{string.Join(", ", Logits.Take(80))}{(Logits.Length > 80 ? ", ..." : string.Empty)}]";
}

/// <summary>Generators and float64 references of the token kernels.</summary>
public static class TokenCases
{
    private static readonly int[] s_edges = { 1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 129, 200 };

    /// <summary>Embedding cases: V up to 20, D with vector tails, T up to 6.</summary>
    public static Gen<EmbeddingCase> Embedding() =>
        from vocab in Gen.Choose(1, 20)
        from dim in Gen.Elements(1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 40)
        from dtype in Gen.Elements(DType.Float32, DType.Float16, DType.BFloat16)
        from table in Gen.Choose(-64, 64).Select(k => k / 8f).ArrayOf(vocab * dim)
        from tokens in Gen.Choose(1, 6)
        from ids in Gen.Choose(0, vocab - 1).ArrayOf(tokens)
        select new EmbeddingCase(vocab, dim, dtype, table, ids);

    /// <summary>Sampling cases: edge sizes, grid logits with some NaN and -inf, a few temperatures.</summary>
    public static Gen<SamplingCase> Sampling(int maxVocab) =>
        from vocab in Gen.Elements(s_edges.Where(v => v <= maxVocab).ToArray())
        from logits in Gen.Frequency(
            (12, Gen.Choose(-32, 32).Select(k => k / 4f)),
            (1, Gen.Constant(float.NaN)),
            (1, Gen.Constant(float.NegativeInfinity))).ArrayOf(vocab)
        from temperature in Gen.Elements(0.25f, 0.5f, 1f, 2f)
        from uniform in Gen.Choose(0, 999).Select(k => k / 1000.0)
        select new SamplingCase(logits, temperature, uniform);

    /// <summary>The first index of the largest non-NaN logit; 0 when all are NaN.</summary>
    public static int ArgMax(float[] logits)
    {
        int best = -1;
        for (int i = 0; i < logits.Length; i++)
        {
            if (!float.IsNaN(logits[i]) && (best < 0 || logits[i] > logits[best]))
            {
                best = i;
            }
        }

        return Math.Max(best, 0);
    }

    /// <summary>
    /// Whether <paramref name="id"/> is a correct draw for <paramref name="c"/> within <paramref name="tolerance"/>
    /// of the mass (0: exactly the float64 rule), with the reason when it is not.
    /// </summary>
    public static string? CheckDraw(SamplingCase c, int id, double tolerance)
    {
        // No finite maximum: the argmax rule.
        float[] logits = c.Logits;
        double max = logits.Where(l => !float.IsNaN(l)).DefaultIfEmpty(float.NegativeInfinity).Max();
        if (!double.IsFinite(max))
        {
            int expected = ArgMax(logits);
            return id == expected ? null : $"expected the argmax {expected}, got {id}";
        }

        // Float64 weights, their cumulative sums and the target.
        double[] cumulative = new double[logits.Length + 1];
        for (int i = 0; i < logits.Length; i++)
        {
            double weight = float.IsNaN(logits[i]) ? 0 : Math.Exp((logits[i] - max) / c.Temperature);
            cumulative[i + 1] = cumulative[i] + weight;
        }

        double mass = cumulative[^1];
        double target = c.Uniform * mass;
        double tol = tolerance * mass;
        if (id < 0 || id >= logits.Length)
        {
            return $"id {id} is outside [0, {logits.Length})";
        }

        double before = cumulative[id];
        double through = cumulative[id + 1];
        bool positive = through > before;
        bool inBand = before - tol <= target && target < through + tol;
        if (positive && inBand)
        {
            return null;
        }

        int reference = Array.FindIndex(cumulative, 1, s => s > target) - 1;
        return $"id {id} (running sum {before:R}..{through:R}) does not hold target {target:R} of mass {mass:R}; the float64 rule gives {reference}";
    }
}

/// <summary>The token kernels on one device; derived classes pick it.</summary>
public abstract class TokenKernelProperties
{
    private readonly Device _device;
    private readonly double _drawTolerance;

    /// <summary>Runs the properties on <paramref name="device"/>; draws are accepted within <paramref name="drawTolerance"/> of the mass.</summary>
    protected TokenKernelProperties(Device device, double drawTolerance)
    {
        _device = device;
        _drawTolerance = drawTolerance;
    }

    /// <summary>The largest vocabulary the sampling cases use (small on the slow accelerator).</summary>
    protected virtual int MaxVocab => 200;

    /// <summary>The lookup copies rows exactly, for every table dtype.</summary>
    [Property(MaxTest = 15)]
    public Property LookupCopiesRows() => Prop.ForAll(TokenCases.Embedding().ToArbitrary(), c =>
    {
        using Tensor table = Table(c);
        using Tensor ids = Tensor.FromArray(c.Ids, [c.Ids.Length], _device);
        using Tensor output = Tensor.Empty([c.Ids.Length, c.Dim], DType.Float32, _device);
        Embedding.Lookup(table, ids, output);
        float[] expected = Embedding.Reference(c.Table, c.Dim, c.Ids);
        Assert.True(expected.AsSpan().SequenceEqual(output.ToArray()), $"lookup on {_device.Name}: {c}");
    });

    /// <summary>ArgMax gives the first index of the largest non-NaN logit.</summary>
    [Property(MaxTest = 15)]
    public Property ArgMaxMatchesReference() => Prop.ForAll(TokenCases.Sampling(MaxVocab).ToArbitrary(), c =>
    {
        using Tensor logits = Tensor.FromArray(c.Logits, [c.Logits.Length], _device);
        using Tensor id = Tensor.Empty([1], DType.Int32, _device);
        DeviceSampling.ArgMax(logits, id);
        Assert.True(TokenCases.ArgMax(c.Logits) == id.ToInt32Array()[0], $"argmax on {_device.Name}: {c}");
    });

    /// <summary>Sample draws the id the float64 rule draws, up to float32 rounding at a boundary (see header).</summary>
    [Property(MaxTest = 30)]
    public Property SampleMatchesReference() => Prop.ForAll(TokenCases.Sampling(MaxVocab).ToArbitrary(), c =>
    {
        using Tensor logits = Tensor.FromArray(c.Logits, [1, c.Logits.Length], _device);
        using Tensor id = Tensor.Empty([1], DType.Int32, _device);
        DeviceSampling.Sample(logits, c.Temperature, c.Uniform, id);
        string? failure = TokenCases.CheckDraw(c, id.ToInt32Array()[0], _drawTolerance);
        Assert.True(failure is null, $"sample on {_device.Name}: {failure}; {c}");
    });

    /// <summary>Degenerate rows: all NaN gives 0, all -inf the first non-NaN, a +inf the first +inf; V = 1 gives 0.</summary>
    [Fact]
    public void SampleFallsBackToArgMax()
    {
        float nan = float.NaN;
        float inf = float.PositiveInfinity;
        float minus = float.NegativeInfinity;
        (float[] Logits, int Expected)[] rows =
        [
            ([nan, nan, nan], 0),
            ([nan, minus, minus], 1),
            ([0f, inf, 3f, inf], 1),
            ([5f], 0),
            ([minus, nan, 2f], 2),
        ];
        foreach ((float[] values, int expected) in rows)
        {
            using Tensor logits = Tensor.FromArray(values, [values.Length], _device);
            using Tensor id = Tensor.Empty([1], DType.Int32, _device);
            DeviceSampling.Sample(logits, 1f, 0.999, id);
            Assert.Equal(expected, id.ToInt32Array()[0]);
            DeviceSampling.ArgMax(logits, id);
            Assert.Equal(expected, id.ToInt32Array()[0]);
        }
    }

    /// <summary>A target past every chunk but the last still finds its id (V spans several groups of threads).</summary>
    [Fact]
    public void SampleFindsTheLastChunk()
    {
        // Equal logits: the id is floor(u · V) away from the boundaries u·V = integer.
        float[] values = new float[200];
        using Tensor logits = Tensor.FromArray(values, [values.Length], _device);
        using Tensor id = Tensor.Empty([1], DType.Int32, _device);
        foreach (double u in new[] { 0.0, 0.3025, 0.6575, 0.9975 })
        {
            DeviceSampling.Sample(logits, 1f, u, id);
            Assert.Equal((int)(u * values.Length), id.ToInt32Array()[0]);
        }
    }

    /// <summary>Bad arguments are refused with messages that name them.</summary>
    [Fact]
    public void ArgumentsAreChecked()
    {
        using Tensor table = Tensor.FromArray(new float[12], [3, 4], _device);
        using Tensor ids = Tensor.FromArray(new[] { 0, 2 }, [2], _device);
        using Tensor floatIds = Tensor.FromArray(new float[2], [2], _device);
        using Tensor output = Tensor.Empty([2, 4], DType.Float32, _device);
        using Tensor wrong = Tensor.Empty([2, 5], DType.Float32, _device);
        using Tensor id = Tensor.Empty([1], DType.Int32, _device);
        using Tensor logits = Tensor.FromArray(new float[5], [5], _device);
        using Tensor twoRows = Tensor.FromArray(new float[6], [2, 3], _device);

        Assert.Contains("int32", Assert.Throws<ArgumentException>(() => Embedding.Lookup(table, floatIds, output)).Message);
        Assert.Contains("[2, 4]", Assert.Throws<ArgumentException>(() => Embedding.Lookup(table, ids, wrong)).Message);
        Assert.Contains("one row", Assert.Throws<ArgumentException>(() => DeviceSampling.ArgMax(twoRows, id)).Message);
        Assert.Contains("int32", Assert.Throws<ArgumentException>(() => DeviceSampling.ArgMax(logits, output)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => DeviceSampling.Sample(logits, -1f, 0.5, id));
        Assert.Throws<ArgumentOutOfRangeException>(() => DeviceSampling.Sample(logits, 1f, 1.0, id));
        Assert.Contains("int32", Assert.Throws<ArgumentException>(() => Kiln.Ops.Scale(ids, 2f, ids)).Message);
    }

    /// <summary>The case's table on the device, in its dtype.</summary>
    protected Tensor Table(EmbeddingCase c)
    {
        return c.DType switch
        {
            DType.Float32 => Tensor.FromArray(c.Table, [c.Vocab, c.Dim], _device),
            DType.Float16 => Tensor.FromBits(c.Table.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray(), [c.Vocab, c.Dim], DType.Float16, _device),
            _ => Tensor.FromBits(c.Table.Select(DTypes.SingleToBFloat16).ToArray(), [c.Vocab, c.Dim], DType.BFloat16, _device),
        };
    }
}

/// <summary>The token kernels on the cpu device: the draw must be the float64-sum rule exactly.</summary>
public sealed class TokenKernelPropertiesCpu : TokenKernelProperties
{
    /// <summary>Uses the default CPU device.</summary>
    public TokenKernelPropertiesCpu()
        : base(CpuDevice.Default, 0)
    {
    }

    /// <summary>An out-of-range id throws on the CPU, naming the id, before anything is written.</summary>
    [Fact]
    public void LookupRejectsOutOfRangeIds()
    {
        using Tensor table = Tensor.FromArray(new float[] { 1, 2, 3, 4, 5, 6 }, [3, 2]);
        using Tensor ids = Tensor.FromArray(new[] { 1, 3 }, [2]);
        using Tensor output = Tensor.Empty([2, 2]);
        ArgumentException error = Assert.Throws<ArgumentException>(() => Embedding.Lookup(table, ids, output));
        Assert.Contains("token id 3 (position 1)", error.Message);
        Assert.Equal(new float[4], output.ToArray());
    }
}

/// <summary>The token kernels on ILGPU's CPU accelerator; derived classes pick the optimization level.</summary>
public abstract class TokenKernelPropertiesIlgpu : TokenKernelProperties
{
    private readonly IlgpuDevice _device;

    /// <summary>Runs on <paramref name="device"/> with a 1e-5 band for the draw.</summary>
    protected TokenKernelPropertiesIlgpu(IlgpuDevice device)
        : base(device, 1e-5)
    {
        _device = device;
    }

    /// <summary>An out-of-range id on the device writes a row of zeros and reads nothing outside the table.</summary>
    [Fact]
    public void LookupZeroesOutOfRangeIds()
    {
        using Tensor table = Tensor.FromArray(new float[] { 1, 2, 3, 4, 5, 6 }, [3, 2], _device);
        using Tensor ids = Tensor.FromArray(new[] { 2, 3, -1, 0 }, [4], _device);
        using Tensor output = Tensor.FromArray(Enumerable.Repeat(9f, 8).ToArray(), [4, 2], _device);
        Embedding.Lookup(table, ids, output);
        Assert.Equal(new float[] { 5, 6, 0, 0, 0, 0, 1, 2 }, output.ToArray());
    }
}

/// <summary>The token kernels at O1.</summary>
public sealed class TokenKernelPropertiesO1 : TokenKernelPropertiesIlgpu, IClassFixture<IlgpuO1Fixture>
{
    /// <summary>Uses the class's O1 accelerator.</summary>
    public TokenKernelPropertiesO1(IlgpuO1Fixture fixture)
        : base(fixture.Device)
    {
    }
}

/// <summary>The token kernels at O2.</summary>
public sealed class TokenKernelPropertiesO2 : TokenKernelPropertiesIlgpu, IClassFixture<IlgpuO2Fixture>
{
    /// <summary>Uses the class's O2 accelerator.</summary>
    public TokenKernelPropertiesO2(IlgpuO2Fixture fixture)
        : base(fixture.Device)
    {
    }
}
