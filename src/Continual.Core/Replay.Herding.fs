namespace Continual.Replay

/// iCaRL's herding selection as a pure function of feature vectors.
[<RequireQualifiedAccess>]
module Herding =

    /// Picks up to `count` distinct samples greedily: at step k (1-based) the sample, among those not
    /// yet chosen, whose addition brings the running mean of the k chosen features closest (Euclidean)
    /// to the mean of all features; ties go to the lowest index. Returns indices in selection order,
    /// so every prefix is itself a herding selection (iCaRL shrinks a class's exemplars by truncation).
    let select (count: int) (features: float32[][]) : int[] =
        let n = features.Length
        if n = 0 || count <= 0 then [||]
        else
            let d = features.[0].Length
            if features |> Array.exists (fun f -> f.Length <> d) then
                invalidArg (nameof features) "every feature vector must have the same length"
            let mean = Array.init d (fun j -> (features |> Array.sumBy (fun f -> float f.[j])) / float n)
            let sum = Array.zeroCreate<float> d
            let chosen = Array.zeroCreate<bool> n
            let picks = ResizeArray()
            for k in 1 .. min count n do
                let mutable best = -1
                let mutable bestCost = infinity
                for i in 0 .. n - 1 do
                    if not chosen.[i] then
                        let f = features.[i]
                        let mutable cost = 0.0
                        for j in 0 .. d - 1 do
                            let diff = mean.[j] - (sum.[j] + float f.[j]) / float k
                            cost <- cost + diff * diff
                        if cost < bestCost then
                            bestCost <- cost
                            best <- i
                // Non-finite features compare false everywhere; fall back to the first free sample.
                if best < 0 then best <- Array.findIndex not chosen
                chosen.[best] <- true
                picks.Add best
                let f = features.[best]
                for j in 0 .. d - 1 do
                    sum.[j] <- sum.[j] + float f.[j]
            picks.ToArray()
