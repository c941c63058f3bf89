// ggml's Q8_0 quantization: the values of a row are cut into blocks of 32; each block stores one scale d as float16
// and 32 signed bytes q, and a value is read back as d · q. The quantizer follows ggml's reference
// (quantize_row_q8_0_ref): amax = max |x| over the block, d = amax / 127 in float32, q = round(x · (1 / d)) with ties
// away from zero (C's roundf), and q = 0 for an all-zero block; the scale is stored rounded to float16. So
// |x - d16·q| ≤ d/2 + |q|·|d - d16| ≤ d/2 + 127 · 2^-11 · d, a little over half a step, and Kiln's bytes equal ggml's.
// A block is 34 bytes: the little-endian float16 scale, then q[0..31]. DType.Q8_0 tensors hold rows of such blocks,
// and the CPU matrix product reads them directly (Kernels/Gemm/Widen.cs).

namespace Kiln;

/// <summary>Quantizes float32 values to ggml Q8_0 blocks and back.</summary>
public static class Q8_0Blocks
{
    /// <summary>Values per block.</summary>
    public const int BlockElements = 32;

    /// <summary>Bytes per block: a float16 scale, then 32 int8.</summary>
    public const int BlockBytes = 2 + BlockElements;

    /// <summary>The bytes that <paramref name="count"/> values take (count must be a multiple of 32).</summary>
    public static long ByteCount(long count)
    {
        if (count < 0 || count % BlockElements != 0)
        {
            throw new ArgumentException($"Q8_0 stores whole blocks of {BlockElements} values; {count} is not a multiple of {BlockElements}.", nameof(count));
        }

        return count / BlockElements * BlockBytes;
    }

    /// <summary>
    /// Quantizes <paramref name="values"/> (a multiple of 32 of them) into <paramref name="blocks"/>
    /// (<see cref="ByteCount"/> bytes), bit for bit as ggml's reference quantizer does.
    /// </summary>
    /// <exception cref="ArgumentException">The count is not a multiple of 32 or the destination has the wrong length.</exception>
    public static void Quantize(ReadOnlySpan<float> values, Span<byte> blocks)
    {
        long bytes = ByteCount(values.Length);
        if (blocks.Length != bytes)
        {
            throw new ArgumentException($"{values.Length} values quantize to {bytes} bytes of Q8_0; the destination holds {blocks.Length}.", nameof(blocks));
        }

        for (int b = 0; b < values.Length / BlockElements; b++)
        {
            ReadOnlySpan<float> x = values.Slice(b * BlockElements, BlockElements);
            Span<byte> block = blocks.Slice(b * BlockBytes, BlockBytes);

            // The scale: the largest magnitude maps to ±127.
            float amax = 0f;
            foreach (float v in x)
            {
                amax = MathF.Max(amax, MathF.Abs(v));
            }

            float d = amax / 127f;
            float inverse = d != 0f ? 1f / d : 0f;
            BitConverter.TryWriteBytes(block, (Half)d);

            // The values: nearest integer, ties away from zero.
            for (int i = 0; i < BlockElements; i++)
            {
                block[2 + i] = (byte)(sbyte)MathF.Round(x[i] * inverse, MidpointRounding.AwayFromZero);
            }
        }
    }

    /// <summary>Expands Q8_0 <paramref name="blocks"/> into <paramref name="values"/>: value = scale · q.</summary>
    /// <exception cref="ArgumentException">The lengths do not match.</exception>
    public static void Dequantize(ReadOnlySpan<byte> blocks, Span<float> values)
    {
        long bytes = ByteCount(values.Length);
        if (blocks.Length != bytes)
        {
            throw new ArgumentException($"{values.Length} values take {bytes} bytes of Q8_0; the source holds {blocks.Length}.", nameof(blocks));
        }

        for (int b = 0; b < values.Length / BlockElements; b++)
        {
            ReadOnlySpan<byte> block = blocks.Slice(b * BlockBytes, BlockBytes);
            float d = (float)BitConverter.ToHalf(block);
            for (int i = 0; i < BlockElements; i++)
            {
                values[(b * BlockElements) + i] = d * (sbyte)block[2 + i];
            }
        }
    }
}
