// kiln-gpucheck: checks Kiln's GPU path on one device and measures it. Sections, in order (--sections picks some):
//   correctness  every GPU kernel against the CPU device's path on random inputs (CorrectnessSection)
//   bandwidth    copy bandwidth, then GB/s of every memory-bound kernel and its ratio to the copy (BandwidthSection)
//   compute      TFLOP/s of the matrix product (ComputeSection)
//   model        prefill and decode tok/s of a Llama-shaped model, and decode against its bandwidth floor (ModelSection)
// Output: Markdown tables on stdout, row by row; the same rows as JSON in DIR/gpucheck.json (--out, default $OUT);
// progress on stderr. Exit code: 0 when every check passed, 1 when a correctness check failed or a measurement threw,
// 2 for a bad command line or a missing device. Run on a GPU machine through scripts/gpu-check.sh.

using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;

namespace Kiln.GpuCheck;

/// <summary>The entry point of <c>kiln-gpucheck</c>.</summary>
public static class GpuCheckProgram
{
    /// <summary>Exit code: every check passed.</summary>
    public const int Success = 0;

    /// <summary>Exit code: a correctness check failed or a measurement threw.</summary>
    public const int CheckFailed = 1;

    /// <summary>Exit code: the command line is wrong or the device is missing.</summary>
    public const int UsageError = 2;

    /// <summary>The JSON file written into the output directory.</summary>
    public const string JsonFileName = "gpucheck.json";

    /// <summary>The section names, in the order they run.</summary>
    public static IReadOnlyList<string> SectionNames { get; } = ["correctness", "bandwidth", "compute", "model"];

    /// <summary>
    /// Runs the check with <paramref name="args"/>, printing tables to <paramref name="stdout"/> and progress to
    /// <paramref name="stderr"/>; <paramref name="defaultOut"/> is the output directory when --out is not given
    /// (the program passes $OUT).
    /// </summary>
    /// <returns>0 when every check passed, 1 when one failed, 2 for a bad command line or a missing device.</returns>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, string? defaultOut)
    {
        ArgumentNullException.ThrowIfNull(args);
        Option<string> device = new("--device")
        {
            Description = "cuda (a GPU through ILGPU), or ilgpu-cpu[:LANESxWARPS] (ILGPU's CPU accelerator simulating a GPU of that warp shape, default 32x2: a slow dry run).",
            DefaultValueFactory = static _ => "cuda",
            HelpName = "DEVICE",
        };
        Option<string> size = new("--size")
        {
            Description = "small (tiny shapes, seconds on ilgpu-cpu) or full (the real GPU sizes).",
            DefaultValueFactory = static _ => "full",
            HelpName = "SIZE",
        };
        Option<string?> output = new("--out")
        {
            Description = $"Directory for {JsonFileName} (default: $OUT when set; otherwise no JSON file).",
            HelpName = "DIR",
        };
        Option<string> sections = new("--sections")
        {
            Description = "Comma-separated sections to run: correctness, bandwidth, compute, model.",
            DefaultValueFactory = static _ => string.Join(",", SectionNames),
            HelpName = "LIST",
        };
        Option<int> seed = new("--seed")
        {
            Description = "Seed of every random input.",
            DefaultValueFactory = static _ => 20260101,
            HelpName = "N",
        };
        Option<string> optimization = new("--opt")
        {
            Description = "ILGPU optimisation level: O1 (Kiln's default) or O2.",
            DefaultValueFactory = static _ => "O1",
            HelpName = "LEVEL",
        };
        RootCommand root = new("kiln-gpucheck: correctness and speed of Kiln's GPU kernels on one device.")
        {
            device, size, output, sections, seed, optimization,
        };

        // A parse error is one line; --help prints the usage.
        ParseResult parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            stderr.WriteLine($"kiln-gpucheck: error: {parse.Errors[0].Message.ReplaceLineEndings(" ").TrimEnd('.')}; see 'kiln-gpucheck --help'.");
            return UsageError;
        }

        // The root has no action of its own: an action here is --help or --version.
        if (parse.Action is not null)
        {
            return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr });
        }

        return Check(new Settings(
            parse.GetValue(device)!,
            parse.GetValue(size)!,
            parse.GetValue(output) ?? defaultOut,
            parse.GetValue(sections)!,
            parse.GetValue(seed),
            parse.GetValue(optimization)!), stdout, stderr);
    }

    private sealed record Settings(string Device, string Size, string? Out, string Sections, int Seed, string Optimization);

    private static int Check(Settings settings, TextWriter stdout, TextWriter stderr)
    {
        // Check the flags before starting a device.
        CheckSize? size = CheckSize.Find(settings.Size);
        if (size is null)
        {
            return Usage(stderr, $"--size {settings.Size}: unknown size; use small or full.");
        }

        OptimizationLevel? level = settings.Optimization.ToUpperInvariant() switch
        {
            "O1" => OptimizationLevel.O1,
            "O2" => OptimizationLevel.O2,
            _ => null,
        };
        if (level is null)
        {
            return Usage(stderr, $"--opt {settings.Optimization}: unknown level; use O1 or O2.");
        }

        string[] chosen = settings.Sections.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        string? unknown = chosen.FirstOrDefault(static s => !SectionNames.Contains(s.ToLowerInvariant()));
        if (unknown is not null || chosen.Length == 0)
        {
            return Usage(stderr, $"--sections {settings.Sections}: unknown section '{unknown}'; use a comma-separated list of {string.Join(", ", SectionNames)}.");
        }

        string? jsonPath = null;
        if (settings.Out is not null)
        {
            try
            {
                Directory.CreateDirectory(settings.Out);
                jsonPath = Path.Combine(settings.Out, JsonFileName);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return Usage(stderr, $"--out {settings.Out}: cannot create the directory ({e.Message}); pass a writable directory.");
            }
        }

        // Start the device under test.
        IlgpuDevice? target;
        try
        {
            target = settings.Device.ToLowerInvariant() switch
            {
                "cuda" => IlgpuDevice.TryCreateCuda(level.Value)
                    ?? throw new InvalidOperationException("no CUDA device was found on this machine (ILGPU lists none); run on a GPU machine, or use --device ilgpu-cpu --size small for a dry run"),
                string simulated when IlgpuDevice.TryParseCpuShape(simulated, out int lanes, out int warps) =>
                    IlgpuDevice.CreateCpuAccelerator(level.Value, lanes, warps),
                _ => throw new ArgumentException("unknown device; use cuda, ilgpu-cpu or ilgpu-cpu:LANESxWARPS"),
            };
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or DllNotFoundException or TypeInitializationException)
        {
            return Usage(stderr, $"--device {settings.Device}: {e.Message.ReplaceLineEndings(" ")}.");
        }

        using IlgpuDevice device = target;
        using CpuDevice cpu = new(Environment.ProcessorCount);
        Report report = new(stdout, jsonPath);
        CheckContext context = new(device, cpu, size, report, settings.Seed, stderr);
        PrintHeader(stdout, device, size, level.Value, settings.Seed);

        // Run the sections; one that throws outside a measurement is reported and counted, and the rest still run.
        int failures = 0;
        foreach (string section in SectionNames.Where(s => chosen.Contains(s, StringComparer.OrdinalIgnoreCase)))
        {
            long start = Stopwatch.GetTimestamp();
            try
            {
                switch (section)
                {
                    case "correctness":
                        failures += CorrectnessSection.Run(context);
                        break;
                    case "bandwidth":
                        BandwidthSection.Run(context);
                        break;
                    case "compute":
                        ComputeSection.Run(context);
                        break;
                    default:
                        ModelSection.Run(context);
                        break;
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                context.Errors++;
                report.Note($"**{section} stopped**: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
            }

            stderr.WriteLine($"kiln-gpucheck: {section}: {Stopwatch.GetElapsedTime(start).TotalSeconds:0.0} s");
        }

        // The verdict.
        int passed = report.Rows.Count(static r => r.Section == "correctness" && Equals(r.Values["result"], CorrectnessSection.Pass));
        report.Note($"Summary: {passed} correctness checks passed, {failures} failed; {context.Errors} measurement errors.");
        if (jsonPath is not null)
        {
            stderr.WriteLine($"kiln-gpucheck: wrote {jsonPath}");
        }

        return failures > 0 || context.Errors > 0 ? CheckFailed : Success;
    }

    private static void PrintHeader(TextWriter stdout, IlgpuDevice device, CheckSize size, OptimizationLevel level, int seed)
    {
        Accelerator accelerator = device.Accelerator;
        stdout.WriteLine($"# Kiln GPU check: {device.Name}, size {size.Name}");
        stdout.WriteLine();
        stdout.WriteLine($"- device: {accelerator.Name} ({accelerator.AcceleratorType}), {accelerator.MemorySize / (1 << 20):N0} MiB, "
            + $"{accelerator.NumMultiprocessors} multiprocessors, warp {accelerator.WarpSize}, "
            + $"{accelerator.MaxNumThreadsPerGroup} threads per group, "
            + $"{(accelerator.MaxSharedMemoryPerGroup == int.MaxValue ? "unbounded" : $"{accelerator.MaxSharedMemoryPerGroup / 1024} KiB")} shared memory per group");
        stdout.WriteLine($"- ILGPU {typeof(Context).Assembly.GetName().Version}, optimisation {(level == OptimizationLevel.O2 ? "O2" : "O1")}; "
            + $"{RuntimeInformation.FrameworkDescription}, {RuntimeInformation.RuntimeIdentifier}, "
            + $"{Environment.ProcessorCount} host cores; seed {seed}; {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        stdout.Flush();
    }

    private static int Usage(TextWriter stderr, string message)
    {
        stderr.WriteLine($"kiln-gpucheck: error: {message}");
        return UsageError;
    }
}
