namespace Kiln;

/// <summary>
/// The element type of a tensor. Compute is float32; the 16-bit types store weights and are widened in kernels;
/// int32 holds token ids (inputs of the embedding, outputs of device sampling) and is never computed on by float ops;
/// Q8_0 stores weights in ggml's blocks of 32 (a float16 scale and 32 int8) read by the CPU matrix product and the
/// embedding lookup.
/// </summary>
public enum DType
{
    /// <summary>IEEE 754 single precision.</summary>
    Float32,

    /// <summary>IEEE 754 half precision (storage only).</summary>
    Float16,

    /// <summary>bfloat16: the upper 16 bits of a float32 (storage only; widened by a 16-bit shift).</summary>
    BFloat16,

    /// <summary>32-bit signed integers: token ids. Float ops reject int32 tensors.</summary>
    Int32,

    /// <summary>
    /// ggml's Q8_0 (storage only, weights of the CPU matrix product and embedding lookup): each run of 32 consecutive
    /// elements is a 34-byte block, a float16 scale d then 32 int8 q, value = d·q (see <see cref="Q8_0Blocks"/>).
    /// The innermost dimension must be a multiple of 32, so that no block straddles two rows.
    /// </summary>
    Q8_0,
}

/// <summary>Facts about <see cref="DType"/> values.</summary>
public static class DTypes
{
    /// <summary>Bytes per element of a fixed-size dtype; Q8_0 has none (use <see cref="ByteCount"/>).</summary>
    /// <exception cref="InvalidOperationException">The dtype is Q8_0.</exception>
    public static int SizeOf(this DType dtype) => dtype switch
    {
        DType.Float32 => 4,
        DType.Float16 => 2,
        DType.BFloat16 => 2,
        DType.Int32 => 4,
        DType.Q8_0 => throw new InvalidOperationException(
            "q8_0 stores 34-byte blocks of 32 elements, not a fixed size per element; use DTypes.ByteCount."),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Unknown dtype."),
    };

    /// <summary>The bytes that <paramref name="elements"/> elements take (for Q8_0 a multiple of 32 elements).</summary>
    /// <exception cref="ArgumentException">Q8_0 and a count that is not a whole number of 32-element blocks.</exception>
    public static long ByteCount(this DType dtype, long elements)
    {
        if (dtype != DType.Q8_0)
        {
            return elements * dtype.SizeOf();
        }

        if (elements % Q8_0Blocks.BlockElements != 0)
        {
            throw new ArgumentException(
                $"q8_0 stores whole blocks of {Q8_0Blocks.BlockElements} elements; {elements} elements are not a whole "
                + "number of blocks, make the innermost dimension a multiple of 32.", nameof(elements));
        }

        return elements / Q8_0Blocks.BlockElements * Q8_0Blocks.BlockBytes;
    }

    /// <summary>The lower-case name used in configs and messages (float32, float16, bfloat16, int32, q8_0).</summary>
    public static string Name(this DType dtype) => dtype switch
    {
        DType.Float32 => "float32",
        DType.Float16 => "float16",
        DType.BFloat16 => "bfloat16",
        DType.Int32 => "int32",
        DType.Q8_0 => "q8_0",
        _ => dtype.ToString(),
    };

    /// <summary>Whether the dtype holds floating-point values (float32, float16 or bfloat16).</summary>
    public static bool IsFloatingPoint(this DType dtype) => dtype is DType.Float32 or DType.Float16 or DType.BFloat16;

    /// <summary>Widens a bfloat16 bit pattern to float32 (exact).</summary>
    public static float BFloat16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Narrows a float32 to bfloat16 with round-to-nearest-even; NaN stays NaN.</summary>
    public static ushort SingleToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            return (ushort)((bits >> 16) | 0x40);
        }

        uint roundingBias = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + roundingBias) >> 16);
    }
}
