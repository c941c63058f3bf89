namespace Kiln.Kernels;

// The vocabulary of kernel definitions. A model author marks a static partial class with [Kernels] and writes
// each op as a static method whose body is one scalar C# expression; the Kiln generator turns each into a
// vectorized multi-threaded CPU loop, an ILGPU kernel, and a public op over tensors that checks shapes and
// dispatches on the tensor's device. The generated op has the definition's name and takes, in order: the tensor
// inputs (declaration order), the scalars (declaration order), then the output tensor.

/// <summary>Marks a static partial class whose methods are kernel definitions; the generator adds the ops to it.</summary>
[AttributeUsage(AttributeTargets.Class, Inherited = false)]
public sealed class KernelsAttribute : Attribute
{
}

/// <summary>
/// A pointwise op: <c>out[i] = f(a[i], b[i], ..., scalars)</c>. Every unmarked <see cref="float"/> parameter is an
/// element of an input tensor. Inputs whose shape is a suffix of the output's shape are broadcast along the
/// leading dimensions (a [D] weight against a [T, D] activation). The output has the shape of the first input.
/// </summary>
[AttributeUsage(AttributeTargets.Method, Inherited = false)]
public sealed class PointwiseAttribute : Attribute
{
}

/// <summary>
/// A row op over the last axis: reductions of a row (parameters marked <see cref="ReduceAttribute"/>) followed by a
/// pointwise map that may use them. Unmarked float parameters are inputs; the first one is the row input of shape
/// [..., N]; others are [..., N] too or broadcast [N]. A parameter marked <see cref="RowLengthAttribute"/> receives N.
/// </summary>
[AttributeUsage(AttributeTargets.Method, Inherited = false)]
public sealed class RowAttribute : Attribute
{
}

/// <summary>
/// A matrix-product epilogue: <c>out[m, n] = f(acc, extra[m, n] or extra[n], ..., scalars)</c> where acc is
/// (A · Wᵀ)[m, n]. The first float parameter is the product; the generated op takes (A [M, K], W [N, K], extra
/// tensors..., scalars..., output [M, N]).
/// </summary>
[AttributeUsage(AttributeTargets.Method, Inherited = false)]
public sealed class EpilogueAttribute : Attribute
{
}

/// <summary>
/// A rotary op over pairs of the last axis: the method returns the new pair <c>(y0, y1)</c> from the pair
/// <c>(x0, x1)</c> (its first two parameters) and per-pair table values (the other float parameters), as RoPE
/// does. The generated op takes (x [T, ..., Dh], tables [S, Dh / 2]..., scalars..., int startPosition,
/// <see cref="RopeLayout"/> layout, output); token t reads table row startPosition + t.
/// </summary>
[AttributeUsage(AttributeTargets.Method, Inherited = false)]
public sealed class RotaryAttribute : Attribute
{
}

/// <summary>Marks a parameter as one uniform value passed to the op, not a tensor element.</summary>
[AttributeUsage(AttributeTargets.Parameter, Inherited = false)]
public sealed class ScalarAttribute : Attribute
{
}

/// <summary>Marks an <see cref="int"/> parameter of a row op that receives the row length N.</summary>
[AttributeUsage(AttributeTargets.Parameter, Inherited = false)]
public sealed class RowLengthAttribute : Attribute
{
}

/// <summary>Marks a parameter of a row op that receives a reduction of the row input named <see cref="Source"/>.</summary>
[AttributeUsage(AttributeTargets.Parameter, Inherited = false)]
public sealed class ReduceAttribute : Attribute
{
    /// <summary>Creates the marker.</summary>
    public ReduceAttribute(Reduction kind, string source)
    {
        Kind = kind;
        Source = source;
    }

    /// <summary>What is computed.</summary>
    public Reduction Kind { get; }

    /// <summary>The name of the input parameter that is reduced.</summary>
    public string Source { get; }
}

/// <summary>Reductions over a row.</summary>
public enum Reduction
{
    /// <summary>Σ x.</summary>
    Sum,

    /// <summary>Σ x².</summary>
    SumOfSquares,

    /// <summary>max x.</summary>
    Max,

    /// <summary>Σ exp(x - max x), computed with the max in one online pass (the softmax denominator).</summary>
    SumExp,
}

/// <summary>How a rotary op pairs the elements of a head.</summary>
public enum RopeLayout
{
    /// <summary>Pairs (2i, 2i + 1), as llama2.c, Meta and GGUF "normal" checkpoints use.</summary>
    Adjacent,

    /// <summary>Pairs (i, i + Dh / 2), as Hugging Face and NeoX checkpoints use.</summary>
    HalfSplit,
}
