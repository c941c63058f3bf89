using System.Reflection;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Kiln.Kernels;
using Xunit.Abstractions;

namespace Kiln.Core.Tests.Ptx;

// Every ILGPU kernel the generator emitted compiles to PTX offline, without a GPU, and the PTX calls nothing it
// cannot resolve (no `.extern`: e.g. MathF.FusedMultiplyAdd or MathF.Log2 would leave one, and the module would
// fail to load on a real device). The kernels are found through the GeneratedKernels registry of every [Kernels]
// class in Kiln.Core and in this test assembly, so a new op is covered without touching this file. A fresh backend
// is made per kernel, because a PTXBackend is unusable after one failed compile.

/// <summary>Offline PTX compilation of the generated kernels.</summary>
public sealed class PtxCompilationTests : IDisposable
{
    private readonly Context _context = Context.Create(builder => builder.CPU().EnableAlgorithms());
    private readonly ITestOutputHelper _output;

    /// <summary>Creates the shared context.</summary>
    public PtxCompilationTests(ITestOutputHelper output)
    {
        _output = output;
    }

    /// <summary>Every generated kernel, by class and op, for the theory.</summary>
    public static TheoryData<string, string> Kernels()
    {
        TheoryData<string, string> data = new();
        foreach ((Type owner, GeneratedKernel kernel) in AllKernels())
        {
            data.Add(owner.FullName!, kernel.Op);
        }

        return data;
    }

    /// <summary>The registry lists every kernel, built-in ops included.</summary>
    [Fact]
    public void Registry_ListsTheBuiltInOps()
    {
        string[] ops = Kiln.Ops.GeneratedKernels.Select(static k => k.Op).ToArray();
        Assert.Equal(new[] { "Add", "ResidualAdd", "RmsNorm", "Rope", "Scale", "SiluMul", "Softmax" }, ops);
        Assert.All(Kiln.Ops.GeneratedKernels, static k => Assert.True(k.Method.IsStatic));
    }

    /// <summary>The kernel compiles to PTX for sm_90 (emitted as sm_80) with no unresolved calls.</summary>
    [Theory]
    [MemberData(nameof(Kernels))]
    public void Kernel_CompilesToPtx_WithoutExternCalls(string owner, string op)
    {
        GeneratedKernel kernel = AllKernels().Single(k => k.Owner.FullName == owner && k.Kernel.Op == op).Kernel;

        // A new backend per kernel: one failed compile poisons a backend.
        PTXBackend backend = new(_context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, nvvmAPI: null!);
        EntryPointDescription entry = kernel.IsExplicitlyGrouped
            ? EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method)
            : EntryPointDescription.FromImplicitlyGroupedKernel(kernel.Method);
        PTXCompiledKernel compiled = (PTXCompiledKernel)backend.Compile(entry, default(KernelSpecialization));
        string ptx = compiled.PTXAssembly;
        _output.WriteLine($"{owner}.{op}: {ptx.Length} characters of PTX");

        // Unresolved functions would fail at module load on a GPU.
        string[] externs = ptx.Split('\n').Where(static line => line.Contains(".extern", StringComparison.Ordinal)).ToArray();
        Assert.True(
            externs.Length == 0,
            $"{owner}.{op} leaves unresolved calls in its PTX (replace the function in the definition): {string.Join(" | ", externs)}");
        Assert.Contains(".target sm_80", ptx);

        // Row kernels reduce across the group: warp shuffles and barriers.
        if (kernel.IsExplicitlyGrouped)
        {
            Assert.Contains("shfl.sync", ptx);
            Assert.Contains("bar.sync", ptx);
        }
    }

    /// <inheritdoc />
    public void Dispose() => _context.Dispose();

    private static IEnumerable<(Type Owner, GeneratedKernel Kernel)> AllKernels()
    {
        // Every type with a generated registry, in Kiln.Core and here.
        foreach (Assembly assembly in new[] { typeof(Kiln.Ops).Assembly, typeof(PtxCompilationTests).Assembly })
        {
            foreach (Type type in assembly.GetTypes().OrderBy(static t => t.FullName, StringComparer.Ordinal))
            {
                PropertyInfo? registry = type.GetProperty("GeneratedKernels", BindingFlags.Public | BindingFlags.Static);
                if (registry?.GetValue(null) is IReadOnlyList<GeneratedKernel> kernels)
                {
                    foreach (GeneratedKernel kernel in kernels)
                    {
                        yield return (type, kernel);
                    }
                }
            }
        }
    }
}
