// Picks the next token from a row of logits [V]:
//   - temperature 0: greedy, the first index of the largest logit;
//   - otherwise weights w_i = exp((l_i - max) / T) (max-subtracted, so no overflow), then
//     1. top-k (K > 0 and K < V): keep the K largest weights;
//     2. top-p (P < 1): of what is left, sorted by weight, keep the shortest prefix whose mass reaches P times
//        the mass left, the token that crosses P included (nucleus sampling);
//     3. draw u uniform in [0, 1) and return the kept token where the running sum of weights passes u × mass.
// Order within the kept set: logit descending (the weight order wherever weights differ, and still the right order
// where extreme temperatures round weights to equal values), ties by lower id (so results are deterministic). NaN
// logits count as -inf. Logits that are all -inf or NaN give id 0; a +inf logit wins outright (the first one).
// Buffers are sized once for the vocabulary: a step allocates nothing. Sums run in float64.

namespace Kiln.Models.Sampling;

/// <summary>Sampling settings: temperature, top-k, top-p and the seed.</summary>
public sealed record SamplerOptions
{
    /// <summary>The softmax temperature; 0 is greedy (argmax).</summary>
    public float Temperature { get; init; } = 1f;

    /// <summary>Keep only the K most likely tokens; 0 keeps all.</summary>
    public int TopK { get; init; }

    /// <summary>Keep the most likely tokens up to this much probability (the token crossing it included); 1 keeps all.</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>The seed of the random sequence.</summary>
    public ulong Seed { get; init; }

    /// <summary>Greedy decoding: temperature 0.</summary>
    public static SamplerOptions Greedy { get; } = new() { Temperature = 0f };

    /// <summary>Checks the ranges.</summary>
    /// <exception cref="ArgumentOutOfRangeException">
    /// The temperature is negative or not finite, top-p is outside (0, 1], or top-k is negative.
    /// </exception>
    public void Validate()
    {
        if (!(Temperature >= 0) || !float.IsFinite(Temperature))
        {
            throw new ArgumentOutOfRangeException(nameof(Temperature), $"The temperature is {Temperature}; it must be a finite number >= 0 (0 means greedy).");
        }

        if (!(TopP > 0 && TopP <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(TopP), $"Top-p is {TopP}; it must be in (0, 1] (1 keeps every token).");
        }

        if (TopK < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(TopK), $"Top-k is {TopK}; it must be >= 0 (0 keeps every token).");
        }
    }
}

/// <summary>Chooses tokens from logits: greedy, temperature, top-k and top-p, seeded and reproducible.</summary>
public sealed class Sampler
{
    private readonly float[] _weights;  // [V] exp((l - max) / T), 0 for NaN and -inf
    private readonly ulong[] _keys;     // [V] (~ordered logit bits) << 32 | id: ascending = logit descending, id ascending
    private XorShiftRandom _random;

    /// <summary>Creates a sampler for a vocabulary of <paramref name="vocabSize"/> tokens.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The vocabulary size is below 1, or an option is out of range.</exception>
    public Sampler(int vocabSize, SamplerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (vocabSize < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(vocabSize), $"The vocabulary size is {vocabSize}; it must be at least 1.");
        }

        options.Validate();
        VocabSize = vocabSize;
        Options = options;
        _weights = new float[vocabSize];
        _keys = new ulong[vocabSize];
        _random = new XorShiftRandom(options.Seed);
    }

    /// <summary>The vocabulary size V.</summary>
    public int VocabSize { get; }

    /// <summary>The settings.</summary>
    public SamplerOptions Options { get; }

    /// <summary>
    /// Whether a session can draw on its device exactly what <see cref="Sample"/> draws: true when neither top-k nor
    /// top-p cuts the vocabulary (greedy, or plain temperature sampling). See <see cref="IDeviceSampling"/>.
    /// </summary>
    public bool CanSampleOnDevice => !(Options.TopK > 0 && Options.TopK < VocabSize) && Options.TopP >= 1f;

    /// <summary>
    /// The uniform number in [0, 1) for the next draw on a device: the number <see cref="Sample"/> would draw next
    /// (0, without drawing, for greedy). <see cref="Sample"/> draws nothing when the logits are all -inf/NaN or hold
    /// a +inf; a device draw cannot know that, so after such a step the two sequences differ.
    /// </summary>
    public double NextUniform() => Options.Temperature == 0f ? 0 : _random.NextDouble();

    /// <summary>Restarts the random sequence from the seed, so the next draws repeat those after construction.</summary>
    public void Reset() => _random = new XorShiftRandom(Options.Seed);

    /// <summary>Chooses a token id from <paramref name="logits"/> [V]; always a valid id in [0, V).</summary>
    /// <exception cref="ArgumentException">The logits do not have <see cref="VocabSize"/> entries.</exception>
    public int Sample(ReadOnlySpan<float> logits)
    {
        CheckLength(logits.Length, nameof(logits));
        if (Options.Temperature == 0f)
        {
            return ArgMax(logits);
        }

        // Keep the candidates, then draw one in proportion to its weight.
        int kept = Candidates(logits, out bool sorted, out double mass);
        if (kept < 0)
        {
            return ArgMax(logits);
        }

        double target = _random.NextDouble() * mass;
        double running = 0;
        int last = -1;
        for (int i = 0; i < kept; i++)
        {
            int id = sorted ? (int)(uint)_keys[i] : i;
            float weight = _weights[id];
            if (weight <= 0)
            {
                continue;
            }

            running += weight;
            last = id;
            if (running > target)
            {
                return id;
            }
        }

        // Rounding left the target just above the sum: the last token with weight takes it.
        return last >= 0 ? last : ArgMax(logits);
    }

    /// <summary>
    /// Writes the tokens the sampler may draw from and their probabilities (renormalized over the kept set), in
    /// sampling order: logit descending (ties: lower id) when top-k or top-p cut, else by id. Greedy gives the
    /// single argmax with probability 1.
    /// </summary>
    /// <returns>The number of candidates written.</returns>
    /// <exception cref="ArgumentException">A span has the wrong length (logits: V; outputs: at least V).</exception>
    public int GetCandidates(ReadOnlySpan<float> logits, Span<int> ids, Span<float> probabilities)
    {
        CheckLength(logits.Length, nameof(logits));
        if (ids.Length < VocabSize || probabilities.Length < VocabSize)
        {
            throw new ArgumentException($"The output spans hold {ids.Length} ids and {probabilities.Length} probabilities; both need at least {VocabSize}.", nameof(ids));
        }

        bool sorted = false;
        double mass = 0;
        int kept = Options.Temperature == 0f ? -1 : Candidates(logits, out sorted, out mass);
        if (kept < 0)
        {
            ids[0] = ArgMax(logits);
            probabilities[0] = 1f;
            return 1;
        }

        int count = 0;
        for (int i = 0; i < kept; i++)
        {
            int id = sorted ? (int)(uint)_keys[i] : i;
            ids[count] = id;
            probabilities[count] = (float)(_weights[id] / mass);
            count++;
        }

        return count;
    }

    /// <summary>The first index of the largest logit, NaN ignored; 0 when every logit is NaN.</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        float bestValue = float.NegativeInfinity;
        bool found = false;
        for (int i = 0; i < logits.Length; i++)
        {
            float value = logits[i];
            if (!float.IsNaN(value) && (!found || value > bestValue))
            {
                best = i;
                bestValue = value;
                found = true;
            }
        }

        return best;
    }

    // Fills _weights and selects the kept set. Returns the count of kept entries: the first `count` of _keys
    // (sorted) or ids 0..count-1 (unsorted); -1 when no weight is usable (every logit -inf/NaN, or one +inf).
    private int Candidates(ReadOnlySpan<float> logits, out bool sorted, out double mass)
    {
        sorted = false;
        mass = 0;

        // 1. The largest logit, NaN ignored; without a finite maximum there is no distribution to sample.
        float max = float.NegativeInfinity;
        foreach (float value in logits)
        {
            if (value > max)
            {
                max = value;
            }
        }

        if (!float.IsFinite(max))
        {
            return -1;
        }

        // 2. Max-subtracted, temperature-scaled weights; NaN and -inf weigh nothing.
        float temperature = Options.Temperature;
        double total = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float value = logits[i];
            float weight = float.IsNaN(value) ? 0f : MathF.Exp((value - max) / temperature);
            _weights[i] = weight;
            total += weight;
        }

        int topK = Options.TopK;
        float topP = Options.TopP;
        bool cutK = topK > 0 && topK < VocabSize;
        bool cutP = topP < 1f;
        if (!cutK && !cutP)
        {
            mass = total;
            return VocabSize;
        }

        // 3. Order keys so that ascending means logit descending, then id ascending.
        Span<ulong> keys = _keys;
        for (int i = 0; i < VocabSize; i++)
        {
            keys[i] = Key(logits[i], i);
        }

        int kept = VocabSize;
        if (cutK)
        {
            // Top-k: the K smallest keys to the front, then sorted.
            SelectSmallest(keys, topK);
            kept = topK;
            keys[..kept].Sort();
            total = 0;
            for (int i = 0; i < kept; i++)
            {
                total += _weights[(int)(uint)keys[i]];
            }
        }
        else
        {
            // Top-p alone: tokens below (1 - p) / (V - 1) of the mass cannot be in the nucleus (together they hold
            // less than 1 - p), so sort only the others; fall back to all if rounding leaves them short of p.
            double cutoff = (1.0 - topP) / (VocabSize - 1) * total;
            int front = 0;
            for (int i = 0; i < VocabSize; i++)
            {
                if (_weights[i] >= cutoff)
                {
                    keys[front++] = Key(logits[i], i);
                }
            }

            double frontMass = 0;
            for (int i = 0; i < front; i++)
            {
                frontMass += _weights[(int)(uint)keys[i]];
            }

            if (frontMass < topP * total)
            {
                for (int i = 0; i < VocabSize; i++)
                {
                    keys[i] = Key(logits[i], i);
                }

                front = VocabSize;
            }

            keys[..front].Sort();
            kept = front;
        }

        sorted = true;
        if (cutP)
        {
            // Top-p: the shortest prefix whose mass reaches p of the kept mass, the crossing token included.
            double threshold = topP * total;
            double running = 0;
            int prefix = 0;
            while (prefix < kept)
            {
                running += _weights[(int)(uint)keys[prefix]];
                prefix++;
                if (running >= threshold)
                {
                    break;
                }
            }

            kept = prefix;
            total = running;
        }

        mass = total;
        return kept;
    }

    // The sort key of a logit: its bits mapped so that unsigned order is float order (negatives flipped, positives
    // above them; NaN as -inf, -0 as +0), complemented so that ascending keys mean descending logits, then the id.
    private static ulong Key(float logit, int id)
    {
        uint bits = BitConverter.SingleToUInt32Bits(float.IsNaN(logit) ? float.NegativeInfinity : logit + 0f);
        uint ordered = (bits & 0x8000_0000u) != 0 ? ~bits : bits | 0x8000_0000u;
        return ((ulong)~ordered << 32) | (uint)id;
    }

    // Moves the k smallest keys to keys[0..k) (in any order): quickselect with a median-of-three pivot.
    private static void SelectSmallest(Span<ulong> keys, int k)
    {
        int lo = 0;
        int hi = keys.Length - 1;
        while (lo < hi)
        {
            // Median of three as the pivot, then Hoare partition.
            int mid = lo + ((hi - lo) / 2);
            ulong a = keys[lo];
            ulong b = keys[mid];
            ulong c = keys[hi];
            ulong pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
            int i = lo;
            int j = hi;
            while (i <= j)
            {
                while (keys[i] < pivot)
                {
                    i++;
                }

                while (keys[j] > pivot)
                {
                    j--;
                }

                if (i <= j)
                {
                    (keys[i], keys[j]) = (keys[j], keys[i]);
                    i++;
                    j--;
                }
            }

            // Keep narrowing to the side that holds position k - 1.
            if (k - 1 <= j)
            {
                hi = j;
            }
            else if (k - 1 >= i)
            {
                lo = i;
            }
            else
            {
                return;
            }
        }
    }

    private void CheckLength(int length, string name)
    {
        if (length != VocabSize)
        {
            throw new ArgumentException($"The logits hold {length} values but the sampler was made for a vocabulary of {VocabSize}; pass one row of logits [V].", name);
        }
    }
}
