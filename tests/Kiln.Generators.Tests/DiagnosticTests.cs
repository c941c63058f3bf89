using Microsoft.CodeAnalysis;

namespace Kiln.Generators.Tests;

// Every diagnostic of the generator, each from a small definition that triggers it: the id, where it points (the
// text of the reported span), and that the message carries a fix. A definition with a diagnostic is left out of
// the generated file; the other definitions of the class are still generated.

/// <summary>The generator's diagnostics.</summary>
public sealed class DiagnosticTests
{
    /// <summary>Cases: id, the class body (or whole classes), the text the diagnostic points at.</summary>
    public static TheoryData<string, string, string> Cases() => new()
    {
        // KLN0001: the class shape.
        { "KLN0001", "[Kernels] public partial class NotStatic { [Pointwise] public static float F(float x) => x; }", "NotStatic" },
        { "KLN0001", "[Kernels] public static class NotPartial { [Pointwise] public static float F(float x) => x; }", "NotPartial" },
        { "KLN0001", "[Kernels] public static partial class Generic<T> { [Pointwise] public static float F(float x) => x; }", "Generic" },
        { "KLN0001", "public static partial class Outer { [Kernels] public static partial class Nested { } }", "Nested" },

        // KLN0002: the definition shape.
        { "KLN0002", "[Pointwise] public static float F<T>(float x) => x;", "F" },

        // KLN0003: no single expression.
        { "KLN0003", "[Pointwise] public static float F(float x) { }", "F" },

        // KLN0004: loops and statements.
        { "KLN0004", "[Pointwise] public static float F(float x) { float s = 0f; for (int i = 0; i < 3; i++) { s += x; } return s; }", "for" },
        { "KLN0004", "[Pointwise] public static float F(float x) { float y = x * 2f; return y; }", "float y = x * 2f;" },

        // KLN0005: calls of functions without a vector and GPU form.
        { "KLN0005", "[Pointwise] public static float F(float x) => MathF.Pow(x, 2f);", "MathF.Pow(x, 2f)" },
        { "KLN0005", "[Pointwise] public static float F(float x) => Helper(x); private static float Helper(float x) => x;", "Helper(x)" },
        { "KLN0005", "[Pointwise] public static float F(float x) => MathF.Log2(x);", "MathF.Log2(x)" },

        // KLN0006: parameter types.
        { "KLN0006", "[Pointwise] public static float F(double x) => (float)x;", "x" },
        { "KLN0006", "[Pointwise] public static float F(ref float x) => x;", "x" },
        { "KLN0006", "[Pointwise] public static float F(float x, int k) => x;", "k" },

        // KLN0007: return types.
        { "KLN0007", "[Pointwise] public static double F(float x) => x;", "double" },
        { "KLN0007", "[Rotary] public static float F(float x0, float x1) => x0;", "float" },

        // KLN0008: [Reduce] naming a missing input.
        { "KLN0008", "[Row] public static float F(float x, [Reduce(Reduction.Sum, \"y\")] float s) => x - s;", "s" },
        { "KLN0008", "[Row] public static float F(float x, [Scalar] float t, [Reduce(Reduction.Max, nameof(t))] float m) => x - m;", "m" },

        // KLN0009: no tensor input.
        { "KLN0009", "[Pointwise] public static float F([Scalar] float s) => s;", "F" },
        { "KLN0009", "[Rotary] public static (float, float) F(float x0, [Scalar] float s) => (x0, s);", "F" },

        // KLN0010: unsupported syntax.
        { "KLN0010", "[Pointwise] public static float F(float x) => new float[] { x }[0];", "new float[] { x }[0]" },
        { "KLN0010", "[Pointwise] public static float F(float x) => x % 2f;", "x % 2f" },
        { "KLN0010", "[Pointwise] public static float F(float x) => x = 2f;", "x = 2f" },
        { "KLN0010", "[Pointwise] public static float F(float x) => x++;", "x++" },
        { "KLN0010", "[Pointwise] public static float F(float x) => x + Environment.ProcessorCount;", "Environment.ProcessorCount" },
        { "KLN0010", "[Pointwise] public static float F(float x) => !(x > 0f) ? 1f : 0f;", "!(x > 0f)" },
        { "KLN0010", "[Rotary] public static (float, float) F(float x0, float x1) => Pair(x0, x1); static (float, float) Pair(float a, float b) => (a, b);", "Pair(x0, x1)" },

        // KLN0011: names that clash with the generated code.
        { "KLN0011", "[Pointwise] public static float F(float index) => index;", "index" },
        { "KLN0011", "[Pointwise] public static float F(float x, float xData) => x + xData;", "xData" },
        { "KLN0011", "[Epilogue] public static float F(float acc, float w) => acc * w;", "w" },

        // KLN0012: attributes where they do not apply.
        { "KLN0012", "[Pointwise] public static float F(float x, [RowLength] int n) => x;", "n" },
        { "KLN0012", "[Pointwise][Row] public static float F(float x) => x;", "F" },
        { "KLN0012", "[Row] public static float F(float x, [Reduce(Reduction.Sum, \"x\")] float a, [Reduce(Reduction.Sum, \"x\")] float b) => x + a - b;", "b" },

        // KLN0013: arithmetic that is not float.
        { "KLN0013", "[Pointwise] public static float F(float x) => (float)(x * 0.5);", "x * 0.5" },
        { "KLN0013", "[Row] public static float F(float x, [RowLength] int n) => x / (n / 2);", "n / 2" },

        // KLN0014: two definitions with one name.
        { "KLN0014", "[Pointwise] public static float F(float x) => x; [Pointwise] public static float F(float x, float y) => x + y;", "F" },
    };

    /// <summary>The case reports its id at the expected place, with a fix in the message, and nothing else.</summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void Definition_ReportsDiagnostic(string id, string body, string pointsAt)
    {
        string source = body.Contains("class ", StringComparison.Ordinal)
            ? GeneratorHarness.Usings + body
            : GeneratorHarness.Usings + "[Kernels] public static partial class K { " + body + " }";
        GeneratorRun run = GeneratorHarness.Run(source);

        // Exactly this id, pointing at the offending text.
        Diagnostic diagnostic = Assert.Single(run.GeneratorDiagnostics);
        Assert.Equal(id, diagnostic.Id);
        Assert.Equal(DiagnosticSeverity.Error, diagnostic.Severity);
        SyntaxTree tree = run.Output.SyntaxTrees.Single(t => t.FilePath == diagnostic.Location.GetLineSpan().Path);
        string pointed = tree.GetText().ToString(diagnostic.Location.SourceSpan);
        Assert.Equal(pointsAt, pointed);

        // The message says what to do.
        string message = diagnostic.GetMessage();
        Assert.Matches(
            "(;|:) (use|add|write|declare|rename|mark|name|return|set|give|remove|compare|pass|it applies|a parameter takes|kernels compute|only)",
            message);
    }

    /// <summary>KLN0015: a project without unsafe code gets one diagnostic on the class and no source.</summary>
    [Fact]
    public void ProjectWithoutUnsafe_ReportsKln0015()
    {
        string source = GeneratorHarness.Usings + "[Kernels] public static partial class Safe { [Pointwise] public static float F(float x) => x; }";
        GeneratorRun run = GeneratorHarness.Run(GeneratorHarness.Compile(false, source));
        Diagnostic diagnostic = Assert.Single(run.GeneratorDiagnostics);
        Assert.Equal("KLN0015", diagnostic.Id);
        Assert.Contains("<AllowUnsafeBlocks>true</AllowUnsafeBlocks>", diagnostic.GetMessage());
        Assert.Empty(run.Generated);
    }

    /// <summary>A bad definition is skipped; its valid neighbours are still generated and compile.</summary>
    [Fact]
    public void BadDefinition_IsSkipped_OthersAreGenerated()
    {
        string source = GeneratorHarness.Usings + """
            [Kernels]
            public static partial class Mixed
            {
                [Pointwise]
                public static float Good(float x) => x * 2f;

                [Pointwise]
                public static float Bad(float x) => MathF.Pow(x, 3f);
            }
            """;
        GeneratorRun run = GeneratorHarness.Run(source);
        Assert.Equal("KLN0005", Assert.Single(run.GeneratorDiagnostics).Id);
        string text = run.Generated["Mixed.g.cs"];
        Assert.Contains("public static void Good(Tensor x, Tensor output)", text);
        Assert.DoesNotContain("Bad(", text);
        Assert.Empty(run.CompileErrors);
    }

    /// <summary>Every descriptor id is listed in AnalyzerReleases.Unshipped.md.</summary>
    [Fact]
    public void EveryId_IsTrackedInTheReleaseNotes()
    {
        string notes = File.ReadAllText(Path.Combine(GeneratorHarness.RepositoryRoot(), "generators", "Kiln.Generators", "AnalyzerReleases.Unshipped.md"));
        for (int i = 1; i <= 15; i++)
        {
            Assert.Contains($"KLN{i:0000} | Kiln.Kernels | Error |", notes);
        }
    }
}
