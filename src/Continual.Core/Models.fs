namespace Continual.Models

open Continual
open TorchSharp
open TorchSharp.Modules

/// The architecture of a backbone as plain data: enough to rebuild it, describe it and export it.
type Architecture =
    /// A multi-layer perceptron: inputs, hidden widths (ReLU after each), classes.
    | Mlp of inputs: int * hidden: int list * classes: int

/// What one forward pass yields: the logits and the intermediate features distillation needs.
type ModelOutput =
    { Logits: Tensor
      /// Per-layer (or per-stage) features, from the input side to the embedding.
      Features: Tensor list }
    /// The final embedding (the features just before the classifier).
    member this.Embedding = List.last this.Features

/// A network that exposes its logits and its intermediate features.
[<AbstractClass>]
type Backbone(name: string) =
    inherit torch.nn.Module<Tensor, Tensor>(name)
    /// The architecture this module was built from.
    abstract Architecture: Architecture
    /// Logits and features in one pass.
    abstract ForwardWithFeatures: Tensor -> ModelOutput
    /// The final layer, from the embedding to the logits (LwF's warm-up trains it alone).
    abstract Classifier: torch.nn.Module<Tensor, Tensor>

/// The MLP of the reference protocol (784-100-100-10 with ReLU), initialised as the DER paper's
/// framework does: Xavier-uniform weights, zero biases.
type MlpBackbone(inputs: int, hidden: int list, classes: int) as this =
    inherit Backbone("mlp")
    let widths = inputs :: hidden
    let hiddenLayers =
        new ModuleList<Linear>(
            [| for (i, o) in List.pairwise widths -> torch.nn.Linear(int64 i, int64 o) |])
    let classifier = torch.nn.Linear(int64 (List.last widths), int64 classes)
    do
        this.RegisterComponents()
        use _ = torch.no_grad ()
        for layer in Seq.append (Seq.cast<Linear> hiddenLayers) [ classifier ] do
            torch.nn.init.xavier_uniform_ layer.weight |> ignore
            torch.nn.init.zeros_ layer.bias |> ignore

    override _.Architecture = Mlp(inputs, hidden, classes)

    override _.Classifier = classifier :> torch.nn.Module<Tensor, Tensor>

    override _.ForwardWithFeatures(input: Tensor) =
        let mutable h = input
        let features = ResizeArray()
        for layer in hiddenLayers do
            h <- torch.nn.functional.relu (layer.forward h)
            features.Add h
        { Logits = classifier.forward h; Features = List.ofSeq features }

    override this.forward(input: Tensor) = (this.ForwardWithFeatures input).Logits

/// Building backbones.
[<RequireQualifiedAccess>]
module Backbones =

    /// A freshly initialised backbone of an architecture (draws from torch's global generator).
    let create (architecture: Architecture) : Backbone =
        match architecture with
        | Mlp(inputs, hidden, classes) -> new MlpBackbone(inputs, hidden, classes) :> Backbone

    /// A frozen copy of a backbone on a device (no gradients, eval mode): the old model snapshot of
    /// distillation. Torch's global generator is left as it was, so taking a snapshot never changes
    /// what a run draws afterwards.
    let snapshot (device: Device) (model: Backbone) : Backbone =
        let generator = torch.get_rng_state ()
        let copy =
            try create model.Architecture
            finally
                torch.set_rng_state generator
                generator.Dispose()
        copy.``to`` device |> ignore
        use _ = torch.no_grad ()
        for (target, source) in Seq.zip (copy.parameters ()) (model.parameters ()) do
            target.copy_ source |> ignore
            target.requires_grad <- false
        for (target, source) in Seq.zip (copy.buffers ()) (model.buffers ()) do
            target.copy_ source |> ignore
        copy.eval ()
        copy

    /// The MLP 784-100-100-10 of the reference protocol.
    let referenceMlp = Mlp(784, [ 100; 100 ], 10)

    /// A short human-readable description, e.g. "mlp 784-100-100-10".
    let describe (architecture: Architecture) =
        match architecture with
        | Mlp(i, h, c) -> "mlp " + String.concat "-" (List.map string (i :: h @ [ c ]))

    /// Number of trainable scalars in a module.
    let parameterCount (model: torch.nn.Module) =
        model.parameters () |> Seq.sumBy (fun p -> p.numel ())
