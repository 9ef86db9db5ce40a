namespace Continual.Penalties

open Continual
open TorchSharp

/// How the strength λ multiplies the sum of a quadratic penalty.
type Scale =
    /// `Σ (λ/2) Ω (θ − θ*)²`, the papers' form (EWC, MAS, RWalk): its gradient is `λ Ω (θ − θ*)`.
    | Half
    /// `λ Σ Ω (θ − θ*)²`, the form of the reference framework for online EWC, SI and SCP: its gradient
    /// is `2 λ Ω (θ − θ*)`.
    | Whole

/// A quadratic penalty ready for training steps: `½ Σ H (θ − θ*)² + Offset`, with the curvature H and
/// the anchor θ* of all parameters concatenated into one flat vector each (in the order of
/// `model.parameters()`), so that a step costs a handful of tensor operations whatever the number of
/// parameter tensors. Every importance method ends up in this form: `H = λ Ω` (Half) or `2 λ Ω`
/// (Whole); several anchors (EWC, one per task) consolidate into one anchor and a constant offset.
/// Its tensors are detached and owned by it.
type Quadratic =
    { /// The diagonal curvature H, flat (the gradient is `H (θ − θ*)`).
      Curvature: Tensor
      /// The anchor θ*, flat.
      Anchor: Tensor
      /// A non-negative constant added to the value (0 for a single anchor).
      Offset: float
      /// The shape of each parameter, to check the parameters a penalty is applied to.
      Shapes: int64[] list }

/// The quadratic penalty as pure functions of (importance, anchors, parameters).
[<RequireQualifiedAccess>]
module Quadratic =

    /// The coefficient c of `c Σ Ω (θ − θ*)²` for a scale and strength.
    let coefficient (scale: Scale) (lambda: float) =
        match scale with
        | Half -> lambda / 2.0
        | Whole -> lambda

    let private detachedCopy (t: Tensor) = t.detach().clone().DetachFromDisposeScope()

    let private checkAligned (what: string) (a: Tensor list) (b: Tensor list) =
        if List.length a <> List.length b then
            invalidArg what (sprintf "%s: %d tensors where %d are expected" what (List.length a) (List.length b))
        List.iter2 (fun (x: Tensor) (y: Tensor) ->
            if x.shape <> y.shape then
                invalidArg what (sprintf "%s: shape [%s] where [%s] is expected" what
                                    (x.shape |> Array.map string |> String.concat ", ") (y.shape |> Array.map string |> String.concat ", "))) a b

    /// The penalty `c Σ_i Ω_i (θ_i − θ*_i)²` (c from `coefficient`), written directly with autograd.
    /// This is the definition; training uses `term`, which has the same value and gradient at a lower cost.
    let penalty (scale: Scale) (lambda: float) (importance: Tensor list) (anchor: Tensor list) (parameters: Tensor list) : Tensor =
        checkAligned (nameof importance) importance parameters
        checkAligned (nameof anchor) anchor parameters
        let c = coefficient scale lambda
        let parts =
            List.map3 (fun (omega: Tensor) (a: Tensor) (theta: Tensor) ->
                use d = theta.sub a
                use sq = d.square ()
                use weighted = sq.mul omega
                weighted.sum ()) importance anchor parameters
        let total = parts |> List.reduce (fun acc p -> let s = Scalars.add acc p in acc.Dispose(); p.Dispose(); s)
        let result = Scalars.mul total c
        total.Dispose()
        result

    /// All tensors flattened and concatenated into one vector (a new tensor; differentiable).
    let concatenate (tensors: Tensor list) : Tensor =
        torch.cat([| for t in tensors -> t.reshape(-1L) |], 0L)

    /// A single-anchor penalty `c Σ Ω (θ − θ*)²` prepared for steps (copies its inputs).
    let create (scale: Scale) (lambda: float) (importance: Tensor list) (anchor: Tensor list) : Quadratic =
        checkAligned (nameof anchor) anchor importance
        let h = 2.0 * coefficient scale lambda
        use _ = torch.no_grad ()
        use omega = concatenate (importance |> List.map (fun t -> t.detach ()))
        { Curvature = (Scalars.mul omega h).DetachFromDisposeScope()
          Anchor = (concatenate (anchor |> List.map (fun t -> t.detach ()))).DetachFromDisposeScope()
          Offset = 0.0
          Shapes = importance |> List.map (fun t -> t.shape) }

    /// The multi-anchor penalty `c Σ_t Σ_i Ω_t,i (θ_i − θ*_t,i)²` (EWC's one pair per task) rewritten
    /// exactly as one quadratic: with `K = Σ_t Ω_t` and `ā = Σ_t Ω_t θ*_t / K` (where K > 0; elsewhere
    /// the last anchor), `Σ_t Ω_t (θ − θ*_t)² = K (θ − ā)² + Σ_t Ω_t (θ*_t − ā)²`. A step then costs the
    /// same whatever the number of tasks. Computed in double precision; a single pair reproduces `create`.
    let consolidate (scale: Scale) (lambda: float) (pairs: (Tensor list * Tensor list) list) : Quadratic =
        match pairs with
        | [] -> invalidArg (nameof pairs) "at least one (importance, anchor) pair is needed"
        | [ (importance, anchor) ] -> create scale lambda importance anchor
        | _ ->
            let c = coefficient scale lambda
            use _ = torch.no_grad ()
            use scope = torch.NewDisposeScope()
            for (importance, anchor) in pairs do
                checkAligned (nameof pairs) importance (fst pairs.Head)
                checkAligned (nameof pairs) anchor (fst pairs.Head)
            let flat64 (ts: Tensor list) = (concatenate (ts |> List.map (fun t -> t.detach ()))).to_type torch.ScalarType.Float64
            let omegas = pairs |> List.map (fst >> flat64)
            let thetas = pairs |> List.map (snd >> flat64)
            let k = omegas |> List.reduce Scalars.add
            let weighted = List.map2 (fun (o: Tensor) (t: Tensor) -> o.mul t) omegas thetas |> List.reduce Scalars.add
            let positive = k.gt(Scalars.cached 0.0)
            let mean = torch.where(positive, weighted.div(torch.where(positive, k, torch.ones_like k)), List.last thetas)
            let mean32 = mean.to_type torch.ScalarType.Float32
            // The spread is taken about the anchor actually stored, so that equal anchors give 0 exactly.
            let stored = mean32.to_type torch.ScalarType.Float64
            let spread = List.map2 (fun (o: Tensor) (t: Tensor) -> o.mul((t.sub stored).square())) omegas thetas |> List.reduce Scalars.add
            { Curvature = (Scalars.mul k (2.0 * c)).to_type(torch.ScalarType.Float32).DetachFromDisposeScope()
              Anchor = mean32.DetachFromDisposeScope()
              Offset = c * (Scalars.toFloat (spread.sum()))
              Shapes = (fst pairs.Head) |> List.map (fun t -> t.shape) }

    let private flatParameters (q: Quadratic) (parameters: Tensor list) =
        if List.length parameters <> q.Shapes.Length || List.exists2 (fun (p: Tensor) s -> p.shape <> s) parameters q.Shapes then
            invalidArg (nameof parameters) "the parameters do not match the penalty's shapes"
        concatenate parameters

    /// The penalty as an autograd loss term, for callers outside the training shell (which applies
    /// `addGradient` instead): a scalar whose value is `½ Σ H (θ − θ*)² + Offset` and whose autograd
    /// gradient with respect to each parameter is exactly `H (θ − θ*)`. The gradient g is formed once
    /// without autograd and attached through `⟨θ, g⟩ − ⟨θ, g⟩.detach()` (value 0): a few operations on one
    /// flat vector instead of differentiating a square per parameter tensor. Belongs to the caller's scope.
    let term (q: Quadratic) (parameters: Tensor list) : Tensor =
        let flat = concatenate parameters
        if flat.shape.[0] <> q.Anchor.shape.[0] then
            invalidArg (nameof parameters) (sprintf "%d parameters where the penalty has %d" flat.shape.[0] q.Anchor.shape.[0])
        let g, v =
            use _ = torch.no_grad ()
            use d = flat.sub q.Anchor
            let g = d.mul q.Curvature
            g, g.dot d
        use s = flat.dot g
        g.Dispose()
        flat.Dispose()
        use attached = s.sub(s.detach())
        use _ = v
        let value = Scalars.addScaled attached v 0.5
        if q.Offset = 0.0 then value
        else
            use _ = value
            use offset = q.Offset.ToScalar()
            value.add(offset, Scalars.one)

    let private checkFlat (q: Quadratic) (what: string) (t: Tensor) =
        if t.shape <> q.Anchor.shape then
            invalidArg what (sprintf "a flat vector of %A elements where the penalty has %d" t.shape q.Anchor.shape.[0])

    /// The penalty's gradient applied in closed form, as the training shell does: adds `H (θ − θ*)`
    /// to `gradients` in place. `values` and `gradients` are flat vectors in the penalty's order (a
    /// model's FlatParameters). Two passes over the parameters, whatever their number of tensors, and
    /// no autograd graph; the value is left to `valueAt`, which the shell needs only when it reports.
    let addGradient (q: Quadratic) (values: Tensor) (gradients: Tensor) : unit =
        checkFlat q (nameof values) values
        checkFlat q (nameof gradients) gradients
        use _ = torch.no_grad ()
        use d = values.sub q.Anchor
        gradients.addcmul_(d, q.Curvature, Scalars.cached 1.0) |> ignore

    /// The value `½ Σ H (θ − θ*)² + Offset` at a flat vector of parameters (no autograd).
    let valueAt (q: Quadratic) (values: Tensor) : float =
        checkFlat q (nameof values) values
        use _ = torch.no_grad ()
        use d = values.sub q.Anchor
        use g = d.mul q.Curvature
        use v = g.dot d
        0.5 * (Scalars.toFloat v) + q.Offset

    /// The value `½ Σ H (θ − θ*)² + Offset` at a list of parameters, as a double (no autograd).
    let value (q: Quadratic) (parameters: Tensor list) : float =
        use flat = (use _ = torch.no_grad () in flatParameters q parameters)
        valueAt q flat

    /// Frees the tensors of a prepared penalty.
    let dispose (q: Quadratic) =
        q.Curvature.Dispose()
        q.Anchor.Dispose()

    /// The tensors a prepared penalty owns.
    let tensors (q: Quadratic) : Tensor list = [ q.Curvature; q.Anchor ]
