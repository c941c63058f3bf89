// Turns a stream of token ids into text without ever splitting a character: the bytes of each token go through
// a stateful UTF-8 decoder, which holds back the start of a multi-byte sequence until its last byte arrives.
// Malformed bytes become U+FFFD, as in every .NET UTF-8 decode. One decoder per generation.

using System.Text;

namespace Kiln.Models.Tokenizers;

/// <summary>Streams the text of a token sequence, returning only whole UTF-8 characters.</summary>
public sealed class TokenTextDecoder
{
    private readonly ITokenizer _tokenizer;
    private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    private char[] _chars = new char[64];
    private int _previous = -1;

    /// <summary>Creates a decoder for tokens of <paramref name="tokenizer"/>.</summary>
    public TokenTextDecoder(ITokenizer tokenizer)
    {
        _tokenizer = tokenizer;
    }

    /// <summary>The last token appended, or -1.</summary>
    public int Previous => _previous;

    /// <summary>
    /// Starts over as if <paramref name="previous"/> had just been appended (-1: nothing); bytes held back are
    /// dropped.
    /// </summary>
    public void Reset(int previous = -1)
    {
        _utf8.Reset();
        _previous = previous;
    }

    /// <summary>
    /// Appends <paramref name="token"/> and returns the characters it completes: possibly empty while a
    /// multi-byte character is still incomplete.
    /// </summary>
    public string Append(int token)
    {
        ReadOnlySpan<byte> bytes = _tokenizer.DecodeBytes(_previous, token);
        _previous = token;
        return Convert(bytes, flush: false);
    }

    /// <summary>Returns what is still held back (an incomplete character becomes U+FFFD) and empties the buffer.</summary>
    public string Flush() => Convert([], flush: true);

    private string Convert(ReadOnlySpan<byte> bytes, bool flush)
    {
        // Grow the character buffer to the worst case: one character per new or held-back byte (at most 3).
        int needed = bytes.Length + 4;
        if (_chars.Length < needed)
        {
            _chars = new char[Math.Max(needed, _chars.Length * 2)];
        }

        int count = _utf8.GetChars(bytes, _chars, flush);
        return count == 0 ? string.Empty : new string(_chars, 0, count);
    }
}
