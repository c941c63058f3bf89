using System;
using System.Text;

namespace Kiln.Generators.Helpers;

// A StringBuilder that indents by four spaces per level and writes "\n" line endings, so generated files are the
// same on every platform. Blocks are opened and closed explicitly; blank lines carry no indentation.

/// <summary>Writes indented C# text.</summary>
internal sealed class IndentedWriter
{
    private readonly StringBuilder _text = new();
    private int _depth;

    /// <summary>Writes one line at the current indentation (an empty line when <paramref name="line"/> is empty).</summary>
    public IndentedWriter Line(string line = "")
    {
        if (line.Length > 0)
        {
            _text.Append(' ', _depth * 4).Append(line);
        }

        _text.Append('\n');
        return this;
    }

    /// <summary>Writes each line of <paramref name="lines"/> (split on '\n') at the current indentation.</summary>
    public IndentedWriter Lines(string lines)
    {
        foreach (string line in lines.Split('\n'))
        {
            Line(line);
        }

        return this;
    }

    /// <summary>Writes <paramref name="header"/> (if any), then "{", and indents.</summary>
    public IndentedWriter Open(string? header = null)
    {
        if (header is not null)
        {
            Line(header);
        }

        Line("{");
        _depth++;
        return this;
    }

    /// <summary>Unindents and writes "}" followed by <paramref name="suffix"/>.</summary>
    public IndentedWriter Close(string suffix = "")
    {
        if (_depth == 0)
        {
            throw new InvalidOperationException("Close without a matching Open.");
        }

        _depth--;
        Line("}" + suffix);
        return this;
    }

    /// <inheritdoc />
    public override string ToString() => _text.ToString();
}
