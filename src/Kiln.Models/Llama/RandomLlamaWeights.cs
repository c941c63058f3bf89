// Seeded random Llama weights for benchmarks and tests, with DsaWeights.CreateRandom's scales: embedding uniform ±1,
// projections ±1/√(in), norms 1, a separate classifier ±1/√D.
using Kiln.Devices;
using Kiln.Models.Dsa;
using Kiln.Models.Sampling;

namespace Kiln.Models.Llama;

/// <summary>Seeded random float32 Llama weights on the cpu device (benchmarks and tests).</summary>
public static class RandomLlamaWeights
{
    /// <summary>Weights for <paramref name="config"/> drawn from <paramref name="seed"/> on <paramref name="device"/>
    /// (default: the default cpu device); the caller disposes them.</summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public static LlamaWeights Create(LlamaConfig config, ulong seed, CpuDevice? device = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        LlamaWeights weights = LlamaWeights.Allocate(config, device);
        XorShiftRandom random = new(seed);
        DsaIndexerWeights.Fill(weights.TokenEmbedding, 1f, ref random);
        foreach (LlamaLayerWeights layer in weights.Layers)
        {
            layer.AttentionNorm.AsSpan().Fill(1f);
            layer.FfnNorm.AsSpan().Fill(1f);
            foreach (Tensor w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.W1, layer.W2, layer.W3 })
            {
                DsaIndexerWeights.Fill(w, 1f / MathF.Sqrt(w.Size(1)), ref random);
            }
        }

        weights.FinalNorm.AsSpan().Fill(1f);
        if (!ReferenceEquals(weights.Classifier, weights.TokenEmbedding))
        {
            DsaIndexerWeights.Fill(weights.Classifier, 1f / MathF.Sqrt(config.Dim), ref random);
        }

        return weights;
    }
}
