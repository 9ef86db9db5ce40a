namespace Continual.Methods

open Continual
open Continual.Models
open Continual.Penalties
open TorchSharp

/// EWC (Kirkpatrick et al. 2017): one (Fisher, anchor) pair per task, penalty `Σ_t Σ (λ/2) F_t (θ − θ*_t)²`.
[<RequireQualifiedAccess>]
module Ewc =

    /// EWC's hyper-parameters.
    type Settings =
        { /// Penalty strength λ.
          Lambda: float
          /// The Fisher's labels.
          Fisher: FisherKind }
        /// λ 100 (chosen on seed 10 of Split Fashion-MNIST, docs/importance.md), the true Fisher.
        static member Default = { Lambda = 100.0; Fisher = Sampled }

    /// EWC's state: every task's (Fisher, anchor) pair and the penalty they consolidate into.
    type State =
        { Tasks: (Tensor list * Tensor list) list
          Penalty: Quadratic option
          Rng: RandomState }

    /// EWC's initial state.
    let initial (rng: RandomState) : State = { Tasks = []; Penalty = None; Rng = rng }

    /// EWC at a task end: a new (Fisher, anchor) pair; the penalty consolidates all pairs.
    let endTask (settings: Settings) (context: TaskContext) (state: State) : State =
        let fisher, rng = Estimate.fisher settings.Fisher context.Model context.Train context.Device state.Rng
        let tasks = state.Tasks @ [ fisher, ParameterTensors.copy context.Parameters ]
        { Tasks = tasks; Penalty = Some(Quadratic.consolidate Half settings.Lambda tasks); Rng = rng }

    /// EWC after the head grew: every task's Fisher gets zero rows (the new outputs did not exist for
    /// that task: unconstrained), its anchor the new rows' initial values; the penalty likewise.
    let grow (growth: HeadGrowth) (state: State) : State =
        { state with
            Tasks = state.Tasks |> List.map (fun (f, a) -> HeadGrowth.growTensors growth RowFill.Zeros f, HeadGrowth.growTensors growth RowFill.Initial a)
            Penalty = HeadGrowth.growPenalty growth state.Penalty }

    /// The tensors EWC's state owns.
    let owned (state: State) =
        Method.tensors [ for (f, a) in state.Tasks do yield! f; yield! a ]
        @ Method.ownedPenalty state.Penalty

    /// EWC as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "ewc" with
            Penalties = fun s -> Method.penaltyTerms "ewc" s.Penalty
            EndTask = endTask settings
            Grow = grow
            Owned = owned
            Footprint =
                fun s ->
                    Footprint.add (Footprint.penalty s.Penalty)
                        { Footprint.zero with
                            Importance = s.Tasks |> List.sumBy (fst >> Footprint.tensorsBytes)
                            Anchors = s.Tasks |> List.sumBy (snd >> Footprint.tensorsBytes) } }

    /// EWC packed with its initial state, its generator drawn from the run's seed.
    let create (settings: Settings) (seed: int64) : MethodInstance = Method.pack (method settings) (initial (Importance.generator seed))
