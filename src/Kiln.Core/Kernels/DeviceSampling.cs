// Token choice from one row of logits [V] on the device that holds them, so that a decode step reads back one
// int32 id instead of V floats. Two rules, the same as Kiln.Models' Sampler without top-k and top-p:
//   ArgMax: the first index of the largest logit, NaN ignored; 0 when every logit is NaN.
//   Sample: max = the largest non-NaN logit; if it is not finite (all -inf/NaN, or a +inf) the ArgMax rule;
//           else weights w_i = exp((l_i - max) / T), 0 for NaN (and -inf gives 0), mass = Σ w_i,
//           target = u · mass, and the id is the first in index order (among w_i > 0) where the running sum of
//           weights passes the target (running > target); if rounding leaves the target at or above the last
//           running sum, the last id with a positive weight.
// CPU paths: scalar, with float32 weights (MathF.Exp) and float64 sums, which is exactly the Sampler's arithmetic,
// so the cpu device gives the Sampler's ids bit for bit. ILGPU path: one group of up to 1024 threads computes in
// float32: block reductions for the max and the mass, then a block prefix scan of the weights over V in chunks of
// one group, stopping at the first chunk where the running sum passes the target. Its ids equal the float64 rule's
// except where the target lies within float32 rounding of a boundary of the running sum.
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;

namespace Kiln.Kernels;

/// <summary>Greedy and temperature sampling of one row of logits on the device that holds them.</summary>
public static class DeviceSampling
{
    /// <summary>The largest group the ILGPU kernels launch (CUDA's limit per group).</summary>
    public const int MaxGroupSize = 1024;

    /// <summary>Shared memory per group of the sampling kernel, in bytes: checked against ILGPU's 48 KB on CUDA.</summary>
    public const int SharedBytes = (2 * 32 * sizeof(float)) + (2 * 32 * sizeof(int));

    private static readonly object s_argMaxKey = new();
    private static readonly object s_sampleKey = new();

    /// <summary>The ILGPU kernels of this class, for offline (PTX) compilation.</summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } =
    [
        new("DeviceSampling.ArgMax", ((Action<ArrayView<float>, ArrayView<int>, int>)ArgMaxKernel).Method, true),
        new("DeviceSampling.Sample", ((Action<ArrayView<float>, ArrayView<int>, int, float, float>)SampleKernel).Method, true),
    ];

    /// <summary>
    /// Writes the first index of the largest logit (NaN ignored; 0 when all are NaN) to <paramref name="id"/>. On
    /// an ILGPU device the launch is queued and not waited for.
    /// </summary>
    /// <param name="logits">One row of V ≥ 1 float32 logits ([V] or [1, V]).</param>
    /// <param name="id">An int32 tensor of one element on the same device.</param>
    /// <exception cref="ArgumentException">A dtype, shape or device does not fit.</exception>
    public static void ArgMax(Tensor logits, Tensor id)
    {
        int vocab = Validate("DeviceSampling.ArgMax", logits, id);
        switch (logits.Device)
        {
            case CpuDevice:
                id.AsSpan<int>()[0] = ArgMax(logits.AsSpan());
                break;
            case IlgpuDevice ilgpu:
                Action<KernelConfig, ArrayView<float>, ArrayView<int>, int> kernel = ilgpu.GetKernel(s_argMaxKey,
                    static accelerator => accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, int>(ArgMaxKernel));
                kernel(Config(ilgpu.Accelerator), logits.View<float>(), id.View<int>(), vocab);
                break;
            default:
                throw new NotSupportedException($"DeviceSampling.ArgMax: device {logits.Device.Name} is not supported.");
        }
    }

    /// <summary>
    /// Draws an id from softmax(<paramref name="logits"/> / <paramref name="temperature"/>) with the uniform number
    /// <paramref name="uniform"/> (the rule in the file header) and writes it to <paramref name="id"/>; temperature 0
    /// is <see cref="ArgMax(Tensor, Tensor)"/>. On an ILGPU device the launch is queued and not waited for, and the
    /// draw runs in float32 (the uniform is rounded to float32).
    /// </summary>
    /// <exception cref="ArgumentException">A dtype, shape or device does not fit.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The temperature is negative or not finite, or the uniform is outside [0, 1).</exception>
    public static void Sample(Tensor logits, float temperature, double uniform, Tensor id)
    {
        int vocab = Validate("DeviceSampling.Sample", logits, id);
        CheckDraw(temperature, uniform);
        if (temperature == 0f)
        {
            ArgMax(logits, id);
            return;
        }

        switch (logits.Device)
        {
            case CpuDevice:
                id.AsSpan<int>()[0] = Sample(logits.AsSpan(), temperature, uniform);
                break;
            case IlgpuDevice ilgpu:
                Action<KernelConfig, ArrayView<float>, ArrayView<int>, int, float, float> kernel = ilgpu.GetKernel(s_sampleKey,
                    static accelerator => accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<int>, int, float, float>(SampleKernel));
                kernel(Config(ilgpu.Accelerator), logits.View<float>(), id.View<int>(), vocab, temperature, (float)uniform);
                break;
            default:
                throw new NotSupportedException($"DeviceSampling.Sample: device {logits.Device.Name} is not supported.");
        }
    }

    /// <summary>
    /// Checks the draw arguments of <see cref="Sample(Tensor, float, double, Tensor)"/>, so that a caller can refuse
    /// them before doing work that the draw would follow.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The temperature is negative or not finite, or the uniform is outside [0, 1).</exception>
    public static void CheckDraw(float temperature, double uniform)
    {
        if (!(temperature >= 0) || !float.IsFinite(temperature))
        {
            throw new ArgumentOutOfRangeException(nameof(temperature), $"DeviceSampling.Sample: the temperature is {temperature}; pass a finite number >= 0 (0 means greedy).");
        }

        if (!(uniform >= 0 && uniform < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(uniform), $"DeviceSampling.Sample: the uniform number is {uniform}; pass a number in [0, 1).");
        }
    }

    /// <summary>The CPU rule of <see cref="ArgMax(Tensor, Tensor)"/> over a span.</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        float bestValue = float.NegativeInfinity;
        bool found = false;
        for (int i = 0; i < logits.Length; i++)
        {
            float value = logits[i];
            if (!float.IsNaN(value) && (!found || value > bestValue))
            {
                best = i;
                bestValue = value;
                found = true;
            }
        }

        return best;
    }

    /// <summary>
    /// The CPU rule of <see cref="Sample(Tensor, float, double, Tensor)"/> over a span: float32 weights, float64
    /// sums (the Sampler's arithmetic). <paramref name="temperature"/> must be above 0.
    /// </summary>
    public static int Sample(ReadOnlySpan<float> logits, float temperature, double uniform)
    {
        // The largest logit, NaN ignored; without a finite maximum the argmax rule.
        float max = float.NegativeInfinity;
        foreach (float value in logits)
        {
            if (value > max)
            {
                max = value;
            }
        }

        if (!float.IsFinite(max))
        {
            return ArgMax(logits);
        }

        // The mass of the weights.
        double mass = 0;
        foreach (float value in logits)
        {
            mass += Weight(value, max, temperature);
        }

        // The first id whose running sum passes the target; else the last with a weight.
        double target = uniform * mass;
        double running = 0;
        int last = -1;
        for (int i = 0; i < logits.Length; i++)
        {
            float weight = Weight(logits[i], max, temperature);
            if (weight <= 0)
            {
                continue;
            }

            running += weight;
            last = i;
            if (running > target)
            {
                return i;
            }
        }

        return last >= 0 ? last : ArgMax(logits);
    }

    // exp((l - max) / T) in float32; NaN weighs 0 (and -inf gives exp(-inf) = 0).
    private static float Weight(float logit, float max, float temperature) =>
        float.IsNaN(logit) ? 0f : MathF.Exp((logit - max) / temperature);

    // `op` is the full name ("DeviceSampling.Sample"): a constant, so that checking allocates nothing.
    private static int Validate(string op, Tensor logits, Tensor id)
    {
        OpChecks.Float32(op, nameof(logits), logits);
        if (logits.Length < 1 || logits.Size(-1) != logits.Length)
        {
            throw new ArgumentException(
                $"{op}: logits has shape {Tensor.FormatShape(logits.Shape)}; pass one row of V >= 1 logits, [V] or [1, V].",
                nameof(logits));
        }

        if (id is null || id.DType != DType.Int32 || id.Length != 1)
        {
            string what = id is null ? "null" : $"{id.DType.Name()} {Tensor.FormatShape(id.Shape)}";
            throw new ArgumentException(
                $"{op}: id is {what}; pass an int32 tensor of one element, e.g. Tensor.Empty([1], DType.Int32, device).",
                nameof(id));
        }

        OpChecks.SameDevice(op, nameof(id), id, nameof(logits), logits);
        return (int)logits.Length;
    }

    // One group of as many whole warps as the accelerator allows, at most 1024 threads (32 warps, so the per-warp
    // partials fit one warp for the second reduction level).
    private static KernelConfig Config(Accelerator accelerator)
    {
        int warp = accelerator.WarpSize;
        int group = Math.Min(MaxGroupSize, accelerator.MaxNumThreadsPerGroup) / warp * warp;
        if (group < warp || group / warp > 32)
        {
            throw new NotSupportedException($"DeviceSampling: a group of {group} threads with warps of {warp} does not fit the kernels' 32 per-warp partials.");
        }

        if (SharedBytes > accelerator.MaxSharedMemoryPerGroup)
        {
            throw new NotSupportedException($"DeviceSampling: the kernels need {SharedBytes} bytes of shared memory per group; {accelerator.Name} offers {accelerator.MaxSharedMemoryPerGroup}.");
        }

        return new KernelConfig(1, group);
    }

    /// <summary>
    /// Launch shape: one group of G threads (G = 1024 on CUDA). Thread i scans logits i, i + G, ... (coalesced)
    /// keeping the best (value, index); a warp-shuffle tree and a second tree over the per-warp partials give the
    /// group's best. A decode step's V is 32K to 256K logits: one pass of 128 KB to 1 MB, a few microseconds.
    /// </summary>
    internal static void ArgMaxKernel(ArrayView<float> logits, ArrayView<int> id, int vocab)
    {
        ArrayView<float> values = SharedMemory.Allocate<float>(32);
        ArrayView<int> indices = SharedMemory.Allocate<int>(32);

        // Best of this thread's strided elements, then of the group.
        (float value, int index) = StridedArgMax(logits, vocab);
        index = GroupArgMax(value, index, values, indices, out _);

        // One thread stores the id; no non-NaN logit means id 0.
        if (Group.IsFirstThread)
        {
            id[0] = index == int.MaxValue ? 0 : index;
        }
    }

    /// <summary>
    /// Launch shape: one group of G threads (G = 1024 on CUDA). Pass 1 (strided, coalesced): the argmax and the
    /// maximum. Pass 2: the mass Σ w_i by a group sum. Pass 3: chunks of G consecutive logits; each thread computes
    /// one weight, an inclusive group scan (warp shuffles, then a scan of the per-warp totals) gives the running
    /// sums, and the smallest index whose running sum passes the target ends the loop. Only one group runs, as the
    /// scan is sequential across chunks; at V = 128K that is 128 chunks of a few barriers each.
    /// </summary>
    internal static void SampleKernel(ArrayView<float> logits, ArrayView<int> id, int vocab, float temperature, float uniform)
    {
        ArrayView<float> values = SharedMemory.Allocate<float>(32);
        ArrayView<int> indices = SharedMemory.Allocate<int>(32);
        ArrayView<float> sums = SharedMemory.Allocate<float>(32);
        ArrayView<int> flags = SharedMemory.Allocate<int>(32);

        // Pass 1: the argmax (first index of the largest non-NaN logit) and the maximum.
        (float value, int index) = StridedArgMax(logits, vocab);
        int argMax = GroupArgMax(value, index, values, indices, out float max);
        if (argMax == int.MaxValue)
        {
            argMax = 0;
        }

        // Without a finite maximum there is no distribution: the argmax rule (the whole group leaves together).
        if (!(max > float.NegativeInfinity && max < float.PositiveInfinity))
        {
            if (Group.IsFirstThread)
            {
                id[0] = argMax;
            }

            return;
        }

        // Pass 2: the mass.
        int thread = Group.IdxX;
        int group = Group.DimX;
        float partial = 0f;
        for (int i = thread; i < vocab; i += group)
        {
            partial += GpuWeight(logits[i], max, temperature);
        }

        float mass = GroupReduce.Sum(partial, sums);
        float target = uniform * mass;

        // Pass 3: chunk by chunk, the running sum and the first index passing the target.
        float carry = 0f;
        int lastPositive = -1;
        int chosen = int.MaxValue;
        for (int start = 0; start < vocab; start += group)
        {
            // This thread's weight and the inclusive running sum through it.
            int i = start + thread;
            float weight = i < vocab ? GpuWeight(logits[i], max, temperature) : 0f;
            float chunkTotal;
            float running = carry + GroupInclusiveScan(weight, sums, out chunkTotal);
            if (weight > 0f)
            {
                lastPositive = i;
            }

            // The smallest passing index of this chunk, agreed by the whole group.
            int candidate = weight > 0f && running > target ? i : int.MaxValue;
            chosen = GroupMin(candidate, flags);
            if (chosen != int.MaxValue)
            {
                break;
            }

            carry += chunkTotal;
        }

        // Rounding left the target above the last running sum: the last id with a weight, else the argmax.
        if (chosen == int.MaxValue)
        {
            int last = GroupMax(lastPositive, flags);
            chosen = last >= 0 ? last : argMax;
        }

        if (Group.IsFirstThread)
        {
            id[0] = chosen;
        }
    }

    // The kernels' weight: exp((l - max) / T), 0 for NaN; -inf gives exp(-inf) = 0.
    private static float GpuWeight(float logit, float max, float temperature) =>
        !float.IsNaN(logit) ? MathF.Exp((logit - max) / temperature) : 0f;

    // This thread's best (value, index) over logits thread, thread + G, ...; (-inf, int.MaxValue) if all are NaN.
    private static (float Value, int Index) StridedArgMax(ArrayView<float> logits, int vocab)
    {
        float best = float.NegativeInfinity;
        int bestIndex = int.MaxValue;
        for (int i = Group.IdxX; i < vocab; i += Group.DimX)
        {
            float value = logits[i];
            if (!float.IsNaN(value) && (bestIndex == int.MaxValue || value > best))
            {
                best = value;
                bestIndex = i;
            }
        }

        return (best, bestIndex);
    }

    // Whether (value, index) beats (otherValue, otherIndex): a larger value, or an equal value at a smaller index.
    // Empty entries are (-inf, int.MaxValue), so any real entry (even -inf) beats them by index.
    private static bool Better(float value, int index, float otherValue, int otherIndex) =>
        value > otherValue || (value == otherValue && index < otherIndex);

    // The group's best (value, index), returned to every thread; the value through `max`.
    private static int GroupArgMax(float value, int index, ArrayView<float> values, ArrayView<int> indices, out float max)
    {
        // Within each warp.
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            float otherValue = Warp.ShuffleDown(value, offset);
            int otherIndex = Warp.ShuffleDown(index, offset);
            if (Better(otherValue, otherIndex, value, index))
            {
                value = otherValue;
                index = otherIndex;
            }
        }

        // One partial per warp, then warp 0 reduces the partials.
        if (Warp.IsFirstLane)
        {
            values[Warp.WarpIdx] = value;
            indices[Warp.WarpIdx] = index;
        }

        Group.Barrier();
        if (Warp.WarpIdx == 0)
        {
            bool has = Warp.LaneIdx < Group.DimX / Warp.WarpSize;
            value = has ? values[Warp.LaneIdx] : float.NegativeInfinity;
            index = has ? indices[Warp.LaneIdx] : int.MaxValue;
            for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            {
                float otherValue = Warp.ShuffleDown(value, offset);
                int otherIndex = Warp.ShuffleDown(index, offset);
                if (Better(otherValue, otherIndex, value, index))
                {
                    value = otherValue;
                    index = otherIndex;
                }
            }

            if (Warp.IsFirstLane)
            {
                values[0] = value;
                indices[0] = index;
            }
        }

        // Broadcast, and keep the scratch until everyone has read it.
        Group.Barrier();
        max = values[0];
        int result = indices[0];
        Group.Barrier();
        return result;
    }

    // The inclusive prefix sum of `value` over the group in thread order; the group's total through `total`.
    // `scratch` holds 32 floats (one per warp).
    private static float GroupInclusiveScan(float value, ArrayView<float> scratch, out float total)
    {
        // Inclusive scan within each warp.
        int lane = Warp.LaneIdx;
        for (int offset = 1; offset < Warp.WarpSize; offset *= 2)
        {
            float other = Warp.ShuffleUp(value, offset);
            if (lane >= offset)
            {
                value += other;
            }
        }

        // Warp totals to shared memory; warp 0 turns them into an inclusive scan over warps.
        if (lane == Warp.WarpSize - 1)
        {
            scratch[Warp.WarpIdx] = value;
        }

        Group.Barrier();
        int warps = Group.DimX / Warp.WarpSize;
        if (Warp.WarpIdx == 0)
        {
            float warpTotal = lane < warps ? scratch[lane] : 0f;
            for (int offset = 1; offset < Warp.WarpSize; offset *= 2)
            {
                float other = Warp.ShuffleUp(warpTotal, offset);
                if (lane >= offset)
                {
                    warpTotal += other;
                }
            }

            if (lane < warps)
            {
                scratch[lane] = warpTotal;
            }
        }

        // Add the totals of the warps before this one.
        Group.Barrier();
        float before = Warp.WarpIdx > 0 ? scratch[Warp.WarpIdx - 1] : 0f;
        total = scratch[warps - 1];
        Group.Barrier();
        return before + value;
    }

    // The group's minimum of an int, returned to every thread. `scratch` holds 32 ints.
    private static int GroupMin(int value, ArrayView<int> scratch)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            int other = Warp.ShuffleDown(value, offset);
            value = other < value ? other : value;
        }

        if (Warp.IsFirstLane)
        {
            scratch[Warp.WarpIdx] = value;
        }

        Group.Barrier();
        if (Warp.WarpIdx == 0)
        {
            value = Warp.LaneIdx < Group.DimX / Warp.WarpSize ? scratch[Warp.LaneIdx] : int.MaxValue;
            for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
            {
                int other = Warp.ShuffleDown(value, offset);
            value = other < value ? other : value;
            }

            if (Warp.IsFirstLane)
            {
                scratch[0] = value;
            }
        }

        Group.Barrier();
        int result = scratch[0];
        Group.Barrier();
        return result;
    }

    // The group's maximum of an int, returned to every thread. `scratch` holds 32 ints.
    private static int GroupMax(int value, ArrayView<int> scratch) => -GroupMin(-value, scratch);
}
