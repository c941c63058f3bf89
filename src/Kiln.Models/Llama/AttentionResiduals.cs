// Block Attention Residuals (Kimi Team, "Attention Residuals", arXiv 2603.15031): an option of the Llama config that
// replaces the fixed residual sum feeding every sublayer by a softmax-weighted mix over depth.
//
// A model with L layers has S = 2L sublayers: sublayer 2l is layer l's attention, 2l + 1 its MLP. They are cut into
// N consecutive blocks (1 <= N <= S); the first S mod N blocks hold ⌈S/N⌉ sublayers and the rest ⌊S/N⌋, so when N
// does not divide S the later blocks are one shorter (for 24 layers and N = 8: eight blocks of 6). N = S is Full
// AttnRes: every sublayer is its own block and mixes over every earlier output.
//
// Per token (nothing crosses positions, so the KV cache is unchanged):
//   b_0 = the token's embedding; o_s = the output of sublayer s (what standard Llama adds to its residual stream)
//   b_n = Σ of the outputs of block n, once block n is complete (n = 1..N, blocks counted from 1)
//   sources of sublayer s in block n: [b_0, b_1, .., b_{n-1}], plus the partial sum p = Σ of the outputs of the
//     sublayers of block n before s when s is not the block's first sublayer
//   α_i = softmax_i( w_s · (g_s ⊙ RmsNorm(v_i)) ),  RmsNorm(v) = v / √(mean(v²) + eps)  (eps: the config's norm_eps)
//   h_s = Σ_i α_i v_i, the sublayer's input, which it then normalises with its own RMSNorm as usual
//   readout: h = the same mix over [b_0, .., b_N] with its own query and gain, then the final RMSNorm and classifier
// Parameters: per sublayer a pseudo-query w_s [D] and a key RMSNorm gain g_s [D], plus one pair for the readout,
// stored stacked as Queries and KeyNorms [2L + 1, D]: row 2l before layer l's attention, row 2l + 1 before its MLP,
// row 2L the readout. Defaults: queries zero, gains one.
//
// With every query zero the softmax is uniform, h_s is the mean of the sources, and since the blocks partition the
// outputs that mean is (b_0 + Σ_{s' < s} o_s') / count: the standard residual stream scaled by a positive number.
// Every consumer normalises it (the sublayers' RMSNorm, the final RMSNorm), so the model computes what the same
// weights compute without the option, up to the effect of eps on the scaled stream.
using System.Text.Json.Serialization;
using Kiln.Devices;

namespace Kiln.Models.Llama;

/// <summary>
/// The Block Attention Residuals option of a <see cref="LlamaConfig"/>: the number of blocks the 2L sublayers are
/// cut into (see the file header for the rule and the partition).
/// </summary>
public sealed record AttentionResidualsConfig
{
    /// <summary>
    /// The number of blocks N, 1..2L. The first 2L mod N blocks hold ⌈2L/N⌉ sublayers, the others ⌊2L/N⌋;
    /// N = 2L is Full AttnRes.
    /// </summary>
    [JsonPropertyName("blocks")]
    public required int Blocks { get; init; }

    /// <summary>Checks the block count against a model of <paramref name="layers"/> layers.</summary>
    /// <exception cref="ArgumentException">The block count is below 1 or above the 2L sublayers.</exception>
    public void Validate(int layers)
    {
        if (Blocks < 1 || Blocks > 2L * layers)
        {
            throw new ArgumentException($"attention_residuals.blocks is {Blocks}; it must be 1..{2L * layers} (the 2 × n_layers sublayers; {2L * layers} is Full AttnRes).");
        }
    }

    /// <summary>The first sublayer of block <paramref name="block"/> (0-based; block N gives 2L, the end).</summary>
    public int BlockStart(int block, int sublayers)
    {
        int size = sublayers / Blocks, longer = sublayers % Blocks;
        return (block * size) + Math.Min(block, longer);
    }

    /// <summary>The 0-based block that holds sublayer <paramref name="sublayer"/>.</summary>
    public int BlockOf(int sublayer, int sublayers)
    {
        int size = sublayers / Blocks, longer = sublayers % Blocks;
        int inLonger = longer * (size + 1);
        return sublayer < inLonger ? sublayer / (size + 1) : longer + ((sublayer - inLonger) / size);
    }
}

/// <summary>
/// The learned vectors of Block Attention Residuals: a pseudo-query and a key RMSNorm gain per sublayer and for the
/// readout, each stacked into a [2L + 1, D] float32 tensor (see the file header for the row order). A session reads
/// them when it is created: set them before creating it.
/// </summary>
public sealed class AttentionResidualsWeights
{
    internal AttentionResidualsWeights(LlamaConfig config, Func<int[], DType, Tensor> create)
    {
        int rows = (2 * config.Layers) + 1;
        Queries = create([rows, config.Dim], DType.Float32);
        try
        {
            KeyNorms = create([rows, config.Dim], DType.Float32);
        }
        catch
        {
            Queries.Dispose();
            throw;
        }
    }

    /// <summary>The pseudo-queries w: row 2l before layer l's attention, 2l + 1 before its MLP, 2L the readout. [2L + 1, D]</summary>
    public Tensor Queries { get; }

    /// <summary>The key RMSNorm gains g, rows as in <see cref="Queries"/>. [2L + 1, D]</summary>
    public Tensor KeyNorms { get; }

    /// <summary>The two tensors: queries, then key norms.</summary>
    public IEnumerable<Tensor> Tensors => [Queries, KeyNorms];

    /// <summary>
    /// Fills the queries uniformly in ±<paramref name="queryScale"/> and the gains uniformly in [0.5, 1.5] (seeded;
    /// the same seed gives the same values), for tests and benchmarks.
    /// </summary>
    public void Randomize(ulong seed, float queryScale)
    {
        Sampling.XorShiftRandom random = new(seed);
        float[] queries = new float[Queries.Length];
        float[] gains = new float[KeyNorms.Length];
        for (int i = 0; i < queries.Length; i++)
        {
            queries[i] = (float)(((random.NextDouble() * 2) - 1) * queryScale);
            gains[i] = (float)(0.5 + random.NextDouble());
        }

        Queries.CopyFrom(queries);
        KeyNorms.CopyFrom(gains);
    }

    /// <summary>Sets the defaults: queries zero (a uniform mix), gains one.</summary>
    public void Reset()
    {
        Queries.CopyFrom(new float[Queries.Length]);
        float[] ones = new float[KeyNorms.Length];
        Array.Fill(ones, 1f);
        KeyNorms.CopyFrom(ones);
    }
}
