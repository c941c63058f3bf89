using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Kiln.Kernels;

namespace Kiln.Core.Tests.Ptx;

// The token kernels (Embedding.GpuKernels, DeviceSampling.GpuKernels) compile to PTX offline at O1 and O2 with no
// unresolved `.extern` calls. The gpugemm branch makes PtxCompilationTests collect every GpuKernels list; this file
// covers these kernels until then (and is harmless after). A fresh backend per kernel: a failed compile poisons one.

/// <summary>Offline PTX compilation of the embedding and sampling kernels at both optimization levels.</summary>
public sealed class TokenKernelPtxTests
{
    /// <summary>Every token kernel at O1 and O2.</summary>
    public static TheoryData<string, OptimizationLevel> Kernels()
    {
        TheoryData<string, OptimizationLevel> data = new();
        foreach (GeneratedKernel kernel in Embedding.GpuKernels.Concat(DeviceSampling.GpuKernels))
        {
            data.Add(kernel.Op, OptimizationLevel.O1);
            data.Add(kernel.Op, OptimizationLevel.O2);
        }

        return data;
    }

    /// <summary>The kernel compiles for sm_90 (emitted as sm_80) with no unresolved calls.</summary>
    [Theory]
    [MemberData(nameof(Kernels))]
    public void Kernel_CompilesToPtx_WithoutExternCalls(string op, OptimizationLevel level)
    {
        GeneratedKernel kernel = Embedding.GpuKernels.Concat(DeviceSampling.GpuKernels).Single(k => k.Op == op);
        using Context context = Context.Create(builder => builder.CPU().EnableAlgorithms().Optimize(level));
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
            // One group reduces and scans: warp shuffles and barriers, and the static shared memory the PTX declares
            // (".shared .align 4 .b8 name[bytes];") is within the budget the launch checks, far below 48 KB.
            Assert.Contains("shfl.sync", ptx);
            Assert.Contains("bar.sync", ptx);
            long shared = System.Text.RegularExpressions.Regex.Matches(ptx, @"\.shared\s+\.align\s+\d+\s+\.b8\s+\w+\[(\d+)\]")
                .Sum(static m => long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
            Assert.True(shared > 0 && shared <= DeviceSampling.SharedBytes, $"{op} at {level} declares {shared} bytes of shared memory; the budget is {DeviceSampling.SharedBytes}");
        }
    }
}
