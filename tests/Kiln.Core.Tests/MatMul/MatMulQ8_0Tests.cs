// Q8_0 weights in the CPU matrix product and the embedding lookup, beyond the mixed-dtype properties of
// MatMulCpuProperties: a Q8_0-only property over decode and prefill sizes (every kernel width, 1 and 2 threads,
// prepacked and not), the embedding lookup against the dequantized table, the tensor plumbing (ToArray, Slice,
// Reshape, To) and the refusals: K not a multiple of 32, Q8_0 on an ILGPU device. Tolerances: see
// MatMulTestSupport.cs (widening is exact, so the float32 accumulation bound applies unchanged).
using System.Runtime.Intrinsics.X86;
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
public sealed unsafe class MatMulQ8_0Tests
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

    /// <summary>
    /// Decode and small batches (M up to 16 take the integer matrix-vector path, 17 the packed product) with
    /// activations off any grid, over many magnitudes per block (zero blocks, blocks below 2^-96, ordinary and large
    /// values): the Vector512 and Vector256 kernels quantize each A row to int16 per block with scale p = 2^(e - 14),
    /// e = floor(log2 max|a|), so each activation is off by at most p; the bound is the float32 accumulation bound plus
    /// Σ_blocks p·Σ|w| (max|a|·Σ|w| for a block below 2^-96, which contributes nothing).
    /// </summary>
    [Property(MaxTest = 40)]
    public Property Q8_0DecodeOfRealValuedActivationsIsWithinTheQuantizationBound() =>
        Prop.ForAll((from m in Gen.Elements(1, 1, 2, 3, 5, CpuGemv.MaxIntegerRows, CpuGemv.MaxIntegerRows + 1)
                     from n in MatMulCpuProperties.Size(1, 70, 1, 15, 16, 17, 31, 32, 33)
                     from blocks in Gen.Choose(1, 20)
                     from seed in Gen.Choose(0, 1_000_000)
                     select (m, n, k: blocks * 32, seed)).ToArbitrary(),
            c =>
            {
                Random random = new(c.seed);
                float[] a = new float[c.m * c.k];
                for (int b = 0; b < a.Length / 32; b++)
                {
                    // Per block a magnitude: zero, tiny (below 2^-96), or 10^[-6, 4].
                    int kind = random.Next(6);
                    double magnitude = kind == 0 ? 0 : kind == 1 ? 1e-31 : Math.Pow(10, random.Next(-6, 5));
                    for (int i = b * 32; i < (b + 1) * 32; i++)
                    {
                        a[i] = (float)((random.NextDouble() - 0.5) * 2 * magnitude);
                    }
                }

                byte[] raw = GemmCase.RandomBlocks(c.n * c.k, c.seed + 1);
                float[] w = new float[c.n * c.k];
                Q8_0Blocks.Dequantize(raw, w);
                double[] expected = new double[c.m * c.n];
                Kiln.Kernels.MatMul.Reference(a, w, c.m, c.n, c.k, expected);

                foreach (KernelWidth width in Widths)
                {
                    foreach (CpuDevice device in new[] { OneThread, TwoThreads })
                    {
                        using Tensor aTensor = Tensor.FromArray(a, [c.m, c.k], device);
                        using Tensor wTensor = Tensor.FromQ8_0(raw, [c.n, c.k], device);
                        using Tensor output = Tensor.Empty([c.m, c.n], DType.Float32, device);
                        IdentityEpilogue identity = default;
                        Kiln.Kernels.MatMul.ComputeCpu(device.Pool, aTensor.FloatPointer, wTensor.DataPointer, DType.Q8_0,
                            output.FloatPointer, c.m, c.n, c.k, ref identity, width);
                        float[] actual = output.ToArray();
                        for (int row = 0; row < c.m; row++)
                        {
                            for (int col = 0; col < c.n; col++)
                            {
                                double magnitudeSum = 0;
                                double quantization = 0;
                                for (int b = 0; b < c.k / 32; b++)
                                {
                                    double blockMax = 0;
                                    double weightSum = 0;
                                    for (int i = b * 32; i < (b + 1) * 32; i++)
                                    {
                                        float x = a[(row * c.k) + i];
                                        blockMax = Math.Max(blockMax, Math.Abs(x));
                                        weightSum += Math.Abs(w[(col * c.k) + i]);
                                        magnitudeSum += Math.Abs((double)x * w[(col * c.k) + i]);
                                    }

                                    quantization += blockMax == 0 ? 0
                                        : blockMax < Math.ScaleB(1, -96) ? blockMax * weightSum
                                        : Math.ScaleB(1, Math.ILogB(blockMax) - 14) * weightSum;
                                }

                                double tolerance = (1e-5 * Math.Sqrt(c.k) * magnitudeSum) + quantization;
                                int index = (row * c.n) + col;
                                Assert.True(Math.Abs(actual[index] - expected[index]) <= tolerance,
                                    $"M={c.m} N={c.n} K={c.k} seed={c.seed} {width} {device.Threads} thread(s): [{row}, {col}] is "
                                    + $"{actual[index]}, reference {expected[index]} (tolerance {tolerance:G3}).");
                            }
                        }
                    }
                }
            });

    /// <summary>
    /// The int16 quantizer of the decode path: each block's scale is exactly 2^(floor(log2 max|a|) - 14) (0 for a block
    /// whose largest magnitude is below 2^-96), and each value is a·2^-(e - 14) rounded to nearest, saturated at ±32767.
    /// </summary>
    [Property(MaxTest = 60)]
    public Property Int16QuantizerRoundsToTheBlockScale() =>
        Prop.ForAll((from blocks in Gen.Choose(1, 6)
                     from exponent in Gen.Choose(-110, 100)
                     from seed in Gen.Choose(0, 1_000_000)
                     select (k: blocks * 32, exponent, seed)).ToArbitrary(),
            c =>
            {
                if (!Avx2.IsSupported)
                {
                    return; // The quantizer is AVX-512BW or AVX2 code; without either the decode path never calls it.
                }

                Random random = new(c.seed);
                float[] a = Enumerable.Range(0, c.k)
                    .Select(_ => MathF.ScaleB((random.NextSingle() * 2) - 1, c.exponent + random.Next(-3, 4))).ToArray();
                a[random.Next(c.k)] = 0f;
                short[] values = new short[c.k];
                float[] scales = new float[c.k / 32];
                fixed (float* source = a)
                fixed (short* q = values)
                fixed (float* scale = scales)
                {
                    CpuGemv.QuantizeInt16(source, c.k, q, scale);
                }

                for (int b = 0; b < c.k / 32; b++)
                {
                    float max = a.Skip(b * 32).Take(32).Max(MathF.Abs);
                    float want = max < MathF.ScaleB(1f, -96) ? 0f : MathF.ScaleB(1f, MathF.ILogB(max) - 14);
                    Assert.True(want == scales[b], $"K={c.k} 2^{c.exponent} seed={c.seed}: block {b} scale {scales[b]}, want {want}.");
                    for (int i = b * 32; i < (b + 1) * 32; i++)
                    {
                        double exact = want == 0 ? 0 : Math.Clamp(Math.Round(a[i] / (double)want, MidpointRounding.ToEven), -32767, 32767);
                        Assert.True(exact == values[i], $"K={c.k} 2^{c.exponent} seed={c.seed}: a[{i}] = {a[i]} became {values[i]}, want {exact}.");
                    }
                }
            });

    /// <summary>A NaN or an infinity in A makes every output of a decode product NaN or infinite, never a finite
    /// number (the int16 path marks such a block with a NaN scale).</summary>
    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public void Q8_0DecodeOfNonFiniteActivationIsNotFinite(float special)
    {
        const int n = 37;
        const int k = 96;
        float[] a = Enumerable.Range(0, k).Select(i => (i % 7) - 3f).ToArray();
        a[40] = special;
        byte[] raw = new byte[n * (k / 32) * 34];
        Q8_0Blocks.Quantize(Enumerable.Range(0, n * k).Select(i => ((i * 37) % 11) - 5f).ToArray(), raw);
        foreach (KernelWidth width in Widths)
        {
            using Tensor aTensor = Tensor.FromArray(a, [1, k], TwoThreads);
            using Tensor wTensor = Tensor.FromQ8_0(raw, [n, k], TwoThreads);
            using Tensor output = Tensor.Empty([1, n], DType.Float32, TwoThreads);
            IdentityEpilogue identity = default;
            Kiln.Kernels.MatMul.ComputeCpu(TwoThreads.Pool, aTensor.FloatPointer, wTensor.DataPointer, DType.Q8_0,
                output.FloatPointer, 1, n, k, ref identity, width);
            float[] actual = output.ToArray();
            Assert.All(actual, value => Assert.False(float.IsFinite(value), $"{width}: {special} in A gave a finite output {value}."));
        }
    }

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

    /// <summary>
    /// On an ILGPU device a Q8_0 table is looked up exactly (the dequantized rows; an id outside the table gives a row
    /// of zeros), and Q8_0 weights sliced at a block row whose bytes do not start 16-byte aligned (34·K/32 bytes in)
    /// multiply like the whole matrix's rows.
    /// </summary>
    [Fact]
    public void IlgpuReadsQ8_0TablesAndSlicedWeights()
    {
        using IlgpuDevice device = IlgpuDevice.CreateCpuAccelerator(OptimizationLevel.O1);
        const int vocab = 7;
        const int dim = 96;
        byte[] raw = GemmCase.RandomBlocks(vocab * dim, 11);
        float[] table = new float[vocab * dim];
        Q8_0Blocks.Dequantize(raw, table);
        int[] ids = [3, 0, 6, vocab, 3];
        using (Tensor q8 = Tensor.FromQ8_0(raw, [vocab, dim], device))
        using (Tensor idTensor = Tensor.FromArray(ids, [ids.Length], device))
        using (Tensor rows = Tensor.Empty([ids.Length, dim], DType.Float32, device))
        {
            Embedding.Lookup(q8, idTensor, rows);
            device.Synchronize();
            float[] actual = rows.ToArray();
            for (int t = 0; t < ids.Length; t++)
            {
                float[] want = ids[t] < vocab ? table.AsSpan(ids[t] * dim, dim).ToArray() : new float[dim];
                Assert.True(actual.AsSpan(t * dim, dim).SequenceEqual(want), $"row {t} (id {ids[t]}) differs from the dequantized table.");
            }
        }

        foreach ((int m, int n, int k) in new[] { (1, 5, 32), (3, 4, 96), (20, 3, 64) })
        {
            GemmCase c = new(M: m, N: n, K: k, WType: DType.Q8_0, UseEpilogue: false, Seed: m + n + k);
            byte[] padded = GemmCase.RandomBlocks(k, 3).Concat(c.Blocks!).ToArray();
            using Tensor a = Tensor.FromArray(c.A, [m, k], device);
            using Tensor backing = Tensor.FromQ8_0(padded, [(n + 1) * k], device);
            using Tensor w = backing.Slice(k, n * k).Reshape(n, k);
            using Tensor output = Tensor.Empty([m, n], DType.Float32, device);
            Kiln.Kernels.MatMul.Compute(a, w, output);
            device.Synchronize();
            c.Check(output.ToArray(), "ILGPU q8_0 row slice");
        }
    }
}
