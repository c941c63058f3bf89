namespace Kiln.Devices;

/// <summary>
/// The default device: managed SIMD code (Vector512, Vector256, scalar tails) over 64-byte aligned native
/// memory, split across a persistent <see cref="WorkerPool"/>.
/// </summary>
public sealed class CpuDevice : Device
{
    private static CpuDevice? s_default;

    /// <summary>Creates a CPU device that runs loops on <paramref name="threads"/> threads.</summary>
    public CpuDevice(int threads)
    {
        Pool = new WorkerPool(threads);
    }

    /// <summary>A process-wide CPU device using all cores, created on first use and never disposed.</summary>
    public static CpuDevice Default => LazyInitializer.EnsureInitialized(ref s_default, () => new CpuDevice(Environment.ProcessorCount));

    /// <summary>The worker pool that runs this device's loops.</summary>
    public WorkerPool Pool { get; }

    /// <summary>The number of threads, the caller included.</summary>
    public int Threads => Pool.ThreadCount;

    /// <inheritdoc />
    public override DeviceKind Kind => DeviceKind.Cpu;

    /// <inheritdoc />
    public override string Name => "cpu";

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing && !ReferenceEquals(this, s_default))
        {
            Pool.Dispose();
        }
    }
}
