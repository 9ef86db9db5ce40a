namespace Continual.Methods

open Continual
open Continual.Models
open Continual.Penalties
open TorchSharp

/// L2 (the baseline of Kirkpatrick et al. 2017): every parameter equally important, anchored where the
/// last task ended; penalty `Σ (λ/2) (θ − θ*)²`. The simplest importance method: a worked example in
/// docs/methods.md.
[<RequireQualifiedAccess>]
module L2 =

    /// L2's hyper-parameter.
    type Settings =
        { /// Penalty strength λ.
          Lambda: float }
        /// λ 0.1, the best Task-IL of 0.1, 1, 10 and 100 on seed 10 of Split Fashion-MNIST (docs/methods.md).
        static member Default = { Lambda = 0.1 }

    /// L2's state: the penalty of the last task's end, None before it.
    type State = { Penalty: Quadratic option }

    /// L2 before the first task.
    let initial : State = { Penalty = None }

    /// L2 at a task end: importance 1 everywhere, θ* = θ.
    let endTask (settings: Settings) (context: TaskContext) (state: State) : State =
        let ones = context.Parameters |> List.map (fun p -> torch.ones_like(p).DetachFromDisposeScope())
        let penalty = Quadratic.create Half settings.Lambda ones context.Parameters
        ParameterTensors.dispose ones
        { Penalty = Some penalty }

    /// L2 as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "l2" with
            Penalties = fun s -> Method.penaltyTerms "l2" s.Penalty
            EndTask = endTask settings
            // New outputs get importance 0, not L2's 1: no task anchored them.
            Grow = fun growth s -> { Penalty = HeadGrowth.growPenalty growth s.Penalty }
            Owned = fun s -> Method.ownedPenalty s.Penalty
            Footprint = fun s -> Footprint.penalty s.Penalty }

    /// L2 packed before the first task.
    let create (settings: Settings) : MethodInstance = Method.pack (method settings) initial
