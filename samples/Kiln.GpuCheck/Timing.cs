// Timing of device work: warm-up launches first (they compile and load the kernels), then several timed
// repetitions, each a batch of launches followed by Accelerator.Synchronize, so that the time covers the work
// itself and not only the queueing. The figure reported is the median repetition divided by the batch size.

using System.Diagnostics;
using Kiln.Devices;

namespace Kiln.GpuCheck;

/// <summary>How many times to run a measured piece of work.</summary>
/// <param name="Warmup">Untimed runs first.</param>
/// <param name="Repetitions">Timed repetitions; the median is reported.</param>
/// <param name="Batch">Runs per repetition, between two synchronisations.</param>
internal readonly record struct Repeat(int Warmup, int Repetitions, int Batch);

/// <summary>Median wall time of device work.</summary>
internal static class Timing
{
    /// <summary>
    /// The median time in seconds of one <paramref name="run"/>, synchronising <paramref name="device"/> around
    /// each batch.
    /// </summary>
    public static double Median(IlgpuDevice device, Repeat repeat, Action run)
    {
        // Warm-up: compile, load and touch everything once.
        for (int i = 0; i < repeat.Warmup; i++)
        {
            run();
        }

        device.Synchronize();

        // Timed batches.
        double[] seconds = new double[repeat.Repetitions];
        for (int r = 0; r < seconds.Length; r++)
        {
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < repeat.Batch; i++)
            {
                run();
            }

            device.Synchronize();
            seconds[r] = Stopwatch.GetElapsedTime(start).TotalSeconds / repeat.Batch;
        }

        return MedianOf(seconds);
    }

    /// <summary>The median of <paramref name="values"/> (the mean of the middle two for an even count).</summary>
    public static double MedianOf(double[] values)
    {
        double[] sorted = (double[])values.Clone();
        Array.Sort(sorted);
        int middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }
}
