// A Llama model as the commands see it, whatever its container: a llama2.c checkpoint (legacy or version 1), a GGUF
// file of the llama architecture, or a Hugging Face folder (config.json + safetensors). Opening reads and validates the
// header only (for GGUF and folders: the metadata and tensor entries, whose shapes are checked against the config); Load
// reads the weights. The tokenizer is --tokenizer when given (a llama2.c tok*.bin, a GGUF file whose vocabulary is used,
// or a tokenizer.json), else the GGUF file's own vocabulary, else the folder's tokenizer.json, else tok<V>.bin or
// tokenizer.bin next to a llama2.c checkpoint.

using Kiln.Devices;
using Kiln.Models;
using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Tokenizers;

namespace Kiln.Cli;

/// <summary>A llama2.c or GGUF llama model whose header has been validated.</summary>
internal sealed class LlamaModelFile
{
    private LlamaModelFile(string path, LlamaConfig config, Llama2cHeader? header, GgufFile? gguf, HuggingFaceModel? folder = null)
    {
        Path = path;
        Config = config;
        Header = header;
        Gguf = gguf;
        Folder = folder;
    }

    /// <summary>The model path.</summary>
    public string Path { get; }

    /// <summary>The config from the header or metadata.</summary>
    public LlamaConfig Config { get; }

    /// <summary>The llama2.c header, or null for GGUF.</summary>
    public Llama2cHeader? Header { get; }

    /// <summary>The GGUF file, or null for the other containers.</summary>
    public GgufFile? Gguf { get; }

    /// <summary>The Hugging Face folder, or null for the other containers.</summary>
    public HuggingFaceModel? Folder { get; }

    /// <summary>The container for messages: "llama2.c legacy", "GGUF v3 F16", "Hugging Face folder (LlamaForCausalLM, 3 shards, F32)".</summary>
    public string Container => Folder is not null
        ? $"Hugging Face folder ({Folder.Architecture}, {(Folder.Shards.Count == 1 ? "1 file" : $"{Folder.Shards.Count} shards")}, {Folder.MatrixDType.Name()})"
        : Gguf is null
            ? $"llama2.c {(Header!.Format == Llama2cFormat.Legacy ? "legacy" : "version 1")}"
            : $"GGUF v{Gguf.Version} {MatrixTypes(Gguf)}";

    /// <summary>Opens <paramref name="path"/>: a folder is a Hugging Face model, a file GGUF (by its magic) or llama2.c.</summary>
    /// <exception cref="ModelFormatException">The header is invalid or not a runnable llama model.</exception>
    public static LlamaModelFile Open(string path)
    {
        if (HuggingFaceLlama.IsFolder(path))
        {
            HuggingFaceModel folder = HuggingFaceLlama.Open(path);
            return new LlamaModelFile(path, folder.Config, null, null, folder);
        }

        if (GgufFile.IsGguf(path))
        {
            GgufFile gguf = GgufFile.Open(path);
            return new LlamaModelFile(path, GgufLlama.ReadConfig(gguf), null, gguf);
        }

        Llama2cHeader header = Llama2cCheckpoint.ReadHeader(path);
        return new LlamaModelFile(path, header.Config, header, null);
    }

    /// <summary>Reads the weights onto <paramref name="device"/>, with the Block Attention Residuals option when given.</summary>
    /// <exception cref="CliException">The option was asked for on a Hugging Face folder.</exception>
    public LlamaWeights Load(Device device, AttentionResidualsConfig? attentionResiduals = null)
    {
        if (Folder is not null)
        {
            if (attentionResiduals is not null)
            {
                throw new CliException($"{Path}: --attn-res-blocks is not available for Hugging Face folders yet; convert the folder with `kiln convert --format gguf` and run the GGUF file.");
            }

            return HuggingFaceLlama.Load(Folder, device);
        }

        return Gguf is null
            ? Llama2cCheckpoint.Load(Path, device, attentionResiduals)
            : GgufLlama.Load(Gguf, device, attentionResiduals);
    }

    /// <summary>
    /// The tokenizer: <paramref name="flag"/> (--tokenizer) when given, else the GGUF vocabulary, else the folder's
    /// tokenizer.json, else the llama2.c tokenizer next to the model. Its size must be the model's vocabulary size.
    /// </summary>
    /// <exception cref="CliException">No tokenizer was found, or its size differs from the model's.</exception>
    /// <exception cref="ModelFormatException">The tokenizer file is invalid.</exception>
    public (ITokenizer Tokenizer, string Source) LoadTokenizer(string? flag)
    {
        int vocab = Config.VocabSize;
        (ITokenizer tokenizer, string source) = !string.IsNullOrEmpty(flag)
            ? (LoadTokenizerFile(flag, vocab), flag)
            : Folder is not null
                ? (LoadFolderTokenizer(Path), System.IO.Path.Combine(Path, HuggingFaceTokenizer.FileName))
            : Gguf is not null && GgufTokenizers.HasTokenizer(Gguf)
                ? (GgufTokenizers.Load(Gguf), $"{Path} (GGUF metadata)")
                : Gguf is not null
                    ? throw new CliException($"{Path} holds no tokenizer (no tokenizer.ggml.* metadata); pass the model's tokenizer with --tokenizer.", CliException.FailureExitCode)
                    : LoadLlama2c(ModelFiles.ResolveTokenizer(null, Path, vocab), vocab);
        if (tokenizer.VocabSize != vocab)
        {
            throw new CliException($"the tokenizer {source} has {tokenizer.VocabSize} tokens but the model's vocabulary is {vocab}; pass the tokenizer that came with the model (--tokenizer).", CliException.FailureExitCode);
        }

        return (tokenizer, source);
    }

    /// <summary>
    /// Loads a tokenizer file: a tokenizer.json (or a folder holding one), a GGUF file's vocabulary, or a llama2.c
    /// tokenizer for <paramref name="vocabSize"/> tokens.
    /// </summary>
    public static ITokenizer LoadTokenizerFile(string path, int vocabSize) =>
        Directory.Exists(path) ? HuggingFaceTokenizer.Load(System.IO.Path.Combine(path, HuggingFaceTokenizer.FileName))
        : path.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? HuggingFaceTokenizer.Load(path)
        : GgufFile.IsGguf(path) ? GgufTokenizers.Load(GgufFile.Open(path))
        : Llama2cTokenizer.Load(path, vocabSize);

    /// <summary>The tokenizer.json of a Hugging Face folder.</summary>
    /// <exception cref="CliException">The folder has no tokenizer.json.</exception>
    public static HuggingFaceTokenizer LoadFolderTokenizer(string folder)
    {
        string path = System.IO.Path.Combine(folder, HuggingFaceTokenizer.FileName);
        return File.Exists(path)
            ? HuggingFaceTokenizer.Load(path)
            : throw new CliException($"{folder} has no {HuggingFaceTokenizer.FileName}; pass the model's tokenizer with --tokenizer (a tokenizer.json, a GGUF file or a llama2.c tok*.bin).", CliException.FailureExitCode);
    }

    /// <summary>The vocabulary size a GGUF file declares: llama.vocab_size, the token list, or token_embd's rows.</summary>
    public static int? VocabSizeOf(GgufFile gguf)
    {
        if (gguf.Contains("llama.vocab_size"))
        {
            return (int)gguf.GetInteger("llama.vocab_size", 1, int.MaxValue);
        }

        if (gguf.Contains("tokenizer.ggml.tokens"))
        {
            return gguf.GetArray<string>("tokenizer.ggml.tokens").Length;
        }

        return gguf.FindTensor("token_embd.weight") is { Dims.Length: 2 } embedding && embedding.Dims[1] <= int.MaxValue ? (int)embedding.Dims[1] : null;
    }

    /// <summary>The matrix types of a GGUF file for messages: "F16", or "F32/Q8_0" when mixed.</summary>
    public static string MatrixTypes(GgufFile gguf)
    {
        string[] types = [.. gguf.Tensors.Where(static t => t.Dims.Length == 2).Select(static t => t.Type.Name()).Distinct().Order(StringComparer.Ordinal)];
        return types.Length == 0 ? "(no matrices)" : string.Join('/', types);
    }

    private static (ITokenizer, string) LoadLlama2c(string path, int vocab) => (Llama2cTokenizer.Load(path, vocab), path);
}
