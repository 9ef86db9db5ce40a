module Continual.Tests.GrowingHeadTests

open System
open System.IO
open System.Threading
open Expecto
open Continual
open Continual.Data
open Continual.Methods
open Continual.Models
open Continual.Penalties
open Continual.Tests.TestData
open TorchSharp

let private liveTensors () = DisposeScopeManager.Statistics.ThreadTotalLiveCount

/// A labelled set of 8×8 grey inputs whose classes differ in mean (learnable in a few steps).
let private syntheticSet (seed: int) (classes: int) (perClass: int) : LabelledSet =
    let rng = Random(seed)
    let labels = [| for c in 0 .. classes - 1 do for _ in 1 .. perClass -> c |]
    let pixels = [| for l in labels do for p in 0 .. 63 -> float32 (min 1.0 (max 0.0 (0.1 * float ((l + p) % (classes + 1)) + 0.3 * rng.NextDouble()))) |]
    Benchmarks.ofFloats pixels 64 labels

/// A benchmark of `classes` classes in tasks of two, named with a prefix.
let private synthetic (prefix: string) (classes: int) : Benchmark =
    { Name = "synthetic-" + prefix
      InputShape = (1, 8, 8)
      NumClasses = classes
      ClassNames = [ for c in 0 .. classes - 1 -> sprintf "%s%d" prefix c ]
      Train = syntheticSet 1 classes 20
      Test = syntheticSet 2 classes 5
      Tasks = Benchmarks.splitTasks classes 2 }

let private config (strategy: string) (buffer: int) =
    let d = Experiment.defaults strategy buffer
    { d with Head = HeadKind.Growing; Run = { d.Run with BatchSize = 10; LearningRate = 0.01 } }

/// Every method, every penalty and every distillation term, each once, with a growing head.
let private configurations () : (string * Config) list =
    [ yield! everyMethod config 30
      yield "si on cnn", { config "si" 0 with Backbone = "cnn" }
      yield "ewc on resnet18", { config "ewc" 0 with Backbone = "resnet18" } ]

let private matrices (learner: Learner) = learner.Point.Record.ClassIl, learner.Point.Record.TaskIl

let private copies (ts: Modules.Parameter seq) = [ for t in ts -> t.detach().clone() ]

/// Exact equality of two tensors.
let private same (a: Tensor) (b: Tensor) = a.shape = b.shape && (Scalars.toBool (a.eq(b).all()))

/// The invariants of one growth step on a learner after its first task.
let private checkGrowth (name: string) (learner: Learner) =
    let state = learner.Point.State
    let settings = Experiment.settings learner.Config
    let before = copies (state.Model.parameters ())
    use probe = torch.rand([| 7L; 64L |])
    state.Model.eval ()
    let oldLogits = (use _ = torch.no_grad () in state.Model.forward probe)
    let penaltyBefore = Training.penaltyValue state
    // Building a CNN or a ResNet leaves a few handles of TorchSharp's convolution modules alive after
    // the module is disposed (the same with any snapshot): measured here, not counted against the growth.
    let artefact =
        let before = liveTensors ()
        (Backbones.create state.Model.Architecture).Dispose()
        liveTensors () - before
    let live = liveTensors ()
    let width = Backbones.classes state.Model.Architecture
    let target = width + 2
    let grown = Training.growHead settings target state
    Expect.equal (liveTensors ()) (live + artefact) (name + ": the growth keeps the live tensor count")
    Expect.equal (Backbones.classes grown.Model.Architecture) target (name + ": two more outputs")
    grown.Model.eval ()
    let newLogits = (use _ = torch.no_grad () in grown.Model.forward probe)
    grown.Model.train ()
    // The old outputs' weights are the same numbers; a wider matrix product may round differently in the
    // last bit (the library blocks it by shape), so the logits are compared within float32 rounding.
    let difference = Scalars.toFloat32 ((newLogits.narrow(1L, 0L, int64 width) - oldLogits).abs().max())
    Expect.isLessThanOrEqual difference 1e-5f (sprintf "%s: old logits unchanged on any input (largest difference %g)" name difference)
    Expect.equal (Training.penaltyValue grown) penaltyBefore (name + ": the penalties' value is unchanged by the growth")
    let after = [ for p in grown.Model.parameters () -> p :> Tensor ]
    for (b, a) in List.zip before after do
        if b.shape = a.shape then Expect.isTrue (same b a) (name + ": a parameter outside the head is unchanged")
        else
            Expect.isTrue (same (a.narrow(0L, 0L, b.shape.[0])) b) (name + ": the old rows are kept exactly")
            let fresh = a.narrow(0L, b.shape.[0], a.shape.[0] - b.shape.[0])
            if a.shape.Length = 2 then Expect.isTrue ((Scalars.toFloat32 (fresh.abs().sum())) > 0.0f) (name + ": new weight rows are initialised")
            elif learner.Config.Backbone = "mlp" then Expect.isTrue ((Scalars.toFloat32 (fresh.abs().sum())) = 0.0f) (name + ": the MLP's new biases are zero")
    let shapes = [ for p in grown.Model.parameters () -> p.shape ]
    for m in grown.Methods do
        for p in m.Penalties() do
            Expect.equal p.Penalty.Shapes shapes (name + ": the penalty follows the parameters")
            Expect.equal p.Penalty.Anchor.shape.[0] grown.Parameters.Values.shape.[0] (name + ": the flat anchor follows")
    grown.Buffer |> Option.iter (fun b -> Expect.equal b.Logits.shape.[1] (int64 target) (name + ": the buffer's logits follow the head"))
    Expect.isTrue (FlatParameters.isBound grown.Parameters grown.Model) (name + ": the grown model is laid out flat")
    Training.dispose grown

[<Tests>]
let tests =
    testSequenced <| testList "growing head" [
        testCase "every method, penalty and distillation term grows its head over three tasks: old rows kept, state follows, save → load → continue equals continuing" <| fun () ->
            let benchmark = synthetic "c" 6
            use folder = new TempFolder()
            try
                for (name, c) in configurations () do
                    // The growth step alone, after the first task.
                    let first = Learner.createOn benchmark c
                    Expect.equal (Backbones.classes first.Architecture) 2 (name + ": the head starts with the first task's classes")
                    let first = Learner.learnTask RunHooks.none CancellationToken.None first
                    checkGrowth name first
                    // A whole run, and one stopped inside the second task (after the growth) and resumed.
                    let whole = Learner.createOn benchmark c |> Learner.learnUntil RunHooks.none CancellationToken.None None
                    Expect.equal (Backbones.classes whole.Architecture) 6 (name + ": the head ends with every class")
                    let wholeMatrices = matrices whole
                    Learner.dispose whole
                    let file = Path.Combine(folder.Path, Learner.FileName)
                    let stopped = Learner.createOn benchmark c
                    let mutable steps = 0L
                    let stopAt = if Config.methodName c = "joint" then 3L else 6L
                    let hooks =
                        { RunHooks.none with
                            Checkpoint = fun _ point -> Learner.saveAt file point stopped
                            StopRequested = fun () -> steps <- steps + 1L; steps = stopAt }
                    Expect.throwsC (fun () -> Learner.learnUntil hooks CancellationToken.None None stopped |> ignore) (function
                        | RunStopped _ -> ()
                        | e -> raise e)
                    let resumed = Learner.loadOn benchmark file |> Learner.learnUntil RunHooks.none CancellationToken.None None
                    Expect.equal (matrices resumed) wholeMatrices (name + ": resumed after the growth equals uninterrupted")
                    Learner.dispose resumed
            finally Benchmarks.dispose benchmark

        testCase "a fixed head never grows, and its configuration's JSON has no head key" <| fun () ->
            let c = { config "sgd" 0 with Head = HeadKind.Fixed }
            Expect.isFalse ((Config.toJson c).Contains "head") "fixed heads leave the configuration (and its hash) as before"
            Expect.isTrue ((Config.toJson { c with Head = HeadKind.Growing }).Contains "\"head\":\"growing\"") "growing heads are written"
            let benchmark = synthetic "f" 6
            try
                let learner = Learner.createOn benchmark c
                Expect.equal (Backbones.classes learner.Architecture) 6 "a fixed head has every class"
                Learner.dispose learner
            finally Benchmarks.dispose benchmark

        testCase "a task added to a learner is learned with a grown head, evaluated with the others, and reloads with a loader" <| fun () ->
            let benchmark = synthetic "a" 4
            let added = { synthetic "b" 2 with Tasks = [ { Index = 0; Classes = [ 0; 1 ] } ] }
            use folder = new TempFolder()
            try
                for strategy, buffer in [ "derpp", 30; "icarl", 30; "lwf", 0; "ewc", 0 ] do
                    let c = Experiment.defaults strategy buffer
                    let c = { c with Run = { c.Run with LearningRate = 0.01 } }
                    let learner = Learner.createOn benchmark c |> Learner.learnUntil RunHooks.none CancellationToken.None None
                    let source = { Kind = "test"; Path = "b"; Options = Map.ofList [ "k", "v" ] }
                    let learner = Learner.addTask source added learner
                    Expect.equal learner.Benchmark.ClassNames [ "a0"; "a1"; "a2"; "a3"; "b0"; "b1" ] "names appended"
                    Expect.equal (learner.Benchmark.Tasks |> List.last).Classes [ 4; 5 ] "global indices after the learner's"
                    let file = Path.Combine(folder.Path, Learner.FileName)
                    Learner.save file learner
                    let inProcess = Learner.learnTask RunHooks.none CancellationToken.None learner
                    Expect.equal (Backbones.classes inProcess.Architecture) 6 (strategy + ": the head grew for the added task")
                    Expect.equal (Learner.evaluate inProcess).ClassIl.Length 3 "evaluated on every task"
                    Expect.throwsT<LearnerFileError> (fun () -> Learner.loadOn benchmark file |> ignore) "a learner with added tasks needs a loader"
                    let loader (s: TaskSource) =
                        Expect.equal s source "the recorded source"
                        { added with Train = Benchmarks.takePerClass 1000 added.Train; Test = Benchmarks.takePerClass 1000 added.Test }
                    let reloaded = Learner.loadOnWith loader benchmark file |> Learner.learnTask RunHooks.none CancellationToken.None
                    Expect.equal (matrices reloaded) (matrices inProcess) (strategy + ": reloaded and continued equals continued in process")
                    Expect.isSome (Metrics.forgetting (fst (matrices reloaded))) "forgetting over the rows of a stream that grew"
                    Learner.dispose reloaded
                    Learner.dispose inProcess
            finally
                Benchmarks.dispose benchmark
                Benchmarks.dispose added

        testCase "adding a task refuses a known class name, a test label never trained and inputs of another shape" <| fun () ->
            let benchmark = synthetic "a" 4
            let source = { Kind = "test"; Path = "x"; Options = Map.empty }
            let learner = Learner.createOn benchmark (Experiment.defaults "sgd" 0)
            try
                let clash = { synthetic "a" 2 with Tasks = [ { Index = 0; Classes = [ 0; 1 ] } ] }
                let error = Expect.throwsC (fun () -> Learner.addTask source clash learner |> ignore) (function TaskDataError m -> m | e -> raise e)
                Expect.stringContains error "the same class name in two tasks" "names the problem"
                Benchmarks.dispose clash
                let untrained =
                    let t = synthetic "u" 2
                    let train = Benchmarks.selectClasses [ 0 ] t.Train
                    t.Train.Dispose()
                    { t with Train = train }
                let error = Expect.throwsC (fun () -> Learner.addTask source untrained learner |> ignore) (function TaskDataError m -> m | e -> raise e)
                Expect.stringContains error "a test label that never appears in training" "names the problem"
                Benchmarks.dispose untrained
                let wide = { synthetic "w" 2 with InputShape = (1, 4, 16) }
                Expect.throwsC (fun () -> Learner.addTask source wide learner |> ignore) (function TaskDataError _ -> () | e -> raise e)
                Benchmarks.dispose wide
            finally
                Learner.dispose learner
                Benchmarks.dispose benchmark ]
