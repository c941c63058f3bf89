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
    /// Creates a device on ILGPU's CPU accelerator, simulating a small warp-32 GPU (2 warps per multiprocessor)
    /// in parallel mode so that tests exercise warp-size-32 code without hundreds of OS threads.
    /// </summary>
    public static IlgpuDevice CreateCpuAccelerator(OptimizationLevel optimization = OptimizationLevel.O1)
    {
        Context context = Context.Create(builder => builder
            .CPU(new CPUDevice(numThreadsPerWarp: 32, numWarpsPerMultiprocessor: 2, numMultiprocessors: 1))
            .EnableAlgorithms()
            .Optimize(optimization));
        Accelerator accelerator = context.CreateCPUAccelerator(0, CPUAcceleratorMode.Parallel);
        return new IlgpuDevice(context, accelerator, DeviceKind.IlgpuCpu);
    }

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
