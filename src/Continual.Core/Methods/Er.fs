namespace Continual.Methods

open Continual
open TorchSharp

/// Experience replay: one cross-entropy over the batch concatenated with a reservoir-buffer minibatch.
/// The buffer is the shell's (it fills it by reservoir sampling and draws the minibatch every step).
[<RequireQualifiedAccess>]
module Er =

    /// ER's settings.
    type Settings =
        { /// Buffer slots.
          BufferSize: int
          /// Examples drawn from the buffer every step.
          Minibatch: int }
        /// A 500-slot buffer and minibatches of 10 (the reference protocol's).
        static member Default = { BufferSize = 500; Minibatch = 10 }

    /// ER's loss: CE over the batch and the draw together (CE on the batch alone while the buffer is empty).
    let terms (view: StepView) : LossTerm list =
        match view.Replay with
        | [ Some replay ] ->
            use logits = torch.cat([| view.Output.Logits; replay.Logits |], 0L)
            use labels = torch.cat([| view.Batch.Labels; replay.Draw.Labels |], 0L)
            // One head per task: each row's softmax covers the head of its own label's task.
            let logits = match view.Heads with Some heads -> Heads.mask heads labels logits | None -> logits
            [ { Name = "ce"; Value = Losses.crossEntropy logits labels } ]
        | _ -> [ Sgd.crossEntropy view ]

    /// ER as a method: no state of its own.
    let method : Method<unit> = { Method.empty "er" with Terms = fun () view -> terms view }

    /// ER as a strategy.
    let strategy (settings: Settings) : Strategy =
        { Method.strategy "er" (Method.pack method ()) with
            BufferSize = settings.BufferSize
            ReplayDraws = [ settings.Minibatch ] }
