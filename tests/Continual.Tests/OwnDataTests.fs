/// A learner that grows task by task from the user's own data, one process per task
/// (`continual learn --from RUN --task PATH`), as real processes on real files.
module Continual.Tests.OwnDataTests

open System.IO
open System.Text.Json
open Expecto
open Continual.Data
open Continual.Tests.TestData
open Continual.Tests.DataGenerators

/// The final average Class-IL and Task-IL accuracy of a run folder's results.json.
let private finalAverages (runFolder: string) =
    use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(runFolder, "results.json")))
    let last (name: string) = doc.RootElement.GetProperty(name).EnumerateArray() |> Seq.last |> fun row -> row.EnumerateArray() |> Seq.map (fun v -> v.GetDouble()) |> Seq.average
    last "classIl", last "taskIl"

/// Runs `continual` and expects the exit code, with standard error for the message.
let private expectExit (expected: int) (args: string list) =
    let code, output, errors = CliProcess.execute args []
    Expect.equal code expected (sprintf "exit code of continual %s\nstdout: %s\nstderr: %s" (String.concat " " args) output errors)
    errors

/// The one line a failing command writes to standard error (no stack trace).
let private expectOneLine (errors: string) (fragment: string) =
    let lines = errors.Split('\n', System.StringSplitOptions.RemoveEmptyEntries)
    Expect.equal lines.Length 1 (sprintf "one line on stderr, got: %s" errors)
    Expect.stringContains errors fragment "the message"
    Expect.isFalse (errors.Contains "   at ") "no stack trace"

/// Fashion-MNIST's classes in three tasks of unequal size.
let private split = [ [ 0; 1; 2; 3 ]; [ 4; 5; 6; 7 ]; [ 8; 9 ] ]

[<Tests>]
let ownDataTests =
    testList "own data" [
        test "image folders learned one process per task with DER++ and a growing head come within 2 points of the IDX run with a fixed 10-way head" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use temp = new TempFolder()
            // Fashion-MNIST's own images as PNG files: 500 training and 200 test images per class.
            let tasks = writeIdxAsImageFolders fashionMnist (Path.Combine(temp.Path, "png")) Benchmarks.fashionMnistClassNames (Some 500) (Some 200) split
            let growing = Path.Combine(temp.Path, "growing")
            let common = [ "--strategy"; "derpp"; "--buffer"; "200"; "--seed"; "0"; "--quiet" ]
            expectExit 0 ([ "run"; "--benchmark"; "folder"; "--data"; tasks.[0]; "--classes-per-task"; "4"; "--growing-head"; "--out"; growing ] @ common) |> ignore
            for task in tasks.[1..] do
                expectExit 0 [ "learn"; "--from"; growing; "--task"; task; "--quiet" ] |> ignore
            let fixedRun = Path.Combine(temp.Path, "fixed")
            expectExit 0 ([ "run"; "--benchmark"; "split-fmnist"; "--data"; fashionMnist; "--classes-per-task"; "4"; "--train-per-class"; "500"; "--test-per-class"; "200"; "--no-onnx"; "--out"; fixedRun ] @ common) |> ignore
            // What the grown learner recorded: every class by name, the class-to-task map, a verified model per task.
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(growing, "results.json")))
            let benchmark = doc.RootElement.GetProperty "benchmark"
            let names = benchmark.GetProperty("classNames").EnumerateArray() |> Seq.map (fun v -> v.GetString()) |> Set.ofSeq
            Expect.equal names (Set.ofList (Benchmarks.fashionMnistClassNames |> List.map folderName)) "all ten class names, from the folders"
            Expect.equal (benchmark.GetProperty("classToTask").EnumerateArray() |> Seq.map (fun v -> v.GetInt32()) |> List.ofSeq) [ 0; 0; 0; 0; 1; 1; 1; 1; 2; 2 ] "the class-to-task map"
            Expect.equal (benchmark.GetProperty("headClasses").GetInt32()) 10 "the head grew to ten classes"
            for k in 1 .. 3 do
                Expect.isTrue (File.Exists(Path.Combine(growing, sprintf "task-%d.onnx" k))) (sprintf "task-%d.onnx was exported" k)
            let growingClass, growingTask = finalAverages growing
            let fixedClass, fixedTask = finalAverages fixedRun
            printfn "own data: growing head, one process per task: Class-IL %.2f, Task-IL %.2f; IDX, fixed head, one run: Class-IL %.2f, Task-IL %.2f" growingClass growingTask fixedClass fixedTask
            Expect.isGreaterThan fixedClass 60.0 "the fixed-head run learned (Class-IL)"
            Expect.isLessThanOrEqual (abs (growingClass - fixedClass)) 2.0 "Class-IL within 2 points"
            Expect.isLessThanOrEqual (abs (growingTask - fixedTask)) 2.0 "Task-IL within 2 points"
        }

        test "learn --task refuses bad tasks in one line and changes nothing; a manifest entry is a task" {
            use temp = new TempFolder()
            let image seed = grayImage 8 8 seed
            let folder (name: string) (classes: string list) =
                let root = Path.Combine(temp.Path, name)
                writeImageFolder root [ for c in classes do for split in [ "train"; "test" ] -> split, c, [ for i in 0 .. 3 -> image (i * 13 + c.Length * 40 + (if split = "test" then 7 else 0)) ] ]
                root
            let first = folder "first" [ "ant"; "bee" ]
            let second = folder "second" [ "cat"; "dog" ]
            let run = Path.Combine(temp.Path, "run")
            expectExit 0 [ "run"; "--benchmark"; "folder"; "--data"; first; "--strategy"; "er"; "--buffer"; "4"; "--growing-head"; "--no-onnx"; "--quiet"; "--out"; run ] |> ignore
            let results () = File.ReadAllText(Path.Combine(run, "results.json"))
            let before = results ()
            // The same class names again.
            expectOneLine (expectExit 1 [ "learn"; "--from"; run; "--task"; first; "--quiet" ]) "the same class name in two tasks"
            // An empty class folder.
            let empty = folder "empty" [ "eel" ]
            Directory.CreateDirectory(Path.Combine(empty, "train", "fox")) |> ignore
            expectOneLine (expectExit 1 [ "learn"; "--from"; run; "--task"; empty; "--quiet" ]) "fox"
            // Not a task at all, and a manifest without an entry number.
            expectOneLine (expectExit 1 [ "learn"; "--from"; run; "--task"; Path.Combine(temp.Path, "run"); "--quiet" ]) "holds no task"
            let manifest = writeManifest (Path.Combine(temp.Path, "stream.yaml")) (sprintf "tasks:\n  - folder: %s\n" second)
            expectOneLine (expectExit 1 [ "learn"; "--from"; run; "--task"; manifest; "--quiet" ]) "MANIFEST#N"
            expectOneLine (expectExit 1 [ "learn"; "--from"; run; "--task"; manifest + "#2"; "--quiet" ]) "no task 2"
            // --task with --tasks is a usage error.
            expectExit 2 [ "learn"; "--from"; run; "--task"; second; "--tasks"; "2-2"; "--quiet" ] |> ignore
            Expect.equal (results ()) before "nothing was changed by the refused tasks"
            // A manifest entry adds its task; a new process then sees both tasks.
            expectExit 0 [ "learn"; "--from"; run; "--task"; manifest + "#1"; "--quiet" ] |> ignore
            use doc = JsonDocument.Parse(results ())
            let names = doc.RootElement.GetProperty("benchmark").GetProperty("classNames").EnumerateArray() |> Seq.map (fun v -> v.GetString()) |> List.ofSeq
            Expect.equal names [ "ant"; "bee"; "cat"; "dog" ] "the classes of both tasks, in order"
            Expect.equal (doc.RootElement.GetProperty("classIl").GetArrayLength()) 2 "two tasks learned"
            // The learner reloads its added task from the manifest: learning a third task works.
            let third = folder "third" [ "elk" ]
            expectExit 0 [ "learn"; "--from"; run; "--task"; third; "--quiet" ] |> ignore
            use after = JsonDocument.Parse(results ())
            Expect.equal (after.RootElement.GetProperty("classIl").GetArrayLength()) 3 "three tasks learned"
        }
    ]
