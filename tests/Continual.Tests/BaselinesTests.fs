module Continual.Tests.BaselinesTests

open System
open System.Threading
open Expecto
open Continual
open Continual.Data
open Continual.Methods
open Continual.Models
open TorchSharp

/// A labelled set of 8×8 grey inputs whose classes differ in mean (learnable in a few steps).
let private syntheticSet (seed: int) (classes: int) (perClass: int) : LabelledSet =
    let rng = Random(seed)
    let labels = [| for c in 0 .. classes - 1 do for _ in 1 .. perClass -> c |]
    let pixels = [| for l in labels do for p in 0 .. 63 -> float32 (min 1.0 (max 0.0 (0.1 * float ((l + p) % (classes + 1)) + 0.3 * rng.NextDouble()))) |]
    Benchmarks.ofFloats pixels 64 labels

/// Four classes in two tasks of two.
let private synthetic () : Benchmark =
    { Name = "synthetic-baselines"
      InputShape = (1, 8, 8)
      NumClasses = 4
      ClassNames = [ "a"; "b"; "c"; "d" ]
      Train = syntheticSet 1 4 20
      Test = syntheticSet 2 4 5
      Tasks = Benchmarks.splitTasks 4 2 }

/// A benchmark freed at the end of a test.
type private BenchmarkHandle(value: Benchmark) =
    member _.Value = value
    interface IDisposable with
        member _.Dispose() = Benchmarks.dispose value

let private config (strategy: string) (buffer: int) =
    let d = Experiment.defaults strategy buffer
    { d with Run = { d.Run with BatchSize = 10; LearningRate = 0.05 } }

/// The parameters of the backbone (everything but the classifier) and of the classifier, copied.
let private parts (model: Backbone) =
    let classifier = Set.ofSeq [ for p in model.Classifier.parameters () -> p.Handle ]
    let all = [ for p in model.parameters () -> classifier.Contains p.Handle, p.detach().clone() ]
    all |> List.filter (fst >> not) |> List.map snd, all |> List.filter fst |> List.map snd

let private eq (x: Tensor) (y: Tensor) = x.shape = y.shape && (Scalars.toBool (x.eq(y).all()))

let private same (a: Tensor list) (b: Tensor list) = List.forall2 eq a b

/// Runs a configuration task by task: the state after task 1 and after the last task.
let private runTwice (config: Config) (benchmark: Benchmark) =
    let architecture = Backbones.ofName config.Backbone benchmark.InputShape benchmark.NumClasses
    let strategy = Experiment.strategy config
    let settings = Experiment.settings config
    let initial = Training.initialise architecture benchmark strategy settings
    let initialParts = parts initial.Model
    let first = Training.runFrom architecture benchmark strategy settings RunHooks.none CancellationToken.None (Some 0) { State = initial; Record = RunRecord.empty; Position = None }
    let afterFirst = parts first.State.Model
    let last = Training.runFrom architecture benchmark strategy settings RunHooks.none CancellationToken.None None { State = first.State; Record = TrainingOutcome.record first; Position = None }
    initialParts, afterFirst, last

[<Tests>]
let tests =
    testSequenced <| testList "lecture baselines" [
        test "metrics on a hand-built matrix: per-task forgetting, intransigence, old and new, forward transfer" {
            let r = [| [| 90.0; 10.0; 20.0 |]; [| 80.0; 85.0; 15.0 |]; [| 70.0; 75.0; 95.0 |] |]
            Expect.equal (Metrics.forgettingPerTask r) (Some [| 20.0; 10.0 |]) "max over earlier rows minus the last"
            Expect.equal (Metrics.intransigence r [| 95.0; 90.0; 100.0 |]) (Some 5.0) "reference minus the diagonal"
            Expect.equal (Metrics.oldTaskAccuracy r) (Some 72.5) "mean of the last row but its last entry"
            Expect.equal (Metrics.newTaskAccuracy r) 95.0 "the last row's last entry"
            Expect.equal (Metrics.forwardTransfer r [| 10.0; 10.0; 10.0 |]) (Some 2.5) "R[j-1][j] minus the initial model's"
            Expect.equal (Metrics.oldTaskAccuracy [| [| 50.0 |] |]) None "a single task has no old tasks"
            Expect.equal (Metrics.intransigence [| [| 90.0; 10.0 |] |] [| 1.0; 2.0 |]) None "JOINT's single row has no diagonal"
            Expect.throws (fun () -> Metrics.intransigence r [| 1.0 |] |> ignore) "a reference of the wrong length is refused"
        }

        test "finetune-fc changes only the classifier, in every task" {
            use benchmark = new BenchmarkHandle(synthetic ())
            let initial, afterFirst, last = runTwice (config "finetune-fc" 0) benchmark.Value
            let backbone, classifier = parts last.State.Model
            Expect.isTrue (same (fst initial) (fst afterFirst) && same (fst initial) backbone) "the backbone stays as initialised"
            Expect.isFalse (same (snd initial) classifier) "the classifier trained"
            Training.dispose last.State
        }

        test "feature-extraction trains everything in task 1, then leaves the backbone unchanged" {
            use benchmark = new BenchmarkHandle(synthetic ())
            let initial, afterFirst, last = runTwice (config "feature-extraction" 0) benchmark.Value
            let backbone, classifier = parts last.State.Model
            Expect.isFalse (same (fst initial) (fst afterFirst)) "task 1 trains the backbone"
            Expect.isTrue (same (fst afterFirst) backbone) "task 2 leaves the backbone bit for bit"
            Expect.isFalse (same (snd afterFirst) classifier) "task 2 trains the classifier"
            Training.dispose last.State
        }

        test "lfl's penalty is zero at the old features and positive elsewhere; its old outputs stay frozen" {
            use old = torch.rand([| 5L; 7L |])
            Expect.equal ((Lfl.penalty old old).item<float32> ()) 0.0f "zero at the old features"
            use moved = old.add(Scalars.cached 0.1)
            Expect.floatClose Accuracy.medium (float ((Lfl.penalty old moved).item<float32> ())) (0.5 * 7.0 * 0.01) "½ mean_n Σ_d 0.1²"
            use benchmark = new BenchmarkHandle(synthetic ())
            let _, afterFirst, last = runTwice (config "lfl" 0) benchmark.Value
            let backbone, classifier = parts last.State.Model
            let weight, bias = (snd afterFirst).[0], (snd afterFirst).[1]
            Expect.isTrue (eq (weight.narrow(0L, 0L, 2L)) (classifier.[0].narrow(0L, 0L, 2L))) "old classes' weight rows unchanged"
            Expect.isTrue (eq (bias.narrow(0L, 0L, 2L)) (classifier.[1].narrow(0L, 0L, 2L))) "old classes' biases unchanged"
            Expect.isFalse (eq (weight.narrow(0L, 2L, 2L)) (classifier.[0].narrow(0L, 2L, 2L))) "new classes' rows train"
            Expect.isFalse (same (fst afterFirst) backbone) "the backbone trains"
            Expect.equal last.Footprint.[1].Snapshots (Footprint.moduleBytes last.State.Model) "one snapshot of the model kept"
            Training.dispose last.State
        }

        test "multi-head masks each row to its task's head; Task-IL runs; single-head strategies refuse it" {
            use taskOfClass = Heads.taskOfClass torch.CPU [ [ 0; 1 ]; [ 2; 3 ] ]
            use logits = torch.zeros([| 2L; 4L |])
            use labels = torch.tensor([| 0L; 3L |])
            use masked = Heads.mask { Classes = [ [ 0; 1 ]; [ 2; 3 ] ]; TaskOfClass = taskOfClass } labels logits
            let values = masked.data<float32>().ToArray()
            Expect.equal (values |> Array.map Single.IsNegativeInfinity) [| false; false; true; true; true; true; false; false |] "each row keeps its own head"
            use benchmark = new BenchmarkHandle(synthetic ())
            for name in [ "sgd"; "lwf"; "feature-extraction"; "ewc" ] do
                let c = { config name 0 with Heads = HeadCount.Multi }
                Expect.isEmpty (Experiment.validate c) (name + " accepts one head per task")
                let _, _, last = runTwice c benchmark.Value
                Expect.isGreaterThan (Metrics.averageAccuracy last.TaskIl) 50.0 (name + ": Task-IL above chance with one head per task")
                Training.dispose last.State
            for name in [ "der"; "derpp"; "icarl" ] do
                let errors = Experiment.validate { config name 50 with Heads = HeadCount.Multi }
                Expect.exists errors (fun e -> e.Option = Some "heads" && e.Message.Contains name) (name + " refuses --heads multi, naming itself")
            // A learner (the CLI's run, C#'s learners) trains with the same heads as Experiment.runOn, and
            // one head per task trains differently from one head.
            let multi = { config "sgd" 0 with Heads = HeadCount.Multi }
            let viaLearner = Learner.learnUntil RunHooks.none CancellationToken.None None (Learner.createOn benchmark.Value multi)
            let viaRun = Experiment.runOn benchmark.Value multi RunHooks.none CancellationToken.None
            let single = Experiment.runOn benchmark.Value (config "sgd" 0) RunHooks.none CancellationToken.None
            Expect.equal viaLearner.Point.Record.TaskIl viaRun.Outcome.TaskIl "the learner trains with one head per task too"
            Expect.notEqual viaRun.Outcome.ClassIl single.Outcome.ClassIl "one head per task trains differently"
            Learner.dispose viaLearner
            Experiment.release viaRun
            Experiment.release single
            let distilled = { config "sgd" 0 with Heads = HeadCount.Multi } |> Experiment.withDistillation Kd
            Expect.exists (Experiment.validate distilled) (fun e -> e.Option = Some "heads") "distillation terms refuse it"
        }

        test "the footprint matches the tensors each method keeps" {
            use benchmark = new BenchmarkHandle(synthetic ())
            let _, _, derpp = runTwice (config "derpp" 50) benchmark.Value
            let f = derpp.Footprint.[1]
            Expect.equal f.Replay (50L * 64L * 4L + 50L * 8L) "DER++ 50: examples (float32) and labels (int64)"
            Expect.equal f.Logits (50L * 4L * 4L) "DER++ 50: logits over 4 classes (float32)"
            Expect.equal (Footprint.total f) (f.Replay + f.Logits) "nothing else"
            Training.dispose derpp.State
            let p = (64L * 100L + 100L) + (100L * 100L + 100L) + (100L * 4L + 4L)
            let _, _, ewc = runTwice (config "ewc" 0) benchmark.Value
            Expect.equal ewc.Footprint.[0].Importance (2L * p * 4L) "EWC after task 1: the Fisher and the penalty's curvature"
            Expect.equal ewc.Footprint.[0].Anchors (2L * p * 4L) "EWC after task 1: the anchor and the penalty's anchor"
            Expect.equal ewc.Footprint.[1].Importance (3L * p * 4L) "EWC keeps one Fisher per task"
            Training.dispose ewc.State
            let _, _, l2 = runTwice (config "l2" 0) benchmark.Value
            Expect.equal l2.Footprint.[1] { Footprint.zero with Importance = p * 4L; Anchors = p * 4L } "L2: one curvature and one anchor"
            Training.dispose l2.State
            let _, _, sgd = runTwice (config "sgd" 0) benchmark.Value
            Expect.equal (Footprint.total sgd.Footprint.[1]) 0L "SGD keeps nothing"
            Training.dispose sgd.State
        }

        test "the initial model's accuracy is measured without changing a run" {
            use benchmark = new BenchmarkHandle(synthetic ())
            let _, _, last = runTwice (config "sgd" 0) benchmark.Value
            Expect.equal last.InitialClassIl.Length 2 "one figure per task"
            // The same run without the initial evaluation (a record that has it already) ends identical.
            let c = config "sgd" 0
            let architecture = Backbones.ofName c.Backbone benchmark.Value.InputShape benchmark.Value.NumClasses
            let strategy = Experiment.strategy c
            let settings = Experiment.settings c
            let state = Training.initialise architecture benchmark.Value strategy settings
            // Measured beside the first task, on a copy: the figures of the untrained model evaluated in place.
            let testSets = Evaluation.testSets benchmark.Value
            let inPlace = Training.initialAccuracies settings testSets state.Model
            for (_, set) in testSets do set.Dispose()
            Expect.equal (Some last.InitialClassIl) (inPlace |> Option.map (fun a -> a.ClassIl)) "the initial Class-IL figures"
            Expect.equal (Some last.InitialTaskIl) (inPlace |> Option.map (fun a -> a.TaskIl)) "the initial Task-IL figures"
            let skipped = { RunRecord.empty with InitialClassIl = [| 0.0; 0.0 |]; InitialTaskIl = [| 0.0; 0.0 |] }
            let other = Training.runFrom architecture benchmark.Value strategy settings RunHooks.none CancellationToken.None None { State = state; Record = skipped; Position = None }
            Expect.equal other.ClassIl last.ClassIl "same Class-IL matrix"
            Expect.isTrue (eq other.State.Parameters.Values last.State.Parameters.Values) "same final parameters"
            let grown = Experiment.runOn benchmark.Value { config "sgd" 0 with Head = HeadKind.Growing } RunHooks.none CancellationToken.None
            Expect.isEmpty grown.Outcome.InitialClassIl "a growing head has no forward-transfer baseline (later tasks have no outputs yet)"
            Experiment.release grown
            Training.dispose other.State
            Training.dispose last.State
        }
    ]
