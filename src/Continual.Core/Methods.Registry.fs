namespace Continual.Methods

open System.Text.Json
open Continual

/// A parameter-importance method with its settings: a strategy of its own (fine-tuning plus its
/// penalty) or a penalty added to another strategy.
[<RequireQualifiedAccess>]
type ImportanceConfig =
    | Ewc of Ewc.Settings
    | OnlineEwc of OnlineEwc.Settings
    | EwcPlusPlus of EwcPlusPlus.Settings
    | Si of Si.Settings
    | Mas of Mas.Settings
    | Rwalk of Rwalk.Settings
    | Scp of Scp.Settings
    | L2 of L2.Settings

/// The method a run trains with, with its own settings.
[<RequireQualifiedAccess>]
type MethodConfig =
    /// Fine-tuning (the lower bound).
    | Sgd
    /// All tasks at once (the upper bound).
    | Joint
    | Er of Er.Settings
    | Der of Der.Settings
    | Derpp of Der.PlusPlusSettings
    | Lwf of Lwf.Settings
    | Icarl of Icarl.Settings
    /// Only the classifier trains, in every task.
    | FinetuneFc
    /// The whole network in the first task, then only the classifier.
    | FeatureExtraction
    /// Less-Forgetting Learning: old outputs frozen, an L2 term on the penultimate features.
    | Lfl of Lfl.Settings
    /// An importance method alone: fine-tuning plus its penalty.
    | Importance of ImportanceConfig

/// What the registry knows of an importance method: its name, defaults, the gradient clipping its
/// defaults were chosen with, its settings (JSON keys, command-line options, checks) and how to build it.
type ImportanceEntry =
    { Name: string
      Summary: string
      Default: ImportanceConfig
      /// The clipping that comes with the method (as a strategy or as an added penalty).
      ClipGrad: float option
      /// The penalty's strength (λ, SI's c): a penalty of strength 0 adds nothing.
      Strength: ImportanceConfig -> float
      Settings: Setting<ImportanceConfig> list
      /// The method packed with its initial state, its generator drawn from the run's seed.
      Create: ImportanceConfig -> int64 -> MethodInstance }

/// What the registry knows of a method a run trains with.
type MethodEntry =
    { Name: string
      Summary: string
      /// Whether the method keeps a memory of examples, sized by the buffer size.
      UsesBuffer: bool
      /// The method's settings for a buffer size (the reference protocol's where published).
      Default: int -> MethodConfig
      /// The reference protocol's run settings for the method and a buffer size (learning rate,
      /// weight decay, clipping).
      Protocol: int -> RunSettings -> RunSettings
      Settings: Setting<MethodConfig> list
      /// The method as a strategy, from its settings and the run's seed.
      Create: MethodConfig -> int64 -> Strategy }

/// Every method by name: defaults, validation, JSON form and command-line options. Adding a method is
/// its module plus one entry here.
[<RequireQualifiedAccess>]
module Registry =

    /// Buffer sizes with published reference settings; other sizes take the nearest one's settings.
    let referenceBufferSizes = [ 200; 500; 5120 ]

    let private nearestReference (buffer: int) = referenceBufferSizes |> List.minBy (fun b -> abs (b - buffer))

    let private lr (rate: float) (run: RunSettings) = { run with LearningRate = rate }

    // ---- importance methods ----

    let private lambda (what: string) get set = Setting.float "lambda" "lambda" what get set (Setting.nonNegative what)

    let private ewcSettings : Setting<Ewc.Settings> list =
        [ lambda "EWC's strength λ" (fun s -> s.Lambda) (fun v s -> { s with Lambda = v })
          Setting.fisher (fun s -> s.Fisher) (fun v s -> { s with Fisher = v }) ]

    let private onlineEwcSettings : Setting<OnlineEwc.Settings> list =
        [ lambda "online EWC's strength λ" (fun s -> s.Lambda) (fun v s -> { s with Lambda = v })
          Setting.float "gamma" "gamma" "online EWC's decay γ" (fun s -> s.Gamma) (fun v s -> { s with Gamma = v }) (Setting.nonNegative "online EWC's decay γ")
          Setting.fisher (fun s -> s.Fisher) (fun v s -> { s with Fisher = v }) ]

    let private fisherAlpha what get set = Setting.float "fisherAlpha" "fisher-alpha" what get set (Setting.unitInterval what)

    let private ewcPlusPlusSettings : Setting<EwcPlusPlus.Settings> list =
        [ lambda "EWC++'s strength λ" (fun s -> s.Lambda) (fun v s -> { s with Lambda = v })
          fisherAlpha "EWC++'s weight α of the batch Fisher" (fun s -> s.FisherAlpha) (fun v s -> { s with FisherAlpha = v })
          Setting.fisher (fun s -> s.Fisher) (fun v s -> { s with Fisher = v }) ]

    let private siSettings : Setting<Si.Settings> list =
        [ Setting.float "c" "lambda" "SI's strength c" (fun s -> s.C) (fun v s -> { s with C = v }) (Setting.nonNegative "SI's strength c")
          Setting.float "xi" "xi" "SI's damping ξ" (fun s -> s.Xi) (fun v s -> { s with Xi = v }) (Setting.positive "SI's damping ξ") ]

    let private masSettings : Setting<Mas.Settings> list =
        [ lambda "MAS's strength λ" (fun s -> s.Lambda) (fun v s -> { s with Lambda = v }) ]

    let private rwalkSettings : Setting<Rwalk.Settings> list =
        [ lambda "RWalk's strength λ" (fun s -> s.Lambda) (fun v s -> { s with Lambda = v })
          fisherAlpha "RWalk's weight α of the batch Fisher" (fun s -> s.FisherAlpha) (fun v s -> { s with FisherAlpha = v })
          Setting.int "scoreEvery" "score-every" "RWalk's steps per score window" (fun s -> s.ScoreEvery) (fun v s -> { s with ScoreEvery = v }) (Setting.positiveCount "RWalk's steps per score window")
          Setting.float "epsilon" "epsilon" "RWalk's ε" (fun s -> s.Epsilon) (fun v s -> { s with Epsilon = v }) (Setting.positive "RWalk's ε")
          Setting.fisher (fun s -> s.Fisher) (fun v s -> { s with Fisher = v }) ]

    let private l2Settings : Setting<L2.Settings> list =
        [ lambda "L2's strength λ" (fun s -> s.Lambda) (fun v s -> { s with Lambda = v }) ]

    let private scpSettings : Setting<Scp.Settings> list =
        [ lambda "SCP's strength λ" (fun s -> s.Lambda) (fun v s -> { s with Lambda = v })
          Setting.float "alpha" "scp-alpha" "SCP's weight α of the old Γ" (fun s -> s.Alpha) (fun v s -> { s with Alpha = v }) (Setting.belowOne "SCP's weight α of the old Γ")
          Setting.int "slices" "slices" "SCP's slices per batch" (fun s -> s.Slices) (fun v s -> { s with Slices = v }) (Setting.positiveCount "SCP's slices per batch")
          Setting.int "batchSize" "scp-batch" "SCP's samples per batch mean" (fun s -> s.BatchSize) (fun v s -> { s with BatchSize = v }) (Setting.positiveCount "SCP's samples per batch mean") ]

    /// The importance methods.
    let importance : ImportanceEntry list =
        let entry name summary (defaults: 'S) wrap unwrap clip (strength: 'S -> float) (settings: Setting<'S> list) (create: 'S -> int64 -> MethodInstance) =
            { Name = name
              Summary = summary
              Default = wrap defaults
              ClipGrad = clip
              Strength = fun config -> match unwrap config with Some s -> strength s | None -> nan
              Settings = settings |> List.map (Setting.lift unwrap wrap)
              Create = fun config seed -> match unwrap config with Some s -> create s seed | None -> invalidArg (nameof config) (sprintf "not %s settings" name) }
        [ entry "ewc" "EWC: one Fisher and anchor per task" Ewc.Settings.Default ImportanceConfig.Ewc (function ImportanceConfig.Ewc s -> Some s | _ -> None) None (fun s -> s.Lambda) ewcSettings Ewc.create
          entry "ewc-online" "online EWC: one decayed running Fisher" OnlineEwc.Settings.Default ImportanceConfig.OnlineEwc (function ImportanceConfig.OnlineEwc s -> Some s | _ -> None) None (fun s -> s.Lambda) onlineEwcSettings OnlineEwc.create
          entry "ewc++" "EWC++: a Fisher updated every batch" EwcPlusPlus.Settings.Default ImportanceConfig.EwcPlusPlus (function ImportanceConfig.EwcPlusPlus s -> Some s | _ -> None) None (fun s -> s.Lambda) ewcPlusPlusSettings EwcPlusPlus.create
          entry "si" "SI: path integrals of every parameter's contribution" Si.Settings.Default ImportanceConfig.Si (function ImportanceConfig.Si s -> Some s | _ -> None) (Some Si.clipGradValue) (fun s -> s.C) siSettings (fun s _ -> Si.create s)
          entry "mas" "MAS: sensitivity of the output norm" Mas.Settings.Default ImportanceConfig.Mas (function ImportanceConfig.Mas s -> Some s | _ -> None) None (fun s -> s.Lambda) masSettings (fun s _ -> Mas.create s)
          entry "rwalk" "RWalk: EWC++'s Fisher plus path scores" Rwalk.Settings.Default ImportanceConfig.Rwalk (function ImportanceConfig.Rwalk s -> Some s | _ -> None) None (fun s -> s.Lambda) rwalkSettings Rwalk.create
          entry "scp" "SCP: sliced Cramér preservation" Scp.Settings.Default ImportanceConfig.Scp (function ImportanceConfig.Scp s -> Some s | _ -> None) (Some Scp.clipGradValue) (fun s -> s.Lambda) scpSettings Scp.create
          entry "l2" "L2: every parameter anchored equally" L2.Settings.Default ImportanceConfig.L2 (function ImportanceConfig.L2 s -> Some s | _ -> None) None (fun s -> s.Lambda) l2Settings (fun s _ -> L2.create s) ]

    /// The importance methods' names.
    let importanceNames = importance |> List.map (fun e -> e.Name)

    /// The entry of an importance method's settings.
    let importanceEntryOf (config: ImportanceConfig) : ImportanceEntry =
        let name =
            match config with
            | ImportanceConfig.Ewc _ -> "ewc"
            | ImportanceConfig.OnlineEwc _ -> "ewc-online"
            | ImportanceConfig.EwcPlusPlus _ -> "ewc++"
            | ImportanceConfig.Si _ -> "si"
            | ImportanceConfig.Mas _ -> "mas"
            | ImportanceConfig.Rwalk _ -> "rwalk"
            | ImportanceConfig.Scp _ -> "scp"
            | ImportanceConfig.L2 _ -> "l2"
        importance |> List.find (fun e -> e.Name = name)

    /// The importance method of a name, None when there is none.
    let tryImportance (name: string) : ImportanceEntry option =
        let n = name.Trim().ToLowerInvariant()
        importance |> List.tryFind (fun e -> e.Name = n)

    // ---- the methods a run trains with ----

    let private bufferSetting what get set = Setting.int "buffer" "buffer" what get set (Setting.positiveCount what)
    let private minibatchSetting what get set = Setting.int "minibatch" "minibatch" what get set (Setting.positiveCount what)

    let private erSettings : Setting<Er.Settings> list =
        [ bufferSetting "ER's buffer size" (fun s -> s.BufferSize) (fun v s -> { s with BufferSize = v })
          minibatchSetting "ER's buffer minibatch" (fun s -> s.Minibatch) (fun v s -> { s with Minibatch = v }) ]

    let private derSettings : Setting<Der.Settings> list =
        [ bufferSetting "DER's buffer size" (fun s -> s.BufferSize) (fun v s -> { s with BufferSize = v })
          minibatchSetting "DER's buffer minibatch" (fun s -> s.Minibatch) (fun v s -> { s with Minibatch = v })
          Setting.float "alpha" "alpha" "DER's logit weight α" (fun s -> s.Alpha) (fun v s -> { s with Alpha = v }) (Setting.nonNegative "DER's logit weight α") ]

    let private derppSettings : Setting<Der.PlusPlusSettings> list =
        [ bufferSetting "DER++'s buffer size" (fun s -> s.BufferSize) (fun v s -> { s with BufferSize = v })
          minibatchSetting "DER++'s buffer minibatch" (fun s -> s.Minibatch) (fun v s -> { s with Minibatch = v })
          Setting.float "alpha" "alpha" "DER++'s logit weight α" (fun s -> s.Alpha) (fun v s -> { s with Alpha = v }) (Setting.nonNegative "DER++'s logit weight α")
          Setting.float "beta" "beta" "DER++'s label weight β" (fun s -> s.Beta) (fun v s -> { s with Beta = v }) (Setting.nonNegative "DER++'s label weight β") ]

    let private lwfSettings : Setting<Lwf.Settings> list =
        [ Setting.float "alpha" "alpha" "LwF's distillation weight α" (fun s -> s.Alpha) (fun v s -> { s with Alpha = v }) (Setting.nonNegative "LwF's distillation weight α")
          Setting.float "temperature" "temperature" "LwF's temperature" (fun s -> s.Temperature) (fun v s -> { s with Temperature = v }) (Setting.positive "LwF's temperature")
          Setting.bool "balanced" "lwf-balance" "LwF's balancing by |Y_old|/|Y_seen|" (fun s -> s.Balanced) (fun v s -> { s with Balanced = v })
          Setting.int "warmupEpochs" "warmup-epochs" "LwF's warm-up epochs" (fun s -> s.WarmupEpochs) (fun v s -> { s with WarmupEpochs = v })
              (fun v -> if v >= 0 then None else Some(sprintf "LwF's warm-up epochs must not be negative (got %d)" v)) ]

    let private lflSettings : Setting<Lfl.Settings> list =
        [ Setting.float "lambda" "lambda" "LFL's feature weight λ" (fun s -> s.Lambda) (fun v s -> { s with Lambda = v }) (Setting.nonNegative "LFL's feature weight λ") ]

    let private icarlSettings : Setting<Icarl.Settings> list =
        [ bufferSetting "iCaRL's memory" (fun s -> s.Memory) (fun v s -> { s with Memory = v }) ]

    /// The reference protocol's learning rate, minibatch and weights of the replay methods by buffer size.
    let private replayProtocol (name: string) (buffer: int) =
        match name, nearestReference buffer with
        | "er", 200 -> 0.01, 10, 0.0, 0.0
        | "er", _ -> 0.1, 10, 0.0, 0.0
        | "der", 200 -> 0.03, 10, 0.2, 0.0
        | "der", 500 -> 0.03, 128, 1.0, 0.0
        | "der", _ -> 0.1, 128, 0.5, 0.0
        | "derpp", 200 -> 0.03, 128, 0.2, 1.0
        | "derpp", 500 -> 0.03, 10, 1.0, 0.5
        | "derpp", _ -> 0.1, 64, 0.2, 0.5
        | _ -> 0.03, 10, 0.0, 0.0

    let private methodEntry name summary usesBuffer (defaults: int -> 'S) wrap unwrap protocol (settings: Setting<'S> list) (create: 'S -> int64 -> Strategy) : MethodEntry =
        { Name = name
          Summary = summary
          UsesBuffer = usesBuffer
          Default = defaults >> wrap
          Protocol = protocol
          Settings = settings |> List.map (Setting.lift unwrap wrap)
          Create = fun config seed -> match unwrap config with Some s -> create s seed | None -> invalidArg (nameof config) (sprintf "not %s settings" name) }

    let private stateless name summary (config: MethodConfig) (strategy: unit -> Strategy) : MethodEntry =
        { Name = name
          Summary = summary
          UsesBuffer = false
          Default = fun _ -> config
          Protocol = fun _ run -> lr 0.03 run
          Settings = []
          Create = fun _ _ -> strategy () }

    /// The methods a run can train with: the replay family and the bounds, the distillation family,
    /// and every importance method as a strategy of its own.
    let methods : MethodEntry list =
        [ stateless "sgd" "fine-tuning, the lower bound" MethodConfig.Sgd Methods.Sgd.strategy
          stateless "joint" "all tasks at once, the upper bound" MethodConfig.Joint Methods.Sgd.joint
          methodEntry "er" "experience replay" true
              (fun b -> let _, m, _, _ = replayProtocol "er" b in ({ BufferSize = b; Minibatch = m }: Er.Settings))
              MethodConfig.Er (function MethodConfig.Er s -> Some s | _ -> None)
              (fun b run -> let r, _, _, _ = replayProtocol "er" b in lr r run)
              erSettings (fun s _ -> Methods.Er.strategy s)
          methodEntry "der" "dark experience replay" true
              (fun b -> let _, m, a, _ = replayProtocol "der" b in ({ BufferSize = b; Minibatch = m; Alpha = a }: Der.Settings))
              MethodConfig.Der (function MethodConfig.Der s -> Some s | _ -> None)
              (fun b run -> let r, _, _, _ = replayProtocol "der" b in lr r run)
              derSettings (fun s _ -> Methods.Der.der s)
          methodEntry "derpp" "DER++" true
              (fun b -> let _, m, a, beta = replayProtocol "derpp" b in ({ BufferSize = b; Minibatch = m; Alpha = a; Beta = beta }: Der.PlusPlusSettings))
              MethodConfig.Derpp (function MethodConfig.Derpp s -> Some s | _ -> None)
              (fun b run -> let r, _, _, _ = replayProtocol "derpp" b in lr r run)
              derppSettings (fun s _ -> Methods.Der.derpp s)
          methodEntry "lwf" "learning without forgetting" false
              (fun _ -> Lwf.Settings.Default) MethodConfig.Lwf (function MethodConfig.Lwf s -> Some s | _ -> None)
              (fun _ run -> { run with LearningRate = 0.03; WeightDecay = 5e-4 })
              lwfSettings Methods.Lwf.strategy
          methodEntry "icarl" "iCaRL: herding exemplars and nearest mean of exemplars" true
              (fun b -> ({ Memory = b }: Icarl.Settings)) MethodConfig.Icarl (function MethodConfig.Icarl s -> Some s | _ -> None)
              (fun _ run -> lr 0.1 run)
              icarlSettings (fun s _ -> Methods.Icarl.strategy s)
          stateless "finetune-fc" "only the classifier trains (backbone as initialised)" MethodConfig.FinetuneFc Methods.FinetuneFc.strategy
          stateless "feature-extraction" "backbone frozen after the first task, only the classifier trains" MethodConfig.FeatureExtraction Methods.FeatureExtraction.strategy
          methodEntry "lfl" "less-forgetting learning: old outputs frozen, L2 on the penultimate features" false
              (fun _ -> Lfl.Settings.Default) MethodConfig.Lfl (function MethodConfig.Lfl s -> Some s | _ -> None)
              (fun _ run -> lr 0.03 run)
              lflSettings (fun s _ -> Methods.Lfl.strategy s) ]
        @ [ for e in importance ->
              { Name = e.Name
                Summary = e.Summary
                UsesBuffer = false
                Default = fun _ -> MethodConfig.Importance e.Default
                Protocol = fun _ run -> { run with LearningRate = (if e.Name = "si" then 0.1 else 0.03); ClipGrad = e.ClipGrad }
                Settings = e.Settings |> List.map (Setting.lift (function MethodConfig.Importance i -> Some i | _ -> None) MethodConfig.Importance)
                Create =
                  fun config seed ->
                      match config with
                      | MethodConfig.Importance i -> { Methods.Sgd.strategy () with Name = e.Name } |> Method.add (e.Create i seed)
                      | _ -> invalidArg (nameof config) (sprintf "not %s settings" e.Name) } ]

    /// Every method's name.
    let methodNames = methods |> List.map (fun e -> e.Name)

    /// The method of a name, None when there is none.
    let tryMethod (name: string) : MethodEntry option =
        let n = name.Trim().ToLowerInvariant()
        methods |> List.tryFind (fun e -> e.Name = n)

    /// The name of a method's settings.
    let nameOf (config: MethodConfig) : string =
        match config with
        | MethodConfig.Sgd -> "sgd"
        | MethodConfig.Joint -> "joint"
        | MethodConfig.Er _ -> "er"
        | MethodConfig.Der _ -> "der"
        | MethodConfig.Derpp _ -> "derpp"
        | MethodConfig.Lwf _ -> "lwf"
        | MethodConfig.Icarl _ -> "icarl"
        | MethodConfig.FinetuneFc -> "finetune-fc"
        | MethodConfig.FeatureExtraction -> "feature-extraction"
        | MethodConfig.Lfl _ -> "lfl"
        | MethodConfig.Importance i -> (importanceEntryOf i).Name

    /// The entry of a method's settings.
    let entryOf (config: MethodConfig) : MethodEntry = methods |> List.find (fun e -> e.Name = nameOf config)

    // ---- distillation terms ----

    /// The settings of a distillation term.
    let distillationSettings : Setting<DistillationSettings> list =
        [ Setting.float "weight" "distill-weight" "the distillation term's weight" (fun s -> s.Weight) (fun v s -> { s with Weight = v }) (Setting.nonNegative "the distillation term's weight")
          Setting.float "temperature" "temperature" "KD's temperature" (fun s -> s.Temperature) (fun v s -> { s with Temperature = v }) (Setting.positive "KD's temperature")
          Setting.int "subspaceDim" "subspace-dim" "SD's subspace dimension" (fun s -> s.SubspaceDim) (fun v s -> { s with SubspaceDim = v }) (Setting.positiveCount "SD's subspace dimension")
          Setting.int "relationSamples" "relation-samples" "the relation terms' samples" (fun s -> s.RelationSamples) (fun v s -> { s with RelationSamples = v }) (Setting.positiveCount "the relation terms' samples") ]

    // ---- JSON ----

    /// Writes `{"name": ..., settings...}` for a named component.
    let writeNamed (w: Utf8JsonWriter) (name: string) (settings: Setting<'S> list) (value: 'S) =
        w.WriteStartObject()
        w.WriteString("name", name)
        for s in settings do s.Write w value
        w.WriteEndObject()

    /// Reads the settings present in a JSON object onto a value (absent keys keep the value's).
    let readNamed (e: JsonElement) (settings: Setting<'S> list) (value: 'S) : 'S =
        settings
        |> List.fold (fun v s ->
            match e.TryGetProperty s.Name with
            | true, p -> s.Read p v
            | _ -> v) value

    /// Sets the option `option` from text on a component's settings, matched by its command-line name
    /// (without "--") or, with `byName`, by its JSON name (any case, '-' and '_' ignored); None when
    /// none of the settings has it.
    let parseOption (byName: bool) (settings: Setting<'S> list) (option: string) (text: string) (value: 'S) : Result<'S, string> option =
        let key = option.Trim().TrimStart('-').ToLowerInvariant()
        let normalise (s: string) = s.Replace("-", "").Replace("_", "").ToLowerInvariant()
        settings
        |> List.filter (fun s -> if byName then normalise s.Name = normalise key else s.Option = key)
        |> function
            | [] -> None
            | matches -> Some(matches |> List.fold (fun acc s -> acc |> Result.bind (s.Parse text)) (Ok value))
