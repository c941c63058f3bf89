// The check's output: one Markdown table per section on stdout, written row by row as results arrive (so a run
// cut short by a time limit still shows what it measured), and the same rows as JSON records in
// DIR/gpucheck.json, rewritten after every row. Each JSON record holds the section, then the row's columns
// under their snake_case keys; numbers that are not finite are written as null.

using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Kiln.GpuCheck;

/// <summary>One column of a section's table: its JSON key, its Markdown header and how a number is printed.</summary>
/// <param name="Key">The snake_case key of the JSON record.</param>
/// <param name="Header">The Markdown header.</param>
/// <param name="Format">A .NET numeric format for doubles (e.g. "0.00"), or null for the general format.</param>
internal sealed record Column(string Key, string Header, string? Format = null);

/// <summary>The report of one run: the Markdown tables on a writer and the JSON records in a file.</summary>
internal sealed class Report
{
    private static readonly JsonSerializerOptions s_json = new()
    {
        WriteIndented = true,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    private readonly TextWriter _stdout;
    private readonly string? _jsonPath;
    private readonly JsonArray _records = new();
    private readonly List<Row> _rows = new();

    /// <summary>Creates a report that prints to <paramref name="stdout"/> and, when given, writes <paramref name="jsonPath"/>.</summary>
    public Report(TextWriter stdout, string? jsonPath)
    {
        _stdout = stdout;
        _jsonPath = jsonPath;
    }

    /// <summary>Every row so far, in order.</summary>
    public IReadOnlyList<Row> Rows => _rows;

    /// <summary>The JSON file, or null when none is written.</summary>
    public string? JsonPath => _jsonPath;

    /// <summary>Starts a section: prints its title and its table header.</summary>
    public Table Section(string section, string title, params Column[] columns)
    {
        _stdout.WriteLine();
        _stdout.WriteLine($"## {title}");
        _stdout.WriteLine();
        _stdout.WriteLine("| " + string.Join(" | ", columns.Select(static c => c.Header)) + " |");
        _stdout.WriteLine("|" + string.Concat(columns.Select(static _ => " --- |")));
        _stdout.Flush();
        return new Table(this, section, columns);
    }

    /// <summary>Prints a line of text between tables (a note that belongs to no row).</summary>
    public void Note(string text)
    {
        _stdout.WriteLine();
        _stdout.WriteLine(text);
        _stdout.Flush();
    }

    private void Add(string section, Column[] columns, object?[] values)
    {
        // The Markdown row.
        string[] cells = new string[columns.Length];
        for (int i = 0; i < columns.Length; i++)
        {
            cells[i] = FormatCell(values[i], columns[i].Format);
        }

        _stdout.WriteLine("| " + string.Join(" | ", cells) + " |");
        _stdout.Flush();

        // The JSON record, and the file rewritten so that a cut-short run keeps every finished row.
        JsonObject record = new() { ["section"] = section };
        Dictionary<string, object?> map = new(StringComparer.Ordinal);
        for (int i = 0; i < columns.Length; i++)
        {
            record[columns[i].Key] = ToJson(values[i]);
            map[columns[i].Key] = values[i];
        }

        _records.Add(record);
        _rows.Add(new Row(section, map));
        if (_jsonPath is not null)
        {
            File.WriteAllText(_jsonPath, _records.ToJsonString(s_json) + "\n");
        }
    }

    private static string FormatCell(object? value, string? format) => value switch
    {
        null => "",
        double d when double.IsNaN(d) => "-",
        double d => d.ToString(format ?? "G4", CultureInfo.InvariantCulture),
        float f => ((double)f).ToString(format ?? "G4", CultureInfo.InvariantCulture),
        long l => l.ToString("N0", CultureInfo.InvariantCulture),
        int i => i.ToString(CultureInfo.InvariantCulture),
        bool b => b ? "yes" : "no",
        _ => Convert.ToString(value, CultureInfo.InvariantCulture)!.Replace("|", "\\|", StringComparison.Ordinal),
    };

    private static JsonNode? ToJson(object? value) => value switch
    {
        null => null,
        double d when !double.IsFinite(d) => null,
        double d => JsonValue.Create(d),
        float f when !float.IsFinite(f) => null,
        float f => JsonValue.Create((double)f),
        long l => JsonValue.Create(l),
        int i => JsonValue.Create(i),
        bool b => JsonValue.Create(b),
        _ => JsonValue.Create(Convert.ToString(value, CultureInfo.InvariantCulture)),
    };

    /// <summary>One finished row: its section and its values by column key.</summary>
    /// <param name="Section">The section key (correctness, bandwidth, compute, model).</param>
    /// <param name="Values">The values by column key.</param>
    internal sealed record Row(string Section, IReadOnlyDictionary<string, object?> Values);

    /// <summary>The open table of one section; <see cref="Add"/> prints a row and records it.</summary>
    internal sealed class Table
    {
        private readonly Report _report;
        private readonly string _section;
        private readonly Column[] _columns;

        internal Table(Report report, string section, Column[] columns)
        {
            _report = report;
            _section = section;
            _columns = columns;
        }

        /// <summary>Adds a row: one value per column, in column order.</summary>
        /// <exception cref="ArgumentException">The number of values differs from the number of columns.</exception>
        public void Add(params object?[] values)
        {
            if (values.Length != _columns.Length)
            {
                throw new ArgumentException(
                    $"Report row for section {_section}: {values.Length} values for {_columns.Length} columns; pass one value per column.",
                    nameof(values));
            }

            _report.Add(_section, _columns, values);
        }
    }
}
