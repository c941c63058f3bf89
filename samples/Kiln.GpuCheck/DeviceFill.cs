// Pseudo-random values on an integer grid, for inputs and model weights: on the host (System.Random, for the
// correctness checks, whose inputs both devices must share) and on the device (a hash of the element index, for
// the large tensors of the speed sections, which would take seconds to fill and copy from the host).
// Grid: value = offset + step · j with j an integer in [-Levels, Levels]; with step = amplitude / 64 every value has
// at most 7 significant bits, so it is exact in float32, float16 and bfloat16 alike.
// Device kernel launch shape: implicitly grouped, one thread per element (ILGPU picks the group size); every
// thread writes one element, so consecutive threads write consecutive addresses (coalesced stores).

using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;
using Device = Kiln.Devices.Device;
using Kiln.Kernels;
using GpuHalf = ILGPU.Half;

namespace Kiln.GpuCheck;

/// <summary>Fills tensors with reproducible pseudo-random grid values, on the host or on an ILGPU device.</summary>
internal static class DeviceFill
{
    /// <summary>The grid has 2 · Levels + 1 values.</summary>
    public const int Levels = 64;

    private static readonly object s_float32Key = new();
    private static readonly object s_float16Key = new();
    private static readonly object s_bfloat16Key = new();

    /// <summary>The ILGPU kernels of this class, for offline PTX compilation checks.</summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } =
    [
        new("FillFloat32", ((Action<Index1D, ArrayView<float>, uint, float, float>)FillFloat32Kernel).Method, false),
        new("FillFloat16", ((Action<Index1D, ArrayView<GpuHalf>, uint, float, float>)FillFloat16Kernel).Method, false),
        new("FillBFloat16", ((Action<Index1D, ArrayView<ushort>, uint, float, float>)FillBFloat16Kernel).Method, false),
    ];

    /// <summary>
    /// Fills <paramref name="tensor"/> (float32, float16 or bfloat16, on an ILGPU device) with
    /// offset + amplitude · j / Levels for pseudo-random integers j in [-Levels, Levels] drawn from
    /// (<paramref name="seed"/>, element index). Queued on the default stream.
    /// </summary>
    /// <exception cref="ArgumentException">The tensor is not on an ILGPU device.</exception>
    public static void Uniform(Tensor tensor, uint seed, float amplitude, float offset = 0f)
    {
        if (tensor.Device is not IlgpuDevice device)
        {
            throw new ArgumentException(
                $"DeviceFill.Uniform: {tensor} is not on an ILGPU device; fill CPU tensors with HostGrid.", nameof(tensor));
        }

        if (tensor.Length == 0)
        {
            return;
        }

        // One thread per element.
        float step = amplitude / Levels;
        int length = (int)tensor.Length;
        switch (tensor.DType)
        {
            case DType.Float32:
                device.GetKernel(s_float32Key, static acc =>
                    acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, uint, float, float>(FillFloat32Kernel))(
                    length, tensor.View<float>(), seed, step, offset);
                break;
            case DType.Float16:
                device.GetKernel(s_float16Key, static acc =>
                    acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<GpuHalf>, uint, float, float>(FillFloat16Kernel))(
                    length, tensor.View<GpuHalf>(), seed, step, offset);
                break;
            default:
                device.GetKernel(s_bfloat16Key, static acc =>
                    acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<ushort>, uint, float, float>(FillBFloat16Kernel))(
                    length, tensor.View<ushort>(), seed, step, offset);
                break;
        }
    }

    /// <summary><paramref name="count"/> host values offset + step · j, j uniform in [-Levels, Levels].</summary>
    public static float[] HostGrid(Random random, int count, float amplitude, float offset = 0f)
    {
        float step = amplitude / Levels;
        float[] values = new float[count];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = offset + (step * random.Next(-Levels, Levels + 1));
        }

        return values;
    }

    /// <summary>The 16-bit patterns of <paramref name="values"/> in <paramref name="dtype"/> (float16 or bfloat16).</summary>
    /// <remarks>Grid values are exact in both formats; bfloat16 is truncated, which is exact for them.</remarks>
    public static ushort[] ToBits(ReadOnlySpan<float> values, DType dtype)
    {
        ushort[] bits = new ushort[values.Length];
        for (int i = 0; i < bits.Length; i++)
        {
            bits[i] = dtype == DType.Float16
                ? BitConverter.HalfToUInt16Bits((System.Half)values[i])
                : (ushort)(BitConverter.SingleToUInt32Bits(values[i]) >> 16);
        }

        return bits;
    }

    /// <summary>Copies host values into a new tensor of <paramref name="dtype"/> on <paramref name="device"/>.</summary>
    public static Tensor ToTensor(float[] values, int[] shape, DType dtype, Device device) =>
        dtype == DType.Float32
            ? Tensor.FromArray(values, shape, device)
            : Tensor.FromBits(ToBits(values, dtype), shape, dtype, device);

    /// <summary>The grid integer j in [-Levels, Levels] of element <paramref name="index"/> (a 32-bit mix hash).</summary>
    private static int GridIndex(int index, uint seed)
    {
        // Murmur3's finaliser over the index and the seed.
        uint x = ((uint)index * 0x9E3779B1u) ^ seed;
        x ^= x >> 16;
        x *= 0x85EBCA6Bu;
        x ^= x >> 13;
        x *= 0xC2B2AE35u;
        x ^= x >> 16;
        return (int)(x % (uint)((2 * Levels) + 1)) - Levels;
    }

    private static void FillFloat32Kernel(Index1D index, ArrayView<float> data, uint seed, float step, float offset)
    {
        data[index] = offset + (step * GridIndex(index.X, seed));
    }

    private static void FillFloat16Kernel(Index1D index, ArrayView<GpuHalf> data, uint seed, float step, float offset)
    {
        data[index] = (GpuHalf)(offset + (step * GridIndex(index.X, seed)));
    }

    private static void FillBFloat16Kernel(Index1D index, ArrayView<ushort> data, uint seed, float step, float offset)
    {
        float value = offset + (step * GridIndex(index.X, seed));
        data[index] = (ushort)((uint)Interop.FloatAsInt(value) >> 16);
    }
}
