// KV-cache compression (ChunkKV, SnapKV, StreamingLLM) against references: a budget at or above the prompt changes
// nothing, bit for bit; the selection keeps whole chunks (the best ones) plus the window, within the budget; followers
// of the reuse pattern hold exactly their leader's positions; decode after compression equals a float64 forward pass
// that masks the dropped positions instead of deleting them (original RoPE positions); the window scores equal a
// float64 reference; SnapKV (c = 1) and StreamingLLM keep what they should; bad budgets fail with clear messages.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Kernels;
using Kiln.Models.KvCompression;
using Kiln.Models.Llama;
using Kiln.Models.Tests.Dsa;
using Xunit;

namespace Kiln.Models.Tests.KvCompression;

public sealed class KvCompressionTests
{
    [Property(MaxTest = 20)]
    public Property BudgetAtOrAbovePrompt_GivesBitwiseTheSameLogits() => Prop.ForAll(
        Cases().ToArbitrary(),
        c =>
        {
            using LlamaWeights weights = RandomLlamaWeights.Create(c.Config, c.Seed);
            using LlamaSession plain = new(weights, new SessionOptions());
            KvBudget budget = KvBudget.Tokens(c.Prompt.Length + (c.Seed % 2 == 0 ? 0 : 1000));
            using KvCompressedSession compressed = new(weights, new SessionOptions(), KvCompressionOptions.ChunkKv(budget, c.Chunk, c.Reuse, c.Window));
            bool same = plain.Forward(c.Prompt).SequenceEqual(compressed.Forward(c.Prompt));
            foreach (int token in c.Continuation)
            {
                same &= plain.Forward([token]).SequenceEqual(compressed.Forward([token]));
            }

            return (same && compressed.Compressed && compressed.CacheLength(0) == c.Prompt.Length + c.Continuation.Length)
                .Label(c.ToString());
        });

    [Property(MaxTest = 200)]
    public Property Select_KeepsTheBestWholeChunksAndTheWindow() => Prop.ForAll(
        (from t in Gen.Choose(2, 300)
         from w in Gen.Choose(1, t - 1)
         from chunk in Gen.Choose(1, 20)
         from extra in Gen.Choose(0, 300)
         from seed in Gen.Choose(0, 1_000_000)
         select (T: t, W: w, Chunk: chunk, Budget: w + chunk + extra, Seed: seed)).ToArbitrary(),
        c =>
        {
            Random random = new(c.Seed);
            int prefix = c.T - c.W;
            double[] scores = Enumerable.Range(0, prefix).Select(_ => random.NextDouble()).ToArray();
            int[] kept = KvSelection.Select(scores, c.T, c.W, c.Chunk, c.Budget);
            if (c.Budget >= c.T)
            {
                return kept.SequenceEqual(Enumerable.Range(0, c.T)).Label($"{c}: budget ≥ T keeps all");
            }

            // Ascending, within budget, the window at the end.
            bool ascending = kept.Zip(kept.Skip(1)).All(p => p.First < p.Second);
            bool window = kept[^c.W..].SequenceEqual(Enumerable.Range(prefix, c.W));
            int chunks = (prefix + c.Chunk - 1) / c.Chunk;
            HashSet<int> chosen = kept.Where(s => s < prefix).Select(s => s / c.Chunk).ToHashSet();

            // Whole chunks only, as many as the budget allows, and none left out scores more than one kept.
            bool whole = chosen.All(id => Enumerable.Range(id * c.Chunk, Math.Min(prefix, (id + 1) * c.Chunk) - (id * c.Chunk)).All(kept.Contains));
            bool count = chosen.Count == Math.Min(chunks, (c.Budget - c.W) / c.Chunk);
            double ChunkScore(int id) => scores.Skip(id * c.Chunk).Take(c.Chunk).Sum();
            double worstKept = chosen.Count == 0 ? double.PositiveInfinity : chosen.Min(ChunkScore);
            bool best = Enumerable.Range(0, chunks).Where(id => !chosen.Contains(id)).All(id => ChunkScore(id) <= worstKept);
            return (ascending && window && whole && count && best && kept.Length <= c.Budget)
                .Label($"{c}: ascending {ascending} window {window} whole {whole} count {count} best {best} kept {kept.Length}");
        });

    [Property(MaxTest = 25)]
    public Property DecodeAfterCompression_MatchesAMaskedFloat64Forward() => Prop.ForAll(
        Cases().ToArbitrary(),
        c =>
        {
            using LlamaWeights weights = RandomLlamaWeights.Create(c.Config, c.Seed);
            KvCompressionOptions options = c.Method switch
            {
                KvCompressionMethod.SnapKv => KvCompressionOptions.SnapKv(KvBudget.Tokens(c.Budget), c.Pooling, c.Window),
                KvCompressionMethod.StreamingLlm => KvCompressionOptions.StreamingLlm(KvBudget.Tokens(c.Budget), 2, c.Window),
                _ => KvCompressionOptions.ChunkKv(KvBudget.Tokens(c.Budget), c.Chunk, c.Reuse, c.Window),
            };
            using KvCompressedSession session = new(weights, new SessionOptions(), options);
            float[] logits = session.Forward(c.Prompt).ToArray();
            foreach (int token in c.Continuation)
            {
                logits = session.Forward([token]).ToArray();
            }

            // The reference attends over the whole sequence with every layer masked to what it kept: prompt rows see
            // every earlier prompt position, decode rows the kept prompt positions plus the decoded ones.
            int t = c.Prompt.Length, total = t + c.Continuation.Length;
            int[] tokens = [.. c.Prompt, .. c.Continuation];
            int[][] masks = new int[c.Config.Layers][];
            for (int l = 0; l < masks.Length; l++)
            {
                int[] kept = session.KeptPositions(l);
                if (!kept.Where(s => s >= t).SequenceEqual(Enumerable.Range(t, c.Continuation.Length)))
                {
                    return false.Label($"{c}: layer {l} does not end with the decoded positions {t}..{total - 1}: [{string.Join(",", kept)}]");
                }

                masks[l] = Enumerable.Repeat(-1, total * total).ToArray();
                for (int row = 0; row < total; row++)
                {
                    int[] visible = row < t ? [.. Enumerable.Range(0, row + 1)] : [.. kept.Where(s => s <= row)];
                    visible.CopyTo(masks[l], row * total);
                }
            }

            DenseReference.Result reference = DenseReference.Forward(weights, tokens, masks, total);

            // 1e-3 relative to (1 + |logit|): float32 session vs float64 reference over the same visible positions.
            double worst = reference.LastLogits.Zip(logits).Max(p => Math.Abs(p.First - p.Second) / (1 + Math.Abs(p.First)));
            return (worst <= 1e-3 && session.Position == total).Label($"{c}: worst {worst}");
        });

    [Property(MaxTest = 30)]
    public Property WindowScores_MatchAFloat64Reference() => Prop.ForAll(
        (from kvHeads in Gen.Choose(1, 3)
         from perKv in Gen.Choose(1, 3)
         from headDim in Gen.Choose(1, 19)
         from t in Gen.Choose(2, 90)
         from w in Gen.Choose(1, t - 1)
         from spare in Gen.Choose(0, 5)
         from seed in Gen.Choose(0, 1_000_000)
         select (KvHeads: kvHeads, Heads: kvHeads * perKv, HeadDim: headDim, T: t, W: w, Capacity: t + spare, Seed: seed)).ToArbitrary(),
        c =>
        {
            Random random = new(c.Seed);
            float[] queries = Enumerable.Range(0, c.W * c.Heads * c.HeadDim).Select(_ => (float)((random.NextDouble() * 4) - 2)).ToArray();
            float[] keys = Enumerable.Range(0, c.KvHeads * c.HeadDim * c.Capacity).Select(_ => (float)((random.NextDouble() * 4) - 2)).ToArray();
            double[] actual = KvSelection.WindowScores(queries, c.W, c.Heads, keys, c.KvHeads, c.HeadDim, c.Capacity, c.T);
            double[] expected = KvSelection.WindowScoresReference(queries, c.W, c.Heads, keys, c.KvHeads, c.HeadDim, c.Capacity, c.T);

            // 1e-5 absolute per position: each score sums w·H probabilities computed in float32.
            double worst = expected.Zip(actual).Select(p => Math.Abs(p.First - p.Second)).DefaultIfEmpty(0).Max();
            return (worst <= 1e-5 * c.W * c.Heads).Label($"{c}: worst {worst}");
        });

    [Fact]
    public void Followers_HoldExactlyTheirLeadersPositions()
    {
        LlamaConfig config = SmallConfig(layers: 5, seqLen: 80);
        using LlamaWeights weights = RandomLlamaWeights.Create(config, 11);
        int[] prompt = Tokens(70, config.VocabSize, 3);
        using KvCompressedSession reuse = new(weights, new SessionOptions(), KvCompressionOptions.ChunkKv(KvBudget.Tokens(30), 4, reuse: 2, window: 6));
        using KvCompressedSession own = new(weights, new SessionOptions(), KvCompressionOptions.ChunkKv(KvBudget.Tokens(30), 4, reuse: 1, window: 6));
        reuse.Forward(prompt);
        own.Forward(prompt);

        // Groups {0, 1}, {2, 3}, {4}: three layers score; each follower holds its leader's positions.
        Assert.Equal("FSFSF", reuse.Pattern.ToString());
        Assert.Equal(3, reuse.LastCompression!.ScoredLayers);
        Assert.Equal(reuse.KeptPositions(0), reuse.KeptPositions(1));
        Assert.Equal(reuse.KeptPositions(2), reuse.KeptPositions(3));

        // Leaders select what they select without reuse; without reuse the layers do not all agree.
        Assert.Equal(own.KeptPositions(0), reuse.KeptPositions(0));
        Assert.Equal(own.KeptPositions(2), reuse.KeptPositions(2));
        Assert.Equal(own.KeptPositions(4), reuse.KeptPositions(4));
        Assert.Equal(5, own.LastCompression!.ScoredLayers);
        Assert.Contains(Enumerable.Range(1, 4), l => !own.KeptPositions(l).SequenceEqual(own.KeptPositions(l - 1)));
    }

    [Fact]
    public void APromptInPieces_SelectsWhatAPromptInOnePieceSelects()
    {
        LlamaConfig config = SmallConfig(layers: 3, seqLen: 80);
        using LlamaWeights weights = RandomLlamaWeights.Create(config, 21);
        int[] prompt = Tokens(75, config.VocabSize, 13);
        KvCompressionOptions options = KvCompressionOptions.ChunkKv(KvBudget.Tokens(31), 5, window: 11) with { CompressAfterPrompt = false };
        using KvCompressedSession whole = new(weights, new SessionOptions(), options);
        using KvCompressedSession pieces = new(weights, new SessionOptions(), options);
        whole.Forward(prompt);
        whole.Compress();

        // Pieces of 7, 3, then single tokens: the window's queries span several calls.
        pieces.Forward(prompt.AsSpan(0, 7));
        pieces.Forward(prompt.AsSpan(7, 3));
        for (int i = 10; i < prompt.Length; i++)
        {
            pieces.Forward(prompt.AsSpan(i, 1));
        }

        pieces.Compress();
        for (int l = 0; l < 3; l++)
        {
            Assert.Equal(whole.KeptPositions(l), pieces.KeptPositions(l));
        }

        Assert.Equal(31, whole.CacheLength(0));
    }

    [Fact]
    public void SnapKv_KeepsTheTopScoredTokensOfTheWindowsAttention()
    {
        LlamaConfig config = SmallConfig(layers: 2, seqLen: 64);
        using LlamaWeights weights = RandomLlamaWeights.Create(config, 5);
        int[] prompt = Tokens(60, config.VocabSize, 9);
        using KvCompressedSession session = new(weights, new SessionOptions(), KvCompressionOptions.SnapKv(KvBudget.Tokens(20), window: 8));
        session.Forward(prompt);

        // The float64 reference scores of layer 0 from the float64 forward pass's queries and keys, then token top-12.
        double[] scores = ReferenceWindowScores(weights, prompt, layer: 0, window: 8);
        int[] top = [.. scores.Select((s, i) => (s, i)).OrderByDescending(p => p.s).Take(12).Select(p => p.i).Order()];
        Assert.Equal([.. top, .. Enumerable.Range(52, 8)], session.KeptPositions(0));
        Assert.Equal(20, session.CacheLength(0));
    }

    [Fact]
    public void StreamingLlm_KeepsTheSinksAndTheMostRecentTokens()
    {
        LlamaConfig config = SmallConfig(layers: 3, seqLen: 64);
        using LlamaWeights weights = RandomLlamaWeights.Create(config, 5);
        using KvCompressedSession session = new(weights, new SessionOptions(), KvCompressionOptions.StreamingLlm(KvBudget.Tokens(24), sinks: 4, window: 8));
        session.Forward(Tokens(50, config.VocabSize, 2));
        session.Forward([1]);
        int[] expected = [.. Enumerable.Range(0, 4), .. Enumerable.Range(30, 20), 50];
        for (int l = 0; l < 3; l++)
        {
            Assert.Equal(expected, session.KeptPositions(l));
        }

        Assert.Equal(51, session.Position);
    }

    [Fact]
    public void AFractionalBudget_KeepsThatShareOfThePrompt()
    {
        LlamaConfig config = SmallConfig(layers: 2, seqLen: 128);
        using LlamaWeights weights = RandomLlamaWeights.Create(config, 5);
        using KvCompressedSession session = new(weights, new SessionOptions(), KvCompressionOptions.ChunkKv(KvBudget.Parse("0.25"), 4, window: 8));
        session.Forward(Tokens(100, config.VocabSize, 4));

        // floor(0.25 · 100) = 25 tokens: 8 window + 4 chunks of 4 = 24 kept.
        Assert.Equal(25, session.LastCompression!.Budget);
        Assert.Equal(24, session.CacheLength(0));
    }

    [Fact]
    public void OnIlgpuCpu_KeepsTheCpusPositionsAndGivesItsLogits()
    {
        LlamaConfig config = SmallConfig(layers: 3, seqLen: 48);
        using LlamaWeights weights = RandomLlamaWeights.Create(config, 8);
        using Kiln.Devices.IlgpuDevice device = Kiln.Devices.IlgpuDevice.CreateCpuAccelerator(ILGPU.OptimizationLevel.O1, threadsPerWarp: 4, warpsPerGroup: 4);
        using LlamaWeights onDevice = weights.To(device);
        KvCompressionOptions options = KvCompressionOptions.ChunkKv(KvBudget.Tokens(18), 3, reuse: 2, window: 6);
        using KvCompressedSession cpu = new(weights, new SessionOptions(), options);
        using KvCompressedSession gpu = new(onDevice, new SessionOptions(), options);
        int[] tokens = Tokens(44, config.VocabSize, 6);

        // Prefill, compress, three decode steps; 1e-4 relative to (1 + |logit|) between the two devices' float32 paths.
        float[] expected = cpu.Forward(tokens.AsSpan(0, 41)).ToArray();
        float[] actual = gpu.Forward(tokens.AsSpan(0, 41)).ToArray();
        for (int i = 41; i < 44; i++)
        {
            expected = cpu.Forward(tokens.AsSpan(i, 1)).ToArray();
            actual = gpu.Forward(tokens.AsSpan(i, 1)).ToArray();
        }

        for (int l = 0; l < 3; l++)
        {
            Assert.Equal(cpu.KeptPositions(l), gpu.KeptPositions(l));
        }

        Assert.Equal(18 + 3, gpu.CacheLength(0));
        double worst = expected.Zip(actual).Max(p => Math.Abs(p.First - p.Second) / (1 + Math.Abs(p.First)));
        Assert.True(worst <= 1e-4, $"worst {worst}");
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-3")]
    [InlineData("1.5")]
    [InlineData("1.0")]
    [InlineData("abc")]
    [InlineData("1e-1")]
    public void KvBudgetParse_RefusesWhatIsNeitherTokensNorAFraction(string text)
    {
        FormatException error = Assert.Throws<FormatException>(() => KvBudget.Parse(text));
        Assert.Contains("whole number of tokens", error.Message);
    }

    [Theory]
    [InlineData("0.9999999")]
    [InlineData("0.0001")]
    [InlineData("0.1")]
    [InlineData("0.125")]
    [InlineData("128")]
    public void KvBudgetToString_ReadsBackAsTheSameBudget(string text)
    {
        KvBudget budget = KvBudget.Parse(text);
        Assert.Equal(text, budget.ToString());
        Assert.Equal(budget, KvBudget.Parse(budget.ToString()));
    }

    [Fact]
    public void BadBudgets_FailWithMessagesThatNameTheFix()
    {
        LlamaConfig config = SmallConfig(layers: 2, seqLen: 64);
        using LlamaWeights weights = RandomLlamaWeights.Create(config, 5);

        // An absolute budget below window + one chunk is refused when the session is made.
        ArgumentException small = Assert.Throws<ArgumentException>(() =>
            new KvCompressedSession(weights, new SessionOptions(), KvCompressionOptions.ChunkKv(KvBudget.Tokens(18), 4, window: 16)));
        Assert.Contains("at least 20", small.Message);
        Assert.Throws<ArgumentException>(() => new KvCompressedSession(weights, new SessionOptions(), new KvCompressionOptions { Budget = default }));
        Assert.Throws<ArgumentOutOfRangeException>(() => KvBudget.OfPrompt(1));
        Assert.Throws<ArgumentOutOfRangeException>(() => KvBudget.Tokens(0));

        // A fraction that leaves too few tokens of this prompt is refused before the prompt runs.
        using KvCompressedSession session = new(weights, new SessionOptions(), KvCompressionOptions.ChunkKv(KvBudget.OfPrompt(0.1), 4, window: 16));
        InvalidOperationException tooFew = Assert.Throws<InvalidOperationException>(() => session.Forward(Tokens(40, config.VocabSize, 1)));
        Assert.Contains("is 4 tokens, below the 20", tooFew.Message);
        Assert.Equal(0, session.Position);

        // Compressing twice is refused; Reset starts over.
        using KvCompressedSession twice = new(weights, new SessionOptions(), KvCompressionOptions.ChunkKv(KvBudget.Tokens(24), 4, window: 8));
        twice.Forward(Tokens(40, config.VocabSize, 1));
        Assert.Throws<InvalidOperationException>(() => twice.Compress());
        twice.Reset();
        twice.Forward(Tokens(40, config.VocabSize, 2));
        Assert.Equal(24, twice.CacheLength(1));
    }

    public sealed record Case(
        LlamaConfig Config, ulong Seed, int[] Prompt, int[] Continuation, int Window, int Chunk, int Budget, int Reuse,
        int Pooling, KvCompressionMethod Method)
    {
        public override string ToString() =>
            $"{Method} H {Config.Heads}/{Config.KvHeads} Dh {Config.HeadDim} L {Config.Layers} {Config.RopeLayout} T {Prompt.Length} "
            + $"+{Continuation.Length} w {Window} c {Chunk} B {Budget} N {Reuse} pool {Pooling} seed {Seed}";
    }

    /// <summary>Random small models and compressions: odd sizes, size 1, both RoPE layouts, all three methods.</summary>
    private static Gen<Case> Cases() =>
        from kvHeads in Gen.Choose(1, 3)
        from perKv in Gen.Choose(1, 2)
        from headDim in Gen.Elements(2, 4, 6)
        from layers in Gen.Choose(1, 4)
        from window in Gen.Choose(1, 6)
        from chunk in Gen.Choose(1, 5)
        from t in Gen.Choose(window + chunk + 2, 40)
        from n in Gen.Choose(1, 5)
        from extra in Gen.Choose(0, t - window - chunk - 1)
        from reuse in Gen.Choose(1, 3)
        from pooling in Gen.Elements(1, 3, 5)
        from method in Gen.Elements(KvCompressionMethod.ChunkKv, KvCompressionMethod.ChunkKv, KvCompressionMethod.SnapKv, KvCompressionMethod.StreamingLlm)
        from layout in Gen.Elements(RopeLayout.Adjacent, RopeLayout.HalfSplit)
        from seed in Gen.Choose(0, 1_000_000)
        let config = new LlamaConfig
        {
            Dim = 7, HiddenDim = 9, Layers = layers, Heads = kvHeads * perKv, KvHeads = kvHeads, VocabSize = 23,
            SeqLen = t + n, HeadDim = headDim, RopeLayout = layout,
        }
        let tokens = Tokens(t + n, 23, seed)
        select new Case(config, (ulong)seed, tokens[..t], tokens[t..], window, chunk, window + Math.Max(chunk, 2) + extra, reuse, pooling, method);

    private static LlamaConfig SmallConfig(int layers, int seqLen) => new()
    {
        Dim = 16, HiddenDim = 24, Layers = layers, Heads = 4, KvHeads = 2, VocabSize = 32, SeqLen = seqLen, HeadDim = 4,
    };

    private static int[] Tokens(int count, int vocabulary, int seed)
    {
        Random random = new(seed);
        return Enumerable.Range(0, count).Select(_ => random.Next(vocabulary)).ToArray();
    }

    // Observation-window scores of one layer from a float64 forward pass's own rotated queries and keys.
    private static double[] ReferenceWindowScores(LlamaWeights weights, int[] prompt, int layer, int window)
    {
        (float[] queries, float[] keys) = ReferenceProjections(weights, prompt, layer, window);
        LlamaConfig c = weights.Config;
        return KvSelection.WindowScoresReference(queries, window, c.Heads, keys, c.KvHeads, c.HeadDim, prompt.Length, prompt.Length);
    }

    // The rotated window queries [w, H, Dh] and keys [Hkv, Dh, T] of `layer`, from the fast session's prefill of the
    // layers below (a plain LlamaSession gives the same residual stream: compression changes nothing before it).
    private static (float[] Queries, float[] Keys) ReferenceProjections(LlamaWeights weights, int[] prompt, int layer, int window)
    {
        LlamaConfig c = weights.Config;
        CaptureStep capture = new(layer, window, prompt.Length, c);
        using (LlamaSession session = new(weights, new SessionOptions(), _ => capture))
        {
            session.Forward(prompt);
        }

        return (capture.Queries, capture.Keys);
    }

    // Records one layer's rotated queries (the last w) and keys, and attends densely over its own cache.
    private sealed class CaptureStep(int layer, int window, int t, LlamaConfig c) : IAttentionStep
    {
        public float[] Queries { get; } = new float[window * c.QueryDim];

        public float[] Keys { get; } = new float[c.KvDim * t];

        public void Attend(in AttentionStepInput input)
        {
            if (input.Layer == layer)
            {
                int rows = input.Queries.Size(0);
                float[] q = input.Queries.ToArray(), k = input.Keys.ToArray();
                for (int i = 0; i < rows; i++)
                {
                    int position = input.Start + i;
                    if (position >= t - window)
                    {
                        q.AsSpan(i * c.QueryDim, c.QueryDim).CopyTo(Queries.AsSpan((position - (t - window)) * c.QueryDim));
                    }

                    // Keys [T, Hkv·Dh] → [Hkv·Dh, T].
                    for (int j = 0; j < c.KvDim; j++)
                    {
                        Keys[(j * t) + position] = k[(i * c.KvDim) + j];
                    }
                }
            }

            Attention.Compute(input.Queries, input.KeyCache!, input.ValueCache!, input.Start, input.Output);
        }

        public void Dispose()
        {
        }
    }
}
