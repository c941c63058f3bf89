using System.Reflection;

namespace Kiln.Kernels;

/// <summary>
/// One ILGPU kernel that the Kiln generator emitted for a definition. Every <c>[Kernels]</c> class gets a
/// <c>GeneratedKernels</c> list of these, so that tools and tests can compile each kernel offline (for example
/// to PTX) without knowing the ops by name.
/// </summary>
/// <param name="Op">The op (definition) name.</param>
/// <param name="Method">The static kernel method.</param>
/// <param name="IsExplicitlyGrouped">
/// True for kernels launched with an explicit group size (row ops: one group per row); false for implicitly
/// grouped kernels whose first parameter is an <c>Index1D</c>.
/// </param>
public sealed record GeneratedKernel(string Op, MethodInfo Method, bool IsExplicitlyGrouped);
