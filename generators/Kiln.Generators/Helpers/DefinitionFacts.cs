using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Models;

namespace Kiln.Generators.Helpers;

// Questions the emitters ask about a definition: which parameters play which role, what the public op's
// signature is, and which names and uniforms its expressions actually use (only those are loaded or broadcast).

/// <summary>Derived facts about a <see cref="DefinitionModel"/>.</summary>
internal static class DefinitionFacts
{
    /// <summary>The tensor inputs (epilogue: the extra operands; rotary: the tables), in declaration order.</summary>
    public static IEnumerable<ParameterModel> Inputs(this DefinitionModel definition) =>
        definition.Parameters.Where(static p => p.Role == ParameterRole.Input);

    /// <summary>The [Scalar] parameters, in declaration order.</summary>
    public static IEnumerable<ParameterModel> Scalars(this DefinitionModel definition) =>
        definition.Parameters.Where(static p => p.Role == ParameterRole.Scalar);

    /// <summary>The [Reduce] parameters, in declaration order.</summary>
    public static IEnumerable<ParameterModel> Reductions(this DefinitionModel definition) =>
        definition.Parameters.Where(static p => p.Role == ParameterRole.Reduction);

    /// <summary>The parameter with <paramref name="role"/>, or null.</summary>
    public static ParameterModel? WithRole(this DefinitionModel definition, ParameterRole role) =>
        definition.Parameters.FirstOrDefault(p => p.Role == role);

    /// <summary>The input whose shape the output takes (pointwise and row ops): the first input.</summary>
    public static ParameterModel LeadInput(this DefinitionModel definition) => definition.Inputs().First();

    /// <summary>The name of the tensor a rotary op rotates.</summary>
    public const string RotaryInputName = "x";

    /// <summary>The public op's parameters as (type, name), in order.</summary>
    public static IEnumerable<(string Type, string Name)> OpParameters(this DefinitionModel definition)
    {
        if (definition.Kind == KernelKind.Epilogue)
        {
            yield return ("Tensor", "a");
            yield return ("Tensor", "w");
        }
        else if (definition.Kind == KernelKind.Rotary)
        {
            yield return ("Tensor", RotaryInputName);
        }

        foreach (ParameterModel input in definition.Inputs())
        {
            yield return ("Tensor", input.Name);
        }

        foreach (ParameterModel scalar in definition.Scalars())
        {
            yield return ("float", scalar.Name);
        }

        if (definition.Kind == KernelKind.Rotary)
        {
            yield return ("int", "startPosition");
            yield return ("RopeLayout", "layout");
        }

        yield return ("Tensor", "output");
    }

    /// <summary>A cref to the public op, e.g. <c>Add(Tensor, Tensor, Tensor)</c>.</summary>
    public static string OpCref(this DefinitionModel definition) =>
        $"{definition.Name}({string.Join(", ", definition.OpParameters().Select(static p => p.Type))})";

    /// <summary>The parameter names the results use directly.</summary>
    public static HashSet<string> UsedInResults(this DefinitionModel definition)
    {
        HashSet<string> names = new();
        foreach (Expr result in definition.Results)
        {
            Collect(result, names, null);
        }

        return names;
    }

    /// <summary>The parameter names the hoisted uniforms use.</summary>
    public static HashSet<string> UsedInUniforms(this DefinitionModel definition)
    {
        HashSet<string> names = new();
        foreach (Expr uniform in definition.Uniforms)
        {
            Collect(uniform, names, null);
        }

        return names;
    }

    /// <summary>The indices of the hoisted uniforms the results use.</summary>
    public static SortedSet<int> UniformsInResults(this DefinitionModel definition)
    {
        SortedSet<int> indices = new();
        foreach (Expr result in definition.Results)
        {
            Collect(result, new HashSet<string>(), indices);
        }

        return indices;
    }

    /// <summary>
    /// Adds the parameter names <paramref name="expr"/> uses to <paramref name="names"/>, and its uniforms to
    /// <paramref name="uniforms"/>.
    /// </summary>
    public static void Collect(Expr expr, HashSet<string> names, SortedSet<int>? uniforms = null)
    {
        switch (expr)
        {
            case ParameterExpr parameter:
                names.Add(parameter.Name);
                break;
            case UniformExpr uniform:
                uniforms?.Add(uniform.Index);
                break;
            case NegateExpr negate:
                Collect(negate.Operand, names, uniforms);
                break;
            case BinaryExpr binary:
                Collect(binary.Left, names, uniforms);
                Collect(binary.Right, names, uniforms);
                break;
            case CallExpr call:
                foreach (Expr argument in call.Arguments)
                {
                    Collect(argument, names, uniforms);
                }

                break;
            case ConditionalExpr conditional:
                Collect(conditional.Condition, names, uniforms);
                Collect(conditional.WhenTrue, names, uniforms);
                Collect(conditional.WhenFalse, names, uniforms);
                break;
        }
    }
}
