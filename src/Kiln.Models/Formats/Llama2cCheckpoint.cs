// Reads llama2.c checkpoints (karpathy/llama2.c) in both containers, detected from the first four bytes:
//   - legacy: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), then
//     float32 arrays: embedding [V, D], attention norms [L, D], wq [L, D, D], wk [L, Hkv·Dh, D], wv, wo [L, D, D],
//     ffn norms [L, D], w1 [L, F, D], w2 [L, D, F], w3 [L, F, D], final norm [D], two obsolete RoPE tables
//     [S, Dh / 2] each (skipped), and a classifier [V, D] only when vocab_size is negative (then |vocab_size|).
//   - version 1: a 256-byte header (uint32 magic 0x616b3432, int32 version 1, the same 7 int32, one byte
//     shared_classifier, zero padding), then attention norms, ffn norms, final norm, embedding, wq, wk, wv, wo,
//     w1, w2, w3, and the classifier when not shared. No RoPE tables.
// Every matrix is row-major [out, in] as stored (PyTorch nn.Linear), which is Kiln's convention: no conversion.
// The header is validated and the byte count it implies is compared with the file length before anything is
// allocated, so a truncated file or a header that lies fails with a one-line message, never a huge allocation.

using System.Runtime.InteropServices;
using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Llama;

namespace Kiln.Models.Formats;

/// <summary>The two llama2.c checkpoint containers.</summary>
public enum Llama2cFormat
{
    /// <summary>The original export: a 28-byte header, RoPE tables after the final norm.</summary>
    Legacy,

    /// <summary>llama2.c's "version 1" export: a 256-byte header starting with the magic 0x616b3432.</summary>
    Version1,
}

/// <summary>What a llama2.c header says: the container, the model config, and the file size it implies.</summary>
/// <param name="Format">The container.</param>
/// <param name="Config">The model configuration (RMSNorm eps 1e-5, RoPE base 10000, adjacent pairs).</param>
/// <param name="HeaderBytes">The header length in bytes (28 or 256).</param>
/// <param name="FileBytes">The exact file length the header implies.</param>
public sealed record Llama2cHeader(Llama2cFormat Format, LlamaConfig Config, int HeaderBytes, long FileBytes);

/// <summary>Loads llama2.c checkpoints (legacy and version 1) into <see cref="LlamaWeights"/>.</summary>
public static class Llama2cCheckpoint
{
    /// <summary>The first four bytes of a version-1 file ("ak42" little-endian, "24ka" on disk).</summary>
    public const uint Version1Magic = 0x616b3432;

    /// <summary>The length of the legacy header: seven int32.</summary>
    public const int LegacyHeaderBytes = 7 * sizeof(int);

    /// <summary>The length of the version-1 header.</summary>
    public const int Version1HeaderBytes = 256;

    // Upper bounds on header fields: far above any released Llama, low enough that no product overflows a long.
    private const int MaxDim = 1 << 16;
    private const int MaxHiddenDim = 1 << 20;
    private const int MaxLayers = 1024;
    private const int MaxVocab = 1 << 24;
    private const int MaxSeqLen = 1 << 24;

    // Reads are split into pieces of at most this many bytes (spans are indexed by int).
    private const int ReadChunkBytes = 1 << 30;

    /// <summary>
    /// Loads the checkpoint at <paramref name="path"/> onto <paramref name="device"/> (cpu when null), detecting
    /// the container from its first bytes.
    /// </summary>
    /// <exception cref="ModelFormatException">
    /// The file is missing or unreadable, its header is incomplete or has a size that is zero, negative,
    /// inconsistent or absurd, or its length differs from the length the header implies.
    /// </exception>
    /// <exception cref="ArgumentException"><paramref name="attentionResiduals"/> does not fit the model.</exception>
    /// <remarks>
    /// With <paramref name="attentionResiduals"/> the model gets the Block Attention Residuals option, whose vectors a
    /// llama2.c file does not hold: they start at their defaults (queries zero, gains one), which compute what the
    /// checkpoint computes without the option up to the norm epsilon.
    /// </remarks>
    public static LlamaWeights Load(string path, Device? device = null, AttentionResidualsConfig? attentionResiduals = null)
    {
        // Validate everything the header says against the file before allocating a single tensor.
        Llama2cHeader header = ReadHeader(path);
        LlamaConfig config = header.Config with { AttentionResiduals = attentionResiduals };

        FileStream stream = OpenRead(path);
        LlamaWeights weights = LlamaWeights.Allocate(config, device ?? CpuDevice.Default);
        try
        {
            using (stream)
            {
                stream.Seek(header.HeaderBytes, SeekOrigin.Begin);
                if (header.Format == Llama2cFormat.Legacy)
                {
                    ReadLegacy(stream, weights);
                }
                else
                {
                    ReadVersion1(stream, weights);
                }

                // The lengths were checked up front, so the reader must end exactly at the end of the file.
                if (stream.Position != stream.Length)
                {
                    throw new ModelFormatException(path, $"model file '{path}': the reader stopped at byte {stream.Position} of {stream.Length}; this is a bug in Kiln's llama2.c reader, please report it.");
                }
            }
        }
        catch (IOException e)
        {
            weights.Dispose();
            throw new ModelFormatException(path, $"model file '{path}' could not be read ({OneLine(e.Message)}); check that the file is readable and not being written.", e);
        }
        catch
        {
            weights.Dispose();
            throw;
        }

        return weights;
    }

    /// <summary>
    /// Reads and validates the header of the checkpoint at <paramref name="path"/>, including that the file has
    /// exactly the length the header implies. Allocates nothing in proportion to the sizes it reads.
    /// </summary>
    /// <exception cref="ModelFormatException">See <see cref="Load"/>.</exception>
    public static Llama2cHeader ReadHeader(string path)
    {
        // Read up to the longer of the two headers.
        Span<byte> bytes = stackalloc byte[Version1HeaderBytes];
        long fileLength;
        int read;
        using (FileStream stream = OpenRead(path))
        {
            fileLength = stream.Length;
            read = stream.ReadAtLeast(bytes, bytes.Length, throwOnEndOfStream: false);
        }

        // Pick the container from the first four bytes; the legacy header starts with dim, never this large.
        if (read < LegacyHeaderBytes)
        {
            throw Fail(path, $"is {fileLength} bytes, shorter than the {LegacyHeaderBytes}-byte llama2.c header; the file is truncated or not a llama2.c checkpoint");
        }

        Llama2cFormat format = ReadUInt32(bytes, 0) == Version1Magic ? Llama2cFormat.Version1 : Llama2cFormat.Legacy;
        int fieldsOffset = 0;
        bool shared;
        if (format == Llama2cFormat.Version1)
        {
            if (read < Version1HeaderBytes)
            {
                throw Fail(path, $"starts with the version-1 magic 0x{Version1Magic:x8} but is only {fileLength} bytes, shorter than the {Version1HeaderBytes}-byte version-1 header; the file is truncated");
            }

            int version = ReadInt32(bytes, 4);
            if (version == 2)
            {
                throw Fail(path, "is a version-2 (int8-quantized) llama2.c checkpoint, which Kiln does not read yet; export version 1 (float32) with llama2.c's export.py --version 1");
            }

            if (version != 1)
            {
                throw Fail(path, $"has the llama2.c magic but version {version}; only versions 1 (and the legacy header-less format) are supported, re-export with llama2.c's export.py --version 1");
            }

            fieldsOffset = 8;
            byte sharedByte = bytes[8 + LegacyHeaderBytes];
            if (sharedByte > 1)
            {
                throw Fail(path, $"has shared_classifier byte {sharedByte} at offset {8 + LegacyHeaderBytes}, expected 0 or 1; the header is corrupt, re-export the checkpoint");
            }

            shared = sharedByte == 1;
        }
        else
        {
            // Legacy: a negative vocabulary size means the file ends with a separate classifier.
            shared = ReadInt32(bytes, 5 * sizeof(int)) > 0;
        }

        // Read and bound each field; the names are those of llama2.c's Config struct.
        int dim = Field(path, bytes, fieldsOffset, 0, "dim", MaxDim);
        int hiddenDim = Field(path, bytes, fieldsOffset, 1, "hidden_dim", MaxHiddenDim);
        int layers = Field(path, bytes, fieldsOffset, 2, "n_layers", MaxLayers);
        int heads = Field(path, bytes, fieldsOffset, 3, "n_heads", dim);
        int kvHeads = Field(path, bytes, fieldsOffset, 4, "n_kv_heads", heads);
        int vocab = format == Llama2cFormat.Legacy
            ? Math.Abs(Field(path, bytes, fieldsOffset, 5, "vocab_size", MaxVocab, allowNegative: true))
            : Field(path, bytes, fieldsOffset, 5, "vocab_size", MaxVocab);
        int seqLen = Field(path, bytes, fieldsOffset, 6, "seq_len", MaxSeqLen);

        // Check the relations between fields that the forward pass relies on.
        if (dim % heads != 0)
        {
            throw Fail(path, $"has dim {dim} not divisible by n_heads {heads}; the header is corrupt or not a llama2.c checkpoint");
        }

        if (heads % kvHeads != 0)
        {
            throw Fail(path, $"has n_heads {heads} not divisible by n_kv_heads {kvHeads}; the header is corrupt or not a llama2.c checkpoint");
        }

        int headDim = dim / heads;
        if (headDim % 2 != 0)
        {
            throw Fail(path, $"has an odd head size {headDim} (dim {dim} / n_heads {heads}); RoPE needs pairs, so the header is corrupt or the model is not a Llama");
        }

        if ((long)vocab * dim > Tensor.MaxElements || (long)hiddenDim * dim > Tensor.MaxElements)
        {
            throw Fail(path, $"declares a matrix of more than {Tensor.MaxElements} elements (vocab_size {vocab}, hidden_dim {hiddenDim}, dim {dim}), more than one Kiln tensor holds; the header is corrupt or the model is too large");
        }

        LlamaConfig config = new()
        {
            Dim = dim,
            HiddenDim = hiddenDim,
            Layers = layers,
            Heads = heads,
            KvHeads = kvHeads,
            VocabSize = vocab,
            SeqLen = seqLen,
            HeadDim = headDim,
            NormEps = 1e-5f,
            RopeTheta = 10000f,
            RopeLayout = RopeLayout.Adjacent,
            SharedClassifier = shared,
        };

        // Compare the implied length with the real one: this catches truncation and lying headers alike.
        int headerBytes = format == Llama2cFormat.Legacy ? LegacyHeaderBytes : Version1HeaderBytes;
        long ropeTables = format == Llama2cFormat.Legacy ? (long)seqLen * headDim : 0;
        long expected = headerBytes + (sizeof(float) * (config.ParameterCount + ropeTables));
        if (expected != fileLength)
        {
            string which = format == Llama2cFormat.Legacy ? "legacy" : "version-1";
            string classifier = shared ? "shared classifier" : "separate classifier";
            string verdict = fileLength < expected ? "the file is truncated or the header is wrong" : "the file has extra data or the header is wrong";
            throw Fail(path, $"is {fileLength} bytes but its {which} header (dim {dim}, hidden_dim {hiddenDim}, n_layers {layers}, n_heads {heads}, n_kv_heads {kvHeads}, vocab_size {vocab}, seq_len {seqLen}, {classifier}) implies {expected}; {verdict}, download or export it again");
        }

        return new Llama2cHeader(format, config, headerBytes, expected);
    }

    /// <summary>
    /// Writes <paramref name="weights"/> (any device, float32 or 16-bit matrices, which are widened exactly) as a
    /// llama2.c version-1 checkpoint: the 256-byte header, then the float32 tensors in the version-1 order.
    /// </summary>
    /// <exception cref="ArgumentException">
    /// The config is one llama2.c cannot express: a head width other than dim / n_heads, or a RoPE other than adjacent
    /// pairs with base 10000 and RMSNorm epsilon 1e-5 (llama2.c's run.c has them fixed), or it has attention residuals.
    /// </exception>
    public static void WriteVersion1(string path, LlamaWeights weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        LlamaConfig c = weights.Config;
        if (c.AttentionResiduals is not null)
        {
            throw new ArgumentException("A llama2.c checkpoint has no place for the attention residuals' vectors; write the model without the option (they are not stored by any Kiln writer yet).", nameof(weights));
        }

        if (c.HeadDim * c.Heads != c.Dim || c.RopeLayout != RopeLayout.Adjacent || c.RopeTheta != 10000f || c.NormEps != 1e-5f)
        {
            throw new ArgumentException($"A llama2.c checkpoint fixes head_dim = dim / n_heads, adjacent RoPE pairs, rope_theta 10000 and norm_eps 1e-5; this model has head_dim {c.HeadDim} (dim {c.Dim} / {c.Heads} heads), {c.RopeLayout} pairs, rope_theta {c.RopeTheta}, norm_eps {c.NormEps}: keep it in GGUF.", nameof(weights));
        }

        // The header: magic, version 1, the seven fields, the shared-classifier byte, zero padding.
        byte[] header = new byte[Version1HeaderBytes];
        BitConverter.TryWriteBytes(header.AsSpan(0), Version1Magic);
        BitConverter.TryWriteBytes(header.AsSpan(4), 1);
        int[] fields = [c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.VocabSize, c.SeqLen];
        for (int i = 0; i < fields.Length; i++)
        {
            BitConverter.TryWriteBytes(header.AsSpan(8 + (i * sizeof(int))), fields[i]);
        }

        header[8 + LegacyHeaderBytes] = c.SharedClassifier ? (byte)1 : (byte)0;

        // The tensors in the version-1 order, each widened to float32.
        IReadOnlyList<LlamaLayerWeights> layers = weights.Layers;
        IEnumerable<Tensor> order =
        [
            .. layers.Select(static l => l.AttentionNorm),
            .. layers.Select(static l => l.FfnNorm),
            weights.FinalNorm,
            weights.TokenEmbedding,
            .. layers.Select(static l => l.Wq),
            .. layers.Select(static l => l.Wk),
            .. layers.Select(static l => l.Wv),
            .. layers.Select(static l => l.Wo),
            .. layers.Select(static l => l.W1),
            .. layers.Select(static l => l.W2),
            .. layers.Select(static l => l.W3),
            .. c.SharedClassifier ? Array.Empty<Tensor>() : [weights.Classifier],
        ];
        using FileStream stream = new(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        stream.Write(header);
        foreach (Tensor tensor in order)
        {
            float[] values = tensor.ToArray();
            stream.Write(MemoryMarshal.AsBytes(values.AsSpan()));
        }
    }

    private static void ReadLegacy(FileStream stream, LlamaWeights weights)
    {
        // Kind-major order: all layers of one tensor kind, then the next kind.
        IReadOnlyList<LlamaLayerWeights> layers = weights.Layers;
        ReadTensor(stream, weights.TokenEmbedding);
        ReadEach(stream, layers, static layer => layer.AttentionNorm);
        ReadEach(stream, layers, static layer => layer.Wq);
        ReadEach(stream, layers, static layer => layer.Wk);
        ReadEach(stream, layers, static layer => layer.Wv);
        ReadEach(stream, layers, static layer => layer.Wo);
        ReadEach(stream, layers, static layer => layer.FfnNorm);
        ReadEach(stream, layers, static layer => layer.W1);
        ReadEach(stream, layers, static layer => layer.W2);
        ReadEach(stream, layers, static layer => layer.W3);
        ReadTensor(stream, weights.FinalNorm);

        // Skip the two obsolete RoPE tables (cos and sin, [S, Dh / 2] each): Kiln computes the angles itself.
        LlamaConfig config = weights.Config;
        stream.Seek((long)config.SeqLen * config.HeadDim * sizeof(float), SeekOrigin.Current);
        if (!config.SharedClassifier)
        {
            ReadTensor(stream, weights.Classifier);
        }
    }

    private static void ReadVersion1(FileStream stream, LlamaWeights weights)
    {
        // Norms first, then the embedding, then the matrices kind by kind.
        IReadOnlyList<LlamaLayerWeights> layers = weights.Layers;
        ReadEach(stream, layers, static layer => layer.AttentionNorm);
        ReadEach(stream, layers, static layer => layer.FfnNorm);
        ReadTensor(stream, weights.FinalNorm);
        ReadTensor(stream, weights.TokenEmbedding);
        ReadEach(stream, layers, static layer => layer.Wq);
        ReadEach(stream, layers, static layer => layer.Wk);
        ReadEach(stream, layers, static layer => layer.Wv);
        ReadEach(stream, layers, static layer => layer.Wo);
        ReadEach(stream, layers, static layer => layer.W1);
        ReadEach(stream, layers, static layer => layer.W2);
        ReadEach(stream, layers, static layer => layer.W3);
        if (!weights.Config.SharedClassifier)
        {
            ReadTensor(stream, weights.Classifier);
        }
    }

    private static void ReadEach(
        FileStream stream,
        IReadOnlyList<LlamaLayerWeights> layers,
        Func<LlamaLayerWeights, Tensor> select)
    {
        foreach (LlamaLayerWeights layer in layers)
        {
            ReadTensor(stream, select(layer));
        }
    }

    private static unsafe void ReadTensor(FileStream stream, Tensor tensor)
    {
        long byteCount = tensor.Length * sizeof(float);
        if (tensor.Device is CpuDevice)
        {
            // Read straight into the tensor's native memory, in pieces that fit a span.
            byte* destination = (byte*)tensor.DataPointer;
            for (long done = 0; done < byteCount; done += ReadChunkBytes)
            {
                int count = (int)Math.Min(ReadChunkBytes, byteCount - done);
                stream.ReadExactly(new Span<byte>(destination + done, count));
            }
        }
        else
        {
            // Other devices: stage on the host, then copy once.
            float[] staging = new float[tensor.Length];
            stream.ReadExactly(MemoryMarshal.AsBytes(staging.AsSpan()));
            tensor.CopyFrom(staging);
        }
    }

    private static FileStream OpenRead(string path)
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("llama2.c checkpoints are little-endian; Kiln reads them on little-endian machines only.");
        }

        if (Directory.Exists(path))
        {
            throw Fail(path, "is a directory; pass the path of the checkpoint file inside it (a llama2.c .bin)");
        }

        if (!File.Exists(path))
        {
            throw Fail(path, "does not exist; check the path (a llama2.c .bin checkpoint is expected)");
        }

        try
        {
            return new FileStream(
                path,
                FileMode.Open,
                FileAccess.Read,
                FileShare.Read,
                bufferSize: 1 << 16,
                FileOptions.SequentialScan);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"model file '{path}' could not be opened ({OneLine(e.Message)}); check its permissions.", e);
        }
    }

    private static int Field(
        string path,
        ReadOnlySpan<byte> header,
        int offset,
        int index,
        string name,
        int max,
        bool allowNegative = false)
    {
        int value = ReadInt32(header, offset + (index * sizeof(int)));
        int magnitude = allowNegative && value < 0 && value != int.MinValue ? -value : value;
        if (magnitude < 1 || magnitude > max)
        {
            throw Fail(path, $"has header field {name} = {value}, outside the valid range 1..{max}; the file is corrupt or not a llama2.c checkpoint");
        }

        return value;
    }

    private static int ReadInt32(ReadOnlySpan<byte> bytes, int offset) =>
        BitConverter.ToInt32(bytes.Slice(offset, sizeof(int)));

    private static uint ReadUInt32(ReadOnlySpan<byte> bytes, int offset) =>
        BitConverter.ToUInt32(bytes.Slice(offset, sizeof(uint)));

    private static ModelFormatException Fail(string path, string problem) => new(path, $"model file '{path}' {problem}.");

    private static string OneLine(string text) => text.ReplaceLineEndings(" ").Trim();
}
