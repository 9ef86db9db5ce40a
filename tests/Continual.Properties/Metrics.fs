/// Properties of src/Continual.Core/Metrics.fs: average accuracy, forgetting, backward and forward
/// transfer against plain loop references on random accuracy matrices, their sign on matrices whose last
/// row is the best, and the shapes on which they are undefined.
module Continual.Properties.MetricsProperties

open System
open Expecto
open FsCheck
open FsCheck.FSharp
open Continual

let private config = PropertyConfig.fixedSeed 200

let private property name (g: Gen<'a>) (p: 'a -> bool) =
    testPropertyWithConfig config name (Prop.forAll (Arb.fromGen g) p)

/// Accuracies in [0, 100] on a 0.01 grid; one in five is 0, 50 or 100 so ties and extremes come up.
let private accuracy : Gen<float> =
    Gen.frequency [ 4, Gen.choose (0, 10000) |> Gen.map (fun i -> float i / 100.0)
                    1, Gen.elements [ 0.0; 50.0; 100.0 ] ]

let private matrix (rows: int) (cols: int) : Gen<float[][]> = Gen.arrayOfLength rows (Gen.arrayOfLength cols accuracy)

/// A square matrix of 2..8 tasks.
let private square : Gen<float[][]> = Gen.choose (2, 8) |> Gen.bind (fun t -> matrix t t)

/// A square matrix of 2..8 tasks and a baseline of one accuracy per task.
let private squareAndBaseline : Gen<float[][] * float[]> =
    gen {
        let! t = Gen.choose (2, 8)
        let! r = matrix t t
        let! b = Gen.arrayOfLength t accuracy
        return r, b
    }

/// A square matrix of 2..8 tasks whose last row is at least every earlier row in every column
/// (`strict`: greater, by 0.01 at least). Earlier rows are on the 0.01 grid below 100 when strict.
let private bestLastRow (strict: bool) : Gen<float[][]> =
    gen {
        let! t = Gen.choose (2, 8)
        let top = if strict then 9999 else 10000
        let! earlier = Gen.arrayOfLength (t - 1) (Gen.arrayOfLength t (Gen.choose (0, top)))
        let! last =
            [ 0 .. t - 1 ]
            |> Gen.collectToArray (fun j ->
                let best = earlier |> Array.map (fun row -> row.[j]) |> Array.max
                Gen.choose ((if strict then best + 1 else best), 10000))
        return Array.append earlier [| last |] |> Array.map (Array.map (fun i -> float i / 100.0))
    }

/// Matrices on which forgetting and transfer are undefined: rectangular (JOINT's single row among
/// them), ragged (a row shorter than its index + 1, longer than the tasks, or a short last row), one
/// task, no rows.
let private undefinedShape : Gen<float[][]> =
    Gen.oneof [
        gen {
            let! rows = Gen.choose (1, 8)
            let! cols = Gen.choose (1, 8) |> Gen.filter (fun c -> c <> rows)
            return! matrix rows cols
        }
        gen {
            let! t = Gen.choose (2, 8)
            let! r = matrix t t
            let! i = Gen.choose (0, t - 1)
            // Row i may cover only tasks 0..i (a learner that added tasks); shorter or longer is undefined.
            let! length = Gen.choose (0, 9) |> Gen.filter (fun n -> n <> t && (i = t - 1 || n < i + 1 || n > t))
            let! row = Gen.arrayOfLength length accuracy
            return Array.updateAt i row r
        }
        matrix 1 1
        Gen.constant [||]
    ]

// Plain loop references, written from the definitions rather than from Metrics.fs.

let private averageRef (r: float[][]) =
    let last = r.[r.Length - 1]
    let mutable sum = 0.0
    for j in 0 .. last.Length - 1 do
        sum <- sum + last.[j]
    sum / float last.Length

/// mean over j < T of (max over i < T of R[i][j]) − R[T][j], T the last row's index.
let private forgettingRef (r: float[][]) =
    let last = r.Length - 1
    let mutable sum = 0.0
    for j in 0 .. last - 1 do
        let mutable best = Double.NegativeInfinity
        for i in 0 .. last - 1 do
            if r.[i].[j] > best then best <- r.[i].[j]
        sum <- sum + (best - r.[last].[j])
    sum / float last

/// mean over j < T of R[T][j] − R[j][j].
let private backwardTransferRef (r: float[][]) =
    let last = r.Length - 1
    let mutable sum = 0.0
    for j in 0 .. last - 1 do
        sum <- sum + (r.[last].[j] - r.[j].[j])
    sum / float last

/// mean over 1 ≤ j ≤ T of R[j-1][j] − b[j].
let private forwardTransferRef (r: float[][]) (b: float[]) =
    let last = r.Length - 1
    let mutable sum = 0.0
    for j in 1 .. last do
        sum <- sum + (r.[j - 1].[j] - b.[j])
    sum / float last

/// Same value up to rounding (the code and the references may sum in different orders).
let private close (expected: float) (actual: float option) =
    match actual with
    | Some a -> abs (a - expected) <= 1e-9 * (1.0 + abs expected)
    | None -> false

[<Tests>]
let tests =
    testList "metrics" [
        property "average accuracy is the mean of the last row, for any row count (JOINT has one)"
            (gen {
                let! rows = Gen.choose (1, 8)
                let! cols = Gen.choose (1, 8)
                return! matrix rows cols
             })
            (fun r -> close (averageRef r) (Some(Metrics.averageAccuracy r)))

        property "forgetting equals a plain loop on square matrices" square (fun r ->
            close (forgettingRef r) (Metrics.forgetting r))

        property "backward transfer equals a plain loop on square matrices" square (fun r ->
            close (backwardTransferRef r) (Metrics.backwardTransfer r))

        property "forward transfer equals a plain loop on square matrices" squareAndBaseline (fun (r, b) ->
            close (forwardTransferRef r b) (Metrics.forwardTransfer r b))

        property "the references agree with the code when the last row is the best" (bestLastRow false) (fun r ->
            close (forgettingRef r) (Metrics.forgetting r) && close (backwardTransferRef r) (Metrics.backwardTransfer r))

        property "with the last row elementwise the best, forgetting ≤ 0 and backward transfer ≥ 0" (bestLastRow false) (fun r ->
            match Metrics.forgetting r, Metrics.backwardTransfer r with
            | Some f, Some bwt -> f <= 0.0 && bwt >= 0.0
            | _ -> false)

        // The max runs over the earlier rows only, so forgetting can go below 0; a max that took in the
        // last row as well would give exactly 0 here.
        property "with the last row strictly the best, forgetting < 0 and backward transfer > 0" (bestLastRow true) (fun r ->
            match Metrics.forgetting r, Metrics.backwardTransfer r with
            | Some f, Some bwt -> f < 0.0 && bwt > 0.0
            | _ -> false)

        // R[j][j] is among the earlier rows the max runs over, so each task's forgetting is at least minus
        // its backward transfer.
        property "forgetting + backward transfer ≥ 0 on every square matrix" square (fun r ->
            match Metrics.forgetting r, Metrics.backwardTransfer r with
            | Some f, Some bwt -> f + bwt >= -1e-9
            | _ -> false)

        property "forgetting and backward and forward transfer are None when not square or one task" undefinedShape (fun r ->
            // The baseline is not read on these shapes, so any length is accepted.
            let baseline = Array.create (max 1 r.Length) 10.0
            Metrics.forgetting r = None && Metrics.backwardTransfer r = None && Metrics.forwardTransfer r baseline = None)

        property "JOINT's single row: average accuracy is its mean; no forgetting or transfer"
            (Gen.choose (1, 8) |> Gen.bind (matrix 1))
            (fun r ->
                let row = r.[0]
                close (Array.sum row / float row.Length) (Some(Metrics.averageAccuracy r))
                && Metrics.forgetting r = None
                && Metrics.backwardTransfer r = None
                && Metrics.forwardTransfer r (Array.zeroCreate row.Length) = None)

        property "forward transfer is 0 when the baseline is the superdiagonal" squareAndBaseline (fun (r, b) ->
            // b.[0] stays random: no task precedes task 0, so it must not count.
            let baseline = Array.init r.Length (fun j -> if j = 0 then b.[0] else r.[j - 1].[j])
            Metrics.forwardTransfer r baseline = Some 0.0)

        property "forward transfer reads only the superdiagonal and baseline.[1..]"
            (gen {
                let! r, b = squareAndBaseline
                let! noise = matrix r.Length r.Length
                let! b0 = accuracy
                return r, b, noise, b0
             })
            (fun (r, b, noise, b0) ->
                // Every entry off the superdiagonal, and b.[0], replaced by other accuracies.
                let other = noise |> Array.mapi (fun i row -> row |> Array.mapi (fun j v -> if j = i + 1 then r.[i].[j] else v))
                Metrics.forwardTransfer r b = Metrics.forwardTransfer other (Array.updateAt 0 b0 b))

        property "a baseline of the wrong length throws ArgumentException naming both lengths"
            (gen {
                let! r = square
                let! length = Gen.choose (0, 10) |> Gen.filter (fun n -> n <> r.Length)
                return r, Array.create length 10.0
             })
            (fun (r, b) ->
                try
                    Metrics.forwardTransfer r b |> ignore
                    false
                with :? ArgumentException as e ->
                    e.ParamName = "baseline"
                    && e.Message.Contains(sprintf "%d figures for %d tasks" b.Length r.Length))

        property "per-task forgetting averages to forgetting, term by term against a plain loop" square (fun r ->
            let t = r.Length
            let expected = [| for j in 0 .. t - 2 -> (seq { for i in 0 .. t - 2 -> r.[i].[j] } |> Seq.max) - r.[t - 1].[j] |]
            match Metrics.forgettingPerTask r, Metrics.forgetting r with
            | Some values, Some f -> values = expected && abs (Array.average values - f) < 1e-9
            | _ -> false)

        property "intransigence is the reference minus the diagonal on average: zero against the diagonal itself" squareAndBaseline (fun (r, a) ->
            let t = r.Length
            let diagonal = Array.init t (fun k -> r.[k].[k])
            Metrics.intransigence r diagonal = Some 0.0
            && (match Metrics.intransigence r a with
                | Some v -> abs (v - (Array.init t (fun k -> a.[k] - r.[k].[k]) |> Array.average)) < 1e-9
                | None -> false))

        property "old and new task accuracy split the average: ((T − 1)·old + new) / T" square (fun r ->
            let t = float r.Length
            match Metrics.oldTaskAccuracy r with
            | Some old -> abs (((t - 1.0) * old + Metrics.newTaskAccuracy r) / t - Metrics.averageAccuracy r) < 1e-9
            | None -> false)
    ]
