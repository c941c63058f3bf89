// kiln convert: between llama2.c checkpoints, GGUF files and Hugging Face folders.
//   - llama2.c → GGUF: the llama keys and tensor names llama.cpp reads, matrices stored as --dtype (f32 default, f16,
//     bf16 or q8_0; norms stay F32), and the llama2.c vocabulary (--tokenizer, else tok<V>.bin or tokenizer.bin next to
//     the model) converted to a GGUF `llama` vocabulary.
//   - GGUF → llama2.c version 1: float32 weights (F16/BF16 widened exactly), written only for what llama2.c can express
//     (head width dim / heads, RoPE base 10000, RMSNorm epsilon 1e-5); the GGUF `llama` vocabulary is written back as a
//     llama2.c tokenizer (--tokenizer-out, default tok<V>.bin next to the output).
//   - llama2.c or GGUF → Hugging Face folder (--format hf, or -o naming an existing folder or ending in '/'):
//     config.json, the weights as model.safetensors or --shards N files with model.safetensors.index.json (query and key
//     rows permuted into the half-split RoPE order), matrices as --dtype (f32 default, f16, bf16), and the vocabulary as
//     tokenizer.json (the llama2.c tokenizer, or a GGUF `llama` vocabulary).
//   - Hugging Face folder → GGUF or llama2.c (by -o's extension, or --format; GGUF when neither says): rows permuted
//     back to adjacent pairs; the folder's SentencePiece-style tokenizer.json (ids 0-2 <unk>, BOS, EOS, as Llama's) is
//     carried over, or a llama2.c --tokenizer for GGUF.
// GGUF → GGUF is not offered (re-typing a GGUF file needs the vocabulary to be carried over as it is; not done yet).

using System.CommandLine;
using System.Globalization;
using Kiln.Devices;
using Kiln.Kernels;
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
            Description = "The file or folder to write: a .gguf, a llama2.c .bin, or a folder for --format hf (Hugging Face).",
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
        Option<string?> format = new("--format")
        {
            Description = "The output container: gguf, llama2c or hf (a Hugging Face folder). Default: from -o (.gguf, .bin, an existing folder or a trailing '/'), else the other container of the input.",
            HelpName = "gguf|llama2c|hf",
        };
        Option<int?> shards = new("--shards")
        {
            Description = "hf output: split the weights into this many safetensors files with an index. Default: 1 (model.safetensors).",
            HelpName = "N",
        };
        Command command = new("convert", "Convert between llama2.c checkpoints, GGUF files and Hugging Face folders.")
        {
            model, tokenizer, output, dtype, tokenizerOut, format, shards,
        };
        command.SetAction(parse => KilnCli.Guard(context, parse, () => Execute(
            context,
            ModelFiles.ResolveModel(parse.GetValue(model), context.Environment),
            parse.GetValue(output)!,
            parse.GetValue(tokenizer),
            parse.GetValue(dtype),
            parse.GetValue(tokenizerOut),
            parse.GetValue(format),
            parse.GetValue(shards))));
        return command;
    }

    private static int Execute(CliContext context, string input, string output, string? tokenizer, string? dtype, string? tokenizerOut, string? format, int? shards)
    {
        // The paths first: never overwrite the input.
        if (Path.GetFullPath(input).TrimEnd('/') == Path.GetFullPath(output).TrimEnd('/'))
        {
            throw new CliException($"-o {output}: is the input model itself; write the conversion to another file.");
        }

        // The output container: --format, else -o's form, else the other container of the input.
        bool folderInput = HuggingFaceLlama.IsFolder(input);
        string target = format?.ToLowerInvariant() switch
        {
            null when Directory.Exists(output) || output.EndsWith('/') => "hf",
            null when output.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) && folderInput => "gguf",
            null when output.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) && folderInput => "llama2c",
            null => folderInput ? "gguf" : GgufFile.IsGguf(input) ? "llama2c" : "gguf",
            "gguf" or "llama2c" or "hf" => format.ToLowerInvariant(),
            _ => throw new CliException($"--format {format}: unknown container; use gguf, llama2c or hf."),
        };
        if (shards is not null && target != "hf")
        {
            throw new CliException($"--shards: applies to Hugging Face folder outputs (--format hf); this conversion writes {target}.");
        }

        if (target == "hf")
        {
            return ToFolder(context, input, output, tokenizer, dtype, tokenizerOut, shards ?? 1);
        }

        if (Directory.Exists(output))
        {
            throw new CliException($"-o {output}: is a directory; give the path of the file to write (or --format hf for a Hugging Face folder).");
        }

        if (folderInput)
        {
            return FromFolder(context, input, output, target, tokenizer, dtype, tokenizerOut);
        }

        if ((target == "gguf") == GgufFile.IsGguf(input))
        {
            throw new CliException($"--format {target}: the input is already {target}; converting within a container is not supported.");
        }

        return GgufFile.IsGguf(input)
            ? ToLlama2c(context, input, output, dtype, tokenizer, tokenizerOut)
            : ToGguf(context, input, output, tokenizer, ParseDType(dtype), tokenizerOut);
    }

    // llama2.c or GGUF → a Hugging Face folder, with the vocabulary as tokenizer.json.
    private static int ToFolder(CliContext context, string input, string output, string? tokenizerFlag, string? dtype, string? tokenizerOut, int shards)
    {
        if (tokenizerOut is not null)
        {
            throw new CliException("--tokenizer-out: a Hugging Face folder holds its vocabulary as tokenizer.json; leave --tokenizer-out out.");
        }

        if (HuggingFaceLlama.IsFolder(input))
        {
            throw new CliException($"-m {input}: is already a Hugging Face folder; convert it to gguf or llama2c.");
        }

        if (File.Exists(output))
        {
            throw new CliException($"-o {output}: is a file; a Hugging Face folder output needs a folder path.");
        }

        if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
        {
            throw new CliException($"-o {output}: the folder is not empty; write the model into a new or empty folder.");
        }

        DType matrices = dtype?.ToLowerInvariant() switch
        {
            null or "f32" => DType.Float32,
            "f16" => DType.Float16,
            "bf16" => DType.BFloat16,
            _ => throw new CliException($"--dtype {dtype}: a Hugging Face folder holds f32, f16 or bf16 matrices; use one of those."),
        };

        // The model and its vocabulary, checked before anything is written.
        LlamaModelFile model = LlamaModelFile.Open(input);
        LlamaConfig config = model.Config;
        if (shards < 1 || shards > 3 + (9 * config.Layers))
        {
            throw new CliException($"--shards {shards}: must be between 1 and {3 + (9 * config.Layers)} (one tensor per file at most).");
        }

        string? tokenizerJson;
        string vocabulary;
        if (model.Gguf is { } gguf && string.IsNullOrEmpty(tokenizerFlag))
        {
            bool llamaVocabulary = GgufTokenizers.HasTokenizer(gguf) && gguf.GetString(GgufTokenizers.ModelKey) == LlamaSpmTokenizer.ModelName;
            LlamaSpmTokenizer? spm = llamaVocabulary ? LlamaSpmTokenizer.FromGguf(gguf) : null;
            tokenizerJson = spm is null ? null : HuggingFaceTokenizer.ToJson(spm.Tokens, spm.Scores, spm.TokenTypes, spm.BosId);
            vocabulary = spm is null ? "no tokenizer.json (the GGUF file has no 'llama' vocabulary; pass --tokenizer when running it)" : $"tokenizer.json from the GGUF vocabulary ({spm.VocabSize} tokens)";
        }
        else
        {
            string path = ModelFiles.ResolveTokenizer(tokenizerFlag, input, config.VocabSize);
            tokenizerJson = HuggingFaceTokenizer.ToJson(Llama2cTokenizer.Load(path, config.VocabSize));
            vocabulary = $"tokenizer.json from {path} ({config.VocabSize} tokens)";
        }

        using LlamaWeights weights = model.Load(CpuDevice.Default);
        try
        {
            HuggingFaceLlama.Write(output, weights, shards, tokenizerJson, matrices);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"-o {output}: could not be written ({KilnCli.OneLine(e.Message)}); check the folder and its permissions.", CliException.FailureExitCode, e);
        }

        string files = shards == 1 ? HuggingFaceLlama.SingleFile : $"{shards} shards + {HuggingFaceLlama.IndexFile}";
        context.Stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kiln: wrote {output}: Hugging Face folder, config.json + {files}, {matrices.Name()} matrices, RoPE rows half-split; {vocabulary}"));
        return 0;
    }

    // A Hugging Face folder → GGUF or llama2.c, with rows permuted back to adjacent RoPE pairs.
    private static int FromFolder(CliContext context, string input, string output, string target, string? tokenizerFlag, string? dtype, string? tokenizerOut)
    {
        HuggingFaceModel folder = HuggingFaceLlama.Open(input);
        LlamaConfig config = folder.Config;

        // The vocabulary: a llama2.c --tokenizer (GGUF output), else the folder's SentencePiece tokenizer.json when its
        // special ids are llama2.c's (0 unknown, 1 BOS, 2 EOS).
        string tokenizerPath = Path.Combine(input, HuggingFaceTokenizer.FileName);
        LlamaSpmTokenizer? spm = File.Exists(tokenizerPath) ? HuggingFaceTokenizer.Load(tokenizerPath).SentencePiece : null;
        bool llama2cIds = spm is { UnknownId: Llama2cTokenizer.UnknownId, BosId: Llama2cTokenizer.BeginId, EosId: Llama2cTokenizer.EndId } && spm.VocabSize == config.VocabSize;
        Llama2cTokenizer? vocabulary = !string.IsNullOrEmpty(tokenizerFlag)
            ? Llama2cTokenizer.Load(tokenizerFlag, config.VocabSize)
            : llama2cIds ? Llama2cTokenizer.Parse(tokenizerPath, GgufLlama.Llama2cTokenizerBytes(spm!), config.VocabSize) : null;
        string written = vocabulary is null
            ? $"no vocabulary ({tokenizerPath} is missing, byte-level, or has other special ids than <unk> 0, BOS 1, EOS 2; pass --tokenizer when running it)"
            : $"vocabulary of {config.VocabSize} tokens from {(string.IsNullOrEmpty(tokenizerFlag) ? tokenizerPath : tokenizerFlag)}";

        using LlamaWeights loaded = HuggingFaceLlama.Load(folder);
        using LlamaWeights weights = LlamaRopeLayout.Convert(loaded, RopeLayout.Adjacent);
        try
        {
            if (target == "gguf")
            {
                if (tokenizerOut is not null)
                {
                    throw new CliException("--tokenizer-out: applies to llama2.c outputs; a GGUF output holds its vocabulary.");
                }

                GgufTensorType matrices = ParseDType(dtype);
                GgufLlama.Write(output, weights, vocabulary, matrices, Path.GetFileName(Path.GetFullPath(input).TrimEnd('/')));
                context.Stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kiln: wrote {output}: GGUF v3, {matrices.Name()} matrices, RoPE rows adjacent, {new FileInfo(output).Length:N0} bytes; {written}"));
                return 0;
            }

            if (dtype is not null && !dtype.Equals("f32", StringComparison.OrdinalIgnoreCase))
            {
                throw new CliException($"--dtype {dtype}: llama2.c checkpoints hold float32 only; leave --dtype out (or pass f32).");
            }

            Llama2cCheckpoint.WriteVersion1(output, weights);
            string tokenizerOutput = tokenizerOut ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(output)) ?? ".", $"tok{config.VocabSize}.bin");
            if (llama2cIds && string.IsNullOrEmpty(tokenizerFlag))
            {
                File.WriteAllBytes(tokenizerOutput, GgufLlama.Llama2cTokenizerBytes(spm!));
                written = $"tokenizer {tokenizerOutput} ({config.VocabSize} tokens)";
            }

            context.Stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kiln: wrote {output}: llama2.c version 1, float32, {new FileInfo(output).Length:N0} bytes; {written}"));
            return 0;
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
