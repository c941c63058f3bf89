using Kiln.Generators.Helpers;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Text;

namespace Kiln.Generators.Models;

// A diagnostic as plain data (descriptor id, file, span, message arguments), so that it can ride in the equatable
// pipeline and be turned back into a Roslyn Diagnostic when reported.

/// <summary>A diagnostic found during analysis.</summary>
internal sealed record DiagnosticInfo(
    string Id,
    string FilePath,
    TextSpan Span,
    LinePositionSpan LineSpan,
    EquatableArray<string> Arguments)
{
    /// <summary>Captures a diagnostic of <paramref name="descriptor"/> at <paramref name="location"/>.</summary>
    public static DiagnosticInfo Create(DiagnosticDescriptor descriptor, Location location, params string[] arguments)
    {
        FileLinePositionSpan lines = location.GetLineSpan();
        return new DiagnosticInfo(
            descriptor.Id,
            lines.Path ?? string.Empty,
            location.SourceSpan,
            lines.Span,
            arguments.ToEquatableArray());
    }

    /// <summary>Rebuilds the Roslyn diagnostic.</summary>
    public Diagnostic ToDiagnostic()
    {
        DiagnosticDescriptor descriptor = Diagnostics.DiagnosticDescriptors.ById(Id);
        Location location = FilePath.Length == 0 ? Location.None : Location.Create(FilePath, Span, LineSpan);
        object[] arguments = new object[Arguments.Count];
        for (int i = 0; i < arguments.Length; i++)
        {
            arguments[i] = Arguments[i];
        }

        return Diagnostic.Create(descriptor, location, arguments);
    }
}

/// <summary>The result of analysing one [Kernels] class: the model (null when nothing can be emitted), the diagnostics.</summary>
internal sealed record AnalysisResult(ClassModel? Model, EquatableArray<DiagnosticInfo> Diagnostics);
