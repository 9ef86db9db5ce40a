namespace Continual.Models

open Continual
open TorchSharp

/// A model's parameters and their gradients laid out as views of two flat vectors, in the order of
/// `parameters()`. Whatever touches every parameter at once (a quadratic penalty's gradient, gradient
/// clipping) then costs one tensor operation instead of one per parameter tensor, which is most of a
/// step's time for small models and batches. The module's own parameter objects keep working as
/// before: an optimiser, autograd and ONNX export see the same tensors, now backed by the flat storage.
type FlatParameters =
    { /// Every parameter, flattened and concatenated; each parameter is a view of it.
      Values: Tensor
      /// Every parameter's gradient, flattened and concatenated; each `grad` is a view of it.
      Gradients: Tensor
      /// The shape of each parameter, in order.
      Shapes: int64[] list }

/// Building and checking the flat layout.
[<RequireQualifiedAccess>]
module FlatParameters =

    /// Rebinds the parameters of a model (already on its device) to views of one flat vector, and
    /// their gradients to views of another (zero-filled), copying the current values. Backward passes
    /// then accumulate into the flat gradient in place, and `zero_grad` zeroes it in place (TorchSharp's
    /// optimisers keep a defined gradient). Fails clearly when the parameters do not share one dtype
    /// and device, or the model has none.
    let create (model: torch.nn.Module) : FlatParameters =
        let parameters = [ for p in model.parameters () -> p ]
        match parameters with
        | [] -> invalidArg (nameof model) "the model has no parameters to lay out"
        | first :: _ ->
            for p in parameters do
                if p.dtype <> first.dtype || p.device.ToString() <> first.device.ToString() then
                    invalidArg (nameof model) (sprintf "a flat layout needs one dtype and device for all parameters (found %A on %O and %A on %O)" first.dtype first.device p.dtype p.device)
            let total = parameters |> List.sumBy (fun p -> p.numel ())
            let values = torch.empty([| total |], dtype = first.dtype, device = first.device).DetachFromDisposeScope()
            let gradients = torch.zeros([| total |], dtype = first.dtype, device = first.device).DetachFromDisposeScope()
            use _ = torch.no_grad ()
            let mutable offset = 0L
            for p in parameters do
                let n = p.numel ()
                // The parameter and its gradient hold their own references to the flat storage; the
                // views made here are only handles, freed at once.
                use valueSlice = values.narrow(0L, offset, n)
                use valueView = valueSlice.view(p.shape)
                valueView.copy_ p |> ignore
                p.set_ valueView |> ignore
                use gradientSlice = gradients.narrow(0L, offset, n)
                use gradientView = gradientSlice.view(p.shape)
                p.grad <- gradientView
                offset <- offset + n
            { Values = values; Gradients = gradients; Shapes = parameters |> List.map (fun p -> p.shape) }

    /// Whether the model's parameters and gradients still sit where this layout put them: same count
    /// and shapes, each at its offset of a storage (moving the model to another device, or anything
    /// that replaces a parameter or its gradient with a fresh tensor, shows as an offset of 0).
    /// Costs a few calls per parameter: for task boundaries and tests, not for every step.
    let isBound (flat: FlatParameters) (model: torch.nn.Module) : bool =
        let parameters = [ for p in model.parameters () -> p ]
        parameters.Length = flat.Shapes.Length
        && (let mutable offset = 0L
            let mutable ok = true
            for (p, shape) in List.zip parameters flat.Shapes do
                // `grad` makes a new handle on the gradient: free it, not the gradient.
                use grad = p.grad
                ok <- ok
                      && p.shape = shape
                      && p.storage_offset () = offset
                      && not (isNull grad)
                      && grad.storage_offset () = offset
                offset <- offset + p.numel ()
            ok)

    /// Frees the layout's own handles (the parameters keep the storage alive while the model lives).
    let dispose (flat: FlatParameters) =
        flat.Values.Dispose()
        flat.Gradients.Dispose()
