// The worker pool: every index is visited exactly once whatever the count, grain and thread count; body
// exceptions reach the caller and leave the pool usable; concurrent callers are serialised; loops back to back
// (the decode pattern) never lose a wake-up.
using Kiln.Devices;

namespace Kiln.Core.Tests.Devices;

public sealed unsafe class WorkerPoolTests
{
    private struct Counts
    {
        public int* Hits;
        public int Throw;
    }

    private static void CountHits(void* state, int start, int end)
    {
        Counts* counts = (Counts*)state;
        for (int i = start; i < end; i++)
        {
            Interlocked.Increment(ref counts->Hits[i]);
            if (i == counts->Throw)
            {
                throw new InvalidOperationException($"index {i}");
            }
        }
    }

    // Runs the counting body; the state is this method's own parameter, so lambdas can call it.
    private static void Run(WorkerPool pool, int count, int grain, Counts counts) => pool.For(count, grain, &CountHits, &counts);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(5)]
    public void VisitsEveryIndexExactlyOnce(int threads)
    {
        using WorkerPool pool = new(threads);
        foreach (int count in new[] { 0, 1, 2, 3, 7, 64, 1000, 4097 })
        {
            foreach (int grain in new[] { 1, 3, 100, 10_000 })
            {
                int[] hits = new int[Math.Max(count, 1)];
                fixed (int* pointer = hits)
                {
                    Counts counts = new() { Hits = pointer, Throw = -1 };
                    pool.For(count, grain, &CountHits, &counts);
                }

                Assert.All(hits.Take(count), h => Assert.Equal(1, h));
            }
        }
    }

    [Fact]
    public void ManyLoopsBackToBack_NoneIsLost()
    {
        using WorkerPool pool = new(2);
        int[] hits = new int[64];
        fixed (int* pointer = hits)
        {
            Counts counts = new() { Hits = pointer, Throw = -1 };
            for (int loop = 0; loop < 20_000; loop++)
            {
                pool.For(hits.Length, 1, &CountHits, &counts);
            }
        }

        Assert.All(hits, h => Assert.Equal(20_000, h));
    }

    [Fact]
    public void ExceptionInABody_ReachesTheCaller_AndThePoolStaysUsable()
    {
        using WorkerPool pool = new(2);
        int[] hits = new int[100];
        fixed (int* pointer = hits)
        {
            // Index 90 runs on the worker (second half of the split).
            Counts failing = new() { Hits = pointer, Throw = 90 };
            InvalidOperationException error = Assert.Throws<InvalidOperationException>(() => Run(pool, 100, 1, failing));
            Assert.Equal("index 90", error.Message);

            Counts fine = new() { Hits = pointer, Throw = -1 };
            pool.For(100, 1, &CountHits, &fine);
        }

        // The failing range stopped after index 90; everything else ran in both loops.
        Assert.All(hits[..91], h => Assert.Equal(2, h));
        Assert.All(hits[91..], h => Assert.Equal(1, h));
    }

    [Fact]
    public void ConcurrentCallers_AreSerialised()
    {
        using WorkerPool pool = new(2);
        int[] hits = new int[256];
        Parallel.For(0, 4, _ =>
        {
            fixed (int* pointer = hits)
            {
                Counts counts = new() { Hits = pointer, Throw = -1 };
                for (int loop = 0; loop < 500; loop++)
                {
                    pool.For(hits.Length, 1, &CountHits, &counts);
                }
            }
        });

        Assert.All(hits, h => Assert.Equal(2000, h));
    }

    [Fact]
    public void RejectsAThreadCountBelowOne_AndLoopsAfterDispose()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new WorkerPool(0));
        WorkerPool pool = new(2);
        pool.Dispose();
        pool.Dispose();
        int[] hits = new int[8];
        fixed (int* pointer = hits)
        {
            Counts counts = new() { Hits = pointer, Throw = -1 };
            Assert.Throws<ObjectDisposedException>(() => Run(pool, 8, 1, counts));
        }
    }
}
