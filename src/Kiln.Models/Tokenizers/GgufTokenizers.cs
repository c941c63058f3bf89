// Picks the tokenizer of a GGUF file from tokenizer.ggml.model: `llama` (SentencePiece-style, LlamaSpmTokenizer),
// `gpt2` (byte-level BPE, ByteLevelBpeTokenizer) and `bert` (WordPiece, BertWordPieceTokenizer). The other models llama.cpp
// knows (`rwkv`, `t5`, `plamo2`) are named in a "not supported yet" error, and a file without tokenizer metadata is told
// to pass one.

using Kiln.Models.Formats;

namespace Kiln.Models.Tokenizers;

/// <summary>Loads the tokenizer stored in a GGUF file's metadata.</summary>
public static class GgufTokenizers
{
    /// <summary>The metadata key that names the tokenizer model.</summary>
    public const string ModelKey = "tokenizer.ggml.model";

    /// <summary>Whether <paramref name="file"/> holds tokenizer metadata.</summary>
    public static bool HasTokenizer(GgufFile file) => file.Contains(ModelKey);

    /// <summary>The tokenizer of <paramref name="file"/>.</summary>
    /// <exception cref="ModelFormatException">The file has no tokenizer, or one of a model Kiln does not read yet.</exception>
    public static ITokenizer Load(GgufFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (!HasTokenizer(file))
        {
            throw new ModelFormatException(file.Path, $"{file.Path}: holds no tokenizer ({ModelKey} is missing); pass the model's tokenizer with --tokenizer.");
        }

        string model = file.GetString(ModelKey);
        return model switch
        {
            LlamaSpmTokenizer.ModelName => LlamaSpmTokenizer.FromGguf(file),
            ByteLevelBpeTokenizer.ModelName => ByteLevelBpeTokenizer.FromGguf(file),
            BertWordPieceTokenizer.ModelName => BertWordPieceTokenizer.FromGguf(file),
            "rwkv" or "t5" or "plamo2" or "ugm" => throw new ModelFormatException(file.Path, $"{file.Path}: has tokenizer model '{model}', which Kiln does not support yet (it reads 'llama', 'gpt2' and 'bert'); pass a llama2.c tokenizer with --tokenizer if the model has one."),
            _ => throw new ModelFormatException(file.Path, $"{file.Path}: has unknown tokenizer model '{model}'; Kiln reads 'llama' (SentencePiece-style), 'gpt2' (byte-level BPE) and 'bert' (WordPiece) vocabularies, pass a llama2.c tokenizer with --tokenizer."),
        };
    }
}
