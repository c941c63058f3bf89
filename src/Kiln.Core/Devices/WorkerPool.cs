using System.Runtime.ExceptionServices;

namespace Kiln.Devices;

/// <summary>
/// A persistent pool of worker threads that runs one parallel loop at a time. The calling thread takes
/// part in every loop, so a pool of N threads starts N - 1 workers. A loop is a function pointer plus an
/// untyped state pointer: nothing is allocated per call, which keeps decode steps allocation-free.
/// </summary>
/// <remarks>
/// Work is split into at most <see cref="ThreadCount"/> contiguous ranges. Range 0 is the caller's; the others go
/// to whichever thread claims them first, the caller included once its own range is done, so a worker that the
/// operating system has descheduled (a machine running more threads than it has cores) does not hold up the loop
/// unless it had already started a range. Each element is computed by exactly one thread with the same arithmetic
/// whatever the split or the thread, so results do not depend on the thread count or on who ran what. Workers spin
/// briefly between loops, then sleep. A loop started from inside a body of the same pool (an op calling an op) runs
/// inline on that thread: the pool's threads are all busy with the outer loop, so waiting for them would deadlock.
/// </remarks>
public sealed unsafe class WorkerPool : IDisposable
{
    private const int SpinIterations = 20_000;

    /// <summary>
    /// Stack size of the workers. Kernels keep per-row scratch (attention scores, up to 64K floats) on the
    /// stack, so workers get the same room as a Linux main thread.
    /// </summary>
    public const int WorkerStackSize = 8 << 20;

    private readonly Thread[] _workers;
    private readonly SemaphoreSlim[] _wake;
    private readonly int[] _sleeping;
    private readonly object _callLock = new();

    // The loop in flight. Written by the caller before the generation is bumped.
    private delegate*<void*, int, int, void> _body;
    private void* _state;
    private int _count;
    private int _parts;
    private int _pending;
    private ExceptionDispatchInfo? _failure;

    // The next unclaimed range of the loop in flight, with that loop's number in the high word: a claim succeeds
    // only while the number matches, so a late worker cannot take a range of a loop it did not see published.
    private long _claims;

    // The loop's number and part count in one word, written last and read in one load: a worker never pairs one
    // loop's number with another loop's part count. _generation counts loops on the caller's side (under the lock).
    private long _published;
    private int _generation;
    private volatile bool _disposed;

    // The pool whose loop body this thread is running, if any: nested loops on that pool run inline.
    [ThreadStatic]
    private static WorkerPool? t_running;

    /// <summary>Creates a pool that runs loops on <paramref name="threadCount"/> threads (the caller included).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The thread count is below 1.</exception>
    public WorkerPool(int threadCount)
    {
        if (threadCount < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(threadCount), threadCount, "The thread count must be at least 1.");
        }

        ThreadCount = threadCount;
        _workers = new Thread[threadCount - 1];
        _wake = new SemaphoreSlim[threadCount - 1];
        _sleeping = new int[threadCount - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            int index = i;
            _wake[i] = new SemaphoreSlim(0);
            _workers[i] = new Thread(() => WorkerLoop(index), WorkerStackSize)
            {
                IsBackground = true,
                Name = $"kiln-worker-{i + 1}",
            };
            _workers[i].Start();
        }
    }

    /// <summary>The number of threads that run each loop, the caller included.</summary>
    public int ThreadCount { get; }

    /// <summary>
    /// Runs <paramref name="body"/>(state, start, end) over [0, <paramref name="count"/>) and returns when every
    /// range is done. Ranges hold at least <paramref name="grain"/> elements (except the last), so small loops
    /// stay on the calling thread. An exception thrown by the body is rethrown here.
    /// </summary>
    public void For(int count, int grain, delegate*<void*, int, int, void> body, void* state)
    {
        if (count <= 0)
        {
            return;
        }

        // Small loops, a single-threaded pool, or a loop nested in one of this pool's bodies run inline.
        int parts = Math.Min(ThreadCount, (count + Math.Max(grain, 1) - 1) / Math.Max(grain, 1));
        if (parts <= 1 || t_running == this)
        {
            body(state, 0, count);
            return;
        }

        lock (_callLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);

            _body = body;
            _state = state;
            _count = count;
            _parts = parts;
            _failure = null;
            Volatile.Write(ref _pending, parts);

            // Publish the loop, then wake only the workers that went to sleep.
            _generation++;
            Interlocked.Exchange(ref _claims, ((long)_generation << 32) | 1);
            Interlocked.Exchange(ref _published, ((long)_generation << 32) | (uint)parts);
            for (int i = 0; i < _workers.Length; i++)
            {
                if (Interlocked.Exchange(ref _sleeping[i], 0) == 1)
                {
                    _wake[i].Release();
                }
            }

            RunPart(0);
            while (TryClaim(_generation, parts, out int part))
            {
                RunPart(part);
            }

            // Wait for the ranges workers started; they are short, so spin.
            SpinWait spin = default;
            while (Volatile.Read(ref _pending) != 0)
            {
                spin.SpinOnce(sleep1Threshold: -1);
            }

            _body = null;
            _state = null;
            _failure?.Throw();
        }
    }

    /// <summary>Takes the next range of loop <paramref name="generation"/>, if that loop still has one.</summary>
    private bool TryClaim(int generation, int parts, out int part)
    {
        while (true)
        {
            long claims = Volatile.Read(ref _claims);
            part = (int)claims;
            if (Generation(claims) != generation || part >= parts)
            {
                return false;
            }

            if (Interlocked.CompareExchange(ref _claims, claims + 1, claims) == claims)
            {
                return true;
            }
        }
    }

    private void RunPart(int part)
    {
        // Even split of [0, count) into `parts` contiguous ranges.
        int start = (int)((long)_count * part / _parts);
        int end = (int)((long)_count * (part + 1) / _parts);
        WorkerPool? outer = t_running;
        t_running = this;
        try
        {
            _body(_state, start, end);
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref _failure, ExceptionDispatchInfo.Capture(e), null);
        }
        finally
        {
            t_running = outer;
            Interlocked.Decrement(ref _pending);
        }
    }

    private void WorkerLoop(int index)
    {
        int seen = 0;
        while (true)
        {
            // Spin for a while: in a decode loop the next op follows within microseconds.
            int spins = 0;
            while (Generation(Volatile.Read(ref _published)) == seen && !_disposed)
            {
                if (++spins < SpinIterations)
                {
                    Thread.SpinWait(8);
                    continue;
                }

                // Declare sleep, then check again so that a loop published meanwhile is not missed.
                Interlocked.Exchange(ref _sleeping[index], 1);
                if (Generation(Volatile.Read(ref _published)) != seen || _disposed)
                {
                    Interlocked.Exchange(ref _sleeping[index], 0);
                    break;
                }

                _wake[index].Wait();
                spins = 0;
            }

            if (_disposed)
            {
                return;
            }

            // Take the loop's number and part count together, then claim ranges of that loop while it has any. The
            // other fields are stable while a range is claimed and not finished: the caller waits for it. Once the
            // loop has no range left it may end and the next one be published meanwhile; the claim sees that.
            long published = Volatile.Read(ref _published);
            seen = Generation(published);
            while (TryClaim(seen, (int)published, out int part))
            {
                RunPart(part);
            }
        }
    }

    private static int Generation(long published) => (int)(published >> 32);

    /// <summary>Stops the workers once the loop in flight, if any, has finished. Loops may not be started afterwards.</summary>
    public void Dispose()
    {
        // Under the call lock: a worker woken for a loop must not see the pool disposed before it ran its part.
        lock (_callLock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
        }

        for (int i = 0; i < _workers.Length; i++)
        {
            _wake[i].Release();
        }

        foreach (Thread worker in _workers)
        {
            worker.Join();
        }

        foreach (SemaphoreSlim wake in _wake)
        {
            wake.Dispose();
        }
    }
}
