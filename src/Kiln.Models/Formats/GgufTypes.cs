// The two kinds of type code in a GGUF file (ggml-org/ggml docs/gguf.md):
//   - metadata value types (u32 after each key): u8 0, i8 1, u16 2, i16 3, u32 4, i32 5, f32 6, bool 7, string 8,
//     array 9 (u32 element type, u64 count, the elements; arrays nest), u64 10, i64 11, f64 12;
//   - ggml tensor types (u32 in each tensor entry). A tensor type stores its innermost dimension (dims[0]) in
//     blocks: `BlockElements` values packed into `BlockBytes` bytes (1 and the element size for the plain types,
//     32 and 34 for Q8_0: an f16 scale then 32 int8). The byte size of a tensor is therefore
//     dims[0] / BlockElements × BlockBytes × dims[1] × dims[2] × dims[3], and dims[0] must be a multiple of the block.
// Every type ggml has defined is listed with its block layout, so that a file holding types Kiln cannot compute with
// still opens (kiln info lists it) and its byte ranges are still checked; ids ggml retired or never used are unknown
// and rejected by name. Kiln reads the data of F32, F16, BF16 (as tensors) and Q8_0 (as raw blocks).

namespace Kiln.Models.Formats;

/// <summary>The type code of a GGUF metadata value.</summary>
public enum GgufValueType : uint
{
    /// <summary>Unsigned 8-bit integer.</summary>
    UInt8 = 0,

    /// <summary>Signed 8-bit integer.</summary>
    Int8 = 1,

    /// <summary>Unsigned 16-bit integer.</summary>
    UInt16 = 2,

    /// <summary>Signed 16-bit integer.</summary>
    Int16 = 3,

    /// <summary>Unsigned 32-bit integer.</summary>
    UInt32 = 4,

    /// <summary>Signed 32-bit integer.</summary>
    Int32 = 5,

    /// <summary>IEEE 754 single precision.</summary>
    Float32 = 6,

    /// <summary>A byte that is 0 (false) or 1 (true).</summary>
    Bool = 7,

    /// <summary>A u64 byte length, then that many bytes of UTF-8 (no terminator).</summary>
    String = 8,

    /// <summary>A u32 element type, a u64 count, then the elements (which may themselves be arrays).</summary>
    Array = 9,

    /// <summary>Unsigned 64-bit integer.</summary>
    UInt64 = 10,

    /// <summary>Signed 64-bit integer.</summary>
    Int64 = 11,

    /// <summary>IEEE 754 double precision.</summary>
    Float64 = 12,
}

/// <summary>The ggml type of a tensor in a GGUF file (the codes of ggml's <c>ggml_type</c>).</summary>
public enum GgufTensorType : uint
{
#pragma warning disable CS1591 // The names are ggml's own; GgufTensorTypes.Layout describes each.
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
#pragma warning restore CS1591
}

/// <summary>Facts about <see cref="GgufValueType"/> and <see cref="GgufTensorType"/> codes.</summary>
public static class GgufTypes
{
    /// <summary>Q8_0: values per block (the scale covers 32 consecutive values of the innermost dimension).</summary>
    public const int Q8_0BlockElements = 32;

    /// <summary>Q8_0: bytes per block (a float16 scale, then 32 signed bytes).</summary>
    public const int Q8_0BlockBytes = 2 + Q8_0BlockElements;

    /// <summary>
    /// The block layout of <paramref name="type"/>: values per block and bytes per block; false for a code ggml does
    /// not define.
    /// </summary>
    public static bool TryGetLayout(GgufTensorType type, out int blockElements, out int blockBytes)
    {
        (blockElements, blockBytes) = type switch
        {
            GgufTensorType.F32 => (1, 4),
            GgufTensorType.F16 => (1, 2),
            GgufTensorType.BF16 => (1, 2),
            GgufTensorType.F64 => (1, 8),
            GgufTensorType.I8 => (1, 1),
            GgufTensorType.I16 => (1, 2),
            GgufTensorType.I32 => (1, 4),
            GgufTensorType.I64 => (1, 8),
            GgufTensorType.Q4_0 => (32, 18),
            GgufTensorType.Q4_1 => (32, 20),
            GgufTensorType.Q5_0 => (32, 22),
            GgufTensorType.Q5_1 => (32, 24),
            GgufTensorType.Q8_0 => (Q8_0BlockElements, Q8_0BlockBytes),
            GgufTensorType.Q8_1 => (32, 36),
            GgufTensorType.IQ4_NL => (32, 18),
            GgufTensorType.MXFP4 => (32, 17),
            GgufTensorType.Q2_K => (256, 84),
            GgufTensorType.Q3_K => (256, 110),
            GgufTensorType.Q4_K => (256, 144),
            GgufTensorType.Q5_K => (256, 176),
            GgufTensorType.Q6_K => (256, 210),
            GgufTensorType.Q8_K => (256, 292),
            GgufTensorType.IQ2_XXS => (256, 66),
            GgufTensorType.IQ2_XS => (256, 74),
            GgufTensorType.IQ2_S => (256, 82),
            GgufTensorType.IQ3_XXS => (256, 98),
            GgufTensorType.IQ3_S => (256, 110),
            GgufTensorType.IQ1_S => (256, 50),
            GgufTensorType.IQ1_M => (256, 56),
            GgufTensorType.IQ4_XS => (256, 136),
            GgufTensorType.TQ1_0 => (256, 54),
            GgufTensorType.TQ2_0 => (256, 66),
            _ => (0, 0),
        };
        return blockElements > 0;
    }

    /// <summary>The name of a tensor type as ggml writes it (F32, Q8_0, ...), or "type N" for an unknown code.</summary>
    public static string Name(this GgufTensorType type) =>
        TryGetLayout(type, out _, out _) ? type.ToString() : $"type {(uint)type}";

    /// <summary>The short name of a value type as used in messages (u32, string, array, ...).</summary>
    public static string Name(this GgufValueType type) => type switch
    {
        GgufValueType.UInt8 => "u8",
        GgufValueType.Int8 => "i8",
        GgufValueType.UInt16 => "u16",
        GgufValueType.Int16 => "i16",
        GgufValueType.UInt32 => "u32",
        GgufValueType.Int32 => "i32",
        GgufValueType.Float32 => "f32",
        GgufValueType.Bool => "bool",
        GgufValueType.String => "string",
        GgufValueType.Array => "array",
        GgufValueType.UInt64 => "u64",
        GgufValueType.Int64 => "i64",
        GgufValueType.Float64 => "f64",
        _ => $"type {(uint)type}",
    };

    /// <summary>Whether <paramref name="type"/> is a code GGUF defines (0..12).</summary>
    public static bool IsDefined(GgufValueType type) => (uint)type <= (uint)GgufValueType.Float64;

    /// <summary>
    /// The bytes one value of <paramref name="type"/> takes in the file: its size for the fixed-size types, the
    /// smallest possible (an empty string's 8-byte length, an empty array's 12-byte header) for the others.
    /// </summary>
    public static int MinimumBytes(GgufValueType type) => type switch
    {
        GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
        GgufValueType.UInt16 or GgufValueType.Int16 => 2,
        GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
        GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 => 8,
        GgufValueType.String => 8,
        GgufValueType.Array => 12,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "Not a GGUF value type."),
    };
}
