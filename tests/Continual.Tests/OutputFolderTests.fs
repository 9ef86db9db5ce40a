/// The output-folder rules of real `continual` processes: one writer at a time, another run's results
/// refused unless --overwrite, and a folder never mixed, whenever a run is killed.
module Continual.Tests.OutputFolderTests

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open Expecto
open Continual
open Continual.Tests.TestData

let private start (args: string list) = CliProcess.start args []

/// Runs `continual` to its end: exit code and everything it said.
let private execute (args: string list) =
    let code, output, errors = CliProcess.execute args []
    code, output + errors

/// The configuration hash of every file of a run in a folder and its staging folder, by file name.
let private hashes (folder: string) : (string * string) list =
    let jsonHash (path: string) (read: JsonElement -> JsonElement) =
        use document = JsonDocument.Parse(File.ReadAllBytes path)
        (read document.RootElement).GetProperty("configHash").GetString()
    [ for path in Directory.GetFiles(folder, "*", SearchOption.AllDirectories) do
          let name = Path.GetFileName path
          match name with
          | "results.json" -> yield name, jsonHash path id
          | n when n = Continual.Cli.OutputFolder.MarkerName -> yield name, jsonHash path id
          | n when n = Learner.FileName ->
              let content = Safetensors.read path
              for (_, t) in content.Tensors do t.Dispose()
              use learner = JsonDocument.Parse(content.Metadata.["learner"])
              yield name, learner.RootElement.GetProperty("configHash").GetString()
          | n when n.StartsWith "task-" && n.EndsWith ".onnx" ->
              match Onnx.Checks.parse (File.ReadAllBytes path) |> Result.bind Onnx.Metadata.read with
              | Ok info -> yield name, info.ConfigHash
              | Error e -> failtestf "%s is not a readable task model: %s" path e
          | _ -> () ]

/// A folder is never mixed: every file of a run carries one configuration hash, and results.json is there
/// only for a finished run (no incomplete marker, every task's model).
let private expectConsistent (label: string) (folder: string) =
    match hashes folder |> List.map snd |> List.distinct with
    | [] | [ _ ] -> ()
    | _ -> failtestf "%s: the folder mixes runs: %A" label (hashes folder)
    if File.Exists(Path.Combine(folder, "results.json")) then
        Expect.isFalse (File.Exists(Path.Combine(folder, Continual.Cli.OutputFolder.MarkerName))) (label + ": published results have no incomplete marker")
        for k in 1 .. 5 do
            Expect.isTrue (File.Exists(Path.Combine(folder, sprintf "task-%d.onnx" k))) (sprintf "%s: published results have task-%d.onnx" label k)

/// Runs another program: exit code and everything it said.
let private execute' (program: string) (args: string list) =
    let code, output, errors = CliProcess.executeProgram program args []
    code, output + errors

let private small seed = [ "run"; "--strategy"; "derpp"; "--buffer"; "50"; "--train-per-class"; "100"; "--test-per-class"; "30"; "--quiet"; "--seed"; string seed ]

[<Tests>]
let tests =
    testSequenced <| testList "output folders" [
        testCase "two runs started together into one folder: one is refused for the lock, the other's files are whole and of one configuration" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "shared")
            // Long enough (6,000 steps) that neither finishes before the other takes the folder.
            let run seed = start [ "run"; "--strategy"; "derpp"; "--buffer"; "50"; "--test-per-class"; "30"; "--quiet"; "--seed"; string seed; "--out"; out ]
            let a, aOut, aErr = run 0
            let b, bOut, bErr = run 1
            a.WaitForExit()
            b.WaitForExit()
            let outcomes = [ a.ExitCode, aOut.Result + aErr.Result; b.ExitCode, bOut.Result + bErr.Result ]
            let codes = outcomes |> List.map fst |> List.sort
            Expect.equal codes [ 0; 1 ] (sprintf "one run finishes, the other is refused: %A" outcomes)
            let refused = outcomes |> List.find (fun (c, _) -> c = 1) |> snd
            Expect.stringContains refused "is in use by another continual process" "the refusal names the lock"
            Expect.isFalse (refused.Contains "   at ") "no stack trace"
            expectConsistent "after two concurrent writers" out
            Expect.isTrue (File.Exists(Path.Combine(out, "results.json"))) "the winner published its results"

        testCase "a folder holding another run's results is refused unless --overwrite, which replaces them whole" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "run")
            let code, said = execute (small 0 @ [ "--out"; out ])
            Expect.equal code 0 said
            let before = hashes out
            let code, said = execute (small 1 @ [ "--out"; out ])
            Expect.equal code 1 said
            Expect.stringContains said "holds the results of another run" "says why"
            Expect.stringContains said "--overwrite" "says how"
            Expect.equal (hashes out) before "the old run is untouched"
            let code, said = execute (small 1 @ [ "--out"; out; "--overwrite" ])
            Expect.equal code 0 said
            expectConsistent "after --overwrite" out
            Expect.notEqual (hashes out) before "the new run replaced the old one"

        testCase "a run into a comparison's folder is refused, and so is a comparison into a run's" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            let compared = Path.Combine(tmp.Path, "compare")
            let code, said = execute [ "compare"; "--strategies"; "sgd"; "--seeds"; "0"; "--train-per-class"; "50"; "--test-per-class"; "20"; "--out"; compared ]
            Expect.equal code 0 said
            let code, said = execute (small 0 @ [ "--out"; compared ])
            Expect.equal code 1 said
            Expect.stringContains said "holds the results of another run" "run refuses the comparison's folder"
            let run = Path.Combine(tmp.Path, "run")
            let code, said = execute (small 0 @ [ "--out"; run; "--no-onnx" ])
            Expect.equal code 0 said
            let code, said = execute [ "compare"; "--strategies"; "sgd"; "--seeds"; "0"; "--train-per-class"; "50"; "--test-per-class"; "20"; "--out"; run ]
            Expect.equal code 1 said
            Expect.stringContains said "holds the results of another run" "compare refuses the run's folder"
            Expect.isFalse (File.Exists(Path.Combine(run, "compare.json"))) "nothing of the comparison was written"

        testCase "a run that diverges after a checkpoint says so in one line, keeps its learner, publishes nothing" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "diverged")
            let code, output, errors =
                CliProcess.execute [ "run"; "--strategy"; "ewc"; "--lambda"; "1e30"; "--train-per-class"; "50"; "--test-per-class"; "20"; "--quiet"; "--out"; out ] []
            Expect.equal code 1 (output + errors)
            let lines = errors.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            Expect.equal lines.Length 1 (sprintf "one line on stderr: %s" errors)
            Expect.stringContains lines.[0] "training diverged" "says what happened"
            Expect.stringContains lines.[0] "no results were written" "says what was not kept"
            Expect.stringContains lines.[0] Learner.FileName "says what was kept"
            Expect.isFalse (File.Exists(Path.Combine(out, "results.json"))) "no results"
            Expect.isTrue (File.Exists(Path.Combine(out, Continual.Cli.OutputFolder.MarkerName))) "the folder is marked incomplete"
            Expect.isTrue (File.Exists(Path.Combine(out, Continual.Cli.OutputFolder.StagingName, Learner.FileName))) "the learner is kept, staged"
            Expect.isEmpty (Directory.GetFiles(out, "task-*.onnx")) "no task model is published"
            expectConsistent "after a diverged run" out

        testCase "runs killed with SIGKILL at 20 random moments, each followed by a fresh run into the same folder, never leave a mixed folder" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "killed")
            let random = Random 20
            let mutable exportChecked = false
            for i in 1 .. 20 do
                // Seeds alternate so that two consecutive runs have different configuration hashes.
                let p, _, _ = start (small (i % 2) @ [ "--out"; out; "--overwrite" ])
                Threading.Thread.Sleep(random.Next(200, 3500))
                (try p.Kill() with _ -> ())
                p.WaitForExit()
                p.Dispose()
                if Directory.Exists out then
                    expectConsistent (sprintf "after kill %d" i) out
                    // Readers refuse a folder marked incomplete (once is enough).
                    if not exportChecked && File.Exists(Path.Combine(out, Continual.Cli.OutputFolder.MarkerName)) then
                        let repository = Path.Combine(tmp.Path, "repository")
                        let code, said = execute [ "export"; out; "--layout"; "triton"; "--to"; repository ]
                        Expect.equal code 1 ("export of an incomplete run: " + said)
                        Expect.stringContains said "did not finish" "export says why"
                        Expect.isFalse (Directory.Exists repository) "export wrote nothing"
                        exportChecked <- true
            let code, said = execute (small 0 @ [ "--out"; out; "--overwrite" ])
            Expect.equal code 0 said
            expectConsistent "after a last whole run" out
            Expect.isEmpty (Directory.GetFiles(out, "*.tmp", SearchOption.AllDirectories)) "the last run removed every temporary file"
            Expect.isFalse (Directory.Exists(Path.Combine(out, Continual.Cli.OutputFolder.StagingName))) "the last run published everything it staged"
            Expect.isTrue (File.Exists(Path.Combine(out, "results.json"))) "the last run published its results"
            Expect.isTrue exportChecked "at least one kill left an incomplete run for export to refuse"

        testCase "an export into a place that fills up exits 1 with one line and leaves nothing there" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            let run = Path.Combine(tmp.Path, "run")
            let code, said = execute (small 0 @ [ "--out"; run ])
            Expect.equal code 0 said
            let place = Path.Combine(tmp.Path, "small")
            Directory.CreateDirectory place |> ignore
            // Five models of about 360 KB each do not fit in 1 MiB: the disk fills half-way.
            let mount = execute' "mount" [ "-t"; "tmpfs"; "-o"; "size=1m"; "tmpfs"; place ]
            if fst mount <> 0 then skiptest (sprintf "skipped: mount -t tmpfs was refused (%s)" (snd mount))
            try
                let p, output, errors = start [ "export"; run; "--layout"; "triton"; "--to"; Path.Combine(place, "repository") ]
                p.WaitForExit()
                Expect.equal p.ExitCode 1 (output.Result + errors.Result)
                let lines = errors.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                Expect.equal lines.Length 1 (sprintf "one line on stderr: %s" errors.Result)
                Expect.stringStarts lines.[0] "error:" "an error line"
                Expect.isEmpty (Directory.GetFileSystemEntries place) "nothing is left in the full place"
                p.Dispose()
            finally
                execute' "umount" [ place ] |> ignore

        testCase "a place without room for a run's files is refused before training, and nothing is left" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            let place = Path.Combine(tmp.Path, "small")
            Directory.CreateDirectory place |> ignore
            // A 1 MiB tmpfs: a real full-disk condition without filling the machine's disk.
            let mount = execute' "mount" [ "-t"; "tmpfs"; "-o"; "size=1m"; "tmpfs"; place ]
            if fst mount <> 0 then skiptest (sprintf "skipped: mount -t tmpfs was refused (%s)" (snd mount))
            try
                let out = Path.Combine(place, "run")
                let code, said = execute (small 0 @ [ "--out"; out ])
                Expect.equal code 1 said
                Expect.stringContains said "MiB free" "says how much room there is and how much is needed"
                Expect.isFalse (said.Contains "   at ") "no stack trace"
                Expect.isFalse (Directory.Exists out) "nothing was left"
            finally
                execute' "umount" [ place ] |> ignore
    ]
