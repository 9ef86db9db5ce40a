namespace Continual.Penalties

open Continual
open Continual.Data
open Continual.Models
open TorchSharp

/// Which labels the diagonal Fisher uses for `(∂ log p(y|x) / ∂θ)²`.
type FisherKind =
    /// The "true" Fisher: y drawn from the model's own p(y|x), one draw per sample.
    | Sampled
    /// The empirical Fisher: y the training label.
    | Empirical
    /// The training label with each sample's squared gradient weighted by p(y|x) (the reference
    /// framework's online EWC, METHODS.md "Conventions behind the reference numbers").
    | LabelWeighted

/// Fisher kinds by name.
[<RequireQualifiedAccess>]
module FisherKind =
    /// The command-line names: "true", "empirical", "weighted".
    let names = [ "true"; "empirical"; "weighted" ]

    /// Parses a name of `names`.
    let parse (name: string) =
        match name.Trim().ToLowerInvariant() with
        | "true" | "sampled" -> Sampled
        | "empirical" -> Empirical
        | "weighted" -> LabelWeighted
        | other -> invalidArg (nameof name) (sprintf "unknown Fisher kind '%s' (expected one of: %s)" other (String.concat ", " names))

    /// The command-line name of a kind.
    let name (kind: FisherKind) =
        match kind with
        | Sampled -> "true"
        | Empirical -> "empirical"
        | LabelWeighted -> "weighted"

/// Elementwise helpers over per-parameter tensor lists (all results are new, detached tensors).
[<RequireQualifiedAccess>]
module ParameterTensors =

    /// Detached copies of tensors.
    let copy (tensors: Tensor list) : Tensor list =
        use _ = torch.no_grad ()
        tensors |> List.map (fun t -> t.detach().clone().DetachFromDisposeScope())

    /// Zeros shaped like each tensor.
    let zerosLike (tensors: Tensor list) : Tensor list =
        tensors |> List.map (fun t -> torch.zeros_like(t, requires_grad = false).DetachFromDisposeScope())

    /// `a·x + b·y` elementwise, per parameter.
    let combine (a: float) (x: Tensor list) (b: float) (y: Tensor list) : Tensor list =
        use _ = torch.no_grad ()
        List.map2 (fun (u: Tensor) (v: Tensor) ->
            use au = u.mul(a.ToScalar())
            au.add(v, b.ToScalar()).DetachFromDisposeScope()) x y

    /// `running ← decay · running + scale · update`, in place, per parameter.
    let blendInto (decay: float) (scale: float) (running: Tensor list) (update: Tensor list) : unit =
        use _ = torch.no_grad ()
        List.iter2 (fun (r: Tensor) (u: Tensor) -> r.mul_(decay.ToScalar()).add_(u, scale.ToScalar()) |> ignore) running update

    /// Frees tensors.
    let dispose (tensors: Tensor list) = tensors |> List.iter (fun t -> t.Dispose())

    /// The largest element over all tensors (0 for none).
    let max (tensors: Tensor list) : float =
        use _ = torch.no_grad ()
        tensors |> List.fold (fun m t -> if t.numel () = 0L then m else System.Math.Max(m, t.max().ToDouble())) 0.0

/// Standard-normal and categorical draws from the explicit generator.
[<RequireQualifiedAccess>]
module Draws =

    /// A uniform double in [0, 1).
    let uniform (rng: RandomState) : float * RandomState =
        let v, rng' = Random.nextUInt64 rng
        float (v >>> 11) * (1.0 / 9007199254740992.0), rng'

    /// A standard normal draw (Box-Muller).
    let normal (rng: RandomState) : float * RandomState =
        let u1, r1 = uniform rng
        let u2, r2 = uniform r1
        sqrt (-2.0 * log (1.0 - u1)) * cos (2.0 * System.Math.PI * u2), r2

    /// `count` unit vectors of dimension `dim`, uniform on the sphere, as rows of a float32 array.
    let unitVectors (count: int) (dim: int) (rng: RandomState) : float32[,] * RandomState =
        let result = Array2D.zeroCreate<float32> count dim
        let mutable r = rng
        for i in 0 .. count - 1 do
            let v = Array.init dim (fun _ -> let x, r' = normal r in r <- r'; x)
            let norm = sqrt (Array.sumBy (fun x -> x * x) v)
            for j in 0 .. dim - 1 do result.[i, j] <- float32 (v.[j] / norm)
        result, r

    /// One class per row of a probability matrix [n, classes] (inverse CDF).
    let categorical (probabilities: Tensor) (rng: RandomState) : int64[] * RandomState =
        use cpu = probabilities.detach().cpu().to_type(torch.ScalarType.Float64).contiguous()
        let n, k = int cpu.shape.[0], int cpu.shape.[1]
        let p = cpu.data<float>().ToArray()
        let mutable r = rng
        let labels =
            Array.init n (fun i ->
                let u, r' = uniform r
                r <- r'
                let mutable c = 0
                let mutable acc = p.[i * k]
                while c < k - 1 && u >= acc do
                    c <- c + 1
                    acc <- acc + p.[i * k + c]
                int64 c)
        labels, r

/// Importance estimators over a data set: each returns one tensor per parameter of the model.
[<RequireQualifiedAccess>]
module Estimate =

    /// Samples per chunk when an estimator walks a data set (memory only; the result does not depend on it).
    let chunkSize = 1000

    let private chunks (data: LabelledSet) (size: int) =
        [ for start in 0 .. size .. data.Count - 1 -> start, min size (data.Count - start) ]

    let private labelsOf (data: LabelledSet) (start: int) (count: int) =
        Array.init count (fun i -> int64 data.LabelArray.[start + i])

    /// The labels a Fisher kind differentiates at, for one batch of logits.
    let fisherLabels (kind: FisherKind) (logits: Tensor) (labels: int64[]) (rng: RandomState) : Objective * RandomState =
        match kind with
        | Empirical -> NegativeLogLikelihood(labels, false), rng
        | LabelWeighted -> NegativeLogLikelihood(labels, true), rng
        | Sampled ->
            use _ = torch.no_grad ()
            use p = torch.nn.functional.softmax(logits, 1L)
            let sampled, rng' = Draws.categorical p rng
            NegativeLogLikelihood(sampled, false), rng'

    let private accumulate (sums: Tensor list option) (batch: Tensor list) =
        match sums with
        | None -> Some(batch |> List.map (fun t -> t.DetachFromDisposeScope()))
        | Some s ->
            use _ = torch.no_grad ()
            List.iter2 (fun (acc: Tensor) (b: Tensor) -> acc.add_ b |> ignore; b.Dispose()) s batch
            sums

    let private finish (model: Backbone) (count: int) (sums: Tensor list option) =
        match sums with
        | None -> ParameterTensors.zerosLike (PerSample.parameters model)
        | Some s ->
            use _ = torch.no_grad ()
            s |> List.iter (fun t -> t.div_((float count).ToScalar()) |> ignore)
            s

    /// The diagonal Fisher `mean_n (∂ log p(y_n|x_n) / ∂θ)²` over a data set, y by kind (per-sample
    /// gradients in closed form for the MLP).
    let fisher (kind: FisherKind) (model: Backbone) (data: LabelledSet) (device: Device) (rng: RandomState) : Tensor list * RandomState =
        let chain = PerSample.chain model
        let mutable r = rng
        let mutable sums = None
        for (start, count) in chunks data chunkSize do
            use scope = torch.NewDisposeScope()
            use x = data.Inputs.narrow(0L, int64 start, int64 count).``to`` device
            let batch =
                match chain with
                | Some c ->
                    let activations, logits = PerSample.forward c x
                    let objective, r' = fisherLabels kind logits (labelsOf data start count) r
                    r <- r'
                    PerSample.chainSums c activations logits objective Squares
                | None ->
                    let logits = (use _ = torch.no_grad () in model.forward x)
                    let objective, r' = fisherLabels kind logits (labelsOf data start count) r
                    r <- r'
                    PerSample.loopSums model x objective Squares
            sums <- accumulate sums batch
        finish model data.Count sums, r

    /// The sums over one training batch of squared per-sample gradients of log p(y|x) (the batch
    /// Fisher times the batch size), from the step's own activations (EWC++, RWalk). `activations` are
    /// the inputs of each linear layer of an MLP; other backbones redo the forward pass one sample at
    /// a time. The result belongs to the caller's dispose scope.
    let batchFisherSums (kind: FisherKind) (model: Backbone) (inputs: Tensor) (activations: Tensor list) (logits: Tensor) (labels: int64[]) (rng: RandomState) : Tensor list * RandomState =
        let objective, rng' = fisherLabels kind logits labels rng
        let sums =
            match PerSample.chain model with
            | Some c when activations.Length = c.Layers.Length ->
                PerSample.chainSums c (activations |> List.map (fun a -> a.detach ())) (logits.detach ()) objective Squares
            | _ -> PerSample.loopSums model inputs objective Squares
        sums, rng'

    /// Blends one training batch's diagonal Fisher into a running Fisher in place, `running ← decay ·
    /// running + scale · Σ_n g_n²` (EWC++, RWalk): for an MLP fused into one `addmm_`/`addmv_` per tensor
    /// from the step's own activations (the batch sums are never materialised); other backbones go
    /// one autograd pass per sample. `parameters` are the model's, in order.
    let blendBatchFisher (kind: FisherKind) (model: Backbone) (parameters: Tensor list) (inputs: Tensor) (activations: Tensor list) (logits: Tensor) (labels: int64[]) (decay: float) (scale: float) (running: Tensor list) (rng: RandomState) : RandomState =
        let objective, rng' = fisherLabels kind logits labels rng
        match PerSample.chainOf model parameters with
        | Some c when activations.Length = c.Layers.Length ->
            PerSample.chainBlendSquares c activations logits objective decay scale running
        | _ ->
            // loopSums' results outlive dispose scopes; they are freed here.
            let sums = PerSample.loopSums model inputs objective Squares
            ParameterTensors.blendInto decay scale running sums
            ParameterTensors.dispose sums
        rng'

    /// The diagonal Fisher of one training batch (`batchFisherSums` divided by the batch size).
    let batchFisher (kind: FisherKind) (model: Backbone) (inputs: Tensor) (activations: Tensor list) (logits: Tensor) (labels: int64[]) (rng: RandomState) : Tensor list * RandomState =
        let sums, rng' = batchFisherSums kind model inputs activations logits labels rng
        use _ = torch.no_grad ()
        let n = float labels.Length
        sums |> List.map (fun s -> let m = s.div(n.ToScalar()) in s.Dispose(); m), rng'

    /// MAS importance `mean_n |∂ ||f(x_n)||² / ∂θ|` over a data set (no labels needed).
    let mas (model: Backbone) (data: LabelledSet) (device: Device) : Tensor list =
        let mutable sums = None
        for (start, count) in chunks data chunkSize do
            use scope = torch.NewDisposeScope()
            use x = data.Inputs.narrow(0L, int64 start, int64 count).``to`` device
            sums <- accumulate sums (PerSample.sums model x SquaredNorm Magnitudes)
        finish model data.Count sums

    /// Vectors r_k with `Σ_k r_k r_kᵀ = Σ_l ξ_l ξ_lᵀ`: the slices themselves when there are at most as
    /// many as outputs, otherwise the scaled eigenvectors of that matrix (at most one per output). Then
    /// `Σ_l ⟨ξ_l, J⟩² = Σ_k ⟨r_k, J⟩²` for any Jacobian column J, so SCP needs at most `classes` passes.
    let effectiveSlices (slices: float32[,]) : float32[,] =
        let count, dim = Array2D.length1 slices, Array2D.length2 slices
        if count <= dim then slices
        else
            use xi = torch.tensor(slices, dtype = torch.ScalarType.Float32).to_type(torch.ScalarType.Float64)
            use s = xi.t().matmul xi
            let struct (values, vectors) = torch.linalg.eigh(s, 'L')
            use values = values
            use vectors = vectors
            use scale = values.clamp_min(0.0.ToScalar()).sqrt()
            use r = vectors.mul(scale.unsqueeze 0L).t().to_type(torch.ScalarType.Float32).contiguous()
            let flat = r.data<float32>().ToArray()
            Array2D.init dim dim (fun i j -> flat.[i * dim + j])

    /// SCP importance `Γ = (1/B) Σ_batches Σ_l (∂ ⟨ξ_l, mean_batch f(x)⟩ / ∂θ)²` over a data set split
    /// into `batchSize` batches (B of them), with `slices` fresh random unit vectors per batch.
    let scp (slices: int) (batchSize: int) (model: Backbone) (data: LabelledSet) (device: Device) (rng: RandomState) : Tensor list * RandomState =
        let ps = PerSample.parameters model
        let chain = PerSample.chain model
        let mutable r = rng
        let mutable sums = None
        let batches = chunks data batchSize
        for (start, count) in batches do
            use scope = torch.NewDisposeScope()
            use x = data.Inputs.narrow(0L, int64 start, int64 count).``to`` device
            let classes, forwardResult =
                match chain with
                | Some c -> int (fst (List.last c.Layers)).shape.[0], None
                | None -> let logits = model.forward x in int logits.shape.[1], Some logits
            let xi, r' = Draws.unitVectors slices classes r
            r <- r'
            let directions = effectiveSlices xi
            let k = Array2D.length1 directions
            use rows = torch.tensor(directions, dtype = torch.ScalarType.Float32, device = device)
            let batch =
                match chain, forwardResult with
                | Some c, _ ->
                    use _ = torch.no_grad ()
                    let activations, _ = PerSample.forward c x
                    // d⟨r_k, mean_n f(x_n)⟩ / d logits_n = r_k / count for every sample n: [k, n, classes].
                    use deltaOut = rows.div((float count).ToScalar()).unsqueeze(1L).expand([| int64 k; int64 count; rows.shape.[1] |])
                    let deltas = PerSample.backward c activations deltaOut
                    List.map2 (fun (a: Tensor) (d: Tensor) ->
                        use gw = d.transpose(1L, 2L).matmul a
                        use gb = d.sum(1L)
                        [ gw.square().sum(0L); gb.square().sum(0L) ]) activations deltas
                    |> List.concat
                | None, logits ->
                    let logits = match logits with Some l -> l | None -> model.forward x
                    use mean = logits.mean([| 0L |])
                    let acc = ps |> List.map (fun p -> torch.zeros_like p)
                    for i in 0 .. k - 1 do
                        use objective = mean.dot(rows.[int64 i])
                        let grads = torch.autograd.grad([| objective |], Array.ofList ps, null, true, false, true)
                        use _ = torch.no_grad ()
                        for (s, g) in Seq.zip acc grads do
                            if not (isNull g) then s.addcmul_(g, g, 1.0.ToScalar()) |> ignore
                    acc
            sums <- accumulate sums batch
        finish model batches.Length sums, r

/// EWC (Kirkpatrick et al. 2017): one (Fisher, anchor) pair per task, penalty `Σ_t Σ (λ/2) F_t (θ − θ*_t)²`.
type EwcState =
    { Tasks: (Tensor list * Tensor list) list
      Penalty: Quadratic option
      Rng: RandomState }

/// Online EWC (Schwarz et al. 2018): one running Fisher `F ← γ F + F_t` and one anchor; penalty
/// `λ Σ F (θ − θ*)²` (the reference convention, no ½).
type OnlineEwcState =
    { Fisher: Tensor list option
      Penalty: Quadratic option
      Rng: RandomState }

/// A batch's Fisher entering a running Fisher in place: `blend decay scale running rng` sets
/// `running ← decay · running + scale · Σ_n g_n²` (g_n the batch's per-sample gradients) and returns the
/// generator after any label draws. EWC++ and RWalk observe every step through one.
type FisherBlend = float -> float -> Tensor list -> RandomState -> RandomState

/// EWC++ (Chaudhry et al. 2018): the Fisher is updated every batch, `F ← α F_batch + (1 − α) F`; at each
/// task end the penalty `Σ (λ/2) F (θ − θ*)²` is frozen with that Fisher and θ* = θ.
type EwcPlusPlusState =
    { Running: Tensor list option
      Penalty: Quadratic option
      Rng: RandomState }

/// SI (Zenke et al. 2017): path integral ω accumulated every step (`ω += lr g²`, the reference form of
/// `−g Δθ` for plain SGD), consolidated at the task end `Ω += ω / ((θ − θ_start)² + ξ)`; penalty
/// `c Σ Ω (θ − θ*)²` with θ* = θ_start of the next task.
type SiState =
    { Omega: Tensor list option
      Importance: Tensor list option
      Start: Tensor list option
      LearningRate: float
      Penalty: Quadratic option }

/// MAS (Aljundi et al. 2018): Ω accumulated over tasks from output-norm gradients; penalty `Σ (λ/2) Ω (θ − θ*)²`.
type MasState =
    { Importance: Tensor list option
      Penalty: Quadratic option }

/// RWalk (Chaudhry et al. 2018): the EWC++ Fisher plus path scores `s = Σ_windows relu(Σ −g Δθ /
/// (½ F Δθ² + ε))`, where −g Δθ is accumulated per step (`lr g²` under plain SGD) and Δθ is the
/// displacement over a window of steps; at a task end scores are averaged with the previous tasks'
/// and `Ω = F / max F + s / max s` (both normalised to [0, 1] as the paper suggests).
type RwalkState =
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

/// SCP (Kolouri et al. 2020): `Γ ← α Γ_old + (1 − α) Γ_t` at each task end; penalty `λ Σ Γ (θ − θ*)²`.
type ScpState =
    { Gamma: Tensor list option
      Penalty: Quadratic option
      Rng: RandomState }

/// The state transitions of every importance method, as functions of explicit values. A transition
/// consumes the state it is given: tensors it replaces are freed, tensors it keeps may be updated in place.
[<RequireQualifiedAccess>]
module Importance =

    let private replacePenalty (old: Quadratic option) (next: Quadratic) =
        old |> Option.iter Quadratic.dispose
        Some next

    let private disposeOption (tensors: Tensor list option) = tensors |> Option.iter ParameterTensors.dispose

    /// Online EWC's merge `γ F_old + F_t` (pure).
    let onlineMerge (gamma: float) (old: Tensor list) (current: Tensor list) : Tensor list =
        ParameterTensors.combine gamma old 1.0 current

    /// A convex combination `α x + (1 − α) y` (EWC++ with x the batch Fisher; SCP with x the old Γ).
    let convex (alpha: float) (x: Tensor list) (y: Tensor list) : Tensor list =
        ParameterTensors.combine alpha x (1.0 - alpha) y

    /// SI's consolidation `Ω + ω / ((θ − θ_start)² + ξ)` (pure).
    let siConsolidate (xi: float) (importance: Tensor list) (omega: Tensor list) (parameters: Tensor list) (start: Tensor list) : Tensor list =
        use _ = torch.no_grad ()
        List.zip (List.zip importance omega) (List.zip parameters start)
        |> List.map (fun ((big: Tensor, small: Tensor), (theta: Tensor, s: Tensor)) ->
            use d = theta.detach().sub s
            use denominator = d.square().add(xi.ToScalar())
            use ratio = small.div denominator
            big.add(ratio).DetachFromDisposeScope())

    /// RWalk's score for one window: `relu(loss / (½ F Δθ² + ε))`, Δθ = θ − θ_window start (pure).
    let rwalkScore (epsilon: float) (fisher: Tensor list) (windowLoss: Tensor list) (parameters: Tensor list) (windowStart: Tensor list) : Tensor list =
        use _ = torch.no_grad ()
        List.zip (List.zip fisher windowLoss) (List.zip parameters windowStart)
        |> List.map (fun ((f: Tensor, loss: Tensor), (theta: Tensor, s: Tensor)) ->
            use d = theta.detach().sub s
            use denominator = f.mul(d.square()).mul(0.5.ToScalar()).add(epsilon.ToScalar())
            use ratio = loss.div denominator
            torch.nn.functional.relu(ratio).DetachFromDisposeScope())

    /// RWalk's importance `F / max F + s / max s` (a zero maximum leaves that part out).
    let rwalkImportance (fisher: Tensor list) (scores: Tensor list) : Tensor list =
        let fmax = ParameterTensors.max fisher
        let smax = ParameterTensors.max scores
        let a = if fmax > 0.0 then 1.0 / fmax else 0.0
        let b = if smax > 0.0 then 1.0 / smax else 0.0
        ParameterTensors.combine a fisher b scores

    /// `acc += lr g²` in place for every parameter (SI's ω and RWalk's window loss under plain SGD).
    let accumulatePath (learningRate: float) (gradients: Tensor list) (acc: Tensor list) =
        use _ = torch.no_grad ()
        List.iter2 (fun (a: Tensor) (g: Tensor) -> if not (isNull g) then a.addcmul_(g, g, learningRate.ToScalar()) |> ignore) acc gradients

    /// The gradients currently held by parameters (null where a parameter has none).
    let gradients (parameters: Tensor list) : Tensor list = parameters |> List.map (fun p -> p.grad)

    // ---- EWC ----

    /// EWC's initial state.
    let ewcInitial (rng: RandomState) : EwcState = { Tasks = []; Penalty = None; Rng = rng }

    /// EWC at a task end: a new (Fisher, anchor) pair; the penalty consolidates all pairs.
    let ewcEndTask (lambda: float) (kind: FisherKind) (model: Backbone) (data: LabelledSet) (device: Device) (state: EwcState) : EwcState =
        let fisher, rng = Estimate.fisher kind model data device state.Rng
        let tasks = state.Tasks @ [ fisher, ParameterTensors.copy (PerSample.parameters model) ]
        { Tasks = tasks; Penalty = replacePenalty state.Penalty (Quadratic.consolidate Half lambda tasks); Rng = rng }

    /// Frees EWC's tensors.
    let ewcDispose (state: EwcState) =
        for (f, a) in state.Tasks do
            ParameterTensors.dispose f
            ParameterTensors.dispose a
        state.Penalty |> Option.iter Quadratic.dispose

    // ---- online EWC ----

    /// Online EWC's initial state.
    let onlineEwcInitial (rng: RandomState) : OnlineEwcState = { Fisher = None; Penalty = None; Rng = rng }

    /// Online EWC at a task end: `F ← γ F + F_t`, θ* = θ.
    let onlineEwcEndTask (lambda: float) (gamma: float) (kind: FisherKind) (model: Backbone) (data: LabelledSet) (device: Device) (state: OnlineEwcState) : OnlineEwcState =
        let current, rng = Estimate.fisher kind model data device state.Rng
        let fisher =
            match state.Fisher with
            | None -> current
            | Some old ->
                let merged = onlineMerge gamma old current
                ParameterTensors.dispose old
                ParameterTensors.dispose current
                merged
        { Fisher = Some fisher
          Penalty = replacePenalty state.Penalty (Quadratic.create Whole lambda fisher (PerSample.parameters model))
          Rng = rng }

    /// Frees online EWC's tensors.
    let onlineEwcDispose (state: OnlineEwcState) =
        disposeOption state.Fisher
        state.Penalty |> Option.iter Quadratic.dispose

    // ---- EWC++ ----

    /// EWC++'s initial state (the running Fisher starts at zero on the first batch).
    let ewcPlusPlusInitial (rng: RandomState) : EwcPlusPlusState = { Running = None; Penalty = None; Rng = rng }

    /// The blend of batch sums already computed (`running ← decay · running + scale · sums`).
    let blendSums (sums: Tensor list) : FisherBlend =
        fun decay scale running rng ->
            ParameterTensors.blendInto decay scale running sums
            rng

    /// The running Fisher's update `F ← α F_batch + (1 − α) F` with `F_batch = Σ_n g_n² / count`, in
    /// place (zero before the first batch); returns the running Fisher and the generator.
    let blendRunning (alpha: float) (count: int) (blend: FisherBlend) (parameters: Tensor list) (running: Tensor list option) (rng: RandomState) : Tensor list * RandomState =
        let r = match running with Some r -> r | None -> ParameterTensors.zerosLike parameters
        let rng' = blend (1.0 - alpha) (alpha / float count) r rng
        r, rng'

    /// EWC++ after a step's backward: the batch's Fisher (`Σ_n g_n² / count`) enters the running average.
    let ewcPlusPlusObserve (alpha: float) (count: int) (blend: FisherBlend) (parameters: Tensor list) (state: EwcPlusPlusState) : EwcPlusPlusState =
        let running, rng = blendRunning alpha count blend parameters state.Running state.Rng
        { state with Running = Some running; Rng = rng }

    /// EWC++ at a task end: the penalty freezes the running Fisher with θ* = θ.
    let ewcPlusPlusEndTask (lambda: float) (parameters: Tensor list) (state: EwcPlusPlusState) : EwcPlusPlusState =
        let running = match state.Running with Some r -> r | None -> ParameterTensors.zerosLike parameters
        { state with
            Running = Some running
            Penalty = replacePenalty state.Penalty (Quadratic.create Half lambda running parameters) }

    /// Frees EWC++'s tensors.
    let ewcPlusPlusDispose (state: EwcPlusPlusState) =
        disposeOption state.Running
        state.Penalty |> Option.iter Quadratic.dispose

    // ---- SI ----

    /// SI's initial state.
    let siInitial : SiState = { Omega = None; Importance = None; Start = None; LearningRate = 0.0; Penalty = None }

    /// SI at a task start: θ_start is set on the first task (later tasks start where the last ended).
    let siBeginTask (learningRate: float) (parameters: Tensor list) (state: SiState) : SiState =
        { state with
            Omega = Some(match state.Omega with Some o -> o | None -> ParameterTensors.zerosLike parameters)
            Start = Some(match state.Start with Some s -> s | None -> ParameterTensors.copy parameters)
            LearningRate = learningRate }

    /// SI after a step's backward (gradients clipped): `ω += lr g²` in place.
    let siObserve (gradients: Tensor list) (state: SiState) : SiState =
        match state.Omega with
        | Some omega -> accumulatePath state.LearningRate gradients omega
        | None -> invalidOp "SI observed a step before its task began"
        state

    /// SI at a task end: `Ω += ω / ((θ − θ_start)² + ξ)`, ω reset, θ_start = θ* = θ.
    let siEndTask (c: float) (xi: float) (parameters: Tensor list) (state: SiState) : SiState =
        match state.Omega, state.Start with
        | Some omega, Some start ->
            let previous = match state.Importance with Some i -> i | None -> ParameterTensors.zerosLike parameters
            let importance = siConsolidate xi previous omega parameters start
            ParameterTensors.dispose previous
            ParameterTensors.dispose start
            (use _ = torch.no_grad () in omega |> List.iter (fun o -> o.zero_() |> ignore))
            let anchor = ParameterTensors.copy parameters
            { state with
                Importance = Some importance
                Start = Some anchor
                Penalty = replacePenalty state.Penalty (Quadratic.create Whole c importance anchor) }
        | _ -> invalidOp "SI ended a task it did not begin"

    /// Frees SI's tensors.
    let siDispose (state: SiState) =
        disposeOption state.Omega
        disposeOption state.Importance
        disposeOption state.Start
        state.Penalty |> Option.iter Quadratic.dispose

    // ---- MAS ----

    /// MAS's initial state.
    let masInitial : MasState = { Importance = None; Penalty = None }

    /// MAS at a task end: `Ω ← Ω + Ω_t`, θ* = θ.
    let masEndTask (lambda: float) (model: Backbone) (data: LabelledSet) (device: Device) (state: MasState) : MasState =
        let current = Estimate.mas model data device
        let importance =
            match state.Importance with
            | None -> current
            | Some old ->
                let merged = ParameterTensors.combine 1.0 old 1.0 current
                ParameterTensors.dispose old
                ParameterTensors.dispose current
                merged
        { Importance = Some importance
          Penalty = replacePenalty state.Penalty (Quadratic.create Half lambda importance (PerSample.parameters model)) }

    /// Frees MAS's tensors.
    let masDispose (state: MasState) =
        disposeOption state.Importance
        state.Penalty |> Option.iter Quadratic.dispose

    // ---- RWalk ----

    /// RWalk's initial state.
    let rwalkInitial (rng: RandomState) : RwalkState =
        { Running = None; WindowLoss = None; WindowStart = None; Scores = None; PreviousScores = None
          WindowSteps = 0; LearningRate = 0.0; Penalty = None; Rng = rng }

    /// RWalk at a task start: window and score accumulators start at θ and zero.
    let rwalkBeginTask (learningRate: float) (parameters: Tensor list) (state: RwalkState) : RwalkState =
        disposeOption state.WindowStart
        { state with
            WindowLoss = Some(match state.WindowLoss with Some w -> w | None -> ParameterTensors.zerosLike parameters)
            WindowStart = Some(ParameterTensors.copy parameters)
            Scores = Some(match state.Scores with Some s -> s | None -> ParameterTensors.zerosLike parameters)
            WindowSteps = 0
            LearningRate = learningRate }

    /// RWalk after a step's backward: the batch's Fisher (`Σ_n g_n² / count`) enters the running average
    /// and `lr g²` the window's loss change.
    let rwalkObserve (alpha: float) (count: int) (blend: FisherBlend) (gradients: Tensor list) (state: RwalkState) : RwalkState =
        match state.WindowLoss with
        | Some loss ->
            accumulatePath state.LearningRate gradients loss
            let running, rng = blendRunning alpha count blend gradients state.Running state.Rng
            { state with Running = Some running; Rng = rng }
        | None -> invalidOp "RWalk observed a step before its task began"

    /// Closes the open window: its score is added to the task's scores; a new window starts at θ.
    let rwalkCloseWindow (epsilon: float) (parameters: Tensor list) (state: RwalkState) : RwalkState =
        match state.WindowLoss, state.WindowStart, state.Scores, state.Running with
        | Some loss, Some start, Some scores, Some fisher when state.WindowSteps > 0 ->
            let window = rwalkScore epsilon fisher loss parameters start
            use _ = torch.no_grad ()
            List.iter2 (fun (s: Tensor) (w: Tensor) -> s.add_ w |> ignore; w.Dispose()) scores window
            List.iter2 (fun (s: Tensor) (p: Tensor) -> s.copy_(p.detach ()) |> ignore) start parameters
            loss |> List.iter (fun l -> l.zero_() |> ignore)
            { state with WindowSteps = 0 }
        | _ -> state

    /// RWalk after the optimiser step: every `every` steps the window closes.
    let rwalkAfterStep (every: int) (epsilon: float) (parameters: Tensor list) (state: RwalkState) : RwalkState =
        let state = { state with WindowSteps = state.WindowSteps + 1 }
        if state.WindowSteps >= every then rwalkCloseWindow epsilon parameters state else state

    /// RWalk at a task end: the open window closes, scores are averaged with the previous tasks',
    /// `Ω = F / max F + s / max s`, θ* = θ.
    let rwalkEndTask (lambda: float) (epsilon: float) (parameters: Tensor list) (state: RwalkState) : RwalkState =
        let state = rwalkCloseWindow epsilon parameters state
        let running = match state.Running with Some r -> r | None -> ParameterTensors.zerosLike parameters
        let scores = match state.Scores with Some s -> s | None -> ParameterTensors.zerosLike parameters
        let averaged =
            match state.PreviousScores with
            | None -> ParameterTensors.copy scores
            | Some previous ->
                let a = ParameterTensors.combine 0.5 previous 0.5 scores
                ParameterTensors.dispose previous
                a
        (use _ = torch.no_grad () in scores |> List.iter (fun s -> s.zero_() |> ignore))
        let importance = rwalkImportance running averaged
        let penalty = Quadratic.create Half lambda importance parameters
        ParameterTensors.dispose importance
        { state with
            Running = Some running
            Scores = Some scores
            PreviousScores = Some averaged
            Penalty = replacePenalty state.Penalty penalty }

    /// Frees RWalk's tensors.
    let rwalkDispose (state: RwalkState) =
        for t in [ state.Running; state.WindowLoss; state.WindowStart; state.Scores; state.PreviousScores ] do disposeOption t
        state.Penalty |> Option.iter Quadratic.dispose

    // ---- SCP ----

    /// SCP's initial state.
    let scpInitial (rng: RandomState) : ScpState = { Gamma = None; Penalty = None; Rng = rng }

    /// SCP at a task end: `Γ ← α Γ_old + (1 − α) Γ_t` (Γ_old = 0 before the first task), θ* = θ.
    let scpEndTask (lambda: float) (alpha: float) (slices: int) (batchSize: int) (model: Backbone) (data: LabelledSet) (device: Device) (state: ScpState) : ScpState =
        let current, rng = Estimate.scp slices batchSize model data device state.Rng
        let old = match state.Gamma with Some g -> g | None -> ParameterTensors.zerosLike current
        let gamma = convex alpha old current
        ParameterTensors.dispose old
        ParameterTensors.dispose current
        { Gamma = Some gamma
          Penalty = replacePenalty state.Penalty (Quadratic.create Whole lambda gamma (PerSample.parameters model))
          Rng = rng }

    /// Frees SCP's tensors.
    let scpDispose (state: ScpState) =
        disposeOption state.Gamma
        state.Penalty |> Option.iter Quadratic.dispose
