namespace Continual

open System.Threading
open Continual.Data
open Continual.Models
open Continual.Methods

/// Everything that defines a run. Every field is a command-line option; `Experiment.defaults` gives
/// the reference protocol's values for a strategy and buffer size.
type ExperimentConfig =
    { Benchmark: string
      DataFolder: string
      Strategy: string
      BufferSize: int
      LearningRate: float
      BatchSize: int
      Minibatch: int
      Alpha: float
      Beta: float
      Epochs: int
      WeightDecay: float
      Seed: int64
      Device: string
      Threads: int
      /// Use at most this many training examples per class (None: all).
      TrainPerClass: int option
      /// Use at most this many test examples per class (None: all).
      TestPerClass: int option
      /// An importance penalty added to the strategy's loss (e.g. "si" on derpp), None for none.
      Penalty: string option
      /// Importance penalty strength λ (SI's c).
      Lambda: float
      /// Online EWC's decay γ.
      Gamma: float
      /// SI's damping ξ.
      Xi: float
      /// EWC++ and RWalk's running-Fisher weight α of the new batch.
      FisherAlpha: float
      /// RWalk: steps per path-score window.
      ScoreEvery: int
      /// RWalk's ε.
      Epsilon: float
      /// SCP: random slices per batch.
      Slices: int
      /// SCP's α (weight of the old Γ).
      ScpAlpha: float
      /// SCP: samples per batch mean.
      ScpBatch: int
      /// The Fisher's labels: "true" (sampled), "empirical" or "weighted".
      Fisher: string
      /// Clip every gradient element to [-c, c] before the step (SI's protocol), None for no clipping.
      ClipGrad: float option
      /// An extra distillation term on top of the strategy (`--distill`: kd, fitnets, nst, at, rkd,
      /// pod, sd, relation), None for none.
      Distill: string option
      /// The weight of the extra distillation term.
      DistillWeight: float
      /// The temperature of LwF's soft targets and of the KD term.
      Temperature: float
      /// LwF: balance the old and the new term with λ = |Y_old| / |Y_seen| (the lecture's form).
      LwfBalance: bool
      /// The subspace dimension of subspace distillation.
      SubspaceDim: int
      /// The backbone: mlp (the reference MLP), cnn or resnet18 (reduced, 20 base filters).
      Backbone: string }

/// A finished run: its configuration, accuracy matrices, metrics and timings.
type ExperimentResult =
    { Config: ExperimentConfig
      Architecture: Architecture
      Benchmark: Benchmark
      Outcome: TrainingOutcome
      WallSeconds: float
      StartedUtc: System.DateTime }

/// Configuring and running experiments.
[<RequireQualifiedAccess>]
module Experiment =

    /// The parameter-importance methods, as on the command line.
    let importanceNames = [ "ewc"; "ewc-online"; "ewc++"; "si"; "mas"; "rwalk"; "scp" ]

    /// The strategies this build knows.
    let strategyNames = [ "sgd"; "joint"; "er"; "der"; "derpp"; "lwf"; "icarl" ] @ importanceNames

    /// Strategies that keep a memory of examples (the size given by --buffer).
    let private withMemory = [ "er"; "der"; "derpp"; "icarl" ]

    /// Whether a strategy is a parameter-importance method.
    let isImportance (strategy: string) = List.contains strategy importanceNames

    /// The importance hyper-parameters of a method (or neutral values for "none"): METHODS.md's
    /// reference settings for online EWC (λ 90, γ 1, p-weighted Fisher) and SI (c 1, ξ 0.9, clipping
    /// at 1); documented values elsewhere (RWalk's α 0.9, 10-step windows and ε as in Chaudhry et al.
    /// and Avalanche; SCP's 50 slices as in Kolouri et al.'s code); λ of EWC, EWC++, MAS and RWalk and
    /// EWC++'s α chosen on seed 10 of Split Fashion-MNIST, SCP's λ, α and clipping on seeds 10-12
    /// (docs/importance.md). Clipping at 1 keeps SCP's stiff output-layer importance stable at a λ
    /// that also protects the hidden layers.
    let importanceDefaults (method: string) (config: ExperimentConfig) : ExperimentConfig =
        let neutral =
            { config with
                Lambda = 0.0
                Gamma = 1.0
                Xi = 0.9
                FisherAlpha = 0.9
                ScoreEvery = 10
                // float32 machine epsilon, as torch.finfo(float32).eps (Avalanche's RWalk).
                Epsilon = 1.1920928955078125e-7
                Slices = 50
                ScpAlpha = 0.5
                ScpBatch = 100
                Fisher = "empirical"
                ClipGrad = None }
        match method with
        | "ewc" -> { neutral with Lambda = 100.0; Fisher = "true" }
        | "ewc-online" -> { neutral with Lambda = 90.0; Fisher = "weighted" }
        // A per-batch α of 0.9 remembers about ten batches of ten images; 0.001 spans about one task.
        | "ewc++" -> { neutral with Lambda = 100.0; FisherAlpha = 0.001 }
        | "si" -> { neutral with Lambda = 1.0; ClipGrad = Some 1.0 }
        | "mas" -> { neutral with Lambda = 0.1 }
        | "rwalk" -> { neutral with Lambda = 10.0 }
        | "scp" -> { neutral with Lambda = 3.0; ScpAlpha = 0.9; ClipGrad = Some 1.0 }
        | _ -> neutral

    /// Adds an importance penalty to a configuration's strategy, with that method's default
    /// hyper-parameters; the method's gradient clipping (SI, SCP) comes with it unless the strategy
    /// clips already. None leaves the configuration as is.
    let withPenalty (penalty: string option) (config: ExperimentConfig) : ExperimentConfig =
        match penalty with
        | None -> config
        | Some name ->
            let name = name.Trim().ToLowerInvariant()
            let method = importanceDefaults name config
            { method with Penalty = Some name; ClipGrad = (match config.ClipGrad with Some c -> Some c | None -> method.ClipGrad) }

    /// The benchmarks this build knows.
    let benchmarkNames = [ "split-fmnist"; "split-mnist"; "split-cifar10" ]

    /// Buffer sizes with published reference settings; other sizes take the nearest one's settings.
    let referenceBufferSizes = [ 200; 500; 5120 ]

    let private nearestReference (buffer: int) =
        referenceBufferSizes |> List.minBy (fun b -> abs (b - buffer))

    /// The reference protocol's settings (METHODS.md) for a strategy and buffer size: SGD without
    /// momentum, batch 10, one epoch per task; per-strategy lr, minibatch, alpha and beta.
    let defaults (strategy: string) (bufferSize: int) : ExperimentConfig =
        let reference = nearestReference bufferSize
        let lr, minibatch, alpha, beta =
            match strategy, reference with
            | "er", 200 -> 0.01, 10, 0.0, 0.0
            | "er", _ -> 0.1, 10, 0.0, 0.0
            | "der", 200 -> 0.03, 10, 0.2, 0.0
            | "der", 500 -> 0.03, 128, 1.0, 0.0
            | "der", _ -> 0.1, 128, 0.5, 0.0
            | "derpp", 200 -> 0.03, 128, 0.2, 1.0
            | "derpp", 500 -> 0.03, 10, 1.0, 0.5
            | "derpp", _ -> 0.1, 64, 0.2, 0.5
            | "si", _ -> 0.1, 10, 0.0, 0.0
            | "lwf", _ -> 0.03, 10, 1.0, 0.0
            | "icarl", _ -> 0.1, 10, 0.0, 0.0
            | _ -> 0.03, 10, 0.0, 0.0
        { Benchmark = "split-fmnist"
          DataFolder = Benchmarks.defaultFashionMnistFolder
          Strategy = strategy
          BufferSize = (if List.contains strategy withMemory then bufferSize else 0)
          LearningRate = lr
          BatchSize = 10
          Minibatch = minibatch
          Alpha = alpha
          Beta = beta
          Epochs = 1
          WeightDecay = (if strategy = "lwf" then 5e-4 else 0.0)
          Seed = 0L
          Device = "cpu"
          Threads = 1
          TrainPerClass = None
          TestPerClass = None
          Penalty = None
          Lambda = 0.0
          Gamma = 1.0
          Xi = 0.9
          FisherAlpha = 0.9
          ScoreEvery = 10
          Epsilon = 0.0
          Slices = 50
          ScpAlpha = 0.5
          ScpBatch = 100
          Fisher = "empirical"
          ClipGrad = None
          Distill = None
          DistillWeight = 1.0
          Temperature = 2.0
          LwfBalance = false
          SubspaceDim = 2
          Backbone = "mlp" }
        |> importanceDefaults strategy

    /// Everything wrong with a configuration, as messages a user can act on (empty when it is valid).
    let validate (config: ExperimentConfig) : string list =
        [ if not (List.contains config.Strategy strategyNames) then
              sprintf "unknown strategy '%s' (expected one of: %s)" config.Strategy (String.concat ", " strategyNames)
          if not (List.contains config.Benchmark benchmarkNames) then
              sprintf "unknown benchmark '%s' (expected one of: %s)" config.Benchmark (String.concat ", " benchmarkNames)
          if List.contains config.Strategy withMemory && config.BufferSize <= 0 then
              sprintf "--buffer must be positive for %s (got %d)" config.Strategy config.BufferSize
          if config.BufferSize < 0 then sprintf "--buffer must not be negative (got %d)" config.BufferSize
          if not (config.LearningRate > 0.0) || System.Double.IsInfinity config.LearningRate then
              sprintf "--lr must be a positive number (got %g)" config.LearningRate
          if config.BatchSize <= 0 then sprintf "--batch-size must be positive (got %d)" config.BatchSize
          if config.Minibatch <= 0 then sprintf "--minibatch must be positive (got %d)" config.Minibatch
          if config.Epochs <= 0 then sprintf "--epochs must be positive (got %d)" config.Epochs
          if config.Alpha < 0.0 || System.Double.IsNaN config.Alpha then sprintf "--alpha must not be negative (got %g)" config.Alpha
          if config.Beta < 0.0 || System.Double.IsNaN config.Beta then sprintf "--beta must not be negative (got %g)" config.Beta
          if config.WeightDecay < 0.0 || System.Double.IsNaN config.WeightDecay then
              sprintf "--weight-decay must not be negative (got %g)" config.WeightDecay
          if config.Threads <= 0 then sprintf "--threads must be positive (got %d)" config.Threads
          match config.TrainPerClass with
          | Some n when n <= 0 -> sprintf "--train-per-class must be positive (got %d)" n
          | _ -> ()
          match config.TestPerClass with
          | Some n when n <= 0 -> sprintf "--test-per-class must be positive (got %d)" n
          | _ -> ()
          match config.Penalty with
          | Some p when not (isImportance p) ->
              sprintf "unknown penalty '%s' (expected one of: %s)" p (String.concat ", " importanceNames)
          | Some p when isImportance config.Strategy ->
              sprintf "--penalty %s cannot be added to %s, itself an importance method (one per run)" p config.Strategy
          | Some p when config.Strategy = "joint" -> sprintf "--penalty %s has no effect on joint (a single task)" p
          | Some p when config.Lambda = 0.0 ->
              // Experiment.withPenalty (the CLI's --penalty) sets the method's defaults; a caller that only
              // sets the field would otherwise add a penalty of strength 0 without noticing.
              sprintf "--penalty %s with λ = 0 adds nothing: set --lambda (Experiment.withPenalty sets the method's defaults)" p
          | _ -> ()
          if config.Lambda < 0.0 || System.Double.IsNaN config.Lambda || System.Double.IsInfinity config.Lambda then
              sprintf "--lambda must be a non-negative number (got %g)" config.Lambda
          if config.Gamma < 0.0 || System.Double.IsNaN config.Gamma then sprintf "--gamma must not be negative (got %g)" config.Gamma
          if not (config.Xi > 0.0) then sprintf "--xi must be positive (got %g)" config.Xi
          if not (config.FisherAlpha >= 0.0 && config.FisherAlpha <= 1.0) then
              sprintf "--fisher-alpha must be in [0, 1] (got %g)" config.FisherAlpha
          if config.ScoreEvery <= 0 then sprintf "--score-every must be positive (got %d)" config.ScoreEvery
          if not (config.Epsilon > 0.0) then sprintf "--epsilon must be positive (got %g)" config.Epsilon
          if config.Slices <= 0 then sprintf "--slices must be positive (got %d)" config.Slices
          if not (config.ScpAlpha >= 0.0 && config.ScpAlpha < 1.0) then sprintf "--scp-alpha must be in [0, 1) (got %g)" config.ScpAlpha
          if config.ScpBatch <= 0 then sprintf "--scp-batch must be positive (got %d)" config.ScpBatch
          if not (List.contains (config.Fisher.Trim().ToLowerInvariant()) Penalties.FisherKind.names) then
              sprintf "unknown Fisher kind '%s' (expected one of: %s)" config.Fisher (String.concat ", " Penalties.FisherKind.names)
          match config.ClipGrad with
          | Some c when not (c > 0.0) -> sprintf "--clip-grad must be positive (got %g)" c
          | _ -> ()
          match config.Distill with
          | Some name when (DistillationKind.parse name).IsNone ->
              sprintf "unknown distillation term '%s' (expected one of: %s)" name (String.concat ", " DistillationKind.names)
          | Some name when DistillationKind.parse name = Some RelationGraph && not (List.contains config.Strategy [ "er"; "der"; "derpp" ]) ->
              sprintf "--distill relation works on buffer exemplars: use a strategy with a replay buffer (er, der, derpp), not %s" config.Strategy
          | _ -> ()
          if config.DistillWeight < 0.0 || System.Double.IsNaN config.DistillWeight then
              sprintf "--distill-weight must not be negative (got %g)" config.DistillWeight
          if not (config.Temperature > 0.0) || System.Double.IsInfinity config.Temperature then
              sprintf "--temperature must be a positive number (got %g)" config.Temperature
          if not (List.contains (config.Backbone.Trim().ToLowerInvariant()) Backbones.names) then
              sprintf "unknown backbone '%s' (expected one of: %s)" config.Backbone (String.concat ", " Backbones.names)
          if config.SubspaceDim <= 0 then sprintf "--subspace-dim must be positive (got %d)" config.SubspaceDim
          let device = config.Device.Trim().ToLowerInvariant()
          if device <> "cpu" && not (device.StartsWith "cuda") then
              sprintf "unknown device '%s' (expected cpu or cuda)" config.Device ]

    /// An importance method of a configuration, packed with its initial state (its generator drawn
    /// from the run's seed).
    let importanceMethod (name: string) (config: ExperimentConfig) : MethodInstance =
        let fisher = Penalties.FisherKind.parse config.Fisher
        match name with
        | "ewc" -> Ewc.create { Lambda = config.Lambda; Fisher = fisher } config.Seed
        | "ewc-online" -> OnlineEwc.create { Lambda = config.Lambda; Gamma = config.Gamma; Fisher = fisher } config.Seed
        | "ewc++" -> EwcPlusPlus.create { Lambda = config.Lambda; FisherAlpha = config.FisherAlpha; Fisher = fisher } config.Seed
        | "si" -> Si.create { C = config.Lambda; Xi = config.Xi }
        | "mas" -> Mas.create { Lambda = config.Lambda }
        | "rwalk" ->
            Rwalk.create
                { Lambda = config.Lambda; FisherAlpha = config.FisherAlpha; ScoreEvery = config.ScoreEvery; Epsilon = config.Epsilon; Fisher = fisher }
                config.Seed
        | "scp" -> Scp.create { Lambda = config.Lambda; Alpha = config.ScpAlpha; Slices = config.Slices; BatchSize = config.ScpBatch } config.Seed
        | other -> invalidArg (nameof name) (sprintf "unknown importance method '%s' (expected one of: %s)" other (String.concat ", " importanceNames))

    /// The strategy a configuration names, with its hyper-parameters (and its added penalty and
    /// distillation term, if any).
    let strategy (config: ExperimentConfig) : Strategy =
        let replay: Der.Settings = { BufferSize = config.BufferSize; Minibatch = config.Minibatch; Alpha = config.Alpha; Beta = config.Beta }
        let baseStrategy =
            match config.Strategy with
            | "sgd" -> Sgd.strategy ()
            | "joint" -> Sgd.joint ()
            | "er" -> Er.strategy { BufferSize = config.BufferSize; Minibatch = config.Minibatch }
            | "der" -> Der.der replay
            | "derpp" -> Der.derpp replay
            | "lwf" -> Lwf.strategy { Lwf.Settings.Default with Alpha = config.Alpha; Temperature = config.Temperature; Balanced = config.LwfBalance } config.Seed
            | "icarl" -> Icarl.strategy { Memory = config.BufferSize }
            // An importance method on its own is fine-tuning plus its penalty.
            | name when isImportance name -> { Sgd.strategy () with Name = name } |> Method.add (importanceMethod name config)
            | other -> invalidArg (nameof config) (sprintf "unknown strategy '%s'" other)
        let clipped = match config.ClipGrad with Some c -> { baseStrategy with ClipGradValue = Some c } | None -> baseStrategy
        let penalised =
            match config.Penalty with
            | Some name -> clipped |> Method.add (importanceMethod name config)
            | None -> clipped
        match config.Distill |> Option.bind DistillationKind.parse with
        | Some kind ->
            penalised
            |> Method.add
                (DistillationTerm.create
                    { Kind = kind
                      Weight = config.DistillWeight
                      Temperature = config.Temperature
                      SubspaceDim = config.SubspaceDim
                      RelationSamples = 32 })
        | None -> penalised

    /// Loads the benchmark a configuration names, restricted per class when asked.
    let loadBenchmark (config: ExperimentConfig) : Benchmark =
        let full =
            match config.Benchmark with
            | "split-fmnist" -> Benchmarks.splitMnistStyle "split-fmnist" config.DataFolder
            | "split-mnist" -> Benchmarks.splitMnistStyle "split-mnist" config.DataFolder
            | "split-cifar10" -> Cifar.splitCifar10 config.DataFolder
            | other -> invalidArg (nameof config) (sprintf "unknown benchmark '%s'" other)
        match config.TrainPerClass, config.TestPerClass with
        | None, None -> full
        | train, test ->
            let reduced = Benchmarks.subsample (defaultArg train System.Int32.MaxValue) (defaultArg test System.Int32.MaxValue) full
            Benchmarks.dispose full
            reduced

    /// The training settings of a configuration.
    let settings (config: ExperimentConfig) : TrainingSettings =
        { LearningRate = config.LearningRate
          BatchSize = config.BatchSize
          Epochs = config.Epochs
          WeightDecay = config.WeightDecay
          Seed = config.Seed
          Device = Engine.device config.Device
          ProgressEvery = 100 }

    /// Runs a configuration on an already loaded benchmark (the caller keeps ownership of it).
    let runOn (benchmark: Benchmark) (config: ExperimentConfig) (hooks: RunHooks) (cancellation: CancellationToken) =
        match validate config with
        | [] -> ()
        | errors -> invalidArg (nameof config) (String.concat "; " errors)
        Engine.configureThreads config.Threads
        let started = System.DateTime.UtcNow
        let clock = System.Diagnostics.Stopwatch.StartNew()
        let architecture = Backbones.ofName config.Backbone benchmark.InputShape benchmark.NumClasses
        let outcome = Training.run architecture benchmark (strategy config) (settings config) hooks cancellation
        { Config = config
          Architecture = architecture
          Benchmark = benchmark
          Outcome = outcome
          WallSeconds = clock.Elapsed.TotalSeconds
          StartedUtc = started }

    /// Validates, loads the data and runs a configuration end to end.
    let run (config: ExperimentConfig) (hooks: RunHooks) (cancellation: CancellationToken) : ExperimentResult =
        match validate config with
        | [] -> ()
        | errors -> invalidArg (nameof config) (String.concat "; " errors)
        let clock = System.Diagnostics.Stopwatch.StartNew()
        let benchmark = loadBenchmark config
        try
            let result = runOn benchmark config hooks cancellation
            { result with WallSeconds = clock.Elapsed.TotalSeconds }
        finally
            Benchmarks.dispose benchmark

    /// Frees the model, optimiser, buffer and extensions a finished run still holds.
    let release (result: ExperimentResult) = Training.dispose result.Outcome.State
