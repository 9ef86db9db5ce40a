namespace Continual.Methods

open Continual
open Continual.Models
open TorchSharp

/// Learning without Forgetting (Li & Hoiem) in the reference conventions (METHODS.md): before every
/// task after the first, the shell runs a warm-up that trains only the classifier on the new task's
/// logits with the features frozen; then the model (frozen as a snapshot) gives the soft targets of
/// the new task's images, and a step's loss is CE over all seen classes plus α times the soft-target
/// cross-entropy over the old classes. A snapshot taken right after the warm-up gives exactly the
/// logits the reference records, without needing each batch's positions in the training set.
[<RequireQualifiedAccess>]
module Lwf =

    /// LwF's hyper-parameters.
    type Settings =
        { /// Weight of the distillation term (α).
          Alpha: float
          /// Temperature of the soft targets (T = 2).
          Temperature: float
          /// Use the lecture's balancing `λ·L_old + (1 − λ)·L_new`, `λ = |Y_old| / |Y_seen|`, instead of
          /// `L_new + α·L_old` (α still multiplies L_old).
          Balanced: bool
          /// Epochs of the classifier warm-up before every task after the first (1 in the reference).
          WarmupEpochs: int }
        /// The reference settings: α 1, T 2, no balancing, one warm-up epoch.
        static member Default = { Alpha = 1.0; Temperature = 2.0; Balanced = false; WarmupEpochs = 1 }

    /// LwF's state: the warm-up's generator, the snapshot and the classes seen.
    type State =
        { Rng: RandomState
          Snapshot: Backbone option
          SeenClasses: int list
          OldClasses: int list }

    /// LwF before the first task, its warm-up shuffles drawn from the run's seed.
    let initial (seed: int64) : State =
        { Rng = Random.split 7L (Random.create seed); Snapshot = None; SeenClasses = []; OldClasses = [] }

    /// The warm-up LwF asks for: every task that has old classes.
    let warmUp (settings: Settings) (context: TaskContext) (state: State) =
        if context.SeenClasses |> List.except context.Classes |> List.isEmpty then None
        else Some({ Epochs = settings.WarmupEpochs; Rng = state.Rng }, fun rng -> { state with Rng = rng })

    /// LwF at a task start (after the warm-up): the snapshot of the model, the old and seen classes.
    let beginTask (context: TaskContext) (state: State) : State =
        let oldClasses = context.SeenClasses |> List.except context.Classes
        { state with
            Snapshot = (if oldClasses.IsEmpty then None else Some(Backbones.snapshot context.Device context.Model))
            SeenClasses = context.SeenClasses
            OldClasses = oldClasses }

    /// LwF's loss: CE over the seen classes, plus the soft-target term against the snapshot.
    let terms (settings: Settings) (state: State) (view: StepView) : LossTerm list =
        let logits = view.Output.Logits
        let ce =
            match view.Heads with
            | Some heads -> Losses.crossEntropy (Heads.mask heads view.Batch.Labels logits) view.Batch.Labels
            | None -> Losses.crossEntropy (Losses.maskToClasses state.SeenClasses logits) view.Batch.Labels
        match state.Snapshot with
        | None -> [ { Name = "ce"; Value = ce } ]
        | Some teacher ->
            let teacherLogits = (Teacher.output teacher view.Batch.Inputs).Logits
            // One soft-target term over the old classes together, or (one head per task, the paper's
            // form) one per old task's head, summed.
            let groups =
                match view.Heads with
                | Some heads -> heads.Classes |> List.filter (fun cs -> not cs.IsEmpty && cs |> List.forall (fun c -> List.contains c state.OldClasses))
                | None -> [ state.OldClasses ]
            let soft =
                groups
                |> List.map (fun classes ->
                    let index = Teacher.classIndex logits.device classes
                    Distillation.softTargetCrossEntropy settings.Temperature (teacherLogits.index_select(1L, index)) (logits.index_select(1L, index)))
                |> List.reduce Scalars.add
            if settings.Balanced then
                let lambda = float state.OldClasses.Length / float state.SeenClasses.Length
                [ { Name = "ce"; Value = Scalars.mul ce (1.0 - lambda) }
                  { Name = "lwf.kd"; Value = Scalars.mul soft (lambda * settings.Alpha) } ]
            else
                [ { Name = "ce"; Value = ce }
                  { Name = "lwf.kd"; Value = Scalars.mul soft settings.Alpha } ]

    /// LwF as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "lwf" with
            WarmUp = warmUp settings
            BeginTask = beginTask
            Terms = terms settings
            Owned = fun s -> Teacher.owned s.Snapshot
            Footprint = fun s -> Footprint.snapshot s.Snapshot }

    /// LwF as a strategy (all its terms are the method's).
    let strategy (settings: Settings) (seed: int64) : Strategy = Method.strategy "lwf" (Method.pack (method settings) (initial seed))
