// The one switch for kernels that other branches of issue 3 bring: while a field here is not null, the checks that
// need that kernel report a PENDING row naming the branch instead of running (and failing for a missing kernel).
// INTEGRATOR(gpuattn): set Attention to null once Attention.Append/Compute run on ILGPU tensors; the attention
// correctness entries and the model section then run.

namespace Kiln.GpuCheck;

/// <summary>Kernels not on this branch yet: why each pending check waits, or null when it can run.</summary>
internal static class PendingKernels
{
    /// <summary>GPU attention (branch gpuattn): the attention checks and every model run on an ILGPU device.</summary>
    public static readonly string? Attention = null;
}
