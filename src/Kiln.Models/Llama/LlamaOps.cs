// Fused ops that only the Llama block needs, written as Kiln kernel definitions: the generator turns each into a
// CPU loop and an ILGPU kernel, exactly as it does for the built-in ops in Kiln.Core.
using Kiln.Kernels;

namespace Kiln.Models.Llama;

/// <summary>The Llama block's own fused ops.</summary>
[Kernels]
public static partial class LlamaOps
{
    /// <summary>
    /// The SwiGLU gate fused into the gate projection: out = silu(x W1ᵀ) ⊙ up, where up = x W3ᵀ was computed
    /// first and silu(z) = z / (1 + exp(-z)).
    /// </summary>
    [Epilogue]
    public static float SwiGluGate(float acc, float up) => acc / (1f + MathF.Exp(-acc)) * up;
}
