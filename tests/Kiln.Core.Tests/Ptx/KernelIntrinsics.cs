// Which group and warp intrinsics an ILGPU kernel calls, found by reading its IL and the IL of every method it
// calls (transitively) in Kiln, test and ILGPU.Algorithms code. The PTX test uses this to assert `bar.sync` and
// `shfl.sync` exactly where a kernel asks for them, instead of assuming every grouped kernel both shuffles and
// synchronizes. Calls through a `constrained.` prefix (an epilogue or weight reader's interface method called on a
// generic struct) are followed to the struct's implementation, so closed generic kernels are read as compiled.
using System.Reflection;
using System.Reflection.Emit;

namespace Kiln.Core.Tests.Ptx;

/// <summary>The group and warp intrinsics one kernel calls, directly or through its callees.</summary>
/// <param name="Barrier">It calls <c>Group.Barrier</c> (or BarrierAnd/Or/PopCount).</param>
/// <param name="MaybeBarrier">It calls <c>Group.Broadcast</c>, which ILGPU may lower with a barrier.</param>
/// <param name="Shuffle">It calls a <c>Warp.Shuffle*</c> or <c>Warp.Broadcast</c>.</param>
internal readonly record struct KernelIntrinsics(bool Barrier, bool MaybeBarrier, bool Shuffle)
{
    private static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(static field => (OpCode)field.GetValue(null)!)
        .ToDictionary(static code => code.Value);

    /// <summary>Reads <paramref name="kernel"/> and its callees.</summary>
    public static KernelIntrinsics Of(MethodInfo kernel)
    {
        bool barrier = false;
        bool maybeBarrier = false;
        bool shuffle = false;
        HashSet<MethodBase> seen = new();
        Stack<MethodBase> pending = new();
        pending.Push(kernel);
        while (pending.Count > 0)
        {
            MethodBase method = pending.Pop();
            if (!seen.Add(method))
            {
                continue;
            }

            foreach (MethodBase callee in Callees(method))
            {
                // Intrinsics are recorded by name; ILGPU's own code and the runtime are not entered.
                string? owner = callee.DeclaringType?.FullName;
                if (owner == "ILGPU.Group")
                {
                    barrier |= callee.Name.StartsWith("Barrier", StringComparison.Ordinal);
                    maybeBarrier |= callee.Name == "Broadcast";
                }
                else if (owner == "ILGPU.Warp")
                {
                    shuffle |= callee.Name.StartsWith("Shuffle", StringComparison.Ordinal) || callee.Name == "Broadcast";
                }
                else if (IsFollowed(callee))
                {
                    pending.Push(callee);
                }
            }
        }

        return new KernelIntrinsics(barrier, maybeBarrier, shuffle);
    }

    private static bool IsFollowed(MethodBase method)
    {
        string assembly = method.DeclaringType?.Assembly.GetName().Name ?? string.Empty;
        return method.GetMethodBody() is not null
            && (assembly == "ILGPU.Algorithms" || (assembly != "ILGPU" && !assembly.StartsWith("System", StringComparison.Ordinal)));
    }

    /// <summary>Every method <paramref name="method"/> calls, resolved in its generic context.</summary>
    private static IEnumerable<MethodBase> Callees(MethodBase method)
    {
        byte[]? il = method.GetMethodBody()?.GetILAsByteArray();
        if (il is null)
        {
            yield break;
        }

        Module module = method.Module;
        Type[]? typeArguments = method.DeclaringType is { IsGenericType: true } owner ? owner.GetGenericArguments() : null;
        Type[]? methodArguments = method.IsGenericMethod ? method.GetGenericArguments() : null;
        Type? constrained = null;
        int position = 0;
        while (position < il.Length)
        {
            // Decode one instruction: a one-byte opcode, or 0xFE and a second byte.
            short value = il[position] == 0xFE ? (short)(0xFE00 | il[position + 1]) : il[position];
            position += il[position] == 0xFE ? 2 : 1;
            OpCode code = OpCodesByValue[value];
            int operand = position;
            position += OperandSize(code.OperandType, il, position);

            if (code == OpCodes.Constrained)
            {
                constrained = module.ResolveType(BitConverter.ToInt32(il, operand), typeArguments, methodArguments);
                continue;
            }

            if (code.OperandType == OperandType.InlineMethod)
            {
                MethodBase? callee = module.ResolveMethod(BitConverter.ToInt32(il, operand), typeArguments, methodArguments);
                if (callee is not null)
                {
                    yield return Implementation(callee, constrained);
                }
            }

            constrained = null;
        }
    }

    /// <summary>The method a constrained call on a struct runs: the struct's implementation of the interface method.</summary>
    private static MethodBase Implementation(MethodBase callee, Type? constrained)
    {
        if (constrained is null || callee.DeclaringType is not { IsInterface: true } contract || constrained.IsGenericParameter)
        {
            return callee;
        }

        InterfaceMapping map = constrained.GetInterfaceMap(contract);
        int index = Array.IndexOf(map.InterfaceMethods, callee);
        return index >= 0 ? map.TargetMethods[index] : callee;
    }

    private static int OperandSize(OperandType type, byte[] il, int position) => type switch
    {
        OperandType.InlineNone => 0,
        OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
        OperandType.InlineVar => 2,
        OperandType.InlineI8 or OperandType.InlineR => 8,
        OperandType.InlineSwitch => 4 + (4 * BitConverter.ToInt32(il, position)),
        _ => 4,
    };
}
