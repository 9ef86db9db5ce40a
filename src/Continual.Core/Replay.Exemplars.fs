namespace Continual.Replay

open Continual
open Continual.Data
open TorchSharp

/// One class's exemplars: inputs [k, features] on the host device in herding order.
type ClassExemplars = { Class: int; Inputs: Tensor }

/// A class-balanced exemplar store filled by herding (iCaRL's memory). Every function returns new
/// tensors and frees none: the caller owns what it passes in.
[<RequireQualifiedAccess>]
module Exemplars =

    /// Slots per class when `memory` slots are split evenly over `classes` classes.
    let perClass (memory: int) (classes: int) = memory / max 1 classes

    /// The first `k` exemplars of each class's herding order (copies: a store can be shrunk while the
    /// previous one is still held).
    let shrink (k: int) (store: ClassExemplars list) : ClassExemplars list =
        store
        |> List.map (fun e ->
            let keep = min k (int e.Inputs.shape.[0])
            { e with Inputs = e.Inputs.narrow(0L, 0L, int64 keep).clone().DetachFromDisposeScope() })

    /// Herding's `k` exemplars of class `c` from a training set, given a function that embeds inputs as
    /// host rows (the model's embedding in evaluation mode).
    let select (k: int) (embedRows: Tensor -> float32[][]) (train: LabelledSet) (c: int) : ClassExemplars =
        use scope = torch.NewDisposeScope()
        let rows = [| for i in 0 .. train.Count - 1 do if train.LabelArray.[i] = c then int64 i |]
        let inputs = train.InputsAt(torch.tensor(rows, dtype = torch.ScalarType.Int64))
        let picks = Herding.select k (embedRows inputs)
        let chosen = inputs.index_select(0L, torch.tensor(picks |> Array.map int64, dtype = torch.ScalarType.Int64))
        { Class = c; Inputs = chosen.DetachFromDisposeScope() }

    /// The store as a labelled training set (new tensors), None when it is empty.
    let asTrainingSet (store: ClassExemplars list) : LabelledSet option =
        match store with
        | [] -> None
        | _ ->
            let labels = store |> List.collect (fun e -> List.replicate (int e.Inputs.shape.[0]) e.Class) |> Array.ofList
            // Exemplars are held materialised (float32, normalised where their data was).
            Some { Stored = torch.cat([| for e in store -> e.Inputs |], 0L)
                   Labels = torch.tensor(labels |> Array.map int64, dtype = torch.ScalarType.Int64)
                   LabelArray = labels
                   Normalisation = None }

    /// How many exemplars each class holds, by class.
    let counts (store: ClassExemplars list) = store |> List.map (fun e -> e.Class, int e.Inputs.shape.[0])
