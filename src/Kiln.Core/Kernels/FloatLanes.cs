// The float vector operations of one hardware width behind static abstract members, so that a kernel written once runs
// as Vector512 code on AVX-512 machines and as Vector256 code on AVX2-only ones. The kernels keep their values in the
// vector type itself (TVector), and each member inlines to its one instruction.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Kiln.Kernels;

/// <summary>Operations on <typeparamref name="TVector"/>, a vector of <see cref="Count"/> floats (default: all zeros).</summary>
internal unsafe interface IFloatLanes<TVector>
    where TVector : unmanaged
{
    /// <summary>Floats per vector.</summary>
    static abstract int Count { get; }

    /// <summary>Loads <see cref="Count"/> floats from <paramref name="source"/> (no alignment needed).</summary>
    static abstract TVector Load(float* source);

    /// <summary>Every lane <paramref name="value"/>.</summary>
    static abstract TVector Splat(float value);

    /// <summary>a · b + addend, fused.</summary>
    static abstract TVector MultiplyAdd(TVector a, TVector b, TVector addend);

    /// <summary>Every lane times <paramref name="factor"/>.</summary>
    static abstract TVector Multiply(TVector value, float factor);

    /// <summary>The sum of the lanes.</summary>
    static abstract float Sum(TVector value);

    /// <summary>Stores the lanes at <paramref name="destination"/>.</summary>
    static abstract void Store(TVector value, float* destination);
}

/// <summary>Sixteen floats in a <see cref="Vector512{T}"/>.</summary>
internal readonly unsafe struct Lanes512 : IFloatLanes<Vector512<float>>
{
    public static int Count => Vector512<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(float* source) => Vector512.Load(source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Splat(float value) => Vector512.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> addend) =>
        Vector512.FusedMultiplyAdd(a, b, addend);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Multiply(Vector512<float> value, float factor) => value * factor;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector512<float> value) => Vector512.Sum(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector512<float> value, float* destination) => value.Store(destination);
}

/// <summary>Eight floats in a <see cref="Vector256{T}"/>.</summary>
internal readonly unsafe struct Lanes256 : IFloatLanes<Vector256<float>>
{
    public static int Count => Vector256<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load(float* source) => Vector256.Load(source);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Splat(float value) => Vector256.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> addend) =>
        Vector256.FusedMultiplyAdd(a, b, addend);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Multiply(Vector256<float> value, float factor) => value * factor;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector256<float> value) => Vector256.Sum(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector256<float> value, float* destination) => value.Store(destination);
}
