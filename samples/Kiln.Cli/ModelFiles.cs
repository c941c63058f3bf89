// Finds the files a command needs: the model (-m, else $KILN_MODEL, else ~/.cache/kiln/models/stories260K/
// stories260K.bin; a file or a Hugging Face folder) and its tokenizer (--tokenizer, else tok<vocab>.bin or tokenizer.bin next to the model).

namespace Kiln.Cli;

/// <summary>Resolves model and tokenizer paths from flags and defaults.</summary>
internal static class ModelFiles
{
    /// <summary>Where to get a model, for messages.</summary>
    public const string DownloadHint =
        "stories260K.bin and tok512.bin are in the folder stories260K of the Hugging Face repository karpathy/tinyllamas";

    /// <summary>The model path from <paramref name="flag"/>, else the environment's defaults.</summary>
    /// <exception cref="CliException">No flag was given and no default model exists.</exception>
    public static string ResolveModel(string? flag, CliEnvironment environment)
    {
        // An explicit -m wins; the loader reports a missing file with its own message.
        if (!string.IsNullOrEmpty(flag))
        {
            return flag;
        }

        // Then $KILN_MODEL, which must point at a file when set.
        if (!string.IsNullOrEmpty(environment.ModelVariable))
        {
            if (!File.Exists(environment.ModelVariable) && !Directory.Exists(environment.ModelVariable))
            {
                throw new CliException($"KILN_MODEL is '{environment.ModelVariable}', which does not exist; fix the variable or pass -m PATH to a model file or folder.", CliException.FailureExitCode);
            }

            return environment.ModelVariable;
        }

        // Then the per-user cache.
        string? cached = environment.DefaultModelPath;
        if (cached is not null && File.Exists(cached))
        {
            return cached;
        }

        string looked = cached is null ? "no home directory is known" : $"{cached} does not exist";
        throw new CliException($"no model given: -m is missing, $KILN_MODEL is unset and {looked}; pass -m PATH to a llama2.c .bin checkpoint ({DownloadHint}).", CliException.FailureExitCode);
    }

    /// <summary>The tokenizer path from <paramref name="flag"/>, else tok&lt;vocab&gt;.bin or tokenizer.bin next to the model.</summary>
    /// <exception cref="CliException">No flag was given and neither default file exists.</exception>
    public static string ResolveTokenizer(string? flag, string modelPath, int vocabSize)
    {
        if (!string.IsNullOrEmpty(flag))
        {
            return flag;
        }

        string directory = Path.GetDirectoryName(Path.GetFullPath(modelPath)) ?? ".";
        string byVocab = Path.Combine(directory, $"tok{vocabSize}.bin");
        string generic = Path.Combine(directory, "tokenizer.bin");
        if (File.Exists(byVocab))
        {
            return byVocab;
        }

        if (File.Exists(generic))
        {
            return generic;
        }

        throw new CliException($"no tokenizer next to the model: neither {byVocab} nor {generic} exists; pass --tokenizer PATH to the model's llama2.c tokenizer.", CliException.FailureExitCode);
    }
}
