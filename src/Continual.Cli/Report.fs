/// Console output: progress bars and tables (Spectre.Console).
module Continual.Cli.Report

open System
open Continual
open Spectre.Console

let private f2 (v: float) = v.ToString("0.00", Globalization.CultureInfo.InvariantCulture)

let private optional (v: float option) = match v with Some x -> f2 x | None -> "-"

/// A table of an accuracy matrix: one row per training step, one column per task. A learner that added
/// tasks has shorter early rows (a task not yet in its stream shows "-").
let matrixTable (title: string) (m: float[][]) =
    let table = Table(Title = TableTitle(title))
    table.AddColumn(TableColumn("after task")) |> ignore
    let tasks = if m.Length = 0 then 0 else m |> Array.map Array.length |> Array.max
    for j in 0 .. tasks - 1 do
        table.AddColumn(TableColumn(sprintf "task %d" (j + 1)).RightAligned()) |> ignore
    table.AddColumn(TableColumn("mean").RightAligned()) |> ignore
    m |> Array.iteri (fun i row ->
        let label = if m.Length = 1 && tasks > 1 then "all (joint)" else string (i + 1)
        let missing = Array.create (tasks - row.Length) "-"
        table.AddRow(Array.concat [ [| label |]; row |> Array.map f2; missing; [| f2 (Array.average row) |] ]) |> ignore)
    table

/// The final figures of a run in both scenarios.
let summaryTable (result: ExperimentResult) =
    let o = result.Outcome
    let table = Table(Title = TableTitle("final figures (percent)"))
    for c in [ "scenario"; "average accuracy"; "forgetting"; "backward transfer"; "forward transfer"; "old tasks"; "new task" ] do
        table.AddColumn(c) |> ignore
    for (name, m, initial) in [ "Class-IL", o.ClassIl, o.InitialClassIl; "Task-IL", o.TaskIl, o.InitialTaskIl ] do
        let forward = if initial.Length = m.Length then Metrics.forwardTransfer m initial else None
        table.AddRow(
            name, f2 (Metrics.averageAccuracy m), optional (Metrics.forgetting m), optional (Metrics.backwardTransfer m),
            optional forward, optional (Metrics.oldTaskAccuracy m), f2 (Metrics.newTaskAccuracy m)) |> ignore
    match Array.tryLast o.Footprint with
    | Some f when Continual.Methods.Footprint.total f > 0L ->
        let parts = Continual.Methods.Footprint.kinds f |> List.filter (fun (_, v) -> v > 0L) |> List.map (fun (k, v) -> sprintf "%s %d" k v)
        table.Caption <- TableTitle(sprintf "state kept after the last task: %d bytes (%s)" (Continual.Methods.Footprint.total f) (String.concat ", " parts))
    | _ -> ()
    table

/// Prints a run's matrices and final figures.
let printResult (result: ExperimentResult) =
    AnsiConsole.Write(matrixTable "Class-IL accuracy (percent)" result.Outcome.ClassIl)
    AnsiConsole.Write(matrixTable "Task-IL accuracy (percent)" result.Outcome.TaskIl)
    AnsiConsole.Write(summaryTable result)

/// Runs `work` with one progress bar per task, fed by the training events it raises (the number of
/// tasks comes from the run's first event).
let withProgress (quiet: bool) (work: (TrainingEvent -> unit) -> 'T) : 'T =
    if quiet then
        work ignore
    else
        let progress =
            AnsiConsole.Progress()
                .AutoClear(false)
                .Columns([| TaskDescriptionColumn() :> ProgressColumn
                            ProgressBarColumn()
                            PercentageColumn()
                            ElapsedTimeColumn()
                            RemainingTimeColumn() |])
        progress.Start(fun ctx ->
            let bars = Collections.Generic.Dictionary<int, ProgressTask>()
            let mutable taskCount = 1
            // JOINT trains once on everything: its figures cover every task.
            let seenOnly task (row: float[]) = if taskCount = 1 then row else row.[.. task]
            let onEvent event =
                match event with
                | RunStarted tasks -> taskCount <- tasks
                | TaskStarted(task, steps) ->
                    let label = if taskCount = 1 then "joint" else sprintf "task %d/%d" (task + 1) taskCount
                    let bar = ctx.AddTask(label, true, float steps)
                    bars.[task] <- bar
                | StepsCompleted(task, completed, _, loss) ->
                    let bar = bars.[task]
                    bar.Value <- float completed
                    bar.Description <- sprintf "%s  loss %.3f" (bar.Description.Split("  ").[0]) loss
                | TaskFinished(task, accuracies, _) ->
                    let bar = bars.[task]
                    bar.Description <-
                        sprintf "%s  class-il %s  task-il %s" (bar.Description.Split("  ").[0])
                            (f2 (Array.average (seenOnly task accuracies.ClassIl)))
                            (f2 (Array.average (seenOnly task accuracies.TaskIl)))
                    bar.StopTask()
                | PhaseStarted(task, phase) ->
                    match bars.TryGetValue task with
                    | true, bar -> bar.Description <- sprintf "%s  %s" (bar.Description.Split("  ").[0]) phase
                    | _ -> ()
            work onEvent)

/// Where every error line also goes, besides stderr: a sweep's point records it in its folder
/// (Sweeps.fs); nowhere by default.
let errorRecorder : (string -> unit) ref = ref ignore

/// Prints an error as one line "error: ..." on stderr ("error:" in red when stderr is a terminal);
/// line breaks in the message are folded so that the error stays one line.
let error (message: string) =
    let oneLine = message.ReplaceLineEndings(" ").Trim()
    errorRecorder.Value oneLine
    Console.Out.Flush()
    if Console.IsErrorRedirected || not (isNull (Environment.GetEnvironmentVariable "NO_COLOR")) then
        eprintfn "error: %s" oneLine
    else
        eprintfn "\u001b[31merror:\u001b[0m %s" oneLine
