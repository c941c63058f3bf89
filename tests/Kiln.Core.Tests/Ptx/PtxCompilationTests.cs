using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Kiln.Kernels;
using Xunit.Abstractions;

namespace Kiln.Core.Tests.Ptx;

// Every ILGPU kernel Kiln ships compiles to PTX offline, without a GPU, at each optimisation level Kiln uses (O1,
// the default, and O2, where a known ILGPU bug crashes only there), and the PTX calls nothing it cannot resolve
// (no `.extern` other than dynamic shared memory's `.extern .shared`: MathF.FusedMultiplyAdd or MathF.Log2 would leave one, and the module would fail to load on a real
// device). Kernels are found by reflection, so new ones are covered without touching this file:
//   - `GeneratedKernels` of every generated [Kernels] class,
//   - `GpuKernels` of every class holding hand-written kernels (internal classes included; generic kernels are
//     listed closed, e.g. over each weight reader and epilogue),
// in Kiln.Core, Kiln.Models and this test assembly. One ILGPU context per level, a fresh PTXBackend per kernel
// (a backend is unusable after one failed compile). Explicitly grouped kernels must contain `bar.sync` exactly
// when their IL calls Group.Barrier, and `shfl.sync` exactly when it calls a warp shuffle (KernelIntrinsics.cs).

/// <summary>One ILGPU context per optimisation level, shared by the PTX tests.</summary>
public sealed class PtxContexts : IDisposable
{
    private readonly Dictionary<OptimizationLevel, Context> _contexts = new()
    {
        [OptimizationLevel.O1] = Context.Create(builder => builder.CPU().EnableAlgorithms().Optimize(OptimizationLevel.O1)),
        [OptimizationLevel.O2] = Context.Create(builder => builder.CPU().EnableAlgorithms().Optimize(OptimizationLevel.O2)),
    };

    /// <summary>The context compiling at <paramref name="level"/>.</summary>
    public Context this[OptimizationLevel level] => _contexts[level];

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (Context context in _contexts.Values)
        {
            context.Dispose();
        }
    }
}

/// <summary>Offline PTX compilation of every generated and hand-written kernel.</summary>
public sealed class PtxCompilationTests : IClassFixture<PtxContexts>
{
    /// <summary>The optimisation levels Kiln runs kernels at, by name (O1 and Release are one enum value).</summary>
    private static readonly string[] Levels = ["O1", "O2"];

    /// <summary>The registries a kernel-holding class may expose.</summary>
    private static readonly string[] RegistryNames = ["GeneratedKernels", "GpuKernels"];

    private readonly PtxContexts _contexts;
    private readonly ITestOutputHelper _output;

    /// <summary>Uses the shared contexts.</summary>
    public PtxCompilationTests(PtxContexts contexts, ITestOutputHelper output)
    {
        _contexts = contexts;
        _output = output;
    }

    /// <summary>Every kernel at every level, by a readable id, for the theory.</summary>
    public static TheoryData<string, string> Kernels()
    {
        TheoryData<string, string> data = new();
        foreach (ListedKernel kernel in AllKernels())
        {
            foreach (string level in Levels)
            {
                data.Add(kernel.Id, level);
            }
        }

        return data;
    }

    /// <summary>The generated registry lists every built-in op.</summary>
    [Fact]
    public void Registry_ListsTheBuiltInOps()
    {
        string[] ops = Kiln.Ops.GeneratedKernels.Select(static k => k.Op).ToArray();
        Assert.Equal(new[] { "Add", "ResidualAdd", "RmsNorm", "Rope", "Scale", "SiluMul", "Softmax" }, ops);
        Assert.All(Kiln.Ops.GeneratedKernels, static k => Assert.True(k.Method.IsStatic));
    }

    /// <summary>
    /// The collector finds the hand-written registries of Kiln.Core (internal classes included) and the generated
    /// ones of Kiln.Models, and every listed method is a static, fully closed kernel.
    /// </summary>
    [Fact]
    public void Collector_FindsHandWrittenAndModelKernels()
    {
        ListedKernel[] kernels = AllKernels().ToArray();
        Assert.Contains(kernels, static k => k.Owner == typeof(Kiln.Kernels.Gemm.GpuGemm) && k.Registry == "GpuKernels");
        Assert.Contains(kernels, static k => k.Owner.Assembly == typeof(Kiln.Models.Llama.LlamaConfig).Assembly);
        Assert.Equal(11, kernels.Count(static k => k.Owner.FullName == "Kiln.Models.Mamba.Mamba3Kernels" && k.Registry == "GpuKernels"));
        Assert.Equal(kernels.Length, kernels.Select(static k => k.Id).Distinct().Count());
        Assert.All(kernels, static k =>
        {
            Assert.True(k.Kernel.Method.IsStatic, $"{k.Id} is not static");
            Assert.False(k.Kernel.Method.ContainsGenericParameters, $"{k.Id} is an open generic; list it closed");
        });
    }

    /// <summary>The kernel compiles to PTX for sm_90 (emitted as sm_80) with no unresolved calls.</summary>
    [Theory]
    [MemberData(nameof(Kernels))]
    public void Kernel_CompilesToPtx_WithoutExternCalls(string id, string level)
    {
        ListedKernel listed = AllKernels().Single(k => k.Id == id);
        GeneratedKernel kernel = listed.Kernel;

        // A new backend per kernel: one failed compile poisons a backend.
        PTXBackend backend = new(_contexts[Enum.Parse<OptimizationLevel>(level)], CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, nvvmAPI: null!);
        EntryPointDescription entry = kernel.IsExplicitlyGrouped
            ? EntryPointDescription.FromExplicitlyGroupedKernel(kernel.Method)
            : EntryPointDescription.FromImplicitlyGroupedKernel(kernel.Method);
        PTXCompiledKernel compiled = (PTXCompiledKernel)backend.Compile(entry, default(KernelSpecialization));
        string ptx = compiled.PTXAssembly;
        _output.WriteLine($"{id} at {level}: {ptx.Length} characters of PTX");

        // Unresolved functions would fail at module load on a GPU.
        // (`.extern .shared` is the declaration of dynamic shared memory, sized at launch: not a call.)
        string[] externs = ptx.Split('\n')
            .Where(static line => line.Contains(".extern", StringComparison.Ordinal)
                && !line.Contains(".extern .shared", StringComparison.Ordinal))
            .ToArray();
        Assert.True(
            externs.Length == 0,
            $"{id} at {level} leaves unresolved calls in its PTX (replace the function in the kernel): {string.Join(" | ", externs)}");
        Assert.Contains(".target sm_80", ptx);

        // The static shared memory the PTX declares (".shared .align A .b8 name[bytes];") fits ILGPU's 48 KB per
        // group on CUDA; the CPU accelerator cannot catch an overrun, since it reports unbounded shared memory.
        long shared = System.Text.RegularExpressions.Regex.Matches(ptx, @"^\s*\.shared\s+\.align\s+\d+\s+\.b8\s+\w+\[(\d+)\]", System.Text.RegularExpressions.RegexOptions.Multiline)
            .Sum(static m => long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(shared <= 48 * 1024, $"{id} at {level} declares {shared} bytes of static shared memory; ILGPU allows 49152 per group on CUDA");
        _output.WriteLine($"{id} at {level}: {shared} bytes of static shared memory");

        // Barriers and shuffles appear exactly where the kernel's code asks for them.
        KernelIntrinsics uses = KernelIntrinsics.Of(kernel.Method);
        bool hasBarrier = ptx.Contains("bar.sync", StringComparison.Ordinal);
        bool hasShuffle = ptx.Contains("shfl.sync", StringComparison.Ordinal);
        Assert.True(
            kernel.IsExplicitlyGrouped || !(uses.Barrier || uses.MaybeBarrier || uses.Shuffle),
            $"{id} is listed as implicitly grouped but calls group or warp intrinsics; list it as explicitly grouped");
        Assert.True(
            uses.Barrier ? hasBarrier : uses.MaybeBarrier || !hasBarrier,
            $"{id} at {level}: its code {(uses.Barrier ? "calls" : "never calls")} Group.Barrier but the PTX "
            + $"{(hasBarrier ? "has" : "has no")} bar.sync");
        Assert.True(
            uses.Shuffle == hasShuffle,
            $"{id} at {level}: its code {(uses.Shuffle ? "shuffles" : "never shuffles")} but the PTX "
            + $"{(hasShuffle ? "has" : "has no")} shfl.sync");
    }

    /// <summary>Every kernel listed in a registry of Kiln.Core, Kiln.Models or this assembly, ordered by id.</summary>
    private static IEnumerable<ListedKernel> AllKernels()
    {
        Assembly[] assemblies =
        [
            typeof(Kiln.Ops).Assembly,
            typeof(Kiln.Models.Llama.LlamaConfig).Assembly,
            typeof(PtxCompilationTests).Assembly,
        ];
        List<ListedKernel> kernels = new();
        foreach (Type type in assemblies.SelectMany(static a => a.GetTypes()).Where(static t => !t.ContainsGenericParameters))
        {
            foreach (string name in RegistryNames)
            {
                PropertyInfo? registry = type.GetProperty(name, BindingFlags.Public | BindingFlags.Static | BindingFlags.DeclaredOnly);
                if (registry?.GetValue(null) is IReadOnlyList<GeneratedKernel> listed)
                {
                    for (int i = 0; i < listed.Count; i++)
                    {
                        kernels.Add(new ListedKernel(type, name, i, listed[i]));
                    }
                }
            }
        }

        return kernels.OrderBy(static k => k.Id, StringComparer.Ordinal);
    }

    /// <summary>One entry of a registry.</summary>
    private sealed record ListedKernel(Type Owner, string Registry, int Index, GeneratedKernel Kernel)
    {
        /// <summary>Owner, registry, position and the closed method, e.g. <c>Kiln.Ops.GeneratedKernels[1] ResidualAdd</c>.</summary>
        public string Id { get; } =
            $"{Owner.FullName}.{Registry}[{Index}] {Kernel.Op} <{string.Join(", ", Kernel.Method.GetGenericArguments().Select(static t => t.Name))}>";
    }
}
