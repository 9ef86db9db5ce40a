namespace Continual.Methods

open Continual
open Continual.Models
open Continual.Penalties
open TorchSharp

/// EWC++ (Chaudhry et al. 2018): the Fisher is updated every batch, `F ← α F_batch + (1 − α) F`; at each
/// task end the penalty `Σ (λ/2) F (θ − θ*)²` is frozen with that Fisher and θ* = θ.
[<RequireQualifiedAccess>]
module EwcPlusPlus =

    /// EWC++'s hyper-parameters.
    type Settings =
        { /// Penalty strength λ.
          Lambda: float
          /// Weight α of the new batch in the running Fisher.
          FisherAlpha: float
          /// The Fisher's labels.
          Fisher: FisherKind }
        /// λ 100 and α 0.001 (chosen on seed 10; a per-batch α of 0.9 remembers about ten batches of ten
        /// images, 0.001 spans about one task), the empirical Fisher.
        static member Default = { Lambda = 100.0; FisherAlpha = 0.001; Fisher = Empirical }

    /// EWC++'s state.
    type State =
        { Running: Tensor list option
          Penalty: Quadratic option
          Rng: RandomState }

    /// EWC++'s initial state (the running Fisher starts at zero on the first batch).
    let initial (rng: RandomState) : State = { Running = None; Penalty = None; Rng = rng }

    /// EWC++ after a step's backward: the batch's Fisher (`Σ_n g_n² / count`) enters the running average.
    let observe (alpha: float) (count: int) (blend: FisherBlend) (parameters: Tensor list) (state: State) : State =
        let running, rng = Importance.blendRunning alpha count blend parameters state.Running state.Rng
        { state with Running = Some running; Rng = rng }

    /// EWC++ at a task end: the penalty freezes the running Fisher with θ* = θ.
    let endTask (lambda: float) (parameters: Tensor list) (state: State) : State =
        let running = match state.Running with Some r -> r | None -> ParameterTensors.zerosLike parameters
        { state with
            Running = Some running
            Penalty = Some(Quadratic.create Half lambda running parameters) }

    /// EWC++ after the head grew: the running Fisher gets zero rows (the running average of the new
    /// outputs starts from nothing, as the whole Fisher does on the first batch), the penalty zero
    /// curvature and the initial values as anchor on the new rows.
    let grow (growth: HeadGrowth) (state: State) : State =
        { state with
            Running = HeadGrowth.growOptional growth RowFill.Zeros state.Running
            Penalty = HeadGrowth.growPenalty growth state.Penalty }

    /// The tensors EWC++'s state owns.
    let owned (state: State) =
        Method.optionalTensors state.Running @ Method.ownedPenalty state.Penalty

    /// EWC++ as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "ewc++" with
            Penalties = fun s -> Method.penaltyTerms "ewc++" s.Penalty
            Observe =
                Some(fun view s ->
                    let blend =
                        Importance.batchFisherBlend settings.Fisher view.Model view.Parameters view.Batch.Inputs view.Output.Features view.Output.Logits view.Batch.LabelArray
                    observe settings.FisherAlpha view.Batch.LabelArray.Length blend view.Parameters s)
            EndTask = fun c s -> endTask settings.Lambda c.Parameters s
            Grow = grow
            Owned = owned
            Footprint = fun s -> Footprint.add (Footprint.penalty s.Penalty) { Footprint.zero with Importance = Footprint.optionalBytes s.Running } }

    /// EWC++ packed with its initial state, its generator drawn from the run's seed.
    let create (settings: Settings) (seed: int64) : MethodInstance = Method.pack (method settings) (initial (Importance.generator seed))
