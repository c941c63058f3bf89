// What every section of one check run shares: the device under test, a CPU device for the reference path, the
// sizes, the report, the seed, and the copy bandwidth once measured (the bandwidth and model sections both
// divide by it).

using Kiln.Devices;

namespace Kiln.GpuCheck;

/// <summary>The state shared by the sections of one run.</summary>
internal sealed class CheckContext
{
    private double? _copyBandwidth;

    /// <summary>Creates the context of one run.</summary>
    public CheckContext(IlgpuDevice device, CpuDevice cpu, CheckSize size, Report report, int seed, TextWriter log)
    {
        Device = device;
        Cpu = cpu;
        Size = size;
        Report = report;
        Seed = seed;
        Log = log;
    }

    /// <summary>The device under test (cuda or ilgpu-cpu).</summary>
    public IlgpuDevice Device { get; }

    /// <summary>The CPU device whose results the device's are compared with.</summary>
    public CpuDevice Cpu { get; }

    /// <summary>The shapes of this run.</summary>
    public CheckSize Size { get; }

    /// <summary>Where rows go.</summary>
    public Report Report { get; }

    /// <summary>The seed of every random input.</summary>
    public int Seed { get; }

    /// <summary>Progress notes (stderr).</summary>
    public TextWriter Log { get; }

    /// <summary>Measurements that failed with an exception (each also reported as an error row).</summary>
    public int Errors { get; set; }

    /// <summary>The measured device-to-device copy bandwidth in bytes per second, once a section measured it.</summary>
    public double? CopyBandwidth
    {
        get => _copyBandwidth;
        set => _copyBandwidth = value;
    }
}
