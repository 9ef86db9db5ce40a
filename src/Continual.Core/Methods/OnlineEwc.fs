namespace Continual.Methods

open Continual
open Continual.Models
open Continual.Penalties
open TorchSharp

/// Online EWC (Schwarz et al. 2018): one running Fisher `F ← γ F + F_t` and one anchor; penalty
/// `λ Σ F (θ − θ*)²` (the reference convention, no ½).
[<RequireQualifiedAccess>]
module OnlineEwc =

    /// Online EWC's hyper-parameters.
    type Settings =
        { /// Penalty strength λ.
          Lambda: float
          /// Decay γ of the old Fisher.
          Gamma: float
          /// The Fisher's labels.
          Fisher: FisherKind }
        /// METHODS.md's reference settings: λ 90, γ 1, the p(y|x)-weighted Fisher.
        static member Default = { Lambda = 90.0; Gamma = 1.0; Fisher = LabelWeighted }

    /// Online EWC's state.
    type State =
        { Fisher: Tensor list option
          Penalty: Quadratic option
          Rng: RandomState }

    /// Online EWC's initial state.
    let initial (rng: RandomState) : State = { Fisher = None; Penalty = None; Rng = rng }

    /// Online EWC's merge `γ F_old + F_t` (pure).
    let merge (gamma: float) (old: Tensor list) (current: Tensor list) : Tensor list =
        ParameterTensors.combine gamma old 1.0 current

    /// Online EWC at a task end: `F ← γ F + F_t`, θ* = θ.
    let endTask (settings: Settings) (context: TaskContext) (state: State) : State =
        let current, rng = Estimate.fisher settings.Fisher context.Model context.Train context.Device state.Rng
        let fisher =
            match state.Fisher with
            | None -> current
            | Some old ->
                let merged = merge settings.Gamma old current
                ParameterTensors.dispose current
                merged
        { Fisher = Some fisher
          Penalty = Some(Quadratic.create Whole settings.Lambda fisher context.Parameters)
          Rng = rng }

    /// Online EWC after the head grew: the running Fisher gets zero rows, the penalty zero curvature and
    /// the initial values as anchor on the new rows.
    let grow (growth: HeadGrowth) (state: State) : State =
        { state with
            Fisher = HeadGrowth.growOptional growth RowFill.Zeros state.Fisher
            Penalty = HeadGrowth.growPenalty growth state.Penalty }

    /// The tensors online EWC's state owns.
    let owned (state: State) =
        Method.optionalTensors state.Fisher @ Method.ownedPenalty state.Penalty

    /// Online EWC as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "ewc-online" with
            Penalties = fun s -> Method.penaltyTerms "ewc-online" s.Penalty
            EndTask = endTask settings
            Grow = grow
            Owned = owned
            Footprint = fun s -> Footprint.add (Footprint.penalty s.Penalty) { Footprint.zero with Importance = Footprint.optionalBytes s.Fisher } }

    /// Online EWC packed with its initial state, its generator drawn from the run's seed.
    let create (settings: Settings) (seed: int64) : MethodInstance = Method.pack (method settings) (initial (Importance.generator seed))
