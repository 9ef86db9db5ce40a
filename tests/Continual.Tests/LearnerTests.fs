module Continual.Tests.LearnerTests

open System
open System.IO
open System.Threading
open Expecto
open Continual
open Continual.Data
open Continual.Methods
open Continual.Tests.TestData

/// A small configuration on the real Fashion-MNIST files: 5 tasks of 6 steps (batch 10).
let private small (strategy: string) (buffer: int) =
    let d = Experiment.defaults strategy buffer
    let d =
        { d with
            Data = { d.Data with Folder = fashionMnist; TrainPerClass = Some 30; TestPerClass = Some 20 }
            Run = { d.Run with Epochs = 1; BatchSize = 10 } }
    d

/// Settings under which every run stays finite on so few examples: EWC's λ 1 (λ 100 diverges), and a
/// lower learning rate with FitNets.
let private tame (config: Config) =
    let config =
        if config.Distillation |> List.exists (fun d -> DistillationKind.name d.Kind = "fitnets") then
            { config with Run = { config.Run with LearningRate = 0.01 } }
        else config
    if Config.methodName config = "ewc" || Config.penaltyName config = Some "ewc" then
        match Experiment.setOption "lambda" "1" config with
        | Some(Ok c) -> c
        | _ -> failwith "ewc has --lambda"
    else config

/// Every method, every penalty (added to SGD-free methods where that makes sense), every distillation
/// term and every backbone, each once.
let private configurations () : (string * Config) list =
    [ yield! everyMethod small 50
      for backbone in [ "cnn"; "resnet18" ] do
          yield sprintf "si on %s" backbone, { small "si" 0 with Backbone = backbone }
      yield "ewc on resnet18", { small "ewc" 0 with Backbone = "resnet18" } ]

let private matrices (learner: Learner) = learner.Point.Record.ClassIl, learner.Point.Record.TaskIl

/// Runs a configuration through, and again stopping after run step `stopAt` into a learner file that a
/// new learner loads and finishes. Returns both learners' matrices.
let private uninterruptedAndResumed (benchmark: Benchmark) (config: Config) (stopAt: int64) (folder: string) =
    let whole =
        let learner = Learner.createOn benchmark config |> Learner.learnUntil RunHooks.none CancellationToken.None None
        let m = matrices learner
        Learner.dispose learner
        m
    let file = Path.Combine(folder, Learner.FileName)
    let first = Learner.createOn benchmark config
    let mutable steps = 0L
    let hooks =
        { RunHooks.none with
            Checkpoint = fun _ point -> Learner.saveAt file point first
            StopRequested = fun () -> steps <- steps + 1L; steps = stopAt }
    Expect.throwsC (fun () -> Learner.learnUntil hooks CancellationToken.None None first |> ignore) (function
        | RunStopped _ -> ()
        | e -> raise e)
    let resumed = Learner.loadOn benchmark file |> Learner.learnUntil RunHooks.none CancellationToken.None None
    let m = matrices resumed
    Learner.dispose resumed
    whole, m

[<Tests>]
let tests =
    testSequenced <| testList "learner" [
        testCase "saving and loading a learner leaves no tensor alive once it is disposed" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use folder = new TempFolder()
            let config = small "derpp" 50 |> Experiment.withPenalty (Some "si") |> Experiment.withDistillation (fst (List.head DistillationKind.all))
            let benchmark = Experiment.loadBenchmark config
            try
                let file = Path.Combine(folder.Path, Learner.FileName)
                let live () = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount
                let cycle () =
                    let learner = Learner.createOn benchmark config |> Learner.learnUntil RunHooks.none CancellationToken.None (Some 1)
                    Learner.save file learner
                    Learner.dispose learner
                    let loaded = Learner.loadOn benchmark file
                    Learner.save file loaded
                    Learner.dispose loaded
                // One cycle first, so that one-time allocations are not counted.
                cycle ()
                let before = live ()
                cycle ()
                Expect.equal (live ()) before "no tensor outlives a save, a load and the learners' disposal"
            finally
                Benchmarks.dispose benchmark

        testCase "a run stopped mid-task and resumed from its learner file equals an uninterrupted run, for every method, penalty, distillation term and backbone" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use folder = new TempFolder()
            let benchmarks = Collections.Generic.Dictionary<string, Benchmark>()
            try
                for (label, config) in configurations () do
                    let config = tame config
                    let key = sprintf "%A" config.Data
                    if not (benchmarks.ContainsKey key) then benchmarks.[key] <- Experiment.loadBenchmark config
                    let benchmark = benchmarks.[key]
                    // The stop is polled after every step and every task end (6 + 1 per task): the 17th poll is
                    // task 3's third step. JOINT stops inside its one unit.
                    let stopAt = if config.Method = MethodConfig.Joint then 7L else 17L
                    let (wholeClass, wholeTask), (resumedClass, resumedTask) =
                        try uninterruptedAndResumed benchmark config stopAt folder.Path
                        with e -> failtestf "%s: %s" label e.Message
                    Expect.equal resumedClass wholeClass (sprintf "%s: Class-IL matrix" label)
                    Expect.equal resumedTask wholeTask (sprintf "%s: Task-IL matrix" label)
            finally
                for b in benchmarks.Values do Benchmarks.dispose b

        testCase "a run stopped between tasks, or after a task's last step, resumes where it stopped" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use folder = new TempFolder()
            let config = small "icarl" 50
            let benchmark = Experiment.loadBenchmark config
            try
                // Poll 7 follows task 1's end (between tasks); poll 13 follows task 2's last step, before its end.
                for stopAt in [ 7L; 13L ] do
                    let whole, resumed = uninterruptedAndResumed benchmark config stopAt folder.Path
                    Expect.equal resumed whole (sprintf "iCaRL's matrices, stopped at poll %d" stopAt)
            finally
                Benchmarks.dispose benchmark

        testCase "LearnerExport refuses a learner before its first task and inside a task, and writes a verified file after one" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use folder = new TempFolder()
            let config = small "derpp" 50
            let benchmark = Experiment.loadBenchmark config
            try
                let onnx = Path.Combine(folder.Path, "model.onnx")
                let fresh = Learner.createOn benchmark config
                Expect.throwsC (fun () -> Onnx.LearnerExport.export onnx fresh |> ignore) (fun e ->
                    Expect.isTrue (e :? InvalidOperationException && e.Message.Contains "no task") e.Message)
                Expect.isFalse (File.Exists onnx) "nothing written before a task"
                // Stopped inside task 2 (poll 10: its third step): the model is no task's end model.
                let file = Path.Combine(folder.Path, Learner.FileName)
                let mutable polls = 0
                let hooks =
                    { RunHooks.none with
                        Checkpoint = fun _ point -> Learner.saveAt file point fresh
                        StopRequested = fun () -> polls <- polls + 1; polls = 10 }
                Expect.throwsC (fun () -> Learner.learnUntil hooks CancellationToken.None None fresh |> ignore) (function
                    | RunStopped _ -> ()
                    | e -> raise e)
                let inside = Learner.loadOn benchmark file
                try
                    Expect.throwsC (fun () -> Onnx.LearnerExport.export onnx inside |> ignore) (fun e ->
                        Expect.isTrue (e :? InvalidOperationException && e.Message.Contains "inside task 2") e.Message)
                    let learned = Learner.learnTask RunHooks.none CancellationToken.None inside
                    let report = Onnx.LearnerExport.export onnx learned
                    Expect.equal report.Task 2 "the file is task 2's model"
                    Expect.equal report.File "model.onnx" "the chosen file"
                    Expect.equal report.Bytes (FileInfo(onnx).Length) "its size"
                    let _, _, info = Onnx.FileCheck.readFile onnx
                    Expect.equal info.Task 2 "its metadata names task 2"
                    Expect.equal info.ConfigHash (Config.hash config) "and the configuration"
                    Expect.equal info.ClassesSeen [ 0 .. 3 ] "and the classes of tasks 1 and 2"
                    Learner.dispose learned
                with e ->
                    Learner.dispose inside
                    raise e
            finally
                Benchmarks.dispose benchmark
    ]
