// The `llama` tokenizer model of GGUF files (tokenizer.ggml.model = "llama"): a SentencePiece-style vocabulary stored
// as metadata, as llama.cpp's converters write it for Llama 1/2, Mistral, TinyLlama and llama2.c models:
//   tokenizer.ggml.tokens       string array, the piece of each id, spaces spelled '▁' (U+2581)
//   tokenizer.ggml.scores       f32 array, the merge priority of each piece (optional: all 0)
//   tokenizer.ggml.token_type   i32 array: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
//                               (optional: all normal)
//   tokenizer.ggml.bos_token_id / eos_token_id / unknown_token_id    (defaults 1, 2, 0)
//   tokenizer.ggml.add_bos_token / add_eos_token / add_space_prefix  (defaults true, false, true)
//
// Encoding is llama.cpp's SPM tokenizer: prepend one space to non-empty text (add_space_prefix), spell every space '▁',
// then the code points, byte fallback ("<0xHH>" pieces) and score-ordered merges of ScoredPieces, the engine shared with
// the llama2.c tokenizer. BOS/EOS are added when the caller asks for special tokens and the vocabulary says to add them.
// Control-token text in the input is not parsed as a control token, and user-defined tokens are not matched ahead of the
// merges (llama.cpp does that; the Llama 2 vocabulary has none).
//
// Decoding a token: a control token adds nothing; a byte token adds its byte; the unknown token adds "▅" (U+2585, as
// llama.cpp prints it); any other adds its piece with '▁' turned back into spaces, and right after BOS the one leading
// space the prefix put there is dropped (as llama.cpp's detokenizer does when add_space_prefix is set).

using System.Text;
using Kiln.Models.Formats;

namespace Kiln.Models.Tokenizers;

/// <summary>The token types of GGUF vocabularies (<c>tokenizer.ggml.token_type</c>).</summary>
public enum GgufTokenType
{
    /// <summary>Not given (treated as normal).</summary>
    Undefined = 0,

    /// <summary>An ordinary piece.</summary>
    Normal = 1,

    /// <summary>The unknown token.</summary>
    Unknown = 2,

    /// <summary>A control token (BOS, EOS, ...): no text.</summary>
    Control = 3,

    /// <summary>A user-defined piece.</summary>
    UserDefined = 4,

    /// <summary>An unused slot.</summary>
    Unused = 5,

    /// <summary>A byte-fallback piece "&lt;0xHH&gt;".</summary>
    Byte = 6,
}

/// <summary>The SentencePiece-style (<c>llama</c>) tokenizer of a GGUF vocabulary.</summary>
public sealed class LlamaSpmTokenizer : ITokenizer
{
    /// <summary>The tokenizer model name this class reads.</summary>
    public const string ModelName = "llama";

    private static readonly byte[] s_unknownText = Encoding.UTF8.GetBytes("\u2585");

    private readonly string[] _tokens;
    private readonly float[] _scores;
    private readonly GgufTokenType[] _types;
    private readonly ScoredPieces _vocabulary;
    private readonly byte[][] _decoded;

    /// <summary>Builds the tokenizer from its parts (see the file header for their meaning).</summary>
    /// <exception cref="ArgumentException">The arrays differ in length or a special id is outside the vocabulary.</exception>
    public LlamaSpmTokenizer(
        string[] tokens,
        float[] scores,
        GgufTokenType[] types,
        int bosId,
        int eosId,
        int unknownId,
        bool addBos = true,
        bool addEos = false,
        bool addSpacePrefix = true)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(scores);
        ArgumentNullException.ThrowIfNull(types);
        if (tokens.Length == 0 || scores.Length != tokens.Length || types.Length != tokens.Length)
        {
            throw new ArgumentException($"A vocabulary needs at least one token and one score and type per token; got {tokens.Length} tokens, {scores.Length} scores, {types.Length} types.", nameof(tokens));
        }

        foreach ((int id, string name) in new[] { (bosId, "BOS"), (eosId, "EOS"), (unknownId, "unknown") })
        {
            if ((uint)id >= (uint)tokens.Length)
            {
                throw new ArgumentException($"The {name} id {id} is outside the vocabulary 0..{tokens.Length - 1}.", nameof(tokens));
            }
        }

        _tokens = tokens;
        _scores = scores;
        _types = types;
        BosId = bosId;
        EosId = eosId;
        UnknownId = unknownId;
        AddBos = addBos;
        AddEos = addEos;
        AddSpacePrefix = addSpacePrefix;

        // The pieces as UTF-8 bytes for the merge engine, and what each token decodes to.
        byte[][] pieces = [.. tokens.Select(static t => Encoding.UTF8.GetBytes(t))];
        _vocabulary = new ScoredPieces(pieces, scores, unknownId);
        _decoded = new byte[tokens.Length][];
        for (int id = 0; id < tokens.Length; id++)
        {
            int value = _vocabulary.ByteValue(id);
            _decoded[id] = types[id] switch
            {
                GgufTokenType.Control => [],
                GgufTokenType.Unknown => s_unknownText,
                GgufTokenType.Byte when value >= 0 => [(byte)value],
                _ => Encoding.UTF8.GetBytes(tokens[id].Replace('\u2581', ' ')),
            };
        }
    }

    /// <inheritdoc />
    public int VocabSize => _tokens.Length;

    /// <inheritdoc />
    public int BosId { get; }

    /// <inheritdoc />
    public int EosId { get; }

    /// <summary>The unknown-token id.</summary>
    public int UnknownId { get; }

    /// <summary>The stop id: EOS (llama.cpp stops generation on it).</summary>
    public int StopTokenId => EosId;

    /// <summary>Whether sequences start with BOS (<c>tokenizer.ggml.add_bos_token</c>).</summary>
    public bool AddBos { get; }

    /// <summary>Whether sequences end with EOS (<c>tokenizer.ggml.add_eos_token</c>).</summary>
    public bool AddEos { get; }

    /// <summary>Whether non-empty text gets one leading space before encoding (<c>tokenizer.ggml.add_space_prefix</c>).</summary>
    public bool AddSpacePrefix { get; }

    /// <summary>The pieces, by id.</summary>
    public IReadOnlyList<string> Tokens => _tokens;

    /// <summary>The scores, by id.</summary>
    public IReadOnlyList<float> Scores => _scores;

    /// <summary>The token types, by id.</summary>
    public IReadOnlyList<GgufTokenType> TokenTypes => _types;

    /// <summary>
    /// Reads the vocabulary from the <c>tokenizer.ggml.*</c> metadata of <paramref name="file"/>, whose
    /// <c>tokenizer.ggml.model</c> must be <c>llama</c>.
    /// </summary>
    /// <exception cref="ModelFormatException">A key is missing, of the wrong type, or inconsistent with the others.</exception>
    public static LlamaSpmTokenizer FromGguf(GgufFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        string path = file.Path;
        string model = file.GetString("tokenizer.ggml.model");
        if (model != ModelName)
        {
            throw new ModelFormatException(path, $"{path}: has tokenizer model '{model}', not '{ModelName}'; load it with GgufTokenizers.Load, which picks the tokenizer by model.");
        }

        // The pieces, then the optional scores and types, each one per piece.
        string[] tokens = file.GetArray<string>("tokenizer.ggml.tokens");
        if (tokens.Length == 0)
        {
            throw new ModelFormatException(path, $"{path}: has an empty tokenizer.ggml.tokens; the vocabulary is missing, convert the model again.");
        }

        float[] scores = file.Contains("tokenizer.ggml.scores") ? file.GetArray<float>("tokenizer.ggml.scores") : new float[tokens.Length];
        int[] typeCodes = file.Contains("tokenizer.ggml.token_type") ? file.GetArray<int>("tokenizer.ggml.token_type") : [.. Enumerable.Repeat((int)GgufTokenType.Normal, tokens.Length)];
        foreach ((string key, int length) in new[] { ("tokenizer.ggml.scores", scores.Length), ("tokenizer.ggml.token_type", typeCodes.Length) })
        {
            if (length != tokens.Length)
            {
                throw new ModelFormatException(path, $"{path}: has {length} entries in {key} but {tokens.Length} tokens; the vocabulary is damaged, convert the model again.");
            }
        }

        if (scores.Any(float.IsNaN))
        {
            throw new ModelFormatException(path, $"{path}: has a NaN in tokenizer.ggml.scores; the vocabulary is damaged, convert the model again.");
        }

        GgufTokenType[] types = new GgufTokenType[tokens.Length];
        for (int id = 0; id < types.Length; id++)
        {
            int code = typeCodes[id];
            if (code is < 0 or > (int)GgufTokenType.Byte)
            {
                throw new ModelFormatException(path, $"{path}: has token type {code} for token {id} in tokenizer.ggml.token_type (types are 0..6); the vocabulary is damaged, convert the model again.");
            }

            types[id] = (GgufTokenType)code;
        }

        // The special ids and flags.
        long last = tokens.Length - 1;
        int bos = (int)file.GetInteger("tokenizer.ggml.bos_token_id", 1, 0, last);
        int eos = (int)file.GetInteger("tokenizer.ggml.eos_token_id", 2, 0, last);
        int unknown = (int)file.GetInteger("tokenizer.ggml.unknown_token_id", 0, 0, last);
        bool addBos = !file.Contains("tokenizer.ggml.add_bos_token") || file.GetBool("tokenizer.ggml.add_bos_token");
        bool addEos = file.Contains("tokenizer.ggml.add_eos_token") && file.GetBool("tokenizer.ggml.add_eos_token");
        bool addSpacePrefix = !file.Contains("tokenizer.ggml.add_space_prefix") || file.GetBool("tokenizer.ggml.add_space_prefix");
        return new LlamaSpmTokenizer(tokens, scores, types, bos, eos, unknown, addBos, addEos, addSpacePrefix);
    }

    /// <summary>
    /// Encodes <paramref name="text"/>. With <paramref name="bos"/> (a sequence start) the special tokens the
    /// vocabulary asks for are added: BOS when <see cref="AddBos"/>, EOS when <see cref="AddEos"/>.
    /// </summary>
    public int[] Encode(string text, bool bos = true)
    {
        ArgumentNullException.ThrowIfNull(text);

        // Prepare the text as SentencePiece sees it: the space prefix, spaces spelled '▁'.
        List<int> tokens = new(text.Length + 2);
        if (bos && AddBos)
        {
            tokens.Add(BosId);
        }

        if (text.Length > 0)
        {
            string prepared = (AddSpacePrefix ? " " + text : text).Replace(' ', '\u2581');
            List<int> symbols = new(prepared.Length);
            _vocabulary.AppendSymbols(Encoding.UTF8.GetBytes(prepared), symbols);
            tokens.AddRange(_vocabulary.Merge(symbols));
        }

        if (bos && AddEos)
        {
            tokens.Add(EosId);
        }

        return [.. tokens];
    }

    /// <inheritdoc />
    public ReadOnlySpan<byte> DecodeBytes(int previous, int token)
    {
        if ((uint)token >= (uint)_tokens.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(token), $"Token id {token} is outside the vocabulary 0..{_tokens.Length - 1}; use ids produced by this tokenizer or by a model with the same vocabulary.");
        }

        // After BOS, drop the space the prefix added.
        byte[] bytes = _decoded[token];
        if (previous == BosId && AddSpacePrefix && bytes.Length > 0 && bytes[0] == (byte)' ' && _types[token] != GgufTokenType.Byte)
        {
            return bytes.AsSpan(1);
        }

        return bytes;
    }

    /// <summary>The text of a whole token sequence (control tokens add nothing; incomplete UTF-8 becomes U+FFFD).</summary>
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
}
