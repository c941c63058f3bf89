// The llama2.c vocabulary (tok*.bin / tokenizer.bin, karpathy/llama2.c tokenizer.py export): an int32
// max_token_length, then exactly V records {float32 score, int32 length, length raw bytes}. V is not stored in the
// file: it comes from the model header, so a tokenizer that does not belong to the model shows up as truncation
// or trailing data. Ids 0, 1, 2 are <unk>, BOS and EOS; byte-fallback pieces are written "<0xHH>".
//
// Encoding follows llama2.c's run.c: BOS, the piece " " as a dummy prefix when the text is non-empty, each UTF-8
// code point looked up as a piece or else split into byte pieces, then repeatedly merge the adjacent pair whose
// concatenation is a piece with the highest score (ties: the leftmost). The code points and merges are ScoredPieces,
// the engine this tokenizer shares with the `llama` vocabulary of GGUF files (LlamaSpmTokenizer).
//
// Decoding: after BOS one leading space of the piece is dropped; "<0xHH>" pieces become the raw byte.
//
// Microsoft.ML.Tokenizers was considered: its SentencePiece BPE reads the sentencepiece protobuf model (and
// its BPE class reads vocab.json/merges.txt), not this score-ordered binary list with "<0xHH>" pieces and a
// plain-space word marker, so the format is read here.

using System.Text;

namespace Kiln.Models.Tokenizers;

/// <summary>The llama2.c BPE tokenizer (score-ordered pieces with byte fallback).</summary>
public sealed class Llama2cTokenizer : ITokenizer
{
    /// <summary>The id of the unknown-token piece.</summary>
    public const int UnknownId = 0;

    /// <summary>The beginning-of-sequence id.</summary>
    public const int BeginId = 1;

    /// <summary>The end-of-sequence id.</summary>
    public const int EndId = 2;

    // Bounds that keep a corrupt file from asking for absurd buffers.
    private const int MaxPieceBytes = 1 << 16;
    private const long MaxFileBytes = 1L << 30;

    private readonly ScoredPieces _vocabulary;
    private readonly byte[][] _decoded;
    private readonly int _spaceId;

    private Llama2cTokenizer(byte[][] pieces, float[] scores, int maxTokenLength)
    {
        _vocabulary = new ScoredPieces(pieces, scores, UnknownId);
        MaxTokenLength = maxTokenLength;

        // What each piece decodes to: byte-fallback pieces "<0xHH>" become their byte, others their bytes.
        _decoded = new byte[pieces.Length][];
        for (int id = 0; id < pieces.Length; id++)
        {
            int value = _vocabulary.ByteValue(id);
            _decoded[id] = value >= 0 ? [(byte)value] : pieces[id];
        }

        int space = _vocabulary.Lookup(" "u8);
        _spaceId = space >= 0 ? space : _vocabulary.ByteId((byte)' ');
    }

    /// <inheritdoc />
    public int VocabSize => _vocabulary.Count;

    /// <inheritdoc />
    public int BosId => BeginId;

    /// <inheritdoc />
    public int EosId => EndId;

    /// <summary>The stop id: BOS, which separates documents in llama2.c training data (run.c stops on it too).</summary>
    public int StopTokenId => BeginId;

    /// <summary>The longest piece in bytes, as stored in the file header.</summary>
    public int MaxTokenLength { get; }

    /// <summary>
    /// Loads a llama2.c tokenizer for a model with <paramref name="vocabSize"/> tokens (the file does not store
    /// the count; it comes from the model header).
    /// </summary>
    /// <exception cref="ModelFormatException">
    /// The file is missing or unreadable, truncated, has trailing data, or a record is malformed: one line that
    /// names the file, the problem and the fix.
    /// </exception>
    public static Llama2cTokenizer Load(string path, int vocabSize)
    {
        // Check the file before reading it whole.
        if (vocabSize < 3)
        {
            throw Fail(path, $"cannot serve a model with vocab_size {vocabSize}; a llama2.c vocabulary has at least 3 tokens (<unk>, BOS, EOS)");
        }

        if (Directory.Exists(path))
        {
            throw Fail(path, "is a directory; pass the tokenizer file itself (tok*.bin or tokenizer.bin)");
        }

        if (!File.Exists(path))
        {
            throw Fail(path, "does not exist; check the path (a llama2.c tok*.bin / tokenizer.bin is expected)");
        }

        byte[] bytes;
        try
        {
            long length = new FileInfo(path).Length;
            if (length > MaxFileBytes)
            {
                throw Fail(path, $"is {length} bytes, far larger than any llama2.c tokenizer; pass the tokenizer file, not the model");
            }

            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"tokenizer file '{path}' could not be read ({e.Message.ReplaceLineEndings(" ").Trim()}); check its permissions.", e);
        }

        return Parse(path, bytes, vocabSize);
    }

    /// <summary>Parses the bytes of a tokenizer file; <paramref name="path"/> only names it in messages.</summary>
    /// <exception cref="ModelFormatException">See <see cref="Load"/>.</exception>
    public static Llama2cTokenizer Parse(string path, ReadOnlySpan<byte> bytes, int vocabSize)
    {
        // The header: the longest piece in bytes.
        if (bytes.Length < sizeof(int))
        {
            throw Fail(path, $"is {bytes.Length} bytes, shorter than the 4-byte header; the file is truncated or not a llama2.c tokenizer");
        }

        int maxTokenLength = BitConverter.ToInt32(bytes);
        if (maxTokenLength < 1 || maxTokenLength > MaxPieceBytes)
        {
            throw Fail(path, $"has max_token_length {maxTokenLength}, outside 1..{MaxPieceBytes}; the file is corrupt or not a llama2.c tokenizer");
        }

        // Exactly vocabSize records follow, each {score, length, bytes}.
        byte[][] pieces = new byte[vocabSize][];
        float[] scores = new float[vocabSize];
        int offset = sizeof(int);
        string mismatch = $"the file is truncated, or it belongs to a model with a smaller vocabulary than this model's {vocabSize} tokens: pass the tokenizer that came with the model";
        for (int id = 0; id < vocabSize; id++)
        {
            if (bytes.Length - offset < 2 * sizeof(int))
            {
                throw Fail(path, $"ends at byte {bytes.Length} inside record {id} of {vocabSize}; {mismatch}");
            }

            float score = BitConverter.ToSingle(bytes[offset..]);
            int length = BitConverter.ToInt32(bytes[(offset + sizeof(float))..]);
            offset += 2 * sizeof(int);
            if (float.IsNaN(score))
            {
                throw Fail(path, $"has a NaN score in record {id}; the file is corrupt, export the tokenizer again");
            }

            if (length < 0 || length > maxTokenLength)
            {
                throw Fail(path, $"has record {id} of length {length}, outside 0..{maxTokenLength} (the header's max_token_length); the file is corrupt or does not match the model's vocab_size {vocabSize}");
            }

            if (bytes.Length - offset < length)
            {
                throw Fail(path, $"ends at byte {bytes.Length} inside record {id} of {vocabSize}; {mismatch}");
            }

            pieces[id] = bytes.Slice(offset, length).ToArray();
            scores[id] = score;
            offset += length;
        }

        // Nothing may follow the last record: extra data means the model's vocabulary is smaller than the file's.
        if (offset != bytes.Length)
        {
            throw Fail(path, $"has {bytes.Length - offset} bytes after the {vocabSize} records the model's vocab_size implies; it belongs to a model with a larger vocabulary: pass the tokenizer that came with the model");
        }

        return new Llama2cTokenizer(pieces, scores, maxTokenLength);
    }

    /// <summary>The raw bytes of the piece of <paramref name="id"/> as stored (byte pieces read "&lt;0xHH&gt;").</summary>
    public ReadOnlySpan<byte> Piece(int id)
    {
        CheckId(id, nameof(id));
        return _vocabulary.Piece(id);
    }

    /// <summary>The merge score of the piece of <paramref name="id"/> (higher merges first).</summary>
    public float Score(int id)
    {
        CheckId(id, nameof(id));
        return _vocabulary.Score(id);
    }

    /// <summary>The id of the piece with exactly these bytes, or -1.</summary>
    public int Lookup(ReadOnlySpan<byte> piece) => _vocabulary.Lookup(piece);

    /// <summary>
    /// Encodes <paramref name="text"/> as llama2.c's run.c does: BOS (when <paramref name="bos"/>), the dummy
    /// prefix " " when the text is non-empty, code points or their byte pieces, then score-ordered merges.
    /// </summary>
    public int[] Encode(string text, bool bos = true) => Encode(text, bos, eos: false);

    /// <summary>Like <see cref="Encode(string, bool)"/>, with EOS appended when <paramref name="eos"/> is true.</summary>
    public int[] Encode(string text, bool bos, bool eos)
    {
        ArgumentNullException.ThrowIfNull(text);

        // Start from the dummy prefix and single code points (or their bytes).
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        List<int> symbols = new(utf8.Length + 1);
        if (utf8.Length > 0)
        {
            symbols.Add(_spaceId);
        }

        _vocabulary.AppendSymbols(utf8, symbols);

        // Merge, then write BOS, the merged symbols in list order, and EOS.
        int[] merged = _vocabulary.Merge(symbols);
        int count = merged.Length + (bos ? 1 : 0) + (eos ? 1 : 0);
        int[] tokens = new int[count];
        int at = 0;
        if (bos)
        {
            tokens[at++] = BeginId;
        }

        merged.CopyTo(tokens, at);
        at += merged.Length;
        if (eos)
        {
            tokens[at] = EndId;
        }

        return tokens;
    }

    /// <inheritdoc />
    public ReadOnlySpan<byte> DecodeBytes(int previous, int token)
    {
        CheckId(token, nameof(token));

        // BOS is a control token: it adds no text (generation stops on it before it is ever printed).
        if (token == BeginId)
        {
            return [];
        }

        // After BOS, drop the leading space of a piece (the dummy prefix); byte pieces become their byte.
        byte[] piece = _vocabulary.Piece(token);
        if (previous == BeginId && piece.Length > 0 && piece[0] == (byte)' ')
        {
            return piece.AsSpan(1);
        }

        return _decoded[token];
    }

    /// <summary>The text of a whole token sequence (BOS adds nothing; incomplete UTF-8 becomes U+FFFD).</summary>
    public string Decode(ReadOnlySpan<int> tokens)
    {
        TokenTextDecoder decoder = new(this);
        StringBuilder text = new();
        foreach (int token in tokens)
        {
            text.Append(decoder.Append(token));
        }

        return text.Append(decoder.Flush()).ToString();
    }

    private void CheckId(int id, string name)
    {
        if ((uint)id >= (uint)_vocabulary.Count)
        {
            throw new ArgumentOutOfRangeException(name, $"Token id {id} is outside the vocabulary 0..{_vocabulary.Count - 1}; use ids produced by this tokenizer or by a model with the same vocabulary.");
        }
    }

    private static ModelFormatException Fail(string path, string problem) => new(path, $"tokenizer file '{path}' {problem}.");
}
