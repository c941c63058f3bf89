// Writes llama2.c checkpoints and tokenizers for tests: from loaded weights (to check the reader against the
// real files byte for byte), from random small configs (models the shared files do not cover), and with raw
// header fields (truncated files and lying headers). Files go to a per-test temporary directory.

using System.Text;
using Kiln.Models.Formats;
using Kiln.Models.Llama;

namespace Kiln.Models.Tests;

/// <summary>A temporary directory deleted on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = Directory.CreateTempSubdirectory("kiln-models-tests-").FullName;
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // A file still open on a failing path; the OS cleans the temp directory eventually.
        }
    }
}

/// <summary>Writers of llama2.c files.</summary>
internal static class CheckpointFiles
{
    /// <summary>Writes <paramref name="weights"/> as a legacy checkpoint (zero RoPE tables; negative vocab when not shared).</summary>
    public static void WriteLegacy(string path, LlamaWeights weights)
    {
        LlamaConfig c = weights.Config;
        using BinaryWriter writer = new(File.Create(path));
        int vocab = c.SharedClassifier ? c.VocabSize : -c.VocabSize;
        foreach (int field in new[] { c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, vocab, c.SeqLen })
        {
            writer.Write(field);
        }

        Write(writer, weights.TokenEmbedding);
        WriteEach(writer, weights, static l => l.AttentionNorm);
        WriteEach(writer, weights, static l => l.Wq);
        WriteEach(writer, weights, static l => l.Wk);
        WriteEach(writer, weights, static l => l.Wv);
        WriteEach(writer, weights, static l => l.Wo);
        WriteEach(writer, weights, static l => l.FfnNorm);
        WriteEach(writer, weights, static l => l.W1);
        WriteEach(writer, weights, static l => l.W2);
        WriteEach(writer, weights, static l => l.W3);
        Write(writer, weights.FinalNorm);
        writer.Write(new byte[(long)c.SeqLen * c.HeadDim * sizeof(float)]);
        if (!c.SharedClassifier)
        {
            Write(writer, weights.Classifier);
        }
    }

    /// <summary>Writes <paramref name="weights"/> as a version-1 checkpoint.</summary>
    public static void WriteVersion1(string path, LlamaWeights weights)
    {
        LlamaConfig c = weights.Config;
        using BinaryWriter writer = new(File.Create(path));
        byte[] header = new byte[Llama2cCheckpoint.Version1HeaderBytes];
        BitConverter.TryWriteBytes(header.AsSpan(0), Llama2cCheckpoint.Version1Magic);
        BitConverter.TryWriteBytes(header.AsSpan(4), 1);
        int[] fields = [c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.VocabSize, c.SeqLen];
        for (int i = 0; i < fields.Length; i++)
        {
            BitConverter.TryWriteBytes(header.AsSpan(8 + (4 * i)), fields[i]);
        }

        header[36] = c.SharedClassifier ? (byte)1 : (byte)0;
        writer.Write(header);
        WriteEach(writer, weights, static l => l.AttentionNorm);
        WriteEach(writer, weights, static l => l.FfnNorm);
        Write(writer, weights.FinalNorm);
        Write(writer, weights.TokenEmbedding);
        WriteEach(writer, weights, static l => l.Wq);
        WriteEach(writer, weights, static l => l.Wk);
        WriteEach(writer, weights, static l => l.Wv);
        WriteEach(writer, weights, static l => l.Wo);
        WriteEach(writer, weights, static l => l.W1);
        WriteEach(writer, weights, static l => l.W2);
        WriteEach(writer, weights, static l => l.W3);
        if (!c.SharedClassifier)
        {
            Write(writer, weights.Classifier);
        }
    }

    /// <summary>Writes a legacy header with arbitrary fields, followed by <paramref name="payloadBytes"/> zero bytes.</summary>
    public static void WriteLegacyHeader(string path, int[] fields, long payloadBytes)
    {
        using FileStream stream = File.Create(path);
        using (BinaryWriter writer = new(stream, Encoding.UTF8, leaveOpen: true))
        {
            foreach (int field in fields)
            {
                writer.Write(field);
            }
        }

        stream.SetLength(stream.Length + payloadBytes);
    }

    /// <summary>Random weights on an integer grid (multiples of 1/64 in [-1, 1]) for <paramref name="config"/>.</summary>
    public static LlamaWeights RandomWeights(LlamaConfig config, int seed)
    {
        LlamaWeights weights = LlamaWeights.Allocate(config);
        Random random = new(seed);
        foreach (Tensor tensor in weights.Tensors)
        {
            Span<float> values = tensor.AsSpan();
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = random.Next(-64, 65) / 64f;
            }
        }

        return weights;
    }

    /// <summary>Writes a llama2.c tokenizer with the given pieces and scores.</summary>
    public static void WriteTokenizer(string path, IReadOnlyList<(byte[] Piece, float Score)> records, int? maxTokenLength = null)
    {
        using BinaryWriter writer = new(File.Create(path));
        writer.Write(maxTokenLength ?? records.Max(r => r.Piece.Length));
        foreach ((byte[] piece, float score) in records)
        {
            writer.Write(score);
            writer.Write(piece.Length);
            writer.Write(piece);
        }
    }

    /// <summary>The records of a tokenizer: the first <paramref name="count"/> of the stories260K vocabulary.</summary>
    public static List<(byte[] Piece, float Score)> StoriesRecords(int count)
    {
        List<(byte[] Piece, float Score)> records = [];
        for (int id = 0; id < count; id++)
        {
            records.Add((TestData.StoriesTok.Piece(id).ToArray(), TestData.StoriesTok.Score(id)));
        }

        return records;
    }

    private static void WriteEach(BinaryWriter writer, LlamaWeights weights, Func<LlamaLayerWeights, Tensor> select)
    {
        foreach (LlamaLayerWeights layer in weights.Layers)
        {
            Write(writer, select(layer));
        }
    }

    private static void Write(BinaryWriter writer, Tensor tensor)
    {
        foreach (float value in tensor.ToArray())
        {
            writer.Write(value);
        }
    }
}
