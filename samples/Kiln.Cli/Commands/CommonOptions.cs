// The options several commands share (model, tokenizer, device, threads) and the checks of their values, each
// failing with a one-line message that names the flag and says what fits.

using System.CommandLine;
using Kiln.Devices;

namespace Kiln.Cli.Commands;

/// <summary>Factories for shared options and validation of flag values.</summary>
internal static class CommonOptions
{
    /// <summary>-m, --model: the llama2.c checkpoint or GGUF file.</summary>
    public static Option<string?> Model() => new("--model", "-m")
    {
        Description = "The model: a llama2.c checkpoint (.bin) or a GGUF file (.gguf, llama architecture). Default: $KILN_MODEL, then ~/.cache/kiln/models/stories260K/stories260K.bin.",
        HelpName = "MODEL",
    };

    /// <summary>--tokenizer: the llama2.c tokenizer (or a GGUF file whose vocabulary to use).</summary>
    public static Option<string?> Tokenizer() => new("--tokenizer")
    {
        Description = "The tokenizer: a llama2.c tok*.bin or a GGUF file's vocabulary. Default: a GGUF model's own vocabulary; for a llama2.c model tok<vocab_size>.bin, then tokenizer.bin, next to it.",
        HelpName = "TOK",
    };

    /// <summary>--device: where the weights live.</summary>
    public static Option<string> Device() => new("--device")
    {
        Description = "auto, cpu, cuda or ilgpu-cpu[:LANESxWARPS] (auto: cuda when a GPU exists, else cpu; ilgpu-cpu runs the GPU kernels on ILGPU's slow CPU simulator, e.g. ilgpu-cpu:4x4).",
        DefaultValueFactory = static _ => "cpu",
        HelpName = "DEVICE",
    };

    /// <summary>-t, --threads: CPU threads.</summary>
    public static Option<int?> Threads() => new("--threads", "-t")
    {
        Description = "CPU threads (default: all cores).",
        HelpName = "THREADS",
    };

    /// <summary>Checks -t: at least 1 when given.</summary>
    public static void CheckThreads(int? threads)
    {
        if (threads is < 1)
        {
            throw new CliException($"-t {threads}: the thread count must be at least 1; pass e.g. -t {Environment.ProcessorCount} or leave it out for all cores.");
        }
    }

    /// <summary>
    /// Creates the device named by --device with -t threads. For <c>auto</c>, writes one line to
    /// <paramref name="stderr"/> naming the device chosen and why.
    /// </summary>
    /// <exception cref="CliException">The name is unknown or the device is not available.</exception>
    public static Device CreateDevice(string name, int? threads, TextWriter stderr)
    {
        Device device = CreateDevice(name, threads);
        if (name.Equals("auto", StringComparison.OrdinalIgnoreCase))
        {
            stderr.WriteLine(device is IlgpuDevice gpu
                ? $"kiln: --device auto: using cuda ({KilnCli.OneLine(gpu.Accelerator.Name)}): a CUDA GPU was found."
                : $"kiln: --device auto: using {Describe(device)}: no CUDA GPU was found.");
        }

        return device;
    }

    private static Device CreateDevice(string name, int? threads)
    {
        string[] known = ["auto", "cpu", "cuda"];
        if (!known.Contains(name.ToLowerInvariant()) && !name.StartsWith("ilgpu-cpu", StringComparison.OrdinalIgnoreCase))
        {
            throw new CliException($"--device {name}: unknown device; use one of auto, cpu, cuda, ilgpu-cpu (or ilgpu-cpu:LANESxWARPS).");
        }

        // A malformed simulated shape is a usage error too, caught before any device starts.
        try
        {
            IlgpuDevice.TryParseCpuShape(name, out _, out _);
        }
        catch (ArgumentException e)
        {
            throw new CliException($"--device {name}: {KilnCli.OneLine(e.Message)}", CliException.UsageExitCode, e);
        }

        try
        {
            return Kiln.Devices.Device.Create(name, threads);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or NotSupportedException)
        {
            string detail = KilnCli.OneLine(e.Message).TrimEnd('.');
            string message = detail.StartsWith("--device", StringComparison.Ordinal) ? detail : $"--device {name}: {detail}";
            throw new CliException($"{message}.", CliException.FailureExitCode, e);
        }
    }

    /// <summary>The device for messages: "cpu (2 threads)", "cuda".</summary>
    public static string Describe(Device device) =>
        device is CpuDevice cpu ? $"cpu ({cpu.Threads} thread{(cpu.Threads == 1 ? string.Empty : "s")})" : device.Name;

    /// <summary>The number of threads a device computes with, for messages.</summary>
    public static int ThreadCount(Device device, int? requested) =>
        device is CpuDevice cpu ? cpu.Threads : requested ?? Environment.ProcessorCount;
}
