using CustomOps;
using Kiln;
using Kiln.Devices;

// Runs the tiny MLP of TinyMlp.cs on the CPU device and on ILGPU's CPU accelerator (the GPU code path) from the same
// weights and input, and prints the largest difference between the two outputs. Usage: dotnet run -c Release
// [--tokens T] [--width D] [--hidden F] [--seed S].

Dictionary<string, int> options = new() { ["--tokens"] = 5, ["--width"] = 45, ["--hidden"] = 70, ["--seed"] = 1234 };
for (int i = 0; i < args.Length; i += 2)
{
    // Every argument is a known flag followed by an integer; sizes are at least 1.
    if (!options.ContainsKey(args[i]) || i + 1 >= args.Length || !int.TryParse(args[i + 1], out int value)
        || (args[i] != "--seed" && value < 1))
    {
        Console.Error.WriteLine($"CustomOps: error: '{string.Join(' ', args.Skip(i).Take(2))}': expected --tokens, --width or --hidden with an integer >= 1, or --seed with an integer.");
        return 2;
    }

    options[args[i]] = value;
}

int tokens = options["--tokens"];
int width = options["--width"];
int hidden = options["--hidden"];
int seed = options["--seed"];

// One input, the same on both devices.
Random random = new(seed + 1);
float[] input = Enumerable.Range(0, tokens * width).Select(_ => (2f * random.NextSingle()) - 1f).ToArray();

float[] cpuOutput = Run("cpu");
float[] gpuPathOutput = Run("ilgpu-cpu");

// The two paths round differently (vector and GPU transcendentals, summation order), so they agree closely, not exactly.
double maxDifference = 0;
double maxMagnitude = 0;
for (int i = 0; i < cpuOutput.Length; i++)
{
    maxDifference = Math.Max(maxDifference, Math.Abs(cpuOutput[i] - gpuPathOutput[i]));
    maxMagnitude = Math.Max(maxMagnitude, Math.Abs(cpuOutput[i]));
}

Console.WriteLine($"tiny MLP: T={tokens}, D={width}, F={hidden}, 2 layers");
Console.WriteLine("ops: LayerNorm, BiasGelu, Project, GeluTanhGated (FusedOps), ResidualAdd (Kiln)");
Console.WriteLine($"output[0, 0..3] on cpu:       {string.Join(", ", cpuOutput.Take(4).Select(v => v.ToString("F6")))}");
Console.WriteLine($"output[0, 0..3] on ilgpu-cpu: {string.Join(", ", gpuPathOutput.Take(4).Select(v => v.ToString("F6")))}");
Console.WriteLine($"max |cpu - ilgpu-cpu| = {maxDifference:E2} (largest |output| {maxMagnitude:F3})");
return maxDifference <= 1e-4 * Math.Max(1, maxMagnitude) ? 0 : 1;

float[] Run(string deviceName)
{
    using Device device = Device.Create(deviceName);
    using TinyMlp model = new(device, width, hidden, seed);
    using Tensor x = Tensor.FromArray(input, [tokens, width], device);
    using Tensor y = model.Forward(x);
    return y.ToArray();
}

