namespace Continual.Methods

open Continual
open Continual.Models
open TorchSharp

/// Less-Forgetting Learning (Jung et al. 2016): from the second task on, the old model (a snapshot
/// taken when the task begins) gives the penultimate features (the embedding) of the new task's inputs,
/// and a step's loss is CE plus `λ · ½ mean_n ‖h_new(x_n) − h_old(x_n)‖²`; the last layer's outputs of
/// the old classes (the old tasks' head) are frozen, the new classes' outputs train. The first task is
/// plain fine-tuning.
[<RequireQualifiedAccess>]
module Lfl =

    /// LFL's hyper-parameter.
    type Settings =
        { /// Weight λ of the feature term.
          Lambda: float }
        /// λ 0.1: of 0.01, 0.1 and 1 on seed 10 (200 training examples a class), 0.1 kept the best
        /// Task-IL; 1 collapsed the features (docs/baselines.md).
        static member Default = { Lambda = 0.1 }

    /// LFL's state: the old model's snapshot (None in the first task) and the old classes.
    type State =
        { Snapshot: Backbone option
          OldClasses: int list }

    /// LFL before the first task.
    let initial : State = { Snapshot = None; OldClasses = [] }

    /// The feature term without its weight: `½ mean_n Σ_d (current − old)²` over rows n of
    /// [n, d] embeddings. Zero exactly at the old features.
    let penalty (old: Tensor) (current: Tensor) : Tensor =
        Scalars.mul (current.sub(old).square().sum(1L).mean()) 0.5

    /// LFL at a task start: a snapshot of the model when there are old classes.
    let beginTask (context: TaskContext) (state: State) : State =
        let oldClasses = context.SeenClasses |> List.except context.Classes
        { Snapshot = (if oldClasses.IsEmpty then None else Some(Backbones.snapshot context.Device context.Model))
          OldClasses = oldClasses }

    /// LFL's loss: CE, plus λ times the feature term against the snapshot.
    let terms (settings: Settings) (state: State) (view: StepView) : LossTerm list =
        let ce = Sgd.crossEntropy view
        match state.Snapshot with
        | None -> [ ce ]
        | Some teacher ->
            let old = (Teacher.output teacher view.Batch.Inputs).Embedding
            [ ce; { Name = "lfl"; Value = Scalars.mul (penalty old view.Output.Embedding) settings.Lambda } ]

    /// What a task freezes: the classifier's outputs of the classes seen before it.
    let frozen (context: TaskContext) : Frozen =
        { Frozen.Nothing with Outputs = context.SeenClasses |> List.except context.Classes }

    /// LFL as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "lfl" with
            BeginTask = beginTask
            Terms = terms settings
            Freeze = fun context _ -> frozen context
            Owned = fun s -> Teacher.owned s.Snapshot
            Footprint = fun s -> Footprint.snapshot s.Snapshot }

    /// LFL as a strategy.
    let strategy (settings: Settings) : Strategy = Method.strategy "lfl" (Method.pack (method settings) initial)
