namespace Continual

open System
open System.IO
open System.Text
open System.Text.Json
open System.Threading
open Continual.Data
open Continual.Methods
open Continual.Models

/// A finished run: its configuration, accuracy matrices, metrics and timings.
type ExperimentResult =
    { Config: Config
      Architecture: Architecture
      Benchmark: Benchmark
      Outcome: TrainingOutcome
      WallSeconds: float
      StartedUtc: DateTime }

/// A configuration that cannot run; the message lists every problem in the domain's words.
exception InvalidConfiguration of errors: ConfigError list
    with
        override this.Message = this.errors |> List.map (fun e -> e.Message) |> String.concat "; "

/// Reading, writing and describing configurations.
[<RequireQualifiedAccess; CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module Config =

    /// The version of the configuration's JSON form (results.json's "config" section).
    [<Literal>]
    let version = 2

    /// The name of the method a configuration trains with (e.g. "derpp").
    let methodName (config: Config) = Registry.nameOf config.Method

    /// The size of the method's memory (buffer or exemplars), 0 for methods without one.
    let bufferSize (config: Config) =
        match config.Method with
        | MethodConfig.Er s -> s.BufferSize
        | MethodConfig.Der s -> s.BufferSize
        | MethodConfig.Derpp s -> s.BufferSize
        | MethodConfig.Icarl s -> s.Memory
        | _ -> 0

    /// The name of the added penalty, if any.
    let penaltyName (config: Config) = config.Penalty |> Option.map (fun p -> (Registry.importanceEntryOf p).Name)

    let private writeOptionalInt (w: Utf8JsonWriter) (name: string) (v: int option) =
        match v with
        | Some n -> w.WriteNumber(name, n)
        | None -> w.WriteNull name

    /// Writes the configuration as a JSON object: version, run, data, backbone, method, penalty,
    /// distillation (fixed order: the canonical form the hash is taken over).
    let write (w: Utf8JsonWriter) (config: Config) =
        w.WriteStartObject()
        w.WriteNumber("version", version)
        w.WriteStartObject "run"
        let r = config.Run
        w.WriteNumber("learningRate", r.LearningRate)
        w.WriteNumber("batchSize", r.BatchSize)
        w.WriteNumber("epochs", r.Epochs)
        w.WriteNumber("weightDecay", r.WeightDecay)
        w.WriteNumber("seed", r.Seed)
        w.WriteString("device", r.Device)
        w.WriteNumber("threads", r.Threads)
        match r.ClipGrad with
        | Some c -> w.WriteNumber("clipGrad", c)
        | None -> w.WriteNull "clipGrad"
        w.WriteEndObject()
        w.WriteStartObject "data"
        w.WriteString("benchmark", config.Data.Benchmark)
        w.WriteString("folder", config.Data.Folder)
        writeOptionalInt w "trainPerClass" config.Data.TrainPerClass
        writeOptionalInt w "testPerClass" config.Data.TestPerClass
        // Written only when set, so that the configurations (and hashes) of earlier runs are unchanged.
        if config.Data.AllowMissingClasses then w.WriteBoolean("allowMissingClasses", true)
        w.WriteEndObject()
        w.WriteString("backbone", config.Backbone)
        w.WritePropertyName "method"
        let entry = Registry.entryOf config.Method
        Registry.writeNamed w entry.Name entry.Settings config.Method
        w.WritePropertyName "penalty"
        match config.Penalty with
        | Some p ->
            let e = Registry.importanceEntryOf p
            Registry.writeNamed w e.Name e.Settings p
        | None -> w.WriteNullValue()
        w.WriteStartArray "distillation"
        for d in config.Distillation do
            Registry.writeNamed w (DistillationKind.name d.Kind) Registry.distillationSettings d
        w.WriteEndArray()
        // Written only when growing, so that the configurations (and hashes) of earlier runs are unchanged.
        if config.Head = HeadKind.Growing then w.WriteString("head", "growing")
        w.WriteEndObject()

    /// The configuration as canonical JSON (compact, fixed field order), the input of its hash.
    let toJson (config: Config) : string =
        use stream = new MemoryStream()
        (use w = new Utf8JsonWriter(stream)
         write w config)
        Encoding.UTF8.GetString(stream.ToArray())

    /// A short SHA-256 hash of the configuration, stable across runs and machines.
    let hash (config: Config) : string =
        let digest = Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(toJson config))
        Convert.ToHexString(digest).ToLowerInvariant().Substring(0, 16)

    let private optionalInt (e: JsonElement) =
        if e.ValueKind = JsonValueKind.Null then None else Some(e.GetInt32())

    /// A configuration read back from its JSON form (as `write` writes it).
    let ofJson (root: JsonElement) : Config =
        let v = root.GetProperty("version").GetInt32()
        if v <> version then invalidArg (nameof root) (sprintf "configuration version %d is not supported (this build reads version %d)" v version)
        let run = root.GetProperty "run"
        let data = root.GetProperty "data"
        let methodJson = root.GetProperty "method"
        let entry =
            let name = methodJson.GetProperty("name").GetString()
            match Registry.tryMethod name with
            | Some e -> e
            | None -> invalidArg (nameof root) (sprintf "unknown method '%s'" name)
        let penalty =
            match root.GetProperty "penalty" with
            | p when p.ValueKind = JsonValueKind.Null -> None
            | p ->
                let name = p.GetProperty("name").GetString()
                match Registry.tryImportance name with
                | Some e -> Some(Registry.readNamed p e.Settings e.Default)
                | None -> invalidArg (nameof root) (sprintf "unknown penalty '%s'" name)
        { Run =
            { LearningRate = run.GetProperty("learningRate").GetDouble()
              BatchSize = run.GetProperty("batchSize").GetInt32()
              Epochs = run.GetProperty("epochs").GetInt32()
              WeightDecay = run.GetProperty("weightDecay").GetDouble()
              Seed = run.GetProperty("seed").GetInt64()
              Device = run.GetProperty("device").GetString()
              Threads = run.GetProperty("threads").GetInt32()
              ClipGrad = (match run.GetProperty "clipGrad" with c when c.ValueKind = JsonValueKind.Null -> None | c -> Some(c.GetDouble())) }
          Data =
            { Benchmark = data.GetProperty("benchmark").GetString()
              Folder = data.GetProperty("folder").GetString()
              TrainPerClass = optionalInt (data.GetProperty "trainPerClass")
              TestPerClass = optionalInt (data.GetProperty "testPerClass")
              AllowMissingClasses = (match data.TryGetProperty "allowMissingClasses" with | true, v -> v.GetBoolean() | _ -> false) }
          Backbone = root.GetProperty("backbone").GetString()
          Method = Registry.readNamed methodJson entry.Settings (entry.Default (match methodJson.TryGetProperty "buffer" with | true, b -> b.GetInt32() | _ -> 500))
          Penalty = penalty
          Distillation =
            [ for d in root.GetProperty("distillation").EnumerateArray() ->
                  let name = d.GetProperty("name").GetString()
                  match DistillationKind.parse name with
                  | Some kind -> Registry.readNamed d Registry.distillationSettings (DistillationSettings.Of kind)
                  | None -> invalidArg (nameof root) (sprintf "unknown distillation term '%s'" name) ]
          Head =
            match root.TryGetProperty "head" with
            | true, h when h.GetString() = "growing" -> HeadKind.Growing
            | true, h when h.GetString() = "fixed" -> HeadKind.Fixed
            | true, h -> invalidArg (nameof root) (sprintf "unknown head '%s' (expected fixed or growing)" (h.GetString()))
            | _ -> HeadKind.Fixed }

/// Configuring and running experiments.
[<RequireQualifiedAccess>]
module Experiment =

    /// The parameter-importance methods, as on the command line.
    let importanceNames = Registry.importanceNames

    /// The strategies this build knows.
    let strategyNames = Registry.methodNames

    /// Whether a strategy is a parameter-importance method.
    let isImportance (strategy: string) = List.contains strategy importanceNames

    /// The benchmarks this build knows.
    let benchmarkNames = [ "split-fmnist"; "split-mnist"; "split-cifar10" ]

    /// Buffer sizes with published reference settings; other sizes take the nearest one's settings.
    let referenceBufferSizes = Registry.referenceBufferSizes

    /// The run settings every method starts from: SGD without momentum, batch 10, one epoch, seed 0,
    /// one thread on the CPU.
    let baseRun : RunSettings =
        { LearningRate = 0.03
          BatchSize = 10
          Epochs = 1
          WeightDecay = 0.0
          Seed = 0L
          Device = "cpu"
          Threads = 1
          ClipGrad = None }

    /// The reference protocol's configuration (METHODS.md) for a strategy and buffer size: the
    /// method's published settings, Split Fashion-MNIST from Debian's folder, the MLP backbone.
    let defaults (strategy: string) (bufferSize: int) : Config =
        let entry =
            match Registry.tryMethod strategy with
            | Some e -> e
            | None -> invalidArg (nameof strategy) (sprintf "unknown strategy '%s' (expected one of: %s)" strategy (String.concat ", " strategyNames))
        { Run = entry.Protocol bufferSize baseRun
          Data = { Benchmark = "split-fmnist"; Folder = Benchmarks.defaultFashionMnistFolder; TrainPerClass = None; TestPerClass = None; AllowMissingClasses = false }
          Backbone = "mlp"
          Method = entry.Default bufferSize
          Penalty = None
          Distillation = []
          Head = HeadKind.Fixed }

    /// Adds an importance penalty with that method's default settings; the method's gradient clipping
    /// (SI, SCP) comes with it unless the run clips already. None leaves the configuration as is.
    let withPenalty (penalty: string option) (config: Config) : Config =
        match penalty with
        | None -> config
        | Some name ->
            match Registry.tryImportance name with
            | Some e ->
                { config with
                    Penalty = Some e.Default
                    Run = { config.Run with ClipGrad = (match config.Run.ClipGrad with Some c -> Some c | None -> e.ClipGrad) } }
            | None -> invalidArg (nameof penalty) (sprintf "unknown penalty '%s' (expected one of: %s)" name (String.concat ", " importanceNames))

    /// Adds a distillation term with its default settings.
    let withDistillation (kind: DistillationKind) (config: Config) : Config =
        { config with Distillation = config.Distillation @ [ DistillationSettings.Of kind ] }

    /// Sets an option of the method, the penalty or the distillation terms from text on every component
    /// that has it: by its command-line name (without "--") first and, where no component has an option
    /// of that name, by its JSON name (so "alpha" is DER's α, never SCP's "alpha", which the command line
    /// calls "scp-alpha"). None when no component has it.
    let setOption (option: string) (text: string) (config: Config) : Result<Config, string> option =
        let attempt byName =
            let onMethod = Registry.parseOption byName (Registry.entryOf config.Method).Settings option text config.Method
            let onPenalty = config.Penalty |> Option.bind (fun p -> Registry.parseOption byName (Registry.importanceEntryOf p).Settings option text p)
            let onTerms = config.Distillation |> List.map (fun d -> Registry.parseOption byName Registry.distillationSettings option text d)
            if onMethod.IsNone && onPenalty.IsNone && onTerms |> List.forall Option.isNone then None
            else
                let firstError =
                    [ onMethod |> Option.bind (function Error e -> Some e | _ -> None)
                      onPenalty |> Option.bind (function Error e -> Some e | _ -> None)
                      yield! onTerms |> List.map (Option.bind (function Error e -> Some e | _ -> None)) ]
                    |> List.tryPick id
                match firstError with
                | Some e -> Some(Error e)
                | None ->
                    let ok = function Some(Ok v) -> Some v | _ -> None
                    Some(
                        Ok
                            { config with
                                Method = defaultArg (ok onMethod) config.Method
                                Penalty = (match ok onPenalty with Some p -> Some p | None -> config.Penalty)
                                Distillation = List.map2 (fun d r -> defaultArg (ok r) d) config.Distillation onTerms })
        match attempt false with
        | Some result -> Some result
        | None -> attempt true

    let private error path option message = { Path = path; Option = option; Message = message }

    /// The most training examples a configuration's benchmark can hold, from the benchmark's published
    /// size and --train-per-class (before any file is read); None for an unknown benchmark.
    let nominalTrainingSize (config: Config) : int64 option =
        let perClass =
            match config.Data.Benchmark with
            | "split-fmnist" | "split-mnist" -> Some 6000L
            | "split-cifar10" -> Some 5000L
            | _ -> None
        perClass |> Option.map (fun n -> 10L * (match config.Data.TrainPerClass with Some t -> min n (int64 t) | None -> n))

    let private settingErrors (prefix: string) (settings: Setting<'S> list) (value: 'S) =
        [ for s in settings do
              match s.Check value with
              | Some message -> error (prefix + "." + s.Name) (Some s.Option) message
              | None -> () ]

    /// Everything wrong with a configuration, in the domain's words (empty when it is valid). Each
    /// error names its path and, where there is one, the command-line option that sets it.
    let validate (config: Config) : ConfigError list =
        let r = config.Run
        let d = config.Data
        let methodName = Registry.nameOf config.Method
        [ if not (r.LearningRate > 0.0) || Double.IsInfinity r.LearningRate then
              error "run.learningRate" (Some "lr") (sprintf "the learning rate must be a positive number (got %g)" r.LearningRate)
          if r.BatchSize <= 0 then error "run.batchSize" (Some "batch-size") (sprintf "the batch size must be positive (got %d)" r.BatchSize)
          if r.Epochs <= 0 then error "run.epochs" (Some "epochs") (sprintf "the number of epochs must be positive (got %d)" r.Epochs)
          if not (r.WeightDecay >= 0.0) || Double.IsInfinity r.WeightDecay then
              error "run.weightDecay" (Some "weight-decay") (sprintf "the weight decay must be a non-negative number (got %g)" r.WeightDecay)
          if r.Threads <= 0 then error "run.threads" (Some "threads") (sprintf "the number of threads must be positive (got %d)" r.Threads)
          elif int64 r.Threads > 4L * int64 Environment.ProcessorCount then
              error "run.threads" (Some "threads")
                  (sprintf "%d threads is more than 4 per core (this machine has %d cores, so at most %d)" r.Threads Environment.ProcessorCount (4 * Environment.ProcessorCount))
          match r.ClipGrad with
          | Some c when not (c > 0.0) -> error "run.clipGrad" (Some "clip-grad") (sprintf "the gradient clipping bound must be positive (got %g)" c)
          | _ -> ()
          let device = r.Device.Trim().ToLowerInvariant()
          if device <> "cpu" && not (device.StartsWith "cuda") then
              error "run.device" (Some "device") (sprintf "unknown device '%s' (expected cpu or cuda)" r.Device)
          elif device.StartsWith "cuda" && not (Engine.cudaAvailable ()) then
              error "run.device" (Some "device")
                  (sprintf "device %s needs the CUDA build of libtorch, but this build uses the CPU build and sees no CUDA device (see README, 'GPU machines')" r.Device)
          if not (List.contains d.Benchmark benchmarkNames) then
              error "data.benchmark" (Some "benchmark") (sprintf "unknown benchmark '%s' (expected one of: %s)" d.Benchmark (String.concat ", " benchmarkNames))
          match d.TrainPerClass with
          | Some n when n <= 0 -> error "data.trainPerClass" (Some "train-per-class") (sprintf "the training examples per class must be positive (got %d)" n)
          | _ -> ()
          match d.TestPerClass with
          | Some n when n <= 0 -> error "data.testPerClass" (Some "test-per-class") (sprintf "the test examples per class must be positive (got %d)" n)
          | _ -> ()
          if not (List.contains (config.Backbone.Trim().ToLowerInvariant()) Backbones.names) then
              error "backbone" (Some "backbone") (sprintf "unknown backbone '%s' (expected one of: %s)" config.Backbone (String.concat ", " Backbones.names))
          yield! settingErrors "method" (Registry.entryOf config.Method).Settings config.Method
          // A memory larger than the training set holds nothing more, and a huge one exhausts the memory.
          match nominalTrainingSize config with
          | Some size when int64 (Config.bufferSize config) > size ->
              error "method.bufferSize" (Some "buffer")
                  (sprintf "a memory of %d examples is larger than the training set of %s (at most %d examples%s)" (Config.bufferSize config) d.Benchmark size
                      (match d.TrainPerClass with Some n -> sprintf " with %d per class" n | None -> ""))
          | _ -> ()
          if config.Method = MethodConfig.Joint && not config.Distillation.IsEmpty then
              error "distillation" (Some "distill") "a distillation term has no effect on joint (a single task, no old model to distil from)"
          match config.Penalty with
          | Some p ->
              let e = Registry.importanceEntryOf p
              if isImportance methodName then
                  error "penalty" (Some "penalty") (sprintf "the penalty %s cannot be added to %s, itself an importance method (one per run)" e.Name methodName)
              elif config.Method = MethodConfig.Joint then
                  error "penalty" (Some "penalty") (sprintf "the penalty %s has no effect on joint (a single task)" e.Name)
              elif e.Strength p = 0.0 then
                  error "penalty.strength" (Some "lambda") (sprintf "the penalty %s with strength 0 adds nothing" e.Name)
              yield! settingErrors "penalty" e.Settings p
          | None -> ()
          for (i, t) in List.indexed config.Distillation do
              if t.Kind = RelationGraph && not (List.contains methodName [ "er"; "der"; "derpp" ]) then
                  error (sprintf "distillation[%d]" i) (Some "distill")
                      (sprintf "the relation distillation term works on buffer exemplars: use a method with a replay buffer (er, der, derpp), not %s" methodName)
              yield! settingErrors (sprintf "distillation[%d]" i) Registry.distillationSettings t ]

    /// Raises InvalidConfiguration when a configuration has problems.
    let ensureValid (config: Config) =
        match validate config with
        | [] -> ()
        | errors -> raise (InvalidConfiguration errors)

    /// The strategy a configuration names, with its settings, its added penalty and distillation terms.
    let strategy (config: Config) : Strategy =
        let entry = Registry.entryOf config.Method
        let baseStrategy = entry.Create config.Method config.Run.Seed
        let clipped = match config.Run.ClipGrad with Some c -> { baseStrategy with ClipGradValue = Some c } | None -> baseStrategy
        let penalised =
            match config.Penalty with
            | Some p -> clipped |> Method.add ((Registry.importanceEntryOf p).Create p config.Run.Seed)
            | None -> clipped
        config.Distillation |> List.fold (fun s d -> s |> Method.add (DistillationTerm.create d)) penalised

    /// Loads the benchmark a configuration names, restricted per class when asked.
    let loadBenchmark (config: Config) : Benchmark =
        let d = config.Data
        let full =
            match d.Benchmark with
            | "split-fmnist" -> Benchmarks.splitMnistStyle "split-fmnist" d.Folder
            | "split-mnist" -> Benchmarks.splitMnistStyle "split-mnist" d.Folder
            | "split-cifar10" -> Cifar.splitCifar10 d.Folder
            | other -> invalidArg (nameof config) (sprintf "unknown benchmark '%s'" other)
        if not d.AllowMissingClasses then
            let present = Set.ofArray full.Train.LabelArray
            let missing = [ for c in 0 .. full.NumClasses - 1 do if not (present.Contains c) then c ]
            if not missing.IsEmpty then
                Benchmarks.dispose full
                raise (
                    DataFileError(
                        d.Folder,
                        sprintf "the training set has no example of class%s %s (--allow-missing-classes runs anyway)"
                            (if missing.Length = 1 then "" else "es") (missing |> List.map string |> String.concat ", ")))
        let benchmark =
            match d.TrainPerClass, d.TestPerClass with
            | None, None -> full
            | train, test ->
                let reduced = Benchmarks.subsample (defaultArg train Int32.MaxValue) (defaultArg test Int32.MaxValue) full
                Benchmarks.dispose full
                reduced
        // The memory can hold at most the whole training set (validate bounds it by the published size).
        let memory = Config.bufferSize config
        if memory > benchmark.Train.Count then
            Benchmarks.dispose benchmark
            raise (
                InvalidConfiguration
                    [ { Path = "method.bufferSize"
                        Option = Some "buffer"
                        Message = sprintf "a memory of %d examples is larger than the training set in %s (%d examples)" memory d.Folder benchmark.Train.Count } ])
        benchmark

    /// The classifier head's width at the start of a run: every class of the benchmark for a fixed head,
    /// the first task's classes for a growing one (the shell grows it before later tasks).
    let initialHeadClasses (config: Config) (benchmark: Benchmark) : int =
        match config.Head, benchmark.Tasks with
        | HeadKind.Growing, first :: _ -> Training.requiredClasses first.Classes
        | _ -> benchmark.NumClasses

    /// The training settings of a configuration.
    let settings (config: Config) : TrainingSettings =
        { LearningRate = config.Run.LearningRate
          BatchSize = config.Run.BatchSize
          Epochs = config.Run.Epochs
          WeightDecay = config.Run.WeightDecay
          Seed = config.Run.Seed
          Device = Engine.device config.Run.Device
          ProgressEvery = 100 }

    /// Runs a configuration on an already loaded benchmark (the caller keeps ownership of it).
    let runOn (benchmark: Benchmark) (config: Config) (hooks: RunHooks) (cancellation: CancellationToken) =
        ensureValid config
        Engine.configureThreads config.Run.Threads
        let started = DateTime.UtcNow
        let clock = Diagnostics.Stopwatch.StartNew()
        let architecture = Backbones.ofName config.Backbone benchmark.InputShape (initialHeadClasses config benchmark)
        let outcome = Training.run architecture benchmark (strategy config) (settings config) hooks cancellation
        { Config = config
          // The model's own: a growing head ends wider than it started.
          Architecture = outcome.State.Model.Architecture
          Benchmark = benchmark
          Outcome = outcome
          WallSeconds = clock.Elapsed.TotalSeconds
          StartedUtc = started }

    /// Validates, loads the data and runs a configuration end to end.
    let run (config: Config) (hooks: RunHooks) (cancellation: CancellationToken) : ExperimentResult =
        ensureValid config
        let clock = Diagnostics.Stopwatch.StartNew()
        let benchmark = loadBenchmark config
        try
            let result = runOn benchmark config hooks cancellation
            { result with WallSeconds = clock.Elapsed.TotalSeconds }
        finally
            Benchmarks.dispose benchmark

    /// Frees the model, optimiser, buffer and methods a finished run still holds.
    let release (result: ExperimentResult) = Training.dispose result.Outcome.State
