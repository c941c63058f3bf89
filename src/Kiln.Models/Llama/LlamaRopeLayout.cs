// Moving a Llama model between the two RoPE pair layouts by permuting the rows of its query and key projections.
//
// RoPE rotates pairs of elements within each head of width Dh (half = Dh / 2). With adjacent pairs (llama2.c, Meta,
// GGUF) pair i is rows (2i, 2i + 1) of a head; with half-split pairs (Hugging Face, "rotate half") pair i is rows
// (i, i + half). Both layouts turn pair i by the same angle pos · θ^(-2i / Dh), so a model in one layout is the same
// model in the other once the rows of each head of Wq [H·Dh, D] and Wk [Hkv·Dh, D] are reordered:
//   adjacent → half-split: new[i] = old[2i], new[i + half] = old[2i + 1]
//   half-split → adjacent: new[2i] = old[i], new[2i + 1] = old[i + half]
// The same permutation of each query head and each key head leaves every score q·k unchanged (it permutes the terms of
// the dot product), and the values and Wo are untouched. Keys have Hkv heads, queries H: each is permuted per head of
// its own count. Rows are moved as raw bytes, so any dtype (including Q8_0 blocks, which never straddle rows) is moved
// exactly.

using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Models.Llama;

/// <summary>Converts Llama weights between <see cref="RopeLayout.Adjacent"/> and <see cref="RopeLayout.HalfSplit"/>.</summary>
public static unsafe class LlamaRopeLayout
{
    /// <summary>
    /// A copy of <paramref name="weights"/> on the CPU whose config has <paramref name="layout"/> and whose query and key
    /// rows are permuted to match it; the model computes the same function. The caller disposes the result (a copy
    /// even when the layout is already <paramref name="layout"/>).
    /// </summary>
    /// <exception cref="ArgumentException">The layout is not defined.</exception>
    public static LlamaWeights Convert(LlamaWeights weights, RopeLayout layout)
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (layout is not (RopeLayout.Adjacent or RopeLayout.HalfSplit))
        {
            throw new ArgumentException($"LlamaRopeLayout.Convert: layout {(int)layout} is not a RopeLayout; pass Adjacent or HalfSplit.", nameof(layout));
        }

        // Copy every tensor to the CPU in the new config, then permute the query and key rows in place.
        LlamaConfig original = weights.Config;
        LlamaWeights converted = LlamaWeights.Allocate(original with { RopeLayout = layout }, CpuDevice.Default, weights.DType);
        try
        {
            foreach ((Tensor source, Tensor target) in weights.Tensors.Zip(converted.Tensors))
            {
                CopyBytes(source, target);
            }

            if (original.RopeLayout != layout)
            {
                foreach (LlamaLayerWeights layer in converted.Layers)
                {
                    PermuteRows(layer.Wq, original.Heads, original.HeadDim, layout);
                    PermuteRows(layer.Wk, original.KvHeads, original.HeadDim, layout);
                }
            }

            return converted;
        }
        catch
        {
            converted.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reorders, in place, the rows of each of the <paramref name="heads"/> heads of a contiguous CPU projection
    /// [heads × headDim, in] from the other layout into <paramref name="to"/> (see the file header).
    /// </summary>
    /// <exception cref="ArgumentException">The tensor is not a CPU matrix of heads × headDim rows, or headDim is odd.</exception>
    public static void PermuteRows(Tensor projection, int heads, int headDim, RopeLayout to)
    {
        ArgumentNullException.ThrowIfNull(projection);
        if (projection.Rank != 2 || heads < 1 || headDim < 2 || headDim % 2 != 0 || projection.Shape[0] != (long)heads * headDim || projection.Device is not CpuDevice)
        {
            throw new ArgumentException($"LlamaRopeLayout.PermuteRows: the projection {projection} must be a CPU matrix of {heads} heads × {headDim} rows (head width even); pass Wq or Wk of the model.", nameof(projection));
        }

        // One head at a time: gather its rows into a scratch copy, then write them back in the new order.
        int half = headDim / 2;
        long rowBytes = projection.ByteLength / projection.Shape[0];
        byte[] scratch = new byte[checked((int)(rowBytes * headDim))];
        byte* data = (byte*)projection.DataPointer;
        for (int h = 0; h < heads; h++)
        {
            byte* head = data + (h * headDim * rowBytes);
            new ReadOnlySpan<byte>(head, scratch.Length).CopyTo(scratch);
            for (int i = 0; i < half; i++)
            {
                // (source row of the first element, of the second) for pair i, and where they go.
                (int first, int second, int newFirst, int newSecond) = to == RopeLayout.HalfSplit
                    ? (2 * i, (2 * i) + 1, i, i + half)
                    : (i, i + half, 2 * i, (2 * i) + 1);
                scratch.AsSpan((int)(first * rowBytes), (int)rowBytes).CopyTo(new Span<byte>(head + (newFirst * rowBytes), (int)rowBytes));
                scratch.AsSpan((int)(second * rowBytes), (int)rowBytes).CopyTo(new Span<byte>(head + (newSecond * rowBytes), (int)rowBytes));
            }
        }
    }

    // Copies a tensor's bytes into a CPU tensor of the same shape and dtype.
    private static void CopyBytes(Tensor source, Tensor target)
    {
        Tensor? host = source.Device is CpuDevice ? null : source.To(CpuDevice.Default);
        try
        {
            Tensor from = host ?? source;
            Buffer.MemoryCopy(from.DataPointer, target.DataPointer, target.ByteLength, from.ByteLength);
        }
        finally
        {
            host?.Dispose();
        }
    }
}
