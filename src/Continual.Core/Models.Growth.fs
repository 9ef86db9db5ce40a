namespace Continual.Models

open Continual
open Continual.Penalties
open TorchSharp

/// What the new rows of a tensor shaped like a parameter hold after the head grows.
[<RequireQualifiedAccess>]
type RowFill =
    /// Zeros: importance, path integrals, running sums (a new output is unconstrained).
    | Zeros
    /// The grown model's initial values of the new rows: anchors and start points.
    | Initial

/// One growth of the classifier head, as the shell hands it to the state shaped by the model: the
/// parameter shapes before, the grown model's parameters after (old rows kept exactly, new rows
/// initialised). Only the classifier's parameters change, and only along their first dimension
/// (its outputs), so every per-parameter tensor grows by appending rows at the end.
type HeadGrowth =
    { OldClasses: int
      NewClasses: int
      /// The shape of every parameter before the growth, in `parameters()` order.
      OldShapes: int64[] list
      /// The grown model's parameters, in `parameters()` order.
      Parameters: Tensor list }

/// Growing state with the head: pure functions that return new tensors (detached, owned by the caller)
/// and leave their inputs alone; a tensor whose shape does not change is returned as it is.
[<RequireQualifiedAccess>]
module HeadGrowth =

    let private shapeText (s: int64[]) = System.String.Join(", ", s)

    /// `t` with the rows parameter `index` gained appended (a tensor of the caller's dispose scope).
    let private appendRows (growth: HeadGrowth) (fill: RowFill) (index: int) (t: Tensor) : Tensor =
        let target = growth.Parameters.[index]
        let oldShape = growth.OldShapes.[index]
        if t.shape <> oldShape then
            invalidArg (nameof t) (sprintf "a tensor of shape [%s] where parameter %d had [%s]" (shapeText t.shape) index (shapeText oldShape))
        let rows = target.shape.[0] - oldShape.[0]
        let extra =
            match fill with
            | RowFill.Zeros -> torch.zeros([| yield rows; yield! Array.tail target.shape |], dtype = t.dtype, device = t.device)
            | RowFill.Initial -> target.detach().narrow(0L, oldShape.[0], rows).``to``(t.device).to_type(t.dtype)
        torch.cat([| t; extra |], 0L)

    /// `t` (shaped like parameter `index` before the growth) with the rows it lacks appended.
    let growTensor (growth: HeadGrowth) (fill: RowFill) (index: int) (t: Tensor) : Tensor =
        if t.shape = growth.Parameters.[index].shape then t
        else
            use _ = torch.no_grad ()
            use scope = torch.NewDisposeScope()
            (appendRows growth fill index t).DetachFromDisposeScope()

    /// Per-parameter tensors (importance, anchors, accumulators) grown with the head.
    let growTensors (growth: HeadGrowth) (fill: RowFill) (tensors: Tensor list) : Tensor list =
        if tensors.Length <> growth.Parameters.Length then
            invalidArg (nameof tensors) (sprintf "%d tensors where the model has %d parameters" tensors.Length growth.Parameters.Length)
        tensors |> List.mapi (growTensor growth fill)

    /// Optional per-parameter tensors grown with the head.
    let growOptional (growth: HeadGrowth) (fill: RowFill) (tensors: Tensor list option) : Tensor list option =
        tensors |> Option.map (growTensors growth fill)

    /// A flat vector over all parameters (a quadratic penalty's curvature or anchor) grown with the head:
    /// each parameter's piece gets its new rows.
    let growFlat (growth: HeadGrowth) (fill: RowFill) (flat: Tensor) : Tensor =
        use _ = torch.no_grad ()
        use scope = torch.NewDisposeScope()
        let mutable offset = 0L
        let pieces =
            growth.OldShapes
            |> List.mapi (fun i shape ->
                let n = Array.fold (*) 1L shape
                let piece = flat.narrow(0L, offset, n).reshape(shape)
                offset <- offset + n
                if shape = growth.Parameters.[i].shape then piece.reshape(-1L)
                else (appendRows growth fill i piece).reshape(-1L))
        if offset <> flat.shape.[0] then
            invalidArg (nameof flat) (sprintf "a flat vector of %d elements where the parameters had %d" flat.shape.[0] offset)
        torch.cat(Array.ofList pieces, 0L).DetachFromDisposeScope()

    /// A quadratic penalty grown with the head: the new rows get curvature 0 (unconstrained: no task
    /// has shown what they should be) and the grown model's initial values as anchor; the old rows and
    /// the offset are kept, so the penalty's value right after the growth equals its value before.
    let growQuadratic (growth: HeadGrowth) (q: Quadratic) : Quadratic =
        { Curvature = growFlat growth RowFill.Zeros q.Curvature
          Anchor = growFlat growth RowFill.Initial q.Anchor
          Offset = q.Offset
          Shapes = growth.Parameters |> List.map (fun p -> p.shape) }

    /// An optional penalty grown with the head.
    let growPenalty (growth: HeadGrowth) (penalty: Quadratic option) : Quadratic option =
        penalty |> Option.map (growQuadratic growth)
