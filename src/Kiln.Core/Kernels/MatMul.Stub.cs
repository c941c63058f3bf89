using System.Runtime.Intrinsics;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;

namespace Kiln.Kernels;

// TEMPORARY STAND-IN, FOR THE INTEGRATOR TO DELETE. The real matrix product (MatMul.cs: packed panels and a
// Vector512 micro-kernel on the CPU, shared-memory tiles on the GPU) is written in parallel on another branch with
// these two signatures. This file exists only so that the generated epilogue ops build and their tests run on this
// branch: it computes each dot product with a plain scalar loop, then applies the epilogue in blocks of 16 and 8
// columns and a scalar tail, so that all three CPU Apply overloads are exercised. Float32 weights only.
//
// Note for the real one: an IGpuMatMulEpilogue holds ArrayViews, and ArrayView<T> is not an unmanaged type (it
// references its buffer), so ComputeGpu must constrain its type parameter with `struct`, not `unmanaged`.

/// <summary>Stand-in matrix product C = epilogue(A · Wᵀ) with A [M, K], W [N, K], C [M, N] (scalar loops).</summary>
public static class MatMul
{
    /// <summary>Computes output[m, n] = epilogue(Σ_k a[m, k] · w[n, k]) on the CPU.</summary>
    /// <exception cref="ArgumentException">A shape, dtype or device does not fit.</exception>
    public static unsafe void Compute<TEpilogue>(Tensor a, Tensor w, Tensor output, ref TEpilogue epilogue)
        where TEpilogue : unmanaged, IMatMulEpilogue
    {
        Check(a, w, output);
        int m = a.Shape[0];
        int k = a.Shape[1];
        int n = w.Shape[0];
        float* aData = a.FloatPointer;
        float* wData = w.FloatPointer;
        float* cData = output.FloatPointer;
        for (int row = 0; row < m; row++)
        {
            // Dot products of this row, stored before the epilogue runs over them.
            float* cRow = cData + ((long)row * n);
            for (int col = 0; col < n; col++)
            {
                float acc = 0f;
                for (int i = 0; i < k; i++)
                {
                    acc += aData[((long)row * k) + i] * wData[((long)col * k) + i];
                }

                cRow[col] = acc;
            }

            // The epilogue over 16, then 8, then 1 column at a time.
            int column = 0;
            for (; column <= n - 16; column += 16)
            {
                epilogue.Apply(Vector512.Load(cRow + column), row, column).Store(cRow + column);
            }

            for (; column <= n - 8; column += 8)
            {
                epilogue.Apply(Vector256.Load(cRow + column), row, column).Store(cRow + column);
            }

            for (; column < n; column++)
            {
                cRow[column] = epilogue.Apply(cRow[column], row, column);
            }
        }
    }

    /// <summary>Computes output[m, n] = epilogue(Σ_k a[m, k] · w[n, k]) on an ILGPU device.</summary>
    /// <exception cref="ArgumentException">A shape, dtype or device does not fit.</exception>
    public static void ComputeGpu<TGpuEpilogue>(Tensor a, Tensor w, Tensor output, TGpuEpilogue epilogue)
        where TGpuEpilogue : struct, IGpuMatMulEpilogue
    {
        Check(a, w, output);
        if (output.Device is not IlgpuDevice device)
        {
            throw new ArgumentException(
                $"MatMul.ComputeGpu: the tensors are on {output.Device.Name}; use Compute for the CPU.",
                nameof(output));
        }

        if (output.Length == 0)
        {
            return;
        }

        Action<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, TGpuEpilogue> kernel =
            device.GetKernel(KernelKey<TGpuEpilogue>.Value, static accelerator => accelerator
                .LoadAutoGroupedStreamKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, TGpuEpilogue>(
                    DotKernel));
        kernel((int)output.Length, a.View<float>(), w.View<float>(), output.View<float>(), a.Shape[1], w.Shape[0], epilogue);
    }

    private static void DotKernel<TGpuEpilogue>(
        Index1D index,
        ArrayView<float> a,
        ArrayView<float> w,
        ArrayView<float> output,
        int k,
        int n,
        TGpuEpilogue epilogue)
        where TGpuEpilogue : struct, IGpuMatMulEpilogue
    {
        int row = index / n;
        int col = index % n;
        float acc = 0f;
        for (int i = 0; i < k; i++)
        {
            acc += a[(row * k) + i] * w[(col * k) + i];
        }

        output[index] = epilogue.Apply(acc, row, col, n);
    }

    private static void Check(Tensor a, Tensor w, Tensor output)
    {
        OpChecks.MatMulShapes("MatMul", a, w, output);
        OpChecks.Float32("MatMul", "w", w);
        OpChecks.SameDevice("MatMul", "w", w, "a", a);
        OpChecks.SameDevice("MatMul", "output", output, "a", a);
    }

    // One kernel cache key per epilogue type.
    private static class KernelKey<T>
    {
        public static readonly object Value = new();
    }
}
