// Checks, before a session allocates its KV cache, that the cache can fit in this machine's memory at all. The
// context length comes from a file header (seq_len), so a few-kilobyte checkpoint can ask for hundreds of
// gibibytes; without the check, zero-filling the cache commits page after page until the OS kills the process.

namespace Kiln.Models;

/// <summary>The up-front memory check of session caches.</summary>
internal static class SessionMemory
{
    /// <summary>
    /// Throws when a cache of <paramref name="cacheBytes"/> bytes (for <paramref name="contextLength"/> positions)
    /// exceeds the memory available to this process.
    /// </summary>
    /// <exception cref="InsufficientMemoryException">The cache cannot fit; the message says which context fits.</exception>
    public static void EnsureCacheFits(long cacheBytes, int contextLength, int seqLen)
    {
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (available <= 0 || cacheBytes <= available)
        {
            return;
        }

        // The cache grows linearly with the context, so say which length would fit.
        long perPosition = Math.Max(1, cacheBytes / contextLength);
        long fitting = Math.Max(1, available / 2 / perPosition);
        throw new InsufficientMemoryException(
            $"The KV cache for a context of {contextLength} positions (the model's seq_len is {seqLen}) needs "
            + $"{Gib(cacheBytes)} GiB but this machine has {Gib(available)} GiB; pass a shorter context length "
            + $"(SessionOptions.ContextLength, e.g. {Math.Min(fitting, contextLength)}).");
    }

    /// <summary>
    /// Throws when a KV cache of <paramref name="cacheBytes"/> plus <paramref name="otherBytes"/> of other session
    /// buffers exceeds <paramref name="availableBytes"/>, the device memory the weights leave.
    /// </summary>
    /// <exception cref="InsufficientMemoryException">The buffers cannot fit; the message says which context fits.</exception>
    public static void EnsureDeviceFits(string device, long availableBytes, long cacheBytes, long otherBytes, int contextLength, int seqLen)
    {
        long needed = cacheBytes + otherBytes;
        if (needed <= availableBytes)
        {
            return;
        }

        // The cache grows linearly with the context, so say which length would fit.
        long perPosition = Math.Max(1, cacheBytes / contextLength);
        long fitting = Math.Max(0, (availableBytes - otherBytes) / perPosition);
        string advice = fitting >= 1
            ? $"pass a shorter context length (SessionOptions.ContextLength, e.g. {Math.Min(fitting, contextLength)}) or use a device with more memory"
            : "the weights leave too little room even for one position; use a device with more memory or a smaller model";
        throw new InsufficientMemoryException(
            $"The session for a context of {contextLength} positions (the model's seq_len is {seqLen}) needs "
            + $"{Gib(needed)} GiB on {device} but {Gib(Math.Max(0, availableBytes))} GiB are left after the weights; {advice}.");
    }

    private static string Gib(long bytes) =>
        (bytes / (double)(1L << 30)).ToString("F1", System.Globalization.CultureInfo.InvariantCulture);
}
