// Mamba3Config (official JSON names, derived sizes, unknown keys as warnings, one-line errors for bad values) and
// Mamba3Weights (official tensor names, safetensors round trip with F32/F16/BF16/F64 tensors converted to float32,
// missing or misshapen tensors named in the error), plus the safetensors reader's float64 support.
using System.Text.Json;
using Kiln.Kernels;
using Kiln.Models.Formats;
using Kiln.Models.Mamba;
using Xunit;

namespace Kiln.Models.Tests.Mamba;

public sealed class Mamba3ConfigAndWeightsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kiln-mamba3").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void DerivedSizes_FollowTheOfficialModule()
    {
        // The brief's CPU config: d_model 512, N 64, P 64 → d_inner 1024, H 16, K 16, in_proj 2·1024 + 2·64 + 48 + 16.
        Mamba3Config siso = new() { DModel = 512, DState = 64, HeadDim = 64 };
        Assert.Equal((1024, 16, 16, 1, 2240), (siso.DInner, siso.Heads, siso.AngleCount, siso.Rank, siso.InProjDim));
        Assert.Equal(RopeLayout.Adjacent, siso.AngleLayout);
        Assert.Equal(32, new Mamba3Config { DModel = 2048 }.AngleCount);

        // MIMO: R = 4 scales B and C; half-split pairs by default; mimo_rank is ignored without is_mimo.
        Mamba3Config mimo = siso with { IsMimo = true, MimoRank = 4, ChunkSize = 16 };
        Assert.Equal((4, 2 * 1024 + (2 * 4 * 64) + 48 + 16), (mimo.Rank, mimo.InProjDim));
        Assert.Equal(RopeLayout.HalfSplit, mimo.AngleLayout);
        Assert.Equal(1, (siso with { MimoRank = 8 }).Rank);

        // N = 5, f = 1: ⌊5⌋ made even is 4, so 2 angles; f = 0.5 of 6: 3 → 2 → 1 angle.
        Assert.Equal(2, new Mamba3Config { DModel = 4, DState = 5, HeadDim = 4, RopeFraction = 1 }.AngleCount);
        Assert.Equal(1, new Mamba3Config { DModel = 4, DState = 6, HeadDim = 4 }.AngleCount);

        // Parameters: in_proj + out_proj + dt_bias + B/C biases + B/C norms + D (+ MIMO, + norm).
        long expected = (2240L * 512) + (512L * 1024) + 16 + (2 * 16 * 64) + (2 * 64) + 16;
        Assert.Equal(expected, siso.ParameterCount);
        using Mamba3Weights weights = Mamba3Weights.CreateRandom(siso with { DModel = 64, DState = 16, HeadDim = 16 }, 1);
        Assert.Equal(weights.Config.ParameterCount, weights.Named().Sum(t => t.Tensor.Length));
    }

    [Fact]
    public void Json_RoundTrips_AndUnknownKeysAreWarnings()
    {
        Mamba3Config config = new()
        {
            DModel = 96, DState = 32, HeadDim = 16, Groups = 2, IsMimo = true, MimoRank = 2, ChunkSize = 32,
            AActivation = Mamba3AActivation.HeavyTail, RopeLayout = RopeLayout.Adjacent, IsOutProjNorm = true, RopeFraction = 1,
        };
        string json = config.ToJson();
        Assert.Contains("\"a_activation\": \"heavy_tail\"", json);
        Assert.Contains("\"A_floor\"", json);
        Mamba3Config back = Mamba3Config.FromJson(json, out IReadOnlyList<string> none);
        Assert.Equal(config, back);
        Assert.Empty(none);

        // The official constructor's extra kwargs are accepted and reported.
        Mamba3Config official = Mamba3Config.FromJson(
            "{\"d_model\": 64, \"d_state\": 16, \"headdim\": 16, \"dropout\": 0.0, \"layer_idx\": 3, \"is_mimo\": false}", out IReadOnlyList<string> warnings);
        Assert.Equal(64, official.DModel);
        Assert.Equal(Mamba3AActivation.Softplus, official.AActivation);
        Assert.Equal(2, warnings.Count);
        Assert.Contains("\"dropout\"", warnings[0]);
        Assert.Contains("\"layer_idx\"", warnings[1]);
    }

    [Theory]
    [InlineData("{\"d_model\": 64, \"headdim\": 48}", "headdim 48 does not divide d_inner")]
    [InlineData("{\"d_model\": 64, \"headdim\": 16, \"ngroups\": 3}", "ngroups 3 does not divide the head count")]
    [InlineData("{\"d_model\": 64, \"a_activation\": \"relu\"}", "a_activation \"relu\" is unknown")]
    [InlineData("{\"d_model\": 64, \"rope_layout\": \"spiral\"}", "rope_layout \"spiral\" is unknown")]
    [InlineData("{\"d_model\": 0}", "d_model is 0")]
    [InlineData("{\"d_model\": 64, \"d_state\": -2}", "d_state is -2")]
    [InlineData("{\"d_model\": 64, \"is_mimo\": true, \"mimo_rank\": 0}", "mimo_rank is 0")]
    [InlineData("{\"d_model\": 64, \"chunk_size\": 0}", "chunk_size is 0")]
    [InlineData("{\"d_model\": 64, \"is_mimo\": true, \"mimo_rank\": 4, \"chunk_size\": 512}", "exceeds 1024")]
    [InlineData("{\"d_model\": 64, \"rope_fraction\": 1.5}", "rope_fraction is 1.5")]
    [InlineData("{\"d_model\": 64, \"d_state\": 1}", "rotates no pair")]
    [InlineData("{\"d_model\": 64, \"A_floor\": 0}", "A_floor is 0")]
    [InlineData("{\"d_model\": 64, \"norm_eps\": -1}", "norm_eps is -1")]
    public void BadConfigs_GiveOneLineErrors(string json, string expected)
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => Mamba3Config.FromJson(json, out _));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void NotAConfig_IsAJsonError()
    {
        Assert.Contains("no d_model", Assert.Throws<JsonException>(() => Mamba3Config.FromJson("{\"d_state\": 16}", out _)).Message);
        Assert.Contains("not a JSON object", Assert.Throws<JsonException>(() => Mamba3Config.FromJson("[1, 2]", out _)).Message);
        Assert.ThrowsAny<JsonException>(() => Mamba3Config.FromJson("{\"d_model\": \"wide\"}", out _));
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, true)]
    public void Weights_RoundTripThroughSafetensors_UnderAPrefix(bool mimo, bool norm)
    {
        Mamba3Config config = new() { DModel = 24, DState = 8, HeadDim = 8, IsMimo = mimo, MimoRank = 2, IsOutProjNorm = norm };
        using Mamba3Weights weights = Mamba3Cases.Weights(config, 11);
        string path = Path.Combine(_dir, "w.safetensors");
        weights.Save(path, "layers.2.mixer.");
        using Mamba3Weights loaded = Mamba3Weights.Load(SafetensorsFile.Open(path), config, "layers.2.mixer.");
        foreach (((string name, Tensor a), (_, Tensor b)) in weights.Named().Zip(loaded.Named()))
        {
            Assert.True(a.ToArray().AsSpan().SequenceEqual(b.ToArray()), name);
        }

        Assert.Equal(mimo, loaded.MimoX is not null);
        Assert.Equal(norm, loaded.Norm is not null);
    }

    [Fact]
    public void Weights_InHalfAndDoublePrecision_AreConvertedToFloat32()
    {
        Mamba3Config config = new() { DModel = 8, DState = 4, HeadDim = 4 };
        using Mamba3Weights weights = Mamba3Cases.Weights(config, 12);
        List<(string, Tensor)> tensors = [];
        List<(string, int[], double[])> doubles = [];
        foreach ((string name, Tensor t) in weights.Named())
        {
            float[] values = t.ToArray();
            if (name == "in_proj.weight")
            {
                // float16 storage.
                tensors.Add((name, Tensor.FromBits(values.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray(), t.Shape, DType.Float16)));
            }
            else if (name == "out_proj.weight")
            {
                tensors.Add((name, Tensor.FromBits(values.Select(DTypes.SingleToBFloat16).ToArray(), t.Shape, DType.BFloat16)));
            }
            else
            {
                doubles.Add((name, t.Shape.ToArray(), values.Select(v => (double)v + 1e-12).ToArray()));
            }
        }

        string path = Path.Combine(_dir, "mixed.safetensors");
        Safetensors.Write(path, tensors, doubles);
        SafetensorsFile file = SafetensorsFile.Open(path);
        Assert.True(file.Entries["D"].IsFloat64);
        Assert.Equal(DType.Float32, file.Entries["D"].DType);
        using Mamba3Weights loaded = Mamba3Weights.Load(file, config);
        Assert.Equal(weights.D.ToArray(), loaded.D.ToArray());
        Assert.Equal(weights.InProj.ToArray().Select(v => (float)(Half)v), loaded.InProj.ToArray());
        Assert.Equal(weights.OutProj.ToArray().Select(v => DTypes.BFloat16ToSingle(DTypes.SingleToBFloat16(v))), loaded.OutProj.ToArray());
        Assert.Equal(weights.DtBias.ToArray().Select(v => (double)v + 1e-12), file.ReadDoubles("dt_bias"));
        foreach ((_, Tensor t) in tensors)
        {
            t.Dispose();
        }
    }

    [Fact]
    public void Weights_MissingOrMisshapen_NameTheTensor()
    {
        Mamba3Config config = new() { DModel = 8, DState = 4, HeadDim = 4 };
        using Mamba3Weights weights = Mamba3Cases.Weights(config, 13);
        string path = Path.Combine(_dir, "partial.safetensors");
        Safetensors.Write(path, weights.Named().Where(t => t.Name != "C_norm.weight"));
        ModelFormatException missing = Assert.Throws<ModelFormatException>(() => Mamba3Weights.Load(SafetensorsFile.Open(path), config));
        Assert.Contains("\"C_norm.weight\" is missing", missing.Message);

        // The same file read with a larger d_state: the first tensor that differs is named with both shapes.
        weights.Save(path);
        ModelFormatException shape = Assert.Throws<ModelFormatException>(() => Mamba3Weights.Load(SafetensorsFile.Open(path), config with { DState = 8 }));
        Assert.Contains("\"in_proj.weight\" is [", shape.Message);
        Assert.Contains("but the config needs", shape.Message);

        // MIMO weights need mimo_x, mimo_z, mimo_o.
        ModelFormatException mimo = Assert.Throws<ModelFormatException>(() => Mamba3Weights.Load(SafetensorsFile.Open(path), config with { IsMimo = true, MimoRank = 1 }));
        Assert.Contains("\"mimo_x\" is missing", mimo.Message);
    }
}
