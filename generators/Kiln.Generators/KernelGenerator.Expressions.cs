using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Threading;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Models;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace Kiln.Generators;

// Translation of a definition's body from C# syntax into the expression tree. Accepted: float arithmetic (+ - * /,
// unary minus), parentheses, float constants (literals, int literals used as floats, const fields such as
// MathF.PI), the definition's parameters, calls of the supported MathF functions, and c ? a : b whose condition
// compares floats (< <= > >= == !=, combined with && ||). Everything else is a diagnostic with a hint.

/// <content>Expression translation.</content>
public sealed partial class KernelGenerator
{
    /// <summary>The MathF functions a definition may call, with their arity.</summary>
    internal static readonly Dictionary<string, int> SupportedFunctions = new()
    {
        ["Abs"] = 1,
        ["Ceiling"] = 1,
        ["Cos"] = 1,
        ["Exp"] = 1,
        ["Floor"] = 1,
        ["FusedMultiplyAdd"] = 3,
        ["Log"] = 1,
        ["Max"] = 2,
        ["Min"] = 2,
        ["Round"] = 1,
        ["Sin"] = 1,
        ["Sqrt"] = 1,
        ["Tanh"] = 1,
        ["Truncate"] = 1,
    };

    private sealed class ExpressionTranslator
    {
        private readonly SemanticModel _semantics;
        private readonly IMethodSymbol _method;
        private readonly Dictionary<string, ParameterModel> _parameters;
        private readonly DiagnosticSink _sink;
        private readonly CancellationToken _token;

        public ExpressionTranslator(
            SemanticModel semantics,
            IMethodSymbol method,
            IEnumerable<ParameterModel> parameters,
            DiagnosticSink sink,
            CancellationToken token)
        {
            _semantics = semantics;
            _method = method;
            _parameters = parameters.ToDictionary(static p => p.Name);
            _sink = sink;
            _token = token;
        }

        private string Name => _method.Name;

        /// <summary>Translates the body; a rotary body is a tuple literal of two results.</summary>
        public IEnumerable<Expr> TranslateBody(ExpressionSyntax body, KernelKind kind)
        {
            if (kind != KernelKind.Rotary)
            {
                Expr? single = Translate(body);
                return single is null ? Enumerable.Empty<Expr>() : new[] { single };
            }

            // The rotary result is written as (y0, y1).
            ExpressionSyntax unwrapped = Unwrap(body);
            if (unwrapped is not TupleExpressionSyntax { Arguments.Count: 2 } tuple)
            {
                Unsupported(body, "a rotary result that is not a tuple literal", "return the new pair as (y0, y1)");
                return Enumerable.Empty<Expr>();
            }

            Expr? first = Translate(tuple.Arguments[0].Expression);
            Expr? second = Translate(tuple.Arguments[1].Expression);
            return first is null || second is null ? Enumerable.Empty<Expr>() : new[] { first, second };
        }

        private Expr? Translate(ExpressionSyntax node)
        {
            _token.ThrowIfCancellationRequested();
            switch (node)
            {
                case ParenthesizedExpressionSyntax parenthesized:
                    return Translate(parenthesized.Expression);
                case LiteralExpressionSyntax:
                case MemberAccessExpressionSyntax:
                    return TranslateConstant(node);
                case IdentifierNameSyntax identifier:
                    return TranslateIdentifier(identifier);
                case PrefixUnaryExpressionSyntax unary:
                    return TranslateUnary(unary);
                case BinaryExpressionSyntax binary:
                    return TranslateBinary(binary);
                case ConditionalExpressionSyntax conditional:
                    return TranslateConditional(conditional);
                case InvocationExpressionSyntax invocation:
                    return TranslateCall(invocation);
                case CastExpressionSyntax cast:
                    return TranslateCast(cast);
                default:
                    Unsupported(
                        node,
                        DescribeSyntax(node),
                        "write one float expression of parameters, constants, operators and MathF calls");
                    return null;
            }
        }

        private Expr? TranslateConstant(ExpressionSyntax node)
        {
            // Compile-time constants become float literals.
            Optional<object?> constant = _semantics.GetConstantValue(node, _token);
            if (!constant.HasValue)
            {
                Unsupported(
                    node,
                    $"the member access '{node}'",
                    "only constants (such as MathF.PI) and MathF function calls may appear");
                return null;
            }

            TypeInfo type = _semantics.GetTypeInfo(node, _token);
            if (!IsFloat(type.ConvertedType))
            {
                NonFloat(node, type.ConvertedType ?? type.Type);
                return null;
            }

            return new LiteralExpr(FormatConstant(node, constant.Value));
        }

        private Expr? TranslateIdentifier(IdentifierNameSyntax identifier)
        {
            ISymbol? symbol = _semantics.GetSymbolInfo(identifier, _token).Symbol;

            // A parameter of this definition.
            bool ownParameter = symbol is IParameterSymbol { ContainingSymbol: ISymbol owner }
                && SymbolEqualityComparer.Default.Equals(owner, _method);
            if (ownParameter && symbol is IParameterSymbol parameter)
            {
                if (!_parameters.ContainsKey(parameter.Name))
                {
                    // Its declaration was already reported.
                    return null;
                }

                TypeInfo type = _semantics.GetTypeInfo(identifier, _token);
                if (!IsFloat(type.ConvertedType))
                {
                    NonFloat(identifier, type.ConvertedType ?? type.Type);
                    return null;
                }

                return new ParameterExpr(parameter.Name);
            }

            // A constant (a const field or local).
            if (symbol is IFieldSymbol { IsConst: true } or ILocalSymbol { IsConst: true })
            {
                return TranslateConstant(identifier);
            }

            Unsupported(
                identifier,
                $"'{identifier.Identifier.ValueText}'",
                "only the definition's parameters, constants and MathF functions may appear");
            return null;
        }

        private Expr? TranslateUnary(PrefixUnaryExpressionSyntax unary)
        {
            switch (unary.Kind())
            {
                case SyntaxKind.UnaryPlusExpression:
                    return Translate(unary.Operand);
                case SyntaxKind.UnaryMinusExpression:
                    // A negated constant stays one literal.
                    if (_semantics.GetConstantValue(unary, _token).HasValue)
                    {
                        return TranslateConstant(unary);
                    }

                    Expr? operand = Translate(unary.Operand);
                    return operand is null ? null : new NegateExpr(operand);
                default:
                    Unsupported(
                        unary,
                        $"the operator '{unary.OperatorToken.Text}'",
                        "use float arithmetic, comparisons and c ? a : b");
                    return null;
            }
        }

        private Expr? TranslateBinary(BinaryExpressionSyntax binary)
        {
            BinaryOperator? op = binary.Kind() switch
            {
                SyntaxKind.AddExpression => BinaryOperator.Add,
                SyntaxKind.SubtractExpression => BinaryOperator.Subtract,
                SyntaxKind.MultiplyExpression => BinaryOperator.Multiply,
                SyntaxKind.DivideExpression => BinaryOperator.Divide,
                SyntaxKind.GreaterThanExpression => BinaryOperator.GreaterThan,
                SyntaxKind.GreaterThanOrEqualExpression => BinaryOperator.GreaterThanOrEqual,
                SyntaxKind.LessThanExpression => BinaryOperator.LessThan,
                SyntaxKind.LessThanOrEqualExpression => BinaryOperator.LessThanOrEqual,
                SyntaxKind.EqualsExpression => BinaryOperator.Equal,
                SyntaxKind.NotEqualsExpression => BinaryOperator.NotEqual,
                SyntaxKind.LogicalAndExpression => BinaryOperator.And,
                SyntaxKind.LogicalOrExpression => BinaryOperator.Or,
                _ => null,
            };
            if (op is null)
            {
                Unsupported(
                    binary,
                    $"the operator '{binary.OperatorToken.Text}'",
                    "use + - * / on floats, comparisons, && and ||");
                return null;
            }

            // Arithmetic is on floats; comparisons compare floats; && and || combine comparisons.
            if (op <= BinaryOperator.Divide)
            {
                ITypeSymbol? type = _semantics.GetTypeInfo(binary, _token).Type;
                if (!IsFloat(type))
                {
                    NonFloat(binary, type);
                    return null;
                }
            }
            else if (op <= BinaryOperator.NotEqual)
            {
                foreach (ExpressionSyntax side in new[] { binary.Left, binary.Right })
                {
                    ITypeSymbol? type = _semantics.GetTypeInfo(side, _token).ConvertedType;
                    if (!IsFloat(type))
                    {
                        NonFloat(binary, type);
                        return null;
                    }
                }
            }

            Expr? left = op >= BinaryOperator.And ? TranslateCondition(binary.Left) : Translate(binary.Left);
            Expr? right = op >= BinaryOperator.And ? TranslateCondition(binary.Right) : Translate(binary.Right);
            return left is null || right is null ? null : new BinaryExpr(op.Value, left, right);
        }

        private Expr? TranslateCondition(ExpressionSyntax node)
        {
            // Conditions are comparisons, possibly combined with && and ||.
            Expr? condition = Translate(node);
            if (condition is not null and not BinaryExpr { Operator: > BinaryOperator.Divide })
            {
                Unsupported(
                    node,
                    "a condition that is not a comparison",
                    "compare floats with < <= > >= == != (combined with && ||)");
                return null;
            }

            return condition;
        }

        private Expr? TranslateConditional(ConditionalExpressionSyntax conditional)
        {
            Expr? condition = TranslateCondition(conditional.Condition);
            Expr? whenTrue = Translate(conditional.WhenTrue);
            Expr? whenFalse = Translate(conditional.WhenFalse);
            return condition is null || whenTrue is null || whenFalse is null
                ? null
                : new ConditionalExpr(condition, whenTrue, whenFalse);
        }

        private Expr? TranslateCall(InvocationExpressionSyntax invocation)
        {
            // Only MathF functions with a vector and a GPU form, in their float overloads.
            IMethodSymbol? target = _semantics.GetSymbolInfo(invocation, _token).Symbol as IMethodSymbol;
            string display = target is null
                ? invocation.Expression.ToString()
                : $"{target.ContainingType.Name}.{target.Name}";
            bool supported = target is not null
                && target.ContainingType.ToDisplayString() == "System.MathF"
                && SupportedFunctions.TryGetValue(target.Name, out int arity)
                && target.Parameters.Length == arity
                && target.Parameters.All(static p => p.Type.SpecialType == SpecialType.System_Single);
            if (!supported)
            {
                _sink.Report(DiagnosticDescriptors.UnsupportedCall, invocation.GetLocation(), Name, display);
                return null;
            }

            List<Expr> arguments = new();
            foreach (ArgumentSyntax argument in invocation.ArgumentList.Arguments)
            {
                if (argument.NameColon is not null || argument.RefKindKeyword.IsKind(SyntaxKind.None) == false)
                {
                    Unsupported(argument, "a named or ref argument", "pass arguments by position");
                    return null;
                }

                Expr? translated = Translate(argument.Expression);
                if (translated is null)
                {
                    return null;
                }

                arguments.Add(translated);
            }

            return new CallExpr(target!.Name, arguments.ToEquatableArray());
        }

        private Expr? TranslateCast(CastExpressionSyntax cast)
        {
            // (float) of a constant or of the int row length; other casts have no place in float code.
            ITypeSymbol? target = _semantics.GetTypeInfo(cast.Type, _token).Type;
            if (IsFloat(target))
            {
                if (_semantics.GetConstantValue(cast, _token).HasValue)
                {
                    return TranslateConstant(cast);
                }

                ExpressionSyntax operand = Unwrap(cast.Expression);
                if (operand is IdentifierNameSyntax identifier
                    && _semantics.GetSymbolInfo(identifier, _token).Symbol is IParameterSymbol parameter
                    && _parameters.TryGetValue(parameter.Name, out ParameterModel? model)
                    && (model.Role == ParameterRole.RowLength || IsFloat(parameter.Type)))
                {
                    return new ParameterExpr(parameter.Name);
                }
            }

            // A float cast of double or int arithmetic: the arithmetic is the problem.
            ExpressionSyntax inner = Unwrap(cast.Expression);
            ITypeSymbol? innerType = _semantics.GetTypeInfo(inner, _token).Type;
            bool doubleOrInt = innerType?.SpecialType is SpecialType.System_Double or SpecialType.System_Int32;
            if (IsFloat(target) && innerType is not null && doubleOrInt)
            {
                NonFloat(inner, innerType);
                return null;
            }

            Unsupported(
                cast,
                $"the cast '{cast}'",
                "kernels compute in float; remove the cast or cast a constant or the [RowLength] parameter to float");
            return null;
        }

        private static ExpressionSyntax Unwrap(ExpressionSyntax node)
        {
            while (node is ParenthesizedExpressionSyntax parenthesized)
            {
                node = parenthesized.Expression;
            }

            return node;
        }

        private static bool IsFloat(ITypeSymbol? type) => type?.SpecialType == SpecialType.System_Single;

        private void Unsupported(SyntaxNode node, string what, string hint) =>
            _sink.Report(DiagnosticDescriptors.UnsupportedSyntax, node.GetLocation(), Name, what, hint);

        private void NonFloat(ExpressionSyntax node, ITypeSymbol? type) =>
            _sink.Report(
                DiagnosticDescriptors.NonFloatArithmetic,
                node.GetLocation(),
                Name,
                node.ToString(),
                type?.ToDisplayString() ?? "an unknown type");

        private static string FormatConstant(ExpressionSyntax node, object? value)
        {
            // Float literals and MathF/float constants keep their spelling; other constants print their value.
            ExpressionSyntax unwrapped = Unwrap(node);
            if (unwrapped is LiteralExpressionSyntax literal && literal.Token.Value is float)
            {
                return literal.Token.Text;
            }

            if (unwrapped is MemberAccessExpressionSyntax { Expression: ExpressionSyntax owner } member
                && owner.ToString() is "MathF" or "float" or "Single")
            {
                return member.ToString();
            }

            float number = System.Convert.ToSingle(value, CultureInfo.InvariantCulture);
            if (float.IsNaN(number))
            {
                return "float.NaN";
            }

            if (float.IsInfinity(number))
            {
                return number > 0 ? "float.PositiveInfinity" : "float.NegativeInfinity";
            }

            return number.ToString("R", CultureInfo.InvariantCulture).Replace("E", "e") + "f";
        }

        private static string DescribeSyntax(SyntaxNode node) => node switch
        {
            AssignmentExpressionSyntax => "an assignment",
            BaseObjectCreationExpressionSyntax => "'new'",
            LambdaExpressionSyntax or AnonymousMethodExpressionSyntax => "a lambda",
            ElementAccessExpressionSyntax => "an indexer",
            PostfixUnaryExpressionSyntax or PrefixUnaryExpressionSyntax => "an increment or decrement",
            SwitchExpressionSyntax => "a switch expression",
            IsPatternExpressionSyntax => "a pattern match",
            ThrowExpressionSyntax => "a throw expression",
            InterpolatedStringExpressionSyntax => "a string",
            TupleExpressionSyntax => "a tuple",
            CheckedExpressionSyntax => "checked/unchecked",
            DefaultExpressionSyntax => "default",
            _ => $"'{node}'",
        };
    }
}
