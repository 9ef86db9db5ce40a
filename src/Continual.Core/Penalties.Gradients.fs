namespace Continual.Penalties

open Continual
open Continual.Models
open TorchSharp

/// The linear layers of an MLP, input side first, with ReLU between consecutive layers: each layer is
/// (weight [out, in], bias [out]) and the tensors are the model's own parameters.
type LinearChain =
    { Layers: (Tensor * Tensor) list }

/// A per-sample objective whose gradients importance estimators reduce.
type Objective =
    /// `−log p(y_n | x_n)` at the given labels; each sample's squared gradient is weighted by
    /// `p(y_n | x_n)` when `Weighted` (the reference framework's online-EWC Fisher).
    | NegativeLogLikelihood of labels: int64[] * weighted: bool
    /// `||f(x_n)||²`, the squared L2 norm of the logits (MAS).
    | SquaredNorm

/// How per-sample gradients are reduced over samples.
type Reduction =
    /// `Σ_n w_n g_n²` (Fisher).
    | Squares
    /// `Σ_n |g_n|` (MAS).
    | Magnitudes

/// Per-sample gradient statistics. For the MLP backbone they are computed in closed form from the
/// per-sample activations `a` entering each linear layer and the per-sample gradients `δ` with respect
/// to its outputs: the gradient of sample n for a weight is the outer product `δ_n a_nᵀ`, so
/// `Σ_n (δ_n a_nᵀ)² = (δ²)ᵀ a²` and `Σ_n |δ_n a_nᵀ| = |δ|ᵀ |a|`: one matrix product per layer, no
/// backward pass per sample. Other backbones fall back to one autograd pass per sample.
[<RequireQualifiedAccess>]
module PerSample =

    /// The parameters of a model, in the order of `parameters()` (the order of every importance list).
    let parameters (model: Backbone) : Tensor list = [ for p in model.parameters () -> p :> Tensor ]

    /// The linear chain of a model when it is the MLP backbone (checked by shapes), None otherwise, from
    /// its parameters already listed (a training step's cache: listing them costs a module walk).
    let chainOf (model: Backbone) (ps: Tensor list) : LinearChain option =
        match model with
        | :? MlpBackbone ->
            if ps.Length < 2 || ps.Length % 2 <> 0 then None
            else
                let layers = [ for i in 0 .. 2 .. ps.Length - 2 -> ps.[i], ps.[i + 1] ]
                let shapesFit =
                    layers |> List.forall (fun (w, b) -> w.dim () = 2L && b.dim () = 1L && b.shape.[0] = w.shape.[0])
                    && (layers |> List.pairwise |> List.forall (fun ((w1, _), (w2, _)) -> w2.shape.[1] = w1.shape.[0]))
                if shapesFit then Some { Layers = layers } else None
        | _ -> None

    /// The linear chain of a model when it is the MLP backbone (checked by shapes), None otherwise.
    let chain (model: Backbone) : LinearChain option = chainOf model (parameters model)

    // Chains already checked, by the identity of the parameter list they were read from (the shell lists a
    // model's parameters once and hands the same list to every step; a grown model gets a new list). The
    // table holds no tensor of its own and forgets a list when the list is collected.
    let private checkedChains = System.Runtime.CompilerServices.ConditionalWeakTable<Tensor list, LinearChain option>()

    /// `chainOf`, remembered for a parameter list that is handed over again (a training step's cached
    /// list): its shape checks took about a sixth of a step's online Fisher.
    let cachedChainOf (model: Backbone) (ps: Tensor list) : LinearChain option =
        match model with
        | :? MlpBackbone ->
            match checkedChains.TryGetValue ps with
            | true, c -> c
            | _ ->
                let c = chainOf model ps
                checkedChains.AddOrUpdate(ps, c)
                c
        | _ -> None

    /// The activations entering each layer (the inputs first) and the logits, without autograd.
    let forward (chain: LinearChain) (inputs: Tensor) : Tensor list * Tensor =
        use _ = torch.no_grad ()
        let rec go (h: Tensor) (layers: (Tensor * Tensor) list) (acc: Tensor list) =
            match layers with
            | [] -> invalidOp "a chain has at least one layer"
            | [ (w, b) ] -> List.rev (h :: acc), torch.nn.functional.linear(h, w, b)
            | (w, b) :: rest ->
                use z = torch.nn.functional.linear(h, w, b)
                go (torch.nn.functional.relu z) rest (h :: acc)
        go inputs chain.Layers []

    /// The gradients of an objective with respect to each layer's outputs (pre-activations), given its
    /// gradient with respect to the logits, `deltaOut` [..., n, classes]; leading dimensions (e.g.
    /// slices) broadcast against the activations [n, width]. ReLU's derivative is 1 where the
    /// activation is positive, as in libtorch. Returns one tensor per layer, input side first.
    let backward (chain: LinearChain) (activations: Tensor list) (deltaOut: Tensor) : Tensor list =
        use _ = torch.no_grad ()
        let weights = chain.Layers |> List.map fst |> Array.ofList
        let acts = Array.ofList activations
        let count = weights.Length
        let deltas = Array.zeroCreate<Tensor> count
        deltas.[count - 1] <- deltaOut
        use zero = 0.0.ToScalar()
        for l in count - 2 .. -1 .. 0 do
            // Masked in place: the product is this function's own tensor.
            let back = deltas.[l + 1].matmul weights.[l + 1]
            use mask = acts.[l + 1].gt zero
            deltas.[l] <- back.mul_ mask
        List.ofArray deltas

    /// `Σ_n w_n g_n²` or `Σ_n |g_n|` per parameter from per-sample activations [n, in] and output
    /// gradients [n, out] of each layer (weights' statistics [out, in], biases' [out]).
    let reduce (reduction: Reduction) (activations: Tensor list) (deltas: Tensor list) (sampleWeights: Tensor option) : Tensor list =
        use _ = torch.no_grad ()
        List.map2 (fun (a: Tensor) (d: Tensor) ->
            match reduction with
            | Squares ->
                use d2 = d.square ()
                use wd2 = match sampleWeights with Some w -> d2.mul(w.unsqueeze 1L) | None -> d2.alias ()
                use a2 = a.square ()
                [ wd2.t().matmul a2; wd2.sum(0L) ]
            | Magnitudes ->
                use da = d.abs ()
                use aa = a.abs ()
                [ da.t().matmul aa; da.sum(0L) ]) activations deltas
        |> List.concat

    /// Blends a batch's `Σ_n w_n g_n²` into running statistics in place, `target ← decay · target +
    /// scale · Σ_n w_n g_n²`, with one fused `addmm_` (weights) or `addmv_` (biases) per tensor: the
    /// batch's sums are never materialised. `targets` are in the order of `reduce`'s result. The deltas
    /// are consumed: each is overwritten with its (weighted) squares, to spare a temporary per layer.
    let blendSquares (decay: float) (scale: float) (activations: Tensor list) (deltas: Tensor list) (sampleWeights: Tensor option) (targets: Tensor list) : unit =
        use _ = torch.no_grad ()
        let layers = targets |> List.chunkBySize 2
        if layers.Length <> activations.Length || layers.Length <> deltas.Length then
            invalidArg (nameof targets) (sprintf "%d targets for %d layers" targets.Length activations.Length)
        let first: Tensor = List.head deltas
        use ones = torch.ones([| first.shape.[0] |], dtype = first.dtype, device = first.device)
        let beta, alpha = float32 decay, float32 scale
        use column = match sampleWeights with Some w -> w.unsqueeze 1L | None -> null
        List.zip3 activations deltas layers
        |> List.iter (fun (a: Tensor, d: Tensor, layer: Tensor list) ->
            // d·d and then the weights: the same float operations as `square` and `mul`.
            let squares = d.mul_ d
            if not (isNull column) then squares.mul_ column |> ignore
            use inputSquares = a.square ()
            use transposed = squares.t ()
            match layer with
            | [ weight; bias ] ->
                weight.addmm_(transposed, inputSquares, beta, alpha) |> ignore
                bias.addmv_(transposed, ones, beta, alpha) |> ignore
            | _ -> invalidArg (nameof targets) "targets come in (weight, bias) pairs")

    /// The gradient of the objective with respect to the logits, per sample, and the per-sample
    /// weights of the squared gradients.
    let outputGradient (objective: Objective) (logits: Tensor) : Tensor * Tensor option =
        use _ = torch.no_grad ()
        match objective with
        | NegativeLogLikelihood(labels, weighted) ->
            let n = int64 labels.Length
            use y = torch.tensor(labels, System.ReadOnlySpan<int64>([| n; 1L |]), System.Nullable torch.ScalarType.Int64, logits.device)
            let p = torch.nn.functional.softmax(logits, 1L)
            let weights =
                if weighted then
                    use picked = p.gather(1L, y)
                    Some(picked.squeeze 1L)
                else None
            // p − onehot(y), in place: adding −1 at each label is the same float operation as
            // subtracting 1, and the other entries are left as they are (p − 0 = p), in two calls
            // instead of one_hot, a cast and a subtraction.
            use minusOneValue = (-1.0).ToScalar()
            use minusOne = torch.full([| n; 1L |], minusOneValue, dtype = p.dtype, device = p.device)
            p.scatter_add_(1L, y, minusOne), weights
        | SquaredNorm -> Scalars.mul logits 2.0, None

    /// Sums over a batch of per-sample statistics of an MLP from activations already computed
    /// (e.g. the training step's own forward pass): `activations` are the inputs of each layer.
    let chainSums (chain: LinearChain) (activations: Tensor list) (logits: Tensor) (objective: Objective) (reduction: Reduction) : Tensor list =
        use scope = torch.NewDisposeScope()
        let delta, weights = outputGradient objective logits
        let deltas = backward chain activations delta
        reduce reduction activations deltas weights |> List.map (fun t -> t.MoveToOuterDisposeScope())

    /// Blends a batch's sums of squared per-sample gradients into running statistics in place (see
    /// `blendSquares`), from activations already computed (e.g. the training step's own forward pass).
    let chainBlendSquares (chain: LinearChain) (activations: Tensor list) (logits: Tensor) (objective: Objective) (decay: float) (scale: float) (targets: Tensor list) : unit =
        // Inference mode: nothing made here is ever differentiated, and libtorch skips its autograd
        // bookkeeping (the targets are updated in place as under no_grad).
        use _ = torch.inference_mode true
        use scope = torch.NewDisposeScope()
        let delta, weights = outputGradient objective logits
        // The deltas are this function's own: blendSquares may square them in place.
        let deltas = backward chain activations delta
        blendSquares decay scale activations deltas weights targets

    /// The reference: sums of per-sample statistics for any backbone, one autograd pass per sample
    /// (the model's `.grad` fields are not touched). Slow; used for non-MLP backbones and in tests.
    let loopSums (model: Backbone) (inputs: Tensor) (objective: Objective) (reduction: Reduction) : Tensor list =
        let ps = parameters model
        let sums = ps |> List.map (fun p -> torch.zeros_like(p).DetachFromDisposeScope())
        let n = inputs.shape.[0]
        for i in 0L .. n - 1L do
            use scope = torch.NewDisposeScope()
            use x = inputs.narrow(0L, i, 1L)
            let logits = model.forward x
            let loss, weight =
                match objective with
                | NegativeLogLikelihood(labels, weighted) ->
                    let logp = torch.nn.functional.log_softmax(logits, 1L)
                    let picked = logp.[0L, labels.[int i]]
                    picked.neg (), (if weighted then System.Math.Exp(Scalars.toFloat picked) else 1.0)
                | SquaredNorm -> logits.square().sum(), 1.0
            let grads = torch.autograd.grad([| loss |], Array.ofList ps, null, false, false, true)
            use _ = torch.no_grad ()
            for (s, g) in Seq.zip sums grads do
                if not (isNull g) then
                    match reduction with
                    | Squares ->
                        use w = weight.ToScalar()
                        s.addcmul_(g, g, w) |> ignore
                    | Magnitudes -> Scalars.addInPlace s (g.abs ()) |> ignore
        sums

    /// Sums over a batch of per-sample statistics: closed form for the MLP, one pass per sample otherwise.
    let sums (model: Backbone) (inputs: Tensor) (objective: Objective) (reduction: Reduction) : Tensor list =
        match chain model with
        | Some c ->
            use scope = torch.NewDisposeScope()
            let activations, logits = forward c inputs
            chainSums c activations logits objective reduction |> List.map (fun t -> t.MoveToOuterDisposeScope())
        | None -> loopSums model inputs objective reduction
