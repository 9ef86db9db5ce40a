namespace Continual.Methods

open System
open Continual
open Continual.Data
open Continual.Models
open Continual.Penalties
open Continual.Replay
open TorchSharp

/// The training batch of one step.
type StepBatch =
    { Inputs: Tensor
      Labels: Tensor
      LabelArray: int[]
      Task: int }

/// A buffer draw together with the current model's logits and features on it.
type ReplayView =
    { Draw: ReplayDraw
      Logits: Tensor
      /// The current model's per-layer features on the draw (as in ModelOutput.Features).
      Features: Tensor list }

/// The output heads of a multi-head model (`--heads multi`): one head per task over that task's
/// classes, held as the classifier's outputs partitioned by task, so that a row's head is the task of
/// its label. Training takes each row's softmax over its own head; evaluation is Task-IL.
type Heads =
    { /// The classes of each task's head, in task order.
      Classes: int list list
      /// The task (head) of each class index, int64 on the model's device (a tensor of the step's scope).
      TaskOfClass: Tensor }

/// Everything a method may look at in one step: the batch, the current model's output on it, one
/// entry per buffer draw the strategy asked for (None while the buffer is empty), the model itself and
/// its parameters in `parameters()` order (listed once by the shell: a module walk per step costs time).
type StepView =
    { Batch: StepBatch
      Output: ModelOutput
      Replay: ReplayView option list
      Model: Backbone
      Parameters: Tensor list
      /// The heads of a multi-head model; None for the single head (the default).
      Heads: Heads option }

/// What a method sees at a task boundary. The shell provides the model's embeddings through `Embed`
/// (evaluation mode, no gradients), so that a method never switches the model's mode itself.
type TaskContext =
    { Task: int
      /// The classes of this task.
      Classes: int list
      /// Every class seen up to and including this task.
      SeenClasses: int list
      /// This task's training data (for importance estimation, recorded targets, herding).
      Train: LabelledSet
      Model: Backbone
      /// The model's parameters in `parameters()` order.
      Parameters: Tensor list
      Architecture: Architecture
      Device: Device
      LearningRate: float
      BatchSize: int
      /// The model's embeddings of inputs in one forward pass on the device, in evaluation mode and
      /// without gradients (a tensor of the caller's dispose scope).
      Embed: Tensor -> Tensor
      /// The model's embeddings of many inputs as host rows, computed in chunks in evaluation mode.
      EmbedRows: Tensor -> float32[][]
      /// The run's cancellation: long phases (warm-ups, embeddings) stop when it is requested.
      Cancellation: System.Threading.CancellationToken }

/// A quadratic penalty as a named loss term that the shell applies in closed form: after backward
/// it adds the penalty's gradient `H (θ − θ*)` to the model's flat gradient and the value to the
/// reported loss. Same value and gradient as an autograd term, at a few operations per step.
type PenaltyTerm =
    { Name: string
      Penalty: Quadratic }

/// Parameters a task leaves unchanged: the shell zeroes their gradients before the optimiser step and
/// puts their values back after it (exact whatever the optimiser's weight decay).
type Frozen =
    { /// Every parameter outside the classifier (the backbone's features).
      Backbone: bool
      /// The classifier's outputs (weight rows and bias entries) of these classes.
      Outputs: int list }
    /// Nothing frozen: every parameter trains.
    static member Nothing = { Backbone = false; Outputs = [] }

/// The bytes a method's state keeps, by kind (the state footprint of results.json). The shell adds the
/// replay buffer's examples and labels (`Replay`) and its stored logits (`Logits`).
type Footprint =
    { /// Replay examples and their labels.
      Replay: int64
      /// Logits stored with replay examples (DER, DER++).
      Logits: int64
      /// Importance tensors (Fisher, Ω, path scores, running estimates) and penalty curvatures.
      Importance: int64
      /// Anchors θ* and other parameter copies (SI's start point, RWalk's window start).
      Anchors: int64
      /// Old-model snapshots (LwF, iCaRL, LFL, distillation teachers).
      Snapshots: int64
      /// Exemplar sets and class means (iCaRL).
      Exemplars: int64 }

/// A warm-up the shell runs before a task begins: `Epochs` passes over the task's data that train only
/// the classifier (features frozen, plain SGD at the run's learning rate, no weight decay), with CE
/// over the task's own classes, shuffled by `Rng` (LwF's reference warm-up).
type ClassifierWarmUp =
    { Epochs: int
      Rng: RandomState }

/// A module with trainable parameters of its own that a method's loss uses (FitNets' regressor). The
/// shell builds it once from the model's embedding on one example, trains it with the model (same
/// optimiser, clipping and dispose scope) and owns it; the method only holds a reference.
type AuxiliaryModule<'State> =
    { /// Builds the module from the model's embedding of one example (its shape sets the widths).
      Build: Tensor -> torch.nn.Module<Tensor, Tensor>
      /// The state that uses the module.
      Attach: torch.nn.Module<Tensor, Tensor> -> 'State -> 'State }

/// One continual-learning method as a typed record of functions over its own state value. Every
/// transition returns the next state. A transition may update a tensor of the state in place for speed
/// (the old value is then never used again); tensors and snapshots it replaces are freed by the shell,
/// which compares `Owned` before and after. A method never trains, steps an optimiser, calls backward,
/// switches the model's mode or frees what it did not create.
type Method<'State> =
    { Name: string
      /// A shell phase to run before `BeginTask`, and how the state takes back the warm-up's generator.
      WarmUp: TaskContext -> 'State -> (ClassifierWarmUp * (RandomState -> 'State)) option
      /// Called before the first step of a task (after any warm-up).
      BeginTask: TaskContext -> 'State -> 'State
      /// The method's named loss terms for one step (pure: reads the view and the state).
      Terms: 'State -> StepView -> LossTerm list
      /// The quadratic penalties the state defines (they do not depend on the batch), applied in closed
      /// form by the shell after backward, before clipping and `Observe`.
      Penalties: 'State -> PenaltyTerm list
      /// After backward and gradient clipping, before the optimiser step (gradients are in p.grad);
      /// None when nothing happens per step. Per-step transitions update the state's tensors in place
      /// or add new ones (detached from the step's dispose scope), never drop one: the shell does not
      /// look for dropped tensors on this hot path.
      Observe: (StepView -> 'State -> 'State) option
      /// After the optimiser step, with the model's parameters; None when nothing happens per step.
      /// The same rule as Observe.
      AfterStep: (Tensor list -> 'State -> 'State) option
      /// Called after the last step of a task, before evaluation.
      EndTask: TaskContext -> 'State -> 'State
      /// Examples the shell trains on together with the task's data, shuffled in with it (iCaRL's
      /// exemplar set), read right after BeginTask; new tensors that the shell frees after the task.
      ExtraTrainingData: 'State -> LabelledSet option
      /// Class scores that replace the model's logits at evaluation (iCaRL's nearest mean of
      /// exemplars), as a function of the model's output; None keeps the logits.
      Scores: 'State -> (ModelOutput -> Tensor) option
      /// A module the shell builds, trains and owns for the method.
      Auxiliary: AuxiliaryModule<'State> option
      /// The state after the classifier head grew (between tasks, before the next task's warm-up): every
      /// tensor shaped by the model's parameters or by the head's width follows it (HeadGrowth's
      /// helpers), old rows unchanged; snapshots of the old model keep their width. Like every
      /// transition it returns new tensors and the shell frees the ones dropped.
      Grow: HeadGrowth -> 'State -> 'State
      /// Everything the state owns (tensors, snapshots): what the shell frees when a transition drops
      /// it and at the end of a run.
      Owned: 'State -> IDisposable list
      /// The parameters the coming task leaves unchanged (read after BeginTask, and again on resume).
      Freeze: TaskContext -> 'State -> Frozen
      /// The bytes the state keeps, by kind.
      Footprint: 'State -> Footprint }

/// A method packed with its current state: the one type the shell runs. Each transition returns the
/// next packed value; `State` is the method's own state record (for inspection and saving).
[<NoEquality; NoComparison>]
type MethodInstance =
    { Name: string
      State: obj
      /// The type of `State` (what a saved state is restored as).
      StateType: Type
      /// The same method with another state of its type (a restored one).
      Restore: obj -> MethodInstance
      WarmUp: TaskContext -> (ClassifierWarmUp * (RandomState -> MethodInstance)) option
      BeginTask: TaskContext -> MethodInstance
      Terms: StepView -> LossTerm list
      Penalties: unit -> PenaltyTerm list
      Observe: (StepView -> MethodInstance) option
      AfterStep: (Tensor list -> MethodInstance) option
      EndTask: TaskContext -> MethodInstance
      /// The method after the head grew (see Method.Grow).
      Grow: HeadGrowth -> MethodInstance
      ExtraTrainingData: unit -> LabelledSet option
      Scores: unit -> (ModelOutput -> Tensor) option
      Auxiliary: (Tensor -> torch.nn.Module<Tensor, Tensor>) option
      Attach: torch.nn.Module<Tensor, Tensor> -> MethodInstance
      Owned: unit -> IDisposable list
      Freeze: TaskContext -> Frozen
      Footprint: unit -> Footprint }

/// How a strategy walks the stream.
type Schedule =
    /// Task after task (the continual setting).
    | Sequential
    /// All tasks' data shuffled together and learned at once (JOINT, the upper bound).
    | Joint

/// A continual-learning run's methods and what the shell must prepare for them. The shell sums the
/// methods' terms in order and steps the optimiser; a method never does.
type Strategy =
    { Name: string
      Schedule: Schedule
      /// Buffer slots (0 for none); the buffer is filled by reservoir sampling during all of training.
      BufferSize: int
      /// Sizes of the independent buffer minibatches drawn every step.
      ReplayDraws: int list
      /// The strategy's own method first (its loss), then an optional penalty and distillation terms.
      Methods: MethodInstance list
      /// Clip every gradient element to [-c, c] before the step (SI's protocol), when set.
      ClipGradValue: float option
      /// The classes of each task's head for a multi-head model (`--heads multi`; the shell sets them
      /// from the benchmark it runs on, so `Some []` asks for one head per task); None for one head.
      Heads: int list list option }

/// Measuring and adding state footprints.
[<RequireQualifiedAccess; CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module Footprint =

    /// No bytes.
    let zero = { Replay = 0L; Logits = 0L; Importance = 0L; Anchors = 0L; Snapshots = 0L; Exemplars = 0L }

    /// Two footprints added kind by kind.
    let add (a: Footprint) (b: Footprint) =
        { Replay = a.Replay + b.Replay
          Logits = a.Logits + b.Logits
          Importance = a.Importance + b.Importance
          Anchors = a.Anchors + b.Anchors
          Snapshots = a.Snapshots + b.Snapshots
          Exemplars = a.Exemplars + b.Exemplars }

    /// Every kind summed.
    let total (f: Footprint) = f.Replay + f.Logits + f.Importance + f.Anchors + f.Snapshots + f.Exemplars

    /// The bytes of a tensor's elements.
    let tensorBytes (t: Tensor) : int64 = t.numel () * int64 t.ElementSize

    /// The bytes of tensors' elements.
    let tensorsBytes (ts: Tensor seq) : int64 = ts |> Seq.sumBy tensorBytes

    /// The bytes of optional tensors.
    let optionalBytes (ts: Tensor list option) : int64 = ts |> Option.map tensorsBytes |> Option.defaultValue 0L

    /// The bytes of a module's parameters and buffers (a snapshot of the model).
    let moduleBytes (m: torch.nn.Module) : int64 = tensorsBytes (m.parameters () |> Seq.map (fun p -> p :> Tensor)) + tensorsBytes (m.buffers ())

    /// An optional snapshot's bytes, as a footprint.
    let snapshot (m: Backbone option) : Footprint =
        { zero with Snapshots = m |> Option.map moduleBytes |> Option.defaultValue 0L }

    /// A quadratic penalty's bytes: its curvature as importance, its anchor as anchors.
    let penalty (q: Quadratic option) : Footprint =
        match q with
        | Some q -> { zero with Importance = tensorBytes q.Curvature; Anchors = tensorBytes q.Anchor }
        | None -> zero

    /// The six kinds with their results.json names, in order.
    let kinds (f: Footprint) : (string * int64) list =
        [ "replay", f.Replay; "logits", f.Logits; "importance", f.Importance; "anchors", f.Anchors; "snapshots", f.Snapshots; "exemplars", f.Exemplars ]

/// Multi-head models' per-row heads.
[<RequireQualifiedAccess; CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module Heads =

    /// The task of each class index as an int64 tensor on a device (classes of no task map to -1).
    let taskOfClass (device: Device) (classes: int list list) : Tensor =
        let width = classes |> List.concat |> List.fold max -1 |> (+) 1
        let table = Array.create width -1L
        classes |> List.iteri (fun t cs -> for c in cs do table.[c] <- int64 t)
        torch.tensor(table, dtype = torch.ScalarType.Int64, device = device)

    /// Logits with every column outside each row's head (the task of the row's label) set to −∞, so
    /// that a softmax or an argmax of a row covers its own head only.
    let mask (heads: Heads) (labels: Tensor) (logits: Tensor) : Tensor =
        let width = logits.shape.[logits.shape.Length - 1]
        use rowTask = heads.TaskOfClass.index_select(0L, labels)
        let available = min width heads.TaskOfClass.shape.[0]
        use columns = heads.TaskOfClass.narrow(0L, 0L, available)
        use columnTask =
            if available = width then columns.alias ()
            else
                use minusOne = (-1L).ToScalar()
                use padding = torch.full([| width - available |], minusOne, dtype = torch.ScalarType.Int64, device = columns.device)
                torch.cat([| columns; padding |], 0L)
        use keep = columnTask.unsqueeze(0L).eq(rowTask.unsqueeze(1L))
        use drop = keep.logical_not ()
        logits.masked_fill(drop, Scalars.negativeInfinity)

/// Building and packing methods.
[<RequireQualifiedAccess>]
module Method =

    /// A method with no hooks: no terms, no penalties, transitions that keep the state. Methods are
    /// written as `{ Method.empty name with ... }`.
    let empty (name: string) : Method<'State> =
        { Name = name
          WarmUp = fun _ _ -> None
          BeginTask = fun _ s -> s
          Terms = fun _ _ -> []
          Penalties = fun _ -> []
          Observe = None
          AfterStep = None
          EndTask = fun _ s -> s
          ExtraTrainingData = fun _ -> None
          Scores = fun _ -> None
          Auxiliary = None
          Grow = fun _ s -> s
          Owned = fun _ -> []
          Freeze = fun _ _ -> Frozen.Nothing
          Footprint = fun _ -> Footprint.zero }

    /// Packs a method with a state into the type the shell runs.
    let rec pack (m: Method<'State>) (state: 'State) : MethodInstance =
        { Name = m.Name
          State = box state
          StateType = typeof<'State>
          Restore =
            fun saved ->
                match saved with
                | :? 'State as s -> pack m s
                | null when typeof<'State> = typeof<unit> -> pack m (unbox<'State> saved)
                | other -> invalidArg (nameof saved) (sprintf "%s holds a %s, not a %s" m.Name (if isNull other then "null" else other.GetType().Name) typeof<'State>.Name)
          WarmUp =
            fun context ->
                m.WarmUp context state |> Option.map (fun (warmUp, resume) -> warmUp, (fun rng -> pack m (resume rng)))
          BeginTask = fun context -> pack m (m.BeginTask context state)
          Terms = fun view -> m.Terms state view
          Penalties = fun () -> m.Penalties state
          Observe = m.Observe |> Option.map (fun observe -> fun view -> pack m (observe view state))
          AfterStep = m.AfterStep |> Option.map (fun step -> fun parameters -> pack m (step parameters state))
          EndTask = fun context -> pack m (m.EndTask context state)
          Grow = fun growth -> pack m (m.Grow growth state)
          ExtraTrainingData = fun () -> m.ExtraTrainingData state
          Scores = fun () -> m.Scores state
          Auxiliary = m.Auxiliary |> Option.map (fun a -> a.Build)
          Attach =
            fun auxiliary ->
                match m.Auxiliary with
                | Some a -> pack m (a.Attach auxiliary state)
                | None -> invalidOp (sprintf "%s has no auxiliary module to attach" m.Name)
          Owned = fun () -> m.Owned state
          Freeze = fun context -> m.Freeze context state
          Footprint = fun () -> m.Footprint state }

    /// The state of a packed method as its own record type (for tests and saving).
    let stateOf<'State> (instance: MethodInstance) : 'State =
        match instance.State with
        | :? 'State as s -> s
        | other -> invalidArg (nameof instance) (sprintf "%s holds a %s, not a %s" instance.Name (other.GetType().Name) typeof<'State>.Name)

    /// Frees what `before` owned and `after` no longer owns (compared by reference): the shell's half of
    /// a transition (`Training.phase`).
    let release (before: MethodInstance) (after: MethodInstance) : unit =
        let kept = Collections.Generic.HashSet<IDisposable>(after.Owned(), HashIdentity.Reference)
        for d in before.Owned() do
            if not (kept.Contains d) then d.Dispose()

    /// Frees everything a packed method owns.
    let dispose (instance: MethodInstance) =
        for d in instance.Owned() do
            d.Dispose()

    /// Tensors as owned disposables.
    let tensors (ts: Tensor seq) : IDisposable list = [ for t in ts -> t :> IDisposable ]

    /// Optional tensor lists as owned disposables.
    let optionalTensors (ts: Tensor list option) : IDisposable list = ts |> Option.map tensors |> Option.defaultValue []

    /// The penalty term of an importance method's state (none before its first task ends).
    let penaltyTerms (name: string) (penalty: Quadratic option) : PenaltyTerm list =
        penalty |> Option.map (fun q -> { Name = name; Penalty = q }) |> Option.toList

    /// The tensors of an optional penalty, as owned disposables.
    let ownedPenalty (penalty: Quadratic option) : IDisposable list = optionalTensors (penalty |> Option.map Quadratic.tensors)

    /// A strategy of a single method with no buffer: the shell's defaults.
    let strategy (name: string) (instance: MethodInstance) : Strategy =
        { Name = name
          Schedule = Sequential
          BufferSize = 0
          ReplayDraws = []
          Methods = [ instance ]
          ClipGradValue = None
          Heads = None }

    /// A strategy with a method added after the ones it has (e.g. DER++ plus SI's penalty).
    let add (instance: MethodInstance) (strategy: Strategy) : Strategy =
        { strategy with Methods = strategy.Methods @ [ instance ] }
