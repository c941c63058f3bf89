// The weights of a hybrid model (HybridConfig), float32 on one device (loaded and made on the cpu, copied to cuda
// or ilgpu-cpu with To), and its checkpoint: one safetensors file
// whose __metadata__ holds "format": "kiln-hybrid" and "config": the HybridConfig JSON. Tensor names and shapes
// (linear weights [out, in], y = x Wᵀ):
//   tok_embeddings                 [V, D]
//   layers.{l}.attention_norm      [D]            attention layers (A): the mixer's RMSNorm weight
//   layers.{l}.wq | wk | wv | wo   [H·Dh, D] | [Hkv·Dh, D] | [Hkv·Dh, D] | [D, H·Dh]
//   layers.{l}.mixer_norm          [D]            Mamba-3 layers (M): the mixer's RMSNorm weight
//   layers.{l}.mixer.<name>        the Mamba-3 mixer's tensors under the official names (Mamba3Weights:
//                                  in_proj.weight, dt_bias, B_bias, C_bias, B_norm.weight, C_norm.weight, D,
//                                  mimo_x/z/o when MIMO, norm.weight with is_outproj_norm, out_proj.weight)
//   layers.{l}.ffn_norm            [D]            every layer: the MLP
//   layers.{l}.w1 | w3             [F, D]         gate (through SiLU) and up projections
//   layers.{l}.w2                  [D, F]         down projection
//   norm                           [D]            the final RMSNorm
//   output                         [V, D]         the classifier, only when shared_classifier is false
// Loading checks the metadata, that the file can hold the config's parameters, then every tensor's presence, dtype (F32, F16, BF16 or F64, converted to float32) and
// shape against the config before reading any data; other tensors in the file are ignored.
//
// CreateRandom (seeded, xorshift64*): embedding uniform ±1, attention and MLP projections ±1/√(in), norms 1, the
// classifier (when separate) ±1/√D, Mamba-3 mixers by Mamba3Weights.CreateRandom (the official initialisation).
using Kiln.Devices;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Mamba;
using Kiln.Models.Sampling;

namespace Kiln.Models.Hybrid;

/// <summary>The weights of one hybrid layer: its mixer (attention or Mamba-3) with the mixer's norm, then the MLP.</summary>
public sealed class HybridLayerWeights
{
    internal HybridLayerWeights(HybridConfig config, HybridLayerKind kind, Device device)
    {
        int d = config.DModel, f = config.HiddenDim;
        Kind = kind;
        MixerNorm = Tensor.Empty([d], device: device);
        if (kind == HybridLayerKind.Attention)
        {
            HybridAttentionConfig a = config.Attention!;
            Wq = Tensor.Empty([a.Heads * a.HeadDim, d], device: device);
            Wk = Tensor.Empty([a.KvHeads * a.HeadDim, d], device: device);
            Wv = Tensor.Empty([a.KvHeads * a.HeadDim, d], device: device);
            Wo = Tensor.Empty([d, a.Heads * a.HeadDim], device: device);
        }
        else
        {
            Mamba = new Mamba3Weights(config.Mamba3!, device);
        }

        FfnNorm = Tensor.Empty([d], device: device);
        W1 = Tensor.Empty([f, d], device: device);
        W2 = Tensor.Empty([d, f], device: device);
        W3 = Tensor.Empty([f, d], device: device);
    }

    /// <summary>Which mixer the layer has.</summary>
    public HybridLayerKind Kind { get; }

    /// <summary>The RMSNorm weight before the mixer. [D]</summary>
    public Tensor MixerNorm { get; }

    /// <summary>The query projection (attention layers, else null). [H·Dh, D]</summary>
    public Tensor? Wq { get; }

    /// <summary>The key projection (attention layers, else null). [Hkv·Dh, D]</summary>
    public Tensor? Wk { get; }

    /// <summary>The value projection (attention layers, else null). [Hkv·Dh, D]</summary>
    public Tensor? Wv { get; }

    /// <summary>The attention output projection (attention layers, else null). [D, H·Dh]</summary>
    public Tensor? Wo { get; }

    /// <summary>The Mamba-3 mixer (Mamba-3 layers, else null).</summary>
    public Mamba3Weights? Mamba { get; }

    /// <summary>The RMSNorm weight before the MLP. [D]</summary>
    public Tensor FfnNorm { get; }

    /// <summary>The MLP gate projection (through SiLU). [F, D]</summary>
    public Tensor W1 { get; }

    /// <summary>The MLP down projection. [D, F]</summary>
    public Tensor W2 { get; }

    /// <summary>The MLP up projection. [F, D]</summary>
    public Tensor W3 { get; }

    /// <summary>Every tensor of the layer with its checkpoint name (see the file header), in a fixed order.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Named(int layer)
    {
        string at = $"layers.{layer}.";
        if (Kind == HybridLayerKind.Attention)
        {
            yield return (at + "attention_norm", MixerNorm);
            yield return (at + "wq", Wq!);
            yield return (at + "wk", Wk!);
            yield return (at + "wv", Wv!);
            yield return (at + "wo", Wo!);
        }
        else
        {
            yield return (at + "mixer_norm", MixerNorm);
            foreach ((string name, Tensor tensor) in Mamba!.Named(at + "mixer."))
            {
                yield return (name, tensor);
            }
        }

        yield return (at + "ffn_norm", FfnNorm);
        yield return (at + "w1", W1);
        yield return (at + "w2", W2);
        yield return (at + "w3", W3);
    }

    internal void Dispose()
    {
        foreach ((_, Tensor tensor) in Named(0))
        {
            tensor.Dispose();
        }
    }
}

/// <summary>All weights of a hybrid model (float32, on one device). Dispose frees them.</summary>
public sealed class HybridWeights : IDisposable
{
    /// <summary>The metadata value of "format" that marks a Kiln hybrid checkpoint.</summary>
    public const string Format = "kiln-hybrid";

    private bool _disposed;

    /// <summary>
    /// Allocates zero-filled weights shaped by <paramref name="config"/> (validated) on <paramref name="device"/>
    /// (<see cref="CpuDevice.Default"/> when null); sessions run on that device (on the cpu, on its worker pool).
    /// </summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public HybridWeights(HybridConfig config, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Config = config;
        device ??= CpuDevice.Default;
        List<HybridLayerWeights> layers = [];
        try
        {
            TokenEmbedding = Tensor.Empty([config.VocabSize, config.DModel], device: device);
            foreach (HybridLayerKind kind in config.Kinds)
            {
                layers.Add(new HybridLayerWeights(config, kind, device));
            }

            FinalNorm = Tensor.Empty([config.DModel], device: device);
            Classifier = config.SharedClassifier ? TokenEmbedding : Tensor.Empty([config.VocabSize, config.DModel], device: device);
            Layers = layers;
        }
        catch
        {
            TokenEmbedding?.Dispose();
            layers.ForEach(static l => l.Dispose());
            FinalNorm?.Dispose();
            throw;
        }
    }

    /// <summary>The configuration the shapes follow.</summary>
    public HybridConfig Config { get; }

    /// <summary>The device of every tensor.</summary>
    public Device Device => TokenEmbedding.Device;

    /// <summary>The token embedding. [V, D]</summary>
    public Tensor TokenEmbedding { get; }

    /// <summary>The layers, first to last.</summary>
    public IReadOnlyList<HybridLayerWeights> Layers { get; }

    /// <summary>The final RMSNorm weight. [D]</summary>
    public Tensor FinalNorm { get; }

    /// <summary>The classifier. [V, D]; the same object as <see cref="TokenEmbedding"/> when shared.</summary>
    public Tensor Classifier { get; }

    /// <summary>The number of parameters (the classifier counted once when shared).</summary>
    public long ParameterCount => Config.ParameterCount;

    /// <summary>Every tensor with its checkpoint name (see the file header), in a fixed order.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Named()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        yield return ("tok_embeddings", TokenEmbedding);
        for (int l = 0; l < Layers.Count; l++)
        {
            foreach ((string name, Tensor tensor) in Layers[l].Named(l))
            {
                yield return (name, tensor);
            }
        }

        yield return ("norm", FinalNorm);
        if (!ReferenceEquals(Classifier, TokenEmbedding))
        {
            yield return ("output", Classifier);
        }
    }

    /// <summary>
    /// Random weights (seeded; the same seed gives the same weights), at the scales of the file header, on
    /// <paramref name="device"/> (the default cpu device when null).
    /// </summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public static HybridWeights CreateRandom(HybridConfig config, ulong seed, CpuDevice? device = null)
    {
        HybridWeights weights = new(config, device);
        XorShiftRandom random = new(seed);
        Mamba3Weights.Fill(weights.TokenEmbedding, 1f, ref random);
        for (int l = 0; l < weights.Layers.Count; l++)
        {
            HybridLayerWeights layer = weights.Layers[l];
            layer.MixerNorm.AsSpan().Fill(1f);
            layer.FfnNorm.AsSpan().Fill(1f);
            foreach (Tensor? w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.W1, layer.W2, layer.W3 })
            {
                if (w is not null)
                {
                    Mamba3Weights.Fill(w, 1f / MathF.Sqrt(w.Size(1)), ref random);
                }
            }

            if (layer.Mamba is not null)
            {
                using Mamba3Weights mixer = Mamba3Weights.CreateRandom(config.Mamba3!, seed + 1000UL + (ulong)l);
                foreach (((_, Tensor target), (_, Tensor source)) in layer.Mamba.Named().Zip(mixer.Named()))
                {
                    source.AsSpan().CopyTo(target.AsSpan());
                }
            }
        }

        weights.FinalNorm.AsSpan().Fill(1f);
        if (!ReferenceEquals(weights.Classifier, weights.TokenEmbedding))
        {
            Mamba3Weights.Fill(weights.Classifier, 1f / MathF.Sqrt(config.DModel), ref random);
        }

        return weights;
    }

    /// <summary>Copies every tensor to <paramref name="device"/> (new weights the caller disposes).</summary>
    public HybridWeights To(Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        ObjectDisposedException.ThrowIf(_disposed, this);
        HybridWeights copy = new(Config, device);
        try
        {
            foreach (((_, Tensor target), (_, Tensor source)) in copy.Named().Zip(Named()))
            {
                target.CopyFrom(source.ToArray());
            }

            return copy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }

    /// <summary>Writes the weights and the config to a safetensors file (see the file header).</summary>
    public void Save(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        Dictionary<string, string> metadata = new() { ["format"] = Format, ["config"] = Config.ToJson() };
        Safetensors.Write(path, Named(), metadata);
    }

    /// <summary>Whether <paramref name="path"/> is a safetensors file marked as a Kiln hybrid checkpoint.</summary>
    public static bool IsHybridCheckpoint(string path)
    {
        if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) || !File.Exists(path))
        {
            return false;
        }

        SafetensorsFile file = SafetensorsFile.Open(path);
        return file.Metadata.TryGetValue("format", out string? format) && format == Format;
    }

    /// <summary>Loads a hybrid checkpoint (float32 on the cpu device).</summary>
    /// <exception cref="ModelFormatException">The file is not a Kiln hybrid checkpoint, its config is invalid, or a
    /// tensor is missing, not floating point, or shaped differently from the config.</exception>
    public static HybridWeights Load(string path)
    {
        SafetensorsFile file = SafetensorsFile.Open(path);
        if (!file.Metadata.TryGetValue("format", out string? format) || format != Format || !file.Metadata.TryGetValue("config", out string? json))
        {
            throw new ModelFormatException(path, $"{path}: is a safetensors file without the kiln-hybrid metadata (format, config); save hybrid models with HybridWeights.Save.");
        }

        HybridConfig config;
        try
        {
            config = HybridConfig.FromJson(json);
        }
        catch (Exception e) when (e is ArgumentException or System.Text.Json.JsonException)
        {
            throw new ModelFormatException(path, $"{path}: the hybrid config in the metadata is invalid ({e.Message})", e);
        }

        // A config that asks for more parameters than the file can hold (2 bytes each at least) is refused before
        // anything is allocated.
        long fileBytes = file.Entries.Values.Sum(static e => e.Length);
        if (config.ParameterCount > fileBytes / 2)
        {
            throw new ModelFormatException(path, $"{path}: the config in the metadata needs {config.ParameterCount} parameters but the file's tensors hold {fileBytes} bytes; the checkpoint does not match its config, re-save it.");
        }

        HybridWeights weights = new(config);
        try
        {
            // Check every entry before reading any data.
            foreach ((string name, Tensor tensor) in weights.Named())
            {
                if (!file.Entries.TryGetValue(name, out SafetensorsEntry? entry))
                {
                    throw new ModelFormatException(path, $"{path}: tensor \"{name}\" is missing; the checkpoint does not match its config (layer_pattern \"{config.LayerPattern}\"), re-save it.");
                }

                if (!entry.IsFloat || !entry.Shape.AsSpan().SequenceEqual(tensor.Shape))
                {
                    throw new ModelFormatException(path, $"{path}: tensor \"{name}\" is {Tensor.FormatShape(entry.Shape)} {entry.FileDType} but the config needs {Tensor.FormatShape(tensor.Shape)} (float); the checkpoint does not match its config, re-save it.");
                }
            }

            foreach ((string name, Tensor tensor) in weights.Named())
            {
                using Tensor loaded = file.LoadFloat32(name);
                loaded.AsSpan().CopyTo(tensor.AsSpan());
            }

            return weights;
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>Frees every tensor. Safe to call twice.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        TokenEmbedding.Dispose();
        foreach (HybridLayerWeights layer in Layers)
        {
            layer.Dispose();
        }

        FinalNorm.Dispose();
        if (!ReferenceEquals(Classifier, TokenEmbedding))
        {
            Classifier.Dispose();
        }
    }
}
