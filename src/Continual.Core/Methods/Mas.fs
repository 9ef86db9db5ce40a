namespace Continual.Methods

open Continual
open Continual.Models
open Continual.Penalties
open TorchSharp

/// MAS (Aljundi et al. 2018): Ω accumulated over tasks from output-norm gradients; penalty `Σ (λ/2) Ω (θ − θ*)²`.
[<RequireQualifiedAccess>]
module Mas =

    /// MAS's hyper-parameters.
    type Settings =
        { /// Penalty strength λ.
          Lambda: float }
        /// λ 0.1 (chosen on seed 10 of Split Fashion-MNIST, docs/importance.md).
        static member Default = { Lambda = 0.1 }

    /// MAS's state.
    type State =
        { Importance: Tensor list option
          Penalty: Quadratic option }

    /// MAS's initial state.
    let initial : State = { Importance = None; Penalty = None }

    /// MAS at a task end: `Ω ← Ω + Ω_t`, θ* = θ.
    let endTask (settings: Settings) (context: TaskContext) (state: State) : State =
        let current = Estimate.mas context.Model context.Train context.Device
        let importance =
            match state.Importance with
            | None -> current
            | Some old ->
                let merged = ParameterTensors.combine 1.0 old 1.0 current
                ParameterTensors.dispose current
                merged
        { Importance = Some importance
          Penalty = Some(Quadratic.create Half settings.Lambda importance context.Parameters) }

    /// MAS after the head grew: Ω gets zero rows, the penalty zero curvature and the initial values as
    /// anchor on the new rows.
    let grow (growth: HeadGrowth) (state: State) : State =
        { Importance = HeadGrowth.growOptional growth RowFill.Zeros state.Importance
          Penalty = HeadGrowth.growPenalty growth state.Penalty }

    /// The tensors MAS's state owns.
    let owned (state: State) =
        Method.optionalTensors state.Importance @ Method.ownedPenalty state.Penalty

    /// MAS as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "mas" with
            Penalties = fun s -> Method.penaltyTerms "mas" s.Penalty
            EndTask = endTask settings
            Grow = grow
            Owned = owned
            Footprint = fun s -> Footprint.add (Footprint.penalty s.Penalty) { Footprint.zero with Importance = Footprint.optionalBytes s.Importance } }

    /// MAS packed with its initial state.
    let create (settings: Settings) : MethodInstance = Method.pack (method settings) initial
