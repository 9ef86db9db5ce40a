namespace Continual.Methods

open Continual
open Continual.Models
open Continual.Penalties
open TorchSharp

/// RWalk (Chaudhry et al. 2018): the EWC++ Fisher plus path scores `s = Σ_windows relu(Σ −g Δθ /
/// (½ F Δθ² + ε))`, where −g Δθ is accumulated per step (`lr g²` under plain SGD) and Δθ is the
/// displacement over a window of steps; at a task end scores are averaged with the previous tasks'
/// and `Ω = F / max F + s / max s` (both normalised to [0, 1] as the paper suggests).
[<RequireQualifiedAccess>]
module Rwalk =

    /// RWalk's hyper-parameters.
    type Settings =
        { /// Penalty strength λ.
          Lambda: float
          /// Weight α of the new batch in the running Fisher.
          FisherAlpha: float
          /// Steps per path-score window.
          ScoreEvery: int
          /// ε in the score's denominator.
          Epsilon: float
          /// The Fisher's labels.
          Fisher: FisherKind }
        /// λ 10 (chosen on seed 10), α 0.9 and 10-step windows as in Chaudhry et al. and Avalanche, ε the
        /// float32 machine epsilon (torch.finfo(float32).eps, Avalanche's RWalk), the empirical Fisher.
        static member Default =
            { Lambda = 10.0; FisherAlpha = 0.9; ScoreEvery = 10; Epsilon = 1.1920928955078125e-7; Fisher = Empirical }

    /// RWalk's state.
    type State =
        { Running: Tensor list option
          /// Σ −g Δθ over the open window.
          WindowLoss: Tensor list option
          /// θ at the start of the open window.
          WindowStart: Tensor list option
          /// Scores accumulated over the current task.
          Scores: Tensor list option
          /// Scores of the previous tasks (averaged).
          PreviousScores: Tensor list option
          /// Steps taken in the open window.
          WindowSteps: int
          LearningRate: float
          Penalty: Quadratic option
          Rng: RandomState }

    /// RWalk's initial state.
    let initial (rng: RandomState) : State =
        { Running = None; WindowLoss = None; WindowStart = None; Scores = None; PreviousScores = None
          WindowSteps = 0; LearningRate = 0.0; Penalty = None; Rng = rng }

    /// RWalk's score for one window: `relu(loss / (½ F Δθ² + ε))`, Δθ = θ − θ_window start (pure).
    let score (epsilon: float) (fisher: Tensor list) (windowLoss: Tensor list) (parameters: Tensor list) (windowStart: Tensor list) : Tensor list =
        use _ = torch.no_grad ()
        List.zip (List.zip fisher windowLoss) (List.zip parameters windowStart)
        |> List.map (fun ((f: Tensor, loss: Tensor), (theta: Tensor, s: Tensor)) ->
            use d = theta.detach().sub s
            use half = 0.5.ToScalar()
            use eps = epsilon.ToScalar()
            use denominator = f.mul(d.square()).mul(half).add(eps, Scalars.one)
            use ratio = loss.div denominator
            torch.nn.functional.relu(ratio).DetachFromDisposeScope())

    /// RWalk's importance `F / max F + s / max s` (a zero maximum leaves that part out).
    let importance (fisher: Tensor list) (scores: Tensor list) : Tensor list =
        let fmax = ParameterTensors.max fisher
        let smax = ParameterTensors.max scores
        let a = if fmax > 0.0 then 1.0 / fmax else 0.0
        let b = if smax > 0.0 then 1.0 / smax else 0.0
        ParameterTensors.combine a fisher b scores

    /// RWalk at a task start: window and score accumulators start at θ and zero.
    let beginTask (learningRate: float) (parameters: Tensor list) (state: State) : State =
        { state with
            WindowLoss = Some(match state.WindowLoss with Some w -> w | None -> ParameterTensors.zerosLike parameters)
            WindowStart = Some(ParameterTensors.copy parameters)
            Scores = Some(match state.Scores with Some s -> s | None -> ParameterTensors.zerosLike parameters)
            WindowSteps = 0
            LearningRate = learningRate }

    /// RWalk after a step's backward: the batch's Fisher (`Σ_n g_n² / count`) enters the running average
    /// and `lr g²` the window's loss change.
    let observe (alpha: float) (count: int) (blend: FisherBlend) (gradients: Tensor list) (state: State) : State =
        match state.WindowLoss with
        | Some loss ->
            Importance.accumulatePath state.LearningRate gradients loss
            let running, rng = Importance.blendRunning alpha count blend gradients state.Running state.Rng
            { state with Running = Some running; Rng = rng }
        | None -> invalidOp "RWalk observed a step before its task began"

    /// Closes the open window: its score is added to the task's scores; a new window starts at θ.
    let closeWindow (epsilon: float) (parameters: Tensor list) (state: State) : State =
        match state.WindowLoss, state.WindowStart, state.Scores, state.Running with
        | Some loss, Some start, Some scores, Some fisher when state.WindowSteps > 0 ->
            // `score`'s operations in the same order, in place in the window's own buffers (they are
            // reset right after): s − θ = −(θ − s) exactly and squares alike, so the scores are the
            // same to the bit, without a temporary per operation.
            use _ = torch.inference_mode true
            use half = 0.5.ToScalar()
            use eps = epsilon.ToScalar()
            for (((f: Tensor), (l: Tensor)), ((theta: Tensor), (s0: Tensor)), (acc: Tensor)) in List.zip3 (List.zip fisher loss) (List.zip parameters start) scores do
                let denominator = s0.sub_(theta)
                denominator.mul_(denominator).mul_(f).mul_(half).add_(eps, Scalars.one) |> ignore
                l.div_(denominator).relu_() |> ignore
                Scalars.addInPlace acc l |> ignore
                s0.copy_ theta |> ignore
                l.zero_() |> ignore
            { state with WindowSteps = 0 }
        | _ -> state

    /// RWalk after the optimiser step: every `every` steps the window closes.
    let afterStep (every: int) (epsilon: float) (parameters: Tensor list) (state: State) : State =
        let state = { state with WindowSteps = state.WindowSteps + 1 }
        if state.WindowSteps >= every then closeWindow epsilon parameters state else state

    /// RWalk at a task end: the open window closes, scores are averaged with the previous tasks',
    /// `Ω = F / max F + s / max s`, θ* = θ.
    let endTask (lambda: float) (epsilon: float) (parameters: Tensor list) (state: State) : State =
        let state = closeWindow epsilon parameters state
        let running = match state.Running with Some r -> r | None -> ParameterTensors.zerosLike parameters
        let scores = match state.Scores with Some s -> s | None -> ParameterTensors.zerosLike parameters
        let averaged =
            match state.PreviousScores with
            | None -> ParameterTensors.copy scores
            | Some previous -> ParameterTensors.combine 0.5 previous 0.5 scores
        (use _ = torch.no_grad () in scores |> List.iter (fun s -> s.zero_() |> ignore))
        let omega = importance running averaged
        let penalty = Quadratic.create Half lambda omega parameters
        ParameterTensors.dispose omega
        { state with
            Running = Some running
            Scores = Some scores
            PreviousScores = Some averaged
            Penalty = Some penalty }

    /// RWalk after the head grew: the running Fisher, the window's loss and every score get zero rows,
    /// the window's start the new rows' initial values, the penalty zero curvature and the initial
    /// values as anchor on the new rows.
    let grow (growth: HeadGrowth) (state: State) : State =
        let zeros = HeadGrowth.growOptional growth RowFill.Zeros
        { state with
            Running = zeros state.Running
            WindowLoss = zeros state.WindowLoss
            WindowStart = HeadGrowth.growOptional growth RowFill.Initial state.WindowStart
            Scores = zeros state.Scores
            PreviousScores = zeros state.PreviousScores
            Penalty = HeadGrowth.growPenalty growth state.Penalty }

    /// The tensors RWalk's state owns.
    let owned (state: State) =
        [ state.Running; state.WindowLoss; state.WindowStart; state.Scores; state.PreviousScores ]
        |> List.collect Method.optionalTensors
        |> List.append (Method.ownedPenalty state.Penalty)

    /// RWalk as a method.
    let method (settings: Settings) : Method<State> =
        { Method.empty "rwalk" with
            BeginTask = fun c s -> beginTask c.LearningRate c.Parameters s
            Penalties = fun s -> Method.penaltyTerms "rwalk" s.Penalty
            Observe =
                Some(fun view s ->
                    let blend =
                        Importance.batchFisherBlend settings.Fisher view.Model view.Parameters view.Batch.Inputs view.Output.Features view.Output.Logits view.Batch.LabelArray
                    observe settings.FisherAlpha view.Batch.LabelArray.Length blend (Importance.gradients view.Parameters) s)
            AfterStep = Some(fun parameters s -> afterStep settings.ScoreEvery settings.Epsilon parameters s)
            EndTask = fun c s -> endTask settings.Lambda settings.Epsilon c.Parameters s
            Grow = grow
            Owned = owned
            Footprint =
                fun s ->
                    Footprint.add (Footprint.penalty s.Penalty)
                        { Footprint.zero with
                            Importance =
                                [ s.Running; s.WindowLoss; s.Scores; s.PreviousScores ] |> List.sumBy Footprint.optionalBytes
                            Anchors = Footprint.optionalBytes s.WindowStart } }

    /// RWalk packed with its initial state, its generator drawn from the run's seed.
    let create (settings: Settings) (seed: int64) : MethodInstance = Method.pack (method settings) (initial (Importance.generator seed))
