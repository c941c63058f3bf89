using System.Collections.Generic;
using System.Linq;
using System.Text.RegularExpressions;
using Kiln.Generators.Models;
using Microsoft.CodeAnalysis.CSharp;

namespace Kiln.Generators.Helpers;

// The identifiers the emitters derive from a definition's names, in one place, together with the check that a
// definition's parameter names cannot collide with them. The emitters use a parameter's own name for its value
// (so the generated expressions read like the definition), and suffixed forms for everything around it:
// xData (pointer or view), xLength (broadcast period), xVec (uniform broadcast to a vector), xStart (row offset),
// xLanes (per-lane accumulator), xNext (online max update), xGroup (group-wide value), xTerm (a cached exp term),
// X (argument field).

/// <summary>Derived identifiers and the reserved-name check.</summary>
internal static class Names
{
    private static readonly string[] s_suffixes =
    {
        "Data", "Length", "Vec", "Start", "Lanes", "Next", "Group", "Max", "Term",
    };

    private static readonly HashSet<string> s_fixed = new()
    {
        // Locals and parameters of generated methods.
        "index", "length", "output", "outputData", "args", "state", "start", "end", "device", "kernel", "cpu",
        "segmentEnd", "element", "rowStart", "row", "rows", "column", "columns", "scratch", "half", "pair", "first",
        "second",
        "tableStart", "tableIndex", "low", "high", "rotated0", "rotated1", "tokens", "rowsPerToken", "headDim",
        "startPosition", "layout", "range", "epilogue", "product", "accelerator",

        // Types and members the generated code names without qualification.
        "Vector512", "Vector256", "Vector128", "MathF", "Math", "VectorMath", "GroupReduce", "OpChecks", "Tensor",
        "MatMul", "Grid", "Group", "Warp", "SharedMemory", "Index1D", "ArrayView", "KernelConfig", "CpuDevice",
        "IlgpuDevice", "RopeLayout", "Action", "Span", "ReadOnlySpan", "GeneratedKernel", "ParallelGrain",
    };

    private static readonly HashSet<string> s_fixedFields = new()
    {
        "Output", "Segment", "RowLength", "Columns", "HeadDim", "RowsPerToken", "StartPosition", "Adjacent", "Apply",
    };

    private static readonly Regex s_uniform = new("^[uU]niform[0-9]+$");

    /// <summary>The pointer (CPU) or view (GPU) holding a tensor's elements.</summary>
    public static string Data(string name) => name + "Data";

    /// <summary>A broadcast input's period in elements.</summary>
    public static string Length(string name) => name + "Length";

    /// <summary>A uniform value broadcast to every vector lane.</summary>
    public static string Vec(string name) => name + "Vec";

    /// <summary>A broadcast input's offset for the current row.</summary>
    public static string Start(string name) => name + "Start";

    /// <summary>A per-lane reduction accumulator.</summary>
    public static string Lanes(string name) => name + "Lanes";

    /// <summary>The updated running maximum inside an online-softmax step.</summary>
    public static string Next(string name) => name + "Next";

    /// <summary>A cached term exp(x - max) of a softmax-like row op.</summary>
    public static string Term(string name) => name + "Term";

    /// <summary>A group-wide value in a GPU row kernel.</summary>
    public static string Group(string name) => name + "Group";

    /// <summary>The argument-struct field for a parameter: the name with a capital first letter.</summary>
    public static string Field(string name) => char.ToUpperInvariant(name[0]) + name.Substring(1);

    /// <summary>The local holding hoisted uniform subexpression <paramref name="index"/>.</summary>
    public static string Uniform(int index) => "uniform" + index;

    /// <summary>The argument field holding hoisted uniform subexpression <paramref name="index"/>.</summary>
    public static string UniformField(int index) => "Uniform" + index;

    /// <summary>The static key under which a device caches the op's kernel.</summary>
    public static string KernelKey(string op) => "s_" + char.ToLowerInvariant(op[0]) + op.Substring(1) + "KernelKey";

    /// <summary>
    /// The variable holding the online maximum for a SumExp reduction: the definition's own [Reduce(Max)] of the same
    /// source if it has one, else the SumExp parameter's name + "Max".
    /// </summary>
    public static string OnlineMax(ParameterModel sumExp, IEnumerable<ParameterModel> parameters)
    {
        ParameterModel? max = parameters.FirstOrDefault(p =>
            p.Role == ParameterRole.Reduction && p.Reduction == ReductionKind.Max && p.Source == sumExp.Source);
        return max?.Name ?? sumExp.Name + "Max";
    }

    /// <summary>
    /// Says why <paramref name="name"/> cannot be used by a definition of <paramref name="kind"/> whose parameters
    /// are <paramref name="all"/>, or returns null when it can.
    /// </summary>
    public static string? Clash(string name, KernelKind kind, IReadOnlyList<string> all)
    {
        // C# keywords would need escaping in every generated use.
        if (SyntaxFacts.GetKeywordKind(name) != SyntaxKind.None)
        {
            return "it is a C# keyword";
        }

        // Fixed locals, parameters and type names of the generated code.
        bool perKind = (kind == KernelKind.Epilogue && (name == "a" || name == "w"))
            || (kind == KernelKind.Rotary && name == "x");
        if (s_fixed.Contains(name) || perKind)
        {
            return $"'{name}' is a local, parameter or type name in the generated code";
        }

        // Hoisted uniform values.
        if (s_uniform.IsMatch(name))
        {
            return $"'{name}' names a hoisted uniform value";
        }

        // Names derived from the other parameters.
        foreach (string other in all)
        {
            foreach (string suffix in s_suffixes)
            {
                if (name == other + suffix || name == other + "Max" + suffix)
                {
                    return $"'{name}' is derived from parameter '{other}'";
                }
            }
        }

        // Argument-struct fields.
        string field = Field(name);
        if (s_fixedFields.Contains(field) || (kind == KernelKind.Rotary && field == "X"))
        {
            return $"the argument field '{field}' is taken";
        }

        foreach (string other in all)
        {
            if (other != name && Field(other) == field)
            {
                return $"parameters '{name}' and '{other}' map to the same argument field '{field}'";
            }
        }

        return null;
    }
}
