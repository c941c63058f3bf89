// Q8_0 weights in the CPU matrix product and the embedding lookup, beyond the mixed-dtype properties of
// MatMulCpuProperties: a Q8_0-only property over decode and prefill sizes (every kernel width, 1 and 2 threads,
// prepacked and not), the embedding lookup against the dequantized table, the tensor plumbing (ToArray, Slice,
// Reshape, To) and the refusals: K not a multiple of 32, Q8_0 on an ILGPU device. Tolerances: see
// MatMulTestSupport.cs (widening is exact, so the float32 accumulation bound applies unchanged).
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using ILGPU;
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Kernels.Gemm;
using Xunit;

namespace Kiln.Core.Tests.MatMul;

/// <summary>Q8_0 weights on the CPU against the float64 reference of the dequantized product.</summary>
public sealed class MatMulQ8_0Tests
{
    private static readonly CpuDevice OneThread = new(1);
    private static readonly CpuDevice TwoThreads = new(2);

    private static readonly KernelWidth[] Widths = new[] { KernelWidth.Vector512, KernelWidth.Vector256, KernelWidth.Scalar }
        .Where(width => width <= CpuGemm.BestWidth)
        .ToArray();

    /// <summary>M = 1 (decode), 2..32 (small batches), above 32 (packed; prepacked too); K from one block to past two
    /// K blocks (576 = 18 blocks), N odd and around the 4/16-row groups.</summary>
    [Property(MaxTest = 40)]
    public Property Q8_0ProductMatchesReference() =>
        Prop.ForAll(MatMulCpuProperties.Cases(MatMulCpuProperties.Size(1, 60, 1, 1, 2, 3, 5, 31, 32, 33, 43),
                MatMulCpuProperties.Size(1, 90, 1, 3, 15, 16, 17, 33, 65), MatMulCpuProperties.Size(1, 600, 1, 32, 33, 256, 288, 513, 576),
                DType.Q8_0).ToArbitrary(),
            c =>
            {
                foreach (KernelWidth width in Widths)
                {
                    foreach (CpuDevice device in new[] { OneThread, TwoThreads })
                    {
                        c.Check(MatMulCpuProperties.Run(c, device, width), $"CPU q8_0 {width} on {device.Threads} thread(s)");
                    }
                }

                // The prepacked path widens the blocks once into float32 panels; same sums, same bits.
                using Tensor a = Tensor.FromArray(c.A, [c.M, c.K], TwoThreads);
                using Tensor w = c.WeightTensor(TwoThreads);
                using Tensor plain = Tensor.Empty([c.M, c.N], DType.Float32, TwoThreads);
                using Tensor packed = Tensor.Empty([c.M, c.N], DType.Float32, TwoThreads);
                using PackedWeights prepacked = Kiln.Kernels.MatMul.Prepack(w);
                Kiln.Kernels.MatMul.Compute(a, w, plain);
                Kiln.Kernels.MatMul.Compute(a, prepacked, packed);
                Assert.True(plain.ToArray().AsSpan().SequenceEqual(packed.ToArray()), $"{c}: prepacked q8_0 differs from unpacked.");
            });

    /// <summary>The lookup of a Q8_0 table equals the dequantized rows exactly (D a multiple of 32, odd V).</summary>
    [Property(MaxTest = 25)]
    public Property EmbeddingLookupOfQ8_0TableIsExact() =>
        Prop.ForAll((from vocab in Gen.Choose(1, 21)
                     from blocks in Gen.Choose(1, 5)
                     from tokens in Gen.Choose(1, 7)
                     from seed in Gen.Choose(0, 1_000_000)
                     select (vocab, dim: blocks * 32, tokens, seed)).ToArbitrary(),
            c =>
            {
                byte[] raw = GemmCase.RandomBlocks(c.vocab * c.dim, c.seed);
                float[] table = new float[c.vocab * c.dim];
                Q8_0Blocks.Dequantize(raw, table);
                Random random = new(c.seed);
                int[] ids = Enumerable.Range(0, c.tokens).Select(_ => random.Next(c.vocab)).ToArray();

                using Tensor q8 = Tensor.FromQ8_0(raw, [c.vocab, c.dim], TwoThreads);
                using Tensor idTensor = Tensor.FromArray(ids, [c.tokens], TwoThreads);
                using Tensor output = Tensor.Empty([c.tokens, c.dim], DType.Float32, TwoThreads);
                Embedding.Lookup(q8, idTensor, output);

                float[] actual = output.ToArray();
                for (int t = 0; t < c.tokens; t++)
                {
                    Assert.True(actual.AsSpan(t * c.dim, c.dim).SequenceEqual(table.AsSpan(ids[t] * c.dim, c.dim)),
                        $"V={c.vocab} D={c.dim} T={c.tokens} seed={c.seed}: row {t} (id {ids[t]}) differs from the dequantized table.");
                }
            });

    /// <summary>ToArray dequantizes; row slices and copies keep whole blocks.</summary>
    [Fact]
    public void TensorPlumbingKeepsBlocks()
    {
        byte[] raw = GemmCase.RandomBlocks(5 * 64, 17);
        float[] values = new float[5 * 64];
        Q8_0Blocks.Dequantize(raw, values);
        using Tensor w = Tensor.FromQ8_0(raw, [5, 64], OneThread);

        Assert.Equal(5 * 2 * 34, w.ByteLength);
        Assert.Equal(values, w.ToArray());
        using Tensor rows = w.Slice(2, 2);
        Assert.Equal(values.AsSpan(128, 128).ToArray(), rows.ToArray());
        using Tensor copy = w.To(TwoThreads);
        Assert.Equal(values, copy.ToArray());
        using Tensor flat = w.Reshape(10, 32);
        Assert.Equal(values, flat.ToArray());
    }

    /// <summary>Q8_0 quantization of float values and the dequantized product: the quantizer's bound per value
    /// (half a step plus the float16 rounding of the scale) holds.</summary>
    [Fact]
    public void QuantizedTensorIsWithinHalfAStep()
    {
        Random random = new(5);
        float[] values = Enumerable.Range(0, 7 * 96).Select(_ => (random.NextSingle() - 0.5f) * 3f).ToArray();
        using Tensor w = Tensor.QuantizeQ8_0(values, [7, 96], OneThread);
        float[] back = w.ToArray();
        for (int b = 0; b < values.Length / 32; b++)
        {
            float amax = values.Skip(b * 32).Take(32).Max(MathF.Abs);
            float step = amax / 127f;
            for (int i = b * 32; i < (b + 1) * 32; i++)
            {
                Assert.True(Math.Abs(values[i] - back[i]) <= (step / 2) + (127 * step / 2048) + 1e-7f, $"value {i}: {values[i]} -> {back[i]}");
            }
        }
    }

    [Fact]
    public void RejectsInnerDimensionNotMultipleOf32()
    {
        ArgumentException empty = Assert.Throws<ArgumentException>(() => Tensor.Empty([4, 48], DType.Q8_0, OneThread));
        Assert.Contains("multiple of 32", empty.Message);

        using Tensor w = Tensor.Empty([3, 64], DType.Q8_0, OneThread);
        ArgumentException reshape = Assert.Throws<ArgumentException>(() => w.Reshape(4, 48));
        Assert.Contains("multiple of 32", reshape.Message);

        ArgumentException bytes = Assert.Throws<ArgumentException>(() => Tensor.FromQ8_0(new byte[33], [1, 32], OneThread));
        Assert.Contains("takes 34", bytes.Message);
    }

    [Fact]
    public void Q8_0TensorHasNoElementSize()
    {
        using Tensor w = Tensor.Empty([1, 32], DType.Q8_0, OneThread);
        Assert.Throws<InvalidOperationException>(() => w.AsSpan<byte>());
        InvalidOperationException size = Assert.Throws<InvalidOperationException>(() => DType.Q8_0.SizeOf());
        Assert.Contains("ByteCount", size.Message);
    }

    [Fact]
    public void IlgpuRefusesQ8_0Weights()
    {
        using IlgpuDevice device = IlgpuDevice.CreateCpuAccelerator(OptimizationLevel.O1);
        using Tensor a = Tensor.Empty([2, 32], DType.Float32, device);
        using Tensor w = Tensor.Empty([4, 32], DType.Q8_0, device);
        using Tensor output = Tensor.Empty([2, 4], DType.Float32, device);
        using Tensor ids = Tensor.Empty([2], DType.Int32, device);
        using Tensor rows = Tensor.Empty([2, 32], DType.Float32, device);

        ArgumentException matmul = Assert.Throws<ArgumentException>(() => Kiln.Kernels.MatMul.Compute(a, w, output));
        Assert.Equal("w", matmul.ParamName);
        Assert.Contains("cpu device", matmul.Message);
        ArgumentException lookup = Assert.Throws<ArgumentException>(() => Embedding.Lookup(w, ids, rows));
        Assert.Contains("cpu device", lookup.Message);
    }
}
