// `kiln bench hybrid` at tiny contexts: one JSON line per model and context with the fields the brief names, the
// ratios to the transformer, parameter counts matched within a few percent, a PNG from --plot, and one-line errors
// for bad flags. In-process through KilnCli.Run.
using System.Text.Json;
using Kiln.Cli;
using Xunit;

namespace Kiln.Models.Tests.Hybrid;

public sealed class HybridBenchCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kiln-hybrid-cli").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void BenchHybrid_Json_OneLinePerModelAndContext_AndAPlot()
    {
        string png = Path.Combine(_dir, "speed.png");
        (int code, string stdout, string err) = Run("bench", "hybrid", "--json", "-c", "12", "5", "--decode", "2", "--runs", "1", "--plot", png);
        Assert.True(code == 0, err);
        string[] lines = stdout.TrimEnd('\n').Split('\n');
        string[] models = ["transformer", "mamba3", "mamba3-mimo", "hybrid"];
        Assert.Equal(8, lines.Length);
        long transformerParameters = 0;
        for (int i = 0; i < lines.Length; i++)
        {
            using JsonDocument line = JsonDocument.Parse(lines[i]);
            JsonElement o = line.RootElement;
            Assert.Equal(models[i % 4], o.GetProperty("model").GetString());
            Assert.Equal(i < 4 ? 5 : 12, o.GetProperty("context").GetInt32());
            foreach (string field in new[] { "prefill_tok_s", "decode_tok_s", "prefill_vs_transformer", "decode_vs_transformer" })
            {
                Assert.True(o.GetProperty(field).GetDouble() > 0, $"{field} in {lines[i]}");
            }

            long parameters = o.GetProperty("params").GetInt64();
            transformerParameters = i % 4 == 0 ? parameters : transformerParameters;
            Assert.InRange(Math.Abs(parameters - transformerParameters) / (double)transformerParameters, 0, 0.05);
            if (i % 4 == 0)
            {
                Assert.Equal(1.0, o.GetProperty("prefill_vs_transformer").GetDouble());
            }
        }

        Assert.Contains("parameters: transformer", err, StringComparison.Ordinal);
        byte[] header = File.ReadAllBytes(png)[..8];
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, header);
    }

    [Theory]
    [InlineData("-c", "0")]
    [InlineData("--decode", "0")]
    [InlineData("--plot", "speed.jpg")]
    public void BenchHybrid_BadFlags_AreOneLineErrors(string flag, string value)
    {
        (int code, _, string err) = Run("bench", "hybrid", "-c", "4", flag, value);
        Assert.NotEqual(0, code);
        Assert.Contains(flag, err, StringComparison.Ordinal);
        Assert.Single(err.TrimEnd('\n').Split('\n'));
    }

    private (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        using StringWriter stdout = new() { NewLine = "\n" };
        using StringWriter stderr = new() { NewLine = "\n" };
        int code = KilnCli.Run(args, stdout, stderr, new CliEnvironment(null, _dir));
        return (code, stdout.ToString(), stderr.ToString());
    }
}
