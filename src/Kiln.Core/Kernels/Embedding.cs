// The token-embedding lookup: output[t, :] = table[ids[t], :], widened to float32.
//
// table [V, D] is float32, float16, bfloat16 or Q8_0 (llama2.c's token_embedding_table, Hugging Face's
// embed_tokens, a GGUF token_embd);
// ids is an int32 tensor of T token ids (any shape, read flat); output is float32 [T, D] (any shape holding T rows
// of D). On the CPU, every id is checked first and an id outside [0, V) throws before anything is written; rows
// are copied with Vector512/Vector256 widening loads and split across the worker pool for long prompts. On an
// ILGPU device the ids may have been written by another kernel (the sampled id fed back), so the host cannot
// check them without a round trip: the kernel never reads outside the table and writes a row of zeros for an
// id outside [0, V). Callers that hold ids on the host check them with CheckIds before uploading.
using System.Runtime.Intrinsics;
using ILGPU;
using ILGPU.Runtime;
using Kiln.Devices;
using Kiln.Kernels.Gemm;
using GpuHalf = ILGPU.Half;

namespace Kiln.Kernels;

/// <summary>The embedding lookup <c>output[t, :] = table[ids[t], :]</c> on the CPU and on ILGPU devices.</summary>
public static unsafe class Embedding
{
    /// <summary>Elements per CPU work item at least, so that short lookups (decode) stay on the calling thread.</summary>
    private const int CpuGrain = 16 * 1024;

    private static readonly object s_float32Key = new();
    private static readonly object s_float16Key = new();
    private static readonly object s_bfloat16Key = new();
    private static readonly object s_q8_0Key = new();

    /// <summary>The ILGPU kernels of this class, closed over each table dtype, for offline (PTX) compilation.</summary>
    public static IReadOnlyList<GeneratedKernel> GpuKernels { get; } =
    [
        new("Embedding.Lookup(float32)", ((Action<Index1D, GpuFloat32Weights, ArrayView<int>, ArrayView<float>, int, int>)LookupKernel).Method, false),
        new("Embedding.Lookup(float16)", ((Action<Index1D, GpuFloat16Weights, ArrayView<int>, ArrayView<float>, int, int>)LookupKernel).Method, false),
        new("Embedding.Lookup(bfloat16)", ((Action<Index1D, GpuBFloat16Weights, ArrayView<int>, ArrayView<float>, int, int>)LookupKernel).Method, false),
        new("Embedding.Lookup(q8_0)", ((Action<Index1D, GpuQ8_0Weights, ArrayView<int>, ArrayView<float>, int, int>)LookupKernel).Method, false),
    ];

    /// <summary>
    /// Writes <c>output[t, :] = table[ids[t], :]</c> for every id, widening 16-bit tables to float32. On an ILGPU
    /// device the launch is queued and not waited for.
    /// </summary>
    /// <param name="table">The embedding table [V, D]: float32, float16 or bfloat16.</param>
    /// <param name="ids">T token ids, int32, any shape (read flat).</param>
    /// <param name="output">float32, T rows of D: [T, D] or any shape ending in D with T·D elements.</param>
    /// <exception cref="ArgumentException">
    /// A dtype, shape or device does not fit; on the CPU also an id outside [0, V) (nothing is written then).
    /// </exception>
    public static void Lookup(Tensor table, Tensor ids, Tensor output)
    {
        (int vocab, int dim, int tokens) = Validate(table, ids, output);
        if (tokens == 0 || dim == 0)
        {
            return;
        }

        switch (table.Device)
        {
            case CpuDevice cpu:
                // Check every id before writing anything.
                CheckIds(ids.AsSpan<int>(), vocab, nameof(ids));
                LookupCpu(cpu, table, ids, output, dim, tokens);
                break;
            case IlgpuDevice ilgpu:
                LaunchGpu(ilgpu, table, ids, output, vocab, dim, tokens);
                break;
            default:
                throw new NotSupportedException($"Embedding.Lookup: device {table.Device.Name} is not supported.");
        }
    }

    /// <summary>Throws when an id is outside [0, <paramref name="vocabSize"/>).</summary>
    /// <exception cref="ArgumentException">An id is out of range; the message names its position and value.</exception>
    public static void CheckIds(ReadOnlySpan<int> ids, int vocabSize, string paramName = "ids")
    {
        for (int t = 0; t < ids.Length; t++)
        {
            if ((uint)ids[t] >= (uint)vocabSize)
            {
                throw new ArgumentException(
                    $"Embedding.Lookup: token id {ids[t]} (position {t}) is outside the vocabulary of {vocabSize}; "
                    + $"pass ids in [0, {vocabSize}).",
                    paramName);
            }
        }
    }

    /// <summary>The scalar reference: rows of <paramref name="table"/> [V, D] (already widened) picked by id.</summary>
    /// <exception cref="ArgumentException">An id is outside the table.</exception>
    public static float[] Reference(ReadOnlySpan<float> table, int dim, ReadOnlySpan<int> ids)
    {
        int vocab = dim == 0 ? 0 : table.Length / dim;
        CheckIds(ids, vocab);
        float[] output = new float[ids.Length * dim];
        for (int t = 0; t < ids.Length; t++)
        {
            table.Slice(ids[t] * dim, dim).CopyTo(output.AsSpan(t * dim, dim));
        }

        return output;
    }

    private static (int Vocab, int Dim, int Tokens) Validate(Tensor table, Tensor ids, Tensor output)
    {
        // Dtypes and layout.
        if (table is null || table.Rank != 2 || !(table.DType.IsFloatingPoint() || table.DType == DType.Q8_0) || !table.IsContiguous)
        {
            string what = table is null ? "null" : $"{table.DType.Name()} {Tensor.FormatShape(table.Shape)}";
            throw new ArgumentException(
                $"Embedding.Lookup: table is {what}; pass a contiguous [V, D] table of float32, float16, bfloat16 or q8_0.",
                nameof(table));
        }

        if (ids is null || ids.DType != DType.Int32 || !ids.IsContiguous)
        {
            string what = ids is null ? "null" : $"{ids.DType.Name()} {Tensor.FormatShape(ids.Shape)}";
            throw new ArgumentException(
                $"Embedding.Lookup: ids is {what}; pass a contiguous int32 tensor of token ids (Tensor.FromArray(int[])).",
                nameof(ids));
        }

        OpChecks.Float32("Embedding.Lookup", nameof(output), output);

        // Devices.
        OpChecks.SameDevice("Embedding.Lookup", nameof(ids), ids, nameof(table), table);
        OpChecks.SameDevice("Embedding.Lookup", nameof(output), output, nameof(table), table);

        // Shapes: output holds one row of D per id.
        int vocab = table.Shape[0];
        int dim = table.Shape[1];
        int tokens = (int)ids.Length;
        if (output.Length != (long)tokens * dim || (dim > 0 && tokens > 0 && output.Size(-1) != dim))
        {
            throw new ArgumentException(
                $"Embedding.Lookup: output has shape {Tensor.FormatShape(output.Shape)} but {tokens} ids of a table "
                + $"{Tensor.FormatShape(table.Shape)} give [{tokens}, {dim}]; pass an output of that shape.",
                nameof(output));
        }

        return (vocab, dim, tokens);
    }

    // The CPU path: rows split across the worker pool, each row widened with vector loads.
    private static void LookupCpu(CpuDevice cpu, Tensor table, Tensor ids, Tensor output, int dim, int tokens)
    {
        CpuState state = new()
        {
            Table = (byte*)table.DataPointer,
            Ids = (int*)ids.DataPointer,
            Output = output.FloatPointer,
            Dim = dim,
        };
        int grain = Math.Max(1, CpuGrain / dim);
        delegate*<void*, int, int, void> body = table.DType switch
        {
            DType.Float32 => &CpuRows<Float32Weights>,
            DType.Float16 => &CpuRows<Float16Weights>,
            DType.Q8_0 => &CpuRows<Q8_0Weights>,
            _ => &CpuRows<BFloat16Weights>,
        };
        cpu.Pool.For(tokens, grain, body, &state);
    }

    private struct CpuState
    {
        public byte* Table;
        public int* Ids;
        public float* Output;
        public int Dim;
    }

    // Rows [start, end): 16 elements at a time, then 8, then one.
    private static void CpuRows<TFormat>(void* statePointer, int start, int end)
        where TFormat : IWeightFormat
    {
        CpuState* state = (CpuState*)statePointer;
        int dim = state->Dim;
        for (int t = start; t < end; t++)
        {
            byte* source = state->Table + ((long)state->Ids[t] * TFormat.RowBytes(dim));
            float* destination = state->Output + ((long)t * dim);
            int i = 0;
            for (; i <= dim - 16; i += 16)
            {
                TFormat.Load16(source, i).Store(destination + i);
            }

            for (; i <= dim - 8; i += 8)
            {
                TFormat.Load8(source, i).Store(destination + i);
            }

            for (; i < dim; i++)
            {
                destination[i] = TFormat.Load1(source, i);
            }
        }
    }

    // The ILGPU path: one thread per output element, launched over T·D in auto-sized groups.
    private static void LaunchGpu(IlgpuDevice device, Tensor table, Tensor ids, Tensor output, int vocab, int dim, int tokens)
    {
        int count = checked(tokens * dim);
        switch (table.DType)
        {
            case DType.Float32:
                Load<GpuFloat32Weights>(device, s_float32Key)(
                    count, new GpuFloat32Weights { Data = table.View<float>() }, ids.View<int>(), output.View<float>(), vocab, dim);
                break;
            case DType.Float16:
                Load<GpuFloat16Weights>(device, s_float16Key)(
                    count, new GpuFloat16Weights { Data = table.View<GpuHalf>() }, ids.View<int>(), output.View<float>(), vocab, dim);
                break;
            case DType.Q8_0:
                Load<GpuQ8_0Weights>(device, s_q8_0Key)(
                    count, new GpuQ8_0Weights { Words = table.BlockWords() }, ids.View<int>(), output.View<float>(), vocab, dim);
                break;
            default:
                Load<GpuBFloat16Weights>(device, s_bfloat16Key)(
                    count, new GpuBFloat16Weights { Data = table.View<ushort>() }, ids.View<int>(), output.View<float>(), vocab, dim);
                break;
        }
    }

    private static Action<Index1D, TWeights, ArrayView<int>, ArrayView<float>, int, int> Load<TWeights>(IlgpuDevice device, object key)
        where TWeights : struct, IGpuWeights =>
        device.GetKernel(key, static accelerator =>
            accelerator.LoadAutoGroupedStreamKernel<Index1D, TWeights, ArrayView<int>, ArrayView<float>, int, int>(LookupKernel));

    /// <summary>
    /// Launch shape: one thread per output element over T·D, auto-sized groups. Consecutive threads write
    /// consecutive columns of one row and read consecutive elements of one table row, so loads and stores are
    /// coalesced; the id is one broadcast load per warp (a warp spans at most two rows). An id outside [0, V)
    /// writes 0 and reads nothing.
    /// </summary>
    internal static void LookupKernel<TWeights>(Index1D index, TWeights table, ArrayView<int> ids, ArrayView<float> output, int vocab, int dim)
        where TWeights : struct, IGpuWeights
    {
        // Which row and column this thread writes.
        int element = index;
        int t = element / dim;
        int column = element - (t * dim);
        int id = ids[t];

        // Copy the element, or write 0 for an id outside the table.
        output[element] = (uint)id < (uint)vocab ? table.Load(((long)id * dim) + column) : 0f;
    }
}
