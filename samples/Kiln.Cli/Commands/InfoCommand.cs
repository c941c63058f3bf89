// kiln info: prints a checkpoint's (or a Hugging Face folder's) container, configuration (as JSON, snake_case names) and parameter count,
// from the header alone (the header is validated against the file length, the weights are not read). Kiln DSA
// checkpoints (safetensors) also show the DSA fields, the IndexCache pattern and the indexers' parameter count. GGUF
// files show their container facts, architecture, tokenizer and tensor types, then the config when they hold a
// runnable llama model (else the reason); --verbose lists every metadata key and tensor.

using System.CommandLine;
using System.Globalization;
using Kiln.Models;
using Kiln.Models.Dsa;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Tokenizers;

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

            if (HuggingFaceLlama.IsFolder(modelPath))
            {
                PrintFolder(context, HuggingFaceLlama.Open(modelPath));
                return 0;
            }

            if (GgufFile.IsGguf(modelPath))
            {
                PrintGguf(context, GgufFile.Open(modelPath), parse.GetValue(context.Verbose));
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

    // A Hugging Face folder: its files, architecture and dtypes, its tokenizer.json, the config and parameter count.
    private static void PrintFolder(CliContext context, HuggingFaceModel folder)
    {
        TextWriter output = context.Stdout;
        long bytes = folder.Shards.Sum(shard => new FileInfo(Path.Combine(folder.Directory, shard)).Length);
        string files = folder.Shards.Count == 1 ? folder.Shards[0] : $"{folder.Shards.Count} shards + {HuggingFaceLlama.IndexFile}";
        output.WriteLine($"model: {folder.Directory}");
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"format: Hugging Face folder ({folder.Architecture}; {files}, {bytes:N0} bytes; torch_dtype {folder.TorchDType ?? "unset"}, matrices load as {folder.MatrixDType.Name()}; RoPE half-split)"));
        string tokenizerPath = Path.Combine(folder.Directory, HuggingFaceTokenizer.FileName);
        if (File.Exists(tokenizerPath))
        {
            HuggingFaceTokenizer tokenizer = HuggingFaceTokenizer.Load(tokenizerPath);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"tokenizer: {HuggingFaceTokenizer.FileName} ({(tokenizer.Kind == HuggingFaceTokenizerKind.ByteLevelBpe ? "byte-level BPE" : "SentencePiece-style BPE")}, {tokenizer.VocabSize:N0} tokens)"));
        }
        else
        {
            output.WriteLine($"tokenizer: none ({HuggingFaceTokenizer.FileName} is missing; pass --tokenizer to generate)");
        }

        output.WriteLine($"config: {folder.Config.ToJson()}");
        output.WriteLine($"parameters: {folder.Config.ParameterCount.ToString("N0", CultureInfo.InvariantCulture)} ({FormatCount(folder.Config.ParameterCount)})");
    }

    // A GGUF file: container facts, architecture, tokenizer and tensor types; the llama config when the file is a
    // runnable llama model, else why not; with --verbose every metadata key and tensor entry.
    private static void PrintGguf(CliContext context, GgufFile gguf, bool verbose)
    {
        TextWriter output = context.Stdout;
        output.WriteLine($"model: {gguf.Path}");
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"format: GGUF v{gguf.Version} ({gguf.FileLength:N0} bytes, alignment {gguf.Alignment}, {gguf.Keys.Count} metadata keys, {gguf.Tensors.Count} tensors)"));
        string architecture = gguf.Find("general.architecture")?.Value as string ?? "(none)";
        output.WriteLine($"architecture: {architecture}");
        if (gguf.Find(GgufTokenizers.ModelKey)?.Value is string tokenizerModel)
        {
            int tokens = gguf.Find("tokenizer.ggml.tokens")?.Count ?? 0;
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"tokenizer: {tokenizerModel} ({tokens:N0} tokens)"));
        }

        if (gguf.Tensors.Count > 0)
        {
            IEnumerable<string> types = gguf.Tensors.GroupBy(static t => t.Type).OrderBy(static g => g.Key).Select(static g => $"{g.Key.Name()} {g.Count()}");
            long elements = gguf.Tensors.Sum(static t => t.ElementCount);
            output.WriteLine($"tensors: {gguf.Tensors.Count} ({string.Join(", ", types)}), {elements.ToString("N0", CultureInfo.InvariantCulture)} elements");
        }

        // The llama config when the file runs; otherwise the reason, which is not an error for info.
        try
        {
            LlamaConfig config = GgufLlama.ReadConfig(gguf);
            output.WriteLine($"config: {config.ToJson()}");
            output.WriteLine($"parameters: {config.ParameterCount.ToString("N0", CultureInfo.InvariantCulture)} ({FormatCount(config.ParameterCount)})");
        }
        catch (ModelFormatException e)
        {
            string reason = e.Message.StartsWith(gguf.Path + ": ", StringComparison.Ordinal) ? e.Message[(gguf.Path.Length + 2)..] : e.Message;
            output.WriteLine($"runnable: no ({reason.TrimEnd('.')})");
        }

        if (verbose)
        {
            foreach (string key in gguf.Keys)
            {
                output.WriteLine($"  {key} ({gguf.Metadata[key].TypeName}): {gguf.Metadata[key]}");
            }

            foreach (GgufTensorInfo tensor in gguf.Tensors)
            {
                output.WriteLine($"  tensor {tensor.Name}: {tensor.Type.Name()} {tensor.ShapeText} at {tensor.FileOffset}, {tensor.ByteSize} bytes");
            }
        }
    }

    private static string FormatCount(long count) => count switch
    {
        >= 1_000_000_000 => (count / 1e9).ToString("0.##", CultureInfo.InvariantCulture) + "B",
        >= 1_000_000 => (count / 1e6).ToString("0.##", CultureInfo.InvariantCulture) + "M",
        >= 1_000 => (count / 1e3).ToString("0.##", CultureInfo.InvariantCulture) + "K",
        _ => count.ToString(CultureInfo.InvariantCulture),
    };
}
