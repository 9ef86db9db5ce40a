namespace Continual.Methods

open Continual
open Continual.Models
open Continual.Penalties
open TorchSharp

/// SI (Zenke et al. 2017): path integral ω accumulated every step (`ω += lr g²`, the reference form of
/// `−g Δθ` for plain SGD), consolidated at the task end `Ω += ω / ((θ − θ_start)² + ξ)`; penalty
/// `c Σ Ω (θ − θ*)²` with θ* = θ_start of the next task.
[<RequireQualifiedAccess>]
module Si =

    /// SI's hyper-parameters.
    type Settings =
        { /// Penalty strength c.
          C: float
          /// Damping ξ.
          Xi: float }
        /// METHODS.md's reference settings: c 1, ξ 0.9 (with gradients clipped to 1, see `clipGradValue`).
        static member Default = { C = 1.0; Xi = 0.9 }

    /// The gradient clipping of SI's reference protocol.
    let clipGradValue = 1.0

    /// SI's state.
    type State =
        { Omega: Tensor list option
          Importance: Tensor list option
          Start: Tensor list option
          LearningRate: float
          Penalty: Quadratic option }

    /// SI's initial state.
    let initial : State = { Omega = None; Importance = None; Start = None; LearningRate = 0.0; Penalty = None }

    /// SI's consolidation `Ω + ω / ((θ − θ_start)² + ξ)` (pure).
    let consolidate (xi: float) (importance: Tensor list) (omega: Tensor list) (parameters: Tensor list) (start: Tensor list) : Tensor list =
        use _ = torch.no_grad ()
        List.zip (List.zip importance omega) (List.zip parameters start)
        |> List.map (fun ((big: Tensor, small: Tensor), (theta: Tensor, s: Tensor)) ->
            use d = theta.detach().sub s
            use xiScalar = xi.ToScalar()
            use denominator = d.square().add(xiScalar, Scalars.one)
            use ratio = small.div denominator
            (Scalars.add big ratio).DetachFromDisposeScope())

    /// SI at a task start: θ_start is set on the first task (later tasks start where the last ended).
    let beginTask (learningRate: float) (parameters: Tensor list) (state: State) : State =
        { state with
            Omega = Some(match state.Omega with Some o -> o | None -> ParameterTensors.zerosLike parameters)
            Start = Some(match state.Start with Some s -> s | None -> ParameterTensors.copy parameters)
            LearningRate = learningRate }

    /// SI after a step's backward (gradients clipped): `ω += lr g²` in place.
    let observe (gradients: Tensor list) (state: State) : State =
        match state.Omega with
        | Some omega -> Importance.accumulatePath state.LearningRate gradients omega
        | None -> invalidOp "SI observed a step before its task began"
        state

    /// SI at a task end: `Ω += ω / ((θ − θ_start)² + ξ)`, ω reset in place, θ_start = θ* = θ.
    let endTask (c: float) (xi: float) (parameters: Tensor list) (state: State) : State =
        match state.Omega, state.Start with
        | Some omega, Some start ->
            let importance =
                match state.Importance with
                | Some previous -> consolidate xi previous omega parameters start
                | None ->
                    let zeros = ParameterTensors.zerosLike parameters
                    let first = consolidate xi zeros omega parameters start
                    ParameterTensors.dispose zeros
                    first
            (use _ = torch.no_grad () in omega |> List.iter (fun o -> o.zero_() |> ignore))
            let anchor = ParameterTensors.copy parameters
            { state with
                Importance = Some importance
                Start = Some anchor
                Penalty = Some(Quadratic.create Whole c importance anchor) }
        | _ -> invalidOp "SI ended a task it did not begin"

    /// SI after the head grew: ω and Ω get zero rows (no path walked yet), θ_start the new rows'
    /// initial values (their path starts there), the penalty zero curvature and the initial values as
    /// anchor on the new rows.
    let grow (growth: HeadGrowth) (state: State) : State =
        { state with
            Omega = HeadGrowth.growOptional growth RowFill.Zeros state.Omega
            Importance = HeadGrowth.growOptional growth RowFill.Zeros state.Importance
            Start = HeadGrowth.growOptional growth RowFill.Initial state.Start
            Penalty = HeadGrowth.growPenalty growth state.Penalty }

    /// The tensors SI's state owns.
    let owned (state: State) =
        Method.optionalTensors state.Omega
        @ Method.optionalTensors state.Importance
        @ Method.optionalTensors state.Start
        @ Method.ownedPenalty state.Penalty

    /// SI as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "si" with
            BeginTask = fun c s -> beginTask c.LearningRate c.Parameters s
            Penalties = fun s -> Method.penaltyTerms "si" s.Penalty
            Observe = Some(fun view s -> observe (Importance.gradients view.Parameters) s)
            EndTask = fun c s -> endTask settings.C settings.Xi c.Parameters s
            Grow = grow
            Owned = owned
            Footprint =
                fun s ->
                    Footprint.add (Footprint.penalty s.Penalty)
                        { Footprint.zero with
                            Importance = Footprint.optionalBytes s.Omega + Footprint.optionalBytes s.Importance
                            Anchors = Footprint.optionalBytes s.Start } }

    /// SI packed with its initial state.
    let create (settings: Settings) : MethodInstance = Method.pack (method settings) initial
