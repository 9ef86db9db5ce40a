/// Example-based tests of the importance family's wiring: every method runs end to end from an
/// experiment configuration, a penalty can be added to a replay strategy, configurations are validated
/// and recorded, and the methods keep the number of live tensors flat over many steps.
module Continual.Tests.Importance

open System.Threading
open Expecto
open Continual
open Continual.Data
open Continual.Models
open Continual.Penalties
open Continual.Methods
open TorchSharp

/// A small synthetic two-task benchmark (inputs 1x4x4, classes {0,1} then {2,3}) held in memory as
/// float32 (so `Stored` is what the model is fed).
let private tinyBenchmark () : Benchmark =
    let make (seed: int) (n: int) =
        let rnd = System.Random(seed)
        let labels = Array.init n (fun i -> i % 4)
        let inputs = Array.init (n * 16) (fun k -> float32 (0.6 * rnd.NextDouble() + 0.1 * float labels.[k / 16] * float (k % 4) / 3.0))
        { Stored = torch.tensor(inputs, dtype = torch.ScalarType.Float32).reshape(int64 n, 16L)
          Labels = torch.tensor(labels |> Array.map int64, dtype = torch.ScalarType.Int64)
          LabelArray = labels
          Normalisation = None }
    { Name = "tiny"
      InputShape = (1, 4, 4)
      NumClasses = 4
      ClassNames = Benchmarks.numberedClassNames 4
      Train = make 1 160
      Test = make 2 40
      Tasks = [ { Index = 0; Classes = [ 0; 1 ] }; { Index = 1; Classes = [ 2; 3 ] } ] }

let private configFor (strategy: string) =
    { Experiment.defaults strategy 20 with Data.Benchmark = "split-fmnist"; Run.Seed = 4L }

let private finite (m: float[][]) = m |> Array.forall (Array.forall (fun x -> x >= 0.0 && x <= 100.0))

let private viewOf (model: Backbone) =
    let x = torch.zeros(1L, 16L)
    { Batch = { Inputs = x; Labels = torch.zeros([| 1L |], dtype = torch.ScalarType.Int64); LabelArray = [| 0 |]; Task = 0 }
      Output = { Logits = torch.zeros(1L, 4L); Features = [] }
      Replay = []
      Model = model
      Parameters = PerSample.parameters model; Heads = None }

/// The method's penalty at the current parameters (None when the penalty is not formed yet).
let private termValue (e: MethodInstance) (model: Backbone) =
    e.Penalties() |> List.tryHead |> Option.map (fun t -> Quadratic.value t.Penalty (PerSample.parameters model))

/// A fixed quadratic penalty, either applied in closed form by the shell (Penalties) or as an
/// autograd loss term (Terms).
let private fixedPenalty (penalty: Quadratic) (closedForm: bool) : MethodInstance =
    Method.pack
        { Method.empty "fixed" with
            Penalties = fun () -> if closedForm then [ { Name = "fixed"; Penalty = penalty } ] else []
            Terms = fun () view -> if closedForm then [] else [ { Name = "fixed"; Value = Quadratic.term penalty view.Parameters } ] }
        ()

[<Tests>]
let tests =
    testSequenced <| testList "importance" [
        testCase "a penalty applied in closed form trains exactly as its autograd term, clipping included" <| fun () ->
            let benchmark = tinyBenchmark ()
            let architecture = Mlp(16, [ 8 ], 4)
            let settings = { Experiment.settings (configFor "sgd") with LearningRate = 0.2 }
            let data = Benchmarks.selectClasses [ 0; 1 ] benchmark.Train
            let train (closedForm: bool) =
                let probe = Training.initialise architecture benchmark (Sgd.strategy ()) settings
                let ps = PerSample.parameters probe.Model
                // Importance between 0 and 3, an anchor away from the start: the penalty is large.
                torch.manual_seed 10L |> ignore
                let omega = ps |> List.map (fun p -> torch.rand(p.shape).mul(Scalars.cached 3.0))
                let anchor = ps |> List.map (fun p -> p.detach().add(Scalars.cached 0.3))
                let q = Quadratic.create Whole 1.5 omega anchor
                Training.dispose probe
                let strategy = { Sgd.strategy () with ClipGradValue = Some 0.05 } |> Method.add (fixedPenalty q closedForm)
                let state = Training.initialise architecture benchmark strategy settings
                let losses = ResizeArray()
                let mutable st = state
                for i in 0 .. 14 do
                    let start = (i * 10) % (data.Count - 10)
                    let batch =
                        { Inputs = data.Stored.narrow(0L, int64 start, 10L); Labels = data.Labels.narrow(0L, int64 start, 10L)
                          LabelArray = Array.sub data.LabelArray start 10; Task = 0 }
                    // The closed-form penalty is evaluated apart (0 for the autograd variant, whose loss holds it).
                    let penalty = Training.penaltyValue st
                    let loss, next = Training.step strategy batch st
                    losses.Add(float loss + penalty)
                    st <- next
                let values = st.Parameters.Values.clone ()
                Training.dispose st
                Quadratic.dispose q
                values, losses.ToArray()
            let closedValues, closedLosses = train true
            let autogradValues, autogradLosses = train false
            Expect.isTrue (closedValues.allclose(autogradValues, 1e-5, 1e-6)) "the same parameters after 15 clipped steps"
            for (a, b) in Array.zip closedLosses autogradLosses do
                Expect.floatClose Accuracy.medium a b "the same reported loss, penalty included"
            Expect.isGreaterThan closedLosses.[0] 1.0 "the penalty dominates the first loss (it is really applied)"

        testList "every method runs from a configuration" [
            for name in Experiment.importanceNames ->
                testCase name <| fun () ->
                    let benchmark = tinyBenchmark ()
                    let result = Experiment.runOn benchmark (configFor name) RunHooks.none CancellationToken.None
                    let o = result.Outcome
                    Expect.equal o.TaskIl.Length 2 "one row per task"
                    Expect.isTrue (finite o.ClassIl && finite o.TaskIl) "accuracies are percentages"
                    match o.State.Methods with
                    | [ sgd; e ] ->
                        Expect.equal (sgd.Name, e.Name) ("sgd", name) "fine-tuning, then the method"
                        match name, termValue e o.State.Model with
                        | "ewc", Some v ->
                            // One anchor per task: at the last one only the first task's term remains.
                            Expect.isGreaterThan v 0.0 "the first task's anchor still pulls"
                        | _, v ->
                            // The model ends at the last (only) anchor: the penalty is formed and exactly zero there.
                            Expect.equal v (Some 0.0) "penalty formed, zero at the anchor"
                    | other -> failtestf "fine-tuning and the method expected, got %d methods" other.Length
                    Experiment.release result
        ]

        testCase "a penalty is added to a replay strategy (DER++ with SI)" <| fun () ->
            let withSi = configFor "derpp" |> Experiment.withPenalty (Some "si")
            let config =
                match Experiment.setOption "minibatch" "8" withSi with
                | Some(Ok c) -> c
                | other -> failtestf "minibatch not set: %A" other
            Expect.equal config.Penalty (Some(ImportanceConfig.Si Si.Settings.Default)) "SI recorded with its default c 1 and ξ 0.9"
            Expect.equal config.Run.ClipGrad (Some 1.0) "SI's clipping comes with it"
            let clipping = { configFor "derpp" with Run.ClipGrad = Some 0.5 } |> Experiment.withPenalty (Some "si")
            Expect.equal clipping.Run.ClipGrad (Some 0.5) "a strategy's own clipping is kept"
            let mas = configFor "derpp" |> Experiment.withPenalty (Some "mas")
            Expect.equal mas.Run.ClipGrad None "MAS brings no clipping"
            let strategy = Experiment.strategy config
            Expect.equal (strategy.Methods |> List.map (fun m -> m.Name)) [ "derpp"; "si" ] "SI added after DER++"
            Expect.equal strategy.ReplayDraws [ 8; 8 ] "DER++ draws kept"
            let result = Experiment.runOn (tinyBenchmark ()) config RunHooks.none CancellationToken.None
            Expect.isTrue (finite result.Outcome.TaskIl) "runs"
            Experiment.release result

        testCase "reference settings for online EWC and SI" <| fun () ->
            let ewc = Experiment.defaults "ewc-online" 500
            Expect.equal ewc.Method (MethodConfig.Importance(ImportanceConfig.OnlineEwc { Lambda = 90.0; Gamma = 1.0; Fisher = Penalties.LabelWeighted })) "online EWC: λ 90, γ 1, weighted Fisher"
            Expect.equal ewc.Run.LearningRate 0.03 "online EWC's lr"
            let si = Experiment.defaults "si" 500
            Expect.equal si.Method (MethodConfig.Importance(ImportanceConfig.Si { C = 1.0; Xi = 0.9 })) "SI: c 1, ξ 0.9"
            Expect.equal (si.Run.ClipGrad, si.Run.LearningRate) (Some 1.0, 0.1) "SI: clipping and lr"
            Expect.equal (Experiment.strategy si).ClipGradValue (Some 1.0) "SI clips gradients to [-1, 1]"
            Expect.equal (Config.bufferSize si) 0 "no buffer"
            let scp = Experiment.defaults "scp" 500
            Expect.equal scp.Method (MethodConfig.Importance(ImportanceConfig.Scp { Lambda = 3.0; Alpha = 0.9; Slices = 50; BatchSize = 100 })) "SCP: λ and α chosen on seeds 10-12"
            Expect.equal scp.Run.ClipGrad (Some 1.0) "SCP's clipping"

        testCase "invalid importance settings are refused with a message in the domain's words" <| fun () ->
            let base' = configFor "ewc"
            let errors (c: Config) = Experiment.validate c
            let set option value c =
                match Experiment.setOption option value c with
                | Some(Ok c) -> c
                | other -> failtestf "%s not set: %A" option other
            Expect.isSome (Experiment.setOption "fisher" "fisher" base' |> Option.filter Result.isError) "unknown Fisher kind"
            Expect.isNonEmpty (errors (set "lambda" "-1" base')) "negative λ"
            Expect.isNonEmpty (errors { base' with Penalty = Some(ImportanceConfig.Si Si.Settings.Default) }) "a penalty on an importance method"
            Expect.isNonEmpty (errors { configFor "derpp" with Penalty = Some(ImportanceConfig.Si { Si.Settings.Default with C = 0.0 }) }) "a penalty of strength 0"
            Expect.isNonEmpty (errors (set "scp-alpha" "1" (configFor "scp"))) "SCP α must stay below 1"
            Expect.isNonEmpty (errors { base' with Run.ClipGrad = Some 0.0 }) "clip must be positive"
            Expect.isEmpty (errors (configFor "derpp" |> Experiment.withPenalty (Some "ewc-online"))) "DER++ with online EWC is valid"
            for e in errors (set "lambda" "-1" base') @ errors { base' with Run.LearningRate = -1.0 } do
                Expect.isFalse (e.Message.Contains "--") (sprintf "no command-line option in the core's message: %s" e.Message)
            Expect.equal (errors { base' with Run.LearningRate = -1.0 } |> List.map (fun e -> e.Path, e.Option)) [ "run.learningRate", Some "lr" ] "where the error is"

        testCase "the configuration JSON records the importance settings and reads back" <| fun () ->
            let config = configFor "derpp" |> Experiment.withPenalty (Some "rwalk")
            let json = Results.configJson config
            for fragment in [ "\"penalty\":{\"name\":\"rwalk\""; "\"lambda\":10"; "\"fisherAlpha\":0.9"; "\"scoreEvery\":10"; "\"fisher\":\"empirical\"" ] do
                Expect.stringContains json fragment fragment
            let stronger = match Experiment.setOption "lambda" "11" config with Some(Ok c) -> c | other -> failtestf "%A" other
            Expect.notEqual (Results.configHash config) (Results.configHash stronger) "λ changes the hash"
            for c in [ config; stronger; Experiment.defaults "lwf" 500 |> Experiment.withDistillation Methods.Kd; Experiment.defaults "icarl" 2000 ] do
                use doc = System.Text.Json.JsonDocument.Parse(Results.configJson c)
                Expect.equal (Config.ofJson doc.RootElement) c "the JSON form reads back to the same configuration"

        testCase "an option reaches every component that has it by its command-line name, by its JSON name only where none has that option" <| fun () ->
            let config = configFor "derpp" |> Experiment.withPenalty (Some "scp")
            let set option value c =
                match Experiment.setOption option value c with
                | Some(Ok c) -> c
                | other -> failtestf "%s: %A" option other
            let alpha = set "alpha" "0.7" config
            Expect.equal alpha.Penalty config.Penalty "--alpha leaves SCP's α (--scp-alpha) alone"
            match alpha.Method with
            | MethodConfig.Derpp s -> Expect.equal s.Alpha 0.7 "DER++'s α"
            | other -> failtestf "%A" other
            match (set "scp-alpha" "0.3" config).Penalty with
            | Some(ImportanceConfig.Scp s) -> Expect.equal s.Alpha 0.3 "SCP's α by its command-line name"
            | other -> failtestf "%A" other
            match (set "batchSize" "64" (configFor "scp")).Method with
            | MethodConfig.Importance(ImportanceConfig.Scp s) -> Expect.equal s.BatchSize 64 "SCP's batch by its JSON name, which no option has"
            | other -> failtestf "%A" other
            let kd = Experiment.defaults "lwf" 500 |> Experiment.withDistillation Kd |> set "temperature" "4"
            match kd.Method, kd.Distillation with
            | MethodConfig.Lwf l, [ t ] -> Expect.equal (l.Temperature, t.Temperature) (4.0, 4.0) "--temperature sets LwF's and KD's"
            | other -> failtestf "%A" other
            Expect.isNone (Experiment.setOption "xi" "0.5" config) "an option no component has"

        testList "live tensors stay flat over many steps" [
            for name in Experiment.importanceNames ->
                testCase name <| fun () ->
                    let benchmark = tinyBenchmark ()
                    let config = configFor name
                    let settings = Experiment.settings config
                    let architecture = Mlp(16, [ 8 ], 4)
                    let strategy = Experiment.strategy config
                    let mutable state = Training.initialise architecture benchmark strategy settings
                    let data = Benchmarks.selectClasses [ 0; 1 ] benchmark.Train
                    let context = Training.taskContext architecture { settings with BatchSize = 10 } CancellationToken.None state 0 [ 0; 1 ] [ 0; 1 ] data
                    state <- Training.beginTask ignore context state
                    state <- Training.trainOn strategy settings 0 data ignore CancellationToken.None state
                    state <- Training.endTask ignore context state
                    state <- Training.beginTask ignore { context with Task = 1 } state
                    let batch =
                        { Inputs = data.Stored.narrow(0L, 0L, 10L); Labels = data.Labels.narrow(0L, 0L, 10L)
                          LabelArray = Array.sub data.LabelArray 0 10; Task = 1 }
                    let steps n =
                        for _ in 1 .. n do
                            let _, next = Training.step strategy batch state
                            state <- next
                    steps 5
                    // No forced collection: a leaked tensor must show up, not be finalised away.
                    let before = DisposeScopeManager.Statistics.ThreadTotalLiveCount
                    steps 200
                    let after = DisposeScopeManager.Statistics.ThreadTotalLiveCount
                    Expect.isLessThanOrEqual after before (sprintf "%s: live tensors %d before 200 steps, %d after" name before after)
                    Training.dispose state
        ]
    ]
