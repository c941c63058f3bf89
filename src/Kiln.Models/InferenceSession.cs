// The contract between a model's forward pass and everything that drives it (text generation, benchmarks, the
// CLI), and the one place that decides which implementation a caller gets. A session owns its caches (KV cache
// per layer), sized once for its context; Forward appends tokens at the current position and returns the
// logits of the last one.

using Kiln.Models.Llama;

namespace Kiln.Models;

/// <summary>
/// A running model: a token position and the caches behind it. <see cref="Forward"/> appends tokens (prefill when
/// several, decode when one) and returns the logits of the last token appended.
/// </summary>
public interface IInferenceSession : IDisposable
{
    /// <summary>The model configuration.</summary>
    LlamaConfig Config { get; }

    /// <summary>The most positions this session holds (at most <see cref="LlamaConfig.SeqLen"/>).</summary>
    int ContextLength { get; }

    /// <summary>The number of tokens appended since the last <see cref="Reset"/>: the position of the next token.</summary>
    int Position { get; }

    /// <summary>Forgets every token: the next <see cref="Forward"/> starts at position 0.</summary>
    void Reset();

    /// <summary>
    /// Appends <paramref name="tokens"/> at <see cref="Position"/> and returns the logits [V] of the last one,
    /// valid until the next call.
    /// </summary>
    /// <exception cref="ArgumentException">The span is empty or a token id is outside the vocabulary.</exception>
    /// <exception cref="InvalidOperationException">The tokens do not fit in the context left.</exception>
    ReadOnlySpan<float> Forward(ReadOnlySpan<int> tokens);
}

/// <summary>
/// A session that can choose the next token on its own device, so that a decode step copies back one id instead
/// of V logits. The draw follows <see cref="Sampling.Sampler"/>'s rule without top-k and top-p (see
/// <see cref="Kiln.Kernels.DeviceSampling"/>): on the cpu device exactly, on ILGPU devices in float32.
/// </summary>
public interface IDeviceSampling
{
    /// <summary>
    /// Appends <paramref name="tokens"/> like <see cref="IInferenceSession.Forward"/>, then draws the next token from
    /// the last one's logits: greedy when <paramref name="temperature"/> is 0, otherwise softmax(logits / T) with the
    /// uniform number <paramref name="uniform"/> in [0, 1) (<see cref="Sampling.Sampler.NextUniform"/>). Feeding back
    /// the id just returned, alone, uploads nothing: the embedding reads it where the draw wrote it.
    /// </summary>
    /// <exception cref="ArgumentException">The span is empty or a token id is outside the vocabulary.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The temperature or the uniform number is out of range.</exception>
    /// <exception cref="InvalidOperationException">The tokens do not fit in the context left.</exception>
    int ForwardAndSample(ReadOnlySpan<int> tokens, float temperature, double uniform);
}

/// <summary>How to create a session.</summary>
public sealed record SessionOptions
{
    /// <summary>The context length; null for the model's <see cref="LlamaConfig.SeqLen"/>.</summary>
    public int? ContextLength { get; init; }

    /// <summary>The context length these options give for <paramref name="config"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The length is below 1 or above the model's.</exception>
    public int ResolveContextLength(LlamaConfig config)
    {
        int length = ContextLength ?? config.SeqLen;
        if (length < 1 || length > config.SeqLen)
        {
            throw new ArgumentOutOfRangeException(nameof(ContextLength), $"The context length {length} is outside 1..{config.SeqLen}, the model's seq_len.");
        }

        return length;
    }
}

/// <summary>Creates a session over loaded weights (which must outlive it).</summary>
public delegate IInferenceSession SessionFactory(LlamaWeights weights, SessionOptions options);

/// <summary>The session implementations, and the default that the CLI and <see cref="TextGenerator"/> users take.</summary>
public static class InferenceSessions
{
    /// <summary>The scalar float32 reference forward pass (<see cref="LlamaReferenceSession"/>): the test oracle.</summary>
    public static SessionFactory Reference { get; } =
        static (weights, options) => new LlamaReferenceSession(weights, options);

    /// <summary>The fast batched session (<see cref="LlamaSession"/>) on every device.</summary>
    public static SessionFactory Fast { get; } =
        static (weights, options) => new LlamaSession(weights, options);

    /// <summary>The factory used by default everywhere (the CLI, benchmarks): <see cref="Fast"/>.</summary>
    public static SessionFactory Default { get; } = Fast;

    /// <summary>A short name of the session <see cref="Default"/> creates on <paramref name="device"/>, for logs and benchmarks.</summary>
    public static string DefaultNameOn(Kiln.Devices.Device device) =>
        ReferenceEquals(Default, Reference) ? "reference" : "fast";
}
