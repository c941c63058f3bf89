// `kiln bench gemm`: Kiln's CPU float32 matrix product C[M, N] = A[M, K] · W[N, K]ᵀ (packing W per call, and with
// weights prepacked once by MatMul.Prepack) against OpenBLAS's
// cblas_sgemm (row-major, B transposed so that it reads the same [N, K] weights), measured in the same run on the
// same thread count. Each side is warmed up, then timed as the best of 7 repetitions, Kiln and OpenBLAS
// alternating so that both see the same machine load; a repetition runs the product for at least 50 ms. OpenBLAS is loaded at run time from libopenblas.so.0 (Debian
// package libopenblas0-pthread); without it the benchmark reports Kiln alone and says how to install it.
//
// OPENBLAS_CORETYPE, when set (some machines set it to Haswell), forces OpenBLAS's AVX2 kernel; the fair peer is
// its AVX-512 kernel, so run with:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE kiln bench gemm ...
// OpenBLAS 0.3.21 does not recognise every newer Xeon (on family 6 model 207 it falls back to its generic
// Prescott kernel); there, force the AVX-512 kernel with OPENBLAS_CORETYPE=SkylakeX. The report names the kernel
// OpenBLAS chose (openblas_get_corename) and warns when it is not an AVX-512 one.
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Cli.Bench;

/// <summary>The matrix-product benchmark: Kiln against OpenBLAS in one run.</summary>
public static unsafe class GemmBench
{
    private const int RowMajor = 101;
    private const int NoTrans = 111;
    private const int Trans = 112;

    /// <summary>
    /// Measures C[m, n] = A[m, k] · W[n, k]ᵀ in float32 on <paramref name="threads"/> threads with Kiln and with
    /// OpenBLAS, and prints GFLOP/s (and GB/s of weights) for both and their ratio: one JSON line when
    /// <paramref name="json"/>, else one readable line. Notes go to <paramref name="stderr"/>.
    /// </summary>
    /// <returns>0 on success (also when OpenBLAS is missing), 2 for invalid arguments.</returns>
    public static int Run(int m, int n, int k, int threads, bool json, TextWriter stdout, TextWriter stderr)
    {
        if (m < 1 || n < 1 || k < 1 || threads < 1)
        {
            stderr.WriteLine($"error: bench gemm needs m, n, k and threads of at least 1 (got m={m} n={n} k={k} threads={threads}).");
            return 2;
        }

        // Inputs: values in [-1, 1] from a fixed seed.
        using CpuDevice device = new(threads);
        using Tensor a = Tensor.FromArray(RandomValues(m * k, 1), [m, k], device);
        using Tensor w = Tensor.FromArray(RandomValues(n * k, 2), [n, k], device);
        using Tensor c = Tensor.Empty([m, n], DType.Float32, device);
        double flops = 2.0 * m * n * k;
        double weightBytes = 4.0 * n * k;

        // OpenBLAS, when installed.
        OpenBlas? blas = OpenBlas.TryLoad(threads, out string? missing);
        if (blas is null)
        {
            stderr.WriteLine($"note: {missing}");
        }

        // Kiln and OpenBLAS alternate repetitions, so that both see the same machine load.
        float* pa = a.FloatPointer;
        float* pw = w.FloatPointer;
        float* pc = c.FloatPointer;
        float[] kilnResult = Array.Empty<float>();
        using PackedWeights packed = MatMul.Prepack(w);
        Action kiln = () => MatMul.Compute(a, w, c);
        Action kilnPrepacked = () => MatMul.Compute(a, packed, c);
        Action? openBlas = blas is null ? null : () => blas.Sgemm(m, n, k, pa, pw, pc);
        (double kilnSeconds, double prepackedSeconds, double? peerSeconds) =
            BestSeconds(kiln, kilnPrepacked, openBlas, () => kilnResult = c.ToArray());
        if (blas is not null)
        {
            string? coreType = Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE");
            stderr.WriteLine($"openblas: kernel {blas.CoreName}, {blas.Threads} thread(s)"
                + (coreType is null ? string.Empty : $", chosen by OPENBLAS_CORETYPE={coreType}"));
            if (!IsAvx512Core(blas.CoreName))
            {
                stderr.WriteLine($"note: {blas.CoreName} is not one of OpenBLAS's AVX-512 kernels (SkylakeX, Cooperlake, "
                    + "SapphireRapids); if OPENBLAS_CORETYPE is set to another kernel, run with 'env -u OPENBLAS_CORETYPE "
                    + "-u OPENBLAS_L2_SIZE'; if OpenBLAS does not recognise this CPU (0.3.21 falls back to Prescott on "
                    + "newer Xeons), force it with OPENBLAS_CORETYPE=SkylakeX.");
            }

            blas.Sgemm(m, n, k, pa, pw, pc);
            stderr.WriteLine($"check: largest difference Kiln vs OpenBLAS {MaxRelativeDifference(kilnResult, c.ToArray()):G3} "
                + "(relative to the largest output)");
        }

        double load = LoadAverage();
        if (load > threads + 0.5)
        {
            stderr.WriteLine($"note: the 1-minute load average is {load:F1} on {Environment.ProcessorCount} cores; other "
                + "processes compete for them, so absolute figures are low and noisy (the ratio is fairer).");
        }

        // Report.
        double kilnGflops = flops / kilnSeconds / 1e9;
        double? peerGflops = peerSeconds is double p ? flops / p / 1e9 : null;
        double? ratio = peerGflops is double g ? kilnGflops / g : null;
        if (json)
        {
            CultureInfo inv = CultureInfo.InvariantCulture;
            string Num(double? v) => v is double d ? d.ToString("0.###", inv) : "null";
            stdout.WriteLine($"{{\"m\":{m},\"n\":{n},\"k\":{k},\"threads\":{threads},\"kiln_gflops\":{Num(kilnGflops)},"
                + $"\"peer\":\"openblas\",\"peer_gflops\":{Num(peerGflops)},\"ratio\":{Num(ratio)},"
                + $"\"kiln_weight_gbps\":{Num(weightBytes / kilnSeconds / 1e9)},"
                + $"\"kiln_prepacked_gflops\":{Num(flops / prepackedSeconds / 1e9)},"
                + $"\"peer_weight_gbps\":{Num(peerSeconds is double s ? weightBytes / s / 1e9 : null)},"
                + $"\"peer_core\":{(blas is null ? "null" : $"\"{blas.CoreName}\"")}}}");
        }
        else
        {
            string peer = peerGflops is double pg
                ? $"openblas ({blas!.CoreName}) {pg:F1} GFLOP/s, ratio {ratio:F2}"
                : "openblas not available";
            stdout.WriteLine($"gemm {m}x{n}x{k} threads={threads}: kiln {kilnGflops:F1} GFLOP/s "
                + $"({weightBytes / kilnSeconds / 1e9:F1} GB/s of weights, {kilnSeconds * 1e6:F1} us; prepacked "
                + $"{flops / prepackedSeconds / 1e9:F1} GFLOP/s), {peer}");
        }

        return 0;
    }

    /// <summary>
    /// Warms each side up (at least 10 calls and 0.5 s, so that the JIT's tiers settle), then times 7 repetitions of
    /// each, alternating, every repetition lasting at least 50 ms; returns the best per-call times. <paramref
    /// name="afterKiln"/> runs once after Kiln's warm-up (to keep its result).
    /// </summary>
    private static (double Kiln, double Prepacked, double? Peer) BestSeconds(
        Action kiln,
        Action prepacked,
        Action? peer,
        Action afterKiln)
    {
        int kilnCalls = WarmUp(kiln);
        afterKiln();
        int prepackedCalls = WarmUp(prepacked);
        int peerCalls = peer is null ? 0 : WarmUp(peer);
        double kilnBest = double.MaxValue;
        double prepackedBest = double.MaxValue;
        double peerBest = double.MaxValue;
        for (int rep = 0; rep < 7; rep++)
        {
            kilnBest = Math.Min(kilnBest, Time(kiln, kilnCalls));
            prepackedBest = Math.Min(prepackedBest, Time(prepacked, prepackedCalls));
            if (peer is not null)
            {
                peerBest = Math.Min(peerBest, Time(peer, peerCalls));
            }
        }

        return (kilnBest, prepackedBest, peer is null ? null : peerBest);
    }

    /// <summary>Runs <paramref name="run"/> until warm; returns how many calls make a 50 ms repetition.</summary>
    private static int WarmUp(Action run)
    {
        Stopwatch clock = Stopwatch.StartNew();
        int warm = 0;
        while (warm < 10 || clock.Elapsed.TotalSeconds < 0.5)
        {
            run();
            warm++;
        }

        return Math.Max(1, (int)Math.Ceiling(0.05 / (clock.Elapsed.TotalSeconds / warm)));
    }

    private static double Time(Action run, int calls)
    {
        Stopwatch clock = Stopwatch.StartNew();
        for (int i = 0; i < calls; i++)
        {
            run();
        }

        return clock.Elapsed.TotalSeconds / calls;
    }

    private static bool IsAvx512Core(string core) =>
        core.Equals("SkylakeX", StringComparison.OrdinalIgnoreCase)
        || core.Equals("Cooperlake", StringComparison.OrdinalIgnoreCase)
        || core.Equals("SapphireRapids", StringComparison.OrdinalIgnoreCase);

    private static double LoadAverage()
    {
        try
        {
            string text = File.ReadAllText("/proc/loadavg");
            return double.Parse(text.Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return 0;
        }
        catch (UnauthorizedAccessException)
        {
            return 0;
        }
    }

    private static float[] RandomValues(int count, int seed)
    {
        Random random = new(seed);
        float[] values = new float[count];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)((random.NextDouble() * 2) - 1);
        }

        return values;
    }

    private static double MaxRelativeDifference(float[] x, float[] y)
    {
        double largest = 1e-30;
        double worst = 0;
        for (int i = 0; i < x.Length; i++)
        {
            largest = Math.Max(largest, Math.Abs(y[i]));
            worst = Math.Max(worst, Math.Abs(x[i] - y[i]));
        }

        return worst / largest;
    }

    /// <summary>The few OpenBLAS entry points the benchmark calls, bound at run time.</summary>
    private sealed class OpenBlas
    {
        private readonly delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void> _sgemm;

        private OpenBlas(nint library, int threads)
        {
            _sgemm = (delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)
                NativeLibrary.GetExport(library, "cblas_sgemm");
            if (NativeLibrary.TryGetExport(library, "openblas_set_num_threads", out nint setThreads))
            {
                ((delegate* unmanaged<int, void>)setThreads)(threads);
            }

            Threads = NativeLibrary.TryGetExport(library, "openblas_get_num_threads", out nint getThreads)
                ? ((delegate* unmanaged<int>)getThreads)()
                : threads;
            CoreName = NativeLibrary.TryGetExport(library, "openblas_get_corename", out nint coreName)
                ? Marshal.PtrToStringAnsi(((delegate* unmanaged<nint>)coreName)()) ?? "unknown"
                : "unknown";
        }

        /// <summary>The kernel family OpenBLAS picked for this CPU (SkylakeX is its AVX-512 one).</summary>
        public string CoreName { get; }

        /// <summary>The thread count OpenBLAS reports after being set.</summary>
        public int Threads { get; }

        /// <summary>Loads libopenblas.so.0, or returns null with the reason and the fix.</summary>
        public static OpenBlas? TryLoad(int threads, out string? missing)
        {
            foreach (string name in new[] { "libopenblas.so.0", "libopenblas.so" })
            {
                if (NativeLibrary.TryLoad(name, out nint library))
                {
                    if (!NativeLibrary.TryGetExport(library, "cblas_sgemm", out _))
                    {
                        continue;
                    }

                    missing = null;
                    return new OpenBlas(library, threads);
                }
            }

            missing = "OpenBLAS (libopenblas.so.0) was not found, so only Kiln was measured; install the peer with "
                + "'apt-get install -y libopenblas0-pthread' and run again.";
            return null;
        }

        /// <summary>C[m, n] = A[m, k] · W[n, k]ᵀ, row-major.</summary>
        public void Sgemm(int m, int n, int k, float* a, float* w, float* c) =>
            _sgemm(RowMajor, NoTrans, Trans, m, n, k, 1f, a, k, w, k, 0f, c, n);
    }
}
