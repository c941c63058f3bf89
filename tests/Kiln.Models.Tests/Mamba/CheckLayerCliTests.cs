// `kiln check-layer mamba3` in-process: a file whose expected_output comes from the float64 reference passes (SISO
// and MIMO, under a name prefix); a perturbed expected_output fails with exit code 3 and still prints the JSON line;
// without expected_output the output's statistics are printed; unknown config keys are warnings; damaged files
// (overlapping or out-of-range offsets, a header longer than the file), a missing input and bad flags are one-line
// errors with a non-zero exit code.
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Kiln.Cli;
using Kiln.Models.Formats;
using Kiln.Models.Mamba;
using Xunit;

namespace Kiln.Models.Tests.Mamba;

public sealed class CheckLayerCliTests : IDisposable
{
    private const int Tokens = 37;
    private readonly string _dir = Directory.CreateTempSubdirectory("kiln-check-layer").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData(false, "")]
    [InlineData(true, "layers.0.mixer.")]
    public void ReferenceOutput_Passes(bool mimo, string prefix)
    {
        (string weights, string config) = Write(mimo, prefix, expected: true, perturb: false);
        (int code, string stdout, string stderr) = Run("check-layer", "mamba3", "--weights", weights, "--config", config, "--prefix", prefix, "-t", "2");
        Assert.True(code == 0, stderr);
        using JsonDocument result = JsonDocument.Parse(Assert.Single(Lines(stdout)));
        double err = result.RootElement.GetProperty("max_abs_err").GetDouble();
        double max = result.RootElement.GetProperty("max_abs_ref").GetDouble();
        double rel = result.RootElement.GetProperty("rel_err").GetDouble();
        Assert.True(max > 0.01 && rel <= 1e-4, stdout);
        Assert.Equal(err / max, rel, 12);
        Assert.Contains($"{Tokens} tokens", stderr);
        Assert.DoesNotContain("warning", stderr);
    }

    [Fact]
    public void ReferenceOutput_PassesOnIlgpuCpu()
    {
        // The same check with the mixer's kernels on the simulated GPU (MIMO, so every kernel's rank loop runs).
        (string weights, string config) = Write(mimo: true, "", expected: true, perturb: false);
        (int code, string stdout, string stderr) = Run("check-layer", "mamba3", "--weights", weights, "--config", config, "--device", "ilgpu-cpu:4x4");
        Assert.True(code == 0, stderr);
        using JsonDocument result = JsonDocument.Parse(Assert.Single(Lines(stdout)));
        Assert.True(result.RootElement.GetProperty("rel_err").GetDouble() <= 1e-4, stdout);
        Assert.Contains("on ilgpu-cpu", stderr);
    }

    [Fact]
    public void PerturbedExpectedOutput_Fails()
    {
        (string weights, string config) = Write(mimo: false, "", expected: true, perturb: true);
        (int code, string stdout, string stderr) = Run("check-layer", "mamba3", "--weights", weights, "--config", config);
        Assert.Equal(3, code);
        using JsonDocument result = JsonDocument.Parse(Assert.Single(Lines(stdout)));
        Assert.True(result.RootElement.GetProperty("rel_err").GetDouble() > 1e-3);
        Assert.Contains("exceeds --tol", Assert.Single(Lines(stderr), l => !l.Contains("tokens in", StringComparison.Ordinal)));

        // A loose enough tolerance accepts it.
        (int loose, _, _) = Run("check-layer", "mamba3", "--weights", weights, "--config", config, "--tol", "0.5");
        Assert.Equal(0, loose);
    }

    [Fact]
    public void WithoutExpectedOutput_PrintsStatistics_AndWarnsAboutUnknownKeys()
    {
        (string weights, string config) = Write(mimo: false, "", expected: false, perturb: false);
        string json = File.ReadAllText(config).Replace("{", "{\"dropout\": 0.0,", StringComparison.Ordinal);
        File.WriteAllText(config, json);
        (int code, string stdout, string stderr) = Run("check-layer", "mamba3", "--weights", weights, "--config", config);
        Assert.True(code == 0, stderr);
        using JsonDocument result = JsonDocument.Parse(Assert.Single(Lines(stdout)));
        Assert.Equal([1, Tokens, 8], result.RootElement.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()));
        Assert.True(result.RootElement.GetProperty("std").GetDouble() > 0);
        Assert.Equal(0, result.RootElement.GetProperty("non_finite").GetInt32());
        Assert.Contains("kiln: warning:", stderr);
        Assert.Contains("\"dropout\"", stderr);
    }

    [Theory]
    [InlineData("overlap", "overlapping")]
    [InlineData("outside", "outside the")]
    [InlineData("header", "-byte header but the file has")]
    [InlineData("no-input", "has no tensor \"input\"")]
    [InlineData("bad-input", "one sequence [1, T, 8]")]
    [InlineData("missing-weight", "\"D\" is missing")]
    public void BadFiles_AreOneLineErrors(string damage, string expected)
    {
        (string weights, string config) = Write(mimo: false, "", expected: true, perturb: false);
        string path = Path.Combine(_dir, damage + ".safetensors");
        switch (damage)
        {
            case "overlap":
                Raw(path, "{\"input\":{\"dtype\":\"F32\",\"shape\":[1,1,8],\"data_offsets\":[0,32]},\"D\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}}", 32);
                break;
            case "outside":
                Raw(path, "{\"input\":{\"dtype\":\"F32\",\"shape\":[1,1,8],\"data_offsets\":[64,96]}}", 32);
                break;
            case "header":
                File.WriteAllBytes(path, [.. BitConverter.GetBytes(1_000_000L), .. "{}"u8.ToArray()]);
                break;
            case "no-input":
            case "bad-input":
            case "missing-weight":
                // Rewrite the good file without one tensor, or with an input of the wrong width.
                SafetensorsFile good = SafetensorsFile.Open(weights);
                List<(string, Tensor)> tensors = [];
                foreach (string name in good.Entries.Keys.Where(n => n != "expected_output"))
                {
                    if ((damage == "no-input" && name == "input") || (damage == "missing-weight" && name == "D"))
                    {
                        continue;
                    }

                    tensors.Add((name, damage == "bad-input" && name == "input" ? Tensor.Empty([1, 3, 5]) : good.LoadFloat32(name)));
                }

                Safetensors.Write(path, tensors);
                tensors.ForEach(t => t.Item2.Dispose());
                break;
        }

        (int code, string stdout, string stderr) = Run("check-layer", "mamba3", "--weights", path, "--config", config);
        Assert.Equal(1, code);
        Assert.Equal(string.Empty, stdout);
        string line = Assert.Single(Lines(stderr));
        Assert.StartsWith("kiln: error: ", line);
        Assert.Contains(expected, line);
    }

    [Fact]
    public void BadFlags_AreUsageErrors()
    {
        (string weights, string config) = Write(mimo: false, "", expected: true, perturb: false);
        (int tol, _, string tolErr) = Run("check-layer", "mamba3", "--weights", weights, "--config", config, "--tol", "-1");
        (int dev, _, string devErr) = Run("check-layer", "mamba3", "--weights", weights, "--config", config, "--device", "tpu");
        (int missing, _, string missingErr) = Run("check-layer", "mamba3", "--config", config);
        Assert.Equal((2, 2, 2), (tol, dev, missing));
        Assert.Contains("--tol -1", tolErr);
        Assert.Contains("unknown device", devErr);
        Assert.Contains("--weights", missingErr);

        // A config that does not describe the weights, and one with a bad value.
        string other = Path.Combine(_dir, "other.json");
        File.WriteAllText(other, "{\"d_model\": 8, \"d_state\": 16, \"headdim\": 4, \"expand\": 2, \"chunk_size\": 4}");
        (int shape, _, string shapeErr) = Run("check-layer", "mamba3", "--weights", weights, "--config", other);
        Assert.Equal(1, shape);
        Assert.Contains("but the config needs", shapeErr);
        File.WriteAllText(other, "{\"d_model\": 8, \"a_activation\": \"gelu\"}");
        (int bad, _, string badErr) = Run("check-layer", "mamba3", "--weights", weights, "--config", other);
        Assert.Equal(1, bad);
        Assert.Contains("a_activation \"gelu\" is unknown", Assert.Single(Lines(badErr)));
    }

    // Writes a mixer file (weights, input, optionally expected_output from the float64 reference) and its config.
    private (string Weights, string Config) Write(bool mimo, string prefix, bool expected, bool perturb)
    {
        Mamba3Config config = new()
        {
            DModel = 8, DState = 8, HeadDim = 4, Expand = 2, ChunkSize = 8, IsMimo = mimo, MimoRank = 2,
            AActivation = mimo ? Mamba3AActivation.HeavyTail : Mamba3AActivation.Softplus, IsOutProjNorm = mimo,
        };
        using Mamba3Weights weights = Mamba3Cases.Weights(config, 21);
        float[] input = Mamba3Cases.Input(config, Tokens, 21);
        using Tensor x = Tensor.FromArray(input, [1, Tokens, config.DModel]);
        List<(string, int[], double[])> doubles = [];
        if (expected)
        {
            double[] reference = Mamba3Reference.Forward(weights, input, Tokens, new Mamba3ReferenceState(config));
            if (perturb)
            {
                reference[17] += 0.05;
            }

            doubles.Add(("expected_output", [1, Tokens, config.DModel], reference));
        }

        string path = Path.Combine(_dir, $"mixer-{mimo}-{expected}-{perturb}.safetensors");
        Safetensors.Write(path, [.. weights.Named(prefix), ("input", x)], doubles);
        string configPath = Path.Combine(_dir, $"config-{mimo}.json");
        File.WriteAllText(configPath, config.ToJson());
        return (path, configPath);
    }

    // A safetensors file with the given header and `dataBytes` zero bytes of data.
    private static void Raw(string path, string header, int dataBytes)
    {
        byte[] text = Encoding.UTF8.GetBytes(header);
        byte[] bytes = new byte[8 + text.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)text.Length);
        text.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
    }

    private static string[] Lines(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    private static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        using StringWriter stdout = new(), stderr = new();
        int code = KilnCli.Run(args, stdout, stderr, new CliEnvironment(null, Path.GetTempPath()));
        return (code, stdout.ToString(), stderr.ToString());
    }
}
