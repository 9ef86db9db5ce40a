/// `continual export` refuses incomplete, gapped and mixed runs and writes atomically; `continual
/// verify` bounds and cross-checks every metadata field. On a small real run, with forged files.
module Continual.Tests.ExportVerifyTests

open System
open System.IO
open Expecto
open Google.Protobuf
open Continual
open Continual.Onnx
open Continual.Tests.TestData

/// One small SGD run on synthetic IDX data with the exporter hook and its results.json:
/// (root, data folder, run folder).
let private smallRun =
    lazy
        (let root = Path.Combine(Path.GetTempPath(), "continual-export-" + Guid.NewGuid().ToString "N")
         let data = Path.Combine(root, "data")
         Directory.CreateDirectory data |> ignore
         writeSyntheticFolder data 20 4
         let out = Path.Combine(root, "run")
         let config = { Experiment.defaults "sgd" 0 with Data.Folder = data }
         let exporter = RunExporter(ExportSettings.forRun (Continual.Cli.OnnxCommands.runIdentity config) out)
         let result = Experiment.run config { RunHooks.none with AfterTask = exporter.AfterTask } Threading.CancellationToken.None
         try Results.write out result (fun w -> exporter.WriteJson(w, result.Outcome.HookSeconds, result.WallSeconds))
         finally Experiment.release result
         root, data, out)

/// A fresh folder under the run's root.
let private fresh (name: string) =
    let root, _, _ = smallRun.Force()
    let d = Path.Combine(root, name + "-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory d |> ignore
    d

/// A copy of the run folder, without the files `leave` names.
let private copyRun (leave: string list) =
    let _, _, out = smallRun.Force()
    let copy = fresh "copy"
    for f in Directory.GetFiles out do
        if not (List.contains (Path.GetFileName f) leave) then File.Copy(f, Path.Combine(copy, Path.GetFileName f))
    copy

/// Sets (or adds) metadata entries of a model file in place; the graph and its hash are untouched.
let forge (path: string) (entries: (string * string) list) =
    let model = Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes path)
    for (key, value) in entries do
        match model.MetadataProps |> Seq.tryFind (fun p -> p.Key = key) with
        | Some p -> p.Value <- value
        | None -> model.MetadataProps.Add(Onnx.StringStringEntryProto(Key = key, Value = value))
    File.WriteAllBytes(path, model.ToByteArray())

/// A forged copy of the run's task-k file at `name` in a fresh folder.
let private forged (k: int) (name: string) (entries: (string * string) list) =
    let _, _, out = smallRun.Force()
    let path = Path.Combine(fresh "forged", name)
    File.Copy(Path.Combine(out, sprintf "task-%d.onnx" k), path)
    forge path entries
    path

let private verifyCli (path: string) =
    let _, data, _ = smallRun.Force()
    Continual.Cli.Program.run [| "verify"; path; "--data"; data |]

/// verify refuses the file: exit 1, and the message names the file and the field.
let private refused (path: string) (field: string) =
    let _, data, _ = smallRun.Force()
    Expect.throwsC (fun () -> FileCheck.verifyFile CpuOnly path data |> ignore) (fun e ->
        Expect.isTrue (e :? InvalidModelFile) (sprintf "an InvalidModelFile, got %s: %s" (e.GetType().Name) e.Message)
        Expect.stringStarts e.Message path "names the file"
        Expect.stringContains e.Message field "names the field"
        Expect.isFalse (e.Message.Contains '\n') "one line")
    Expect.equal (verifyCli path) 1 "exit code 1"

let verifyTests =
    testList "verify cross-checks the metadata" [
        test "the run's own files verify (exit 0)" {
            let _, _, out = smallRun.Force()
            for k in 1 .. 5 do
                Expect.equal (verifyCli (Path.Combine(out, sprintf "task-%d.onnx" k))) 0 (sprintf "task-%d.onnx" k)
        }
        test "a class index outside the class map is refused, not a crash" {
            refused (forged 2 "task-2.onnx" [ "continual.classes_seen", "[0,1,2,42]" ]) "continual.classes_seen"
            refused (forged 2 "task-2.onnx" [ "continual.classes_seen", "[-1,0,1,2]" ]) "continual.classes_seen"
        }
        test "classes seen that the class map does not give after the task are refused" {
            refused (forged 2 "task-2.onnx" [ "continual.classes_seen", "[0,1,2,3,4,5]" ]) "continual.classes_seen"
        }
        test "a huge task_count is refused at once" {
            let watch = Diagnostics.Stopwatch.StartNew()
            refused (forged 2 "task-2.onnx" [ "continual.task_count", "2000000000" ]) "continual.task_count"
            refused (forged 2 "task-2.onnx" [ "continual.task_count", "0" ]) "continual.task_count"
            Expect.isLessThan watch.Elapsed.TotalSeconds 30.0 "no hang"
        }
        test "a class-to-task map outside the stream is refused" {
            refused (forged 2 "task-2.onnx" [ "continual.class_to_task", "[1,1,2,2,3,3,4,4,5,9]" ]) "continual.class_to_task"
            refused (forged 2 "task-2.onnx" [ "continual.class_to_task", "[1,1,2,2,3,3,4,4,4,4]" ]) "continual.class_to_task"
        }
        test "a forged accuracy is refused, not reported as reproduced" {
            refused (forged 3 "task-3.onnx" [ "continual.class_il_accuracy", "[100,100,100,100,100]" ]) "continual.class_il_accuracy"
            refused (forged 3 "task-3.onnx" [ "continual.task_il_accuracy", "[99.5,0,0,0,0]" ]) "continual.task_il_accuracy"
        }
        test "correct counts above the test images are refused" {
            refused (forged 3 "task-3.onnx" [ "continual.class_il_correct", "[9999,0,0,0,0]" ]) "continual.class_il_correct"
            refused (forged 3 "task-3.onnx" [ "continual.test_examples", "[-4,8,8,8,8]" ]) "continual.test_examples"
        }
        test "a task number that differs from the file name is refused" {
            // An unforged file under another task's name.
            refused (forged 2 "task-3.onnx" []) "continual.task"
            // The same in a model repository's version folder.
            let _, _, out = smallRun.Force()
            let version = Path.Combine(fresh "repo", "m", "4")
            Directory.CreateDirectory version |> ignore
            File.Copy(Path.Combine(out, "task-2.onnx"), Path.Combine(version, "model.onnx"))
            refused (Path.Combine(version, "model.onnx")) "version folder 4"
            // The metadata's task outside the stream, or the model version differing from it.
            refused (forged 2 "task-2.onnx" [ "continual.task", "7" ]) "continual.task"
            let path = forged 2 "task-2.onnx" []
            let model = Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes path)
            model.ModelVersion <- 3L
            File.WriteAllBytes(path, model.ToByteArray())
            refused path "model_version"
        }
        test "unknown keys, a forged doc string and a bad test_per_class are refused" {
            refused (forged 1 "task-1.onnx" [ "continual.extra", "1" ]) "continual.extra"
            refused (forged 1 "task-1.onnx" [ "continual.test_per_class", "0" ]) "continual.test_per_class"
            refused (forged 1 "task-1.onnx" [ "continual.strategy", "der\nforged" ]) "continual.strategy"
            let path = forged 1 "task-1.onnx" []
            let model = Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes path)
            model.DocString <- "Continual: derpp after task 5 of 5"
            File.WriteAllBytes(path, model.ToByteArray())
            refused path "doc string"
        }
    ]

/// Every file and folder under `folder`, as relative paths.
let private contents (folder: string) =
    if Directory.Exists folder then
        Directory.GetFileSystemEntries(folder, "*", SearchOption.AllDirectories) |> Array.map (fun p -> Path.GetRelativePath(folder, p)) |> Array.sort |> List.ofArray
    else []

let private exportCli (run: string) (repo: string) (name: string option) =
    Continual.Cli.Program.run (Array.append [| "export"; run; "--layout"; "triton"; "--to"; repo |] (match name with Some n -> [| "--name"; n |] | None -> [||]))

/// export refuses the run folder: an InvalidModelFile whose message holds each fragment, exit 1, and
/// nothing written to the repository.
let private exportRefused (run: string) (fragments: string list) =
    let repo = Path.Combine(fresh "repo", "models")
    Expect.throwsC (fun () -> Repository.writeTriton run repo (Some "m") |> ignore) (fun e ->
        Expect.isTrue (e :? InvalidModelFile) (sprintf "an InvalidModelFile, got %s: %s" (e.GetType().Name) e.Message)
        for f in fragments do Expect.stringContains e.Message f "the message explains"
        Expect.isFalse (e.Message.Contains '\n') "one line")
    Expect.equal (exportCli run repo (Some "m")) 1 "exit code 1"
    Expect.isFalse (Directory.Exists repo) "nothing written"

let exportTests =
    testList "export is atomic and refuses bad runs" [
        test "a whole run exports every version (exit 0)" {
            let _, _, out = smallRun.Force()
            let repo = fresh "repo"
            Expect.equal (exportCli out repo (Some "fashion.v1-a_b")) 0 "exit code"
            Expect.equal (contents repo) [ "fashion.v1-a_b"; "fashion.v1-a_b/1"; "fashion.v1-a_b/1/model.onnx"; "fashion.v1-a_b/2"; "fashion.v1-a_b/2/model.onnx"
                                           "fashion.v1-a_b/3"; "fashion.v1-a_b/3/model.onnx"; "fashion.v1-a_b/4"; "fashion.v1-a_b/4/model.onnx"
                                           "fashion.v1-a_b/5"; "fashion.v1-a_b/5/model.onnx"; "fashion.v1-a_b/config.pbtxt" ] "the model and nothing else"
            // Each version verifies where it lies.
            Expect.equal (verifyCli (Path.Combine(repo, "fashion.v1-a_b", "3", "model.onnx"))) 0 "version 3 verifies"
        }
        test "a run missing task-3.onnx is refused, naming task 3" {
            exportRefused (copyRun [ "task-3.onnx" ]) [ "task 3 missing"; "task-3.onnx" ]
            exportRefused (copyRun [ "task-2.onnx"; "task-4.onnx" ]) [ "tasks 2, 4 missing" ]
        }
        test "an interrupted run (no results.json) is refused, naming the missing tasks" {
            exportRefused (copyRun [ "results.json"; "task-4.onnx"; "task-5.onnx" ]) [ "did not finish"; "tasks 4, 5 missing" ]
            exportRefused (copyRun [ "results.json" ]) [ "did not finish"; "no results.json" ]
        }
        test "a mixed folder is refused, naming the files that differ" {
            let run = copyRun []
            forge (Path.Combine(run, "task-4.onnx")) [ "continual.config_hash", "0123456789abcdef" ]
            exportRefused run [ "mixed runs"; "task-4.onnx (configuration 0123456789abcdef)" ]
            let extra = copyRun []
            File.Copy(Path.Combine(extra, "task-5.onnx"), Path.Combine(extra, "task-6.onnx"))
            exportRefused extra [ "task-6.onnx" ]
        }
        test "a bad --name is a usage error (exit 2) and writes nothing" {
            let _, _, out = smallRun.Force()
            let repo = Path.Combine(fresh "repo", "models")
            for name in [ "a\"b"; "../escape"; "a/b"; ".hidden"; "has space"; "tab\tname"; ""; String('m', 200); "naïve" ] do
                Expect.equal (exportCli out repo (Some name)) 2 (sprintf "--name %A" name)
                Expect.isSome (Repository.nameProblem name) (sprintf "%A is refused by the library too" name)
            Expect.isFalse (Directory.Exists repo) "nothing written"
        }
        test "a repository that cannot be created leaves nothing, and a retry succeeds" {
            let _, _, out = smallRun.Force()
            let place = fresh "place"
            let repo = Path.Combine(place, "repo")
            File.WriteAllText(repo, "a file where the repository should be")
            Expect.throwsC (fun () -> Repository.writeTriton out repo (Some "m") |> ignore) (fun e ->
                Expect.isTrue (e :? RepositoryError) (sprintf "a RepositoryError, got %s: %s" (e.GetType().Name) e.Message)
                Expect.stringContains e.Message repo "names the path")
            Expect.equal (exportCli out repo (Some "m")) 1 "exit code 1"
            Expect.equal (contents place) [ "repo" ] "nothing left beside the file"
            Expect.equal (File.ReadAllText repo) "a file where the repository should be" "the file is untouched"
            File.Delete repo
            Expect.equal (exportCli out repo (Some "m")) 0 "the retry succeeds"
            Expect.equal (contents repo |> List.filter (fun p -> p.EndsWith "model.onnx")).Length 5 "five versions"
        }
        test "a failure half-way leaves no half-built model, and a retry succeeds" {
            let _, _, out = smallRun.Force()
            let repo = fresh "repo"
            // A staging folder left by a killed export (no such process) is cleaned up too.
            let stale = Path.Combine(repo, ".m.export-2147483000-0123.tmp")
            Directory.CreateDirectory(Path.Combine(stale, "1")) |> ignore
            let failAt3 k = if k = 3 then raise (IOException "No space left on device")
            Expect.throwsC (fun () -> Repository.writeTritonObserved failAt3 out repo (Some "m") |> ignore) (fun e ->
                Expect.isTrue (e :? RepositoryError) (sprintf "a RepositoryError, got %s: %s" (e.GetType().Name) e.Message)
                Expect.stringContains e.Message "No space left on device" "the cause")
            Expect.equal (contents repo) [] "no model folder, no staging folder"
            let layout = Repository.writeTriton out repo (Some "m")
            Expect.equal layout.Versions [ 1 .. 5 ] "the retry writes every version"
            Expect.equal (contents repo |> List.filter (fun p -> p.StartsWith ".")) [] "no staging folder left"
            // The name is taken now: refused, and the model is untouched.
            Expect.throwsC (fun () -> Repository.writeTriton out repo (Some "m") |> ignore) (fun e -> Expect.stringContains e.Message "already exists" "no overwrite")
            Expect.equal (contents repo).Length 12 "the model as it was"
        }
        test "a run folder named with a leading dot gets a usable default name" {
            Expect.equal (Repository.modelName "/tmp/.hidden run") "_hidden_run" "cleaned"
            Expect.isNone (Repository.nameProblem (Repository.modelName (String('x', 300)))) "cut to the limit"
        }
    ]

[<Tests>]
let tests = testSequenced (testList "export and verify" [ verifyTests; exportTests ])
