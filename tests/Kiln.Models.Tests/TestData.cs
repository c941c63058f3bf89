// Where the tests find the shared, read-only model files: walk up from the test assembly to the directory that
// holds Framework.sln (the repository root), then ../shared. Also the reference values of
// ../shared/reference/stories260K-greedy.md, written out here as the test's expectations.

using Kiln.Models.Formats;
using Kiln.Models.Llama;
using Kiln.Models.Tokenizers;

namespace Kiln.Models.Tests;

/// <summary>Paths of the shared test models and a cache of the loaded ones (read-only, shared by tests).</summary>
internal static class TestData
{
    private static readonly Lazy<string> s_shared = new(FindShared);
    private static readonly Lazy<LlamaWeights> s_stories = new(() => Llama2cCheckpoint.Load(StoriesModel));
    private static readonly Lazy<Llama2cTokenizer> s_storiesTokenizer = new(() => Llama2cTokenizer.Load(StoriesTokenizer, 512));
    private static readonly Lazy<LlamaWeights> s_aidreams = new(() => Llama2cCheckpoint.Load(AidreamsModel));
    private static readonly Lazy<Llama2cTokenizer> s_aidreamsTokenizer = new(() => Llama2cTokenizer.Load(AidreamsTokenizer, 512));

    /// <summary>The shared directory (../shared from the repository root).</summary>
    public static string Shared => s_shared.Value;

    public static string StoriesModel => Path.Combine(Shared, "models", "stories260K", "stories260K.bin");

    public static string StoriesModelV1 => Path.Combine(Shared, "models", "stories260K", "stories260K_v1.bin");

    public static string StoriesTokenizer => Path.Combine(Shared, "models", "stories260K", "tok512.bin");

    public static string AidreamsModel => Path.Combine(Shared, "models", "aidreams260K", "aidreams260K.bin");

    public static string AidreamsTokenizer => Path.Combine(Shared, "models", "aidreams260K", "tok512.bin");

    /// <summary>stories260K (legacy file) on the CPU, loaded once; do not dispose.</summary>
    public static LlamaWeights Stories => s_stories.Value;

    public static Llama2cTokenizer StoriesTok => s_storiesTokenizer.Value;

    /// <summary>aidreams260K on the CPU, loaded once; do not dispose.</summary>
    public static LlamaWeights Aidreams => s_aidreams.Value;

    public static Llama2cTokenizer AidreamsTok => s_aidreamsTokenizer.Value;

    /// <summary>The token ids after BOS of the reference greedy run: 4 prompt tokens, then 60 generated.</summary>
    public static readonly int[] GreedyReferenceIds =
    [
        403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408,
        419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426,
        338, 391, 266, 267, 337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13, 438, 310,
    ];

    /// <summary>The reference text, prompt included, byte for byte.</summary>
    public const string GreedyReferenceText =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily";

    private static string FindShared()
    {
        // Walk up from the test assembly to the repository root.
        string? directory = AppContext.BaseDirectory;
        while (directory is not null && !File.Exists(Path.Combine(directory, "Framework.sln")))
        {
            directory = Path.GetDirectoryName(directory);
        }

        if (directory is null)
        {
            throw new InvalidOperationException($"No Framework.sln above {AppContext.BaseDirectory}; run the tests from the repository.");
        }

        string shared = Path.GetFullPath(Path.Combine(directory, "..", "shared"));
        if (!Directory.Exists(Path.Combine(shared, "models")))
        {
            throw new InvalidOperationException($"The shared test data is missing: {shared}/models does not exist.");
        }

        return shared;
    }
}
