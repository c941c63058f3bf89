// The llama2.c tokenizer: the reference encoding, decode rules, round trips of random ASCII and Unicode text
// (FsCheck), the priority-queue merge against a direct transcription of run.c's O(n²) loop, streaming UTF-8,
// and every malformed or mismatched tokenizer file.

using System.Text;
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using Kiln.Models.Tokenizers;
using Xunit;

namespace Kiln.Models.Tests;

public sealed class TokenizerTests
{
    [Fact]
    public void Encode_OnceUponATime_MatchesTheReference()
    {
        Assert.Equal([1, 403, 407, 261, 378], TestData.StoriesTok.Encode("Once upon a time"));
    }

    [Fact]
    public void Encode_EmptyText_IsJustBos_AndNoDummyPrefix()
    {
        Assert.Equal([1], TestData.StoriesTok.Encode(string.Empty));
        Assert.Empty(TestData.StoriesTok.Encode(string.Empty, bos: false));
        Assert.Equal([1, 2], TestData.StoriesTok.Encode(string.Empty, bos: true, eos: true));
    }

    [Fact]
    public void Encode_CharacterOutsideTheVocabulary_FallsBackToBytes()
    {
        // '€' is a piece of the stories vocabulary; '😀' (F0 9F 98 80) is not, so it becomes 4 byte pieces.
        int[] ids = TestData.StoriesTok.Encode("😀", bos: false);

        Assert.Equal([410, 0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3], ids);
        int euro = TestData.StoriesTok.Lookup("€"u8);
        Assert.True(euro > 258);
        Assert.Equal([410, euro], TestData.StoriesTok.Encode("€", bos: false));
    }

    [Fact]
    public void Decode_ReferenceIds_GiveTheReferenceText()
    {
        int[] ids = [1, .. TestData.GreedyReferenceIds];

        Assert.Equal(TestData.GreedyReferenceText, TestData.StoriesTok.Decode(ids));
    }

    [Fact]
    public void DecodeBytes_DropsTheLeadingSpaceOnlyAfterBos()
    {
        Llama2cTokenizer tok = TestData.StoriesTok;

        Assert.Equal("Once", Encoding.UTF8.GetString(tok.DecodeBytes(1, 403)));
        Assert.Equal(" Once", Encoding.UTF8.GetString(tok.DecodeBytes(378, 403)));
        Assert.Equal(" Once", Encoding.UTF8.GetString(tok.DecodeBytes(-1, 403)));
        Assert.Equal(new byte[] { 0x0A }, tok.DecodeBytes(1, 13).ToArray());
        Assert.Empty(tok.DecodeBytes(5, 1).ToArray());
        Assert.Equal("\n</s>\n", Encoding.UTF8.GetString(tok.DecodeBytes(5, 2)));
        Assert.Throws<ArgumentOutOfRangeException>(() => tok.DecodeBytes(1, 512).ToArray());
    }

    [Fact]
    public void StreamDecoder_HoldsBackPartialCharacters()
    {
        Llama2cTokenizer tok = TestData.StoriesTok;
        int[] ids = tok.Encode("a😀b", bos: true);
        TokenTextDecoder decoder = new(tok);

        List<string> pieces = [.. ids.Select(decoder.Append)];

        // The four byte pieces of the emoji give nothing, nothing, nothing, then the whole character.
        int first = Array.IndexOf(ids, 0xF0 + 3);
        Assert.Equal(["", "", ""], pieces.GetRange(first, 3));
        Assert.Equal("😀", pieces[first + 3]);
        Assert.Equal("a😀b", string.Concat(pieces) + decoder.Flush());
    }

    [Fact]
    public void StreamDecoder_FlushTurnsAnIncompleteCharacterIntoReplacement()
    {
        TokenTextDecoder decoder = new(TestData.StoriesTok);
        decoder.Reset(previous: 1);

        Assert.Equal(string.Empty, decoder.Append(0xF0 + 3));
        Assert.Equal("\uFFFD", decoder.Flush());
    }

    [Property(MaxTest = 300)]
    public Property RoundTrip_RandomAscii() => Prop.ForAll(
        TextOf(Gen.OneOf(Gen.Choose(32, 126), Gen.Elements(9, 10, 13, 0, 1, 127))).ToArbitrary(),
        text => RoundTrips(TestData.StoriesTok, text) && RoundTrips(TestData.AidreamsTok, text));

    [Property(MaxTest = 300)]
    public Property RoundTrip_RandomUnicode() => Prop.ForAll(
        TextOf(Gen.OneOf(
            Gen.Choose(32, 126),
            Gen.Choose(0xA0, 0x7FF),
            Gen.Choose(0x800, 0xD7FF),
            Gen.Choose(0xE000, 0xFFFD),
            Gen.Choose(0x10000, 0x10FFFF),
            Gen.Elements(0x201C, 0x201D, 0x2019, 0xE9, 0x20AC, 0x3C3))).ToArbitrary(),
        text => RoundTrips(TestData.StoriesTok, text) && RoundTrips(TestData.AidreamsTok, text));

    [Property(MaxTest = 300)]
    public Property Encode_EqualsRunCsQuadraticLoop_OnVocabularyHeavyText() => Prop.ForAll(
        PieceText(TestData.StoriesTok).ToArbitrary(),
        text => TestData.StoriesTok.Encode(text).SequenceEqual(NaiveEncode(TestData.StoriesTok, text))
            && TestData.AidreamsTok.Encode(text).SequenceEqual(NaiveEncode(TestData.AidreamsTok, text)));

    [Property(MaxTest = 300)]
    public Property Encode_EqualsRunCsQuadraticLoop_WithTiedScores()
    {
        // A vocabulary where every 2- and 3-letter word over {a, b, c} is a piece, with only three score values:
        // many merges tie, and the leftmost must win, as in run.c.
        Llama2cTokenizer tok = TiedVocabulary();
        return Prop.ForAll(
            TextOf(Gen.Elements((int)'a', 'b', 'c', ' ')).ToArbitrary(),
            text => tok.Encode(text).SequenceEqual(NaiveEncode(tok, text)));
    }

    [Theory]
    [InlineData(511, "bytes after the 511 records")]
    [InlineData(513, "inside record 512 of 513")]
    [InlineData(600, "inside record 512 of 600")]
    public void Load_WithTheWrongVocabularySize_IsAClearError(int vocab, string expected)
    {
        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.Load(TestData.StoriesTokenizer, vocab));

        CheckpointValidationTests.AssertOneLine(e.Message, TestData.StoriesTokenizer, expected);
        Assert.Contains("tokenizer that came with the model", e.Message);
    }

    [Theory]
    [InlineData(0, "shorter than the 4-byte header")]
    [InlineData(2, "shorter than the 4-byte header")]
    [InlineData(6000, "inside record")]
    [InlineData(6226, "inside record 511 of 512")]
    public void Load_TruncatedFile_IsAClearError(int length, string expected)
    {
        using TempDirectory temp = new();
        string path = temp.File("tok512.bin");
        File.WriteAllBytes(path, File.ReadAllBytes(TestData.StoriesTokenizer).AsSpan(0, length).ToArray());

        ModelFormatException e = Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.Load(path, 512));

        CheckpointValidationTests.AssertOneLine(e.Message, path, expected);
    }

    [Fact]
    public void Load_MalformedRecords_AreClearErrors()
    {
        using TempDirectory temp = new();
        List<(byte[] Piece, float Score)> records = CheckpointFiles.StoriesRecords(512);

        // A record longer than max_token_length (a misaligned or foreign file).
        string tooLong = temp.File("long.bin");
        CheckpointFiles.WriteTokenizer(tooLong, records, maxTokenLength: 5);
        ModelFormatException e1 = Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.Load(tooLong, 512));
        CheckpointValidationTests.AssertOneLine(e1.Message, tooLong, "record 2 of length 6, outside 0..5");

        // A NaN score.
        records[300] = (records[300].Piece, float.NaN);
        string nan = temp.File("nan.bin");
        CheckpointFiles.WriteTokenizer(nan, records);
        ModelFormatException e2 = Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.Load(nan, 512));
        CheckpointValidationTests.AssertOneLine(e2.Message, nan, "NaN score in record 300");

        // A header with max_token_length 0.
        string zero = temp.File("zero.bin");
        File.WriteAllBytes(zero, new byte[16]);
        ModelFormatException e3 = Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.Load(zero, 512));
        CheckpointValidationTests.AssertOneLine(e3.Message, zero, "max_token_length 0");
    }

    [Fact]
    public void Load_MissingFileOrDirectory_IsAClearError()
    {
        using TempDirectory temp = new();
        string missing = temp.File("absent.bin");

        ModelFormatException e1 = Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.Load(missing, 512));
        ModelFormatException e2 = Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.Load(temp.Path, 512));

        CheckpointValidationTests.AssertOneLine(e1.Message, missing, "does not exist");
        CheckpointValidationTests.AssertOneLine(e2.Message, temp.Path, "is a directory");
    }

    [Fact]
    public void TheTwoVocabularies_Differ()
    {
        // Same format and size, different pieces: a loader that hard-codes one vocabulary fails here.
        Assert.NotEqual(TestData.StoriesTok.Encode("Once upon a time"), TestData.AidreamsTok.Encode("Once upon a time"));
        Assert.Equal(410, TestData.StoriesTok.Lookup(" "u8));
        Assert.Equal(429, TestData.AidreamsTok.Lookup(" "u8));
    }

    private static bool RoundTrips(Llama2cTokenizer tok, string text) => tok.Decode(tok.Encode(text)) == text;

    private static Gen<string> TextOf(Gen<int> codePoints) =>
        Gen.Choose(0, 40).SelectMany(n => codePoints.ArrayOf(n))
            .Select(points => string.Concat(points.Select(char.ConvertFromUtf32)));

    /// <summary>Text made of vocabulary pieces (so that many merges apply) mixed with random characters.</summary>
    private static Gen<string> PieceText(Llama2cTokenizer tok)
    {
        Gen<string> piece = Gen.Choose(259, tok.VocabSize - 1).Select(id => Encoding.UTF8.GetString(tok.Piece(id)));
        Gen<string> character = Gen.Choose(32, 126).Select(c => ((char)c).ToString());
        return Gen.Choose(0, 30).SelectMany(n => Gen.Frequency((4, piece), (1, character)).ArrayOf(n)).Select(string.Concat);
    }

    /// <summary>llama2.c run.c's encode, transcribed directly: O(n²) scans for the best pair.</summary>
    private static int[] NaiveEncode(Llama2cTokenizer tok, string text)
    {
        List<int> tokens = [1];
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        if (utf8.Length > 0)
        {
            tokens.Add(tok.Lookup(" "u8));
        }

        for (int i = 0; i < utf8.Length;)
        {
            int end = i + 1;
            while (end < utf8.Length && (utf8[end] & 0xC0) == 0x80 && end - i < 4)
            {
                end++;
            }

            int id = tok.Lookup(utf8.AsSpan(i, end - i));
            if (id >= 0)
            {
                tokens.Add(id);
            }
            else
            {
                tokens.AddRange(utf8[i..end].Select(b => b + 3));
            }

            i = end;
        }

        while (true)
        {
            float bestScore = float.NegativeInfinity;
            int bestId = -1;
            int bestIndex = -1;
            for (int i = 0; i + 1 < tokens.Count; i++)
            {
                byte[] merged = [.. tok.Piece(tokens[i]), .. tok.Piece(tokens[i + 1])];
                int id = tok.Lookup(merged);
                if (id >= 0 && tok.Score(id) > bestScore)
                {
                    bestScore = tok.Score(id);
                    bestId = id;
                    bestIndex = i;
                }
            }

            if (bestIndex < 0)
            {
                break;
            }

            tokens[bestIndex] = bestId;
            tokens.RemoveAt(bestIndex + 1);
        }

        return [.. tokens];
    }

    private static Llama2cTokenizer TiedVocabulary()
    {
        List<(byte[] Piece, float Score)> records = [("<unk>"u8.ToArray(), 0), ("\n<s>\n"u8.ToArray(), 0), ("\n</s>\n"u8.ToArray(), 0)];
        for (int b = 0; b < 256; b++)
        {
            records.Add((Encoding.ASCII.GetBytes($"<0x{b:X2}>"), 0));
        }

        string letters = "abc ";
        foreach (char c in letters)
        {
            records.Add(([(byte)c], -100));
        }

        int n = 0;
        foreach (char a in letters)
        {
            foreach (char b in letters)
            {
                records.Add((Encoding.ASCII.GetBytes($"{a}{b}"), -(n++ % 3)));
                foreach (char c in "ab")
                {
                    records.Add((Encoding.ASCII.GetBytes($"{a}{b}{c}"), -(n++ % 3)));
                }
            }
        }

        using TempDirectory temp = new();
        string path = temp.File("tied.bin");
        CheckpointFiles.WriteTokenizer(path, records);
        return Llama2cTokenizer.Load(path, records.Count);
    }
}
