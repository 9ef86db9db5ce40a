/// Properties of Losses.fs and the DER terms of Methods/Der.fs.
module Continual.Properties.LossProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
open Continual
open Continual.Properties.PropertyConfig

/// Small finite logit matrices: rows x classes with entries in [-10, 10].
let private logitMatrices =
    gen {
        let! rows = Gen.choose (1, 8)
        let! classes = Gen.choose (2, 10)
        let! values = Gen.arrayOfLength (rows * classes) (Gen.choose (-10000, 10000) |> Gen.map (fun v -> float32 v / 1000.0f))
        return rows, classes, values
    }
    |> Arb.fromGen

/// The plain reference: mean over samples and entries of the squared difference.
let private referenceMse (a: float32[]) (b: float32[]) =
    Array.map2 (fun (x: float32) y -> float (x - y) ** 2.0) a b |> Array.average

[<Tests>]
let tests =
    testList "losses" [
        testPropertyWithConfig (fixedSeed 100) "the DER term is zero exactly when outputs equal the stored logits"
        <| Prop.forAll (Arb.zip (logitMatrices, Arb.fromGen (Gen.choose (0, 1000)))) (fun ((rows, classes, values), perturbAt) ->
            use stored = torch.tensor(values).reshape(int64 rows, int64 classes)
            use same = torch.tensor(values).reshape(int64 rows, int64 classes)
            let changed = Array.copy values
            let i = perturbAt % changed.Length
            changed.[i] <- changed.[i] + 0.5f
            use moved = torch.tensor(changed).reshape(int64 rows, int64 classes)
            let zero = Scalars.toFloat32 (Losses.derLogitMatching same stored)
            let positive = float (Scalars.toFloat32 (Losses.derLogitMatching moved stored))
            zero = 0.0f && positive > 0.0 && abs (positive - referenceMse changed values) <= Tolerance.float32Sum)

        testPropertyWithConfig (fixedSeed 100) "Task-IL masking never predicts outside the task"
        <| Prop.forAll logitMatrices (fun (rows, classes, values) ->
            use logits = torch.tensor(values).reshape(int64 rows, int64 classes)
            let task = [ 0 .. classes - 1 ] |> List.filter (fun c -> c % 2 = rows % 2)
            let task = if task.IsEmpty then [ 0 ] else task
            use masked = Losses.maskToClasses task logits
            use predicted = masked.argmax(1L)
            predicted.data<int64>().ToArray() |> Array.forall (fun p -> List.contains (int p) task))

        testPropertyWithConfig (fixedSeed 100) "cross-entropy matches the plain log-softmax reference"
        <| Prop.forAll logitMatrices (fun (rows, classes, values) ->
            let labels = Array.init rows (fun r -> int64 ((r * 7) % classes))
            use logits = torch.tensor(values).reshape(int64 rows, int64 classes)
            use y = torch.tensor(labels, dtype = torch.ScalarType.Int64)
            let actual = float (Scalars.toFloat32 (Losses.crossEntropy logits y))
            let expected =
                [| for r in 0 .. rows - 1 ->
                     let row = values.[r * classes .. r * classes + classes - 1] |> Array.map float
                     let m = Array.max row
                     let logSum = m + log (row |> Array.sumBy (fun v -> exp (v - m)))
                     logSum - row.[int labels.[r]] |]
                |> Array.average
            abs (actual - expected) <= 1e-4 * (1.0 + abs expected))
    ]
