// kiln info: prints a checkpoint's container, configuration (as JSON, snake_case names) and parameter count,
// from the header alone (the header is validated against the file length, the weights are not read). Kiln DSA
// checkpoints (safetensors) also show the DSA fields, the IndexCache pattern and the indexers' parameter count.

using System.CommandLine;
using System.Globalization;
using Kiln.Models.Dsa;
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
            if (DsaCheckpoint.IsDsaCheckpoint(modelPath))
            {
                // A DSA checkpoint: the config from the safetensors metadata, the dense and indexer parameter counts.
                using DsaWeights dsa = DsaCheckpoint.Load(modelPath);
                DsaConfig dsaConfig = dsa.Config;
                long indexers = dsa.Indexers.Count(indexer => indexer is not null) * DsaIndexerWeights.ParameterCount(dsaConfig);
                long total = dsaConfig.Llama.ParameterCount + indexers;
                context.Stdout.WriteLine($"model: {modelPath}");
                context.Stdout.WriteLine($"format: kiln DSA safetensors ({new FileInfo(modelPath).Length.ToString("N0", CultureInfo.InvariantCulture)} bytes)");
                context.Stdout.WriteLine($"config: {dsaConfig.ToJson()}");
                context.Stdout.WriteLine($"pattern: {dsaConfig.Pattern} ({dsaConfig.Pattern.FullCount} of {dsaConfig.Llama.Layers} layers run their indexer), top-k {dsaConfig.TopK}");
                context.Stdout.WriteLine($"parameters: {total.ToString("N0", CultureInfo.InvariantCulture)} ({FormatCount(total)}; indexers {indexers.ToString("N0", CultureInfo.InvariantCulture)})");
                return 0;
            }

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
