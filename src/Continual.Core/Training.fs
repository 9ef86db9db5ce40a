namespace Continual

open System.Diagnostics
open System.Threading
open Continual.Data
open Continual.Models
open Continual.Penalties
open Continual.Replay
open Continual.Methods
open TorchSharp

/// Settings of the optimisation loop (the reference protocol's defaults live in Experiment).
type TrainingSettings =
    { LearningRate: float
      BatchSize: int
      Epochs: int
      WeightDecay: float
      Seed: int64
      Device: Device
      /// Report a StepsCompleted event every this many steps.
      ProgressEvery: int }

/// Training produced a loss that is not a finite number: the run cannot recover, so it stops.
exception TrainingDiverged of task: int * step: int * loss: float32
    with
        override this.Message =
            sprintf "training diverged in task %d at step %d (loss %g): lower the learning rate or the penalty or distillation weight"
                (this.task + 1) this.step this.loss

/// What the shell reports while it works.
type TrainingEvent =
    /// A run begins (or resumes): its stream has this many units (the benchmark's tasks, or one for JOINT).
    | RunStarted of tasks: int
    | TaskStarted of task: int * steps: int
    | StepsCompleted of task: int * completed: int * steps: int * meanLoss: float
    | TaskFinished of task: int * accuracies: TaskAccuracies * seconds: float
    /// A phase outside the task's steps began: a method's warm-up, or the end of a task (importance
    /// estimation, herding, snapshots).
    | PhaseStarted of task: int * phase: string

/// The frozen part of the parameters during a task, in the flat layout: the shell multiplies the
/// gradients by `Trainable` before the step and puts `Kept` back after it.
type FrozenMask =
    { /// 1 where a parameter element trains, 0 where it is frozen (flat).
      Trainable: Tensor
      /// The frozen elements' values at the task's start, 0 elsewhere (flat).
      Kept: Tensor }

/// The state that changes over a run. Everything a run depends on is here, so it can be saved.
type TrainingState =
    { Model: Backbone
      /// The model's parameters and gradients as views of two flat vectors (penalties and clipping
      /// work on them in one operation).
      Parameters: FlatParameters
      /// The model's parameters in `parameters()` order, listed once (methods read them every step).
      ParameterList: Tensor list
      /// One SGD over the model's parameters and any auxiliary modules' (their own group, no weight decay).
      Optimiser: torch.optim.Optimizer
      Buffer: ReplayBuffer option
      /// The strategy's methods in their current state, in the order their terms are summed.
      Methods: MethodInstance list
      /// Modules the shell trains for a method (FitNets' regressor), by the method's position.
      Auxiliary: (int * torch.nn.Module<Tensor, Tensor>) list
      Rng: RandomState
      /// Index of the next task to train.
      NextTask: int
      StepsTaken: int64
      /// The parameters the current task leaves unchanged (None when every parameter trains).
      Frozen: FrozenMask option }

/// What the shell hands to an after-task hook (ONNX export, checkpoints): the trained model after
/// task `Task`, its accuracies, and the test sets they were measured on.
type AfterTask =
    { Task: int
      Model: Backbone
      Architecture: Architecture
      Benchmark: Benchmark
      /// The accuracies of the model's own logits, which an exported model reproduces. They are the
      /// run's reported figures except where a method classifies differently (iCaRL's nearest
      /// mean of exemplars): then they are measured again from the logits.
      Accuracies: TaskAccuracies
      TestSets: Evaluation.TaskTestSets
      Device: Device }

/// Where a run stands inside a task's steps: what a checkpoint taken mid-task records.
type TaskPosition =
    { Task: int
      /// The epoch the next step belongs to (0-based; the task's epoch count once its steps are done).
      Epoch: int
      /// Steps of that epoch already taken.
      Step: int
      /// The run's generator before that epoch's shuffle: the shuffle is drawn again on resume.
      EpochRng: RandomState
      /// Seconds the task has taken so far.
      Seconds: float }

/// What a run has measured so far: one accuracy row per finished task, and the times.
type RunRecord =
    { ClassIl: float[][]
      TaskIl: float[][]
      TaskSeconds: float[]
      TrainSeconds: float
      EvalSeconds: float
      /// Time spent in after-task hooks (e.g. ONNX export and verification).
      HookSeconds: float
      /// Time spent writing checkpoints.
      CheckpointSeconds: float
      /// Class-IL accuracy of the model as initialised, on every task (empty when not measured).
      InitialClassIl: float[]
      /// Task-IL accuracy of the model as initialised, on every task (empty when not measured).
      InitialTaskIl: float[]
      /// The state footprint after each finished task.
      Footprint: Footprint[] }

/// Building run records.
[<RequireQualifiedAccess>]
module RunRecord =
    /// Nothing measured yet.
    let empty =
        { ClassIl = [||]
          TaskIl = [||]
          TaskSeconds = [||]
          TrainSeconds = 0.0
          EvalSeconds = 0.0
          HookSeconds = 0.0
          CheckpointSeconds = 0.0
          InitialClassIl = [||]
          InitialTaskIl = [||]
          Footprint = [||] }

/// A point a run can resume from: its state, what it has measured, and where inside a task it stands
/// (None between tasks: the next task is `State.NextTask`).
type RunPoint =
    { State: TrainingState
      Record: RunRecord
      Position: TaskPosition option }

/// Why the shell asks for a checkpoint.
type CheckpointReason =
    /// A task has been trained, evaluated and its after-task hook has run.
    | TaskEnd
    /// `CheckpointEvery` steps have been taken since the last one.
    | StepInterval
    /// A stop was requested (a signal): the run stops right after this checkpoint.
    | StopRequested

/// The named loss terms of one optimiser step: the methods' autograd terms in the order the shell sums
/// them, then their closed-form penalties (each valued at the parameters the step started from).
type StepTerms =
    { Task: int
      /// The run's step count after this step (1 for the run's first step).
      Step: int64
      Terms: (string * float) list }

/// Callbacks of a run: progress events, work to do after every task (timed separately), checkpoints,
/// and a stop request that the shell honours at the next step boundary.
type RunHooks =
    { OnEvent: TrainingEvent -> unit
      /// Sees every step's named loss terms (TensorBoard logs); None costs nothing: the terms' values are
      /// only read from their tensors when someone listens.
      OnStepTerms: (StepTerms -> unit) option
      AfterTask: AfterTask -> unit
      /// Saves a resumable point (timed separately).
      Checkpoint: CheckpointReason -> RunPoint -> unit
      /// Ask for a StepInterval checkpoint every this many steps of the run (0: never).
      CheckpointEvery: int
      /// Polled at every step boundary and after every task: when true, the shell checkpoints and
      /// raises RunStopped.
      StopRequested: unit -> bool }

/// A run stopped on request at a step boundary, after its checkpoint was saved.
exception RunStopped of task: int * runStep: int64
    with
        override this.Message = sprintf "the run stopped on request in task %d, after step %d of the run" (this.task + 1) this.runStep

/// Building hooks.
[<RequireQualifiedAccess>]
module RunHooks =
    /// No callbacks.
    let none =
        { OnEvent = ignore; OnStepTerms = None; AfterTask = ignore; Checkpoint = (fun _ _ -> ()); CheckpointEvery = 0; StopRequested = fun () -> false }
    /// Progress events only.
    let events (onEvent: TrainingEvent -> unit) = { none with OnEvent = onEvent }

/// The outcome of training a strategy on a benchmark.
type TrainingOutcome =
    { /// R.[i].[j]: Class-IL accuracy on task j after training step i (one row per task, one for JOINT).
      ClassIl: float[][]
      TaskIl: float[][]
      TaskSeconds: float[]
      TrainSeconds: float
      EvalSeconds: float
      /// Time spent in after-task hooks (e.g. ONNX export and verification).
      HookSeconds: float
      /// Time spent writing checkpoints.
      CheckpointSeconds: float
      /// Class-IL and Task-IL accuracy of the model as initialised, per task (the forward-transfer
      /// baseline; empty when not measured).
      InitialClassIl: float[]
      InitialTaskIl: float[]
      /// The state footprint after each task.
      Footprint: Footprint[]
      Steps: int64
      State: TrainingState }

/// Converting between an outcome and the record of a run.
[<RequireQualifiedAccess>]
module TrainingOutcome =

    /// The outcome of a run that measured `record` and ended in `state`.
    let ofRecord (record: RunRecord) (state: TrainingState) : TrainingOutcome =
        { ClassIl = record.ClassIl
          TaskIl = record.TaskIl
          TaskSeconds = record.TaskSeconds
          TrainSeconds = record.TrainSeconds
          EvalSeconds = record.EvalSeconds
          HookSeconds = record.HookSeconds
          CheckpointSeconds = record.CheckpointSeconds
          InitialClassIl = record.InitialClassIl
          InitialTaskIl = record.InitialTaskIl
          Footprint = record.Footprint
          Steps = state.StepsTaken
          State = state }

    /// What an outcome measured.
    let record (outcome: TrainingOutcome) : RunRecord =
        { ClassIl = outcome.ClassIl
          TaskIl = outcome.TaskIl
          TaskSeconds = outcome.TaskSeconds
          TrainSeconds = outcome.TrainSeconds
          EvalSeconds = outcome.EvalSeconds
          HookSeconds = outcome.HookSeconds
          CheckpointSeconds = outcome.CheckpointSeconds
          InitialClassIl = outcome.InitialClassIl
          InitialTaskIl = outcome.InitialTaskIl
          Footprint = outcome.Footprint }

/// Plain SGD's update, the same float operations as TorchSharp's `SGD.step` without momentum, with its
/// scalars kept alive for each native call: TorchSharp passes `alpha` (the learning rate, the weight
/// decay) as temporary Scalars that a collection on another thread may free while libtorch reads them.
[<RequireQualifiedAccess>]
module PlainSgd =

    /// One step of every parameter group: `g ← g + wd·θ` where the weight decay is not zero, then
    /// `θ ← θ − lr·g`, group by group and parameter by parameter, as `SGD.step`. Momentum, dampening,
    /// Nesterov and maximisation are refused (the shell never sets them).
    let step (optimiser: torch.optim.Optimizer) : unit =
        match optimiser with
        | :? Modules.SGD as sgd ->
            use _ = torch.no_grad ()
            use scope = torch.NewDisposeScope()
            for controller in sgd.ParamGroups do
                let group = controller :?> Modules.SGD.ParamGroup
                let options = group.Options
                if options.momentum.Value <> 0.0 || options.nesterov.Value || options.maximize.Value then
                    invalidOp "the shell's SGD has no momentum, Nesterov or maximisation"
                let weightDecay = options.weight_decay.Value
                use decay = weightDecay.ToScalar()
                use alpha = (-options.LearningRate.Value).ToScalar()
                for p in group.Parameters do
                    let grad = p.grad
                    if not (isNull grad) then
                        let grad = if weightDecay <> 0.0 then grad.add(p, decay) else grad
                        p.add_(grad, alpha) |> ignore
        | other -> invalidOp (sprintf "plain SGD steps need TorchSharp's SGD, not %s" (other.GetType().Name))

/// The one effectful shell: batches, forward passes, loss sums, optimiser steps, dispose scopes.
[<RequireQualifiedAccess>]
module Training =

    /// A fresh state: model initialised from the seed, optimiser, empty buffer.
    let initialise (architecture: Architecture) (benchmark: Benchmark) (strategy: Strategy) (settings: TrainingSettings) =
        torch.manual_seed settings.Seed |> ignore
        let model = Backbones.create architecture
        model.``to`` settings.Device |> ignore
        let flat = FlatParameters.create model
        let optimiser =
            torch.optim.SGD(model.parameters (), settings.LearningRate, weight_decay = settings.WeightDecay) :> torch.optim.Optimizer
        let rng = Random.create settings.Seed
        let features = let c, h, w = benchmark.InputShape in c * h * w
        let buffer =
            if strategy.BufferSize > 0 then
                let b = Replay.create strategy.BufferSize features (Backbones.classes architecture) (Random.split 1L rng)
                // `to` makes a new handle even on the same device; the first one is freed.
                let moved (t: Tensor) =
                    let m = t.``to``(settings.Device).DetachFromDisposeScope()
                    if not (obj.ReferenceEquals(m, t)) then t.Dispose()
                    m
                Some { b with Examples = moved b.Examples; Labels = moved b.Labels; Logits = moved b.Logits }
            else None
        { Model = model
          Parameters = flat
          ParameterList = PerSample.parameters model
          Optimiser = optimiser
          Buffer = buffer
          Methods = strategy.Methods
          Auxiliary = []
          Rng = Random.split 2L rng
          NextTask = 0
          StepsTaken = 0L
          Frozen = None }

    /// The summed value of the methods' closed-form penalties at the current parameters (0 when
    /// there are none). Steps add these penalties' gradients but do not evaluate them, which would
    /// cost as much again; the shell evaluates them when it reports.
    let penaltyValue (state: TrainingState) : float =
        match state.Methods |> List.collect (fun m -> m.Penalties()) with
        | [] -> 0.0
        | penalties -> penalties |> List.sumBy (fun p -> Quadratic.valueAt p.Penalty state.Parameters.Values)

    /// Applies a per-step transition of every method that has one. Per-step transitions update the state's
    /// tensors in place or add new ones, never drop one (Method.Observe / AfterStep), so the shell does
    /// not look for dropped tensors on this hot path; the live-tensor tests would show a leak.
    let private advanceAll (transition: MethodInstance -> (unit -> MethodInstance) option) (methods: MethodInstance list) =
        methods
        |> List.map (fun m ->
            match transition m with
            | Some next -> next ()
            | None -> m)

    /// One optimiser step (see `step`), also handing the step's named terms to `onTerms` where given:
    /// read from the terms' tensors after backward, the penalties valued before the optimiser step.
    /// Reading them draws no random number and changes no sum, so a run trains exactly as without it.
    let stepWith (onTerms: ((string * float) list -> unit) option) (strategy: Strategy) (batch: StepBatch) (state: TrainingState) : float32 * TrainingState =
        use scope = torch.NewDisposeScope()
        state.Optimiser.zero_grad ()
        let mutable buffer = state.Buffer
        let draws =
            strategy.ReplayDraws
            |> List.map (fun size ->
                match buffer with
                | Some b ->
                    let draw, b' = Replay.sample size b
                    buffer <- Some b'
                    draw
                | None -> None)
        let batchSize = batch.LabelArray.Length
        let inputs =
            match draws |> List.choose id with
            | [] -> batch.Inputs
            | some -> torch.cat(Array.ofList (batch.Inputs :: (some |> List.map (fun d -> d.Inputs))), 0L)
        let output = state.Model.ForwardWithFeatures inputs
        let mutable offset = int64 batchSize
        let replay =
            draws
            |> List.map (Option.map (fun d ->
                let n = d.Labels.shape.[0]
                let view =
                    { Draw = d
                      Logits = output.Logits.narrow(0L, offset, n)
                      Features = output.Features |> List.map (fun f -> f.narrow(0L, offset, n)) }
                offset <- offset + n
                view))
        let batchOutput =
            if offset = int64 batchSize then output
            else
                { Logits = output.Logits.narrow(0L, 0L, int64 batchSize)
                  Features = output.Features |> List.map (fun f -> f.narrow(0L, 0L, int64 batchSize)) }
        let heads = strategy.Heads |> Option.map (fun classes -> { Classes = classes; TaskOfClass = Heads.taskOfClass batch.Inputs.device classes })
        let view = { Batch = batch; Output = batchOutput; Replay = replay; Model = state.Model; Parameters = state.ParameterList; Heads = heads }
        let terms = state.Methods |> List.collect (fun m -> m.Terms view)
        let penalties = state.Methods |> List.collect (fun m -> m.Penalties())
        let loss = Losses.total terms
        loss.backward ()
        let flat = state.Parameters
        for p in penalties do
            Quadratic.addGradient p.Penalty flat.Values flat.Gradients
        match onTerms with
        | Some report ->
            report
                [ for t in terms -> t.Name, float (Scalars.toFloat32 t.Value)
                  for p in penalties -> p.Name, Quadratic.valueAt p.Penalty flat.Values ]
        | None -> ()
        match strategy.ClipGradValue with
        | Some c ->
            use low = (-c).ToScalar()
            use high = c.ToScalar()
            flat.Gradients.clamp_(low, high) |> ignore
            for (_, m) in state.Auxiliary do
                for p in m.parameters () do
                    if not (isNull p.grad) then p.grad.clamp_(low, high) |> ignore
        | None -> ()
        match state.Frozen with
        | Some frozen -> flat.Gradients.mul_ frozen.Trainable |> ignore
        | None -> ()
        let methods = state.Methods |> advanceAll (fun m -> m.Observe |> Option.map (fun observe () -> observe view))
        PlainSgd.step state.Optimiser
        match state.Frozen with
        | Some frozen ->
            // v·1 + 0 and v·0 + kept are exact: frozen elements are back to their values, bit for bit.
            use _ = torch.no_grad ()
            Scalars.addInPlace (flat.Values.mul_(frozen.Trainable)) frozen.Kept |> ignore
        | None -> ()
        let methods = methods |> advanceAll (fun m -> m.AfterStep |> Option.map (fun after () -> after state.ParameterList))
        let buffer =
            buffer
            |> Option.map (fun b ->
                use logits = batchOutput.Logits.detach ()
                Replay.add batch.Task batch.Inputs batch.Labels batch.LabelArray logits b)
        Scalars.toFloat32 loss, { state with Buffer = buffer; Methods = methods; StepsTaken = state.StepsTaken + 1L }

    /// One optimiser step on one batch: draws, a single forward pass over the batch and the draws,
    /// the methods' terms, backward, the methods' penalties' gradients in closed form, clipping,
    /// step, and the reservoir update. Every tensor made here dies with the step's dispose scope.
    /// Returns the summed loss of the autograd terms (see `penaltyValue` for the penalties') and the
    /// new state.
    let step (strategy: Strategy) (batch: StepBatch) (state: TrainingState) : float32 * TrainingState =
        stepWith None strategy batch state

    /// Trains `epochs` passes over a labelled set as the given task, reporting progress, from the start
    /// or from a position inside it (the epoch's shuffle is drawn again from the saved generator, so a
    /// resumed task takes exactly the steps it would have taken). `atStep` sees the position after
    /// every step (checkpoints, stop requests); `onStepTerms`, where given, every step's named terms.
    let trainFromWith
        (onStepTerms: (StepTerms -> unit) option)
        (strategy: Strategy)
        (settings: TrainingSettings)
        (taskIndex: int)
        (data: LabelledSet)
        (onEvent: TrainingEvent -> unit)
        (atStep: TaskPosition -> TrainingState -> unit)
        (cancellation: CancellationToken)
        (start: TaskPosition option)
        (state: TrainingState)
        =
        let n = data.Count
        if n = 0 then invalidArg (nameof data) (sprintf "task %d has no training examples" (taskIndex + 1))
        let stepsPerEpoch = (n + settings.BatchSize - 1) / settings.BatchSize
        let steps = stepsPerEpoch * settings.Epochs
        onEvent (TaskStarted(taskIndex, steps))
        let firstEpoch, firstStep = match start with Some p -> p.Epoch, p.Step | None -> 0, 0
        let mutable state = state
        let mutable completed = firstEpoch * stepsPerEpoch + firstStep
        let mutable lossSum = 0.0
        let mutable lossCount = 0
        for epoch in firstEpoch .. settings.Epochs - 1 do
            let epochRng = match start with Some p when p.Epoch = epoch -> p.EpochRng | _ -> state.Rng
            let order, rng = Random.permutation n epochRng
            state <- { state with Rng = rng }
            use index = torch.tensor(order, dtype = torch.ScalarType.Int64)
            // Each batch's rows are gathered from the stored form (uint8 for images, a quarter of the
            // floats), moved, and materialised as float32 on the device: the epoch's shuffle is never a
            // second copy of the task's data.
            let labelArray = order |> Array.map (fun i -> data.LabelArray.[int i])
            for s in (if epoch = firstEpoch then firstStep else 0) .. stepsPerEpoch - 1 do
                cancellation.ThrowIfCancellationRequested()
                let start = s * settings.BatchSize
                let size = min settings.BatchSize (n - start)
                use batchIndex = index.narrow(0L, int64 start, int64 size)
                use stored = data.Stored.index_select(0L, batchIndex)
                use rows = stored.``to`` settings.Device
                use x = data.Materialise rows
                use storedLabels = data.Labels.index_select(0L, batchIndex)
                use y = storedLabels.``to`` settings.Device
                let batch = { Inputs = x; Labels = y; LabelArray = Array.sub labelArray start size; Task = taskIndex }
                let report =
                    onStepTerms |> Option.map (fun sink terms -> sink { Task = taskIndex; Step = state.StepsTaken + 1L; Terms = terms })
                let loss, next = stepWith report strategy batch state
                state <- next
                if not (System.Single.IsFinite loss) then raise (TrainingDiverged(taskIndex, completed + 1, loss))
                lossSum <- lossSum + float loss
                lossCount <- lossCount + 1
                completed <- completed + 1
                if completed % settings.ProgressEvery = 0 || completed = steps then
                    // The window's mean loss of the autograd terms, plus the penalties at its last step.
                    let meanLoss = lossSum / float lossCount + penaltyValue state
                    if not (System.Double.IsFinite meanLoss) then raise (TrainingDiverged(taskIndex, completed, float32 meanLoss))
                    onEvent (StepsCompleted(taskIndex, completed, steps, meanLoss))
                    lossSum <- 0.0
                    lossCount <- 0
                let position =
                    if s + 1 = stepsPerEpoch then { Task = taskIndex; Epoch = epoch + 1; Step = 0; EpochRng = state.Rng; Seconds = 0.0 }
                    else { Task = taskIndex; Epoch = epoch; Step = s + 1; EpochRng = epochRng; Seconds = 0.0 }
                atStep position state
        state

    /// Trains `epochs` passes over a labelled set as the given task, reporting progress, from the start
    /// or from a position inside it (see `trainFromWith`).
    let trainFrom
        (strategy: Strategy)
        (settings: TrainingSettings)
        (taskIndex: int)
        (data: LabelledSet)
        (onEvent: TrainingEvent -> unit)
        (atStep: TaskPosition -> TrainingState -> unit)
        (cancellation: CancellationToken)
        (start: TaskPosition option)
        (state: TrainingState)
        =
        trainFromWith None strategy settings taskIndex data onEvent atStep cancellation start state

    /// Trains `epochs` passes over a labelled set as the given task, reporting progress.
    let trainOn
        (strategy: Strategy)
        (settings: TrainingSettings)
        (taskIndex: int)
        (data: LabelledSet)
        (onEvent: TrainingEvent -> unit)
        (cancellation: CancellationToken)
        (state: TrainingState)
        =
        trainFrom strategy settings taskIndex data onEvent (fun _ _ -> ()) cancellation None state

    /// Frees what a training state holds.
    let dispose (state: TrainingState) =
        state.Frozen |> Option.iter (fun f -> f.Trainable.Dispose(); f.Kept.Dispose())
        state.Buffer |> Option.iter Replay.dispose
        state.Methods |> List.iter Method.dispose
        state.Optimiser.Dispose()
        state.Auxiliary |> List.iter (fun (_, m) -> m.Dispose())
        FlatParameters.dispose state.Parameters
        state.Model.Dispose()

    /// Runs `f` with the model in evaluation mode, back in training mode after.
    let private inEvalMode (model: Backbone) (f: unit -> 'T) : 'T =
        model.eval ()
        try f () finally model.train ()

    /// The model's embeddings of inputs in one forward pass, in evaluation mode and without gradients
    /// (a tensor of the caller's dispose scope).
    let embed (model: Backbone) (inputs: Tensor) : Tensor =
        use _ = torch.no_grad ()
        inEvalMode model (fun () -> (model.ForwardWithFeatures inputs).Embedding)

    /// The model's embeddings of many inputs as host rows, moved to the device and computed in chunks
    /// of 1000, in evaluation mode and without gradients.
    let embedRows (model: Backbone) (device: Device) (cancellation: CancellationToken) (inputs: Tensor) : float32[][] =
        use _ = torch.no_grad ()
        inEvalMode model (fun () ->
            let n = int inputs.shape.[0]
            let chunk = Exemplars.embedChunk
            [| for start in 0 .. chunk .. n - 1 do
                   cancellation.ThrowIfCancellationRequested()
                   use scope = torch.NewDisposeScope()
                   let x = inputs.narrow(0L, int64 start, int64 (min chunk (n - start))).``to`` device
                   let e = (model.ForwardWithFeatures x).Embedding.cpu().contiguous()
                   let width = int e.shape.[1]
                   let flat = e.data<float32>().ToArray()
                   yield! Array.init (int e.shape.[0]) (fun r -> Array.sub flat (r * width) width) |])

    /// The context of a task for the methods: its classes and data, the model and the shell's
    /// embedding functions.
    let taskContext
        (architecture: Architecture)
        (settings: TrainingSettings)
        (cancellation: CancellationToken)
        (state: TrainingState)
        (task: int)
        (classes: int list)
        (seen: int list)
        (train: LabelledSet)
        : TaskContext =
        { Task = task
          Classes = classes
          SeenClasses = seen
          Train = train
          Model = state.Model
          Parameters = state.ParameterList
          Architecture = architecture
          Device = settings.Device
          LearningRate = settings.LearningRate
          BatchSize = settings.BatchSize
          Embed = embed state.Model
          EmbedRows = embedRows state.Model settings.Device cancellation
          Cancellation = cancellation }

    /// Keeps a tensor, or a module's parameters and buffers, out of the current dispose scope.
    let private keep (owned: System.IDisposable) =
        match owned with
        | :? Tensor as t -> t.DetachFromDisposeScope() |> ignore
        | :? torch.nn.Module as m ->
            for p in m.parameters () do p.DetachFromDisposeScope() |> ignore
            for b in m.buffers () do b.DetachFromDisposeScope() |> ignore
        | _ -> ()

    /// A task-boundary transition in a dispose scope of its own: what the next state owns is moved out
    /// of it, every other tensor the transition made dies with it, and what the transition dropped from
    /// the state is freed. Methods never manage lifetimes; the shell does it here and in `step`.
    let phase (transition: MethodInstance -> MethodInstance) (instance: MethodInstance) : MethodInstance =
        let next =
            use scope = torch.NewDisposeScope()
            let next = transition instance
            for owned in next.Owned() do
                keep owned
            next
        Method.release instance next
        next

    /// LwF's classifier warm-up: `Epochs` passes over the task's data training only the classifier with
    /// plain SGD at the run's learning rate (no weight decay), CE over the task's own classes, features
    /// frozen (computed in evaluation mode). Returns the generator after its shuffles.
    let warmUpClassifier (context: TaskContext) (warmUp: ClassifierWarmUp) : RandomState =
        let model = context.Model
        let classifier = model.Classifier
        use optimiser = torch.optim.SGD(classifier.parameters (), context.LearningRate)
        let n = context.Train.Count
        let mutable rng = warmUp.Rng
        inEvalMode model (fun () ->
            for _ in 1 .. warmUp.Epochs do
                let order, next = Random.permutation n rng
                rng <- next
                for start in 0 .. context.BatchSize .. n - 1 do
                    context.Cancellation.ThrowIfCancellationRequested()
                    use scope = torch.NewDisposeScope()
                    let size = min context.BatchSize (n - start)
                    let index = torch.tensor(Array.sub order start size, dtype = torch.ScalarType.Int64)
                    let x = context.Train.Materialise(context.Train.Stored.index_select(0L, index).``to`` context.Device)
                    let y = context.Train.Labels.index_select(0L, index).``to`` context.Device
                    let embedding =
                        use _ = torch.no_grad ()
                        (model.ForwardWithFeatures x).Embedding.detach()
                    optimiser.zero_grad ()
                    let logits = classifier.forward embedding
                    let loss = Losses.crossEntropy (Losses.maskToClasses context.Classes logits) y
                    loss.backward ()
                    PlainSgd.step optimiser
            optimiser.zero_grad ())
        rng

    /// Builds a method's auxiliary module from the model's embedding of one example, moves it to
    /// the device and adds its parameters to the optimiser (their own group: the run's learning rate,
    /// no weight decay).
    let buildAuxiliary (model: Backbone) (device: Device) (learningRate: float) (example: Tensor) (build: Tensor -> torch.nn.Module<Tensor, Tensor>) (optimiser: torch.optim.Optimizer) =
        let auxiliary =
            use scope = torch.NewDisposeScope()
            use probe = example.narrow(0L, 0L, 1L).``to`` device
            build (embed model probe)
        auxiliary.``to`` device |> ignore
        match optimiser with
        | :? Modules.SGD as sgd ->
            sgd.add_param_group(Modules.SGD.ParamGroup(auxiliary.parameters (), learningRate, 0.0, 0.0, 0.0, false, false))
        | other -> invalidOp (sprintf "auxiliary modules need the shell's SGD, not %s" (other.GetType().Name))
        auxiliary

    /// A task's start for every method, in order: the shell's classifier warm-up where a method asks for
    /// one (reported as a phase), its auxiliary module on first use, then the method's own BeginTask.
    let beginTask (onEvent: TrainingEvent -> unit) (context: TaskContext) (state: TrainingState) : TrainingState =
        let mutable auxiliary = state.Auxiliary
        let methods =
            state.Methods
            |> List.mapi (fun i m ->
                let m =
                    match m.WarmUp context with
                    | Some(warmUp, resume) ->
                        onEvent (PhaseStarted(context.Task, sprintf "%s: classifier warm-up" m.Name))
                        phase (fun _ -> resume (warmUpClassifier context warmUp)) m
                    | None -> m
                let m =
                    match m.Auxiliary with
                    | Some build when not (auxiliary |> List.exists (fun (j, _) -> j = i)) ->
                        use example = context.Train.InputRange(0L, 1L)
                        let module' = buildAuxiliary context.Model context.Device context.LearningRate example build state.Optimiser
                        auxiliary <- auxiliary @ [ i, module' ]
                        phase (fun m -> m.Attach module') m
                    | _ -> m
                phase (fun m -> m.BeginTask context) m)
        { state with Methods = methods; Auxiliary = auxiliary }

    /// A task's end for every method, in order (reported as a phase).
    let endTask (onEvent: TrainingEvent -> unit) (context: TaskContext) (state: TrainingState) : TrainingState =
        onEvent (PhaseStarted(context.Task, "end of task"))
        { state with Methods = state.Methods |> List.map (phase (fun m -> context.Cancellation.ThrowIfCancellationRequested(); m.EndTask context)) }

    /// The head width that classes need: one output per class index up to the largest.
    let requiredClasses (classes: int list) : int = if classes.IsEmpty then 0 else 1 + List.max classes

    /// The state with the classifier head grown to `classes` outputs (between tasks): a grown copy of
    /// the model (old outputs exactly, new ones initialised as the backbone initialises its classifier,
    /// `Backbones.grow`), its flat layout, a new SGD over its parameters with the same settings (plain
    /// SGD keeps no state between steps, so nothing is lost) plus the auxiliary modules' groups, the
    /// buffer's stored logits widened (`Replay.grow`) and every method's state grown (`Method.Grow`).
    /// The old model, layout, optimiser and whatever the methods dropped are freed.
    let growHead (settings: TrainingSettings) (classes: int) (state: TrainingState) : TrainingState =
        let oldClasses = Backbones.classes state.Model.Architecture
        if classes <= oldClasses then state
        else
            let model = Backbones.grow settings.Device classes state.Model
            let flat = FlatParameters.create model
            let optimiser =
                torch.optim.SGD(model.parameters (), settings.LearningRate, weight_decay = settings.WeightDecay) :> torch.optim.Optimizer
            for (_, auxiliary) in state.Auxiliary do
                match optimiser with
                | :? Modules.SGD as sgd ->
                    sgd.add_param_group(Modules.SGD.ParamGroup(auxiliary.parameters (), settings.LearningRate, 0.0, 0.0, 0.0, false, false))
                | _ -> ()
            let parameters = PerSample.parameters model
            let growth =
                { OldClasses = oldClasses
                  NewClasses = classes
                  OldShapes = state.ParameterList |> List.map (fun p -> p.shape)
                  Parameters = parameters }
            let buffer =
                state.Buffer
                |> Option.map (fun b ->
                    let grown = Replay.grow classes b
                    if not (obj.ReferenceEquals(grown.Logits, b.Logits)) then b.Logits.Dispose()
                    grown)
            let methods = state.Methods |> List.map (phase (fun m -> m.Grow growth))
            state.Optimiser.Dispose()
            FlatParameters.dispose state.Parameters
            state.Model.Dispose()
            { state with
                Model = model
                Parameters = flat
                ParameterList = parameters
                Optimiser = optimiser
                Buffer = buffer
                Methods = methods }

    /// The units a strategy trains, in order: (task index, its classes, whether the data is a copy the
    /// run frees). JOINT trains one unit of every class.
    let private units (strategy: Strategy) (benchmark: Benchmark) =
        match strategy.Schedule with
        | Sequential -> benchmark.Tasks |> List.map (fun t -> t.Index, t.Classes, true)
        | Joint -> [ 0, benchmark.Tasks |> List.collect (fun t -> t.Classes), false ]

    /// How many units (tasks, or one for JOINT) a strategy trains on a benchmark.
    let unitCount (strategy: Strategy) (benchmark: Benchmark) = (units strategy benchmark).Length

    /// The frozen mask of what the methods freeze in a task (None when every parameter trains): the
    /// union of their `Freeze`, laid out as the flat parameters are.
    let frozenMask (model: Backbone) (flat: FlatParameters) (frozen: Frozen list) : FrozenMask option =
        let backbone = frozen |> List.exists (fun f -> f.Backbone)
        let outputs = frozen |> List.collect (fun f -> f.Outputs) |> List.distinct
        if not backbone && outputs.IsEmpty then None
        else
            use scope = torch.NewDisposeScope()
            use _ = torch.no_grad ()
            let classifier = Set.ofSeq [ for p in model.Classifier.parameters () -> p.Handle ]
            let parts =
                [| for p in model.parameters () ->
                       if classifier.Contains p.Handle then
                           let m = torch.ones(p.shape, dtype = p.dtype, device = p.device)
                           for c in outputs do
                               if int64 c < p.shape.[0] then m.[int64 c].fill_(Scalars.cached 0.0) |> ignore
                           m.flatten ()
                       elif backbone then torch.zeros([| p.numel () |], dtype = p.dtype, device = p.device)
                       else torch.ones([| p.numel () |], dtype = p.dtype, device = p.device) |]
            let trainable = torch.cat(parts, 0L)
            let kept = flat.Values.detach().mul(trainable.neg().add(Scalars.cached 1.0, Scalars.one))
            Some { Trainable = trainable.DetachFromDisposeScope(); Kept = kept.DetachFromDisposeScope() }

    /// The bytes a training state keeps besides the model: the buffer's examples and labels (replay) and
    /// stored logits, and every method's own footprint.
    let footprint (state: TrainingState) : Footprint =
        let buffer =
            match state.Buffer with
            | Some b -> { Footprint.zero with Replay = Footprint.tensorBytes b.Examples + Footprint.tensorBytes b.Labels; Logits = Footprint.tensorBytes b.Logits }
            | None -> Footprint.zero
        state.Methods |> List.fold (fun acc m -> Footprint.add acc (m.Footprint())) buffer

    /// Whether the model's head has an output for every class of every task's test set.
    let private headCovers (testSets: Evaluation.TaskTestSets) (model: Backbone) =
        requiredClasses (testSets |> List.collect (fun (t, _) -> t.Classes)) <= Backbones.classes model.Architecture

    /// The accuracies of the model as initialised on every task (the forward-transfer baseline), None
    /// when the head does not cover every task's classes (a growing head: a later task has no outputs
    /// before it is learnt, so R[j−1][j] and the baseline would not measure the same model's outputs).
    /// Evaluation draws from no generator and leaves the model as it was.
    let initialAccuracies (settings: TrainingSettings) (testSets: Evaluation.TaskTestSets) (model: Backbone) : TaskAccuracies option =
        if headCovers testSets model then Some(Evaluation.evaluate model settings.Device testSets)
        else None

    /// `initialAccuracies` measured on another thread, on a frozen copy of the model as it is now, so
    /// that the first task trains meanwhile (the evaluation takes the second core, not the training's
    /// time): the copy and the evaluation (the accuracies and the seconds they took), or None as for
    /// `initialAccuracies`. The caller waits for the evaluation, then frees the copy on its own thread
    /// (which made it); the test sets must outlive the evaluation.
    let private initialAccuraciesAside (settings: TrainingSettings) (testSets: Evaluation.TaskTestSets) (model: Backbone) =
        if headCovers testSets model then
            let copy =
                use scope = torch.NewDisposeScope()
                let copy = Backbones.snapshot settings.Device model
                keep copy
                copy
            let evaluation =
                System.Threading.Tasks.Task.Run(fun () ->
                    let clock = Stopwatch.StartNew()
                    let accuracies = Evaluation.evaluate copy settings.Device testSets
                    accuracies, clock.Elapsed.TotalSeconds)
            Some(copy, evaluation)
        else None

    /// Continues a run from a point (a fresh state, or one restored from a checkpoint) up to and
    /// including task `lastTask` (all the remaining tasks when None), evaluating after every task on
    /// every task's test set, then calling the after-task hook and the checkpoint hook. A stop request
    /// is honoured at the next step boundary: a checkpoint, then RunStopped.
    let runFrom
        (architecture: Architecture)
        (benchmark: Benchmark)
        (strategy: Strategy)
        (settings: TrainingSettings)
        (hooks: RunHooks)
        (cancellation: CancellationToken)
        (lastTask: int option)
        (start: RunPoint)
        : TrainingOutcome =
        let testSets = Evaluation.testSets benchmark
        // One head per task: the heads of the benchmark's tasks (a learner's added tasks included).
        let strategy =
            match strategy.Heads with
            | Some _ -> { strategy with Heads = Some(benchmark.Tasks |> List.map (fun t -> t.Classes)) }
            | None -> strategy
        let mutable state = start.State
        let mutable record = start.Record
        let firstTask = match start.Position with Some p -> p.Task | None -> state.NextTask
        let pending =
            units strategy benchmark
            |> List.filter (fun (i, _, _) -> i >= firstTask && (match lastTask with Some last -> i <= last | None -> true))
        let checkpoint reason point =
            let clock = Stopwatch.StartNew()
            hooks.Checkpoint reason point
            record <- { record with CheckpointSeconds = record.CheckpointSeconds + clock.Elapsed.TotalSeconds }
        hooks.OnEvent(RunStarted (units strategy benchmark).Length)
        // The model as initialised, measured once before the first task (forward transfer's baseline),
        // beside the first task's training; its figures join the record before anything reads it (a
        // checkpoint, the first task's evaluation), and before the test sets are freed.
        let mutable initial =
            if record.ClassIl.Length = 0 && record.InitialClassIl.Length = 0 && start.Position.IsNone && state.NextTask = 0 then
                initialAccuraciesAside settings testSets state.Model
            else None
        let joinInitial () =
            match initial with
            | Some(copy, evaluation) ->
                initial <- None
                let accuracies, seconds =
                    try evaluation.GetAwaiter().GetResult()
                    finally copy.Dispose()
                record <- { record with InitialClassIl = accuracies.ClassIl; InitialTaskIl = accuracies.TaskIl; EvalSeconds = record.EvalSeconds + seconds }
            | None -> ()
        try
            for (taskIndex, classes, ownsData) in pending do
                let resumeAt = start.Position |> Option.filter (fun p -> p.Task = taskIndex)
                let earlier = resumeAt |> Option.map (fun p -> p.Seconds) |> Option.defaultValue 0.0
                let clock = Stopwatch.StartNew()
                // A task that brings classes beyond the head grows it first (a growing head, or tasks
                // added to a learner); a task resumed from inside grew before it was saved.
                let needed = requiredClasses classes
                if resumeAt.IsNone && needed > Backbones.classes state.Model.Architecture then
                    hooks.OnEvent(PhaseStarted(taskIndex, sprintf "growing the head to %d classes" needed))
                    state <- growHead settings needed state
                let architecture = state.Model.Architecture
                let data = if ownsData then Benchmarks.selectClasses classes benchmark.Train else benchmark.Train
                let seen =
                    benchmark.Tasks |> List.filter (fun t -> t.Index <= taskIndex) |> List.collect (fun t -> t.Classes) |> List.append classes |> List.distinct |> List.sort
                let context = taskContext architecture settings cancellation state taskIndex classes seen data
                try
                    if not (FlatParameters.isBound state.Parameters state.Model) then
                        invalidOp "the model's parameters no longer sit in their flat layout (was the model moved or a gradient replaced during the run?)"
                    // A task resumed from inside has begun already: its warm-up and BeginTask are in the state.
                    if resumeAt.IsNone then state <- beginTask hooks.OnEvent context state
                    // What the task leaves unchanged, from the methods' state after BeginTask (so again on resume).
                    state <- { state with Frozen = frozenMask state.Model state.Parameters (state.Methods |> List.map (fun m -> m.Freeze context)) }
                    // Methods may add examples (iCaRL's exemplars) to this task's training data.
                    let extra = state.Methods |> List.choose (fun m -> m.ExtraTrainingData())
                    let trainingData =
                        match extra with
                        | [] -> data
                        | _ ->
                            // Exemplars taken from pixel bytes join them as bytes (Benchmarks.join).
                            Benchmarks.join data extra
                    let atStep (position: TaskPosition) (current: TrainingState) =
                        let point () =
                            joinInitial ()
                            { State = current; Record = record; Position = Some { position with Seconds = earlier + clock.Elapsed.TotalSeconds } }
                        if Faults.enabled then Faults.reached "step" current.StepsTaken
                        if hooks.CheckpointEvery > 0 && current.StepsTaken % int64 hooks.CheckpointEvery = 0L then
                            checkpoint StepInterval (point ())
                        if hooks.StopRequested() then
                            checkpoint StopRequested (point ())
                            raise (RunStopped(taskIndex, current.StepsTaken))
                    try
                        state <- trainFromWith hooks.OnStepTerms strategy settings taskIndex trainingData hooks.OnEvent atStep cancellation resumeAt state
                    finally
                        state.Frozen |> Option.iter (fun f -> f.Trainable.Dispose(); f.Kept.Dispose())
                        state <- { state with Frozen = None }
                        if not extra.IsEmpty then
                            for s in trainingData :: extra do
                                s.Dispose()
                    state <- endTask hooks.OnEvent context state
                finally
                    if ownsData then
                        data.Dispose()
                let trained = earlier + clock.Elapsed.TotalSeconds
                joinInitial ()
                let scores = state.Methods |> List.tryPick (fun m -> m.Scores())
                let accuracies = Evaluation.evaluateWith scores state.Model settings.Device testSets
                let total = earlier + clock.Elapsed.TotalSeconds
                state <- { state with NextTask = taskIndex + 1 }
                record <-
                    { record with
                        ClassIl = Array.append record.ClassIl [| accuracies.ClassIl |]
                        TaskIl = Array.append record.TaskIl [| accuracies.TaskIl |]
                        TaskSeconds = Array.append record.TaskSeconds [| total |]
                        TrainSeconds = record.TrainSeconds + trained
                        EvalSeconds = record.EvalSeconds + (total - trained)
                        Footprint = Array.append record.Footprint [| footprint state |] }
                hooks.OnEvent (TaskFinished(taskIndex, accuracies, total))
                let hookClock = Stopwatch.StartNew()
                let logitAccuracies =
                    match scores with
                    | Some _ -> Evaluation.evaluate state.Model settings.Device testSets
                    | None -> accuracies
                hooks.AfterTask
                    { Task = taskIndex
                      Model = state.Model
                      Architecture = state.Model.Architecture
                      Benchmark = benchmark
                      Accuracies = logitAccuracies
                      TestSets = testSets
                      Device = settings.Device }
                record <- { record with HookSeconds = record.HookSeconds + hookClock.Elapsed.TotalSeconds }
                checkpoint TaskEnd { State = state; Record = record; Position = None }
                if hooks.StopRequested() && taskIndex <> (let (i, _, _) = List.last pending in i) then
                    raise (RunStopped(taskIndex, state.StepsTaken))
            joinInitial ()
        with _ ->
            // A cancelled, stopped or failed run frees its model, optimiser, buffer and methods at once
            // (the test sets once the initial evaluation, if it is still running, has ended).
            initial |> Option.iter (fun (copy, evaluation) -> (try evaluation.Wait() with _ -> ()); copy.Dispose())
            for (_, set) in testSets do
                set.Dispose()
            dispose state
            reraise ()
        for (_, set) in testSets do
            set.Dispose()
        TrainingOutcome.ofRecord record state

    /// Runs a strategy over a benchmark's stream (or all at once for JOINT) from a fresh state,
    /// evaluating after every task on every task's test set.
    let run
        (architecture: Architecture)
        (benchmark: Benchmark)
        (strategy: Strategy)
        (settings: TrainingSettings)
        (hooks: RunHooks)
        (cancellation: CancellationToken)
        : TrainingOutcome =
        let state = initialise architecture benchmark strategy settings
        runFrom architecture benchmark strategy settings hooks cancellation None { State = state; Record = RunRecord.empty; Position = None }
