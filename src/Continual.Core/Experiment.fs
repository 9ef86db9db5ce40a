namespace Continual

open System
open System.IO
open System.Text
open System.Text.Json
open System.Threading
open System.Globalization
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
        let source = config.Data.Source
        match source.ImageSize with
        | Some size -> w.WriteString("imageSize", ImageOptions.sizeText size)
        | None -> ()
        if source.Colour <> SourceSettings.Default.Colour then w.WriteString("colour", source.Colour)
        match source.ClassesPerTask with
        | Some n -> w.WriteNumber("classesPerTask", n)
        | None -> ()
        if source.LabelColumn <> SourceSettings.Default.LabelColumn then w.WriteString("labelColumn", source.LabelColumn)
        match source.FeatureScale with
        | Some s -> w.WriteNumber("featureScale", s)
        | None -> ()
        if source.Normalise <> SourceSettings.Default.Normalise then w.WriteString("normalise", source.Normalise)
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
        if config.Heads = HeadCount.Multi then w.WriteString("heads", "multi")
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
              AllowMissingClasses = (match data.TryGetProperty "allowMissingClasses" with | true, v -> v.GetBoolean() | _ -> false)
              Source =
                let get name = match data.TryGetProperty(name: string) with | true, v when v.ValueKind <> JsonValueKind.Null -> Some v | _ -> None
                let d = SourceSettings.Default
                { ImageSize =
                    get "imageSize"
                    |> Option.map (fun v ->
                        match ImageOptions.tryParseSize (v.GetString()) with
                        | Some s -> s
                        | None -> invalidArg (nameof root) (sprintf "data.imageSize '%s' is not a size such as 64x64" (v.GetString())))
                  Colour = get "colour" |> Option.map (fun v -> v.GetString()) |> Option.defaultValue d.Colour
                  ClassesPerTask = get "classesPerTask" |> Option.map (fun v -> v.GetInt32())
                  LabelColumn = get "labelColumn" |> Option.map (fun v -> v.GetString()) |> Option.defaultValue d.LabelColumn
                  FeatureScale = get "featureScale" |> Option.map (fun v -> v.GetDouble())
                  Normalise = get "normalise" |> Option.map (fun v -> v.GetString()) |> Option.defaultValue d.Normalise } }
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
            | _ -> HeadKind.Fixed
          Heads =
            match root.TryGetProperty "heads" with
            | true, h when h.GetString() = "multi" -> HeadCount.Multi
            | true, h when h.GetString() = "single" -> HeadCount.Single
            | true, h -> invalidArg (nameof root) (sprintf "unknown heads '%s' (expected single or multi)" (h.GetString()))
            | _ -> HeadCount.Single }

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
    let benchmarkNames = [ "split-fmnist"; "split-mnist"; "split-cifar10"; "split-tinyimagenet"; "folder"; "csv"; "npy"; "manifest" ]

    /// The benchmarks read from the user's files, which have no default folder: --data names it.
    let userDataBenchmarks = [ "split-tinyimagenet"; "folder"; "csv"; "npy"; "manifest" ]

    /// The image options of a configuration's source settings (the colour is checked by validate).
    /// The normalisation a `--normalise` value asks for.
    type NormalisationChoice =
        /// Each channel's mean and standard deviation over the training set.
        | FromTraining
        /// The values given, one mean and one standard deviation per channel.
        | Given of ChannelNormalisation

    /// Reads a `--normalise` value: "none", "train" or "MEAN,.../STD,..." (one of each per channel,
    /// standard deviations positive), or says what is wrong with it.
    let normalisationOf (text: string) : Result<NormalisationChoice option, string> =
        let parseList (part: string) =
            let values =
                part.Split(',', StringSplitOptions.TrimEntries)
                |> Array.map (fun v ->
                    match Single.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture) with
                    | true, x when Single.IsFinite x -> Some x
                    | _ -> None)
            if values |> Array.forall Option.isSome then Some(values |> Array.map Option.get |> List.ofArray) else None
        match text.Trim().ToLowerInvariant() with
        | "none" -> Ok None
        | "train" -> Ok(Some FromTraining)
        | given ->
            match given.Split '/' with
            | [| means; stds |] ->
                match parseList means, parseList stds with
                | Some m, Some s when m.Length = s.Length && not m.IsEmpty ->
                    if s |> List.forall (fun v -> v > 0.0f) then Ok(Some(Given { Mean = m; Std = s }))
                    else Error(sprintf "'%s': the standard deviations must be positive" text)
                | Some m, Some s when m.Length <> s.Length ->
                    Error(sprintf "'%s': %d means but %d standard deviations (one of each per channel)" text m.Length s.Length)
                | _ -> Error(sprintf "'%s' is not none, train or MEAN,.../STD,... (numbers such as 0.5,0.5,0.5/0.25,0.25,0.25)" text)
            | _ -> Error(sprintf "'%s' is not none, train or MEAN,.../STD,... (e.g. 0.286/0.353 for one channel)" text)

    let imageOptions (source: SourceSettings) : ImageOptions =
        { Size = source.ImageSize
          Colour = ImageOptions.tryParseColour source.Colour |> Option.defaultValue ColourMode.Auto }

    /// The table options of a configuration's source settings.
    let tableOptions (source: SourceSettings) : TableOptions =
        { LabelColumn = source.LabelColumn; Scale = source.FeatureScale }

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
          Data = { Benchmark = "split-fmnist"; Folder = Benchmarks.defaultFashionMnistFolder; TrainPerClass = None; TestPerClass = None; AllowMissingClasses = false; Source = SourceSettings.Default }
          Backbone = "mlp"
          Method = entry.Default bufferSize
          Penalty = None
          Distillation = []
          Head = HeadKind.Fixed
          Heads = HeadCount.Single }

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
        let classes = 10L
        match config.Data.Benchmark with
        | "split-tinyimagenet" -> Some(200L * (match config.Data.TrainPerClass with Some t -> min 500L (int64 t) | None -> 500L))
        | _ -> perClass |> Option.map (fun n -> classes * (match config.Data.TrainPerClass with Some t -> min n (int64 t) | None -> n))

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
          let source = d.Source
          if (ImageOptions.tryParseColour source.Colour).IsNone then
              error "data.colour" (Some "colour") (sprintf "unknown colour mode '%s' (expected one of: %s)" source.Colour (String.concat ", " ImageOptions.colourNames))
          match source.ImageSize with
          | Some(h, w) when h < 1 || w < 1 || h > 4096 || w > 4096 ->
              error "data.imageSize" (Some "image-size") (sprintf "the image size must be 1 to 4096 pixels a side (got %dx%d)" h w)
          | _ -> ()
          match source.ClassesPerTask with
          | Some n when n <= 0 -> error "data.classesPerTask" (Some "classes-per-task") (sprintf "the classes per task must be positive (got %d)" n)
          | _ -> ()
          if String.IsNullOrWhiteSpace source.LabelColumn then error "data.labelColumn" (Some "label-column") "the label column needs a name"
          // A source option the benchmark does not read is a mistake worth hearing about.
          let images = [ "split-tinyimagenet"; "folder"; "manifest" ]
          let tables = [ "csv"; "npy"; "manifest" ]
          let notFor (option: string) (path: string) (readers: string list) =
              error path (Some option) (sprintf "--%s does not apply to %s (it applies to %s)" option d.Benchmark (String.concat ", " readers))
          if source.ImageSize.IsSome && not (List.contains d.Benchmark images) then notFor "image-size" "data.imageSize" images
          if source.Colour <> SourceSettings.Default.Colour && not (List.contains d.Benchmark images) then notFor "colour" "data.colour" images
          let splittable = [ "split-fmnist"; "split-mnist"; "split-cifar10"; "folder"; "csv"; "npy" ]
          if source.ClassesPerTask.IsSome && not (List.contains d.Benchmark splittable) then notFor "classes-per-task" "data.classesPerTask" splittable
          if source.LabelColumn <> SourceSettings.Default.LabelColumn && not (List.contains d.Benchmark [ "csv"; "manifest" ]) then notFor "label-column" "data.labelColumn" [ "csv"; "manifest" ]
          if source.FeatureScale.IsSome && not (List.contains d.Benchmark tables) then notFor "feature-scale" "data.featureScale" tables
          match normalisationOf source.Normalise with
          | Error message -> error "data.normalise" (Some "normalise") message
          | Ok None -> ()
          | Ok(Some _) -> if not (List.contains d.Benchmark images) then notFor "normalise" "data.normalise" images
          match source.FeatureScale with
          | Some s when not (s > 0.0) || Double.IsInfinity s -> error "data.featureScale" (Some "feature-scale") (sprintf "the feature scale must be a positive number (got %g)" s)
          | _ -> ()
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
          if config.Heads = HeadCount.Multi then
              if List.contains methodName [ "der"; "derpp"; "icarl" ] then
                  error "heads" (Some "heads")
                      (sprintf "%s does not work with one head per task (%s); use --heads single"
                          methodName (if methodName = "icarl" then "it classifies by the nearest mean of exemplars over all classes" else "its stored logits span every head"))
              if not config.Distillation.IsEmpty then
                  error "heads" (Some "heads") "distillation terms compare whole outputs and do not work with one head per task; use --heads single"
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
        let distilled = config.Distillation |> List.fold (fun s d -> s |> Method.add (DistillationTerm.create d)) penalised
        // One head per task: the shell fills in each task's classes from the benchmark it runs on.
        match config.Heads with
        | HeadCount.Multi -> { distilled with Heads = Some [] }
        | HeadCount.Single -> distilled

    /// Loads the benchmark a configuration names, restricted per class when asked.
    /// A built-in benchmark split into tasks of `classesPerTask` classes in label order instead of its
    /// own split (the last task takes what is left).
    let private resplit (classesPerTask: int option) (benchmark: Benchmark) : Benchmark =
        match classesPerTask with
        | None -> benchmark
        | Some n ->
            { benchmark with
                Tasks = [ for (i, classes) in List.indexed (List.chunkBySize n [ 0 .. benchmark.NumClasses - 1 ]) -> { Index = i; Classes = classes } ] }

    let loadBenchmark (config: Config) : Benchmark =
        let d = config.Data
        let full =
            match d.Benchmark with
            | "split-fmnist" -> Benchmarks.splitMnistStyle "split-fmnist" d.Folder |> resplit d.Source.ClassesPerTask
            | "split-mnist" -> Benchmarks.splitMnistStyle "split-mnist" d.Folder |> resplit d.Source.ClassesPerTask
            | "split-cifar10" -> Cifar.splitCifar10 d.Folder |> resplit d.Source.ClassesPerTask
            | "split-tinyimagenet" -> TinyImageNet.splitTinyImageNet (imageOptions d.Source) d.Folder
            | "folder" -> ImageFolders.benchmark (imageOptions d.Source) (defaultArg d.Source.ClassesPerTask 2) d.Folder
            | "csv" -> Tables.csvBenchmark (tableOptions d.Source) (defaultArg d.Source.ClassesPerTask 2) d.Folder
            | "npy" -> Tables.npyBenchmark d.Source.FeatureScale (defaultArg d.Source.ClassesPerTask 2) d.Folder
            | "manifest" -> Manifest.benchmark (imageOptions d.Source) (tableOptions d.Source) d.Folder
            | other -> invalidArg (nameof config) (sprintf "unknown benchmark '%s'" other)
        if not d.AllowMissingClasses then
            // A hash set: an F# Set of 60,000 labels took 15 ms of every run's start.
            let present = Collections.Generic.HashSet<int>(full.Train.LabelArray)
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
        let benchmark =
            match normalisationOf d.Source.Normalise with
            | Ok(Some FromTraining) -> Benchmarks.normaliseByTraining benchmark
            | Ok(Some(Given values)) ->
                let (channels, _, _) = benchmark.InputShape
                if values.Mean.Length <> channels then
                    Benchmarks.dispose benchmark
                    raise (
                        InvalidConfiguration
                            [ { Path = "data.normalise"
                                Option = Some "normalise"
                                Message = sprintf "%d values per list for images of %d channel%s in %s" values.Mean.Length channels (if channels = 1 then "" else "s") d.Folder } ])
                Benchmarks.normaliseWith values benchmark
            | _ -> benchmark
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

    /// Runs a configuration on an already loaded benchmark (the caller keeps ownership of it), with
    /// external terms (the C# façade's custom terms) added after the configuration's own methods.
    let runOnWith (terms: IExternalTerm list) (benchmark: Benchmark) (config: Config) (hooks: RunHooks) (cancellation: CancellationToken) =
        ensureValid config
        Engine.configureThreads config.Run.Threads
        let started = DateTime.UtcNow
        let clock = Diagnostics.Stopwatch.StartNew()
        let architecture = Backbones.ofName config.Backbone benchmark.InputShape (initialHeadClasses config benchmark)
        let strategy = terms |> List.fold (fun s t -> s |> Method.add (ExternalTerm.create t)) (strategy config)
        let outcome = Training.run architecture benchmark strategy (settings config) hooks cancellation
        { Config = config
          // The model's own: a growing head ends wider than it started.
          Architecture = outcome.State.Model.Architecture
          Benchmark = benchmark
          Outcome = outcome
          WallSeconds = clock.Elapsed.TotalSeconds
          StartedUtc = started }

    /// Runs a configuration on an already loaded benchmark (the caller keeps ownership of it).
    let runOn (benchmark: Benchmark) (config: Config) (hooks: RunHooks) (cancellation: CancellationToken) =
        runOnWith [] benchmark config hooks cancellation

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
