// The one exception type for files that cannot be used as a model or tokenizer: missing, unreadable,
// truncated, with a header that lies about the sizes, or not matching the model they are paired with.
// The message is one line that names the file, says what is wrong, and says what to do.

namespace Kiln.Models;

/// <summary>
/// A checkpoint or tokenizer file is missing, unreadable, malformed or does not fit its model. <see cref="Exception.Message"/>
/// is a single line naming the file, the problem and the fix, ready to print as a command-line error.
/// </summary>
public sealed class ModelFormatException : Exception
{
    /// <summary>Creates the exception for <paramref name="path"/> with a one-line message.</summary>
    public ModelFormatException(string path, string message, Exception? inner = null)
        : base(message, inner)
    {
        Path = path;
    }

    /// <summary>The file the problem was found in.</summary>
    public string Path { get; }
}
