using System;
using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Models;

namespace Kiln.Generators.Helpers;

// Prints an expression tree as C# in one of four forms:
//   Scalar     MathF calls, parameters by name; CPU scalar tails and host-side uniforms.
//   Gpu        like Scalar, but MathF.FusedMultiplyAdd(a, b, c) becomes a * b + c (ILGPU leaves FMA unresolved in
//              PTX; ptxas contracts the multiply-add itself).
//   Vector512  Vector512<float> operators and Vector512.X functions; constants become Vector512.Create(c),
//   Vector256  uniform values their broadcast locals (nameVec), comparisons masks, c ? a : b ConditionalSelect.
// Parentheses follow C# precedence: a right operand of equal precedence is always parenthesised, because float
// arithmetic is not associative and the printed order must be the definition's order.

/// <summary>The form an expression is printed in.</summary>
internal enum PrintMode
{
    /// <summary>Scalar C# for the CPU.</summary>
    Scalar,

    /// <summary>Scalar C# for an ILGPU kernel.</summary>
    Gpu,

    /// <summary>Vector512&lt;float&gt; C#.</summary>
    Vector512,

    /// <summary>Vector256&lt;float&gt; C#.</summary>
    Vector256,
}

/// <summary>Prints expression trees.</summary>
internal sealed class ExpressionPrinter
{
    private const int Conditional = 1;
    private const int Or = 2;
    private const int And = 3;
    private const int Equality = 4;
    private const int Relational = 5;
    private const int Additive = 6;
    private const int Multiplicative = 7;
    private const int Unary = 8;

    /// <summary>The precedence of a primary expression (a name, a call): never parenthesised.</summary>
    public const int Primary = 9;

    private readonly PrintMode _mode;
    private readonly HashSet<string> _uniformNames;

    /// <summary>
    /// Creates a printer for <paramref name="mode"/>; <paramref name="uniformNames"/> are the parameters that are one
    /// value per op or row.
    /// </summary>
    public ExpressionPrinter(PrintMode mode, IEnumerable<string> uniformNames)
    {
        _mode = mode;
        _uniformNames = new HashSet<string>(uniformNames);
    }

    /// <summary>A printer for <paramref name="mode"/> knowing the uniform parameters of <paramref name="definition"/>.</summary>
    public static ExpressionPrinter For(PrintMode mode, DefinitionModel definition) =>
        new(mode, definition.Parameters
            .Where(static p => p.Role is ParameterRole.Scalar or ParameterRole.Reduction or ParameterRole.RowLength)
            .Select(static p => p.Name));

    private bool IsVector => _mode is PrintMode.Vector512 or PrintMode.Vector256;

    private string VectorType => _mode == PrintMode.Vector512 ? "Vector512" : "Vector256";

    /// <summary>Prints <paramref name="expr"/>, in parentheses if its precedence is below <paramref name="context"/>.</summary>
    public string Print(Expr expr, int context = 0)
    {
        (string text, int precedence) = Render(expr);
        return precedence < context ? "(" + text + ")" : text;
    }

    private (string Text, int Precedence) Render(Expr expr)
    {
        switch (expr)
        {
            case LiteralExpr literal:
                return IsVector
                    ? ($"{VectorType}.Create({literal.Text})", Primary)
                    : (literal.Text, literal.Text.StartsWith("-", StringComparison.Ordinal) ? Unary : Primary);
            case ParameterExpr parameter:
                return (
                    IsVector && _uniformNames.Contains(parameter.Name) ? Names.Vec(parameter.Name) : parameter.Name,
                    Primary);
            case UniformExpr uniform:
                return (IsVector ? Names.Vec(Names.Uniform(uniform.Index)) : Names.Uniform(uniform.Index), Primary);
            case NegateExpr negate:
                string operand = Print(negate.Operand, Unary);
                return ("-" + (operand.StartsWith("-", StringComparison.Ordinal) ? "(" + operand + ")" : operand), Unary);
            case BinaryExpr binary:
                return RenderBinary(binary);
            case CallExpr call:
                return RenderCall(call);
            case ConditionalExpr conditional:
                if (IsVector)
                {
                    string mask = Print(conditional.Condition);
                    return ($"{VectorType}.ConditionalSelect({mask}, {Print(conditional.WhenTrue)}, {Print(conditional.WhenFalse)})", Primary);
                }

                string condition = Print(conditional.Condition, Or);
                return ($"{condition} ? {Print(conditional.WhenTrue, Or)} : {Print(conditional.WhenFalse, Or)}", Conditional);
            default:
                throw new InvalidOperationException("Unknown expression node " + expr.GetType().Name);
        }
    }

    private (string Text, int Precedence) RenderBinary(BinaryExpr binary)
    {
        // Vector comparisons are mask-producing calls; the masks combine with & and |.
        if (IsVector && binary.Operator is >= BinaryOperator.GreaterThan and <= BinaryOperator.NotEqual)
        {
            string function = binary.Operator switch
            {
                BinaryOperator.GreaterThan => "GreaterThan",
                BinaryOperator.GreaterThanOrEqual => "GreaterThanOrEqual",
                BinaryOperator.LessThan => "LessThan",
                BinaryOperator.LessThanOrEqual => "LessThanOrEqual",
                _ => "Equals",
            };
            string call = $"{VectorType}.{function}({Print(binary.Left)}, {Print(binary.Right)})";
            return binary.Operator == BinaryOperator.NotEqual ? ("~" + call, Unary) : (call, Primary);
        }

        (string symbol, int precedence) = binary.Operator switch
        {
            BinaryOperator.Add => ("+", Additive),
            BinaryOperator.Subtract => ("-", Additive),
            BinaryOperator.Multiply => ("*", Multiplicative),
            BinaryOperator.Divide => ("/", Multiplicative),
            BinaryOperator.GreaterThan => (">", Relational),
            BinaryOperator.GreaterThanOrEqual => (">=", Relational),
            BinaryOperator.LessThan => ("<", Relational),
            BinaryOperator.LessThanOrEqual => ("<=", Relational),
            BinaryOperator.Equal => ("==", Equality),
            BinaryOperator.NotEqual => ("!=", Equality),
            BinaryOperator.And => (IsVector ? "&" : "&&", And),
            _ => (IsVector ? "|" : "||", Or),
        };
        return ($"{Print(binary.Left, precedence)} {symbol} {Print(binary.Right, precedence + 1)}", precedence);
    }

    private (string Text, int Precedence) RenderCall(CallExpr call)
    {
        // ILGPU: no FMA intrinsic, so a multiply and an add.
        if (_mode == PrintMode.Gpu && call.Function == "FusedMultiplyAdd")
        {
            Expr product = new BinaryExpr(BinaryOperator.Multiply, call.Arguments[0], call.Arguments[1]);
            return Render(new BinaryExpr(BinaryOperator.Add, product, call.Arguments[2]));
        }

        string arguments = string.Join(", ", call.Arguments.Select(argument => Print(argument)));
        string owner = !IsVector ? "MathF" : call.Function is "Tanh" or "Exp" ? "VectorMath" : VectorType;
        return ($"{owner}.{call.Function}({arguments})", Primary);
    }
}
