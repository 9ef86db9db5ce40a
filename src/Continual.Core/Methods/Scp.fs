namespace Continual.Methods

open Continual
open Continual.Models
open Continual.Penalties
open TorchSharp

/// SCP (Kolouri et al. 2020): `Γ ← α Γ_old + (1 − α) Γ_t` at each task end; penalty `λ Σ Γ (θ − θ*)²`.
[<RequireQualifiedAccess>]
module Scp =

    /// SCP's hyper-parameters.
    type Settings =
        { /// Penalty strength λ.
          Lambda: float
          /// Weight α of the old Γ.
          Alpha: float
          /// Random slices per batch.
          Slices: int
          /// Samples per batch mean.
          BatchSize: int }
        /// λ 3 and α 0.9 (chosen on seeds 10-12, with gradients clipped to 1: see `clipGradValue`), 50
        /// slices as in Kolouri et al.'s code, batch means of 100 samples.
        static member Default = { Lambda = 3.0; Alpha = 0.9; Slices = 50; BatchSize = 100 }

    /// The gradient clipping SCP's defaults were chosen with: it keeps the stiff output-layer importance
    /// stable at a λ that also protects the hidden layers.
    let clipGradValue = 1.0

    /// SCP's state.
    type State =
        { Gamma: Tensor list option
          Penalty: Quadratic option
          Rng: RandomState }

    /// SCP's initial state.
    let initial (rng: RandomState) : State = { Gamma = None; Penalty = None; Rng = rng }

    /// SCP at a task end: `Γ ← α Γ_old + (1 − α) Γ_t` (Γ_old = 0 before the first task), θ* = θ.
    let endTask (settings: Settings) (context: TaskContext) (state: State) : State =
        let current, rng = Estimate.scp settings.Slices settings.BatchSize context.Model context.Train context.Device state.Rng
        let gamma =
            match state.Gamma with
            | Some old -> Importance.convex settings.Alpha old current
            | None ->
                let zeros = ParameterTensors.zerosLike current
                let first = Importance.convex settings.Alpha zeros current
                ParameterTensors.dispose zeros
                first
        ParameterTensors.dispose current
        { Gamma = Some gamma
          Penalty = Some(Quadratic.create Whole settings.Lambda gamma context.Parameters)
          Rng = rng }

    /// SCP after the head grew: Γ gets zero rows, the penalty zero curvature and the initial values as
    /// anchor on the new rows.
    let grow (growth: HeadGrowth) (state: State) : State =
        { state with
            Gamma = HeadGrowth.growOptional growth RowFill.Zeros state.Gamma
            Penalty = HeadGrowth.growPenalty growth state.Penalty }

    /// The tensors SCP's state owns.
    let owned (state: State) =
        Method.optionalTensors state.Gamma @ Method.ownedPenalty state.Penalty

    /// SCP as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "scp" with
            Penalties = fun s -> Method.penaltyTerms "scp" s.Penalty
            EndTask = endTask settings
            Grow = grow
            Owned = owned
            Footprint = fun s -> Footprint.add (Footprint.penalty s.Penalty) { Footprint.zero with Importance = Footprint.optionalBytes s.Gamma } }

    /// SCP packed with its initial state, its generator drawn from the run's seed.
    let create (settings: Settings) (seed: int64) : MethodInstance = Method.pack (method settings) (initial (Importance.generator seed))
