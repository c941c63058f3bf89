// Hugging Face tokenizer.json files. Two BPE families are read:
//
// - SentencePiece-style BPE (Llama 1/2, Mistral, TinyLlama, llama2.c exports): "model": {"type": "BPE", "vocab",
//   "merges", "byte_fallback", "unk_token"}, spaces spelled '▁' by the normalizer (Prepend "▁" + Replace " " → "▁") or
//   by a Metaspace pre-tokenizer. Encoded by Kiln's SentencePiece engine (LlamaSpmTokenizer: merge the adjacent pair
//   whose concatenation has the best score, ties to the leftmost, with byte fallback). tokenizer.json orders merges by
//   pair instead of giving piece scores; a piece scores minus the rank of the first merge that makes it, which is exact
//   for vocabularies converted from SentencePiece (their merge list is derived from the scores); a multi-character
//   piece that no merge makes gets the lowest scores.
//   Microsoft.ML.Tokenizers 3.0.0 was tried for this family and not kept: it reads tokenizer.json only for Unigram
//   models, and its SentencePiece BPE (fed the same vocabulary as a ModelProto) breaks ties between equal-score pairs
//   differently from SentencePiece, Hugging Face and llama.cpp ("!!!!!!" → "!!!" "!!" instead of "!!" "!!!"), failing 1
//   of llama.cpp's 46 reference encodings of the Llama 2 vocabulary.
// - Byte-level BPE (GPT-2, Llama 3, Qwen): a ByteLevel pre-tokenizer or decoder. Encoded by Microsoft.ML.Tokenizers'
//   BpeTokenizer with ByteLevel set, the vocabulary and merges as given, and the GPT-2 split pattern (or the pattern
//   of a Split pre-tokenizer in the file).
//
// Added tokens are matched in byte-level text as whole tokens. BOS/EOS: tokenizer_config.json next to the file
// (add_bos_token, add_eos_token, bos_token, eos_token) when it says, else the post-processor's template (a special
// token before the sequence is BOS, one after it EOS). Normalizers other than the SentencePiece space handling
// (lowercasing, NFKC, ...) and other model types (WordPiece, Unigram, WordLevel) are refused by name.
//
// Decoding a token: special added tokens add nothing; byte tokens "<0xHH>" add their byte; SentencePiece pieces add
// their text with '▁' turned back into spaces (right after BOS the leading space of the prefix is dropped); byte-level
// pieces add the bytes their characters stand for.
//
// Writing: ToJson spells a llama2.c vocabulary (or a GGUF `llama` one) as a SentencePiece-style tokenizer.json, with
// the merges a SentencePiece → Hugging Face conversion derives from the scores (every split of a piece into two pieces,
// ordered by the piece's score), so that reading it back encodes every text as the original tokenizer does.

using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Kiln.Models.Formats;
using Microsoft.ML.Tokenizers;

namespace Kiln.Models.Tokenizers;

/// <summary>A tokenizer read from a Hugging Face <c>tokenizer.json</c> (BPE: SentencePiece-style or byte-level).</summary>
public sealed class HuggingFaceTokenizer : ITokenizer
{
    /// <summary>The file name in a model folder.</summary>
    public const string FileName = "tokenizer.json";

    /// <summary>The optional settings file next to it.</summary>
    public const string ConfigFileName = "tokenizer_config.json";

    // GPT-2's pre-tokenization pattern, the default of the ByteLevel pre-tokenizer.
    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    private const char SpaceMark = '\u2581';
    private const long MaxFileBytes = 1L << 30;

    // Exactly one encoder: Kiln's SentencePiece engine, or Microsoft.ML.Tokenizers' byte-level BPE.
    private readonly LlamaSpmTokenizer? _sentencePiece;
    private readonly BpeTokenizer? _byteLevel;
    private readonly byte[][] _decoded;
    private readonly bool[] _control;

    private HuggingFaceTokenizer(
        LlamaSpmTokenizer? sentencePiece,
        BpeTokenizer? byteLevel,
        HuggingFaceTokenizerKind kind,
        byte[][] decoded,
        bool[] control,
        int bos,
        int eos,
        bool addBos,
        bool addEos,
        bool addSpacePrefix)
    {
        _sentencePiece = sentencePiece;
        _byteLevel = byteLevel;
        Kind = kind;
        _decoded = decoded;
        _control = control;
        BosId = bos;
        EosId = eos;
        AddBos = addBos && bos >= 0;
        AddEos = addEos && eos >= 0;
        AddSpacePrefix = addSpacePrefix;
    }

    /// <summary>Which tokenizer family the file describes.</summary>
    public HuggingFaceTokenizerKind Kind { get; }

    /// <inheritdoc />
    public int VocabSize => _control.Length;

    /// <summary>The beginning-of-sequence id, or -1 when the vocabulary has none.</summary>
    public int BosId { get; }

    /// <summary>The end-of-sequence id, or -1 when the vocabulary has none.</summary>
    public int EosId { get; }

    /// <inheritdoc />
    public int StopTokenId => EosId;

    /// <summary>Whether a sequence start gets BOS.</summary>
    public bool AddBos { get; }

    /// <summary>Whether a sequence start gets EOS after the text.</summary>
    public bool AddEos { get; }

    /// <summary>The SentencePiece-style vocabulary that encodes (null for byte-level BPE), for conversions to GGUF or llama2.c.</summary>
    public LlamaSpmTokenizer? SentencePiece => _sentencePiece;

    /// <summary>Whether non-empty text gets a leading space (SentencePiece's dummy prefix).</summary>
    public bool AddSpacePrefix { get; }

    /// <summary>Reads <paramref name="path"/> (a tokenizer.json) and, when present, tokenizer_config.json next to it.</summary>
    /// <exception cref="ModelFormatException">A file is missing or malformed, or it describes a tokenizer Kiln does not read.</exception>
    public static HuggingFaceTokenizer Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        byte[] json;
        byte[]? config = null;
        try
        {
            FileInfo info = new(path);
            if (!info.Exists)
            {
                throw Fail(path, "does not exist", "pass the tokenizer.json that came with the model (--tokenizer)");
            }

            if (info.Length > MaxFileBytes)
            {
                throw Fail(path, $"is {info.Length} bytes, more than a tokenizer.json can be ({MaxFileBytes})", "pass the model's tokenizer.json");
            }

            json = File.ReadAllBytes(path);
            string configPath = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".", ConfigFileName);
            if (File.Exists(configPath) && new FileInfo(configPath).Length <= MaxFileBytes)
            {
                config = File.ReadAllBytes(configPath);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw Fail(path, $"cannot be read ({OneLine(e.Message)})", "check the path and its permissions");
        }

        return Parse(path, json, config);
    }

    /// <summary>Builds the tokenizer from the bytes of a tokenizer.json (and optionally of tokenizer_config.json).</summary>
    /// <param name="path">The file name for messages.</param>
    /// <param name="json">The tokenizer.json bytes.</param>
    /// <param name="config">The tokenizer_config.json bytes, or null.</param>
    /// <exception cref="ModelFormatException">The JSON is malformed or describes a tokenizer Kiln does not read.</exception>
    public static HuggingFaceTokenizer Parse(string path, ReadOnlySpan<byte> json, ReadOnlySpan<byte> config = default)
    {
        using JsonDocument document = ParseJson(path, json);
        using JsonDocument? settings = config.IsEmpty ? null : ParseJson(path + " (" + ConfigFileName + ")", config);
        JsonElement root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out JsonElement model) || model.ValueKind != JsonValueKind.Object)
        {
            throw Fail(path, "has no \"model\" object", "it is not a Hugging Face tokenizer.json; pass the model's tokenizer.json");
        }

        string type = model.TryGetProperty("type", out JsonElement typeElement) ? typeElement.ToString() : "BPE";
        if (type != "BPE")
        {
            throw Fail(path, $"has a {type} model", "Kiln reads BPE tokenizer.json files (SentencePiece-style and byte-level); pass a llama2.c or GGUF tokenizer instead");
        }

        // The vocabulary (piece → id) and the added tokens, which may extend it.
        Dictionary<string, int> vocab = ReadVocab(path, model);
        List<(string Content, int Id, bool Special)> added = ReadAddedTokens(path, root);
        int size = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Max(static a => a.Id) + 1);
        string?[] pieces = new string?[size];
        foreach ((string piece, int id) in vocab)
        {
            pieces[id] = pieces[id] is null ? piece : throw Fail(path, $"gives id {id} to both '{pieces[id]}' and '{piece}'", "the file is damaged; download it again");
        }

        foreach ((string content, int id, _) in added)
        {
            pieces[id] ??= content;
        }

        int hole = Array.IndexOf(pieces, null);
        if (hole >= 0)
        {
            throw Fail(path, $"has no token of id {hole} (ids run to {size - 1})", "the file is damaged; download it again");
        }

        List<(string Left, string Right)> merges = ReadMerges(path, model);
        HashSet<int> special = [.. added.Where(static a => a.Special).Select(static a => a.Id)];
        (int bos, int eos, bool addBos, bool addEos) = SpecialIds(path, root, settings?.RootElement, vocab, added);

        // Which family: byte-level (a ByteLevel pre-tokenizer or decoder) or SentencePiece-style ('▁' spaces).
        bool byteLevel = HasComponent(root, "pre_tokenizer", "ByteLevel") || HasComponent(root, "decoder", "ByteLevel");
        return byteLevel
            ? ByteLevelBpe(path, root, model, vocab, merges, added, [.. pieces!], special, bos, eos, addBos, addEos)
            : SentencePieceBpe(path, root, model, vocab, merges, [.. pieces!], special, bos, eos, addBos, addEos);
    }

    /// <summary>
    /// The tokenizer.json text of a llama2.c vocabulary: SentencePiece-style BPE with byte fallback, '▁' for spaces, BOS
    /// added, and merges derived from the scores, so that it encodes every text as <paramref name="vocabulary"/> does.
    /// </summary>
    public static string ToJson(Llama2cTokenizer vocabulary)
    {
        ArgumentNullException.ThrowIfNull(vocabulary);

        // The pieces as SentencePiece spells them: ids 0-2 are <unk>, <s>, </s>; spaces are '▁'.
        int count = vocabulary.VocabSize;
        string[] pieces = new string[count];
        float[] scores = new float[count];
        GgufTokenType[] types = new GgufTokenType[count];
        for (int id = 0; id < count; id++)
        {
            pieces[id] = id switch
            {
                Llama2cTokenizer.UnknownId => "<unk>",
                Llama2cTokenizer.BeginId => "<s>",
                Llama2cTokenizer.EndId => "</s>",
                _ => Encoding.UTF8.GetString(vocabulary.Piece(id)).Replace(' ', SpaceMark),
            };
            scores[id] = vocabulary.Score(id);
            types[id] = id switch
            {
                Llama2cTokenizer.UnknownId => GgufTokenType.Unknown,
                Llama2cTokenizer.BeginId or Llama2cTokenizer.EndId => GgufTokenType.Control,
                _ => IsBytePiece(pieces[id]) ? GgufTokenType.Byte : GgufTokenType.Normal,
            };
        }

        return ToJson(pieces, scores, types, Llama2cTokenizer.BeginId);
    }

    /// <summary>
    /// The tokenizer.json text of a SentencePiece-style vocabulary (pieces with '▁' for spaces, their scores and types,
    /// as a GGUF <c>llama</c> vocabulary holds them): BPE with byte fallback, a '▁' prefix, BOS <paramref name="bos"/>
    /// added, unknown and control pieces as special added tokens, and merges derived from the scores.
    /// </summary>
    /// <exception cref="ArgumentException">The lists differ in length, two ids share a piece, or there is not exactly one
    /// unknown piece.</exception>
    public static string ToJson(IReadOnlyList<string> pieces, IReadOnlyList<float> scores, IReadOnlyList<GgufTokenType> types, int bos)
    {
        ArgumentNullException.ThrowIfNull(pieces);
        ArgumentNullException.ThrowIfNull(scores);
        ArgumentNullException.ThrowIfNull(types);
        int count = pieces.Count;
        if (scores.Count != count || types.Count != count || types.Count(static t => t == GgufTokenType.Unknown) != 1 || (uint)bos >= (uint)count)
        {
            throw new ArgumentException($"HuggingFaceTokenizer.ToJson: {count} pieces, {scores.Count} scores and {types.Count} types with BOS {bos}; pass lists of one length, one unknown piece and a BOS id inside them.", nameof(pieces));
        }

        int unk = types.ToList().IndexOf(GgufTokenType.Unknown);
        if (pieces.Distinct(StringComparer.Ordinal).Count() != count)
        {
            throw new ArgumentException("HuggingFaceTokenizer.ToJson: two ids share a piece; a tokenizer.json vocabulary maps each piece to one id.", nameof(pieces));
        }

        bool Mergeable(GgufTokenType type) => type is GgufTokenType.Normal or GgufTokenType.UserDefined or GgufTokenType.Undefined;

        // Merges: every split of a normal piece into two normal pieces, best-scoring pieces first (ties: lower ids).
        Dictionary<string, int> ids = new(StringComparer.Ordinal);
        for (int id = 0; id < count; id++)
        {
            if (Mergeable(types[id]))
            {
                ids.TryAdd(pieces[id], id);
            }
        }

        List<(float Score, int Id, int Left, int Right, string A, string B)> merges = [];
        for (int id = 0; id < count; id++)
        {
            string piece = pieces[id];
            if (!Mergeable(types[id]))
            {
                continue;
            }

            for (int cut = 1; cut < piece.Length; cut++)
            {
                if (char.IsLowSurrogate(piece[cut]))
                {
                    continue;
                }

                string a = piece[..cut], b = piece[cut..];
                if (ids.TryGetValue(a, out int left) && ids.TryGetValue(b, out int right))
                {
                    merges.Add((scores[id], id, left, right, a, b));
                }
            }
        }

        merges.Sort(static (x, y) => x.Score != y.Score ? y.Score.CompareTo(x.Score) : x.Id != y.Id ? x.Id.CompareTo(y.Id) : x.Left != y.Left ? x.Left.CompareTo(y.Left) : x.Right.CompareTo(y.Right));
        int[] specials = [.. Enumerable.Range(0, count).Where(id => types[id] is GgufTokenType.Unknown or GgufTokenType.Control)];
        string bosPiece = pieces[bos];

        using MemoryStream buffer = new();
        using (Utf8JsonWriter writer = new(buffer, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            writer.WriteStartObject();
            writer.WriteString("version", "1.0");
            writer.WriteNull("truncation");
            writer.WriteNull("padding");
            writer.WriteStartArray("added_tokens");
            foreach (int id in specials)
            {
                writer.WriteStartObject();
                writer.WriteNumber("id", id);
                writer.WriteString("content", pieces[id]);
                writer.WriteBoolean("single_word", false);
                writer.WriteBoolean("lstrip", false);
                writer.WriteBoolean("rstrip", false);
                writer.WriteBoolean("normalized", false);
                writer.WriteBoolean("special", true);
                writer.WriteEndObject();
            }

            writer.WriteEndArray();

            // Normalizer: a '▁' in front, every space spelled '▁'.
            writer.WriteStartObject("normalizer");
            writer.WriteString("type", "Sequence");
            writer.WriteStartArray("normalizers");
            writer.WriteStartObject();
            writer.WriteString("type", "Prepend");
            writer.WriteString("prepend", "\u2581");
            writer.WriteEndObject();
            writer.WriteStartObject();
            writer.WriteString("type", "Replace");
            writer.WriteStartObject("pattern");
            writer.WriteString("String", " ");
            writer.WriteEndObject();
            writer.WriteString("content", "\u2581");
            writer.WriteEndObject();
            writer.WriteEndArray();
            writer.WriteEndObject();
            writer.WriteNull("pre_tokenizer");

            // Post-processor: BOS before the sequence.
            writer.WriteStartObject("post_processor");
            writer.WriteString("type", "TemplateProcessing");
            writer.WriteStartArray("single");
            WriteTemplateItem(writer, "SpecialToken", bosPiece);
            WriteTemplateItem(writer, "Sequence", "A");
            writer.WriteEndArray();
            writer.WriteStartArray("pair");
            WriteTemplateItem(writer, "SpecialToken", bosPiece);
            WriteTemplateItem(writer, "Sequence", "A");
            WriteTemplateItem(writer, "SpecialToken", bosPiece);
            WriteTemplateItem(writer, "Sequence", "B");
            writer.WriteEndArray();
            writer.WriteStartObject("special_tokens");
            writer.WriteStartObject(bosPiece);
            writer.WriteString("id", bosPiece);
            writer.WriteStartArray("ids");
            writer.WriteNumberValue(bos);
            writer.WriteEndArray();
            writer.WriteStartArray("tokens");
            writer.WriteStringValue(bosPiece);
            writer.WriteEndArray();
            writer.WriteEndObject();
            writer.WriteEndObject();
            writer.WriteEndObject();

            // Decoder: '▁' back to spaces, bytes, and the prefix's space dropped.
            writer.WriteStartObject("decoder");
            writer.WriteString("type", "Sequence");
            writer.WriteStartArray("decoders");
            writer.WriteStartObject();
            writer.WriteString("type", "Replace");
            writer.WriteStartObject("pattern");
            writer.WriteString("String", "\u2581");
            writer.WriteEndObject();
            writer.WriteString("content", " ");
            writer.WriteEndObject();
            writer.WriteStartObject();
            writer.WriteString("type", "ByteFallback");
            writer.WriteEndObject();
            writer.WriteStartObject();
            writer.WriteString("type", "Fuse");
            writer.WriteEndObject();
            writer.WriteStartObject();
            writer.WriteString("type", "Strip");
            writer.WriteString("content", " ");
            writer.WriteNumber("start", 1);
            writer.WriteNumber("stop", 0);
            writer.WriteEndObject();
            writer.WriteEndArray();
            writer.WriteEndObject();

            writer.WriteStartObject("model");
            writer.WriteString("type", "BPE");
            writer.WriteNull("dropout");
            writer.WriteString("unk_token", pieces[unk]);
            writer.WriteNull("continuing_subword_prefix");
            writer.WriteNull("end_of_word_suffix");
            writer.WriteBoolean("fuse_unk", true);
            writer.WriteBoolean("byte_fallback", true);
            writer.WriteBoolean("ignore_merges", false);
            writer.WriteStartObject("vocab");
            for (int id = 0; id < count; id++)
            {
                writer.WriteNumber(pieces[id], id);
            }

            writer.WriteEndObject();
            writer.WriteStartArray("merges");
            foreach ((_, _, _, _, string a, string b) in merges)
            {
                writer.WriteStartArray();
                writer.WriteStringValue(a);
                writer.WriteStringValue(b);
                writer.WriteEndArray();
            }

            writer.WriteEndArray();
            writer.WriteEndObject();
            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>
    /// Encodes <paramref name="text"/>. With <paramref name="bos"/> (a sequence start) the special tokens the file asks
    /// for are added: BOS when <see cref="AddBos"/>, EOS when <see cref="AddEos"/>.
    /// </summary>
    public int[] Encode(string text, bool bos = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        List<int> tokens = new(text.Length + 2);
        if (bos && AddBos)
        {
            tokens.Add(BosId);
        }

        if (text.Length > 0)
        {
            tokens.AddRange(_sentencePiece is not null ? _sentencePiece.Encode(text, bos: false) : _byteLevel!.EncodeToIds(text));
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
        if (_sentencePiece is not null)
        {
            return _sentencePiece.DecodeBytes(previous, token);
        }

        if ((uint)token >= (uint)_decoded.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(token), $"Token id {token} is outside the vocabulary 0..{_decoded.Length - 1}; use ids produced by this tokenizer or by a model with the same vocabulary.");
        }

        return _control[token] ? [] : _decoded[token];
    }

    /// <summary>The text of a whole token sequence (special tokens add nothing; incomplete UTF-8 becomes U+FFFD).</summary>
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

    private static HuggingFaceTokenizer SentencePieceBpe(
        string path,
        JsonElement root,
        JsonElement model,
        Dictionary<string, int> vocab,
        List<(string Left, string Right)> merges,
        string[] pieces,
        HashSet<int> special,
        int bos,
        int eos,
        bool addBos,
        bool addEos)
    {
        // The space handling SentencePiece does itself: spaces as '▁', and the dummy prefix.
        bool escapes = HasReplaceSpace(root) || HasComponent(root, "pre_tokenizer", "Metaspace");
        if (!escapes)
        {
            throw Fail(path, "is a BPE tokenizer with neither ByteLevel nor '▁' (Metaspace) space handling", "Kiln reads SentencePiece-style and byte-level BPE tokenizer.json files; pass a llama2.c or GGUF tokenizer instead");
        }

        RequireOnlySpaceNormalizers(path, root);
        bool prefix = HasPrependSpace(root) || MetaspaceAddsPrefix(root);
        bool byteFallback = model.TryGetProperty("byte_fallback", out JsonElement fallback) && fallback.ValueKind == JsonValueKind.True;
        string? unkToken = model.TryGetProperty("unk_token", out JsonElement unkElement) && unkElement.ValueKind == JsonValueKind.String ? unkElement.GetString() : null;
        int unk = unkToken is not null && vocab.TryGetValue(unkToken, out int unkId) ? unkId : -1;
        if (bos < 0 || eos < 0)
        {
            throw Fail(path, "names no BOS or no EOS token", "add bos_token and eos_token to tokenizer_config.json next to it");
        }

        if (unk < 0)
        {
            throw Fail(path, "has no unk_token in its vocabulary", "the file is damaged; download it again");
        }

        // Scores from the merge ranks: a piece scores minus the rank of the first merge that makes it.
        Dictionary<string, int> firstRank = new(StringComparer.Ordinal);
        for (int rank = 0; rank < merges.Count; rank++)
        {
            firstRank.TryAdd(merges[rank].Left + merges[rank].Right, rank);
        }

        // The types: unknown, control (special added tokens), byte pieces, normal.
        int count = pieces.Length;
        float[] scores = new float[count];
        GgufTokenType[] types = new GgufTokenType[count];
        bool[] control = new bool[count];
        for (int id = 0; id < count; id++)
        {
            string piece = pieces[id];
            types[id] = id == unk ? GgufTokenType.Unknown
                : special.Contains(id) ? GgufTokenType.Control
                : byteFallback && IsBytePiece(piece) ? GgufTokenType.Byte
                : GgufTokenType.Normal;
            scores[id] = firstRank.TryGetValue(piece, out int rank) ? -rank : -(float)merges.Count - id;
            control[id] = types[id] == GgufTokenType.Control;
        }

        LlamaSpmTokenizer engine = new(pieces, scores, types, bos, eos, unk, addBos, addEos, prefix);
        return new HuggingFaceTokenizer(engine, null, HuggingFaceTokenizerKind.SentencePieceBpe, [], control, bos, eos, addBos, addEos, prefix);
    }

    private static HuggingFaceTokenizer ByteLevelBpe(
        string path,
        JsonElement root,
        JsonElement model,
        Dictionary<string, int> vocab,
        List<(string Left, string Right)> merges,
        List<(string Content, int Id, bool Special)> added,
        string[] pieces,
        HashSet<int> special,
        int bos,
        int eos,
        bool addBos,
        bool addEos)
    {
        RequireNoNormalizer(path, root);
        if (model.TryGetProperty("byte_fallback", out JsonElement fallback) && fallback.ValueKind == JsonValueKind.True)
        {
            throw Fail(path, "sets byte_fallback on a byte-level BPE", "the file is inconsistent; download it again");
        }

        // The split pattern: a Split pre-tokenizer's regex when there is one, else GPT-2's.
        string pattern = SplitPattern(root) ?? Gpt2Pattern;
        Dictionary<string, int> addedIds = added.ToDictionary(static a => a.Content, static a => a.Id, StringComparer.Ordinal);
        Regex regex;
        try
        {
            regex = new Regex(pattern, RegexOptions.Compiled, TimeSpan.FromSeconds(5));
        }
        catch (ArgumentException e)
        {
            throw Fail(path, $"has a pre-tokenizer pattern .NET cannot compile ({OneLine(e.Message)})", "pass a GGUF file of the model as --tokenizer instead");
        }

        BpeOptions options = new(vocab.Select(static p => new KeyValuePair<string, int>(p.Key, p.Value)))
        {
            Merges = merges.Select(static m => m.Left + " " + m.Right),
            ByteLevel = true,
            PreTokenizer = new RegexPreTokenizer(regex, addedIds.Count == 0 ? null : addedIds),
            SpecialTokens = addedIds.Count == 0 ? null : addedIds,
        };
        BpeTokenizer tokenizer;
        try
        {
            tokenizer = BpeTokenizer.Create(options);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw Fail(path, $"could not be turned into a BPE tokenizer ({OneLine(e.Message)})", "the vocabulary is inconsistent; download the file again");
        }

        // What each token stands for: the bytes of its characters (added tokens: their UTF-8 text).
        Dictionary<char, byte> bytesOf = [];
        for (int b = 0; b < 256; b++)
        {
            bytesOf[ByteLevelBpeTokenizer.ByteToChar((byte)b)] = (byte)b;
        }

        byte[][] decoded = new byte[pieces.Length][];
        bool[] control = new bool[pieces.Length];
        for (int id = 0; id < pieces.Length; id++)
        {
            string piece = pieces[id];
            control[id] = special.Contains(id);
            decoded[id] = addedIds.ContainsKey(piece) || !piece.All(bytesOf.ContainsKey)
                ? Encoding.UTF8.GetBytes(piece)
                : [.. piece.Select(c => bytesOf[c])];
        }

        return new HuggingFaceTokenizer(null, tokenizer, HuggingFaceTokenizerKind.ByteLevelBpe, decoded, control, bos, eos, addBos, addEos, addSpacePrefix: false);
    }

    private static JsonDocument ParseJson(string path, ReadOnlySpan<byte> json)
    {
        try
        {
            return JsonDocument.Parse(json.ToArray(), new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException e)
        {
            throw Fail(path, $"is not valid JSON ({OneLine(e.Message)})", "the file is damaged; download it again");
        }
    }

    private static Dictionary<string, int> ReadVocab(string path, JsonElement model)
    {
        if (!model.TryGetProperty("vocab", out JsonElement vocab) || vocab.ValueKind != JsonValueKind.Object)
        {
            throw Fail(path, "has a BPE model without a \"vocab\" object", "the file is damaged; download it again");
        }

        Dictionary<string, int> ids = new(StringComparer.Ordinal);
        foreach (JsonProperty entry in vocab.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0 || id >= 1 << 24)
            {
                throw Fail(path, $"gives token '{entry.Name}' the id {entry.Value.GetRawText()}", "ids are integers from 0 to 16777215; the file is damaged");
            }

            if (!ids.TryAdd(entry.Name, id))
            {
                throw Fail(path, $"lists token '{entry.Name}' twice", "the file is damaged; download it again");
            }
        }

        return ids;
    }

    private static List<(string Content, int Id, bool Special)> ReadAddedTokens(string path, JsonElement root)
    {
        List<(string, int, bool)> added = [];
        if (!root.TryGetProperty("added_tokens", out JsonElement list) || list.ValueKind == JsonValueKind.Null)
        {
            return added;
        }

        if (list.ValueKind != JsonValueKind.Array)
        {
            throw Fail(path, "has added_tokens that is not a list", "the file is damaged; download it again");
        }

        foreach (JsonElement token in list.EnumerateArray())
        {
            if (token.ValueKind != JsonValueKind.Object || !token.TryGetProperty("id", out JsonElement id) || !id.TryGetInt32(out int value) || value < 0 || value >= 1 << 24
                || !token.TryGetProperty("content", out JsonElement content) || content.ValueKind != JsonValueKind.String)
            {
                throw Fail(path, $"has an added token without an id and a content: {OneLine(token.GetRawText())}", "the file is damaged; download it again");
            }

            bool special = token.TryGetProperty("special", out JsonElement flag) && flag.ValueKind == JsonValueKind.True;
            added.Add((content.GetString()!, value, special));
        }

        return added;
    }

    private static List<(string, string)> ReadMerges(string path, JsonElement model)
    {
        List<(string, string)> merges = [];
        if (!model.TryGetProperty("merges", out JsonElement list) || list.ValueKind == JsonValueKind.Null)
        {
            return merges;
        }

        if (list.ValueKind != JsonValueKind.Array)
        {
            throw Fail(path, "has merges that are not a list", "the file is damaged; download it again");
        }

        // Each merge is "left right" (older files) or ["left", "right"].
        foreach (JsonElement merge in list.EnumerateArray())
        {
            if (merge.ValueKind == JsonValueKind.String && merge.GetString()!.Split(' ') is [string left, string right])
            {
                merges.Add((left, right));
            }
            else if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2 && merge[0].ValueKind == JsonValueKind.String && merge[1].ValueKind == JsonValueKind.String)
            {
                merges.Add((merge[0].GetString()!, merge[1].GetString()!));
            }
            else
            {
                throw Fail(path, $"has merge {OneLine(merge.GetRawText())}, not two pieces", "the file is damaged; download it again");
            }
        }

        return merges;
    }

    // BOS and EOS: tokenizer_config.json when it names them, else the post-processor template, else common names.
    private static (int Bos, int Eos, bool AddBos, bool AddEos) SpecialIds(string path, JsonElement root, JsonElement? config, Dictionary<string, int> vocab, List<(string Content, int Id, bool Special)> added)
    {
        int Id(string? token) => token is null ? -1
            : added.FirstOrDefault(a => a.Content == token) is { Content: not null } found ? found.Id
            : vocab.TryGetValue(token, out int id) ? id : -1;

        // The post-processor's template: special tokens before and after the sequence.
        string? templateBos = null, templateEos = null;
        if (root.TryGetProperty("post_processor", out JsonElement post) && post.ValueKind == JsonValueKind.Object
            && post.TryGetProperty("type", out JsonElement postType) && postType.ToString() == "TemplateProcessing"
            && post.TryGetProperty("single", out JsonElement single) && single.ValueKind == JsonValueKind.Array)
        {
            bool seenSequence = false;
            foreach (JsonElement item in single.EnumerateArray())
            {
                if (item.TryGetProperty("Sequence", out _))
                {
                    seenSequence = true;
                }
                else if (item.TryGetProperty("SpecialToken", out JsonElement token) && token.TryGetProperty("id", out JsonElement name))
                {
                    if (seenSequence)
                    {
                        templateEos = name.GetString();
                    }
                    else
                    {
                        templateBos = name.GetString();
                    }
                }
            }
        }

        string? bosToken = ConfigToken(config, "bos_token") ?? templateBos ?? FirstPresent(added, vocab, "<s>", "<|begin_of_text|>", "<bos>");
        string? eosToken = ConfigToken(config, "eos_token") ?? templateEos ?? FirstPresent(added, vocab, "</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>");
        bool addBos = ConfigBool(config, "add_bos_token") ?? templateBos is not null;
        bool addEos = ConfigBool(config, "add_eos_token") ?? templateEos is not null;
        int bos = Id(bosToken), eos = Id(eosToken);
        if (addBos && bos < 0)
        {
            throw Fail(path, $"asks for a BOS token '{bosToken}' that is not in the vocabulary", "the file is damaged; download it again");
        }

        return (bos, eos, addBos, addEos);
    }

    private static string? FirstPresent(List<(string Content, int Id, bool Special)> added, Dictionary<string, int> vocab, params string[] names) =>
        names.FirstOrDefault(n => vocab.ContainsKey(n) || added.Any(a => a.Content == n));

    private static string? ConfigToken(JsonElement? config, string key)
    {
        if (config is not { ValueKind: JsonValueKind.Object } root || !root.TryGetProperty(key, out JsonElement value))
        {
            return null;
        }

        return value.ValueKind switch
        {
            JsonValueKind.String => value.GetString(),
            JsonValueKind.Object when value.TryGetProperty("content", out JsonElement content) && content.ValueKind == JsonValueKind.String => content.GetString(),
            _ => null,
        };
    }

    private static bool? ConfigBool(JsonElement? config, string key) =>
        config is { ValueKind: JsonValueKind.Object } root && root.TryGetProperty(key, out JsonElement value) && value.ValueKind is JsonValueKind.True or JsonValueKind.False
            ? value.ValueKind == JsonValueKind.True
            : null;

    // Every component object under root[key], looking inside Sequence lists.
    private static IEnumerable<JsonElement> Components(JsonElement root, string key)
    {
        if (!root.TryGetProperty(key, out JsonElement component) || component.ValueKind != JsonValueKind.Object)
        {
            yield break;
        }

        Stack<JsonElement> pending = new([component]);
        while (pending.Count > 0)
        {
            JsonElement item = pending.Pop();
            yield return item;
            foreach (string list in new[] { "normalizers", "pretokenizers", "decoders" })
            {
                if (item.TryGetProperty(list, out JsonElement children) && children.ValueKind == JsonValueKind.Array)
                {
                    foreach (JsonElement child in children.EnumerateArray().Reverse())
                    {
                        pending.Push(child);
                    }
                }
            }
        }
    }

    private static string TypeOf(JsonElement component) => component.TryGetProperty("type", out JsonElement type) ? type.ToString() : string.Empty;

    private static bool HasComponent(JsonElement root, string key, string type) => Components(root, key).Any(c => TypeOf(c) == type);

    private static bool HasReplaceSpace(JsonElement root) => Components(root, "normalizer").Any(static c =>
        TypeOf(c) == "Replace" && c.TryGetProperty("pattern", out JsonElement pattern) && pattern.TryGetProperty("String", out JsonElement text)
        && text.GetString() == " " && c.TryGetProperty("content", out JsonElement content) && content.GetString() == "\u2581");

    private static bool HasPrependSpace(JsonElement root) => Components(root, "normalizer").Any(static c =>
        TypeOf(c) == "Prepend" && c.TryGetProperty("prepend", out JsonElement prepend) && prepend.GetString() == "\u2581");

    private static bool MetaspaceAddsPrefix(JsonElement root) => Components(root, "pre_tokenizer").Any(static c =>
        TypeOf(c) == "Metaspace"
        && ((c.TryGetProperty("add_prefix_space", out JsonElement add) && add.ValueKind == JsonValueKind.True)
            || (c.TryGetProperty("prepend_scheme", out JsonElement scheme) && scheme.GetString() is "always" or "first")));

    private static void RequireOnlySpaceNormalizers(string path, JsonElement root)
    {
        foreach (JsonElement component in Components(root, "normalizer"))
        {
            string type = TypeOf(component);
            bool spaceStep = type is "Sequence" or "Prepend" or "Replace";
            if (!spaceStep || (type == "Replace" && !HasReplaceSpace(root)))
            {
                throw Fail(path, $"has a {type} normalizer", "Kiln's tokenizer.json reader applies only SentencePiece's space handling (Prepend/Replace '▁'); pass a GGUF file of the model as --tokenizer instead");
            }
        }

        foreach (JsonElement component in Components(root, "pre_tokenizer"))
        {
            if (TypeOf(component) is not ("Sequence" or "Metaspace"))
            {
                throw Fail(path, $"has a {TypeOf(component)} pre-tokenizer on a SentencePiece-style BPE", "pass a GGUF file of the model as --tokenizer instead");
            }
        }
    }

    private static void RequireNoNormalizer(string path, JsonElement root)
    {
        if (Components(root, "normalizer").FirstOrDefault() is { ValueKind: JsonValueKind.Object } normalizer && TypeOf(normalizer) != "Sequence")
        {
            throw Fail(path, $"has a {TypeOf(normalizer)} normalizer on a byte-level BPE", "Kiln's tokenizer.json reader does not apply normalizers to byte-level BPE; pass a GGUF file of the model as --tokenizer instead");
        }
    }

    // The regex of a Split pre-tokenizer, if any.
    private static string? SplitPattern(JsonElement root) => Components(root, "pre_tokenizer")
        .Where(static c => TypeOf(c) == "Split" && c.TryGetProperty("pattern", out JsonElement p) && p.TryGetProperty("Regex", out _))
        .Select(static c => c.GetProperty("pattern").GetProperty("Regex").GetString())
        .FirstOrDefault();

    private static bool IsBytePiece(string piece) => ByteValue(piece) >= 0;

    // The byte of a "<0xHH>" piece, else -1.
    private static int ByteValue(string piece) =>
        piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
        && int.TryParse(piece.AsSpan(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int value)
            ? value
            : -1;

    private static void WriteTemplateItem(Utf8JsonWriter writer, string kind, string id)
    {
        writer.WriteStartObject();
        writer.WriteStartObject(kind);
        writer.WriteString("id", id);
        writer.WriteNumber("type_id", 0);
        writer.WriteEndObject();
        writer.WriteEndObject();
    }

    private static string OneLine(string text) => text.ReplaceLineEndings(" ").Trim();

    private static ModelFormatException Fail(string path, string problem, string fix) => GgufFile.Fail(path, problem, fix);
}

/// <summary>The tokenizer families a tokenizer.json can describe that Kiln reads.</summary>
public enum HuggingFaceTokenizerKind
{
    /// <summary>SentencePiece-style BPE with '▁' spaces and byte fallback (Llama 1/2, Mistral).</summary>
    SentencePieceBpe,

    /// <summary>Byte-level BPE (GPT-2, Llama 3).</summary>
    ByteLevelBpe,
}
