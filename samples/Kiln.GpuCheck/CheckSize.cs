// The shapes of every section for --size small (tiny, so that the whole check runs in seconds on ILGPU's CPU
// accelerator in CI) and --size full (the real GPU sizes: tensors of hundreds of MiB, well beyond the H200's
// 50 MB L2, so that the bandwidth figures measure HBM). Small shapes are deliberately not multiples of the warp
// size (32) or of the matrix product's tiles (32 on the test accelerator, 64 on GPUs).

using Kiln.Kernels;
using Kiln.Models.Dsa;
using Kiln.Models.Llama;

namespace Kiln.GpuCheck;

/// <summary>The shapes and repetition counts of one --size.</summary>
internal sealed record CheckSize
{
    /// <summary>The name given to --size.</summary>
    public required string Name { get; init; }

    /// <summary>Tokens T and width D of the correctness checks of the row and pointwise ops.</summary>
    public required (int Tokens, int Dim) Ops { get; init; }

    /// <summary>Rows and row length of the softmax correctness check (a vocabulary-wide softmax).</summary>
    public required (int Rows, int Length) SoftmaxRows { get; init; }

    /// <summary>Tokens T, heads H and head width Dh of the RoPE correctness check, and its first position.</summary>
    public required (int Tokens, int Heads, int HeadDim, int Start) Rope { get; init; }

    /// <summary>N and K of the matrix-product correctness checks, and the row counts M tried (1, small, large).</summary>
    public required (int N, int K, int[] Rows) MatMul { get; init; }

    /// <summary>
    /// The DSA kernel checks: query tokens T, indexer heads Hi, indexer head width Di (ropeDims rotated), cache
    /// positions S before the tokens, and the selection's K (attention heads from <see cref="Model"/>).
    /// </summary>
    public required (int Tokens, int Heads, int HeadDim, int RopeDims, int Prefix, int K) Dsa { get; init; }

    /// <summary>The DSA decode measurement of the model section: the context prefilled, then decode steps timed.</summary>
    public required (int Context, int Steps) DsaDecode { get; init; }

    /// <summary>The DSA model of that measurement (random weights, all layers Full), seq_len covering it.</summary>
    public required DsaConfig DsaModel { get; init; }

    /// <summary>Bytes of the device-to-device copy that measures the copy bandwidth.</summary>
    public required long CopyBytes { get; init; }

    /// <summary>Rows T and width D of the row ops (RmsNorm, Softmax) in the bandwidth section.</summary>
    public required (int Rows, int Dim) BandwidthRows { get; init; }

    /// <summary>Elements of the pointwise ops (Add, SiluMul) in the bandwidth section.</summary>
    public required int BandwidthElements { get; init; }

    /// <summary>Tokens T, heads H, head width Dh of RoPE in the bandwidth section.</summary>
    public required (int Tokens, int Heads, int HeadDim) BandwidthRope { get; init; }

    /// <summary>N and K of the matrix-vector product (M = 1) in the bandwidth section.</summary>
    public required (int N, int K) BandwidthMatVec { get; init; }

    /// <summary>Repetitions of the bandwidth measurements.</summary>
    public required Repeat BandwidthRepeat { get; init; }

    /// <summary>(M, N, K) of the matrix products in the compute section.</summary>
    public required (int M, int N, int K)[] ComputeShapes { get; init; }

    /// <summary>Repetitions of the compute measurements.</summary>
    public required Repeat ComputeRepeat { get; init; }

    /// <summary>The Llama-shaped model of the model section (random weights).</summary>
    public required LlamaConfig Model { get; init; }

    /// <summary>Prompt tokens for the prefill measurement and decode steps after it.</summary>
    public required (int Prompt, int Decode) ModelTokens { get; init; }

    /// <summary>Timed repetitions of the model measurements (after one warm-up).</summary>
    public required int ModelRepetitions { get; init; }

    /// <summary>The weight dtypes the model section runs (small: one, since each ILGPU decode step on the CPU
    /// accelerator takes seconds).</summary>
    public required DType[] ModelDTypes { get; init; }

    /// <summary>Tiny shapes for ILGPU's CPU accelerator (CI, dry runs): seconds in all.</summary>
    public static CheckSize Small { get; } = new()
    {
        Name = "small",
        Ops = (3, 37),
        SoftmaxRows = (2, 45),
        Rope = (3, 2, 10, 5),
        MatMul = (33, 40, [1, 5, 37]),
        Dsa = (3, 3, 20, 8, 41, 7),
        DsaDecode = (8, 2),
        DsaModel = new DsaConfig
        {
            Llama = new LlamaConfig { Dim = 64, HiddenDim = 96, Layers = 1, Heads = 4, KvHeads = 2, HeadDim = 16, VocabSize = 97, SeqLen = 11 },
            IndexerHeads = 2,
            IndexerHeadDim = 8,
            IndexerRopeDims = 4,
            TopK = 7,
            IndexerRopeLayout = RopeLayout.HalfSplit,
            Pattern = IndexCachePattern.AllFull(1),
        },
        CopyBytes = 1 << 20,
        BandwidthRows = (4, 200),
        BandwidthElements = 1000,
        BandwidthRope = (4, 2, 16),
        BandwidthMatVec = (40, 100),
        BandwidthRepeat = new Repeat(1, 2, 1),
        ComputeShapes = [(37, 33, 40)],
        ComputeRepeat = new Repeat(1, 2, 1),
        Model = new LlamaConfig
        {
            Dim = 64, HiddenDim = 176, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 16, VocabSize = 97, SeqLen = 32,
        },
        ModelTokens = (5, 2),
        ModelRepetitions = 1,
        ModelDTypes = [DType.Float16],
    };

    /// <summary>
    /// The real GPU sizes. The model is Llama 3.2 1B's shape (D 2048, F 8192, 16 layers, 32 heads, 8 key/value
    /// heads, Dh 64, V 128256, classifier shared with the embedding): 1,235,814,400 parameters.
    /// </summary>
    public static CheckSize Full { get; } = new()
    {
        Name = "full",
        Ops = (61, 4099),
        SoftmaxRows = (7, 32003),
        Rope = (37, 32, 128, 101),
        MatMul = (4099, 2053, [1, 7, 517]),
        Dsa = (37, 64, 128, 64, 8155, 2048),
        DsaDecode = (32768, 64),
        DsaModel = new DsaConfig
        {
            Llama = new LlamaConfig { Dim = 512, HiddenDim = 1024, Layers = 8, Heads = 8, KvHeads = 2, HeadDim = 64, VocabSize = 512, SeqLen = 32768 + 65 },
            IndexerHeads = 32,
            IndexerHeadDim = 128,
            IndexerRopeDims = 64,
            TopK = 2048,
            IndexerRopeLayout = RopeLayout.HalfSplit,
            Pattern = IndexCachePattern.AllFull(8),
        },
        CopyBytes = 1L << 30,
        BandwidthRows = (16384, 4096),
        BandwidthElements = 1 << 26,
        BandwidthRope = (16384, 32, 128),
        BandwidthMatVec = (16384, 8192),
        BandwidthRepeat = new Repeat(3, 7, 10),
        ComputeShapes = [(4096, 4096, 4096), (8192, 4096, 4096)],
        ComputeRepeat = new Repeat(2, 5, 3),
        Model = new LlamaConfig
        {
            Dim = 2048, HiddenDim = 8192, Layers = 16, Heads = 32, KvHeads = 8, HeadDim = 64, VocabSize = 128256,
            SeqLen = 1024, RopeTheta = 500000f,
        },
        ModelTokens = (512, 128),
        ModelRepetitions = 3,
        ModelDTypes = [DType.Float16, DType.Float32],
    };

    /// <summary>The size named <paramref name="name"/>, or null.</summary>
    public static CheckSize? Find(string name) => name.ToLowerInvariant() switch
    {
        "small" => Small,
        "full" => Full,
        _ => null,
    };
}
