// Counts the managed bytes an action allocates on the calling thread. The per-thread counter can jump by the
// unused part of the thread's allocation buffer (about 8 KiB) when a collection, started by another test running
// in parallel, retires that buffer; so a measurement during which a collection ran is repeated.

namespace Kiln.Models.Tests;

internal static class Allocations
{
    /// <summary>The bytes <paramref name="action"/> allocates, from the first of up to 20 runs without a collection.</summary>
    public static long Measure(Action action)
    {
        long bytes = 0;
        for (int attempt = 0; attempt < 20; attempt++)
        {
            int collections = GC.CollectionCount(0);
            long before = GC.GetAllocatedBytesForCurrentThread();
            action();
            bytes = GC.GetAllocatedBytesForCurrentThread() - before;
            if (GC.CollectionCount(0) == collections)
            {
                return bytes;
            }
        }

        return bytes;
    }
}
