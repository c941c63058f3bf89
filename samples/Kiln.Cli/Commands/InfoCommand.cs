// kiln info: prints a checkpoint's container, configuration (as JSON, snake_case names) and parameter count,
// from the header alone (the header is validated against the file length, the weights are not read).

using System.CommandLine;
using System.Globalization;
using Kiln.Models.Formats;
using Kiln.Models.Llama;

namespace Kiln.Cli.Commands;

/// <summary>The <c>info</c> command.</summary>
internal static class InfoCommand
{
    /// <summary>Builds the command.</summary>
    public static Command Create(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Command command = new("info", "Print a model's configuration and parameter count.") { model };
        command.SetAction(parse => KilnCli.Guard(context, parse, () =>
        {
            string modelPath = ModelFiles.ResolveModel(parse.GetValue(model), context.Environment);
            Llama2cHeader header = Llama2cCheckpoint.ReadHeader(modelPath);
            LlamaConfig config = header.Config;
            TextWriter output = context.Stdout;
            output.WriteLine($"model: {modelPath}");
            output.WriteLine($"format: llama2.c {GenerateCommand.FormatName(header.Format)} ({header.FileBytes.ToString("N0", CultureInfo.InvariantCulture)} bytes)");
            output.WriteLine($"config: {config.ToJson()}");
            output.WriteLine($"parameters: {config.ParameterCount.ToString("N0", CultureInfo.InvariantCulture)} ({FormatCount(config.ParameterCount)})");
            return 0;
        }));
        return command;
    }

    private static string FormatCount(long count) => count switch
    {
        >= 1_000_000_000 => (count / 1e9).ToString("0.##", CultureInfo.InvariantCulture) + "B",
        >= 1_000_000 => (count / 1e6).ToString("0.##", CultureInfo.InvariantCulture) + "M",
        >= 1_000 => (count / 1e3).ToString("0.##", CultureInfo.InvariantCulture) + "K",
        _ => count.ToString(CultureInfo.InvariantCulture),
    };
}
