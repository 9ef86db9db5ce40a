/// Shared pieces of the penalty properties: a fixed FsCheck configuration, tiny synthetic benchmarks,
/// every importance method's state after real training on them, and plain-array references.
module Continual.Properties.PenaltiesFixtures

open System
open System.Threading
open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Data
open Continual.Models
open Continual.Penalties
open Continual.Methods
open TorchSharp

/// The shared fixed-seed configuration (CI is reproducible), 60 cases per property.
let config = PropertyConfig.fixedSeed 60

/// Relative-and-absolute closeness of two doubles.
let close (tolerance: float) (expected: float) (actual: float) =
    abs (expected - actual) <= tolerance * (1.0 + abs expected)

/// A float32 tensor's values.
let values (t: Tensor) : float[] =
    use c = t.detach().cpu().to_type(torch.ScalarType.Float64).contiguous()
    c.data<float>().ToArray()

/// Per-parameter tensors as one flat double array.
let flatValues (ts: Tensor list) = ts |> List.map values |> Array.concat

/// The tiny architecture of the properties: 4 inputs, 5 hidden, 4 classes (two tasks of two).
let architecture = Mlp(4, [ 5 ], 4)

/// Number of scalars in the tiny architecture.
let parameterCount = 4 * 5 + 5 + 5 * 4 + 4

/// A labelled set of `n` random inputs in [0, 1]^4 labelled from `classes`, drawn from a seed (stored as
/// float32, so `Stored` is what the model is fed).
let synthetic (seed: int) (n: int) (classes: int list) : LabelledSet =
    let rnd = System.Random(seed)
    let cls = Array.ofList classes
    let labels = Array.init n (fun i -> cls.[i % cls.Length])
    // Class-dependent means make the tasks learnable, so importance is not degenerate.
    let inputs = Array.init (n * 4) (fun k -> float32 (0.5 * rnd.NextDouble() + 0.1 * float (labels.[k / 4] + (k % 4)) / 4.0))
    { Stored = torch.tensor(inputs, dtype = torch.ScalarType.Float32).reshape(int64 n, 4L)
      Labels = torch.tensor(labels |> Array.map int64, dtype = torch.ScalarType.Int64)
      LabelArray = labels
      Normalisation = None }

/// A two-task benchmark (classes {0,1} then {2,3}) on synthetic data, `perClass` examples per class.
let benchmark (seed: int) (perClass: int) (taskCount: int) : Benchmark =
    let train = synthetic seed (4 * perClass) [ 0; 1; 2; 3 ]
    let test = synthetic (seed + 1) 40 [ 0; 1; 2; 3 ]
    { Name = "tiny"
      InputShape = (1, 2, 2)
      NumClasses = 4
      ClassNames = Benchmarks.numberedClassNames 4
      Train = train
      Test = test
      Tasks = [ { Index = 0; Classes = [ 0; 1 ] }; { Index = 1; Classes = [ 2; 3 ] } ] |> List.truncate taskCount }

/// The seed of the importance methods' own generators in the tiny runs.
let methodSeed = 5L

/// A method with the tiny runs' settings (λ and the Fisher's labels given): γ 1, ξ 0.9, α 0.9, windows
/// of 3 steps, ε 1e-3, SCP's 7 slices, α 0.5 and batches of 16.
let methodWith (name: string) (lambda: float) (fisher: FisherKind) : MethodInstance =
    match name with
    | "ewc" -> Ewc.create { Lambda = lambda; Fisher = fisher } methodSeed
    | "ewc-online" -> OnlineEwc.create { Lambda = lambda; Gamma = 1.0; Fisher = fisher } methodSeed
    | "ewc++" -> EwcPlusPlus.create { Lambda = lambda; FisherAlpha = 0.9; Fisher = fisher } methodSeed
    | "si" -> Si.create { C = lambda; Xi = 0.9 }
    | "mas" -> Mas.create { Lambda = lambda }
    | "rwalk" -> Rwalk.create { Lambda = lambda; FisherAlpha = 0.9; ScoreEvery = 3; Epsilon = 1e-3; Fisher = fisher } methodSeed
    | "scp" -> Scp.create { Lambda = lambda; Alpha = 0.5; Slices = 7; BatchSize = 16 } methodSeed
    | "l2" -> L2.create { Lambda = lambda }
    | other -> failwithf "unknown method %s" other

/// The generator every importance method starts from in the tiny runs.
let methodRng () = Importance.generator methodSeed

let trainingSettings : TrainingSettings =
    { LearningRate = 0.1
      BatchSize = 8
      Epochs = 1
      WeightDecay = 0.0
      Seed = 3L
      Device = torch.CPU
      ProgressEvery = 1000 }

/// A method as a strategy: fine-tuning plus its penalty, with optional gradient clipping.
let strategyOf (instance: MethodInstance) (clip: float option) : Strategy =
    { Sgd.strategy () with Name = instance.Name; ClipGradValue = clip } |> Method.add instance

/// Trains a method on the tiny benchmark through `taskCount` tasks and returns the final method,
/// the model and a copy of its final parameters (the last anchor), flat.
let trained (name: string) (lambda: float) (taskCount: int) : MethodInstance * Backbone * float[] =
    let b = benchmark 11 24 taskCount
    let fisherOf n = if n = "ewc" then Sampled elif n = "ewc-online" then LabelWeighted else Empirical
    let strategy = strategyOf (methodWith name lambda (fisherOf name)) (if name = "si" then Some 1.0 else None)
    let outcome = Training.run architecture b strategy trainingSettings RunHooks.none CancellationToken.None
    List.last outcome.State.Methods, outcome.State.Model, flatValues [ for p in outcome.State.Model.parameters () -> p :> Tensor ]

/// How a method's penalty reads in plain arrays: its coefficient c of `c Σ Ω (θ − θ*)²` and its
/// (importance, anchor) pairs, taken from the method's state independently of the prepared penalty.
type Reference =
    { Name: string
      Coefficient: float
      Pairs: (float[] * float[]) list }

/// The plain-array penalty `c Σ_t Σ_i Ω_t,i (θ_i − θ*_t,i)²`.
let referenceValue (r: Reference) (theta: float[]) =
    r.Pairs |> List.sumBy (fun (omega, anchor) -> Array.fold2 (fun acc (o: float) (a: float, t: float) -> acc + o * (t - a) * (t - a)) 0.0 omega (Array.zip anchor theta))
    |> (*) r.Coefficient

/// The plain-array gradient `2 c Σ_t Ω_t (θ − θ*_t)` (that is `λ Ω (θ − θ*)` for the papers' λ/2 form).
let referenceGradient (r: Reference) (theta: float[]) =
    let g = Array.zeroCreate theta.Length
    for (omega, anchor) in r.Pairs do
        for i in 0 .. theta.Length - 1 do
            g.[i] <- g.[i] + 2.0 * r.Coefficient * omega.[i] * (theta.[i] - anchor.[i])
    g

/// The RWalk importance in plain arrays: `F / max F + s / max s`.
let rwalkReference (fisher: float[]) (scores: float[]) =
    let fm, sm = Array.max fisher, Array.max scores
    Array.map2 (fun f s -> (if fm > 0.0 then f / fm else 0.0) + (if sm > 0.0 then s / sm else 0.0)) fisher scores

/// The reference reading of a trained method's state; `anchor` is the model's parameters at the last
/// task end (every single-anchor method anchors there).
let reference (name: string) (lambda: float) (instance: MethodInstance) (anchor: float[]) : Reference =
    let one (omega: Tensor list) = [ flatValues omega, anchor ]
    match instance.State with
    | :? Ewc.State as s ->
        { Name = name; Coefficient = lambda / 2.0; Pairs = s.Tasks |> List.map (fun (f, a) -> flatValues f, flatValues a) }
    | :? OnlineEwc.State as s -> { Name = name; Coefficient = lambda; Pairs = one s.Fisher.Value }
    | :? EwcPlusPlus.State as s -> { Name = name; Coefficient = lambda / 2.0; Pairs = one s.Running.Value }
    | :? Si.State as s -> { Name = name; Coefficient = lambda; Pairs = one s.Importance.Value }
    | :? Mas.State as s -> { Name = name; Coefficient = lambda / 2.0; Pairs = one s.Importance.Value }
    | :? Rwalk.State as s ->
        let omega = rwalkReference (flatValues s.Running.Value) (flatValues s.PreviousScores.Value)
        { Name = name; Coefficient = lambda / 2.0; Pairs = [ omega, anchor ] }
    | :? Scp.State as s -> { Name = name; Coefficient = lambda; Pairs = one s.Gamma.Value }
    | :? L2.State -> { Name = name; Coefficient = lambda / 2.0; Pairs = [ Array.create anchor.Length 1.0, anchor ] }
    | _ -> failwithf "no reference for %s" name

/// Writes flat values into a model's parameters.
let setParameters (model: Backbone) (theta: float[]) =
    use _ = torch.no_grad ()
    let mutable offset = 0
    for p in model.parameters () do
        let n = int (p.numel ())
        use src = torch.tensor(Array.sub theta offset n |> Array.map float32, dtype = torch.ScalarType.Float32).reshape(p.shape)
        p.copy_ src |> ignore
        offset <- offset + n

/// A step view whose only meaningful field is the model (parameter penalties read nothing else).
let viewOf (model: Backbone) : StepView =
    let x = torch.zeros(1L, 4L)
    { Batch = { Inputs = x; Labels = torch.zeros([| 1L |], dtype = torch.ScalarType.Int64); LabelArray = [| 0 |]; Task = 0 }
      Output = { Logits = torch.zeros(1L, 4L); Features = [] }
      Replay = []
      Model = model
      Parameters = PerSample.parameters model; Heads = None }

/// The method's penalty at θ as the training shell applies it: in closed form on the model's flat
/// layout. Returns its value and the gradient it adds, flat.
let termAt (instance: MethodInstance) (model: Backbone) (theta: float[]) : float * float[] =
    let flat = FlatParameters.create model
    try
        setParameters model theta
        (use _ = torch.no_grad () in flat.Gradients.zero_() |> ignore)
        match instance.Penalties() with
        | [ term ] ->
            Quadratic.addGradient term.Penalty flat.Values flat.Gradients
            Quadratic.valueAt term.Penalty flat.Values, flatValues [ flat.Gradients ]
        | [] -> 0.0, Array.zeroCreate parameterCount
        | _ -> failwith "one penalty expected"
    finally
        FlatParameters.dispose flat

/// A displacement: small float32-exact values, some exactly zero.
let displacement : Gen<float[]> =
    Gen.arrayOfLength parameterCount (Gen.frequency [ 1, Gen.constant 0; 4, Gen.choose (-400, 400) ])
    |> Gen.map (Array.map (fun i -> float (float32 i / 1000.0f)))

/// The names of every importance method.
let methods = Experiment.importanceNames

/// Each method trained once per λ (cached: training is the slow part).
let private cache = System.Collections.Concurrent.ConcurrentDictionary<string * float * int, Lazy<MethodInstance * Backbone * float[]>>()

/// A method trained through `tasks` tasks with strength λ, shared by the properties.
let methodState (name: string) (lambda: float) (tasks: int) =
    cache.GetOrAdd((name, lambda, tasks), fun (n, l, t) -> lazy (trained n l t)).Value

/// Tests share models and libtorch state: they run one after another.
let sequenced (name: string) (tests: Test list) = testSequenced (testList name tests)

/// Asserts two double arrays are close elementwise.
let arraysClose (tolerance: float) (what: string) (expected: float[]) (actual: float[]) =
    Expect.equal actual.Length expected.Length (what + ": length")
    let scale = 1.0 + (expected |> Array.fold (fun m x -> max m (abs x)) 0.0)
    for i in 0 .. expected.Length - 1 do
        if abs (expected.[i] - actual.[i]) > tolerance * scale then
            failtestf "%s: element %d is %g, expected %g (tolerance %g x %g)" what i actual.[i] expected.[i] tolerance scale

/// A task context on the tiny architecture for calling a method's transitions directly.
let contextOf (model: Backbone) (data: LabelledSet) : TaskContext =
    { Task = 0
      Classes = []
      SeenClasses = []
      Train = data
      Model = model
      Parameters = PerSample.parameters model
      Architecture = architecture
      Device = torch.CPU
      LearningRate = trainingSettings.LearningRate
      BatchSize = trainingSettings.BatchSize
      Embed = Training.embed model
      EmbedRows = Training.embedRows model torch.CPU CancellationToken.None
      Cancellation = CancellationToken.None }
