using System.Collections.Immutable;
using Kiln.Generators;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace Kiln.Generators.Tests;

// Runs the Kiln generator on source text the way the compiler does: a compilation against the .NET 10 reference
// assemblies plus Kiln.Core and ILGPU (so the generated code compiles for real), a CSharpGeneratorDriver that tracks
// incremental steps, and the updated compilation with the generated files in it.

/// <summary>The outcome of one generator run.</summary>
/// <param name="Driver">The driver after the run (run it again to test caching).</param>
/// <param name="Output">The compilation with the generated sources added.</param>
/// <param name="Generated">The generated sources by hint name.</param>
/// <param name="GeneratorDiagnostics">What the generator reported.</param>
public sealed record GeneratorRun(
    GeneratorDriver Driver,
    Compilation Output,
    ImmutableDictionary<string, string> Generated,
    ImmutableArray<Diagnostic> GeneratorDiagnostics)
{
    /// <summary>The compiler errors of the output compilation.</summary>
    public IEnumerable<Diagnostic> CompileErrors =>
        Output.GetDiagnostics().Where(static d => d.Severity == DiagnosticSeverity.Error);
}

/// <summary>Compiles source text with the generator.</summary>
public static class GeneratorHarness
{
    /// <summary>The usings every test source starts with.</summary>
    public const string Usings = "using System;\nusing Kiln.Kernels;\n";

    private static readonly MetadataReference[] s_references = Basic.Reference.Assemblies.Net100.References.All
        .Concat(new[]
        {
            MetadataReference.CreateFromFile(typeof(Kiln.Tensor).Assembly.Location),
            MetadataReference.CreateFromFile(typeof(ILGPU.Index1D).Assembly.Location),
            MetadataReference.CreateFromFile(typeof(ILGPU.Algorithms.XMath).Assembly.Location),
        })
        .ToArray();

    /// <summary>A compilation of <paramref name="sources"/> (one syntax tree each, named File0.cs, File1.cs, ...).</summary>
    public static CSharpCompilation Compile(bool allowUnsafe, params string[] sources)
    {
        CSharpParseOptions parse = new(LanguageVersion.Latest);
        IEnumerable<SyntaxTree> trees = sources
            .Select((source, i) => CSharpSyntaxTree.ParseText(source, parse, path: $"File{i}.cs"));
        CSharpCompilationOptions options = new(
            OutputKind.DynamicallyLinkedLibrary,
            allowUnsafe: allowUnsafe,
            nullableContextOptions: NullableContextOptions.Enable);
        return CSharpCompilation.Create("GeneratorTest", trees, s_references, options);
    }

    /// <summary>Runs the generator on a fresh compilation of <paramref name="sources"/>.</summary>
    public static GeneratorRun Run(params string[] sources) => Run(Compile(true, sources));

    /// <summary>Runs the generator on <paramref name="compilation"/>, with a new driver or the given one.</summary>
    public static GeneratorRun Run(Compilation compilation, GeneratorDriver? driver = null)
    {
        driver ??= CSharpGeneratorDriver.Create(
            new[] { new KernelGenerator().AsSourceGenerator() },
            parseOptions: new CSharpParseOptions(LanguageVersion.Latest),
            driverOptions: new GeneratorDriverOptions(
                IncrementalGeneratorOutputKind.None,
                trackIncrementalGeneratorSteps: true));
        driver = driver.RunGeneratorsAndUpdateCompilation(
            compilation,
            out Compilation output,
            out ImmutableArray<Diagnostic> diagnostics);
        GeneratorDriverRunResult result = driver.GetRunResult();
        ImmutableDictionary<string, string> generated = result.Results
            .SelectMany(static r => r.GeneratedSources)
            .ToImmutableDictionary(static s => s.HintName, static s => s.SourceText.ToString());
        return new GeneratorRun(driver, output, generated, diagnostics);
    }

    /// <summary>The repository root: the first directory above the test assembly that holds Framework.sln.</summary>
    public static string RepositoryRoot()
    {
        DirectoryInfo? directory = new(AppContext.BaseDirectory);
        while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "Framework.sln")))
        {
            directory = directory.Parent;
        }

        return directory?.FullName
            ?? throw new InvalidOperationException($"No Framework.sln above {AppContext.BaseDirectory}.");
    }
}
