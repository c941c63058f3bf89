// Hugging Face Llama folders (transformers' LlamaForCausalLM, and MistralForCausalLM without a sliding window), read
// into and written from LlamaWeights.
//
// A folder holds config.json, the weights as model.safetensors or as shards model-0000K-of-0000N.safetensors listed by
// model.safetensors.index.json ({"weight_map": {tensor name: shard file name}}), and usually tokenizer.json and
// tokenizer_config.json (read by HuggingFaceTokenizer; Write can add a tokenizer.json).
//
// config.json → LlamaConfig: hidden_size → dim, intermediate_size → hidden_dim, num_hidden_layers → n_layers,
// num_attention_heads → n_heads, num_key_value_heads → n_kv_heads (default n_heads), head_dim (default dim / n_heads),
// rms_norm_eps → norm_eps (default 1e-6, transformers' default), rope_theta (default 10000), vocab_size,
// max_position_embeddings → seq_len (default 2048), tie_word_embeddings → shared_classifier (default false).
// Keys that would change the function and that Kiln does not run are refused by name: rope_scaling other than null or
// "default", attention_bias / mlp_bias true, hidden_act other than silu, a sliding window shorter than the context.
// torch_dtype is informational: the tensors' stored dtypes decide.
//
// Tensors, [out, in] as PyTorch stores them (Kiln's order, no transposition): model.embed_tokens.weight [V, D];
// per block N model.layers.N.input_layernorm.weight [D], self_attn.{q,k,v,o}_proj.weight ([H·Dh, D], [Hkv·Dh, D],
// [Hkv·Dh, D], [D, H·Dh]), post_attention_layernorm.weight [D], mlp.gate_proj (w1) [F, D], mlp.up_proj (w3) [F, D],
// mlp.down_proj (w2) [D, F]; model.norm.weight [D]; lm_head.weight [V, D], absent when the embeddings are tied. Every
// tensor must be present exactly once, in the shard the index names, with its shape; any other tensor is an error (it
// would be a part of the model Kiln does not run), except the rotary_emb.inv_freq buffers older exports carry, which
// RoPE recomputes from rope_theta.
//
// RoPE: transformers' Llama rotates half-split pairs (i, i + Dh/2) of each head ("rotate_half") on weights stored as
// trained, so a folder loads as RopeLayout.HalfSplit with every row as stored; the query heads and the Hkv key heads
// both use that pairing. (llama.cpp's converter instead permutes Wq/Wk rows into adjacent pairs; LlamaRopeLayout does
// the same when Kiln writes GGUF or llama2.c.) Writing permutes adjacent-layout weights into the half-split order.
//
// Dtypes: matrices in F32, F16 or BF16 stay in that dtype when they all share it (LlamaWeights holds one matrix
// dtype); mixed matrices, or F64 ones, are read as float32. Norms are always float32.

using System.Text.Json;
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Llama;
using Kiln.Models.Tokenizers;

namespace Kiln.Models.Formats;

/// <summary>A Hugging Face Llama folder whose config and tensor index have been validated (no weights read yet).</summary>
public sealed class HuggingFaceModel
{
    private readonly Dictionary<string, (SafetensorsFile File, SafetensorsEntry Entry)> _tensors;

    internal HuggingFaceModel(
        string directory,
        LlamaConfig config,
        string architecture,
        string? torchDType,
        IReadOnlyList<string> shards,
        Dictionary<string, (SafetensorsFile File, SafetensorsEntry Entry)> tensors,
        DType matrixDType)
    {
        Directory = directory;
        Config = config;
        Architecture = architecture;
        TorchDType = torchDType;
        Shards = shards;
        _tensors = tensors;
        MatrixDType = matrixDType;
    }

    /// <summary>The folder.</summary>
    public string Directory { get; }

    /// <summary>The model config (RoPE layout half-split).</summary>
    public LlamaConfig Config { get; }

    /// <summary>The architecture named in config.json (LlamaForCausalLM or MistralForCausalLM).</summary>
    public string Architecture { get; }

    /// <summary>config.json's torch_dtype, or null when absent.</summary>
    public string? TorchDType { get; }

    /// <summary>The safetensors files, by file name, in order.</summary>
    public IReadOnlyList<string> Shards { get; }

    /// <summary>The dtype the matrices load as.</summary>
    public DType MatrixDType { get; }

    /// <summary>The tensor entries by name, each with the file that holds it.</summary>
    public IReadOnlyDictionary<string, (SafetensorsFile File, SafetensorsEntry Entry)> Tensors => _tensors;
}

/// <summary>Reads and writes Llama models as Hugging Face folders (config.json + safetensors).</summary>
public static class HuggingFaceLlama
{
    /// <summary>The config file name.</summary>
    public const string ConfigFile = "config.json";

    /// <summary>The single-file weights name.</summary>
    public const string SingleFile = "model.safetensors";

    /// <summary>The shard index name.</summary>
    public const string IndexFile = "model.safetensors.index.json";

    /// <summary>The architecture Kiln writes.</summary>
    public const string LlamaArchitecture = "LlamaForCausalLM";

    private const long MaxDim = 1 << 20;

    /// <summary>Whether <paramref name="path"/> is a folder (the form a Hugging Face model takes).</summary>
    public static bool IsFolder(string path) => System.IO.Directory.Exists(path);

    /// <summary>
    /// Reads config.json and the safetensors headers of the folder <paramref name="directory"/> and checks every
    /// tensor against the config (present once, in the named shard, with its shape; nothing extra).
    /// </summary>
    /// <exception cref="ModelFormatException">A file is missing or malformed, the architecture or a config key is one Kiln
    /// does not run, or a tensor is missing, extra, duplicated, misshapen or of a non-float dtype.</exception>
    public static HuggingFaceModel Open(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (!System.IO.Directory.Exists(directory))
        {
            throw Fail(directory, "is not a folder", "pass the folder that holds config.json and the safetensors files");
        }

        (LlamaConfig config, string architecture, string? torchDType) = ReadConfig(Path.Combine(directory, ConfigFile));
        (List<string> shards, Dictionary<string, (SafetensorsFile, SafetensorsEntry)> tensors) = ReadTensorIndex(directory);

        // Every expected tensor with its shape and a float dtype; then nothing else.
        Dictionary<string, int[]> expected = ExpectedShapes(config);
        HashSet<DType> matrixTypes = [];
        foreach ((string name, int[] shape) in expected)
        {
            if (!tensors.TryGetValue(name, out (SafetensorsFile File, SafetensorsEntry Entry) found))
            {
                throw Fail(directory, $"has no tensor '{name}' in {string.Join(", ", shards)}", "the model is incomplete; download the missing shard or export it again");
            }

            SafetensorsEntry entry = found.Entry;
            if (!entry.Shape.SequenceEqual(shape))
            {
                throw Fail(found.File.Path, $"has tensor '{name}' of shape {Tensor.FormatShape(entry.Shape)}, but config.json (hidden {config.Dim}, intermediate {config.HiddenDim}, heads {config.Heads}/{config.KvHeads}, head_dim {config.HeadDim}, vocab {config.VocabSize}) needs {Tensor.FormatShape(shape)}", "the config does not belong to these weights");
            }

            if (!entry.IsFloat)
            {
                throw Fail(found.File.Path, $"has tensor '{name}' in {entry.FileDType}", "Kiln reads F32, F16, BF16 and F64 weights; export the model unquantized");
            }

            if (shape.Length == 2)
            {
                matrixTypes.Add(entry.IsFloat64 ? DType.Float32 : entry.DType);
            }
        }

        foreach ((string name, (SafetensorsFile file, _)) in tensors)
        {
            if (!expected.ContainsKey(name))
            {
                throw Fail(file.Path, $"has tensor '{name}', which Kiln's Llama model does not use{(name == "lm_head.weight" ? " (config.json says tie_word_embeddings)" : string.Empty)}", "the model has parts Kiln does not run (ignoring them would change its output)");
            }
        }

        DType matrixDType = matrixTypes.Count == 1 ? matrixTypes.Single() : DType.Float32;
        return new HuggingFaceModel(directory, config, architecture, torchDType, shards, tensors, matrixDType);
    }

    /// <summary>Loads the folder <paramref name="directory"/> onto <paramref name="device"/> (cpu when null).</summary>
    /// <exception cref="ModelFormatException">See <see cref="Open"/>; also a shard that changed while reading.</exception>
    public static LlamaWeights Load(string directory, Device? device = null) => Load(Open(directory), device);

    /// <summary>Loads an opened folder onto <paramref name="device"/> (cpu when null); the config is <c>weights.Config</c>.</summary>
    public static LlamaWeights Load(HuggingFaceModel model, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(model);

        // Fill CPU weights tensor by tensor (on the CPU device asked for, with its thread count), then move them when
        // another device was asked for.
        CpuDevice cpu = device as CpuDevice ?? CpuDevice.Default;
        LlamaWeights weights = LlamaWeights.Allocate(model.Config, cpu, model.MatrixDType);
        try
        {
            foreach ((string name, Tensor tensor) in Named(weights))
            {
                (SafetensorsFile file, _) = model.Tensors[name];
                file.ReadInto(name, tensor);
            }

            if (device is null || device is CpuDevice)
            {
                return weights;
            }

            using (weights)
            {
                return weights.To(device);
            }
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads config.json at <paramref name="path"/> into a config (half-split RoPE), with the architecture and
    /// torch_dtype it names.
    /// </summary>
    /// <exception cref="ModelFormatException">The file is missing or not JSON, a key is missing or out of range, or it
    /// describes a model Kiln does not run; the message names the key.</exception>
    public static (LlamaConfig Config, string Architecture, string? TorchDType) ReadConfig(string path)
    {
        if (!File.Exists(path))
        {
            throw Fail(path, "does not exist", "a Hugging Face model folder needs its config.json; download it with the weights");
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        {
            throw Fail(path, $"cannot be read as JSON ({OneLine(e.Message)})", "the file is damaged; download it again");
        }

        using (document)
        {
            JsonElement root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw Fail(path, "is not a JSON object", "the file is damaged; download it again");
            }

            // The architecture: Llama, or Mistral whose sliding window (if any) covers the whole context.
            string architecture = Architecture(path, root);
            int dim = Int(path, root, "hidden_size", null, 1, MaxDim);
            int hidden = Int(path, root, "intermediate_size", null, 1, MaxDim);
            int layers = Int(path, root, "num_hidden_layers", null, 1, 4096);
            int heads = Int(path, root, "num_attention_heads", null, 1, MaxDim);
            int kvHeads = Int(path, root, "num_key_value_heads", heads, 1, heads);
            int vocab = Int(path, root, "vocab_size", null, 1, int.MaxValue);
            int seqLen = Int(path, root, "max_position_embeddings", 2048, 1, int.MaxValue);
            if (!Has(root, "head_dim") && dim % heads != 0)
            {
                throw Fail(path, $"has hidden_size {dim} not divisible by num_attention_heads {heads} and no head_dim", "add head_dim, or fix the head count");
            }

            int headDim = Int(path, root, "head_dim", dim / heads, 1, MaxDim);
            float eps = Float(path, root, "rms_norm_eps", 1e-6f);
            float theta = Float(path, root, "rope_theta", 10000f);
            bool tied = Bool(path, root, "tie_word_embeddings", false);
            string? torchDType = Has(root, "torch_dtype") && root.GetProperty("torch_dtype").ValueKind == JsonValueKind.String
                ? root.GetProperty("torch_dtype").GetString() : null;

            // What Kiln's Llama block does not compute.
            RequireNoRopeScaling(path, root);
            if (Bool(path, root, "attention_bias", false))
            {
                throw Fail(path, "sets attention_bias: true", "Kiln's Llama projections have no biases; this model is not supported");
            }

            if (Bool(path, root, "mlp_bias", false))
            {
                throw Fail(path, "sets mlp_bias: true", "Kiln's Llama feed-forward has no biases; this model is not supported");
            }

            if (Has(root, "hidden_act") && root.GetProperty("hidden_act").ToString() != "silu")
            {
                throw Fail(path, $"has hidden_act '{root.GetProperty("hidden_act")}'", "Kiln's Llama feed-forward is SwiGLU (silu); this model is not supported");
            }

            if (Has(root, "sliding_window") && Int(path, root, "sliding_window", null, 1, int.MaxValue) < seqLen)
            {
                throw Fail(path, $"has sliding_window {root.GetProperty("sliding_window")} shorter than max_position_embeddings {seqLen}", "Kiln attends to the whole context; sliding-window attention is not supported");
            }

            LlamaConfig config = new()
            {
                Dim = dim,
                HiddenDim = hidden,
                Layers = layers,
                Heads = heads,
                KvHeads = kvHeads,
                VocabSize = vocab,
                SeqLen = seqLen,
                HeadDim = headDim,
                NormEps = eps,
                RopeTheta = theta,
                RopeLayout = RopeLayout.HalfSplit,
                SharedClassifier = tied,
            };
            try
            {
                config.Validate();
            }
            catch (ArgumentException e)
            {
                throw Fail(path, $"describes an inconsistent model: {e.Message.TrimEnd('.')}", "fix config.json");
            }

            if ((long)vocab * dim > Tensor.MaxElements || (long)hidden * dim > Tensor.MaxElements || (long)config.QueryDim * dim > Tensor.MaxElements)
            {
                throw Fail(path, $"declares a matrix of more than {Tensor.MaxElements} elements (vocab {vocab}, intermediate {hidden}, hidden {dim})", "the model is too large for one Kiln tensor");
            }

            return (config, architecture, torchDType);
        }
    }

    /// <summary>
    /// Writes <paramref name="weights"/> as a Hugging Face folder <paramref name="directory"/> (created if needed):
    /// config.json, and the tensors as model.safetensors (<paramref name="shards"/> = 1) or as that many shards with
    /// model.safetensors.index.json. Adjacent-layout weights have their query and key rows permuted into the half-split
    /// order. Matrices are written in <paramref name="matrices"/> (float32, float16 or bfloat16; rounded to nearest) or,
    /// when null, as stored (Q8_0 dequantized to float32); norms stay float32. <paramref name="tokenizerJson"/>, when
    /// given, is written as tokenizer.json (see <see cref="HuggingFaceTokenizer.ToJson(Llama2cTokenizer)"/>).
    /// </summary>
    /// <exception cref="ArgumentException">Fewer than one shard, more shards than tensors, or a matrix dtype that is not
    /// float32, float16 or bfloat16.</exception>
    public static void Write(string directory, LlamaWeights weights, int shards = 1, string? tokenizerJson = null, DType? matrices = null)
    {
        ArgumentNullException.ThrowIfNull(weights);
        LlamaConfig c = weights.Config;
        List<(string Name, Tensor Tensor)> named = [.. Named(weights)];
        if (shards < 1 || shards > named.Count)
        {
            throw new ArgumentException($"HuggingFaceLlama.Write: shards is {shards}; pass 1 to {named.Count} (one per tensor at most).", nameof(shards));
        }

        DType target = matrices ?? (weights.DType == DType.Q8_0 ? DType.Float32 : weights.DType);
        if (target is not (DType.Float32 or DType.Float16 or DType.BFloat16))
        {
            throw new ArgumentException($"HuggingFaceLlama.Write: matrices cannot be written as {target.Name()}; pass float32, float16 or bfloat16.", nameof(matrices));
        }

        System.IO.Directory.CreateDirectory(directory);
        LlamaWeights? converted = c.RopeLayout == RopeLayout.HalfSplit ? null : LlamaRopeLayout.Convert(weights, RopeLayout.HalfSplit);
        List<Tensor> temporaries = [];
        try
        {
            if (converted is not null)
            {
                named = [.. Named(converted)];
            }

            // Matrices in the target dtype (Q8_0 has no safetensors dtype: it is dequantized).
            for (int i = 0; i < named.Count; i++)
            {
                Tensor tensor = named[i].Tensor;
                if (tensor.Rank == 2 && tensor.DType != target)
                {
                    Tensor retyped = Retype(tensor, target);
                    temporaries.Add(retyped);
                    named[i] = (named[i].Name, retyped);
                }
            }

            // The tensors split into contiguous runs of about equal count, one per shard.
            Dictionary<string, string> weightMap = new(StringComparer.Ordinal);
            for (int s = 0; s < shards; s++)
            {
                int begin = (int)((long)named.Count * s / shards);
                int end = (int)((long)named.Count * (s + 1) / shards);
                string file = shards == 1 ? SingleFile : ShardName(s, shards);
                List<(string Name, Tensor Tensor)> part = named.GetRange(begin, end - begin);
                Safetensors.Write(Path.Combine(directory, file), part, new Dictionary<string, string> { ["format"] = "pt" });
                foreach ((string name, _) in part)
                {
                    weightMap[name] = file;
                }
            }

            if (shards > 1)
            {
                long totalBytes = named.Sum(static t => t.Tensor.ByteLength);
                WriteIndex(Path.Combine(directory, IndexFile), weightMap, totalBytes);
            }
            else
            {
                File.Delete(Path.Combine(directory, IndexFile));
            }

            File.WriteAllText(Path.Combine(directory, ConfigFile), ConfigJson(c, target));
            if (tokenizerJson is not null)
            {
                File.WriteAllText(Path.Combine(directory, HuggingFaceTokenizer.FileName), tokenizerJson);
            }
        }
        finally
        {
            converted?.Dispose();
            foreach (Tensor tensor in temporaries)
            {
                tensor.Dispose();
            }
        }
    }

    // A CPU copy of a matrix in float32, float16 or bfloat16 (rounded to nearest even).
    private static Tensor Retype(Tensor tensor, DType dtype)
    {
        float[] values = tensor.ToArray();
        if (dtype == DType.Float32)
        {
            return Tensor.FromArray(values, tensor.Shape);
        }

        ushort[] bits = new ushort[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            bits[i] = dtype == DType.Float16 ? BitConverter.HalfToUInt16Bits((Half)values[i]) : DTypes.SingleToBFloat16(values[i]);
        }

        return Tensor.FromBits(bits, tensor.Shape, dtype);
    }

    /// <summary>The file name of shard <paramref name="index"/> (0-based) of <paramref name="count"/>: model-00001-of-00003.safetensors.</summary>
    public static string ShardName(int index, int count) => $"model-{index + 1:D5}-of-{count:D5}.safetensors";

    /// <summary>The config.json text transformers writes for <paramref name="config"/> with matrices in <paramref name="dtype"/>.</summary>
    public static string ConfigJson(LlamaConfig config, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(config);
        using MemoryStream buffer = new();
        using (Utf8JsonWriter writer = new(buffer, new JsonWriterOptions { Indented = true }))
        {
            writer.WriteStartObject();
            writer.WriteStartArray("architectures");
            writer.WriteStringValue(LlamaArchitecture);
            writer.WriteEndArray();
            writer.WriteString("model_type", "llama");
            writer.WriteNumber("hidden_size", config.Dim);
            writer.WriteNumber("intermediate_size", config.HiddenDim);
            writer.WriteNumber("num_hidden_layers", config.Layers);
            writer.WriteNumber("num_attention_heads", config.Heads);
            writer.WriteNumber("num_key_value_heads", config.KvHeads);
            writer.WriteNumber("head_dim", config.HeadDim);
            writer.WriteNumber("vocab_size", config.VocabSize);
            writer.WriteNumber("max_position_embeddings", config.SeqLen);
            writer.WriteNumber("rms_norm_eps", config.NormEps);
            writer.WriteNumber("rope_theta", config.RopeTheta);
            writer.WriteNull("rope_scaling");
            writer.WriteString("hidden_act", "silu");
            writer.WriteBoolean("attention_bias", false);
            writer.WriteBoolean("mlp_bias", false);
            writer.WriteBoolean("tie_word_embeddings", config.SharedClassifier);
            writer.WriteString("torch_dtype", dtype switch
            {
                DType.Float16 => "float16",
                DType.BFloat16 => "bfloat16",
                _ => "float32",
            });
            writer.WriteNumber("bos_token_id", 1);
            writer.WriteNumber("eos_token_id", 2);
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }

    // The tensors of the weights with their Hugging Face names, in the order transformers lists them.
    private static IEnumerable<(string Name, Tensor Tensor)> Named(LlamaWeights weights)
    {
        yield return ("model.embed_tokens.weight", weights.TokenEmbedding);
        for (int l = 0; l < weights.Layers.Count; l++)
        {
            LlamaLayerWeights layer = weights.Layers[l];
            string prefix = $"model.layers.{l}.";
            yield return (prefix + "input_layernorm.weight", layer.AttentionNorm);
            yield return (prefix + "self_attn.q_proj.weight", layer.Wq);
            yield return (prefix + "self_attn.k_proj.weight", layer.Wk);
            yield return (prefix + "self_attn.v_proj.weight", layer.Wv);
            yield return (prefix + "self_attn.o_proj.weight", layer.Wo);
            yield return (prefix + "post_attention_layernorm.weight", layer.FfnNorm);
            yield return (prefix + "mlp.gate_proj.weight", layer.W1);
            yield return (prefix + "mlp.up_proj.weight", layer.W3);
            yield return (prefix + "mlp.down_proj.weight", layer.W2);
        }

        yield return ("model.norm.weight", weights.FinalNorm);
        if (!weights.Config.SharedClassifier)
        {
            yield return ("lm_head.weight", weights.Classifier);
        }
    }

    // Every tensor name of the config with its shape, outermost first.
    private static Dictionary<string, int[]> ExpectedShapes(LlamaConfig c)
    {
        Dictionary<string, int[]> shapes = new(StringComparer.Ordinal)
        {
            ["model.embed_tokens.weight"] = [c.VocabSize, c.Dim],
            ["model.norm.weight"] = [c.Dim],
        };
        for (int l = 0; l < c.Layers; l++)
        {
            string prefix = $"model.layers.{l}.";
            shapes[prefix + "input_layernorm.weight"] = [c.Dim];
            shapes[prefix + "self_attn.q_proj.weight"] = [c.QueryDim, c.Dim];
            shapes[prefix + "self_attn.k_proj.weight"] = [c.KvDim, c.Dim];
            shapes[prefix + "self_attn.v_proj.weight"] = [c.KvDim, c.Dim];
            shapes[prefix + "self_attn.o_proj.weight"] = [c.Dim, c.QueryDim];
            shapes[prefix + "post_attention_layernorm.weight"] = [c.Dim];
            shapes[prefix + "mlp.gate_proj.weight"] = [c.HiddenDim, c.Dim];
            shapes[prefix + "mlp.up_proj.weight"] = [c.HiddenDim, c.Dim];
            shapes[prefix + "mlp.down_proj.weight"] = [c.Dim, c.HiddenDim];
        }

        if (!c.SharedClassifier)
        {
            shapes["lm_head.weight"] = [c.VocabSize, c.Dim];
        }

        return shapes;
    }

    // The safetensors files of the folder and every tensor in them: model.safetensors alone, or the shards the index
    // names, each tensor in exactly the shard the index gives. RoPE inverse-frequency buffers are dropped.
    private static (List<string> Shards, Dictionary<string, (SafetensorsFile, SafetensorsEntry)> Tensors) ReadTensorIndex(string directory)
    {
        string indexPath = Path.Combine(directory, IndexFile);
        string singlePath = Path.Combine(directory, SingleFile);
        Dictionary<string, (SafetensorsFile, SafetensorsEntry)> tensors = new(StringComparer.Ordinal);
        if (!File.Exists(indexPath))
        {
            if (!File.Exists(singlePath))
            {
                throw Fail(directory, $"has neither {SingleFile} nor {IndexFile}", "Kiln reads Hugging Face weights in safetensors form; download those files (not pytorch_model.bin)");
            }

            SafetensorsFile single = SafetensorsFile.Open(singlePath);
            foreach ((string name, SafetensorsEntry entry) in single.Entries)
            {
                if (!IsRotaryBuffer(name))
                {
                    tensors[name] = (single, entry);
                }
            }

            return ([SingleFile], tensors);
        }

        // The index: a weight_map of tensor name → shard file, each name once.
        Dictionary<string, string> weightMap = ReadWeightMap(indexPath);
        List<string> shards = [.. weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal)];
        Dictionary<string, SafetensorsFile> files = new(StringComparer.Ordinal);
        foreach (string shard in shards)
        {
            string shardPath = Path.Combine(directory, shard);
            if (!File.Exists(shardPath))
            {
                string first = weightMap.First(pair => pair.Value == shard).Key;
                throw Fail(indexPath, $"puts tensor '{first}' in {shard}, which does not exist", "download the missing shard");
            }

            files[shard] = SafetensorsFile.Open(shardPath);
        }

        foreach ((string name, string shard) in weightMap)
        {
            SafetensorsFile file = files[shard];
            if (!file.Entries.TryGetValue(name, out SafetensorsEntry? entry))
            {
                throw Fail(indexPath, $"puts tensor '{name}' in {shard}, which does not hold it", "the index does not match the shards; download them again");
            }

            if (!IsRotaryBuffer(name))
            {
                tensors[name] = (file, entry);
            }
        }

        // A shard may hold only what the index assigns to it.
        foreach ((string shard, SafetensorsFile file) in files)
        {
            foreach (string name in file.Entries.Keys)
            {
                if (!weightMap.TryGetValue(name, out string? listed) || listed != shard)
                {
                    string where = listed is null ? $"which {IndexFile} does not list" : $"which {IndexFile} places in {listed}";
                    throw Fail(file.Path, $"holds tensor '{name}', {where}", "the index does not match the shards; download them again");
                }
            }
        }

        return (shards, tensors);
    }

    private static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(indexPath));
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        {
            throw Fail(indexPath, $"cannot be read as JSON ({OneLine(e.Message)})", "the file is damaged; download it again");
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object
                || !document.RootElement.TryGetProperty("weight_map", out JsonElement map) || map.ValueKind != JsonValueKind.Object)
            {
                throw Fail(indexPath, "has no weight_map object", "the file is damaged; download it again");
            }

            Dictionary<string, string> weightMap = new(StringComparer.Ordinal);
            foreach (JsonProperty entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String)
                {
                    throw Fail(indexPath, $"maps tensor '{entry.Name}' to {entry.Value.ValueKind}, not a file name", "the file is damaged; download it again");
                }

                // A shard is a plain file name in the folder: no directories, no way out of it.
                string shard = entry.Value.GetString()!;
                if (shard.Length == 0 || shard != Path.GetFileName(shard) || shard is "." or ".." || shard.Contains('/') || shard.Contains('\\'))
                {
                    throw Fail(indexPath, $"puts tensor '{entry.Name}' in '{shard}', which is not a file name in the folder", "the index is damaged; download it again");
                }

                if (!weightMap.TryAdd(entry.Name, shard))
                {
                    throw Fail(indexPath, $"lists tensor '{entry.Name}' twice", "the index is damaged; download it again");
                }
            }

            return weightMap;
        }
    }

    private static void WriteIndex(string path, Dictionary<string, string> weightMap, long totalBytes)
    {
        using FileStream stream = File.Create(path);
        using Utf8JsonWriter writer = new(stream, new JsonWriterOptions { Indented = true });
        writer.WriteStartObject();
        writer.WriteStartObject("metadata");
        writer.WriteNumber("total_size", totalBytes);
        writer.WriteEndObject();
        writer.WriteStartObject("weight_map");
        foreach ((string name, string file) in weightMap.OrderBy(static p => p.Key, StringComparer.Ordinal))
        {
            writer.WriteString(name, file);
        }

        writer.WriteEndObject();
        writer.WriteEndObject();
    }

    // Older exports store RoPE's inverse frequencies as a buffer; they are recomputed from rope_theta.
    private static bool IsRotaryBuffer(string name) => name.EndsWith(".self_attn.rotary_emb.inv_freq", StringComparison.Ordinal);

    private static string Architecture(string path, JsonElement root)
    {
        if (!root.TryGetProperty("architectures", out JsonElement list) || list.ValueKind != JsonValueKind.Array || list.GetArrayLength() != 1
            || list[0].ValueKind != JsonValueKind.String)
        {
            throw Fail(path, "has no architectures list naming one model class", "Kiln runs [\"LlamaForCausalLM\"]; add it if this is a Llama model");
        }

        string architecture = list[0].GetString()!;
        if (architecture is not (LlamaArchitecture or "MistralForCausalLM"))
        {
            throw Fail(path, $"names architecture '{architecture}'", "Kiln runs LlamaForCausalLM (and MistralForCausalLM without a sliding window) from Hugging Face folders; this model is not supported");
        }

        return architecture;
    }

    // rope_scaling: null, absent, or {"rope_type"/"type": "default"}; anything else changes the frequencies.
    private static void RequireNoRopeScaling(string path, JsonElement root)
    {
        if (!root.TryGetProperty("rope_scaling", out JsonElement scaling) || scaling.ValueKind == JsonValueKind.Null)
        {
            return;
        }

        string? kind = scaling.ValueKind != JsonValueKind.Object ? null
            : scaling.TryGetProperty("rope_type", out JsonElement type) ? type.ToString()
            : scaling.TryGetProperty("type", out JsonElement legacy) ? legacy.ToString() : null;
        if (kind != "default")
        {
            throw Fail(path, $"sets rope_scaling of type '{kind ?? scaling.ToString()}'", "Kiln's RoPE uses the plain rope_theta frequencies and does not apply RoPE scaling (llama3, linear, dynamic, yarn) yet; this model is not supported");
        }
    }

    private static bool Has(JsonElement root, string key) => root.TryGetProperty(key, out JsonElement value) && value.ValueKind != JsonValueKind.Null;

    private static int Int(string path, JsonElement root, string key, int? fallback, long min, long max)
    {
        if (!Has(root, key))
        {
            return fallback ?? throw Fail(path, $"has no {key}", "it is required; the file is incomplete");
        }

        JsonElement value = root.GetProperty(key);
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out long number) || number < min || number > max)
        {
            throw Fail(path, $"has {key} = {value.GetRawText()}", $"it must be an integer from {min} to {max}");
        }

        return (int)number;
    }

    private static float Float(string path, JsonElement root, string key, float fallback)
    {
        if (!Has(root, key))
        {
            return fallback;
        }

        JsonElement value = root.GetProperty(key);
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetDouble(out double number) || !(number > 0) || !float.IsFinite((float)number) || (float)number == 0)
        {
            throw Fail(path, $"has {key} = {value.GetRawText()}", "it must be a positive finite number");
        }

        return (float)number;
    }

    private static bool Bool(string path, JsonElement root, string key, bool fallback)
    {
        if (!Has(root, key))
        {
            return fallback;
        }

        JsonElement value = root.GetProperty(key);
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Fail(path, $"has {key} = {value.GetRawText()}", "it must be true or false"),
        };
    }

    private static string OneLine(string text) => text.ReplaceLineEndings(" ").Trim();

    private static ModelFormatException Fail(string path, string problem, string fix) => GgufFile.Fail(path, problem, fix);
}
