using Microsoft.CodeAnalysis;

namespace Kiln.Generators;

/// <summary>Turns Kiln kernel definitions into CPU loops and ILGPU kernels.</summary>
[Generator(LanguageNames.CSharp)]
public sealed class KernelGenerator : IIncrementalGenerator
{
    /// <inheritdoc />
    public void Initialize(IncrementalGeneratorInitializationContext context)
    {
    }
}
