// The ILGPU kernels of the Mamba-3 mixer (everything but the two projections, which run through MatMul on the
// device). Same math and the same buffer layouts as the CPU mixer (Mamba3Mixer.cs, see its header for the chunked
// and recurrent forms); here every step is its own implicitly grouped kernel, queued in stream order, with no
// shared memory, no atomics and a fixed summation order, so repeated runs are bitwise identical.
//
// Buffers (float32, on the device; T tokens of the piece, C the chunk length, chunks = ⌈T / C⌉, CR = C·R):
//   proj     [T, in_proj rows]  the input projection; Prepare rewrites Δ, Δ·A (clamped <= 0), λ, φ and the
//                               B/C RMSNorms in place
//   cos, sin [T, H, K]          the rotation of every token and head (accumulated, wrapped angles)
//   keys, queries [T, H, R, N]  K = Rot(B̄ + B_bias[h, r]), Q = Rot(C̄ + C_bias[h, r]) (both pairing layouts)
//   coef     [3, H, T]          in-chunk inclusive cumulative decay a_t, key scale σ_t = γ_t + ε_t, γ_t = λ_t·Δ_t
//   scores   [H, T, R, CR]      weight·(Q_(t,r)·K_(j,r')) of the causal in-chunk pairs, 0 elsewhere
//   states   [chunks, H, P, N]  first each chunk's own state contribution, then (after StatePass) the state that
//                               enters the chunk
//   ys       [T, H, R, P]       the SSM outputs before the gate
//   gated    [T, d_inner]       the gated outputs, the input of out_proj
//
// Prefill (T >= 1 tokens; the mixer uses it for T >= 2), one thread per output element unless said otherwise:
//   Prepare       T·(H + K + 2·R·G)  per token: Δ = softplus(a_dt + dt_bias), Δ·A, λ = σ(a_λ); φ = π·tanh(a_θ); one
//                                    thread per B or C vector for its RMSNorm over N
//   Angles        H·K                one thread per (head, angle) walks the T tokens: θ ← wrap(θ + Δ·φ), cos, sin
//                                    (sequential over tokens: a prefix sum of H·K short rows)
//   Rows          T·H·R·N            one key and one query element (with its rotation partner)
//   Coefficients  H·chunks           one thread per (head, chunk) walks the chunk's tokens for a_t, σ_t, γ_t
//   Scores        H·T·R·CR           one score: an N-long dot product
//   ChunkStates   chunks·H·P·N       Σ_(j,r') e^{a_last - a_j}·σ_j·v_(j,r')[p]·K_(j,r')[n] over the chunk
//   StatePass     H·P·N              one thread per state element walks the chunks: S += seed (the cached token's
//                                    pending β term), then per chunk: store S as the chunk's entry state,
//                                    S ← e^{a_last}·S + its contribution; the final S goes to the cache
//   Outputs       T·H·R·P            y = e^{a_t}·S_entry[p]·Q_(t,r) + Σ_cols score·v[p] + D_h·v_(t,r)[p]
//   Gate          T·H·P              o = Σ_r n(y_r)[p]·silu(z[p]·mimo_z)·mimo_o (n: the optional grouped RMSNorm,
//                                    its sum of squares recomputed by each of the P threads of a row)
//   CacheTail     H·(R·N + P)        the last token's keys and raw x into the cache
// Decode (T = 1): Prepare, Angles, Rows, then Step (H·P threads: thread (h, p) updates state row S[h, p, :] in
// place, S ← α·S + β·Σ_r v'_r[p]·K'_r + γ·Σ_r v_r[p]·K_r, and reads out y_r[p] = S[p]·Q_r + D_h·v_r[p]), Gate,
// CacheTail. A step queues these six kernels and the two products; it allocates no device memory and uploads nothing.
//
// Limits: the scores scratch holds H·T·R·C·R floats for a piece of T tokens, so the mixer bounds T per piece (its
// MaxTokens) and the config bounds C·R (MaxChunkRows). The in-chunk products recompute each score once per
// row (no reuse through shared memory) and Step reads one state row per thread (N-strided across a warp): both are
// the first things to tile for speed. Kernel rules as elsewhere (docs/reference/dotnet-stack.md): a·b + c rather
// than an FMA intrinsic; tanh from exp (the PTX tanh.approx is too coarse for accumulated angles); softplus with a
// correctly rounded ln(1 + e).
using System.Reflection;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;
using Kiln.Kernels;

namespace Kiln.Models.Mamba;

/// <summary>The sizes, offsets and switches every Mamba-3 kernel reads (blittable, passed by value).</summary>
internal struct Mamba3KernelDims
{
    public int H;
    public int P;
    public int N;
    public int R;
    public int K;
    public int G;
    public int C;
    public int DInner;
    public int Stride;
    public int ZOffset;
    public int XOffset;
    public int BOffset;
    public int COffset;
    public int DtOffset;
    public int AOffset;
    public int TrapOffset;
    public int AngleOffset;
    public int Adjacent;
    public int HeavyTail;
    public int HasMimo;
    public int HasNorm;
    public float AFloor;
    public float Eps;
    public int Tokens;
    public int Chunks;

    /// <summary>The dims of <paramref name="c"/> for a piece of <paramref name="tokens"/> tokens.</summary>
    public static Mamba3KernelDims For(Mamba3Config c, int tokens) => new()
    {
        H = c.Heads,
        P = c.HeadDim,
        N = c.DState,
        R = c.Rank,
        K = c.AngleCount,
        G = c.Groups,
        C = c.ChunkSize,
        DInner = c.DInner,
        Stride = c.InProjDim,
        ZOffset = c.ZOffset,
        XOffset = c.XOffset,
        BOffset = c.BOffset,
        COffset = c.COffset,
        DtOffset = c.DtOffset,
        AOffset = c.AOffset,
        TrapOffset = c.TrapOffset,
        AngleOffset = c.AngleOffset,
        Adjacent = c.AngleLayout == RopeLayout.Adjacent ? 1 : 0,
        HeavyTail = c.AActivation == Mamba3AActivation.HeavyTail ? 1 : 0,
        HasMimo = c.IsMimo ? 1 : 0,
        HasNorm = c.IsOutProjNorm ? 1 : 0,
        AFloor = (float)c.AFloor,
        Eps = c.NormEps,
        Tokens = tokens,
        Chunks = (tokens + c.ChunkSize - 1) / c.ChunkSize,
    };
}

/// <summary>The Mamba-3 mixer's ILGPU kernels (see the file header) and their registry for offline compilation.</summary>
internal static class Mamba3Kernels
{
    private const float TwoPi = 2f * MathF.PI;

    /// <summary>The kernels, for offline PTX compilation.</summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } =
    [
        new("Mamba3Prepare", Method(nameof(PrepareKernel)), IsExplicitlyGrouped: false),
        new("Mamba3Angles", Method(nameof(AnglesKernel)), IsExplicitlyGrouped: false),
        new("Mamba3Rows", Method(nameof(RowsKernel)), IsExplicitlyGrouped: false),
        new("Mamba3Coefficients", Method(nameof(CoefficientsKernel)), IsExplicitlyGrouped: false),
        new("Mamba3Scores", Method(nameof(ScoresKernel)), IsExplicitlyGrouped: false),
        new("Mamba3ChunkStates", Method(nameof(ChunkStatesKernel)), IsExplicitlyGrouped: false),
        new("Mamba3StatePass", Method(nameof(StatePassKernel)), IsExplicitlyGrouped: false),
        new("Mamba3Outputs", Method(nameof(OutputsKernel)), IsExplicitlyGrouped: false),
        new("Mamba3Gate", Method(nameof(GateKernel)), IsExplicitlyGrouped: false),
        new("Mamba3CacheTail", Method(nameof(CacheTailKernel)), IsExplicitlyGrouped: false),
        new("Mamba3Step", Method(nameof(StepKernel)), IsExplicitlyGrouped: false),
    ];

    /// <summary>Per token: Δ, Δ·A, λ for every head, φ for every angle, the RMSNorm of every B and C vector.</summary>
    internal static void PrepareKernel(
        Index1D index,
        ArrayView<float> proj,
        ArrayView<float> dtBias,
        ArrayView<float> bNorm,
        ArrayView<float> cNorm,
        Mamba3KernelDims d)
    {
        int items = d.H + d.K + (2 * d.R * d.G);
        int t = index.X / items;
        int item = index.X - (t * items);
        long row = (long)t * d.Stride;
        if (item < d.H)
        {
            float dt = Softplus(proj[row + d.DtOffset + item] + dtBias[item]);
            float a = proj[row + d.AOffset + item];
            float f = d.HeavyTail == 0 ? Softplus(a) : a >= 0f ? 1f + a : 1f / (1f - a);
            float decay = Min(-f, -d.AFloor);
            proj[row + d.DtOffset + item] = dt;
            proj[row + d.AOffset + item] = Min(dt * decay, 0f);
            proj[row + d.TrapOffset + item] = 1f / (1f + MathF.Exp(-proj[row + d.TrapOffset + item]));
            return;
        }

        if (item < d.H + d.K)
        {
            long at = row + d.AngleOffset + (item - d.H);
            proj[at] = MathF.PI * Tanh(proj[at]);
            return;
        }

        // One B (first R·G items) or C vector: x ← x / √(mean(x²) + eps) ⊙ weight.
        int vector = item - d.H - d.K;
        int rg = d.R * d.G;
        bool isB = vector < rg;
        long start = row + (isB ? d.BOffset + ((long)vector * d.N) : d.COffset + ((long)(vector - rg) * d.N));
        float squares = 0f;
        for (int n = 0; n < d.N; n++)
        {
            float x = proj[start + n];
            squares += x * x;
        }

        float scale = 1f / MathF.Sqrt((squares / d.N) + d.Eps);
        for (int n = 0; n < d.N; n++)
        {
            proj[start + n] = proj[start + n] * scale * (isB ? bNorm[n] : cNorm[n]);
        }
    }

    /// <summary>One thread per (head, angle): θ ← wrap(θ + Δ_t·φ_t) over the tokens, cos θ and sin θ of each.</summary>
    internal static void AnglesKernel(
        Index1D index,
        ArrayView<float> proj,
        ArrayView<float> angles,
        ArrayView<float> cos,
        ArrayView<float> sin,
        Mamba3KernelDims d)
    {
        int h = index.X / d.K;
        int k = index.X - (h * d.K);
        float theta = angles[index.X];
        for (int t = 0; t < d.Tokens; t++)
        {
            long row = (long)t * d.Stride;
            float angle = theta + (proj[row + d.DtOffset + h] * proj[row + d.AngleOffset + k]);
            angle -= TwoPi * MathF.Floor(angle / TwoPi);
            angle = angle >= TwoPi || angle < 0f ? 0f : angle;
            theta = angle;
            long at = (((long)t * d.H) + h) * d.K + k;
            cos[at] = MathF.Cos(angle);
            sin[at] = MathF.Sin(angle);
        }

        angles[index.X] = theta;
    }

    /// <summary>One key and one query element: bias, then the rotation of its pair (adjacent or half-split).</summary>
    internal static void RowsKernel(
        Index1D index,
        ArrayView<float> proj,
        ArrayView<float> bBias,
        ArrayView<float> cBias,
        ArrayView<float> cos,
        ArrayView<float> sin,
        ArrayView<float> keys,
        ArrayView<float> queries,
        Mamba3KernelDims d)
    {
        // index = ((t·H + h)·R + r)·N + n
        int n = index.X % d.N;
        int rest = index.X / d.N;
        int r = rest % d.R;
        rest /= d.R;
        int h = rest % d.H;
        int t = rest / d.H;
        int group = h / (d.H / d.G);
        long bRow = ((long)t * d.Stride) + d.BOffset + ((long)((r * d.G) + group) * d.N);
        long cRow = bRow - d.BOffset + d.COffset;
        long bias = (long)((h * d.R) + r) * d.N;

        // The pair this element belongs to: k is the angle, first/second the two elements, -1 when not rotated.
        int k = -1, first = 0, second = 0;
        bool isFirst = false;
        if (d.Adjacent != 0)
        {
            if (n < 2 * d.K)
            {
                k = n / 2;
                first = 2 * k;
                second = first + 1;
                isFirst = n == first;
            }
        }
        else if (n < d.K)
        {
            k = n;
            first = n;
            second = n + (d.N / 2);
            isFirst = true;
        }
        else if (n >= d.N / 2 && n < (d.N / 2) + d.K)
        {
            k = n - (d.N / 2);
            first = k;
            second = n;
        }

        if (k < 0)
        {
            keys[index.X] = proj[bRow + n] + bBias[bias + n];
            queries[index.X] = proj[cRow + n] + cBias[bias + n];
            return;
        }

        long angle = (((long)t * d.H) + h) * d.K + k;
        float c = cos[angle], s = sin[angle];
        float k0 = proj[bRow + first] + bBias[bias + first], k1 = proj[bRow + second] + bBias[bias + second];
        float q0 = proj[cRow + first] + cBias[bias + first], q1 = proj[cRow + second] + cBias[bias + second];
        keys[index.X] = isFirst ? (k0 * c) - (k1 * s) : (k0 * s) + (k1 * c);
        queries[index.X] = isFirst ? (q0 * c) - (q1 * s) : (q0 * s) + (q1 * c);
    }

    /// <summary>One thread per (head, chunk): cumulative decay a_t, key scale σ_t and γ_t of the chunk's tokens.</summary>
    internal static void CoefficientsKernel(Index1D index, ArrayView<float> proj, ArrayView<float> coef, Mamba3KernelDims d)
    {
        int h = index.X % d.H;
        int chunk = index.X / d.H;
        int begin = chunk * d.C;
        int end = Min(begin + d.C, d.Tokens);
        long cumAt = (long)h * d.Tokens, sigmaAt = ((long)(d.H + h)) * d.Tokens, gammaAt = ((long)((2 * d.H) + h)) * d.Tokens;
        float running = 0f;
        for (int t = begin; t < end; t++)
        {
            long row = (long)t * d.Stride;
            float dt = proj[row + d.DtOffset + h];
            running += proj[row + d.AOffset + h];
            float gamma = proj[row + d.TrapOffset + h] * dt;
            float shifted = 0f;
            if (t + 1 < d.Tokens)
            {
                long next = row + d.Stride;
                shifted = (1f - proj[next + d.TrapOffset + h]) * proj[next + d.DtOffset + h];
            }

            coef[cumAt + t] = running;
            coef[sigmaAt + t] = gamma + shifted;
            coef[gammaAt + t] = gamma;
        }
    }

    /// <summary>One in-chunk score: weight·(Q_(t,r)·K_(j,r')) for j &lt;= t in t's chunk, 0 for the other columns.</summary>
    internal static void ScoresKernel(
        Index1D index,
        ArrayView<float> keys,
        ArrayView<float> queries,
        ArrayView<float> coef,
        ArrayView<float> scores,
        Mamba3KernelDims d)
    {
        // index = ((h·T + t)·R + r)·CR + column, column = jLocal·R + r'
        int cr = d.C * d.R;
        int column = index.X % cr;
        int rest = index.X / cr;
        int r = rest % d.R;
        rest /= d.R;
        int t = rest % d.Tokens;
        int h = rest / d.Tokens;
        int jLocal = column / d.R;
        int other = column - (jLocal * d.R);
        int j = ((t / d.C) * d.C) + jLocal;
        float score = 0f;
        if (j <= t)
        {
            long cumAt = (long)h * d.Tokens;
            float weight = j < t
                ? MathF.Exp(Min(coef[cumAt + t] - coef[cumAt + j], 0f)) * coef[((long)(d.H + h) * d.Tokens) + j]
                : coef[((long)((2 * d.H) + h) * d.Tokens) + t];
            long q = ((((long)t * d.H) + h) * d.R + r) * d.N;
            long k = ((((long)j * d.H) + h) * d.R + other) * d.N;
            float dot = 0f;
            for (int n = 0; n < d.N; n++)
            {
                dot += queries[q + n] * keys[k + n];
            }

            score = weight * dot;
        }

        scores[index.X] = score;
    }

    /// <summary>One element of a chunk's state contribution Σ_(j,r') e^{a_last - a_j}·σ_j·v_(j,r')[p]·K_(j,r')[n].</summary>
    internal static void ChunkStatesKernel(
        Index1D index,
        ArrayView<float> proj,
        ArrayView<float> keys,
        ArrayView<float> coef,
        ArrayView<float> mimoX,
        ArrayView<float> states,
        Mamba3KernelDims d)
    {
        // index = ((chunk·H + h)·P + p)·N + n
        int n = index.X % d.N;
        int rest = index.X / d.N;
        int p = rest % d.P;
        rest /= d.P;
        int h = rest % d.H;
        int chunk = rest / d.H;
        int begin = chunk * d.C;
        int end = Min(begin + d.C, d.Tokens);
        long cumAt = (long)h * d.Tokens, sigmaAt = ((long)(d.H + h)) * d.Tokens;
        float last = coef[cumAt + end - 1];
        float acc = 0f;
        for (int j = begin; j < end; j++)
        {
            float weight = MathF.Exp(Min(last - coef[cumAt + j], 0f)) * coef[sigmaAt + j];
            for (int other = 0; other < d.R; other++)
            {
                float v = Value(proj, mimoX, d, j, h, other, p);
                acc += weight * v * keys[(((((long)j * d.H) + h) * d.R + other) * d.N) + n];
            }
        }

        states[index.X] = acc;
    }

    /// <summary>
    /// One thread per state element: the seed (the cached token's pending β term), then per chunk its entry state
    /// (written over its contribution) and S ← e^{a_last}·S + contribution; the final state into the cache.
    /// </summary>
    internal static void StatePassKernel(
        Index1D index,
        ArrayView<float> proj,
        ArrayView<float> coef,
        ArrayView<float> mimoX,
        ArrayView<float> prevKey,
        ArrayView<float> prevX,
        ArrayView<float> state,
        ArrayView<float> states,
        Mamba3KernelDims d)
    {
        // index = (h·P + p)·N + n
        int n = index.X % d.N;
        int rest = index.X / d.N;
        int p = rest % d.P;
        int h = rest / d.P;
        float s = state[index.X];
        float seed = (1f - proj[d.TrapOffset + h]) * proj[d.DtOffset + h];
        if (seed != 0f)
        {
            for (int r = 0; r < d.R; r++)
            {
                float v = prevX[((long)h * d.P) + p] * (d.HasMimo != 0 ? mimoX[(((long)h * d.R) + r) * d.P + p] : 1f);
                s += prevKey[((((long)r * d.H) + h) * d.N) + n] * (seed * v);
            }
        }

        long perChunk = (long)d.H * d.P * d.N;
        long cumAt = (long)h * d.Tokens;
        for (int chunk = 0; chunk < d.Chunks; chunk++)
        {
            long at = (chunk * perChunk) + index.X;
            float contribution = states[at];
            states[at] = s;
            int end = Min((chunk + 1) * d.C, d.Tokens);
            s = (s * MathF.Exp(coef[cumAt + end - 1])) + contribution;
        }

        state[index.X] = s;
    }

    /// <summary>One output y_(t,r)[p]: the entry state's readout, the in-chunk sum, the skip.</summary>
    internal static void OutputsKernel(
        Index1D index,
        ArrayView<float> proj,
        ArrayView<float> queries,
        ArrayView<float> scores,
        ArrayView<float> states,
        ArrayView<float> coef,
        ArrayView<float> skip,
        ArrayView<float> mimoX,
        ArrayView<float> ys,
        Mamba3KernelDims d)
    {
        // index = ((t·H + h)·R + r)·P + p
        int p = index.X % d.P;
        int rest = index.X / d.P;
        int r = rest % d.R;
        rest /= d.R;
        int h = rest % d.H;
        int t = rest / d.H;
        int chunk = t / d.C;
        long sRow = ((((long)chunk * d.H) + h) * d.P + p) * d.N;
        long q = ((((long)t * d.H) + h) * d.R + r) * d.N;
        float dot = 0f;
        for (int n = 0; n < d.N; n++)
        {
            dot += states[sRow + n] * queries[q + n];
        }

        float y = MathF.Exp(coef[((long)h * d.Tokens) + t]) * dot;
        int cr = d.C * d.R;
        long scoreRow = ((((long)h * d.Tokens) + t) * d.R + r) * cr;
        int begin = chunk * d.C;
        int columns = (t - begin + 1) * d.R;
        for (int column = 0; column < columns; column++)
        {
            int jLocal = column / d.R;
            int other = column - (jLocal * d.R);
            y += Value(proj, mimoX, d, begin + jLocal, h, other, p) * scores[scoreRow + column];
        }

        y += Value(proj, mimoX, d, t, h, r, p) * skip[h];
        ys[index.X] = y;
    }

    /// <summary>One gated output o[t, h·P + p] = Σ_r n(y_r)[p]·silu(z[p]·mimo_z[h, r, p])·mimo_o[h, r, p].</summary>
    internal static void GateKernel(
        Index1D index,
        ArrayView<float> proj,
        ArrayView<float> ys,
        ArrayView<float> norm,
        ArrayView<float> mimoZ,
        ArrayView<float> mimoO,
        ArrayView<float> gated,
        Mamba3KernelDims d)
    {
        // index = (t·H + h)·P + p
        int p = index.X % d.P;
        int rest = index.X / d.P;
        int h = rest % d.H;
        int t = rest / d.H;
        float z = proj[((long)t * d.Stride) + d.ZOffset + ((long)h * d.P) + p];
        float o = 0f;
        for (int r = 0; r < d.R; r++)
        {
            long yRow = ((((long)t * d.H) + h) * d.R + r) * d.P;
            float scale = 1f;
            if (d.HasNorm != 0)
            {
                float squares = 0f;
                for (int e = 0; e < d.P; e++)
                {
                    float y = ys[yRow + e];
                    squares += y * y;
                }

                scale = 1f / MathF.Sqrt((squares / d.P) + d.Eps);
            }

            long w = (((long)h * d.R) + r) * d.P + p;
            float value = ys[yRow + p] * scale * (d.HasNorm != 0 ? norm[((long)h * d.P) + p] : 1f);
            float gate = z * (d.HasMimo != 0 ? mimoZ[w] : 1f);
            o += value * (gate / (1f + MathF.Exp(-gate))) * (d.HasMimo != 0 ? mimoO[w] : 1f);
        }

        gated[((long)t * d.DInner) + ((long)h * d.P) + p] = o;
    }

    /// <summary>The cache's previous key [R, H, N] and previous x [H, P] from the piece's last token.</summary>
    internal static void CacheTailKernel(
        Index1D index,
        ArrayView<float> proj,
        ArrayView<float> keys,
        ArrayView<float> prevKey,
        ArrayView<float> prevX,
        Mamba3KernelDims d)
    {
        int last = d.Tokens - 1;
        int keyCells = d.R * d.H * d.N;
        if (index.X < keyCells)
        {
            // index = (r·H + h)·N + n
            int n = index.X % d.N;
            int rest = index.X / d.N;
            int h = rest % d.H;
            int r = rest / d.H;
            prevKey[index.X] = keys[((((long)last * d.H) + h) * d.R + r) * d.N + n];
            return;
        }

        int i = index.X - keyCells;
        prevX[i] = proj[((long)last * d.Stride) + d.XOffset + i];
    }

    /// <summary>
    /// The one-token step of state row S[h, p, :]: S ← α·S + β·Σ_r v'_r[p]·K'_r + γ·Σ_r v_r[p]·K_r in place, then
    /// y_r[p] = S[p]·Q_r + D_h·v_r[p] for every rank.
    /// </summary>
    internal static void StepKernel(
        Index1D index,
        ArrayView<float> proj,
        ArrayView<float> keys,
        ArrayView<float> queries,
        ArrayView<float> skip,
        ArrayView<float> mimoX,
        ArrayView<float> prevKey,
        ArrayView<float> prevX,
        ArrayView<float> state,
        ArrayView<float> ys,
        Mamba3KernelDims d)
    {
        // index = h·P + p
        int p = index.X % d.P;
        int h = index.X / d.P;
        float dt = proj[d.DtOffset + h], lambda = proj[d.TrapOffset + h];
        float alpha = MathF.Exp(Min(proj[d.AOffset + h], 0f));
        float beta = (1f - lambda) * dt * alpha, gamma = lambda * dt;
        float x = prevX[((long)h * d.P) + p];
        long sRow = (long)index.X * d.N;
        for (int n = 0; n < d.N; n++)
        {
            float s = state[sRow + n] * alpha;
            for (int r = 0; r < d.R; r++)
            {
                float prevScale = beta * (x * (d.HasMimo != 0 ? mimoX[(((long)h * d.R) + r) * d.P + p] : 1f));
                float scale = gamma * Value(proj, mimoX, d, 0, h, r, p);
                s += (prevKey[((((long)r * d.H) + h) * d.N) + n] * prevScale) + (keys[((((long)h * d.R) + r) * d.N) + n] * scale);
            }

            state[sRow + n] = s;
        }

        for (int r = 0; r < d.R; r++)
        {
            long q = (((long)h * d.R) + r) * d.N;
            float dot = 0f;
            for (int n = 0; n < d.N; n++)
            {
                dot += state[sRow + n] * queries[q + n];
            }

            ys[((((long)h * d.R) + r) * d.P) + p] = dot + (skip[h] * Value(proj, mimoX, d, 0, h, r, p));
        }
    }

    // v_(t,r)[p] = x_t[h·P + p] ⊙ mimo_x[h, r, p] (SISO: x).
    private static float Value(ArrayView<float> proj, ArrayView<float> mimoX, Mamba3KernelDims d, int t, int h, int r, int p)
    {
        float x = proj[((long)t * d.Stride) + d.XOffset + ((long)h * d.P) + p];
        return d.HasMimo != 0 ? x * mimoX[(((long)h * d.R) + r) * d.P + p] : x;
    }

    // softplus(x) = max(x, 0) + ln(1 + e^{-|x|}), with ln(1 + e) corrected for the rounding of 1 + e.
    private static float Softplus(float x)
    {
        float e = MathF.Exp(-Abs(x));
        float u = 1f + e;
        float log = u == 1f ? e : MathF.Log(u) * e / (u - 1f);
        return Max(x, 0f) + log;
    }

    // tanh from one exponential: sign(x)·(1 - e^{-2|x|}) / (1 + e^{-2|x|}).
    private static float Tanh(float x)
    {
        float e = MathF.Exp(-2f * Abs(x));
        float magnitude = (1f - e) / (1f + e);
        return x < 0f ? -magnitude : magnitude;
    }

    private static float Abs(float x) => x < 0f ? -x : x;

    private static float Min(float a, float b) => a < b ? a : b;

    private static float Max(float a, float b) => a > b ? a : b;

    private static int Min(int a, int b) => a < b ? a : b;

    private static MethodInfo Method(string name) =>
        typeof(Mamba3Kernels).GetMethod(name, BindingFlags.Static | BindingFlags.NonPublic)
            ?? throw new InvalidOperationException($"Mamba3Kernels: kernel method {name} not found.");
}
