// The tensors of a Llama model on one device. Linear weights are stored [out, in] as in PyTorch and llama2.c
// (y = x Wᵀ); norms are [D]; the token embedding is [V, D]; the classifier is [V, D] and is the embedding
// tensor itself when the config says it is shared. With the config's attention_residuals option the weights also hold
// its pseudo-queries and key-norm gains (AttentionResiduals.cs). The weights own their tensors and free them on Dispose.

using Kiln.Devices;

namespace Kiln.Models.Llama;

/// <summary>The weights of one transformer block.</summary>
public sealed class LlamaLayerWeights
{
    internal LlamaLayerWeights(LlamaConfig config, DType dtype, Func<int[], DType, Tensor> create)
    {
        AttentionNorm = create([config.Dim], DType.Float32);
        Wq = create([config.QueryDim, config.Dim], dtype);
        Wk = create([config.KvDim, config.Dim], dtype);
        Wv = create([config.KvDim, config.Dim], dtype);
        Wo = create([config.Dim, config.QueryDim], dtype);
        FfnNorm = create([config.Dim], DType.Float32);
        W1 = create([config.HiddenDim, config.Dim], dtype);
        W2 = create([config.Dim, config.HiddenDim], dtype);
        W3 = create([config.HiddenDim, config.Dim], dtype);
    }

    /// <summary>The RMSNorm weight before attention. [D]</summary>
    public Tensor AttentionNorm { get; }

    /// <summary>The query projection. [H × Dh, D]</summary>
    public Tensor Wq { get; }

    /// <summary>The key projection. [Hkv × Dh, D]</summary>
    public Tensor Wk { get; }

    /// <summary>The value projection. [Hkv × Dh, D]</summary>
    public Tensor Wv { get; }

    /// <summary>The attention output projection. [D, H × Dh]</summary>
    public Tensor Wo { get; }

    /// <summary>The RMSNorm weight before the feed-forward network. [D]</summary>
    public Tensor FfnNorm { get; }

    /// <summary>The gate projection (goes through SiLU). [F, D]</summary>
    public Tensor W1 { get; }

    /// <summary>The down projection. [D, F]</summary>
    public Tensor W2 { get; }

    /// <summary>The up projection. [F, D]</summary>
    public Tensor W3 { get; }

    /// <summary>The tensors in llama2.c's order: attention norm, wq, wk, wv, wo, ffn norm, w1, w2, w3.</summary>
    public IEnumerable<Tensor> Tensors => [AttentionNorm, Wq, Wk, Wv, Wo, FfnNorm, W1, W2, W3];
}

/// <summary>
/// All weights of a Llama model on one <see cref="Kiln.Devices.Device"/>. Dispose it to free the tensors
/// deterministically; the device must outlive it.
/// </summary>
public sealed class LlamaWeights : IDisposable
{
    private bool _disposed;

    // Creates the tensors in the order of Tensors (embedding, layers, final norm, separate classifier, attention
    // residuals), each through create(shape, dtype); a failure frees what was made before it.
    private LlamaWeights(LlamaConfig config, Device device, DType dtype, Func<int[], DType, Tensor> create)
    {
        Config = config;
        Device = device;
        DType = dtype;
        LlamaLayerWeights[] layers = new LlamaLayerWeights[config.Layers];
        try
        {
            TokenEmbedding = create([config.VocabSize, config.Dim], dtype);
            for (int l = 0; l < layers.Length; l++)
            {
                layers[l] = new LlamaLayerWeights(config, dtype, create);
            }

            FinalNorm = create([config.Dim], DType.Float32);
            Classifier = config.SharedClassifier ? TokenEmbedding : create([config.VocabSize, config.Dim], dtype);
            Layers = layers;
            AttentionResiduals = config.AttentionResiduals is null ? null : new AttentionResidualsWeights(config, create);
        }
        catch
        {
            // Free what was allocated before the failure; the finalizers would do it too, but later.
            TokenEmbedding?.Dispose();
            foreach (LlamaLayerWeights? layer in layers)
            {
                DisposeAll(layer?.Tensors ?? []);
            }

            FinalNorm?.Dispose();
            if (!config.SharedClassifier)
            {
                Classifier?.Dispose();
            }

            throw;
        }
    }

    /// <summary>The configuration the tensors were shaped by.</summary>
    public LlamaConfig Config { get; }

    /// <summary>The device that holds every tensor.</summary>
    public Device Device { get; }

    /// <summary>The dtype of the matrices (embedding, projections, classifier); norms are always float32.</summary>
    public DType DType { get; }

    /// <summary>The token embedding. [V, D]</summary>
    public Tensor TokenEmbedding { get; }

    /// <summary>The blocks, first to last.</summary>
    public IReadOnlyList<LlamaLayerWeights> Layers { get; }

    /// <summary>The RMSNorm weight after the last block. [D]</summary>
    public Tensor FinalNorm { get; }

    /// <summary>The output classifier. [V, D]; the same object as <see cref="TokenEmbedding"/> when shared.</summary>
    public Tensor Classifier { get; }

    /// <summary>The Block Attention Residuals vectors, or null when the config does not have the option.</summary>
    public AttentionResidualsWeights? AttentionResiduals { get; }

    /// <summary>The number of parameters, the classifier counted once when shared.</summary>
    public long ParameterCount => Config.ParameterCount;

    /// <summary>
    /// Every distinct tensor, in a stable order: embedding, layers, final norm, then a separate classifier, then the
    /// attention residuals' queries and key norms.
    /// </summary>
    public IEnumerable<Tensor> Tensors
    {
        get
        {
            yield return TokenEmbedding;
            foreach (LlamaLayerWeights layer in Layers)
            {
                foreach (Tensor tensor in layer.Tensors)
                {
                    yield return tensor;
                }
            }

            yield return FinalNorm;
            if (!ReferenceEquals(Classifier, TokenEmbedding))
            {
                yield return Classifier;
            }

            foreach (Tensor tensor in AttentionResiduals?.Tensors ?? [])
            {
                yield return tensor;
            }
        }
    }

    /// <summary>
    /// Allocates zero-filled weights shaped by <paramref name="config"/> on <paramref name="device"/> (cpu when
    /// null), except the attention residuals' key-norm gains, which start at one. Loaders fill them; tests build
    /// small random models with them.
    /// </summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public static LlamaWeights Allocate(LlamaConfig config, Device? device = null, DType dtype = DType.Float32)
    {
        config.Validate();
        Device target = device ?? CpuDevice.Default;
        LlamaWeights weights = new(config, target, dtype, (shape, type) => Tensor.Empty(shape, type, target));
        weights.AttentionResiduals?.Reset();
        return weights;
    }

    /// <summary>Copies every tensor to <paramref name="device"/> (new weights the caller disposes).</summary>
    public LlamaWeights To(Device device)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);

        // The new weights create their tensors in the order this enumeration yields the old ones.
        using IEnumerator<Tensor> source = Tensors.GetEnumerator();
        return new LlamaWeights(Config, device, DType, (shape, type) =>
        {
            source.MoveNext();
            return source.Current.To(device);
        });
    }

    /// <summary>Frees every tensor. Safe to call twice.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        DisposeAll(Tensors);
    }

    private static void DisposeAll(IEnumerable<Tensor> tensors)
    {
        foreach (Tensor tensor in tensors)
        {
            tensor.Dispose();
        }
    }
}
