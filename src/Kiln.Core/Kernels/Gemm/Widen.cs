// Widening of stored weights to float32 for the CPU kernels: float16 (IEEE binary16), bfloat16 (the upper half of a
// float32) and Q8_0 (ggml's blocks of 32 int8 with a float16 scale, widened to scale · int8). bfloat16 widens by a
// 16-bit shift. .NET exposes no vcvtph2ps intrinsic, so float16 widens with integer arithmetic: shift the exponent and mantissa into float32 position, multiply by 2^112 to rebias the
// exponent (this also turns half subnormals into float normals), force the exponent to all ones for Inf/NaN,
// and put the sign back. All paths are exact.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kiln.Kernels.Gemm;

/// <summary>
/// How the kernels read one weight format: 16, 8 or 1 consecutive elements of a row, widened to float32. Elements
/// are addressed by the row's first byte and an element index, since Q8_0 rows are not arrays of equal-sized
/// elements. Load16 takes an index that is a multiple of 16 and Load8 one that is a multiple of 8 (the kernels step
/// k that way), so a Q8_0 load never crosses a block. The kernels are generic over the format, so the JIT compiles
/// one copy per format with no per-element branch.
/// </summary>
internal unsafe interface IWeightFormat
{
    /// <summary>Bytes of a row of <paramref name="k"/> elements.</summary>
    static abstract long RowBytes(int k);

    /// <summary>Loads and widens elements [i, i + 16) of a row (i a multiple of 16).</summary>
    static abstract Vector512<float> Load16(byte* row, nint i);

    /// <summary>Loads and widens elements [i, i + 8) of a row (i a multiple of 8).</summary>
    static abstract Vector256<float> Load8(byte* row, nint i);

    /// <summary>Loads and widens element i of a row.</summary>
    static abstract float Load1(byte* row, nint i);
}

/// <summary>float32 weights, read as they are.</summary>
internal readonly unsafe struct Float32Weights : IWeightFormat
{
    public static long RowBytes(int k) => (long)k * 4;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* row, nint i) => Vector512.Load((float*)row + i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, nint i) => Vector256.Load((float*)row + i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, nint i) => ((float*)row)[i];
}

/// <summary>bfloat16 weights: zero-extend to 32 bits and shift into the upper half.</summary>
internal readonly unsafe struct BFloat16Weights : IWeightFormat
{
    public static long RowBytes(int k) => (long)k * 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* row, nint i) =>
        Vector512.ShiftLeft(Vector512.WidenLower(Vector256.Load((ushort*)row + i).ToVector512Unsafe()), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, nint i) =>
        Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load((ushort*)row + i).ToVector256Unsafe()), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, nint i) => DTypes.BFloat16ToSingle(((ushort*)row)[i]);
}

/// <summary>float16 weights: zero-extend to 32 bits and rebias (see <see cref="Widen"/>).</summary>
internal readonly unsafe struct Float16Weights : IWeightFormat
{
    public static long RowBytes(int k) => (long)k * 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* row, nint i) =>
        Widen.HalfBitsSigned(Vector512.WidenLower(Vector256.Load((short*)row + i).ToVector512Unsafe()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, nint i) =>
        Widen.HalfBits(Vector256.WidenLower(Vector128.Load((ushort*)row + i).ToVector256Unsafe()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, nint i) => (float)BitConverter.UInt16BitsToHalf(((ushort*)row)[i]);
}

/// <summary>
/// Q8_0 weights: element i lives in block i / 32 (34 bytes: float16 scale d, then 32 int8 q) at position i % 32, and
/// widens to d·q. The int8 values are sign-extended to int32 (vpmovsxbd with AVX-512F or AVX2, else the portable
/// widening), converted to float32 and multiplied by the widened scale. The product of an 11-bit scale mantissa and a
/// 7-bit integer fits a float32 mantissa, so every widened value is exact.
/// </summary>
internal readonly unsafe struct Q8_0Weights : IWeightFormat
{
    public static long RowBytes(int k) => (long)k / Q8_0Blocks.BlockElements * Q8_0Blocks.BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* row, nint i)
    {
        if (!Avx512F.IsSupported)
        {
            return Vector512.Create(Load8(row, i), Load8(row, i + 8));
        }

        byte* block = row + ((i >> 5) * Q8_0Blocks.BlockBytes);
        Vector512<int> wide = Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)(block + 2 + (i & 31))));
        return Avx512F.ConvertToVector512Single(wide) * Scale(block);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, nint i)
    {
        byte* block = row + ((i >> 5) * Q8_0Blocks.BlockBytes);
        sbyte* q = (sbyte*)(block + 2 + (i & 31));
        Vector256<int> wide = Avx2.IsSupported
            ? Avx2.ConvertToVector256Int32(q)
            : Vector256.Create(q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]);
        return Vector256.ConvertToSingle(wide) * Scale(block);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, nint i)
    {
        byte* block = row + ((i >> 5) * Q8_0Blocks.BlockBytes);
        return Scale(block) * ((sbyte*)(block + 2))[i & 31];
    }

    /// <summary>
    /// The block's float16 scale as float32, exactly: the rebias of <see cref="Widen"/> on one value (subnormal scales
    /// become float normals through the multiply); Inf and NaN scales, which no quantizer writes, take the library
    /// conversion.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Scale(byte* block)
    {
        uint bits = *(ushort*)block;
        if ((bits & 0x7C00u) == 0x7C00u)
        {
            return (float)BitConverter.UInt16BitsToHalf((ushort)bits);
        }

        float magnitude = BitConverter.UInt32BitsToSingle((bits & 0x7FFFu) << 13) * 5.192296858534828e33f;
        return BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(magnitude) | ((bits & 0x8000u) << 16));
    }
}

/// <summary>The float16 widening arithmetic shared by the vector loads.</summary>
internal static class Widen
{
    // 2^112: the difference between the float32 and float16 exponent biases (127 - 15).
    private const float HalfRebias = 5.192296858534828e33f;

    /// <summary>Widens 16 float16 bit patterns (zero-extended to 32 bits) to float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> HalfBits(Vector512<uint> bits)
    {
        // Split sign and magnitude; the magnitude's exponent and mantissa move up by 13 bits.
        Vector512<uint> sign = Vector512.ShiftLeft(bits & Vector512.Create(0x8000u), 16);
        Vector512<uint> magnitude = bits & Vector512.Create(0x7FFFu);
        Vector512<float> value = Vector512.ShiftLeft(magnitude, 13).AsSingle() * Vector512.Create(HalfRebias);

        // Inf and NaN (exponent 31) keep their mantissa under an all-ones float32 exponent.
        Vector512<uint> special = Vector512.GreaterThanOrEqual(magnitude, Vector512.Create(0x7C00u))
            & Vector512.Create(0x7F800000u);
        return (value.AsUInt32() | special | sign).AsSingle();
    }

    /// <summary>
    /// Widens 16 float16 bit patterns, sign-extended to 32 bits, to float32 in fewer operations than
    /// <see cref="HalfBits(Vector512{uint})"/>: the sign extension already puts the sign in bit 31, and Inf/NaN are
    /// recognised after the rebias (they land in [2^16, 2^17)).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> HalfBitsSigned(Vector512<int> bits)
    {
        // Exponent and mantissa move up by 13 bits; the sign copies shifted into bits 28-31 are cleared.
        Vector512<float> value = (Vector512.ShiftLeft(bits, 13) & Vector512.Create(0x0FFFE000)).AsSingle()
            * Vector512.Create(HalfRebias);

        // Inf and NaN keep their mantissa under an all-ones exponent; then the sign goes back in bit 31.
        Vector512<int> special = Vector512.GreaterThanOrEqual(value, Vector512.Create(65536f)).AsInt32()
            & Vector512.Create(0x7F800000);
        return (value.AsInt32() | special | (bits & Vector512.Create(int.MinValue))).AsSingle();
    }

    /// <summary>Widens 8 float16 bit patterns (zero-extended to 32 bits) to float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> HalfBits(Vector256<uint> bits)
    {
        // Same steps as the Vector512 version.
        Vector256<uint> sign = Vector256.ShiftLeft(bits & Vector256.Create(0x8000u), 16);
        Vector256<uint> magnitude = bits & Vector256.Create(0x7FFFu);
        Vector256<float> value = Vector256.ShiftLeft(magnitude, 13).AsSingle() * Vector256.Create(HalfRebias);
        Vector256<uint> special = Vector256.GreaterThanOrEqual(magnitude, Vector256.Create(0x7C00u))
            & Vector256.Create(0x7F800000u);
        return (value.AsUInt32() | special | sign).AsSingle();
    }
}
