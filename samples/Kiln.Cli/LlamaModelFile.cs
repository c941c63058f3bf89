// A Llama model file as the commands see it, whatever its container: a llama2.c checkpoint (legacy or version 1) or a
// GGUF file of the llama architecture. Opening reads and validates the header only (for GGUF: the metadata and tensor
// entries, whose shapes are checked against the config); Load reads the weights. The tokenizer is --tokenizer when given
// (a llama2.c tok*.bin, or a GGUF file whose vocabulary is used), else the GGUF file's own vocabulary, else tok<V>.bin or
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
    private LlamaModelFile(string path, LlamaConfig config, Llama2cHeader? header, GgufFile? gguf)
    {
        Path = path;
        Config = config;
        Header = header;
        Gguf = gguf;
    }

    /// <summary>The model path.</summary>
    public string Path { get; }

    /// <summary>The config from the header or metadata.</summary>
    public LlamaConfig Config { get; }

    /// <summary>The llama2.c header, or null for GGUF.</summary>
    public Llama2cHeader? Header { get; }

    /// <summary>The GGUF file, or null for llama2.c.</summary>
    public GgufFile? Gguf { get; }

    /// <summary>The container for messages: "llama2.c legacy", "GGUF v3 F16".</summary>
    public string Container => Gguf is null
        ? $"llama2.c {(Header!.Format == Llama2cFormat.Legacy ? "legacy" : "version 1")}"
        : $"GGUF v{Gguf.Version} {MatrixTypes(Gguf)}";

    /// <summary>Opens <paramref name="path"/>, detecting GGUF by its magic.</summary>
    /// <exception cref="ModelFormatException">The header is invalid or (GGUF) not a runnable llama model.</exception>
    public static LlamaModelFile Open(string path)
    {
        if (GgufFile.IsGguf(path))
        {
            GgufFile gguf = GgufFile.Open(path);
            return new LlamaModelFile(path, GgufLlama.ReadConfig(gguf), null, gguf);
        }

        Llama2cHeader header = Llama2cCheckpoint.ReadHeader(path);
        return new LlamaModelFile(path, header.Config, header, null);
    }

    /// <summary>Reads the weights onto <paramref name="device"/>, with the Block Attention Residuals option when given.</summary>
    public LlamaWeights Load(Device device, AttentionResidualsConfig? attentionResiduals = null) => Gguf is null
        ? Llama2cCheckpoint.Load(Path, device, attentionResiduals)
        : GgufLlama.Load(Gguf, device, attentionResiduals);

    /// <summary>
    /// The tokenizer: <paramref name="flag"/> (--tokenizer) when given, else the GGUF vocabulary, else the llama2.c
    /// tokenizer next to the model. Its size must be the model's vocabulary size.
    /// </summary>
    /// <exception cref="CliException">No tokenizer was found, or its size differs from the model's.</exception>
    /// <exception cref="ModelFormatException">The tokenizer file is invalid.</exception>
    public (ITokenizer Tokenizer, string Source) LoadTokenizer(string? flag)
    {
        int vocab = Config.VocabSize;
        (ITokenizer tokenizer, string source) = !string.IsNullOrEmpty(flag)
            ? (LoadTokenizerFile(flag, vocab), flag)
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
    /// Loads a tokenizer file: a GGUF file's vocabulary, or a llama2.c tokenizer for <paramref name="vocabSize"/> tokens.
    /// </summary>
    public static ITokenizer LoadTokenizerFile(string path, int vocabSize) =>
        GgufFile.IsGguf(path) ? GgufTokenizers.Load(GgufFile.Open(path)) : Llama2cTokenizer.Load(path, vocabSize);

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
