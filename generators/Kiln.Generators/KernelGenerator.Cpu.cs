using System.Collections.Generic;
using System.Linq;
using Kiln.Generators.Helpers;
using Kiln.Generators.Models;

namespace Kiln.Generators;

// Emission of the CPU paths. Every loop over contiguous floats has the same shape: a Vector512 block, a Vector256
// block for what is left (or everything, without AVX-512), then a scalar tail; the definition's expression is
// printed once per form. Work is split across CpuDevice.Pool through an unmanaged argument struct passed by address
// and a static range function, so a call allocates nothing. Row ops reduce each row in one pass (all reductions
// together, softmax's max and sum online), then map it; rotary ops walk the pairs of each head in either layout.

/// <content>CPU paths.</content>
public sealed partial class KernelGenerator
{
    private static readonly PrintMode[] s_vectorModes = { PrintMode.Vector512, PrintMode.Vector256 };

    private static string VectorType(PrintMode mode) => mode == PrintMode.Vector512 ? "Vector512" : "Vector256";

    private static void EmitPointwiseCpu(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        ParameterModel lead = definition.LeadInput();
        ParameterModel[] broadcast = definition.Inputs().Skip(1).ToArray();

        // The argument struct.
        writer.Line($"/// <summary>The CPU arguments of <see cref=\"{definition.OpCref()}\"/>, passed to the worker pool by address.</summary>");
        writer.Open($"private struct {op}CpuArgs");
        EmitPointerFields(writer, definition, withLengths: true);
        writer.Line("public float* Output;");
        if (broadcast.Length > 0)
        {
            writer.Line("public int Segment;");
        }

        writer.Close();
        writer.Line();

        // The range function: contiguous segments of the range.
        writer.Line($"/// <summary>Runs <see cref=\"{definition.OpCref()}\"/> over the elements [start, end) on one thread.</summary>");
        writer.Open($"private static void {op}CpuRange(void* state, int start, int end)");
        writer.Line($"{op}CpuArgs* args = ({op}CpuArgs*)state;");
        string scalars = string.Concat(UniformFields(definition).Select(static value => $", args->{FieldOf(value)}"));
        if (broadcast.Length == 0)
        {
            writer.Line($"{op}Span(end - start, args->{Names.Field(lead.Name)} + start{scalars}, args->Output + start);");
        }
        else
        {
            writer.Line();
            writer.Line("// Walk the range in segments inside which no broadcast input wraps around.");
            writer.Open("for (int index = start; index < end;)");
            writer.Line("int segmentEnd = (int)Math.Min(end, ((long)(index / args->Segment) + 1) * args->Segment);");
            string pointers = string.Join(", ", definition.Inputs().Select(input => input == lead
                ? $"args->{Names.Field(input.Name)} + index"
                : $"args->{Names.Field(input.Name)} + (index % args->{Names.Field(Names.Length(input.Name))})"));
            writer.Line($"{op}Span(segmentEnd - index, {pointers}{scalars}, args->Output + index);");
            writer.Line("index = segmentEnd;");
            writer.Close();
        }

        writer.Close();
        writer.Line();

        // The span function: the vector and scalar loops.
        string parameters = string.Join(", ", new[] { "int length" }
            .Concat(definition.Inputs().Select(static p => $"float* {Names.Data(p.Name)}"))
            .Concat(UniformFields(definition).Select(static value => $"float {value}"))
            .Concat(new[] { "float* outputData" }));
        writer.Line($"/// <summary>Computes <see cref=\"{definition.DefinitionCref}\"/> over <paramref name=\"length\"/> contiguous elements.</summary>");
        writer.Open($"private static void {op}Span({parameters})");
        writer.Line("// Blocks of 16 lanes, then of 8, then single elements: the definition in three forms.");
        writer.Line("int index = 0;");
        EmitMapLoops(writer, definition, definition.Results[0], MapLoads(definition, definition.Results[0]));
        writer.Close();
    }

    private static void EmitRowCpu(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        ParameterModel lead = definition.LeadInput();

        // The argument struct.
        writer.Line($"/// <summary>The CPU arguments of <see cref=\"{definition.OpCref()}\"/>, passed to the worker pool by address.</summary>");
        writer.Open($"private struct {op}CpuArgs");
        EmitPointerFields(writer, definition, withLengths: true);
        writer.Line("public float* Output;");
        writer.Line("public int RowLength;");
        writer.Close();
        writer.Line();

        // The range function: one row at a time.
        writer.Line($"/// <summary>Runs <see cref=\"{definition.OpCref()}\"/> over the rows [start, end) on one thread.</summary>");
        writer.Open($"private static void {op}CpuRange(void* state, int start, int end)");
        writer.Line($"{op}CpuArgs* args = ({op}CpuArgs*)state;");
        writer.Open("for (int row = start; row < end; row++)");
        writer.Line("int rowStart = row * args->RowLength;");
        string arguments = RowCoreArguments(
            definition,
            "args->RowLength",
            input => input == lead
                ? $"args->{Names.Field(input.Name)} + rowStart"
                : $"args->{Names.Field(input.Name)} + (rowStart % args->{Names.Field(Names.Length(input.Name))})",
            static value => $"args->{FieldOf(value)}",
            "args->Output + rowStart");
        writer.Line($"{op}RowCore({arguments});");
        writer.Close();
        writer.Close();
        writer.Line();

        // The row core: reductions, uniforms, map.
        string parameters = string.Join(", ", new[] { "int length" }
            .Concat(definition.Inputs().Select(static p => $"float* {Names.Data(p.Name)}"))
            .Concat(UniformFields(definition).Select(static value => $"float {value}"))
            .Concat(new[] { "float* outputData" }));
        writer.Line($"/// <summary>Computes one row of <see cref=\"{definition.OpCref()}\"/>: the reductions, then every element.</summary>");
        writer.Open($"private static void {op}RowCore({parameters})");
        ParameterModel? rowLength = definition.WithRole(ParameterRole.RowLength);
        if (rowLength is not null)
        {
            writer.Line($"// The row length, as the definition's parameter {rowLength.Name}.");
            writer.Line($"int {rowLength.Name} = length;");
            writer.Line();
        }

        CachedExp? cached = FindCachedExp(definition);
        List<ReductionStep> steps = ReductionSteps(definition, cached);
        if (steps.Count > 0)
        {
            EmitCpuReductions(writer, steps);
        }

        if (cached is not null)
        {
            EmitCachedExpPass(writer, cached);
        }

        EmitUniformDeclarations(writer, definition, "Subexpressions that are the same for the whole row.");
        writer.Line("// Map every element of the row.");
        writer.Line(steps.Count > 0 ? "index = 0;" : "int index = 0;");
        if (cached is null)
        {
            EmitMapLoops(writer, definition, definition.Results[0], MapLoads(definition, definition.Results[0]));
        }
        else
        {
            string term = Names.Term(cached.SumExp.Name);
            EmitMapLoops(writer, definition, cached.Map, new[] { (term, "outputData") });
        }

        writer.Close();
    }

    private static void EmitEpilogueCpu(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        ParameterModel product = definition.WithRole(ParameterRole.Product)!;
        HashSet<string> used = definition.UsedInResults();
        ParameterModel[] loads = definition.Inputs().Where(p => used.Contains(p.Name)).ToArray();

        writer.Line($"/// <summary>");
        writer.Line($"/// The CPU epilogue of <see cref=\"{definition.OpCref()}\"/>:");
        writer.Line("/// MatMul runs it on the output elements as it stores them, 16, 8 or 1 at a time along a row.");
        writer.Line("/// </summary>");
        writer.Open($"private struct {op}Epilogue : IMatMulEpilogue");
        EmitPointerFields(writer, definition, withLengths: true);
        writer.Line("public int Columns;");

        // One Apply per width.
        foreach (PrintMode mode in s_vectorModes.Concat(new[] { PrintMode.Scalar }))
        {
            bool vector = mode != PrintMode.Scalar;
            string type = vector ? $"{VectorType(mode)}<float>" : "float";
            ExpressionPrinter printer = ExpressionPrinter.For(mode, definition);
            writer.Line();
            writer.Line("/// <inheritdoc />");
            writer.Open($"public {type} Apply({type} {product.Name}, int row, int column)");
            if (loads.Length > 0)
            {
                writer.Line("int element = (row * Columns) + column;");
            }

            EmitUniformValues(writer, definition, mode, static value => FieldOf(value));
            foreach (ParameterModel input in loads)
            {
                string field = Names.Field(input.Name);
                string offset = $"element % {Names.Field(Names.Length(input.Name))}";
                writer.Line(vector
                    ? $"{type} {input.Name} = {VectorType(mode)}.Load({field} + ({offset}));"
                    : $"float {input.Name} = {field}[{offset}];");
            }

            writer.Line($"return {printer.Print(definition.Results[0])};");
            writer.Close();
        }

        writer.Close();
    }

    private static void EmitRotaryCpu(IndentedWriter writer, DefinitionModel definition)
    {
        string op = definition.Name;
        string x = DefinitionFacts.RotaryInputName;

        // The argument struct.
        writer.Line($"/// <summary>The CPU arguments of <see cref=\"{definition.OpCref()}\"/>, passed to the worker pool by address.</summary>");
        writer.Open($"private struct {op}CpuArgs");
        writer.Line($"public float* {Names.Field(x)};");
        EmitPointerFields(writer, definition, withLengths: false);
        writer.Line("public float* Output;");
        writer.Line("public int HeadDim;");
        writer.Line("public int RowsPerToken;");
        writer.Line("public int StartPosition;");
        writer.Close();

        // One range function and one row function per layout.
        foreach (bool adjacent in new[] { true, false })
        {
            string layout = adjacent ? "Adjacent" : "HalfSplit";
            string pairs = adjacent ? "adjacent pairs (2i, 2i + 1)" : "pairs (i, i + Dh / 2)";
            string tables = string.Concat(definition.Inputs().Select(t => $", args->{Names.Field(t.Name)} + tableStart"));
            string scalars = string.Concat(UniformFields(definition).Select(static value => $", args->{FieldOf(value)}"));
            writer.Line();
            writer.Line($"/// <summary>Runs <see cref=\"{definition.OpCref()}\"/> on {pairs} over the rows [start, end) on one thread.</summary>");
            writer.Open($"private static void {op}{layout}CpuRange(void* state, int start, int end)");
            writer.Line($"{op}CpuArgs* args = ({op}CpuArgs*)state;");
            writer.Line("int half = args->HeadDim / 2;");
            writer.Open("for (int row = start; row < end; row++)");
            writer.Line("// A row is one head of one token; the token's position picks the table row.");
            writer.Line("int rowStart = row * args->HeadDim;");
            writer.Line("int tableStart = (args->StartPosition + (row / args->RowsPerToken)) * half;");
            writer.Line($"{op}{layout}Row(half, args->{Names.Field(x)} + rowStart{tables}{scalars}, args->Output + rowStart);");
            writer.Close();
            writer.Close();
            writer.Line();
            EmitRotaryRow(writer, definition, adjacent);
        }
    }

    private static void EmitRotaryRow(IndentedWriter writer, DefinitionModel definition, bool adjacent)
    {
        string op = definition.Name;
        string x = DefinitionFacts.RotaryInputName;
        string layout = adjacent ? "Adjacent" : "HalfSplit";
        ParameterModel first = definition.WithRole(ParameterRole.PairFirst)!;
        ParameterModel second = definition.WithRole(ParameterRole.PairSecond)!;
        HashSet<string> used = definition.UsedInResults();
        ParameterModel[] tables = definition.Inputs().Where(p => used.Contains(p.Name)).ToArray();
        string parameters = string.Join(", ", new[] { "int half", $"float* {Names.Data(x)}" }
            .Concat(definition.Inputs().Select(static p => $"float* {Names.Data(p.Name)}"))
            .Concat(UniformFields(definition).Select(static value => $"float {value}"))
            .Concat(new[] { "float* outputData" }));
        string xData = Names.Data(x);

        writer.Line(adjacent
            ? "/// <summary>Rotates the <paramref name=\"half\"/> adjacent pairs (2i, 2i + 1) of one row.</summary>"
            : "/// <summary>Rotates the <paramref name=\"half\"/> pairs (i, i + half) of one row.</summary>");
        writer.Open($"private static void {op}{layout}Row({parameters})");
        writer.Line("int index = 0;");
        foreach (PrintMode mode in s_vectorModes)
        {
            string v = VectorType(mode);
            string type = $"{v}<float>";
            ExpressionPrinter printer = ExpressionPrinter.For(mode, definition);
            writer.Open($"if ({v}.IsHardwareAccelerated)");
            if (EmitUniformValues(writer, definition, mode, static value => value))
            {
                writer.Line();
            }

            writer.Open($"for (; index <= half - {type}.Count; index += {type}.Count)");
            if (adjacent)
            {
                writer.Line($"// {(mode == PrintMode.Vector512 ? 16 : 8)} pairs fill two vectors: split them into first and second elements.");
                writer.Line($"{type} low = {v}.Load({xData} + (2 * index));");
                writer.Line($"{type} high = {v}.Load({xData} + (2 * index) + {type}.Count);");
                writer.Line($"VectorMath.Deinterleave(low, high, out {type} {first.Name}, out {type} {second.Name});");
            }
            else
            {
                writer.Line($"{type} {first.Name} = {v}.Load({xData} + index);");
                writer.Line($"{type} {second.Name} = {v}.Load({xData} + half + index);");
            }

            foreach (ParameterModel table in tables)
            {
                writer.Line($"{type} {table.Name} = {v}.Load({Names.Data(table.Name)} + index);");
            }

            writer.Line($"{type} rotated0 = {printer.Print(definition.Results[0])};");
            writer.Line($"{type} rotated1 = {printer.Print(definition.Results[1])};");
            if (adjacent)
            {
                writer.Line("VectorMath.Interleave(rotated0, rotated1, out low, out high);");
                writer.Line("low.Store(outputData + (2 * index));");
                writer.Line($"high.Store(outputData + (2 * index) + {type}.Count);");
            }
            else
            {
                writer.Line("rotated0.Store(outputData + index);");
                writer.Line("rotated1.Store(outputData + half + index);");
            }

            writer.Close();
            writer.Close();
            writer.Line();
        }

        ExpressionPrinter scalar = ExpressionPrinter.For(PrintMode.Scalar, definition);
        string firstIndex = adjacent ? "2 * index" : "index";
        string secondIndex = adjacent ? "(2 * index) + 1" : "half + index";
        writer.Open("for (; index < half; index++)");
        writer.Line($"float {first.Name} = {xData}[{firstIndex}];");
        writer.Line($"float {second.Name} = {xData}[{secondIndex}];");
        foreach (ParameterModel table in tables)
        {
            writer.Line($"float {table.Name} = {Names.Data(table.Name)}[index];");
        }

        writer.Line($"outputData[{firstIndex}] = {scalar.Print(definition.Results[0])};");
        writer.Line($"outputData[{secondIndex}] = {scalar.Print(definition.Results[1])};");
        writer.Close();
        writer.Close();
    }

    /// <summary>Writes the pointer fields of the inputs (with their broadcast periods) and the scalar fields.</summary>
    private static void EmitPointerFields(IndentedWriter writer, DefinitionModel definition, bool withLengths)
    {
        ParameterModel? lead = definition.Kind is KernelKind.Pointwise or KernelKind.Row ? definition.LeadInput() : null;
        foreach (ParameterModel input in definition.Inputs())
        {
            writer.Line($"public float* {Names.Field(input.Name)};");
            if (withLengths && input != lead)
            {
                writer.Line($"public int {Names.Field(Names.Length(input.Name))};");
            }
        }

        foreach (string value in UniformFields(definition))
        {
            writer.Line($"public float {FieldOf(value)};");
        }
    }

    /// <summary>
    /// Writes, for a vector mode, the broadcasts of the scalars and uniforms that the results use (for the scalar
    /// mode, plain locals); <paramref name="source"/> says where each value comes from. Returns whether it wrote any.
    /// </summary>
    private static bool EmitUniformValues(
        IndentedWriter writer,
        DefinitionModel definition,
        PrintMode mode,
        System.Func<string, string> source,
        Expr? result = null)
    {
        HashSet<string> used = new();
        SortedSet<int> uniforms = new();
        IEnumerable<Expr> results = result is null ? definition.Results : new[] { result };
        foreach (Expr expr in results)
        {
            DefinitionFacts.Collect(expr, used, uniforms);
        }

        List<string> values = definition.Parameters
            .Where(p => used.Contains(p.Name))
            .Where(static p => p.Role is ParameterRole.Scalar or ParameterRole.Reduction or ParameterRole.RowLength)
            .Select(static p => p.Name)
            .Concat(uniforms.Select(Names.Uniform))
            .ToList();
        HashSet<string> rowLength = new(definition.Parameters
            .Where(static p => p.Role == ParameterRole.RowLength)
            .Select(static p => p.Name));
        HashSet<string> fields = new(UniformFields(definition));
        bool wrote = false;
        foreach (string value in values)
        {
            string from = fields.Contains(value) ? source(value) : value;
            if (mode is PrintMode.Vector512 or PrintMode.Vector256)
            {
                string cast = rowLength.Contains(value) ? "(float)" : string.Empty;
                writer.Line($"{VectorType(mode)}<float> {Names.Vec(value)} = {VectorType(mode)}.Create({cast}{from});");
                wrote = true;
            }
            else if (from != value)
            {
                writer.Line($"float {value} = {from};");
                wrote = true;
            }
        }

        return wrote;
    }

    /// <summary>The element loads of a map: every input the result uses, from its own pointer.</summary>
    private static (string Name, string Pointer)[] MapLoads(DefinitionModel definition, Expr result)
    {
        HashSet<string> used = new();
        DefinitionFacts.Collect(result, used);
        return definition.Inputs()
            .Where(p => used.Contains(p.Name))
            .Select(static p => (p.Name, Names.Data(p.Name)))
            .ToArray();
    }

    /// <summary>
    /// Writes the Vector512, Vector256 and scalar loops that map <c>index</c> .. <c>length</c> into <c>outputData</c>:
    /// each element of <paramref name="loads"/> is read from its pointer, then <paramref name="result"/> is stored.
    /// </summary>
    private static void EmitMapLoops(
        IndentedWriter writer,
        DefinitionModel definition,
        Expr result,
        IReadOnlyList<(string Name, string Pointer)> loads)
    {
        foreach (PrintMode mode in s_vectorModes)
        {
            string v = VectorType(mode);
            ExpressionPrinter printer = ExpressionPrinter.For(mode, definition);
            writer.Open($"if ({v}.IsHardwareAccelerated)");
            if (EmitUniformValues(writer, definition, mode, static value => value, result))
            {
                writer.Line();
            }

            writer.Open($"for (; index <= length - {v}<float>.Count; index += {v}<float>.Count)");
            foreach ((string name, string pointer) in loads)
            {
                writer.Line($"{v}<float> {name} = {v}.Load({pointer} + index);");
            }

            writer.Line($"{printer.Print(result, ExpressionPrinter.Primary)}.Store(outputData + index);");
            writer.Close();
            writer.Close();
            writer.Line();
        }

        ExpressionPrinter scalar = ExpressionPrinter.For(PrintMode.Scalar, definition);
        writer.Open("for (; index < length; index++)");
        foreach ((string name, string pointer) in loads)
        {
            writer.Line($"float {name} = {pointer}[index];");
        }

        writer.Line($"outputData[index] = {scalar.Print(result)};");
        writer.Close();
    }

    /// <summary>
    /// A row op whose map uses exp(source - max) of its SumExp reduction, with max its own [Reduce(Max)] parameter (a
    /// softmax). On the CPU that term is then computed once: a first pass finds the max, a second computes the terms
    /// into the output and sums them, and the map reads them back: one exp per element instead of two.
    /// </summary>
    /// <param name="SumExp">The SumExp parameter.</param>
    /// <param name="MaxName">The [Reduce(Max)] parameter of the same source.</param>
    /// <param name="Map">The result with the exp term replaced by the cached value.</param>
    private sealed record CachedExp(ParameterModel SumExp, string MaxName, Expr Map);

    /// <summary>The cached-exp plan of a row op, or null when the map does not fit it.</summary>
    private static CachedExp? FindCachedExp(DefinitionModel definition)
    {
        // One SumExp, whose source also has a [Reduce(Max)] parameter.
        ParameterModel[] sumExps = definition.Reductions().Where(static p => p.Reduction == ReductionKind.SumExp).ToArray();
        if (sumExps.Length != 1)
        {
            return null;
        }

        ParameterModel sumExp = sumExps[0];
        ParameterModel? max = definition.Reductions()
            .FirstOrDefault(p => p.Reduction == ReductionKind.Max && p.Source == sumExp.Source);
        if (max is null)
        {
            return null;
        }

        // The map uses exp(source - max), and no input besides (the terms overwrite the row when it runs in place).
        Expr difference = new BinaryExpr(BinaryOperator.Subtract, new ParameterExpr(sumExp.Source), new ParameterExpr(max.Name));
        Expr term = new CallExpr("Exp", new[] { difference }.ToEquatableArray());
        Expr map = Replace(definition.Results[0], term, new ParameterExpr(Names.Term(sumExp.Name)));
        HashSet<string> used = new();
        DefinitionFacts.Collect(map, used);
        bool usesTerm = used.Contains(Names.Term(sumExp.Name));
        bool usesInputs = definition.Inputs().Any(p => used.Contains(p.Name));
        return usesTerm && !usesInputs ? new CachedExp(sumExp, max.Name, map) : null;
    }

    private static Expr Replace(Expr expr, Expr target, Expr replacement)
    {
        if (expr.Equals(target))
        {
            return replacement;
        }

        return expr switch
        {
            NegateExpr negate => new NegateExpr(Replace(negate.Operand, target, replacement)),
            BinaryExpr binary => binary with
            {
                Left = Replace(binary.Left, target, replacement),
                Right = Replace(binary.Right, target, replacement),
            },
            CallExpr call => call with
            {
                Arguments = call.Arguments.Select(argument => Replace(argument, target, replacement)).ToEquatableArray(),
            },
            ConditionalExpr conditional => new ConditionalExpr(
                Replace(conditional.Condition, target, replacement),
                Replace(conditional.WhenTrue, target, replacement),
                Replace(conditional.WhenFalse, target, replacement)),
            _ => expr,
        };
    }

    private static void EmitCachedExpPass(IndentedWriter writer, CachedExp cached)
    {
        string source = cached.SumExp.Source;
        string sum = cached.SumExp.Name;
        string max = cached.MaxName;
        string term = Names.Term(sum);
        string lanes = Names.Lanes(sum);
        writer.Line($"// Second pass: the terms {term} = exp({source} - {max}) go to the output, and {sum} = Σ {term}.");
        writer.Line($"float {sum} = 0f;");
        writer.Line("index = 0;");
        foreach (PrintMode mode in s_vectorModes)
        {
            string v = VectorType(mode);
            string type = $"{v}<float>";
            writer.Open($"if ({v}.IsHardwareAccelerated && length >= {type}.Count)");
            writer.Line($"{type} {Names.Vec(max)} = {v}.Create({max});");
            writer.Line($"{type} {lanes} = {type}.Zero;");
            writer.Open($"for (; index <= length - {type}.Count; index += {type}.Count)");
            writer.Line($"{type} {term} = VectorMath.Exp({v}.Load({Names.Data(source)} + index) - {Names.Vec(max)});");
            writer.Line($"{term}.Store(outputData + index);");
            writer.Line($"{lanes} += {term};");
            writer.Close();
            writer.Line();
            writer.Line($"{sum} += {v}.Sum({lanes});");
            writer.Close();
            writer.Line();
        }

        writer.Open("for (; index < length; index++)");
        writer.Line($"float {term} = MathF.Exp({Names.Data(source)}[index] - {max});");
        writer.Line($"outputData[index] = {term};");
        writer.Line($"{sum} += {term};");
        writer.Close();
        writer.Line();
    }

    /// <summary>One reduction to compute in a row's reduction pass.</summary>
    private sealed record ReductionStep(ParameterModel Parameter, string MaxName);

    /// <summary>
    /// The reductions of a row op, in declaration order. A [Reduce(Max)] of a source that also has a SumExp is not
    /// a step of its own: the online SumExp computes it.
    /// </summary>
    private static List<ReductionStep> ReductionSteps(DefinitionModel definition, CachedExp? cached = null)
    {
        List<ReductionStep> steps = new();
        foreach (ParameterModel reduction in definition.Reductions())
        {
            // With a cached exp, the SumExp has a pass of its own and its max is a plain Max.
            if (cached is not null && reduction == cached.SumExp)
            {
                continue;
            }

            bool coveredBySumExp = cached is null
                && reduction.Reduction == ReductionKind.Max
                && definition.Reductions().Any(p => p.Reduction == ReductionKind.SumExp && p.Source == reduction.Source);
            if (!coveredBySumExp)
            {
                string max = reduction.Reduction == ReductionKind.SumExp
                    ? Names.OnlineMax(reduction, definition.Parameters)
                    : string.Empty;
                steps.Add(new ReductionStep(reduction, max));
            }
        }

        return steps;
    }

    /// <summary>Describes the reductions for a comment: "s = Σ x; m = max x".</summary>
    private static string DescribeReductions(IEnumerable<ReductionStep> steps) => string.Join("; ", steps.Select(Describe));

    private static string Describe(ReductionStep step)
    {
        ParameterModel p = step.Parameter;
        return p.Reduction switch
        {
            ReductionKind.Sum => $"{p.Name} = Σ {p.Source}",
            ReductionKind.SumOfSquares => $"{p.Name} = Σ {p.Source}²",
            ReductionKind.Max => $"{p.Name} = max {p.Source}",
            _ => $"{step.MaxName} = max {p.Source} and {p.Name} = Σ exp({p.Source} - {step.MaxName}), online "
                + "(the sum is rescaled when the max grows)",
        };
    }

    /// <summary>The sources the steps read, in first-use order.</summary>
    private static IEnumerable<string> Sources(IEnumerable<ReductionStep> steps) =>
        steps.Select(static s => s.Parameter.Source).Distinct();

    /// <summary>Declares the scalar accumulator of each reduction at its identity (and the running max of SumExp).</summary>
    private static void EmitReductionAccumulators(IndentedWriter writer, List<ReductionStep> steps)
    {
        foreach (ReductionStep step in steps)
        {
            ParameterModel p = step.Parameter;
            switch (p.Reduction)
            {
                case ReductionKind.Max:
                    writer.Line($"float {p.Name} = float.NegativeInfinity;");
                    break;
                case ReductionKind.SumExp:
                    writer.Line($"float {step.MaxName} = float.MinValue;");
                    writer.Line($"float {p.Name} = 0f;");
                    break;
                default:
                    writer.Line($"float {p.Name} = 0f;");
                    break;
            }
        }
    }

    private static void EmitCpuReductions(IndentedWriter writer, List<ReductionStep> steps)
    {
        // Scalar accumulators.
        writer.Line($"// Reduce the row in one pass: {DescribeReductions(steps)}.");
        EmitReductionAccumulators(writer, steps);

        writer.Line("int index = 0;");

        // Per-lane accumulators in each vector width, folded into the scalars after the loop.
        foreach (PrintMode mode in s_vectorModes)
        {
            string v = VectorType(mode);
            string type = $"{v}<float>";
            writer.Open($"if ({v}.IsHardwareAccelerated && length >= {type}.Count)");
            foreach (ReductionStep step in steps)
            {
                ParameterModel p = step.Parameter;
                switch (p.Reduction)
                {
                    case ReductionKind.Max:
                        writer.Line($"{type} {Names.Lanes(p.Name)} = {v}.Create(float.NegativeInfinity);");
                        break;
                    case ReductionKind.SumExp:
                        writer.Line($"{type} {Names.Lanes(step.MaxName)} = {v}.Create(float.MinValue);");
                        writer.Line($"{type} {Names.Lanes(p.Name)} = {type}.Zero;");
                        break;
                    default:
                        writer.Line($"{type} {Names.Lanes(p.Name)} = {type}.Zero;");
                        break;
                }
            }

            writer.Open($"for (; index <= length - {type}.Count; index += {type}.Count)");
            foreach (string source in Sources(steps))
            {
                writer.Line($"{type} {source} = {v}.Load({Names.Data(source)} + index);");
            }

            foreach (ReductionStep step in steps)
            {
                ParameterModel p = step.Parameter;
                string lanes = Names.Lanes(p.Name);
                switch (p.Reduction)
                {
                    case ReductionKind.Sum:
                        writer.Line($"{lanes} += {p.Source};");
                        break;
                    case ReductionKind.SumOfSquares:
                        writer.Line($"{lanes} = {v}.FusedMultiplyAdd({p.Source}, {p.Source}, {lanes});");
                        break;
                    case ReductionKind.Max:
                        writer.Line($"{lanes} = {v}.Max({lanes}, {p.Source});");
                        break;
                    case ReductionKind.SumExp:
                        // Rescale only when some lane's max grows (rarely, after the first blocks): one exp per element.
                        string maxLanes = Names.Lanes(step.MaxName);
                        string next = Names.Next(step.MaxName);
                        writer.Open($"if ({v}.GreaterThanAny({p.Source}, {maxLanes}))");
                        writer.Line($"{type} {next} = {v}.Max({maxLanes}, {p.Source});");
                        writer.Line($"{lanes} *= {v}.Exp({maxLanes} - {next});");
                        writer.Line($"{maxLanes} = {next};");
                        writer.Close();
                        writer.Line();
                        writer.Line($"{lanes} += {v}.Exp({p.Source} - {maxLanes});");
                        break;
                }
            }

            writer.Close();
            writer.Line();
            foreach (ReductionStep step in steps)
            {
                ParameterModel p = step.Parameter;
                string lanes = Names.Lanes(p.Name);
                switch (p.Reduction)
                {
                    case ReductionKind.Max:
                        writer.Line($"{p.Name} = MathF.Max({p.Name}, VectorMath.MaxAcross({lanes}));");
                        break;
                    case ReductionKind.SumExp:
                        writer.Line($"VectorMath.MergeSumExp({Names.Lanes(step.MaxName)}, {lanes}, ref {step.MaxName}, ref {p.Name});");
                        break;
                    default:
                        writer.Line($"{p.Name} += {v}.Sum({lanes});");
                        break;
                }
            }

            writer.Close();
            writer.Line();
        }

        // The scalar tail.
        writer.Open("for (; index < length; index++)");
        foreach (string source in Sources(steps))
        {
            writer.Line($"float {source} = {Names.Data(source)}[index];");
        }

        foreach (ReductionStep step in steps)
        {
            EmitScalarReductionUpdate(writer, step);
        }

        writer.Close();
        writer.Line();
    }

    /// <summary>Writes the scalar update of one reduction by one element (the CPU tail and the GPU loop).</summary>
    private static void EmitScalarReductionUpdate(IndentedWriter writer, ReductionStep step, bool gpu = false)
    {
        ParameterModel p = step.Parameter;
        switch (p.Reduction)
        {
            case ReductionKind.Sum:
                writer.Line($"{p.Name} += {p.Source};");
                break;
            case ReductionKind.SumOfSquares:
                writer.Line(gpu ? $"{p.Name} += {p.Source} * {p.Source};" : $"{p.Name} = MathF.FusedMultiplyAdd({p.Source}, {p.Source}, {p.Name});");
                break;
            case ReductionKind.Max:
                writer.Line($"{p.Name} = MathF.Max({p.Name}, {p.Source});");
                break;
            case ReductionKind.SumExp:
                // Rescale the sum when the max grows, then add this element's term.
                writer.Open($"if ({p.Source} > {step.MaxName})");
                writer.Line($"{p.Name} *= MathF.Exp({step.MaxName} - {p.Source});");
                writer.Line($"{step.MaxName} = {p.Source};");
                writer.Close();
                writer.Line();
                writer.Line($"{p.Name} += MathF.Exp({p.Source} - {step.MaxName});");
                break;
        }
    }
}
