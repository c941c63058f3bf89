using System.Collections.Concurrent;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Loader;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace Kiln.Devices;

/// <summary>
/// A device backed by an ILGPU accelerator: CUDA, or ILGPU's CPU accelerator (the same kernels, run slowly,
/// for tests without a GPU). Kernels are loaded once per device and kept (<see cref="GetKernel{TDelegate}"/>).
/// </summary>
public sealed class IlgpuDevice : Device
{
    private readonly ConcurrentDictionary<object, Delegate> _kernels = new(ReferenceEqualityComparer.Instance);

    private IlgpuDevice(Context context, Accelerator accelerator, DeviceKind kind)
    {
        Context = context;
        Accelerator = accelerator;
        Kind = kind;
    }

    /// <summary>The ILGPU context (algorithms enabled, so MathF maps to device intrinsics).</summary>
    public Context Context { get; }

    /// <summary>The accelerator that runs the kernels.</summary>
    public Accelerator Accelerator { get; }

    /// <inheritdoc />
    public override DeviceKind Kind { get; }

    /// <inheritdoc />
    public override string Name => Kind == DeviceKind.Cuda ? "cuda" : "ilgpu-cpu";

    /// <summary>
    /// Creates a device on ILGPU's CPU accelerator, by default simulating a small warp-32 GPU (2 warps per
    /// multiprocessor) in parallel mode so that tests exercise warp-size-32 code without hundreds of OS threads.
    /// Every simulated thread is an OS thread and every barrier or shuffle synchronizes them all, so whole-model
    /// runs use a narrower device (for example 4 threads per warp, 4 warps) to stay fast on a few cores.
    /// </summary>
    /// <param name="optimization">ILGPU's optimization level for the kernels.</param>
    /// <param name="threadsPerWarp">Simulated lanes per warp (a power of two).</param>
    /// <param name="warpsPerGroup">Simulated warps per multiprocessor, which bounds the group size.</param>
    public static IlgpuDevice CreateCpuAccelerator(
        OptimizationLevel optimization = OptimizationLevel.O1,
        int threadsPerWarp = 32,
        int warpsPerGroup = 2)
    {
        if (!IsSupportedShape(threadsPerWarp, warpsPerGroup))
        {
            throw new ArgumentOutOfRangeException(nameof(threadsPerWarp), $"A simulated device needs a power-of-two warp of 4 to 64 lanes ({threadsPerWarp} given) and 1 to that many warps per group ({warpsPerGroup} given).");
        }

        Context context = Context.Create(builder => builder
            .CPU(new CPUDevice(numThreadsPerWarp: threadsPerWarp, numWarpsPerMultiprocessor: warpsPerGroup, numMultiprocessors: 1))
            .EnableAlgorithms()
            .Optimize(optimization));
        Accelerator accelerator = context.CreateCPUAccelerator(0, CPUAcceleratorMode.Parallel);
        return new IlgpuDevice(context, accelerator, DeviceKind.IlgpuCpu);
    }

    /// <summary>
    /// Reads the simulated shape of an <c>ilgpu-cpu</c> device name: <c>ilgpu-cpu</c> (32 lanes per warp, 2 warps)
    /// or <c>ilgpu-cpu:LANESxWARPS</c>, for example <c>ilgpu-cpu:4x4</c>.
    /// </summary>
    /// <returns>False when the name is not an ilgpu-cpu name at all.</returns>
    /// <exception cref="ArgumentException">The name starts with ilgpu-cpu: but the shape is malformed.</exception>
    public static bool TryParseCpuShape(string name, out int threadsPerWarp, out int warpsPerGroup)
    {
        ArgumentNullException.ThrowIfNull(name);
        threadsPerWarp = 32;
        warpsPerGroup = 2;
        const string Prefix = "ilgpu-cpu";
        if (!name.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }

        string rest = name[Prefix.Length..];
        if (rest.Length == 0)
        {
            return true;
        }

        string[] parts = rest.StartsWith(':') ? rest[1..].Split('x', 'X') : [];
        if (parts.Length != 2
            || !int.TryParse(parts[0], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out threadsPerWarp)
            || !int.TryParse(parts[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out warpsPerGroup)
            || !IsSupportedShape(threadsPerWarp, warpsPerGroup))
        {
            throw new ArgumentException($"unknown device '{name}'; the simulated GPU is ilgpu-cpu or ilgpu-cpu:LANESxWARPS with LANES a power of two from 4 to 64 and WARPS from 1 to LANES (for example ilgpu-cpu:4x4).", nameof(name));
        }

        return true;
    }

    // Kiln's kernels assume what every NVIDIA GPU gives (32 lanes, at most 32 warps per group): a warp of at least
    // 4 lanes (the matrix-vector kernel stores 4 rows from lanes 0..3) and no more warps than lanes (one warp
    // reduces the per-warp partials of a group). Simulated devices must keep to that too.
    private static bool IsSupportedShape(int threadsPerWarp, int warpsPerGroup) =>
        threadsPerWarp >= 4 && threadsPerWarp <= 64 && (threadsPerWarp & (threadsPerWarp - 1)) == 0
        && warpsPerGroup >= 1 && warpsPerGroup <= threadsPerWarp;

    /// <summary>Creates a device on the first CUDA GPU, or returns null when there is none.</summary>
    public static IlgpuDevice? TryCreateCuda(OptimizationLevel optimization = OptimizationLevel.O1)
    {
        EnsureCudaDriverResolves();
        Context context = Context.Create(builder => builder.Cuda().EnableAlgorithms().Optimize(optimization));
        if (context.GetCudaDevices().Count == 0)
        {
            context.Dispose();
            return null;
        }

        Accelerator accelerator = context.CreateCudaAccelerator(0);
        return new IlgpuDevice(context, accelerator, DeviceKind.Cuda);
    }

    private static int s_cudaResolverRegistered;

    /// <summary>
    /// Lets ILGPU find the CUDA driver where only its versioned name exists. ILGPU imports the driver as "cuda",
    /// which .NET probes on Linux as libcuda.so; driver packages and GPU containers often install only
    /// libcuda.so.1 (libcuda.so comes with the development files). When the normal probe fails, load the
    /// versioned file instead. Registered once, as a fallback that never overrides a library .NET found.
    /// </summary>
    private static void EnsureCudaDriverResolves()
    {
        if (!OperatingSystem.IsLinux() || Interlocked.Exchange(ref s_cudaResolverRegistered, 1) != 0)
        {
            return;
        }

        Assembly ilgpu = typeof(Context).Assembly;
        AssemblyLoadContext.Default.ResolvingUnmanagedDll += (assembly, name) =>
            assembly == ilgpu && name == "cuda" && NativeLibrary.TryLoad("libcuda.so.1", out IntPtr handle)
                ? handle
                : IntPtr.Zero;
    }

    /// <summary>
    /// Returns the kernel stored under <paramref name="key"/>, loading it with <paramref name="load"/> the first
    /// time. Keys are compared by reference: use a static readonly object per kernel.
    /// </summary>
    public TDelegate GetKernel<TDelegate>(object key, Func<Accelerator, TDelegate> load)
        where TDelegate : Delegate
    {
        if (_kernels.TryGetValue(key, out Delegate? kernel))
        {
            return (TDelegate)kernel;
        }

        return (TDelegate)_kernels.GetOrAdd(key, _ => load(Accelerator));
    }

    /// <summary>Waits for all queued kernels to finish.</summary>
    public void Synchronize() => Accelerator.Synchronize();

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _kernels.Clear();
            Accelerator.Dispose();
            Context.Dispose();
        }
    }
}
