using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;
using System.Text;
using System.Threading;
using Kiln.Generators.Diagnostics;
using Kiln.Generators.Helpers;
using Kiln.Generators.Models;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace Kiln.Generators;

// Analysis: from a [Kernels] class symbol to a ClassModel. Checks the class, then each definition's attributes,
// parameters, return type and body, translates the body into the expression tree (Expressions partial), hoists the
// subexpressions that are the same for every element, and records every problem as a diagnostic. A definition
// with problems is left out of the model; the rest of the class is still generated.

/// <content>Analysis of kernel classes and definitions.</content>
public sealed partial class KernelGenerator
{
    private const string AttributeNamespace = "Kiln.Kernels.";

    private static AnalysisResult Analyze(GeneratorAttributeSyntaxContext context, CancellationToken token)
    {
        INamedTypeSymbol type = (INamedTypeSymbol)context.TargetSymbol;
        ClassDeclarationSyntax declaration = (ClassDeclarationSyntax)context.TargetNode;
        DiagnosticSink sink = new();
        Location classLocation = declaration.Identifier.GetLocation();

        // The class must be a top-level, non-generic static partial class.
        bool partial = declaration.Modifiers.Any(SyntaxKind.PartialKeyword);
        if (!type.IsStatic || !partial || type.IsGenericType || type.ContainingType is not null)
        {
            sink.Report(DiagnosticDescriptors.ClassShape, classLocation, type.Name);
            return new AnalysisResult(null, sink.ToArray());
        }

        // The CPU loops use pointers.
        if (context.SemanticModel.Compilation.Options is CSharpCompilationOptions { AllowUnsafe: false })
        {
            sink.Report(DiagnosticDescriptors.UnsafeDisabled, classLocation, type.Name);
            return new AnalysisResult(null, sink.ToArray());
        }

        // Analyse every definition, in name order so the output does not depend on file order.
        List<DefinitionModel> definitions = new();
        Dictionary<string, int> seen = new();
        IEnumerable<IMethodSymbol> methods = type.GetMembers().OfType<IMethodSymbol>()
            .Where(static method => KindAttributes(method).Any())
            .OrderBy(static method => method.Name, System.StringComparer.Ordinal)
            .ThenBy(static method => method.Locations.FirstOrDefault()?.SourceSpan.Start ?? 0);
        foreach (IMethodSymbol method in methods)
        {
            token.ThrowIfCancellationRequested();

            // Two definitions with one name would generate clashing ops.
            seen.TryGetValue(method.Name, out int count);
            seen[method.Name] = count + 1;
            if (count > 0)
            {
                sink.Report(
                    DiagnosticDescriptors.DuplicateName,
                    method.Locations.FirstOrDefault() ?? classLocation,
                    method.Name,
                    type.Name);
                definitions.RemoveAll(definition => definition.Name == method.Name);
                continue;
            }

            DefinitionModel? definition = AnalyzeDefinition(method, context.SemanticModel.Compilation, sink, token);
            if (definition is not null)
            {
                definitions.Add(definition);
            }
        }

        string ns = type.ContainingNamespace.IsGlobalNamespace ? string.Empty : type.ContainingNamespace.ToDisplayString();
        ClassModel model = new(ns, type.Name, definitions.ToEquatableArray());
        return new AnalysisResult(model, sink.ToArray());
    }

    private static IEnumerable<(AttributeData Attribute, KernelKind Kind)> KindAttributes(IMethodSymbol method)
    {
        foreach (AttributeData attribute in method.GetAttributes())
        {
            switch (attribute.AttributeClass?.ToDisplayString())
            {
                case AttributeNamespace + "PointwiseAttribute":
                    yield return (attribute, KernelKind.Pointwise);
                    break;
                case AttributeNamespace + "RowAttribute":
                    yield return (attribute, KernelKind.Row);
                    break;
                case AttributeNamespace + "EpilogueAttribute":
                    yield return (attribute, KernelKind.Epilogue);
                    break;
                case AttributeNamespace + "RotaryAttribute":
                    yield return (attribute, KernelKind.Rotary);
                    break;
            }
        }
    }

    private static DefinitionModel? AnalyzeDefinition(
        IMethodSymbol method,
        Compilation compilation,
        DiagnosticSink sink,
        CancellationToken token)
    {
        int before = sink.Count;
        string name = method.Name;
        MethodDeclarationSyntax? syntax = method.DeclaringSyntaxReferences
            .Select(reference => reference.GetSyntax(token))
            .OfType<MethodDeclarationSyntax>()
            .OrderByDescending(candidate => candidate.Body is not null || candidate.ExpressionBody is not null)
            .FirstOrDefault();
        Location location = syntax?.Identifier.GetLocation() ?? method.Locations.FirstOrDefault() ?? Location.None;

        // One kind per definition.
        (AttributeData Attribute, KernelKind Kind)[] kinds = KindAttributes(method).ToArray();
        KernelKind kind = kinds[0].Kind;
        if (kinds.Length > 1)
        {
            sink.Report(
                DiagnosticDescriptors.AttributeMisuse,
                location,
                name,
                "More than one kind attribute",
                "mark a definition with exactly one of [Pointwise], [Row], [Epilogue], [Rotary]");
            return null;
        }

        // The definition is a static, non-generic method.
        if (!method.IsStatic || method.IsGenericMethod)
        {
            sink.Report(DiagnosticDescriptors.DefinitionShape, location, name);
        }

        // Parameters: roles, types and attributes. Later checks would only repeat a parameter's problem.
        List<ParameterModel> parameters = AnalyzeParameters(method, kind, sink, token);
        if (sink.Count != before)
        {
            return null;
        }

        // Reductions, inputs, names, and the return type (float, or (float, float) for a rotary pair).
        CheckReductionSources(method, parameters, sink);
        CheckInputs(method, kind, parameters, location, sink);
        CheckNames(method, kind, parameters, sink);
        CheckReturnType(method, kind, syntax, location, sink);
        if (sink.Count != before)
        {
            return null;
        }

        // The body: one expression, translated into the expression tree.
        ExpressionSyntax? body = syntax is null ? null : SingleExpression(syntax, name, location, sink);
        List<Expr> results = new();
        if (body is not null && syntax is not null)
        {
            SemanticModel semantics = compilation.GetSemanticModel(syntax.SyntaxTree);
            ExpressionTranslator translator = new(semantics, method, parameters, sink, token);
            results.AddRange(translator.TranslateBody(body, kind));
        }
        else if (syntax is null)
        {
            sink.Report(DiagnosticDescriptors.SingleExpression, location, name);
        }

        if (sink.Count != before || results.Count == 0)
        {
            return null;
        }

        // Hoist the subexpressions that are the same for every element.
        UniformHoister hoister = new(parameters);
        EquatableArray<Expr> hoisted = results.Select(hoister.Hoist).ToEquatableArray();
        return new DefinitionModel(
            name,
            kind,
            parameters.ToEquatableArray(),
            hoisted,
            hoister.Uniforms.ToEquatableArray(),
            Cref(method));
    }

    private static List<ParameterModel> AnalyzeParameters(
        IMethodSymbol method,
        KernelKind kind,
        DiagnosticSink sink,
        CancellationToken token)
    {
        List<ParameterModel> parameters = new();
        int elementCount = 0;
        foreach (IParameterSymbol parameter in method.Parameters)
        {
            Location location = parameter.Locations.FirstOrDefault() ?? Location.None;
            bool isFloat = parameter.Type.SpecialType == SpecialType.System_Single;
            bool isInt = parameter.Type.SpecialType == SpecialType.System_Int32;
            AttributeData? scalar = null;
            AttributeData? rowLength = null;
            AttributeData? reduce = null;
            foreach (AttributeData attribute in parameter.GetAttributes())
            {
                switch (attribute.AttributeClass?.ToDisplayString())
                {
                    case AttributeNamespace + "ScalarAttribute":
                        scalar = attribute;
                        break;
                    case AttributeNamespace + "RowLengthAttribute":
                        rowLength = attribute;
                        break;
                    case AttributeNamespace + "ReduceAttribute":
                        reduce = attribute;
                        break;
                }
            }

            // Parameters are plain values.
            if (parameter.RefKind != RefKind.None || parameter.IsParams)
            {
                sink.Report(
                    DiagnosticDescriptors.ParameterType,
                    location,
                    method.Name,
                    parameter.Name,
                    parameter.ToDisplayString());
                continue;
            }

            // At most one role attribute.
            if ((scalar is not null ? 1 : 0) + (rowLength is not null ? 1 : 0) + (reduce is not null ? 1 : 0) > 1)
            {
                sink.Report(
                    DiagnosticDescriptors.AttributeMisuse,
                    location,
                    method.Name,
                    $"Parameter '{parameter.Name}'s attributes",
                    "a parameter takes at most one of [Scalar], [RowLength], [Reduce]");
                continue;
            }

            ParameterRole role;
            ReductionKind reduction = ReductionKind.Sum;
            string source = string.Empty;
            if (rowLength is not null)
            {
                // [RowLength] int, row ops only.
                role = ParameterRole.RowLength;
                if (kind != KernelKind.Row)
                {
                    sink.Report(
                        DiagnosticDescriptors.AttributeMisuse,
                        location,
                        method.Name,
                        "[RowLength]",
                        "it applies to [Row] definitions only");
                }
                else if (!isInt)
                {
                    sink.Report(
                        DiagnosticDescriptors.ParameterType,
                        location,
                        method.Name,
                        parameter.Name,
                        parameter.Type.ToDisplayString());
                }
            }
            else if (reduce is not null)
            {
                // [Reduce(kind, source)] float, row ops only.
                role = ParameterRole.Reduction;
                ImmutableArray<TypedConstant> arguments = reduce.ConstructorArguments;
                if (arguments.Length == 2 && arguments[0].Value is int value && value is >= 0 and <= 3)
                {
                    reduction = (ReductionKind)value;
                    source = arguments[1].Value as string ?? string.Empty;
                }

                if (kind != KernelKind.Row)
                {
                    sink.Report(
                        DiagnosticDescriptors.AttributeMisuse,
                        location,
                        method.Name,
                        "[Reduce]",
                        "it applies to [Row] definitions only");
                }
                else if (!isFloat)
                {
                    sink.Report(
                        DiagnosticDescriptors.ParameterType,
                        location,
                        method.Name,
                        parameter.Name,
                        parameter.Type.ToDisplayString());
                }
            }
            else
            {
                // Floats: scalars or elements (the first elements of epilogues and rotary ops are special).
                if (!isFloat)
                {
                    sink.Report(
                        DiagnosticDescriptors.ParameterType,
                        location,
                        method.Name,
                        parameter.Name,
                        parameter.Type.ToDisplayString());
                    continue;
                }

                if (scalar is not null)
                {
                    role = ParameterRole.Scalar;
                }
                else
                {
                    role = (kind, elementCount) switch
                    {
                        (KernelKind.Epilogue, 0) => ParameterRole.Product,
                        (KernelKind.Rotary, 0) => ParameterRole.PairFirst,
                        (KernelKind.Rotary, 1) => ParameterRole.PairSecond,
                        _ => ParameterRole.Input,
                    };
                    elementCount++;
                }
            }

            token.ThrowIfCancellationRequested();
            parameters.Add(new ParameterModel(parameter.Name, role, reduction, source));
        }

        return parameters;
    }

    private static void CheckReductionSources(IMethodSymbol method, List<ParameterModel> parameters, DiagnosticSink sink)
    {
        // A reduction names an input parameter of the same definition, and is not asked for twice.
        string inputs = string.Join(
            ", ",
            parameters.Where(static p => p.Role == ParameterRole.Input).Select(static p => p.Name));
        HashSet<(ReductionKind, string)> seen = new();
        foreach (ParameterModel parameter in parameters.Where(static p => p.Role == ParameterRole.Reduction))
        {
            Location location = ParameterLocation(method, parameter.Name);
            bool found = parameters.Any(p => p.Role == ParameterRole.Input && p.Name == parameter.Source);
            if (!found)
            {
                sink.Report(
                    DiagnosticDescriptors.ReduceSource,
                    location,
                    method.Name,
                    parameter.Name,
                    parameter.Source,
                    inputs.Length == 0 ? "(no inputs)" : inputs);
            }
            else if (!seen.Add((parameter.Reduction, parameter.Source)))
            {
                sink.Report(
                    DiagnosticDescriptors.AttributeMisuse,
                    location,
                    method.Name,
                    $"[Reduce({parameter.Reduction}, \"{parameter.Source}\")] on '{parameter.Name}'",
                    "the same reduction is already a parameter; use that parameter");
            }
        }
    }

    private static void CheckInputs(
        IMethodSymbol method,
        KernelKind kind,
        List<ParameterModel> parameters,
        Location location,
        DiagnosticSink sink)
    {
        // Every kind reads at least one tensor.
        string? problem = kind switch
        {
            KernelKind.Pointwise or KernelKind.Row when !parameters.Any(static p => p.Role == ParameterRole.Input) =>
                "add a float parameter without [Scalar] for the tensor it reads",
            KernelKind.Epilogue when !parameters.Any(static p => p.Role == ParameterRole.Product) =>
                "its first float parameter (without [Scalar]) receives the matrix product; add one",
            KernelKind.Rotary when !parameters.Any(static p => p.Role == ParameterRole.PairSecond) =>
                "its first two float parameters (without [Scalar]) receive the pair (x0, x1); add them",
            _ => null,
        };
        if (problem is not null)
        {
            sink.Report(DiagnosticDescriptors.NoInput, location, method.Name, problem);
        }
    }

    private static void CheckNames(
        IMethodSymbol method,
        KernelKind kind,
        List<ParameterModel> parameters,
        DiagnosticSink sink)
    {
        // Parameter names become locals and fields of the generated code; none may collide.
        string[] all = parameters.Select(static p => p.Name).ToArray();
        foreach (ParameterModel parameter in parameters)
        {
            string? clash = Names.Clash(parameter.Name, kind, all);
            if (clash is not null)
            {
                Location location = ParameterLocation(method, parameter.Name);
                sink.Report(DiagnosticDescriptors.ReservedName, location, method.Name, parameter.Name, clash);
            }
        }
    }

    private static void CheckReturnType(
        IMethodSymbol method,
        KernelKind kind,
        MethodDeclarationSyntax? syntax,
        Location location,
        DiagnosticSink sink)
    {
        Location where = syntax?.ReturnType.GetLocation() ?? location;
        if (kind == KernelKind.Rotary)
        {
            bool pair = method.ReturnType is INamedTypeSymbol { IsTupleType: true } tuple
                && tuple.TupleElements.Length == 2
                && tuple.TupleElements.All(static element => element.Type.SpecialType == SpecialType.System_Single);
            if (!pair)
            {
                sink.Report(
                    DiagnosticDescriptors.ReturnType,
                    where,
                    method.Name,
                    method.ReturnType.ToDisplayString(),
                    "[Rotary]",
                    "the new pair as (float, float)");
            }
        }
        else if (method.ReturnType.SpecialType != SpecialType.System_Single)
        {
            string kindName = "[" + kind + "]";
            sink.Report(
                DiagnosticDescriptors.ReturnType,
                where,
                method.Name,
                method.ReturnType.ToDisplayString(),
                kindName,
                "float");
        }
    }

    private static ExpressionSyntax? SingleExpression(
        MethodDeclarationSyntax syntax,
        string name,
        Location location,
        DiagnosticSink sink)
    {
        // Expression-bodied: => expression.
        if (syntax.ExpressionBody is not null)
        {
            return syntax.ExpressionBody.Expression;
        }

        // A block must be exactly { return expression; }; loops and other statements are reported where they are.
        if (syntax.Body is BlockSyntax block)
        {
            bool reported = false;
            foreach (StatementSyntax loop in block.DescendantNodes().OfType<StatementSyntax>().Where(IsLoop))
            {
                sink.Report(DiagnosticDescriptors.Statement, loop.GetFirstToken().GetLocation(), name, "loop");
                reported = true;
            }

            if (reported)
            {
                return null;
            }

            if (block.Statements.Count == 1 && block.Statements[0] is ReturnStatementSyntax { Expression: not null } single)
            {
                return single.Expression;
            }

            StatementSyntax? other = block.Statements.FirstOrDefault(static s => s is not ReturnStatementSyntax);
            if (other is not null)
            {
                sink.Report(DiagnosticDescriptors.Statement, other.GetLocation(), name, Describe(other));
                return null;
            }
        }

        sink.Report(DiagnosticDescriptors.SingleExpression, location, name);
        return null;
    }

    private static bool IsLoop(StatementSyntax statement) =>
        statement is ForStatementSyntax or ForEachStatementSyntax or ForEachVariableStatementSyntax
            or WhileStatementSyntax or DoStatementSyntax;

    private static string Describe(StatementSyntax statement) => statement switch
    {
        LocalDeclarationStatementSyntax => "local variable declaration",
        LocalFunctionStatementSyntax => "local function",
        IfStatementSyntax => "if statement",
        ExpressionStatementSyntax => "expression statement",
        SwitchStatementSyntax => "switch statement",
        TryStatementSyntax => "try statement",
        ThrowStatementSyntax => "throw statement",
        _ => "statement",
    };

    private static Location ParameterLocation(IMethodSymbol method, string name) =>
        method.Parameters.First(p => p.Name == name).Locations.FirstOrDefault() ?? Location.None;

    private static string Cref(IMethodSymbol method)
    {
        // A cref to the definition method: Name(float, float, int).
        StringBuilder text = new();
        text.Append(method.Name).Append('(');
        for (int i = 0; i < method.Parameters.Length; i++)
        {
            text.Append(i == 0 ? string.Empty : ", ").Append(method.Parameters[i].Type.ToDisplayString());
        }

        return text.Append(')').ToString();
    }

    /// <summary>
    /// Replaces every maximal float subexpression that depends on no element (only scalars, reductions, the row
    /// length and constants) and does some work by a <see cref="UniformExpr"/>, collecting the replaced trees so
    /// that the emitters compute them once per op (or per row) instead of once per element.
    /// </summary>
    private sealed class UniformHoister
    {
        private readonly HashSet<string> _uniformNames;

        public UniformHoister(IEnumerable<ParameterModel> parameters)
        {
            _uniformNames = new HashSet<string>(parameters
                .Where(static p => p.Role is ParameterRole.Scalar or ParameterRole.Reduction or ParameterRole.RowLength)
                .Select(static p => p.Name));
        }

        public List<Expr> Uniforms { get; } = new();

        public Expr Hoist(Expr expr)
        {
            // A uniform float computation becomes one hoisted value (equal trees share one).
            if (IsFloatComputation(expr) && IsUniform(expr))
            {
                int index = Uniforms.IndexOf(expr);
                if (index < 0)
                {
                    index = Uniforms.Count;
                    Uniforms.Add(expr);
                }

                return new UniformExpr(index);
            }

            return expr switch
            {
                NegateExpr negate => new NegateExpr(Hoist(negate.Operand)),
                BinaryExpr binary => binary with { Left = Hoist(binary.Left), Right = Hoist(binary.Right) },
                CallExpr call => call with { Arguments = call.Arguments.Select(Hoist).ToEquatableArray() },
                ConditionalExpr conditional => new ConditionalExpr(
                    Hoist(conditional.Condition),
                    Hoist(conditional.WhenTrue),
                    Hoist(conditional.WhenFalse)),
                _ => expr,
            };
        }

        private static bool IsFloatComputation(Expr expr) => expr switch
        {
            NegateExpr negate => negate.Operand is not LiteralExpr,
            BinaryExpr binary => binary.Operator <= BinaryOperator.Divide,
            CallExpr => true,
            ConditionalExpr => true,
            _ => false,
        };

        private bool IsUniform(Expr expr) => expr switch
        {
            LiteralExpr => true,
            ParameterExpr parameter => _uniformNames.Contains(parameter.Name),
            UniformExpr => true,
            NegateExpr negate => IsUniform(negate.Operand),
            BinaryExpr binary => IsUniform(binary.Left) && IsUniform(binary.Right),
            CallExpr call => call.Arguments.All(IsUniform),
            ConditionalExpr conditional =>
                IsUniform(conditional.Condition) && IsUniform(conditional.WhenTrue) && IsUniform(conditional.WhenFalse),
            _ => false,
        };
    }
}
