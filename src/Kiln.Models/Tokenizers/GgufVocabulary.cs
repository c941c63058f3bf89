// The parts every GGUF tokenizer model shares: tokenizer.ggml.tokens (one string per id), the optional
// tokenizer.ggml.token_type (i32 per id, 1 normal .. 6 byte; all normal when absent), and the special ids, read with
// one-line errors that name the file, the key and the fix. Also the special-token partition llama.cpp applies before
// any model-specific splitting: the text of chosen tokens (user-defined ones always, control ones when the caller asks)
// is found verbatim in the text, longest token first, and those spans become the tokens themselves.

using Kiln.Models.Formats;

namespace Kiln.Models.Tokenizers;

/// <summary>Reads the shared tokenizer.ggml.* keys and cuts special-token text out of the input.</summary>
internal static class GgufVocabulary
{
    /// <summary>The tokens of <paramref name="file"/>, non-empty.</summary>
    public static string[] ReadTokens(GgufFile file)
    {
        string[] tokens = file.GetArray<string>("tokenizer.ggml.tokens");
        if (tokens.Length == 0)
        {
            throw new ModelFormatException(file.Path, $"{file.Path}: has an empty tokenizer.ggml.tokens; the vocabulary is missing, convert the model again.");
        }

        return tokens;
    }

    /// <summary>The token types of <paramref name="file"/>, one per token (all normal when the key is absent).</summary>
    public static GgufTokenType[] ReadTypes(GgufFile file, int count)
    {
        string path = file.Path;
        if (!file.Contains("tokenizer.ggml.token_type"))
        {
            return [.. Enumerable.Repeat(GgufTokenType.Normal, count)];
        }

        int[] codes = file.GetArray<int>("tokenizer.ggml.token_type");
        if (codes.Length != count)
        {
            throw new ModelFormatException(path, $"{path}: has {codes.Length} entries in tokenizer.ggml.token_type but {count} tokens; the vocabulary is damaged, convert the model again.");
        }

        GgufTokenType[] types = new GgufTokenType[count];
        for (int id = 0; id < count; id++)
        {
            if (codes[id] is < 0 or > (int)GgufTokenType.Byte)
            {
                throw new ModelFormatException(path, $"{path}: has token type {codes[id]} for token {id} in tokenizer.ggml.token_type (types are 0..6); the vocabulary is damaged, convert the model again.");
            }

            types[id] = (GgufTokenType)codes[id];
        }

        return types;
    }

    /// <summary>The id stored under <paramref name="key"/> (checked against the vocabulary), or -1 when absent.</summary>
    public static int ReadOptionalId(GgufFile file, string key, int count) => (int)file.GetInteger(key, -1, 0, count - 1);

    /// <summary>The boolean under <paramref name="key"/>, or <paramref name="fallback"/> when absent.</summary>
    public static bool ReadFlag(GgufFile file, string key, bool fallback) => file.Contains(key) ? file.GetBool(key) : fallback;

    /// <summary>
    /// The ids whose text is matched verbatim ahead of the model's own splitting, longest text first (ties: lower id):
    /// user-defined tokens, and control tokens when <paramref name="control"/> is true. Empty texts are left out.
    /// </summary>
    public static int[] SpecialOrder(string[] tokens, GgufTokenType[] types, bool control) =>
    [
        .. Enumerable.Range(0, tokens.Length)
            .Where(id => tokens[id].Length > 0 && (types[id] == GgufTokenType.UserDefined || (control && types[id] == GgufTokenType.Control)))
            .OrderByDescending(id => tokens[id].Length)
            .ThenBy(id => id),
    ];

    /// <summary>
    /// Cuts the text of the <paramref name="specials"/> (in priority order) out of <paramref name="text"/>: each
    /// returned part is a special id (Id ≥ 0) or a text span (Id = -1). Each special is searched in the text parts left
    /// by the ones before it, left to right.
    /// </summary>
    public static List<(int Id, int Start, int Length)> Partition(string text, string[] tokens, int[] specials)
    {
        List<(int Id, int Start, int Length)> parts = text.Length == 0 ? [] : [(-1, 0, text.Length)];
        List<(int Id, int Start, int Length)> next = [];

        // The UTF-16 units present in the text, one bit each: a special whose first unit is absent is skipped without a
        // search (vocabularies such as deepseek-llm have thousands of "[PAD...]" tokens).
        Span<ulong> present = stackalloc ulong[1024];
        present.Clear();
        foreach (char c in text)
        {
            present[c >> 6] |= 1UL << (c & 63);
        }

        foreach (int special in specials)
        {
            string needle = tokens[special];
            if (needle.Length > text.Length || (present[needle[0] >> 6] & (1UL << (needle[0] & 63))) == 0)
            {
                continue;
            }

            bool found = false;
            next.Clear();
            foreach ((int id, int start, int length) in parts)
            {
                if (id >= 0 || length < needle.Length)
                {
                    next.Add((id, start, length));
                    continue;
                }

                int position = start;
                int end = start + length;
                while (position < end)
                {
                    int at = text.AsSpan(position, end - position).IndexOf(needle, StringComparison.Ordinal);
                    if (at < 0)
                    {
                        break;
                    }

                    found = true;
                    if (at > 0)
                    {
                        next.Add((-1, position, at));
                    }

                    next.Add((special, position + at, needle.Length));
                    position += at + needle.Length;
                }

                if (position < end)
                {
                    next.Add((-1, position, end - position));
                }
            }

            if (found)
            {
                (parts, next) = (next, parts);
            }
        }

        return parts;
    }
}
