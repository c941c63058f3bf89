// The WordPiece tokenizer of GGUF files (tokenizer.ggml.model = "bert"), used by BERT-style encoders (BGE, MiniLM,
// nomic-embed, ...). llama.cpp's converter rewrites the Hugging Face vocabulary: a piece that starts a word gets a
// leading '▁' (U+2581), a continuation piece loses its "##", and bracketed specials ("[CLS]", "[UNK]") stay as they are.
// Keys: tokenizer.ggml.tokens, token_type (optional), unknown_token_id (else the token "[UNK]"), cls_token_id (else
// bos_token_id), seperator_token_id (GGUF's spelling; else eos_token_id), add_bos_token / add_eos_token (default true:
// "[CLS] text [SEP]").
//
// Encoding:
//   1. User-defined tokens (and control tokens when parseSpecial is set) are cut out verbatim (GgufVocabulary.Partition).
//   2. Normalization: characters U+0000, U+FFFD and other controls are dropped; an uncased vocabulary (no normal token
//      has an upper-case letter, as in bert-base-uncased) also lower-cases the text and strips accents (NFD, then the
//      non-spacing marks are dropped: AccentStripping), which is what the uncased model was trained with; a cased
//      vocabulary keeps both.
//   3. Basic split: whitespace separates words; every punctuation character (Unicode P*, and the ASCII symbols
//      $ + < = > ^ ` | ~) and every CJK ideograph is a word of its own.
//   4. WordPiece per word: from the word start, the longest prefix that is a token ("▁" + prefix at the start of the
//      word, the bare piece after it) is taken, then the same from where it ended; a word that cannot be covered this
//      way, or longer than 100 characters, is one unknown token.
// Microsoft.ML.Tokenizers has a WordPiece/BERT tokenizer, but it is built from a vocabulary file or stream in the
// Hugging Face "##" spelling, not from in-memory pieces in GGUF's '▁' spelling, so the algorithm is written here.
//
// Decoding a token: control tokens add nothing; a word-start piece adds a space and its text (no space right at the
// start or after a control token); a continuation piece adds its text.

using System.Globalization;
using System.Text;
using Kiln.Models.Formats;

namespace Kiln.Models.Tokenizers;

/// <summary>The WordPiece (<c>bert</c>) tokenizer of a GGUF vocabulary.</summary>
public sealed class BertWordPieceTokenizer : ITokenizer
{
    /// <summary>The tokenizer model name this class reads.</summary>
    public const string ModelName = "bert";

    /// <summary>Words longer than this many characters become one unknown token (as in BERT).</summary>
    public const int MaxWordChars = 100;

    private const char WordStart = '\u2581';

    private readonly string[] _tokens;
    private readonly GgufTokenType[] _types;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly int[] _userDefined;
    private readonly int[] _userDefinedAndControl;
    private readonly byte[][] _decoded;

    /// <summary>Builds the tokenizer from its parts (see the file header for their meaning).</summary>
    /// <exception cref="ArgumentException">The arrays differ in length or a special id is outside the vocabulary.</exception>
    public BertWordPieceTokenizer(string[] tokens, GgufTokenType[] types, int unknownId, int clsId, int sepId, bool addCls = true, bool addSep = true)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(types);
        if (tokens.Length == 0 || types.Length != tokens.Length)
        {
            throw new ArgumentException($"A vocabulary needs at least one token and one type per token; got {tokens.Length} tokens and {types.Length} types.", nameof(tokens));
        }

        foreach ((int id, string name) in new[] { (unknownId, "unknown"), (clsId, "CLS"), (sepId, "SEP") })
        {
            if ((uint)id >= (uint)tokens.Length)
            {
                throw new ArgumentException($"The {name} id {id} is outside the vocabulary 0..{tokens.Length - 1}.", nameof(tokens));
            }
        }

        _tokens = tokens;
        _types = types;
        UnknownId = unknownId;
        BosId = clsId;
        EosId = sepId;
        AddCls = addCls;
        AddSep = addSep;

        Dictionary<string, int> ids = new(tokens.Length, StringComparer.Ordinal);
        for (int id = 0; id < tokens.Length; id++)
        {
            ids.TryAdd(tokens[id], id);
        }

        _lookup = ids.GetAlternateLookup<ReadOnlySpan<char>>();
        _userDefined = GgufVocabulary.SpecialOrder(tokens, types, control: false);
        _userDefinedAndControl = GgufVocabulary.SpecialOrder(tokens, types, control: true);
        Uncased = !Enumerable.Range(0, tokens.Length).Any(id => types[id] is GgufTokenType.Normal or GgufTokenType.Undefined && tokens[id].Any(char.IsUpper));
        _decoded = [.. Enumerable.Range(0, tokens.Length).Select(id => types[id] == GgufTokenType.Control ? [] : Encoding.UTF8.GetBytes(tokens[id].Replace(WordStart, ' ')))];
    }

    /// <inheritdoc />
    public int VocabSize => _tokens.Length;

    /// <summary>The id that starts a sequence: [CLS].</summary>
    public int BosId { get; }

    /// <summary>The id that ends a sequence: [SEP].</summary>
    public int EosId { get; }

    /// <summary>The stop id: [SEP].</summary>
    public int StopTokenId => EosId;

    /// <summary>The unknown-token id ([UNK]).</summary>
    public int UnknownId { get; }

    /// <summary>Whether sequences start with [CLS].</summary>
    public bool AddCls { get; }

    /// <summary>Whether sequences end with [SEP].</summary>
    public bool AddSep { get; }

    /// <summary>Whether the vocabulary is uncased: the text is lower-cased and its accents stripped before splitting.</summary>
    public bool Uncased { get; }

    /// <summary>The pieces, by id.</summary>
    public IReadOnlyList<string> Tokens => _tokens;

    /// <summary>
    /// Reads the vocabulary from the <c>tokenizer.ggml.*</c> metadata of <paramref name="file"/>, whose
    /// <c>tokenizer.ggml.model</c> must be <c>bert</c>.
    /// </summary>
    /// <exception cref="ModelFormatException">A key is missing, of the wrong type, or inconsistent with the others.</exception>
    public static BertWordPieceTokenizer FromGguf(GgufFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        string path = file.Path;
        string model = file.GetString(GgufTokenizers.ModelKey);
        if (model != ModelName)
        {
            throw new ModelFormatException(path, $"{path}: has tokenizer model '{model}', not '{ModelName}'; load it with GgufTokenizers.Load, which picks the tokenizer by model.");
        }

        string[] tokens = GgufVocabulary.ReadTokens(file);
        GgufTokenType[] types = GgufVocabulary.ReadTypes(file, tokens.Length);
        int unknown = GgufVocabulary.ReadOptionalId(file, "tokenizer.ggml.unknown_token_id", tokens.Length);
        unknown = unknown >= 0 ? unknown : Array.IndexOf(tokens, "[UNK]");
        int cls = GgufVocabulary.ReadOptionalId(file, "tokenizer.ggml.cls_token_id", tokens.Length);
        cls = cls >= 0 ? cls : GgufVocabulary.ReadOptionalId(file, "tokenizer.ggml.bos_token_id", tokens.Length);
        int sep = GgufVocabulary.ReadOptionalId(file, "tokenizer.ggml.seperator_token_id", tokens.Length);
        sep = sep >= 0 ? sep : GgufVocabulary.ReadOptionalId(file, "tokenizer.ggml.eos_token_id", tokens.Length);
        foreach ((int id, string what) in new[] { (unknown, "an unknown token (tokenizer.ggml.unknown_token_id or a token '[UNK]')"), (cls, "a [CLS] token (tokenizer.ggml.cls_token_id or bos_token_id)"), (sep, "a [SEP] token (tokenizer.ggml.seperator_token_id or eos_token_id)") })
        {
            if (id < 0)
            {
                throw new ModelFormatException(path, $"{path}: names no {what}; a WordPiece vocabulary needs it, convert the model again.");
            }
        }

        bool addCls = GgufVocabulary.ReadFlag(file, "tokenizer.ggml.add_bos_token", true);
        bool addSep = GgufVocabulary.ReadFlag(file, "tokenizer.ggml.add_eos_token", true);
        return new BertWordPieceTokenizer(tokens, types, unknown, cls, sep, addCls, addSep);
    }

    /// <summary>Encodes <paramref name="text"/>; with <paramref name="bos"/> adds [CLS] and [SEP] as the vocabulary says.</summary>
    public int[] Encode(string text, bool bos = true) => Encode(text, bos, parseSpecial: false);

    /// <summary>
    /// Encodes <paramref name="text"/>; <paramref name="addSpecial"/> adds [CLS]/[SEP] as the vocabulary says, and
    /// <paramref name="parseSpecial"/> turns control-token text (such as "[MASK]") into the token.
    /// </summary>
    public int[] Encode(string text, bool addSpecial, bool parseSpecial)
    {
        ArgumentNullException.ThrowIfNull(text);
        List<int> ids = [];
        if (addSpecial && AddCls)
        {
            ids.Add(BosId);
        }

        foreach ((int special, int start, int length) in GgufVocabulary.Partition(text, _tokens, parseSpecial ? _userDefinedAndControl : _userDefined))
        {
            if (special >= 0)
            {
                ids.Add(special);
                continue;
            }

            foreach (string word in Words(text.Substring(start, length)))
            {
                EncodeWord(word, ids);
            }
        }

        if (addSpecial && AddSep)
        {
            ids.Add(EosId);
        }

        return [.. ids];
    }

    /// <summary>The words of <paramref name="text"/> after normalization and the basic split (steps 2 and 3).</summary>
    public List<string> Words(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string normalized = Uncased ? AccentStripping.Strip(text.ToLowerInvariant()) : text;
        List<string> words = [];
        StringBuilder word = new();
        void EndWord()
        {
            if (word.Length > 0)
            {
                words.Add(word.ToString());
                word.Clear();
            }
        }

        for (int i = 0; i < normalized.Length; i += char.IsSurrogatePair(normalized, i) ? 2 : 1)
        {
            int cp = CodePointAt(normalized, i);
            string s = char.ConvertFromUtf32(cp);
            if (IsWhitespace(cp))
            {
                EndWord();
            }
            else if (cp == 0 || cp == 0xFFFD || IsControl(cp))
            {
                continue;
            }
            else if (IsPunctuation(cp) || IsCjk(cp))
            {
                EndWord();
                words.Add(s);
            }
            else
            {
                word.Append(s);
            }
        }

        EndWord();
        return words;
    }

    /// <inheritdoc />
    public ReadOnlySpan<byte> DecodeBytes(int previous, int token)
    {
        if ((uint)token >= (uint)_tokens.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(token), $"Token id {token} is outside the vocabulary 0..{_tokens.Length - 1}; use ids produced by this tokenizer or by a model with the same vocabulary.");
        }

        // No space before the first word.
        byte[] bytes = _decoded[token];
        bool first = previous < 0 || ((uint)previous < (uint)_types.Length && _types[previous] == GgufTokenType.Control);
        return first && bytes.Length > 0 && bytes[0] == (byte)' ' ? bytes.AsSpan(1) : bytes;
    }

    /// <summary>The text of a whole token sequence (control tokens add nothing).</summary>
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

    private void EncodeWord(string word, List<int> ids)
    {
        if (word.Length > MaxWordChars)
        {
            ids.Add(UnknownId);
            return;
        }

        // The word with its start marker; pieces are looked up as spans of it ("▁" + prefix first, bare pieces after).
        string marked = WordStart + word;
        int count = ids.Count;
        for (int start = 0; start < marked.Length;)
        {
            int found = -1;
            int end = marked.Length;
            for (; end > start + (start == 0 ? 1 : 0); end--)
            {
                // Never cut a surrogate pair.
                if (end < marked.Length && char.IsLowSurrogate(marked[end]))
                {
                    continue;
                }

                if (_lookup.TryGetValue(marked.AsSpan(start, end - start), out found))
                {
                    break;
                }

                found = -1;
            }

            if (found < 0)
            {
                // The word cannot be covered: it is one unknown token.
                ids.RemoveRange(count, ids.Count - count);
                ids.Add(UnknownId);
                return;
            }

            ids.Add(found);
            start = end;
        }
    }

    private static int CodePointAt(string text, int i) =>
        char.IsSurrogatePair(text, i) ? char.ConvertToUtf32(text[i], text[i + 1]) : char.IsSurrogate(text[i]) ? 0xFFFD : text[i];

    private static bool IsWhitespace(int cp) => cp is ' ' or '\t' or '\n' or '\r' || (cp <= 0xFFFF && char.GetUnicodeCategory((char)cp) == UnicodeCategory.SpaceSeparator);

    private static bool IsControl(int cp) => CharUnicodeInfo.GetUnicodeCategory(cp) is UnicodeCategory.Control or UnicodeCategory.Format;

    private static bool IsPunctuation(int cp) =>
        cp is (>= 33 and <= 47) or (>= 58 and <= 64) or (>= 91 and <= 96) or (>= 123 and <= 126)
        || CharUnicodeInfo.GetUnicodeCategory(cp) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;

    // The CJK ideograph blocks BERT isolates (unified ideographs, extensions A-E, compatibility ideographs).
    private static bool IsCjk(int cp) =>
        cp is (>= 0x4E00 and <= 0x9FFF) or (>= 0x3400 and <= 0x4DBF) or (>= 0x20000 and <= 0x2A6DF) or (>= 0x2A700 and <= 0x2B73F)
            or (>= 0x2B740 and <= 0x2B81F) or (>= 0x2B820 and <= 0x2CEAF) or (>= 0xF900 and <= 0xFAFF) or (>= 0x2F800 and <= 0x2FA1F);
}
