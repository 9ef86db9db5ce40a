namespace Continual

open System
open System.Collections.Generic
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open System.Threading
open Continual.Data
open Continual.Methods
open Continual.Models
open Continual.Replay
open TorchSharp

/// A learner file that cannot be used: the message names the file and the problem.
exception LearnerFileError of path: string * reason: string
    with
        override this.Message = sprintf "%s: %s" this.path this.reason

/// A learner: a configuration, the benchmark it learns from, its whole training state and what it has
/// measured so far. It can be saved after any task (or step) and loaded in another process to go on
/// exactly where it stopped.
type Learner =
    { Config: Config
      Architecture: Architecture
      /// The data the learner learns from (owned by the learner when it loaded it).
      Benchmark: Benchmark
      OwnsBenchmark: bool
      Strategy: Strategy
      Point: RunPoint
      /// Sections that tools add to the file (the CLI keeps its ONNX figures here), by name.
      Extensions: Map<string, JsonNode>
      /// Where each task added to the learner after its configuration's benchmark came from, in order
      /// (`Learner.addTask`): the benchmark's last tasks. Empty for a learner of its benchmark alone.
      Sources: TaskSource list
      StartedUtc: DateTime }
    /// Tasks learned so far.
    member this.TasksLearned = this.Point.State.NextTask
    /// Tasks (units, one for JOINT) the learner's stream has in all.
    member this.TaskCount = Training.unitCount this.Strategy this.Benchmark

/// Creating, training, evaluating, saving and loading learners (docs/checkpoints.md).
[<RequireQualifiedAccess>]
module Learner =

    /// The learner file's format name and version (the `format` and `format_version` metadata).
    [<Literal>]
    let FormatName = "continual-learner"

    [<Literal>]
    let FormatVersion = 1

    /// The file name a run folder keeps its learner in.
    [<Literal>]
    let FileName = "learner.safetensors"

    /// A new learner with a head of `headClasses` outputs (restoring a learner whose head grew).
    let private createWithHead (benchmark: Benchmark) (config: Config) (headClasses: int) : Learner =
        Experiment.ensureValid config
        Engine.configureThreads config.Run.Threads
        let architecture = Backbones.ofName config.Backbone benchmark.InputShape headClasses
        let strategy = Experiment.strategy config
        let state = Training.initialise architecture benchmark strategy (Experiment.settings config)
        { Config = config
          Architecture = architecture
          Benchmark = benchmark
          OwnsBenchmark = false
          Strategy = strategy
          Point = { State = state; Record = RunRecord.empty; Position = None }
          Extensions = Map.empty
          Sources = []
          StartedUtc = DateTime.UtcNow }

    /// A new learner for a configuration on an already loaded benchmark (the caller keeps it). Its
    /// head has every class of the benchmark (fixed) or the first task's (growing, `Config.Head`).
    let createOn (benchmark: Benchmark) (config: Config) : Learner =
        createWithHead benchmark config (Experiment.initialHeadClasses config benchmark)

    /// The learner with external terms (the C# façade's custom terms) added after its strategy's own
    /// methods, before it has trained. A learner with one cannot be saved (`saveAt`).
    let addTerms (terms: IExternalTerm list) (learner: Learner) : Learner =
        let extra = terms |> List.map ExternalTerm.create
        let point = learner.Point
        { learner with
            Strategy = { learner.Strategy with Methods = learner.Strategy.Methods @ extra }
            Point = { point with State = { point.State with Methods = point.State.Methods @ extra } } }

    /// A new learner for a configuration on a benchmark the learner then owns (freed with it).
    let createOwning (benchmark: Benchmark) (config: Config) : Learner =
        { createOn benchmark config with OwnsBenchmark = true }

    /// A new learner for a configuration, loading its benchmark (which the learner then owns).
    let create (config: Config) : Learner =
        Experiment.ensureValid config
        let benchmark = Experiment.loadBenchmark config
        try { createOn benchmark config with OwnsBenchmark = true }
        with _ ->
            Benchmarks.dispose benchmark
            reraise ()

    /// A new learner whose first task is a task of the data loaders (TaskLoaders kinds folder, csv or
    /// npy): the configuration's data become that source as one task, and its head grows as tasks are
    /// added. Raises ArgumentException for other kinds (a manifest entry or arrays can only follow).
    let createFromTask (config: Config) (source: TaskSource) : Learner =
        if not (List.contains source.Kind [ "folder"; "csv"; "npy" ]) then
            invalidArg (nameof source) (sprintf "a learner's first task comes from an image folder, a CSV folder or an .npy folder, not from %s (such tasks can follow)" source.Kind)
        let option (key: string) = source.Options.TryFind key
        let s = config.Data.Source
        let data =
            { config.Data with
                Benchmark = source.Kind
                Folder = source.Path
                Source =
                    { s with
                        ClassesPerTask = None
                        LabelColumn = defaultArg (option "labelColumn") s.LabelColumn
                        FeatureScale =
                            match option "featureScale" with
                            | Some text -> Some(Double.Parse(text, Globalization.CultureInfo.InvariantCulture))
                            | None -> s.FeatureScale } }
        // Read once; its classes, counted, make the one task the configuration then names (and reloads as).
        let loaded = Experiment.loadBenchmark { config with Data = data }
        let classes = loaded.NumClasses
        let whole = { loaded with Tasks = [ { Index = 0; Classes = [ 0 .. classes - 1 ] } ] }
        let config' = { config with Data = { data with Source = { data.Source with ClassesPerTask = Some classes } }; Head = HeadKind.Growing }
        try createOwning whole config'
        with _ ->
            Benchmarks.dispose loaded
            reraise ()

    /// Learns the stream up to and including task `lastTask` (0-based; every remaining task when None),
    /// from wherever the learner stands (inside a task when it was saved there).
    let learnUntil (hooks: RunHooks) (cancellation: CancellationToken) (lastTask: int option) (learner: Learner) : Learner =
        let outcome =
            Training.runFrom learner.Architecture learner.Benchmark learner.Strategy (Experiment.settings learner.Config)
                hooks cancellation lastTask learner.Point
        { learner with
            Architecture = outcome.State.Model.Architecture
            Point = { State = outcome.State; Record = TrainingOutcome.record outcome; Position = None } }

    /// Learns the next task of the stream (raises when every task is learned).
    let learnTask (hooks: RunHooks) (cancellation: CancellationToken) (learner: Learner) : Learner =
        let next = match learner.Point.Position with Some p -> p.Task | None -> learner.TasksLearned
        if next >= learner.TaskCount then
            invalidOp (sprintf "the learner has learned all %d tasks of %s" learner.TaskCount learner.Benchmark.Name)
        learnUntil hooks cancellation (Some next) learner

    /// The learner with one more task at the end of its stream: a one-task benchmark (labels 0..k-1, its
    /// own class names; the caller keeps it) and where it came from. Its classes get the global indices
    /// after the learner's, its names are appended, and `learnTask` then learns it, growing the head
    /// first (whatever `Config.Head` says: a fixed head is fixed for the configuration's benchmark only);
    /// `evaluate` covers every task's test data. The source is recorded in the learner (and its file), not
    /// in its configuration. Raises TaskDataError for the same class name in two tasks, a test label that
    /// never appears in training, or inputs of another shape, and InvalidOperationException for JOINT
    /// (which learns all its tasks at once).
    let addTask (source: TaskSource) (task: Benchmark) (learner: Learner) : Learner =
        if learner.Strategy.Schedule = Joint then
            invalidOp "JOINT learns all its tasks at once: a task cannot be added to it"
        let benchmark = TaskStream.append task learner.Benchmark
        if learner.OwnsBenchmark then Benchmarks.dispose learner.Benchmark
        { learner with Benchmark = benchmark; OwnsBenchmark = true; Sources = learner.Sources @ [ source ] }

    /// The options a new task's data are read with (TaskLoaders) so that they fit the learner: images are
    /// brought to its input size and colour, tables read with its configuration's label column and scale.
    let taskOptions (learner: Learner) : Map<string, string> =
        let channels, height, width = learner.Benchmark.InputShape
        if learner.Benchmark.Train.Stored.dtype = torch.ScalarType.Byte then
            Map.ofList [ "imageSize", ImageOptions.sizeText (height, width); "colour", (if channels = 1 then "gray" else "rgb") ]
        else
            let source = learner.Config.Data.Source
            Map.ofList
                [ yield "labelColumn", source.LabelColumn
                  match source.FeatureScale with
                  | Some s -> yield "featureScale", s.ToString("R", Globalization.CultureInfo.InvariantCulture)
                  | None -> () ]

    /// The learner's accuracy now on every task's test set (its own classifier: iCaRL's nearest mean
    /// of exemplars where the method has one).
    let evaluate (learner: Learner) : TaskAccuracies =
        let testSets = Evaluation.testSets learner.Benchmark
        try
            let scores = learner.Point.State.Methods |> List.tryPick (fun m -> m.Scores())
            Evaluation.evaluateWith scores learner.Point.State.Model (Experiment.settings learner.Config).Device testSets
        finally
            for (_, set) in testSets do set.Dispose()

    /// The learner's results so far as an experiment result (for results.json).
    let result (wallSeconds: float) (learner: Learner) : ExperimentResult =
        { Config = learner.Config
          Architecture = learner.Point.State.Model.Architecture
          Benchmark = learner.Benchmark
          Outcome = TrainingOutcome.ofRecord learner.Point.Record learner.Point.State
          WallSeconds = wallSeconds
          StartedUtc = learner.StartedUtc }

    /// Frees the learner's model, optimiser, buffer and methods, and its benchmark when it owns it.
    let dispose (learner: Learner) =
        Training.dispose learner.Point.State
        if learner.OwnsBenchmark then Benchmarks.dispose learner.Benchmark

    // ---- the file ----------------------------------------------------------------------------------

    let private matrix (m: float[][]) = JsonArray([| for row in m -> JsonArray([| for v in row -> JsonValue.Create v :> JsonNode |]) :> JsonNode |])
    let private numbers (v: float[]) = JsonArray([| for x in v -> JsonValue.Create x :> JsonNode |])
    let private ints (v: int[]) = JsonArray([| for x in v -> JsonValue.Create x :> JsonNode |])
    let private rngJson (r: RandomState) = JsonValue.Create(r.Seed.ToString()) :> JsonNode
    let private rngOf (n: JsonNode) = { Seed = UInt64.Parse(n.GetValue<string>()) }

    /// The learner's state as (JSON, tensors) at a point of its run: what `save` writes.
    let private encode (learner: Learner) (point: RunPoint) : JsonObject * (string * Tensor) list =
        let state = point.State
        let table = TensorTable()
        let root = JsonObject()
        root.["format"] <- JsonValue.Create FormatName
        root.["formatVersion"] <- JsonValue.Create FormatVersion
        root.["continual"] <- JsonValue.Create(typeof<Config>.Assembly.GetName().Version.ToString())
        root.["savedUtc"] <- JsonValue.Create(DateTime.UtcNow.ToString "o")
        root.["startedUtc"] <- JsonValue.Create(learner.StartedUtc.ToString "o")
        root.["configHash"] <- JsonValue.Create(Config.hash learner.Config)
        root.["config"] <- JsonNode.Parse(Config.toJson learner.Config)
        root.["architecture"] <- JsonValue.Create(Backbones.describe state.Model.Architecture)
        let b = learner.Benchmark
        let benchmark = JsonObject()
        benchmark.["name"] <- JsonValue.Create b.Name
        benchmark.["classes"] <- JsonValue.Create b.NumClasses
        benchmark.["tasks"] <- JsonArray([| for t in b.Tasks -> ints (Array.ofList t.Classes) :> JsonNode |])
        benchmark.["classToTask"] <- ints b.TaskOfClass
        benchmark.["classNames"] <- JsonArray([| for n in b.ClassNames -> JsonValue.Create n :> JsonNode |])
        root.["benchmark"] <- benchmark
        root.["headClasses"] <- JsonValue.Create(Backbones.classes state.Model.Architecture)
        root.["addedTasks"] <-
            JsonArray(
                [| for s in learner.Sources ->
                       let o = JsonObject()
                       o.["kind"] <- JsonValue.Create s.Kind
                       o.["path"] <- JsonValue.Create s.Path
                       let options = JsonObject()
                       for KeyValue(k, v) in s.Options do options.[k] <- JsonValue.Create v
                       o.["options"] <- options
                       o :> JsonNode |])
        root.["nextTask"] <- JsonValue.Create state.NextTask
        root.["stepsTaken"] <- JsonValue.Create state.StepsTaken
        root.["position"] <-
            match point.Position with
            | Some p ->
                let o = JsonObject()
                o.["task"] <- JsonValue.Create p.Task
                o.["epoch"] <- JsonValue.Create p.Epoch
                o.["step"] <- JsonValue.Create p.Step
                o.["epochRng"] <- rngJson p.EpochRng
                o.["seconds"] <- JsonValue.Create p.Seconds
                o :> JsonNode
            | None -> null
        // The model first: a method state that refers to one of its tensors refers to it by name.
        let model = JsonArray()
        for KeyValue(name, t) in state.Model.state_dict () do
            model.Add(JsonValue.Create(table.Store("model." + name, t)))
        root.["model"] <- model
        let rng = JsonObject()
        rng.["run"] <- rngJson state.Rng
        let torchRng = torch.get_rng_state ()
        rng.["torch"] <- JsonValue.Create(table.Store("rng.torch", torchRng))
        root.["rng"] <- rng
        let optimiser = JsonObject()
        optimiser.["kind"] <- JsonValue.Create "sgd"
        optimiser.["groups"] <-
            JsonArray(
                [| for g in state.Optimiser.ParamGroups ->
                       let o = JsonObject()
                       o.["learningRate"] <- JsonValue.Create g.LearningRate
                       o :> JsonNode |])
        optimiser.["note"] <- JsonValue.Create "plain SGD without momentum keeps no state between steps"
        root.["optimiser"] <- optimiser
        root.["buffer"] <-
            match state.Buffer with
            | Some buffer ->
                let o = JsonObject()
                o.["capacity"] <- JsonValue.Create buffer.Capacity
                o.["seen"] <- JsonValue.Create buffer.Seen
                o.["rng"] <- rngJson buffer.Rng
                o.["taskIds"] <- ints buffer.TaskIds
                o.["labels"] <- ints buffer.LabelArray
                o.["logitWidths"] <- ints buffer.LogitWidths
                o.["examples"] <- JsonValue.Create(table.Store("buffer.examples", buffer.Examples))
                o.["labelTensor"] <- JsonValue.Create(table.Store("buffer.labels", buffer.Labels))
                o.["logits"] <- JsonValue.Create(table.Store("buffer.logits", buffer.Logits))
                o :> JsonNode
            | None -> null
        root.["methods"] <-
            JsonArray(
                [| for (i, m) in List.indexed state.Methods ->
                       let o = JsonObject()
                       o.["name"] <- JsonValue.Create m.Name
                       o.["stateType"] <- JsonValue.Create m.StateType.FullName
                       o.["state"] <- StateCodec.encode table (sprintf "method.%d" i) m.StateType m.State
                       o :> JsonNode |])
        root.["auxiliary"] <-
            JsonArray(
                [| for (i, m) in state.Auxiliary ->
                       let o = JsonObject()
                       o.["method"] <- JsonValue.Create i
                       o.["tensors"] <- JsonArray([| for KeyValue(name, t) in m.state_dict () -> JsonValue.Create(table.Store(sprintf "auxiliary.%d.%s" i name, t)) :> JsonNode |])
                       o :> JsonNode |])
        let r = point.Record
        let record = JsonObject()
        record.["classIl"] <- matrix r.ClassIl
        record.["taskIl"] <- matrix r.TaskIl
        record.["taskSeconds"] <- numbers r.TaskSeconds
        record.["trainSeconds"] <- JsonValue.Create r.TrainSeconds
        record.["evalSeconds"] <- JsonValue.Create r.EvalSeconds
        record.["hookSeconds"] <- JsonValue.Create r.HookSeconds
        record.["checkpointSeconds"] <- JsonValue.Create r.CheckpointSeconds
        record.["initialClassIl"] <- numbers r.InitialClassIl
        record.["initialTaskIl"] <- numbers r.InitialTaskIl
        record.["footprint"] <-
            JsonArray(
                [| for f in r.Footprint ->
                       let o = JsonObject()
                       for (k, v) in Footprint.kinds f do o.[k] <- JsonValue.Create v
                       o :> JsonNode |])
        root.["record"] <- record
        let extensions = JsonObject()
        for KeyValue(k, v) in learner.Extensions do
            extensions.[k] <- v.DeepClone()
        root.["extensions"] <- extensions
        let tensors = table.Stored
        root, tensors

    /// Saves the learner at a point of its run (a checkpoint hook's point) to a file, atomically: a
    /// process killed at any instant leaves the previous file or the new one. Raises NotSupportedException
    /// (and writes nothing) when the learner has an external term (`addTerms`), whose state lives in its
    /// own object where the file's codec cannot reach it.
    let saveAt (path: string) (point: RunPoint) (learner: Learner) =
        match point.State.Methods |> List.tryFind ExternalTerm.isExternal with
        | Some m ->
            raise (
                NotSupportedException(
                    sprintf "the learner has the custom term '%s', whose state lives in its own object: a learner file cannot hold it" m.Name))
        | None -> ()
        use scope = torch.NewDisposeScope()
        let root, tensors = encode learner point
        let metadata =
            [ "format", FormatName
              "format_version", string FormatVersion
              "learner", root.ToJsonString() ]
        Files.writeAtomicallyWith path (fun stream ->
            if Faults.enabled then
                // Halfway through the temporary file, then after it, before the rename.
                use buffer = new MemoryStream()
                Safetensors.write buffer metadata tensors
                let bytes = buffer.ToArray()
                let flush () = match stream with :? FileStream as f -> f.Flush true | s -> s.Flush()
                stream.Write(bytes, 0, bytes.Length / 2)
                flush ()
                Faults.tick "checkpoint-write"
                stream.Write(bytes, bytes.Length / 2, bytes.Length - bytes.Length / 2)
                flush ()
                Faults.tick "checkpoint-rename"
            else Safetensors.write stream metadata tensors)

    /// Saves the learner where it stands.
    let save (path: string) (learner: Learner) = saveAt path learner.Point learner

    /// What a learner file holds, checked (format, version, checksum) but not yet restored.
    type SavedLearner =
        { Path: string
          Root: JsonObject
          Tensors: TensorTable
          Config: Config }

    /// Reads and checks a learner file: that it is there, whole (its checksum), of this format and version,
    /// with a configuration this build can run. Raises LearnerFileError.
    let read (path: string) : SavedLearner =
        let fail reason = raise (LearnerFileError(path, reason))
        if Directory.Exists path then fail "is a folder, not a learner file"
        if not (File.Exists path) then fail "no such learner file"
        let content =
            try Safetensors.read path
            with SafetensorsError(_, reason) -> fail reason
        let table = TensorTable()
        for (name, t) in content.Tensors do
            table.Add(name, t.DetachFromDisposeScope())
        let release () = for (_, t) in content.Tensors do t.Dispose()
        try
            match content.Metadata.TryFind "format" with
            | Some f when f = FormatName -> ()
            | Some f -> fail (sprintf "not a Continual learner file (format '%s')" f)
            | None -> fail "not a Continual learner file (no format in its metadata)"
            match content.Metadata.TryFind Safetensors.ChecksumKey with
            | Some sum when sum = content.ComputedChecksum -> ()
            | Some _ -> fail "corrupted: its checksum does not match its contents"
            | None -> fail "corrupted: it carries no checksum"
            match content.Metadata.TryFind "format_version" with
            | Some v when v = string FormatVersion -> ()
            | Some v -> fail (sprintf "learner file format version %s; this build of Continual reads version %d" v FormatVersion)
            | None -> fail "no format version in its metadata"
            let root =
                match content.Metadata.TryFind "learner" with
                | Some json -> (try JsonNode.Parse(json).AsObject() with _ -> fail "corrupted: its learner section is not JSON")
                | None -> fail "corrupted: no learner section"
            let config =
                try
                    use document = JsonDocument.Parse(root.["config"].ToJsonString())
                    Config.ofJson document.RootElement
                with e -> fail (sprintf "its configuration cannot be read: %s" e.Message)
            { Path = path; Root = root; Tensors = table; Config = config }
        with _ ->
            release ()
            reraise ()

    /// Frees the tensors of a file read but not restored.
    let discard (saved: SavedLearner) = for (_, t) in saved.Tensors.Stored do t.Dispose()

    /// The sources of the added tasks a learner file records (none in files of learners that added none).
    let private sourcesOf (root: JsonObject) : TaskSource list =
        match root.["addedTasks"] with
        | null -> []
        | added ->
            [ for s in added.AsArray() ->
                  ({ Kind = s.["kind"].GetValue<string>()
                     Path = s.["path"].GetValue<string>()
                     Options = s.["options"].AsObject() |> Seq.map (fun kv -> kv.Key, kv.Value.GetValue<string>()) |> Map.ofSeq } : TaskSource) ]

    /// Restores a learner read from a file on a benchmark (the caller keeps it), checking that the
    /// benchmark splits its classes into the same tasks. The learner continues exactly where it was
    /// saved: same model, optimiser, buffer, method states, generators and records.
    let restoreOn (benchmark: Benchmark) (saved: SavedLearner) : Learner =
        let path = saved.Path
        let fail reason = raise (LearnerFileError(path, reason))
        let root = saved.Root
        let config = saved.Config
        let tasks = root.["benchmark"].["tasks"].AsArray() |> Seq.map (fun t -> t.AsArray() |> Seq.map (fun c -> c.GetValue<int>()) |> List.ofSeq) |> List.ofSeq
        if tasks <> (benchmark.Tasks |> List.map (fun t -> t.Classes)) then
            fail (sprintf "its tasks %A do not match the benchmark %s's" tasks benchmark.Name)
        match root.["benchmark"].["classNames"] with
        | null -> ()
        | names ->
            let names = names.AsArray() |> Seq.map (fun n -> n.GetValue<string>()) |> List.ofSeq
            if names <> benchmark.ClassNames then
                fail (sprintf "its class names %s do not match the benchmark %s's %s" (String.Join(", ", names)) benchmark.Name (String.Join(", ", benchmark.ClassNames)))
        // Files written before heads could grow have no width: their head is the benchmark's.
        let headClasses =
            match root.["headClasses"] with
            | null -> benchmark.NumClasses
            | n -> n.GetValue<int>()
        let sources = sourcesOf root
        let learner = createWithHead benchmark config headClasses
        let state = learner.Point.State
        let tensor name =
            match saved.Tensors.TryFind name with
            | Some t -> t
            | None -> fail (sprintf "corrupted: the tensor %s is missing" name)
        try
            let architecture = root.["architecture"].GetValue<string>()
            if architecture <> Backbones.describe learner.Architecture then
                fail (sprintf "its model is a %s, the configuration builds a %s" architecture (Backbones.describe learner.Architecture))
            let device = (Experiment.settings config).Device
            let copyInto (name: string) (target: Tensor) =
                let source = tensor name
                if source.shape <> target.shape || source.dtype <> target.dtype then
                    fail (sprintf "corrupted: %s has shape [%s] where [%s] is expected" name (String.Join(", ", source.shape)) (String.Join(", ", target.shape)))
                use _ = torch.no_grad ()
                target.copy_ source |> ignore
            let moved = Dictionary<string, Tensor>()
            for KeyValue(name, t) in state.Model.state_dict () do
                copyInto ("model." + name) t
                moved.["model." + name] <- t
            let buffer =
                match state.Buffer, root.["buffer"] with
                | Some b, null -> fail (sprintf "it has no replay buffer, the configuration has %d slots" b.Capacity)
                | Some b, o ->
                    if o.["capacity"].GetValue<int>() <> b.Capacity then fail "its replay buffer's size differs from the configuration's"
                    copyInto (o.["examples"].GetValue<string>()) b.Examples
                    copyInto (o.["labelTensor"].GetValue<string>()) b.Labels
                    copyInto (o.["logits"].GetValue<string>()) b.Logits
                    let taskIds = o.["taskIds"].AsArray() |> Seq.map (fun v -> v.GetValue<int>()) |> Array.ofSeq
                    let labels = o.["labels"].AsArray() |> Seq.map (fun v -> v.GetValue<int>()) |> Array.ofSeq
                    if taskIds.Length <> b.Capacity || labels.Length <> b.Capacity then fail "corrupted: the buffer's slot lists have the wrong length"
                    let widths =
                        match o.["logitWidths"] with
                        | null -> Array.create b.Capacity (int b.Logits.shape.[1])
                        | w -> w.AsArray() |> Seq.map (fun v -> v.GetValue<int>()) |> Array.ofSeq
                    if widths.Length <> b.Capacity then fail "corrupted: the buffer's slot lists have the wrong length"
                    Some { b with TaskIds = taskIds; LabelArray = labels; LogitWidths = widths; Seen = o.["seen"].GetValue<int64>(); Rng = rngOf o.["rng"] }
                | None, null -> None
                | None, _ -> fail "it has a replay buffer, the configuration has none"
            let savedMethods = root.["methods"].AsArray()
            if savedMethods.Count <> state.Methods.Length then
                fail (sprintf "it holds %d methods, the configuration builds %d" savedMethods.Count state.Methods.Length)
            let context = { Device = device }
            let methods =
                List.mapi2
                    (fun i (fresh: MethodInstance) (node: JsonNode) ->
                        let name = node.["name"].GetValue<string>()
                        if name <> fresh.Name then fail (sprintf "method %d is %s, the configuration builds %s" i name fresh.Name)
                        let value =
                            try StateCodec.decode context saved.Tensors moved (sprintf "method.%d" i) fresh.StateType node.["state"]
                            with StateCodecError(where, reason) -> fail (sprintf "corrupted: %s %s" where reason)
                        let restored = fresh.Restore value
                        Method.release fresh restored
                        restored)
                    state.Methods (List.ofSeq savedMethods)
            let auxiliary =
                [ for node in root.["auxiliary"].AsArray() ->
                      let i = node.["method"].GetValue<int>()
                      let build =
                          match methods |> List.tryItem i |> Option.bind (fun m -> m.Auxiliary) with
                          | Some b -> b
                          | None -> fail (sprintf "corrupted: method %d has no auxiliary module" i)
                      let m =
                          use example = benchmark.Train.InputRange(0L, 1L)
                          Training.buildAuxiliary state.Model device config.Run.LearningRate example build state.Optimiser
                      let names = node.["tensors"].AsArray() |> Seq.map (fun n -> n.GetValue<string>()) |> Set.ofSeq
                      for KeyValue(name, t) in m.state_dict () do
                          let key = sprintf "auxiliary.%d.%s" i name
                          if not (names.Contains key) then fail (sprintf "corrupted: the tensor %s is missing" key)
                          copyInto key t
                      i, m ]
            let methods =
                methods |> List.mapi (fun i m -> match auxiliary |> List.tryFind (fun (j, _) -> j = i) with Some(_, a) -> m.Attach a | None -> m)
            let groups = root.["optimiser"].["groups"].AsArray()
            if groups.Count <> Seq.length state.Optimiser.ParamGroups then fail "corrupted: its optimiser has a different number of parameter groups"
            // Last, so that nothing built above draws from the restored stream.
            torch.set_rng_state (tensor (root.["rng"].["torch"].GetValue<string>()))
            let record = root.["record"]
            let matrixOf (n: JsonNode) = n.AsArray() |> Seq.map (fun row -> row.AsArray() |> Seq.map (fun v -> v.GetValue<float>()) |> Array.ofSeq) |> Array.ofSeq
            let position =
                match root.["position"] with
                | null -> None
                | p ->
                    Some
                        { Task = p.["task"].GetValue<int>()
                          Epoch = p.["epoch"].GetValue<int>()
                          Step = p.["step"].GetValue<int>()
                          EpochRng = rngOf p.["epochRng"]
                          Seconds = p.["seconds"].GetValue<float>() }
            let extensions = root.["extensions"].AsObject() |> Seq.map (fun kv -> kv.Key, kv.Value.DeepClone()) |> Map.ofSeq
            { learner with
                Point =
                    { State =
                        { state with
                            Buffer = buffer
                            Methods = methods
                            Auxiliary = auxiliary
                            Rng = rngOf root.["rng"].["run"]
                            NextTask = root.["nextTask"].GetValue<int>()
                            StepsTaken = root.["stepsTaken"].GetValue<int64>() }
                      Record =
                        { ClassIl = matrixOf record.["classIl"]
                          TaskIl = matrixOf record.["taskIl"]
                          TaskSeconds = record.["taskSeconds"].AsArray() |> Seq.map (fun v -> v.GetValue<float>()) |> Array.ofSeq
                          TrainSeconds = record.["trainSeconds"].GetValue<float>()
                          EvalSeconds = record.["evalSeconds"].GetValue<float>()
                          HookSeconds = record.["hookSeconds"].GetValue<float>()
                          CheckpointSeconds = record.["checkpointSeconds"].GetValue<float>()
                          // Absent from checkpoints written before these were recorded.
                          InitialClassIl = (match record.["initialClassIl"] with null -> [||] | n -> n.AsArray() |> Seq.map (fun v -> v.GetValue<float>()) |> Array.ofSeq)
                          InitialTaskIl = (match record.["initialTaskIl"] with null -> [||] | n -> n.AsArray() |> Seq.map (fun v -> v.GetValue<float>()) |> Array.ofSeq)
                          Footprint =
                            match record.["footprint"] with
                            | null -> [||]
                            | n ->
                                [| for f in n.AsArray() ->
                                       let get (k: string) = f.[k].GetValue<int64>()
                                       { Replay = get "replay"; Logits = get "logits"; Importance = get "importance"; Anchors = get "anchors"; Snapshots = get "snapshots"; Exemplars = get "exemplars" } |] }
                      Position = position }
                Extensions = extensions
                Sources = sources
                StartedUtc = DateTime.Parse(root.["startedUtc"].GetValue<string>(), Globalization.CultureInfo.InvariantCulture, Globalization.DateTimeStyles.RoundtripKind) }
        with
        | LearnerFileError _ ->
            Training.dispose learner.Point.State
            reraise ()
        | :? NullReferenceException | :? InvalidOperationException | :? FormatException | :? KeyNotFoundException as e ->
            Training.dispose learner.Point.State
            fail (sprintf "corrupted: %s" e.Message)

    /// The sources of the tasks a saved learner added to its benchmark.
    let addedTasks (saved: SavedLearner) : TaskSource list = sourcesOf saved.Root

    /// The loader of `load` and `loadOn`: the data loaders' own kinds (TaskLoaders); a task of another
    /// kind (e.g. arrays given in memory) needs `loadWith` and a loader that knows it.
    let private defaultLoader (path: string) (source: TaskSource) : Benchmark =
        if List.contains source.Kind TaskLoaders.kinds then TaskLoaders.load source
        else raise (LearnerFileError(path, sprintf "it has a task added from %s '%s', which only its own loader can read again: load it with Learner.loadWith" source.Kind source.Path))

    /// The benchmark with the saved learner's added tasks appended, each read by `loader` (new tensors,
    /// or the benchmark itself when there are none).
    let appendAddedTasks (loader: TaskSource -> Benchmark) (saved: SavedLearner) (benchmark: Benchmark) : Benchmark =
        addedTasks saved
        |> List.fold (fun (current: Benchmark) source ->
            let task = loader source
            try
                let next = TaskStream.append task current
                if not (obj.ReferenceEquals(current, benchmark)) then Benchmarks.dispose current
                next
            finally Benchmarks.dispose task) benchmark

    /// Loads a learner file on an already loaded benchmark (the caller keeps it), reading each task the
    /// learner added with `loader` (the data loaders' `TaskSource -> Benchmark`).
    let loadOnWith (loader: TaskSource -> Benchmark) (benchmark: Benchmark) (path: string) : Learner =
        let saved = read path
        try
            let full = appendAddedTasks loader saved benchmark
            let owns = not (obj.ReferenceEquals(full, benchmark))
            try { restoreOn full saved with OwnsBenchmark = owns }
            with _ ->
                if owns then Benchmarks.dispose full
                reraise ()
        finally discard saved

    /// Loads a learner file on an already loaded benchmark (the caller keeps it), reading the tasks it
    /// added with the data loaders (TaskLoaders).
    let loadOn (benchmark: Benchmark) (path: string) : Learner = loadOnWith (defaultLoader path) benchmark path

    /// Loads a learner file and the benchmark its configuration names (which the learner then owns),
    /// reading each task the learner added with `loader`.
    let loadWith (loader: TaskSource -> Benchmark) (path: string) : Learner =
        let saved = read path
        try
            let benchmark = Experiment.loadBenchmark saved.Config
            let full =
                try appendAddedTasks loader saved benchmark
                with _ ->
                    Benchmarks.dispose benchmark
                    reraise ()
            if not (obj.ReferenceEquals(full, benchmark)) then Benchmarks.dispose benchmark
            try { restoreOn full saved with OwnsBenchmark = true }
            with _ ->
                Benchmarks.dispose full
                reraise ()
        finally discard saved

    /// Loads a learner file and the benchmark its configuration names (which the learner then owns),
    /// reading the tasks it added with the data loaders (TaskLoaders).
    let load (path: string) : Learner = loadWith (defaultLoader path) path

    /// The loader `load` uses for a learner file: the data loaders' kinds, and a clear error for others.
    let loaderFor (path: string) : TaskSource -> Benchmark = defaultLoader path
