namespace Continual.Models

open Continual
open TorchSharp
open TorchSharp.Modules

/// The architecture of a backbone as plain data: enough to rebuild it, describe it and export it.
type Architecture =
    /// A multi-layer perceptron: inputs, hidden widths (ReLU after each), classes.
    | Mlp of inputs: int * hidden: int list * classes: int
    /// A small CNN for small grey images (28×28): two blocks of 3×3 convolution (32 then 64 filters,
    /// padding 1), ReLU and 2×2 max-pooling, a dense layer of 128 with ReLU, the classifier.
    | Cnn of channels: int * height: int * width: int * classes: int
    /// The reduced ResNet-18 of the continual-learning literature (GEM, DER): a 3×3 stem with stride 1,
    /// four stages of two basic blocks with `baseFilters` × 1, 2, 4, 8 filters (strides 1, 2, 2, 2),
    /// batch normalisation, global average pooling and the classifier; `baseFilters` is 20.
    | ResNet18 of channels: int * height: int * width: int * baseFilters: int * classes: int

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

/// Pooling as the backbones use it.
[<RequireQualifiedAccess>]
module Pooling =

    /// 2×2 max-pooling with stride 2 of an [n, C, H, W] tensor, as `max_pool2d(x, 2)` computes it, bit
    /// for bit in value and gradient; the result is contiguous. On the CPU the window maxima are found on
    /// a channels-last copy: libtorch's channels-last kernel is vectorised over the channels and many
    /// times faster than its NCHW one, and both keep the same element of each window (the first largest
    /// in row order, the last NaN) with the same index. Without gradients its values are copied back to
    /// NCHW; with gradients the elements are gathered from the input at those indices, so that the
    /// backward pass scatters each gradient to the element the NCHW kernel would have chosen (its own
    /// channels-last backward is slower than the NCHW one). Copies, gathers and scatters do no arithmetic.
    let maxPool2x2 (x: Tensor) : Tensor =
        if x.device_type <> DeviceType.CPU then torch.nn.functional.max_pool2d(x, 2L)
        else
            use channelsLast = x.detach().permute(0L, 2L, 3L, 1L).contiguous()
            use nchwView = channelsLast.permute(0L, 3L, 1L, 2L)
            if torch.is_grad_enabled () && x.requires_grad then
                let struct (values, indices) = torch.nn.functional.max_pool2d_with_indices(nchwView, [| 2L; 2L |])
                values.Dispose()
                use _ = indices
                let n, c = x.shape.[0], x.shape.[1]
                use planeIndices = indices.reshape(n, c, -1L)
                use planes = x.reshape(n, c, -1L)
                use gathered = planes.gather(2L, planeIndices)
                gathered.reshape(indices.shape)
            else
                use pooled = torch.nn.functional.max_pool2d(nchwView, 2L)
                pooled.contiguous()

/// The small CNN: features are the two pooled stage maps ([n, 32, H/2, W/2], [n, 64, H/4, W/4]) and
/// the 128-wide embedding. Inputs arrive flattened and are reshaped to [n, C, H, W].
type CnnBackbone(channels: int, height: int, width: int, classes: int) as this =
    inherit Backbone("cnn")
    let conv1 = torch.nn.Conv2d(int64 channels, 32L, 3L, padding = 1L)
    let conv2 = torch.nn.Conv2d(32L, 64L, 3L, padding = 1L)
    let dense = torch.nn.Linear(int64 (64 * (height / 4) * (width / 4)), 128L)
    let classifier = torch.nn.Linear(128L, int64 classes)
    do this.RegisterComponents()

    override _.Architecture = Cnn(channels, height, width, classes)

    override _.Classifier = classifier :> torch.nn.Module<Tensor, Tensor>

    override _.ForwardWithFeatures(input: Tensor) =
        let x = input.reshape(-1L, int64 channels, int64 height, int64 width)
        // ReLU after the pooling, on a quarter of the elements: max(relu a, relu b, ...) = relu(max(a, b, ...)),
        // and the gradient reaches the same element (a window whose maximum is ≤ 0 passes none either way).
        let stage1 = torch.nn.functional.relu (Pooling.maxPool2x2 (conv1.forward x))
        let stage2 = torch.nn.functional.relu (Pooling.maxPool2x2 (conv2.forward stage1))
        let embedding = torch.nn.functional.relu (dense.forward (stage2.flatten 1L))
        { Logits = classifier.forward embedding; Features = [ stage1; stage2; embedding ] }

    override this.forward(input: Tensor) = (this.ForwardWithFeatures input).Logits

/// ResNet's basic block: two 3×3 convolutions with batch normalisation and a shortcut (a 1×1
/// convolution with batch normalisation when the stride or the width changes).
type BasicBlock(inPlanes: int, planes: int, stride: int) as this =
    inherit torch.nn.Module<Tensor, Tensor>("basic_block")
    let conv1 = torch.nn.Conv2d(int64 inPlanes, int64 planes, 3L, stride = int64 stride, padding = 1L, bias = false)
    let bn1 = torch.nn.BatchNorm2d(int64 planes)
    let conv2 = torch.nn.Conv2d(int64 planes, int64 planes, 3L, padding = 1L, bias = false)
    let bn2 = torch.nn.BatchNorm2d(int64 planes)
    let shortcut =
        if stride <> 1 || inPlanes <> planes then
            Some(torch.nn.Conv2d(int64 inPlanes, int64 planes, 1L, stride = int64 stride, bias = false), torch.nn.BatchNorm2d(int64 planes))
        else None
    do
        this.register_module ("conv1", conv1)
        this.register_module ("bn1", bn1)
        this.register_module ("conv2", conv2)
        this.register_module ("bn2", bn2)
        match shortcut with
        | Some(conv, bn) ->
            this.register_module ("shortcut_conv", conv)
            this.register_module ("shortcut_bn", bn)
        | None -> ()

    override _.forward(x: Tensor) =
        let out = torch.nn.functional.relu (bn1.forward (conv1.forward x))
        let out = bn2.forward (conv2.forward out)
        let skip =
            match shortcut with
            | Some(conv, bn) -> bn.forward (conv.forward x)
            | None -> x
        torch.nn.functional.relu (Scalars.add out skip)

/// The reduced ResNet-18: features are the four stages' maps and the pooled embedding (8 ×
/// baseFilters wide). Inputs arrive flattened and are reshaped to [n, C, H, W].
type ResNet18Backbone(channels: int, height: int, width: int, baseFilters: int, classes: int) as this =
    inherit Backbone("resnet18")
    let stem = torch.nn.Conv2d(int64 channels, int64 baseFilters, 3L, padding = 1L, bias = false)
    let stemBn = torch.nn.BatchNorm2d(int64 baseFilters)
    let stage (inPlanes: int) (planes: int) (stride: int) =
        new ModuleList<BasicBlock>([| new BasicBlock(inPlanes, planes, stride); new BasicBlock(planes, planes, 1) |])
    let f = baseFilters
    let layer1 = stage f f 1
    let layer2 = stage f (2 * f) 2
    let layer3 = stage (2 * f) (4 * f) 2
    let layer4 = stage (4 * f) (8 * f) 2
    let classifier = torch.nn.Linear(int64 (8 * f), int64 classes)
    do
        this.RegisterComponents()
        // Its channel counts (20, 40, 80, 160) are not multiples of oneDNN's vector block, where oneDNN
        // was seen to be wrong; the CNN's (32, 64) are, and were right there.
        Engine.checkConvolutions () |> ignore

    override _.Architecture = ResNet18(channels, height, width, baseFilters, classes)

    override _.Classifier = classifier :> torch.nn.Module<Tensor, Tensor>

    override _.ForwardWithFeatures(input: Tensor) =
        let x = input.reshape(-1L, int64 channels, int64 height, int64 width)
        let mutable h = torch.nn.functional.relu (stemBn.forward (stem.forward x))
        let stages = ResizeArray()
        for layer in [ layer1; layer2; layer3; layer4 ] do
            for block in layer do
                h <- block.forward h
            stages.Add h
        let embedding = torch.nn.functional.adaptive_avg_pool2d(h, 1L).flatten 1L
        { Logits = classifier.forward embedding; Features = List.ofSeq stages @ [ embedding ] }

    override this.forward(input: Tensor) = (this.ForwardWithFeatures input).Logits

/// Building backbones.
[<RequireQualifiedAccess>]
module Backbones =

    /// A freshly initialised backbone of an architecture (draws from torch's global generator).
    let create (architecture: Architecture) : Backbone =
        match architecture with
        | Mlp(inputs, hidden, classes) -> new MlpBackbone(inputs, hidden, classes) :> Backbone
        | Cnn(channels, height, width, classes) -> new CnnBackbone(channels, height, width, classes) :> Backbone
        | ResNet18(channels, height, width, baseFilters, classes) ->
            new ResNet18Backbone(channels, height, width, baseFilters, classes) :> Backbone

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

    /// The number of classes (outputs) of an architecture's head.
    let classes (architecture: Architecture) : int =
        match architecture with
        | Mlp(_, _, c) -> c
        | Cnn(_, _, _, c) -> c
        | ResNet18(_, _, _, _, c) -> c

    /// The same architecture with a head of another width.
    let withClasses (count: int) (architecture: Architecture) : Architecture =
        match architecture with
        | Mlp(i, h, _) -> Mlp(i, h, count)
        | Cnn(ch, h, w, _) -> Cnn(ch, h, w, count)
        | ResNet18(ch, h, w, f, _) -> ResNet18(ch, h, w, f, count)

    /// The weight and bias of a classifier of `count` outputs over `features` inputs, initialised as the
    /// architecture initialises its own: Xavier-uniform weights and zero biases for the MLP (the DER
    /// framework's), TorchSharp's default Linear initialisation (PyTorch's: Kaiming-uniform with a = √5,
    /// biases uniform in ±1/√features) for the CNN and the ResNet. Draws from torch's global generator.
    let initialClassifier (architecture: Architecture) (features: int64) (count: int) : Tensor * Tensor =
        use layer = torch.nn.Linear(features, int64 count)
        use _ = torch.no_grad ()
        match architecture with
        | Mlp _ ->
            torch.nn.init.xavier_uniform_ layer.weight |> ignore
            torch.nn.init.zeros_ layer.bias |> ignore
        | Cnn _ | ResNet18 _ -> ()
        use scope = torch.NewDisposeScope()
        layer.weight.detach().clone().DetachFromDisposeScope(), layer.bias.detach().clone().DetachFromDisposeScope()

    /// A copy of a backbone whose head has `count` ≥ its classes outputs, on a device: every parameter
    /// and buffer is copied, the classifier's old rows exactly, and the new rows (outputs) are initialised
    /// as the architecture initialises its classifier (`initialClassifier`, drawn from torch's global
    /// generator; nothing else is drawn). The original is left as it was; the copy is in training mode.
    let grow (device: Device) (count: int) (model: Backbone) : Backbone =
        let old = classes model.Architecture
        if count < old then invalidArg (nameof count) (sprintf "a head of %d classes cannot shrink to %d" old count)
        let architecture = withClasses count model.Architecture
        // Building the copy draws a whole initialisation; the generator is put back so that only the new
        // rows draw from it.
        let generator = torch.get_rng_state ()
        let copy =
            try create architecture
            finally
                torch.set_rng_state generator
                generator.Dispose()
        copy.``to`` device |> ignore
        let features = (Seq.head (model.Classifier.parameters ())).shape.[1]
        let weight, bias = initialClassifier model.Architecture features count
        use _ = torch.no_grad ()
        try
            let classifierParameters = Set.ofSeq [ for p in copy.Classifier.parameters () -> p.Handle ]
            for (target, source) in Seq.zip (copy.parameters ()) (model.parameters ()) do
                if target.shape = source.shape then target.copy_ source |> ignore
                elif classifierParameters.Contains target.Handle then
                    let fresh = if target.shape.Length = 2 then weight else bias
                    use oldRows = target.narrow(0L, 0L, int64 old)
                    oldRows.copy_ source |> ignore
                    use newRows = target.narrow(0L, int64 old, int64 (count - old))
                    use initial = fresh.narrow(0L, int64 old, int64 (count - old))
                    newRows.copy_ initial |> ignore
                else invalidOp (sprintf "growing the head changed a parameter outside the classifier (shape [%s])" (System.String.Join(", ", source.shape)))
            for (target, source) in Seq.zip (copy.buffers ()) (model.buffers ()) do
                target.copy_ source |> ignore
        finally
            weight.Dispose()
            bias.Dispose()
        copy

    /// The MLP 784-100-100-10 of the reference protocol.
    let referenceMlp = Mlp(784, [ 100; 100 ], 10)

    /// A short human-readable description, e.g. "mlp 784-100-100-10".
    let describe (architecture: Architecture) =
        match architecture with
        | Mlp(i, h, c) -> "mlp " + String.concat "-" (List.map string (i :: h @ [ c ]))
        | Cnn(ch, h, w, c) -> sprintf "cnn %dx%dx%d-conv32-conv64-128-%d" ch h w c
        | ResNet18(ch, h, w, f, c) -> sprintf "resnet18 %dx%dx%d nf %d-%d" ch h w f c

    /// The backbone names of the command line.
    let names = [ "mlp"; "cnn"; "resnet18" ]

    /// The architecture a backbone name denotes for inputs of (channels, height, width) and a number
    /// of classes: the reference MLP 100-100, the small CNN, or the reduced ResNet-18 with 20 filters.
    let ofName (name: string) (channels: int, height: int, width: int) (classes: int) : Architecture =
        match name.Trim().ToLowerInvariant() with
        | "mlp" -> Mlp(channels * height * width, [ 100; 100 ], classes)
        | "cnn" -> Cnn(channels, height, width, classes)
        | "resnet18" -> ResNet18(channels, height, width, 20, classes)
        | other -> invalidArg (nameof name) (sprintf "unknown backbone '%s' (expected one of: %s)" other (String.concat ", " names))

    /// Number of trainable scalars in a module.
    let parameterCount (model: torch.nn.Module) =
        model.parameters () |> Seq.sumBy (fun p -> p.numel ())
