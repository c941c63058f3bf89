// HybridConfig: the layer pattern (letters, repetition), JSON round trips over random configs, the mamba3 section
// (official names, d_model filled in, unknown keys as warnings), the Llama view, and one-line errors for bad configs.
using System.Text.Json;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Models.Hybrid;
using Kiln.Models.Mamba;
using Xunit;

namespace Kiln.Models.Tests.Hybrid;

public sealed class HybridConfigTests
{
    private const string Example = """
        {
          "d_model": 16, "vocab_size": 40, "n_layers": 12, "seq_len": 128, "hidden_dim": 24,
          "layer_pattern": "MMMMMA",
          "attention": { "n_heads": 4, "n_kv_heads": 2, "head_dim": 4, "rope": false },
          "mamba3": { "d_state": 8, "headdim": 8, "chunk_size": 4, "dropout": 0.1 }
        }
        """;

    [Property(MaxTest = 100)]
    public Property Json_RoundTrips() => Prop.ForAll(
        HybridCases.Cases([1, 2]).ToArbitrary(),
        c =>
        {
            string json = c.Config.ToJson();
            HybridConfig back = HybridConfig.FromJson(json);
            return (back == c.Config && back.ToJson() == json).Label($"{c}\n{json}");
        });

    [Fact]
    public void ShortPattern_RepeatsToTheLayerCount()
    {
        HybridConfig config = HybridConfig.FromJson(Example, out IReadOnlyList<string> warnings);
        Assert.Equal("MMMMMAMMMMMA", string.Concat(config.Kinds.Select(static k => k == HybridLayerKind.Attention ? 'A' : 'M')));
        Assert.Equal(2, config.AttentionLayers);
        Assert.Equal(10, config.Mamba3Layers);
        Assert.Equal(16, config.Mamba3!.DModel);
        Assert.False(config.Attention!.Rope);
        Assert.Contains(warnings, static w => w.Contains("dropout"));
    }

    [Fact]
    public void ParameterCount_CountsEveryTensor()
    {
        HybridConfig config = HybridConfig.FromJson(Example);
        using HybridWeights weights = new(config);
        Assert.Equal(weights.Named().Sum(static t => t.Tensor.Length), config.ParameterCount);
        HybridConfig separate = config with { SharedClassifier = false };
        using HybridWeights separateWeights = new(separate);
        Assert.Equal(separateWeights.Named().Sum(static t => t.Tensor.Length), separate.ParameterCount);
    }

    [Fact]
    public void LlamaView_CarriesTheSharedFields()
    {
        HybridConfig config = HybridConfig.FromJson(Example);
        Llama.LlamaConfig view = config.ToLlamaConfig();
        Assert.Equal((16, 24, 12, 4, 2, 4, 40, 128), (view.Dim, view.HiddenDim, view.Layers, view.Heads, view.KvHeads, view.HeadDim, view.VocabSize, view.SeqLen));

        // All-M: no attention section, placeholders that validate.
        HybridConfig mamba = config with { LayerPattern = "M", Attention = null };
        mamba.Validate();
        mamba.ToLlamaConfig().Validate();
    }

    [Theory]
    [InlineData("", "layer_pattern is empty")]
    [InlineData("MMXA", "'X' at position 2")]
    [InlineData("mma", "'m' at position 0")]
    [InlineData("MMMMM", "does not fill n_layers 12")]
    [InlineData("MMMMMMMMMMMMA", "does not fill n_layers 12")]
    public void BadPattern_IsAOneLineError(string pattern, string expected)
    {
        HybridConfig config = HybridConfig.FromJson(Example) with { LayerPattern = pattern };
        ArgumentException e = Assert.Throws<ArgumentException>(config.Validate);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("\"attention\": { \"n_heads\": 4, \"n_kv_heads\": 2, \"head_dim\": 4, \"rope\": false },", "", "no attention section")]
    [InlineData("\"mamba3\": { \"d_state\": 8, \"headdim\": 8, \"chunk_size\": 4, \"dropout\": 0.1 }", "\"mamba3\": { \"d_state\": 8, \"headdim\": 8, \"d_model\": 8 }", "mamba3.d_model 8 differs from d_model 16")]
    [InlineData("\"n_kv_heads\": 2", "\"n_kv_heads\": 3", "not a multiple of attention.n_kv_heads 3")]
    [InlineData("\"head_dim\": 4", "\"head_dim\": 5", "attention.head_dim 5 is odd")]
    [InlineData("\"hidden_dim\": 24", "\"hidden_dim\": 0", "hidden_dim is 0")]
    [InlineData("\"seq_len\": 128", "\"seq_len\": 100000", "seq_len 100000 is longer than attention layers run")]
    [InlineData("\"headdim\": 8", "\"headdim\": 7", "mamba3: headdim 7 does not divide")]
    public void BadSection_IsAOneLineError(string find, string replace, string expected)
    {
        string json = Example.Replace(find, replace, StringComparison.Ordinal);
        Assert.NotEqual(Example, json);
        ArgumentException e = Assert.Throws<ArgumentException>(() => HybridConfig.FromJson(json));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void MissingSection_IsAnError()
    {
        HybridConfig config = HybridConfig.FromJson(Example) with { Attention = null };
        ArgumentException e = Assert.Throws<ArgumentException>(config.Validate);
        Assert.Contains("no attention section", e.Message);
        HybridConfig noMamba = HybridConfig.FromJson(Example) with { Mamba3 = null };
        Assert.Contains("no mamba3 section", Assert.Throws<ArgumentException>(noMamba.Validate).Message);
    }

    [Theory]
    [InlineData("\"layer_patern\": \"M\",", "layer_patern")]
    [InlineData("", "layer_pattern")]
    [InlineData("\"mamba3\": 5,", "mamba3 is not a JSON object")]
    public void MalformedJson_IsAJsonError(string insert, string expected)
    {
        string json = Example.Replace("\"layer_pattern\": \"MMMMMA\",", insert, StringComparison.Ordinal);
        if (insert.StartsWith("\"mamba3\"", StringComparison.Ordinal))
        {
            json = Example.Replace("\"mamba3\": { \"d_state\": 8, \"headdim\": 8, \"chunk_size\": 4, \"dropout\": 0.1 }", "\"mamba3\": 5", StringComparison.Ordinal);
        }

        JsonException e = Assert.Throws<JsonException>(() => HybridConfig.FromJson(json));
        Assert.Contains(expected, e.Message);
        Assert.Throws<JsonException>(() => HybridConfig.FromJson("[1, 2]"));
    }

    [Fact]
    public void PureModels_NeedOnlyTheirSection()
    {
        HybridConfig transformer = HybridConfig.FromJson("""
            { "d_model": 8, "vocab_size": 5, "n_layers": 3, "seq_len": 16, "hidden_dim": 8, "layer_pattern": "A",
              "attention": { "n_heads": 2, "n_kv_heads": 2, "head_dim": 4 } }
            """);
        Assert.All(transformer.Kinds, static k => Assert.Equal(HybridLayerKind.Attention, k));
        Assert.True(transformer.Attention!.Rope);
        Assert.Null(transformer.Mamba3);

        HybridConfig mamba = HybridConfig.FromJson("""
            { "d_model": 8, "vocab_size": 5, "n_layers": 2, "seq_len": 1000000, "hidden_dim": 8, "layer_pattern": "MM",
              "mamba3": { "d_state": 4, "headdim": 4, "is_mimo": true, "mimo_rank": 2 } }
            """);
        Assert.Equal(2, mamba.Mamba3Layers);
        Assert.Equal(Mamba3Config.FromJson("""{ "d_model": 8, "d_state": 4, "headdim": 4, "is_mimo": true, "mimo_rank": 2 }"""), mamba.Mamba3);
    }
}
