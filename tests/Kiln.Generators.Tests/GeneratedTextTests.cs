namespace Kiln.Generators.Tests;

// The exact text the generator emits for one small definition of each kind, compared with the files under
// Expected/. The generated code must also compile without errors against Kiln.Core and ILGPU. After a deliberate
// change to the generator, set KILN_UPDATE_EXPECTED=1 and run these tests once to rewrite the expected files, then
// read the diff before committing it.

/// <summary>Exact generated text, one definition per kind.</summary>
public sealed class GeneratedTextTests
{
    /// <summary>The sample class of each kind.</summary>
    public static TheoryData<string, string> Samples() => new()
    {
        {
            "PointwiseSample",
            """
            /// <summary>A pointwise sample.</summary>
            [Kernels]
            public static partial class PointwiseSample
            {
                /// <summary>Linear interpolation from a to b.</summary>
                [Pointwise]
                public static float Blend(float a, float b, [Scalar] float t) => a + (b - a) * MathF.Max(t, 0f);
            }
            """
        },
        {
            "RowSample",
            """
            /// <summary>A row sample.</summary>
            [Kernels]
            public static partial class RowSample
            {
                /// <summary>Subtracts the row's mean.</summary>
                [Row]
                public static float Center(float x, [Reduce(Reduction.Sum, nameof(x))] float sum, [RowLength] int n) => x - sum / n;
            }
            """
        },
        {
            "EpilogueSample",
            """
            /// <summary>An epilogue sample.</summary>
            [Kernels]
            public static partial class EpilogueSample
            {
                /// <summary>Adds a bias, then clamps at zero.</summary>
                [Epilogue]
                public static float BiasRelu(float acc, float bias) => acc + bias > 0f ? acc + bias : 0f;
            }
            """
        },
        {
            "RotarySample",
            """
            /// <summary>A rotary sample.</summary>
            [Kernels]
            public static partial class RotarySample
            {
                /// <summary>Swaps the pair and scales it by a table value.</summary>
                [Rotary]
                public static (float, float) Swap(float x0, float x1, float scale) => (x1 * scale, -x0 * scale);
            }
            """
        },
    };

    /// <summary>The generated file equals Expected/Samples.{name}.g.cs.txt and compiles.</summary>
    [Theory]
    [MemberData(nameof(Samples))]
    public void Generated_MatchesExpectedText_AndCompiles(string name, string definition)
    {
        string source = GeneratorHarness.Usings + "\nnamespace Samples;\n\n" + definition + "\n";
        GeneratorRun run = GeneratorHarness.Run(source);

        // No diagnostics, one file, and it compiles.
        Assert.Empty(run.GeneratorDiagnostics);
        string hint = $"Samples.{name}.g.cs";
        Assert.Equal(new[] { hint }, run.Generated.Keys);
        Assert.Empty(run.CompileErrors);

        // The text is exactly the expected file.
        string path = Path.Combine(
            GeneratorHarness.RepositoryRoot(),
            "tests",
            "Kiln.Generators.Tests",
            "Expected",
            hint + ".txt");
        string actual = run.Generated[hint];
        if (Environment.GetEnvironmentVariable("KILN_UPDATE_EXPECTED") == "1")
        {
            File.WriteAllText(path, actual);
        }

        Assert.True(File.Exists(path), $"Missing {path}; run with KILN_UPDATE_EXPECTED=1 to create it.");
        Assert.Equal(File.ReadAllText(path), actual);
    }

    /// <summary>Generation is deterministic: two runs on the same source give the same text.</summary>
    [Fact]
    public void Generation_IsDeterministic()
    {
        string source = GeneratorHarness.Usings + """
            [Kernels]
            public static partial class Twice
            {
                [Pointwise]
                public static float B(float x) => x * 2f;

                [Row]
                public static float A(float x, [Reduce(Reduction.Max, nameof(x))] float m) => x - m;
            }
            """;
        GeneratorRun first = GeneratorHarness.Run(source);
        GeneratorRun second = GeneratorHarness.Run(source);
        Assert.Equal(first.Generated["Twice.g.cs"], second.Generated["Twice.g.cs"]);

        // Definitions come out in name order, whatever their order in the file.
        string text = first.Generated["Twice.g.cs"];
        Assert.True(text.IndexOf("#region A:", StringComparison.Ordinal) < text.IndexOf("#region B:", StringComparison.Ordinal));
    }
}
