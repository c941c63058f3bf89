// The byte-level BPE tokenizer of GGUF files (tokenizer.ggml.model = "gpt2"), used by GPT-2, Llama 3, Qwen, DeepSeek,
// Falcon, StarCoder and many others:
//   tokenizer.ggml.tokens      string array, the piece of each id in GPT-2's printable byte alphabet (below)
//   tokenizer.ggml.merges      string array "left right", the merge rules, highest priority first
//   tokenizer.ggml.token_type  i32 array (optional): 1 normal, 3 control, 4 user-defined, ...
//   tokenizer.ggml.pre         the pre-tokenizer name (BpePreTokenizer; "default" when absent)
//   tokenizer.ggml.bos_token_id / eos_token_id, add_bos_token / add_eos_token
//
// GPT-2's byte alphabet gives each of the 256 byte values a printable character: the printable Latin-1 bytes
// ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves and the other 68 bytes (controls, space, 0x7F..0xA0, soft
// hyphen) take U+0100, U+0101, ... in byte order; so a space is 'Ġ' (U+0120) and a newline 'Ċ' (U+010A).
//
// Encoding, as llama.cpp does it:
//   1. User-defined tokens (and control tokens when parseSpecial is set) are cut out of the raw text verbatim, longest
//      first (GgufVocabulary.Partition); they become their own ids.
//   2. The pre-tokenizer cuts the remaining text into fragments.
//   3. Each fragment's UTF-8 bytes are spelled in the byte alphabet and merged by rank: repeatedly the adjacent pair
//      whose merge rule comes first in tokenizer.ggml.merges (ties: leftmost). With ignore_merges (the llama3 family) a
//      fragment that is itself a token is taken whole first. The merge loop is Microsoft.ML.Tokenizers' BpeTokenizer
//      (built from the in-memory vocabulary and merges, with byte-level input); the special-token cut, the
//      pre-tokenizers (a sequence of regular expressions whose gaps are kept, which its RegexPreTokenizer does not do)
//      and ignore_merges are done here because the library has no equivalent of llama.cpp's behaviour for them.
// BOS (and EOS) are added when the caller asks for special tokens and the vocabulary says to add them.
//
// Decoding a token: a control token adds nothing; a user-defined token adds its text as written; any other maps its
// characters back through the byte alphabet to bytes (a character outside the alphabet adds its own UTF-8).

using System.Text;
using Kiln.Models.Formats;
using Microsoft.ML.Tokenizers;

namespace Kiln.Models.Tokenizers;

/// <summary>The byte-level BPE (<c>gpt2</c>) tokenizer of a GGUF vocabulary.</summary>
public sealed class ByteLevelBpeTokenizer : ITokenizer
{
    /// <summary>The tokenizer model name this class reads.</summary>
    public const string ModelName = "gpt2";

    private static readonly char[] s_byteToChar = BuildByteAlphabet();
    private static readonly int[] s_charToByte = BuildCharToByte();

    private readonly string[] _tokens;
    private readonly GgufTokenType[] _types;
    private readonly byte[][] _decoded;
    private readonly Dictionary<string, int> _ids;
    private readonly int[] _userDefined;
    private readonly int[] _userDefinedAndControl;
    private readonly BpeTokenizer _bpe;

    /// <summary>Builds the tokenizer from its parts (see the file header for their meaning).</summary>
    /// <exception cref="ArgumentException">
    /// The arrays differ in length, a special id is outside the vocabulary, a merge is malformed or names an unknown
    /// token, a byte of the alphabet has no token, or the pre-tokenizer is unknown.
    /// </exception>
    public ByteLevelBpeTokenizer(
        string[] tokens,
        GgufTokenType[] types,
        string[] merges,
        string preTokenizer,
        int bosId,
        int eosId,
        bool addBos = false,
        bool addEos = false,
        bool ignoreMerges = false)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(types);
        ArgumentNullException.ThrowIfNull(merges);
        ArgumentNullException.ThrowIfNull(preTokenizer);
        if (tokens.Length == 0 || types.Length != tokens.Length)
        {
            throw new ArgumentException($"A vocabulary needs at least one token and one type per token; got {tokens.Length} tokens and {types.Length} types.", nameof(tokens));
        }

        foreach ((int id, string name) in new[] { (bosId, "BOS"), (eosId, "EOS") })
        {
            if ((uint)id >= (uint)tokens.Length)
            {
                throw new ArgumentException($"The {name} id {id} is outside the vocabulary 0..{tokens.Length - 1}.", nameof(tokens));
            }
        }

        _tokens = tokens;
        _types = types;
        BosId = bosId;
        EosId = eosId;
        AddBos = addBos;
        AddEos = addEos;
        IgnoreMerges = ignoreMerges;
        PreTokenizer = BpePreTokenizer.ForName(preTokenizer);

        // Token text to id; when two tokens share a text the lower id wins.
        _ids = new Dictionary<string, int>(tokens.Length, StringComparer.Ordinal);
        for (int id = 0; id < tokens.Length; id++)
        {
            _ids.TryAdd(tokens[id], id);
        }

        // Every byte needs its token, or some texts could not be encoded.
        for (int b = 0; b < 256; b++)
        {
            if (!_ids.ContainsKey(s_byteToChar[b].ToString()))
            {
                throw new ArgumentException($"The vocabulary has no token for byte 0x{b:X2} ('{s_byteToChar[b]}'); a byte-level BPE vocabulary needs all 256.", nameof(tokens));
            }
        }

        CheckMerges(merges);

        // A repeated merge rule keeps its first (most important) rank, as in llama.cpp; later copies change nothing.
        HashSet<string> seen = new(merges.Length, StringComparer.Ordinal);
        string[] distinct = [.. merges.Where(seen.Add)];
        _userDefined = GgufVocabulary.SpecialOrder(tokens, types, control: false);
        _userDefinedAndControl = GgufVocabulary.SpecialOrder(tokens, types, control: true);

        // The merge loop: byte-level input, no pre-tokenizer or normalizer of its own (fragments arrive already cut).
        _bpe = BpeTokenizer.Create(new BpeOptions(_ids) { Merges = distinct, ByteLevel = true });

        _decoded = new byte[tokens.Length][];
        for (int id = 0; id < tokens.Length; id++)
        {
            _decoded[id] = types[id] switch
            {
                GgufTokenType.Control => [],
                GgufTokenType.UserDefined => Encoding.UTF8.GetBytes(tokens[id]),
                _ => AlphabetToBytes(tokens[id]),
            };
        }
    }

    /// <inheritdoc />
    public int VocabSize => _tokens.Length;

    /// <inheritdoc />
    public int BosId { get; }

    /// <inheritdoc />
    public int EosId { get; }

    /// <summary>The stop id: EOS (llama.cpp stops generation on it).</summary>
    public int StopTokenId => EosId;

    /// <summary>Whether sequences start with BOS (<c>tokenizer.ggml.add_bos_token</c>).</summary>
    public bool AddBos { get; }

    /// <summary>Whether sequences end with EOS (<c>tokenizer.ggml.add_eos_token</c>).</summary>
    public bool AddEos { get; }

    /// <summary>Whether a fragment that is itself a token is taken whole before merging (the llama3 family).</summary>
    public bool IgnoreMerges { get; }

    /// <summary>The pre-tokenizer (<c>tokenizer.ggml.pre</c>).</summary>
    public BpePreTokenizer PreTokenizer { get; }

    /// <summary>The pieces, by id.</summary>
    public IReadOnlyList<string> Tokens => _tokens;

    /// <summary>The token types, by id.</summary>
    public IReadOnlyList<GgufTokenType> TokenTypes => _types;

    /// <summary>The character GPT-2's byte alphabet uses for byte <paramref name="value"/>.</summary>
    public static char ByteToChar(byte value) => s_byteToChar[value];

    /// <summary>
    /// Reads the vocabulary from the <c>tokenizer.ggml.*</c> metadata of <paramref name="file"/>, whose
    /// <c>tokenizer.ggml.model</c> must be <c>gpt2</c>.
    /// </summary>
    /// <exception cref="ModelFormatException">A key is missing, of the wrong type, or inconsistent with the others.</exception>
    public static ByteLevelBpeTokenizer FromGguf(GgufFile file)
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
        if (!file.Contains("tokenizer.ggml.merges"))
        {
            throw new ModelFormatException(path, $"{path}: has no tokenizer.ggml.merges; a byte-level BPE (gpt2) vocabulary needs its merge rules, convert the model again.");
        }

        string[] merges = file.GetArray<string>("tokenizer.ggml.merges");
        string pre = file.Contains("tokenizer.ggml.pre") ? file.GetString("tokenizer.ggml.pre") : "default";
        if (!BpePreTokenizer.IsSupported(pre))
        {
            throw new ModelFormatException(path, $"{path}: has tokenizer.ggml.pre '{pre}', which Kiln does not know; supported: {string.Join(", ", BpePreTokenizer.SupportedNames)}.");
        }

        // BOS and EOS: each falls back to the other when one is missing.
        int bos = GgufVocabulary.ReadOptionalId(file, "tokenizer.ggml.bos_token_id", tokens.Length);
        int eos = GgufVocabulary.ReadOptionalId(file, "tokenizer.ggml.eos_token_id", tokens.Length);
        if (bos < 0 && eos < 0)
        {
            throw new ModelFormatException(path, $"{path}: has neither tokenizer.ggml.bos_token_id nor tokenizer.ggml.eos_token_id; the vocabulary is incomplete, convert the model again.");
        }

        bos = bos < 0 ? eos : bos;
        eos = eos < 0 ? bos : eos;

        // The llama3 family starts sequences with BOS and takes whole-token fragments unmerged, as llama.cpp does.
        bool llama3 = BpePreTokenizer.IsLlama3Family(pre);
        bool addBos = GgufVocabulary.ReadFlag(file, "tokenizer.ggml.add_bos_token", llama3);
        bool addEos = GgufVocabulary.ReadFlag(file, "tokenizer.ggml.add_eos_token", false);
        try
        {
            return new ByteLevelBpeTokenizer(tokens, types, merges, pre, bos, eos, addBos, addEos, ignoreMerges: llama3);
        }
        catch (ArgumentException e)
        {
            throw new ModelFormatException(path, $"{path}: {e.Message.Split(" (Parameter")[0]} The vocabulary is damaged, convert the model again.");
        }
    }

    /// <summary>
    /// Encodes <paramref name="text"/>. With <paramref name="bos"/> (a sequence start) the special tokens the
    /// vocabulary asks for are added. Control-token text in <paramref name="text"/> is encoded as plain text.
    /// </summary>
    public int[] Encode(string text, bool bos = true) => Encode(text, bos, parseSpecial: false);

    /// <summary>
    /// Encodes <paramref name="text"/>; <paramref name="addSpecial"/> adds BOS/EOS as the vocabulary says, and
    /// <paramref name="parseSpecial"/> turns control-token text (such as "&lt;|endoftext|&gt;") into the token.
    /// </summary>
    public int[] Encode(string text, bool addSpecial, bool parseSpecial)
    {
        ArgumentNullException.ThrowIfNull(text);
        List<int> ids = new(text.Length / 3 + 2);
        if (addSpecial && AddBos)
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

            string part = text.Substring(start, length);
            foreach ((int fragmentStart, int fragmentLength) in PreTokenizer.Split(part))
            {
                EncodeFragment(part.Substring(fragmentStart, fragmentLength), ids);
            }
        }

        if (addSpecial && AddEos)
        {
            ids.Add(EosId);
        }

        return [.. ids];
    }

    /// <inheritdoc />
    public ReadOnlySpan<byte> DecodeBytes(int previous, int token)
    {
        if ((uint)token >= (uint)_tokens.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(token), $"Token id {token} is outside the vocabulary 0..{_tokens.Length - 1}; use ids produced by this tokenizer or by a model with the same vocabulary.");
        }

        return _decoded[token];
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

    private void EncodeFragment(string fragment, List<int> ids)
    {
        if (IgnoreMerges)
        {
            // A fragment that is a token as it stands is that token.
            byte[] utf8 = Encoding.UTF8.GetBytes(fragment);
            string spelled = string.Create(utf8.Length, utf8, static (chars, bytes) =>
            {
                for (int i = 0; i < bytes.Length; i++)
                {
                    chars[i] = s_byteToChar[bytes[i]];
                }
            });
            if (_ids.TryGetValue(spelled, out int whole))
            {
                ids.Add(whole);
                return;
            }
        }

        ids.AddRange(_bpe.EncodeToIds(fragment, considerPreTokenization: false, considerNormalization: false));
    }

    // Each merge is "left right" (split at the first space after the first character, as llama.cpp does); both sides and
    // their concatenation must be tokens.
    private void CheckMerges(string[] merges)
    {
        for (int rank = 0; rank < merges.Length; rank++)
        {
            string merge = merges[rank] ?? string.Empty;
            int space = merge.Length > 1 ? merge.IndexOf(' ', 1) : -1;
            if (space < 0 || space == merge.Length - 1)
            {
                throw new ArgumentException($"Merge {rank} '{merge}' in tokenizer.ggml.merges is not two tokens separated by a space.", nameof(merges));
            }

            string left = merge[..space];
            string right = merge[(space + 1)..];
            foreach (string part in new[] { left, right, left + right })
            {
                if (!_ids.ContainsKey(part))
                {
                    throw new ArgumentException($"Merge {rank} '{merge}' in tokenizer.ggml.merges needs token '{part}', which is not in tokenizer.ggml.tokens.", nameof(merges));
                }
            }
        }
    }

    private static byte[] AlphabetToBytes(string token)
    {
        List<byte> bytes = new(token.Length);
        foreach (char c in token)
        {
            int b = c < s_charToByte.Length ? s_charToByte[c] : -1;
            if (b >= 0)
            {
                bytes.Add((byte)b);
            }
            else
            {
                bytes.AddRange(Encoding.UTF8.GetBytes(c.ToString()));
            }
        }

        return [.. bytes];
    }

    // The printable Latin-1 bytes stand for themselves; the others take U+0100 upwards in byte order.
    private static char[] BuildByteAlphabet()
    {
        char[] map = new char[256];
        int next = 0x100;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)next++;
        }

        return map;
    }

    private static int[] BuildCharToByte()
    {
        int[] inverse = new int[0x200];
        Array.Fill(inverse, -1);
        for (int b = 0; b < 256; b++)
        {
            inverse[s_byteToChar[b]] = b;
        }

        return inverse;
    }
}
