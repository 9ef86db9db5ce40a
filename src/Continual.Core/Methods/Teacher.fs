namespace Continual.Methods

open Continual
open Continual.Models
open TorchSharp

/// The old model snapshot of the distillation methods (a frozen copy taken by `Backbones.snapshot`).
[<RequireQualifiedAccess>]
module Teacher =

    /// The snapshot's output on inputs, without building a graph.
    let output (teacher: Backbone) (inputs: Tensor) : ModelOutput =
        use _ = torch.no_grad ()
        teacher.ForwardWithFeatures inputs

    /// An int64 index tensor of classes on a device (to select logit columns).
    let classIndex (device: Device) (classes: int list) =
        torch.tensor(classes |> List.map int64 |> Array.ofList, dtype = torch.ScalarType.Int64, device = device)

    /// A snapshot as an owned disposable, for `Method.Owned`.
    let owned (snapshot: Backbone option) : System.IDisposable list = snapshot |> Option.map (fun m -> m :> System.IDisposable) |> Option.toList
