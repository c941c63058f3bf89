// kiln bench mamba3: one Mamba-3 mixer on random weights (the official initialisation, seed 42) and random inputs.
// Prefill: T tokens in one Forward from a fresh cache (chunked scan, pieces of up to 4096 tokens); decode: `decode`
// one-token steps right after it, from that state. Each figure is the best of `runs` measured runs after a warm-up
// run of one chunk and a few steps. The default shape is the brief's CPU mixer: d_model 512, d_state 64, headdim 64,
// expand 2 (16 heads), chunk 64. On an ILGPU device (--device cuda, or ilgpu-cpu for a quick check at tiny sizes)
// the weights, input and cache live on the device and each timed part ends by waiting for the device.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Kiln.Devices;
using Kiln.Models.Mamba;
using Kiln.Models.Sampling;

namespace Kiln.Cli.Bench;

/// <summary>The Mamba-3 mixer benchmark (see the file header).</summary>
public static class Mamba3Bench
{
    /// <summary>Measures the mixer and writes one line (text or JSON) to <paramref name="stdout"/>.</summary>
    public static void Run(Mamba3Config config, int tokens, int decode, int runs, Device device, bool json, TextWriter stdout, TextWriter stderr)
    {
        using Mamba3Weights host = Mamba3Weights.CreateRandom(config, seed: 42);
        using Mamba3Weights? copy = device is CpuDevice ? null : host.To(device);
        Mamba3Weights weights = copy ?? host;
        using Mamba3Mixer mixer = new(weights, device, maxTokens: Math.Min(tokens, 4096));
        using Mamba3Cache cache = mixer.CreateCache();
        XorShiftRandom random = new(7);
        float[] values = new float[(tokens + 1) * config.DModel];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)((random.NextDouble() * 2) - 1);
        }

        using Tensor prompt = Tensor.FromArray(values.AsSpan(0, tokens * config.DModel), [tokens, config.DModel], device);
        using Tensor output = Tensor.Empty([tokens, config.DModel], device: device);
        using Tensor step = Tensor.FromArray(values.AsSpan(tokens * config.DModel, config.DModel), [1, config.DModel], device);
        using Tensor stepOutput = Tensor.Empty([1, config.DModel], device: device);

        // Warm-up: one chunk and a few steps.
        using (Tensor warm = prompt.Slice(0, Math.Min(tokens, config.ChunkSize + 1)))
        using (Tensor warmOut = output.Slice(0, Math.Min(tokens, config.ChunkSize + 1)))
        {
            mixer.Forward(warm, warmOut, cache);
            for (int i = 0; i < 8; i++)
            {
                mixer.Forward(step, stepOutput, cache);
            }

            Wait(device);
        }

        double bestPrefill = double.MaxValue, bestDecode = double.MaxValue;
        for (int run = 0; run < runs; run++)
        {
            cache.Reset();
            Stopwatch watch = Stopwatch.StartNew();
            mixer.Forward(prompt, output, cache);
            Wait(device);
            bestPrefill = Math.Min(bestPrefill, watch.Elapsed.TotalSeconds);
            watch.Restart();
            for (int i = 0; i < decode; i++)
            {
                mixer.Forward(step, stepOutput, cache);
            }

            Wait(device);
            bestDecode = Math.Min(bestDecode, watch.Elapsed.TotalSeconds);
        }

        double prefillRate = tokens / bestPrefill, decodeRate = decode / bestDecode;
        int threads = device is CpuDevice cpu ? cpu.Threads : 0;
        string where = device is CpuDevice ? $"{threads} threads" : device.Name;
        string kind = config.IsMimo ? $"mimo-r{config.Rank}" : "siso";
        if (json)
        {
            stdout.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["bench"] = "mamba3",
                ["kind"] = kind,
                ["d_model"] = config.DModel,
                ["d_state"] = config.DState,
                ["headdim"] = config.HeadDim,
                ["heads"] = config.Heads,
                ["chunk_size"] = config.ChunkSize,
                ["tokens"] = tokens,
                ["device"] = device.Name,
                ["threads"] = threads,
                ["prefill_tok_s"] = Math.Round(prefillRate, 1),
                ["decode_tok_s"] = Math.Round(decodeRate, 1),
                ["decode_steps"] = decode,
            }));
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"mamba3 {kind} d_model {config.DModel} d_state {config.DState} headdim {config.HeadDim} heads {config.Heads} chunk {config.ChunkSize}, {where}: prefill {tokens} tokens {prefillRate:F0} tok/s ({bestPrefill * 1e3:F1} ms), decode {decodeRate:F0} tok/s ({bestDecode / decode * 1e6:F1} µs/token)"));
        }

        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kiln: bench mamba3: best of {runs} run(s); cache {cache.Bytes / 1024.0:F0} KiB"));
    }

    // Waits for the kernels an ILGPU device has queued (the cpu finishes inside each call).
    private static void Wait(Device device)
    {
        if (device is IlgpuDevice gpu)
        {
            gpu.Synchronize();
        }
    }
}
