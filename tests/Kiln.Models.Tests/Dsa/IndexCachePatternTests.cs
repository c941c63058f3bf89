// The IndexCache layer pattern: parsing and its errors, the keep-ratio function, the freq/offset schedule against
// golden strings (brief §2.2), each layer's source, and the ToString round trip.
using FsCheck;
using FsCheck.Fluent;
using Kiln.Models.Dsa;
using Xunit;

namespace Kiln.Models.Tests.Dsa;

public sealed class IndexCachePatternTests
{
    [Theory]
    [InlineData(8, 4, 1, "FSSSFSSS")]
    [InlineData(13, 4, 2, "FFSSSFSSSFSSS")]
    [InlineData(12, 4, 3, "FFFSSSFSSSFS")]
    [InlineData(6, 2, 2, "FFSFSF")]
    [InlineData(5, 1, 2, "FFFFF")]
    [InlineData(3, 7, 2, "FFS")]
    public void FromFrequency_GivesTheGoldenStrings(int layers, int frequency, int offset, string expected)
    {
        Assert.Equal(expected, IndexCachePattern.FromFrequency(layers, frequency, offset).ToString());
    }

    [Fact]
    public void FromFrequency_MatchesThePublishedCounts()
    {
        // THUDM's formula at freq 4 on the 47-layer model: 13 Full (layers 0 and 1 both Full); GLM-5.2: 21 of 78.
        IndexCachePattern thudm = IndexCachePattern.FromFrequency(47, 4, 2);
        Assert.Equal(13, thudm.FullCount);
        Assert.StartsWith("FFSSSFSSSF", thudm.ToString(), StringComparison.Ordinal);
        Assert.Equal(21, IndexCachePattern.FromFrequency(78, 4, 3).FullCount);
    }

    [Theory]
    [InlineData(8, 0.25, "FSSSFSSS")]
    [InlineData(8, 0.5, "FSFSFSFS")]
    [InlineData(8, 1.0, "FFFFFFFF")]
    [InlineData(8, 0.01, "FSSSSSSS")]
    [InlineData(10, 0.7, "FFFSFFSFFS")]
    [InlineData(1, 0.25, "F")]
    [InlineData(47, 0.25, "FSSFSSSFSSSFSSSFSSSFSSSFSSSFSSSFSSSFSSSFSSSFSSS")]
    public void FromKeepRatio_GivesEvenlySpacedFullLayers(int layers, double keep, string expected)
    {
        IndexCachePattern pattern = IndexCachePattern.FromKeepRatio(layers, keep);
        Assert.Equal(expected, pattern.ToString());
        Assert.Equal((int)Math.Ceiling(Math.Round(layers * keep, 9)), pattern.FullCount);
    }

    [Fact]
    public void FromKeepRatio_KeepsCeilNTimesRFullLayers_FirstOneLayerZero()
    {
        Gen<(int Layers, int Percent)> cases = from n in Gen.Choose(1, 100) from p in Gen.Choose(1, 100) select (n, p);
        Prop.ForAll(cases.ToArbitrary(), c =>
        {
            IndexCachePattern pattern = IndexCachePattern.FromKeepRatio(c.Layers, c.Percent / 100.0);
            Assert.True(pattern.IsFull(0));
            Assert.Equal((c.Layers * c.Percent + 99) / 100, pattern.FullCount);
            Assert.Equal(c.Layers, pattern.Layers);
            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(300));
    }

    [Fact]
    public void SourceOf_IsTheNearestFullLayerAtOrBefore_AndToStringRoundTrips()
    {
        Gen<string> patterns =
            from n in Gen.Choose(1, 60)
            from rest in Gen.ArrayOf(Gen.Elements('F', 'S'), n - 1)
            select "F" + new string(rest);
        Prop.ForAll(patterns.ToArbitrary(), text =>
        {
            IndexCachePattern pattern = IndexCachePattern.Parse(text, text.Length);
            Assert.Equal(text, pattern.ToString());
            Assert.Equal(pattern, IndexCachePattern.Parse(pattern.ToString()));
            for (int layer = 0; layer < text.Length; layer++)
            {
                // The source is Full, at or before the layer, with only Shared layers between.
                int source = pattern.SourceOf(layer);
                Assert.Equal(text[layer] == 'F', pattern.IsFull(layer));
                Assert.True(pattern.IsFull(source) && source <= layer);
                Assert.All(Enumerable.Range(source + 1, layer - source), l => Assert.False(pattern.IsFull(l)));
            }

            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(200));
    }

    [Fact]
    public void Sources_OfAKnownPattern()
    {
        IndexCachePattern pattern = IndexCachePattern.Parse("FSSFSF");
        Assert.Equal(new[] { 0, 0, 0, 3, 3, 5 }, Enumerable.Range(0, 6).Select(pattern.SourceOf));
        Assert.Equal("FSSSSF", pattern.WithShared(3).ToString());
        Assert.Equal(6, IndexCachePattern.AllFull(6).FullCount);
        Assert.Equal(IndexCachePattern.AllFull(4), IndexCachePattern.FromFrequency(4, 1, 2));
    }

    [Fact]
    public void BadPatterns_AreRejectedWithTheFix()
    {
        Assert.Contains("has 3 characters but the model has 4", Assert.Throws<ArgumentException>(() => IndexCachePattern.Parse("FSS", 4)).Message);
        Assert.Contains("make layer 0 F", Assert.Throws<ArgumentException>(() => IndexCachePattern.Parse("SFFF", 4)).Message);
        Assert.Contains("'x' at layer 2", Assert.Throws<ArgumentException>(() => IndexCachePattern.Parse("FSxF")).Message);
        Assert.Contains("use only F", Assert.Throws<ArgumentException>(() => IndexCachePattern.Parse("FSfF")).Message);
        Assert.Throws<ArgumentException>(() => IndexCachePattern.Parse(""));
        Assert.Throws<ArgumentOutOfRangeException>(() => IndexCachePattern.FromKeepRatio(8, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => IndexCachePattern.FromKeepRatio(8, 1.5));
        Assert.Throws<ArgumentOutOfRangeException>(() => IndexCachePattern.FromKeepRatio(0, 0.5));
        Assert.Throws<ArgumentOutOfRangeException>(() => IndexCachePattern.FromFrequency(8, 0, 2));
        Assert.Contains("layer 0 Shared", Assert.Throws<ArgumentOutOfRangeException>(() => IndexCachePattern.FromFrequency(8, 4, 0)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => IndexCachePattern.Parse("FS").WithShared(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => IndexCachePattern.Parse("FS").SourceOf(2));
    }
}
