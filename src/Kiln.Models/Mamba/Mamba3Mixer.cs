// One Mamba-3 mixer on the CPU in float32: the layer a session calls with a chunk of T tokens and that layer's
// decode cache. Same math as Mamba3Reference (the float64 sequential recurrence, see its header for the per-token
// formulas); this file computes it in two forms.
//
// 1. Projections and per-token scalars (all T tokens of a call, in pieces of at most MaxTokens rows):
//    proj [T, in_proj rows] = u [T, D] · in_projᵀ (the packed CPU matrix product), then in place, token-parallel:
//    Δ = softplus(a_dt + dt_bias), Δ·A with A = min(-f(a_A), -A_floor) (clamped to <= 0 before any exp),
//    λ = sigmoid(a_λ), φ = π·tanh(a_θ), and the RMSNorm (with its weight) of every B and C vector [R, G, N].
//
// 2a. Chunked prefill (T >= 2), per head (heads split across the worker pool, one thread per head, so results do
//     not depend on the thread count). Chunks of C tokens; rows (i, r) of a chunk are flattened to i·R + r.
//     Shifted gamma ε_i = (1 - λ_{i+1})·Δ_{i+1} (0 for the last token of the call), key scale σ_i = γ_i + ε_i,
//     in-chunk inclusive cumulative decay a_i = Σ_{j <= i} Δ_j·A_j.
//       seed:   S += (1 - λ_0)·Δ_0 · Σ_r v_prev,r ⊗ K_prev,r      (the pending β term of the cached token)
//       output: y_(i,r) = e^{a_i}·S·Q_(i,r) + Σ_{j < i, r'} e^{a_i - a_j}·σ_j·(Q_(i,r)·K_(j,r'))·v_(j,r')
//                          + γ_i·Σ_{r'} (Q_(i,r)·K_(i,r'))·v_(i,r') + D_h·v_(i,r)
//       state:  S ← e^{a_last}·S + Σ_(j,r') e^{a_last - a_j}·σ_j · v_(j,r') ⊗ K_(j,r')
//     After the last chunk S is exactly h_{T-1} (ε of the last token is 0); the cache keeps θ, S, the last token's
//     rotated keys and raw x, and the next call seeds from them. Between chunks S is h plus the next token's β term.
//     Shapes per chunk and head: K, Q [C·R, N], v, y [C·R, P], S [P, N]; about (C·R/2)·(N + P) + 2·N·P
//     multiply-adds per row.
// 2b. Recurrent step (T = 1), per head, one pass over S:
//       S[p] ← α·S[p] + β·Σ_r v_prev,r[p]·K_prev,r + γ·Σ_r v_r[p]·K_r,   y_r[p] = S[p]·Q_r + D_h·v_r[p]
//     with α = e^{Δ·A}, β = (1 - λ)·Δ·α, γ = λ·Δ; one vector loop per row of S does the update and the R readouts.
//     Decode allocates nothing.
//
// 3. Gate and output: o_h = Σ_r n(y_r) ⊙ silu(z_h ⊙ mimo_z[h, r]) ⊙ mimo_o[h, r] (SISO: n(y) ⊙ silu(z_h); n is the
//    grouped RMSNorm when is_outproj_norm), then out [T, D] = o [T, d_inner] · out_projᵀ.
//
// Angles stay in [0, 2π) (wrapped after every token in both forms), so float32 angles keep their precision over
// long sequences. Vector work goes through TensorPrimitives (Vector512/Vector256 inside); rows of N and P are short,
// so the per-call overhead matters: a blocked, register-tiled form of the chunk products is the next step for speed.
// On ILGPU devices (cuda, ilgpu-cpu) the same math runs as the kernels of Mamba3Kernels.cs, launched by
// Mamba3GpuMixer.cs: weights, cache and scratch on the device, the projections through MatMul there.
// Deliberately left out: batches of several sequences (one cache per sequence; call once per sequence).
using System.Numerics;
using System.Numerics.Tensors;
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Kernels.Gemm;
using Kiln.Memory;

namespace Kiln.Models.Mamba;

/// <summary>
/// One Mamba-3 mixer (SISO or MIMO) on the cpu or an ILGPU device (cuda, ilgpu-cpu): <see cref="Forward"/> runs T tokens from a <see cref="Mamba3Cache"/>
/// (chunked prefill for T &gt;= 2, the recurrent step for T = 1) and leaves the cache ready for the next call.
/// </summary>
/// <remarks>
/// The mixer holds packed copies of in_proj and out_proj and scratch for <see cref="MaxTokens"/> rows; the weights
/// must stay alive and unchanged while it is used. One mixer may serve several caches (sequences), one call at a
/// time: it is not thread-safe. Prefill in pieces gives the same result as one call, up to float32 rounding.
/// </remarks>
public sealed unsafe class Mamba3Mixer : IDisposable
{
    private const float TwoPi = 2f * MathF.PI;

    private readonly Mamba3Weights _weights;
    private readonly CpuDevice? _cpu;        // the cpu path's device, packed weights and scratch (null on ILGPU)
    private readonly PackedWeights? _inProj;
    private readonly PackedWeights? _outProj;
    private readonly NativeBuffer? _proj;     // [MaxTokens, in_proj rows]
    private readonly NativeBuffer? _gated;    // [MaxTokens, d_inner]
    private readonly NativeBuffer? _scratch;  // [threads, per-worker scratch]
    private readonly Mamba3GpuMixer? _gpu;   // the ILGPU path (null on cpu)
    private readonly Dims _dims;
    private bool _disposed;

    /// <summary>
    /// Creates the mixer for <paramref name="weights"/> on <paramref name="device"/>, with scratch for calls of up to
    /// <paramref name="maxTokens"/> tokens at a time (longer calls run in pieces of that size). On the cpu the
    /// weights may be on any cpu device (the mixer runs on <paramref name="device"/>'s worker pool); on an ILGPU
    /// device they must be on that device (<see cref="Mamba3Weights.To"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">maxTokens is below 1.</exception>
    /// <exception cref="ArgumentException">The weights are on another device, or the device is not cpu, cuda or ilgpu-cpu.</exception>
    public Mamba3Mixer(Mamba3Weights weights, Device device, int maxTokens = 1024)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(device);
        if (maxTokens < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, "Mamba3Mixer: maxTokens must be at least 1; pass the longest prefill piece to run at once (e.g. 1024).");
        }

        Mamba3Config c = weights.Config;
        bool onDevice = device is CpuDevice ? weights.Device is CpuDevice : ReferenceEquals(weights.Device, device);
        if (device is not (CpuDevice or IlgpuDevice) || !onDevice)
        {
            throw new ArgumentException(
                $"Mamba3Mixer: the weights are on {weights.Device.Name} but the mixer runs on {device.Name}; move them with weights.To(device) (devices: cpu, cuda, ilgpu-cpu).", nameof(weights));
        }

        _weights = weights;
        Device = device;

        // Pieces of whole chunks when a piece holds at least one chunk.
        MaxTokens = maxTokens >= c.ChunkSize ? maxTokens / c.ChunkSize * c.ChunkSize : maxTokens;
        if (device is IlgpuDevice ilgpu)
        {
            MaxTokens = Mamba3GpuMixer.PieceLimit(c, MaxTokens);
            _dims = new Dims(c, 1);
            _gpu = new Mamba3GpuMixer(weights, ilgpu, MaxTokens);
            return;
        }

        _cpu = (CpuDevice)device;
        _dims = new Dims(c, _cpu.Threads);
        _inProj = MatMul.Prepack(weights.InProj);
        _outProj = MatMul.Prepack(weights.OutProj);
        _proj = new NativeBuffer((long)MaxTokens * c.InProjDim * sizeof(float));
        _gated = new NativeBuffer((long)MaxTokens * c.DInner * sizeof(float));
        _scratch = new NativeBuffer((long)_dims.Threads * _dims.PerWorker * sizeof(float));
    }

    /// <summary>The mixer's configuration.</summary>
    public Mamba3Config Config => _weights.Config;

    /// <summary>The device the mixer runs on; its input, output and caches live there.</summary>
    public Device Device { get; }

    /// <summary>
    /// The most tokens one prefill piece holds (a multiple of the chunk size when at least one chunk; on ILGPU
    /// devices also cut so that the in-chunk scores of a piece take at most 256 MiB).
    /// </summary>
    public int MaxTokens { get; }

    /// <summary>A fresh cache for one sequence, on the mixer's device.</summary>
    public Mamba3Cache CreateCache() => new(Config, Device is CpuDevice ? null : Device);

    /// <summary>
    /// Runs the mixer over the T tokens of <paramref name="input"/> [..., T, D] (leading dimensions of size 1, one
    /// sequence) continuing from <paramref name="cache"/>, writes <paramref name="output"/> (the same shape; it may
    /// be <paramref name="input"/> itself) and updates the cache.
    /// </summary>
    /// <exception cref="ArgumentException">A tensor is not a contiguous float32 CPU tensor of the right shape, the
    /// output partly overlaps the input, or the cache belongs to another config.</exception>
    public void Forward(Tensor input, Tensor output, Mamba3Cache cache)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int tokens = Check(input, output, cache);
        if (_gpu is not null)
        {
            _gpu.Forward(input, output, cache, tokens, MaxTokens);
            cache.Tokens += tokens;
            return;
        }

        float* u = (float*)input.DataPointer;
        float* result = (float*)output.DataPointer;
        int d = Config.DModel;
        for (int done = 0; done < tokens; done += MaxTokens)
        {
            int count = Math.Min(MaxTokens, tokens - done);
            RunPiece(u + ((long)done * d), result + ((long)done * d), count, cache);
        }

        cache.Tokens += tokens;
    }

    /// <summary>Frees the packed weights and the scratch (not the weights).</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _inProj?.Dispose();
        _outProj?.Dispose();
        _proj?.Dispose();
        _gated?.Dispose();
        _scratch?.Dispose();
        _gpu?.Dispose();
    }

    // Projects, scans (chunked or one step) and projects back one piece of at most MaxTokens rows.
    private void RunPiece(float* input, float* output, int tokens, Mamba3Cache cache)
    {
        WorkerPool pool = _cpu!.Pool;
        Args args = new()
        {
            Dims = _dims,
            Tokens = tokens,
            Proj = (float*)_proj!.Pointer,
            Gated = (float*)_gated!.Pointer,
            Scratch = (float*)_scratch!.Pointer,
            State = cache.State.FloatPointer,
            Angles = cache.Angles.FloatPointer,
            PrevKey = cache.PrevKey.FloatPointer,
            PrevX = cache.PrevX.FloatPointer,
            DtBias = _weights.DtBias.FloatPointer,
            BBias = _weights.BBias.FloatPointer,
            CBias = _weights.CBias.FloatPointer,
            BNorm = _weights.BNorm.FloatPointer,
            CNorm = _weights.CNorm.FloatPointer,
            Skip = _weights.D.FloatPointer,
            MimoX = _weights.MimoX is null ? null : _weights.MimoX.FloatPointer,
            MimoZ = _weights.MimoZ is null ? null : _weights.MimoZ.FloatPointer,
            MimoO = _weights.MimoO is null ? null : _weights.MimoO.FloatPointer,
            Norm = _weights.Norm is null ? null : _weights.Norm.FloatPointer,
        };

        // The input projection, then the per-token scalars and the B/C norms.
        Project(pool, input, tokens, _inProj!, args.Proj);
        pool.For(tokens, 16, &PrepareTokens, &args);

        // The scan: every head on one thread; workers take heads w, w + threads, ...
        pool.For(_dims.Threads, 1, tokens == 1 ? &StepHeads : &ScanHeads, &args);

        // The output projection.
        Project(pool, args.Gated, tokens, _outProj!, output);
    }

    private static void Project(WorkerPool pool, float* a, int m, PackedWeights w, float* output)
    {
        IdentityEpilogue identity = default;
        if (CpuGemv.Handles(m, w.Source.DType, w.Width) || w.Panels is null)
        {
            MatMul.ComputeCpu(pool, a, w.Source.DataPointer, w.Source.DType, output, m, w.N, w.K, ref identity, w.Width);
        }
        else
        {
            CpuGemm.Run(pool, a, w.Source.DataPointer, w.Source.DType, output, m, w.N, w.K, ref identity, w.Width, w.Panels);
        }
    }

    // Phase 1, rows [start, end): Δ, Δ·A, λ, φ in place, and the B/C RMSNorms.
    private static void PrepareTokens(void* state, int start, int end)
    {
        ref Args a = ref *(Args*)state;
        ref readonly Dims d = ref a.Dims;
        for (int t = start; t < end; t++)
        {
            float* row = a.Proj + ((long)t * d.InProjDim);
            for (int h = 0; h < d.H; h++)
            {
                double dt = Mamba3Reference.Softplus((double)row[d.DtOffset + h] + a.DtBias[h]);
                double decay = Mamba3Reference.Decay(d.Activation, row[d.AOffset + h], d.AFloor);
                row[d.DtOffset + h] = (float)dt;
                row[d.AOffset + h] = MathF.Min((float)(dt * decay), 0f);
                row[d.TrapOffset + h] = 1f / (1f + MathF.Exp(-row[d.TrapOffset + h]));
            }

            for (int k = 0; k < d.K; k++)
            {
                row[d.AngleOffset + k] = MathF.PI * MathF.Tanh(row[d.AngleOffset + k]);
            }

            for (int i = 0; i < d.R * d.G; i++)
            {
                NormalizeInPlace(new Span<float>(row + d.BOffset + (i * d.N), d.N), new ReadOnlySpan<float>(a.BNorm, d.N), d.Eps);
                NormalizeInPlace(new Span<float>(row + d.COffset + (i * d.N), d.N), new ReadOnlySpan<float>(a.CNorm, d.N), d.Eps);
            }
        }
    }

    // Phase 2a: the chunked scan of worker `part`'s heads.
    private static void ScanHeads(void* state, int start, int end)
    {
        ref Args a = ref *(Args*)state;
        for (int part = start; part < end; part++)
        {
            float* scratch = a.Scratch + ((long)part * a.Dims.PerWorker);
            for (int head = part; head < a.Dims.H; head += a.Dims.Threads)
            {
                ScanHead(ref a, head, scratch);
            }
        }
    }

    // Phase 2b: the recurrent step of worker `part`'s heads.
    private static void StepHeads(void* state, int start, int end)
    {
        ref Args a = ref *(Args*)state;
        for (int part = start; part < end; part++)
        {
            float* scratch = a.Scratch + ((long)part * a.Dims.PerWorker);
            for (int head = part; head < a.Dims.H; head += a.Dims.Threads)
            {
                StepHead(ref a, head, scratch);
            }
        }
    }

    private static void ScanHead(ref Args a, int head, float* scratch)
    {
        ref readonly Dims d = ref a.Dims;
        int p = d.P, n = d.N, r = d.R, tokens = a.Tokens, stride = d.InProjDim;
        float* s = a.State + ((long)head * p * n);                      // [P, N]
        float* theta = a.Angles + (head * d.K);                         // [K]
        float* keys = scratch + d.KeysAt, queries = scratch + d.QueriesAt;   // [C·R, N]
        float* values = scratch + d.ValuesAt, outputs = scratch + d.OutputsAt;  // [C·R, P]
        float* cum = scratch + d.CumAt, sigma = scratch + d.SigmaAt, gamma = scratch + d.GammaAt, weight = scratch + d.WeightAt;
        float* cos = scratch + d.CosAt, sin = scratch + d.SinAt;

        // Seed: fold the cached token's pending β term into S.
        Seed(ref a, head, (1f - a.Proj[d.TrapOffset + head]) * a.Proj[d.DtOffset + head], s, scratch + d.PrevValuesAt);

        int last = 0;
        for (int chunk = 0; chunk < tokens; chunk += d.C)
        {
            int count = Math.Min(d.C, tokens - chunk);
            last = count;

            // Per token: cumulative decay, γ, σ, angles, then keys, queries and values of every rank.
            float running = 0;
            for (int i = 0; i < count; i++)
            {
                int t = chunk + i;
                float* row = a.Proj + ((long)t * stride);
                float dt = row[d.DtOffset + head];
                running += row[d.AOffset + head];
                cum[i] = running;
                gamma[i] = row[d.TrapOffset + head] * dt;
                float shifted = 0;
                if (t + 1 < tokens)
                {
                    float* next = row + stride;
                    shifted = (1f - next[d.TrapOffset + head]) * next[d.DtOffset + head];
                }

                sigma[i] = gamma[i] + shifted;
                Advance(theta, row + d.AngleOffset, dt, d.K, cos, sin);
                BuildRows(ref a, head, row, cos, sin, keys + ((long)i * r * n), queries + ((long)i * r * n), values + ((long)i * r * p));
            }

            // Outputs of every row (i, r): the state's contribution, the causal in-chunk sum, the skip.
            for (int i = 0; i < count; i++)
            {
                float stateScale = MathF.Exp(cum[i]);
                for (int j = 0; j < i; j++)
                {
                    weight[j] = MathF.Exp(MathF.Min(cum[i] - cum[j], 0f)) * sigma[j];
                }

                weight[i] = gamma[i];
                for (int rank = 0; rank < r; rank++)
                {
                    int rowIndex = (i * r) + rank;
                    ReadOnlySpan<float> q = new(queries + ((long)rowIndex * n), n);
                    float* y = outputs + ((long)rowIndex * p);
                    for (int e = 0; e < p; e++)
                    {
                        y[e] = stateScale * TensorPrimitives.Dot(new ReadOnlySpan<float>(s + ((long)e * n), n), q);
                    }

                    Span<float> ySpan = new(y, p);
                    for (int j = 0; j <= i; j++)
                    {
                        for (int other = 0; other < r; other++)
                        {
                            int column = (j * r) + other;
                            float score = weight[j] * TensorPrimitives.Dot(q, new ReadOnlySpan<float>(keys + ((long)column * n), n));
                            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(values + ((long)column * p), p), score, ySpan, ySpan);
                        }
                    }

                    TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(values + ((long)rowIndex * p), p), a.Skip[head], ySpan, ySpan);
                }

                float* rowIn = a.Proj + ((long)(chunk + i) * stride);
                Gate(ref a, head, outputs + ((long)i * r * p), rowIn + d.ZOffset + (head * p), a.Gated + ((long)(chunk + i) * d.DInner) + (head * p));
            }

            // State passing: decay S over the chunk, add every row's contribution.
            float end = cum[count - 1];
            for (int j = 0; j < count; j++)
            {
                weight[j] = MathF.Exp(MathF.Min(end - cum[j], 0f)) * sigma[j];
            }

            float chunkDecay = MathF.Exp(end);
            int rows = count * r;
            for (int e = 0; e < p; e++)
            {
                Span<float> sRow = new(s + ((long)e * n), n);
                TensorPrimitives.Multiply(sRow, chunkDecay, sRow);
                for (int column = 0; column < rows; column++)
                {
                    float coefficient = weight[column / r] * values[((long)column * p) + e];
                    TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(keys + ((long)column * n), n), coefficient, sRow, sRow);
                }
            }
        }

        // The cache: the last token's rotated keys and raw x (θ and S are already in place).
        for (int rank = 0; rank < r; rank++)
        {
            new ReadOnlySpan<float>(keys + ((long)(((last - 1) * r) + rank) * n), n).CopyTo(new Span<float>(a.PrevKey + ((long)((rank * d.H) + head) * n), n));
        }

        float* lastRow = a.Proj + ((long)(tokens - 1) * stride);
        new ReadOnlySpan<float>(lastRow + d.XOffset + (head * p), p).CopyTo(new Span<float>(a.PrevX + ((long)head * p), p));
    }

    private static void StepHead(ref Args a, int head, float* scratch)
    {
        ref readonly Dims d = ref a.Dims;
        int p = d.P, n = d.N, r = d.R;
        float* row = a.Proj;
        float* s = a.State + ((long)head * p * n);
        float* keys = scratch + d.KeysAt, queries = scratch + d.QueriesAt;
        float* values = scratch + d.ValuesAt, outputs = scratch + d.OutputsAt, prevValues = scratch + d.PrevValuesAt;
        float* cos = scratch + d.CosAt, sin = scratch + d.SinAt;

        // The scalars, the angles, this token's rows and the previous token's values.
        float dt = row[d.DtOffset + head], lambda = row[d.TrapOffset + head];
        float alpha = MathF.Exp(MathF.Min(row[d.AOffset + head], 0f));
        float beta = (1f - lambda) * dt * alpha, gamma = lambda * dt;
        Advance(a.Angles + (head * d.K), row + d.AngleOffset, dt, d.K, cos, sin);
        BuildRows(ref a, head, row, cos, sin, keys, queries, values);
        PreviousValues(ref a, head, prevValues);

        // One pass over S, row by row: decay, the two trapezoid terms of every rank, then the readouts of every rank
        // from the updated row while it is still in registers (one vector loop per row instead of a library call
        // per term: rows are only N long).
        float skip = a.Skip[head];
        int width = Vector<float>.Count;
        float* prevScale = stackalloc float[r];            // β·v'_r[e]
        float* scale = stackalloc float[r];                // γ·v_r[e]
        float* tails = stackalloc float[r];                // the readouts' scalar tails
        Span<Vector<float>> sums = stackalloc Vector<float>[r];
        for (int e = 0; e < p; e++)
        {
            float* sRow = s + ((long)e * n);
            for (int rank = 0; rank < r; rank++)
            {
                prevScale[rank] = beta * prevValues[(rank * p) + e];
                scale[rank] = gamma * values[(rank * p) + e];
                tails[rank] = 0;
                sums[rank] = Vector<float>.Zero;
            }

            int j = 0;
            for (; j <= n - width; j += width)
            {
                Vector<float> state = Vector.Load(sRow + j) * alpha;
                for (int rank = 0; rank < r; rank++)
                {
                    float* prevKey = a.PrevKey + ((long)((rank * d.H) + head) * n);
                    state = Vector.FusedMultiplyAdd(Vector.Load(prevKey + j), new Vector<float>(prevScale[rank]), state);
                    state = Vector.FusedMultiplyAdd(Vector.Load(keys + ((long)rank * n) + j), new Vector<float>(scale[rank]), state);
                }

                state.Store(sRow + j);
                for (int rank = 0; rank < r; rank++)
                {
                    sums[rank] = Vector.FusedMultiplyAdd(state, Vector.Load(queries + ((long)rank * n) + j), sums[rank]);
                }
            }

            for (; j < n; j++)
            {
                float state = sRow[j] * alpha;
                for (int rank = 0; rank < r; rank++)
                {
                    float* prevKey = a.PrevKey + ((long)((rank * d.H) + head) * n);
                    state += (prevKey[j] * prevScale[rank]) + (keys[((long)rank * n) + j] * scale[rank]);
                }

                sRow[j] = state;
                for (int rank = 0; rank < r; rank++)
                {
                    tails[rank] += state * queries[((long)rank * n) + j];
                }
            }

            for (int rank = 0; rank < r; rank++)
            {
                outputs[(rank * p) + e] = Vector.Sum(sums[rank]) + tails[rank] + (skip * values[(rank * p) + e]);
            }
        }

        Gate(ref a, head, outputs, row + d.ZOffset + (head * p), a.Gated + (head * p));

        // The cache: this token's keys and raw x.
        for (int rank = 0; rank < r; rank++)
        {
            new ReadOnlySpan<float>(keys + ((long)rank * n), n).CopyTo(new Span<float>(a.PrevKey + ((long)((rank * d.H) + head) * n), n));
        }

        new ReadOnlySpan<float>(row + d.XOffset + (head * p), p).CopyTo(new Span<float>(a.PrevX + ((long)head * p), p));
    }

    // S += coefficient · Σ_r v_prev,r ⊗ K_prev,r (nothing when the coefficient is 0).
    private static void Seed(ref Args a, int head, float coefficient, float* s, float* prevValues)
    {
        ref readonly Dims d = ref a.Dims;
        if (coefficient == 0)
        {
            return;
        }

        PreviousValues(ref a, head, prevValues);
        for (int e = 0; e < d.P; e++)
        {
            Span<float> sRow = new(s + ((long)e * d.N), d.N);
            for (int rank = 0; rank < d.R; rank++)
            {
                float* prevKey = a.PrevKey + ((long)((rank * d.H) + head) * d.N);
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(prevKey, d.N), coefficient * prevValues[(rank * d.P) + e], sRow, sRow);
            }
        }
    }

    // v_prev,r = x_prev ⊙ mimo_x[h, r] (SISO: x_prev). [R, P]
    private static void PreviousValues(ref Args a, int head, float* prevValues)
    {
        ref readonly Dims d = ref a.Dims;
        ReadOnlySpan<float> x = new(a.PrevX + ((long)head * d.P), d.P);
        for (int rank = 0; rank < d.R; rank++)
        {
            Span<float> v = new(prevValues + ((long)rank * d.P), d.P);
            if (a.MimoX is null)
            {
                x.CopyTo(v);
            }
            else
            {
                TensorPrimitives.Multiply(x, new ReadOnlySpan<float>(a.MimoX + ((long)((head * d.R) + rank) * d.P), d.P), v);
            }
        }
    }

    // θ ← (θ + Δ·φ) mod 2π, then cos θ and sin θ.
    private static void Advance(float* theta, float* phi, float dt, int count, float* cos, float* sin)
    {
        for (int k = 0; k < count; k++)
        {
            float angle = theta[k] + (dt * phi[k]);
            angle -= TwoPi * MathF.Floor(angle / TwoPi);
            angle = angle >= TwoPi || angle < 0 ? 0 : angle;
            theta[k] = angle;
            (sin[k], cos[k]) = MathF.SinCos(angle);
        }
    }

    // Keys K_r = Rot(B̄_r + B_bias[h, r]), queries likewise from C̄, values v_r = x ⊙ mimo_x[h, r], for r < R.
    private static void BuildRows(ref Args a, int head, float* row, float* cos, float* sin, float* keys, float* queries, float* values)
    {
        ref readonly Dims d = ref a.Dims;
        int n = d.N, p = d.P;
        int group = head / (d.H / d.G);
        ReadOnlySpan<float> x = new(row + d.XOffset + (head * p), p);
        for (int rank = 0; rank < d.R; rank++)
        {
            int source = (rank * d.G) + group;
            long bias = (long)((head * d.R) + rank) * n;
            float* key = keys + ((long)rank * n), query = queries + ((long)rank * n);
            TensorPrimitives.Add(new ReadOnlySpan<float>(row + d.BOffset + (source * n), n), new ReadOnlySpan<float>(a.BBias + bias, n), new Span<float>(key, n));
            TensorPrimitives.Add(new ReadOnlySpan<float>(row + d.COffset + (source * n), n), new ReadOnlySpan<float>(a.CBias + bias, n), new Span<float>(query, n));
            Rotate(key, cos, sin, d.K, n, d.Adjacent);
            Rotate(query, cos, sin, d.K, n, d.Adjacent);
            Span<float> v = new(values + ((long)rank * p), p);
            if (a.MimoX is null)
            {
                x.CopyTo(v);
            }
            else
            {
                TensorPrimitives.Multiply(x, new ReadOnlySpan<float>(a.MimoX + ((long)((head * d.R) + rank) * p), p), v);
            }
        }
    }

    // Turns the K pairs: (2k, 2k+1) when adjacent, (k, k + N/2) when half-split.
    private static void Rotate(float* vector, float* cos, float* sin, int pairs, int n, bool adjacent)
    {
        for (int k = 0; k < pairs; k++)
        {
            int first = adjacent ? 2 * k : k;
            int second = adjacent ? (2 * k) + 1 : k + (n / 2);
            float x0 = vector[first], x1 = vector[second];
            vector[first] = (x0 * cos[k]) - (x1 * sin[k]);
            vector[second] = (x0 * sin[k]) + (x1 * cos[k]);
        }
    }

    // o = Σ_r n(y_r) ⊙ silu(z ⊙ mimo_z[h, r]) ⊙ mimo_o[h, r] (SISO: n(y) ⊙ silu(z)). y [R, P], z and o [P].
    private static void Gate(ref Args a, int head, float* y, float* z, float* o)
    {
        ref readonly Dims d = ref a.Dims;
        int p = d.P;
        for (int e = 0; e < p; e++)
        {
            o[e] = 0;
        }

        for (int rank = 0; rank < d.R; rank++)
        {
            float* yr = y + ((long)rank * p);
            float scale = 1f;
            if (a.Norm is not null)
            {
                float squares = TensorPrimitives.SumOfSquares(new ReadOnlySpan<float>(yr, p));
                scale = 1f / MathF.Sqrt((squares / p) + d.Eps);
            }

            long w = (long)((head * d.R) + rank) * p;
            for (int e = 0; e < p; e++)
            {
                float value = yr[e] * scale * (a.Norm is null ? 1f : a.Norm[(head * p) + e]);
                float gate = z[e] * (a.MimoZ is null ? 1f : a.MimoZ[w + e]);
                o[e] += value * (gate / (1f + MathF.Exp(-gate))) * (a.MimoO is null ? 1f : a.MimoO[w + e]);
            }
        }
    }

    // x ← x / √(mean(x²) + eps) ⊙ weight.
    private static void NormalizeInPlace(Span<float> x, ReadOnlySpan<float> weight, float eps)
    {
        float squares = TensorPrimitives.SumOfSquares(x);
        float scale = 1f / MathF.Sqrt((squares / x.Length) + eps);
        TensorPrimitives.Multiply(x, scale, x);
        TensorPrimitives.Multiply(x, weight, x);
    }

    // Checks the tensors and the cache; returns T.
    private int Check(Tensor input, Tensor output, Mamba3Cache cache)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(cache);
        int d = Config.DModel;
        CheckTensor(input, nameof(input), d, Device);
        CheckTensor(output, nameof(output), d, Device);
        if (!input.Shape.SequenceEqual(output.Shape))
        {
            throw new ArgumentException(
                $"Mamba3Mixer.Forward: output has shape {Tensor.FormatShape(output.Shape)} but input {Tensor.FormatShape(input.Shape)}; allocate the output like the input.", nameof(output));
        }

        // The cpu path writes output rows while it still reads input rows; the device path reads all of a piece's
        // input before it writes any output, so overlap cannot hurt there.
        if (_gpu is null)
        {
            long bytes = input.Length * sizeof(float);
            byte* i0 = (byte*)input.DataPointer, o0 = (byte*)output.DataPointer;
            if (i0 != o0 && i0 < o0 + bytes && o0 < i0 + bytes)
            {
                throw new ArgumentException("Mamba3Mixer.Forward: output partly overlaps input; pass the input itself or a separate tensor.", nameof(output));
            }
        }

        if (!ReferenceEquals(cache.Config, Config) && cache.Config != Config)
        {
            throw new ArgumentException("Mamba3Mixer.Forward: the cache was made for another config; create it with mixer.CreateCache().", nameof(cache));
        }

        if (_gpu is null ? cache.Device is not CpuDevice : !ReferenceEquals(cache.Device, Device))
        {
            throw new ArgumentException($"Mamba3Mixer.Forward: the cache is on {cache.Device.Name} but the mixer runs on {Device.Name}; create it with mixer.CreateCache().", nameof(cache));
        }

        if (input.Length / d > int.MaxValue)
        {
            throw new ArgumentException($"Mamba3Mixer.Forward: {input.Length / d} tokens in one call is too many; pass at most {int.MaxValue}.", nameof(input));
        }

        return (int)(input.Length / d);
    }

    private static void CheckTensor(Tensor tensor, string name, int d, Device device)
    {
        bool onDevice = device is CpuDevice ? tensor.Device is CpuDevice : ReferenceEquals(tensor.Device, device);
        if (!onDevice || tensor.DType != DType.Float32 || !tensor.IsContiguous || tensor.Rank < 1 || tensor.Size(-1) != d || tensor.Length == 0)
        {
            throw new ArgumentException(
                $"Mamba3Mixer.Forward: {name} is {tensor} with shape {Tensor.FormatShape(tensor.Shape)}; pass a contiguous float32 {device.Name} tensor [T, {d}] (d_model {d}, T >= 1).", name);
        }

        for (int i = 0; i < tensor.Rank - 2; i++)
        {
            if (tensor.Size(i) != 1)
            {
                throw new ArgumentException(
                    $"Mamba3Mixer.Forward: {name} has shape {Tensor.FormatShape(tensor.Shape)}; one call runs one sequence, so only [T, D] or [1, T, D] fit (run each sequence with its own cache).", name);
            }
        }
    }

    // The sizes and offsets a kernel needs, copied out of the config once.
    private readonly struct Dims
    {
        public Dims(Mamba3Config c, int threads)
        {
            H = c.Heads;
            P = c.HeadDim;
            N = c.DState;
            R = c.Rank;
            K = c.AngleCount;
            G = c.Groups;
            C = c.ChunkSize;
            DInner = c.DInner;
            InProjDim = c.InProjDim;
            ZOffset = c.ZOffset;
            XOffset = c.XOffset;
            BOffset = c.BOffset;
            COffset = c.COffset;
            DtOffset = c.DtOffset;
            AOffset = c.AOffset;
            TrapOffset = c.TrapOffset;
            AngleOffset = c.AngleOffset;
            Adjacent = c.AngleLayout == RopeLayout.Adjacent;
            Activation = c.AActivation;
            AFloor = c.AFloor;
            Eps = c.NormEps;
            Threads = threads;

            // Per-worker scratch, each piece on its own cache lines.
            int rows = C * R;
            int at = 0;
            KeysAt = Take(ref at, rows * N);
            QueriesAt = Take(ref at, rows * N);
            ValuesAt = Take(ref at, rows * P);
            OutputsAt = Take(ref at, rows * P);
            PrevValuesAt = Take(ref at, R * P);
            CumAt = Take(ref at, C);
            SigmaAt = Take(ref at, C);
            GammaAt = Take(ref at, C);
            WeightAt = Take(ref at, C);
            CosAt = Take(ref at, K);
            SinAt = Take(ref at, K);
            PerWorker = at;
        }

        public int H { get; }
        public int P { get; }
        public int N { get; }
        public int R { get; }
        public int K { get; }
        public int G { get; }
        public int C { get; }
        public int DInner { get; }
        public int InProjDim { get; }
        public int ZOffset { get; }
        public int XOffset { get; }
        public int BOffset { get; }
        public int COffset { get; }
        public int DtOffset { get; }
        public int AOffset { get; }
        public int TrapOffset { get; }
        public int AngleOffset { get; }
        public bool Adjacent { get; }
        public Mamba3AActivation Activation { get; }
        public double AFloor { get; }
        public float Eps { get; }
        public int Threads { get; }
        public int KeysAt { get; }
        public int QueriesAt { get; }
        public int ValuesAt { get; }
        public int OutputsAt { get; }
        public int PrevValuesAt { get; }
        public int CumAt { get; }
        public int SigmaAt { get; }
        public int GammaAt { get; }
        public int WeightAt { get; }
        public int CosAt { get; }
        public int SinAt { get; }
        public int PerWorker { get; }

        private static int Take(ref int at, int count)
        {
            int start = at;
            at += (count + 15) / 16 * 16;
            return start;
        }
    }

    // What the pool's loop bodies read: the dims, the piece's buffers, the cache and the weights.
    private struct Args
    {
        public Dims Dims;
        public int Tokens;
        public float* Proj;
        public float* Gated;
        public float* Scratch;
        public float* State;
        public float* Angles;
        public float* PrevKey;
        public float* PrevX;
        public float* DtBias;
        public float* BBias;
        public float* CBias;
        public float* BNorm;
        public float* CNorm;
        public float* Skip;
        public float* MimoX;
        public float* MimoZ;
        public float* MimoO;
        public float* Norm;
    }
}
