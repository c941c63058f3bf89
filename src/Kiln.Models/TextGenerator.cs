// Generates text with a session, a tokenizer and a sampler, as llama2.c's generate loop does:
//   1. reset the session and the sampler, encode the prompt with BOS, prefill it in one Forward call;
//   2. repeat: sample a token from the last logits; stop on the stop token (BOS for llama2.c vocabularies),
//      otherwise stream its text and, while the context has room and more tokens are wanted, feed it back.
// When the session samples on its device (IDeviceSampling) and the sampler's settings allow it (no top-k/top-p
// cut), each step draws there with the sampler's next uniform number and copies back one id, not V logits.
// With P prompt tokens and context S, at most S - P + 1 tokens are generated: the last one is sampled from the
// logits of position S - 1 and printed but never fed. Timings: prefill tokens per second over the prompt
// Forward call, decode tokens per second over the single-token Forward calls. The library never prints: text
// and notes go to the callbacks.

using System.Diagnostics;
using Kiln.Models.Sampling;
using Kiln.Models.Tokenizers;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Models;

/// <summary>Why a generation ended.</summary>
public enum StopReason
{
    /// <summary>The model emitted the stop token (not printed).</summary>
    StopToken,

    /// <summary>The requested number of new tokens was generated.</summary>
    MaxTokens,

    /// <summary>The context is full: no position is left to feed another token.</summary>
    ContextFull,
}

/// <summary>The outcome of one generation.</summary>
/// <param name="PromptTokens">The prompt ids, BOS included.</param>
/// <param name="GeneratedTokens">The new ids, the stop token excluded.</param>
/// <param name="Text">The generated text (the prompt not included).</param>
/// <param name="StopReason">Why generation ended.</param>
/// <param name="PrefillSeconds">Wall time of the prompt's Forward call and the first token's choice.</param>
/// <param name="DecodeSeconds">Wall time of the single-token Forward calls and the choices that follow them.</param>
/// <param name="DecodeSteps">The number of single-token Forward calls.</param>
public sealed record GenerationResult(
    int[] PromptTokens,
    int[] GeneratedTokens,
    string Text,
    StopReason StopReason,
    double PrefillSeconds,
    double DecodeSeconds,
    int DecodeSteps)
{
    /// <summary>Prompt tokens per second of the prefill.</summary>
    public double PrefillTokensPerSecond => PrefillSeconds > 0 ? PromptTokens.Length / PrefillSeconds : 0;

    /// <summary>Tokens per second of the decode steps (0 when there were none).</summary>
    public double DecodeTokensPerSecond => DecodeSeconds > 0 ? DecodeSteps / DecodeSeconds : 0;
}

/// <summary>Raised when a prompt does not fit in the session's context.</summary>
public sealed class PromptTooLongException : Exception
{
    /// <summary>Creates the exception with a one-line message.</summary>
    public PromptTooLongException(int promptTokens, int contextLength)
        : base($"the prompt is {promptTokens} tokens (BOS included) but the context holds {contextLength}; shorten the prompt or use a model with a longer context.")
    {
        PromptTokens = promptTokens;
        ContextLength = contextLength;
    }

    /// <summary>The prompt length in tokens, BOS included.</summary>
    public int PromptTokens { get; }

    /// <summary>The session's context length.</summary>
    public int ContextLength { get; }
}

/// <summary>Prefills a prompt and decodes a continuation, streaming the text.</summary>
public sealed class TextGenerator
{
    private readonly IInferenceSession _session;
    private readonly ITokenizer _tokenizer;
    private readonly Sampler _sampler;
    private readonly int[] _next = new int[1];
    private readonly ILogger _logger;

    /// <summary>
    /// Creates a generator; the three parts must outlive it. <paramref name="logger"/> receives each generation's
    /// summary (Information) and context-full notes (Warning); silent when null.
    /// </summary>
    /// <exception cref="ArgumentException">The tokenizer, sampler and model vocabularies differ in size.</exception>
    public TextGenerator(IInferenceSession session, ITokenizer tokenizer, Sampler sampler, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(session);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(sampler);
        int vocab = session.Config.VocabSize;
        if (tokenizer.VocabSize != vocab || sampler.VocabSize != vocab)
        {
            throw new ArgumentException($"The model has {vocab} tokens but the tokenizer has {tokenizer.VocabSize} and the sampler {sampler.VocabSize}; use the tokenizer that came with the model.", nameof(tokenizer));
        }

        _session = session;
        _tokenizer = tokenizer;
        _sampler = sampler;
        _logger = logger ?? NullLogger.Instance;
        StopTokenId = tokenizer.StopTokenId;
    }

    /// <summary>The token that ends a generation (default: the tokenizer's stop token); -1 never stops.</summary>
    public int StopTokenId { get; set; }

    /// <summary>Called with each piece of generated text as soon as it forms whole characters.</summary>
    public event Action<string>? TextGenerated;

    /// <summary>Called with a one-line note, e.g. when the context fills up before the requested tokens.</summary>
    public event Action<string>? Note;

    /// <summary>
    /// Generates up to <paramref name="maxNewTokens"/> tokens after <paramref name="prompt"/> (negative: until the
    /// stop token or a full context). The session and sampler are reset first, so each call is independent.
    /// </summary>
    /// <exception cref="PromptTooLongException">The prompt with BOS does not fit in the context.</exception>
    public GenerationResult Generate(string prompt, int maxNewTokens)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        int[] promptTokens = _tokenizer.Encode(prompt, bos: true);
        return Generate(promptTokens, maxNewTokens);
    }

    /// <summary>Like <see cref="Generate(string, int)"/>, from prompt ids (which should start with BOS).</summary>
    /// <exception cref="ArgumentException">The prompt is empty.</exception>
    /// <exception cref="PromptTooLongException">The prompt does not fit in the context.</exception>
    public GenerationResult Generate(int[] promptTokens, int maxNewTokens)
    {
        ArgumentNullException.ThrowIfNull(promptTokens);
        if (promptTokens.Length == 0)
        {
            throw new ArgumentException("The prompt has no tokens; start it with BOS.", nameof(promptTokens));
        }

        int context = _session.ContextLength;
        if (promptTokens.Length > context)
        {
            throw new PromptTooLongException(promptTokens.Length, context);
        }

        // Start clean: no cached positions, the sampler's sequence from its seed.
        _session.Reset();
        _sampler.Reset();
        TokenTextDecoder decoder = new(_tokenizer);
        decoder.Reset(promptTokens[^1]);
        System.Text.StringBuilder text = new();
        List<int> generated = new(Math.Max(0, Math.Min(maxNewTokens < 0 ? context : maxNewTokens, context)));
        int limit = maxNewTokens < 0 ? int.MaxValue : maxNewTokens;

        // Prefill the prompt in one call, and choose the first token.
        IDeviceSampling? device = _sampler.CanSampleOnDevice ? _session as IDeviceSampling : null;
        long start = Stopwatch.GetTimestamp();
        int token = limit > 0 ? Step(device, promptTokens) : -1;
        double prefillSeconds = Stopwatch.GetElapsedTime(start).TotalSeconds;

        // Decode: sample, stop or emit, feed back while there is room.
        StopReason reason = StopReason.MaxTokens;
        long decodeTicks = 0;
        int decodeSteps = 0;
        while (generated.Count < limit)
        {
            if (token == StopTokenId)
            {
                reason = StopReason.StopToken;
                break;
            }

            generated.Add(token);
            Emit(decoder.Append(token), text);
            if (generated.Count == limit)
            {
                break;
            }

            if (_session.Position >= context)
            {
                reason = StopReason.ContextFull;
                break;
            }

            long stepStart = Stopwatch.GetTimestamp();
            _next[0] = token;
            token = Step(device, _next);
            decodeTicks += Stopwatch.GetTimestamp() - stepStart;
            decodeSteps++;
        }

        // Flush a held-back partial character, then report a full context.
        Emit(decoder.Flush(), text);
        if (reason == StopReason.ContextFull)
        {
            string wanted = maxNewTokens < 0 ? string.Empty : $" of the {maxNewTokens} requested";
            string note = $"context full: all {context} positions are used; stopped after {generated.Count} new tokens{wanted}.";
            _logger.LogWarning("{Note}", note);
            Note?.Invoke(note);
        }

        double decodeSeconds = (double)decodeTicks / Stopwatch.Frequency;
        GenerationResult result = new(promptTokens, [.. generated], text.ToString(), reason, prefillSeconds, decodeSeconds, decodeSteps);
        _logger.LogInformation(
            "Generated {Tokens} tokens ({Reason}): prefill {PrefillTokens} tokens at {PrefillRate:F1} tok/s, decode {DecodeSteps} steps at {DecodeRate:F1} tok/s",
            result.GeneratedTokens.Length,
            reason,
            promptTokens.Length,
            result.PrefillTokensPerSecond,
            decodeSteps,
            result.DecodeTokensPerSecond);
        return result;
    }

    // Appends the tokens and chooses the next one: on the session's device when it can, else from host logits.
    private int Step(IDeviceSampling? device, ReadOnlySpan<int> tokens) =>
        device is not null
            ? device.ForwardAndSample(tokens, _sampler.Options.Temperature, _sampler.NextUniform())
            : _sampler.Sample(_session.Forward(tokens));

    private void Emit(string piece, System.Text.StringBuilder text)
    {
        if (piece.Length > 0)
        {
            text.Append(piece);
            TextGenerated?.Invoke(piece);
        }
    }
}
