using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Helpers;
using Kiln.Generators.Models;

namespace Kiln.Generators;

// Emission of the ILGPU side. Pointwise and rotary ops get an implicitly grouped kernel (Index1D: one element or
// one pair per thread); row ops an explicitly grouped kernel with one group per row, whose threads stride over the
// row, reduce with warp shuffles and shared memory (GroupReduce), then map. Epilogue ops get a struct implementing
// IGpuMatMulEpilogue for MatMul.ComputeGpu, plus a small kernel that applies it to an existing product so that it is
// compiled and checked like every other kernel. Kernel bodies use the scalar expression with MathF kept (the
// context enables ILGPU.Algorithms); arguments travel in one struct of views and scalars. Each kernel is loaded
// once per device through IlgpuDevice.GetKernel under a static key.

/// <content>ILGPU kernels.</content>
public sealed partial class KernelGenerator
{
    private static void EmitGpu(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        if (definition.Kind != KernelKind.Epilogue)
        {
            writer.Line($"/// <summary>The key under which a device keeps the loaded kernel of <see cref=\"{definition.OpCref()}\"/>.</summary>");
            writer.Line($"private static readonly object {Names.KernelKey(op)} = new();");
            writer.Line();
            EmitGpuArgsStruct(writer, definition);
            writer.Line();
        }

        switch (definition.Kind)
        {
            case KernelKind.Pointwise:
                EmitPointwiseKernel(writer, definition);
                break;
            case KernelKind.Row:
                EmitRowKernel(writer, definition);
                break;
            case KernelKind.Epilogue:
                EmitGpuEpilogue(writer, definition);
                break;
            case KernelKind.Rotary:
                EmitRotaryKernel(writer, definition);
                break;
        }
    }

    /// <summary>Writes the statement that fetches (loading once per device) the op's kernel into <c>kernel</c>.</summary>
    private static void EmitLoadKernel(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        string type = KernelDelegateType(definition);
        string loader = definition.Kind == KernelKind.Row
            ? $"LoadStreamKernel<{op}GpuArgs>"
            : $"LoadAutoGroupedStreamKernel<Index1D, {op}GpuArgs>";
        writer.Line($"{type.Replace("Action<", definition.Kind == KernelKind.Row ? "Action<KernelConfig, " : "Action<")} kernel = device.GetKernel(");
        writer.Line($"    {Names.KernelKey(op)},");
        writer.Line($"    static accelerator => accelerator.{loader}({KernelName(definition)}));");
    }

    /// <summary>Writes <c>args</c>, the kernel's argument struct, from the op's locals.</summary>
    private static void EmitGpuArgs(IndentedWriter writer, DefinitionModel definition)
    {
        ParameterModel? lead = definition.Kind is KernelKind.Pointwise or KernelKind.Row ? definition.LeadInput() : null;
        writer.Line($"{definition.Name}GpuArgs args = new()");
        writer.Open();
        if (definition.Kind == KernelKind.Rotary)
        {
            writer.Line($"{Names.Field(DefinitionFacts.RotaryInputName)} = {DefinitionFacts.RotaryInputName}.View<float>(),");
        }

        foreach (ParameterModel input in definition.Inputs())
        {
            writer.Line($"{Names.Field(input.Name)} = {input.Name}.View<float>(),");
            if (lead is not null && input != lead)
            {
                writer.Line($"{Names.Field(Names.Length(input.Name))} = {Names.Length(input.Name)},");
            }
        }

        foreach (string value in UniformFields(definition))
        {
            writer.Line($"{FieldOf(value)} = {value},");
        }

        writer.Line("Output = output.View<float>(),");
        switch (definition.Kind)
        {
            case KernelKind.Row:
                writer.Line("RowLength = rowLength,");
                break;
            case KernelKind.Rotary:
                writer.Line("HeadDim = headDim,");
                writer.Line("RowsPerToken = rowsPerToken,");
                writer.Line("StartPosition = startPosition,");
                writer.Line("Adjacent = layout == RopeLayout.Adjacent ? 1 : 0,");
                break;
        }

        writer.Close(";");
    }

    private static void EmitGpuArgsStruct(IndentedWriter writer, DefinitionModel definition)
    {
        ParameterModel? lead = definition.Kind is KernelKind.Pointwise or KernelKind.Row ? definition.LeadInput() : null;
        writer.Line($"/// <summary>The ILGPU arguments of <see cref=\"{definition.OpCref()}\"/>: views and scalars, passed by value.</summary>");
        writer.Open($"internal struct {definition.Name}GpuArgs");
        if (definition.Kind == KernelKind.Rotary)
        {
            writer.Line($"public ArrayView<float> {Names.Field(DefinitionFacts.RotaryInputName)};");
        }

        foreach (ParameterModel input in definition.Inputs())
        {
            writer.Line($"public ArrayView<float> {Names.Field(input.Name)};");
            if (lead is not null && input != lead)
            {
                writer.Line($"public int {Names.Field(Names.Length(input.Name))};");
            }
        }

        foreach (string value in UniformFields(definition))
        {
            writer.Line($"public float {FieldOf(value)};");
        }

        writer.Line("public ArrayView<float> Output;");
        switch (definition.Kind)
        {
            case KernelKind.Row:
                writer.Line("public int RowLength;");
                break;
            case KernelKind.Rotary:
                writer.Line("public int HeadDim;");
                writer.Line("public int RowsPerToken;");
                writer.Line("public int StartPosition;");
                writer.Line("public int Adjacent;");
                break;
        }

        writer.Close();
    }

    private static void EmitPointwiseKernel(IndentedWriter writer, DefinitionModel definition)
    {
        ParameterModel lead = definition.LeadInput();
        HashSet<string> used = definition.UsedInResults();
        ExpressionPrinter printer = ExpressionPrinter.For(PrintMode.Gpu, definition);
        writer.Line($"/// <summary>The ILGPU kernel of <see cref=\"{definition.OpCref()}\"/>: one element per thread.</summary>");
        writer.Open($"private static void {KernelName(definition)}(Index1D index, {definition.Name}GpuArgs args)");
        EmitUniformValues(writer, definition, PrintMode.Gpu, static value => "args." + FieldOf(value));
        foreach (ParameterModel input in definition.Inputs().Where(p => used.Contains(p.Name)))
        {
            string field = Names.Field(input.Name);
            writer.Line(input == lead
                ? $"float {input.Name} = args.{field}[index];"
                : $"float {input.Name} = args.{field}[index.X % args.{Names.Field(Names.Length(input.Name))}];");
        }

        writer.Line($"args.Output[index] = {printer.Print(definition.Results[0])};");
        writer.Close();
    }

    private static void EmitRowKernel(IndentedWriter writer, DefinitionModel definition)
    {
        ParameterModel lead = definition.LeadInput();
        HashSet<string> used = definition.UsedInResults();
        HashSet<string> needed = new(used.Concat(definition.UsedInUniforms()));
        List<ReductionStep> steps = ReductionSteps(definition);
        HashSet<string> reductionSources = new(Sources(steps));
        ExpressionPrinter printer = ExpressionPrinter.For(PrintMode.Gpu, definition);

        writer.Line($"/// <summary>");
        writer.Line($"/// The ILGPU kernel of <see cref=\"{definition.OpCref()}\"/>: one group per row, whose threads take the columns");
        writer.Line("/// Group.IdxX, Group.IdxX + Group.DimX, ... of the row.");
        writer.Line("/// </summary>");
        writer.Open($"private static void {KernelName(definition)}({definition.Name}GpuArgs args)");
        writer.Line("int length = args.RowLength;");
        writer.Line("int rowStart = Grid.IdxX * length;");
        IEnumerable<ParameterModel> offsetInputs = definition.Inputs().Skip(1)
            .Where(p => used.Contains(p.Name) || reductionSources.Contains(p.Name));
        foreach (ParameterModel input in offsetInputs)
        {
            writer.Line($"int {Names.Start(input.Name)} = rowStart % args.{Names.Field(Names.Length(input.Name))};");
        }

        foreach (ParameterModel scalar in definition.Scalars().Where(p => needed.Contains(p.Name)))
        {
            writer.Line($"float {scalar.Name} = args.{FieldOf(scalar.Name)};");
        }

        ParameterModel? rowLength = definition.WithRole(ParameterRole.RowLength);
        if (rowLength is not null && needed.Contains(rowLength.Name))
        {
            writer.Line($"int {rowLength.Name} = length;");
        }

        writer.Line();
        if (steps.Count > 0)
        {
            // Per-thread partial reductions, then group-wide ones.
            writer.Line($"// Reduce the row: {DescribeReductions(steps)}.");
            writer.Line("ArrayView<float> scratch = SharedMemory.Allocate<float>(GroupReduce.ScratchLength);");
            EmitReductionAccumulators(writer, steps);

            writer.Open("for (int column = Group.IdxX; column < length; column += Group.DimX)");
            foreach (string source in Sources(steps))
            {
                writer.Line($"float {source} = {GpuRowElement(definition, source, lead)};");
            }

            foreach (ReductionStep step in steps)
            {
                EmitScalarReductionUpdate(writer, step, gpu: true);
            }

            writer.Close();
            writer.Line();
            foreach (ReductionStep step in steps)
            {
                ParameterModel p = step.Parameter;
                switch (p.Reduction)
                {
                    case ReductionKind.Max:
                        writer.Line($"{p.Name} = GroupReduce.Max({p.Name}, scratch);");
                        break;
                    case ReductionKind.SumExp:
                        // Rescale every thread's partial sum to the group's max before adding them up.
                        string group = Names.Group(step.MaxName);
                        writer.Line($"float {group} = GroupReduce.Max({step.MaxName}, scratch);");
                        writer.Line($"{p.Name} = GroupReduce.Sum({p.Name} * MathF.Exp({step.MaxName} - {group}), scratch);");
                        writer.Line($"{step.MaxName} = {group};");
                        break;
                    default:
                        writer.Line($"{p.Name} = GroupReduce.Sum({p.Name}, scratch);");
                        break;
                }
            }

            writer.Line();
        }

        EmitUniformDeclarations(writer, definition, "Subexpressions that are the same for the whole row.", PrintMode.Gpu);

        // The map.
        writer.Line("// Map every element of the row.");
        writer.Open("for (int column = Group.IdxX; column < length; column += Group.DimX)");
        foreach (ParameterModel input in definition.Inputs().Where(p => used.Contains(p.Name)))
        {
            writer.Line($"float {input.Name} = {GpuRowElement(definition, input.Name, lead)};");
        }

        writer.Line($"args.Output[rowStart + column] = {printer.Print(definition.Results[0])};");
        writer.Close();
        writer.Close();
    }

    /// <summary>The element of input <paramref name="name"/> at <c>column</c> of the current row, in a row kernel.</summary>
    private static string GpuRowElement(DefinitionModel definition, string name, ParameterModel lead) =>
        name == lead.Name
            ? $"args.{Names.Field(name)}[rowStart + column]"
            : $"args.{Names.Field(name)}[{Names.Start(name)} + column]";

    private static void EmitGpuEpilogue(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        ParameterModel product = definition.WithRole(ParameterRole.Product)!;
        HashSet<string> used = definition.UsedInResults();
        ExpressionPrinter printer = ExpressionPrinter.For(PrintMode.Gpu, definition);

        // The epilogue struct.
        writer.Line($"/// <summary>The ILGPU epilogue of <see cref=\"{definition.OpCref()}\"/>, run by MatMul.ComputeGpu on every output element.</summary>");
        writer.Open($"internal struct {op}GpuEpilogue : IGpuMatMulEpilogue");
        foreach (ParameterModel input in definition.Inputs())
        {
            writer.Line($"public ArrayView<float> {Names.Field(input.Name)};");
            writer.Line($"public int {Names.Field(Names.Length(input.Name))};");
        }

        foreach (string value in UniformFields(definition))
        {
            writer.Line($"public float {FieldOf(value)};");
        }

        writer.Line();
        writer.Line("/// <inheritdoc />");
        writer.Open($"public float Apply(float {product.Name}, int row, int column, int columns)");
        EmitUniformValues(writer, definition, PrintMode.Gpu, static value => FieldOf(value));
        ParameterModel[] loads = definition.Inputs().Where(p => used.Contains(p.Name)).ToArray();
        if (loads.Length > 0)
        {
            writer.Line("int element = (row * columns) + column;");
        }

        foreach (ParameterModel input in loads)
        {
            writer.Line($"float {input.Name} = {Names.Field(input.Name)}[element % {Names.Field(Names.Length(input.Name))}];");
        }

        writer.Line($"return {printer.Print(definition.Results[0])};");
        writer.Close();
        writer.Close();
        writer.Line();

        // The kernel that applies it to an existing product.
        writer.Line("/// <summary>");
        writer.Line($"/// Applies <see cref=\"{op}GpuEpilogue\"/> in place to a product [M, N] already in <paramref name=\"product\"/>, one");
        writer.Line("/// element per thread: the epilogue compiled as a kernel of its own, for GeneratedKernels.");
        writer.Line("/// </summary>");
        writer.Open($"private static void {KernelName(definition)}(Index1D index, ArrayView<float> product, {op}GpuEpilogue epilogue, int columns)");
        writer.Line("product[index] = epilogue.Apply(product[index], index.X / columns, index.X % columns, columns);");
        writer.Close();
    }

    private static void EmitRotaryKernel(IndentedWriter writer, DefinitionModel definition)
    {
        ParameterModel first = definition.WithRole(ParameterRole.PairFirst)!;
        ParameterModel second = definition.WithRole(ParameterRole.PairSecond)!;
        HashSet<string> used = definition.UsedInResults();
        ExpressionPrinter printer = ExpressionPrinter.For(PrintMode.Gpu, definition);
        string x = Names.Field(DefinitionFacts.RotaryInputName);

        writer.Line($"/// <summary>The ILGPU kernel of <see cref=\"{definition.OpCref()}\"/>: one pair per thread.</summary>");
        writer.Open($"private static void {KernelName(definition)}(Index1D index, {definition.Name}GpuArgs args)");
        writer.Line("// Thread `index` rotates pair `pair` of row `row`; the row's token picks the table row.");
        writer.Line("int half = args.HeadDim / 2;");
        writer.Line("int pair = index.X % half;");
        writer.Line("int row = index.X / half;");
        writer.Line("int tableIndex = ((args.StartPosition + (row / args.RowsPerToken)) * half) + pair;");
        writer.Line("int first = (row * args.HeadDim) + (args.Adjacent != 0 ? 2 * pair : pair);");
        writer.Line("int second = first + (args.Adjacent != 0 ? 1 : half);");
        EmitUniformValues(writer, definition, PrintMode.Gpu, static value => "args." + FieldOf(value));
        writer.Line($"float {first.Name} = args.{x}[first];");
        writer.Line($"float {second.Name} = args.{x}[second];");
        foreach (ParameterModel table in definition.Inputs().Where(p => used.Contains(p.Name)))
        {
            writer.Line($"float {table.Name} = args.{Names.Field(table.Name)}[tableIndex];");
        }

        writer.Line($"float rotated0 = {printer.Print(definition.Results[0])};");
        writer.Line($"float rotated1 = {printer.Print(definition.Results[1])};");
        writer.Line("args.Output[first] = rotated0;");
        writer.Line("args.Output[second] = rotated1;");
        writer.Close();
    }
}
