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

    /// Rows embedded at a time (the training shell's embedRows walks its inputs in chunks of this size).
    let embedChunk = 1000

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
        // Materialised a chunk at a time (a class of pixel bytes is four times larger as float32); the
        // chunks are those embedRows walks in, so the forward passes, and the embeddings, are the same.
        let embeddings =
            [| for start in 0 .. embedChunk .. rows.Length - 1 do
                   use scope = torch.NewDisposeScope()
                   use index = torch.tensor(Array.sub rows start (min embedChunk (rows.Length - start)), dtype = torch.ScalarType.Int64)
                   use inputs = train.InputsAt index
                   yield! embedRows inputs |]
        let picks = Herding.select k embeddings
        let chosen = train.InputsAt(torch.tensor(picks |> Array.map (fun p -> rows.[p]), dtype = torch.ScalarType.Int64))
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
