namespace Kiln.Kernels;

// Argument checks shared by the ops the Kiln generator emits. Each check names the op and the tensor, says what is
// wrong and what to pass instead, in one line. Nothing here allocates unless it throws, so the checks can stay on
// in release builds and on the allocation-free CPU path.

/// <summary>Argument checks for generated ops; every failure is an <see cref="ArgumentException"/>.</summary>
public static class OpChecks
{
    /// <summary>Requires a non-null, contiguous float32 tensor.</summary>
    /// <exception cref="ArgumentException">The tensor is null, not float32, or not contiguous.</exception>
    public static void Float32(string op, string name, Tensor? tensor)
    {
        if (tensor is null)
        {
            throw new ArgumentException($"{op}: {name} is null; pass a float32 tensor.", name);
        }

        if (tensor.DType != DType.Float32)
        {
            throw new ArgumentException(
                $"{op}: {name} is {tensor.DType.Name()} {Tensor.FormatShape(tensor.Shape)}, but this op computes in float32; "
                + "pass a float32 tensor.",
                name);
        }

        if (!tensor.IsContiguous)
        {
            throw new ArgumentException(
                $"{op}: {name} {Tensor.FormatShape(tensor.Shape)} is a strided view; "
                + "pass a contiguous tensor (copy it with To(device)).",
                name);
        }
    }

    /// <summary>Requires <paramref name="tensor"/> to be on the device of <paramref name="reference"/>.</summary>
    /// <exception cref="ArgumentException">The tensors are on different devices.</exception>
    public static void SameDevice(string op, string name, Tensor tensor, string referenceName, Tensor reference)
    {
        if (!ReferenceEquals(tensor.Device, reference.Device))
        {
            string where = tensor.Device.Name == reference.Device.Name
                ? "another " + tensor.Device.Name + " device"
                : tensor.Device.Name;
            throw new ArgumentException(
                $"{op}: {name} is on {where} but {referenceName} is on {reference.Device.Name}; "
                + $"all tensors of an op must be on one device, so move {name} with To(device).",
                name);
        }
    }

    /// <summary>Requires <paramref name="tensor"/> to have exactly the shape of <paramref name="reference"/>.</summary>
    /// <exception cref="ArgumentException">The shapes differ.</exception>
    public static void SameShape(string op, string name, Tensor tensor, string referenceName, Tensor reference)
    {
        if (!tensor.Shape.SequenceEqual(reference.Shape))
        {
            throw new ArgumentException(
                $"{op}: {name} has shape {Tensor.FormatShape(tensor.Shape)} but {referenceName} has shape "
                + $"{Tensor.FormatShape(reference.Shape)}; pass a {name} of shape {Tensor.FormatShape(reference.Shape)}.",
                name);
        }
    }

    /// <summary>Requires at least <paramref name="rank"/> dimensions.</summary>
    /// <exception cref="ArgumentException">The tensor has fewer dimensions.</exception>
    public static void MinRank(string op, string name, Tensor tensor, int rank, string layout)
    {
        if (tensor.Rank < rank)
        {
            throw new ArgumentException(
                $"{op}: {name} has shape {Tensor.FormatShape(tensor.Shape)} but needs at least {rank} dimension(s), "
                + $"laid out {layout}.",
                name);
        }
    }

    /// <summary>
    /// Checks that <paramref name="tensor"/> broadcasts to the shape of <paramref name="reference"/>: without its
    /// leading 1s, its shape is a suffix of the reference shape, so its elements repeat every
    /// <c>tensor.Length</c> elements of the reference. When <paramref name="rowLength"/> is above 1 the period
    /// must also hold whole rows. Returns the period.
    /// </summary>
    /// <exception cref="ArgumentException">The shape does not broadcast.</exception>
    public static int BroadcastLength(
        string op,
        string name,
        Tensor tensor,
        string referenceName,
        Tensor reference,
        int rowLength = 1)
    {
        // Skip the leading 1s, then compare with the end of the reference shape.
        ReadOnlySpan<int> shape = tensor.Shape;
        while (shape.Length > 0 && shape[0] == 1)
        {
            shape = shape[1..];
        }

        ReadOnlySpan<int> target = reference.Shape;
        bool suffix = shape.Length <= target.Length && shape.SequenceEqual(target[(target.Length - shape.Length)..]);
        // An empty input broadcasts only to an empty reference (its suffix has a zero); the ops then do nothing.
        bool wholeRows = rowLength <= 1 || tensor.Length % rowLength == 0;
        if (!suffix || !wholeRows)
        {
            string example = target.Length == 0 ? "[]" : Tensor.FormatShape(target[^1..]);
            throw new ArgumentException(
                $"{op}: {name} has shape {Tensor.FormatShape(tensor.Shape)}, which does not broadcast to {referenceName} "
                + $"{Tensor.FormatShape(target)}; pass a {name} whose shape ends the shape of {referenceName}, "
                + $"such as {example} or {Tensor.FormatShape(target)}.",
                name);
        }

        return (int)tensor.Length;
    }

    /// <summary>
    /// Checks the operands of a matrix product C = A · Wᵀ: <paramref name="a"/> [M, K] float32,
    /// <paramref name="w"/> [N, K] (any dtype the product supports), <paramref name="output"/> [M, N] float32.
    /// </summary>
    /// <exception cref="ArgumentException">A shape or dtype does not fit.</exception>
    public static void MatMulShapes(string op, Tensor a, Tensor w, Tensor output)
    {
        Float32(op, "a", a);
        Float32(op, "output", output);
        if (w is null)
        {
            throw new ArgumentException($"{op}: w is null; pass the weight [N, K].", nameof(w));
        }

        if (a.Rank != 2 || w.Rank != 2 || a.Shape[1] != w.Shape[1])
        {
            throw new ArgumentException(
                $"{op}: a {Tensor.FormatShape(a.Shape)} and w {Tensor.FormatShape(w.Shape)} do not form a product a · wᵀ; "
                + "pass a [M, K] and w [N, K] with the same K.",
                a.Rank != 2 ? nameof(a) : nameof(w));
        }

        if (output.Rank != 2 || output.Shape[0] != a.Shape[0] || output.Shape[1] != w.Shape[0])
        {
            throw new ArgumentException(
                $"{op}: output has shape {Tensor.FormatShape(output.Shape)} but a · wᵀ is [{a.Shape[0]}, {w.Shape[0]}]; "
                + "pass an output of that shape.",
                nameof(output));
        }
    }

    /// <summary>
    /// Checks the input of a rotary op: <paramref name="x"/> [T, ..., Dh] with an even Dh, and a non-negative
    /// start position. Returns T, the rows per token (the product of the middle dimensions) and Dh.
    /// </summary>
    /// <exception cref="ArgumentException">The shape or the start position does not fit.</exception>
    public static (int Tokens, int RowsPerToken, int HeadDim) RotaryInput(string op, Tensor x, int startPosition)
    {
        MinRank(op, "x", x, 2, "[T, ..., Dh]");
        int headDim = x.Shape[^1];
        if (headDim % 2 != 0)
        {
            throw new ArgumentException(
                $"{op}: x has shape {Tensor.FormatShape(x.Shape)} but its last dimension (Dh = {headDim}) must be even "
                + "to form pairs; pass a tensor of shape [T, ..., Dh] with an even Dh.",
                nameof(x));
        }

        if (startPosition < 0)
        {
            throw new ArgumentException(
                $"{op}: startPosition is {startPosition}; pass the position of the first token (0 or more).",
                nameof(startPosition));
        }

        int tokens = x.Shape[0];
        int rowsPerToken = tokens == 0 || headDim == 0 ? 0 : (int)(x.Length / tokens / headDim);
        return (tokens, rowsPerToken, headDim);
    }

    /// <summary>
    /// Checks a rotary table: [S, Dh / 2] with S ≥ <paramref name="startPosition"/> + <paramref name="tokens"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The table has the wrong shape or too few positions.</exception>
    public static void RotaryTable(string op, string name, Tensor table, int headDim, int startPosition, int tokens)
    {
        if (table.Rank != 2 || table.Shape[1] != headDim / 2)
        {
            throw new ArgumentException(
                $"{op}: {name} has shape {Tensor.FormatShape(table.Shape)} but a table for heads of width {headDim} "
                + $"is [S, {headDim / 2}]; build it with Ops.RopeTables.",
                name);
        }

        if ((long)startPosition + tokens > table.Shape[0])
        {
            throw new ArgumentException(
                $"{op}: {name} holds {table.Shape[0]} positions but tokens {startPosition}..{(long)startPosition + tokens - 1} "
                + $"need {(long)startPosition + tokens}; build a longer table with Ops.RopeTables.",
                name);
        }
    }

    /// <summary>Requires a defined <see cref="RopeLayout"/>.</summary>
    /// <exception cref="ArgumentException">The value is not a member of the enum.</exception>
    public static void Layout(string op, RopeLayout layout)
    {
        if (layout is not (RopeLayout.Adjacent or RopeLayout.HalfSplit))
        {
            throw new ArgumentException(
                $"{op}: layout {(int)layout} is not a RopeLayout; pass RopeLayout.Adjacent or RopeLayout.HalfSplit.",
                nameof(layout));
        }
    }
}
