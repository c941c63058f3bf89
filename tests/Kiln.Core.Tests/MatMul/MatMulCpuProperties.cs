// FsCheck properties of the CPU matrix product against the float64 reference (tolerances in
// MatMulTestSupport.cs): the packed path (M > 32) and the streaming path (M <= 32), every kernel width
// (Vector512, Vector256, scalar), 1 and 2 threads, float32/float16/bfloat16/Q8_0 weights (Q8_0 cases round K up
// to a multiple of 32), identity and test
// epilogues, over sizes of 1, odd sizes, sizes next to the tile sizes (14, 32, 6, 16) and sizes that cross the
// K block (256) and the column block (512). A failing case prints FsCheck's replay seed and the case.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Kernels.Gemm;
using Xunit;

namespace Kiln.Core.Tests.MatMul;

/// <summary>The CPU paths of <see cref="Kiln.Kernels.MatMul"/> against <see cref="Kiln.Kernels.MatMul.Reference"/>.</summary>
public sealed unsafe class MatMulCpuProperties
{
    private static readonly CpuDevice OneThread = new(1);
    private static readonly CpuDevice TwoThreads = new(2);

    /// <summary>Every kernel family this machine can run: the best one and all narrower ones.</summary>
    private static readonly KernelWidth[] Widths = new[] { KernelWidth.Vector512, KernelWidth.Vector256, KernelWidth.Scalar }
        .Where(width => width <= CpuGemm.BestWidth)
        .ToArray();

    /// <summary>M > 32 (packed panels): K up to 600 crosses the 256 K block twice.</summary>
    [Property(MaxTest = 60)]
    public Property PackedPathMatchesReference() =>
        Prop.ForAll(Cases(Size(33, 70, 33, 34, 41, 42, 43, 55, 56, 57), Size(1, 100, 1, 15, 16, 17, 31, 32, 33, 64, 65),
            Size(1, 600, 1, 2, 15, 16, 17, 255, 256, 257, 512, 513)).ToArbitrary(), CheckAllVariants);

    /// <summary>M in 1..32 (streaming): N around the 4- and 16-row groups, K around the 16-wide steps.</summary>
    [Property(MaxTest = 60)]
    public Property SmallMPathMatchesReference() =>
        Prop.ForAll(Cases(Size(1, 32, 1, 1, 2, 3, 4, 5, 8, 9, 17, 31, 32), Size(1, 100, 1, 4, 5, 15, 16, 17, 32, 33),
            Size(1, 600, 1, 7, 15, 16, 17, 64, 257)).ToArbitrary(), CheckAllVariants);

    /// <summary>N beyond the 512-column block, with a ragged last block.</summary>
    [Property(MaxTest = 8)]
    public Property ColumnBlocksMatchReference() =>
        Prop.ForAll(Cases(Size(33, 45, 33, 42, 43), Size(513, 1100, 513, 1024, 1025), Size(1, 40, 1, 16, 33)).ToArbitrary(),
            CheckAllVariants);

    /// <summary>Every element is summed by one thread in one order, so 1 and 2 threads agree bit for bit.</summary>
    [Property(MaxTest = 10)]
    public Property ThreadCountDoesNotChangeResults() =>
        Prop.ForAll(Cases(Size(1, 60, 1, 2, 4, 5, 32, 33, 43), Size(100, 400, 127, 128), Size(300, 700, 300, 513)).ToArbitrary(),
            c =>
            {
                // Both runs are large enough to split across threads.
                float[] one = Run(c, OneThread, CpuGemm.BestWidth);
                float[] two = Run(c, TwoThreads, CpuGemm.BestWidth);
                Assert.True(one.AsSpan().SequenceEqual(two), $"{c}: 1 and 2 threads differ.");
            });

    /// <summary>Prepacked weights give the same bits as packing on every call, and match the reference.</summary>
    [Property(MaxTest = 15)]
    public Property PrepackedWeightsGiveTheSameResults() =>
        Prop.ForAll(Cases(Size(1, 70, 1, 32, 33, 43), Size(1, 600, 1, 31, 33, 513), Size(1, 600, 1, 17, 257, 513)).ToArbitrary(),
            c =>
            {
                // The same product three ways: the public unpacked entry, prepacked, and against the reference.
                using Tensor a = Tensor.FromArray(c.A, [c.M, c.K], TwoThreads);
                using Tensor w = c.WeightTensor(TwoThreads);
                using Tensor residual = Tensor.FromArray(c.Residual, [c.M, c.N], TwoThreads);
                using Tensor plain = Tensor.Empty([c.M, c.N], DType.Float32, TwoThreads);
                using Tensor packed = Tensor.Empty([c.M, c.N], DType.Float32, TwoThreads);
                using PackedWeights prepacked = Kiln.Kernels.MatMul.Prepack(w);
                if (c.UseEpilogue)
                {
                    ResidualEpilogue epilogue = new() { Residual = residual.FloatPointer, N = c.N };
                    Kiln.Kernels.MatMul.Compute(a, w, plain, ref epilogue);
                    Kiln.Kernels.MatMul.Compute(a, prepacked, packed, ref epilogue);
                }
                else
                {
                    Kiln.Kernels.MatMul.Compute(a, w, plain);
                    Kiln.Kernels.MatMul.Compute(a, prepacked, packed);
                }

                Assert.True(plain.ToArray().AsSpan().SequenceEqual(packed.ToArray()), $"{c}: prepacked differs from unpacked.");
                c.Check(packed.ToArray(), "CPU prepacked");
            });

    /// <summary>Prepack refuses weights that are not a 2-D CPU matrix.</summary>
    [Fact]
    public void PrepackRejectsNonMatrices()
    {
        using Tensor w = Tensor.Empty([2, 3, 4], DType.Float32, OneThread);

        ArgumentException error = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Prepack(w));

        Assert.Contains("2-D [N, K]", error.Message);
    }

    /// <summary>The public entry point on tensors: A of rank 3 is flattened, the epilogue is applied.</summary>
    [Fact]
    public void ComputeOnRank3TensorsMatchesReference()
    {
        GemmCase c = new(M: 2 * 19, N: 45, K: 300, WType: DType.BFloat16, UseEpilogue: true, Seed: 7);
        using Tensor a = Tensor.FromArray(c.A, [2, 19, c.K], TwoThreads);
        using Tensor w = c.WeightTensor(TwoThreads);
        using Tensor residual = Tensor.FromArray(c.Residual, [2, 19, c.N], TwoThreads);
        using Tensor output = Tensor.Empty([2, 19, c.N], DType.Float32, TwoThreads);
        ResidualEpilogue epilogue = new() { Residual = residual.FloatPointer, N = c.N };

        Kiln.Kernels.MatMul.Compute(a, w, output, ref epilogue);

        c.Check(output.ToArray(), "Compute(rank 3)");
    }

    /// <summary>The epilogue may read the output itself: an in-place residual add sees the old values.</summary>
    [Fact]
    public void EpilogueMayReadTheOutput()
    {
        // K spans three K blocks, so partial sums exist; they must not pass through the output.
        GemmCase c = new(M: 40, N: 70, K: 700, WType: DType.Float32, UseEpilogue: true, Seed: 11);
        using Tensor a = Tensor.FromArray(c.A, [c.M, c.K], TwoThreads);
        using Tensor w = c.WeightTensor(TwoThreads);
        using Tensor output = Tensor.FromArray(c.Residual, [c.M, c.N], TwoThreads);
        ResidualEpilogue epilogue = new() { Residual = output.FloatPointer, N = c.N };

        Kiln.Kernels.MatMul.Compute(a, w, output, ref epilogue);

        c.Check(output.ToArray(), "Compute(in-place residual)");
    }

    /// <summary>The identity overload on float16 weights, M = 1.</summary>
    [Fact]
    public void IdentityOverloadMatchesReference()
    {
        GemmCase c = new(M: 1, N: 172, K: 64, WType: DType.Float16, UseEpilogue: false, Seed: 3);
        using Tensor a = Tensor.FromArray(c.A, [c.K], OneThread);
        using Tensor w = c.WeightTensor(OneThread);
        using Tensor output = Tensor.Empty([c.N], DType.Float32, OneThread);

        Kiln.Kernels.MatMul.Compute(a, w, output);

        c.Check(output.ToArray(), "Compute(identity)");
    }

    /// <summary>Widening of special float16 values (subnormals, the largest finite value, infinities, NaN) on the
    /// streaming paths (M = 1, 2) and the packing path (M = 40).</summary>
    [Fact]
    public void Float16WideningIsExactForSpecialValues()
    {
        // Each W row is a one-hot of a special value, A is all ones: output column j is exactly value j.
        float[] specials = [0f, -0f, 6.1035156e-05f, 5.9604645e-08f, -5.9604645e-08f, 65504f, -65504f, 1f / 3,
            float.PositiveInfinity, float.NegativeInfinity, float.NaN, 0.5f, -2f, 1.0009766f, 3.0517578e-05f, 1e-7f, 100.5f,
            7f, -1.5258789e-05f];
        int n = specials.Length;
        int k = 16;
        ushort[] bits = new ushort[n * k];
        for (int j = 0; j < n; j++)
        {
            bits[(j * k) + (j % k)] = BitConverter.HalfToUInt16Bits((Half)specials[j]);
        }

        using Tensor a = Tensor.FromArray(Enumerable.Repeat(1f, 40 * k).ToArray(), [40, k], OneThread);
        using Tensor w = Tensor.FromBits(bits, [n, k], DType.Float16, OneThread);
        foreach (int m in new[] { 1, 2, 40 })
        {
            using Tensor output = Tensor.Empty([m, n], DType.Float32, OneThread);
            using Tensor rows = a.Slice(0, m);
            Kiln.Kernels.MatMul.Compute(rows, w, output);
            float[] result = output.ToArray();
            for (int j = 0; j < n; j++)
            {
                Assert.Equal((float)(Half)specials[j], result[j]);
            }
        }
    }

    private static void CheckAllVariants(GemmCase c)
    {
        foreach (KernelWidth width in Widths)
        {
            foreach (CpuDevice device in new[] { OneThread, TwoThreads })
            {
                c.Check(Run(c, device, width), $"CPU {width} on {device.Threads} thread(s)");
            }
        }
    }

    /// <summary>Runs the case through the internal CPU entry with a chosen kernel width.</summary>
    internal static float[] Run(GemmCase c, CpuDevice device, KernelWidth width)
    {
        using Tensor a = Tensor.FromArray(c.A, [c.M, c.K], device);
        using Tensor w = c.WeightTensor(device);
        using Tensor residual = Tensor.FromArray(c.Residual, [c.M, c.N], device);
        using Tensor output = Tensor.Empty([c.M, c.N], DType.Float32, device);
        if (c.UseEpilogue)
        {
            ResidualEpilogue epilogue = new() { Residual = residual.FloatPointer, N = c.N };
            Kiln.Kernels.MatMul.ComputeCpu(device.Pool, a.FloatPointer, w.DataPointer, w.DType, output.FloatPointer,
                c.M, c.N, c.K, ref epilogue, width);
        }
        else
        {
            IdentityEpilogue epilogue = default;
            Kiln.Kernels.MatMul.ComputeCpu(device.Pool, a.FloatPointer, w.DataPointer, w.DType, output.FloatPointer,
                c.M, c.N, c.K, ref epilogue, width);
        }

        return output.ToArray();
    }

    /// <summary>Random cases over the given size generators, all weight dtypes (Q8_0 with K rounded up to a multiple
    /// of 32), with and without epilogue.</summary>
    internal static Gen<GemmCase> Cases(Gen<int> m, Gen<int> n, Gen<int> k) => Cases(m, n, k, DType.Float32, DType.Float16, DType.BFloat16, DType.Q8_0);

    /// <summary>Random cases with float32, float16 and bfloat16 weights (the dtypes the ILGPU kernels read).</summary>
    internal static Gen<GemmCase> FloatCases(Gen<int> m, Gen<int> n, Gen<int> k) => Cases(m, n, k, DType.Float32, DType.Float16, DType.BFloat16);

    /// <summary>Random cases over the given size generators and weight dtypes.</summary>
    internal static Gen<GemmCase> Cases(Gen<int> m, Gen<int> n, Gen<int> k, params DType[] types) =>
        from mm in m
        from nn in n
        from kk in k
        from type in Gen.Elements(types)
        from epilogue in Gen.Elements(true, false)
        from seed in Gen.Choose(0, 1_000_000)
        select new GemmCase(mm, nn, type == DType.Q8_0 ? (kk + 31) / 32 * 32 : kk, type, epilogue, seed);

    /// <summary>Uniform sizes in [min, max] half the time, listed edge sizes the other half.</summary>
    internal static Gen<int> Size(int min, int max, params int[] edges) =>
        Gen.OneOf(Gen.Choose(min, max), Gen.Elements(edges.Where(e => e >= min && e <= max).ToArray()));
}
