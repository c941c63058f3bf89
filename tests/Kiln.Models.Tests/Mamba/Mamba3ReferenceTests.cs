// Checks of the float64 reference itself, so that the oracle is not trusted on its own word:
// - it equals an independent quadratic ("attention-like", Mamba-3 paper §3.1.3) form from a fresh state,
//   y_t = Σ_{s <= t} L[t, s]·(Q_t·K_s)·v_s + D·v_t with L[t, t] = γ_t and L[t, s] = e^{Σ_{u=s+1..t} Δ_u A_u}·(γ_s + (1-λ_{s+1})Δ_{s+1}),
//   summed over rank pairs for MIMO, with unwrapped angles (1e-9 relative: float64 rounding over O(T) terms);
// - the two rotation layouts are the same model up to a permutation of the B/C rows (1e-10 relative);
// - the decay activation: A(0) = -ln 2 (softplus) or -1 (heavy tail), A <= -A_floor everywhere, A(-100) = -A_floor
//   for softplus, α = e^{Δ·A} in (0, 1), the heavy tail is continuous with slope 1 at 0 and finite for |a| up to 1e4.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Kernels;
using Kiln.Models.Mamba;
using Xunit;

namespace Kiln.Models.Tests.Mamba;

public sealed class Mamba3ReferenceTests
{
    [Property(MaxTest = 60)]
    public Property Reference_EqualsTheQuadraticForm() => Prop.ForAll(
        Mamba3Cases.Cases([1, 2, 4], maxTokens: 20).ToArbitrary(),
        c =>
        {
            using Mamba3Weights weights = Mamba3Cases.Weights(c.Config, c.Seed);
            float[] input = Mamba3Cases.Input(c.Config, c.Tokens, c.Seed);
            double[] sequential = Mamba3Reference.Forward(weights, input, c.Tokens, new Mamba3ReferenceState(c.Config));
            double[] quadratic = Quadratic(weights, input, c.Tokens);
            (double err, double max) = Compare(sequential, quadratic);
            return (err <= 1e-9 * Math.Max(max, 1e-3)).Label($"{c}: err {err:E3} max {max:E3}");
        });

    [Property(MaxTest = 40)]
    public Property Layouts_AreAPermutationOfTheBcRows() => Prop.ForAll(
        Mamba3Cases.Cases([1, 2], maxTokens: 12).ToArbitrary(),
        c =>
        {
            Mamba3Config adjacent = c.Config with { RopeLayout = RopeLayout.Adjacent };
            Mamba3Config half = c.Config with { RopeLayout = RopeLayout.HalfSplit };
            using Mamba3Weights a = Mamba3Cases.Weights(adjacent, c.Seed);
            using Mamba3Weights h = Mamba3Cases.Weights(half, c.Seed);

            // Half-split dimension j holds adjacent dimension perm[j]: pair k is (2k, 2k+1) there and (k, k + N/2) here.
            int n = adjacent.DState, pairs = adjacent.AngleCount;
            int[] perm = new int[n];
            bool[] used = new bool[n];
            for (int k = 0; k < pairs; k++)
            {
                perm[k] = 2 * k;
                perm[k + (n / 2)] = (2 * k) + 1;
                used[k] = used[k + (n / 2)] = true;
            }

            int next = 2 * pairs;
            for (int j = 0; j < n; j++)
            {
                if (!used[j])
                {
                    perm[j] = next++;
                }
            }

            a.InProj.AsSpan().CopyTo(h.InProj.AsSpan());
            Permute(a.InProj, h.InProj, adjacent.DModel, n, perm, adjacent.BOffset, adjacent.BcDim);
            Permute(a.InProj, h.InProj, adjacent.DModel, n, perm, adjacent.COffset, adjacent.BcDim);
            Permute(a.BBias, h.BBias, 1, n, perm, 0, (int)a.BBias.Length);
            Permute(a.CBias, h.CBias, 1, n, perm, 0, (int)a.CBias.Length);
            Permute(a.BNorm, h.BNorm, 1, n, perm, 0, n);
            Permute(a.CNorm, h.CNorm, 1, n, perm, 0, n);
            float[] input = Mamba3Cases.Input(adjacent, c.Tokens, c.Seed);
            double[] ya = Mamba3Reference.Forward(a, input, c.Tokens, new Mamba3ReferenceState(adjacent));
            double[] yh = Mamba3Reference.Forward(h, input, c.Tokens, new Mamba3ReferenceState(half));
            (double err, double max) = Compare(ya, yh);
            return (err <= 1e-10 * Math.Max(max, 1e-3)).Label($"{c}: err {err:E3} max {max:E3}");
        });

    [Fact]
    public void Decay_FollowsTheActivationAndTheFloor()
    {
        const double floor = 1e-4;
        Assert.Equal(-Math.Log(2), Mamba3Reference.Decay(Mamba3AActivation.Softplus, 0, floor), 15);
        Assert.Equal(-1, Mamba3Reference.Decay(Mamba3AActivation.HeavyTail, 0, floor), 15);
        Assert.Equal(-floor, Mamba3Reference.Decay(Mamba3AActivation.Softplus, -100, floor));
        Assert.Equal(-floor, Mamba3Reference.Decay(Mamba3AActivation.HeavyTail, -1e6, floor));
        Assert.Equal(-3, Mamba3Reference.Decay(Mamba3AActivation.HeavyTail, 2, floor), 15);
        Assert.Equal(-0.5, Mamba3Reference.Decay(Mamba3AActivation.HeavyTail, -1, floor), 15);
        foreach (Mamba3AActivation activation in new[] { Mamba3AActivation.Softplus, Mamba3AActivation.HeavyTail })
        {
            for (double a = -1e4; a <= 1e4; a += 7.3)
            {
                double decay = Mamba3Reference.Decay(activation, a, floor);
                Assert.True(decay <= -floor && double.IsFinite(decay), $"{activation} A({a}) = {decay}");
                if (Math.Abs(a) <= 100)
                {
                    foreach (double dt in new[] { 1e-3, 0.1, 1.0 })
                    {
                        double alpha = Math.Exp(dt * decay);
                        Assert.True(alpha > 0 && alpha < 1, $"{activation} α({a}, {dt}) = {alpha}");
                    }
                }
            }
        }

        // The heavy tail: continuous at 0 with slope 1 from both sides.
        const double step = 1e-7;
        double left = -Mamba3Reference.Decay(Mamba3AActivation.HeavyTail, -step, floor);
        double right = -Mamba3Reference.Decay(Mamba3AActivation.HeavyTail, step, floor);
        Assert.Equal(1, (right - 1) / step, 5);
        Assert.Equal(1, (1 - left) / step, 5);
    }

    [Fact]
    public void Softplus_IsStableForLargeArguments()
    {
        Assert.Equal(1000, Mamba3Reference.Softplus(1000), 12);
        Assert.Equal(Math.Log(2), Mamba3Reference.Softplus(0), 15);
        Assert.Equal(1, Mamba3Reference.Softplus(-50) / Math.Exp(-50), 12);
        Assert.Equal(0.5, Mamba3Reference.Wrap(0.5 + (4 * Math.PI)), 12);
        Assert.Equal((2 * Math.PI) - 0.25, Mamba3Reference.Wrap(-0.25), 12);
    }

    // Writes into dst the N-blocks of rows [offset, offset + count) permuted: dst row j of a block = src row perm[j].
    private static void Permute(Tensor src, Tensor dst, int rowWidth, int n, int[] perm, int offset, int count)
    {
        Span<float> s = src.AsSpan(), d = dst.AsSpan();
        for (int block = offset; block < offset + count; block += n)
        {
            for (int j = 0; j < n; j++)
            {
                s.Slice((block + perm[j]) * rowWidth, rowWidth).CopyTo(d.Slice((block + j) * rowWidth, rowWidth));
            }
        }
    }

    private static (double Err, double Max) Compare(double[] expected, double[] actual)
    {
        double err = 0, max = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            err = Math.Max(err, Math.Abs(actual[i] - expected[i]));
            max = Math.Max(max, Math.Abs(expected[i]));
        }

        return (err, max);
    }

    // The quadratic form from a zero state, written independently of Mamba3Reference (absolute angles, no wrap).
    private static double[] Quadratic(Mamba3Weights w, float[] input, int tokens)
    {
        Mamba3Config c = w.Config;
        int d = c.DModel, h = c.Heads, p = c.HeadDim, n = c.DState, r = c.Rank, k = c.AngleCount;
        float[] inProj = w.InProj.ToArray(), outProj = w.OutProj.ToArray(), dtBias = w.DtBias.ToArray();
        float[] bBias = w.BBias.ToArray(), cBias = w.CBias.ToArray(), bNorm = w.BNorm.ToArray(), cNorm = w.CNorm.ToArray(), skip = w.D.ToArray();
        float[]? mx = w.MimoX?.ToArray(), mz = w.MimoZ?.ToArray(), mo = w.MimoO?.ToArray(), norm = w.Norm?.ToArray();
        double[][] proj = new double[tokens][];
        for (int t = 0; t < tokens; t++)
        {
            proj[t] = new double[c.InProjDim];
            for (int row = 0; row < c.InProjDim; row++)
            {
                for (int i = 0; i < d; i++)
                {
                    proj[t][row] += (double)inProj[(row * d) + i] * input[(t * d) + i];
                }
            }
        }

        double[] o = new double[tokens * c.DInner];
        for (int head = 0; head < h; head++)
        {
            int group = head / (h / c.Groups);
            double[] dt = new double[tokens + 1], logDecay = new double[tokens], lambda = new double[tokens + 1];
            double[,] theta = new double[tokens, k];
            double[,,] keys = new double[tokens, r, n], queries = new double[tokens, r, n], values = new double[tokens, r, p];
            for (int t = 0; t < tokens; t++)
            {
                double[] row = proj[t];
                double x = row[c.DtOffset + head] + dtBias[head];
                dt[t] = Math.Log(1 + Math.Exp(x));
                double a = row[c.AOffset + head];
                double f = c.AActivation == Mamba3AActivation.Softplus ? Math.Log(1 + Math.Exp(a)) : a >= 0 ? 1 + a : 1 / (1 - a);
                logDecay[t] = dt[t] * Math.Min(-f, -c.AFloor);
                lambda[t] = 1 / (1 + Math.Exp(-row[c.TrapOffset + head]));
                for (int j = 0; j < k; j++)
                {
                    theta[t, j] = (t == 0 ? 0 : theta[t - 1, j]) + (dt[t] * Math.PI * Math.Tanh(row[c.AngleOffset + j]));
                }

                for (int rank = 0; rank < r; rank++)
                {
                    int source = (rank * c.Groups) + group;
                    double[] key = Rotated(row, c.BOffset + (source * n), bNorm, bBias, ((head * r) + rank) * n, theta, t, c);
                    double[] query = Rotated(row, c.COffset + (source * n), cNorm, cBias, ((head * r) + rank) * n, theta, t, c);
                    for (int j = 0; j < n; j++)
                    {
                        keys[t, rank, j] = key[j];
                        queries[t, rank, j] = query[j];
                    }

                    for (int e = 0; e < p; e++)
                    {
                        values[t, rank, e] = row[c.XOffset + (head * p) + e] * (mx is null ? 1 : mx[(((head * r) + rank) * p) + e]);
                    }
                }
            }

            for (int t = 0; t < tokens; t++)
            {
                double[,] y = new double[r, p];
                for (int s = 0; s <= t; s++)
                {
                    double mask;
                    if (s == t)
                    {
                        mask = lambda[t] * dt[t];
                    }
                    else
                    {
                        double sum = 0;
                        for (int u = s + 1; u <= t; u++)
                        {
                            sum += logDecay[u];
                        }

                        mask = Math.Exp(sum) * ((lambda[s] * dt[s]) + ((1 - lambda[s + 1]) * dt[s + 1]));
                    }

                    for (int ri = 0; ri < r; ri++)
                    {
                        for (int rj = 0; rj < r; rj++)
                        {
                            double score = 0;
                            for (int j = 0; j < n; j++)
                            {
                                score += queries[t, ri, j] * keys[s, rj, j];
                            }

                            for (int e = 0; e < p; e++)
                            {
                                y[ri, e] += mask * score * values[s, rj, e];
                            }
                        }
                    }
                }

                for (int ri = 0; ri < r; ri++)
                {
                    double squares = 0;
                    for (int e = 0; e < p; e++)
                    {
                        y[ri, e] += skip[head] * values[t, ri, e];
                        squares += y[ri, e] * y[ri, e];
                    }

                    for (int e = 0; e < p; e++)
                    {
                        int wi = (((head * r) + ri) * p) + e;
                        double normed = norm is null ? y[ri, e] : y[ri, e] / Math.Sqrt((squares / p) + c.NormEps) * norm[(head * p) + e];
                        double z = proj[t][c.ZOffset + (head * p) + e] * (mz is null ? 1 : mz[wi]);
                        o[(t * c.DInner) + (head * p) + e] += normed * z / (1 + Math.Exp(-z)) * (mo is null ? 1 : mo[wi]);
                    }
                }
            }
        }

        double[] output = new double[tokens * d];
        for (int t = 0; t < tokens; t++)
        {
            for (int row = 0; row < d; row++)
            {
                for (int i = 0; i < c.DInner; i++)
                {
                    output[(t * d) + row] += outProj[(row * c.DInner) + i] * o[(t * c.DInner) + i];
                }
            }
        }

        return output;
    }

    private static double[] Rotated(double[] row, int at, float[] weight, float[] bias, int biasAt, double[,] theta, int t, Mamba3Config c)
    {
        int n = c.DState;
        double mean = 0;
        for (int j = 0; j < n; j++)
        {
            mean += row[at + j] * row[at + j] / n;
        }

        double[] v = new double[n];
        for (int j = 0; j < n; j++)
        {
            v[j] = (row[at + j] / Math.Sqrt(mean + c.NormEps) * weight[j]) + bias[biasAt + j];
        }

        for (int pair = 0; pair < c.AngleCount; pair++)
        {
            (int i0, int i1) = c.AngleLayout == RopeLayout.Adjacent ? (2 * pair, (2 * pair) + 1) : (pair, pair + (n / 2));
            double cos = Math.Cos(theta[t, pair]), sin = Math.Sin(theta[t, pair]);
            (v[i0], v[i1]) = ((v[i0] * cos) - (v[i1] * sin), (v[i0] * sin) + (v[i1] * cos));
        }

        return v;
    }
}
