// The `kiln` command line: parses the arguments (System.CommandLine), runs one command, and turns every failure
// into one line on stderr ("kiln: error: ...", naming the flag or file and what to do) and a non-zero exit code:
// 2 for a bad command line, 1 for a file or model that cannot be used. --verbose adds the stack trace.
// Generated text goes to stdout; load information, timings and notes go to stderr.

using System.CommandLine;
using System.CommandLine.Invocation;
using Kiln.Cli.Commands;
using Kiln.Models;

namespace Kiln.Cli;

/// <summary>The entry point of the <c>kiln</c> command line.</summary>
public static class KilnCli
{
    /// <summary>Runs <c>kiln</c> with <paramref name="args"/> in this process's environment.</summary>
    /// <returns>The exit code: 0 on success, 1 when a file or model cannot be used, 2 for a bad command line.</returns>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr) =>
        Run(args, stdout, stderr, CliEnvironment.FromProcess());

    /// <summary>Runs <c>kiln</c> with <paramref name="args"/> in the given environment (tests pass their own).</summary>
    /// <returns>The exit code: 0 on success, 1 when a file or model cannot be used, 2 for a bad command line.</returns>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, CliEnvironment environment)
    {
        ArgumentNullException.ThrowIfNull(args);
        CliContext context = new(stdout, stderr, environment);
        RootCommand root = BuildRoot(context);

        // Report a parse error as one line; help and version requests go through normally.
        ParseResult parse = root.Parse(args);
        if (parse.Action is ParseErrorAction && parse.Errors.Count > 0)
        {
            // At the top level an unrecognised word (a misspelt command) explains more than "required command was
            // not provided"; below it, the missing subcommand is the better hint.
            bool top = parse.CommandResult.Command is RootCommand;
            string command = top ? "kiln" : $"kiln {CommandPath(parse.CommandResult)}";
            System.CommandLine.Parsing.ParseError error = (top ? parse.Errors.FirstOrDefault(static e => e.Message.StartsWith("Unrecognized", StringComparison.Ordinal)) : null) ?? parse.Errors[0];
            stderr.WriteLine($"kiln: error: {Readable(OneLine(error.Message)).TrimEnd('.')}; see '{command} --help'.");
            return CliException.UsageExitCode;
        }

        return parse.Invoke(new InvocationConfiguration
        {
            Output = stdout,
            Error = stderr,
            EnableDefaultExceptionHandler = false,
        });
    }

    /// <summary>The words that name a subcommand below the root ("check-layer mamba3"), for the --help hint.</summary>
    private static string CommandPath(System.CommandLine.Parsing.CommandResult result)
    {
        List<string> names = [];
        for (System.CommandLine.Parsing.CommandResult? r = result; r is not null && r.Command is not RootCommand; r = r.Parent as System.CommandLine.Parsing.CommandResult)
        {
            names.Insert(0, r.Command.Name);
        }

        return string.Join(' ', names);
    }

    /// <summary>The root command and its subcommands.</summary>
    internal static RootCommand BuildRoot(CliContext context)
    {
        RootCommand root = new("kiln: run Llama models (llama2.c checkpoints and GGUF files) with the Kiln tensor framework.");
        root.Options.Add(context.Verbose);
        root.Subcommands.Add(GenerateCommand.Create(context));
        root.Subcommands.Add(TokenizeCommand.Create(context));
        root.Subcommands.Add(InfoCommand.Create(context));
        root.Subcommands.Add(ConvertCommand.Create(context));
        root.Subcommands.Add(BenchCommand.Create(context));
        root.Subcommands.Add(IndexCacheFitCommand.Create(context));
        root.Subcommands.Add(CheckLayerCommand.Create(context));
        root.Subcommands.Add(KvCommand.Create(context));
        NameValuePlaceholders(root);
        return root;
    }

    /// <summary>
    /// Gives every option that takes a value and has no placeholder of its own the upper-case form of its name
    /// (<c>--data &lt;DATA&gt;</c>), the convention of the options that name theirs (<c>-m &lt;MODEL&gt;</c>).
    /// </summary>
    private static void NameValuePlaceholders(Command command)
    {
        foreach (Option option in command.Options)
        {
            if (option.HelpName is null && option.ValueType != typeof(bool) && option.Arity.MaximumNumberOfValues > 0)
            {
                option.HelpName = option.Name.TrimStart('-').ToUpperInvariant();
            }
        }

        foreach (Command sub in command.Subcommands)
        {
            NameValuePlaceholders(sub);
        }
    }

    /// <summary>
    /// Runs a command body and reports any exception as one line on stderr (plus the stack trace with --verbose).
    /// </summary>
    internal static int Guard(CliContext context, ParseResult parse, Func<int> body)
    {
        bool verbose = parse.GetValue(context.Verbose);
        try
        {
            return body();
        }
        catch (Exception e)
        {
            (string message, int exitCode) = Describe(e);
            context.Stdout.Flush();
            context.Stderr.WriteLine($"kiln: error: {message}");
            if (verbose)
            {
                context.Stderr.WriteLine(e.ToString());
            }

            return exitCode;
        }
    }

    /// <summary>The one-line message and exit code for an exception.</summary>
    private static (string Message, int ExitCode) Describe(Exception e) => e switch
    {
        CliException cli => (OneLine(cli.Message), cli.ExitCode),
        ModelFormatException format => (OneLine(format.Message), CliException.FailureExitCode),
        InsufficientMemoryException memory => ($"{OneLine(memory.Message).TrimEnd('.')}; in kiln, lower -n (generate) or --context (bench decode).", CliException.FailureExitCode),
        OutOfMemoryException => ("out of memory while loading or running the model; use a smaller model or a shorter context.", CliException.FailureExitCode),
        _ => ($"unexpected {e.GetType().Name}: {OneLine(e.Message)} (rerun with --verbose for the stack trace).", CliException.FailureExitCode),
    };

    /// <summary>A parse message with .NET type names replaced by what a user types ("an integer >= 0").</summary>
    internal static string Readable(string message) => message
        .Replace("expected type 'System.Nullable`1[System.UInt64]'", "a whole number >= 0", StringComparison.Ordinal)
        .Replace("expected type 'System.UInt64'", "a whole number >= 0", StringComparison.Ordinal)
        .Replace("expected type 'System.Nullable`1[System.Int32]'", "a whole number", StringComparison.Ordinal)
        .Replace("expected type 'System.Int32'", "a whole number", StringComparison.Ordinal)
        .Replace("expected type 'System.Nullable`1[System.Single]'", "a number", StringComparison.Ordinal)
        .Replace("expected type 'System.Single'", "a number", StringComparison.Ordinal);

    /// <summary>The first line of a message, without the " (Parameter 'x')" suffix argument exceptions add.</summary>
    internal static string OneLine(string message)
    {
        string line = message.ReplaceLineEndings("\n").Split('\n', 2)[0].Trim();
        int parameter = line.LastIndexOf(" (Parameter '", StringComparison.Ordinal);
        return parameter > 0 ? line[..parameter] : line;
    }
}

/// <summary>What every command needs: the writers, the environment, and the shared --verbose flag.</summary>
internal sealed class CliContext
{
    public CliContext(TextWriter stdout, TextWriter stderr, CliEnvironment environment)
    {
        Stdout = stdout;
        Stderr = stderr;
        Environment = environment;
    }

    /// <summary>Where generated text and command results go.</summary>
    public TextWriter Stdout { get; }

    /// <summary>Where load information, timings, notes and errors go.</summary>
    public TextWriter Stderr { get; }

    /// <summary>$KILN_MODEL and the home directory.</summary>
    public CliEnvironment Environment { get; }

    /// <summary>--verbose: stack traces on errors, more load details.</summary>
    public Option<bool> Verbose { get; } = new("--verbose")
    {
        Description = "Print stack traces on errors and more details while loading.",
        Recursive = true,
    };
}
