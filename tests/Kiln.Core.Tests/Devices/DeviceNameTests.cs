// Device names: IlgpuDevice.TryParseCpuShape reads ilgpu-cpu[:LANESxWARPS] (warps of 4..64 lanes, a power of two,
// and 1..LANES warps per group), refuses a malformed shape with a message naming it and the accepted form, and
// leaves other names to the caller; Device.Create passes a malformed shape's error through.
using Kiln.Devices;
using Xunit;

namespace Kiln.Core.Tests.Devices;

public sealed class DeviceNameTests
{
    [Theory]
    [InlineData("ilgpu-cpu", 32, 2)]
    [InlineData("ILGPU-CPU", 32, 2)]
    [InlineData("ilgpu-cpu:4x4", 4, 4)]
    [InlineData("ilgpu-cpu:4X1", 4, 1)]
    [InlineData("ilgpu-cpu:32x2", 32, 2)]
    [InlineData("ilgpu-cpu:64x64", 64, 64)]
    [InlineData("ilgpu-cpu:8x8", 8, 8)]
    public void TryParseCpuShape_AcceptsSimulatedShapes(string name, int lanes, int warps)
    {
        Assert.True(IlgpuDevice.TryParseCpuShape(name, out int parsedLanes, out int parsedWarps));
        Assert.Equal((lanes, warps), (parsedLanes, parsedWarps));
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("cuda")]
    [InlineData("auto")]
    [InlineData("ilgpu")]
    [InlineData("")]
    public void TryParseCpuShape_LeavesOtherNames(string name)
    {
        Assert.False(IlgpuDevice.TryParseCpuShape(name, out _, out _));
    }

    [Theory]
    [InlineData("ilgpu-cpu:3x4")]      // lanes not a power of two
    [InlineData("ilgpu-cpu:2x2")]      // fewer than 4 lanes
    [InlineData("ilgpu-cpu:128x1")]    // more than 64 lanes
    [InlineData("ilgpu-cpu:4x8")]      // more warps than lanes
    [InlineData("ilgpu-cpu:4x0")]
    [InlineData("ilgpu-cpu:4")]
    [InlineData("ilgpu-cpu:4x4x4")]
    [InlineData("ilgpu-cpu:+4x4")]
    [InlineData("ilgpu-cpu: 4x4")]
    [InlineData("ilgpu-cpu:")]
    [InlineData("ilgpu-cpu4x4")]
    [InlineData("ilgpu-cpux")]
    public void TryParseCpuShape_RefusesMalformedShapes(string name)
    {
        ArgumentException error = Assert.Throws<ArgumentException>(() => IlgpuDevice.TryParseCpuShape(name, out _, out _));
        Assert.Contains($"unknown device '{name}'", error.Message);
        Assert.Contains("ilgpu-cpu:LANESxWARPS", error.Message);
        Assert.Contains("for example ilgpu-cpu:4x4", error.Message);
        Assert.DoesNotContain('\n', error.Message);

        // Device.Create reports the same error rather than starting a device.
        ArgumentException created = Assert.Throws<ArgumentException>(() => Device.Create(name));
        Assert.Contains($"unknown device '{name}'", created.Message);
    }

    [Fact]
    public void Create_MakesTheSimulatedShape()
    {
        using Device device = Device.Create("ilgpu-cpu:4x2");
        IlgpuDevice ilgpu = Assert.IsType<IlgpuDevice>(device);
        Assert.Equal(4, ilgpu.Accelerator.WarpSize);
        Assert.Equal(8, ilgpu.Accelerator.MaxNumThreadsPerGroup);
        Assert.Equal("ilgpu-cpu", device.Name);
    }
}
