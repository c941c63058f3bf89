// Tensor lifetime: after Dispose, the tensor and every view of it refuse access with ObjectDisposedException
// instead of reading or writing released native memory; Dispose twice is harmless.

using Xunit;

namespace Kiln.Core.Tests;

public sealed class TensorLifetimeTests
{
    [Fact]
    public void UseAfterDispose_Throws_ForTheOwnerAndItsViews()
    {
        Tensor owner = Tensor.FromArray([1f, 2f, 3f, 4f], [2, 2]);
        Tensor row = owner.Slice(1, 1);
        Tensor flat = owner.Reshape(4);

        owner.Dispose();
        owner.Dispose();

        Assert.Throws<ObjectDisposedException>(() => owner.ToArray());
        Assert.Throws<ObjectDisposedException>(() => owner.AsSpan().Fill(7f));
        Assert.Throws<ObjectDisposedException>(() => row.ToArray());
        Assert.Throws<ObjectDisposedException>(() => flat.CopyFrom([5f, 6f, 7f, 8f]));
        Assert.Throws<ObjectDisposedException>(() => Kiln.Ops.Scale(flat, 2f, flat));
    }

    [Fact]
    public void DisposingAView_LeavesTheOwnerUsable()
    {
        using Tensor owner = Tensor.FromArray([1f, 2f, 3f, 4f], [2, 2]);
        Tensor row = owner.Slice(1, 1);

        row.Dispose();

        Assert.Equal([1f, 2f, 3f, 4f], owner.ToArray());
    }
}
