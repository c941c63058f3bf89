using System.Linq;
using Kiln.Generators.Helpers;
using Kiln.Generators.Models;

namespace Kiln.Generators;

// Emission of the public ops: one method per definition, named like it, over tensors. It checks dtypes (float32,
// contiguous), devices (all tensors on one) and shapes (broadcast rules of the kind), computes the hoisted
// uniforms once, and runs the CPU path or the ILGPU kernel depending on the device. Row ops also get a public
// single-row span helper ({Name}Row) for hand-written kernels.

/// <content>Public ops.</content>
public sealed partial class KernelGenerator
{
    private static void EmitOp(IndentedWriter writer, DefinitionModel definition)
    {
        EmitOpDocumentation(writer, definition);
        string parameters = string.Join(", ", definition.OpParameters().Select(static p => $"{p.Type} {p.Name}"));
        writer.Open($"public static void {definition.Name}({parameters})");
        switch (definition.Kind)
        {
            case KernelKind.Pointwise:
                EmitPointwiseOpBody(writer, definition);
                break;
            case KernelKind.Row:
                EmitRowOpBody(writer, definition);
                break;
            case KernelKind.Epilogue:
                EmitEpilogueOpBody(writer, definition);
                break;
            case KernelKind.Rotary:
                EmitRotaryOpBody(writer, definition);
                break;
        }

        writer.Close();
        if (definition.Kind == KernelKind.Row)
        {
            writer.Line();
            EmitRowSpanHelper(writer, definition);
        }
    }

    private static void EmitOpDocumentation(IndentedWriter writer, DefinitionModel definition)
    {
        string name = definition.Name;
        string cref = $"<see cref=\"{definition.DefinitionCref}\"/>";
        writer.Line("/// <summary>");
        switch (definition.Kind)
        {
            case KernelKind.Pointwise:
                ParameterModel lead = definition.LeadInput();
                string arguments = string.Join(
                    ", ",
                    definition.Parameters.Select(static p => p.Role == ParameterRole.Input ? p.Name + "[i]" : p.Name));
                writer.Line($"/// Computes {cref} for every element: output[i] = {name}({arguments}).");
                writer.Line("/// </summary>");
                writer.Line("/// <remarks>");
                writer.Line($"/// An input whose shape, without leading 1s, ends the shape of <paramref name=\"{lead.Name}\"/> is broadcast over the");
                writer.Line("/// leading dimensions. The output may be one of the inputs (in place). On the CPU the op allocates nothing.");
                writer.Line("/// </remarks>");
                break;
            case KernelKind.Row:
                ParameterModel rowInput = definition.LeadInput();
                writer.Line($"/// Computes {cref} for every row (the last axis) of");
                writer.Line($"/// <paramref name=\"{rowInput.Name}\"/>: first the row's reductions, then every element from them.");
                writer.Line("/// </summary>");
                writer.Line("/// <remarks>");
                writer.Line($"/// Other inputs have the shape of <paramref name=\"{rowInput.Name}\"/> or, without leading 1s, a suffix of it that holds");
                writer.Line("/// whole rows (such as a [N] weight), broadcast over the leading dimensions. The output may be one of the inputs");
                writer.Line("/// (in place). On the CPU the op allocates nothing.");
                writer.Line("/// </remarks>");
                break;
            case KernelKind.Epilogue:
                ParameterModel product = definition.WithRole(ParameterRole.Product)!;
                string extras = string.Join(", ", definition.Parameters.Select(p => p.Role switch
                {
                    ParameterRole.Product => p.Name,
                    ParameterRole.Input => p.Name + "[m, n]",
                    _ => p.Name,
                }));
                writer.Line($"/// Computes the matrix product a · wᵀ with {cref} fused into its store:");
                writer.Line($"/// output[m, n] = {name}({extras}) where {product.Name} = (a · wᵀ)[m, n].");
                writer.Line("/// </summary>");
                writer.Line("/// <remarks>");
                writer.Line("/// Extra operands are [M, N] or, without leading 1s, a suffix of it that holds whole rows (such as a [N] bias).");
                writer.Line("/// The output must not overlap a or w. On the CPU the op allocates nothing beyond what MatMul allocates.");
                writer.Line("/// </remarks>");
                writer.Line("/// <param name=\"a\">The left operand [M, K], float32.</param>");
                writer.Line("/// <param name=\"w\">The weight [N, K] (rows are output features, as PyTorch's Linear stores them).</param>");
                break;
            case KernelKind.Rotary:
                ParameterModel x0 = definition.WithRole(ParameterRole.PairFirst)!;
                ParameterModel x1 = definition.WithRole(ParameterRole.PairSecond)!;
                writer.Line($"/// Computes {cref} for every pair ({x0.Name}, {x1.Name}) of the last axis of");
                writer.Line("/// <paramref name=\"x\"/> [T, ..., Dh]; token t reads row startPosition + t of every table.");
                writer.Line("/// </summary>");
                writer.Line("/// <remarks>");
                writer.Line("/// <paramref name=\"layout\"/> says which elements pair up: (2i, 2i + 1) or (i, i + Dh / 2). The output may be");
                writer.Line("/// <paramref name=\"x\"/> (in place). On the CPU the op allocates nothing.");
                writer.Line("/// </remarks>");
                writer.Line("/// <param name=\"x\">The input [T, ..., Dh], float32, Dh even.</param>");
                break;
        }

        // The definition's own inputs and scalars.
        bool first = true;
        foreach (ParameterModel input in definition.Inputs())
        {
            string text = definition.Kind switch
            {
                KernelKind.Rotary => "A table [S, Dh / 2], float32, with S at least startPosition + T.",
                KernelKind.Epilogue => "An extra operand, float32: [M, N] or a broadcast suffix of it.",
                _ when first => "An input, float32; the output has its shape.",
                _ => $"An input, float32: the shape of <paramref name=\"{definition.LeadInput().Name}\"/> or a broadcast "
                    + "suffix of it.",
            };
            writer.Line($"/// <param name=\"{input.Name}\">{text}</param>");
            first = false;
        }

        foreach (ParameterModel scalar in definition.Scalars())
        {
            writer.Line($"/// <param name=\"{scalar.Name}\">A scalar, the same for every element.</param>");
        }

        if (definition.Kind == KernelKind.Rotary)
        {
            writer.Line("/// <param name=\"startPosition\">The position of the first token (row of the tables).</param>");
            writer.Line("/// <param name=\"layout\">How the elements of a head pair up.</param>");
        }

        string shape = definition.Kind switch
        {
            KernelKind.Epilogue => "[M, N]",
            KernelKind.Rotary => "the shape of <paramref name=\"x\"/>",
            _ => $"the shape of <paramref name=\"{definition.LeadInput().Name}\"/>",
        };
        writer.Line($"/// <param name=\"output\">Receives the result: float32, {shape}.</param>");
        writer.Line("/// <exception cref=\"ArgumentException\">");
        writer.Line("/// A tensor is not contiguous float32, a shape does not fit, or the tensors are on different devices.");
        writer.Line("/// </exception>");
    }

    private static void EmitCommonChecks(IndentedWriter writer, DefinitionModel definition, string lead)
    {
        // Dtypes first, then devices, all against the lead tensor.
        string op = definition.Name;
        string[] tensors = definition.OpParameters()
            .Where(static p => p.Type == "Tensor")
            .Select(static p => p.Name)
            .ToArray();
        writer.Line("// Check dtypes, devices and shapes.");
        if (definition.Kind == KernelKind.Epilogue)
        {
            writer.Line($"OpChecks.MatMulShapes(\"{op}\", a, w, output);");
        }

        bool epilogue = definition.Kind == KernelKind.Epilogue;
        foreach (string tensor in tensors.Where(t => !epilogue || (t != "a" && t != "w" && t != "output")))
        {
            writer.Line($"OpChecks.Float32(\"{op}\", \"{tensor}\", {tensor});");
        }

        foreach (string tensor in tensors.Where(t => t != lead))
        {
            writer.Line($"OpChecks.SameDevice(\"{op}\", \"{tensor}\", {tensor}, \"{lead}\", {lead});");
        }
    }

    private static void EmitDeviceSwitch(
        IndentedWriter writer,
        DefinitionModel definition,
        System.Action cpu,
        System.Action gpu,
        bool namesDevices = true)
    {
        writer.Open(namesDevices ? "if (output.Device is CpuDevice cpu)" : "if (output.Device is CpuDevice)");
        cpu();
        writer.Close();
        writer.Open(namesDevices ? "else if (output.Device is IlgpuDevice device)" : "else if (output.Device is IlgpuDevice)");
        gpu();
        writer.Close();
        writer.Open("else");
        writer.Line($"throw new NotSupportedException($\"{definition.Name}: device {{output.Device.Name}} has no kernels; use a cpu, cuda or ilgpu-cpu device.\");");
        writer.Close();
    }

    private static void EmitPointwiseOpBody(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        ParameterModel lead = definition.LeadInput();
        ParameterModel[] broadcast = definition.Inputs().Skip(1).ToArray();
        EmitCommonChecks(writer, definition, lead.Name);
        writer.Line($"OpChecks.SameShape(\"{op}\", \"output\", output, \"{lead.Name}\", {lead.Name});");
        foreach (ParameterModel input in broadcast)
        {
            writer.Line($"int {Names.Length(input.Name)} = OpChecks.BroadcastLength(\"{op}\", \"{input.Name}\", {input.Name}, \"{lead.Name}\", {lead.Name});");
        }

        writer.Line("int length = (int)output.Length;");
        writer.Open("if (length == 0)").Line("return;").Close();
        writer.Line();
        EmitUniformDeclarations(writer, definition, "Subexpressions that are the same for every element, computed once.");

        // Dispatch.
        writer.Line("// Run on the device that holds the tensors.");
        EmitDeviceSwitch(
            writer,
            definition,
            () =>
            {
                EmitCpuArgsStart(writer, definition, op, lead);
                if (broadcast.Length > 0)
                {
                    string segment = broadcast.Aggregate(
                        "length",
                        static (inner, input) => $"Math.Min({inner}, {Names.Length(input.Name)})");
                    writer.Line($"Segment = {segment},");
                }

                writer.Close(";");
                writer.Line($"cpu.Pool.For(length, ParallelGrain, &{op}CpuRange, &args);");
            },
            () =>
            {
                EmitLoadKernel(writer, definition);
                EmitGpuArgs(writer, definition);
                writer.Line("kernel(length, args);");
            });
    }

    private static void EmitRowOpBody(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        ParameterModel lead = definition.LeadInput();
        EmitCommonChecks(writer, definition, lead.Name);
        writer.Line($"OpChecks.MinRank(\"{op}\", \"{lead.Name}\", {lead.Name}, 1, \"[..., N]\");");
        writer.Line($"OpChecks.SameShape(\"{op}\", \"output\", output, \"{lead.Name}\", {lead.Name});");
        writer.Line($"int rowLength = {lead.Name}.Shape[^1];");
        foreach (ParameterModel input in definition.Inputs().Skip(1))
        {
            writer.Line($"int {Names.Length(input.Name)} = OpChecks.BroadcastLength(\"{op}\", \"{input.Name}\", {input.Name}, \"{lead.Name}\", {lead.Name}, rowLength);");
        }

        writer.Open("if (output.Length == 0)").Line("return;").Close();
        writer.Line();
        writer.Line("int rows = (int)(output.Length / rowLength);");
        writer.Line();

        // Dispatch.
        writer.Line("// Run on the device that holds the tensors: rows split across threads, or one group per row.");
        EmitDeviceSwitch(
            writer,
            definition,
            () =>
            {
                EmitCpuArgsStart(writer, definition, op, lead);
                writer.Line("RowLength = rowLength,");
                writer.Close(";");
                writer.Line($"cpu.Pool.For(rows, Math.Max(1, ParallelGrain / rowLength), &{op}CpuRange, &args);");
            },
            () =>
            {
                EmitLoadKernel(writer, definition);
                EmitGpuArgs(writer, definition);
                writer.Line("kernel(new KernelConfig(rows, GroupReduce.GroupSize(device.Accelerator, rowLength)), args);");
            });
    }

    private static void EmitRowSpanHelper(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        ParameterModel lead = definition.LeadInput();
        string cref = $"<see cref=\"{definition.DefinitionCref}\"/>";
        string spans = string.Join(", ", definition.Inputs().Select(static p => $"ReadOnlySpan<float> {p.Name}"));
        string scalars = string.Concat(definition.Scalars().Select(static p => $", float {p.Name}"));

        // Documentation.
        writer.Line("/// <summary>");
        writer.Line($"/// Computes {cref} over one row held in spans, with SIMD on the calling");
        writer.Line("/// thread: a building block for hand-written kernels. Every span holds one row;");
        writer.Line($"/// <paramref name=\"output\"/> may be <paramref name=\"{lead.Name}\"/>.");
        writer.Line("/// </summary>");
        foreach (ParameterModel input in definition.Inputs())
        {
            writer.Line($"/// <param name=\"{input.Name}\">{(input == lead ? "The row." : "An input row, as long as the row.")}</param>");
        }

        foreach (ParameterModel scalar in definition.Scalars())
        {
            writer.Line($"/// <param name=\"{scalar.Name}\">A scalar.</param>");
        }

        writer.Line("/// <param name=\"output\">Receives the result row.</param>");
        writer.Line($"/// <exception cref=\"ArgumentException\">A span's length differs from that of <paramref name=\"{lead.Name}\"/>.</exception>");
        writer.Open($"public static void {op}Row({spans}{scalars}, Span<float> output)");

        // Every span is one row long.
        writer.Line("// Every span holds one row.");
        foreach (string other in definition.Inputs().Skip(1).Select(static p => p.Name).Concat(new[] { "output" }))
        {
            writer.Open($"if ({other}.Length != {lead.Name}.Length)");
            writer.Line($"throw new ArgumentException($\"{op}Row: {other} holds {{{other}.Length}} values but {lead.Name} holds {{{lead.Name}.Length}}; pass spans of one row each.\", nameof({other}));");
            writer.Close();
            writer.Line();
        }

        string pins = string.Join(", ", definition.Inputs()
            .Select(static p => $"{Names.Data(p.Name)} = {p.Name}")
            .Concat(new[] { "outputData = output" }));
        writer.Open($"fixed (float* {pins})");
        writer.Line($"{op}RowCore({RowCoreArguments(definition, $"{lead.Name}.Length", static p => Names.Data(p.Name), static s => s, "outputData")});");
        writer.Close();
        writer.Close();
    }

    private static void EmitEpilogueOpBody(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        EmitCommonChecks(writer, definition, "a");
        writer.Line("int columns = output.Shape[1];");
        foreach (ParameterModel input in definition.Inputs())
        {
            writer.Line($"int {Names.Length(input.Name)} = OpChecks.BroadcastLength(\"{op}\", \"{input.Name}\", {input.Name}, \"output\", output, columns);");
        }

        writer.Open("if (output.Length == 0)").Line("return;").Close();
        writer.Line();
        EmitUniformDeclarations(writer, definition, "Subexpressions that are the same for every element, computed once.");

        // Dispatch.
        writer.Line("// Run the matrix product with the epilogue fused into its store, on the device that holds the tensors.");
        EmitDeviceSwitch(
            writer,
            definition,
            () =>
            {
                writer.Line($"{op}Epilogue epilogue = new()");
                writer.Open();
                foreach (ParameterModel input in definition.Inputs())
                {
                    writer.Line($"{Names.Field(input.Name)} = {input.Name}.FloatPointer,");
                    writer.Line($"{Names.Field(Names.Length(input.Name))} = {Names.Length(input.Name)},");
                }

                foreach (string value in UniformFields(definition))
                {
                    writer.Line($"{FieldOf(value)} = {value},");
                }

                writer.Line("Columns = columns,");
                writer.Close(";");
                writer.Line("global::Kiln.Kernels.MatMul.Compute(a, w, output, ref epilogue);");
            },
            () =>
            {
                writer.Line($"{op}GpuEpilogue epilogue = new()");
                writer.Open();
                foreach (ParameterModel input in definition.Inputs())
                {
                    writer.Line($"{Names.Field(input.Name)} = {input.Name}.View<float>(),");
                    writer.Line($"{Names.Field(Names.Length(input.Name))} = {Names.Length(input.Name)},");
                }

                foreach (string value in UniformFields(definition))
                {
                    writer.Line($"{FieldOf(value)} = {value},");
                }

                writer.Close(";");
                writer.Line("global::Kiln.Kernels.MatMul.ComputeGpu(a, w, output, epilogue);");
            },
            namesDevices: false);
    }

    private static void EmitRotaryOpBody(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        string x = DefinitionFacts.RotaryInputName;
        EmitCommonChecks(writer, definition, x);
        writer.Line($"OpChecks.Layout(\"{op}\", layout);");
        writer.Line($"OpChecks.SameShape(\"{op}\", \"output\", output, \"{x}\", {x});");
        writer.Line($"(int tokens, int rowsPerToken, int headDim) = OpChecks.RotaryInput(\"{op}\", {x}, startPosition);");
        foreach (ParameterModel table in definition.Inputs())
        {
            writer.Line($"OpChecks.RotaryTable(\"{op}\", \"{table.Name}\", {table.Name}, headDim, startPosition, tokens);");
        }

        writer.Open("if (output.Length == 0)").Line("return;").Close();
        writer.Line();
        writer.Line("int rows = tokens * rowsPerToken;");
        writer.Line();
        EmitUniformDeclarations(writer, definition, "Subexpressions that are the same for every pair, computed once.");

        // Dispatch.
        writer.Line("// Run on the device that holds the tensors: rows of Dh split across threads, or one pair per GPU thread.");
        EmitDeviceSwitch(
            writer,
            definition,
            () =>
            {
                writer.Line($"{op}CpuArgs args = new()");
                writer.Open();
                writer.Line($"{Names.Field(x)} = {x}.FloatPointer,");
                foreach (ParameterModel table in definition.Inputs())
                {
                    writer.Line($"{Names.Field(table.Name)} = {table.Name}.FloatPointer,");
                }

                foreach (string value in UniformFields(definition))
                {
                    writer.Line($"{FieldOf(value)} = {value},");
                }

                writer.Line("Output = output.FloatPointer,");
                writer.Line("HeadDim = headDim,");
                writer.Line("RowsPerToken = rowsPerToken,");
                writer.Line("StartPosition = startPosition,");
                writer.Close(";");
                writer.Line($"delegate*<void*, int, int, void> range = layout == RopeLayout.Adjacent ? &{op}AdjacentCpuRange : &{op}HalfSplitCpuRange;");
                writer.Line("cpu.Pool.For(rows, Math.Max(1, ParallelGrain / headDim), range, &args);");
            },
            () =>
            {
                EmitLoadKernel(writer, definition);
                EmitGpuArgs(writer, definition);
                writer.Line("kernel(rows * (headDim / 2), args);");
            });
    }

    /// <summary>The arguments of a row core call: the length, the inputs' pointers, the scalars, the output.</summary>
    private static string RowCoreArguments(
        DefinitionModel definition,
        string length,
        System.Func<ParameterModel, string> pointer,
        System.Func<string, string> scalar,
        string output)
    {
        return string.Join(", ", new[] { length }
            .Concat(definition.Inputs().Select(pointer))
            .Concat(UniformFields(definition).Select(scalar))
            .Concat(new[] { output }));
    }

    /// <summary>
    /// Opens the initializer of the CPU arguments: a pointer per input, the broadcast length of every input but the
    /// lead one, the uniform values, and the output pointer; the caller adds its own fields and closes it.
    /// </summary>
    private static void EmitCpuArgsStart(IndentedWriter writer, DefinitionModel definition, string op, ParameterModel lead)
    {
        writer.Line($"{op}CpuArgs args = new()");
        writer.Open();
        foreach (ParameterModel input in definition.Inputs())
        {
            writer.Line($"{Names.Field(input.Name)} = {input.Name}.FloatPointer,");
            if (input != lead)
            {
                writer.Line($"{Names.Field(Names.Length(input.Name))} = {Names.Length(input.Name)},");
            }
        }

        foreach (string value in UniformFields(definition))
        {
            writer.Line($"{FieldOf(value)} = {value},");
        }

        writer.Line("Output = output.FloatPointer,");
    }
}
