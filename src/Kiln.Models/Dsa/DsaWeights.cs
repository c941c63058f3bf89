// The tensors of a DSA model: the dense Llama weights (LlamaWeights, owned) plus, per layer, the lightning indexer's
// weights. All indexer tensors are float32 CPU tensors, linear weights stored [out, in] (y = x Wᵀ):
//   Wq    [Hi·Di, D]  indexer queries from the attention-normed x
//   WProj [Hi, D]     head weights from x (scaled by LightningIndexer.HeadWeightScale at run time, no activation)
//   Wk    [Di, D]     the one indexer key per token
//   KNormWeight, KNormBias [Di]  the LayerNorm on the key
// A Shared layer's indexer may be absent (null): it never runs. A Full layer must have one. The tensors are mutable
// (training writes into AsSpan()); a layer's indexer can also be replaced or removed with SetIndexer.
//
// Random initialisation (seeded, xorshift64*): linear weights uniform in ±1/√(in), the key norm's weight 1 and bias 0.
// CreateRandom also fills the Llama weights (embedding ±1, projections ±1/√(in), norms 1) for benchmarks and tests.
using Kiln.Devices;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;

namespace Kiln.Models.Dsa;

/// <summary>The lightning indexer weights of one layer (float32; on the CPU unless copied with <see cref="To"/>). Dispose frees them.</summary>
public sealed class DsaIndexerWeights : IDisposable
{
    /// <summary>Allocates zero-filled indexer weights shaped by <paramref name="config"/> on the cpu device.</summary>
    public DsaIndexerWeights(DsaConfig config)
        : this(config, CpuDevice.Default)
    {
    }

    /// <summary>Allocates zero-filled indexer weights shaped by <paramref name="config"/> on <paramref name="device"/>.</summary>
    public DsaIndexerWeights(DsaConfig config, Device device)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(device);
        int d = config.Llama.Dim;
        Wq = Tensor.Empty([config.IndexerQueryDim, d], device: device);
        WProj = Tensor.Empty([config.IndexerHeads, d], device: device);
        Wk = Tensor.Empty([config.IndexerHeadDim, d], device: device);
        KNormWeight = Tensor.Empty([config.IndexerHeadDim], device: device);
        KNormBias = Tensor.Empty([config.IndexerHeadDim], device: device);
        Device = device;
    }

    /// <summary>The device that holds the tensors.</summary>
    public Device Device { get; }

    /// <summary>The indexer query projection. [Hi × Di, D]</summary>
    public Tensor Wq { get; }

    /// <summary>The head-weight projection (no bias, no activation). [Hi, D]</summary>
    public Tensor WProj { get; }

    /// <summary>The indexer key projection. [Di, D]</summary>
    public Tensor Wk { get; }

    /// <summary>The LayerNorm weight on the key. [Di]</summary>
    public Tensor KNormWeight { get; }

    /// <summary>The LayerNorm bias on the key. [Di]</summary>
    public Tensor KNormBias { get; }

    /// <summary>The tensors in checkpoint order: wq, w_proj, wk, k_norm weight, k_norm bias.</summary>
    public IReadOnlyList<Tensor> Tensors => [Wq, WProj, Wk, KNormWeight, KNormBias];

    /// <summary>The checkpoint names of <see cref="Tensors"/>, in the same order.</summary>
    public static IReadOnlyList<string> TensorNames { get; } =
        ["indexer.wq", "indexer.w_proj", "indexer.wk", "indexer.k_norm.weight", "indexer.k_norm.bias"];

    /// <summary>The number of parameters of one layer's indexer: Hi·Di·D + Hi·D + Di·D + 2·Di.</summary>
    public static long ParameterCount(DsaConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        long d = config.Llama.Dim;
        return ((long)config.IndexerQueryDim * d) + (config.IndexerHeads * d) + (config.IndexerHeadDim * d) + (2L * config.IndexerHeadDim);
    }

    /// <summary>Whether every tensor has the shape <paramref name="config"/> gives it.</summary>
    public bool Fits(DsaConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        int d = config.Llama.Dim, di = config.IndexerHeadDim;
        return Wq.Shape.SequenceEqual([config.IndexerQueryDim, d]) && WProj.Shape.SequenceEqual([config.IndexerHeads, d])
            && Wk.Shape.SequenceEqual([di, d]) && KNormWeight.Shape.SequenceEqual([di]) && KNormBias.Shape.SequenceEqual([di]);
    }

    /// <summary>Indexer weights holding <paramref name="values"/>, flat in the order of <see cref="Tensors"/>.</summary>
    /// <exception cref="ArgumentException">The value count is not <see cref="ParameterCount"/>.</exception>
    public static DsaIndexerWeights FromFlat(DsaConfig config, ReadOnlySpan<float> values)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (values.Length != ParameterCount(config))
        {
            throw new ArgumentException(
                $"DsaIndexerWeights.FromFlat: {values.Length} values given; the config needs {ParameterCount(config)}.",
                nameof(values));
        }

        DsaIndexerWeights weights = new(config);
        int offset = 0;
        foreach (Tensor tensor in weights.Tensors)
        {
            int length = (int)tensor.Length;
            tensor.CopyFrom(values.Slice(offset, length));
            offset += length;
        }

        return weights;
    }

    /// <summary>Every value, flat in the order of <see cref="Tensors"/>.</summary>
    public float[] Flatten()
    {
        float[] values = new float[Tensors.Sum(tensor => tensor.Length)];
        int offset = 0;
        foreach (Tensor tensor in Tensors)
        {
            tensor.AsSpan().CopyTo(values.AsSpan(offset));
            offset += (int)tensor.Length;
        }

        return values;
    }

    /// <summary>Copies the weights to <paramref name="device"/> (new weights the caller disposes).</summary>
    public DsaIndexerWeights To(DsaConfig config, Device device)
    {
        DsaIndexerWeights copy = new(config, device);
        float[] values = ToHost();
        int offset = 0;
        foreach (Tensor tensor in copy.Tensors)
        {
            tensor.CopyFrom(values.AsSpan(offset, (int)tensor.Length));
            offset += (int)tensor.Length;
        }

        return copy;
    }

    // Every value, flat in the order of Tensors, read from any device.
    private float[] ToHost()
    {
        float[] values = new float[Tensors.Sum(tensor => tensor.Length)];
        int offset = 0;
        foreach (Tensor tensor in Tensors)
        {
            tensor.ToArray().CopyTo(values.AsSpan(offset));
            offset += (int)tensor.Length;
        }

        return values;
    }

    /// <summary>Sets every value to zero (the start of a gradient).</summary>
    public void Clear()
    {
        foreach (Tensor tensor in Tensors)
        {
            tensor.Clear();
        }
    }

    /// <summary>Fills the weights with seeded random values (linear ±1/√D, norm weight 1, bias 0).</summary>
    public void Randomize(ref XorShiftRandom random)
    {
        float bound = 1f / MathF.Sqrt(Wq.Size(1));
        Fill(Wq, bound, ref random);
        Fill(WProj, bound, ref random);
        Fill(Wk, bound, ref random);
        KNormWeight.AsSpan().Fill(1f);
        KNormBias.AsSpan().Clear();
    }

    /// <summary>Frees the tensors.</summary>
    public void Dispose()
    {
        foreach (Tensor tensor in Tensors)
        {
            tensor.Dispose();
        }
    }

    /// <summary>Fills a float32 CPU tensor uniformly in [-bound, bound).</summary>
    internal static void Fill(Tensor tensor, float bound, ref XorShiftRandom random)
    {
        Span<float> data = tensor.AsSpan();
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = (float)(((random.NextDouble() * 2) - 1) * bound);
        }
    }
}

/// <summary>
/// All weights of a DSA model: the dense Llama weights and per layer an optional lightning indexer. Owns both;
/// Dispose frees them.
/// </summary>
public sealed class DsaWeights : IDisposable
{
    private readonly DsaIndexerWeights?[] _indexers;
    private bool _disposed;

    /// <summary>
    /// Wraps <paramref name="dense"/> (ownership passes to the new object) with no indexer in any layer; add them with
    /// <see cref="SetIndexer"/> or <see cref="AddRandomIndexers"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The config is invalid or does not describe the dense weights.</exception>
    public DsaWeights(DsaConfig config, LlamaWeights dense)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(dense);
        config.Validate();
        if (config.Llama != dense.Config)
        {
            throw new ArgumentException(
                "DsaWeights: the DSA config's Llama part does not match the dense weights' config; build the DSA config "
                + "from weights.Config (DsaConfig { Llama = weights.Config, ... }).",
                nameof(config));
        }

        Config = config;
        Dense = dense;
        _indexers = new DsaIndexerWeights?[config.Llama.Layers];
    }

    /// <summary>The configuration (the pattern may be replaced with <see cref="WithPattern"/>).</summary>
    public DsaConfig Config { get; private set; }

    /// <summary>The dense Llama weights the blocks use.</summary>
    public LlamaWeights Dense { get; }

    /// <summary>The indexer of each layer; null where a layer has none (allowed for Shared layers only).</summary>
    public IReadOnlyList<DsaIndexerWeights?> Indexers => _indexers;

    /// <summary>The device of the dense weights.</summary>
    public Device Device => Dense.Device;

    /// <summary>Puts <paramref name="indexer"/> (owned from now on; null removes) in <paramref name="layer"/>, freeing the old one.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The layer does not exist.</exception>
    /// <exception cref="ArgumentException">The indexer's shapes do not fit the config.</exception>
    public void SetIndexer(int layer, DsaIndexerWeights? indexer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if ((uint)layer >= (uint)_indexers.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"DsaWeights.SetIndexer: the model has layers 0..{_indexers.Length - 1}.");
        }

        if (indexer is not null && (indexer.Wq.Size(0) != Config.IndexerQueryDim || indexer.Wq.Size(1) != Config.Llama.Dim
            || indexer.WProj.Size(0) != Config.IndexerHeads || indexer.Wk.Size(0) != Config.IndexerHeadDim))
        {
            throw new ArgumentException(
                $"DsaWeights.SetIndexer: indexer wq {indexer.Wq}, w_proj {indexer.WProj}, wk {indexer.Wk} do not fit "
                + $"Hi {Config.IndexerHeads} × Di {Config.IndexerHeadDim}, D {Config.Llama.Dim}; allocate it with new DsaIndexerWeights(config).",
                nameof(indexer));
        }

        if (indexer is not null && indexer.Device != Device && !(indexer.Device is CpuDevice && Device is CpuDevice))
        {
            throw new ArgumentException(
                $"DsaWeights.SetIndexer: the indexer is on {indexer.Device.Name} but the model is on {Device.Name}; copy it with To(config, device).",
                nameof(indexer));
        }

        if (!ReferenceEquals(_indexers[layer], indexer))
        {
            _indexers[layer]?.Dispose();
        }

        _indexers[layer] = indexer;
    }

    /// <summary>Gives every layer without an indexer a freshly initialised one (seeded; the same seed gives the same weights).</summary>
    public void AddRandomIndexers(ulong seed)
    {
        XorShiftRandom random = new(seed);
        for (int l = 0; l < _indexers.Length; l++)
        {
            // Draw for every layer, so that layer l's weights do not depend on which other layers already had one.
            XorShiftRandom layerRandom = new(random.NextUInt64());
            if (_indexers[l] is null)
            {
                // Filled on the cpu, then copied where the model lives.
                DsaIndexerWeights indexer = new(Config);
                indexer.Randomize(ref layerRandom);
                if (Device is not CpuDevice)
                {
                    using DsaIndexerWeights host = indexer;
                    indexer = host.To(Config, Device);
                }

                _indexers[l] = indexer;
            }
        }
    }

    /// <summary>Replaces the pattern (the indexers stay).</summary>
    /// <exception cref="ArgumentException">The pattern's length is not the layer count.</exception>
    public void WithPattern(IndexCachePattern pattern)
    {
        Config = Config.WithPattern(pattern);
    }

    /// <summary>
    /// Checks that every Full layer of <paramref name="pattern"/> has indexer weights.
    /// </summary>
    /// <exception cref="ArgumentException">A Full layer has no indexer; the message names it.</exception>
    public void RequireIndexers(IndexCachePattern pattern)
    {
        for (int l = 0; l < _indexers.Length; l++)
        {
            if (pattern.IsFull(l) && _indexers[l] is null)
            {
                throw new ArgumentException(
                    $"Layer {l} is Full (F) in pattern \"{pattern}\" but has no indexer weights; add them (AddRandomIndexers, "
                    + "training) or make the layer Shared (S).");
            }
        }
    }

    /// <summary>
    /// A DSA model from dense weights (owned from now on) with seeded random indexers in every layer.
    /// </summary>
    /// <exception cref="ArgumentException">The config does not describe the dense weights.</exception>
    public static DsaWeights FromDense(LlamaWeights dense, DsaConfig config, ulong seed)
    {
        DsaWeights weights = new(config, dense);
        weights.AddRandomIndexers(seed);
        return weights;
    }

    /// <summary>A DSA model with every weight random (seeded), float32 on the CPU: for benchmarks and tests.</summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public static DsaWeights CreateRandom(DsaConfig config, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        LlamaWeights dense = LlamaWeights.Allocate(config.Llama);
        XorShiftRandom random = new(seed);
        try
        {
            // Embedding ±1, norms 1, projections ±1/√(in).
            DsaIndexerWeights.Fill(dense.TokenEmbedding, 1f, ref random);
            foreach (LlamaLayerWeights layer in dense.Layers)
            {
                layer.AttentionNorm.AsSpan().Fill(1f);
                layer.FfnNorm.AsSpan().Fill(1f);
                foreach (Tensor w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.W1, layer.W2, layer.W3 })
                {
                    DsaIndexerWeights.Fill(w, 1f / MathF.Sqrt(w.Size(1)), ref random);
                }
            }

            dense.FinalNorm.AsSpan().Fill(1f);
            if (!ReferenceEquals(dense.Classifier, dense.TokenEmbedding))
            {
                DsaIndexerWeights.Fill(dense.Classifier, 1f / MathF.Sqrt(config.Llama.Dim), ref random);
            }
        }
        catch
        {
            dense.Dispose();
            throw;
        }

        return FromDense(dense, config, random.NextUInt64());
    }

    /// <summary>
    /// Copies the model (dense weights and every indexer, with the pattern) to <paramref name="device"/>: new weights the
    /// caller disposes, for a <see cref="DsaSession"/> on that device. Training and calibration read the CPU copy.
    /// </summary>
    public DsaWeights To(Device device)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(device);
        DsaWeights copy = new(Config, Dense.To(device));
        try
        {
            for (int l = 0; l < _indexers.Length; l++)
            {
                copy._indexers[l] = _indexers[l]?.To(Config, device);
            }
        }
        catch
        {
            copy.Dispose();
            throw;
        }

        return copy;
    }

    /// <summary>Frees the dense weights and every indexer. Safe to call twice.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        Dense.Dispose();
        foreach (DsaIndexerWeights? indexer in _indexers)
        {
            indexer?.Dispose();
        }
    }
}
