// kiln check-layer: runs one layer from a safetensors file on a stored input and compares the result with a stored
// expected output (for example one written by the official PyTorch module). `check-layer mamba3` reads the mixer's
// weights under their official names (optionally under a prefix), the tensor `input` [1, T, d_model] and, when
// present, `expected_output` [1, T, d_model] (any float dtype; compared in float64). With an expected output it prints
// one JSON line {"max_abs_err", "max_abs_ref", "rel_err"} (rel_err = max_abs_err / max_abs_ref) and exits with 3 when
// rel_err exceeds --tol; without one it prints the output's shape and statistics as one JSON line. The mixer runs
// the chunked prefill from a fresh cache, on --device (cpu, or cuda / ilgpu-cpu where the weights and the input are
// copied to the device). Unknown config keys are warnings on stderr.

using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Kiln.Devices;
using Kiln.Models.Formats;
using Kiln.Models.Mamba;

namespace Kiln.Cli.Commands;

/// <summary>The <c>check-layer</c> command and its subcommands.</summary>
internal static class CheckLayerCommand
{
    /// <summary>The exit code when the layer's output differs from the expected output by more than --tol.</summary>
    public const int MismatchExitCode = 3;

    /// <summary>Builds the command.</summary>
    public static Command Create(CliContext context)
    {
        Command command = new("check-layer", "Run one layer on a stored input and compare it with a stored expected output.");
        command.Subcommands.Add(CreateMamba3(context));
        return command;
    }

    private static Command CreateMamba3(CliContext context)
    {
        Option<string> weights = new("--weights", "-w")
        {
            Description = "The safetensors file with the mixer's weights (official names), `input` [1, T, d_model] and optionally `expected_output`.",
            HelpName = "FILE",
            Required = true,
        };
        Option<string> config = new("--config")
        {
            Description = "The mixer's config as JSON (official Mamba3 constructor names, plus a_activation, rope_layout, norm_eps).",
            HelpName = "FILE",
            Required = true,
        };
        Option<string> prefix = new("--prefix")
        {
            Description = "A prefix of the weight names, e.g. layers.0.mixer. (default: none).",
            DefaultValueFactory = static _ => string.Empty,
            HelpName = "PREFIX",
        };
        Option<string> device = CommonOptions.Device();
        Option<int?> threads = CommonOptions.Threads();
        Option<double> tolerance = new("--tol")
        {
            Description = "The largest accepted rel_err = max|output - expected| / max|expected|.",
            DefaultValueFactory = static _ => 1e-4,
            HelpName = "TOL",
        };
        Command command = new("mamba3", "Check a Mamba-3 mixer (chunked prefill on --device) against expected_output.")
        {
            weights, config, prefix, device, threads, tolerance,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            // Check the flags before reading anything.
            double tol = parse.GetValue(tolerance);
            if (!(tol >= 0) || !double.IsFinite(tol))
            {
                throw new CliException($"--tol {tol.ToString(CultureInfo.InvariantCulture)}: the tolerance must be a finite number >= 0, e.g. --tol 1e-4.");
            }

            int? threadCount = parse.GetValue(threads);
            CommonOptions.CheckThreads(threadCount);
            Mamba3Config mixerConfig = ReadConfig(parse.GetValue(config)!, context.Stderr);
            using Device target = CommonOptions.CreateDevice(parse.GetValue(device) ?? "cpu", threadCount, context.Stderr);
            return Run(context, parse.GetValue(weights)!, mixerConfig, parse.GetValue(prefix) ?? string.Empty, target, tol);
        }));
        return command;
    }

    private static Mamba3Config ReadConfig(string path, TextWriter stderr)
    {
        string json;
        try
        {
            json = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"--config {path}: cannot read the file ({KilnCli.OneLine(e.Message)}); check the path.", CliException.FailureExitCode, e);
        }

        try
        {
            Mamba3Config config = Mamba3Config.FromJson(json, out IReadOnlyList<string> warnings);
            foreach (string warning in warnings)
            {
                stderr.WriteLine($"kiln: warning: {path}: {warning}");
            }

            return config;
        }
        catch (Exception e) when (e is JsonException or ArgumentException)
        {
            throw new CliException($"--config {path}: {KilnCli.OneLine(e.Message).TrimEnd('.')}.", CliException.FailureExitCode, e);
        }
    }

    private static int Run(CliContext context, string path, Mamba3Config config, string prefix, Device device, double tol)
    {
        // The file: header validated, then the weights (shapes checked before any data is read) and the input.
        SafetensorsFile file = SafetensorsFile.Open(path);
        SafetensorsEntry input = RequireActivation(file, "input", config, "store the layer input as \"input\" [1, T, d_model]");
        SafetensorsEntry? expected = null;
        if (file.Entries.ContainsKey("expected_output"))
        {
            expected = RequireActivation(file, "expected_output", config, "store the expected output as \"expected_output\" with the input's shape");
            if (!expected.Shape.AsSpan().SequenceEqual(input.Shape))
            {
                throw new CliException(
                    $"{path}: expected_output is {Tensor.FormatShape(expected.Shape)} but input is {Tensor.FormatShape(input.Shape)}; they must have the same shape.",
                    CliException.FailureExitCode);
            }
        }

        using Mamba3Weights loaded = Mamba3Weights.Load(file, config, prefix);
        using Mamba3Weights? copy = device is CpuDevice ? null : loaded.To(device);
        Mamba3Weights mixerWeights = copy ?? loaded;
        using Tensor hostInput = file.LoadFloat32("input");
        using Tensor? deviceInput = device is CpuDevice ? null : hostInput.To(device);
        Tensor x = deviceInput ?? hostInput;
        int tokens = x.Size(-2);
        using Tensor y = Tensor.Empty(x.Shape, device: device);
        using Mamba3Mixer mixer = new(mixerWeights, device, maxTokens: Math.Min(tokens, 4096));
        using Mamba3Cache cache = mixer.CreateCache();
        Stopwatch watch = Stopwatch.StartNew();
        mixer.Forward(x, y, cache);
        (device as IlgpuDevice)?.Synchronize();
        watch.Stop();
        string kind = config.IsMimo ? $"MIMO R={config.Rank}" : "SISO";
        context.Stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"kiln: mamba3 mixer ({kind}, d_model {config.DModel}, d_state {config.DState}, headdim {config.HeadDim}, {config.Heads} heads, chunk {config.ChunkSize}, a_activation {(config.AActivation == Mamba3AActivation.Softplus ? "softplus" : "heavy_tail")}): {tokens} tokens in {watch.Elapsed.TotalMilliseconds:F1} ms on {CommonOptions.Describe(device)}"));
        float[] output = y.ToArray();

        if (expected is null)
        {
            context.Stdout.WriteLine(Statistics(y.Shape, output));
            return 0;
        }

        // Compare in float64 against the stored values.
        double[] reference = file.ReadDoubles("expected_output");
        double maxErr = 0, maxRef = 0;
        bool finite = true;
        for (int i = 0; i < output.Length; i++)
        {
            finite &= float.IsFinite(output[i]) && double.IsFinite(reference[i]);
            maxErr = Math.Max(maxErr, Math.Abs(output[i] - reference[i]));
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
        }

        double relErr = maxRef > 0 ? maxErr / maxRef : maxErr == 0 ? 0 : double.PositiveInfinity;
        context.Stdout.WriteLine(Json(writer =>
        {
            Number(writer, "max_abs_err", finite ? maxErr : double.NaN);
            Number(writer, "max_abs_ref", maxRef);
            Number(writer, "rel_err", finite ? relErr : double.NaN);
        }));
        if (!finite || !(relErr <= tol))
        {
            context.Stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"kiln: check-layer mamba3: rel_err {(finite ? relErr.ToString("G4", CultureInfo.InvariantCulture) : "NaN (a value is not finite)")} exceeds --tol {tol}; the layer does not match expected_output (check a_activation, rope_layout and the weights)."));
            return MismatchExitCode;
        }

        return 0;
    }

    // An activation tensor: present, floating point, [1, T, d_model] (or [T, d_model]) with T >= 1.
    private static SafetensorsEntry RequireActivation(SafetensorsFile file, string name, Mamba3Config config, string hint)
    {
        if (!file.Entries.TryGetValue(name, out SafetensorsEntry? entry))
        {
            throw new CliException($"{file.Path}: has no tensor \"{name}\"; {hint}.", CliException.FailureExitCode);
        }

        int[] shape = entry.Shape;
        bool fits = entry.IsFloat && shape.Length is 2 or 3 && shape[^1] == config.DModel && shape[^2] >= 1 && (shape.Length == 2 || shape[0] == 1);
        if (!fits)
        {
            throw new CliException(
                $"{file.Path}: tensor \"{name}\" is {Tensor.FormatShape(shape)} {entry.FileDType}; one sequence [1, T, {config.DModel}] of floats (d_model {config.DModel}) is needed.",
                CliException.FailureExitCode);
        }

        return entry;
    }

    private static string Statistics(ReadOnlySpan<int> shape, float[] values)
    {
        double sum = 0, squares = 0, min = double.PositiveInfinity, max = double.NegativeInfinity;
        int finite = 0;
        foreach (float v in values)
        {
            if (!float.IsFinite(v))
            {
                continue;
            }

            finite++;
            sum += v;
            squares += (double)v * v;
            min = Math.Min(min, v);
            max = Math.Max(max, v);
        }

        double mean = finite > 0 ? sum / finite : double.NaN;
        double std = finite > 0 ? Math.Sqrt(Math.Max((squares / finite) - (mean * mean), 0)) : double.NaN;
        int[] dims = shape.ToArray();
        return Json(writer =>
        {
            writer.WriteStartArray("shape");
            foreach (int dim in dims)
            {
                writer.WriteNumberValue(dim);
            }

            writer.WriteEndArray();
            Number(writer, "mean", mean);
            Number(writer, "std", std);
            Number(writer, "min", min);
            Number(writer, "max", max);
            Number(writer, "max_abs", Math.Max(Math.Abs(min), Math.Abs(max)));
            writer.WriteNumber("non_finite", values.Length - finite);
        });
    }

    private static string Json(Action<Utf8JsonWriter> body)
    {
        using MemoryStream stream = new();
        using (Utf8JsonWriter writer = new(stream))
        {
            writer.WriteStartObject();
            body(writer);
            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(stream.ToArray());
    }

    // A number, or null when it is not finite (JSON has no NaN or infinity).
    private static void Number(Utf8JsonWriter writer, string name, double value)
    {
        if (double.IsFinite(value))
        {
            writer.WriteNumber(name, value);
        }
        else
        {
            writer.WriteNull(name);
        }
    }
}
