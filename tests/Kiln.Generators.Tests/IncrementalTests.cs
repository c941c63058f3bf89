using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace Kiln.Generators.Tests;

// Incremental caching: after an edit that does not touch the kernel definitions, the analysis step may run again but
// yields an equal model (Unchanged or Cached), the models step is Cached or Unchanged, and nothing is re-emitted.
// After an edit of a definition, even in another file of the partial class than the one carrying [Kernels], the
// output changes.

/// <summary>The generator's incremental behaviour.</summary>
public sealed class IncrementalTests
{
    private const string KernelsFile = GeneratorHarness.Usings + """
        namespace Incremental;

        [Kernels]
        public static partial class Kernels
        {
            [Pointwise]
            public static float Twice(float x) => x * 2f;
        }
        """;

    private const string DefinitionsFile = GeneratorHarness.Usings + """
        namespace Incremental;

        public static partial class Kernels
        {
            [Row]
            public static float Shift(float x, [Reduce(Reduction.Max, nameof(x))] float max) => x - max;
        }
        """;

    private const string UnrelatedFile = """
        namespace Incremental;

        public static class Unrelated
        {
            public static int Value => 1;
        }
        """;

    /// <summary>An edit of an unrelated file changes no model and re-emits nothing.</summary>
    [Fact]
    public void UnrelatedEdit_IsCached()
    {
        CSharpCompilation compilation = GeneratorHarness.Compile(true, KernelsFile, DefinitionsFile, UnrelatedFile);
        GeneratorRun first = GeneratorHarness.Run(compilation);
        Assert.Empty(first.GeneratorDiagnostics);

        // Change the unrelated file and run the same driver again.
        SyntaxTree unrelated = compilation.SyntaxTrees.Single(static t => t.FilePath == "File2.cs");
        SyntaxTree edited = Edit(unrelated, "Value => 1", "Value => 2");
        GeneratorRun second = GeneratorHarness.Run(compilation.ReplaceSyntaxTree(unrelated, edited), first.Driver);

        GeneratorRunResult result = second.Driver.GetRunResult().Results.Single();
        AssertReasons(
            result,
            KernelGenerator.TrackingNames.Analysis,
            IncrementalStepRunReason.Unchanged,
            IncrementalStepRunReason.Cached);
        AssertReasons(
            result,
            KernelGenerator.TrackingNames.Models,
            IncrementalStepRunReason.Unchanged,
            IncrementalStepRunReason.Cached);
        Assert.All(
            result.TrackedOutputSteps.SelectMany(static step => step.Value).SelectMany(static run => run.Outputs),
            static output => Assert.Equal(IncrementalStepRunReason.Cached, output.Reason));
        Assert.Equal(first.Generated, second.Generated);
    }

    /// <summary>An edit of a definition in a file without [Kernels] regenerates the class.</summary>
    [Fact]
    public void DefinitionEdit_InAnotherFile_Regenerates()
    {
        CSharpCompilation compilation = GeneratorHarness.Compile(true, KernelsFile, DefinitionsFile, UnrelatedFile);
        GeneratorRun first = GeneratorHarness.Run(compilation);

        // Change Shift's body from x - max to x + max.
        SyntaxTree definitions = compilation.SyntaxTrees.Single(static t => t.FilePath == "File1.cs");
        SyntaxTree edited = Edit(definitions, "x - max", "x + max");
        GeneratorRun second = GeneratorHarness.Run(compilation.ReplaceSyntaxTree(definitions, edited), first.Driver);

        GeneratorRunResult result = second.Driver.GetRunResult().Results.Single();
        AssertReasons(result, KernelGenerator.TrackingNames.Models, IncrementalStepRunReason.Modified);
        string generated = second.Generated["Incremental.Kernels.g.cs"];
        Assert.Contains("outputData[index] = x + max;", generated);
        Assert.DoesNotContain("x - max", generated);
        Assert.Empty(second.CompileErrors);
    }

    /// <summary>Whitespace and comments inside a definition change no model.</summary>
    [Fact]
    public void CommentInDefinition_IsUnchanged()
    {
        CSharpCompilation compilation = GeneratorHarness.Compile(true, KernelsFile, DefinitionsFile);
        GeneratorRun first = GeneratorHarness.Run(compilation);
        SyntaxTree kernels = compilation.SyntaxTrees.Single(static t => t.FilePath == "File0.cs");
        SyntaxTree edited = Edit(kernels, "x * 2f", "x /* doubled */ *  2f");
        GeneratorRun second = GeneratorHarness.Run(compilation.ReplaceSyntaxTree(kernels, edited), first.Driver);

        GeneratorRunResult result = second.Driver.GetRunResult().Results.Single();
        AssertReasons(
            result,
            KernelGenerator.TrackingNames.Models,
            IncrementalStepRunReason.Unchanged,
            IncrementalStepRunReason.Cached);
        Assert.Equal(first.Generated, second.Generated);
    }

    private static SyntaxTree Edit(SyntaxTree tree, string find, string replacement)
    {
        // Replace the first occurrence of the text, keeping the tree's path and options.
        string text = tree.GetText().ToString();
        int at = text.IndexOf(find, StringComparison.Ordinal);
        Assert.True(at >= 0, $"'{find}' is not in {tree.FilePath}.");
        return tree.WithChangedText(tree.GetText().Replace(at, find.Length, replacement));
    }

    private static void AssertReasons(GeneratorRunResult result, string step, params IncrementalStepRunReason[] allowed)
    {
        Assert.True(result.TrackedSteps.ContainsKey(step), $"The step {step} was not tracked.");
        IncrementalStepRunReason[] reasons = result.TrackedSteps[step]
            .SelectMany(static run => run.Outputs)
            .Select(static output => output.Reason)
            .ToArray();
        Assert.NotEmpty(reasons);
        Assert.All(reasons, reason => Assert.Contains(reason, allowed));
    }
}
