// Compiles every ILGPU attention kernel (GpuAttention.GpuKernels) to PTX for sm_90 without a GPU, at the
// optimization levels Kiln uses (O1, and O2 where a known ILGPU bug only shows), and checks that the PTX calls
// nothing unresolved (no .extern: a CUDA driver would refuse the module) and that the flash kernel really uses
// barriers and dynamic shared memory.
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Kiln.Kernels;
using Xunit;

namespace Kiln.Core.Tests.Attention;

/// <summary>PTX compilation of the attention kernels.</summary>
public sealed class AttentionPtxTests
{
    /// <summary>Every kernel of the registry at O1 and O2.</summary>
    public static TheoryData<string, OptimizationLevel> Kernels()
    {
        TheoryData<string, OptimizationLevel> data = new();
        foreach (GeneratedKernel kernel in GpuAttention.GpuKernels)
        {
            data.Add(kernel.Op, OptimizationLevel.O1);
            data.Add(kernel.Op, OptimizationLevel.O2);
        }

        return data;
    }

    /// <summary>The registry lists the three kernels.</summary>
    [Fact]
    public void Registry_ListsAppendFlashesAndCombine()
    {
        Assert.Equal(new[] { "AttentionAppend", "AttentionFlash16K", "AttentionFlash32K", "AttentionFlash48K", "AttentionCombine" }, GpuAttention.GpuKernels.Select(static k => k.Op));
    }

    /// <summary>The kernel compiles to PTX (emitted as sm_80) with no unresolved calls.</summary>
    [Theory]
    [MemberData(nameof(Kernels))]
    public void Kernel_CompilesToPtx_WithoutExternCalls(string op, OptimizationLevel level)
    {
        GeneratedKernel kernel = GpuAttention.GpuKernels.Single(k => k.Op == op);
        using Context context = Context.Create(builder => builder.CPU().EnableAlgorithms().Optimize(level));

        // A fresh backend per compile: a failed compile poisons a backend (dotnet-stack.md §0.7).
        PTXBackend backend = new(context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, nvvmAPI: null!);
        EntryPointDescription entry = kernel.IsExplicitlyGrouped
            ? EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method)
            : EntryPointDescription.FromImplicitlyGroupedKernel(kernel.Method);
        string ptx = ((PTXCompiledKernel)backend.Compile(entry, default(KernelSpecialization))).PTXAssembly;

        string[] externs = ptx.Split('\n').Where(static line => line.Contains(".extern", StringComparison.Ordinal)).ToArray();
        Assert.True(externs.Length == 0, $"{op} at {level} leaves unresolved calls in its PTX: {string.Join(" | ", externs)}");
        Assert.Contains(".target sm_80", ptx);
        if (kernel.IsExplicitlyGrouped)
        {
            Assert.Contains("bar.sync", ptx);
            Assert.Contains(".shared", ptx);
        }
    }
}
