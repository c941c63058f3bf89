// GGUF writer → reader round trips as FsCheck properties: random metadata of every value type (nested arrays, empty
// strings and arrays, non-ASCII text) and random raw tensors of F32/F16/BF16/Q8_0 with random shapes and alignments
// come back with the same keys in the same order, the same values bit for bit and the same bytes; Kiln tensors written
// as F32/F16/BF16/Q8_0 come back as the conversion rounds them. The Q8_0 quantizer is checked against a float64
// reference (scale max|x|/127, nearest integer with ties away from zero) and its reconstruction error is bounded.

using System.Runtime.InteropServices;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Models.Formats;
using Xunit;

namespace Kiln.Models.Tests.Gguf;

public sealed class GgufRoundTripTests
{
    [Property(MaxTest = 150)]
    public Property RandomMetadataAndRawTensors_RoundTrip() => Prop.ForAll(
        (from metadata in MetadataGen()
         from tensors in RawTensorGen().ListOf().Select(static l => l.ToArray())
         from alignment in Gen.Elements(1, 2, 8, 32, 64)
         select (metadata, tensors, alignment)).ToArbitrary(),
        sample =>
        {
            (List<(string Key, GgufValue Value)> metadata, RawTensor[] tensors, int alignment) = sample;
            GgufWriter writer = new() { Alignment = alignment };
            foreach ((string key, GgufValue value) in metadata)
            {
                writer.Add(key, value);
            }

            // Names must be unique: number them.
            for (int i = 0; i < tensors.Length; i++)
            {
                writer.AddRaw($"t{i}.{tensors[i].Name}", tensors[i].Type, tensors[i].Dims, tensors[i].Bytes);
            }

            GgufFile file = GgufFile.Parse("mem.gguf", Write(writer));

            // The keys in order (general.alignment first), the same values, the same tensors and bytes.
            bool keys = file.Keys.SequenceEqual([GgufFile.AlignmentKey, .. metadata.Select(static m => m.Key)]);
            bool values = metadata.All(m => Same(m.Value, file.Metadata[m.Key]));
            bool alignmentOk = file.Alignment == alignment && file.DataOffset % alignment == 0;
            bool tensorsOk = file.Tensors.Count == tensors.Length && tensors.Select((t, i) =>
            {
                GgufTensorInfo info = file.Tensors[i];
                return info.Name == $"t{i}.{t.Name}" && info.Type == t.Type && info.Dims.SequenceEqual(t.Dims)
                    && info.FileOffset % alignment == 0 && file.ReadTensorBytes(info.Name).AsSpan().SequenceEqual(t.Bytes);
            }).All(static ok => ok);
            return (keys && values && alignmentOk && tensorsOk)
                .Label($"keys {keys}, values {values}, alignment {alignmentOk}, tensors {tensorsOk}");
        });

    [Property(MaxTest = 60)]
    public Property KilnTensors_RoundTripAsTheirStoredType() => Prop.ForAll(
        (from rank in Gen.Choose(1, 3)
         from outer in Gen.Choose(1, 5).ArrayOf(rank - 1)
         from blocks in Gen.Choose(1, 3)
         from odd in Gen.Choose(1, 70)
         from type in Gen.Elements(GgufTensorType.F32, GgufTensorType.F16, GgufTensorType.BF16, GgufTensorType.Q8_0)
         let inner = type == GgufTensorType.Q8_0 ? blocks * 32 : odd
         let shape = outer.Append(inner).ToArray()
         from values in Gen.Choose(-30000, 30000).Select(static i => i / 1000f).ArrayOf(shape.Aggregate(1, static (a, b) => a * b))
         select (shape, type, values)).ToArbitrary(),
        sample =>
        {
            (int[] shape, GgufTensorType type, float[] values) = sample;
            using Tensor tensor = Tensor.FromArray(values, shape);
            GgufWriter writer = new();
            writer.AddTensor("w", tensor, type);
            GgufFile file = GgufFile.Parse("mem.gguf", Write(writer));
            GgufTensorInfo info = file.GetTensor("w");
            bool shapeOk = info.Shape.SequenceEqual(shape) && info.Type == type;

            // What each type must give back: the value rounded to the stored precision (Q8_0: its blocks exactly).
            bool valuesOk;
            if (type == GgufTensorType.Q8_0)
            {
                byte[] expected = new byte[Q8_0Blocks.ByteCount(values.Length)];
                Q8_0Blocks.Quantize(values, expected);
                valuesOk = file.ReadTensorBytes("w").SequenceEqual(expected);
            }
            else
            {
                using Tensor loaded = file.LoadTensor("w", DType.Float32);
                float[] back = loaded.ToArray();
                float[] rounded = type switch
                {
                    GgufTensorType.F16 => [.. values.Select(static v => (float)(Half)v)],
                    GgufTensorType.BF16 => [.. values.Select(static v => DTypes.BFloat16ToSingle(DTypes.SingleToBFloat16(v)))],
                    _ => values,
                };
                valuesOk = back.SequenceEqual(rounded) && loaded.Shape.SequenceEqual(shape);
            }

            return (shapeOk && valuesOk).Label($"{type} {Tensor.FormatShape(shape)}: shape {shapeOk}, values {valuesOk}");
        });

    [Property(MaxTest = 300)]
    public Property Q8_0_MatchesTheFloat64Reference() => Prop.ForAll(
        (from blocks in Gen.Choose(1, 4)
         from scale in Gen.Elements(1e-3f, 1f, 37f, 1e4f)
         from values in Gen.Frequency(
             (8, Gen.Choose(-100000, 100000).Select(i => i / 100000f * scale)),
             (1, Gen.Constant(0f)),
             (1, Gen.Choose(-4, 4).Select(i => i * 0.5f * scale))).ArrayOf(blocks * 32)
         select values).ToArbitrary(),
        values =>
        {
            byte[] blocks = new byte[Q8_0Blocks.ByteCount(values.Length)];
            Q8_0Blocks.Quantize(values, blocks);
            float[] back = new float[values.Length];
            Q8_0Blocks.Dequantize(blocks, back);
            for (int b = 0; b < values.Length / 32; b++)
            {
                // Reference in float64: d = max|x| / 127, q = x / d rounded half away from zero.
                double amax = 0;
                for (int i = 0; i < 32; i++)
                {
                    amax = Math.Max(amax, Math.Abs((double)values[(b * 32) + i]));
                }

                // The stored scale is the float32 quotient rounded to float16, as ggml computes it.
                double d = amax / 127;
                double d16 = (double)(Half)((float)amax / 127f);
                if ((double)BitConverter.ToHalf(blocks, b * 34) != d16)
                {
                    return false.Label($"block {b}: scale {BitConverter.ToHalf(blocks, b * 34)}, expected {d16}");
                }

                for (int i = 0; i < 32; i++)
                {
                    double x = values[(b * 32) + i];
                    double exact = d == 0 ? 0 : x / d;
                    double expected = Math.Round(exact, MidpointRounding.AwayFromZero);
                    int q = (sbyte)blocks[(b * 34) + 2 + i];

                    // Float32 arithmetic may land on the other side of an exact half: allow that only within 1e-4 of it.
                    bool nearHalf = Math.Abs(Math.Abs(exact - Math.Truncate(exact)) - 0.5) < 1e-4;
                    if (q != expected && !(nearHalf && Math.Abs(q - expected) == 1))
                    {
                        return false.Label($"block {b} value {i}: x {x}, q {q}, expected {expected}");
                    }

                    // Reconstruction: within half a step (q was rounded with the float32 scale d) plus what rounding the
                    // scale to float16 moves q·d by (large for tiny blocks, whose scale is a float16 subnormal).
                    double error = Math.Abs(back[(b * 32) + i] - x);
                    double bound = (0.5 * d) + (Math.Abs(q) * Math.Abs(d - d16)) + (1e-6 * Math.Abs(x)) + 1e-12;
                    if (error > bound * 1.0001)
                    {
                        return false.Label($"block {b} value {i}: x {x}, back {back[(b * 32) + i]}, error {error} > {bound}");
                    }
                }
            }

            return true.ToProperty();
        });

    [Fact]
    public void Q8_0_KnownBlock_RoundsTiesAwayFromZero()
    {
        // max |x| = 127 gives d = 1 exactly, so q is x rounded: 2.5 → 3, -2.5 → -3, 0.49 → 0, -127 → -127.
        float[] values = new float[32];
        values[0] = 127f;
        values[1] = 2.5f;
        values[2] = -2.5f;
        values[3] = 0.49f;
        values[4] = -127f;
        values[5] = 63.5f;
        byte[] block = new byte[34];

        Q8_0Blocks.Quantize(values, block);

        Assert.Equal((Half)1f, BitConverter.ToHalf(block));
        Assert.Equal(new sbyte[] { 127, 3, -3, 0, -127, 64, 0 }, MemoryMarshal.Cast<byte, sbyte>(block.AsSpan(2, 7)).ToArray());
    }

    [Fact]
    public void Q8_0_AllZeroBlock_HasZeroScaleAndValues()
    {
        byte[] block = new byte[34];
        Array.Fill(block, (byte)0xAA);

        Q8_0Blocks.Quantize(new float[32], block);

        Assert.All(block, static b => Assert.Equal(0, b));
    }

    [Fact]
    public void Writer_RejectsWhatGgufCannotHold()
    {
        GgufWriter writer = new();
        using Tensor odd = Tensor.FromArray(new float[33], [33]);

        Assert.Contains("multiple of the 32-value blocks of Q8_0", Assert.Throws<ArgumentException>(() => writer.AddTensor("q", odd, GgufTensorType.Q8_0)).Message);
        Assert.Contains("not a power of two", Assert.Throws<ArgumentException>(() => writer.Alignment = 24).Message);
        Assert.Contains("must be a u32", Assert.Throws<ArgumentException>(() => writer.Add(GgufFile.AlignmentKey, GgufValue.UInt64(32))).Message);
        writer.Add("a", GgufValue.Bool(true));
        Assert.Contains("already added", Assert.Throws<ArgumentException>(() => writer.Add("a", GgufValue.Bool(false))).Message);
        writer.AddTensor("t", odd, GgufTensorType.F32);
        Assert.Contains("already added", Assert.Throws<ArgumentException>(() => writer.AddTensor("t", odd, GgufTensorType.F16)).Message);
        Assert.Contains("takes 132 bytes", Assert.Throws<ArgumentException>(() => writer.AddRaw("r", GgufTensorType.F32, [33], new byte[4])).Message);
        Assert.Contains("held in a Single[]", Assert.Throws<ArgumentException>(() => GgufValue.Array(GgufValueType.Float32, new int[1])).Message);
    }

    [Fact]
    public void Reader_TypedAccessors_NameTheKeyAndTheType()
    {
        GgufWriter writer = new();
        writer.Add("s", GgufValue.String("x"));
        writer.Add("i", GgufValue.Int32(-4));
        writer.Add("u64", GgufValue.UInt64(7));
        writer.Add("f", GgufValue.Array([1f, 2f]));
        GgufFile file = GgufFile.Parse("mem.gguf", Write(writer));

        Assert.Equal("x", file.GetString("s"));
        Assert.Equal(7, file.GetInteger("u64"));
        Assert.Equal(-4, file.GetInteger("i"));
        Assert.Equal([1f, 2f], file.GetArray<float>("f"));
        Assert.Equal(11, file.GetInteger("absent", 11, 0, 100));
        AssertMessage(() => file.GetString("nope"), "has no metadata key 'nope'");
        AssertMessage(() => file.GetUInt32("s"), "metadata key 's' is a string, expected a u32");
        AssertMessage(() => file.GetInteger("s"), "metadata key 's' is a string");
        AssertMessage(() => file.GetInteger("i", 0, 10), "is -4, outside the valid range 0..10");
        AssertMessage(() => file.GetArray<string>("f"), "is an array of f32, expected an array of string");
        AssertMessage(() => file.GetTensor("w"), "has no tensor 'w'");
    }

    internal static byte[] Write(GgufWriter writer)
    {
        using MemoryStream stream = new();
        writer.Write(stream);
        return stream.ToArray();
    }

    private static void AssertMessage(Action action, string expected)
    {
        ModelFormatException e = Assert.Throws<ModelFormatException>(action);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.StartsWith("mem.gguf: ", e.Message);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Generators.

    internal sealed record RawTensor(string Name, GgufTensorType Type, long[] Dims, byte[] Bytes);

    private static Gen<RawTensor> RawTensorGen() =>
        from type in Gen.Elements(GgufTensorType.F32, GgufTensorType.F16, GgufTensorType.BF16, GgufTensorType.Q8_0)
        from rank in Gen.Choose(1, 4)
        from inner in type == GgufTensorType.Q8_0 ? Gen.Choose(0, 3).Select(static b => b * 32) : Gen.Choose(0, 9)
        from outer in Gen.Choose(1, 3).ArrayOf(rank - 1)
        let dims = new[] { (long)inner }.Concat(outer.Select(static d => (long)d)).ToArray()
        let size = (int)(type == GgufTensorType.Q8_0 ? dims.Aggregate(1L, static (a, b) => a * b) / 32 * 34 : dims.Aggregate(1L, static (a, b) => a * b) * (type == GgufTensorType.F32 ? 4 : 2))
        from bytes in Gen.Choose(0, 255).Select(static b => (byte)b).ArrayOf(size)
        from name in NameGen()
        select new RawTensor(name, type, dims, bytes);

    private static Gen<List<(string Key, GgufValue Value)>> MetadataGen() =>
        from values in ValueGen(depth: 0).ListOf()
        from names in NameGen().ArrayOf(values.Count)
        select values.Select((v, i) => ($"k{i}.{names[i]}", v)).ToList();

    private static Gen<string> NameGen() =>
        Gen.OneOf(Gen.Choose(97, 122), Gen.Elements(46, 95, 0x2581, 0xE9, 0x4E2D))
            .Select(static c => (char)c).ArrayOf().Select(static cs => new string(cs));

    private static Gen<string> TextGen() =>
        Gen.OneOf(Gen.Choose(32, 126), Gen.Choose(0xA0, 0xD7FF), Gen.Elements(0, 10, 0x2581))
            .ArrayOf().Select(static cs => string.Concat(cs.Select(static c => (char)c)))
            .SelectMany(static s => Gen.Elements(s, s + "\U0001F999"));

    private static Gen<GgufValue> ValueGen(int depth)
    {
        Gen<int> small = Gen.Choose(0, 4);
        List<Gen<GgufValue>> scalars =
        [
            Gen.Choose(0, 255).Select(static v => GgufValue.UInt8((byte)v)),
            Gen.Choose(-128, 127).Select(static v => GgufValue.Int8((sbyte)v)),
            Gen.Choose(0, 65535).Select(static v => GgufValue.UInt16((ushort)v)),
            Gen.Choose(-32768, 32767).Select(static v => GgufValue.Int16((short)v)),
            Gen.Choose(int.MinValue, int.MaxValue).Select(static v => GgufValue.UInt32((uint)v)),
            Gen.Choose(int.MinValue, int.MaxValue).Select(static v => GgufValue.Int32(v)),
            Gen.Choose(int.MinValue, int.MaxValue).Select(static v => GgufValue.Float32(v / 7919f)),
            Gen.Elements(true, false).Select(static v => GgufValue.Bool(v)),
            TextGen().Select(static v => GgufValue.String(v)),
            Gen.Two(Gen.Choose(int.MinValue, int.MaxValue)).Select(static p => GgufValue.UInt64(((ulong)(uint)p.Item1 << 32) | (uint)p.Item2)),
            Gen.Two(Gen.Choose(int.MinValue, int.MaxValue)).Select(static p => GgufValue.Int64(((long)p.Item1 << 32) | (uint)p.Item2)),
            Gen.Choose(int.MinValue, int.MaxValue).Select(static v => GgufValue.Float64(v / 104729.0)),
        ];
        List<Gen<GgufValue>> arrays =
        [
            Gen.Choose(0, 255).Select(static v => (byte)v).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.UInt8, a)),
            Gen.Choose(-128, 127).Select(static v => (sbyte)v).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.Int8, a)),
            Gen.Choose(0, 65535).Select(static v => (ushort)v).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.UInt16, a)),
            Gen.Choose(-32768, 32767).Select(static v => (short)v).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.Int16, a)),
            Gen.Choose(0, int.MaxValue).Select(static v => (uint)v).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.UInt32, a)),
            Gen.Choose(int.MinValue, int.MaxValue).ArrayOf().Select(static a => GgufValue.Array(a)),
            Gen.Choose(-100000, 100000).Select(static v => v / 64f).ArrayOf().Select(static a => GgufValue.Array(a)),
            Gen.Elements(true, false).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.Bool, a)),
            TextGen().ArrayOf().Select(static a => GgufValue.Array(a)),
            Gen.Choose(0, int.MaxValue).Select(static v => (ulong)v << 20).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.UInt64, a)),
            Gen.Choose(int.MinValue, int.MaxValue).Select(static v => (long)v << 20).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.Int64, a)),
            Gen.Choose(int.MinValue, int.MaxValue).Select(static v => v / 3.0).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.Float64, a)),
        ];
        if (depth < 2)
        {
            // Arrays of arrays: each item an array value (of any element type, possibly nested again).
            arrays.Add(ValueGen(depth + 1).Where(static v => v.Type == GgufValueType.Array).ArrayOf().Select(static a => GgufValue.Array(GgufValueType.Array, a)));
        }

        return Gen.Frequency((3, Gen.OneOf(scalars)), (2, Gen.OneOf(arrays)));
    }

    // Structural, bitwise equality of two values (floats by their bits).
    internal static bool Same(GgufValue a, GgufValue b)
    {
        if (a.Type != b.Type || a.ElementType != b.ElementType)
        {
            return false;
        }

        return (a.Value, b.Value) switch
        {
            (GgufValue[] x, GgufValue[] y) => x.Length == y.Length && x.Zip(y).All(static p => Same(p.First, p.Second)),
            (string[] x, string[] y) => x.SequenceEqual(y),
            (bool[] x, bool[] y) => x.SequenceEqual(y),
            (Array x, Array y) => x.GetType() == y.GetType() && Bytes(x).SequenceEqual(Bytes(y)),
            (float x, float y) => BitConverter.SingleToInt32Bits(x) == BitConverter.SingleToInt32Bits(y),
            (double x, double y) => BitConverter.DoubleToInt64Bits(x) == BitConverter.DoubleToInt64Bits(y),
            _ => Equals(a.Value, b.Value),
        };
    }

    private static byte[] Bytes(Array array)
    {
        int size = Buffer.ByteLength(array);
        byte[] bytes = new byte[size];
        Buffer.BlockCopy(array, 0, bytes, 0, size);
        return bytes;
    }
}
