// The float64 sequential reference of one Mamba-3 mixer: the O(T) recurrence token by token, written straight from
// the math (Mamba-3 paper Prop. 1 and §3.3; the official module's step), with no chunking, no SIMD and no threads.
// It is the oracle the float32 CPU forms (Mamba3Mixer) are tested against.
//
// Per token u_t [D]:
//   p = in_proj · u_t, split as [ z | x | B [R, G, N] | C [R, G, N] | a_dt [H] | a_A [H] | a_λ [H] | a_θ [K] ]
//   per head h (group g = h / (H / G)), with the cached (θ_h [K], S_h [P, N], K_prev [R][N], x_prev [P]):
//     Δ = softplus(a_dt + dt_bias_h),  A = min(-f(a_A), -A_floor),  λ = sigmoid(a_λ)
//     θ_k ← (θ_k + Δ·π·tanh(a_θ,k)) mod 2π                                        k < K
//     K_r = Rot(θ)(RMSNorm(B_{r,g})·w_B + B_bias[h, r]),  Q_r likewise with C     r < R
//     v_r = x_h ⊙ mimo_x[h, r] (SISO: x_h),  v'_r = x_prev ⊙ mimo_x[h, r]
//     α = exp(Δ·A),  β = (1 - λ)·Δ·α,  γ = λ·Δ
//     S ← α·S + β·Σ_r v'_r K_prev,rᵀ + γ·Σ_r v_r K_rᵀ                             (S [P, N]: S[p, n])
//     y_r = S·Q_r + D_h·v_r
//     o_h = Σ_r n(y_r) ⊙ silu(z_h ⊙ mimo_z[h, r]) ⊙ mimo_o[h, r]   (SISO: n(y) ⊙ silu(z_h))
//           n = identity, or with is_outproj_norm the RMSNorm over P with norm.weight[h·P .. h·P + P)
//     K_prev ← K, x_prev ← x_h
//   out_t = out_proj · o
// Rot(θ) turns pair k of a vector, (a, b) → (a cos θ_k - b sin θ_k, a sin θ_k + b cos θ_k); the pair is (2k, 2k+1)
// (adjacent layout) or (k, k + N/2) (half-split); dimensions outside the K pairs pass unchanged.
namespace Kiln.Models.Mamba;

/// <summary>The recurrent state of one mixer in float64 (the reference's cache; the same layout as <see cref="Mamba3Cache"/>).</summary>
public sealed class Mamba3ReferenceState
{
    /// <summary>A zero state (a fresh sequence) for <paramref name="config"/>.</summary>
    public Mamba3ReferenceState(Mamba3Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        Config = config;
        Angles = new double[config.Heads * config.AngleCount];
        State = new double[config.Heads * config.HeadDim * config.DState];
        PrevKey = new double[config.Rank * config.Heads * config.DState];
        PrevX = new double[config.Heads * config.HeadDim];
    }

    /// <summary>The configuration the sizes follow.</summary>
    public Mamba3Config Config { get; }

    /// <summary>The accumulated angles θ in [0, 2π). [H, K]</summary>
    public double[] Angles { get; }

    /// <summary>The state S. [H, P, N]</summary>
    public double[] State { get; }

    /// <summary>The previous token's rotated key K. [R, H, N]</summary>
    public double[] PrevKey { get; }

    /// <summary>The previous token's raw x. [H, P]</summary>
    public double[] PrevX { get; }

    /// <summary>The state of a float32 cache, widened.</summary>
    public static Mamba3ReferenceState From(Mamba3Cache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        Mamba3ReferenceState state = new(cache.Config);
        Widen(cache.Angles.AsSpan(), state.Angles);
        Widen(cache.State.AsSpan(), state.State);
        Widen(cache.PrevKey.AsSpan(), state.PrevKey);
        Widen(cache.PrevX.AsSpan(), state.PrevX);
        return state;
    }

    private static void Widen(ReadOnlySpan<float> source, double[] destination)
    {
        for (int i = 0; i < source.Length; i++)
        {
            destination[i] = source[i];
        }
    }
}

/// <summary>The float64 sequential Mamba-3 mixer: the oracle for the chunked and recurrent float32 forms.</summary>
public static class Mamba3Reference
{
    /// <summary>softplus(x) = ln(1 + eˣ) = max(x, 0) + ln(1 + e^-|x|), accurate for every x (no overflow, no loss for x ≪ 0).</summary>
    public static double Softplus(double x) => Math.Max(x, 0) + LogOnePlus(Math.Exp(-Math.Abs(x)));

    // ln(1 + e) for 0 <= e <= 1 to full precision (Goldberg's correction for the rounding of 1 + e).
    private static double LogOnePlus(double e)
    {
        double u = 1 + e;
        return u == 1 ? e : Math.Log(u) * e / (u - 1);
    }

    /// <summary>The decay A = min(-f(a), -A_floor) for activation f.</summary>
    public static double Decay(Mamba3AActivation activation, double a, double floor)
    {
        double f = activation == Mamba3AActivation.Softplus ? Softplus(a) : a >= 0 ? 1 + a : 1 / (1 - a);
        return Math.Min(-f, -floor);
    }

    /// <summary>
    /// Runs the mixer over <paramref name="tokens"/> tokens of <paramref name="input"/> [T, D] from
    /// <paramref name="state"/> (updated in place to the state after the last token) and returns the output [T, D].
    /// </summary>
    /// <exception cref="ArgumentException">The input length is not T·D, or the state belongs to another config.</exception>
    public static double[] Forward(Mamba3Weights weights, ReadOnlySpan<double> input, int tokens, Mamba3ReferenceState state)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(state);
        Mamba3Config c = weights.Config;
        if (tokens < 0 || input.Length != (long)tokens * c.DModel)
        {
            throw new ArgumentException($"Mamba3Reference.Forward: input has {input.Length} values; {tokens} tokens of d_model {c.DModel} need {(long)tokens * c.DModel}.", nameof(input));
        }

        if (state.Config != c)
        {
            throw new ArgumentException("Mamba3Reference.Forward: the state was made for another config; create it from weights.Config.", nameof(state));
        }

        // The weights as float64 arrays.
        double[] inProj = Wide(weights.InProj), outProj = Wide(weights.OutProj), dtBias = Wide(weights.DtBias);
        double[] bBias = Wide(weights.BBias), cBias = Wide(weights.CBias), bNorm = Wide(weights.BNorm), cNorm = Wide(weights.CNorm);
        double[] skip = Wide(weights.D);
        double[]? mimoX = weights.MimoX is null ? null : Wide(weights.MimoX);
        double[]? mimoZ = weights.MimoZ is null ? null : Wide(weights.MimoZ);
        double[]? mimoO = weights.MimoO is null ? null : Wide(weights.MimoO);
        double[]? norm = weights.Norm is null ? null : Wide(weights.Norm);

        int d = c.DModel, h = c.Heads, p = c.HeadDim, n = c.DState, r = c.Rank, k = c.AngleCount, g = c.Groups;
        int headsPerGroup = h / g;
        double[] output = new double[(long)tokens * d];
        double[] proj = new double[c.InProjDim];
        double[] o = new double[c.DInner];
        double[] key = new double[r * n], query = new double[r * n], v = new double[r * p], vPrev = new double[r * p];
        double[] y = new double[p];
        for (int t = 0; t < tokens; t++)
        {
            // The input projection.
            ReadOnlySpan<double> u = input.Slice(t * d, d);
            for (int row = 0; row < proj.Length; row++)
            {
                double sum = 0;
                for (int i = 0; i < d; i++)
                {
                    sum += inProj[((long)row * d) + i] * u[i];
                }

                proj[row] = sum;
            }

            for (int head = 0; head < h; head++)
            {
                int group = head / headsPerGroup;

                // The per-token scalars of this head.
                double dt = Softplus(proj[c.DtOffset + head] + dtBias[head]);
                double a = Decay(c.AActivation, proj[c.AOffset + head], c.AFloor);
                double lambda = 1 / (1 + Math.Exp(-proj[c.TrapOffset + head]));

                // The angles: accumulate, wrap into [0, 2π).
                Span<double> theta = state.Angles.AsSpan(head * k, k);
                for (int i = 0; i < k; i++)
                {
                    theta[i] = Wrap(theta[i] + (dt * Math.PI * Math.Tanh(proj[c.AngleOffset + i])));
                }

                // Keys, queries and values of every rank.
                for (int rank = 0; rank < r; rank++)
                {
                    int source = (rank * g) + group;
                    NormBiasRotate(proj.AsSpan(c.BOffset + (source * n), n), bNorm, bBias.AsSpan(((head * r) + rank) * n, n), theta, c, key.AsSpan(rank * n, n));
                    NormBiasRotate(proj.AsSpan(c.COffset + (source * n), n), cNorm, cBias.AsSpan(((head * r) + rank) * n, n), theta, c, query.AsSpan(rank * n, n));
                    for (int i = 0; i < p; i++)
                    {
                        double scale = mimoX is null ? 1 : mimoX[(((head * r) + rank) * p) + i];
                        v[(rank * p) + i] = proj[c.XOffset + (head * p) + i] * scale;
                        vPrev[(rank * p) + i] = state.PrevX[(head * p) + i] * scale;
                    }
                }

                // The exponential-trapezoidal update of S [P, N], then the readout and the gate per rank.
                double alpha = Math.Exp(dt * a), beta = (1 - lambda) * dt * alpha, gamma = lambda * dt;
                Span<double> s = state.State.AsSpan(head * p * n, p * n);
                for (int i = 0; i < p; i++)
                {
                    for (int j = 0; j < n; j++)
                    {
                        double input1 = 0, input0 = 0;
                        for (int rank = 0; rank < r; rank++)
                        {
                            input1 += vPrev[(rank * p) + i] * state.PrevKey[(((rank * h) + head) * n) + j];
                            input0 += v[(rank * p) + i] * key[(rank * n) + j];
                        }

                        s[(i * n) + j] = (alpha * s[(i * n) + j]) + (beta * input1) + (gamma * input0);
                    }
                }

                Span<double> oh = o.AsSpan(head * p, p);
                oh.Clear();
                for (int rank = 0; rank < r; rank++)
                {
                    for (int i = 0; i < p; i++)
                    {
                        double sum = 0;
                        for (int j = 0; j < n; j++)
                        {
                            sum += s[(i * n) + j] * query[(rank * n) + j];
                        }

                        y[i] = sum + (skip[head] * v[(rank * p) + i]);
                    }

                    if (norm is not null)
                    {
                        double squares = 0;
                        for (int i = 0; i < p; i++)
                        {
                            squares += y[i] * y[i];
                        }

                        double scale = 1 / Math.Sqrt((squares / p) + c.NormEps);
                        for (int i = 0; i < p; i++)
                        {
                            y[i] = y[i] * scale * norm[(head * p) + i];
                        }
                    }

                    for (int i = 0; i < p; i++)
                    {
                        int w = (((head * r) + rank) * p) + i;
                        double z = proj[c.ZOffset + (head * p) + i] * (mimoZ is null ? 1 : mimoZ[w]);
                        oh[i] += y[i] * (z / (1 + Math.Exp(-z))) * (mimoO is null ? 1 : mimoO[w]);
                    }
                }

                // The cache for the next token: this token's rotated keys and raw x.
                for (int rank = 0; rank < r; rank++)
                {
                    key.AsSpan(rank * n, n).CopyTo(state.PrevKey.AsSpan(((rank * h) + head) * n, n));
                }

                for (int i = 0; i < p; i++)
                {
                    state.PrevX[(head * p) + i] = proj[c.XOffset + (head * p) + i];
                }
            }

            // The output projection.
            for (int row = 0; row < d; row++)
            {
                double sum = 0;
                for (int i = 0; i < c.DInner; i++)
                {
                    sum += outProj[((long)row * c.DInner) + i] * o[i];
                }

                output[((long)t * d) + row] = sum;
            }
        }

        return output;
    }

    /// <summary>As <see cref="Forward(Mamba3Weights, ReadOnlySpan{double}, int, Mamba3ReferenceState)"/> for float32 input.</summary>
    public static double[] Forward(Mamba3Weights weights, ReadOnlySpan<float> input, int tokens, Mamba3ReferenceState state)
    {
        double[] wide = new double[input.Length];
        for (int i = 0; i < input.Length; i++)
        {
            wide[i] = input[i];
        }

        return Forward(weights, wide, tokens, state);
    }

    /// <summary>θ mod 2π in [0, 2π).</summary>
    public static double Wrap(double theta)
    {
        double wrapped = theta - (2 * Math.PI * Math.Floor(theta / (2 * Math.PI)));
        return wrapped >= 2 * Math.PI ? 0 : wrapped;
    }

    // RMSNorm over N with weight w, plus the head's bias, then the rotation of the K pairs.
    private static void NormBiasRotate(ReadOnlySpan<double> raw, double[] w, ReadOnlySpan<double> bias, ReadOnlySpan<double> theta, Mamba3Config c, Span<double> result)
    {
        int n = raw.Length;
        double squares = 0;
        for (int j = 0; j < n; j++)
        {
            squares += raw[j] * raw[j];
        }

        double scale = 1 / Math.Sqrt((squares / n) + c.NormEps);
        for (int j = 0; j < n; j++)
        {
            result[j] = (raw[j] * scale * w[j]) + bias[j];
        }

        bool adjacent = c.AngleLayout == Kernels.RopeLayout.Adjacent;
        for (int pair = 0; pair < theta.Length; pair++)
        {
            int first = adjacent ? 2 * pair : pair;
            int second = adjacent ? (2 * pair) + 1 : pair + (n / 2);
            double cos = Math.Cos(theta[pair]), sin = Math.Sin(theta[pair]);
            double a = result[first], b = result[second];
            result[first] = (a * cos) - (b * sin);
            result[second] = (a * sin) + (b * cos);
        }
    }

    private static double[] Wide(Tensor tensor)
    {
        float[] values = tensor.ToArray();
        double[] result = new double[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = values[i];
        }

        return result;
    }
}
