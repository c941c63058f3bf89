using Kiln.Generators.Helpers;

namespace Kiln.Generators.Models;

// The expression of a kernel definition, translated from C# syntax into a small tree that the emitters print in
// three forms: scalar C# (CPU tails, host-side uniforms), Vector512/Vector256 C# (CPU blocks) and ILGPU kernel C#.
// Every node is a record, so trees compare by value and the incremental pipeline can cache them.

/// <summary>A node of a definition's expression.</summary>
internal abstract record Expr;

/// <summary>A float constant, as C# text: <c>0.5f</c>, <c>-1f</c>, <c>float.MaxValue</c>.</summary>
internal sealed record LiteralExpr(string Text) : Expr;

/// <summary>A parameter of the definition, by name.</summary>
internal sealed record ParameterExpr(string Name) : Expr;

/// <summary>A uniform subexpression hoisted out of the loops, by its index in the definition's uniform list.</summary>
internal sealed record UniformExpr(int Index) : Expr;

/// <summary>Unary minus.</summary>
internal sealed record NegateExpr(Expr Operand) : Expr;

/// <summary>A binary operator: arithmetic on floats, a comparison, or a logical combination of comparisons.</summary>
internal sealed record BinaryExpr(BinaryOperator Operator, Expr Left, Expr Right) : Expr;

/// <summary>A call of a supported <c>MathF</c> function, by its method name.</summary>
internal sealed record CallExpr(string Function, EquatableArray<Expr> Arguments) : Expr;

/// <summary><c>condition ? whenTrue : whenFalse</c>, where the condition is a comparison.</summary>
internal sealed record ConditionalExpr(Expr Condition, Expr WhenTrue, Expr WhenFalse) : Expr;

/// <summary>The binary operators a definition may use.</summary>
internal enum BinaryOperator
{
    /// <summary><c>+</c></summary>
    Add,

    /// <summary><c>-</c></summary>
    Subtract,

    /// <summary><c>*</c></summary>
    Multiply,

    /// <summary><c>/</c></summary>
    Divide,

    /// <summary><c>&gt;</c></summary>
    GreaterThan,

    /// <summary><c>&gt;=</c></summary>
    GreaterThanOrEqual,

    /// <summary><c>&lt;</c></summary>
    LessThan,

    /// <summary><c>&lt;=</c></summary>
    LessThanOrEqual,

    /// <summary><c>==</c></summary>
    Equal,

    /// <summary><c>!=</c></summary>
    NotEqual,

    /// <summary><c>&amp;&amp;</c></summary>
    And,

    /// <summary><c>||</c></summary>
    Or,
}
