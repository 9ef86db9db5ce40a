namespace Continual.Methods

open Continual
open Continual.Models
open Continual.Replay
open TorchSharp

/// iCaRL (Rebuffi et al.) in the reference conventions: a fixed memory split evenly over the classes
/// seen, filled by herding at every task end (older classes shrink by truncating their herding order);
/// the exemplars are trained on together with each new task's data; the loss is sigmoid binary
/// cross-entropy over the seen classes, with the old model's sigmoid outputs as targets for the old
/// classes and one-hot labels for the new ones; evaluation uses the nearest mean of exemplars in the
/// embedding (class means computed with the current model at the task end).
[<RequireQualifiedAccess>]
module Icarl =

    /// iCaRL's settings.
    type Settings =
        { /// Exemplars kept over all classes.
          Memory: int }
        /// A memory of 500 exemplars.
        static member Default = { Memory = 500 }

    /// iCaRL's state.
    type State =
        { Exemplars: ClassExemplars list
          /// The class-mean table [classes, width] and the mask of classes without exemplars.
          Means: (Tensor * Tensor) option
          Snapshot: Backbone option
          OldClasses: int list
          NewClasses: int list }

    /// iCaRL before the first task.
    let initial : State = { Exemplars = []; Means = None; Snapshot = None; OldClasses = []; NewClasses = [] }

    /// iCaRL at a task start: the old and the new classes.
    let beginTask (context: TaskContext) (state: State) : State =
        { state with OldClasses = context.SeenClasses |> List.except context.Classes; NewClasses = context.Classes }

    /// iCaRL's loss: sigmoid BCE over the seen classes, the snapshot's sigmoid outputs as the old
    /// classes' targets.
    let terms (state: State) (view: StepView) : LossTerm list =
        let logits = view.Output.Logits
        let device = logits.device
        let classes = logits.shape.[1]
        let oneHot = torch.nn.functional.one_hot(view.Batch.Labels, classes).to_type(torch.ScalarType.Float32)
        let newTargets = oneHot.index_select(1L, Teacher.classIndex device state.NewClasses)
        let targets =
            match state.Snapshot, state.OldClasses with
            | _, [] -> newTargets
            | Some teacher, old ->
                let targets = (Teacher.output teacher view.Batch.Inputs).Logits.sigmoid().index_select(1L, Teacher.classIndex device old)
                torch.cat([| targets; newTargets |], 1L)
            | None, old -> torch.cat([| oneHot.index_select(1L, Teacher.classIndex device old); newTargets |], 1L)
        let outputs = logits.index_select(1L, Teacher.classIndex device (state.OldClasses @ state.NewClasses))
        [ { Name = "icarl.bce"; Value = torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets) } ]

    /// The number of classes of an architecture's head.
    let private classesOf (architecture: Architecture) =
        match architecture with
        | Mlp(_, _, c) -> c
        | Cnn(_, _, _, c) -> c
        | ResNet18(_, _, _, _, c) -> c

    /// The mean embedding of each class's exemplars under the model that will be evaluated: a table
    /// [classes, width] and the mask of classes that have no exemplars.
    let classMeans (context: TaskContext) (exemplars: ClassExemplars list) : Tensor * Tensor =
        use _ = torch.no_grad ()
        use scope = torch.NewDisposeScope()
        let classes = classesOf context.Architecture
        let rows = exemplars |> List.map (fun e -> e.Class, (context.Embed(e.Inputs.``to`` context.Device)).mean([| 0L |]))
        let width = (snd rows.Head).shape.[0]
        let table = torch.zeros([| int64 classes; width |], device = context.Device)
        let missing = Array.create classes true
        for (c, m) in rows do
            table.[int64 c].copy_ m |> ignore
            missing.[c] <- false
        let mask = torch.tensor(missing, dtype = torch.ScalarType.Bool, device = context.Device)
        table.DetachFromDisposeScope(), mask.DetachFromDisposeScope()

    /// iCaRL at a task end: old classes keep the first exemplars of their herding order, the new classes'
    /// are chosen by herding, the class means are computed and the model is snapshotted.
    let endTask (settings: Settings) (context: TaskContext) (state: State) : State =
        let perClass = Exemplars.perClass settings.Memory context.SeenClasses.Length
        let kept = state.Exemplars |> List.filter (fun e -> not (List.contains e.Class context.Classes)) |> Exemplars.shrink perClass
        let added = context.Classes |> List.map (Exemplars.select perClass context.EmbedRows context.Train)
        let exemplars = (kept @ added) |> List.sortBy (fun e -> e.Class)
        { state with
            Exemplars = exemplars
            Means = Some(classMeans context exemplars)
            Snapshot = Some(Backbones.snapshot context.Device context.Model)
            NewClasses = context.Classes }

    /// The nearest-mean-of-exemplars scores: minus the squared distance of the embedding to each class
    /// mean, −∞ for classes without exemplars.
    let scores (state: State) : (ModelOutput -> Tensor) option =
        state.Means
        |> Option.map (fun (table, missing) ->
            fun (output: ModelOutput) ->
                let distances = output.Embedding.unsqueeze(1L).sub(table.unsqueeze 0L).pow(Scalars.cached 2.0).sum(2L)
                distances.neg().masked_fill(missing.unsqueeze 0L, Scalars.negativeInfinity))

    /// iCaRL after the head grew: the class-mean table gets zero rows for the new classes, marked as
    /// having no exemplars (they get means at the task's end); exemplars and the snapshot (old width:
    /// its targets are taken for the old classes only) are kept.
    let grow (growth: HeadGrowth) (state: State) : State =
        match state.Means with
        | None -> state
        | Some(table, missing) ->
            use _ = torch.no_grad ()
            use scope = torch.NewDisposeScope()
            let extra = int64 (growth.NewClasses - growth.OldClasses)
            let table' = torch.cat([| table; torch.zeros([| extra; table.shape.[1] |], dtype = table.dtype, device = table.device) |], 0L)
            let missing' = torch.cat([| missing; torch.ones([| extra |], dtype = torch.ScalarType.Bool, device = missing.device) |], 0L)
            { state with Means = Some(table'.DetachFromDisposeScope(), missing'.DetachFromDisposeScope()) }

    /// The tensors and the snapshot iCaRL's state owns.
    let owned (state: State) : System.IDisposable list =
        Method.tensors [ for e in state.Exemplars -> e.Inputs ]
        @ (state.Means |> Option.map (fun (t, m) -> Method.tensors [ t; m ]) |> Option.defaultValue [])
        @ Teacher.owned state.Snapshot

    /// iCaRL as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "icarl" with
            BeginTask = beginTask
            Terms = terms
            EndTask = endTask settings
            ExtraTrainingData = fun s -> Exemplars.asTrainingSet s.Exemplars
            Scores = scores
            Grow = grow
            Owned = owned
            Footprint =
                fun s ->
                    { Footprint.snapshot s.Snapshot with
                        Exemplars =
                            (s.Exemplars |> List.sumBy (fun e -> Footprint.tensorBytes e.Inputs))
                            + (s.Means |> Option.map (fun (a, b) -> Footprint.tensorBytes a + Footprint.tensorBytes b) |> Option.defaultValue 0L) } }

    /// iCaRL as a strategy (its memory is the method's exemplar store, not the reservoir buffer).
    let strategy (settings: Settings) : Strategy = Method.strategy "icarl" (Method.pack (method settings) initial)
