// kiln convert: between llama2.c checkpoints and GGUF files, the direction given by the input's container.
//   - llama2.c → GGUF: the llama keys and tensor names llama.cpp reads, matrices stored as --dtype (f32 default, f16,
//     bf16 or q8_0; norms stay F32), and the llama2.c vocabulary (--tokenizer, else tok<V>.bin or tokenizer.bin next to
//     the model) converted to a GGUF `llama` vocabulary.
//   - GGUF → llama2.c version 1: float32 weights (F16/BF16 widened exactly), written only for what llama2.c can express
//     (head width dim / heads, RoPE base 10000, RMSNorm epsilon 1e-5); the GGUF `llama` vocabulary is written back as a
//     llama2.c tokenizer (--tokenizer-out, default tok<V>.bin next to the output).
// GGUF → GGUF is not offered (re-typing a GGUF file needs the vocabulary to be carried over as it is; not done yet).

using System.CommandLine;
using System.Globalization;
using Kiln.Devices;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Tokenizers;

namespace Kiln.Cli.Commands;

/// <summary>The <c>convert</c> command.</summary>
internal static class ConvertCommand
{
    /// <summary>Builds the command.</summary>
    public static Command Create(CliContext context)
    {
        Option<string?> model = CommonOptions.Model();
        Option<string?> tokenizer = new("--tokenizer")
        {
            Description = "llama2.c → GGUF: the llama2.c tokenizer to embed. Default: tok<vocab_size>.bin, then tokenizer.bin, next to the model.",
            HelpName = "TOK",
        };
        Option<string?> output = new("--output", "-o")
        {
            Description = "The file to write: a .gguf for a llama2.c input, a llama2.c .bin for a GGUF input.",
            HelpName = "OUT",
            Required = true,
        };
        Option<string?> dtype = new("--dtype")
        {
            Description = "llama2.c → GGUF: how matrices are stored, f32 (default), f16, bf16 or q8_0 (rows must be multiples of 32). Norms stay f32.",
            HelpName = "f32|f16|bf16|q8_0",
        };
        Option<string?> tokenizerOut = new("--tokenizer-out")
        {
            Description = "GGUF → llama2.c: where to write the vocabulary as a llama2.c tokenizer. Default: tok<vocab_size>.bin next to the output.",
            HelpName = "TOK",
        };
        Command command = new("convert", "Convert a llama2.c checkpoint to GGUF, or a GGUF llama model to a llama2.c checkpoint.")
        {
            model, tokenizer, output, dtype, tokenizerOut,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () => Execute(
            context,
            ModelFiles.ResolveModel(parse.GetValue(model), context.Environment),
            parse.GetValue(output)!,
            parse.GetValue(tokenizer),
            parse.GetValue(dtype),
            parse.GetValue(tokenizerOut))));
        return command;
    }

    private static int Execute(CliContext context, string input, string output, string? tokenizer, string? dtype, string? tokenizerOut)
    {
        // The paths first: never overwrite the input.
        if (Path.GetFullPath(input) == Path.GetFullPath(output))
        {
            throw new CliException($"-o {output}: is the input model itself; write the conversion to another file.");
        }

        if (Directory.Exists(output))
        {
            throw new CliException($"-o {output}: is a directory; give the path of the file to write.");
        }

        return GgufFile.IsGguf(input)
            ? ToLlama2c(context, input, output, dtype, tokenizer, tokenizerOut)
            : ToGguf(context, input, output, tokenizer, ParseDType(dtype), tokenizerOut);
    }

    private static int ToGguf(CliContext context, string input, string output, string? tokenizerFlag, GgufTensorType matrices, string? tokenizerOut)
    {
        if (tokenizerOut is not null)
        {
            throw new CliException("--tokenizer-out: applies to GGUF → llama2.c conversions; a GGUF output holds its vocabulary.");
        }

        if (output.EndsWith(".bin", StringComparison.OrdinalIgnoreCase))
        {
            throw new CliException($"-o {output}: a llama2.c input converts to GGUF; name the output .gguf.");
        }

        // Check the header and the tokenizer before reading the weights.
        Llama2cHeader header = Llama2cCheckpoint.ReadHeader(input);
        int vocab = header.Config.VocabSize;
        string tokenizerPath = ModelFiles.ResolveTokenizer(tokenizerFlag, input, vocab);
        Llama2cTokenizer vocabulary = Llama2cTokenizer.Load(tokenizerPath, vocab);
        using LlamaWeights weights = Llama2cCheckpoint.Load(input, CpuDevice.Default);
        try
        {
            GgufLlama.Write(output, weights, vocabulary, matrices, Path.GetFileNameWithoutExtension(input));
        }
        catch (ArgumentException e)
        {
            TryDelete(output);
            throw new CliException($"--dtype {matrices.Name().ToLowerInvariant()}: {KilnCli.OneLine(e.Message)}", CliException.UsageExitCode, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(output);
            throw new CliException($"-o {output}: could not be written ({KilnCli.OneLine(e.Message)}); check the folder and its permissions.", CliException.FailureExitCode, e);
        }

        long bytes = new FileInfo(output).Length;
        context.Stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kiln: wrote {output}: GGUF v3, {matrices.Name()} matrices, {weights.Tensors.Count()} tensors, {bytes:N0} bytes, vocabulary of {vocab} tokens from {tokenizerPath}"));
        return 0;
    }

    private static int ToLlama2c(CliContext context, string input, string output, string? dtype, string? tokenizerFlag, string? tokenizerOut)
    {
        if (dtype is not null && !dtype.Equals("f32", StringComparison.OrdinalIgnoreCase))
        {
            throw new CliException($"--dtype {dtype}: llama2.c checkpoints hold float32 only; leave --dtype out (or pass f32) for a GGUF → llama2.c conversion.");
        }

        if (tokenizerFlag is not null)
        {
            throw new CliException("--tokenizer: applies to llama2.c → GGUF conversions; a GGUF input's own vocabulary is written (see --tokenizer-out).");
        }

        if (output.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
        {
            throw new CliException($"-o {output}: a GGUF input converts to a llama2.c checkpoint; name the output .bin (GGUF → GGUF is not supported).");
        }

        // Validate the model and its vocabulary before writing anything.
        GgufFile gguf = GgufFile.Open(input);
        LlamaConfig config = GgufLlama.ReadConfig(gguf);
        LlamaSpmTokenizer? vocabulary = GgufTokenizers.HasTokenizer(gguf) && gguf.GetString(GgufTokenizers.ModelKey) == LlamaSpmTokenizer.ModelName
            ? LlamaSpmTokenizer.FromGguf(gguf)
            : null;
        string tokenizerPath = tokenizerOut ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(output)) ?? ".", $"tok{config.VocabSize}.bin");
        using LlamaWeights weights = GgufLlama.Load(gguf, CpuDevice.Default);
        try
        {
            Llama2cCheckpoint.WriteVersion1(output, weights);
            if (vocabulary is not null)
            {
                File.WriteAllBytes(tokenizerPath, GgufLlama.Llama2cTokenizerBytes(vocabulary));
            }
        }
        catch (ArgumentException e)
        {
            TryDelete(output);
            throw new CliException($"{input}: {KilnCli.OneLine(e.Message)}", CliException.FailureExitCode, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(output);
            throw new CliException($"-o {output}: could not be written ({KilnCli.OneLine(e.Message)}); check the folder and its permissions.", CliException.FailureExitCode, e);
        }

        long bytes = new FileInfo(output).Length;
        string written = vocabulary is null
            ? $"no tokenizer (the GGUF file has no 'llama' vocabulary; pass one with --tokenizer when running it)"
            : $"tokenizer {tokenizerPath} ({config.VocabSize} tokens)";
        context.Stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kiln: wrote {output}: llama2.c version 1, float32, {bytes:N0} bytes; {written}"));
        return 0;
    }

    private static GgufTensorType ParseDType(string? name) => name?.ToLowerInvariant() switch
    {
        null or "f32" => GgufTensorType.F32,
        "f16" => GgufTensorType.F16,
        "bf16" => GgufTensorType.BF16,
        "q8_0" => GgufTensorType.Q8_0,
        _ => throw new CliException($"--dtype {name}: unknown type; use f32, f16, bf16 or q8_0."),
    };

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Leave a partial file rather than hide the original error.
        }
    }
}
