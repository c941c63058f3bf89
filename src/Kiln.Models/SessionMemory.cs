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

    private static string Gib(long bytes) =>
        (bytes / (double)(1L << 30)).ToString("F1", System.Globalization.CultureInfo.InvariantCulture);
}
