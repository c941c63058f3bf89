// The dense warm-up loss of one layer's lightning indexer and its hand-written gradient (DeepSeek-V3.2 tech report
// §2.1, eq. 3), for a window of T tokens at positions 0..T-1. Inputs are detached: x [T, D] (the layer's
// attention-normed input) and p [T, T] (the dense attention summed over heads, L1-normalised per row, causal).
//
// Forward (the math of LightningIndexer, float32 with float64 softmax and KL):
//   q  = x·Wqᵀ                         [T, Hi, Di], then RoPE on dims [0, r) of every head at position t
//   kp = x·Wkᵀ                         [T, Di];  k̂ = (kp - mean)·rstd;  kn = k̂·γ + β;  k = RoPE(kn) on [0, r)
//   w  = (x·WProjᵀ)·c                  [T, Hi],  c = HeadWeightScale(Hi, Di) = (Hi·Di)^-1/2
//   dot[j, t, s] = q[t, j]·k[s];   I[t, s] = Σ_j w[t, j]·ReLU(dot[j, t, s]) for s ≤ t
//   q_t = softmax over s ≤ t of I[t, :];   L = (1/T) Σ_t Σ_{s≤t} p[t,s]·(log p[t,s] - log q_t[s])   (0·log 0 = 0)
// Backward:
//   G[t, s] = ∂L/∂I[t, s] = (q_t[s]·Σ_s p[t,s] - p[t,s]) / T
//   ∂w[t, j] = Σ_s G[t,s]·ReLU(dot[j,t,s]);                       ∂WProj = c·∂wᵀ·x
//   Gj[t, s] = G[t,s]·w[t,j]·[dot[j,t,s] > 0];   ∂q[t, j] = Σ_s Gj[t,s]·k[s];   ∂k[s] = Σ_j Σ_t Gj[t,s]·q[t,j]
//   RoPE is a rotation R: ∂(before) = Rᵀ·∂(after), the inverse rotation (pair (a, b): a·c + b·s, -a·s + b·c).
//   ∂Wq = ∂qrawᵀ·x;   LayerNorm: ∂γ = Σ_t ∂kn·k̂, ∂β = Σ_t ∂kn, g = ∂kn·γ, ∂kp = rstd·(g - mean(g) - k̂·mean(g·k̂));
//   ∂Wk = ∂kpᵀ·x.
// The products (projections, all heads' dots, ∂q, ∂k, the weight gradients) go through MatMul.Compute; the LayerNorm
// statistics, the softmax, the KL and the head sums accumulate in float64. The ReLU's derivative at 0 is taken as 0.
// A float64 scalar reference of the loss (ReferenceLoss) is the oracle of the finite-difference tests.
using System.Runtime.CompilerServices;
using Kiln.Kernels;

namespace Kiln.Models.Dsa;

/// <summary>
/// The dense warm-up loss <c>L = (1/T) Σ_t KL(p_t ‖ softmax(I_t))</c> of one layer's lightning indexer over one window,
/// with its gradient with respect to every indexer parameter. Holds scratch for windows of up to
/// <see cref="MaxTokens"/> tokens; not thread-safe (its products use the CPU device's worker pool).
/// </summary>
public sealed unsafe class IndexerWarmupLoss : IDisposable
{
    private readonly DsaConfig _config;
    private readonly Tensor _cos;      // [MaxTokens, r/2] (a 1-row dummy when r = 0)
    private readonly Tensor _sin;
    private readonly Tensor _xT;       // [D, T]
    private readonly Tensor _q;        // [T, Hi·Di] projected, then rotated
    private readonly Tensor _qHeads;   // [Hi, T, Di] the rotated queries per head
    private readonly Tensor _qHeadsT;  // [Hi, Di, T]
    private readonly Tensor _kp;       // [T, Di] key projection
    private readonly Tensor _kHat;     // [T, Di] normalised keys before γ, β
    private readonly Tensor _k;        // [T, Di] final keys
    private readonly Tensor _kT;       // [Di, T]
    private readonly Tensor _w;        // [T, Hi] scaled head weights
    private readonly Tensor _dots;     // [Hi, T, T]
    private readonly Tensor _scores;   // [T, T] index scores (-∞ after the diagonal)
    private readonly Tensor _g;        // [T, T] ∂L/∂I
    private readonly Tensor _gj;       // [T, T]
    private readonly Tensor _gjT;      // [T, T]
    private readonly Tensor _dqj;      // [T, Di]
    private readonly Tensor _dkj;      // [T, Di]
    private readonly Tensor _dk;       // [T, Di]
    private readonly Tensor _dq;       // [T, Hi·Di]
    private readonly Tensor _dqT;      // [Hi·Di, T]
    private readonly Tensor _dwT;      // [Hi, T]
    private readonly Tensor _dkpT;     // [Di, T]
    private readonly double[] _rstd;   // [T]
    private readonly double[] _logQ;   // [T] scratch row of log-probabilities
    private Views? _views;

    /// <summary>Creates the scratch for windows of up to <paramref name="maxTokens"/> tokens.</summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxTokens"/> is below 1.</exception>
    public IndexerWarmupLoss(DsaConfig config, int maxTokens)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        if (maxTokens < 1)
        {
            throw new ArgumentOutOfRangeException(
                nameof(maxTokens), maxTokens, "IndexerWarmupLoss: maxTokens must be at least 1; pass the window length.");
        }

        _config = config;
        MaxTokens = maxTokens;
        int t = maxTokens, d = config.Llama.Dim, hi = config.IndexerHeads, di = config.IndexerHeadDim;
        (_cos, _sin) = config.IndexerRopeDims > 0
            ? Ops.RopeTables(maxTokens, config.IndexerRopeDims, config.Llama.RopeTheta)
            : (Tensor.Empty([1, 1]), Tensor.Empty([1, 1]));
        _xT = Tensor.Empty([d * t]);
        _q = Tensor.Empty([t * hi * di]);
        _qHeads = Tensor.Empty([hi * t * di]);
        _qHeadsT = Tensor.Empty([hi * di * t]);
        _kp = Tensor.Empty([t * di]);
        _kHat = Tensor.Empty([t * di]);
        _k = Tensor.Empty([t * di]);
        _kT = Tensor.Empty([di * t]);
        _w = Tensor.Empty([t * hi]);
        _dots = Tensor.Empty([hi * t * t]);
        _scores = Tensor.Empty([t * t]);
        _g = Tensor.Empty([t * t]);
        _gj = Tensor.Empty([t * t]);
        _gjT = Tensor.Empty([t * t]);
        _dqj = Tensor.Empty([t * di]);
        _dkj = Tensor.Empty([t * di]);
        _dk = Tensor.Empty([t * di]);
        _dq = Tensor.Empty([t * hi * di]);
        _dqT = Tensor.Empty([hi * di * t]);
        _dwT = Tensor.Empty([hi * t]);
        _dkpT = Tensor.Empty([di * t]);
        _rstd = new double[t];
        _logQ = new double[t];
    }

    /// <summary>The longest window this scratch holds.</summary>
    public int MaxTokens { get; }

    /// <summary>The index scores of the last call, [T, T] row-major (-∞ after each row's position).</summary>
    public ReadOnlySpan<float> LastScores => _views is null ? default : _views.Scores.AsSpan();

    /// <summary>
    /// Computes the warm-up loss of <paramref name="parameters"/> on one window and, when <paramref name="gradients"/>
    /// is not null, overwrites it with ∂L/∂parameters.
    /// </summary>
    /// <param name="parameters">The indexer's parameters.</param>
    /// <param name="x">The layer's attention-normed input, [T, D] float32 on the CPU.</param>
    /// <param name="target">The dense attention p, [T, T] row-major; row t holds a distribution over 0..t (entries
    /// after t are ignored).</param>
    /// <param name="gradients">Receives the gradient (same shape as the parameters), or null for the loss alone.</param>
    /// <returns>L = (1/T) Σ_t KL(p_t ‖ softmax(I_t)), in nats per token.</returns>
    /// <exception cref="ArgumentException">A shape does not fit.</exception>
    public double Compute(DsaIndexerWeights parameters, Tensor x, ReadOnlySpan<float> target, DsaIndexerWeights? gradients)
    {
        // Check the inputs against the shape and the scratch.
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(x);
        if (!parameters.Fits(_config) || (gradients is not null && !gradients.Fits(_config)))
        {
            throw new ArgumentException(
                $"IndexerWarmupLoss: indexer wq {parameters.Wq}, w_proj {parameters.WProj}, wk {parameters.Wk} (or their "
                + $"gradient) do not fit the loss's config ({_config.IndexerHeads} heads x {_config.IndexerHeadDim}, "
                + $"dim {_config.Llama.Dim}); create the loss with the indexer's DsaConfig.",
                nameof(parameters));
        }

        if (x.Rank != 2 || x.Size(1) != _config.Llama.Dim || x.Size(0) < 1 || x.Size(0) > MaxTokens || !x.IsContiguous
            || x.DType != DType.Float32)
        {
            throw new ArgumentException(
                $"IndexerWarmupLoss: x {x} must be a contiguous float32 [T, {_config.Llama.Dim}] with 1 <= T <= {MaxTokens}.",
                nameof(x));
        }

        int t = x.Size(0);
        if (target.Length != t * t)
        {
            throw new ArgumentException(
                $"IndexerWarmupLoss: the target holds {target.Length} values; p must be [T, T] = {t * t} for T = {t}.",
                nameof(target));
        }

        Views v = ViewsFor(t);
        double loss = Forward(parameters, x, target, v, t);
        if (gradients is not null)
        {
            Backward(parameters, x, v, t, gradients);
        }

        return loss;
    }

    /// <summary>Frees the scratch.</summary>
    public void Dispose()
    {
        foreach (Tensor tensor in new[]
        {
            _cos, _sin, _xT, _q, _qHeads, _qHeadsT, _kp, _kHat, _k, _kT, _w, _dots, _scores, _g, _gj, _gjT, _dqj, _dkj,
            _dk, _dq, _dqT, _dwT, _dkpT,
        })
        {
            tensor.Dispose();
        }
    }

    /// <summary>
    /// The float64 reference of the loss (for tests): parameters flat in the order of
    /// DsaIndexerWeights.Tensors (Wq, WProj, Wk, KNormWeight, KNormBias);
    /// x [T, D]; p [T, T]; RoPE angles from <c>Ops.RopeTables(T, r, θ)</c> widened to float64. Also returns the sign of
    /// every dot product q[t, j]·k[s] (s ≤ t), so a finite-difference test can check that no ReLU kink was crossed.
    /// </summary>
    public static double ReferenceLoss(DsaConfig config, double[] flat, double[] x, double[] p, int t, out bool[] signs)
    {
        ArgumentNullException.ThrowIfNull(config);
        int d = config.Llama.Dim, hi = config.IndexerHeads, di = config.IndexerHeadDim, half = config.IndexerRopeDims / 2;
        int oProj = config.IndexerQueryDim * d, oWk = oProj + (hi * d), oGamma = oWk + (di * d), oBeta = oGamma + di;
        float[] cos = [], sin = [];
        if (half > 0)
        {
            (Tensor c, Tensor s) = Ops.RopeTables(t, config.IndexerRopeDims, config.Llama.RopeTheta);
            cos = c.ToArray();
            sin = s.ToArray();
            c.Dispose();
            s.Dispose();
        }

        // Project, normalise and rotate q, k; project w.
        double[] q = new double[t * hi * di], k = new double[t * di], w = new double[t * hi];
        for (int token = 0; token < t; token++)
        {
            for (int o = 0; o < hi * di; o++)
            {
                q[(token * hi * di) + o] = Dot(flat, o * d, x, token * d, d);
            }

            double[] kp = new double[di];
            for (int o = 0; o < di; o++)
            {
                kp[o] = Dot(flat, oWk + (o * d), x, token * d, d);
            }

            double mean = kp.Average(), variance = kp.Select(value => (value - mean) * (value - mean)).Average();
            double rstd = 1.0 / Math.Sqrt(variance + config.IndexerNormEps);
            for (int o = 0; o < di; o++)
            {
                k[(token * di) + o] = ((kp[o] - mean) * rstd * flat[oGamma + o]) + flat[oBeta + o];
            }

            for (int j = 0; j < hi; j++)
            {
                w[(token * hi) + j] = Dot(flat, oProj + (j * d), x, token * d, d) * LightningIndexer.HeadWeightScale(hi, di);
                RotateReference(q, (((token * hi) + j) * di), token, half, config.IndexerRopeLayout, cos, sin);
            }

            RotateReference(k, token * di, token, half, config.IndexerRopeLayout, cos, sin);
        }

        // Scores, log-softmax and KL per row.
        signs = new bool[hi * t * t];
        double loss = 0;
        for (int token = 0; token < t; token++)
        {
            double[] scores = new double[token + 1];
            for (int s = 0; s <= token; s++)
            {
                for (int j = 0; j < hi; j++)
                {
                    double dot = Dot(q, ((token * hi) + j) * di, k, s * di, di);
                    signs[(((j * t) + token) * t) + s] = dot > 0;
                    scores[s] += w[(token * hi) + j] * Math.Max(dot, 0);
                }
            }

            double max = scores.Max();
            double logSum = max + Math.Log(scores.Sum(value => Math.Exp(value - max)));
            for (int s = 0; s <= token; s++)
            {
                double target = p[(token * t) + s];
                if (target > 0)
                {
                    loss += target * (Math.Log(target) - (scores[s] - logSum));
                }
            }
        }

        return loss / t;
    }

    private double Forward(DsaIndexerWeights parameters, Tensor x, ReadOnlySpan<float> target, Views v, int t)
    {
        int hi = _config.IndexerHeads, di = _config.IndexerHeadDim;
        int half = _config.IndexerRopeDims / 2;

        // Project q [T, Hi·Di], kp [T, Di] and w [T, Hi] with the matrix product.
        MatMul.Compute(x, parameters.Wq, v.Q);
        MatMul.Compute(x, parameters.Wk, v.Kp);
        MatMul.Compute(x, parameters.WProj, v.W);
        float scale = LightningIndexer.HeadWeightScale(hi, di);
        Span<float> w = v.W.AsSpan();
        for (int i = 0; i < w.Length; i++)
        {
            w[i] *= scale;
        }

        // Rotate every query head, and split the heads into [Hi, T, Di] and [Hi, Di, T].
        float* q = v.Q.FloatPointer, qHeads = v.QHeads.FloatPointer, qHeadsT = v.QHeadsT.FloatPointer;
        for (int token = 0; token < t; token++)
        {
            for (int j = 0; j < hi; j++)
            {
                float* head = q + (((long)token * hi) + j) * di;
                Rotate(head, token, half, false);
                for (int e = 0; e < di; e++)
                {
                    qHeads[(((long)j * t) + token) * di + e] = head[e];
                    qHeadsT[(((long)j * di) + e) * t + token] = head[e];
                }
            }
        }

        // Normalise the keys (float64 statistics), scale and shift, rotate, and transpose them.
        float* kp = v.Kp.FloatPointer, kHat = v.KHat.FloatPointer, k = v.K.FloatPointer, kT = v.KT.FloatPointer;
        float* gamma = parameters.KNormWeight.FloatPointer, beta = parameters.KNormBias.FloatPointer;
        for (int token = 0; token < t; token++)
        {
            float* row = kp + ((long)token * di);
            double mean = 0, variance = 0;
            for (int e = 0; e < di; e++)
            {
                mean += row[e];
            }

            mean /= di;
            for (int e = 0; e < di; e++)
            {
                variance += (row[e] - mean) * (row[e] - mean);
            }

            double rstd = 1.0 / Math.Sqrt((variance / di) + _config.IndexerNormEps);
            _rstd[token] = rstd;
            float* hat = kHat + ((long)token * di), key = k + ((long)token * di);
            for (int e = 0; e < di; e++)
            {
                hat[e] = (float)((row[e] - mean) * rstd);
                key[e] = (hat[e] * gamma[e]) + beta[e];
            }

            Rotate(key, token, half, false);
            for (int e = 0; e < di; e++)
            {
                kT[((long)e * t) + token] = key[e];
            }
        }

        // All heads' dot products: dots[j] = q_j · kᵀ, [T, T] each.
        for (int j = 0; j < hi; j++)
        {
            MatMul.Compute(v.QHead[j], v.K, v.Dots[j]);
        }

        // Index scores, then per row the log-softmax over s ≤ t, the KL and ∂L/∂I, in float64.
        float* dots = v.Dots[0].FloatPointer, scores = v.Scores.FloatPointer, g = v.G.FloatPointer;
        float* weights = v.W.FloatPointer;
        long plane = (long)t * t;
        double loss = 0;
        for (int token = 0; token < t; token++)
        {
            double max = double.NegativeInfinity;
            for (int s = 0; s <= token; s++)
            {
                double score = 0;
                for (int j = 0; j < hi; j++)
                {
                    float dot = dots[(j * plane) + ((long)token * t) + s];
                    score += weights[(token * hi) + j] * Math.Max(dot, 0f);
                }

                _logQ[s] = score;
                scores[((long)token * t) + s] = (float)score;
                max = Math.Max(max, score);
            }

            double sum = 0, mass = 0;
            for (int s = 0; s <= token; s++)
            {
                sum += Math.Exp(_logQ[s] - max);
                mass += target[(token * t) + s];
            }

            double logSum = max + Math.Log(sum);
            for (int s = 0; s <= token; s++)
            {
                double logQ = _logQ[s] - logSum, p = target[(token * t) + s];
                if (p > 0)
                {
                    loss += p * (Math.Log(p) - logQ);
                }

                g[((long)token * t) + s] = (float)(((Math.Exp(logQ) * mass) - p) / t);
            }

            for (int s = token + 1; s < t; s++)
            {
                scores[((long)token * t) + s] = float.NegativeInfinity;
                g[((long)token * t) + s] = 0f;
            }
        }

        return loss / t;
    }

    private void Backward(DsaIndexerWeights parameters, Tensor x, Views v, int t, DsaIndexerWeights gradients)
    {
        int d = _config.Llama.Dim, hi = _config.IndexerHeads, di = _config.IndexerHeadDim;
        int half = _config.IndexerRopeDims / 2;
        long plane = (long)t * t;
        float* dots = v.Dots[0].FloatPointer, g = v.G.FloatPointer, weights = v.W.FloatPointer;
        float* gj = v.Gj.FloatPointer, gjT = v.GjT.FloatPointer, dwT = v.DwT.FloatPointer;
        float* dq = v.Dq.FloatPointer, dk = v.Dk.FloatPointer, dkj = v.Dkj.FloatPointer, dqj = v.Dqj.FloatPointer;
        new Span<float>(dk, t * di).Clear();

        // Transpose x once: the weight gradients are ∂Y[N, T] · x[T, D] = MatMul(∂Yᵀ-as-rows, xᵀ).
        float* xSource = x.FloatPointer, xT = v.XT.FloatPointer;
        for (int token = 0; token < t; token++)
        {
            for (int e = 0; e < d; e++)
            {
                xT[((long)e * t) + token] = xSource[((long)token * d) + e];
            }
        }

        // Per head: ∂w, the masked head gradient Gj (and its transpose), then ∂q_j = Gj·k and ∂k += Gjᵀ·q_j.
        for (int j = 0; j < hi; j++)
        {
            float* dot = dots + (j * plane);
            for (int token = 0; token < t; token++)
            {
                double dw = 0;
                float wj = weights[(token * hi) + j];
                for (int s = 0; s < t; s++)
                {
                    long at = ((long)token * t) + s;
                    float value = s <= token && dot[at] > 0f ? dot[at] : 0f;
                    dw += (double)g[at] * value;
                    float masked = value > 0f ? g[at] * wj : 0f;
                    gj[at] = masked;
                    gjT[((long)s * t) + token] = masked;
                }

                dwT[((long)j * t) + token] = (float)dw;
            }

            MatMul.Compute(v.Gj, v.KT, v.Dqj);
            MatMul.Compute(v.GjT, v.QHeadT[j], v.Dkj);
            for (int token = 0; token < t; token++)
            {
                for (int e = 0; e < di; e++)
                {
                    dq[(((long)token * hi) + j) * di + e] = dqj[((long)token * di) + e];
                }
            }

            for (int i = 0; i < t * di; i++)
            {
                dk[i] += dkj[i];
            }
        }

        // ∂WProj = c · ∂wᵀ · x.
        float scale = LightningIndexer.HeadWeightScale(hi, di);
        for (int i = 0; i < hi * t; i++)
        {
            dwT[i] *= scale;
        }

        MatMul.Compute(v.DwT, v.XT, gradients.WProj);

        // ∂q through the inverse rotation, transposed to [Hi·Di, T]; ∂Wq = ∂qᵀ · x.
        float* dqT = v.DqT.FloatPointer;
        for (int token = 0; token < t; token++)
        {
            for (int j = 0; j < hi; j++)
            {
                float* head = dq + (((long)token * hi) + j) * di;
                Rotate(head, token, half, true);
                for (int e = 0; e < di; e++)
                {
                    dqT[(((long)j * di) + e) * t + token] = head[e];
                }
            }
        }

        MatMul.Compute(v.DqT, v.XT, gradients.Wq);

        // ∂k through the inverse rotation, then LayerNorm's backward, transposed to [Di, T]; ∂Wk = ∂kpᵀ · x.
        float* kHat = v.KHat.FloatPointer, gamma = parameters.KNormWeight.FloatPointer, dkpT = v.DkpT.FloatPointer;
        Span<float> dGamma = gradients.KNormWeight.AsSpan(), dBeta = gradients.KNormBias.AsSpan();
        Span<double> dGammaSum = stackalloc double[di], dBetaSum = stackalloc double[di];
        dGammaSum.Clear();
        dBetaSum.Clear();
        for (int token = 0; token < t; token++)
        {
            float* row = dk + ((long)token * di), hat = kHat + ((long)token * di);
            Rotate(row, token, half, true);
            double meanG = 0, meanGHat = 0;
            for (int e = 0; e < di; e++)
            {
                dGammaSum[e] += (double)row[e] * hat[e];
                dBetaSum[e] += row[e];
                double ge = (double)row[e] * gamma[e];
                meanG += ge;
                meanGHat += ge * hat[e];
            }

            meanG /= di;
            meanGHat /= di;
            for (int e = 0; e < di; e++)
            {
                double ge = (double)row[e] * gamma[e];
                dkpT[((long)e * t) + token] = (float)(_rstd[token] * (ge - meanG - (hat[e] * meanGHat)));
            }
        }

        for (int e = 0; e < di; e++)
        {
            dGamma[e] = (float)dGammaSum[e];
            dBeta[e] = (float)dBetaSum[e];
        }

        MatMul.Compute(v.DkpT, v.XT, gradients.Wk);
    }

    // Rotates dims [0, 2·half) of one head at position `position` by the layout's pairs; inverse turns the other way.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Rotate(float* head, int position, int half, bool inverse)
    {
        if (half == 0)
        {
            return;
        }

        float* c = _cos.FloatPointer + ((long)position * half), s = _sin.FloatPointer + ((long)position * half);
        bool adjacent = _config.IndexerRopeLayout == RopeLayout.Adjacent;
        for (int i = 0; i < half; i++)
        {
            int first = adjacent ? 2 * i : i;
            int second = adjacent ? first + 1 : first + half;
            float x0 = head[first], x1 = head[second], sine = inverse ? -s[i] : s[i];
            head[first] = (x0 * c[i]) - (x1 * sine);
            head[second] = (x0 * sine) + (x1 * c[i]);
        }
    }

    private static void RotateReference(double[] values, int offset, int position, int half, RopeLayout layout, float[] cos, float[] sin)
    {
        for (int i = 0; i < half; i++)
        {
            int first = offset + (layout == RopeLayout.Adjacent ? 2 * i : i);
            int second = layout == RopeLayout.Adjacent ? first + 1 : first + half;
            double c = cos[(position * half) + i], s = sin[(position * half) + i];
            double x0 = values[first], x1 = values[second];
            values[first] = (x0 * c) - (x1 * s);
            values[second] = (x0 * s) + (x1 * c);
        }
    }

    private static double Dot(double[] a, int aOffset, double[] b, int bOffset, int length)
    {
        double sum = 0;
        for (int i = 0; i < length; i++)
        {
            sum += a[aOffset + i] * b[bOffset + i];
        }

        return sum;
    }

    // The [rows, cols] views of the flat scratch for one window length, cached while T stays the same.
    private Views ViewsFor(int t)
    {
        if (_views is null || _views.Tokens != t)
        {
            _views = new Views(this, t);
        }

        return _views;
    }

    private sealed class Views
    {
        public Views(IndexerWarmupLoss o, int t)
        {
            int d = o._config.Llama.Dim, hi = o._config.IndexerHeads, di = o._config.IndexerHeadDim;
            Tokens = t;
            XT = Matrix(o._xT, d, t);
            Q = Matrix(o._q, t, hi * di);
            QHeads = Matrix(o._qHeads, hi * t, di);
            QHeadsT = Matrix(o._qHeadsT, hi * di, t);
            QHead = new Tensor[hi];
            QHeadT = new Tensor[hi];
            Dots = new Tensor[hi];
            for (int j = 0; j < hi; j++)
            {
                QHead[j] = QHeads.Slice(j * t, t);
                QHeadT[j] = QHeadsT.Slice(j * di, di);
                Dots[j] = Matrix(o._dots, hi * t, t).Slice(j * t, t);
            }

            Kp = Matrix(o._kp, t, di);
            KHat = Matrix(o._kHat, t, di);
            K = Matrix(o._k, t, di);
            KT = Matrix(o._kT, di, t);
            W = Matrix(o._w, t, hi);
            Scores = Matrix(o._scores, t, t);
            G = Matrix(o._g, t, t);
            Gj = Matrix(o._gj, t, t);
            GjT = Matrix(o._gjT, t, t);
            Dqj = Matrix(o._dqj, t, di);
            Dkj = Matrix(o._dkj, t, di);
            Dk = Matrix(o._dk, t, di);
            Dq = Matrix(o._dq, t, hi * di);
            DqT = Matrix(o._dqT, hi * di, t);
            DwT = Matrix(o._dwT, hi, t);
            DkpT = Matrix(o._dkpT, di, t);
        }

        public int Tokens { get; }

        public Tensor XT { get; }

        public Tensor Q { get; }

        public Tensor QHeads { get; }

        public Tensor QHeadsT { get; }

        public Tensor[] QHead { get; }

        public Tensor[] QHeadT { get; }

        public Tensor[] Dots { get; }

        public Tensor Kp { get; }

        public Tensor KHat { get; }

        public Tensor K { get; }

        public Tensor KT { get; }

        public Tensor W { get; }

        public Tensor Scores { get; }

        public Tensor G { get; }

        public Tensor Gj { get; }

        public Tensor GjT { get; }

        public Tensor Dqj { get; }

        public Tensor Dkj { get; }

        public Tensor Dk { get; }

        public Tensor Dq { get; }

        public Tensor DqT { get; }

        public Tensor DwT { get; }

        public Tensor DkpT { get; }

        private static Tensor Matrix(Tensor flat, int rows, int cols) => flat.Slice(0, rows * cols).Reshape(rows, cols);
    }
}
