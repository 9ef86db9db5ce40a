module Continual.Cli.Program

open System
open System.IO
open System.Threading
open Argu
open Continual
open Continual.Cli.Arguments
open Continual.Data
open Continual.Methods
open Spectre.Console

/// Exit codes: 0 success, 1 the work failed (bad data, a failed check), 2 bad usage.
[<Literal>]
let private UsageError = 2

exception private UsageProblem of string list

/// The environment does not allow the work (an output folder that cannot be written): exit 1.
exception private EnvironmentProblem of string

/// The process should end with this exit code (a stop on a signal) after what it printed.
exception private Stopped of exitCode: int

/// The options of the method, its penalty and its distillation terms, as given: (option name without
/// "--", value as text). Each applies to every component that has it (e.g. --temperature to LwF and KD).
let private methodOptions (given: GivenOptions) : (string * string) list =
    // Every setting the registry knows, by its command-line name; the buffer size is read apart (it
    // chooses the method's reference settings).
    let registryOptions =
        [ for e in Registry.methods do for s in e.Settings -> s.Option
          for e in Registry.importance do for s in e.Settings -> s.Option
          for s in Registry.distillationSettings -> s.Option ]
        |> List.distinct
        |> List.filter (fun o -> o <> "buffer")
    [ for name in registryOptions do
          match given.Values.TryFind name with
          | Some(:? float as v) -> name, v.ToString("R", Globalization.CultureInfo.InvariantCulture)
          | Some(:? unit) -> name, "true"
          | Some v -> name, string v
          | None -> () ]

/// The source settings the data options describe (--image-size, --colour, --classes-per-task,
/// --label-column, --feature-scale); the values are checked with the rest of the configuration.
let private sourceOf (args: GivenOptions) : SourceSettings =
    let d = SourceSettings.Default
    { ImageSize =
        GivenOptions.tryGet<string> "image-size" args
        |> Option.map (fun text ->
            match Data.ImageOptions.tryParseSize text with
            | Some size -> size
            | None -> raise (UsageProblem [ sprintf "--image-size: '%s' is not a size such as 64x64 or 64 (1 to 4096 pixels a side)" text ]))
      Colour = (GivenOptions.get "colour" d.Colour args).Trim().ToLowerInvariant()
      ClassesPerTask = GivenOptions.tryGet "classes-per-task" args
      LabelColumn = GivenOptions.get "label-column" d.LabelColumn args
      FeatureScale = GivenOptions.tryGet "feature-scale" args
      Normalise = (GivenOptions.get "normalise" d.Normalise args).Trim() }

/// The configuration the options describe, on top of the reference defaults for strategy and buffer.
/// Method options that apply to none of the run's components are ignored (compare runs several
/// strategies with one set of options).
let configOf (args: GivenOptions) (strategyOverride: string option) (seedOverride: int64 option) : Config =
    let strategy = (defaultArg strategyOverride (GivenOptions.get "strategy" "derpp" args)).Trim().ToLowerInvariant()
    if not (List.contains strategy Experiment.strategyNames) then
        raise (UsageProblem [ sprintf "unknown strategy '%s' (expected one of: %s)" strategy (String.concat ", " Experiment.strategyNames) ])
    let penalty = GivenOptions.tryGet<string> "penalty" args |> Option.map (fun p -> p.Trim().ToLowerInvariant())
    match penalty with
    | Some p when not (List.contains p Experiment.importanceNames) ->
        raise (UsageProblem [ sprintf "unknown penalty '%s' (expected one of: %s)" p (String.concat ", " Experiment.importanceNames) ])
    | _ -> ()
    let distill = GivenOptions.tryGet<string> "distill" args |> Option.map (fun n -> n.Trim().ToLowerInvariant()) |> Option.filter (fun n -> n <> "none")
    let kind =
        distill
        |> Option.map (fun name ->
            match Methods.DistillationKind.parse name with
            | Some k -> k
            | None -> raise (UsageProblem [ sprintf "unknown distillation term '%s' (expected one of: %s)" name (String.concat ", " Methods.DistillationKind.names) ]))
    match GivenOptions.tryGet<string> "benchmark" args with
    | Some b when List.contains b Experiment.userDataBenchmarks && not (GivenOptions.contains "data" args) ->
        raise (UsageProblem [ sprintf "--benchmark %s reads your files: give them with --data %s (docs/data.md)" b (if b = "manifest" then "FILE.yaml" else "DIR") ])
    | _ -> ()
    let d = Experiment.defaults strategy (GivenOptions.get "buffer" 500 args) |> Experiment.withPenalty penalty
    let d = match kind with Some k -> Experiment.withDistillation k d | None -> d
    let config =
        { d with
            Run =
                { d.Run with
                    Seed = defaultArg seedOverride (GivenOptions.get "seed" d.Run.Seed args)
                    LearningRate = GivenOptions.get "lr" d.Run.LearningRate args
                    BatchSize = GivenOptions.get "batch-size" d.Run.BatchSize args
                    Epochs = GivenOptions.get "epochs" d.Run.Epochs args
                    WeightDecay = GivenOptions.get "weight-decay" d.Run.WeightDecay args
                    Device = GivenOptions.get "device" d.Run.Device args
                    Threads = GivenOptions.get "threads" d.Run.Threads args
                    ClipGrad = (match GivenOptions.tryGet<float> "clip-grad" args with Some c -> Some c | None -> d.Run.ClipGrad) }
            Data =
                { d.Data with
                    Benchmark = GivenOptions.get "benchmark" d.Data.Benchmark args
                    Folder = GivenOptions.get "data" d.Data.Folder args
                    TrainPerClass = GivenOptions.tryGet "train-per-class" args
                    TestPerClass = GivenOptions.tryGet "test-per-class" args
                    AllowMissingClasses = GivenOptions.contains "allow-missing-classes" args
                    Source = sourceOf args }
            Head = if GivenOptions.contains "growing-head" args then HeadKind.Growing else d.Head
            Heads =
                match GivenOptions.tryGet<string> "heads" args |> Option.map (fun h -> h.Trim().ToLowerInvariant()) with
                | Some "multi" -> HeadCount.Multi
                | Some "single" -> HeadCount.Single
                | Some other -> raise (UsageProblem [ sprintf "--heads: '%s' is not single or multi" other ])
                | None -> d.Heads
            Backbone = (GivenOptions.get "backbone" d.Backbone args).Trim().ToLowerInvariant() }
    methodOptions args
    |> List.fold (fun c (option, value) ->
        match Experiment.setOption option value c with
        | Some(Ok next) -> next
        | Some(Error message) -> raise (UsageProblem [ sprintf "--%s: %s" option message ])
        | None -> c) config

/// Refuses method options that set nothing in this run's configuration (e.g. --xi with derpp): with one
/// strategy, an option that does nothing is a mistake worth hearing about.
let private refuseInapplicable (args: GivenOptions) (config: Config) =
    let unused =
        methodOptions args
        |> List.filter (fun (option, value) -> (Experiment.setOption option value config).IsNone)
        |> List.map fst
        |> List.distinct
    if GivenOptions.contains "buffer" args && Config.bufferSize config = 0 then
        raise (UsageProblem [ sprintf "--buffer does not apply to %s, which keeps no replay buffer or exemplar memory" (Config.methodName config) ])
    if not unused.IsEmpty then
        let what =
            [ yield Config.methodName config
              yield! Config.penaltyName config |> Option.toList
              for t in config.Distillation -> "--distill " + Methods.DistillationKind.name t.Kind ]
        raise (UsageProblem [ for o in unused -> sprintf "--%s does not apply to %s" o (String.concat " with " what) ])

let private defaultOut (config: Config) =
    let buffer = match Config.bufferSize config with 0 -> "" | b -> sprintf "-%d" b
    let penalty = match Config.penaltyName config with Some p -> "+" + p | None -> ""
    let distill = config.Distillation |> List.map (fun t -> "-" + Methods.DistillationKind.name t.Kind) |> String.concat ""
    let backbone = if config.Backbone = "mlp" then "" else "-" + config.Backbone
    Path.Combine("runs", sprintf "%s%s-%s%s%s%s-s%d" config.Data.Benchmark backbone (Config.methodName config) buffer penalty distill config.Run.Seed)

/// A configuration error as the command line says it: the domain's message and the option that sets it.
let private describe (e: ConfigError) =
    match e.Option with
    | Some option -> sprintf "%s (--%s)" e.Message option
    | None -> e.Message

/// Checks a configuration and that its data files are there, before any work starts, and tunes the
/// allocator for its backbone (Malloc.tuneFor).
let private check (config: Config) =
    match Experiment.validate config with
    | [] ->
        Malloc.tuneFor config.Backbone
        try
            if config.Data.Benchmark = "split-cifar10" then
                for name in Cifar.fileNames do
                    Cifar.findFile config.Data.Folder name |> ignore
            elif config.Data.Benchmark = "manifest" then
                DataFiles.checkReadable config.Data.Folder
            elif List.contains config.Data.Benchmark Experiment.userDataBenchmarks then
                DataFiles.checkFolder config.Data.Folder
            else
                for name in Benchmarks.idxFileNames do
                    Benchmarks.findIdxFile config.Data.Folder name |> ignore
        with
        | DataFileError(_, reason) as e when not (reason.Contains "not found" || reason.StartsWith "is a file, not a folder") ->
            // The file is there but cannot be used (unreadable, a dangling link, a folder): exit 1.
            raise e
        | DataFileError(path, reason) ->
            let hint =
                if List.contains config.Data.Benchmark Experiment.userDataBenchmarks then
                    sprintf "point --data at your %s (docs/data.md)" (if config.Data.Benchmark = "manifest" then "manifest file" else "data folder")
                elif config.Data.Benchmark = "split-cifar10" then "point --data at a folder with CIFAR-10's binary batches (data_batch_1.bin ... test_batch.bin)"
                else "point --data at a folder with the four IDX files; on Debian, apt-get install dataset-fashion-mnist"
            raise (UsageProblem [ sprintf "%s: %s (%s)" path reason hint ])
    | errors -> raise (UsageProblem (errors |> List.map describe))

/// Refuses an output folder that is a file or cannot be written, before any work: the folder is
/// created when missing and a probe file is written in it and deleted; whatever the check created is
/// removed again, so that nothing is left when the run fails later.
let private checkOut (out: string) =
    let full = Path.GetFullPath out
    if File.Exists full then raise (EnvironmentProblem(sprintf "%s: --out is a file, not a folder (nothing was written)" full))
    let rec firstMissing (path: string) =
        let parent = Path.GetDirectoryName path
        if isNull parent || Directory.Exists parent then path else firstMissing parent
    let created = if Directory.Exists full then None else Some(firstMissing full)
    try
        try
            Directory.CreateDirectory full |> ignore
            let probe = Path.Combine(full, sprintf ".continual-probe-%s" (Guid.NewGuid().ToString "N"))
            File.WriteAllBytes(probe, [| 0uy |])
            File.Delete probe
        with
        | :? UnauthorizedAccessException -> raise (EnvironmentProblem(sprintf "%s: the output folder cannot be written: permission denied (nothing was written)" full))
        | :? IOException as e -> raise (EnvironmentProblem(sprintf "%s: the output folder cannot be written: %s (nothing was written)" full e.Message))
    finally
        match created with
        | Some top ->
            // Only the folders this check created go, and only while empty: another process may have
            // taken the folder meanwhile (its lock file is in it), and a recursive delete took its files.
            let rec removeUpTo (folder: string) =
                let removed = try Directory.Delete(folder, false); true with _ -> false
                if removed && folder <> top then removeUpTo (Path.GetDirectoryName folder)
            removeUpTo full
        | None -> ()

/// The TensorBoard log of a run where --tensorboard asks for one (None otherwise: no cost).
let private tensorboardLog (folder: string option) : TensorBoard.RunLog option =
    folder |> Option.map (fun f ->
        try new TensorBoard.RunLog(f)
        with :? IOException | :? UnauthorizedAccessException as e ->
            raise (EnvironmentProblem(sprintf "%s: --tensorboard cannot be written: %s" (Path.GetFullPath f) e.Message)))

/// Hooks with a TensorBoard log added where there is one.
let private withLog (log: TensorBoard.RunLog option) (hooks: RunHooks) =
    match log with
    | Some l -> l.Attach hooks
    | None -> hooks

/// Refuses a --tensorboard that names a file, before any work.
let private checkTensorboard (folder: string option) =
    match folder with
    | Some f when File.Exists f -> raise (EnvironmentProblem(sprintf "%s: --tensorboard is a file, not a folder (nothing was written)" (Path.GetFullPath f)))
    | _ -> ()

/// Closes a TensorBoard log, if there is one, when disposed.
let private closing (log: TensorBoard.RunLog option) =
    { new IDisposable with member _.Dispose() = log |> Option.iter (fun l -> (l :> IDisposable).Dispose()) }

let private runOnceLogged (config: Config) (quiet: bool) (afterTask: AfterTask -> unit) (tensorboard: string option) =
    let log = tensorboardLog tensorboard
    use _ = closing log
    Report.withProgress quiet (fun onEvent ->
        Experiment.run config (withLog log { RunHooks.none with OnEvent = onEvent; AfterTask = afterTask }) CancellationToken.None)

let private runOnce (config: Config) (quiet: bool) (afterTask: AfterTask -> unit) = runOnceLogged config quiet afterTask None

/// A learner that cannot go on as asked (its file, or options that contradict it): exit 1.
exception private LearnerProblem of string

/// SIGINT (Ctrl-C) and SIGTERM ask the run to stop at its next step boundary, after a checkpoint; a
/// second signal ends the process at once.
type private StopSignals() =
    let mutable received: Runtime.InteropServices.PosixSignal option = None
    let handler (context: Runtime.InteropServices.PosixSignalContext) =
        match received with
        | None ->
            received <- Some context.Signal
            context.Cancel <- true
        | Some _ -> context.Cancel <- false
    let registrations =
        [ Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGINT, handler)
          Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGTERM, handler) ]
    member _.Requested = received.IsSome
    member _.Name = match received with Some Runtime.InteropServices.PosixSignal.SIGTERM -> "SIGTERM" | _ -> "SIGINT"
    /// 128 + the signal's number, as a shell reports a process the signal ended.
    member _.ExitCode = match received with Some Runtime.InteropServices.PosixSignal.SIGTERM -> 143 | _ -> 130
    interface IDisposable with
        member _.Dispose() = for r in registrations do r.Dispose()

/// A task range "A-B" or "A" (numbered from 1) as 0-based (first, last).
let private taskRange (text: string) : int * int =
    let bad () = raise (UsageProblem [ sprintf "--tasks: '%s' is not a task range such as 1-3 or 4" text ])
    let number (s: string) = match Int32.TryParse(s.Trim()) with | true, v when v >= 1 -> v - 1 | _ -> bad ()
    match text.Split '-' with
    | [| one |] -> number one, number one
    | [| a; b |] ->
        let first, last = number a, number b
        if last < first then bad ()
        first, last
    | _ -> bad ()

/// What the command line keeps in a learner file besides the learner: whether ONNX files are written,
/// the last task the run was asked for, the wall time so far and the ONNX figures of the tasks so far.
type private CliSection =
    { Onnx: bool
      LastTask: int option
      WallSeconds: float }

let private cliSection (learner: Learner) : CliSection =
    match learner.Extensions.TryFind "cli" with
    | Some node ->
        { Onnx = node.["onnx"].GetValue<bool>()
          LastTask = (match node.["lastTask"] with null -> None | n -> Some(n.GetValue<int>()))
          WallSeconds = node.["wallSeconds"].GetValue<float>() }
    | None -> { Onnx = false; LastTask = None; WallSeconds = 0.0 }

let private onnxReports (learner: Learner) : Onnx.TaskVerification list =
    match learner.Extensions.TryFind "onnx" with
    | Some node -> [ for r in node.AsArray() -> Onnx.TaskVerification.ofJson r ]
    | None -> []

/// Learns up to `lastTask` (every remaining task when None) into a run folder's staging folder: a
/// checkpoint after every task (and every `checkpointEvery` steps), ONNX models where the run writes
/// them, results at the end, then everything published into the folder together. SIGINT and SIGTERM stop it at the next step boundary with a checkpoint. `clock` started when the
/// command did (its data loading counts). Returns the exit code.
let private learnInto (hold: OutputFolder.Hold) (section: CliSection) (checkpointEvery: int) (quiet: bool) (tensorboard: string option) (clock: Diagnostics.Stopwatch) (learner: Learner) : int =
    let out = hold.Path
    let staging = hold.Staging
    // A backbone that needs it checked libtorch's convolutions when it was built (Engine.checkConvolutions).
    let wrongBy (error: float) = if Double.IsInfinity error then "NaN in their output" else sprintf "off by %.2g of their scale" error
    match Engine.convolutionsChecked () with
    | None | Some Sound -> ()
    | Some(FellBack error) ->
        eprintfn "note: oneDNN's convolutions are wrong on this CPU (%s); libtorch's own, slower convolutions are used instead" (wrongBy error)
    | Some(Unsound(error, reason)) ->
        eprintfn "warning: libtorch's convolutions are wrong on this CPU (%s) and oneDNN could not be switched off (%s): results are not to be trusted" (wrongBy error) reason
    // Staged files of a killed writer beyond what the learner has learned are not its own any more.
    for staged in Directory.GetFiles staging do
        match Path.GetFileName staged with
        | "results.json" | "results.csv" -> File.Delete staged
        | name when name.StartsWith "task-" && name.EndsWith ".onnx" ->
            match Int32.TryParse(name.Substring(5, name.Length - 10)) with
            | true, k when k > learner.TasksLearned -> File.Delete staged
            | _ -> ()
        | _ -> ()
    let file = Path.Combine(staging, Learner.FileName)
    let exporter =
        if section.Onnx then Some(Onnx.RunExporter(Onnx.ExportSettings.forRun (OnnxCommands.runIdentity learner.Config) staging, onnxReports learner))
        else None
    let extensions () =
        let cli = Text.Json.Nodes.JsonObject()
        cli.["onnx"] <- Text.Json.Nodes.JsonValue.Create section.Onnx
        cli.["lastTask"] <- (match section.LastTask with Some t -> Text.Json.Nodes.JsonValue.Create t :> Text.Json.Nodes.JsonNode | None -> null)
        cli.["wallSeconds"] <- Text.Json.Nodes.JsonValue.Create(section.WallSeconds + clock.Elapsed.TotalSeconds)
        let reports = match exporter with Some e -> e.Reports | None -> []
        Map [ "cli", cli :> Text.Json.Nodes.JsonNode
              "onnx", Text.Json.Nodes.JsonArray([| for r in reports -> Onnx.TaskVerification.toJson r |]) :> Text.Json.Nodes.JsonNode ]
    use signals = new StopSignals()
    let log = tensorboardLog tensorboard
    use _ = closing log
    let checkpoint reason point =
        Learner.saveAt file point { learner with Extensions = extensions () }
        if reason = TaskEnd then Faults.tick "task-end"
    let hooks =
        { RunHooks.none with
            AfterTask = OnnxCommands.afterTask exporter
            Checkpoint = checkpoint
            CheckpointEvery = checkpointEvery
            StopRequested = fun () -> signals.Requested }
    let finished =
        try Report.withProgress quiet (fun onEvent -> Learner.learnUntil (withLog log { hooks with OnEvent = OnnxCommands.observing exporter onEvent }) CancellationToken.None section.LastTask learner)
        with
        | RunStopped(task, step) ->
            exporter |> Option.iter (fun e -> e.Finish())
            if learner.OwnsBenchmark then Benchmarks.dispose learner.Benchmark
            Console.Out.Flush()
            eprintfn "stopped by %s in task %d after step %d: the learner is saved in %s; continue with: continual resume %s" signals.Name (task + 1) step file out
            raise (Stopped signals.ExitCode)
        | e ->
            exporter |> Option.iter (fun e -> e.Finish())
            if learner.OwnsBenchmark then Benchmarks.dispose learner.Benchmark
            match e with
            | TrainingDiverged _ when File.Exists file ->
                raise (LearnerProblem(sprintf "%s (no results were written; %s holds the learner as its last checkpoint left it)" e.Message file))
            | _ -> reraise ()
    try
        let result = Learner.result (section.WallSeconds + clock.Elapsed.TotalSeconds) finished
        Report.printResult result
        OnnxCommands.printSummary exporter result
        // A disk that fills here loses nothing: the learner and the task models stay staged, and
        // `resume` writes the results and publishes them once there is room.
        try
            Faults.fillDisk "results" staging
            Results.write staging result (OnnxCommands.resultsSection exporter result)
            hold.Publish()
        with :? IOException as e ->
            let cause = match e.Message.IndexOf " : '" with -1 -> e.Message | i -> e.Message.Substring(0, i)
            raise (LearnerProblem(sprintf "%s: the results cannot be written (%s); nothing was published, the learner and the task models stay in %s: continue with: continual resume %s" out (cause.Trim()) staging out))
        AnsiConsole.MarkupLine(
            "wrote {0}, {1} and {2} ({3} of {4} tasks learned)",
            Markup.Escape(Path.Combine(out, "results.json")), Markup.Escape(Path.Combine(out, "results.csv")), Markup.Escape(Path.Combine(out, Learner.FileName)),
            finished.TasksLearned, finished.TaskCount)
        0
    finally
        exporter |> Option.iter (fun e -> e.Finish())
        Learner.dispose finished

/// About how many bytes a run writes at most at one time: a task model per task, the learner file twice
/// while a checkpoint is replaced (the model, its snapshot and a few importance vectors, the buffer),
/// the results, and a margin.
let private outputBytes (learner: Learner) =
    let parameters = Models.Backbones.parameterCount learner.Point.State.Model
    let buffer =
        match learner.Point.State.Buffer with
        | Some b -> (b.Examples.NumberOfElements + b.Logits.NumberOfElements + b.Labels.NumberOfElements * 2L) * 4L
        | None -> 0L
    parameters * 4L * int64 (learner.TaskCount + 12) + 2L * buffer + 1048576L

let private runCommand (results: ParseResults<RunArgs>) =
    let args = GivenOptions.ofResults (results.GetAllResults())
    let config = configOf args None None
    refuseInapplicable args config
    check config
    let out = GivenOptions.get "out" (defaultOut config) args
    checkOut out
    checkTensorboard (GivenOptions.tryGet "tensorboard" args)
    let every = GivenOptions.get "checkpoint-every" 0 args
    if every < 0 then raise (UsageProblem [ sprintf "--checkpoint-every must be positive (got %d)" every ])
    let lastTask =
        match GivenOptions.tryGet<string> "tasks" args with
        | Some text ->
            let first, last = taskRange text
            if first <> 0 then
                raise (UsageProblem [ sprintf "--tasks %s: a run starts at task 1; continue a saved run with `continual learn --from RUN_DIR --tasks %s`" text text ])
            Some last
        | None -> None
    AnsiConsole.MarkupLine(
        "[bold]{0}[/] on [bold]{1}[/]  buffer {2}  lr {3}  seed {4}  ->  {5}",
        Markup.Escape(Config.methodName config), Markup.Escape config.Data.Benchmark, Config.bufferSize config, config.Run.LearningRate, config.Run.Seed, Markup.Escape out)
    let clock = Diagnostics.Stopwatch.StartNew()
    // The folder is this run's before any work: locked, cleared with --overwrite, marked incomplete.
    use hold = OutputFolder.acquireFresh out (GivenOptions.contains "overwrite" args)
    let learner =
        try
            let learner = Learner.create config
            match lastTask with
            | Some last when last >= learner.TaskCount ->
                Learner.dispose learner
                raise (UsageProblem [ sprintf "--tasks: %s has %d tasks" config.Data.Benchmark learner.TaskCount ])
            | _ -> ()
            hold.EnsureSpace(outputBytes learner)
            hold.MarkIncomplete(Config.hash config)
            learner
        with _ ->
            hold.Abandon()
            reraise ()
    learnInto hold { Onnx = not (GivenOptions.contains "no-onnx" args); LastTask = lastTask; WallSeconds = 0.0 } every (GivenOptions.contains "quiet" args) (GivenOptions.tryGet "tensorboard" args) clock learner

/// The learner file of a run folder (or the file itself): the staged one of a run that has not
/// published yet, else the published one.
let private learnerFile (path: string) =
    if File.Exists path then path
    else
        let staged = Path.Combine(path, OutputFolder.StagingName, Learner.FileName)
        if File.Exists staged then staged else Path.Combine(path, Learner.FileName)

/// The run folder a learner file belongs to (a staged file's is the folder above its staging folder).
let private runFolderOf (file: string) =
    let folder = Path.GetDirectoryName(Path.GetFullPath file)
    if Path.GetFileName folder = OutputFolder.StagingName then Path.GetDirectoryName folder else folder

/// The options given to resume or learn that contradict the saved configuration, each with the saved value.
let private contradictions (given: GivenOptions) (saved: Config) : string list =
    let text (v: obj) =
        match v with
        | :? float as f -> f.ToString("R", Globalization.CultureInfo.InvariantCulture)
        // A flag's value is unit, boxed as null.
        | null -> "true"
        | v -> string v
    let optional (v: 'T option) = match v with Some x -> box x | None -> box "none"
    [ for KeyValue(name, value) in given.Values do
          let savedValue =
              match name with
              | "strategy" -> Some(box (Config.methodName saved))
              | "buffer" -> Some(box (Config.bufferSize saved))
              | "seed" -> Some(box saved.Run.Seed)
              | "lr" -> Some(box saved.Run.LearningRate)
              | "batch-size" -> Some(box saved.Run.BatchSize)
              | "epochs" -> Some(box saved.Run.Epochs)
              | "weight-decay" -> Some(box saved.Run.WeightDecay)
              | "device" -> Some(box saved.Run.Device)
              | "threads" -> Some(box saved.Run.Threads)
              | "clip-grad" -> Some(optional saved.Run.ClipGrad)
              | "benchmark" -> Some(box saved.Data.Benchmark)
              | "data" -> Some(box saved.Data.Folder)
              | "train-per-class" -> Some(optional saved.Data.TrainPerClass)
              | "test-per-class" -> Some(optional saved.Data.TestPerClass)
              | "allow-missing-classes" -> Some(box saved.Data.AllowMissingClasses)
              | "image-size" -> Some(box (match saved.Data.Source.ImageSize with Some s -> Data.ImageOptions.sizeText s | None -> "none"))
              | "colour" -> Some(box saved.Data.Source.Colour)
              | "classes-per-task" -> Some(optional saved.Data.Source.ClassesPerTask)
              | "label-column" -> Some(box saved.Data.Source.LabelColumn)
              | "feature-scale" -> Some(optional saved.Data.Source.FeatureScale)
              | "normalise" -> Some(box saved.Data.Source.Normalise)
              | "backbone" -> Some(box saved.Backbone)
              | "penalty" -> Some(optional (Config.penaltyName saved))
              | "distill" -> Some(box (match saved.Distillation with [] -> "none" | ts -> ts |> List.map (fun t -> Methods.DistillationKind.name t.Kind) |> String.concat ","))
              | _ -> None
          let same (a: string) (b: string) =
              a.Trim().ToLowerInvariant() = b.Trim().ToLowerInvariant()
              || (name = "data" && Path.GetFullPath a = Path.GetFullPath b)
              || (name = "image-size" && (Data.ImageOptions.tryParseSize a).IsSome && Data.ImageOptions.tryParseSize a = Data.ImageOptions.tryParseSize b)
          match savedValue with
          | Some v when same (text value) (text v) -> ()
          | Some v -> yield sprintf "--%s %s contradicts the saved configuration (%s)" name (text value) (text v)
          | None ->
              match Experiment.setOption name (text value) saved with
              | Some(Ok c) when c = saved -> ()
              | Some(Ok _) -> yield sprintf "--%s %s contradicts the saved configuration" name (text value)
              | Some(Error e) -> yield sprintf "--%s: %s" name e
              | None -> yield sprintf "--%s does not apply to the saved configuration" name ]

/// Reads a run folder's learner file and checks it against the options given with it, before any work.
let private readSaved (folder: string) (options: string list) : Learner.SavedLearner =
    let file = learnerFile folder
    let saved =
        try Learner.read file
        with LearnerFileError(path, reason) -> raise (LearnerProblem(sprintf "%s: %s (nothing was changed)" path reason))
    let given =
        try
            let parser = ArgumentParser.Create<SavedRunArgs>(programName = "continual", checkStructure = false)
            GivenOptions.ofResults ((parser.ParseCommandLine(Array.ofList options, raiseOnUsage = true)).GetAllResults())
        with e ->
            Learner.discard saved
            raise e
    match contradictions given saved.Config with
    | [] ->
        try check saved.Config
        with e ->
            Learner.discard saved
            raise e
        saved
    | problems ->
        Learner.discard saved
        raise (LearnerProblem(sprintf "%s: %s (nothing was changed)" file (String.concat "; " problems)))

/// Takes a saved run's folder for resume or learn: its lock first (refused while another process writes
/// the folder), then its learner file, read and checked.
let private holdSaved (folder: string) (options: string list) : OutputFolder.Hold * Learner.SavedLearner =
    let file = learnerFile folder
    let out = runFolderOf file
    if not (Directory.Exists out) then raise (LearnerProblem(sprintf "%s: no such learner file (nothing was changed)" file))
    let hold = OutputFolder.acquire out
    try hold, readSaved folder options
    with _ ->
        (hold :> IDisposable).Dispose()
        reraise ()

/// Restores a checked learner file with its benchmark and the tasks it added (which the learner owns).
let private restore (saved: Learner.SavedLearner) : Learner =
    // Frees `benchmark` when `f` fails; a learner file that cannot be used becomes a one-line problem.
    let using' (benchmark: Benchmark) (f: unit -> 'T) : 'T =
        try f ()
        with e ->
            Benchmarks.dispose benchmark
            match e with
            | LearnerFileError(path, reason) -> raise (LearnerProblem(sprintf "%s: %s (nothing was changed)" path reason))
            | _ -> reraise ()
    try
        let initial = Experiment.loadBenchmark saved.Config
        let benchmark = using' initial (fun () -> Learner.appendAddedTasks (Learner.loaderFor saved.Path) saved initial)
        if not (obj.ReferenceEquals(benchmark, initial)) then Benchmarks.dispose initial
        using' benchmark (fun () -> { Learner.restoreOn benchmark saved with OwnsBenchmark = true })
    finally
        Learner.discard saved

/// The next task a learner learns (0-based): the one it stopped inside, or the one after those it learned.
let private nextTask (learner: Learner) =
    match learner.Point.Position with
    | Some p -> p.Task
    | None -> learner.TasksLearned

let private checkpointEvery (value: int option) =
    match value with
    | Some n when n < 0 -> raise (UsageProblem [ sprintf "--checkpoint-every must be positive (got %d)" n ])
    | Some n -> n
    | None -> 0

let private resumeCommand (results: ParseResults<ResumeArgs>) =
    let folder = results.GetResult ResumeArgs.Run_Folder
    let every = checkpointEvery (results.TryGetResult ResumeArgs.Checkpoint_Every)
    checkTensorboard (results.TryGetResult ResumeArgs.Tensorboard)
    let hold, saved = holdSaved folder (results.GetResults ResumeArgs.Saved)
    use hold = hold
    let out = hold.Path
    let clock = Diagnostics.Stopwatch.StartNew()
    let learner = restore saved
    hold.MarkIncomplete(Config.hash learner.Config)
    let section = cliSection learner
    let next = nextTask learner
    let last = defaultArg section.LastTask (learner.TaskCount - 1)
    if next > last then
        // Killed after its last checkpoint but before its results: they are written again.
        AnsiConsole.MarkupLine("{0}: the run has learned tasks 1-{1} as it was asked; writing its results", Markup.Escape saved.Path, last + 1)
    else
        AnsiConsole.MarkupLine(
            "resuming [bold]{0}[/] on [bold]{1}[/] from {2}: task {3} of {4}, after step {5} of the run",
            Markup.Escape(Config.methodName learner.Config), Markup.Escape learner.Config.Data.Benchmark, Markup.Escape saved.Path,
            next + 1, learner.TaskCount, learner.Point.State.StepsTaken)
    learnInto hold section every (results.Contains ResumeArgs.Quiet) (results.TryGetResult ResumeArgs.Tensorboard) clock learner

/// `learn --from RUN --task PATH`: the learner with PATH's task added to its stream (checked before any
/// work), or a one-line reason.
let private withNewTask (path: string) (learner: Learner) : Learner =
    let fail reason =
        Learner.dispose learner
        raise (LearnerProblem(sprintf "%s (nothing was changed)" reason))
    if nextTask learner < learner.TaskCount then
        fail (sprintf "--task %s: the learner has learned %d of its %d tasks; learn the rest first (continual learn --from RUN_DIR, or resume)" path (nextTask learner) learner.TaskCount)
    let source =
        try Data.TaskLoaders.sourceOf (Learner.taskOptions learner) path
        with e ->
            Learner.dispose learner
            raise e
    let task =
        try Data.TaskLoaders.load source
        with e ->
            Learner.dispose learner
            raise e
    try
        try Learner.addTask source task learner
        with
        | Data.TaskDataError reason -> fail (sprintf "--task %s: %s" path reason)
        | :? InvalidOperationException as e -> fail (sprintf "--task %s: %s" path e.Message)
    finally Benchmarks.dispose task

let private learnCommand (results: ParseResults<LearnArgs>) =
    let folder = results.GetResult LearnArgs.From
    let every = checkpointEvery (results.TryGetResult LearnArgs.Checkpoint_Every)
    let range = results.TryGetResult LearnArgs.Tasks |> Option.map (fun t -> t, taskRange t)
    let newTask = results.TryGetResult LearnArgs.Task
    if newTask.IsSome && range.IsSome then
        raise (UsageProblem [ "--task adds a new task and --tasks learns tasks the learner already has: give one of them" ])
    checkTensorboard (results.TryGetResult LearnArgs.Tensorboard)
    let hold, saved = holdSaved folder (results.GetResults LearnArgs.Saved)
    use hold = hold
    let out = hold.Path
    let clock = Diagnostics.Stopwatch.StartNew()
    let learner = restore saved
    let learner =
        match newTask with
        | Some path ->
            let grown = withNewTask path learner
            AnsiConsole.MarkupLine(
                "added task {0} from {1}: {2}",
                grown.TaskCount, Markup.Escape path, Markup.Escape(String.concat ", " (grown.Benchmark.ClassNames |> List.skip (grown.Benchmark.NumClasses - (List.last grown.Benchmark.Tasks).Classes.Length))))
            hold.EnsureSpace(outputBytes grown)
            grown
        | None -> learner
    let next = nextTask learner
    let last =
        match range with
        | Some(text, (first, _)) when first <> next ->
            Learner.dispose learner
            let learned = if next = 0 then "has learned no task" else sprintf "has learned tasks 1-%d" next
            raise (LearnerProblem(sprintf "%s %s; the next task is %d, not %d (--tasks %s)" saved.Path learned (next + 1) (first + 1) text))
        | Some(text, (_, last)) when last >= learner.TaskCount ->
            Learner.dispose learner
            raise (LearnerProblem(sprintf "--tasks %s: %s has %d tasks" text learner.Benchmark.Name learner.TaskCount))
        | Some(_, (_, last)) -> last
        | None -> learner.TaskCount - 1
    if next > last then
        Learner.dispose learner
        AnsiConsole.MarkupLine("{0}: every task of {1} is learned; nothing to learn", Markup.Escape saved.Path, Markup.Escape learner.Benchmark.Name)
        0
    else
        AnsiConsole.MarkupLine(
            "[bold]{0}[/] learns tasks {1}-{2} of {3} from {4}",
            Markup.Escape(Config.methodName learner.Config), next + 1, last + 1, learner.TaskCount, Markup.Escape saved.Path)
        hold.MarkIncomplete(Config.hash learner.Config)
        learnInto hold { cliSection learner with LastTask = Some last } every (results.Contains LearnArgs.Quiet) (results.TryGetResult LearnArgs.Tensorboard) clock learner

/// `bench --distill all`: one run of plain SGD, of the strategy, and of the strategy plus each
/// distillation term, with the training cost per step of each.
let private distillCosts (args: GivenOptions) =
    let args = GivenOptions.without "distill" args
    let baseConfig = configOf args None None
    let sgdConfig = configOf args (Some "sgd") None
    let baseName = Config.methodName baseConfig
    let configs =
        ("sgd", sgdConfig) :: (baseName, baseConfig)
        :: [ for (kind, name) in Continual.Methods.DistillationKind.all do
               if not (name = "relation" && Config.bufferSize baseConfig = 0 || name = "relation" && baseName = "icarl") then
                   yield sprintf "%s + %s" baseName name, Experiment.withDistillation kind baseConfig ]
    configs |> List.iter (snd >> check)
    let table = Table(Title = TableTitle(sprintf "training cost per step on %s (one run each, batch %d)" baseConfig.Data.Benchmark baseConfig.Run.BatchSize))
    for c in [ "run"; "steps"; "train s"; "ms/step"; "x sgd"; "ms/step over " + baseName; "class-il" ] do
        table.AddColumn(c) |> ignore
    let mutable sgdMs, baseMs = nan, nan
    let costs = ResizeArray()
    for (label, config) in configs do
        AnsiConsole.MarkupLine("{0} ...", Markup.Escape label)
        let result = runOnce config true ignore
        let o = result.Outcome
        let ms = 1000.0 * o.TrainSeconds / float (max 1L o.Steps)
        if label = "sgd" then sgdMs <- ms
        elif Double.IsNaN baseMs then baseMs <- ms
        table.AddRow(
            label, string o.Steps, sprintf "%.2f" o.TrainSeconds, sprintf "%.3f" ms, sprintf "%.2f" (ms / sgdMs),
            (if label = "sgd" || label = baseName then "-" else sprintf "%+.3f" (ms - baseMs)),
            sprintf "%.2f" (Metrics.averageAccuracy o.ClassIl)) |> ignore
        costs.Add((label, o.Steps, o.TrainSeconds, ms))
        Experiment.release result
    AnsiConsole.Write table
    match GivenOptions.tryGet<string> "out" args with
    | Some out ->
        let json =
            Json.toBytes (fun w ->
                w.WriteStartArray()
                for (label, steps, trainSeconds, ms) in costs do
                    w.WriteStartObject()
                    w.WriteString("run", label)
                    w.WriteNumber("steps", steps)
                    w.WriteNumber("trainSeconds", Json.fixedPoint 3 trainSeconds)
                    w.WriteNumber("msPerStep", Json.fixedPoint 4 ms)
                    w.WriteEndObject()
                w.WriteEndArray())
        Files.writeAtomically (Path.Combine(out, "distill-costs.json")) json
    | None -> ()
    0

/// One timed run of `bench`: its result, the seconds of its phases and the bare loop's figures beside it.
type private BenchRow =
    { Result: ExperimentResult
      DataSeconds: float
      LoadSeconds: float
      CheckpointMiB: float
      PeakRssMiB: float
      BareLoop: BareLoop.Figures option }

/// `bench`: whole runs with a checkpoint after every task and (unless --no-onnx) the ONNX export and
/// verification, each with the bare loop (bench/BareLoop) run after it on the same work where it has a
/// counterpart; the phases of each run, the peak RSS, and the ratio of training times.
let private benchCommand (results: ParseResults<BenchArgs>) =
    // From process start to here: runtime start-up, native library loading so far, argument parsing.
    let processStart = Diagnostics.Process.GetCurrentProcess().StartTime
    let startUpSeconds = (DateTime.Now - processStart).TotalSeconds
    let args = GivenOptions.ofResults (results.GetAllResults())
    if GivenOptions.tryGet<string> "distill" args |> Option.exists (fun d -> d.Trim().ToLowerInvariant() = "all") then distillCosts args else
    // The fixed cost of the first run: from process start (runtime, native libraries, data, model,
    // method set-up) to the moment its first training step begins.
    let mutable firstStepSeconds = None
    let config = configOf args None None
    refuseInapplicable args config
    check config
    let repeat = GivenOptions.get "repeat" 1 args
    if repeat <= 0 then raise (UsageProblem [ sprintf "--repeat must be positive (got %d)" repeat ])
    GivenOptions.tryGet<string> "out" args |> Option.iter checkOut
    let onnx = not (GivenOptions.contains "no-onnx" args)
    // The bare loop, or the one line that says why there is no ratio.
    let bareLoop =
        match BareLoop.argumentsFor config with
        | Error why -> Error why
        | Ok arguments ->
            match BareLoop.locate (GivenOptions.tryGet<string> "bare-loop" args) with
            | Some program -> Ok(program, arguments)
            | None ->
                match GivenOptions.tryGet<string> "bare-loop" args with
                | Some given -> Error(sprintf "the bare loop is not at %s" given)
                | None -> Error "the bare loop is not built (dotnet build bench/BareLoop -c Release)"
    match bareLoop with
    | Error why -> AnsiConsole.MarkupLine("bare loop: {0}; no ratio", Markup.Escape why)
    | Ok _ -> ()
    let table = Table(Title = TableTitle(sprintf "%s on %s, buffer %d" (Config.methodName config) config.Data.Benchmark (Config.bufferSize config)))
    for c in [ "run"; "wall s"; "data s"; "train s"; "eval s"; "onnx s"; "checkpoint s"; "other s"; "load s"; "file MiB"; "steps"; "steps/s"; "peak RSS MiB"; "bare train s"; "train / bare"; "class-il"; "task-il" ] do
        table.AddColumn(c) |> ignore
    // Checkpoints after every task, as `run` writes them, into a scratch folder (or --out).
    let folder = match GivenOptions.tryGet<string> "out" args with Some out -> out | None -> Path.Combine(Path.GetTempPath(), "continual-bench-" + Guid.NewGuid().ToString "N")
    let file = Path.Combine(folder, Learner.FileName)
    let rows =
        try
            [ for r in 1 .. repeat ->
                let clock = Diagnostics.Stopwatch.StartNew()
                let benchmark = Experiment.loadBenchmark config
                let dataSeconds = clock.Elapsed.TotalSeconds
                let learner = { Learner.createOn benchmark config with OwnsBenchmark = true }
                let checkpoint _ point = Learner.saveAt file point learner
                let exporter = if onnx then Some(Onnx.RunExporter(Onnx.ExportSettings.forRun (OnnxCommands.runIdentity config) folder, [])) else None
                let finished =
                    try
                        Report.withProgress true (fun onEvent ->
                            let onEvent event =
                                match event with
                                | TaskStarted _ when firstStepSeconds.IsNone -> firstStepSeconds <- Some (DateTime.Now - processStart).TotalSeconds
                                | _ -> ()
                                onEvent event
                            Learner.learnUntil
                                { RunHooks.none with OnEvent = OnnxCommands.observing exporter onEvent; Checkpoint = checkpoint; AfterTask = OnnxCommands.afterTask exporter }
                                CancellationToken.None None learner)
                    finally exporter |> Option.iter (fun e -> e.Finish())
                let result = Learner.result clock.Elapsed.TotalSeconds finished
                // Loading the last checkpoint on the loaded data: what `resume` and `learn` pay besides the data.
                let loadClock = Diagnostics.Stopwatch.StartNew()
                let loaded = Learner.loadOn finished.Benchmark file
                let loadSeconds = loadClock.Elapsed.TotalSeconds
                Training.dispose loaded.Point.State
                Learner.dispose finished
                let peak = BareLoop.peakRssMiB ()
                let bare = match bareLoop with Ok(program, arguments) -> Some(BareLoop.run program arguments) | Error _ -> None
                { Result = result; DataSeconds = dataSeconds; LoadSeconds = loadSeconds
                  CheckpointMiB = float (FileInfo(file).Length) / 1048576.0; PeakRssMiB = peak; BareLoop = bare } ]
        finally
            if not (GivenOptions.contains "out" args) then (try Directory.Delete(folder, true) with _ -> ())
    let otherSeconds (row: BenchRow) =
        let o = row.Result.Outcome
        max 0.0 (row.Result.WallSeconds - row.DataSeconds - o.TrainSeconds - o.EvalSeconds - o.HookSeconds - o.CheckpointSeconds)
    rows |> List.iteri (fun i row ->
        let o = row.Result.Outcome
        table.AddRow(
            string (i + 1), sprintf "%.2f" row.Result.WallSeconds, sprintf "%.3f" row.DataSeconds, sprintf "%.2f" o.TrainSeconds,
            sprintf "%.2f" o.EvalSeconds, sprintf "%.2f" o.HookSeconds, sprintf "%.3f" o.CheckpointSeconds, sprintf "%.2f" (otherSeconds row),
            sprintf "%.3f" row.LoadSeconds, sprintf "%.1f" row.CheckpointMiB, string o.Steps, sprintf "%.0f" (float o.Steps / o.TrainSeconds),
            sprintf "%.0f" row.PeakRssMiB,
            (match row.BareLoop with Some b -> sprintf "%.2f" b.TrainSeconds | None -> "-"),
            (match row.BareLoop with Some b -> sprintf "%.2f" (o.TrainSeconds / b.TrainSeconds) | None -> "-"),
            sprintf "%.2f" (Metrics.averageAccuracy o.ClassIl), sprintf "%.2f" (Metrics.averageAccuracy o.TaskIl)) |> ignore)
    AnsiConsole.Write table
    let peak = BareLoop.peakRssMiB ()
    AnsiConsole.MarkupLine("start-up {0:F2} s (process start to the bench command, once per process); peak RSS {1:F0} MiB", startUpSeconds, peak)
    firstStepSeconds |> Option.iter (fun s -> AnsiConsole.MarkupLine("fixed cost {0:F2} s (process start to the first training step: start-up, data, model and method set-up)", s))
    for (i, row) in List.indexed rows do
        match row.BareLoop with
        | Some b ->
            AnsiConsole.MarkupLine(
                "run {0}: training {1:F2} s, bare loop {2:F2} s ({3} steps): ratio {4:F2}; wall with start-up {5:F2} s, bare loop's {6:F2} s: {7:F2}",
                i + 1, row.Result.Outcome.TrainSeconds, b.TrainSeconds, b.Steps, row.Result.Outcome.TrainSeconds / b.TrainSeconds,
                startUpSeconds + row.Result.WallSeconds, b.WallSeconds, (startUpSeconds + row.Result.WallSeconds) / b.WallSeconds)
        | None -> ()
    match GivenOptions.tryGet<string> "out" args with
    | Some out ->
        let json =
            Json.toBytes (fun w ->
                w.WriteStartObject()
                w.WriteString("strategy", Config.methodName config)
                w.WriteString("benchmark", config.Data.Benchmark)
                w.WriteNumber("buffer", Config.bufferSize config)
                w.WriteNumber("startUpSeconds", Json.fixedPoint 3 startUpSeconds)
                firstStepSeconds |> Option.iter (fun s -> w.WriteNumber("firstStepSeconds", Json.fixedPoint 3 s))
                w.WriteNumber("peakRssMiB", Json.fixedPoint 0 peak)
                match bareLoop with
                | Ok(program, _) -> w.WriteString("bareLoop", program)
                | Error why -> w.WriteString("bareLoopSkipped", why)
                w.WriteStartArray "runs"
                for row in rows do
                    let r = row.Result
                    w.WriteStartObject()
                    w.WriteNumber("wallSeconds", Json.fixedPoint 3 r.WallSeconds)
                    w.WriteNumber("trainSeconds", Json.fixedPoint 3 r.Outcome.TrainSeconds)
                    w.WriteNumber("evalSeconds", Json.fixedPoint 3 r.Outcome.EvalSeconds)
                    w.WriteNumber("checkpointSeconds", Json.fixedPoint 3 r.Outcome.CheckpointSeconds)
                    w.WriteNumber("checkpointShareOfWall", Json.fixedPoint 4 (r.Outcome.CheckpointSeconds / r.WallSeconds))
                    w.WriteNumber("checkpointLoadSeconds", Json.fixedPoint 3 row.LoadSeconds)
                    w.WriteNumber("checkpointMiB", Json.fixedPoint 2 row.CheckpointMiB)
                    w.WriteNumber("steps", r.Outcome.Steps)
                    w.WriteNumber("peakRssMiB", Json.fixedPoint 0 row.PeakRssMiB)
                    // The phases: start-up once per process (the first run), then this run's own.
                    w.WriteStartObject "phases"
                    w.WriteNumber("startUp", Json.fixedPoint 3 (if obj.ReferenceEquals(row, List.head rows) then startUpSeconds else 0.0))
                    w.WriteNumber("data", Json.fixedPoint 3 row.DataSeconds)
                    w.WriteNumber("train", Json.fixedPoint 3 r.Outcome.TrainSeconds)
                    w.WriteNumber("evaluation", Json.fixedPoint 3 r.Outcome.EvalSeconds)
                    w.WriteNumber("onnx", Json.fixedPoint 3 r.Outcome.HookSeconds)
                    w.WriteNumber("checkpoint", Json.fixedPoint 3 r.Outcome.CheckpointSeconds)
                    w.WriteNumber("other", Json.fixedPoint 3 (otherSeconds row))
                    w.WriteEndObject()
                    match row.BareLoop with
                    | Some b ->
                        w.WriteStartObject "bareLoop"
                        w.WriteNumber("steps", b.Steps)
                        w.WriteNumber("trainSeconds", Json.fixedPoint 3 b.TrainSeconds)
                        w.WriteNumber("wallSeconds", Json.fixedPoint 3 b.WallSeconds)
                        w.WriteNumber("peakRssMiB", Json.fixedPoint 0 b.PeakRssMiB)
                        w.WriteEndObject()
                        w.WriteNumber("ratio", Json.fixedPoint 3 (r.Outcome.TrainSeconds / b.TrainSeconds))
                        w.WriteNumber("wallRatio", Json.fixedPoint 3 ((startUpSeconds + r.WallSeconds) / b.WallSeconds))
                    | None -> ()
                    w.WriteEndObject()
                w.WriteEndArray()
                w.WriteEndObject())
        Files.writeAtomicallyWith (Path.Combine(out, "bench.json")) (fun stream -> stream.Write(json, 0, json.Length))
    | None -> ()
    0

/// A sweep point's options checked as `run` checks them, before any point runs (Sweeps.expand).
let private checkPoint (given: GivenOptions) : Result<Config, string list> =
    try
        let config = configOf given None None
        check config
        Ok config
    with
    | UsageProblem errors -> Error errors
    | InvalidConfiguration errors -> Error(errors |> List.map describe)
    | DataFileError(path, reason) -> Error [ sprintf "%s: %s" path reason ]

let private compareCommand (results: ParseResults<CompareArgs>) =
  match results.TryGetResult CompareArgs.From with
  | Some folder ->
    match results.GetAllResults() |> List.filter (function CompareArgs.From _ | CompareArgs.Seeds _ | CompareArgs.Quiet -> false | _ -> true) with
    | [] -> Sweeps.compareFrom folder (results.TryGetResult CompareArgs.Seeds |> Option.map (Sweeps.parseSeeds "seeds"))
    | others ->
        let names = others |> List.map (fun r -> "--" + Help.optionName ((fst (Microsoft.FSharp.Reflection.FSharpValue.GetUnionFields(r, typeof<CompareArgs>))).Name))
        raise (UsageProblem [ sprintf "%s: compare --from reads finished runs and takes only --seeds" (String.concat ", " names) ])
  | None ->
    let args = GivenOptions.ofResults (results.GetAllResults())
    let split (s: string) = s.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> List.ofArray
    let strategies = split (GivenOptions.get "strategies" "sgd,joint,er,der,derpp" args)
    let seeds =
        split (GivenOptions.get "seeds" "0,1,2" args)
        |> List.map (fun s -> match Int64.TryParse s with | true, v -> v | _ -> raise (UsageProblem [ sprintf "--seeds: '%s' is not an integer" s ]))
    if strategies.IsEmpty then raise (UsageProblem [ "--strategies: no strategy given (e.g. --strategies sgd,derpp)" ])
    if seeds.IsEmpty then raise (UsageProblem [ "--seeds: no seed given (e.g. --seeds 0,1,2)" ])
    let configs = [ for s in strategies -> s, [ for seed in seeds -> configOf args (Some s) (Some seed) ] ]
    configs |> List.iter (snd >> List.iter check)
    let out = GivenOptions.get "out" "runs/compare" args
    checkOut out
    checkTensorboard (GivenOptions.tryGet "tensorboard" args)
    use hold = OutputFolder.acquireFresh out (GivenOptions.contains "overwrite" args)
    // Marked incomplete until compare.json is written, so that a stopped comparison's run folders are
    // not taken for a finished comparison's, nor left beside the next one's (the marker records the
    // first run's configuration).
    hold.MarkIncomplete(Config.hash (snd configs.Head).Head)
    let written = ref false
    try
        let label (runs: Config list) =
            let head = runs.Head
            match Config.penaltyName head with Some p -> Config.methodName head + "+" + p | None -> Config.methodName head
        let rows =
            [ for (_, runs) in configs ->
                let results =
                    [ for config in runs ->
                        AnsiConsole.MarkupLine("{0} seed {1} ...", Markup.Escape(label runs), config.Run.Seed)
                        let result =
                            runOnceLogged config true ignore
                                (GivenOptions.tryGet<string> "tensorboard" args |> Option.map (fun tb -> Path.Combine(tb, Path.GetFileName(defaultOut config))))
                        Results.write (Path.Combine(out, Path.GetFileName(defaultOut config))) result ignore
                        written.Value <- true
                        Faults.tick "compare-run"
                        result ]
                { Label = label runs
                  Strategy = label runs
                  Context = ""
                  Buffer = Config.bufferSize runs.Head
                  Seeds = seeds
                  ClassIl = results |> List.map (fun r -> Metrics.averageAccuracy r.Outcome.ClassIl)
                  TaskIl = results |> List.map (fun r -> Metrics.averageAccuracy r.Outcome.TaskIl)
                  WallSeconds = results |> List.averageBy (fun r -> r.WallSeconds)
                  Runs = [ for config in runs -> Path.Combine(out, Path.GetFileName(defaultOut config), "results.json") ] } : CompareTable.Row ]
        CompareTable.print rows
        CompareTable.printMetrics rows
        let summary = Path.Combine(out, "compare.json")
        Results.writeAtomically summary (CompareTable.json rows ignore)
        hold.Publish()
        AnsiConsole.MarkupLine("summary: {0}", Markup.Escape summary)
        0
    with _ when not written.Value ->
        // Nothing of the comparison was written: the folder is as it was (or gone, if it was new).
        hold.Abandon()
        reraise ()

/// The options given more than once on a command line (Argu would silently keep the last), each once.
let private repeatedOptions (argv: string[]) : string list =
    argv
    |> Array.takeWhile (fun a -> a <> "--")
    |> Array.filter (fun a -> a.Length > 2 && a.StartsWith "--" && Char.IsLetter a.[2])
    |> Array.map (fun a -> match a.IndexOf '=' with -1 -> a | i -> a.Substring(0, i))
    |> Array.countBy id
    |> Array.filter (fun (_, n) -> n > 1)
    |> Array.map fst
    |> List.ofArray

/// An environment error in one line: the cause, with the path where .NET's message names one. libtorch's
/// messages carry its C++ trace after the first line; only the first line is kept.
let private describeFailure (e: exn) : string =
    let firstLine (text: string) =
        text.Split([| '\n'; '\r' |], StringSplitOptions.RemoveEmptyEntries) |> Array.tryHead |> Option.defaultValue "" |> fun l -> l.Trim()
    match e with
    | :? UnauthorizedAccessException -> sprintf "permission denied: %s" (firstLine e.Message)
    | :? DirectoryNotFoundException
    | :? FileNotFoundException -> sprintf "not found: %s" (firstLine e.Message)
    | :? IOException -> sprintf "input/output error: %s" (firstLine e.Message)
    | :? OutOfMemoryException -> sprintf "out of memory: %s" (firstLine e.Message)
    | :? Runtime.InteropServices.ExternalException ->
        let line = firstLine e.Message
        if line.Contains "alloc" || line.Contains "memory" then sprintf "out of memory in libtorch: %s" line
        else sprintf "libtorch failed: %s" line
    | _ -> sprintf "%s (%s)" (firstLine e.Message) (e.GetType().Name)

/// Runs the tool on command-line arguments and returns its exit code (never exits the process). Every
/// error ends as one line "error: ..." on stderr: exit 2 for bad usage, 1 for a failure of the work or
/// the environment; `--verbose` (anywhere on the line) adds the .NET stack trace.
let run (argv: string[]) : int =
    // Tables wrap at 80 columns when output goes to a file or a pipe; results read better wider.
    if Console.IsOutputRedirected then AnsiConsole.Profile.Width <- 160
    let verbose = argv |> Array.contains "--verbose"
    let argv = argv |> Array.filter (fun a -> a <> "--verbose")
    let trace (e: exn) = if verbose then eprintfn "%s" (e.ToString())
    // Argu checks the argument types' structure on every start (~0.35 s); the check runs in the tests
    // instead (CliTests, "the argument types are well formed").
    let parser = ArgumentParser.Create<Command>(programName = "continual", checkStructure = false)
    try
        match repeatedOptions argv with
        | [] -> ()
        | repeated -> raise (UsageProblem [ for o in repeated -> sprintf "%s is given more than once (give each option once)" o ])
        if argv.Length >= 1 && argv.[0] = "--version" then
            printfn "continual %s" (typeof<Config>.Assembly.GetName().Version.ToString())
            0
        else
        let parsed = parser.ParseCommandLine(argv, raiseOnUsage = true)
        match parsed.GetSubCommand() with
        | Run args -> (match Sweeps.pointArguments args with Some point -> runCommand point | None -> 0)
        | Resume args -> resumeCommand args
        | Learn args -> learnCommand args
        | Bench args -> benchCommand args
        | Compare args -> compareCommand args
        | Sweep args -> Sweeps.command checkPoint args
        | Bench_Penalties results ->
            let args = GivenOptions.ofResults (results.GetAllResults())
            let config = configOf args (Some "sgd") None
            check config
            GivenOptions.tryGet<string> "out" args |> Option.iter checkOut
            BenchPenalties.run config (GivenOptions.tryGet "out" args)
        | Verify args -> OnnxCommands.verifyCommand args
        | Export args -> OnnxCommands.exportCommand args
        | Plot args -> ResultCommands.plotCommand args
        | Report args -> ResultCommands.reportCommand args
        | Version
        | Verbose ->
            printfn "continual %s" (typeof<Config>.Assembly.GetName().Version.ToString())
            0
    with
    | UsageProblem errors ->
        for e in errors do Report.error e
        UsageError
    | SweepSpec.SweepUsageError message ->
        Report.error message
        UsageError
    | SweepSpec.SweepFailure message as e ->
        Report.error message
        trace e
        1
    | :? ArguParseException as e when e.ErrorCode = ErrorCode.HelpText ->
        printfn "%s" e.Message
        0
    | :? ArguParseException as e ->
        // Argu's message is the problem on its first line, then the usage: one line, and where to read more.
        let first = e.Message.Split([| '\n'; '\r' |], StringSplitOptions.RemoveEmptyEntries) |> Array.tryHead |> Option.defaultValue "bad usage"
        let problem = if first.StartsWith("ERROR: ", StringComparison.OrdinalIgnoreCase) then first.Substring 7 else first
        Report.error (sprintf "%s (--help lists the options)" (problem.Trim()))
        trace e
        UsageError
    | InvalidConfiguration errors ->
        for e in errors do Report.error (describe e)
        UsageError
    | DataFileError(path, reason) as e ->
        Report.error (sprintf "%s: %s (nothing was written)" path reason)
        trace e
        1
    | TrainingDiverged _ as e ->
        Report.error (e.Message + " (nothing was written)")
        trace e
        1
    | OnnxCommands.OnnxFailure message as e ->
        Report.error message
        trace e
        1
    | LearnerProblem message as e ->
        Report.error message
        trace e
        1
    | OutputFolder.OutputFolderError _ as e ->
        Report.error e.Message
        trace e
        1
    | EnvironmentProblem message as e ->
        Report.error message
        trace e
        1
    | ResultFiles.ResultFileError _ as e ->
        Report.error e.Message
        trace e
        1
    | Stopped code -> code
    | e ->
        Report.error (describeFailure e + (if verbose then "" else " (--verbose shows the stack trace)"))
        trace e
        1

[<EntryPoint>]
let main argv =
    // CONTINUAL_EARLY_LOAD=0 loads libtorch where the data are read instead, for comparison (docs/performance.md).
    Startup.askHugePageTensors argv
    if Environment.GetEnvironmentVariable "CONTINUAL_EARLY_LOAD" <> "0" then Startup.beginLoadingLibtorch argv
    Startup.finish (run argv)
