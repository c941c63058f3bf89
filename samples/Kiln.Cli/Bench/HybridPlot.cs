// The picture of kiln bench hybrid --plot: tokens per second against context for every model, prefill as solid
// lines with circles, decode as dashed lines with squares, one colour per model. Both axes are logarithmic: the data
// are plotted as log10 values and the ticks are labelled with the plain numbers (1K, 4K, ...; 10, 100, ...).
using System.Globalization;
using ScottPlot;

namespace Kiln.Cli.Bench;

/// <summary>Draws the hybrid benchmark's rows to a PNG file.</summary>
internal static class HybridPlot
{
    private static readonly Color[] s_colors = [Colors.Black, Colors.RoyalBlue, Colors.DarkOrange, Colors.SeaGreen, Colors.Crimson];

    /// <summary>Writes a 1000×640 PNG of <paramref name="rows"/> to <paramref name="path"/>.</summary>
    public static void Write(string path, IReadOnlyList<HybridBench.Row> rows)
    {
        Plot plot = new();
        string[] models = [.. rows.Select(static r => r.Model).Distinct()];
        for (int m = 0; m < models.Length; m++)
        {
            HybridBench.Row[] series = [.. rows.Where(r => r.Model == models[m]).OrderBy(static r => r.Context)];
            double[] x = [.. series.Select(static r => Math.Log10(r.Context))];
            Color color = s_colors[m % s_colors.Length];
            AddLine(plot, x, [.. series.Select(static r => Math.Log10(Math.Max(r.Prefill, 1e-3)))], color, $"{models[m]} prefill", LinePattern.Solid, MarkerShape.FilledCircle);
            AddLine(plot, x, [.. series.Select(static r => Math.Log10(Math.Max(r.Decode, 1e-3)))], color, $"{models[m]} decode", LinePattern.Dashed, MarkerShape.FilledSquare);
        }

        // Ticks at the measured contexts and at powers of ten of tok/s.
        double[] contexts = [.. rows.Select(static r => (double)r.Context).Distinct().Order()];
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [.. contexts.Select(Math.Log10)], [.. contexts.Select(static c => c >= 1024 && c % 1024 == 0 ? $"{c / 1024}K" : c.ToString(CultureInfo.InvariantCulture))]);
        double[] speeds = [.. rows.SelectMany(static r => new[] { r.Prefill, r.Decode }).Where(static s => s > 0)];
        int low = (int)Math.Floor(Math.Log10(speeds.DefaultIfEmpty(1).Min())), high = (int)Math.Ceiling(Math.Log10(speeds.DefaultIfEmpty(10).Max()));
        double[] decades = [.. Enumerable.Range(low, Math.Max(high - low + 1, 2)).Select(static e => (double)e)];
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            decades, [.. decades.Select(static e => Math.Pow(10, e).ToString("G", CultureInfo.InvariantCulture))]);

        plot.Title("Kiln: prefill and decode speed against context (cpu, random weights, width 512, 12 layers)");
        plot.XLabel("context (tokens)");
        plot.YLabel("tokens per second");
        plot.ShowLegend(Edge.Right);
        plot.SavePng(path, 1000, 640);
    }

    private static void AddLine(Plot plot, double[] x, double[] y, Color color, string label, LinePattern pattern, MarkerShape marker)
    {
        ScottPlot.Plottables.Scatter line = plot.Add.Scatter(x, y, color);
        line.LegendText = label;
        line.LinePattern = pattern;
        line.MarkerShape = marker;
        line.MarkerSize = 7;
        line.LineWidth = 2;
    }
}
