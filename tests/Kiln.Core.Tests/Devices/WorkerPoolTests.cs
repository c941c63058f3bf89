// The worker pool: every index is visited exactly once whatever the count, grain and thread count, and whichever
// thread claims a range; loops back to back (the decode pattern) never lose a wake-up. Under misuse and load: an exception in a body reaches the caller and leaves the pool usable,
// a loop started from inside a body of the same pool runs (inline) instead of deadlocking, several threads may
// call For at once, and an idle pool disposes promptly. Each loop that could hang runs with a deadline.

using System.Runtime.InteropServices;
using Kiln.Devices;
using Xunit;

namespace Kiln.Core.Tests.Devices;

public sealed class WorkerPoolTests
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromSeconds(20);

    private unsafe struct Counts
    {
        public int* Hits;
    }

    private static unsafe void CountHits(void* state, int start, int end)
    {
        Counts* counts = (Counts*)state;
        for (int i = start; i < end; i++)
        {
            Interlocked.Increment(ref counts->Hits[i]);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(5)]
    public unsafe void VisitsEveryIndexExactlyOnce(int threads)
    {
        using WorkerPool pool = new(threads);
        foreach (int count in new[] { 0, 1, 2, 3, 7, 64, 1000, 4097 })
        {
            foreach (int grain in new[] { 1, 3, 100, 10_000 })
            {
                int[] hits = new int[Math.Max(count, 1)];
                fixed (int* pointer = hits)
                {
                    Counts counts = new() { Hits = pointer };
                    pool.For(count, grain, &CountHits, &counts);
                }

                Assert.All(hits.Take(count), h => Assert.Equal(1, h));
            }
        }
    }

    [Fact]
    public unsafe void ManyLoopsBackToBack_NoneIsLost()
    {
        using WorkerPool pool = new(2);
        int[] hits = new int[64];
        fixed (int* pointer = hits)
        {
            Counts counts = new() { Hits = pointer };
            for (int loop = 0; loop < 20_000; loop++)
            {
                pool.For(hits.Length, 1, &CountHits, &counts);
            }
        }

        Assert.All(hits, h => Assert.Equal(20_000, h));
    }

    [Fact]
    public async Task WorkersWokenFromSleep_RunNothingTwice()
    {
        // Before each loop the workers fall asleep, so the caller usually finishes its own range and claims the
        // others before a worker is awake; a worker that wakes afterwards must find nothing left of that loop and must
        // not run a range of it, or of the next loop, twice.
        using WorkerPool pool = new(3);
        int wrong = await Task.Run(() =>
        {
            int bad = 0;
            for (int loop = 0; loop < 12; loop++)
            {
                Thread.Sleep(loop % 3 == 0 ? 30 : 0);
                bad += RunAlternating(pool, 20);
            }

            return bad;
        }).WaitAsync(TimeSpan.FromSeconds(60));

        Assert.Equal(0, wrong);
    }

    [Fact]
    public async Task LoopsOfAlternatingWidth_RunEveryIndexExactlyOnce()
    {
        // Loops alternate between 2 parts (the highest workers sit out) and one part per thread: a worker that sat
        // out one loop must not mistake the next loop's fields for the one it skipped and run a range twice.
        using WorkerPool pool = new(3);
        int wrong = await Task.Run(() => RunAlternating(pool, 300)).WaitAsync(TimeSpan.FromSeconds(60));

        Assert.Equal(0, wrong);
    }

    private static unsafe int RunAlternating(WorkerPool pool, int loops)
    {
        int wrong = 0;
        int[] hits = new int[3];
        fixed (int* pointer = hits)
        {
            Counts counts = new() { Hits = pointer };
            for (int loop = 0; loop < loops; loop++)
            {
                int count = loop % 2 == 0 ? 2 : 3;
                pool.For(count, 1, &CountHits, &counts);
                for (int i = 0; i < count; i++)
                {
                    if (hits[i] != 1)
                    {
                        wrong++;
                    }

                    hits[i] = 0;
                }
            }
        }

        return wrong;
    }

    [Fact]
    public async Task DisposeDuringALoop_LetsTheLoopFinish()
    {
        // The workers fall asleep, a loop wakes them, and Dispose runs while the caller is in its own range: the
        // woken worker must still run its range (or the caller waits for it forever).
        for (int attempt = 0; attempt < 20; attempt++)
        {
            WorkerPool pool = new(2);
            Thread.Sleep(100);
            DisposeRace race = new();
            Task<int> loop = Task.Run(() => RunSignalling(pool, race));
            Task dispose = Task.Run(() =>
            {
                while (Volatile.Read(ref race.Started) == 0)
                {
                }

                pool.Dispose();
            });

            int total = await loop.WaitAsync(s_deadline);
            await dispose.WaitAsync(s_deadline);
            Assert.Equal(2, total);
        }
    }

    private static unsafe int RunSignalling(WorkerPool pool, DisposeRace race)
    {
        GCHandle handle = GCHandle.Alloc(race);
        try
        {
            NestedState state = new() { Pool = GCHandle.ToIntPtr(handle) };
            pool.For(2, 1, &SignalThenCount, &state);
            return state.Total;
        }
        finally
        {
            handle.Free();
        }
    }

    private static unsafe void SignalThenCount(void* state, int start, int end)
    {
        // Range 0 (the caller's) tells the disposing thread to go, then stays busy for a moment.
        NestedState* shared = (NestedState*)state;
        if (start == 0)
        {
            DisposeRace race = (DisposeRace)GCHandle.FromIntPtr(shared->Pool).Target!;
            Volatile.Write(ref race.Started, 1);
            Thread.SpinWait(200_000);
        }

        Interlocked.Add(ref shared->Total, end - start);
    }

    private sealed class DisposeRace
    {
        public int Started;
    }

    [Fact]
    public void RejectsAThreadCountBelowOne()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new WorkerPool(0));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task NestedFor_OnTheSamePool_CompletesWithEveryIndex(int threads)
    {
        using WorkerPool pool = new(threads);

        // Outer loop of 8 parts, each running an inner loop of 100 indices on the same pool.
        int total = await Task.Run(() => RunNested(pool)).WaitAsync(s_deadline);

        Assert.Equal(8 * 100, total);
    }

    [Fact]
    public unsafe void ExceptionInABody_ReachesTheCaller_AndThePoolStaysUsable()
    {
        using WorkerPool pool = new(2);
        int total = 0;

        InvalidOperationException e = Assert.Throws<InvalidOperationException>(() => pool.For(100, 1, &ThrowInSecondHalf, null));
        pool.For(100, 1, &Count, &total);

        Assert.Equal("second half", e.Message);
        Assert.Equal(100, total);
    }

    [Fact]
    public async Task ConcurrentCallers_EachGetTheirWholeRange()
    {
        using WorkerPool pool = new(2);
        int wrong = 0;

        await Task.Run(() => Parallel.For(0, 4, _ =>
        {
            for (int i = 0; i < 500; i++)
            {
                if (CountOnce(pool, 64) != 64)
                {
                    Interlocked.Increment(ref wrong);
                }
            }
        })).WaitAsync(s_deadline);

        Assert.Equal(0, wrong);
    }

    [Fact]
    public async Task DisposeWhileIdle_ReturnsPromptly_AndTwiceIsHarmless()
    {
        WorkerPool pool = new(3);
        Assert.Equal(30, CountOnce(pool, 30));

        await Task.Run(() =>
        {
            pool.Dispose();
            pool.Dispose();
        }).WaitAsync(s_deadline);

        Assert.Throws<ObjectDisposedException>(() => CountOnce(pool, 30));
    }

    private static unsafe int CountOnce(WorkerPool pool, int count)
    {
        int total = 0;
        pool.For(count, 1, &Count, &total);
        return total;
    }

    private static unsafe int RunNested(WorkerPool pool)
    {
        GCHandle handle = GCHandle.Alloc(pool);
        try
        {
            NestedState state = new() { Pool = GCHandle.ToIntPtr(handle) };
            pool.For(8, 1, &Outer, &state);
            return state.Total;
        }
        finally
        {
            handle.Free();
        }
    }

    private static unsafe void Outer(void* state, int start, int end)
    {
        NestedState* nested = (NestedState*)state;
        for (int i = start; i < end; i++)
        {
            int inner = 0;
            WorkerPool pool = (WorkerPool)GCHandle.FromIntPtr(nested->Pool).Target!;
            pool.For(100, 1, &Count, &inner);
            Interlocked.Add(ref nested->Total, inner);
        }
    }

    private static unsafe void Count(void* state, int start, int end) => Interlocked.Add(ref *(int*)state, end - start);

    private static unsafe void ThrowInSecondHalf(void* state, int start, int end)
    {
        if (end > 50)
        {
            throw new InvalidOperationException("second half");
        }
    }

    private struct NestedState
    {
        public nint Pool;
        public int Total;
    }
}
