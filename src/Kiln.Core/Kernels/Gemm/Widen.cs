// Widening of 16-bit weights to float32 for the CPU kernels: float16 (IEEE binary16) and bfloat16 (the upper half
// of a float32). bfloat16 widens by a 16-bit shift. .NET exposes no vcvtph2ps intrinsic, so float16 widens with
// integer arithmetic: shift the exponent and mantissa into float32 position, multiply by 2^112 to rebias the
// exponent (this also turns half subnormals into float normals), force the exponent to all ones for Inf/NaN,
// and put the sign back. All paths are exact.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Kiln.Kernels.Gemm;

/// <summary>
/// How the kernels read one weight format: 16, 8 or 1 consecutive elements widened to float32. The kernels are
/// generic over it, so the JIT compiles one copy per format with no per-element branch.
/// </summary>
internal unsafe interface IWeightFormat
{
    /// <summary>Bytes per element.</summary>
    static abstract int Size { get; }

    /// <summary>Loads and widens 16 elements.</summary>
    static abstract Vector512<float> Load16(byte* source);

    /// <summary>Loads and widens 8 elements.</summary>
    static abstract Vector256<float> Load8(byte* source);

    /// <summary>Loads and widens one element.</summary>
    static abstract float Load1(byte* source);
}

/// <summary>float32 weights, read as they are.</summary>
internal readonly unsafe struct Float32Weights : IWeightFormat
{
    public static int Size => 4;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* source) => Vector512.Load((float*)source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* source) => Vector256.Load((float*)source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* source) => *(float*)source;
}

/// <summary>bfloat16 weights: zero-extend to 32 bits and shift into the upper half.</summary>
internal readonly unsafe struct BFloat16Weights : IWeightFormat
{
    public static int Size => 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* source) =>
        Vector512.ShiftLeft(Vector512.WidenLower(Vector256.Load((ushort*)source).ToVector512Unsafe()), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* source) =>
        Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load((ushort*)source).ToVector256Unsafe()), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* source) => DTypes.BFloat16ToSingle(*(ushort*)source);
}

/// <summary>float16 weights: zero-extend to 32 bits and rebias (see <see cref="Widen"/>).</summary>
internal readonly unsafe struct Float16Weights : IWeightFormat
{
    public static int Size => 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* source) =>
        Widen.HalfBitsSigned(Vector512.WidenLower(Vector256.Load((short*)source).ToVector512Unsafe()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* source) =>
        Widen.HalfBits(Vector256.WidenLower(Vector128.Load((ushort*)source).ToVector256Unsafe()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* source) => (float)BitConverter.UInt16BitsToHalf(*(ushort*)source);
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
