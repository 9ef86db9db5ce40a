namespace Continual.Methods

open Continual

/// Plain fine-tuning (the lower bound) and JOINT (the upper bound): cross-entropy on the batch.
[<RequireQualifiedAccess>]
module Sgd =

    /// Cross-entropy of the step's batch, the term most methods start from (each row over its own
    /// task's head for a multi-head model).
    let crossEntropy (view: StepView) : LossTerm =
        let logits =
            match view.Heads with
            | Some heads -> Heads.mask heads view.Batch.Labels view.Output.Logits
            | None -> view.Output.Logits
        { Name = "ce"; Value = Losses.crossEntropy logits view.Batch.Labels }

    /// Fine-tuning as a method: no state.
    let method : Method<unit> = { Method.empty "sgd" with Terms = fun () view -> [ crossEntropy view ] }

    /// Plain fine-tuning: cross-entropy on the current batch, task after task.
    let strategy () : Strategy = Method.strategy "sgd" (Method.pack method ())

    /// All data at once with the SGD loss (the upper bound).
    let joint () : Strategy = { strategy () with Name = "joint"; Schedule = Joint }
