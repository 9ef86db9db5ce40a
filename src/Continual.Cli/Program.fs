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
                    TestPerClass = GivenOptions.tryGet "test-per-class" args }
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

/// Checks a configuration and that its data files are there, before any work starts.
let private check (config: Config) =
    match Experiment.validate config with
    | [] ->
        try
            if config.Data.Benchmark = "split-cifar10" then
                for name in Cifar.fileNames do
                    Cifar.findFile config.Data.Folder name |> ignore
            else
                for name in Benchmarks.idxFileNames do
                    Benchmarks.findIdxFile config.Data.Folder name |> ignore
        with DataFileError(path, reason) ->
            let hint =
                if config.Data.Benchmark = "split-cifar10" then "point --data at a folder with CIFAR-10's binary batches (data_batch_1.bin ... test_batch.bin)"
                else "point --data at a folder with the four IDX files; on Debian, apt-get install dataset-fashion-mnist"
            raise (UsageProblem [ sprintf "%s: %s (%s)" path reason hint ])
    | errors -> raise (UsageProblem (errors |> List.map describe))

let private runOnce (config: Config) (quiet: bool) (afterTask: AfterTask -> unit) =
    Report.withProgress quiet (fun onEvent ->
        Experiment.run config { RunHooks.none with OnEvent = onEvent; AfterTask = afterTask } CancellationToken.None)

let private runCommand (results: ParseResults<RunArgs>) =
    let args = GivenOptions.ofResults (results.GetAllResults())
    let config = configOf args None None
    refuseInapplicable args config
    check config
    let out = GivenOptions.get "out" (defaultOut config) args
    AnsiConsole.MarkupLine(
        "[bold]{0}[/] on [bold]{1}[/]  buffer {2}  lr {3}  seed {4}  ->  {5}",
        Markup.Escape(Config.methodName config), Markup.Escape config.Data.Benchmark, Config.bufferSize config, config.Run.LearningRate, config.Run.Seed, Markup.Escape out)
    let onnx = OnnxCommands.exporter (GivenOptions.contains "no-onnx" args) config out
    let result = runOnce config (GivenOptions.contains "quiet" args) (OnnxCommands.afterTask onnx)
    Report.printResult result
    OnnxCommands.printSummary onnx result
    Results.write out result (OnnxCommands.resultsSection onnx result)
    AnsiConsole.MarkupLine("wrote {0} and {1} ({2:0.0} s)", Markup.Escape(Path.Combine(out, "results.json")), Markup.Escape(Path.Combine(out, "results.csv")), result.WallSeconds)
    0

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

let private benchCommand (results: ParseResults<BenchArgs>) =
    let args = GivenOptions.ofResults (results.GetAllResults())
    if GivenOptions.tryGet<string> "distill" args |> Option.exists (fun d -> d.Trim().ToLowerInvariant() = "all") then distillCosts args else
    let config = configOf args None None
    refuseInapplicable args config
    check config
    let repeat = GivenOptions.get "repeat" 1 args
    if repeat <= 0 then raise (UsageProblem [ sprintf "--repeat must be positive (got %d)" repeat ])
    let table = Table(Title = TableTitle(sprintf "%s on %s, buffer %d" (Config.methodName config) config.Data.Benchmark (Config.bufferSize config)))
    for c in [ "run"; "wall s (load+train+eval)"; "train s"; "eval s"; "steps"; "steps/s"; "peak memory MiB"; "class-il"; "task-il" ] do
        table.AddColumn(c) |> ignore
    let rows =
        [ for r in 1 .. repeat ->
            let result = runOnce config true ignore
            let o = result.Outcome
            use me = Diagnostics.Process.GetCurrentProcess()
            let peak = float me.PeakWorkingSet64 / 1048576.0
            let row = [ string r
                        sprintf "%.2f" result.WallSeconds
                        sprintf "%.2f" o.TrainSeconds
                        sprintf "%.2f" o.EvalSeconds
                        string o.Steps
                        sprintf "%.0f" (float o.Steps / o.TrainSeconds)
                        sprintf "%.0f" peak
                        sprintf "%.2f" (Metrics.averageAccuracy o.ClassIl)
                        sprintf "%.2f" (Metrics.averageAccuracy o.TaskIl) ]
            table.AddRow(Array.ofList row) |> ignore
            result, peak ]
    AnsiConsole.Write table
    match GivenOptions.tryGet<string> "out" args with
    | Some out ->
        let json =
            Json.toBytes (fun w ->
                w.WriteStartArray()
                for (r, peak) in rows do
                    w.WriteStartObject()
                    w.WriteNumber("wallSeconds", Json.fixedPoint 3 r.WallSeconds)
                    w.WriteNumber("trainSeconds", Json.fixedPoint 3 r.Outcome.TrainSeconds)
                    w.WriteNumber("evalSeconds", Json.fixedPoint 3 r.Outcome.EvalSeconds)
                    w.WriteNumber("steps", r.Outcome.Steps)
                    w.WriteNumber("peakMemoryMiB", Json.fixedPoint 0 peak)
                    w.WriteEndObject()
                w.WriteEndArray())
        Files.writeAtomically (Path.Combine(out, "bench.json")) json
    | None -> ()
    0

/// One strategy's figures over the seeds of a comparison, in seed order.
type private CompareRow =
    { Label: string
      Buffer: int
      ClassIl: float list
      TaskIl: float list
      WallSeconds: float }

/// The comparison as JSON: per strategy, the per-seed figures, their means and spreads, and the paired
/// Task-IL gain over SGD where SGD was run.
let private compareJson (seeds: int64 list) (rows: CompareRow list) (gain: CompareRow -> (float * float) option) : byte[] =
    use stream = new MemoryStream()
    (use w = new Text.Json.Utf8JsonWriter(stream, Text.Json.JsonWriterOptions(Indented = true))
     w.WriteStartObject()
     w.WriteStartArray("seeds")
     for s in seeds do w.WriteNumberValue s
     w.WriteEndArray()
     w.WriteStartArray("strategies")
     for row in rows do
         w.WriteStartObject()
         w.WriteString("strategy", row.Label)
         w.WriteNumber("buffer", row.Buffer)
         for name, values in [ "classIl", row.ClassIl; "taskIl", row.TaskIl ] do
             let mean, spread = Metrics.meanAndSpread values
             w.WriteStartObject(name)
             w.WriteStartArray("perSeed")
             for v in values do w.WriteNumberValue v
             w.WriteEndArray()
             w.WriteNumber("mean", mean)
             w.WriteNumber("spread", spread)
             w.WriteEndObject()
         match gain row with
         | Some(g, se) ->
             w.WriteStartObject("taskIlOverSgd")
             w.WriteNumber("mean", g)
             w.WriteNumber("standardError", se)
             w.WriteEndObject()
         | None -> ()
         w.WriteNumber("wallSecondsPerRun", row.WallSeconds)
         w.WriteEndObject()
     w.WriteEndArray()
     w.WriteEndObject())
    stream.ToArray()

let private compareCommand (results: ParseResults<CompareArgs>) =
    let args = GivenOptions.ofResults (results.GetAllResults())
    let split (s: string) = s.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries) |> List.ofArray
    let strategies = split (GivenOptions.get "strategies" "sgd,joint,er,der,derpp" args)
    let seeds =
        split (GivenOptions.get "seeds" "0,1,2" args)
        |> List.map (fun s -> match Int64.TryParse s with | true, v -> v | _ -> raise (UsageProblem [ sprintf "--seeds: '%s' is not an integer" s ]))
    let configs = [ for s in strategies -> s, [ for seed in seeds -> configOf args (Some s) (Some seed) ] ]
    configs |> List.iter (snd >> List.iter check)
    let out = GivenOptions.get "out" "runs/compare" args
    let label (runs: Config list) =
        let head = runs.Head
        match Config.penaltyName head with Some p -> Config.methodName head + "+" + p | None -> Config.methodName head
    let rows =
        [ for (_, runs) in configs ->
            let results =
                [ for config in runs ->
                    AnsiConsole.MarkupLine("{0} seed {1} ...", Markup.Escape(label runs), config.Run.Seed)
                    let result = runOnce config true ignore
                    Results.write (Path.Combine(out, Path.GetFileName(defaultOut config))) result ignore
                    result ]
            { Label = label runs
              Buffer = Config.bufferSize runs.Head
              ClassIl = results |> List.map (fun r -> Metrics.averageAccuracy r.Outcome.ClassIl)
              TaskIl = results |> List.map (fun r -> Metrics.averageAccuracy r.Outcome.TaskIl)
              WallSeconds = results |> List.averageBy (fun r -> r.WallSeconds) } ]
    // Regularisers are judged by their Task-IL gain over SGD on the same seeds; pairing by seed removes
    // the swing both share.
    let baseline = rows |> List.tryFind (fun r -> r.Label = "sgd")
    let gain (row: CompareRow) =
        baseline |> Option.filter (fun b -> b.Label <> row.Label) |> Option.map (fun b -> Metrics.pairedDifference row.TaskIl b.TaskIl)
    let perSeed (values: float list) = String.Join(" / ", values |> List.map (sprintf "%.2f"))
    let table = Table(Title = TableTitle(sprintf "mean ± sample s.d. over seeds %s" (String.Join(", ", seeds))))
    for c in [ "strategy"; "buffer"; "Class-IL"; "Task-IL"; "Task-IL − SGD (± s.e.)"; "Class-IL per seed"; "Task-IL per seed"; "wall s per run" ] do
        table.AddColumn(c) |> ignore
    for row in rows do
        let (cm, cs), (tm, ts) = Metrics.meanAndSpread row.ClassIl, Metrics.meanAndSpread row.TaskIl
        table.AddRow(
            row.Label,
            string row.Buffer,
            sprintf "%.2f ± %.2f" cm cs,
            sprintf "%.2f ± %.2f" tm ts,
            (match gain row with Some(g, se) -> sprintf "%+.2f ± %.2f" g se | None -> "—"),
            perSeed row.ClassIl,
            perSeed row.TaskIl,
            sprintf "%.1f" row.WallSeconds) |> ignore
    AnsiConsole.Write table
    let summary = Path.Combine(out, "compare.json")
    Results.writeAtomically summary (compareJson seeds rows gain)
    AnsiConsole.MarkupLine("summary: {0}", Markup.Escape summary)
    0

/// Runs the tool on command-line arguments and returns its exit code (never exits the process).
let run (argv: string[]) : int =
    // Tables wrap at 80 columns when output goes to a file or a pipe; results read better wider.
    if Console.IsOutputRedirected then AnsiConsole.Profile.Width <- 160
    let parser = ArgumentParser.Create<Command>(programName = "continual")
    try
        let parsed = parser.ParseCommandLine(argv, raiseOnUsage = true)
        match parsed.GetSubCommand() with
        | Run args -> runCommand args
        | Bench args -> benchCommand args
        | Compare args -> compareCommand args
        | Bench_Penalties results ->
            let args = GivenOptions.ofResults (results.GetAllResults())
            let config = configOf args (Some "sgd") None
            check config
            BenchPenalties.run config (GivenOptions.tryGet "out" args)
        | Verify args -> OnnxCommands.verifyCommand args
        | Export args -> OnnxCommands.exportCommand args
        | Version ->
            printfn "continual %s" (typeof<Config>.Assembly.GetName().Version.ToString())
            0
    with
    | UsageProblem errors ->
        for e in errors do Report.error e
        UsageError
    | :? ArguParseException as e when e.ErrorCode = ErrorCode.HelpText ->
        printfn "%s" e.Message
        0
    | :? ArguParseException as e ->
        eprintfn "%s" e.Message
        UsageError
    | DataFileError(path, reason) ->
        Report.error (sprintf "%s: %s (nothing was written)" path reason)
        1
    | TrainingDiverged _ as e ->
        Report.error (e.Message + " (nothing was written)")
        1
    | OnnxCommands.OnnxFailure message ->
        Report.error message
        1

[<EntryPoint>]
let main argv = run argv
