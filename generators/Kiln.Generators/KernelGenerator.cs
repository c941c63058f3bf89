using System.Collections.Immutable;
using Kiln.Generators.Helpers;
using Kiln.Generators.Models;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace Kiln.Generators;

// The Kiln kernel generator. For every static partial class marked [Kiln.Kernels.Kernels] it reads the kernel
// definitions (static methods marked [Pointwise], [Row], [Epilogue] or [Rotary] whose body is one scalar float
// expression) and emits <Namespace>.<Class>.g.cs with, per definition: a vectorized multi-threaded CPU path, an
// ILGPU kernel, and a public op over tensors that checks its arguments and dispatches on the device.
//
// The pipeline follows the Roslyn incremental-generator cookbook: ForAttributeWithMetadataName finds the classes,
// one transform turns each into a value-equatable AnalysisResult (model + diagnostics as plain data), and the
// diagnostics and the sources leave through separate branches, so an edit that changes neither re-emits nothing.
// The partial files split the work by concern: Analysis (symbols to models), Expressions (syntax to the
// expression tree), Emit (file layout), Ops (public ops), Cpu (CPU loops) and Gpu (ILGPU kernels).

/// <summary>Turns Kiln kernel definitions into CPU loops, ILGPU kernels and typed ops.</summary>
[Generator(LanguageNames.CSharp)]
public sealed partial class KernelGenerator : IIncrementalGenerator
{
    /// <summary>The metadata name of the attribute that marks a class of kernel definitions.</summary>
    public const string KernelsAttributeName = "Kiln.Kernels.KernelsAttribute";

    /// <summary>The names of the tracked pipeline steps, for incrementality tests.</summary>
    public static class TrackingNames
    {
        /// <summary>The transform from a [Kernels] class to its analysis result.</summary>
        public const string Analysis = nameof(Analysis);

        /// <summary>The diagnostics branch.</summary>
        public const string Diagnostics = nameof(Diagnostics);

        /// <summary>The models that are emitted.</summary>
        public const string Models = nameof(Models);
    }

    /// <inheritdoc />
    public void Initialize(IncrementalGeneratorInitializationContext context)
    {
        // Analyse every [Kernels] class into a model and its diagnostics, both plain data.
        IncrementalValuesProvider<AnalysisResult> results = context.SyntaxProvider
            .ForAttributeWithMetadataName(
                KernelsAttributeName,
                static (node, _) => node is ClassDeclarationSyntax,
                static (syntaxContext, token) => Analyze(syntaxContext, token))
            .WithTrackingName(TrackingNames.Analysis);

        // Report the diagnostics from their own branch.
        IncrementalValuesProvider<EquatableArray<DiagnosticInfo>> diagnostics = results
            .Select(static (result, _) => result.Diagnostics)
            .Where(static found => !found.IsEmpty)
            .WithTrackingName(TrackingNames.Diagnostics);
        context.RegisterSourceOutput(diagnostics, static (output, found) =>
        {
            foreach (DiagnosticInfo diagnostic in found)
            {
                output.ReportDiagnostic(diagnostic.ToDiagnostic());
            }
        });

        // Emit one file per class that has a model.
        IncrementalValuesProvider<ClassModel> models = results
            .Where(static result => result.Model is not null)
            .Select(static (result, _) => result.Model!)
            .WithTrackingName(TrackingNames.Models);
        context.RegisterSourceOutput(models, static (output, model) =>
        {
            output.AddSource(HintName(model), EmitClass(model));
        });
    }

    /// <summary>The generated file name of a class: <c>Namespace.Class.g.cs</c>.</summary>
    internal static string HintName(ClassModel model) =>
        model.Namespace.Length == 0 ? $"{model.Name}.g.cs" : $"{model.Namespace}.{model.Name}.g.cs";

    /// <summary>Collects diagnostics during analysis.</summary>
    private sealed class DiagnosticSink
    {
        private readonly ImmutableArray<DiagnosticInfo>.Builder _found = ImmutableArray.CreateBuilder<DiagnosticInfo>();

        /// <summary>Records a diagnostic.</summary>
        public void Report(DiagnosticDescriptor descriptor, Location location, params string[] arguments) =>
            _found.Add(DiagnosticInfo.Create(descriptor, location, arguments));

        /// <summary>The number recorded so far.</summary>
        public int Count => _found.Count;

        /// <summary>The diagnostics recorded.</summary>
        public EquatableArray<DiagnosticInfo> ToArray() => new(_found.ToImmutable());
    }
}
