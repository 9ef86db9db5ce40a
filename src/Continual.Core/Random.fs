namespace Continual

/// A small, fast, splittable random-number generator whose whole state is one value, so that a run
/// can save it and resume to exactly the same stream (SplitMix64).
[<Struct>]
type RandomState =
    { Seed: uint64 }

/// Operations on RandomState. Every draw returns the value and the next state.
[<RequireQualifiedAccess>]
module Random =

    let private golden = 0x9E3779B97F4A7C15UL

    /// A generator seeded from an integer; different seeds give unrelated streams.
    let create (seed: int64) : RandomState =
        { Seed = uint64 seed * 0xD1B54A32D192ED03UL + golden }

    /// The next 64 random bits and the next state.
    let nextUInt64 (state: RandomState) : uint64 * RandomState =
        let s = state.Seed + golden
        let mutable z = s
        z <- (z ^^^ (z >>> 30)) * 0xBF58476D1CE4E5B9UL
        z <- (z ^^^ (z >>> 27)) * 0x94D049BB133111EBUL
        z ^^^ (z >>> 31), { Seed = s }

    /// A uniform integer in [0, bound) without modulo bias; bound must be positive.
    let nextBelow (bound: int64) (state: RandomState) : int64 * RandomState =
        if bound <= 0L then invalidArg (nameof bound) "bound must be positive"
        let b = uint64 bound
        let limit = System.UInt64.MaxValue - (System.UInt64.MaxValue % b)
        let rec draw s =
            let v, s' = nextUInt64 s
            if v < limit then int64 (v % b), s' else draw s'
        draw state

    /// An independent generator derived from this one and a stream label (e.g. a task index).
    let split (label: int64) (state: RandomState) : RandomState =
        let v, _ = nextUInt64 { Seed = state.Seed ^^^ (uint64 label * 0xA24BAED4963EE407UL) }
        { Seed = v }

    /// A uniformly random permutation of 0 .. n-1 (Fisher-Yates).
    let permutation (n: int) (state: RandomState) : int64[] * RandomState =
        let items = Array.init n int64
        let mutable s = state
        for i in n - 1 .. -1 .. 1 do
            let j, s' = nextBelow (int64 (i + 1)) s
            s <- s'
            let t = items.[i]
            items.[i] <- items.[int j]
            items.[int j] <- t
        items, s

    /// `count` distinct indices drawn uniformly from 0 .. n-1 (count is capped at n).
    let sampleWithoutReplacement (count: int) (n: int) (state: RandomState) : int64[] * RandomState =
        let k = min count n
        // Partial Fisher-Yates over a sparse map keeps this O(k) even for a large n.
        let swapped = System.Collections.Generic.Dictionary<int, int>()
        let valueAt i = match swapped.TryGetValue i with | true, v -> v | _ -> i
        let result = Array.zeroCreate<int64> k
        let mutable s = state
        for i in 0 .. k - 1 do
            let j, s' = nextBelow (int64 (n - i)) s
            s <- s'
            let j = i + int j
            let vi, vj = valueAt i, valueAt j
            result.[i] <- int64 vj
            swapped.[j] <- vi
        result, s
