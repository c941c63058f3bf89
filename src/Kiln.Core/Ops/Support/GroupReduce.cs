using ILGPU;
using ILGPU.Runtime;

namespace Kiln.Kernels;

// Group-wide reductions for explicitly grouped ILGPU kernels (row ops: one group per row). Each reduction is a
// warp-shuffle tree inside every warp, one partial per warp through shared memory, and a second shuffle tree in
// warp 0; the result is broadcast to every thread of the group. The kernel allocates the shared scratch
// (SharedMemory.Allocate<float>(ScratchLength)) and passes it in, so one scratch serves several reductions.

/// <summary>Group-wide reductions and launch sizes for generated row kernels.</summary>
public static class GroupReduce
{
    /// <summary>Floats of shared memory a kernel allocates for the reductions: one per warp, 32 warps at most.</summary>
    public const int ScratchLength = 32;

    /// <summary>The largest group generated row kernels launch.</summary>
    public const int MaxGroupSize = 256;

    /// <summary>
    /// The group size for rows of <paramref name="rowLength"/> elements: the row length rounded up to whole
    /// warps, at least one warp, at most <see cref="MaxGroupSize"/> or what the accelerator allows.
    /// </summary>
    public static int GroupSize(Accelerator accelerator, int rowLength)
    {
        int warp = accelerator.WarpSize;
        int limit = Math.Min(MaxGroupSize, accelerator.MaxNumThreadsPerGroup) / warp * warp;
        int wanted = (rowLength + warp - 1) / warp * warp;
        return Math.Clamp(wanted, warp, Math.Max(warp, limit));
    }

    /// <summary>The sum of <paramref name="value"/> over the group, returned to every thread.</summary>
    /// <remarks>The group size must be a multiple of the warp size; every thread of the group must call this.</remarks>
    public static float Sum(float value, ArrayView<float> scratch)
    {
        // Reduce within each warp.
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            value += Warp.ShuffleDown(value, offset);
        }

        // One partial per warp goes to shared memory.
        if (Warp.IsFirstLane)
        {
            scratch[Warp.WarpIdx] = value;
        }

        Group.Barrier();

        // Warp 0 reduces the partials and publishes the total in scratch[0].
        if (Warp.WarpIdx == 0)
        {
            value = Warp.LaneIdx < Group.DimX / Warp.WarpSize ? scratch[Warp.LaneIdx] : 0f;
            for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            {
                value += Warp.ShuffleDown(value, offset);
            }

            if (Warp.IsFirstLane)
            {
                scratch[0] = value;
            }
        }

        Group.Barrier();
        float total = scratch[0];

        // Keep the scratch untouched until every thread has read the total.
        Group.Barrier();
        return total;
    }

    /// <summary>The maximum of <paramref name="value"/> over the group, returned to every thread.</summary>
    /// <remarks>The group size must be a multiple of the warp size; every thread of the group must call this.</remarks>
    public static float Max(float value, ArrayView<float> scratch)
    {
        // Reduce within each warp.
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            value = MathF.Max(value, Warp.ShuffleDown(value, offset));
        }

        // One partial per warp goes to shared memory.
        if (Warp.IsFirstLane)
        {
            scratch[Warp.WarpIdx] = value;
        }

        Group.Barrier();

        // Warp 0 reduces the partials and publishes the maximum in scratch[0].
        if (Warp.WarpIdx == 0)
        {
            value = Warp.LaneIdx < Group.DimX / Warp.WarpSize ? scratch[Warp.LaneIdx] : float.NegativeInfinity;
            for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            {
                value = MathF.Max(value, Warp.ShuffleDown(value, offset));
            }

            if (Warp.IsFirstLane)
            {
                scratch[0] = value;
            }
        }

        Group.Barrier();
        float maximum = scratch[0];

        // Keep the scratch untouched until every thread has read the maximum.
        Group.Barrier();
        return maximum;
    }
}
