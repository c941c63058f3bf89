// DSA checkpoints: one safetensors file whose __metadata__ holds "format": "kiln-dsa" and "config": the DsaConfig JSON
// (Llama fields, DSA fields, pattern). Tensor names: "tok_embeddings", "layers.{l}.{attention_norm|wq|wk|wv|wo|ffn_norm|
// w1|w2|w3}", "norm", "output" (only when the classifier is not shared), and "layers.{l}.indexer.{wq|w_proj|wk|
// k_norm.weight|k_norm.bias}" for the layers that have an indexer (a Shared layer's may be absent). Loading checks every
// tensor's shape and dtype against the config before reading it.
using Kiln.Devices;
using Kiln.Models.Formats;
using Kiln.Models.Llama;

namespace Kiln.Models.Dsa;

/// <summary>Saves and loads DSA models as one safetensors file with the config in its metadata.</summary>
public static class DsaCheckpoint
{
    /// <summary>The metadata value of "format" that marks a Kiln DSA checkpoint.</summary>
    public const string Format = "kiln-dsa";

    private static readonly string[] s_layerNames = ["attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"];

    /// <summary>Writes <paramref name="weights"/> to <paramref name="path"/>.</summary>
    public static void Save(DsaWeights weights, string path)
    {
        ArgumentNullException.ThrowIfNull(weights);
        Dictionary<string, string> metadata = new() { ["format"] = Format, ["config"] = weights.Config.ToJson() };
        Safetensors.Write(path, Named(weights), metadata);
    }

    /// <summary>Whether <paramref name="path"/> is a Kiln DSA checkpoint (a safetensors file with the format mark).</summary>
    public static bool IsDsaCheckpoint(string path)
    {
        if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) || !File.Exists(path))
        {
            return false;
        }

        SafetensorsFile file = SafetensorsFile.Open(path);
        return file.Metadata.TryGetValue("format", out string? format) && format == Format;
    }

    /// <summary>Loads a DSA checkpoint (float32) onto the cpu device.</summary>
    /// <exception cref="ModelFormatException">The file is not a Kiln DSA checkpoint, or a tensor is missing or misshapen.</exception>
    public static DsaWeights Load(string path)
    {
        SafetensorsFile file = SafetensorsFile.Open(path);
        if (!file.Metadata.TryGetValue("format", out string? format) || format != Format || !file.Metadata.TryGetValue("config", out string? json))
        {
            throw new ModelFormatException(path, $"{path}: is a safetensors file without the kiln-dsa metadata (format, config); save DSA models with DsaCheckpoint.Save.");
        }

        DsaConfig config;
        try
        {
            config = DsaConfig.FromJson(json);
        }
        catch (Exception e) when (e is ArgumentException or System.Text.Json.JsonException)
        {
            throw new ModelFormatException(path, $"{path}: the DSA config in the metadata is invalid ({e.Message})", e);
        }

        // Fill freshly allocated tensors in the order Named lists them.
        LlamaWeights dense = LlamaWeights.Allocate(config.Llama);
        DsaWeights weights = new(config, dense);
        try
        {
            for (int l = 0; l < config.Llama.Layers; l++)
            {
                if (file.Entries.ContainsKey($"layers.{l}.indexer.wq"))
                {
                    weights.SetIndexer(l, new DsaIndexerWeights(config));
                }
            }

            foreach ((string name, Tensor tensor) in Named(weights))
            {
                if (!file.Entries.TryGetValue(name, out SafetensorsEntry? entry))
                {
                    throw new ModelFormatException(path, $"{path}: tensor \"{name}\" is missing; the checkpoint is incomplete, re-save it.");
                }

                if (entry.DType != DType.Float32 || !entry.Shape.AsSpan().SequenceEqual(tensor.Shape))
                {
                    throw new ModelFormatException(path, $"{path}: tensor \"{name}\" is {Tensor.FormatShape(entry.Shape)} {entry.DType.Name()} but the config needs {Tensor.FormatShape(tensor.Shape)} float32.");
                }

                using Tensor loaded = file.Load(name);
                loaded.AsSpan().CopyTo(tensor.AsSpan());
            }

            weights.RequireIndexers(config.Pattern);
            return weights;
        }
        catch (ArgumentException e)
        {
            weights.Dispose();
            throw new ModelFormatException(path, $"{path}: {e.Message}", e);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    // Every tensor with its checkpoint name, in a fixed order.
    private static IEnumerable<(string Name, Tensor Tensor)> Named(DsaWeights weights)
    {
        LlamaWeights dense = weights.Dense;
        yield return ("tok_embeddings", dense.TokenEmbedding);
        for (int l = 0; l < dense.Layers.Count; l++)
        {
            int i = 0;
            foreach (Tensor tensor in dense.Layers[l].Tensors)
            {
                yield return ($"layers.{l}.{s_layerNames[i++]}", tensor);
            }

            if (weights.Indexers[l] is DsaIndexerWeights indexer)
            {
                int j = 0;
                foreach (Tensor tensor in indexer.Tensors)
                {
                    yield return ($"layers.{l}.{DsaIndexerWeights.TensorNames[j++]}", tensor);
                }
            }
        }

        yield return ("norm", dense.FinalNorm);
        if (!ReferenceEquals(dense.Classifier, dense.TokenEmbedding))
        {
            yield return ("output", dense.Classifier);
        }
    }
}
