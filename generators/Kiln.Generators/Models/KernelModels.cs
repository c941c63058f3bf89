using Kiln.Generators.Helpers;

namespace Kiln.Generators.Models;

// The value-equatable models that flow through the incremental pipeline: plain strings, enums and equatable
// arrays, never symbols or syntax nodes, so that an unrelated edit yields an equal model and nothing is re-emitted.

/// <summary>The four kinds of kernel definition (see Kiln.Kernels.KernelAttributes).</summary>
internal enum KernelKind
{
    /// <summary>[Pointwise]: out[i] = f(inputs[i], scalars).</summary>
    Pointwise,

    /// <summary>[Row]: reductions over the last axis, then a pointwise map.</summary>
    Row,

    /// <summary>[Epilogue]: a function of each matrix-product output element.</summary>
    Epilogue,

    /// <summary>[Rotary]: a function of pairs of the last axis and per-position tables.</summary>
    Rotary,
}

/// <summary>What a definition parameter stands for.</summary>
internal enum ParameterRole
{
    /// <summary>An element of an input tensor (rotary: a table value; epilogue: an extra operand).</summary>
    Input,

    /// <summary>A [Scalar]: one value for the whole op.</summary>
    Scalar,

    /// <summary>A [Reduce]: a reduction of a row input.</summary>
    Reduction,

    /// <summary>A [RowLength] int: the row length N.</summary>
    RowLength,

    /// <summary>The matrix-product element of an epilogue (its first float parameter).</summary>
    Product,

    /// <summary>The first element of a rotary pair.</summary>
    PairFirst,

    /// <summary>The second element of a rotary pair.</summary>
    PairSecond,
}

/// <summary>Reductions over a row; the values match Kiln.Kernels.Reduction.</summary>
internal enum ReductionKind
{
    /// <summary>Σ x.</summary>
    Sum,

    /// <summary>Σ x².</summary>
    SumOfSquares,

    /// <summary>max x.</summary>
    Max,

    /// <summary>Σ exp(x - max x), online.</summary>
    SumExp,
}

/// <summary>One parameter of a definition.</summary>
/// <param name="Name">The parameter name, used for the generated op's parameter and for locals.</param>
/// <param name="Role">What the parameter stands for.</param>
/// <param name="Reduction">For <see cref="ParameterRole.Reduction"/>: what is computed.</param>
/// <param name="Source">For <see cref="ParameterRole.Reduction"/>: the name of the reduced input.</param>
internal sealed record ParameterModel(string Name, ParameterRole Role, ReductionKind Reduction, string Source);

/// <summary>One kernel definition, ready to emit.</summary>
/// <param name="Name">The definition (and op) name.</param>
/// <param name="Kind">The kind of op.</param>
/// <param name="Parameters">The parameters in declaration order.</param>
/// <param name="Results">The expression (two for rotary: the new pair), with uniform subexpressions replaced.</param>
/// <param name="Uniforms">The hoisted subexpressions that do not depend on any element, in order.</param>
/// <param name="DefinitionCref">A cref to the definition method, e.g. <c>Add(float, float)</c>.</param>
internal sealed record DefinitionModel(
    string Name,
    KernelKind Kind,
    EquatableArray<ParameterModel> Parameters,
    EquatableArray<Expr> Results,
    EquatableArray<Expr> Uniforms,
    string DefinitionCref);

/// <summary>A [Kernels] class and its valid definitions, sorted by name.</summary>
/// <param name="Namespace">The namespace, empty for the global namespace.</param>
/// <param name="Name">The class name.</param>
/// <param name="Definitions">The definitions that passed analysis.</param>
internal sealed record ClassModel(string Namespace, string Name, EquatableArray<DefinitionModel> Definitions);
