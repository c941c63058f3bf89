namespace Kiln.Devices;

/// <summary>Which kind of hardware path a device runs on.</summary>
public enum DeviceKind
{
    /// <summary>Managed Vector512/Vector256 code over native memory, on a persistent worker pool.</summary>
    Cpu,

    /// <summary>ILGPU's CUDA accelerator.</summary>
    Cuda,

    /// <summary>The GPU code path on ILGPU's CPU accelerator: for tests, 100x to 1000x slower than <see cref="Cpu"/>.</summary>
    IlgpuCpu,
}

/// <summary>
/// Where tensors live and ops run. A tensor belongs to one device; moving data between devices is explicit.
/// Create devices with <see cref="Create"/> and dispose them after the tensors that use them.
/// </summary>
public abstract class Device : IDisposable
{
    /// <summary>The kind of device.</summary>
    public abstract DeviceKind Kind { get; }

    /// <summary>A short name for messages: cpu, cuda, ilgpu-cpu.</summary>
    public abstract string Name { get; }

    /// <summary>
    /// Creates a device from its command-line name: <c>cpu</c>, <c>cuda</c>, <c>ilgpu-cpu</c> (optionally with a simulated
    /// shape, <c>ilgpu-cpu:4x4</c>: see <see cref="IlgpuDevice.TryParseCpuShape"/>) or <c>auto</c>
    /// (CUDA when a CUDA device exists, else cpu). <paramref name="threads"/> sets the CPU worker count
    /// (null: all cores).
    /// </summary>
    /// <exception cref="ArgumentException">The name is unknown, or CUDA was asked for and none exists.</exception>
    public static Device Create(string name, int? threads = null)
    {
        int threadCount = threads ?? Environment.ProcessorCount;
        if (threadCount < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(threads), threads, "The thread count must be at least 1.");
        }

        switch (name.ToLowerInvariant())
        {
            case "cpu":
                return new CpuDevice(threadCount);
            case string simulated when IlgpuDevice.TryParseCpuShape(simulated, out int lanes, out int warps):
                return IlgpuDevice.CreateCpuAccelerator(ILGPU.OptimizationLevel.O1, lanes, warps);
            case "cuda":
                return IlgpuDevice.TryCreateCuda()
                    ?? throw new ArgumentException("--device cuda: no CUDA device was found on this machine; use --device cpu or auto.", nameof(name));
            case "auto":
                return (Device?)IlgpuDevice.TryCreateCuda() ?? new CpuDevice(threadCount);
            default:
                throw new ArgumentException($"unknown device '{name}'; use one of auto, cpu, cuda, ilgpu-cpu (or ilgpu-cpu:LANESxWARPS, e.g. ilgpu-cpu:4x4).", nameof(name));
        }
    }

    /// <inheritdoc />
    public override string ToString() => Name;

    /// <summary>Releases the device's resources.</summary>
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases the device's resources.</summary>
    protected abstract void Dispose(bool disposing);
}
