using CustomOps;
using Kiln;
using Kiln.Devices;

// Runs the tiny MLP of TinyMlp.cs on the CPU device and on ILGPU's CPU accelerator (the GPU code path) from the same
// weights and input, and prints the largest difference between the two outputs. Usage: dotnet run -c Release
// [--tokens T] [--width D] [--hidden F] [--seed S].

int tokens = Option("--tokens", 5);
int width = Option("--width", 45);
int hidden = Option("--hidden", 70);
int seed = Option("--seed", 1234);

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

int Option(string name, int fallback)
{
    int at = Array.IndexOf(args, name);
    return at >= 0 && at + 1 < args.Length && int.TryParse(args[at + 1], out int value) ? value : fallback;
}
