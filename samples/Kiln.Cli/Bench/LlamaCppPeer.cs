// llama.cpp as the peer, driven through LLamaSharp 0.30.0 (its native libllama/libggml from LLamaSharp.Backend.Cpu,
// the AVX-512 build on machines that have it). Only the CLI and the tests reference LLamaSharp; the libraries never do.
//
// One model file, one context per run: a prompt goes in as one batch (logits for its last position only), then each
// greedy token (argmax over the logits, ties to the lower id, as Kiln's Sampler.ArgMax) is fed back alone. The KV
// cache is float32 (as Kiln's), the batch and micro-batch hold the whole prompt, and flash attention is on or off as
// asked. llama.cpp's own log lines are dropped unless they are errors.

using System.Diagnostics;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Kiln.Cli.Bench;

/// <summary>A GGUF model loaded in llama.cpp.</summary>
internal sealed class LlamaCppPeer : IDisposable
{
    private static readonly object s_configureLock = new();
    private static bool s_configured;
    private readonly LLamaWeights _weights;
    private readonly string _path;

    private LlamaCppPeer(string path, LLamaWeights weights)
    {
        _path = path;
        _weights = weights;
    }

    /// <summary>The vocabulary size llama.cpp reads from the file.</summary>
    public int VocabSize => _weights.Vocab.Count;

    /// <summary>Loads <paramref name="path"/> in llama.cpp.</summary>
    /// <exception cref="InvalidOperationException">The native library cannot be loaded on this machine, or llama.cpp
    /// refuses the file; the message says which.</exception>
    public static LlamaCppPeer Load(string path)
    {
        ConfigureOnce();
        try
        {
            LLamaWeights weights = LLamaWeights.LoadFromFile(Parameters(path, 512, 1, flashAttention: false));
            return new LlamaCppPeer(path, weights);
        }
        catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or BadImageFormatException or EntryPointNotFoundException or LLama.Exceptions.RuntimeError)
        {
            throw new InvalidOperationException($"llama.cpp (LLamaSharp.Backend.Cpu 0.30.0) could not load {path}: {OneLine(e)}; check that the native library of the package runs on this machine.", e);
        }
    }

    /// <summary>
    /// The greedy continuation of <paramref name="prompt"/> (token ids, BOS included): <paramref name="count"/> new
    /// token ids.
    /// </summary>
    public int[] Greedy(ReadOnlySpan<int> prompt, int count, int threads, bool flashAttention = false)
    {
        using LLamaContext context = _weights.CreateContext(Parameters(_path, prompt.Length + count + 1, threads, flashAttention));
        int[] result = new int[count];
        int next = DecodePrompt(context, prompt);
        for (int i = 0; i < count; i++)
        {
            result[i] = next;
            next = DecodeOne(context, next, prompt.Length + i);
        }

        return result;
    }

    /// <summary>
    /// Times a prefill of <paramref name="prompt"/> in one batch and <paramref name="steps"/> greedy decode steps after
    /// it, in a fresh context; returns tokens per second of each.
    /// </summary>
    public (double Prefill, double Decode) Measure(ReadOnlySpan<int> prompt, int steps, int threads, bool flashAttention)
    {
        using LLamaContext context = _weights.CreateContext(Parameters(_path, prompt.Length + steps + 1, threads, flashAttention));
        long start = Stopwatch.GetTimestamp();
        int next = DecodePrompt(context, prompt);
        long prefill = Stopwatch.GetTimestamp() - start;
        start = Stopwatch.GetTimestamp();
        for (int i = 0; i < steps; i++)
        {
            next = DecodeOne(context, next, prompt.Length + i);
        }

        long decode = Stopwatch.GetTimestamp() - start;
        return (prompt.Length * (double)Stopwatch.Frequency / prefill, steps * (double)Stopwatch.Frequency / decode);
    }

    /// <inheritdoc />
    public void Dispose() => _weights.Dispose();

    private int DecodePrompt(LLamaContext context, ReadOnlySpan<int> prompt)
    {
        LLamaBatch batch = new();
        for (int i = 0; i < prompt.Length; i++)
        {
            batch.Add((LLamaToken)prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        }

        Check(context.Decode(batch));
        return ArgMax(context.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
    }

    private int DecodeOne(LLamaContext context, int token, int position)
    {
        LLamaBatch batch = new();
        batch.Add((LLamaToken)token, position, LLamaSeqId.Zero, true);
        Check(context.Decode(batch));
        return ArgMax(context.NativeHandle.GetLogitsIth(0));
    }

    private void Check(DecodeResult result)
    {
        if (result != DecodeResult.Ok)
        {
            throw new InvalidOperationException($"llama.cpp could not decode a batch of {_path}: {result}.");
        }
    }

    private static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
        {
            if (logits[i] > logits[best])
            {
                best = i;
            }
        }

        return best;
    }

    private static ModelParams Parameters(string path, int contextSize, int threads, bool flashAttention)
    {
        uint batch = (uint)Math.Max(contextSize, 32);
        return new ModelParams(path)
        {
            ContextSize = batch,
            BatchSize = batch,
            UBatchSize = batch,
            Threads = threads,
            BatchThreads = threads,
            GpuLayerCount = 0,
            FlashAttention = flashAttention,
            TypeK = GGMLType.GGML_TYPE_F32,
            TypeV = GGMLType.GGML_TYPE_F32,
        };
    }

    // The log filter goes in before the native library loads, once per process.
    private static void ConfigureOnce()
    {
        lock (s_configureLock)
        {
            if (s_configured)
            {
                return;
            }

            s_configured = true;
            try
            {
                NativeLibraryConfig.All.WithLogCallback(static (level, message) =>
                {
                    if (level == LLamaLogLevel.Error)
                    {
                        Console.Error.Write($"llama.cpp: {message}");
                    }
                });
            }
            catch (InvalidOperationException)
            {
                // The library was loaded before (by another caller in this process): its log setting stays.
            }
        }
    }

    private static string OneLine(Exception e) => e.Message.ReplaceLineEndings(" ").Trim();
}
