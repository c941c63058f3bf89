// Damaged Hugging Face folders: each is refused with one ModelFormatException whose message names the file, the
// problem and the fix. A small random grouped-query model is written as a good folder (one file or two shards), then one
// thing is broken: a config key, a tensor's shape, the index, a shard, an extra tensor, a safetensors header that lies.

using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Kiln.Kernels;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Xunit;

namespace Kiln.Models.Tests.HuggingFace;

public sealed class HuggingFaceValidationTests : IDisposable
{
    private static readonly LlamaConfig s_config = new()
    {
        Dim = 12, HiddenDim = 15, Layers = 2, Heads = 4, KvHeads = 2, VocabSize = 23, SeqLen = 32, HeadDim = 4,
        RopeLayout = RopeLayout.HalfSplit, SharedClassifier = true,
    };

    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Theory]
    [InlineData("hidden_size", null, "config.json: has no hidden_size; it is required")]
    [InlineData("num_attention_heads", null, "config.json: has no num_attention_heads")]
    [InlineData("vocab_size", "\"big\"", "config.json: has vocab_size = \"big\"; it must be an integer")]
    [InlineData("num_key_value_heads", "3", "n_heads 4 is not a multiple of n_kv_heads 3")]
    [InlineData("rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8.0}", "sets rope_scaling of type 'llama3'")]
    [InlineData("rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}", "sets rope_scaling of type 'linear'")]
    [InlineData("attention_bias", "true", "sets attention_bias: true")]
    [InlineData("hidden_act", "\"gelu\"", "has hidden_act 'gelu'")]
    [InlineData("architectures", "[\"GPT2LMHeadModel\"]", "names architecture 'GPT2LMHeadModel'")]
    [InlineData("rms_norm_eps", "-1", "has rms_norm_eps = -1; it must be a positive finite number")]
    [InlineData("hidden_size", "13", "has tensor 'model.embed_tokens.weight' of shape [23, 12], but config.json")]
    public void BadConfig_IsNamed(string key, string? value, string expected)
    {
        string folder = Folder(shards: 1);
        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!.AsObject();
        if (value is null)
        {
            config.Remove(key);
        }
        else
        {
            config[key] = JsonNode.Parse(value);
        }

        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());

        AssertRefused(folder, expected);
    }

    [Fact]
    public void MissingConfig_AndMissingWeights_AreNamed()
    {
        string folder = Folder(shards: 1);
        File.Delete(Path.Combine(folder, HuggingFaceLlama.SingleFile));
        AssertRefused(folder, $"has neither {HuggingFaceLlama.SingleFile} nor {HuggingFaceLlama.IndexFile}");

        File.Delete(Path.Combine(folder, "config.json"));
        AssertRefused(folder, "config.json: does not exist");
        AssertRefused(_temp.File("nowhere"), "is not a folder");
    }

    [Fact]
    public void TensorOfTheWrongShape_IsNamed()
    {
        string folder = Folder(shards: 1);
        using LlamaWeights weights = CheckpointFiles.RandomWeights(s_config, seed: 2);
        List<(string Name, Tensor Tensor)> named = Named(weights);
        using Tensor wrong = Tensor.FromArray(new float[(s_config.KvDim + 2) * s_config.Dim], [s_config.KvDim + 2, s_config.Dim]);
        int at = named.FindIndex(static t => t.Name == "model.layers.1.self_attn.k_proj.weight");
        named[at] = (named[at].Name, wrong);
        Safetensors.Write(Path.Combine(folder, HuggingFaceLlama.SingleFile), named);

        AssertRefused(folder, "has tensor 'model.layers.1.self_attn.k_proj.weight' of shape [10, 12], but config.json");
    }

    [Fact]
    public void ExtraTensor_AndMissingTensor_AreNamed()
    {
        string folder = Folder(shards: 1);
        using LlamaWeights weights = CheckpointFiles.RandomWeights(s_config, seed: 2);
        using Tensor bias = Tensor.FromArray(new float[s_config.QueryDim], [s_config.QueryDim]);
        List<(string Name, Tensor Tensor)> named = Named(weights);
        Safetensors.Write(Path.Combine(folder, HuggingFaceLlama.SingleFile), [.. named, ("model.layers.0.self_attn.q_proj.bias", bias)]);
        AssertRefused(folder, "has tensor 'model.layers.0.self_attn.q_proj.bias', which Kiln's Llama model does not use");

        // A tied model with an lm_head says why it is extra.
        using Tensor head = Tensor.FromArray(new float[s_config.VocabSize * s_config.Dim], [s_config.VocabSize, s_config.Dim]);
        Safetensors.Write(Path.Combine(folder, HuggingFaceLlama.SingleFile), [.. named, ("lm_head.weight", head)]);
        AssertRefused(folder, "(config.json says tie_word_embeddings)");

        Safetensors.Write(Path.Combine(folder, HuggingFaceLlama.SingleFile), named.Where(static t => t.Name != "model.norm.weight"));
        AssertRefused(folder, "has no tensor 'model.norm.weight' in model.safetensors");
    }

    [Fact]
    public void IndexNamingAMissingShard_IsNamed()
    {
        string folder = Folder(shards: 2);
        File.Delete(Path.Combine(folder, HuggingFaceLlama.ShardName(1, 2)));

        AssertRefused(folder, $"in {HuggingFaceLlama.ShardName(1, 2)}, which does not exist; download the missing shard");
    }

    [Fact]
    public void IndexPlacingATensorInTheWrongShard_IsNamed()
    {
        string folder = Folder(shards: 2);
        string indexPath = Path.Combine(folder, HuggingFaceLlama.IndexFile);
        JsonObject index = JsonNode.Parse(File.ReadAllText(indexPath))!.AsObject();
        index["weight_map"]!["model.norm.weight"] = HuggingFaceLlama.ShardName(0, 2);
        File.WriteAllText(indexPath, index.ToJsonString());

        AssertRefused(folder, $"puts tensor 'model.norm.weight' in {HuggingFaceLlama.ShardName(0, 2)}, which does not hold it");
    }

    [Fact]
    public void IndexMissingATensor_OrLeavingTheFolder_IsNamed()
    {
        string folder = Folder(shards: 2);
        string indexPath = Path.Combine(folder, HuggingFaceLlama.IndexFile);
        string original = File.ReadAllText(indexPath);
        JsonObject index = JsonNode.Parse(original)!.AsObject();
        index["weight_map"]!.AsObject().Remove("model.norm.weight");
        File.WriteAllText(indexPath, index.ToJsonString());
        AssertRefused(folder, "holds tensor 'model.norm.weight', which model.safetensors.index.json does not list");

        index = JsonNode.Parse(original)!.AsObject();
        index["weight_map"]!["model.norm.weight"] = "../elsewhere.safetensors";
        File.WriteAllText(indexPath, index.ToJsonString());
        AssertRefused(folder, "in '../elsewhere.safetensors', which is not a file name in the folder");

        File.WriteAllText(indexPath, "{\"metadata\": {}}");
        AssertRefused(folder, "has no weight_map object");
    }

    [Theory]
    [InlineData("beyond", "outside the")]
    [InlineData("overlap", "has overlapping data for tensors")]
    [InlineData("truncated", "outside the")]
    public void LyingSafetensorsHeader_IsNamed(string lie, string expected)
    {
        string folder = Folder(shards: 1);
        string path = Path.Combine(folder, HuggingFaceLlama.SingleFile);
        byte[] file = File.ReadAllBytes(path);
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(file);
        JsonObject header = JsonNode.Parse(Encoding.UTF8.GetString(file, 8, (int)headerLength))!.AsObject();
        byte[] data = file[(8 + (int)headerLength)..];
        JsonArray offsets = header["model.norm.weight"]!["data_offsets"]!.AsArray();
        long begin = (long)offsets[0]!, end = (long)offsets[1]!;
        switch (lie)
        {
            case "beyond":
                header["model.norm.weight"]!["data_offsets"] = new JsonArray(data.Length + 8L, data.Length + 8L + (end - begin));
                break;
            case "overlap":
                JsonArray embedding = header["model.embed_tokens.weight"]!["data_offsets"]!.AsArray();
                header["model.norm.weight"]!["data_offsets"] = new JsonArray((long)embedding[0]!, (long)embedding[0]! + (end - begin));
                break;
            default:
                data = data[..^4];
                break;
        }

        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        byte[] lying = new byte[8 + json.Length + data.Length];
        BinaryPrimitives.WriteInt64LittleEndian(lying, json.Length);
        json.CopyTo(lying, 8);
        data.CopyTo(lying, 8 + json.Length);
        File.WriteAllBytes(path, lying);

        AssertRefused(folder, expected);
    }

    private static void AssertRefused(string folder, string expected)
    {
        ModelFormatException error = Assert.Throws<ModelFormatException>(() => HuggingFaceLlama.Load(folder));
        Assert.Contains(expected, error.Message);
        Assert.DoesNotContain('\n', error.Message);
    }

    private string Folder(int shards)
    {
        string folder = _temp.File($"model-{Guid.NewGuid():N}");
        using LlamaWeights weights = CheckpointFiles.RandomWeights(s_config, seed: 2);
        HuggingFaceLlama.Write(folder, weights, shards);
        return folder;
    }

    private static List<(string Name, Tensor Tensor)> Named(LlamaWeights weights)
    {
        List<(string Name, Tensor Tensor)> named = [("model.embed_tokens.weight", weights.TokenEmbedding)];
        for (int l = 0; l < weights.Layers.Count; l++)
        {
            LlamaLayerWeights layer = weights.Layers[l];
            string prefix = $"model.layers.{l}.";
            named.Add((prefix + "input_layernorm.weight", layer.AttentionNorm));
            named.Add((prefix + "self_attn.q_proj.weight", layer.Wq));
            named.Add((prefix + "self_attn.k_proj.weight", layer.Wk));
            named.Add((prefix + "self_attn.v_proj.weight", layer.Wv));
            named.Add((prefix + "self_attn.o_proj.weight", layer.Wo));
            named.Add((prefix + "post_attention_layernorm.weight", layer.FfnNorm));
            named.Add((prefix + "mlp.gate_proj.weight", layer.W1));
            named.Add((prefix + "mlp.up_proj.weight", layer.W3));
            named.Add((prefix + "mlp.down_proj.weight", layer.W2));
        }

        named.Add(("model.norm.weight", weights.FinalNorm));
        return named;
    }
}
