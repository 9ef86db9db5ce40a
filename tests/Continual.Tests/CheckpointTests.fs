/// Checkpoints of real runs of the `continual` program: killed with SIGKILL at many moments, stopped
/// by SIGINT and SIGTERM, continued later with `learn`, and bad learner files.
module Continual.Tests.CheckpointTests

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open Expecto
open Continual
open Continual.Tests.TestData
open Continual.Tests.CliProcess

/// The run's data: 100 training images per class (20 steps per task, 100 in all) and 30 test images.
let private data = [ "--train-per-class"; "100"; "--test-per-class"; "30"; "--quiet" ]

/// The five methods of the issue. EWC's λ 100 diverges on so few examples; λ 1 does not.
let private methods =
    [ "derpp", [ "--strategy"; "derpp"; "--buffer"; "50" ]
      "icarl", [ "--strategy"; "icarl"; "--buffer"; "50" ]
      "lwf + kd", [ "--strategy"; "lwf"; "--distill"; "kd" ]
      "si", [ "--strategy"; "si" ]
      "ewc", [ "--strategy"; "ewc"; "--lambda"; "1" ] ]

/// The accuracy matrices of a results.json.
let private matrices (folder: string) =
    use document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(folder, "results.json")))
    let read (name: string) = [ for row in document.RootElement.GetProperty(name).EnumerateArray() -> [ for v in row.EnumerateArray() -> v.GetDouble() ] ]
    read "classIl", read "taskIl"

/// Both runs' matrices and ONNX files are the same, byte for byte.
let private expectSameRun (label: string) (expected: string) (actual: string) =
    Expect.equal (matrices actual) (matrices expected) (sprintf "%s: the accuracy matrices equal the uninterrupted run's" label)
    for k in 1 .. 5 do
        let file = sprintf "task-%d.onnx" k
        Expect.equal (File.ReadAllBytes(Path.Combine(actual, file))) (File.ReadAllBytes(Path.Combine(expected, file))) (sprintf "%s: %s equals the uninterrupted run's" label file)

let private expectCode (label: string) (expected: int) (code: int, output: string, errors: string) =
    Expect.equal code expected (sprintf "%s: exit code (stdout: %s; stderr: %s)" label output errors)

[<Tests>]
let tests =
    testSequenced <| testList "checkpoints" [
        testCase "runs killed with SIGKILL at seven moments, or stopped by SIGINT and SIGTERM, and resumed each time end as an uninterrupted run; --tasks 1-3 then learn --tasks 4-5 too" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            for (label, options) in methods do
                let folder name = Path.Combine(tmp.Path, label.Replace(' ', '_') + "-" + name)
                let whole = folder "whole"
                execute ([ "run" ] @ options @ data @ [ "--out"; whole ]) [] |> expectCode (label + ", uninterrupted") 0
                // A checkpoint every 7 steps as well as after every task; every kill is a real SIGKILL.
                let crashed = folder "crashed"
                let every = [ "--checkpoint-every"; "7" ]
                let killAt moment = [ "CONTINUAL_KILL_AT", moment ]
                execute ([ "run" ] @ options @ data @ every @ [ "--out"; crashed ]) (killAt "step:13") |> expectCode (label + ", killed at step 13, inside task 1") 137
                let resume = [ "resume"; crashed; "--quiet" ] @ every
                // From step 7 to task 1's end, and the kill right after its checkpoint, between tasks.
                execute resume (killAt "task-end:1") |> expectCode (label + ", killed between tasks") 137
                // Halfway through writing a checkpoint: a temporary file is left, the previous checkpoint is whole.
                execute resume (killAt "checkpoint-write:2") |> expectCode (label + ", killed while writing a checkpoint") 137
                Expect.isNonEmpty (Directory.GetFiles(Path.Combine(crashed, RunFolder.Staging), ".learner.safetensors.*.tmp")) (label + ": the half-written checkpoint is a temporary file")
                // Written in full, before the rename.
                execute resume (killAt "checkpoint-rename:3") |> expectCode (label + ", killed before a checkpoint's rename") 137
                execute resume (killAt "step:70") |> expectCode (label + ", killed at step 70, inside task 4") 137
                execute resume (killAt "task-end:1") |> expectCode (label + ", killed between tasks again") 137
                // And from outside, at whatever moment the process has reached after a random delay.
                let p, _, _ = start resume []
                Threading.Thread.Sleep(Random(label.Length).Next(300, 2500))
                (try p.Kill() with _ -> ())
                p.WaitForExit()
                p.Dispose()
                execute resume [] |> expectCode (label + ", the last resume") 0
                Expect.isEmpty (Directory.GetFiles(crashed, "*.tmp", SearchOption.AllDirectories)) (label + ": no temporary file is left")
                Expect.isFalse (Directory.Exists(Path.Combine(crashed, RunFolder.Staging))) (label + ": everything staged is published")
                expectSameRun (label + " (killed and resumed)") whole crashed
                // SIGINT and SIGTERM, sent by the process to itself at a step: a checkpoint, exit 130 and 143.
                let stopped = folder "stopped"
                let code, _, errors = execute ([ "run" ] @ options @ data @ [ "--out"; stopped ]) (killAt "step:30:INT")
                Expect.equal code 130 (sprintf "%s: SIGINT's exit code (%s)" label errors)
                Expect.stringContains errors (sprintf "continual resume %s" stopped) (label + ": says how to resume")
                let code, _, errors = execute [ "resume"; stopped; "--quiet" ] (killAt "step:75:TERM")
                Expect.equal code 143 (sprintf "%s: SIGTERM's exit code (%s)" label errors)
                execute [ "resume"; stopped; "--quiet" ] [] |> expectCode (label + ", resumed after the signals") 0
                expectSameRun (label + " (stopped by SIGINT and SIGTERM, resumed)") whole stopped
                // Stop after task 3, continue in a new process.
                let later = folder "later"
                execute ([ "run" ] @ options @ data @ [ "--tasks"; "1-3"; "--out"; later ]) [] |> expectCode (label + ", tasks 1-3") 0
                Expect.isFalse (File.Exists(Path.Combine(later, "task-4.onnx"))) (label + ": --tasks 1-3 stops after task 3")
                Expect.equal (fst (matrices later)).Length 3 (label + ": results after task 3 have three rows")
                execute [ "learn"; "--from"; later; "--tasks"; "4-5"; "--quiet" ] [] |> expectCode (label + ", learn tasks 4-5") 0
                expectSameRun (label + " (tasks 1-3, then 4-5)") whole later

        testCase "SIGINT and SIGTERM stop a run at a step with a checkpoint, say how to resume, exit 130 and 143, and the resumed run equals an uninterrupted one" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            let options = [ "--strategy"; "derpp"; "--buffer"; "50"; "--test-per-class"; "30"; "--quiet" ]
            let whole = Path.Combine(tmp.Path, "whole")
            execute ([ "run" ] @ options @ [ "--out"; whole ]) [] |> expectCode "uninterrupted" 0
            for (signal, expected) in [ "INT", 130; "TERM", 143 ] do
                let out = Path.Combine(tmp.Path, signal)
                let p, output, errors = start ([ "run" ] @ options @ [ "--out"; out ]) []
                // After task 1's checkpoint, so that the signal lands inside the run's training.
                // A run stages its files until it publishes them at its end.
                let file = Path.Combine(out, RunFolder.Staging, Learner.FileName)
                let clock = Stopwatch.StartNew()
                while not (File.Exists file) && not p.HasExited && clock.Elapsed.TotalSeconds < 120.0 do
                    Threading.Thread.Sleep 20
                if p.HasExited then failtestf "SIG%s: the run ended before task 1's checkpoint (%s)" signal errors.Result
                use kill = Process.Start("kill", [ "-" + signal; string p.Id ])
                kill.WaitForExit()
                p.WaitForExit()
                Expect.equal p.ExitCode expected (sprintf "SIG%s: exit code (%s)" signal errors.Result)
                Expect.stringContains errors.Result (sprintf "stopped by SIG%s" signal) "says what stopped it"
                Expect.stringContains errors.Result (sprintf "continual resume %s" out) "says how to resume"
                Expect.isFalse (File.Exists(Path.Combine(out, "results.json"))) "no results before the run ends"
                ignore output.Result
                p.Dispose()
                execute [ "resume"; out; "--quiet" ] [] |> expectCode (sprintf "SIG%s, resumed" signal) 0
                expectSameRun (sprintf "stopped by SIG%s and resumed" signal) whole out

        testCase "a missing, truncated, corrupted or other-version learner file, or contradicting options, exit 1 naming the file and change nothing" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "run")
            execute ([ "run"; "--strategy"; "si"; "--tasks"; "1-2"; "--no-onnx"; "--out"; out ] @ data) [] |> expectCode "tasks 1-2" 0
            let file = Path.Combine(out, Learner.FileName)
            let original = File.ReadAllBytes file
            let refused (label: string) (args: string list) (expected: string) =
                let code, output, errors = execute args []
                let said = output + errors
                Expect.equal code 1 (sprintf "%s: exit code (%s)" label said)
                Expect.stringContains said expected (sprintf "%s: the message says why" label)
                Expect.isFalse (said.Contains "   at ") (sprintf "%s: no stack trace" label)
            // Options that contradict the saved configuration, for resume and learn; a wrong first task.
            refused "--lr" [ "learn"; "--from"; out; "--lr"; "0.5" ] "--lr 0.5 contradicts the saved configuration ("
            refused "--strategy" [ "learn"; "--from"; out; "--strategy"; "ewc" ] "--strategy ewc contradicts the saved configuration (si)"
            refused "--xi" [ "learn"; "--from"; out; "--xi"; "0.5" ] "--xi 0.5 contradicts the saved configuration"
            refused "--tasks 4-5" [ "learn"; "--from"; out; "--tasks"; "4-5" ] "the next task is 3, not 4"
            Expect.equal (File.ReadAllBytes file) original "refused commands leave the learner file as it was"
            refused "missing" [ "resume"; Path.Combine(tmp.Path, "nowhere") ] "no such learner file"
            let variant (name: string) (bytes: byte[]) =
                let folder = Path.Combine(tmp.Path, name)
                Directory.CreateDirectory folder |> ignore
                File.WriteAllBytes(Path.Combine(folder, Learner.FileName), bytes)
                folder
            refused "truncated" [ "resume"; variant "truncated" original.[.. original.Length / 2] ] "truncated"
            let flipped = Array.copy original
            flipped.[flipped.Length - 3] <- flipped.[flipped.Length - 3] ^^^ 0x10uy
            refused "corrupted" [ "resume"; variant "corrupted" flipped ] "checksum does not match"
            // A tensor entry of the header changed without changing any size: F32 read as I32.
            let header = Text.Encoding.ASCII.GetBytes "\"dtype\":\"F32\""
            let at = Seq.findIndex (fun i -> original.[i .. i + header.Length - 1] = header) (seq { 0 .. original.Length - header.Length })
            let retyped = Array.copy original
            retyped.[at + 9] <- byte 'I'
            refused "retyped" [ "resume"; variant "retyped" retyped ] "checksum does not match"
            // Another format version, with a valid checksum: rewritten through the safetensors writer.
            let content = Safetensors.read file
            let metadata = content.Metadata |> Map.add "format_version" "2" |> Map.toList
            let otherVersion = Path.Combine(variant "version" [||], Learner.FileName)
            (use stream = File.Create otherVersion
             Safetensors.write stream metadata content.Tensors)
            for (_, t) in content.Tensors do t.Dispose()
            refused "other version" [ "resume"; otherVersion ] "format version 2; this build of Continual reads version 1"
    ]
