// Compiles every ILGPU matrix-product kernel (tiled and matrix-vector, for float32/float16/bfloat16 weights, with
// the identity and a view-holding epilogue) to PTX for sm_90 without a GPU, and checks that the PTX calls
// nothing unresolved (no .extern: an FMA intrinsic or System.Half would leave one) and has the expected
// barriers and shuffles. A CUDA driver would refuse to load a module with an unresolved call.
using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Kiln.Kernels;
using Kiln.Kernels.Gemm;
using Xunit;

namespace Kiln.Core.Tests.MatMul;

/// <summary>PTX compilation of the matrix-product kernels.</summary>
public sealed class MatMulPtxTests
{
    public static TheoryData<string, Type> Kernels()
    {
        TheoryData<string, Type> data = new();
        foreach (string kernel in new[] { nameof(GpuGemm.TiledKernel), nameof(GpuGemm.VectorKernel) })
        {
            foreach (Type weights in new[] { typeof(GpuFloat32Weights), typeof(GpuFloat16Weights), typeof(GpuBFloat16Weights) })
            {
                data.Add(kernel, weights);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Kernels))]
    public void CompilesToPtxWithoutExternalCalls(string kernel, Type weights)
    {
        using Context context = Context.Create(builder => builder.CPU().EnableAlgorithms().Optimize(OptimizationLevel.O1));
        foreach (Type epilogue in new[] { typeof(IdentityEpilogue), typeof(GpuResidualEpilogue) })
        {
            // A fresh backend per compile: a failed compile poisons the backend (dotnet-stack.md §0.7).
            PTXBackend backend = new(context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, nvvmAPI: null!);
            MethodInfo method = typeof(GpuGemm).GetMethod(kernel, BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public)!
                .MakeGenericMethod(weights, epilogue);
            EntryPointDescription entry = EntryPointDescription.FromExplicitlyGroupedKernel(method);

            string ptx = ((PTXCompiledKernel)backend.Compile(entry, default(KernelSpecialization))).PTXAssembly;

            Assert.DoesNotContain(".extern", ptx);
            Assert.Contains(kernel == nameof(GpuGemm.TiledKernel) ? "bar.sync" : "shfl.sync", ptx);
        }
    }
}
