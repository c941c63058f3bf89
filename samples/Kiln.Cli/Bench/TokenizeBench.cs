// kiln bench tokenize: the speed of a GGUF file's tokenizer. Load: reading the tokenizer.ggml.* metadata and building the
// tokenizer (best of `runs`). Encode: the text (a file, or a built-in paragraph of English prose, code, digits, accented
// Latin, Cyrillic, CJK and emoji) repeated `repeat` times and encoded as one sequence (with the BOS the vocabulary adds);
// reported as input MB/s (UTF-8 bytes) and tokens/s, best of `runs` after one warm-up encode. Decode: the same ids back
// to text through TokenTextDecoder, tokens/s. Whether the decoded text equals the input is reported too (it does for
// byte-level BPE and SentencePiece; WordPiece lower-cases and drops spacing, so it does not).

using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Kiln.Models.Formats;
using Kiln.Models.Tokenizers;

namespace Kiln.Cli.Bench;

/// <summary>The tokenizer benchmark (see the file header).</summary>
public static class TokenizeBench
{
    /// <summary>The built-in text.</summary>
    public const string DefaultText =
        "The quick brown fox jumps over the lazy dog; it's 3:45pm and we've got 1,234,567 reasons to ship v2.0.1!\n" +
        "    def encode(self, text: str) -> list[int]:\n        return [self.vocab[t] for t in text.split()]  # O(n)\n" +
        "Ärger über Straßenbahn, café crème, naïve façade. Привет, как дела? 你好，世界！今天天气很好。 🦙🚀✨ \t\n";

    /// <summary>Measures the tokenizer of <paramref name="path"/> and writes one line (text or JSON).</summary>
    public static void Run(string path, string text, int repeat, int runs, bool json, TextWriter stdout)
    {
        double bestLoad = double.MaxValue;
        ITokenizer? tokenizer = null;
        for (int run = 0; run < runs; run++)
        {
            Stopwatch watch = Stopwatch.StartNew();
            tokenizer = GgufTokenizers.Load(GgufFile.Open(path));
            bestLoad = Math.Min(bestLoad, watch.Elapsed.TotalSeconds);
        }

        string input = new StringBuilder(text.Length * repeat).Insert(0, text, repeat).ToString();
        int[] ids = tokenizer!.Encode(input);
        double bestEncode = double.MaxValue, bestDecode = double.MaxValue;
        string decoded = string.Empty;
        for (int run = 0; run < runs; run++)
        {
            Stopwatch watch = Stopwatch.StartNew();
            ids = tokenizer.Encode(input);
            bestEncode = Math.Min(bestEncode, watch.Elapsed.TotalSeconds);
            watch.Restart();
            decoded = Decode(tokenizer, ids);
            bestDecode = Math.Min(bestDecode, watch.Elapsed.TotalSeconds);
        }

        bool roundTrip = decoded == input;
        double megabytes = Encoding.UTF8.GetByteCount(input) / 1e6;
        string model = Path.GetFileName(path);
        if (json)
        {
            stdout.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["bench"] = "tokenize", ["model"] = model, ["input_mb"] = Math.Round(megabytes, 3), ["tokens"] = ids.Length,
                ["load_ms"] = Math.Round(bestLoad * 1e3, 1), ["encode_mb_per_s"] = Math.Round(megabytes / bestEncode, 2),
                ["encode_tokens_per_s"] = Math.Round(ids.Length / bestEncode), ["decode_tokens_per_s"] = Math.Round(ids.Length / bestDecode), ["round_trip"] = roundTrip,
            }));
            return;
        }

        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"tokenize {model}: load {bestLoad * 1e3:F1} ms; encode {megabytes:F3} MB into {ids.Length:N0} tokens at {megabytes / bestEncode:F2} MB/s ({ids.Length / bestEncode:N0} tokens/s); decode {ids.Length / bestDecode:N0} tokens/s; round trip {(roundTrip ? "exact" : "differs")}"));
    }

    private static string Decode(ITokenizer tokenizer, int[] ids)
    {
        TokenTextDecoder decoder = new(tokenizer);
        StringBuilder text = new();
        foreach (int id in ids)
        {
            text.Append(decoder.Append(id));
        }

        return text.Append(decoder.Flush()).ToString();
    }
}
