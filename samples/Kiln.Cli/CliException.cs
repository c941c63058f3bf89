// The errors the command line reports itself: a bad flag value, a missing default model, a prompt that does not
// fit. The message is one line naming the flag or file and saying what to do; the exit code tells usage errors
// (2) from failures to load or run (1).

namespace Kiln.Cli;

/// <summary>A command-line error with a one-line message and an exit code.</summary>
public sealed class CliException : Exception
{
    /// <summary>Exit code for a bad command line: a flag value out of range, a prompt that does not fit.</summary>
    public const int UsageExitCode = 2;

    /// <summary>Exit code for a failure to find, load or run a model.</summary>
    public const int FailureExitCode = 1;

    /// <summary>Creates the error.</summary>
    public CliException(string message, int exitCode = UsageExitCode, Exception? inner = null)
        : base(message, inner)
    {
        ExitCode = exitCode;
    }

    /// <summary>The process exit code to return.</summary>
    public int ExitCode { get; }
}
