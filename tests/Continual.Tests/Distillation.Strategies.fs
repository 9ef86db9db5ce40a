/// Example-based tests of the distillation methods (Methods/Lwf.fs, Icarl.fs, DistillationTerm.fs) and the
/// shell phases they need (Training.fs): LwF's warm-up and terms,
/// iCaRL's memory and nearest-mean classifier, the --distill terms, and the shell changes they need.
module Continual.Tests.DistillationStrategies

open Expecto
open TorchSharp
open Continual
open Continual.Data
open Continual.Models
open Continual.Replay
open Continual.Methods

let private features = 12
let private architecture = Mlp(features, [ 16; 8 ], 10)

/// A labelled set of `perClass` examples of each class, inputs drawn around a class-dependent centre
/// so the classes can be learned (stored as float32, so `Stored` is what the model is fed).
let private syntheticSet (seed: int64) (classes: int list) (perClass: int) : LabelledSet =
    torch.manual_seed seed |> ignore
    let labels = [| for c in classes do for _ in 1 .. perClass -> c |]
    use noise = torch.rand([| int64 labels.Length; int64 features |])
    let centres = Array.init 10 (fun c -> Array.init features (fun j -> if j % 10 = c then 1.0f else 0.0f))
    let centreValues : float32[] = labels |> Array.collect (fun c -> centres.[c])
    use centre = torch.tensor(centreValues, dimensions = System.ReadOnlySpan<int64>([| int64 labels.Length; int64 features |]))
    use scaled = noise.mul(Scalars.cached 0.5)
    { Stored = scaled.add(centre)
      Labels = torch.tensor(labels |> Array.map int64, dtype = torch.ScalarType.Int64)
      LabelArray = labels
      Normalisation = None }

let private context (model: Backbone) (task: int) (train: LabelledSet) : TaskContext =
    { Task = task
      Classes = [ 2 * task; 2 * task + 1 ]
      SeenClasses = [ 0 .. 2 * task + 1 ]
      Train = train
      Model = model
      Parameters = [ for p in model.parameters () -> p :> Tensor ]
      Architecture = architecture
      Device = torch.CPU
      LearningRate = 0.1
      BatchSize = 10
      Embed = Training.embed model
      EmbedRows = Training.embedRows model torch.CPU System.Threading.CancellationToken.None
      Cancellation = System.Threading.CancellationToken.None }

/// A method's task start as the shell runs it: its warm-up when it asks for one, then BeginTask; what
/// the transitions drop is freed.
let private begin' (context: TaskContext) (m: MethodInstance) =
    let m =
        match m.WarmUp context with
        | Some(warmUp, resume) -> Training.phase (fun _ -> resume (Training.warmUpClassifier context warmUp)) m
        | None -> m
    Training.phase (fun m -> m.BeginTask context) m

/// A method's task end, freeing what it drops.
let private end' (context: TaskContext) (m: MethodInstance) = Training.phase (fun m -> m.EndTask context) m

let private freshModel (seed: int64) =
    torch.manual_seed seed |> ignore
    Backbones.create architecture

let private sameValues (a: Tensor) (b: Tensor) = Scalars.toBool (a.eq(b).all())

let private parameterValues (m: torch.nn.Module) = [ for p in m.parameters () -> p.detach().clone() ]

let private view (model: Backbone) (set: LabelledSet) (task: int) : StepView =
    { Batch = { Inputs = set.Stored; Labels = set.Labels; LabelArray = set.LabelArray; Task = task }
      Output = model.ForwardWithFeatures set.Stored
      Replay = []
      Model = model
      Parameters = [ for p in model.parameters () -> p :> Tensor ]; Heads = None }

let private disposeSet (s: LabelledSet) = s.Dispose()

[<Tests>]
let lwfTests =
    testSequenced <| testList "strategies.lwf" [
        testCase "the warm-up trains only the new classes' rows of the classifier" <| fun () ->
            use _ = torch.NewDisposeScope()
            use model = freshModel 1L
            let train = syntheticSet 2L [ 2; 3 ] 20
            let before = parameterValues model
            let classifier = model.Classifier
            Training.warmUpClassifier (context model 1 train) { Epochs = 1; Rng = Random.create 3L } |> ignore
            let after = parameterValues model
            let classifierCount = Seq.length (classifier.parameters ())
            let hiddenBefore, hiddenAfter = List.take (before.Length - classifierCount) before, List.take (after.Length - classifierCount) after
            for (b, a) in List.zip hiddenBefore hiddenAfter do
                Expect.isTrue (sameValues b a) "the features stay frozen"
            let weightBefore, weightAfter = before.[before.Length - 2], after.[after.Length - 2]
            for c in 0 .. 9 do
                let same = sameValues weightBefore.[int64 c] weightAfter.[int64 c]
                if c = 2 || c = 3 then Expect.isFalse same (sprintf "class %d's row learns" c)
                else Expect.isTrue same (sprintf "class %d's row is untouched" c)

        testCase "LwF has CE alone on the first task, CE plus the soft-target term afterwards, balanced by |Y_old|/|Y_seen| when asked" <| fun () ->
            use _ = torch.NewDisposeScope()
            use model = freshModel 4L
            let first, second = syntheticSet 5L [ 0; 1 ] 10, syntheticSet 6L [ 2; 3 ] 10
            let settings = Lwf.Settings.Default
            let names (terms: LossTerm list) = terms |> List.map (fun t -> t.Name)
            let e0 = Method.pack (Lwf.method settings) (Lwf.initial 0L) |> begin' (context model 0 first)
            Expect.equal (names (e0.Terms(view model first 0))) [ "ce" ] "task 1: CE only"
            let e1 = e0 |> end' (context model 0 first) |> begin' (context model 1 second)
            let plain = e1.Terms(view model second 1)
            Expect.equal (names plain) [ "ce"; "lwf.kd" ] "task 2: CE and the soft-target term"
            // The same run with balancing, on an identical model (the warm-up changes the classifier).
            use twin = freshModel 4L
            let balanced = Method.pack (Lwf.method { settings with Balanced = true }) (Lwf.initial 0L) |> begin' (context twin 0 first)
            let b1 = balanced |> end' (context twin 0 first) |> begin' (context twin 1 second)
            let bt = b1.Terms(view twin second 1)
            // Two old classes among four seen: λ = 1/2 on both terms.
            for (p, b) in List.zip plain bt do
                Expect.floatClose Accuracy.medium (Scalars.toFloat b.Value) (0.5 * (Scalars.toFloat p.Value)) (sprintf "%s is halved" p.Name)
            for e in [ e1; b1 ] do Method.dispose e
            disposeSet first
            disposeSet second
    ]

[<Tests>]
let icarlTests =
    testSequenced <| testList "strategies.icarl" [
        testCase "iCaRL splits its memory evenly over the classes seen and trains on its exemplars" <| fun () ->
            use _ = torch.NewDisposeScope()
            use model = freshModel 7L
            let first, second = syntheticSet 8L [ 0; 1 ] 30, syntheticSet 9L [ 2; 3 ] 30
            let counts (m: MethodInstance) = Exemplars.counts (Method.stateOf<Icarl.State> m).Exemplars
            let e0 = Method.pack (Icarl.method { Memory = 20 }) Icarl.initial |> begin' (context model 0 first)
            Expect.isNone (e0.ExtraTrainingData()) "no exemplars before the first task ends"
            let e1 = e0 |> end' (context model 0 first)
            Expect.equal (counts e1) [ 0, 10; 1, 10 ] "20 slots over 2 classes"
            let e2 = e1 |> begin' (context model 1 second)
            match e2.ExtraTrainingData() with
            | Some extra ->
                Expect.equal extra.LabelArray (Array.append (Array.create 10 0) (Array.create 10 1)) "the exemplars join task 2's data"
                Expect.equal extra.Stored.shape [| 20L; int64 features |] "as inputs"
                disposeSet extra
            | None -> failtest "iCaRL must add its exemplars to the next task"
            let e3 = e2 |> end' (context model 1 second)
            Expect.equal (counts e3) [ 0, 5; 1, 5; 2, 5; 3, 5 ] "20 slots over 4 classes"
            Method.dispose e3
            disposeSet first
            disposeSet second

        testCase "iCaRL's scores are minus the squared distance to each class's exemplar mean, -inf for classes without exemplars" <| fun () ->
            use _ = torch.NewDisposeScope()
            use model = freshModel 10L
            let first = syntheticSet 11L [ 0; 1 ] 30
            let e = Method.pack (Icarl.method { Memory = 20 }) Icarl.initial |> begin' (context model 0 first) |> end' (context model 0 first)
            let score = match e.Scores() with Some s -> s | None -> failwith "iCaRL scores after a task"
            use _ = torch.no_grad ()
            model.eval ()
            let output = model.ForwardWithFeatures first.Stored
            let scores = score output
            let labels = first.LabelArray
            // The means from the exemplars, recomputed here from the training data the herding chose from.
            let extra = (e.BeginTask(context model 1 first)).ExtraTrainingData() |> Option.get
            let embeddings = (model.ForwardWithFeatures extra.Stored).Embedding
            let mean c = embeddings.narrow(0L, int64 (10 * c), 10L).mean([| 0L |])
            let row = 3
            let expected c = -(Scalars.toFloat ((output.Embedding.[int64 row].sub(mean c)).pow(Scalars.cached 2.0).sum()))
            Expect.floatClose Accuracy.medium (Scalars.toFloat (scores.[int64 row, 0L])) (expected 0) "class 0"
            Expect.floatClose Accuracy.medium (Scalars.toFloat (scores.[int64 row, 1L])) (expected 1) "class 1"
            for c in 2 .. 9 do
                Expect.isTrue (System.Double.IsNegativeInfinity(Scalars.toFloat (scores.[int64 row, int64 c]))) (sprintf "class %d has no exemplars" c)
            Expect.equal labels.Length 60 "data"
            disposeSet extra
            Method.dispose e
            disposeSet first
    ]

[<Tests>]
let distillTests =
    testSequenced <| testList "strategies.distill" [
        testCase "every --distill term is absent on the first task and zero while the model equals its snapshot" <| fun () ->
            for (kind, name) in DistillationKind.all do
                use _ = torch.NewDisposeScope()
                use model = freshModel 12L
                let first, second = syntheticSet 13L [ 0; 1 ] 10, syntheticSet 14L [ 2; 3 ] 10
                let settings = { Kind = kind; Weight = 1.0; Temperature = 2.0; SubspaceDim = 2; RelationSamples = 32 }
                let e0 = DistillationTerm.create settings |> begin' (context model 0 first)
                Expect.isEmpty (e0.Terms(view model first 0)) (name + ": no old model on the first task")
                // FitNets' regressor is the shell's: built here as the shell builds it.
                let e0 = match e0.Auxiliary with Some build -> e0.Attach(build (Training.embed model (first.Stored.narrow(0L, 0L, 1L)))) | None -> e0
                let e1 = e0 |> end' (context model 0 first) |> begin' (context model 1 second)
                // The relation graph reads a buffer draw: give it one (the first task's data).
                let draw = { Inputs = first.Stored; Labels = first.Labels; Logits = torch.zeros(10L, 10L); Valid = None } : ReplayDraw
                let all = model.ForwardWithFeatures(torch.cat([| second.Stored; first.Stored |], 0L))
                let n = int64 second.LabelArray.Length
                let v =
                    { view model second 1 with
                        Replay = [ Some { Draw = draw; Logits = all.Logits.narrow(0L, n, 20L); Features = all.Features |> List.map (fun f -> f.narrow(0L, n, 20L)) } ] }
                let terms = e1.Terms v
                Expect.equal (terms |> List.map (fun t -> t.Name)) [ "distill." + name ] (name + ": one named term")
                for t in terms do
                    Expect.isLessThan (abs (Scalars.toFloat t.Value)) 1e-4 (name + ": zero at the snapshot")
                Method.dispose e1
                disposeSet first
                disposeSet second

        testCase "a --distill term grows once the model moves away from its snapshot" <| fun () ->
            use _ = torch.NewDisposeScope()
            use model = freshModel 15L
            let first, second = syntheticSet 16L [ 0; 1 ] 10, syntheticSet 17L [ 2; 3 ] 10
            let settings = { Kind = Subspace; Weight = 1.0; Temperature = 2.0; SubspaceDim = 2; RelationSamples = 32 }
            let e = DistillationTerm.create settings |> begin' (context model 0 first) |> end' (context model 0 first) |> begin' (context model 1 second)
            (use _ = torch.no_grad ()
             for p in model.parameters () do
                 use noise = torch.randn_like p
                 p.add_(noise.mul(Scalars.cached 0.5)) |> ignore)
            let value = Scalars.toFloat ((e.Terms(view model second 1)).Head.Value)
            Expect.isGreaterThan value 1e-3 "SD sees the changed features"
            Method.dispose e
            disposeSet first
            disposeSet second
    ]

[<Tests>]
let memoryTests =
    testSequenced <| testList "strategies.distillation.memory" [
        testCase "live tensors stay flat over many steps with LwF, iCaRL and every --distill term" <| fun () ->
            let cases =
                [ yield "lwf", Lwf.strategy Lwf.Settings.Default 0L
                  yield "icarl", Icarl.strategy { Memory = 20 }
                  for (kind, name) in DistillationKind.all ->
                      "der + " + name,
                      Der.der { BufferSize = 40; Minibatch = 10; Alpha = 0.3 }
                      |> Method.add (DistillationTerm.create { Kind = kind; Weight = 1.0; Temperature = 2.0; SubspaceDim = 2; RelationSamples = 32 }) ]
            for (name, strategy) in cases do
                let first, second = syntheticSet 20L [ 0; 1 ] 10, syntheticSet 21L [ 2; 3 ] 10
                let benchmark =
                    { Name = "synthetic"; InputShape = (1, 1, features); NumClasses = 10; ClassNames = Benchmarks.numberedClassNames 10; Train = first; Test = first
                      Tasks = [ { Index = 0; Classes = [ 0; 1 ] }; { Index = 1; Classes = [ 2; 3 ] } ] }
                let settings =
                    { LearningRate = 0.05; BatchSize = 10; Epochs = 1; WeightDecay = 0.0; Seed = 0L; Device = torch.CPU; ProgressEvery = 1000 }
                let mutable state = Training.initialise architecture benchmark strategy settings
                let batchOf (set: LabelledSet) task =
                    { Inputs = set.Stored.narrow(0L, 0L, 10L); Labels = set.Labels.narrow(0L, 0L, 10L); LabelArray = Array.sub set.LabelArray 0 10; Task = task }
                let b0, b1 = batchOf first 0, batchOf second 1
                let contextOf task classes seen data = Training.taskContext architecture settings System.Threading.CancellationToken.None state task classes seen data
                state <- Training.beginTask ignore (contextOf 0 [ 0; 1 ] [ 0; 1 ] first) state
                for _ in 1 .. 5 do state <- snd (Training.step strategy b0 state)
                state <- Training.endTask ignore (contextOf 0 [ 0; 1 ] [ 0; 1 ] first) state
                state <- Training.beginTask ignore (contextOf 1 [ 2; 3 ] [ 0 .. 3 ] second) state
                let live () = DisposeScopeManager.Statistics.ThreadTotalLiveCount
                for _ in 1 .. 10 do state <- snd (Training.step strategy b1 state)
                let before = live ()
                for _ in 1 .. 100 do state <- snd (Training.step strategy b1 state)
                Expect.isLessThanOrEqual (live ()) before (name + ": no tensor outlives its step")
                Training.dispose state
                for b in [ b0; b1 ] do
                    b.Inputs.Dispose()
                    b.Labels.Dispose()
                disposeSet first
                disposeSet second
    ]

[<Tests>]
let afterTaskTests =
    testSequenced <| testList "strategies.icarl.after-task" [
        testCase "after-task hooks see the logits' accuracies (what an exported model computes), the run reports NME's" <| fun () ->
            let config = { Experiment.defaults "icarl" 200 with Data.TrainPerClass = Some 40; Data.TestPerClass = Some 20 }
            let seen = ResizeArray()
            let hook (after: AfterTask) =
                let logits = Evaluation.evaluate after.Model after.Device after.TestSets
                seen.Add(after.Accuracies, logits)
            let result = Experiment.run config { RunHooks.none with AfterTask = hook } System.Threading.CancellationToken.None
            try
                Expect.equal seen.Count 5 "one hook call per task"
                for (given, logits) in seen do
                    Expect.equal given logits "the hook's accuracies are the logits'"
                // Task 5 is unseen after task 1: NME scores it 0 % in Task-IL, the logits about half.
                Expect.equal result.Outcome.TaskIl.[0].[4] 0.0 "the run reports NME"
                Expect.notEqual (fst seen.[0]).TaskIl.[4] 0.0 "the hook sees logits"
            finally
                Experiment.release result
    ]

[<Tests>]
let endToEndTests =
    testSequenced <| testList "strategies.distillation.end-to-end" [
        testCase "lwf, icarl and der --distill sd run on a small Split Fashion-MNIST; iCaRL scores no class it has not seen" <| fun () ->
            for strategy, distill in [ "lwf", None; "icarl", None; "der", Some Subspace ] do
                let config =
                    { Experiment.defaults strategy 200 with
                        Data.TrainPerClass = Some 40
                        Data.TestPerClass = Some 20
                        Distillation = distill |> Option.map DistillationSettings.Of |> Option.toList }
                let result = Experiment.run config RunHooks.none System.Threading.CancellationToken.None
                try
                    Expect.equal result.Outcome.ClassIl.Length 5 (strategy + ": one row per task")
                    for row in Array.append result.Outcome.ClassIl result.Outcome.TaskIl do
                        for v in row do Expect.isTrue (v >= 0.0 && v <= 100.0) (strategy + ": accuracies are percentages")
                    if strategy = "icarl" then
                        // Nearest mean of exemplars: tasks not yet seen have no class means, so 0 %.
                        Expect.equal result.Outcome.ClassIl.[0].[4] 0.0 "task 5 is unknown after task 1"
                finally
                    Experiment.release result
    ]
