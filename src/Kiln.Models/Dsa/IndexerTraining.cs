// One layer's lightning-indexer parameters for fitting an indexer to a dense model (DeepSeek-V3.2 tech report §2.1,
// the dense warm-up), in PyTorch's [out, in] layout so that y = x Wᵀ:
//   Wq [Hi·Di, D]   the indexer query projection (no norm on q; RoPE on the first ropeDims of each head)
//   Wk [Di, D]      the key projection, one key per token shared by all heads
//   NormWeight, NormBias [Di]   the key LayerNorm (eps from the shape, DeepSeek: 1e-6)
//   WProj [Hi, D]   the head-weight projection, scaled by LightningIndexer.HeadWeightScale(Hi, Di)
// Initial values (seeded): Wq, Wk and WProj normal with standard deviation 1/√D (unit-variance outputs for unit-variance
// inputs), LayerNorm weight 1 and bias 0 (PyTorch's defaults). The flat order used by Flatten / the finite-difference
// tests is Wq, Wk, NormWeight, NormBias, WProj.
using Kiln.Kernels;

namespace Kiln.Models.Dsa;

/// <summary>The sizes of one layer's lightning indexer.</summary>
/// <param name="Dim">D, the model width the indexer reads (the attention-normed hidden state).</param>
/// <param name="Heads">Hi, the number of indexer heads.</param>
/// <param name="HeadDim">Di, the indexer head width (and key width).</param>
/// <param name="RopeDims">How many leading dimensions of each q head and of k are rotated (even, 0..Di).</param>
/// <param name="Layout">How the rotated dimensions pair: (2i, 2i+1) or (i, i + RopeDims/2).</param>
/// <param name="RopeTheta">The RoPE base of the indexer's rotation.</param>
/// <param name="NormEps">The key LayerNorm epsilon.</param>
public sealed record IndexerShape(
    int Dim,
    int Heads,
    int HeadDim,
    int RopeDims,
    RopeLayout Layout,
    float RopeTheta = 10000f,
    float NormEps = 1e-6f)
{
    /// <summary>The query width Hi·Di.</summary>
    public int QueryDim => Heads * HeadDim;

    /// <summary>The number of parameters of one layer's indexer.</summary>
    public int ParameterCount => (QueryDim * Dim) + (HeadDim * Dim) + (2 * HeadDim) + (Heads * Dim);

    /// <summary>Checks every size.</summary>
    /// <exception cref="ArgumentException">A size is out of range; the message names it and what fits.</exception>
    public void Validate()
    {
        if (Dim < 1 || Heads < 1 || HeadDim < 1)
        {
            throw new ArgumentException(
                $"IndexerShape: dim {Dim}, heads {Heads} and head dim {HeadDim} must all be at least 1.", nameof(Dim));
        }

        if (RopeDims < 0 || RopeDims > HeadDim || RopeDims % 2 != 0)
        {
            throw new ArgumentException(
                $"IndexerShape: rope dims {RopeDims} must be even and within [0, {HeadDim}] (the head dim); "
                + "pass e.g. half the head dim.",
                nameof(RopeDims));
        }

        if (!(RopeTheta > 0) || float.IsInfinity(RopeTheta) || !(NormEps > 0))
        {
            throw new ArgumentException(
                $"IndexerShape: rope theta {RopeTheta} and norm eps {NormEps} must be positive and finite.",
                nameof(RopeTheta));
        }
    }
}

/// <summary>
/// One layer's indexer parameters as float32 CPU tensors in [out, in] layout: <see cref="Wq"/> [Hi·Di, D],
/// <see cref="Wk"/> [Di, D], <see cref="NormWeight"/> and <see cref="NormBias"/> [Di], <see cref="WProj"/> [Hi, D].
/// Also used to hold gradients of the same shapes.
/// </summary>
public sealed class IndexerParameters : IDisposable
{
    private IndexerParameters(IndexerShape shape)
    {
        shape.Validate();
        Shape = shape;
        Wq = Tensor.Empty([shape.QueryDim, shape.Dim]);
        Wk = Tensor.Empty([shape.HeadDim, shape.Dim]);
        NormWeight = Tensor.Empty([shape.HeadDim]);
        NormBias = Tensor.Empty([shape.HeadDim]);
        WProj = Tensor.Empty([shape.Heads, shape.Dim]);
    }

    /// <summary>The sizes.</summary>
    public IndexerShape Shape { get; }

    /// <summary>The query projection. [Hi·Di, D]</summary>
    public Tensor Wq { get; }

    /// <summary>The key projection. [Di, D]</summary>
    public Tensor Wk { get; }

    /// <summary>The key LayerNorm weight. [Di]</summary>
    public Tensor NormWeight { get; }

    /// <summary>The key LayerNorm bias. [Di]</summary>
    public Tensor NormBias { get; }

    /// <summary>The head-weight projection (before HeadWeightScale). [Hi, D]</summary>
    public Tensor WProj { get; }

    /// <summary>The tensors in the flat order: Wq, Wk, NormWeight, NormBias, WProj.</summary>
    public IReadOnlyList<Tensor> Tensors => [Wq, Wk, NormWeight, NormBias, WProj];

    /// <summary>All-zero parameters (the start of a gradient).</summary>
    public static IndexerParameters Zeros(IndexerShape shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        return new IndexerParameters(shape);
    }

    /// <summary>
    /// Seeded initial parameters: Wq, Wk, WProj normal with standard deviation 1/√D; LayerNorm weight 1, bias 0.
    /// </summary>
    public static IndexerParameters Random(IndexerShape shape, int seed)
    {
        ArgumentNullException.ThrowIfNull(shape);
        IndexerParameters parameters = new(shape);
        Random random = new(seed);
        double std = 1.0 / Math.Sqrt(shape.Dim);
        foreach (Tensor tensor in new[] { parameters.Wq, parameters.Wk, parameters.WProj })
        {
            Span<float> values = tensor.AsSpan();
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = (float)(std * Normal(random));
            }
        }

        parameters.NormWeight.AsSpan().Fill(1f);
        return parameters;
    }

    /// <summary>Parameters holding the given flat values (order Wq, Wk, NormWeight, NormBias, WProj).</summary>
    /// <exception cref="ArgumentException">The value count is not <see cref="IndexerShape.ParameterCount"/>.</exception>
    public static IndexerParameters FromFlat(IndexerShape shape, ReadOnlySpan<float> values)
    {
        ArgumentNullException.ThrowIfNull(shape);
        shape.Validate();
        if (values.Length != shape.ParameterCount)
        {
            throw new ArgumentException(
                $"IndexerParameters.FromFlat: {values.Length} values given, the shape needs {shape.ParameterCount}.",
                nameof(values));
        }

        IndexerParameters parameters = new(shape);
        int offset = 0;
        foreach (Tensor tensor in parameters.Tensors)
        {
            int length = (int)tensor.Length;
            tensor.CopyFrom(values.Slice(offset, length));
            offset += length;
        }

        return parameters;
    }

    /// <summary>Every value in the flat order Wq, Wk, NormWeight, NormBias, WProj.</summary>
    public float[] Flatten()
    {
        float[] values = new float[Shape.ParameterCount];
        int offset = 0;
        foreach (Tensor tensor in Tensors)
        {
            tensor.AsSpan().CopyTo(values.AsSpan(offset));
            offset += (int)tensor.Length;
        }

        return values;
    }

    /// <summary>Sets every value to zero.</summary>
    public void Clear()
    {
        foreach (Tensor tensor in Tensors)
        {
            tensor.Clear();
        }
    }

    /// <summary>Frees the tensors.</summary>
    public void Dispose()
    {
        foreach (Tensor tensor in Tensors)
        {
            tensor.Dispose();
        }
    }

    // A standard normal draw (Box–Muller).
    private static double Normal(Random random)
    {
        double u1 = 1.0 - random.NextDouble();
        double u2 = random.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2);
    }
}

/// <summary>
/// Writes fitted indexers as a safetensors file (8-byte little-endian header length, JSON header, raw little-endian
/// float32 data). Tensor names: <c>layers.{l}.indexer.{wq_idx|wk_idx|k_norm.weight|k_norm.bias|w_proj}</c>, for the
/// layers that own an indexer; the shape and the pattern go into <c>__metadata__</c>.
/// </summary>
/// <remarks>NOTE: a stand-in until the DSA checkpoint writer (branch dsamodel) is merged; same names intended.</remarks>
public static class IndexerCheckpoint
{
    /// <summary>Saves <paramref name="indexers"/> (null entries are Shared layers) to <paramref name="path"/>.</summary>
    /// <exception cref="ArgumentException">No layer has an indexer.</exception>
    public static void Save(string path, IReadOnlyList<IndexerParameters?> indexers)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(indexers);
        IndexerShape shape = indexers.FirstOrDefault(indexer => indexer is not null)?.Shape
            ?? throw new ArgumentException("IndexerCheckpoint.Save: no layer has an indexer; fit at least layer 0.", nameof(indexers));
        string[] names = ["wq_idx", "wk_idx", "k_norm.weight", "k_norm.bias", "w_proj"];

        // The header: one entry per tensor with its byte range, then the metadata.
        System.Text.StringBuilder header = new("{");
        List<Tensor> order = [];
        long offset = 0;
        for (int l = 0; l < indexers.Count; l++)
        {
            if (indexers[l] is not IndexerParameters indexer)
            {
                continue;
            }

            for (int i = 0; i < names.Length; i++)
            {
                Tensor tensor = indexer.Tensors[i];
                long bytes = tensor.Length * sizeof(float);
                string dims = string.Join(",", tensor.Shape.ToArray());
                header.Append($"\"layers.{l}.indexer.{names[i]}\":{{\"dtype\":\"F32\",\"shape\":[{dims}],\"data_offsets\":[{offset},{offset + bytes}]}},");
                order.Add(tensor);
                offset += bytes;
            }
        }

        string pattern = string.Concat(indexers.Select(indexer => indexer is null ? 'S' : 'F'));
        header.Append(System.FormattableString.Invariant(
            $"\"__metadata__\":{{\"index_n_heads\":\"{shape.Heads}\",\"index_head_dim\":\"{shape.HeadDim}\",\"index_rope_dims\":\"{shape.RopeDims}\",\"index_rope_layout\":\"{shape.Layout}\",\"index_norm_eps\":\"{shape.NormEps}\",\"index_topk_pattern\":\"{pattern}\"}}}}"));
        while ((header.Length + 8) % 8 != 0)
        {
            header.Append(' ');
        }

        // Length, header, data.
        byte[] headerBytes = System.Text.Encoding.UTF8.GetBytes(header.ToString());
        using FileStream file = File.Create(path);
        using BinaryWriter writer = new(file);
        writer.Write((ulong)headerBytes.Length);
        writer.Write(headerBytes);
        foreach (Tensor tensor in order)
        {
            writer.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(tensor.AsSpan()));
        }
    }
}
