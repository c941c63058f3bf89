// The `llama` architecture of GGUF files (general.architecture = "llama"), read into and written from LlamaWeights.
//
// Config keys (prefix "llama."): context_length → seq_len, embedding_length → dim, block_count → n_layers,
// feed_forward_length → hidden_dim, attention.head_count → n_heads, attention.head_count_kv → n_kv_heads (default
// n_heads), attention.key_length → head_dim (default dim / n_heads), rope.dimension_count (must equal head_dim: Kiln
// rotates whole heads), attention.layer_norm_rms_epsilon → norm_eps, rope.freq_base → rope_theta (default 10000), and
// the vocabulary size from llama.vocab_size, else the length of tokenizer.ggml.tokens, else token_embd's rows.
//
// Tensors, [out, in] in Kiln's order (GGUF writes the dims reversed, [in, out], innermost first; only the order of the
// numbers differs, the bytes are the same row-major matrix): token_embd [V, D]; per block N blk.N.attn_norm [D],
// attn_q [H·Dh, D], attn_k and attn_v [Hkv·Dh, D], attn_output [D, H·Dh], ffn_norm [D], ffn_gate (w1) [F, D], ffn_down
// (w2) [D, F], ffn_up (w3) [F, D]; output_norm [D]; output [V, D], absent when the classifier is tied to token_embd.
// Every name ends in ".weight". A tensor the llama architecture does not have (rope_freqs, biases, ...) is an error
// rather than silently ignored, since dropping it would change the model.
//
// RoPE: llama.cpp's `llama` architecture uses its "normal" rope, which rotates adjacent pairs (2i, 2i+1) of each head:
// the layout of llama2.c and Meta's checkpoints (RopeLayout.Adjacent). Hugging Face checkpoints use half-split pairs;
// llama.cpp's converter permutes their attn_q/attn_k rows into the adjacent order, so every `llama` GGUF file is
// adjacent. The stories260K conversion test checks it end to end (its greedy text equals llama2.c's).
//
// Dtypes: matrices in F32, F16, BF16 or Q8_0 are kept in their dtype when they all share it (LlamaWeights holds one
// matrix dtype; Q8_0 stays in its blocks, which the matrix product and embedding lookup read directly on every device);
// a file mixing them is widened to float32 (exact: Q8_0 dequantizes to scale · int8). Norms are
// always float32. The other quantized types are refused with a hint to convert.

using Kiln.Devices;
using Kiln.Kernels;
using Kiln.Models.Llama;
using Kiln.Models.Tokenizers;

namespace Kiln.Models.Formats;

/// <summary>Reads and writes Llama models as GGUF files (<c>general.architecture = llama</c>).</summary>
public static class GgufLlama
{
    /// <summary>The architecture name.</summary>
    public const string Architecture = "llama";

    /// <summary>llama.cpp's <c>general.file_type</c> codes for the matrix types Kiln writes.</summary>
    public static uint FileType(GgufTensorType matrices) => matrices switch
    {
        GgufTensorType.F32 => 0,
        GgufTensorType.F16 => 1,
        GgufTensorType.Q8_0 => 7,
        GgufTensorType.BF16 => 32,
        _ => throw new ArgumentException($"Kiln writes llama matrices as F32, F16, BF16 or Q8_0, not {matrices.Name()}.", nameof(matrices)),
    };

    /// <summary>Whether <paramref name="file"/> declares the llama architecture.</summary>
    public static bool IsLlama(GgufFile file) => file.Find("general.architecture") is { Type: GgufValueType.String } value && (string)value.Value == Architecture;

    /// <summary>Reads the llama config of <paramref name="file"/> (no tensor data is read; the shapes are checked).</summary>
    /// <exception cref="ModelFormatException">
    /// Another architecture, a missing or out-of-range key, a RoPE Kiln does not run, or a tensor whose shape does not
    /// fit the config.
    /// </exception>
    public static LlamaConfig ReadConfig(GgufFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        string path = file.Path;
        RequireLlama(file);

        // The sizes, bounded so that no product overflows (the tensor shapes are checked against them below).
        const long maxDim = 1 << 20;
        int dim = (int)file.GetInteger("llama.embedding_length", 1, maxDim);
        int hidden = (int)file.GetInteger("llama.feed_forward_length", 1, maxDim);
        int layers = (int)file.GetInteger("llama.block_count", 1, 4096);
        int heads = (int)file.GetInteger("llama.attention.head_count", 1, dim);
        int kvHeads = (int)file.GetInteger("llama.attention.head_count_kv", heads, 1, heads);
        int seqLen = (int)file.GetInteger("llama.context_length", 1, int.MaxValue);
        int headDim = (int)file.GetInteger("llama.attention.key_length", dim / heads, 1, maxDim);
        if (file.Contains("llama.attention.value_length") && file.GetInteger("llama.attention.value_length") != headDim)
        {
            throw Fail(path, $"has llama.attention.value_length {file.GetInteger("llama.attention.value_length")} different from the key length {headDim}", "Kiln runs llama models whose keys and values have the same width");
        }

        long ropeDims = file.GetInteger("llama.rope.dimension_count", headDim, 1, maxDim);
        if (ropeDims != headDim)
        {
            throw Fail(path, $"rotates {ropeDims} of the {headDim} dimensions of each head (llama.rope.dimension_count)", "Kiln's RoPE rotates whole heads only; this model is not supported yet");
        }

        if (file.Find("llama.rope.scaling.type") is { } scaling && !(scaling.Value is string kind && kind is "none" or ""))
        {
            throw Fail(path, $"uses RoPE scaling '{scaling}' (llama.rope.scaling.type)", "Kiln does not apply RoPE scaling yet; this model is not supported");
        }

        float eps = Float(file, "llama.attention.layer_norm_rms_epsilon", null);
        float theta = Float(file, "llama.rope.freq_base", 10000f);

        // The vocabulary size: the explicit key, else the token list, else the embedding's rows.
        GgufTensorInfo embedding = file.GetTensor("token_embd.weight");
        long vocab = file.Contains("llama.vocab_size") ? file.GetInteger("llama.vocab_size", 1, int.MaxValue)
            : file.Contains("tokenizer.ggml.tokens") ? file.GetArray<string>("tokenizer.ggml.tokens").Length
            : embedding.Dims.Length == 2 ? embedding.Dims[1] : 0;
        if (vocab < 1 || vocab > int.MaxValue)
        {
            throw Fail(path, $"has no usable vocabulary size (llama.vocab_size, tokenizer.ggml.tokens and token_embd.weight give {vocab})", "convert the model again");
        }

        LlamaConfig config = new()
        {
            Dim = dim,
            HiddenDim = hidden,
            Layers = layers,
            Heads = heads,
            KvHeads = kvHeads,
            VocabSize = (int)vocab,
            SeqLen = seqLen,
            HeadDim = headDim,
            NormEps = eps,
            RopeTheta = theta,
            RopeLayout = RopeLayout.Adjacent,
            SharedClassifier = file.FindTensor("output.weight") is null,
        };
        try
        {
            config.Validate();
        }
        catch (ArgumentException e)
        {
            throw Fail(path, $"has an inconsistent llama config: {e.Message.TrimEnd('.')}", "the file is damaged or the model is not supported");
        }

        if (heads % kvHeads != 0)
        {
            throw Fail(path, $"has {heads} attention heads not divisible by {kvHeads} key/value heads", "the file is damaged");
        }

        if ((long)config.VocabSize * dim > Tensor.MaxElements || (long)hidden * dim > Tensor.MaxElements || (long)config.QueryDim * dim > Tensor.MaxElements)
        {
            throw Fail(path, $"declares a matrix of more than {Tensor.MaxElements} elements (vocab {config.VocabSize}, hidden {hidden}, dim {dim})", "the model is too large for one Kiln tensor");
        }

        // Every tensor present, of the right shape and a type Kiln can hold; nothing else.
        Dictionary<string, int[]> expected = ExpectedShapes(config);
        foreach ((string name, int[] shape) in expected)
        {
            GgufTensorInfo tensor = file.GetTensor(name);
            if (!tensor.Dims.Reverse().SequenceEqual(shape.Select(static d => (long)d)))
            {
                throw Fail(path, $"has tensor '{name}' of shape {tensor.ShapeText}, but the llama config (dim {dim}, hidden {hidden}, heads {heads}/{kvHeads}, head dim {headDim}, vocab {config.VocabSize}) needs [{string.Join(", ", shape)}]", "the file is damaged or its metadata does not match its tensors");
            }
        }

        foreach (GgufTensorInfo tensor in file.Tensors)
        {
            if (!expected.ContainsKey(tensor.Name))
            {
                throw Fail(path, $"has tensor '{tensor.Name}', which Kiln's llama model does not use", "the model has parts Kiln does not run yet (ignoring them would change its output)");
            }
        }

        return config;
    }

    /// <summary>
    /// Loads the llama model in the GGUF file at <paramref name="path"/> onto <paramref name="device"/> (cpu when null).
    /// The config is <c>weights.Config</c>.
    /// </summary>
    /// <exception cref="ModelFormatException">The file is unreadable, malformed, not llama, or holds quantized matrices
    /// other than Q8_0.</exception>
    /// <exception cref="ArgumentException"><paramref name="attentionResiduals"/> does not fit the model.</exception>
    /// <remarks>
    /// With <paramref name="attentionResiduals"/> the model gets the Block Attention Residuals option, whose vectors
    /// start at their defaults (queries zero, gains one): GGUF has no names for them.
    /// </remarks>
    public static LlamaWeights Load(string path, Device? device = null, AttentionResidualsConfig? attentionResiduals = null) =>
        Load(GgufFile.Open(path), device, attentionResiduals);

    /// <summary>Loads the llama model of an opened GGUF file; see <see cref="Load(string, Device?, AttentionResidualsConfig?)"/>.</summary>
    public static LlamaWeights Load(GgufFile file, Device? device = null, AttentionResidualsConfig? attentionResiduals = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        LlamaConfig config = ReadConfig(file) with { AttentionResiduals = attentionResiduals };
        DType dtype = MatrixDType(file, config);
        // Fill CPU weights tensor by tensor (on the CPU device asked for, with its thread count), then move them when
        // another device was asked for.
        CpuDevice cpu = device as CpuDevice ?? CpuDevice.Default;
        LlamaWeights weights = LlamaWeights.Allocate(config, cpu, dtype);
        try
        {
            Fill(file, "token_embd.weight", weights.TokenEmbedding);
            for (int l = 0; l < config.Layers; l++)
            {
                LlamaLayerWeights layer = weights.Layers[l];
                foreach ((string suffix, Tensor tensor) in LayerTensors(layer))
                {
                    Fill(file, $"blk.{l}.{suffix}.weight", tensor);
                }
            }

            Fill(file, "output_norm.weight", weights.FinalNorm);
            if (!config.SharedClassifier)
            {
                Fill(file, "output.weight", weights.Classifier);
            }

            if (device is null || device is CpuDevice)
            {
                return weights;
            }

            using (weights)
            {
                return weights.To(device);
            }
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Writes <paramref name="weights"/> (and the vocabulary of <paramref name="tokenizer"/> when given) as a llama GGUF
    /// file with the keys and tensor names llama.cpp reads, matrices stored as <paramref name="matrices"/> (F32, F16,
    /// BF16 or Q8_0; norms stay F32).
    /// </summary>
    /// <exception cref="ArgumentException">
    /// The type is not one Kiln writes, the tokenizer does not match the vocabulary size, or (Q8_0) a matrix's inner
    /// dimension is not a multiple of 32; the message names the tensor.
    /// </exception>
    public static void Write(string path, LlamaWeights weights, Llama2cTokenizer? tokenizer, GgufTensorType matrices, string name = "kiln")
    {
        GgufWriter writer = CreateWriter(weights, tokenizer, matrices, name);
        writer.Write(path);
    }

    /// <summary>The writer <see cref="Write"/> fills (for callers that add metadata before writing).</summary>
    public static GgufWriter CreateWriter(LlamaWeights weights, Llama2cTokenizer? tokenizer, GgufTensorType matrices, string name = "kiln")
    {
        ArgumentNullException.ThrowIfNull(weights);
        LlamaConfig c = weights.Config;
        uint fileType = FileType(matrices);
        if (tokenizer is not null && tokenizer.VocabSize != c.VocabSize)
        {
            throw new ArgumentException($"The tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary is {c.VocabSize}; pass the model's own tokenizer.", nameof(tokenizer));
        }

        if (c.AttentionResiduals is not null)
        {
            throw new ArgumentException("GGUF has no tensor names for the attention residuals' vectors; write the model without the option.", nameof(weights));
        }

        if (c.RopeLayout != RopeLayout.Adjacent)
        {
            throw new ArgumentException("GGUF llama models rotate adjacent RoPE pairs; this model uses half-split pairs, whose q/k rows would need permuting first.", nameof(weights));
        }

        // The general keys and the llama hyper-parameters.
        GgufWriter writer = new();
        writer.Add("general.architecture", GgufValue.String(Architecture));
        writer.Add("general.name", GgufValue.String(name));
        writer.Add("general.file_type", GgufValue.UInt32(fileType));
        writer.Add("llama.context_length", GgufValue.UInt32((uint)c.SeqLen));
        writer.Add("llama.embedding_length", GgufValue.UInt32((uint)c.Dim));
        writer.Add("llama.block_count", GgufValue.UInt32((uint)c.Layers));
        writer.Add("llama.feed_forward_length", GgufValue.UInt32((uint)c.HiddenDim));
        writer.Add("llama.attention.head_count", GgufValue.UInt32((uint)c.Heads));
        writer.Add("llama.attention.head_count_kv", GgufValue.UInt32((uint)c.KvHeads));
        if (c.HeadDim * c.Heads != c.Dim)
        {
            writer.Add("llama.attention.key_length", GgufValue.UInt32((uint)c.HeadDim));
            writer.Add("llama.attention.value_length", GgufValue.UInt32((uint)c.HeadDim));
        }

        writer.Add("llama.rope.dimension_count", GgufValue.UInt32((uint)c.HeadDim));
        writer.Add("llama.attention.layer_norm_rms_epsilon", GgufValue.Float32(c.NormEps));
        writer.Add("llama.rope.freq_base", GgufValue.Float32(c.RopeTheta));
        writer.Add("llama.vocab_size", GgufValue.UInt32((uint)c.VocabSize));
        if (tokenizer is not null)
        {
            AddVocabulary(writer, tokenizer);
        }

        // The tensors in llama.cpp's order; matrices in the chosen type, norms in F32.
        void Matrix(string tensorName, Tensor tensor)
        {
            if (matrices == GgufTensorType.Q8_0 && tensor.Shape[^1] % Q8_0Blocks.BlockElements != 0)
            {
                throw new ArgumentException($"Tensor '{tensorName}' has rows of {tensor.Shape[^1]} values, not a multiple of the 32-value Q8_0 block; write this model as f16 or f32.", nameof(matrices));
            }

            writer.AddTensor(tensorName, tensor, matrices);
        }

        Matrix("token_embd.weight", weights.TokenEmbedding);
        for (int l = 0; l < c.Layers; l++)
        {
            foreach ((string suffix, Tensor tensor) in LayerTensors(weights.Layers[l]))
            {
                string tensorName = $"blk.{l}.{suffix}.weight";
                if (tensor.Rank == 1)
                {
                    writer.AddTensor(tensorName, tensor, GgufTensorType.F32);
                }
                else
                {
                    Matrix(tensorName, tensor);
                }
            }
        }

        writer.AddTensor("output_norm.weight", weights.FinalNorm, GgufTensorType.F32);
        if (!c.SharedClassifier)
        {
            Matrix("output.weight", weights.Classifier);
        }

        return writer;
    }

    /// <summary>
    /// Adds the vocabulary of a llama2.c tokenizer as a GGUF <c>llama</c> tokenizer: ids 0/1/2 become &lt;unk&gt;
    /// (unknown), &lt;s&gt; and &lt;/s&gt; (control), byte pieces "&lt;0xHH&gt;" keep their text (type byte), every
    /// other piece has its spaces spelled '▁' (normal); the scores are copied; BOS 1, EOS 2, unknown 0, BOS added.
    /// </summary>
    public static void AddVocabulary(GgufWriter writer, Llama2cTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        ArgumentNullException.ThrowIfNull(tokenizer);
        int count = tokenizer.VocabSize;
        string[] tokens = new string[count];
        float[] scores = new float[count];
        int[] types = new int[count];
        for (int id = 0; id < count; id++)
        {
            ReadOnlySpan<byte> piece = tokenizer.Piece(id);
            scores[id] = tokenizer.Score(id);
            (tokens[id], types[id]) = id switch
            {
                Llama2cTokenizer.UnknownId => ("<unk>", (int)GgufTokenType.Unknown),
                Llama2cTokenizer.BeginId => ("<s>", (int)GgufTokenType.Control),
                Llama2cTokenizer.EndId => ("</s>", (int)GgufTokenType.Control),
                _ when ScoredPieces.TryParseBytePiece(piece, out _) => (System.Text.Encoding.UTF8.GetString(piece), (int)GgufTokenType.Byte),
                _ => (System.Text.Encoding.UTF8.GetString(piece).Replace(' ', '\u2581'), (int)GgufTokenType.Normal),
            };
        }

        writer.Add("tokenizer.ggml.model", GgufValue.String(LlamaSpmTokenizer.ModelName));
        writer.Add("tokenizer.ggml.tokens", GgufValue.Array(tokens));
        writer.Add("tokenizer.ggml.scores", GgufValue.Array(scores));
        writer.Add("tokenizer.ggml.token_type", GgufValue.Array(types));
        writer.Add("tokenizer.ggml.bos_token_id", GgufValue.UInt32(Llama2cTokenizer.BeginId));
        writer.Add("tokenizer.ggml.eos_token_id", GgufValue.UInt32(Llama2cTokenizer.EndId));
        writer.Add("tokenizer.ggml.unknown_token_id", GgufValue.UInt32(Llama2cTokenizer.UnknownId));
        writer.Add("tokenizer.ggml.add_bos_token", GgufValue.Bool(true));
        writer.Add("tokenizer.ggml.add_eos_token", GgufValue.Bool(false));
    }

    /// <summary>
    /// The bytes of a llama2.c tokenizer file (tok*.bin) for a GGUF <c>llama</c> vocabulary: the reverse of
    /// <see cref="AddVocabulary"/>, with BOS and EOS written "\n&lt;s&gt;\n" and "\n&lt;/s&gt;\n" as llama2.c's export does,
    /// so a tok*.bin converted to GGUF and back is the same file.
    /// </summary>
    public static byte[] Llama2cTokenizerBytes(LlamaSpmTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        List<byte[]> pieces = new(tokenizer.VocabSize);
        for (int id = 0; id < tokenizer.VocabSize; id++)
        {
            string text = id == tokenizer.BosId ? "\n<s>\n" : id == tokenizer.EosId ? "\n</s>\n" : tokenizer.Tokens[id].Replace('\u2581', ' ');
            pieces.Add(System.Text.Encoding.UTF8.GetBytes(text));
        }

        using MemoryStream stream = new();
        using (BinaryWriter writer = new(stream))
        {
            writer.Write(Math.Max(1, pieces.Max(static p => p.Length)));
            for (int id = 0; id < pieces.Count; id++)
            {
                writer.Write(tokenizer.Scores[id]);
                writer.Write(pieces[id].Length);
                writer.Write(pieces[id]);
            }
        }

        return stream.ToArray();
    }

    // The per-layer tensors with their GGUF names, in llama.cpp's order.
    private static IEnumerable<(string Suffix, Tensor Tensor)> LayerTensors(LlamaLayerWeights layer) =>
    [
        ("attn_norm", layer.AttentionNorm),
        ("attn_q", layer.Wq),
        ("attn_k", layer.Wk),
        ("attn_v", layer.Wv),
        ("attn_output", layer.Wo),
        ("ffn_norm", layer.FfnNorm),
        ("ffn_gate", layer.W1),
        ("ffn_down", layer.W2),
        ("ffn_up", layer.W3),
    ];

    // Every tensor name of the config with its shape, outermost first.
    private static Dictionary<string, int[]> ExpectedShapes(LlamaConfig c)
    {
        Dictionary<string, int[]> shapes = new(StringComparer.Ordinal)
        {
            ["token_embd.weight"] = [c.VocabSize, c.Dim],
            ["output_norm.weight"] = [c.Dim],
        };
        for (int l = 0; l < c.Layers; l++)
        {
            shapes[$"blk.{l}.attn_norm.weight"] = [c.Dim];
            shapes[$"blk.{l}.attn_q.weight"] = [c.QueryDim, c.Dim];
            shapes[$"blk.{l}.attn_k.weight"] = [c.KvDim, c.Dim];
            shapes[$"blk.{l}.attn_v.weight"] = [c.KvDim, c.Dim];
            shapes[$"blk.{l}.attn_output.weight"] = [c.Dim, c.QueryDim];
            shapes[$"blk.{l}.ffn_norm.weight"] = [c.Dim];
            shapes[$"blk.{l}.ffn_gate.weight"] = [c.HiddenDim, c.Dim];
            shapes[$"blk.{l}.ffn_down.weight"] = [c.Dim, c.HiddenDim];
            shapes[$"blk.{l}.ffn_up.weight"] = [c.HiddenDim, c.Dim];
        }

        if (!c.SharedClassifier)
        {
            shapes["output.weight"] = [c.VocabSize, c.Dim];
        }

        return shapes;
    }

    // The dtype LlamaWeights holds the matrices in: their common F32/F16/BF16 type, float32 when they are mixed.
    private static DType MatrixDType(GgufFile file, LlamaConfig config)
    {
        HashSet<GgufTensorType> types = [];
        foreach ((string name, int[] shape) in ExpectedShapes(config))
        {
            GgufTensorInfo tensor = file.GetTensor(name);
            if (tensor.Type is not (GgufTensorType.F32 or GgufTensorType.F16 or GgufTensorType.BF16 or GgufTensorType.Q8_0)
                || (shape.Length == 1 && tensor.Type == GgufTensorType.Q8_0))
            {
                throw Fail(file.Path, $"has tensor '{name}' in {tensor.Type.Name()}", "Kiln reads F32, F16 and BF16 tensors and Q8_0 matrices: convert the model with --dtype f32, f16 or q8_0 (llama.cpp's llama-quantize can write Q8_0)");
            }

            if (shape.Length == 2)
            {
                types.Add(tensor.Type);
            }
        }

        return types.Count != 1 ? DType.Float32 : types.Single() switch
        {
            GgufTensorType.F16 => DType.Float16,
            GgufTensorType.BF16 => DType.BFloat16,
            GgufTensorType.Q8_0 => DType.Q8_0,
            _ => DType.Float32,
        };
    }

    private static void Fill(GgufFile file, string name, Tensor destination) => file.ReadInto(file.GetTensor(name), destination);

    private static float Float(GgufFile file, string key, float? fallback)
    {
        if (!file.Contains(key) && fallback is float value)
        {
            return value;
        }

        float number = file.GetFloat32(key);
        if (!(number > 0) || !float.IsFinite(number))
        {
            throw Fail(file.Path, $"has {key} = {number}", "it must be a positive finite number; the file is damaged");
        }

        return number;
    }

    private static void RequireLlama(GgufFile file)
    {
        string architecture = file.GetString("general.architecture");
        if (architecture != Architecture)
        {
            throw Fail(file.Path, $"is a '{architecture}' model (general.architecture)", "Kiln runs the 'llama' architecture from GGUF files; other architectures are not supported yet");
        }
    }

    private static ModelFormatException Fail(string path, string problem, string fix) => GgufFile.Fail(path, problem, fix);
}
