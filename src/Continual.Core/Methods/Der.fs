namespace Continual.Methods

open Continual
open TorchSharp

/// Dark Experience Replay (DER) and DER++ (Buzzega et al. 2020): the buffer keeps the model's logits
/// of every example when it was inserted; DER adds `α · MSE` between the current and the stored logits
/// of a buffer minibatch, DER++ adds `β · CE` on the labels of a second, independent minibatch.
[<RequireQualifiedAccess>]
module Der =

    /// DER's settings.
    type Settings =
        { /// Buffer slots.
          BufferSize: int
          /// Examples in the buffer minibatch.
          Minibatch: int
          /// Weight α of the logit-matching term.
          Alpha: float }
        /// The reference settings of DER with a 500-slot buffer: minibatch 128, α 1.
        static member Default = { BufferSize = 500; Minibatch = 128; Alpha = 1.0 }

    /// DER++'s settings.
    type PlusPlusSettings =
        { /// Buffer slots.
          BufferSize: int
          /// Examples in each of the two buffer minibatches.
          Minibatch: int
          /// Weight α of the logit-matching term.
          Alpha: float
          /// Weight β of the label term.
          Beta: float }
        /// The reference settings of DER++ with a 500-slot buffer: minibatch 10, α 1, β 0.5.
        static member Default = { BufferSize = 500; Minibatch = 10; Alpha = 1.0; Beta = 0.5 }

    /// The DER logit term alone: α times the MSE between the current and the stored logits.
    let logitTerm (alpha: float) (replay: ReplayView) : LossTerm =
        let matching =
            match replay.Draw.Valid with
            | None -> Losses.derLogitMatching replay.Logits replay.Draw.Logits
            // Examples stored before the head grew have no stored logits for the newer classes: those
            // columns are left out, not compared with an invented target (docs/growing-head.md).
            | Some valid -> Losses.derLogitMatchingValid replay.Logits replay.Draw.Logits valid
        { Name = "der.logits"; Value = Scalars.mul matching alpha }

    /// DER as a method: CE on the batch plus α × MSE to the stored logits of the draw.
    let derMethod (settings: Settings) : Method<unit> =
        { Method.empty "der" with
            Terms =
                fun () view ->
                    match view.Replay with
                    | [ Some replay ] -> [ Sgd.crossEntropy view; logitTerm settings.Alpha replay ]
                    | _ -> [ Sgd.crossEntropy view ] }

    /// DER++ as a method: DER plus β × CE on the labels of a second, independent draw.
    let derppMethod (settings: PlusPlusSettings) : Method<unit> =
        { Method.empty "derpp" with
            Terms =
                fun () view ->
                    match view.Replay with
                    | [ Some first; Some second ] ->
                        [ Sgd.crossEntropy view
                          logitTerm settings.Alpha first
                          { Name = "derpp.labels"; Value = Scalars.mul (Losses.crossEntropy second.Logits second.Draw.Labels) settings.Beta } ]
                    | _ -> [ Sgd.crossEntropy view ] }

    /// DER as a strategy.
    let der (settings: Settings) : Strategy =
        { Method.strategy "der" (Method.pack (derMethod settings) ()) with
            BufferSize = settings.BufferSize
            ReplayDraws = [ settings.Minibatch ] }

    /// DER++ as a strategy.
    let derpp (settings: PlusPlusSettings) : Strategy =
        { Method.strategy "derpp" (Method.pack (derppMethod settings) ()) with
            BufferSize = settings.BufferSize
            ReplayDraws = [ settings.Minibatch; settings.Minibatch ] }
