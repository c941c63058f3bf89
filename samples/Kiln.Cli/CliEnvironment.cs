// What the command line reads from its surroundings, gathered in one record so that tests can pass their own
// instead of changing the process environment.

namespace Kiln.Cli;

/// <summary>The environment of one run: the KILN_MODEL variable and the home directory.</summary>
/// <param name="ModelVariable">The value of $KILN_MODEL, or null when unset.</param>
/// <param name="HomeDirectory">The user's home directory, or null when unknown.</param>
public sealed record CliEnvironment(string? ModelVariable, string? HomeDirectory)
{
    /// <summary>The environment of this process.</summary>
    public static CliEnvironment FromProcess() => new(
        Environment.GetEnvironmentVariable("KILN_MODEL"),
        // DoNotVerify: a $HOME that does not exist is still named in the "no model" error instead of "unknown".
        Environment.GetFolderPath(Environment.SpecialFolder.UserProfile, Environment.SpecialFolderOption.DoNotVerify) is { Length: > 0 } home
            ? home
            : null);

    /// <summary>The default model path under the home directory: ~/.cache/kiln/models/stories260K/stories260K.bin.</summary>
    public string? DefaultModelPath => HomeDirectory is null
        ? null
        : Path.Combine(HomeDirectory, ".cache", "kiln", "models", "stories260K", "stories260K.bin");
}
