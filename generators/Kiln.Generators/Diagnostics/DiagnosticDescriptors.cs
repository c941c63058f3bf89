using System;
using System.Collections.Generic;
using Microsoft.CodeAnalysis;

namespace Kiln.Generators.Diagnostics;

// The diagnostics of the Kiln kernel generator. Each message says what is wrong and how to fix it; each is an
// error, because the generator cannot emit an op for a definition it does not understand. Ids are stable and
// listed in AnalyzerReleases.Unshipped.md.

/// <summary>The generator's diagnostic descriptors.</summary>
internal static class DiagnosticDescriptors
{
    private const string Category = "Kiln.Kernels";

    /// <summary>The list of functions a definition may call, for messages.</summary>
    public const string SupportedFunctions =
        "MathF.Abs, Ceiling, Cos, Exp, Floor, FusedMultiplyAdd, Log, Max, Min, Round, Sin, Sqrt, Tanh, Truncate";

    /// <summary>KLN0001: Kernels class must be a top-level static partial class.</summary>
    /// <remarks>Message: "The [Kernels] class '{0}' must be a non-generic, top-level static partial class; declare it
    /// as 'static partial class {0}' directly in a namespace".</remarks>
    public static readonly DiagnosticDescriptor ClassShape = Create(
        "KLN0001",
        "Kernels class must be a top-level static partial class",
        "The [Kernels] class '{0}' must be a non-generic, top-level static partial class; declare "
        + "it as 'static partial class {0}' directly in a namespace");

    /// <summary>KLN0002: Kernel definition must be a static non-generic method.</summary>
    /// <remarks>Message: "The kernel definition '{0}' must be a static, non-generic method; add 'static' and remove
    /// type parameters".</remarks>
    public static readonly DiagnosticDescriptor DefinitionShape = Create(
        "KLN0002",
        "Kernel definition must be a static non-generic method",
        "The kernel definition '{0}' must be a static, non-generic method; add 'static' and "
        + "remove type parameters");

    /// <summary>KLN0003: Kernel definition body must be a single expression.</summary>
    /// <remarks>Message: "The body of kernel definition '{0}' must be a single expression; write '=> expression' or
    /// '{ return expression; }'".</remarks>
    public static readonly DiagnosticDescriptor SingleExpression = Create(
        "KLN0003",
        "Kernel definition body must be a single expression",
        "The body of kernel definition '{0}' must be a single expression; write '=> expression' "
        + "or '{{ return expression; }}'");

    /// <summary>KLN0004: Loops and statements are not supported in kernel definitions.</summary>
    /// <remarks>Message: "Kernel definition '{0}' contains a {1}, which cannot be generated; write the computation as
    /// one expression (use a [Row] op with [Reduce] for sums over a row)".</remarks>
    public static readonly DiagnosticDescriptor Statement = Create(
        "KLN0004",
        "Loops and statements are not supported in kernel definitions",
        "Kernel definition '{0}' contains a {1}, which cannot be generated; write the computation "
        + "as one expression (use a [Row] op with [Reduce] for sums over a row)");

    /// <summary>KLN0005: Unsupported method call in a kernel definition.</summary>
    /// <remarks>Message: "Kernel definition '{0}' calls '{1}', which has no vector and GPU form; use one of " +
    /// SupportedFunctions + " (float overloads)".</remarks>
    public static readonly DiagnosticDescriptor UnsupportedCall = Create(
        "KLN0005",
        "Unsupported method call in a kernel definition",
        "Kernel definition '{0}' calls '{1}', which has no vector and GPU form; use one of "
        + SupportedFunctions
        + " (float overloads)");

    /// <summary>KLN0006: Unsupported parameter type in a kernel definition.</summary>
    /// <remarks>Message: "Parameter '{1}' of kernel definition '{0}' has type '{2}'; use float (or int with
    /// [RowLength] in a [Row] op), passed by value".</remarks>
    public static readonly DiagnosticDescriptor ParameterType = Create(
        "KLN0006",
        "Unsupported parameter type in a kernel definition",
        "Parameter '{1}' of kernel definition '{0}' has type '{2}'; use float (or int with "
        + "[RowLength] in a [Row] op), passed by value");

    /// <summary>KLN0007: Unsupported return type in a kernel definition.</summary>
    /// <remarks>Message: "Kernel definition '{0}' returns '{1}'; return {3} from a {2} definition".</remarks>
    public static readonly DiagnosticDescriptor ReturnType = Create(
        "KLN0007",
        "Unsupported return type in a kernel definition",
        "Kernel definition '{0}' returns '{1}'; return {3} from a {2} definition");

    /// <summary>KLN0008: [Reduce] names a missing input.</summary>
    /// <remarks>Message: "[Reduce] on parameter '{1}' of kernel definition '{0}' names '{2}', which is not an input
    /// parameter; name one of: {3}".</remarks>
    public static readonly DiagnosticDescriptor ReduceSource = Create(
        "KLN0008",
        "[Reduce] names a missing input",
        "[Reduce] on parameter '{1}' of kernel definition '{0}' names '{2}', which is not an "
        + "input parameter; name one of: {3}");

    /// <summary>KLN0009: Kernel definition has no tensor input.</summary>
    /// <remarks>Message: "Kernel definition '{0}' has no tensor input; {1}".</remarks>
    public static readonly DiagnosticDescriptor NoInput = Create(
        "KLN0009",
        "Kernel definition has no tensor input",
        "Kernel definition '{0}' has no tensor input; {1}");

    /// <summary>KLN0010: Unsupported syntax in a kernel definition.</summary>
    /// <remarks>Message: "Kernel definition '{0}' uses {1}, which cannot be generated; {2}".</remarks>
    public static readonly DiagnosticDescriptor UnsupportedSyntax = Create(
        "KLN0010",
        "Unsupported syntax in a kernel definition",
        "Kernel definition '{0}' uses {1}, which cannot be generated; {2}");

    /// <summary>KLN0011: Parameter name clashes with generated code.</summary>
    /// <remarks>Message: "Parameter '{1}' of kernel definition '{0}' clashes with a name the generated code uses
    /// ({2}); rename the parameter".</remarks>
    public static readonly DiagnosticDescriptor ReservedName = Create(
        "KLN0011",
        "Parameter name clashes with generated code",
        "Parameter '{1}' of kernel definition '{0}' clashes with a name the generated code uses "
        + "({2}); rename the parameter");

    /// <summary>KLN0012: Kernel attribute used where it does not apply.</summary>
    /// <remarks>Message: "{1} on kernel definition '{0}' is not valid: {2}".</remarks>
    public static readonly DiagnosticDescriptor AttributeMisuse = Create(
        "KLN0012",
        "Kernel attribute used where it does not apply",
        "{1} on kernel definition '{0}' is not valid: {2}");

    /// <summary>KLN0013: Non-float arithmetic in a kernel definition.</summary>
    /// <remarks>Message: "Kernel definition '{0}' computes '{1}' in {2}; kernels compute in float, so use float
    /// literals such as 2f or 0.5f".</remarks>
    public static readonly DiagnosticDescriptor NonFloatArithmetic = Create(
        "KLN0013",
        "Non-float arithmetic in a kernel definition",
        "Kernel definition '{0}' computes '{1}' in {2}; kernels compute in float, so use float "
        + "literals such as 2f or 0.5f");

    /// <summary>KLN0014: Duplicate kernel definition name.</summary>
    /// <remarks>Message: "Class '{1}' has more than one kernel definition named '{0}', and their generated ops would
    /// clash; give each definition its own name".</remarks>
    public static readonly DiagnosticDescriptor DuplicateName = Create(
        "KLN0014",
        "Duplicate kernel definition name",
        "Class '{1}' has more than one kernel definition named '{0}', and their generated ops "
        + "would clash; give each definition its own name");

    /// <summary>KLN0015: Kernels need unsafe code.</summary>
    /// <remarks>Message: "The [Kernels] class '{0}' needs unsafe code for its CPU loops; set
    /// <AllowUnsafeBlocks>true</AllowUnsafeBlocks> in the project file".</remarks>
    public static readonly DiagnosticDescriptor UnsafeDisabled = Create(
        "KLN0015",
        "Kernels need unsafe code",
        "The [Kernels] class '{0}' needs unsafe code for its CPU loops; set "
        + "<AllowUnsafeBlocks>true</AllowUnsafeBlocks> in the project file");

    private static readonly Dictionary<string, DiagnosticDescriptor> s_byId = new(StringComparer.Ordinal)
    {
        [ClassShape.Id] = ClassShape,
        [DefinitionShape.Id] = DefinitionShape,
        [SingleExpression.Id] = SingleExpression,
        [Statement.Id] = Statement,
        [UnsupportedCall.Id] = UnsupportedCall,
        [ParameterType.Id] = ParameterType,
        [ReturnType.Id] = ReturnType,
        [ReduceSource.Id] = ReduceSource,
        [NoInput.Id] = NoInput,
        [UnsupportedSyntax.Id] = UnsupportedSyntax,
        [ReservedName.Id] = ReservedName,
        [AttributeMisuse.Id] = AttributeMisuse,
        [NonFloatArithmetic.Id] = NonFloatArithmetic,
        [DuplicateName.Id] = DuplicateName,
        [UnsafeDisabled.Id] = UnsafeDisabled,
    };

    /// <summary>The descriptor with id <paramref name="id"/>.</summary>
    public static DiagnosticDescriptor ById(string id) => s_byId[id];

    private static DiagnosticDescriptor Create(string id, string title, string message) =>
        new(id, title, message, Category, DiagnosticSeverity.Error, isEnabledByDefault: true);
}
