/// Faults of issue 12 that need a finished run, a mount or another user, run through the real
/// `continual` program: `export` and `verify` on broken runs and forged files, read-only and full
/// places, a disk that fills while the results are written, an unreadable data file, a re-run killed
/// half-way. Each case checks the exit code, one line "error: ..." on stderr without a stack trace, and
/// what is left on disk.
module Continual.Tests.FaultProcessTests

open System
open System.IO
open Expecto
open Continual
open Continual.Tests.TestData

let private lines (text: string) =
    text.Split('\n') |> Array.map (fun l -> l.TrimEnd '\r') |> Array.filter (fun l -> l.Trim() <> "")

/// Checks a failed process: the exit code, exactly one line on stderr starting "error: " and holding
/// every fragment, no stack trace, and nothing about the error on stdout.
let private expectError (label: string) (code: int) (fragments: string list) (actual: int, output: string, errors: string) =
    Expect.equal actual code (sprintf "%s: exit code (stdout: %s; stderr: %s)" label output errors)
    let errorLines = lines errors
    Expect.equal errorLines.Length 1 (sprintf "%s: one line on stderr, got:\n%s" label errors)
    Expect.stringStarts errorLines.[0] "error: " (sprintf "%s: an error line" label)
    for f in fragments do Expect.stringContains errorLines.[0] f (sprintf "%s: the message says what is wrong" label)
    Expect.isFalse (errors.Contains "   at ") (sprintf "%s: no stack trace" label)
    Expect.isFalse (output.Contains "error") (sprintf "%s: nothing about the error on stdout: %s" label output)

let private execute (args: string list) = CliProcess.execute args []

/// Runs another program (mount, umount): exit code and everything it said.
let private system (program: string) (args: string list) =
    let code, output, errors = CliProcess.executeProgram program args []
    code, output + errors

/// Mounts a tmpfs with `options` on `folder` and runs `body`, unmounting afterwards; where mount is
/// refused the case prints "skipped" with the reason.
let private withTmpfs (label: string) (options: string) (folder: string) (body: unit -> unit) =
    Directory.CreateDirectory folder |> ignore
    match system "mount" [ "-t"; "tmpfs"; "-o"; options; "tmpfs"; folder ] with
    | 0, _ ->
        try body ()
        finally system "umount" [ folder ] |> ignore
    | _, said -> printfn "skipped: %s (mount -t tmpfs -o %s was refused: %s)" label options (said.Trim())

/// Every file and folder under `folder`, as sorted relative paths.
let private contents (folder: string) =
    if Directory.Exists folder then
        Directory.GetFileSystemEntries(folder, "*", SearchOption.AllDirectories) |> Array.map (fun p -> Path.GetRelativePath(folder, p)) |> Array.sort |> List.ofArray
    else []

/// One whole SGD run of the real program on small synthetic IDX data (20 training and 4 test images
/// per class), with its task models: (root, data folder, run folder).
let private finishedRun =
    lazy
        (let root = Path.Combine(Path.GetTempPath(), "continual-faults-" + Guid.NewGuid().ToString "N")
         // Shared by the cases, so removed when the test program ends.
         AppDomain.CurrentDomain.ProcessExit.Add(fun _ -> try Directory.Delete(root, true) with _ -> ())
         let data = Path.Combine(root, "data")
         Directory.CreateDirectory data |> ignore
         writeSyntheticFolder data 20 4
         let out = Path.Combine(root, "run")
         let code, output, errors = execute [ "run"; "--data"; data; "--strategy"; "sgd"; "--quiet"; "--out"; out ]
         if code <> 0 then failtestf "the run the export and verify cases need failed (%d): %s %s" code output errors
         root, data, out)

/// A fresh folder under the run's root.
let private fresh (name: string) =
    let root, _, _ = finishedRun.Force()
    let d = Path.Combine(root, name + "-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory d |> ignore
    d

/// A copy of the finished run's folder without the files `leave` names.
let private copyRun (leave: string list) =
    let _, _, out = finishedRun.Force()
    let copy = fresh "copy"
    for f in Directory.GetFiles out do
        if not (List.contains (Path.GetFileName f) leave) then File.Copy(f, Path.Combine(copy, Path.GetFileName f))
    copy

let private export (run: string) (repository: string) (extra: string list) =
    execute ([ "export"; run; "--layout"; "triton"; "--to"; repository ] @ extra)

let private verify (path: string) =
    let _, data, _ = finishedRun.Force()
    execute [ "verify"; path; "--data"; data ]

/// A copy of the run's task-k file under `name` in a fresh folder, its metadata forged.
let private forged (k: int) (name: string) (entries: (string * string) list) =
    let _, _, out = finishedRun.Force()
    let path = Path.Combine(fresh "forged", name)
    File.Copy(Path.Combine(out, sprintf "task-%d.onnx" k), path)
    ExportVerifyTests.forge path entries
    path

let private exportCases =
    testList "export" [
        test "export of an interrupted run (killed after task 3: marked incomplete, files staged) exits 1 and writes nothing" {
            let _, data, _ = finishedRun.Force()
            let run = Path.Combine(fresh "interrupted", "run")
            let code, output, errors = CliProcess.execute [ "run"; "--data"; data; "--strategy"; "sgd"; "--quiet"; "--out"; run ] [ "CONTINUAL_KILL_AT", "task-end:3" ]
            Expect.equal code 137 (sprintf "killed after task 3's checkpoint (stdout: %s; stderr: %s)" output errors)
            Expect.isTrue (RunFolder.isIncomplete run) "the folder is marked incomplete"
            Expect.isNonEmpty (Directory.GetFiles(Path.Combine(run, RunFolder.Staging), "task-*.onnx")) "task models are staged"
            let repository = Path.Combine(fresh "repo", "models")
            export run repository [] |> expectError "export of an interrupted run" 1 [ run; "did not finish" ]
            Expect.isFalse (Directory.Exists repository) "nothing written"
            // The same run's task models published by hand without the marker or results.json: still refused, naming the missing tasks.
            let published = fresh "published"
            for f in Directory.GetFiles(Path.Combine(run, RunFolder.Staging), "task-*.onnx") do
                File.Copy(f, Path.Combine(published, Path.GetFileName f))
            export published repository [] |> expectError "export of a run without results.json" 1 [ "did not finish"; "tasks 4, 5 missing" ]
            Expect.isFalse (Directory.Exists repository) "nothing written"
        }

        test "export of a run missing task-3.onnx exits 1 naming task 3, and writes nothing" {
            let repository = Path.Combine(fresh "repo", "models")
            export (copyRun [ "task-3.onnx" ]) repository [] |> expectError "a run missing task-3.onnx" 1 [ "task 3 missing"; "task-3.onnx" ]
            Expect.isFalse (Directory.Exists repository) "nothing written"
        }

        test "export --name with a quote is a usage error (exit 2) and writes nothing" {
            let _, _, out = finishedRun.Force()
            let repository = Path.Combine(fresh "repo", "models")
            export out repository [ "--name"; "a\"b" ] |> expectError "--name with a quote" 2 [ "--name" ]
            Expect.isFalse (Directory.Exists repository) "nothing written"
        }

        test "export to a read-only place (a read-only mount) exits 1 naming the path and leaves nothing" {
            let _, _, out = finishedRun.Force()
            let place = Path.Combine(fresh "readonly", "mount")
            withTmpfs "export to a read-only place" "ro,size=1m" place (fun () ->
                let repository = Path.Combine(place, "models")
                export out repository [] |> expectError "a repository under a read-only mount" 1 [ repository; "Read-only file system" ]
                // The mount itself as the repository: it exists, but no model can be staged in it.
                export out place [] |> expectError "a read-only repository" 1 [ place; "Read-only file system" ]
                Expect.isEmpty (contents place) "nothing written")
        }

        test "export to a full place exits 1 naming the cause, leaves no half-built model, and a retry with room succeeds" {
            let _, _, out = finishedRun.Force()
            let place = Path.Combine(fresh "full", "mount")
            // Room for about half of the task models: the disk fills half-way through the export.
            let models = Directory.GetFiles(out, "task-*.onnx") |> Array.sumBy (fun f -> FileInfo(f).Length)
            withTmpfs "export to a full place" (sprintf "size=%dk" (models / 2048L)) place (fun () ->
                let repository = Path.Combine(place, "models")
                export out repository [ "--name"; "m" ] |> expectError "export to a full place" 1 [ repository; "No space left on device" ]
                Expect.isEmpty (contents place) "no half-built model, no staging folder, no repository"
                match system "mount" [ "-o"; sprintf "remount,size=%dk" (models / 1024L * 4L); place ] with
                | 0, _ ->
                    let code, output, errors = export out repository [ "--name"; "m" ]
                    Expect.equal code 0 (sprintf "the retry succeeds (stdout: %s; stderr: %s)" output errors)
                    Expect.equal (contents repository |> List.filter (fun p -> p.EndsWith "model.onnx")) [ for k in 1 .. 5 -> Path.Combine("m", string k, "model.onnx") ] "every version"
                    Expect.isEmpty (contents repository |> List.filter (fun p -> Path.GetFileName(p).StartsWith ".")) "no staging folder left"
                | _, said -> printfn "skipped: the retry of an export to a full place (remount refused: %s)" (said.Trim()))
        }
    ]

let private verifyCases =
    testList "verify" [
        test "verify on forged metadata exits 1 naming the file and the field, never 'reproduced'" {
            let _, _, out = finishedRun.Force()
            // The run's own file verifies: the cases below fail for their forgery alone.
            let code, output, errors = verify (Path.Combine(out, "task-2.onnx"))
            Expect.equal code 0 (sprintf "the unforged file verifies (stdout: %s; stderr: %s)" output errors)
            Expect.stringContains output "reproduced exactly" "and says so"
            let refused (label: string) (path: string) (field: string) =
                let (_, output, _) as outcome = verify path
                expectError label 1 [ path; field ] outcome
                Expect.isFalse (output.Contains "reproduced") (label + ": not reported as reproduced")
            refused "task_count 2000000000" (forged 2 "task-2.onnx" [ "continual.task_count", "2000000000" ]) "continual.task_count"
            refused "classes_seen holding 42" (forged 2 "task-2.onnx" [ "continual.classes_seen", "[0,1,2,42]" ]) "continual.classes_seen"
            refused "a forged class_il_accuracy" (forged 3 "task-3.onnx" [ "continual.class_il_accuracy", "[100,100,100,100,100]" ]) "continual.class_il_accuracy"
            refused "a task number differing from the file name" (forged 2 "task-3.onnx" []) "continual.task"
        }
    ]

/// The output folder's contents, without the run's own lock file.
let private published (folder: string) =
    contents folder |> List.filter (fun p -> p <> ".continual.lock")

let private runCases =
    testList "run" [
        test "a disk that fills while the results are written: exit 1 naming the path and the cause, nothing published, and resume finishes once there is room" {
            let _, data, _ = finishedRun.Force()
            let place = Path.Combine(fresh "fills", "mount")
            withTmpfs "a disk that fills while the results are written" "size=64m" place (fun () ->
                let out = Path.Combine(place, "run")
                let code, output, errors =
                    CliProcess.execute [ "run"; "--data"; data; "--strategy"; "sgd"; "--quiet"; "--out"; out ] [ "CONTINUAL_FILL_DISK_AT", "results" ]
                expectError "a full disk at the results" 1 [ out; "the results cannot be written (No space left on device)"; "continual resume " + out ] (code, output, errors)
                let filler = Path.Combine(out, RunFolder.Staging, Faults.DiskFillerName)
                Expect.isTrue (File.Exists filler) "the disk was filled at the results (the filler is there)"
                // Nothing of the run is published: no results file, no task model, the folder marked incomplete.
                let top = Directory.GetFiles out |> Array.map Path.GetFileName |> Array.sort |> List.ofArray
                Expect.equal top [ ".continual-incomplete"; ".continual.lock" ] "only the marker and the lock at the top"
                let staged = Directory.GetFiles(Path.Combine(out, RunFolder.Staging)) |> Array.map Path.GetFileName |> Array.sort |> List.ofArray
                Expect.equal staged ([ Faults.DiskFillerName; Learner.FileName ] @ [ for k in 1 .. 5 -> sprintf "task-%d.onnx" k ] |> List.sort) "the learner and the task models stay staged; no results file, no temporary file"
                File.Delete filler
                let code, output, errors = execute [ "resume"; out; "--quiet" ]
                Expect.equal code 0 (sprintf "resume publishes the run once there is room (stdout: %s; stderr: %s)" output errors)
                Expect.equal (published out) ([ "learner.safetensors"; "results.csv"; "results.json" ] @ [ for k in 1 .. 5 -> sprintf "task-%d.onnx" k ] |> List.sort) "every file of the run, published together")
        }

        test "a training command's usage errors end at once with their one line while libtorch is still loading" {
            // `continual run` starts loading libtorch before it parses its arguments; a command that
            // fails first ends the process at once (Startup.finish), and its line must still be there.
            let root = fresh "usage-while-loading"
            let out = Path.Combine(root, "out")
            let missing = Path.Combine(root, "missing")
            execute [ "run"; "--no-such-option"; "--out"; out ] |> expectError "an unknown option" 2 [ "--no-such-option" ]
            execute [ "bench"; "--strategy"; "nope" ] |> expectError "an unknown strategy" 2 [ "nope" ]
            execute [ "run"; "--data"; missing; "--out"; out ] |> expectError "a missing data folder" 2 [ missing; "not found" ]
            Expect.isFalse (Directory.Exists out) "nothing written"
        }

        test "an --out on a read-only mount exits 1 naming the path, before any work" {
            let _, data, _ = finishedRun.Force()
            let place = Path.Combine(fresh "readonly-out", "mount")
            withTmpfs "an --out on a read-only mount" "ro,size=1m" place (fun () ->
                execute [ "run"; "--data"; data; "--strategy"; "sgd"; "--quiet"; "--out"; place ] |> expectError "--out is a read-only mount" 1 [ place; "cannot be written" ]
                let sub = Path.Combine(place, "run")
                execute [ "run"; "--data"; data; "--strategy"; "sgd"; "--quiet"; "--out"; sub ] |> expectError "--out under a read-only mount" 1 [ sub; "cannot be written" ]
                Expect.isEmpty (contents place) "nothing written")
        }

        test "a re-run into an old run's folder killed at task 3 leaves no old file beside new ones" {
            let _, data, _ = finishedRun.Force()
            let out = Path.Combine(fresh "rerun", "run")
            let run seed extra = [ "run"; "--data"; data; "--strategy"; "sgd"; "--quiet"; "--seed"; string seed; "--out"; out ] @ extra
            let code, output, errors = execute (run 0 [])
            Expect.equal code 0 (sprintf "the old run (stdout: %s; stderr: %s)" output errors)
            let old = Directory.GetFiles out |> Array.map (fun f -> Path.GetFileName f, File.ReadAllBytes f) |> Map.ofArray
            // Without --overwrite the old run is refused and untouched.
            execute (run 1 []) |> expectError "a new run into an old run's folder" 1 [ out; "holds the results of another run"; "--overwrite" ]
            for KeyValue(name, bytes) in old do
                if name <> ".continual.lock" then Expect.equal (File.ReadAllBytes(Path.Combine(out, name))) bytes (sprintf "%s is untouched" name)
            let code, _, errors = CliProcess.execute (run 1 [ "--overwrite" ]) [ "CONTINUAL_KILL_AT", "task-end:3" ]
            Expect.equal code 137 (sprintf "killed after task 3 (stderr: %s)" errors)
            // Nothing of the old run is left, and nothing of the new one is published.
            Expect.equal (published out |> List.filter (fun p -> not (p.StartsWith(RunFolder.Staging + "/")))) [ RunFolder.IncompleteMarker; RunFolder.Staging ] "only the marker and the staging folder"
            let staged = Directory.GetFiles(Path.Combine(out, RunFolder.Staging), "task-*.onnx") |> Array.map Path.GetFileName |> Array.sort |> List.ofArray
            Expect.equal staged [ "task-1.onnx"; "task-2.onnx"; "task-3.onnx" ] "the new run's three task models, staged"
            for name in staged do
                Expect.notEqual (File.ReadAllBytes(Path.Combine(out, RunFolder.Staging, name))) old.[name] (sprintf "%s is the new run's" name)
        }

        test "a comparison stopped half-way, or replaced with --overwrite, leaves no old run folder beside the new ones" {
            let _, data, _ = finishedRun.Force()
            let out = Path.Combine(fresh "compare", "compared")
            let compare (seeds: string) extra = [ "compare"; "--data"; data; "--strategies"; "sgd"; "--seeds"; seeds; "--out"; out ] @ extra
            let runFolders () = Directory.GetDirectories out |> Array.map Path.GetFileName |> Array.sort |> List.ofArray
            // Killed right after its first run's results: one run folder, no compare.json.
            let code, _, errors = CliProcess.execute (compare "0,1" []) [ "CONTINUAL_KILL_AT", "compare-run:1" ]
            Expect.equal code 137 (sprintf "killed after the first run (stderr: %s)" errors)
            let left = runFolders ()
            Expect.equal left.Length 1 "the first run's folder"
            Expect.isTrue (left.Head.EndsWith "-s0") "of seed 0"
            Expect.isFalse (File.Exists(Path.Combine(out, "compare.json"))) "no summary"
            Expect.isTrue (RunFolder.isIncomplete out) "the folder is marked incomplete"
            // Another comparison is refused, and the stopped one's folder is untouched.
            execute (compare "2" []) |> expectError "a comparison into a stopped comparison's folder" 1 [ out; "--overwrite" ]
            Expect.equal (runFolders ()) left "the stopped comparison's run folder is untouched"
            // With --overwrite: the new comparison's run folder alone, and no marker.
            let code, output, errors = execute (compare "2" [ "--overwrite" ])
            Expect.equal code 0 (sprintf "--overwrite replaces it (stdout: %s; stderr: %s)" output errors)
            let only (seed: int) =
                let folders = runFolders ()
                Expect.equal folders.Length 1 (sprintf "one run folder, not the old ones beside it: %A" folders)
                Expect.isTrue (folders.Head.EndsWith(sprintf "-s%d" seed)) (sprintf "seed %d's: %A" seed folders)
                Expect.isTrue (File.Exists(Path.Combine(out, "compare.json"))) "the summary"
                Expect.isFalse (RunFolder.isIncomplete out) "no incomplete marker"
            only 2
            // A finished comparison replaced by another with --overwrite: the same.
            let code, output, errors = execute (compare "3" [ "--overwrite" ])
            Expect.equal code 0 (sprintf "--overwrite replaces a finished comparison (stdout: %s; stderr: %s)" output errors)
            only 3
            // A comparison that fails on its data before any run is written leaves no folder behind.
            let empty = fresh "empty-test"
            for f in Directory.GetFiles data do File.Copy(f, Path.Combine(empty, Path.GetFileName f))
            Continual.Data.Idx.writeImages (Path.Combine(empty, "t10k-images-idx3-ubyte.gz")) (syntheticImages 2 [||])
            Continual.Data.Idx.writeLabels (Path.Combine(empty, "t10k-labels-idx1-ubyte.gz")) [||]
            let fresh = Path.Combine(Path.GetDirectoryName out, "never")
            execute [ "compare"; "--data"; empty; "--strategies"; "sgd"; "--seeds"; "0"; "--out"; fresh ] |> expectError "a comparison on an empty test set" 1 [ "holds 0 images" ]
            Expect.isFalse (Directory.Exists fresh) "no folder left"
        }

        test "SIGINT and SIGTERM: exit 130 and 143, one line on stderr saying what was kept, nothing published, no temporary file; resume finishes" {
            let _, data, _ = finishedRun.Force()
            let out = Path.Combine(fresh "signals", "run")
            let stopped (signal: string) (expected: int) (code: int, output: string, errors: string) =
                Expect.equal code expected (sprintf "%s: exit code (stdout: %s; stderr: %s)" signal output errors)
                let said = lines errors
                Expect.equal said.Length 1 (sprintf "%s: one line on stderr, got:\n%s" signal errors)
                Expect.stringStarts said.[0] ("stopped by " + signal) (signal + ": says what stopped the run")
                Expect.stringContains said.[0] (Path.Combine(out, RunFolder.Staging, Learner.FileName)) (signal + ": says what was kept")
                Expect.stringContains said.[0] ("continual resume " + out) (signal + ": says how to continue")
                Expect.isFalse (errors.Contains "   at ") (signal + ": no stack trace")
                Expect.equal (published out |> List.filter (fun p -> not (p.StartsWith(RunFolder.Staging + "/")))) [ RunFolder.IncompleteMarker; RunFolder.Staging ] (signal + ": nothing published")
                Expect.isEmpty (Directory.GetFiles(out, "*.tmp", SearchOption.AllDirectories)) (signal + ": no temporary file")
            // Sent by the process to itself through its own handlers, at steps 6 (task 2) and 14 (task 4) of 20.
            CliProcess.execute [ "run"; "--data"; data; "--strategy"; "sgd"; "--quiet"; "--out"; out ] [ "CONTINUAL_KILL_AT", "step:6:INT" ] |> stopped "SIGINT" 130
            CliProcess.execute [ "resume"; out; "--quiet" ] [ "CONTINUAL_KILL_AT", "step:14:TERM" ] |> stopped "SIGTERM" 143
            let code, output, errors = execute [ "resume"; out; "--quiet" ]
            Expect.equal code 0 (sprintf "resume finishes (stdout: %s; stderr: %s)" output errors)
            Expect.equal (published out) ([ "learner.safetensors"; "results.csv"; "results.json" ] @ [ for k in 1 .. 5 -> sprintf "task-%d.onnx" k ] |> List.sort) "every file of the run, published together"
        }

        test "an unreadable data file, read by an unprivileged user, exits 1 naming the file" {
            let _, data, _ = finishedRun.Force()
            // File modes do not stop root: the program runs as nobody (uid 65534) through setpriv.
            let setpriv = [ "/usr/bin/setpriv"; "/bin/setpriv" ] |> List.tryFind File.Exists
            match setpriv with
            | None -> printfn "skipped: an unreadable data file (no setpriv to run the program as an unprivileged user)"
            | Some setpriv ->
                let place = fresh "unreadable"
                let mine = Path.Combine(place, "data")
                Directory.CreateDirectory mine |> ignore
                for f in Directory.GetFiles data do File.Copy(f, Path.Combine(mine, Path.GetFileName f))
                // Folders nobody can traverse, and a place it can write its output to.
                let everyone = UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute ||| UnixFileMode.GroupRead ||| UnixFileMode.GroupExecute ||| UnixFileMode.OtherRead ||| UnixFileMode.OtherExecute
                for d in [ Path.GetDirectoryName place; place; mine ] do File.SetUnixFileMode(d, everyone)
                for f in Directory.GetFiles mine do File.SetUnixFileMode(f, UnixFileMode.UserRead ||| UnixFileMode.GroupRead ||| UnixFileMode.OtherRead)
                let writable = Path.Combine(place, "writable")
                Directory.CreateDirectory writable |> ignore
                File.SetUnixFileMode(writable, everyone ||| UnixFileMode.GroupWrite ||| UnixFileMode.OtherWrite ||| UnixFileMode.StickyBit)
                let out = Path.Combine(writable, "run")
                let asNobody (args: string list) =
                    CliProcess.executeProgram setpriv ([ "--reuid=65534"; "--regid=65534"; "--clear-groups"; CliProcess.path ] @ args) [ "HOME", writable ]
                // The program itself must be reachable by nobody (not so under a private home folder).
                match asNobody [ "--version" ] with
                | code, _, errors when code <> 0 -> printfn "skipped: an unreadable data file (nobody cannot run %s: %s)" CliProcess.path (errors.Trim())
                | _ ->
                let labels = Path.Combine(mine, "train-labels-idx1-ubyte.gz")
                File.SetUnixFileMode(labels, UnixFileMode.None)
                asNobody [ "run"; "--data"; mine; "--strategy"; "sgd"; "--quiet"; "--no-onnx"; "--out"; out ]
                |> expectError "an unreadable data file" 1 [ labels; "permission denied" ]
                Expect.isFalse (Directory.Exists out) "nothing written"
                // The same user runs the same command once the file is readable: it was the file's mode that stopped it.
                File.SetUnixFileMode(labels, UnixFileMode.UserRead ||| UnixFileMode.GroupRead ||| UnixFileMode.OtherRead)
                let code, output, errors = asNobody [ "run"; "--data"; mine; "--strategy"; "sgd"; "--quiet"; "--no-onnx"; "--out"; out ]
                Expect.equal code 0 (sprintf "the readable file runs as nobody (stdout: %s; stderr: %s)" output errors)
        }
    ]

[<Tests>]
let tests =
    testSequenced (testList "faults (real processes)" [ exportCases; verifyCases; runCases ])
