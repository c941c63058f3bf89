// The GPU check program (samples/Kiln.GpuCheck) in CI, where there is no GPU: its entry point run in-process on
// ILGPU's CPU accelerator with --size small must pass every correctness check it runs and print every section,
// and write the same rows as JSON. Also: its comparison flags what it should, its own fill kernels compile to PTX
// at the optimisation levels Kiln uses, and a bad flag or a missing device is a usage error.

using System.Text.Json;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Kiln.GpuCheck;
using Kiln.Kernels;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class GpuCheckTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void SmallRun_OnIlgpuCpu_PassesEveryCheckAndReportsEverySection()
    {
        // Every section on a 4 lanes × 4 warps device: the model section's decode steps cost about 1 s each there,
        // against 20 s on the 32 × 2 device (every simulated thread is an OS thread), whose correctness run is below.
        (int code, string stdout, string stderr) = Run("--device", "ilgpu-cpu:4x4", "--size", "small", "--out", _temp.Path);

        // Exit code and the four tables.
        Assert.True(code == GpuCheckProgram.Success, $"exit code {code}\n{stdout}\n{stderr}");
        Assert.Contains("## Correctness: ilgpu-cpu against cpu", stdout);
        Assert.Contains("## Bandwidth on ilgpu-cpu", stdout);
        Assert.Contains("## Compute on ilgpu-cpu", stdout);
        Assert.Contains("## Model on ilgpu-cpu", stdout);
        Assert.DoesNotContain("| FAIL |", stdout);

        // The JSON records: every section, and every correctness row passed.
        using JsonDocument json = JsonDocument.Parse(File.ReadAllText(_temp.File(GpuCheckProgram.JsonFileName)));
        JsonElement[] rows = json.RootElement.EnumerateArray().ToArray();
        foreach (string section in GpuCheckProgram.SectionNames)
        {
            Assert.Contains(rows, r => r.GetProperty("section").GetString() == section);
        }

        JsonElement[] checks = AssertEveryCheckPassed(rows);

        // Every op of Kiln.Ops, the embedding, the device sampling and every matrix-product variant has a row.
        foreach (string op in new[]
        {
            "Add", "Scale", "SiluMul", "RmsNorm", "Softmax", "Rope (adjacent)", "Rope (half-split)", "Embedding lookup float16",
            "ArgMax (device sampling)", "Softmax sampling T=0.8 (device)", "Attention prefill (GQA)", "Attention decode (GQA)",
            "DSA indexer key append (LayerNorm + RoPE)", "DSA indexer scores", "DSA top-k (ties, NaN, ±0)",
            "DSA sparse attention prefill", "DSA sparse attention decode",
        })
        {
            Assert.Contains(checks, c => c.GetProperty("check").GetString() == op);
        }

        Assert.Equal(18, checks.Count(static c => c.GetProperty("check").GetString()!.StartsWith("MatMul ", StringComparison.Ordinal)));

        // Speed rows carry positive figures.
        JsonElement copy = rows.Single(static r => r.GetProperty("section").GetString() == "bandwidth"
            && r.GetProperty("kernel").GetString()!.StartsWith("copy", StringComparison.Ordinal));
        Assert.True(copy.GetProperty("gb_per_s").GetDouble() > 0);
        Assert.All(rows.Where(static r => r.GetProperty("section").GetString() == "compute"),
            static r => Assert.True(r.GetProperty("tflops").GetDouble() > 0));
        Assert.All(rows.Where(static r => r.GetProperty("section").GetString() == "bandwidth"),
            static r => Assert.True(r.GetProperty("gb_per_s").GetDouble() > 0, r.GetProperty("kernel").GetString()));
        JsonElement[] model = rows.Where(static r => r.GetProperty("section").GetString() == "model").ToArray();
        Assert.Contains(model, static r => r.GetProperty("metric").GetString() == "decode" && r.GetProperty("value").GetDouble() > 0);
        Assert.Contains(model, static r => r.GetProperty("metric").GetString() == "prefill" && r.GetProperty("value").GetDouble() > 0);
        Assert.Contains(model, static r => r.GetProperty("metric").GetString() == "DSA decode" && r.GetProperty("value").GetDouble() > 0);
        Assert.Contains(model, static r => r.GetProperty("metric").GetString() == "dense decode (same model)" && r.GetProperty("value").GetDouble() > 0);
    }

    [Fact]
    public void Correctness_OnWarp32Groups_PassesEveryCheck()
    {
        // 32 lanes × 2 warps: CUDA's warp width, 64-thread groups (8×8 matrix-product tiles), as in the kernel properties.
        (int code, string stdout, string stderr) = Run(
            "--device", "ilgpu-cpu", "--size", "small", "--sections", "correctness", "--out", _temp.Path);

        Assert.True(code == GpuCheckProgram.Success, $"exit code {code}\n{stdout}\n{stderr}");
        Assert.Contains("## Correctness: ilgpu-cpu against cpu", stdout);
        Assert.Contains("warp 32, 64 threads per group", stdout);
        using JsonDocument json = JsonDocument.Parse(File.ReadAllText(_temp.File(GpuCheckProgram.JsonFileName)));
        JsonElement[] rows = json.RootElement.EnumerateArray().ToArray();
        Assert.All(rows, static r => Assert.Equal("correctness", r.GetProperty("section").GetString()));
        AssertEveryCheckPassed(rows);
    }

    [Fact]
    public void Compare_FlagsAnElementBeyondTheTolerance()
    {
        Tolerance tolerance = new(1e-6, 1e-5);
        float[] cpu = [1f, -2f, 0f, 1000f];

        // Inside: 1e-6 + 1e-5 · 1000 allows 0.0100 at the last element.
        CorrectnessSection.Comparison inside = CorrectnessSection.Compare(new Outputs(cpu, [1f, -2f, 5e-7f, 1000.009f]), tolerance);
        Assert.True(inside.Pass, inside.Note);
        Assert.Equal(0.009, inside.MaxAbs, 4);

        // Outside: a wrong element, a NaN where the CPU has a number, a length mismatch.
        CorrectnessSection.Comparison wrong = CorrectnessSection.Compare(new Outputs(cpu, [1f, -2f, 0f, 1000.02f]), tolerance);
        Assert.False(wrong.Pass);
        Assert.Contains("element 3", wrong.Note);
        Assert.False(CorrectnessSection.Compare(new Outputs(cpu, [1f, float.NaN, 0f, 1000f]), tolerance).Pass);
        Assert.False(CorrectnessSection.Compare(new Outputs(cpu, [1f, -2f, 0f]), tolerance).Pass);

        // NaN where the CPU has NaN matches.
        Assert.True(CorrectnessSection.Compare(new Outputs([float.NaN, 1f], [float.NaN, 1f]), tolerance).Pass);
    }

    [Theory]
    [InlineData(OptimizationLevel.O1)]
    [InlineData(OptimizationLevel.O2)]
    public void FillKernels_CompileToPtx_WithoutExternCalls(OptimizationLevel level)
    {
        using Context context = Context.Create(builder => builder.CPU().EnableAlgorithms().Optimize(level));
        Assert.Equal(3, DeviceFill.GpuKernels.Count);
        foreach (GeneratedKernel kernel in DeviceFill.GpuKernels)
        {
            // A new backend per kernel: one failed compile poisons a backend.
            PTXBackend backend = new(context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, nvvmAPI: null!);
            EntryPointDescription entry = EntryPointDescription.FromImplicitlyGroupedKernel(kernel.Method);
            string ptx = ((PTXCompiledKernel)backend.Compile(entry, default(KernelSpecialization))).PTXAssembly;
            Assert.DoesNotContain(".extern", ptx);
            Assert.Contains(".target sm_80", ptx);
        }
    }

    [Theory]
    [InlineData("--size huge", "--size huge: unknown size")]
    [InlineData("--device metal", "--device metal: unknown device")]
    [InlineData("--sections correctness,speed", "unknown section 'speed'")]
    [InlineData("--opt O3", "--opt O3: unknown level")]
    public void BadFlagOrMissingDevice_IsAUsageError(string flags, string message)
    {
        (int code, string stdout, string stderr) = Run(flags.Split(' '));

        Assert.Equal(GpuCheckProgram.UsageError, code);
        Assert.Equal("", stdout);
        Assert.StartsWith("kiln-gpucheck: error: ", stderr);
        Assert.Contains(message, stderr);
        Assert.Single(stderr.TrimEnd().Split('\n'));
    }

    [Fact]
    public void CudaWithoutAGpu_IsAUsageErrorThatSuggestsTheDryRun()
    {
        // Only meaningful where there is no GPU (CI); on a GPU machine the check would run for minutes.
        using (Kiln.Devices.IlgpuDevice? gpu = Kiln.Devices.IlgpuDevice.TryCreateCuda())
        {
            if (gpu is not null)
            {
                return;
            }
        }

        (int code, string stdout, string stderr) = Run("--device", "cuda");

        Assert.Equal(GpuCheckProgram.UsageError, code);
        Assert.Equal("", stdout);
        Assert.Contains("--device cuda: no CUDA device was found", stderr);
        Assert.Contains("--device ilgpu-cpu --size small", stderr);
    }

    /// <summary>Asserts that the correctness rows are all there and all passed; returns them.</summary>
    private static JsonElement[] AssertEveryCheckPassed(JsonElement[] rows)
    {
        JsonElement[] checks = rows.Where(static r => r.GetProperty("section").GetString() == "correctness").ToArray();
        Assert.True(checks.Length >= 33, $"only {checks.Length} correctness rows");
        foreach (JsonElement check in checks)
        {
            string name = check.GetProperty("check").GetString()!;
            string result = check.GetProperty("result").GetString()!;
            Assert.True(result == CorrectnessSection.Pass, $"{name}: {result} {check.GetProperty("note").GetString()}");
            Assert.True(check.GetProperty("max_abs_error").GetDouble() >= 0, name);
        }

        return checks;
    }

    private static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        using StringWriter stdout = new();
        using StringWriter stderr = new();
        int code = GpuCheckProgram.Run(args, stdout, stderr, defaultOut: null);
        return (code, stdout.ToString(), stderr.ToString());
    }
}
