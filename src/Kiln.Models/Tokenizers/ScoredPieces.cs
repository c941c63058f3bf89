// The encoding engine shared by the SentencePiece-style tokenizers: llama2.c's tok*.bin (Llama2cTokenizer) and the
// `llama` vocabulary of GGUF files (LlamaSpmTokenizer). Both hold a list of pieces (byte strings) with scores and
// encode the same way once the text is prepared (the caller adds the dummy-prefix space and, for GGUF, spells spaces
// '▁'):
//   1. Split the UTF-8 text into code points; a code point that is a piece becomes that piece, any other becomes one
//      byte-fallback piece "<0xHH>" per byte (the unknown id when the vocabulary has no such piece).
//   2. Repeatedly merge the adjacent pair whose concatenation is a piece with the highest score; ties go to the leftmost
//      pair (llama2.c's run.c and llama.cpp's SPM tokenizer agree on both rules).
// The merges run on a linked list with a priority queue keyed by (score, position), O(n log n) in the text length; the
// queue may hold stale pairs, which are skipped when popped. Pieces are keyed by their bytes widened one-to-one to chars
// (Latin-1), so lookups of spans allocate nothing; when two pieces have the same bytes the lower id wins.

using System.Text;

namespace Kiln.Models.Tokenizers;

/// <summary>A scored piece vocabulary with byte fallback and the score-ordered merge encoder.</summary>
internal sealed class ScoredPieces
{
    private readonly byte[][] _pieces;
    private readonly float[] _scores;
    private readonly int[] _byteIds;
    private readonly int[] _byteValues;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly int _maxPieceBytes;

    /// <summary>
    /// Indexes <paramref name="pieces"/> and their <paramref name="scores"/>; bytes with no "&lt;0xHH&gt;" piece fall
    /// back to <paramref name="unknownId"/>.
    /// </summary>
    public ScoredPieces(byte[][] pieces, float[] scores, int unknownId)
    {
        _pieces = pieces;
        _scores = scores;

        // Key each piece by its bytes as Latin-1 characters; on duplicates the lowest id wins.
        Dictionary<string, int> ids = new(pieces.Length, StringComparer.Ordinal);
        for (int id = pieces.Length - 1; id >= 0; id--)
        {
            ids[Encoding.Latin1.GetString(pieces[id])] = id;
            _maxPieceBytes = Math.Max(_maxPieceBytes, pieces[id].Length);
        }

        _lookup = ids.GetAlternateLookup<ReadOnlySpan<char>>();

        // Find the byte-fallback pieces "<0xHH>" (the first piece of each byte serves it).
        _byteIds = new int[256];
        Array.Fill(_byteIds, -1);
        _byteValues = new int[pieces.Length];
        for (int id = 0; id < pieces.Length; id++)
        {
            _byteValues[id] = TryParseBytePiece(pieces[id], out byte value) ? value : -1;
            if (_byteValues[id] >= 0 && _byteIds[value] < 0)
            {
                _byteIds[value] = id;
            }
        }

        for (int b = 0; b < 256; b++)
        {
            _byteIds[b] = _byteIds[b] < 0 ? unknownId : _byteIds[b];
        }
    }

    /// <summary>The number of pieces.</summary>
    public int Count => _pieces.Length;

    /// <summary>The longest piece in bytes.</summary>
    public int MaxPieceBytes => _maxPieceBytes;

    /// <summary>The bytes of piece <paramref name="id"/> as stored.</summary>
    public byte[] Piece(int id) => _pieces[id];

    /// <summary>The score of piece <paramref name="id"/>.</summary>
    public float Score(int id) => _scores[id];

    /// <summary>The byte a "&lt;0xHH&gt;" piece stands for, or -1 for any other piece.</summary>
    public int ByteValue(int id) => _byteValues[id];

    /// <summary>The piece that stands for byte <paramref name="value"/> in byte fallback (the unknown id when none).</summary>
    public int ByteId(byte value) => _byteIds[value];

    /// <summary>The id of the piece with exactly these bytes, or -1.</summary>
    public int Lookup(ReadOnlySpan<byte> piece)
    {
        Span<char> key = piece.Length <= 256 ? stackalloc char[piece.Length] : new char[piece.Length];
        Widen(piece, key);
        return _lookup.TryGetValue(key, out int id) ? id : -1;
    }

    /// <summary>Appends the symbols of <paramref name="utf8"/>: each code point's piece, or its byte pieces.</summary>
    public void AppendSymbols(ReadOnlySpan<byte> utf8, List<int> symbols)
    {
        Span<char> key = stackalloc char[4];
        for (int start = 0; start < utf8.Length;)
        {
            // A code point is a lead byte and the continuation bytes (10xxxxxx) after it, at most 4 bytes.
            int end = start + 1;
            while (end < utf8.Length && (utf8[end] & 0xC0) == 0x80 && end - start < 4)
            {
                end++;
            }

            ReadOnlySpan<byte> codePoint = utf8[start..end];
            Widen(codePoint, key);
            if (_lookup.TryGetValue(key[..codePoint.Length], out int id))
            {
                symbols.Add(id);
            }
            else
            {
                // Byte fallback: one piece per byte.
                foreach (byte b in codePoint)
                {
                    symbols.Add(_byteIds[b]);
                }
            }

            start = end;
        }
    }

    /// <summary>Merges adjacent symbols, best-scoring concatenation first (ties: leftmost), and returns the result.</summary>
    public int[] Merge(List<int> symbols)
    {
        int n = symbols.Count;
        if (n < 2)
        {
            return [.. symbols];
        }

        // A doubly linked list over the symbols; merged-away symbols are marked dead.
        int[] ids = [.. symbols];
        int[] next = new int[n];
        int[] prev = new int[n];
        bool[] dead = new bool[n];
        for (int i = 0; i < n; i++)
        {
            next[i] = i + 1 < n ? i + 1 : -1;
            prev[i] = i - 1;
        }

        // Every adjacent pair that concatenates to a piece is a candidate, best score first, then leftmost.
        PriorityQueue<Candidate, Candidate> queue = new(n, CandidateOrder.Instance);
        char[] buffer = new char[2 * _maxPieceBytes];
        for (int i = 0; i + 1 < n; i++)
        {
            TryQueue(queue, buffer, ids, i, i + 1);
        }

        while (queue.TryDequeue(out Candidate best, out _))
        {
            // Skip pairs made stale by an earlier merge (a side was merged away or changed id).
            int left = best.Left;
            int right = best.Right;
            if (dead[left] || dead[right] || next[left] != right || ids[left] != best.LeftId || ids[right] != best.RightId)
            {
                continue;
            }

            // Merge right into left and unlink right.
            ids[left] = best.MergedId;
            dead[right] = true;
            next[left] = next[right];
            if (next[right] >= 0)
            {
                prev[next[right]] = left;
            }

            // The merged symbol forms new pairs with its neighbours.
            if (prev[left] >= 0)
            {
                TryQueue(queue, buffer, ids, prev[left], left);
            }

            if (next[left] >= 0)
            {
                TryQueue(queue, buffer, ids, left, next[left]);
            }
        }

        // Collect the survivors in order.
        List<int> result = new(n);
        for (int i = 0; i >= 0; i = next[i])
        {
            result.Add(ids[i]);
        }

        return [.. result];
    }

    private void TryQueue(PriorityQueue<Candidate, Candidate> queue, char[] buffer, int[] ids, int left, int right)
    {
        // Look up the concatenation of the two pieces; only a piece of the vocabulary is a candidate.
        byte[] a = _pieces[ids[left]];
        byte[] b = _pieces[ids[right]];
        int length = a.Length + b.Length;
        if (length > buffer.Length)
        {
            return;
        }

        Widen(a, buffer);
        Widen(b, buffer.AsSpan(a.Length));
        if (_lookup.TryGetValue(buffer.AsSpan(0, length), out int merged))
        {
            Candidate candidate = new(left, right, ids[left], ids[right], merged, _scores[merged]);
            queue.Enqueue(candidate, candidate);
        }
    }

    private static void Widen(ReadOnlySpan<byte> bytes, Span<char> chars)
    {
        for (int i = 0; i < bytes.Length; i++)
        {
            chars[i] = (char)bytes[i];
        }
    }

    /// <summary>Whether <paramref name="piece"/> is exactly "&lt;0xHH&gt;" with two hex digits (either case).</summary>
    public static bool TryParseBytePiece(ReadOnlySpan<byte> piece, out byte value)
    {
        value = 0;
        if (piece.Length != 6 || piece[0] != '<' || piece[1] != '0' || piece[2] != 'x' || piece[5] != '>')
        {
            return false;
        }

        int high = HexDigit(piece[3]);
        int low = HexDigit(piece[4]);
        if (high < 0 || low < 0)
        {
            return false;
        }

        value = (byte)((high << 4) | low);
        return true;
    }

    private static int HexDigit(byte c) => c switch
    {
        >= (byte)'0' and <= (byte)'9' => c - '0',
        >= (byte)'A' and <= (byte)'F' => c - 'A' + 10,
        >= (byte)'a' and <= (byte)'f' => c - 'a' + 10,
        _ => -1,
    };

    /// <summary>A merge candidate: symbols Left and Right (with the ids they had when queued) form MergedId.</summary>
    private readonly record struct Candidate(int Left, int Right, int LeftId, int RightId, int MergedId, float Score);

    /// <summary>Orders candidates best first: higher score, then the leftmost position.</summary>
    private sealed class CandidateOrder : IComparer<Candidate>
    {
        public static readonly CandidateOrder Instance = new();

        public int Compare(Candidate x, Candidate y)
        {
            int byScore = y.Score.CompareTo(x.Score);
            return byScore != 0 ? byScore : x.Left.CompareTo(y.Left);
        }
    }
}
