// What the text generator needs from a tokenizer: text to ids, and ids back to bytes one token at a time (the
// bytes of one token may be part of a UTF-8 character; TokenTextDecoder assembles whole characters).

namespace Kiln.Models.Tokenizers;

/// <summary>A tokenizer: text to token ids and token ids back to bytes.</summary>
public interface ITokenizer
{
    /// <summary>The number of token ids, 0 to VocabSize - 1.</summary>
    int VocabSize { get; }

    /// <summary>The beginning-of-sequence id that starts every prompt.</summary>
    int BosId { get; }

    /// <summary>The end-of-sequence id.</summary>
    int EosId { get; }

    /// <summary>
    /// The id that ends a generation when the model emits it. For llama2.c vocabularies this is BOS (1), which
    /// separates stories in the training data; llama2.c's own loop stops on it too.
    /// </summary>
    int StopTokenId { get; }

    /// <summary>Encodes <paramref name="text"/>, starting with BOS when <paramref name="bos"/> is true.</summary>
    int[] Encode(string text, bool bos = true);

    /// <summary>
    /// The bytes that <paramref name="token"/> adds to the text when it follows <paramref name="previous"/> (-1 for
    /// none). May be part of a multi-byte UTF-8 character. The span points into the tokenizer's own tables.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The token id is outside the vocabulary.</exception>
    ReadOnlySpan<byte> DecodeBytes(int previous, int token);
}
