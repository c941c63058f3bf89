// One GGUF metadata value: its type code and the .NET value that holds it. Scalars are boxed primitives (byte,
// sbyte, ushort, short, uint, int, float, bool, string, ulong, long, double). An array keeps its element type and a
// typed .NET array (byte[] for u8, float[] for f32, string[] for strings, ..., and GgufValue[] of array values for
// nested arrays), so a 150,000-token vocabulary is one string[] and its scores one float[], not boxed items.

using System.Globalization;

namespace Kiln.Models.Formats;

/// <summary>A GGUF metadata value (scalar, string or array, arrays possibly nested). Immutable.</summary>
public sealed class GgufValue
{
    private GgufValue(GgufValueType type, GgufValueType elementType, object value)
    {
        Type = type;
        ElementType = elementType;
        Value = value;
    }

    /// <summary>The value's type code.</summary>
    public GgufValueType Type { get; }

    /// <summary>For an array, the type of its elements; for a scalar, the same as <see cref="Type"/>.</summary>
    public GgufValueType ElementType { get; }

    /// <summary>
    /// The value: a boxed primitive or string for a scalar; for an array, a typed array (byte[], sbyte[], ushort[],
    /// short[], uint[], int[], float[], bool[], string[], ulong[], long[], double[], or GgufValue[] for nested arrays).
    /// </summary>
    public object Value { get; }

    /// <summary>The number of elements of an array; 1 for a scalar.</summary>
    public int Count => Value is Array array && Type == GgufValueType.Array ? array.Length : 1;

#pragma warning disable CS1591 // Factories named after the type they make.
    public static GgufValue UInt8(byte value) => new(GgufValueType.UInt8, GgufValueType.UInt8, value);

    public static GgufValue Int8(sbyte value) => new(GgufValueType.Int8, GgufValueType.Int8, value);

    public static GgufValue UInt16(ushort value) => new(GgufValueType.UInt16, GgufValueType.UInt16, value);

    public static GgufValue Int16(short value) => new(GgufValueType.Int16, GgufValueType.Int16, value);

    public static GgufValue UInt32(uint value) => new(GgufValueType.UInt32, GgufValueType.UInt32, value);

    public static GgufValue Int32(int value) => new(GgufValueType.Int32, GgufValueType.Int32, value);

    public static GgufValue Float32(float value) => new(GgufValueType.Float32, GgufValueType.Float32, value);

    public static GgufValue Bool(bool value) => new(GgufValueType.Bool, GgufValueType.Bool, value);

    public static GgufValue UInt64(ulong value) => new(GgufValueType.UInt64, GgufValueType.UInt64, value);

    public static GgufValue Int64(long value) => new(GgufValueType.Int64, GgufValueType.Int64, value);

    public static GgufValue Float64(double value) => new(GgufValueType.Float64, GgufValueType.Float64, value);
#pragma warning restore CS1591

    /// <summary>A string value.</summary>
    public static GgufValue String(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        return new(GgufValueType.String, GgufValueType.String, value);
    }

    /// <summary>
    /// An array of <paramref name="elementType"/>: <paramref name="items"/> must be the typed array that type maps to
    /// (see <see cref="Value"/>); for nested arrays, a GgufValue[] whose items are all arrays.
    /// </summary>
    /// <exception cref="ArgumentException">The .NET array type does not match the element type.</exception>
    public static GgufValue Array(GgufValueType elementType, Array items)
    {
        ArgumentNullException.ThrowIfNull(items);
        if (!GgufTypes.IsDefined(elementType))
        {
            throw new ArgumentException($"Element type {(uint)elementType} is not a GGUF value type; use one of u8..f64.", nameof(elementType));
        }

        Type expected = ArrayType(elementType);
        if (items.GetType() != expected)
        {
            throw new ArgumentException($"A GGUF {elementType.Name()} array is held in a {expected.Name}, not a {items.GetType().Name}.", nameof(items));
        }

        if (items is string[] strings && strings.Any(static s => s is null))
        {
            throw new ArgumentException("A GGUF string array cannot hold null strings.", nameof(items));
        }

        if (items is GgufValue[] nested && nested.Any(static v => v is null || v.Type != GgufValueType.Array))
        {
            throw new ArgumentException("A GGUF array of arrays must hold array values only.", nameof(items));
        }

        return new(GgufValueType.Array, elementType, items);
    }

    /// <summary>A string array.</summary>
    public static GgufValue Array(string[] items) => Array(GgufValueType.String, items);

    /// <summary>An f32 array.</summary>
    public static GgufValue Array(float[] items) => Array(GgufValueType.Float32, items);

    /// <summary>An i32 array.</summary>
    public static GgufValue Array(int[] items) => Array(GgufValueType.Int32, items);

    /// <summary>The .NET array type that holds a GGUF array of <paramref name="elementType"/>.</summary>
    public static Type ArrayType(GgufValueType elementType) => elementType switch
    {
        GgufValueType.UInt8 => typeof(byte[]),
        GgufValueType.Int8 => typeof(sbyte[]),
        GgufValueType.UInt16 => typeof(ushort[]),
        GgufValueType.Int16 => typeof(short[]),
        GgufValueType.UInt32 => typeof(uint[]),
        GgufValueType.Int32 => typeof(int[]),
        GgufValueType.Float32 => typeof(float[]),
        GgufValueType.Bool => typeof(bool[]),
        GgufValueType.String => typeof(string[]),
        GgufValueType.Array => typeof(GgufValue[]),
        GgufValueType.UInt64 => typeof(ulong[]),
        GgufValueType.Int64 => typeof(long[]),
        GgufValueType.Float64 => typeof(double[]),
        _ => throw new ArgumentOutOfRangeException(nameof(elementType), elementType, "Not a GGUF value type."),
    };

    /// <summary>
    /// The value as an integer when it is one of the eight integer types and fits a long; false otherwise (a u64
    /// above long.MaxValue, a float, a string, an array).
    /// </summary>
    public bool TryGetInteger(out long value)
    {
        switch (Value)
        {
            case byte v: value = v; return true;
            case sbyte v: value = v; return true;
            case ushort v: value = v; return true;
            case short v: value = v; return true;
            case uint v: value = v; return true;
            case int v: value = v; return true;
            case long v: value = v; return true;
            case ulong v when v <= long.MaxValue: value = (long)v; return true;
            default: value = 0; return false;
        }
    }

    /// <summary>The type as written in messages: "u32", "string", "array of f32", "array of array".</summary>
    public string TypeName => Type == GgufValueType.Array ? $"array of {ElementType.Name()}" : Type.Name();

    /// <summary>A short description for listings: the scalar itself, or the element type and count of an array.</summary>
    public override string ToString()
    {
        if (Type == GgufValueType.Array)
        {
            return $"[{Count} × {ElementType.Name()}]";
        }

        return Value switch
        {
            string s => s.Length <= 80 ? $"\"{s.ReplaceLineEndings("\\n")}\"" : $"\"{s[..77].ReplaceLineEndings("\\n")}...\" ({s.Length} chars)",
            bool b => b ? "true" : "false",
            float f => f.ToString("R", CultureInfo.InvariantCulture),
            double d => d.ToString("R", CultureInfo.InvariantCulture),
            IFormattable number => number.ToString(null, CultureInfo.InvariantCulture),
            _ => Value.ToString() ?? string.Empty,
        };
    }
}
