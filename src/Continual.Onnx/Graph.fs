namespace Continual.Onnx

// Warning 26 ("rule never matched") is off for LayerGraph.ofArchitecture's catch-all; see there.
#nowarn "26"

open Continual
open Continual.Models
open TorchSharp
open TorchSharp.Modules

/// A model that cannot be exported, with what it is (a layer, an architecture, a tensor) and why.
exception ExportError of what: string * reason: string
    with
        override this.Message = sprintf "cannot export %s: %s" this.what this.reason

/// Stride, padding, dilation and groups of a 2-D convolution (height, width). The kernel size and the
/// channel counts come from the weight tensor, so a description cannot disagree with the model.
type Conv2dSettings =
    { Stride: int * int
      Padding: int * int
      Dilation: int * int
      Groups: int }

/// Kernel, stride and symmetric padding of a 2-D pooling window (height, width).
type Pool2dSettings =
    { Kernel: int * int
      Stride: int * int
      Padding: int * int }

/// One layer of a backbone as the exporter sees it. Layers with parameters name the TorchSharp module
/// that holds them by its state-dict prefix: `Gemm "classifier"` reads `classifier.weight` and, when the
/// model has it, `classifier.bias`.
type Layer =
    /// Reshape a flat [features] sample to [channels, height, width] (ONNX Reshape).
    | Unflatten of channels: int * height: int * width: int
    /// A linear layer y = x Wᵀ + b over a flat sample (ONNX Gemm with transB = 1): `p.weight` [out, in], optional `p.bias`.
    | Gemm of parameter: string
    /// Elementwise max(0, x).
    | Relu
    /// A 2-D convolution (ONNX Conv): `p.weight` [out, in / groups, kh, kw], optional `p.bias`.
    | Conv of parameter: string * Conv2dSettings
    /// Batch normalisation in inference form (running statistics): `p.weight`, `p.bias`,
    /// `p.running_mean`, `p.running_var`, each [channels].
    | BatchNorm of parameter: string * epsilon: float
    /// Max pooling (padding counts as -infinity, as in TorchSharp).
    | MaxPool of Pool2dSettings
    /// Average pooling; `countIncludePad` is TorchSharp's `count_include_pad` (true by default there).
    | AveragePool of Pool2dSettings * countIncludePad: bool
    /// Mean over height and width, keeping [channels, 1, 1] (TorchSharp's AdaptiveAvgPool2d(1)).
    | GlobalAveragePool
    /// Flatten a sample to one dimension.
    | Flatten
    /// `body(x) + shortcut(x)` (ONNX Add); an empty shortcut is the identity. The residual block of ResNets.
    | Residual of body: Layer list * shortcut: Layer list

/// A backbone as a chain of layers from a flat input [N, InputFeatures] to logits [N, classes].
type LayerGraph =
    { /// The graph's name in the ONNX file.
      Name: string
      /// Features of one flat input sample (784 for 28x28 grey images).
      InputFeatures: int
      Layers: Layer list }

/// Describing backbones as layer graphs and checking a description against a model's tensors.
[<RequireQualifiedAccess>]
module LayerGraph =

    /// A short name of a layer for messages, e.g. "Conv 'stem.0'" or "MaxPool 2x2".
    let describe (layer: Layer) =
        match layer with
        | Unflatten(c, h, w) -> sprintf "Unflatten [%d, %d, %d]" c h w
        | Gemm p -> sprintf "Gemm '%s'" p
        | Relu -> "Relu"
        | Conv(p, _) -> sprintf "Conv '%s'" p
        | BatchNorm(p, _) -> sprintf "BatchNormalization '%s'" p
        | MaxPool s -> sprintf "MaxPool %dx%d" (fst s.Kernel) (snd s.Kernel)
        | AveragePool(s, _) -> sprintf "AveragePool %dx%d" (fst s.Kernel) (snd s.Kernel)
        | GlobalAveragePool -> "GlobalAveragePool"
        | Flatten -> "Flatten"
        | Residual _ -> "Residual"

    /// The layer graph of the MLP backbone (`MlpBackbone`): Gemm and Relu per hidden layer, then the classifier.
    let mlp (inputs: int) (hidden: int list) =
        { Name = "mlp"
          InputFeatures = inputs
          Layers =
            [ for i in 0 .. hidden.Length - 1 do
                  Gemm $"hiddenLayers.{i}"
                  Relu
              Gemm "classifier" ] }

    /// The layer graph of a backbone architecture. An architecture without a description here is an
    /// ExportError that names it; new backbones add their case below.
    let ofArchitecture (architecture: Architecture) : LayerGraph =
        let unsupported () =
            raise (ExportError(sprintf "architecture '%s'" (Backbones.describe architecture),
                               "Continual.Onnx has no layer graph for it (add a case to LayerGraph.ofArchitecture)"))
        // One pattern per exportable backbone. The catch-all (warning 26 is off in this file while the
        // MLP is the only case) keeps an architecture added later a clear run-time error.
        let conv stride padding = { Stride = (stride, stride); Padding = (padding, padding); Dilation = (1, 1); Groups = 1 }
        let batchNormEpsilon = 1e-5 // TorchSharp's BatchNorm2d default, used by every backbone here
        match architecture with
        | Mlp(inputs, hidden, _) -> mlp inputs hidden
        | Cnn(channels, height, width, _) ->
            let pool = MaxPool { Kernel = (2, 2); Stride = (2, 2); Padding = (0, 0) }
            { Name = "cnn"
              InputFeatures = channels * height * width
              Layers =
                [ Unflatten(channels, height, width)
                  Conv("conv1", conv 1 1); Relu; pool
                  Conv("conv2", conv 1 1); Relu; pool
                  Flatten
                  Gemm "dense"; Relu
                  Gemm "classifier" ] }
        | ResNet18(channels, height, width, baseFilters, _) ->
            // Mirrors ResNet18Backbone: four stages of two basic blocks; the first block of a stage that
            // changes width or stride has a 1x1 convolution + batch norm shortcut.
            let block (name: string) (inPlanes: int) (planes: int) (stride: int) =
                let body =
                    [ Conv(name + ".conv1", conv stride 1); BatchNorm(name + ".bn1", batchNormEpsilon); Relu
                      Conv(name + ".conv2", conv 1 1); BatchNorm(name + ".bn2", batchNormEpsilon) ]
                let shortcut =
                    if stride <> 1 || inPlanes <> planes then
                        [ Conv(name + ".shortcut_conv", conv stride 0); BatchNorm(name + ".shortcut_bn", batchNormEpsilon) ]
                    else []
                [ Residual(body, shortcut); Relu ]
            let f = baseFilters
            let stages = [ "layer1", f, f, 1; "layer2", f, 2 * f, 2; "layer3", 2 * f, 4 * f, 2; "layer4", 4 * f, 8 * f, 2 ]
            { Name = "resnet18"
              InputFeatures = channels * height * width
              Layers =
                [ Unflatten(channels, height, width)
                  Conv("stem", conv 1 1); BatchNorm("stemBn", batchNormEpsilon); Relu
                  for (name, inPlanes, planes, stride) in stages do
                      yield! block (name + ".0") inPlanes planes stride
                      yield! block (name + ".1") planes planes 1
                  GlobalAveragePool
                  Flatten
                  Gemm "classifier" ] }
        | _ -> unsupported ()

    let private conv2dOut (size: int) (kernel: int) (stride: int) (padding: int) (dilation: int) =
        (size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1

    /// The per-sample output shape of every layer (batch dimension left out), checking each layer
    /// against its input shape and the model's tensor shapes. `tensorShape` returns a tensor's
    /// dimensions by state-dict name, or None when the model has no such tensor.
    /// Raises ExportError naming the layer that does not fit.
    let rec inferShape (tensorShape: string -> int64[] option) (input: int list) (layers: Layer list) : int list =
        let fail layer reason = raise (ExportError(sprintf "layer %s" (describe layer), reason))
        let shapeText (s: int list) = "[" + String.concat ", " (List.map string s) + "]"
        let required layer name =
            match tensorShape name with
            | Some s -> s |> Array.map int
            | None -> fail layer (sprintf "the model has no tensor '%s'" name)
        let positive layer what (a, b) =
            if a <= 0 || b <= 0 then fail layer (sprintf "%s must be positive (got %dx%d)" what a b)
        let nonNegative layer what (a, b) =
            if a < 0 || b < 0 then fail layer (sprintf "%s must not be negative (got %dx%d)" what a b)
        let image layer (shape: int list) =
            match shape with
            | [ c; h; w ] -> c, h, w
            | other -> fail layer (sprintf "needs a [channels, height, width] input, got %s (add Unflatten first)" (shapeText other))
        let step (shape: int list) (layer: Layer) =
            match layer with
            | Unflatten(c, h, w) ->
                if c <= 0 || h <= 0 || w <= 0 then fail layer "every dimension must be positive"
                match shape with
                | [ f ] when f = c * h * w -> [ c; h; w ]
                | other -> fail layer (sprintf "needs a flat input of %d features, got %s" (c * h * w) (shapeText other))
            | Gemm p ->
                let weight = required layer (p + ".weight")
                match shape, weight with
                | [ f ], [| o; i |] when i = f ->
                    match tensorShape (p + ".bias") with
                    | Some b when b <> [| int64 o |] -> fail layer (sprintf "bias has shape %A, expected [%d]" b o)
                    | _ -> [ o ]
                | [ f ], _ -> fail layer (sprintf "weight has shape %A, expected [out, %d]" weight f)
                | other, _ -> fail layer (sprintf "needs a flat input, got %s (add Flatten first)" (shapeText other))
            | Relu -> shape
            | Conv(p, s) ->
                let c, h, w = image layer shape
                positive layer "stride" s.Stride
                positive layer "dilation" s.Dilation
                nonNegative layer "padding" s.Padding
                if s.Groups <= 0 then fail layer (sprintf "groups must be positive (got %d)" s.Groups)
                let weight = required layer (p + ".weight")
                match weight with
                | [| o; cg; kh; kw |] ->
                    if c % s.Groups <> 0 || o % s.Groups <> 0 then
                        fail layer (sprintf "%d input and %d output channels are not divisible by %d groups" c o s.Groups)
                    if cg * s.Groups <> c then
                        fail layer (sprintf "weight has shape %A: %d input channels per group, but the input has %d channels in %d groups" weight cg c s.Groups)
                    match tensorShape (p + ".bias") with
                    | Some b when b <> [| int64 o |] -> fail layer (sprintf "bias has shape %A, expected [%d]" b o)
                    | _ -> ()
                    let oh = conv2dOut h kh (fst s.Stride) (fst s.Padding) (fst s.Dilation)
                    let ow = conv2dOut w kw (snd s.Stride) (snd s.Padding) (snd s.Dilation)
                    if oh <= 0 || ow <= 0 then fail layer (sprintf "a %dx%d input is too small for this kernel" h w)
                    [ o; oh; ow ]
                | _ -> fail layer (sprintf "weight has shape %A, expected [out, in / groups, kh, kw]" weight)
            | BatchNorm(p, eps) ->
                if not (eps > 0.0) then fail layer (sprintf "epsilon must be positive (got %g)" eps)
                match shape with
                | c :: _ ->
                    for suffix in [ ".weight"; ".bias"; ".running_mean"; ".running_var" ] do
                        let t = required layer (p + suffix)
                        if t <> [| c |] then fail layer (sprintf "%s%s has shape %A, expected [%d]" p suffix t c)
                    shape
                | [] -> fail layer "needs an input with a channel dimension"
            | MaxPool s
            | AveragePool(s, _) ->
                let c, h, w = image layer shape
                positive layer "kernel" s.Kernel
                positive layer "stride" s.Stride
                nonNegative layer "padding" s.Padding
                if fst s.Padding * 2 > fst s.Kernel || snd s.Padding * 2 > snd s.Kernel then
                    fail layer "padding must be at most half the kernel"
                let oh = conv2dOut h (fst s.Kernel) (fst s.Stride) (fst s.Padding) 1
                let ow = conv2dOut w (snd s.Kernel) (snd s.Stride) (snd s.Padding) 1
                if oh <= 0 || ow <= 0 then fail layer (sprintf "a %dx%d input is too small for this window" h w)
                [ c; oh; ow ]
            | GlobalAveragePool ->
                let c, _, _ = image layer shape
                [ c; 1; 1 ]
            | Flatten -> [ List.fold (*) 1 shape ]
            | Residual(body, shortcut) ->
                if body.IsEmpty then fail layer "the body has no layers"
                let b = inferShape tensorShape shape body
                let s = inferShape tensorShape shape shortcut
                if b <> s then fail layer (sprintf "the body gives %s but the shortcut gives %s" (shapeText b) (shapeText s))
                b
        List.fold step input layers

    /// The number of logits the graph produces, checking the whole graph (see inferShape).
    let outputFeatures (tensorShape: string -> int64[] option) (graph: LayerGraph) : int =
        if graph.InputFeatures <= 0 then
            raise (ExportError(sprintf "graph '%s'" graph.Name, sprintf "input features must be positive (got %d)" graph.InputFeatures))
        if graph.Layers.IsEmpty then raise (ExportError(sprintf "graph '%s'" graph.Name, "it has no layers"))
        match inferShape tensorShape [ graph.InputFeatures ] graph.Layers with
        | [ k ] -> k
        | other ->
            raise (ExportError(sprintf "graph '%s'" graph.Name,
                               sprintf "it ends with a [%s] tensor per sample; logits must be flat (end with Flatten or Gemm)"
                                   (String.concat ", " (List.map string other))))

    /// The state-dict names of every tensor the graph reads, in the order the layers use them.
    let rec tensorNames (tensorExists: string -> bool) (layers: Layer list) : string list =
        layers
        |> List.collect (fun layer ->
            match layer with
            | Gemm p
            | Conv(p, _) -> (p + ".weight") :: (if tensorExists (p + ".bias") then [ p + ".bias" ] else [])
            | BatchNorm(p, _) -> [ p + ".weight"; p + ".bias"; p + ".running_mean"; p + ".running_var" ]
            | Residual(body, shortcut) -> tensorNames tensorExists body @ tensorNames tensorExists shortcut
            | Unflatten _ | Relu | MaxPool _ | AveragePool _ | GlobalAveragePool | Flatten -> [])
        |> List.distinct

    let private pairOf (what: string) (values: int64[]) =
        match values with
        | [| a |] -> int a, int a
        | [| a; b |] -> int a, int b
        | other -> raise (ExportError(what, sprintf "expected one or two values, got %A" other))

    /// The layer graph of a TorchSharp Sequential of supported modules (Linear, ReLU, Conv2d,
    /// BatchNorm1d/2d with running statistics, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten,
    /// Unflatten, nested Sequential), read from the modules' own settings. Residual blocks are custom
    /// modules and need a hand-written description (`Residual`). Any other module, or a setting ONNX
    /// export does not cover (ceil mode, 'same' padding, reflect padding, ...), is an ExportError
    /// naming the module and its type.
    let ofSequential (name: string) (inputFeatures: int) (model: Sequential) : LayerGraph =
        let rec walk (prefix: string) (m: torch.nn.Module) : Layer list =
            m.named_children ()
            |> Seq.collect (fun struct (childName, child) ->
                let full = prefix + childName
                let what = sprintf "layer '%s' (%s)" full (child.GetType().Name)
                let unsupported reason = raise (ExportError(what, reason))
                match child with
                | :? Sequential -> walk (full + ".") child
                | :? Linear -> [ Gemm full ]
                | :? ReLU -> [ Relu ]
                | :? Conv2d as c ->
                    if c.transposed then unsupported "transposed convolutions are not exported"
                    if c.padding_mode <> PaddingModes.Zeros then unsupported (sprintf "padding mode %A is not exported (zeros only)" c.padding_mode)
                    if c.padding_type.HasValue then unsupported "padding given as 'same' or 'valid' is not exported; give it in pixels"
                    [ Conv(full, { Stride = pairOf what c.stride; Padding = pairOf what c.padding; Dilation = pairOf what c.dilation; Groups = int c.groups }) ]
                | :? BatchNorm as b ->
                    if not b.track_running_stats || not b.affine then
                        unsupported "batch normalisation without running statistics or without scale and shift is not exported"
                    [ BatchNorm(full, b.eps) ]
                | :? MaxPool2d as p ->
                    if p.ceil_mode then unsupported "ceil_mode is not exported"
                    if not (isNull p.dilation) && p.dilation |> Array.exists (fun d -> d <> 1L) then unsupported "dilated pooling is not exported"
                    let kernel = pairOf what p.kernel_size
                    let stride = if isNull p.stride then kernel else pairOf what p.stride
                    let padding = if isNull p.padding then (0, 0) else pairOf what p.padding
                    [ MaxPool { Kernel = kernel; Stride = stride; Padding = padding } ]
                | :? AvgPool2d as p ->
                    if p.ceil_mode then unsupported "ceil_mode is not exported"
                    if p.divisor_override.HasValue then unsupported "divisor_override is not exported"
                    let kernel = pairOf what p.kernel_size
                    let stride = if isNull p.stride then kernel else pairOf what p.stride
                    let padding = if isNull p.padding then (0, 0) else pairOf what p.padding
                    [ AveragePool({ Kernel = kernel; Stride = stride; Padding = padding }, p.count_include_pad) ]
                | :? AdaptiveAvgPool2d as p ->
                    if pairOf what p.output_size <> (1, 1) then unsupported "only an output size of 1 (global average pooling) is exported"
                    [ GlobalAveragePool ]
                | :? Flatten as f ->
                    if f.start_dim <> 1L || f.end_dim <> -1L then unsupported "only Flatten(1, -1) is exported"
                    [ Flatten ]
                | :? Unflatten as u ->
                    match u.dim, u.unflattened_size with
                    | 1L, [| c; h; w |] -> [ Unflatten(int c, int h, int w) ]
                    | _ -> unsupported "only Unflatten(1, [channels; height; width]) is exported"
                | _ ->
                    unsupported
                        "ONNX export has no mapping for this module type (supported: Linear, ReLU, Conv2d, BatchNorm1d/2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten, Unflatten, Sequential; describe residual blocks with LayerGraph.Residual)")
            |> List.ofSeq
        { Name = name; InputFeatures = inputFeatures; Layers = walk "" model }
