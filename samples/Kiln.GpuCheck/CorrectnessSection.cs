// Section a, correctness: every GPU kernel on the device under test against the CPU device's path for the same
// op, on the same random inputs (values on an integer grid, DeviceFill.HostGrid; the seed is printed). The check
// table (Cases) is the one place to extend: a new kernel is one entry naming the op, its shape, its tolerance and
// a function that runs it on a given device.
//
// Comparison, per element, with c the CPU value and d the device value:
//   pass  ⇔  |d - c| ≤ abs + rel · |c| for every element (and NaN exactly where the CPU has NaN)
//   max abs error = max |d - c|;  max rel error = max |d - c| / |c| over elements with |c| ≥ abs / rel
// Tolerances are float32 rounding with different summation orders and approximate exp (ex2.approx on PTX), with
// a margin; a wrong index or a missed element shows up as errors of the size of the values themselves.

using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.GpuCheck;

/// <summary>A per-element tolerance: |device - cpu| ≤ Abs + Rel · |cpu|.</summary>
/// <param name="Abs">The absolute part.</param>
/// <param name="Rel">The part relative to the CPU value.</param>
internal sealed record Tolerance(double Abs, double Rel)
{
    /// <inheritdoc />
    public override string ToString() => Abs == 0 && Rel == 0 ? "exact" : $"{Abs:G2} + {Rel:G2}·|cpu|";
}

/// <summary>The outputs of one check on the CPU and on the device under test, flattened.</summary>
internal readonly record struct Outputs(float[] Cpu, float[] Device);

/// <summary>One entry of the correctness table.</summary>
/// <param name="Name">The kernel and variant.</param>
/// <param name="Shape">The shapes involved, for the report.</param>
/// <param name="Tolerance">The per-element tolerance.</param>
/// <param name="Run">Runs the op on both devices from the same random inputs.</param>
internal sealed record CorrectnessCase(
    string Name,
    string Shape,
    Tolerance Tolerance,
    Func<CheckContext, Random, Outputs> Run);

/// <summary>The correctness section: the check table and its comparison.</summary>
internal static class CorrectnessSection
{
    /// <summary>The result of a check that ran and matched.</summary>
    public const string Pass = "PASS";

    /// <summary>The result of a check that ran and did not match, or threw.</summary>
    public const string Fail = "FAIL";

    /// <summary>The section's columns.</summary>
    public static readonly Column[] Columns =
    [
        new("check", "check"),
        new("shape", "shape"),
        new("max_abs_error", "max abs error", "0.00E+00"),
        new("max_rel_error", "max rel error", "0.00E+00"),
        new("tolerance", "tolerance"),
        new("result", "result"),
        new("note", "note"),
    ];

    /// <summary>Runs every check and reports one row each; returns the number of failures.</summary>
    public static int Run(CheckContext context)
    {
        Report.Table table = context.Report.Section(
            "correctness",
            $"Correctness: {context.Device.Name} against cpu (seed {context.Seed})",
            Columns);
        int failures = 0;
        foreach (CorrectnessCase check in Cases(context.Size))
        {
            // A separate stream of random values per entry, so that entries can be added without changing others;
            // derived from the name with a fixed hash (string.GetHashCode differs per process), so a seed replays.
            context.Log.WriteLine($"kiln-gpucheck: correctness: {check.Name} {check.Shape}");
            Random random = new(StableSeed(context.Seed, check.Name));
            try
            {
                Outputs outputs = check.Run(context, random);
                Comparison result = Compare(outputs, check.Tolerance);
                failures += result.Pass ? 0 : 1;
                table.Add(check.Name, check.Shape, result.MaxAbs, result.MaxRel, check.Tolerance.ToString(),
                    result.Pass ? Pass : Fail, result.Note);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                failures++;
                table.Add(check.Name, check.Shape, double.NaN, double.NaN, check.Tolerance.ToString(), Fail,
                    $"{e.GetType().Name}: {OneLine(e.Message)}");
            }
        }

        return failures;
    }

    /// <summary>The check table for <paramref name="size"/>.</summary>
    public static IReadOnlyList<CorrectnessCase> Cases(CheckSize size)
    {
        (int t, int d) = size.Ops;
        (int softmaxRows, int softmaxLength) = size.SoftmaxRows;
        (int ropeTokens, int ropeHeads, int headDim, int ropeStart) = size.Rope;
        List<CorrectnessCase> cases =
        [
            new("Add", $"[{t}, {d}] + [{t}, {d}]", new(1e-7, 1e-6), (c, r) =>
            {
                float[] a = DeviceFill.HostGrid(r, t * d, 4f);
                float[] b = DeviceFill.HostGrid(r, t * d, 4f);
                return OnBoth(c, (device, s) => Op3(s, device, a, [t, d], b, [t, d], [t, d], Ops.Add));
            }),
            new("Add (broadcast)", $"[{t}, {d}] + [{d}]", new(1e-7, 1e-6), (c, r) =>
            {
                float[] a = DeviceFill.HostGrid(r, t * d, 4f);
                float[] b = DeviceFill.HostGrid(r, d, 4f);
                return OnBoth(c, (device, s) => Op3(s, device, a, [t, d], b, [d], [t, d], Ops.Add));
            }),
            new("Scale", $"[{t}, {d}]", new(1e-7, 1e-6), (c, r) =>
            {
                float[] x = DeviceFill.HostGrid(r, t * d, 4f);
                return OnBoth(c, (device, s) =>
                {
                    Tensor output = s.Add(Tensor.Empty([t, d], DType.Float32, device));
                    Ops.Scale(s.Add(Tensor.FromArray(x, [t, d], device)), 0.125f, output);
                    return output;
                });
            }),
            new("SiluMul", $"[{t}, {d}]", new(1e-6, 1e-5), (c, r) =>
            {
                float[] gate = DeviceFill.HostGrid(r, t * d, 12f);
                float[] up = DeviceFill.HostGrid(r, t * d, 4f);
                return OnBoth(c, (device, s) => Op3(s, device, gate, [t, d], up, [t, d], [t, d], Ops.SiluMul));
            }),
            new("RmsNorm", $"[{t}, {d}], weight [{d}]", new(1e-6, 1e-5), (c, r) =>
            {
                float[] x = DeviceFill.HostGrid(r, t * d, 3f);
                float[] weight = DeviceFill.HostGrid(r, d, 0.5f, 1f);
                return OnBoth(c, (device, s) =>
                {
                    Tensor output = s.Add(Tensor.Empty([t, d], DType.Float32, device));
                    Ops.RmsNorm(s.Add(Tensor.FromArray(x, [t, d], device)), s.Add(Tensor.FromArray(weight, [d], device)),
                        1e-5f, output);
                    return output;
                });
            }),
            new("Softmax", $"[{softmaxRows}, {softmaxLength}], logits up to ±40", new(1e-9, 2e-5), (c, r) =>
            {
                // Wide logits: the max must be subtracted before exp.
                float[] x = DeviceFill.HostGrid(r, softmaxRows * softmaxLength, 40f);
                return OnBoth(c, (device, s) =>
                {
                    Tensor output = s.Add(Tensor.Empty([softmaxRows, softmaxLength], DType.Float32, device));
                    Ops.Softmax(s.Add(Tensor.FromArray(x, [softmaxRows, softmaxLength], device)), output);
                    return output;
                });
            }),
            RopeCase(ropeTokens, ropeHeads, headDim, ropeStart, RopeLayout.Adjacent),
            RopeCase(ropeTokens, ropeHeads, headDim, ropeStart, RopeLayout.HalfSplit),
        ];

        // The matrix product: M = 1 (matrix-vector kernel), small and large M (tiled kernel), every weight dtype,
        // with the identity epilogue and with the generated ResidualAdd epilogue fused.
        (int n, int k, int[] rows) = size.MatMul;
        foreach (int m in rows)
        {
            foreach (DType dtype in (DType[])[DType.Float32, DType.Float16, DType.BFloat16])
            {
                cases.Add(MatMulCase(m, n, k, dtype, residual: false));
                cases.Add(MatMulCase(m, n, k, dtype, residual: true));
            }
        }

        // Attention over the KV cache (prefill and one decode step, grouped-query), through the public API.
        cases.Add(AttentionCase("Attention prefill (GQA)", size, decode: false));
        cases.Add(AttentionCase("Attention decode (GQA)", size, decode: true));

        // DeepSeek sparse attention: the indexer's key append and scores, top-k, sparse attention (prefill, decode).
        cases.AddRange(DsaCases(size));

        // The embedding lookup (a row gather, widening 16-bit tables) and the device-side sampling of the next token.
        int vocab = size.Model.VocabSize;
        foreach (DType dtype in (DType[])[DType.Float32, DType.Float16, DType.BFloat16])
        {
            cases.Add(new($"Embedding lookup {dtype.Name()}", $"[{t}] ids from [{vocab}, {d}]", new(0, 0), (c, r) =>
            {
                float[] table = DeviceFill.HostGrid(r, vocab * d, 1f);
                int[] ids = new int[t];
                for (int i = 0; i < ids.Length; i++)
                {
                    ids[i] = r.Next(vocab);
                }

                ids[^1] = vocab - 1;
                return OnBoth(c, (device, s) =>
                {
                    Tensor output = s.Add(Tensor.Empty([t, d], DType.Float32, device));
                    Embedding.Lookup(s.Add(DeviceFill.ToTensor(table, [vocab, d], dtype, device)),
                        s.Add(Tensor.FromArray(ids, [t], device)), output);
                    return output;
                });
            }));
        }

        cases.Add(new("ArgMax (device sampling)", $"[{softmaxLength}] × {softmaxRows} rows", new(0, 0), (c, r) =>
        {
            float[] logits = DeviceFill.HostGrid(r, softmaxRows * softmaxLength, 20f);
            return OnBoth(c, (device, s) => Draws(s, device, logits, softmaxRows, softmaxLength, static (row, id, _) =>
                DeviceSampling.ArgMax(row, id)));
        }));
        cases.Add(new("Softmax sampling T=0.8 (device)", $"[{softmaxLength}] × {softmaxRows} rows × 4 draws", new(0, 0), (c, r) =>
        {
            // Several uniforms per row; a draw falls on another id only if it lands within float32 rounding of a
            // boundary of the cumulative distribution.
            float[] logits = DeviceFill.HostGrid(r, softmaxRows * softmaxLength, 4f);
            return OnBoth(c, (device, s) => Draws(s, device, logits, softmaxRows, softmaxLength, static (row, id, draw) =>
                DeviceSampling.Sample(row, 0.8f, (0.13 + (0.23 * draw)) % 1.0, id)));
        }));
        return cases;
    }

    /// <summary>The comparison of one check's outputs.</summary>
    internal readonly record struct Comparison(double MaxAbs, double MaxRel, bool Pass, string Note);

    /// <summary>Compares the device's outputs with the CPU's under <paramref name="tolerance"/>.</summary>
    internal static Comparison Compare(Outputs outputs, Tolerance tolerance)
    {
        if (outputs.Cpu.Length != outputs.Device.Length)
        {
            return new(double.NaN, double.NaN, false, $"cpu gave {outputs.Cpu.Length} values, the device {outputs.Device.Length}");
        }

        double maxAbs = 0, maxRel = 0;
        double floor = tolerance.Rel > 0 ? tolerance.Abs / tolerance.Rel : double.PositiveInfinity;
        int worst = -1;
        double worstExcess = 0;
        for (int i = 0; i < outputs.Cpu.Length; i++)
        {
            double c = outputs.Cpu[i], d = outputs.Device[i];

            // NaN must match NaN; anything else non-finite must match exactly.
            if (double.IsNaN(c) || double.IsNaN(d) || double.IsInfinity(c) || double.IsInfinity(d))
            {
                if (!c.Equals(d))
                {
                    return new(double.PositiveInfinity, double.PositiveInfinity, false, $"element {i}: cpu {c:G9}, device {d:G9}");
                }

                continue;
            }

            double error = Math.Abs(d - c);
            maxAbs = Math.Max(maxAbs, error);
            if (Math.Abs(c) >= floor)
            {
                maxRel = Math.Max(maxRel, error / Math.Abs(c));
            }

            // The element furthest beyond its allowance.
            double excess = error / (tolerance.Abs + (tolerance.Rel * Math.Abs(c)));
            if (excess > worstExcess)
            {
                worstExcess = excess;
                worst = i;
            }
        }

        bool pass = worstExcess <= 1;
        string note = pass || worst < 0 ? "" : $"element {worst}: cpu {outputs.Cpu[worst]:G9}, device {outputs.Device[worst]:G9}";
        return new(maxAbs, maxRel, pass, note);
    }

    private static CorrectnessCase RopeCase(int tokens, int heads, int headDim, int start, RopeLayout layout) =>
        new($"Rope ({(layout == RopeLayout.Adjacent ? "adjacent" : "half-split")})",
            $"[{tokens}, {heads}, {headDim}] at positions {start}..{start + tokens - 1}", new(1e-6, 1e-5), (c, r) =>
            {
                float[] x = DeviceFill.HostGrid(r, tokens * heads * headDim, 4f);
                return OnBoth(c, (device, s) =>
                {
                    (Tensor cos, Tensor sin) = Ops.RopeTables(start + tokens, headDim, 10000f, device);
                    s.Add(cos);
                    s.Add(sin);
                    Tensor output = s.Add(Tensor.Empty([tokens, heads, headDim], DType.Float32, device));
                    Ops.Rope(s.Add(Tensor.FromArray(x, [tokens, heads, headDim], device)), cos, sin, start, layout, output);
                    return output;
                });
            });

    private static CorrectnessCase MatMulCase(int m, int n, int k, DType dtype, bool residual)
    {
        // float32 sums of K products of values ≤ 1 in two different orders: the error grows like K · 2^-24.
        Tolerance tolerance = new(1e-5 + (2e-7 * k), 1e-5);
        string kernel = m == 1 ? "matrix-vector" : "tiled";
        string name = $"MatMul {dtype.Name()} M={m} ({kernel}){(residual ? " + ResidualAdd" : "")}";
        string shape = $"[{m}, {k}] · [{n}, {k}]ᵀ";
        return new(name, shape, tolerance, (c, r) =>
        {
            float[] a = DeviceFill.HostGrid(r, m * k, 1f);
            float[] w = DeviceFill.HostGrid(r, n * k, 1f);
            float[] add = DeviceFill.HostGrid(r, m * n, 2f);
            return OnBoth(c, (device, s) =>
            {
                Tensor aTensor = s.Add(Tensor.FromArray(a, [m, k], device));
                Tensor wTensor = s.Add(DeviceFill.ToTensor(w, [n, k], dtype, device));
                Tensor output = s.Add(Tensor.Empty([m, n], DType.Float32, device));
                if (residual)
                {
                    Ops.ResidualAdd(aTensor, wTensor, s.Add(Tensor.FromArray(add, [m, n], device)), output);
                }
                else
                {
                    MatMul.Compute(aTensor, wTensor, output);
                }

                return output;
            });
        });
    }

    private static CorrectnessCase AttentionCase(string name, CheckSize size, bool decode)
    {
        // Grouped-query: H query heads share Hkv key/value heads; the cache holds S positions.
        LlamaShape shape = new(size.Model.Heads, size.Model.KvHeads, size.Model.HeadDim);
        int prefix = decode ? size.ModelTokens.Prompt : 0;
        int tokens = decode ? 1 : size.ModelTokens.Prompt;
        int capacity = prefix + tokens + 3;
        int kvWidth = shape.KvHeads * shape.HeadDim;
        string text = $"q [{tokens}, {shape.Heads}, {shape.HeadDim}], cache [{shape.KvHeads}, {shape.HeadDim}, {capacity}], "
            + $"start {prefix}";
        return new(name, text, new(1e-6, 1e-5), (c, r) =>
        {
            float[] keys = DeviceFill.HostGrid(r, (prefix + tokens) * kvWidth, 1f);
            float[] values = DeviceFill.HostGrid(r, (prefix + tokens) * kvWidth, 1f);
            float[] q = DeviceFill.HostGrid(r, tokens * shape.Heads * shape.HeadDim, 1f);
            return OnBoth(c, (device, s) =>
            {
                Tensor keyCache = s.Add(Tensor.Empty([shape.KvHeads, shape.HeadDim, capacity], DType.Float32, device));
                Tensor valueCache = s.Add(Tensor.Empty([shape.KvHeads, shape.HeadDim, capacity], DType.Float32, device));
                Tensor k = s.Add(Tensor.FromArray(keys, [prefix + tokens, kvWidth], device));
                Tensor v = s.Add(Tensor.FromArray(values, [prefix + tokens, kvWidth], device));

                // Fill the cache up to the first query token, then append the query tokens' keys and attend.
                if (prefix > 0)
                {
                    Attention.Append(k.Slice(0, prefix), v.Slice(0, prefix), keyCache, valueCache, 0);
                }

                Attention.Append(k.Slice(prefix, tokens), v.Slice(prefix, tokens), keyCache, valueCache, prefix);
                Tensor output = s.Add(Tensor.Empty([tokens, shape.Heads, shape.HeadDim], DType.Float32, device));
                Attention.Compute(s.Add(Tensor.FromArray(q, [tokens, shape.Heads, shape.HeadDim], device)), keyCache,
                    valueCache, prefix, output);
                return output;
            });
        });
    }

    /// <summary>
    /// The DSA kernels through their public entry points: LightningIndexer.AppendKeys (LayerNorm, half-split RoPE,
    /// transposed write) and Scores over a cache of S = prefix + T positions, TopK.Select on rows full of ties with
    /// NaN and ±0 (exact), and SparseAttention.Compute with a selection [T, K] from the host (prefill, decode).
    /// </summary>
    private static IEnumerable<CorrectnessCase> DsaCases(CheckSize size)
    {
        (int t, int hi, int di, int rope, int prefix, int k) = size.Dsa;
        int length = prefix + t;
        yield return new("DSA indexer key append (LayerNorm + RoPE)", $"keys [{t}, {di}] at {prefix}, rope {rope}, cache [{di}, {length}]",
            new(1e-5, 1e-5), (c, r) =>
            {
                float[] keys = DeviceFill.HostGrid(r, t * di, 3f);
                float[] weight = DeviceFill.HostGrid(r, di, 0.5f, 1f);
                float[] bias = DeviceFill.HostGrid(r, di, 0.5f);
                return OnBoth(c, (device, s) =>
                {
                    (Tensor cos, Tensor sin) = Ops.RopeTables(length, rope, 10000f, device);
                    Tensor cache = s.Add(Tensor.Empty([di, length], DType.Float32, device));
                    LightningIndexer.AppendKeys(s.Add(Tensor.FromArray(keys, [t, di], device)), s.Add(Tensor.FromArray(weight, [di], device)),
                        s.Add(Tensor.FromArray(bias, [di], device)), 1e-6f, s.Add(cos), s.Add(sin), rope, RopeLayout.HalfSplit, cache, prefix);
                    return cache;
                });
            });
        yield return new("DSA indexer scores", $"q [{t}, {hi}, {di}] against keys [{di}, {length}] at {prefix}",
            new(2e-7 * hi * di, 2e-5), (c, r) =>
            {
                float[] q = DeviceFill.HostGrid(r, t * hi * di, 1f);
                float[] w = DeviceFill.HostGrid(r, t * hi, 1f);
                float[] keys = DeviceFill.HostGrid(r, di * length, 1f);
                return OnBoth(c, (device, s) =>
                {
                    Tensor scores = s.Add(Tensor.Empty([t, length], DType.Float32, device));
                    LightningIndexer.Scores(s.Add(Tensor.FromArray(q, [t, hi, di], device)), s.Add(Tensor.FromArray(w, [t, hi], device)),
                        s.Add(Tensor.FromArray(keys, [di, length], device)), prefix, scores);
                    return scores;
                });
            });
        yield return new("DSA top-k (ties, NaN, ±0)", $"scores [{t}, {length}] at {prefix}, K {k}", new(0, 0), (c, r) =>
        {
            // Few levels, so that many scores tie across the K-th place; some NaN and signed zeros.
            float[] scores = new float[t * length];
            for (int i = 0; i < scores.Length; i++)
            {
                int pick = r.Next(20);
                scores[i] = pick == 0 ? float.NaN : pick == 1 ? -0f : r.Next(-3, 4) / 2f;
            }

            return OnBoth(c, (device, s) =>
            {
                Tensor indices = s.Add(Tensor.Empty([t, k], DType.Int32, device));
                TopK.Select(s.Add(Tensor.FromArray(scores, [t, length], device)), prefix, k, indices);
                return s.Add(Tensor.FromArray(Array.ConvertAll(indices.ToInt32Array(), static i => (float)i), [t, k], device));
            });
        });
        yield return SparseCase(size, decode: false);
        yield return SparseCase(size, decode: true);
    }

    private static CorrectnessCase SparseCase(CheckSize size, bool decode)
    {
        (int dsaTokens, _, _, _, int prefix, int k) = size.Dsa;
        int h = size.Model.Heads, hkv = size.Model.KvHeads, dh = size.Model.HeadDim;
        int t = decode ? 1 : dsaTokens;
        int start = decode ? prefix + dsaTokens - 1 : prefix;
        int capacity = start + t;
        string name = decode ? "DSA sparse attention decode" : "DSA sparse attention prefill";
        return new(name, $"q [{t}, {h}, {dh}], cache [{capacity}, {hkv}, {dh}] at {start}, K {k}", new(1e-6, 1e-5), (c, r) =>
        {
            float[] keys = DeviceFill.HostGrid(r, capacity * hkv * dh, 1f);
            float[] values = DeviceFill.HostGrid(r, capacity * hkv * dh, 1f);
            float[] q = DeviceFill.HostGrid(r, t * h * dh, 1f);
            float[] scores = DeviceFill.HostGrid(r, t * capacity, 1f);
            int[] selection = TopK.Reference(scores, t, capacity, start, k);
            return OnBoth(c, (device, s) =>
            {
                Tensor output = s.Add(Tensor.Empty([t, h, dh], DType.Float32, device));
                SparseAttention.Compute(s.Add(Tensor.FromArray(q, [t, h, dh], device)), s.Add(Tensor.FromArray(keys, [capacity, hkv, dh], device)),
                    s.Add(Tensor.FromArray(values, [capacity, hkv, dh], device)), s.Add(Tensor.FromArray(selection, [t, k], device)), k, start, output);
                return output;
            });
        });
    }

    private readonly record struct LlamaShape(int Heads, int KvHeads, int HeadDim);


    /// <summary>
    /// Four draws per logit row, each writing one int32 id; the ids come back as floats for the comparison.
    /// </summary>
    private static Tensor Draws(
        TensorScope scope,
        Device device,
        float[] logits,
        int rows,
        int length,
        Action<Tensor, Tensor, int> draw)
    {
        Tensor all = scope.Add(Tensor.FromArray(logits, [rows, length], device));
        Tensor ids = scope.Add(Tensor.Empty([rows * 4], DType.Int32, device));
        for (int row = 0; row < rows; row++)
        {
            for (int i = 0; i < 4; i++)
            {
                draw(all.Slice(row, 1).Reshape(length), ids.Slice((row * 4) + i, 1), i);
            }
        }

        float[] values = Array.ConvertAll(ids.ToInt32Array(), static id => (float)id);
        return scope.Add(Tensor.FromArray(values, [rows * 4], device));
    }

    /// <summary>Runs <paramref name="op"/> on the CPU and on the device under test and reads both outputs back.</summary>
    private static Outputs OnBoth(CheckContext context, Func<Device, TensorScope, Tensor> op)
    {
        float[] cpu;
        using (TensorScope scope = new())
        {
            cpu = op(context.Cpu, scope).ToArray();
        }

        float[] device;
        using (TensorScope scope = new())
        {
            Tensor output = op(context.Device, scope);
            context.Device.Synchronize();
            device = output.ToArray();
        }

        return new(cpu, device);
    }

    /// <summary>A binary op out = f(a, b) over new tensors on <paramref name="device"/>.</summary>
    private static Tensor Op3(
        TensorScope scope,
        Device device,
        float[] a,
        int[] aShape,
        float[] b,
        int[] bShape,
        int[] outputShape,
        Action<Tensor, Tensor, Tensor> op)
    {
        Tensor output = scope.Add(Tensor.Empty(outputShape, DType.Float32, device));
        op(scope.Add(Tensor.FromArray(a, aShape, device)), scope.Add(Tensor.FromArray(b, bShape, device)), output);
        return output;
    }

    /// <summary>The seed of one entry's inputs: FNV-1a over the run's seed and the entry's name, the same in every process.</summary>
    internal static int StableSeed(int seed, string name)
    {
        uint hash = 2166136261u ^ (uint)seed;
        foreach (char c in name)
        {
            hash = (hash ^ c) * 16777619u;
        }

        return (int)hash;
    }

    private static string OneLine(string text) => text.ReplaceLineEndings(" ");
}

/// <summary>Tensors made for one run of a check, disposed together.</summary>
internal sealed class TensorScope : IDisposable
{
    private readonly List<Tensor> _tensors = new();

    /// <summary>Keeps <paramref name="tensor"/> until the scope ends, and returns it.</summary>
    public Tensor Add(Tensor tensor)
    {
        _tensors.Add(tensor);
        return tensor;
    }

    /// <summary>Disposes every tensor added, last first.</summary>
    public void Dispose()
    {
        for (int i = _tensors.Count - 1; i >= 0; i--)
        {
            _tensors[i].Dispose();
        }

        _tensors.Clear();
    }
}
