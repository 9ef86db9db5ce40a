module Continual.Tests.TrainingTests

open System.IO
open System.Text.RegularExpressions
open System.Threading
open Expecto
open TorchSharp
open Continual
open Continual.Data
open Continual.Models
open Continual.Methods
open Continual.Tests.TestData

let private realSubset trainPerClass testPerClass strategy buffer seed =
    { Experiment.defaults strategy buffer with
        Data.Folder = fashionMnist
        Run.Seed = seed
        Data.TrainPerClass = Some trainPerClass
        Data.TestPerClass = Some testPerClass }

let private liveTensors () = DisposeScopeManager.Statistics.ThreadTotalLiveCount

/// L2 to the last task's end as an autograd term, `λ/2 Σ (θ − θ*)²`, kept outside the core (as the C#
/// façade's custom terms are): the closed-form L2 penalty's twin. Counts the steps where it has a value.
type private AutogradL2(lambda: float) =
    let mutable anchor : Tensor list = []
    member val StepsWithValue = 0 with get, set
    member _.Release() =
        for t in anchor do t.Dispose()
        anchor <- []
    interface IExternalTerm with
        member _.Name = "l2-autograd"
        member this.Value view =
            match anchor with
            | [] -> null
            | _ ->
                this.StepsWithValue <- this.StepsWithValue + 1
                let squares = List.map2 (fun (p: Tensor) (a: Tensor) -> (p - a).square().sum()) view.Parameters anchor
                (List.reduce (fun (x: Tensor) y -> x + y) squares).mul(Scalars.cached (lambda / 2.0))
        member _.BeginTask _ = ()
        member this.EndTask context =
            this.Release()
            anchor <- [ for p in context.Parameters -> p.detach().clone().DetachFromDisposeScope() ]
    interface System.IDisposable with
        member this.Dispose() = this.Release()

[<Tests>]
let tests =
    testSequenced <| testList "training" [
        test "Task-IL masking keeps only the task's classes" {
            use logits = torch.tensor([| 5.0f; 1.0f; 2.0f; 9.0f; 3.0f; 4.0f; 0.5f; 9.0f |]).reshape(2L, 4L)
            use masked = Losses.maskToClasses [ 1; 2 ] logits
            use predicted = masked.argmax(1L)
            Expect.equal (predicted.data<int64>().ToArray()) [| 2L; 1L |] "argmax within classes 1 and 2"
            Expect.isTrue (System.Single.IsNegativeInfinity(Scalars.toFloat32 (masked.[0L, 0L]))) "class 0 masked to -inf"
            Expect.equal (Scalars.toFloat32 (masked.[0L, 2L])) 2.0f "task classes untouched"
        }

        test "plain SGD's step moves every parameter exactly as TorchSharp's SGD.step, weight decay and a second group included" {
            let make () =
                torch.manual_seed 5L |> ignore
                let model = Backbones.create (Mlp(12, [ 7 ], 3))
                let head = torch.nn.Linear(3L, 2L)
                let sgd = torch.optim.SGD(model.parameters (), 0.05, weight_decay = 0.01)
                sgd.add_param_group(Modules.SGD.ParamGroup(head.parameters (), 0.2, 0.0, 0.0, 0.0, false, false))
                model, head, (sgd :> torch.optim.Optimizer)
            let reference, referenceHead, referenceSgd = make ()
            let model, head, sgd = make ()
            torch.manual_seed 6L |> ignore
            use x = torch.randn(9L, 12L)
            use y = torch.randint(3L, [| 9L |])
            let train (m: Backbone) (h: torch.nn.Module<Tensor, Tensor>) (o: torch.optim.Optimizer) (step: unit -> unit) =
                for _ in 1 .. 5 do
                    use scope = torch.NewDisposeScope()
                    o.zero_grad ()
                    let logits = m.forward x
                    let loss = Losses.crossEntropy logits y + h.forward(logits).square().mean()
                    loss.backward ()
                    step ()
            train reference referenceHead referenceSgd (fun () -> referenceSgd.step () |> ignore)
            train model head sgd (fun () -> PlainSgd.step sgd)
            let all (m: Backbone) (h: torch.nn.Module<Tensor, Tensor>) = [ yield! m.parameters (); yield! h.parameters () ]
            for (a, b) in List.zip (all reference referenceHead) (all model head) do
                Expect.isTrue (Scalars.toBool (a.eq(b).all())) "the same parameters to the bit"
            Expect.isFalse (Scalars.toBool (reference.parameters () |> Seq.head |> fun p -> p.grad.eq(Scalars.cached 0.0).all())) "the gradients were not zero"
            use momentum = torch.optim.SGD(model.parameters (), 0.1, momentum = 0.9)
            Expect.throwsT<System.InvalidOperationException> (fun () -> PlainSgd.step momentum) "momentum is refused"
        }

        test "the library's sources hand TorchSharp no temporary Scalar" {
            // TorchSharp frees a Scalar in its finaliser, and its tensor-to-value conversions, its SGD step
            // and `linalg.vector_norm` pass temporary Scalars to libtorch: a collection on another thread
            // mid-call frees them ("Expected false to be true" from Scalar::toLong, an abort seen once in
            // ten bench runs). The library keeps each scalar in a binding (Scalars, PlainSgd) instead.
            let sources =
                Directory.GetFiles(Path.Combine(repositoryRoot.Force(), "src"), "*.fs", SearchOption.AllDirectories)
                |> Array.filter (fun f -> not (f.Contains "/obj/" || f.Contains "/bin/"))
            Expect.isGreaterThan sources.Length 20 "the sources were found"
            let forbidden =
                [ @"\.(ToDouble|ToSingle|ToInt64|ToInt32|ToBoolean)\(\)", "a tensor-to-value conversion (use Scalars.toFloat and its kin)"
                  @"[\w)]\.ToScalar\(\)\)", "a temporary Scalar as an argument (bind it with use, or Scalars.cached)"
                  @"\.step \(\)", "TorchSharp's optimiser step (use PlainSgd.step)"
                  @"vector_norm|matrix_norm", "linalg's norms (their binding makes a temporary Scalar)"
                  @"\.add_?\([A-Za-z]\w*\)", "add with TorchSharp's temporary alpha of 1 (use Scalars.add or pass Scalars.one)" ]
            let offences =
                [ for file in sources do
                    for (number, line) in File.ReadAllLines file |> Array.indexed do
                        let code = line.Trim()
                        if not (code.StartsWith "//") then
                            for (pattern, what) in forbidden do
                                if Regex.IsMatch(code, pattern) then
                                    yield sprintf "%s:%d: %s" (Path.GetFileName file) (number + 1) what ]
            Expect.isEmpty offences "no temporary Scalar reaches libtorch"
        }

        test "the DER term is zero when outputs equal the stored logits and positive otherwise" {
            use stored = torch.randn(6L, 10L)
            use same = stored.clone ()
            use other = stored.add(Scalars.cached (float 0.1f))
            Expect.equal (Scalars.toFloat32 (Losses.derLogitMatching same stored)) 0.0f "equal logits"
            Expect.floatClose Accuracy.medium (float (Scalars.toFloat32 (Losses.derLogitMatching other stored))) 0.01 "mean over entries of 0.1^2"
        }

        test "live tensor counts stay flat over many DER++ training steps" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 60 5
            let benchmark = Benchmarks.splitMnistStyle "synthetic" tmp.Path
            let strategy = Der.derpp { BufferSize = 50; Minibatch = 10; Alpha = 0.5; Beta = 0.5 }
            let settings =
                { LearningRate = 0.03; BatchSize = 10; Epochs = 1; WeightDecay = 0.0; Seed = 1L; Device = torch.CPU; ProgressEvery = 1000 }
            let mutable state = Training.initialise Backbones.referenceMlp benchmark strategy settings
            let data = Benchmarks.selectClasses [ 0; 1 ] benchmark.Train
            let stepOnce i =
                let start = (i * 10) % (data.Count - 10)
                use x = data.InputRange(int64 start, 10L)
                use y = data.Labels.narrow(0L, int64 start, 10L)
                let batch = { Inputs = x; Labels = y; LabelArray = data.LabelArray.[start .. start + 9]; Task = 0 }
                let _, next = Training.step strategy batch state
                state <- next
            for i in 0 .. 19 do stepOnce i
            let before = liveTensors ()
            for i in 20 .. 419 do stepOnce i
            let after = liveTensors ()
            Expect.equal after before "no tensor outlives its step"
            Expect.isGreaterThan state.Buffer.Value.Seen 400L "the buffer saw every example"
            Training.dispose state
        }

        test "DER++ beats SGD in Class-IL by a wide margin on a real Fashion-MNIST subset" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            let run strategy =
                let result = Experiment.run (realSubset 1000 300 strategy 500 0L) RunHooks.none CancellationToken.None
                Experiment.release result
                Metrics.averageAccuracy result.Outcome.ClassIl, result.Outcome
            let sgd, _ = run "sgd"
            let derpp, outcome = run "derpp"
            Expect.equal outcome.ClassIl.Length 5 "one row per task"
            Expect.isTrue (outcome.ClassIl |> Array.forall (fun row -> row.Length = 5 && row |> Array.forall (fun v -> v >= 0.0 && v <= 100.0))) "5x5 percentages"
            Expect.isLessThan sgd 25.0 (sprintf "SGD forgets: Class-IL %.1f" sgd)
            Expect.isGreaterThan (derpp - sgd) 30.0 (sprintf "DER++ %.1f vs SGD %.1f" derpp sgd)
        }

        test "the same seed gives the same accuracy matrices" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            let run seed =
                let result = Experiment.run (realSubset 300 100 "der" 200 seed) RunHooks.none CancellationToken.None
                Experiment.release result
                result.Outcome.ClassIl, result.Outcome.TaskIl
            let first = run 3L
            let second = run 3L
            let other = run 4L
            Expect.equal second first "identical matrices for the same seed"
            Expect.notEqual other first "a different seed gives a different run"
        }

        test "JOINT trains once on every task and reports one row" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 30 10
            let config = { Experiment.defaults "joint" 0 with Data.Folder = tmp.Path }
            let result = Experiment.run config RunHooks.none CancellationToken.None
            Experiment.release result
            Expect.equal result.Outcome.ClassIl.Length 1 "one row"
            Expect.equal result.Outcome.ClassIl.[0].Length 5 "every task evaluated"
            Expect.isGreaterThan (Metrics.averageAccuracy result.Outcome.ClassIl) 80.0 "synthetic bands are learnable"
        }

        test "a diverging run stops with a clear error instead of reporting chance accuracy" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 30 5
            let config = { Experiment.defaults "sgd" 0 with Data.Folder = tmp.Path; Run.LearningRate = 1e12 }
            Expect.throwsC (fun () -> Experiment.run config RunHooks.none CancellationToken.None |> ignore) (fun e ->
                Expect.stringContains e.Message "training diverged in task 1" "names the task"
                Expect.stringContains e.Message "lower the learning rate" "says what to do, in the domain's words")
        }

        test "cancellation stops a run" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 30 5
            use cts = new CancellationTokenSource()
            let hooks = RunHooks.events (function StepsCompleted _ -> cts.Cancel() | _ -> ())
            let config = { Experiment.defaults "sgd" 0 with Data.Folder = tmp.Path }
            Expect.throwsT<System.OperationCanceledException> (fun () -> Experiment.run { config with Run.BatchSize = 1 } hooks cts.Token |> ignore) "cancelled"
        }
    
        test "the shell runs LwF's warm-up and every task end as phases it reports, and cancellation stops a warm-up" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 20 5
            let config = { Experiment.defaults "lwf" 0 with Data.Folder = tmp.Path }
            let phases = ResizeArray()
            let result = Experiment.run config (RunHooks.events (function PhaseStarted(t, p) -> phases.Add(t, p) | _ -> ())) CancellationToken.None
            Experiment.release result
            Expect.sequenceEqual
                phases
                [ yield 0, "end of task"
                  for t in 1 .. 4 do
                      yield t, "lwf: classifier warm-up"
                      yield t, "end of task" ]
                "a warm-up before every task after the first, an end after every task"
            use cts = new CancellationTokenSource()
            let cancelAtWarmUp = RunHooks.events (function PhaseStarted(_, p) when p.Contains "warm-up" -> cts.Cancel() | _ -> ())
            Expect.throwsT<System.OperationCanceledException> (fun () -> Experiment.run config cancelAtWarmUp cts.Token |> ignore) "cancelled inside the warm-up"
        }

        test "FitNets' regressor is the shell's: built once, in the optimiser, trained with the model and clipped with it" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 20 5
            let benchmark = Benchmarks.splitMnistStyle "synthetic" tmp.Path
            let clip, lr = 1e-6, 0.03
            let strategy =
                { Sgd.strategy () with ClipGradValue = Some clip }
                |> Method.add (DistillationTerm.create (DistillationSettings.Of FitNets))
            let settings = { Experiment.settings (Experiment.defaults "sgd" 0) with LearningRate = lr }
            let outcome = Training.run Backbones.referenceMlp benchmark strategy settings RunHooks.none CancellationToken.None
            try
                match outcome.State.Auxiliary with
                | [ 1, regressor ] ->
                    let groups = (outcome.State.Optimiser :?> Modules.SGD).ParamGroups |> Seq.length
                    Expect.equal groups 2 "the model's parameters and the regressor's, one optimiser"
                    let weight = regressor.parameters () |> Seq.head
                    use identity = torch.eye(weight.shape.[0])
                    use moved = (weight.detach() - identity).abs().max()
                    let change = Scalars.toFloat moved
                    // The term exists from task 2 on: 4 tasks × 40 steps, each moving an entry by at most lr × clip.
                    Expect.isGreaterThan change 0.0 "the regressor learns"
                    Expect.isLessThanOrEqual change (4.0 * 40.0 * lr * clip * 1.01) "its gradients are clipped with the model's"
                | other -> failtestf "one regressor expected for the method at position 1, got %d" other.Length
            finally
                Training.dispose outcome.State
                Benchmarks.dispose benchmark
        }

        test "what a method's transitions drop is freed: no tensor outlives a run of SGD, DER++, LwF, iCaRL, EWC, RWalk or SI" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 20 5
            let benchmark = Benchmarks.splitMnistStyle "synthetic" tmp.Path
            try
                let leaks =
                    [ for name in [ "sgd"; "derpp"; "lwf"; "icarl"; "ewc"; "rwalk"; "si" ] ->
                        let config = { Experiment.defaults name 20 with Data.Folder = tmp.Path }
                        let before = liveTensors ()
                        let result = Experiment.runOn benchmark config RunHooks.none CancellationToken.None
                        Experiment.release result
                        name, liveTensors () - before ]
                Expect.equal leaks [ for (name, _) in leaks -> name, 0L ] "live tensors left after each run and its release"
            finally
                Benchmarks.dispose benchmark
        }

        test "an external autograd L2 term gives the closed-form L2 penalty's matrices, and no tensor outlives the run" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            // Real data, where the matrices are sensitive to a 1% change of λ (synthetic data is not).
            let sgd = realSubset 20 10 "sgd" 20 4L
            let benchmark = Experiment.loadBenchmark sgd
            try
                let lambda = 20.0
                let penalised =
                    match sgd |> Experiment.withPenalty (Some "l2") |> Experiment.setOption "lambda" (string lambda) with
                    | Some(Ok c) -> c
                    | other -> failtestf "l2 with λ %g: %A" lambda other
                Expect.equal penalised.Run sgd.Run "the penalty brings no run settings of its own"
                let reference = Experiment.runOn benchmark penalised RunHooks.none CancellationToken.None
                let expected = reference.Outcome.ClassIl, reference.Outcome.TaskIl
                Experiment.release reference
                let before = liveTensors ()
                let term = new AutogradL2(lambda)
                let result = Experiment.runOnWith [ term ] benchmark sgd RunHooks.none CancellationToken.None
                let actual = result.Outcome.ClassIl, result.Outcome.TaskIl
                Experiment.release result
                Expect.equal actual expected "the external term's matrices are the closed-form penalty's"
                Expect.isGreaterThan term.StepsWithValue 0 "the term had a value from task 2 on"
                Expect.equal (liveTensors ()) before "the run's release frees the term's anchor with everything else"
            finally
                Benchmarks.dispose benchmark
        }

        test "a learner with an external term refuses to be saved and writes nothing" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 20 5
            let benchmark = Benchmarks.splitMnistStyle "synthetic" tmp.Path
            try
                let config = { Experiment.defaults "sgd" 20 with Data.Folder = tmp.Path }
                let learner =
                    Learner.createOn benchmark config
                    |> Learner.addTerms [ new AutogradL2(1.0) ]
                    |> Learner.learnUntil RunHooks.none CancellationToken.None (Some 1)
                try
                    let file = System.IO.Path.Combine(tmp.Path, Learner.FileName)
                    let message =
                        try
                            Learner.save file learner
                            failtest "a learner with an external term was saved"
                        with :? System.NotSupportedException as e -> e.Message
                    Expect.isFalse (System.IO.File.Exists file) "no file is written"
                    Expect.stringContains message "l2-autograd" "the message names the term"
                finally
                    Learner.dispose learner
            finally
                Benchmarks.dispose benchmark
        }
    ]
