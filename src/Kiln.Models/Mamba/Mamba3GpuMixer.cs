// The ILGPU path of Mamba3Mixer (cuda, ilgpu-cpu): the two projections through MatMul on the device, everything
// between them through the kernels of Mamba3Kernels.cs, on the scratch this class allocates once. The cache's four
// states live on the device and the kernels update them in place; a call queues its launches in stream order and
// returns without waiting (reading a result back, e.g. Tensor.CopyTo, waits for them).
//
// Per piece of T tokens (at most MaxTokens): in_proj product, Prepare, Angles, Rows, then either the one-token Step
// (T = 1) or the chunked form (Coefficients, Scores, ChunkStates, StatePass, Outputs), then Gate, CacheTail and the
// out_proj product. Input and output may be the same tensor: the input of a piece is read by its first product,
// before its last product writes the output rows.
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;
using Kiln.Kernels;
using Dims = Kiln.Models.Mamba.Mamba3KernelDims;
using V = ILGPU.ArrayView<float>;

namespace Kiln.Models.Mamba;

/// <summary>The device scratch and launches of one <see cref="Mamba3Mixer"/> on an ILGPU device.</summary>
internal sealed class Mamba3GpuMixer : IDisposable
{
    /// <summary>The most floats the in-chunk scores scratch may take (256 MiB); longer pieces are cut to fit.</summary>
    public const long MaxScoreFloats = 1L << 26;

    private static readonly object s_prepareKey = new();
    private static readonly object s_anglesKey = new();
    private static readonly object s_rowsKey = new();
    private static readonly object s_coefficientsKey = new();
    private static readonly object s_scoresKey = new();
    private static readonly object s_chunkStatesKey = new();
    private static readonly object s_statePassKey = new();
    private static readonly object s_outputsKey = new();
    private static readonly object s_gateKey = new();
    private static readonly object s_cacheTailKey = new();
    private static readonly object s_stepKey = new();

    private readonly IlgpuDevice _device;
    private readonly Mamba3Weights _weights;
    private readonly Tensor _proj;      // [MaxTokens, in_proj rows]
    private readonly Tensor _gated;     // [MaxTokens, d_inner]
    private readonly Tensor _cos;       // [MaxTokens, H, K]
    private readonly Tensor _sin;       // [MaxTokens, H, K]
    private readonly Tensor _keys;      // [MaxTokens, H, R, N]
    private readonly Tensor _queries;   // [MaxTokens, H, R, N]
    private readonly Tensor _coef;      // [3, H, MaxTokens]
    private readonly Tensor _scores;    // [H, MaxTokens, R, C·R]
    private readonly Tensor _states;    // [chunks, H, P, N]
    private readonly Tensor _ys;        // [MaxTokens, H, R, P]
    private readonly Tensor _unused;    // [1] bound where a SISO mixer has no mimo or norm weights
    private readonly Dictionary<int, (Tensor Proj, Tensor Gated)> _rows = new();

    /// <summary>Allocates the scratch for pieces of up to <paramref name="maxTokens"/> tokens on the weights' device.</summary>
    public Mamba3GpuMixer(Mamba3Weights weights, IlgpuDevice device, int maxTokens)
    {
        Mamba3Config c = weights.Config;
        _device = device;
        _weights = weights;
        int h = c.Heads, chunks = (maxTokens + c.ChunkSize - 1) / c.ChunkSize;
        List<Tensor> made = [];
        Tensor Make(params int[] shape)
        {
            Tensor tensor = Tensor.Empty(shape, device: device);
            made.Add(tensor);
            return tensor;
        }

        try
        {
            _proj = Make(maxTokens, c.InProjDim);
            _gated = Make(maxTokens, c.DInner);
            _cos = Make(maxTokens, h, c.AngleCount);
            _sin = Make(maxTokens, h, c.AngleCount);
            _keys = Make(maxTokens, h, c.Rank, c.DState);
            _queries = Make(maxTokens, h, c.Rank, c.DState);
            _coef = Make(3, h, maxTokens);
            _scores = Make(h, maxTokens, c.Rank, c.ChunkSize * c.Rank);
            _states = Make(chunks, h, c.HeadDim, c.DState);
            _ys = Make(maxTokens, h, c.Rank, c.HeadDim);
            _unused = Make(1);
        }
        catch
        {
            made.ForEach(static t => t.Dispose());
            throw;
        }
    }

    /// <summary>
    /// The longest piece the device path runs at once for <paramref name="requested"/> (already whole chunks when at
    /// least one chunk): cut to whole chunks so that the scores scratch H·T·R·C·R stays within
    /// <see cref="MaxScoreFloats"/>.
    /// </summary>
    public static int PieceLimit(Mamba3Config c, int requested)
    {
        long perToken = (long)c.Heads * c.Rank * c.ChunkSize * c.Rank;
        long fit = MaxScoreFloats / perToken;
        if (requested <= fit)
        {
            return requested;
        }

        return (int)Math.Max(1, fit >= c.ChunkSize ? fit / c.ChunkSize * c.ChunkSize : fit);
    }

    /// <summary>The device bytes of the scratch for pieces of up to <paramref name="maxTokens"/> tokens (at most).</summary>
    public static long ScratchBytes(Mamba3Config c, int maxTokens)
    {
        long t = maxTokens, h = c.Heads, chunks = (maxTokens + c.ChunkSize - 1) / c.ChunkSize;
        long perToken = c.InProjDim + c.DInner + (2L * h * c.AngleCount) + (2L * h * c.Rank * c.DState) + (3L * h) + (h * c.Rank * c.HeadDim)
            + (h * c.Rank * c.ChunkSize * c.Rank);
        return ((t * perToken) + (chunks * h * c.HeadDim * c.DState) + 1) * sizeof(float);
    }

    /// <summary>Queues the mixer over the T tokens of <paramref name="input"/> (checked by the caller) from <paramref name="cache"/>.</summary>
    public void Forward(Tensor input, Tensor output, Mamba3Cache cache, int tokens, int maxTokens)
    {
        int d = _weights.Config.DModel;
        if (tokens <= maxTokens)
        {
            RunPiece(input, output, tokens, cache);
            return;
        }

        // Longer calls: views of whole rows, one piece at a time.
        using Tensor inputRows = input.Reshape(tokens, d);
        using Tensor outputRows = output.Reshape(tokens, d);
        for (int done = 0; done < tokens; done += maxTokens)
        {
            int count = Math.Min(maxTokens, tokens - done);
            using Tensor a = inputRows.Slice(done, count);
            using Tensor o = outputRows.Slice(done, count);
            RunPiece(a, o, count, cache);
        }
    }

    /// <summary>Frees the scratch.</summary>
    public void Dispose()
    {
        foreach ((Tensor proj, Tensor gated) in _rows.Values)
        {
            proj.Dispose();
            gated.Dispose();
        }

        foreach (Tensor tensor in new[] { _proj, _gated, _cos, _sin, _keys, _queries, _coef, _scores, _states, _ys, _unused })
        {
            tensor.Dispose();
        }
    }

    private void RunPiece(Tensor input, Tensor output, int tokens, Mamba3Cache cache)
    {
        Mamba3Config c = _weights.Config;
        Mamba3KernelDims d = Mamba3KernelDims.For(c, tokens);
        (Tensor proj, Tensor gated) = Rows(tokens);
        Mamba3Weights w = _weights;
        V projView = _proj.View<float>(), unused = _unused.View<float>();
        V keys = _keys.View<float>(), queries = _queries.View<float>(), coef = _coef.View<float>(), ys = _ys.View<float>();
        V cos = _cos.View<float>(), sin = _sin.View<float>(), skip = w.D.View<float>();
        V mimoX = w.MimoX?.View<float>() ?? unused, mimoZ = w.MimoZ?.View<float>() ?? unused;
        V mimoO = w.MimoO?.View<float>() ?? unused, norm = w.Norm?.View<float>() ?? unused;
        V state = cache.State.View<float>(), prevKey = cache.PrevKey.View<float>(), prevX = cache.PrevX.View<float>();
        int h = c.Heads, p = c.HeadDim, n = c.DState, r = c.Rank;

        // The input projection, then the per-token scalars and the B/C norms, the angles, keys and queries.
        MatMul.Compute(input, w.InProj, proj);
        Kernel(s_prepareKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, Dims>)Mamba3Kernels.PrepareKernel))(
            tokens * (h + c.AngleCount + (2 * r * c.Groups)), projView, w.DtBias.View<float>(), w.BNorm.View<float>(), w.CNorm.View<float>(), d);
        Kernel(s_anglesKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, Dims>)Mamba3Kernels.AnglesKernel))(
            h * c.AngleCount, projView, cache.Angles.View<float>(), cos, sin, d);
        Kernel(s_rowsKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, V, V, V, Dims>)Mamba3Kernels.RowsKernel))(
            tokens * h * r * n, projView, w.BBias.View<float>(), w.CBias.View<float>(), cos, sin, keys, queries, d);

        if (tokens == 1)
        {
            // The recurrent step: one thread per state row.
            Kernel(s_stepKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, V, V, V, V, V, Dims>)Mamba3Kernels.StepKernel))(
                h * p, projView, keys, queries, skip, mimoX, prevKey, prevX, state, ys, d);
        }
        else
        {
            // The chunked form: coefficients, in-chunk scores, chunk states, the pass between chunks, the outputs.
            V scores = _scores.View<float>(), states = _states.View<float>();
            Kernel(s_coefficientsKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, Dims>)Mamba3Kernels.CoefficientsKernel))(
                h * d.Chunks, projView, coef, d);
            Kernel(s_scoresKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, Dims>)Mamba3Kernels.ScoresKernel))(
                h * tokens * r * c.ChunkSize * r, keys, queries, coef, scores, d);
            Kernel(s_chunkStatesKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, V, Dims>)Mamba3Kernels.ChunkStatesKernel))(
                d.Chunks * h * p * n, projView, keys, coef, mimoX, states, d);
            Kernel(s_statePassKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, V, V, V, Dims>)Mamba3Kernels.StatePassKernel))(
                h * p * n, projView, coef, mimoX, prevKey, prevX, state, states, d);
            Kernel(s_outputsKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, V, V, V, V, Dims>)Mamba3Kernels.OutputsKernel))(
                tokens * h * r * p, projView, queries, scores, states, coef, skip, mimoX, ys, d);
        }

        // The gate, the cache's previous key and x, then the output projection.
        Kernel(s_gateKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, V, V, Dims>)Mamba3Kernels.GateKernel))(
            tokens * h * p, projView, ys, norm, mimoZ, mimoO, _gated.View<float>(), d);
        Kernel(s_cacheTailKey, static a => a.LoadAutoGroupedStreamKernel((Action<Index1D, V, V, V, V, Dims>)Mamba3Kernels.CacheTailKernel))(
            (r * h * n) + (h * p), projView, keys, prevKey, prevX, d);
        MatMul.Compute(gated, w.OutProj, output);
    }

    // Views of the first `count` rows of the projection buffers, made once per distinct count.
    private (Tensor Proj, Tensor Gated) Rows(int count)
    {
        if (!_rows.TryGetValue(count, out (Tensor Proj, Tensor Gated) views))
        {
            views = (_proj.Slice(0, count), _gated.Slice(0, count));
            _rows[count] = views;
        }

        return views;
    }

    private TDelegate Kernel<TDelegate>(object key, Func<Accelerator, TDelegate> load)
        where TDelegate : Delegate => _device.GetKernel(key, load);
}
