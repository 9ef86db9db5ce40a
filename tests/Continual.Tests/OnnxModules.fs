/// Real TorchSharp modules built from a small description, with the layer graph that describes them:
/// the exporter reads the module's state dict, ONNX Runtime runs the export, TorchSharp runs the
/// module, and the two are compared. (Shared with Continual.Properties as a linked file.)
module Continual.Tests.OnnxModules

open System
open Continual
open Continual.Onnx
open TorchSharp

/// One part of a test module; the builder picks the input sizes from the shape flowing in.
type Part =
    | PUnflatten of channels: int * height: int * width: int
    | PLinear of outputs: int * bias: bool
    | PRelu
    | PConv of outputs: int * kernel: (int * int) * settings: Conv2dSettings * bias: bool
    | PBatchNorm
    | PMaxPool of Pool2dSettings
    | PAvgPool of Pool2dSettings * countIncludePad: bool
    | PGlobalAvgPool
    | PFlatten
    | PResidual of body: Part list * shortcut: Part list

/// body(x) + shortcut(x), shortcut the identity when absent: the residual block of ResNets.
type ResidualModule(body: torch.nn.Module<Tensor, Tensor>, shortcut: torch.nn.Module<Tensor, Tensor> option) as this =
    inherit torch.nn.Module<Tensor, Tensor>("residual")
    do
        this.register_module("body", body)
        shortcut |> Option.iter (fun s -> this.register_module("shortcut", s))
    override _.forward(x: Tensor) =
        let b = body.forward x
        match shortcut with
        | Some s -> b.add (s.forward x)
        | None -> b.add x

let private pair (a: int, b: int) = Nullable<struct (int64 * int64)>(struct (int64 a, int64 b))

let private out size kernel stride padding dilation = (size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1

/// The per-sample shape after a list of parts (independent of the exporter's own shape inference).
let rec shapeAfter (shape: int list) (parts: Part list) : int list =
    parts
    |> List.fold
        (fun s part ->
            match part, s with
            | PUnflatten(c, h, w), _ -> [ c; h; w ]
            | PLinear(o, _), _ -> [ o ]
            | PRelu, s
            | PBatchNorm, s -> s
            | PConv(o, (kh, kw), c, _), [ _; h; w ] ->
                [ o; out h kh (fst c.Stride) (fst c.Padding) (fst c.Dilation); out w kw (snd c.Stride) (snd c.Padding) (snd c.Dilation) ]
            | (PMaxPool p | PAvgPool(p, _)), [ c; h; w ] ->
                [ c; out h (fst p.Kernel) (fst p.Stride) (fst p.Padding) 1; out w (snd p.Kernel) (snd p.Stride) (snd p.Padding) 1 ]
            | PGlobalAvgPool, [ c; _; _ ] -> [ c; 1; 1 ]
            | PFlatten, s -> [ List.fold (*) 1 s ]
            | PResidual(body, _), s -> shapeAfter s body
            | p, s -> failwithf "test module: %A cannot follow shape %A" p s)
        shape

let rec private sequence (prefix: string) (shape: int list) (parts: Part list) : torch.nn.Module<Tensor, Tensor> * Layer list =
    let modules = ResizeArray<string * torch.nn.Module<Tensor, Tensor>>()
    let layers = ResizeArray<Layer>()
    let mutable s = shape
    parts
    |> List.iteri (fun i part ->
        let name = string i
        let full = prefix + name
        let add (m: torch.nn.Module<Tensor, Tensor>) (layer: Layer) =
            modules.Add((name, m))
            layers.Add layer
        match part with
        | PUnflatten(c, h, w) -> add (torch.nn.Unflatten(1L, [| int64 c; int64 h; int64 w |])) (Unflatten(c, h, w))
        | PLinear(o, bias) -> add (torch.nn.Linear(int64 (List.exactlyOne s), int64 o, hasBias = bias)) (Gemm full)
        | PRelu -> add (torch.nn.ReLU()) Relu
        | PConv(o, (kh, kw), c, bias) ->
            let conv =
                torch.nn.Conv2d(
                    int64 s.Head, int64 o, struct (int64 kh, int64 kw),
                    stride = pair c.Stride,
                    padding = pair c.Padding,
                    dilation = pair c.Dilation,
                    groups = int64 c.Groups,
                    bias = bias)
            add conv (Conv(full, c))
        | PBatchNorm ->
            let bn: torch.nn.Module<Tensor, Tensor> =
                if s.Length = 3 then torch.nn.BatchNorm2d(int64 s.Head) else torch.nn.BatchNorm1d(int64 s.Head)
            add bn (BatchNorm(full, 1e-5))
        | PMaxPool p ->
            let pool =
                torch.nn.MaxPool2d(
                    struct (int64 (fst p.Kernel), int64 (snd p.Kernel)),
                    stride = pair p.Stride,
                    padding = pair p.Padding)
            add pool (MaxPool p)
        | PAvgPool(p, includePad) ->
            let pool =
                torch.nn.AvgPool2d(
                    struct (int64 (fst p.Kernel), int64 (snd p.Kernel)),
                    stride = pair p.Stride,
                    padding = pair p.Padding,
                    count_include_pad = includePad)
            add pool (AveragePool(p, includePad))
        | PGlobalAvgPool -> add (torch.nn.AdaptiveAvgPool2d(1L)) GlobalAveragePool
        | PFlatten -> add (torch.nn.Flatten()) Flatten
        | PResidual(body, shortcut) ->
            let b, bodyLayers = sequence (full + ".body.") s body
            let sc, shortcutLayers =
                if shortcut.IsEmpty then None, []
                else
                    let m, l = sequence (full + ".shortcut.") s shortcut
                    Some m, l
            add (new ResidualModule(b, sc)) (Residual(bodyLayers, shortcutLayers))
        s <- shapeAfter s [ part ])
    torch.nn.Sequential(modules.ToArray()) :> torch.nn.Module<Tensor, Tensor>, List.ofSeq layers

/// A TorchSharp module made of the parts (initialised from `seed`, BatchNorm statistics, scales and
/// shifts randomised so that inference-form normalisation is not the identity), in eval mode, with
/// the layer graph describing it. Input [N, features] flat.
let build (seed: int64) (features: int) (parts: Part list) : torch.nn.Module<Tensor, Tensor> * LayerGraph =
    torch.manual_seed seed |> ignore
    let model, layers = sequence "" [ features ] parts
    use _ = torch.no_grad ()
    let state = model.state_dict ()
    for KeyValue(name, t) in state do
        if name.EndsWith ".running_mean" then
            let p = name.Substring(0, name.Length - ".running_mean".Length)
            use mean = torch.randn(t.shape).mul(Scalars.cached 0.5)
            use var = torch.rand(t.shape).add(Scalars.cached 0.5)
            use scale = torch.rand(t.shape).add(Scalars.cached 0.5)
            use shift = torch.randn(t.shape).mul(Scalars.cached 0.2)
            t.copy_ mean |> ignore
            state.[p + ".running_var"].copy_ var |> ignore
            state.[p + ".weight"].copy_ scale |> ignore
            state.[p + ".bias"].copy_ shift |> ignore
    model.eval ()
    model, { Name = "test"; InputFeatures = features; Layers = layers }

/// Random inputs [rows, features] from a seed, as a tensor and as a row-major array.
let inputs (seed: int64) (rows: int) (features: int) : Tensor * float32[] =
    let generator = new torch.Generator(uint64 seed)
    let t = torch.randn([| int64 rows; int64 features |], generator = generator)
    t, t.data<float32>().ToArray()

/// The named tolerance for comparing ONNX Runtime's logits with TorchSharp's: 1e-4 absolute,
/// scaled by the logits' magnitude when it exceeds 1 (float32 sums of larger values round coarser).
let tolerance (reference: float32[]) =
    let scale = if reference.Length = 0 then 1.0 else reference |> Array.map (fun v -> abs (float v)) |> Array.max
    1e-4 * max 1.0 scale

/// ONNX Runtime's and TorchSharp's logits of the module on `rows` random inputs.
let compare (seed: int64) (rows: int) (model: torch.nn.Module<Tensor, Tensor>) (graph: LayerGraph) : float32[] * float32[] * ExportedModel =
    let exported = Export.ofModule graph model
    use loaded = Runtime.load Auto (Export.toBytes exported.Model)
    let x, array = inputs seed rows graph.InputFeatures
    use x = x
    let onnx = loaded.Logits(array, rows)
    let torchLogits = Comparison.torchLogits model torch.CPU x
    onnx, torchLogits, exported
