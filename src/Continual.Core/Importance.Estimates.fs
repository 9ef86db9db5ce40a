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
            use aScalar = a.ToScalar()
            use au = u.mul aScalar
            (Scalars.addScaled au v b).DetachFromDisposeScope()) x y

    /// `running ← decay · running + scale · update`, in place, per parameter.
    let blendInto (decay: float) (scale: float) (running: Tensor list) (update: Tensor list) : unit =
        use _ = torch.no_grad ()
        use decayScalar = decay.ToScalar()
        use scaleScalar = scale.ToScalar()
        List.iter2 (fun (r: Tensor) (u: Tensor) -> r.mul_(decayScalar).add_(u, scaleScalar) |> ignore) running update

    /// Frees tensors.
    let dispose (tensors: Tensor list) = tensors |> List.iter (fun t -> t.Dispose())

    /// The largest element over all tensors (0 for none).
    let max (tensors: Tensor list) : float =
        use _ = torch.no_grad ()
        tensors |> List.fold (fun m t -> if t.numel () = 0L then m else System.Math.Max(m, Scalars.toFloat (t.max()))) 0.0

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
            List.iter2 (fun (acc: Tensor) (b: Tensor) -> Scalars.addInPlace acc b |> ignore; b.Dispose()) s batch
            sums

    let private finish (model: Backbone) (count: int) (sums: Tensor list option) =
        match sums with
        | None -> ParameterTensors.zerosLike (PerSample.parameters model)
        | Some s ->
            use _ = torch.no_grad ()
            use countScalar = (float count).ToScalar()
            s |> List.iter (fun t -> t.div_(countScalar) |> ignore)
            s

    /// The diagonal Fisher `mean_n (∂ log p(y_n|x_n) / ∂θ)²` over a data set, y by kind (per-sample
    /// gradients in closed form for the MLP).
    let fisher (kind: FisherKind) (model: Backbone) (data: LabelledSet) (device: Device) (rng: RandomState) : Tensor list * RandomState =
        let chain = PerSample.chain model
        let mutable r = rng
        let mutable sums = None
        for (start, count) in chunks data chunkSize do
            use scope = torch.NewDisposeScope()
            use rows = data.InputRange(int64 start, int64 count)
            use x = rows.``to`` device
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
        match PerSample.cachedChainOf model parameters with
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
        sums |> List.map (fun s -> let m = Scalars.div s n in s.Dispose(); m), rng'

    /// MAS importance `mean_n |∂ ||f(x_n)||² / ∂θ|` over a data set (no labels needed).
    let mas (model: Backbone) (data: LabelledSet) (device: Device) : Tensor list =
        let mutable sums = None
        for (start, count) in chunks data chunkSize do
            use scope = torch.NewDisposeScope()
            use rows = data.InputRange(int64 start, int64 count)
            use x = rows.``to`` device
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
            use scale = values.clamp_min(Scalars.cached 0.0).sqrt()
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
            use rows = data.InputRange(int64 start, int64 count)
            use x = rows.``to`` device
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
                    use countScalar = (float count).ToScalar()
                    use deltaOut = rows.div(countScalar).unsqueeze(1L).expand([| int64 k; int64 count; rows.shape.[1] |])
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
                            if not (isNull g) then s.addcmul_(g, g, Scalars.cached 1.0) |> ignore
                    acc
            sums <- accumulate sums batch
        finish model batches.Length sums, r

/// A batch's Fisher entering a running Fisher in place: `blend decay scale running rng` sets
/// `running ← decay · running + scale · Σ_n g_n²` (g_n the batch's per-sample gradients) and returns the
/// generator after any label draws. EWC++ and RWalk observe every step through one.
type FisherBlend = float -> float -> Tensor list -> RandomState -> RandomState

/// Pieces the importance methods share (the method-specific formulas live in each method's module).
[<RequireQualifiedAccess>]
module Importance =

    /// A convex combination `α x + (1 − α) y` (SCP with x the old Γ).
    let convex (alpha: float) (x: Tensor list) (y: Tensor list) : Tensor list =
        ParameterTensors.combine alpha x (1.0 - alpha) y

    /// `acc += lr g²` in place for every parameter (SI's ω and RWalk's window loss under plain SGD).
    let accumulatePath (learningRate: float) (gradients: Tensor list) (acc: Tensor list) =
        use _ = torch.no_grad ()
        use lr = learningRate.ToScalar()
        List.iter2 (fun (a: Tensor) (g: Tensor) -> if not (isNull g) then a.addcmul_(g, g, lr) |> ignore) acc gradients

    /// The gradients currently held by parameters (null where a parameter has none).
    let gradients (parameters: Tensor list) : Tensor list = parameters |> List.map (fun p -> p.grad)

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

    /// The step's batch Fisher, blended straight into a running Fisher from the step's own activations
    /// (the inputs and the model's per-layer features of the step's forward pass).
    let batchFisherBlend (kind: FisherKind) (model: Backbone) (parameters: Tensor list) (inputs: Tensor) (features: Tensor list) (logits: Tensor) (labelArray: int[]) : FisherBlend =
        let activations = inputs :: features
        let labels = labelArray |> Array.map int64
        fun decay scale running rng ->
            Estimate.blendBatchFisher kind model parameters inputs activations logits labels decay scale running rng

    /// The seed of an importance method's own generator (sampled Fisher labels, SCP's slices) from the
    /// run's seed.
    let generator (seed: int64) : RandomState = Random.split 3L (Random.create seed)
