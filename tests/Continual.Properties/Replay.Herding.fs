/// Properties of src/Continual.Core/Replay.Herding.fs (iCaRL's exemplar selection).
module Continual.Properties.ReplayHerding

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual.Replay
open Continual.Properties.DistillationSupport

/// Features (n in 1..12, D in 1..4) and a count in 0..14.
let private case =
    gen {
        let! n = Gen.choose (1, 12)
        let! d = Gen.choose (1, 4)
        let! features = matrix n d
        let! count = Gen.choose (0, 14)
        return features |> Array.map (Array.map float32), count
    }

let private meanOf (rows: float[][]) = Array.init rows.[0].Length (fun j -> rows |> Array.averageBy (fun r -> r.[j]))

[<Tests>]
let herdingTests =
    testList "replay.herding" [
        property "at every step herding picks the sample that brings the running mean closest to the class mean" case (fun (features, count) ->
            let x = features |> Array.map (Array.map float)
            let target = meanOf x
            let picks = Herding.select count features
            picks
            |> Array.mapi (fun k pick ->
                let before = picks.[.. k - 1]
                // Recomputed from scratch: the mean of the chosen set with each candidate added.
                let cost i = norm (sub target (meanOf (Array.append (before |> Array.map (fun b -> x.[b])) [| x.[i] |])))
                let candidates = [ for i in 0 .. x.Length - 1 do if not (Array.contains i before) then i ]
                let best = candidates |> List.map cost |> List.min
                cost pick <= best + 1e-9)
            |> Array.forall id)

        property "herding picks min(count, n) distinct indices" case (fun (features, count) ->
            let picks = Herding.select count features
            picks.Length = min count features.Length
            && (Array.distinct picks).Length = picks.Length
            && picks |> Array.forall (fun i -> i >= 0 && i < features.Length))

        property "a shorter selection is a prefix of a longer one (iCaRL shrinks by truncation)" case (fun (features, count) ->
            let long = Herding.select 14 features
            let short = Herding.select count features
            short = long.[.. short.Length - 1])
    ]
