// The parameters of one Mamba-3 mixer under the official module's names, float32 on the CPU (shapes for the
// config's D, d_inner, H, P, N, R, K; linear weights stored [out, in], y = x Wᵀ):
//   in_proj.weight   [2·d_inner + 2·R·G·N + 3·H + K, D]   (no bias)
//   dt_bias          [H]        Δ = softplus(a_dt + dt_bias)
//   B_bias, C_bias   [H, R, N]  added after the B/C RMSNorm (per head, so K and Q differ per head even with G = 1)
//   B_norm.weight, C_norm.weight [N]
//   D                [H]        the skip: y += D_h · v
//   mimo_x, mimo_z, mimo_o [H, R, P]   MIMO only: v_r = x ⊙ mimo_x[h, r], z_r = z ⊙ mimo_z[h, r], o = Σ_r (...) ⊙ mimo_o[h, r]
//   norm.weight      [d_inner]  is_outproj_norm only: the grouped (group size P) RMSNorm before the gate
//   out_proj.weight  [D, d_inner] (no bias)
// Loading from safetensors (optionally under a name prefix, for a layer of a larger model) checks every tensor's
// presence and shape against the config before reading it; F32, F16, BF16 and F64 tensors are all converted to
// float32 at load (16-bit values exactly, float64 rounded to nearest). Other tensors in the file are ignored.
//
// Random initialisation (seeded, xorshift64*) follows the official module: in_proj and out_proj uniform in
// ±1/√(in); dt_bias the inverse softplus of Δ0 = max(exp(U[ln dt_min, ln dt_max]), dt_init_floor); B/C biases 1;
// norm weights 1; D 1; mimo_x and mimo_o 1/R, mimo_z 1.
using Kiln.Devices;
using Kiln.Models.Formats;
using Kiln.Models.Sampling;

namespace Kiln.Models.Mamba;

/// <summary>
/// The parameters of one Mamba-3 mixer (float32, on one device: cpu by default, or an ILGPU device through
/// <see cref="To"/>). The tensors are mutable; Dispose frees them.
/// </summary>
public sealed class Mamba3Weights : IDisposable
{
    private bool _disposed;

    /// <summary>
    /// Allocates zero-filled weights shaped by <paramref name="config"/> (validated) on <paramref name="device"/>
    /// (the default cpu device when null).
    /// </summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public Mamba3Weights(Mamba3Config config, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Config = config;
        Device = device ?? CpuDevice.Default;
        int h = config.Heads, r = config.Rank, n = config.DState, p = config.HeadDim;
        InProj = Tensor.Empty([config.InProjDim, config.DModel], device: Device);
        DtBias = Tensor.Empty([h], device: Device);
        BBias = Tensor.Empty([h, r, n], device: Device);
        CBias = Tensor.Empty([h, r, n], device: Device);
        BNorm = Tensor.Empty([n], device: Device);
        CNorm = Tensor.Empty([n], device: Device);
        D = Tensor.Empty([h], device: Device);
        if (config.IsMimo)
        {
            MimoX = Tensor.Empty([h, r, p], device: Device);
            MimoZ = Tensor.Empty([h, r, p], device: Device);
            MimoO = Tensor.Empty([h, r, p], device: Device);
        }

        if (config.IsOutProjNorm)
        {
            Norm = Tensor.Empty([config.DInner], device: Device);
        }

        OutProj = Tensor.Empty([config.DModel, config.DInner], device: Device);
    }

    /// <summary>The configuration the shapes follow.</summary>
    public Mamba3Config Config { get; }

    /// <summary>The device every tensor lives on.</summary>
    public Device Device { get; }

    /// <summary>in_proj.weight. [2·d_inner + 2·R·G·N + 3·H + K, D]</summary>
    public Tensor InProj { get; }

    /// <summary>dt_bias. [H]</summary>
    public Tensor DtBias { get; }

    /// <summary>B_bias. [H, R, N]</summary>
    public Tensor BBias { get; }

    /// <summary>C_bias. [H, R, N]</summary>
    public Tensor CBias { get; }

    /// <summary>B_norm.weight. [N]</summary>
    public Tensor BNorm { get; }

    /// <summary>C_norm.weight. [N]</summary>
    public Tensor CNorm { get; }

    /// <summary>D, the per-head skip. [H]</summary>
    public Tensor D { get; }

    /// <summary>mimo_x (MIMO only, else null). [H, R, P]</summary>
    public Tensor? MimoX { get; }

    /// <summary>mimo_z (MIMO only, else null). [H, R, P]</summary>
    public Tensor? MimoZ { get; }

    /// <summary>mimo_o (MIMO only, else null). [H, R, P]</summary>
    public Tensor? MimoO { get; }

    /// <summary>norm.weight (is_outproj_norm only, else null). [d_inner]</summary>
    public Tensor? Norm { get; }

    /// <summary>out_proj.weight. [D, d_inner]</summary>
    public Tensor OutProj { get; }

    /// <summary>The official names of the tensors this config has, in <see cref="Named"/> order.</summary>
    public static IReadOnlyList<string> TensorNames(Mamba3Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        List<string> names = ["in_proj.weight", "dt_bias", "B_bias", "C_bias", "B_norm.weight", "C_norm.weight", "D"];
        if (config.IsMimo)
        {
            names.AddRange(["mimo_x", "mimo_z", "mimo_o"]);
        }

        if (config.IsOutProjNorm)
        {
            names.Add("norm.weight");
        }

        names.Add("out_proj.weight");
        return names;
    }

    /// <summary>Every tensor with its official name (prefixed by <paramref name="prefix"/>), in a fixed order.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Named(string prefix = "")
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        IReadOnlyList<string> names = TensorNames(Config);
        Tensor?[] tensors = [InProj, DtBias, BBias, CBias, BNorm, CNorm, D, MimoX, MimoZ, MimoO, Norm, OutProj];
        int i = 0;
        foreach (Tensor? tensor in tensors)
        {
            if (tensor is not null)
            {
                yield return (prefix + names[i++], tensor);
            }
        }
    }

    /// <summary>Random weights (seeded; the same seed gives the same weights) with the official initialisation.</summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public static Mamba3Weights CreateRandom(Mamba3Config config, ulong seed)
    {
        Mamba3Weights weights = new(config);
        XorShiftRandom random = new(seed);
        Fill(weights.InProj, 1f / MathF.Sqrt(config.DModel), ref random);
        Fill(weights.OutProj, 1f / MathF.Sqrt(config.DInner), ref random);

        // Δ0 log-uniform in [dt_min, dt_max], floored, then dt_bias = Δ0 + ln(1 - exp(-Δ0)) so that softplus(dt_bias) = Δ0.
        Span<float> dtBias = weights.DtBias.AsSpan();
        for (int h = 0; h < dtBias.Length; h++)
        {
            double logMin = Math.Log(config.DtMin), logMax = Math.Log(config.DtMax);
            double dt0 = Math.Max(Math.Exp(logMin + (random.NextDouble() * (logMax - logMin))), config.DtInitFloor);
            dtBias[h] = (float)(dt0 + Math.Log(-double.ExpM1(-dt0)));
        }

        weights.BBias.AsSpan().Fill(1f);
        weights.CBias.AsSpan().Fill(1f);
        weights.BNorm.AsSpan().Fill(1f);
        weights.CNorm.AsSpan().Fill(1f);
        weights.D.AsSpan().Fill(1f);
        weights.MimoX?.AsSpan().Fill(1f / config.Rank);
        weights.MimoZ?.AsSpan().Fill(1f);
        weights.MimoO?.AsSpan().Fill(1f / config.Rank);
        weights.Norm?.AsSpan().Fill(1f);
        return weights;
    }

    /// <summary>
    /// Reads the mixer's tensors (official names after <paramref name="prefix"/>) from <paramref name="file"/>,
    /// converting F16/BF16/F64 to float32. Other tensors in the file are ignored.
    /// </summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    /// <exception cref="ModelFormatException">A tensor is missing, not floating point, or shaped differently from the config.</exception>
    public static Mamba3Weights Load(SafetensorsFile file, Mamba3Config config, string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(prefix);
        Mamba3Weights weights = new(config);
        try
        {
            // Check every entry before reading any data.
            foreach ((string name, Tensor tensor) in weights.Named(prefix))
            {
                if (!file.Entries.TryGetValue(name, out SafetensorsEntry? entry))
                {
                    throw new ModelFormatException(file.Path,
                        $"{file.Path}: tensor \"{name}\" is missing; a Mamba-3 mixer with this config needs {string.Join(", ", TensorNames(config).Select(n => prefix + n))}.");
                }

                if (!entry.IsFloat || !entry.Shape.AsSpan().SequenceEqual(tensor.Shape))
                {
                    throw new ModelFormatException(file.Path,
                        $"{file.Path}: tensor \"{name}\" is {Tensor.FormatShape(entry.Shape)} {entry.FileDType} but the config needs {Tensor.FormatShape(tensor.Shape)} "
                        + "(float); check d_model, d_state, expand, headdim, ngroups, is_mimo, mimo_rank and rope_fraction against the weights.");
                }
            }

            foreach ((string name, Tensor tensor) in weights.Named(prefix))
            {
                using Tensor loaded = file.LoadFloat32(name);
                loaded.AsSpan().CopyTo(tensor.AsSpan());
            }

            return weights;
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>Copies every tensor to <paramref name="device"/> (new weights the caller disposes).</summary>
    public Mamba3Weights To(Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        ObjectDisposedException.ThrowIf(_disposed, this);
        Mamba3Weights copy = new(Config, device);
        foreach (((_, Tensor target), (_, Tensor source)) in copy.Named().Zip(Named()))
        {
            target.CopyFrom(source.ToArray());
        }

        return copy;
    }

    /// <summary>Writes the weights (official names after <paramref name="prefix"/>) to a safetensors file.</summary>
    public void Save(string path, string prefix = "") => Safetensors.Write(path, Named(prefix));

    /// <summary>Frees the tensors. Safe to call twice.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        foreach ((_, Tensor tensor) in Named())
        {
            tensor.Dispose();
        }

        _disposed = true;
    }

    /// <summary>Fills a float32 CPU tensor uniformly in [-bound, bound).</summary>
    internal static void Fill(Tensor tensor, float bound, ref XorShiftRandom random)
    {
        Span<float> data = tensor.AsSpan();
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = (float)(((random.NextDouble() * 2) - 1) * bound);
        }
    }
}
