namespace Continual.Strategies

open Continual
open Continual.Models
open Continual.Penalties

/// Hyper-parameters of the parameter-importance family (each method reads the ones it needs).
type ImportanceSettings =
    { /// Penalty strength λ (SI's c).
      Lambda: float
      /// Online EWC's decay γ in `F ← γ F + F_t`.
      Gamma: float
      /// SI's damping ξ.
      Xi: float
      /// EWC++ and RWalk's α in `F ← α F_batch + (1 − α) F`.
      FisherAlpha: float
      /// RWalk: steps per path-score window.
      ScoreEvery: int
      /// RWalk's ε in the score's denominator.
      Epsilon: float
      /// SCP: random slices per batch.
      Slices: int
      /// SCP's α in `Γ ← α Γ_old + (1 − α) Γ_t`.
      ScpAlpha: float
      /// SCP: samples per batch mean.
      ScpBatch: int
      /// The Fisher's labels (EWC, online EWC, EWC++, RWalk).
      Fisher: FisherKind
      /// Seed of the method's own generator (sampled Fisher labels, SCP slices).
      Seed: int64 }

/// One importance method as explicit transitions over its state value.
type ImportanceMethod<'State> =
    { Name: string
      BeginTask: TaskContext -> 'State -> 'State
      /// After backward (gradients clipped), before the optimiser step, with the model's parameters
      /// (looked up once per model) and the step's view; None when nothing happens per step.
      Observe: (Tensor list -> StepView -> 'State -> 'State) option
      /// After the optimiser step, with the model's parameters; None when nothing happens per step.
      AfterStep: (Tensor list -> 'State -> 'State) option
      EndTask: TaskContext -> 'State -> 'State
      /// The penalty the state defines (None before the first task ends).
      Penalty: 'State -> Quadratic option
      Dispose: 'State -> unit }

/// An importance method as a strategy extension: its penalty is the method's quadratic penalty and
/// its transitions return the next extension value.
type ImportanceExtension<'State>(method: ImportanceMethod<'State>, state: 'State) =
    inherit Extension()
    // The model's parameter list, looked up once per model (enumerating modules every step costs time).
    let mutable parameters: (Backbone * Tensor list) option = None
    let parametersOf (model: Backbone) =
        match parameters with
        | Some(m, ps) when obj.ReferenceEquals(m, model) -> ps
        | _ ->
            let ps = PerSample.parameters model
            parameters <- Some(model, ps)
            ps
    let next (s: 'State) =
        let e = new ImportanceExtension<'State>(method, s)
        e.ShareParameters parameters
        e :> Extension

    member internal _.ShareParameters(p: (Backbone * Tensor list) option) = parameters <- p
    /// The method's current state.
    member _.State = state
    /// The method's transitions.
    member _.Method = method
    override _.Name = method.Name
    override _.BeginTask context = next (method.BeginTask context state)
    override _.Penalties =
        match method.Penalty state with
        | Some q -> [ { Name = method.Name; Penalty = q } ]
        | None -> []
    override this.AfterBackwardOn view =
        match method.Observe with
        | Some observe -> next (observe (parametersOf view.Model) view state)
        | None -> this
    override this.AfterStep model =
        match method.AfterStep with
        | Some step -> next (step (parametersOf model) state)
        | None -> this
    override _.EndTask context = next (method.EndTask context state)
    override _.Dispose() = method.Dispose state

/// The parameter-importance methods as extensions and as strategies (SGD plus the penalty).
[<RequireQualifiedAccess>]
module ImportanceStrategies =

    /// The methods' names, as on the command line.
    let names = [ "ewc"; "ewc-online"; "ewc++"; "si"; "mas"; "rwalk"; "scp" ]

    let private parametersOf (model: Backbone) = PerSample.parameters model

    /// The step's batch Fisher, blended straight into a running Fisher from the step's own activations.
    let private batchFisherBlend (kind: FisherKind) (parameters: Tensor list) (view: StepView) : FisherBlend =
        let activations = view.Batch.Inputs :: view.Output.Features
        let labels = view.Batch.LabelArray |> Array.map int64
        fun decay scale running rng ->
            Estimate.blendBatchFisher kind view.Model parameters view.Batch.Inputs activations view.Output.Logits labels decay scale running rng

    let private rngOf (settings: ImportanceSettings) = Random.split 3L (Random.create settings.Seed)

    /// EWC with one (Fisher, anchor) pair per task.
    let ewcMethod (settings: ImportanceSettings) : ImportanceMethod<EwcState> =
        { Name = "ewc"
          BeginTask = fun _ s -> s
          Observe = None
          AfterStep = None
          EndTask = fun c s -> Importance.ewcEndTask settings.Lambda settings.Fisher c.Model c.Train c.Device s
          Penalty = fun s -> s.Penalty
          Dispose = Importance.ewcDispose }

    /// Online EWC.
    let onlineEwcMethod (settings: ImportanceSettings) : ImportanceMethod<OnlineEwcState> =
        { Name = "ewc-online"
          BeginTask = fun _ s -> s
          Observe = None
          AfterStep = None
          EndTask = fun c s -> Importance.onlineEwcEndTask settings.Lambda settings.Gamma settings.Fisher c.Model c.Train c.Device s
          Penalty = fun s -> s.Penalty
          Dispose = Importance.onlineEwcDispose }

    /// EWC++.
    let ewcPlusPlusMethod (settings: ImportanceSettings) : ImportanceMethod<EwcPlusPlusState> =
        { Name = "ewc++"
          BeginTask = fun _ s -> s
          Observe =
            Some(fun parameters view s ->
                Importance.ewcPlusPlusObserve settings.FisherAlpha view.Batch.LabelArray.Length (batchFisherBlend settings.Fisher parameters view) parameters s)
          AfterStep = None
          EndTask = fun c s -> Importance.ewcPlusPlusEndTask settings.Lambda (parametersOf c.Model) s
          Penalty = fun s -> s.Penalty
          Dispose = Importance.ewcPlusPlusDispose }

    /// SI (reference convention: c Σ Ω (θ − θ*)², ω += lr g²).
    let siMethod (settings: ImportanceSettings) : ImportanceMethod<SiState> =
        { Name = "si"
          BeginTask = fun c s -> Importance.siBeginTask c.LearningRate (parametersOf c.Model) s
          Observe = Some(fun parameters _ s -> Importance.siObserve (Importance.gradients parameters) s)
          AfterStep = None
          EndTask = fun c s -> Importance.siEndTask settings.Lambda settings.Xi (parametersOf c.Model) s
          Penalty = fun s -> s.Penalty
          Dispose = Importance.siDispose }

    /// MAS.
    let masMethod (settings: ImportanceSettings) : ImportanceMethod<MasState> =
        { Name = "mas"
          BeginTask = fun _ s -> s
          Observe = None
          AfterStep = None
          EndTask = fun c s -> Importance.masEndTask settings.Lambda c.Model c.Train c.Device s
          Penalty = fun s -> s.Penalty
          Dispose = Importance.masDispose }

    /// RWalk.
    let rwalkMethod (settings: ImportanceSettings) : ImportanceMethod<RwalkState> =
        { Name = "rwalk"
          BeginTask = fun c s -> Importance.rwalkBeginTask c.LearningRate (parametersOf c.Model) s
          Observe =
            Some(fun parameters view s ->
                Importance.rwalkObserve settings.FisherAlpha view.Batch.LabelArray.Length (batchFisherBlend settings.Fisher parameters view) (Importance.gradients parameters) s)
          AfterStep = Some(fun parameters s -> Importance.rwalkAfterStep settings.ScoreEvery settings.Epsilon parameters s)
          EndTask = fun c s -> Importance.rwalkEndTask settings.Lambda settings.Epsilon (parametersOf c.Model) s
          Penalty = fun s -> s.Penalty
          Dispose = Importance.rwalkDispose }

    /// SCP.
    let scpMethod (settings: ImportanceSettings) : ImportanceMethod<ScpState> =
        { Name = "scp"
          BeginTask = fun _ s -> s
          Observe = None
          AfterStep = None
          EndTask = fun c s -> Importance.scpEndTask settings.Lambda settings.ScpAlpha settings.Slices settings.ScpBatch c.Model c.Train c.Device s
          Penalty = fun s -> s.Penalty
          Dispose = Importance.scpDispose }

    /// The extension of a method by name (one of `names`).
    let extension (name: string) (settings: ImportanceSettings) : Extension =
        let rng = rngOf settings
        match name with
        | "ewc" -> new ImportanceExtension<_>(ewcMethod settings, Importance.ewcInitial rng) :> Extension
        | "ewc-online" -> new ImportanceExtension<_>(onlineEwcMethod settings, Importance.onlineEwcInitial rng) :> Extension
        | "ewc++" -> new ImportanceExtension<_>(ewcPlusPlusMethod settings, Importance.ewcPlusPlusInitial rng) :> Extension
        | "si" -> new ImportanceExtension<_>(siMethod settings, Importance.siInitial) :> Extension
        | "mas" -> new ImportanceExtension<_>(masMethod settings, Importance.masInitial) :> Extension
        | "rwalk" -> new ImportanceExtension<_>(rwalkMethod settings, Importance.rwalkInitial rng) :> Extension
        | "scp" -> new ImportanceExtension<_>(scpMethod settings, Importance.scpInitial rng) :> Extension
        | other -> invalidArg (nameof name) (sprintf "unknown importance method '%s' (expected one of: %s)" other (String.concat ", " names))

    /// A method as a strategy: SGD's cross-entropy plus the method's penalty, with optional gradient
    /// clipping (SI's reference protocol clips to [-1, 1]).
    let strategy (name: string) (settings: ImportanceSettings) (clipGradValue: float option) : Strategy =
        { Strategies.sgd with
            Name = name
            Extensions = [ extension name settings ]
            ClipGradValue = clipGradValue }
