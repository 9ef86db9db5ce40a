/// The ONNX side of the tool: export and verification after every task of `run`, `verify`, `export`.
module Continual.Cli.OnnxCommands

open System
open System.IO
open Argu
open Continual
open Continual.Cli.Arguments
open Continual.Data
open Continual.Onnx
open Continual.Methods
open Spectre.Console

let private f2 (v: float) = v.ToString("0.00", Globalization.CultureInfo.InvariantCulture)

/// The ONNX failures the tool reports as a failed check (exit code 1) with their message.
let (|OnnxFailure|_|) (e: exn) =
    match e with
    | VerificationFailed _
    | InvalidModelFile _
    | RepositoryError _
    | ExportError _
    | ModelLoadError _ -> Some e.Message
    | _ -> None

/// What the exporter records of a run (see LearnerExport.runIdentity).
let runIdentity (config: Config) : RunIdentity = LearnerExport.runIdentity config

/// The exporter of a run (export and verify after every task into the --out folder), None with --no-onnx.
let exporter (noOnnx: bool) (config: Config) (out: string) : RunExporter option =
    if noOnnx then None else Some(RunExporter(ExportSettings.forRun (runIdentity config) out))

/// A run's event handler that also hands the events to the exporter (its warm-up begins once training
/// is under way).
let observing (exporter: RunExporter option) (onEvent: TrainingEvent -> unit) : TrainingEvent -> unit =
    match exporter with
    | Some e -> fun event -> e.Observe event; onEvent event
    | None -> onEvent

/// The after-task hook of a run.
let afterTask (exporter: RunExporter option) : AfterTask -> unit =
    match exporter with
    | Some e -> e.AfterTask
    | None -> ignore

/// The "onnx" section of results.json (nothing with --no-onnx).
let resultsSection (exporter: RunExporter option) (result: ExperimentResult) : Text.Json.Utf8JsonWriter -> unit =
    match exporter with
    | Some e -> fun w -> e.WriteJson(w, result.Outcome.HookSeconds, result.WallSeconds)
    | None -> ignore

/// Prints the per-task verification figures and the time export and verification took.
let printSummary (exporter: RunExporter option) (result: ExperimentResult) =
    match exporter with
    | None -> ()
    | Some e ->
        let table = Table(Title = TableTitle("ONNX export, verified under ONNX Runtime (accuracy over the tasks seen)"))
        for c in [ "file"; "max |logit diff|"; "Class-IL torch / onnx"; "Task-IL torch / onnx"; "seconds" ] do
            table.AddColumn(c) |> ignore
        for r in e.Reports do
            // Over the tasks seen so far, as the progress bars show it (JOINT has seen them all).
            let seen = if e.Settings.Run.Joint then r.TestExamples.Length else min r.Task r.TestExamples.Length
            let percent (correct: int[]) (n: int[]) =
                100.0 * float (Array.sum correct.[.. seen - 1]) / float (max 1 (Array.sum n.[.. seen - 1]))
            table.AddRow(
                r.File,
                sprintf "%.2e" r.MaxAbsDifference,
                sprintf "%s / %s" (f2 (percent r.TorchClassIlCorrect r.TestExamples)) (f2 (percent r.OnnxClassIlCorrect r.TestExamples)),
                sprintf "%s / %s" (f2 (percent r.TorchTaskIlCorrect r.TestExamples)) (f2 (percent r.OnnxTaskIlCorrect r.TestExamples)),
                sprintf "%.3f" (r.ExportSeconds + r.VerifySeconds + r.WriteSeconds)) |> ignore
        AnsiConsole.Write table
        let provider = match e.Reports with r :: _ -> r.Provider | [] -> fst (Runtime.resolve e.Settings.Provider)
        match snd (Runtime.resolve e.Settings.Provider) with
        | Some note -> AnsiConsole.MarkupLine("ONNX Runtime provider: {0} [grey]({1})[/]", provider, Markup.Escape note)
        | None -> AnsiConsole.MarkupLine("ONNX Runtime provider: {0}", provider)
        let hook = result.Outcome.HookSeconds
        AnsiConsole.MarkupLine(
            "ONNX export and verification: {0:0.000} s, {1:0.0}% of the run's {2:0.0} s wall time",
            hook, 100.0 * hook / max 1e-9 result.WallSeconds, result.WallSeconds)

let private provider (name: string) =
    match name.Trim().ToLowerInvariant() with
    | "auto" -> Some Auto
    | "cpu" -> Some CpuOnly
    | "cuda" -> Some CudaOnly
    | _ -> None

/// `continual verify FILE.onnx --data DIR`: exit 0 when the recorded accuracy is reproduced exactly,
/// 1 when it is not or the file cannot be verified, 2 for bad usage.
let verifyCommand (args: ParseResults<VerifyArgs>) : int =
    let path = args.GetResult Model_File
    let data = args.GetResult(Test_Data, defaultValue = Benchmarks.defaultFashionMnistFolder)
    match provider (args.GetResult(Provider, defaultValue = "auto")) with
    | None ->
        Report.error (sprintf "unknown --provider '%s' (expected auto, cpu or cuda)" (args.GetResult Provider))
        2
    | Some preference ->
        // A model of a run that has not finished is checked all the same, with a word about its folder.
        let folder = Path.GetDirectoryName(Path.GetFullPath path)
        if RunFolder.isIncomplete folder then
            eprintfn "warning: %s holds a run that did not finish (continue it with `continual resume %s`); this model is checked on its own" folder folder
        let v = FileCheck.verifyFile preference path data
        let info = v.Info
        AnsiConsole.MarkupLine(
            "[bold]{0}[/]: {1} on {2} ({3}), after task {4} of {5}, configuration {6}",
            Markup.Escape path, Markup.Escape info.Strategy, Markup.Escape info.Benchmark, Markup.Escape info.Architecture,
            info.Task, info.TaskCount, Markup.Escape info.ConfigHash)
        AnsiConsole.MarkupLine(
            "ONNX Runtime provider: {0}{1}", v.Provider,
            (match v.ProviderNote with Some n -> Markup.Escape(" (" + n + ")") | None -> ""))
        let table = Table(Title = TableTitle("correct test predictions: recorded (TorchSharp) vs recomputed (ONNX Runtime)"))
        for c in [ "task"; "test images"; "Class-IL recorded"; "Class-IL onnx"; "Task-IL recorded"; "Task-IL onnx"; "" ] do
            table.AddColumn(c) |> ignore
        let recordedN = info.TestExamples
        for j in 0 .. max recordedN.Length v.TestExamples.Length - 1 do
            let at (a: int[]) = if j < a.Length then string a.[j] else "-"
            let same =
                j < recordedN.Length && j < v.TestExamples.Length
                && recordedN.[j] = v.TestExamples.[j]
                && info.ClassIlCorrect.[j] = v.OnnxClassIlCorrect.[j]
                && info.TaskIlCorrect.[j] = v.OnnxTaskIlCorrect.[j]
            let images = if j < recordedN.Length && j < v.TestExamples.Length && recordedN.[j] <> v.TestExamples.[j] then sprintf "%s (recorded %s)" (at v.TestExamples) (at recordedN) else at v.TestExamples
            table.AddRow(string (j + 1), images, at info.ClassIlCorrect, at v.OnnxClassIlCorrect, at info.TaskIlCorrect, at v.OnnxTaskIlCorrect, (if same then "[green]equal[/]" else "[red]differs[/]"))
            |> ignore
        AnsiConsole.Write table
        if v.Reproduced then
            // The figures shown are the ones recomputed under ONNX Runtime, not the file's own.
            let seen = v.TasksSeen
            let mean (a: float[]) = seen |> List.averageBy (fun j -> a.[j])
            AnsiConsole.MarkupLine(
                "[green]reproduced exactly[/]: Class-IL {0}%, Task-IL {1}% (mean over the {2} tasks seen)",
                f2 (mean v.OnnxClassIlAccuracy), f2 (mean v.OnnxTaskIlAccuracy), seen.Length)
            0
        else
            Report.error (sprintf "%s: the accuracy recomputed under ONNX Runtime differs from the recorded one (different test data in %s, or a different model)" path data)
            1

/// `continual export RUN_FOLDER --layout triton --to REPO [--name NAME]`.
let exportCommand (args: ParseResults<ExportArgs>) : int =
    let layout = args.GetResult(Repository_Layout).Trim().ToLowerInvariant()
    let name = args.TryGetResult Model_Name
    if layout <> "triton" then
        Report.error (sprintf "unknown --layout '%s' (expected triton)" layout)
        2
    elif (name |> Option.bind Repository.nameProblem).IsSome then
        // A usage error, found before anything is read or written.
        Report.error (sprintf "--name: %s (Triton's model-name rules)" (name |> Option.bind Repository.nameProblem).Value)
        2
    else
        let r = Repository.writeTriton (args.GetResult Run_Folder) (args.GetResult Repository_Folder) name
        AnsiConsole.MarkupLine(
            "wrote model [bold]{0}[/] with versions {1} to {2} (input [[N, {3}]], logits [[N, {4}]])",
            Markup.Escape r.Name, String.Join(", ", r.Versions), Markup.Escape r.ModelFolder, r.InputFeatures, r.OutputFeatures)
        for k in r.Versions do
            AnsiConsole.MarkupLine("  {0}", Markup.Escape(Path.Combine(r.ModelFolder, string k, "model.onnx")))
        AnsiConsole.MarkupLine("  {0}", Markup.Escape r.ConfigPath)
        0
