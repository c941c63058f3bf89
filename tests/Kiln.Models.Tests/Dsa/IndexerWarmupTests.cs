// The indexer warm-up loss and its hand-written gradient: the float32 loss against the float64 reference, and every
// parameter's gradient against central finite differences of the float64 reference, over random small shapes (size 1,
// odd sizes, both RoPE layouts, rope dims 0..Di). Values come from integer grids. ReLU kinks are avoided by
// construction: a case is redrawn (from its own seed) until every causal dot product q[t, j]·k[s] is at least 0.02 away
// from 0, and every finite difference checks that no dot changed sign.
using FsCheck;
using FsCheck.Fluent;
using Kiln.Kernels;
using Kiln.Models.Dsa;
using Kiln.Models.Llama;
using Kiln.Models.Sampling;
using Xunit;

namespace Kiln.Models.Tests.Dsa;

public sealed class IndexerWarmupTests
{
    // Tolerances: loss |L32 - L64| <= 1e-4·(1 + L64); gradient |g32 - gFD| <= 3e-3·max|gFD| + 1e-5 per coordinate.
    private const double LossTolerance = 1e-4;
    private const double GradientTolerance = 3e-3;

    [Fact]
    public void Gradient_MatchesCentralFiniteDifferences()
    {
        Gen<(int D, int Hi, int Di, int Half, bool Adjacent, int T, int Seed)> cases =
            from d in Gen.Choose(1, 7)
            from hi in Gen.Choose(1, 3)
            from di in Gen.Choose(1, 6)
            from half in Gen.Choose(0, di / 2)
            from adjacent in ArbMap.Default.GeneratorFor<bool>()
            from t in Gen.Choose(1, 6)
            from seed in Gen.Choose(0, int.MaxValue)
            select (d, hi, di, half, adjacent, t, seed);
        Prop.ForAll(cases.ToArbitrary(), c =>
        {
            DsaConfig shape = Shape(c.D, c.Hi, c.Di, 2 * c.Half, c.Adjacent ? RopeLayout.Adjacent : RopeLayout.HalfSplit);
            CheckCase(shape, c.T, c.Seed);
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(40));
    }

    [Fact]
    public void Gradient_MatchesFiniteDifferences_AtAVectorWideSize()
    {
        // Di = 17 and D = 19 are not multiples of 16: the matrix products' tails run too.
        CheckCase(Shape(19, 2, 17, 8, RopeLayout.HalfSplit), 21, 7);
    }

    [Fact]
    public void Compute_RejectsShapesThatDoNotFit()
    {
        DsaConfig shape = Shape(4, 2, 4, 2, RopeLayout.Adjacent);
        using IndexerWarmupLoss loss = new(shape, 3);
        using DsaIndexerWeights parameters = RandomIndexer(shape, 1);
        using Tensor tooLong = Tensor.Empty([4, 4]);
        ArgumentException e = Assert.Throws<ArgumentException>(() => loss.Compute(parameters, tooLong, new float[16], null));
        Assert.Contains("1 <= T <= 3", e.Message, StringComparison.Ordinal);
        using Tensor x = Tensor.Empty([2, 4]);
        e = Assert.Throws<ArgumentException>(() => loss.Compute(parameters, x, new float[3], null));
        Assert.Contains("p must be [T, T]", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => Shape(4, 2, 4, 3, RopeLayout.Adjacent));
    }

    private static void CheckCase(DsaConfig shape, int t, int seed)
    {
        // Draw a case whose dot products all clear the ReLU kink by 0.02.
        Random random = new(seed);
        double[] flat, x, p;
        int attempts = 0;
        while (true)
        {
            (flat, x, p) = Draw(shape, t, random);
            if (MinAbsDot(shape, flat, x, t) >= 0.02)
            {
                break;
            }

            Assert.True(++attempts < 200, $"no kink-free case drawn for {shape}, T {t}, seed {seed}");
        }

        // The float32 loss and gradient.
        using DsaIndexerWeights parameters = DsaIndexerWeights.FromFlat(shape, Array.ConvertAll(flat, v => (float)v));
        using DsaIndexerWeights gradients = new DsaIndexerWeights(shape);
        using IndexerWarmupLoss loss = new(shape, t + 2);
        using Tensor xTensor = Tensor.FromArray(Array.ConvertAll(x, v => (float)v), [t, shape.Llama.Dim]);
        double loss32 = loss.Compute(parameters, xTensor, Array.ConvertAll(p, v => (float)v), gradients);
        double loss64 = IndexerWarmupLoss.ReferenceLoss(shape, flat, x, p, t, out bool[] signs);
        Assert.True(
            Math.Abs(loss32 - loss64) <= LossTolerance * (1 + loss64),
            $"loss {loss32} vs reference {loss64} ({shape}, T {t}, seed {seed})");
        Assert.True(loss64 >= -1e-12, $"KL {loss64} is negative");

        // Central differences of the float64 reference, coordinate by coordinate, never across a kink.
        float[] analytic = gradients.Flatten();
        double[] numeric = new double[flat.Length];
        for (int i = 0; i < flat.Length; i++)
        {
            double h = 1e-6, saved = flat[i];
            flat[i] = saved + h;
            double up = IndexerWarmupLoss.ReferenceLoss(shape, flat, x, p, t, out bool[] upSigns);
            flat[i] = saved - h;
            double down = IndexerWarmupLoss.ReferenceLoss(shape, flat, x, p, t, out bool[] downSigns);
            flat[i] = saved;
            Assert.True(
                upSigns.AsSpan().SequenceEqual(signs) && downSigns.AsSpan().SequenceEqual(signs),
                $"a dot product changed sign within ±{h} of parameter {i}");
            numeric[i] = (up - down) / (2 * h);
        }

        double scale = numeric.Max(Math.Abs);
        for (int i = 0; i < flat.Length; i++)
        {
            Assert.True(
                Math.Abs(analytic[i] - numeric[i]) <= (GradientTolerance * scale) + 1e-5,
                $"gradient {i}: {analytic[i]} vs finite difference {numeric[i]} (max {scale}; {shape}, T {t}, seed {seed})");
        }
    }

    // Parameters on grids (projections i/16 in [-1, 1], LayerNorm weight i/8 in [-1.5, 1.5], bias i/16), x on i/8 in
    // [-2, 2], and p a causal distribution from integer weights 0..4 (the diagonal at least 1).
    private static (double[] Flat, double[] X, double[] P) Draw(DsaConfig shape, int t, Random random)
    {
        int d = shape.Llama.Dim, di = shape.IndexerHeadDim;
        int oGamma = (shape.IndexerQueryDim * d) + (shape.IndexerHeads * d) + (di * d), oBeta = oGamma + di;
        double[] flat = new double[DsaIndexerWeights.ParameterCount(shape)];
        for (int i = 0; i < flat.Length; i++)
        {
            flat[i] = i >= oGamma && i < oBeta ? random.Next(-12, 13) / 8.0 : random.Next(-16, 17) / 16.0;
        }

        double[] x = new double[t * d];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = random.Next(-16, 17) / 8.0;
        }

        double[] p = new double[t * t];
        for (int row = 0; row < t; row++)
        {
            double sum = 0;
            for (int s = 0; s <= row; s++)
            {
                p[(row * t) + s] = s == row ? random.Next(1, 5) : random.Next(0, 5);
                sum += p[(row * t) + s];
            }

            for (int s = 0; s <= row; s++)
            {
                p[(row * t) + s] /= sum;
            }
        }

        return (flat, x, p);
    }

    // The smallest |q[t, j]·k[s]| over causal pairs, computed in float64 the way the reference computes the dots.
    private static double MinAbsDot(DsaConfig shape, double[] flat, double[] x, int t)
    {
        int d = shape.Llama.Dim, hi = shape.IndexerHeads, di = shape.IndexerHeadDim, half = shape.IndexerRopeDims / 2;
        int oWk = (shape.IndexerQueryDim * d) + (hi * d), oGamma = oWk + (di * d), oBeta = oGamma + di;
        (Tensor cos, Tensor sin) = half > 0 ? Ops.RopeTables(t, shape.IndexerRopeDims, shape.Llama.RopeTheta) : (Tensor.Empty([1]), Tensor.Empty([1]));
        float[] c = cos.ToArray(), s = sin.ToArray();
        cos.Dispose();
        sin.Dispose();
        double[] q = new double[t * hi * di], k = new double[t * di];
        for (int token = 0; token < t; token++)
        {
            for (int o = 0; o < hi * di; o++)
            {
                q[(token * hi * di) + o] = Enumerable.Range(0, d).Sum(e => flat[(o * d) + e] * x[(token * d) + e]);
            }

            double[] kp = Enumerable.Range(0, di).Select(o => Enumerable.Range(0, d).Sum(e => flat[oWk + (o * d) + e] * x[(token * d) + e])).ToArray();
            double mean = kp.Average(), rstd = 1.0 / Math.Sqrt(kp.Select(v => (v - mean) * (v - mean)).Average() + shape.IndexerNormEps);
            for (int o = 0; o < di; o++)
            {
                k[(token * di) + o] = ((kp[o] - mean) * rstd * flat[oGamma + o]) + flat[oBeta + o];
            }

            for (int j = 0; j <= hi; j++)
            {
                // j < hi: query head j; j = hi: the key.
                double[] values = j < hi ? q : k;
                int offset = j < hi ? ((token * hi) + j) * di : token * di;
                for (int i = 0; i < half; i++)
                {
                    int first = offset + (shape.IndexerRopeLayout == RopeLayout.Adjacent ? 2 * i : i);
                    int second = shape.IndexerRopeLayout == RopeLayout.Adjacent ? first + 1 : first + half;
                    double x0 = values[first], x1 = values[second], cc = c[(token * half) + i], ss = s[(token * half) + i];
                    values[first] = (x0 * cc) - (x1 * ss);
                    values[second] = (x0 * ss) + (x1 * cc);
                }
            }
        }

        double min = double.PositiveInfinity;
        for (int token = 0; token < t; token++)
        {
            for (int j = 0; j < hi; j++)
            {
                for (int key = 0; key <= token; key++)
                {
                    double dot = Enumerable.Range(0, di).Sum(e => q[(((token * hi) + j) * di) + e] * k[(key * di) + e]);
                    min = Math.Min(min, Math.Abs(dot));
                }
            }
        }

        return min;
    }

    // A one-layer DSA config whose indexer reads width d (the Llama part only sizes x).
    private static DsaConfig Shape(int d, int hi, int di, int ropeDims, RopeLayout layout)
    {
        DsaConfig config = new()
        {
            Llama = new LlamaConfig { Dim = d, HiddenDim = 4, Layers = 1, Heads = 1, KvHeads = 1, VocabSize = 4, SeqLen = 32, HeadDim = 2 },
            IndexerHeads = hi,
            IndexerHeadDim = di,
            IndexerRopeDims = ropeDims,
            IndexerRopeLayout = layout,
            TopK = 1,
            Pattern = IndexCachePattern.AllFull(1),
        };
        config.Validate();
        return config;
    }

    // Seeded random indexer weights for a config.
    private static DsaIndexerWeights RandomIndexer(DsaConfig config, ulong seed)
    {
        DsaIndexerWeights weights = new(config);
        XorShiftRandom random = new(seed);
        weights.Randomize(ref random);
        return weights;
    }
}
