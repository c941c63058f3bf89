// Random small hybrid models for the property tests: patterns mixing A and M (MAMMA among them, all-A, all-M,
// short patterns repeated), attention with and without RoPE in both layouts and with grouped-query heads, Mamba-3
// SISO and MIMO (R = 2) with odd head widths, chunk sizes 1..8, the output norm on and off, tied or separate
// classifiers, odd widths, vocabularies and MLP widths, and token counts around the chunk sizes.
using FsCheck;
using FsCheck.Fluent;
using Kiln.Kernels;
using Kiln.Models.Hybrid;
using Kiln.Models.Mamba;
using Kiln.Models.Sampling;

namespace Kiln.Models.Tests.Hybrid;

/// <summary>A hybrid case: config, weight seed and the token sequence.</summary>
public sealed record HybridCase(HybridConfig Config, ulong Seed, int[] Tokens)
{
    public override string ToString()
    {
        HybridConfig c = Config;
        string attention = c.Attention is { } a ? $"H {a.Heads} Hkv {a.KvHeads} Dh {a.HeadDim} rope {a.Rope} {a.RopeLayout}" : "no attention";
        string mamba = c.Mamba3 is { } m ? $"R {m.Rank} P {m.HeadDim} N {m.DState} E {m.Expand} C {m.ChunkSize} norm {m.IsOutProjNorm}" : "no mamba";
        return $"pattern {c.LayerPattern} L {c.Layers} D {c.DModel} F {c.HiddenDim} V {c.VocabSize} tied {c.SharedClassifier}; {attention}; {mamba}; T {Tokens.Length} seed {Seed}";
    }
}

internal static class HybridCases
{
    private static readonly string[] s_patterns = ["MAMMA", "AM", "MA", "A", "M", "MMA", "AMM", "MAMMA", "AAM"];

    /// <summary>Random cases with up to <paramref name="maxTokens"/> tokens; <paramref name="ranks"/> picks SISO (1) and MIMO ranks.</summary>
    public static Gen<HybridCase> Cases(int[] ranks, int maxTokens = 24) =>
        from pattern in Gen.Elements(s_patterns)
        from repeat in Gen.Choose(1, 2)
        from width in Gen.Elements(4, 6, 8, 12)
        from hidden in Gen.Choose(1, 13)
        from vocab in Gen.Choose(2, 29)
        from tied in Gen.Elements(true, false)
        from kvHeads in Gen.Choose(1, 2)
        from share in Gen.Choose(1, 2)
        from headDim in Gen.Elements(2, 4, 6)
        from rope in Gen.Elements(true, false)
        from halfSplit in Gen.Elements(true, false)
        from rank in Gen.Elements(ranks)
        from p in Gen.Elements(2, 3, 4)
        from n in Gen.Elements(4, 8)
        from twice in Gen.Elements(true, false)
        from chunk in Gen.Choose(1, 8)
        from norm in Gen.Elements(true, false)
        from tokens in Gen.Choose(1, maxTokens)
        from seed in Gen.Choose(0, 1_000_000)
        let expand = twice ? 2 : 1
        let mambaWidth = (width * expand) % p == 0 ? width : p * 2
        let d = mambaWidth
        let layers = pattern.Length * (pattern.Length <= 3 ? repeat : 1)
        select new HybridCase(
            new HybridConfig
            {
                DModel = d,
                VocabSize = vocab,
                Layers = layers,
                SeqLen = 512,
                HiddenDim = hidden,
                SharedClassifier = tied,
                LayerPattern = pattern,
                Attention = new HybridAttentionConfig
                {
                    Heads = kvHeads * share, KvHeads = kvHeads, HeadDim = headDim, Rope = rope,
                    RopeLayout = halfSplit ? RopeLayout.HalfSplit : RopeLayout.Adjacent,
                },
                Mamba3 = new Mamba3Config
                {
                    DModel = d, DState = n, HeadDim = p, Expand = expand, ChunkSize = chunk, IsMimo = rank > 1, MimoRank = rank,
                    IsOutProjNorm = norm,
                },
            },
            (ulong)seed,
            Tokens(tokens, vocab, (ulong)seed));

    /// <summary>A fixed small MAMMA hybrid (D 8, GQA attention with RoPE, Mamba-3 of rank <paramref name="rank"/>, chunk 3).</summary>
    public static HybridConfig Small(int rank) => new()
    {
        DModel = 8,
        VocabSize = 23,
        Layers = 5,
        SeqLen = 512,
        HiddenDim = 11,
        LayerPattern = "MAMMA",
        Attention = new HybridAttentionConfig { Heads = 4, KvHeads = 2, HeadDim = 4 },
        Mamba3 = new Mamba3Config { DModel = 8, DState = 8, HeadDim = 4, ChunkSize = 3, IsMimo = rank > 1, MimoRank = rank },
    };

    /// <summary>Seeded random token ids in [0, vocab).</summary>
    public static int[] Tokens(int count, int vocab, ulong seed)
    {
        XorShiftRandom random = new(seed + 99);
        int[] tokens = new int[count];
        for (int i = 0; i < count; i++)
        {
            tokens[i] = (int)(random.NextUInt64() % (ulong)vocab);
        }

        return tokens;
    }

    /// <summary>max |actual - expected| and max |expected|.</summary>
    public static (double MaxErr, double MaxRef) Compare(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual)
    {
        double err = 0, max = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            err = Math.Max(err, Math.Abs(actual[i] - expected[i]));
            max = Math.Max(max, Math.Abs(expected[i]));
        }

        return (err, max);
    }
}
