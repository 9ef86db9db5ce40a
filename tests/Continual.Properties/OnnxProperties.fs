module Continual.Properties.OnnxProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Models
open Continual.Onnx
open Continual.Tests.OnnxModules
open TorchSharp

/// Fixed replay seed: CI sees the same cases every run (change the seed to explore new ones).
let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 40
        replay = Some(0x5EEDUL, 0x9E3779B97F4A7C15UL, None) }

/// A random MLP backbone: widths and a seed for its weights.
type MlpCase =
    { Seed: int
      Inputs: int
      Hidden: int list
      Classes: int }

let private mlpCases =
    gen {
        let! seed = Gen.choose (0, 1_000_000)
        let! inputs = Gen.choose (1, 24)
        let! depth = Gen.choose (0, 3)
        let! hidden = Gen.listOfLength depth (Gen.choose (1, 24))
        let! classes = Gen.choose (1, 10)
        return { Seed = seed; Inputs = inputs; Hidden = hidden; Classes = classes }
    }
    |> Arb.fromGen

/// A random CNN: input image size and the parts after its Unflatten.
type CnnCase =
    { Seed: int
      Channels: int
      Height: int
      Width: int
      Parts: Part list }

let private conv stride padding dilation groups =
    { Stride = stride; Padding = padding; Dilation = dilation; Groups = groups }

let private outSize size kernel stride padding dilation = (size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1

/// A convolution that fits a [c, h, w] input: kernel, stride, padding, dilation and groups at random.
let private convGen (c: int, h: int, w: int) =
    gen {
        let! groups = Gen.elements [ for g in 1 .. c do if c % g = 0 then g ]
        let! perGroup = Gen.choose (1, 3)
        let! kh = Gen.choose (1, min 3 h)
        let! kw = Gen.choose (1, min 3 w)
        let! sh = Gen.choose (1, 2)
        let! sw = Gen.choose (1, 2)
        let! ph = Gen.choose (0, kh / 2)
        let! pw = Gen.choose (0, kw / 2)
        let! dilation = Gen.choose (1, 2)
        let! bias = Gen.elements [ true; false ]
        let settings = conv (sh, sw) (ph, pw) (dilation, dilation) groups
        let fits = outSize h kh sh ph dilation >= 1 && outSize w kw sw pw dilation >= 1
        return
            if fits then PConv(groups * perGroup, (kh, kw), settings, bias)
            else PConv(groups * perGroup, (1, 1), conv (1, 1) (0, 0) (1, 1) groups, bias)
    }

let private poolGen (_: int, h: int, w: int) =
    gen {
        let! kh = Gen.choose (1, min 3 h)
        let! kw = Gen.choose (1, min 3 w)
        let! s = Gen.choose (1, 2)
        let! ph = Gen.choose (0, kh / 2)
        let! pw = Gen.choose (0, kw / 2)
        let settings = { Kernel = (kh, kw); Stride = (s, s); Padding = (ph, pw) }
        let! includePad = Gen.elements [ true; false ]
        return! Gen.elements [ PMaxPool settings; PAvgPool(settings, includePad) ]
    }

let private same3x3 = conv (1, 1) (1, 1) (1, 1) 1

/// Up to `n` blocks (conv [+ BatchNorm] + Relu, a pool, or a residual block) over [c, h, w].
let rec private blocksGen (n: int) (shape: int * int * int) : Gen<Part list> =
    if n = 0 then Gen.constant []
    else
        gen {
            let c, h, w = shape
            let! kind = Gen.choose (0, 3)
            let! block =
                match kind with
                | 0 ->
                    gen {
                        let! p = convGen shape
                        let! norm = Gen.elements [ true; false ]
                        return p :: (if norm then [ PBatchNorm; PRelu ] else [ PRelu ])
                    }
                | 1 -> poolGen shape |> Gen.map List.singleton
                | 2 ->
                    Gen.constant
                        [ PResidual([ PConv(c, (3, 3), same3x3, false); PBatchNorm; PRelu; PConv(c, (3, 3), same3x3, false); PBatchNorm ], [])
                          PRelu ]
                | _ ->
                    gen {
                        let! o = Gen.choose (1, 4)
                        return
                            [ PResidual(
                                  [ PConv(o, (3, 3), conv (2, 2) (1, 1) (1, 1) 1, false); PBatchNorm; PRelu; PConv(o, (3, 3), same3x3, false); PBatchNorm ],
                                  [ PConv(o, (1, 1), conv (2, 2) (0, 0) (1, 1) 1, false); PBatchNorm ])
                              PRelu ]
                    }
            let next =
                match shapeAfter [ c; h; w ] block with
                | [ c'; h'; w' ] -> c', h', w'
                | other -> failwithf "unexpected shape %A" other
            let! rest = blocksGen (n - 1) next
            return block @ rest
        }

let private cnnCases =
    gen {
        let! seed = Gen.choose (0, 1_000_000)
        let! c = Gen.choose (1, 3)
        let! h = Gen.choose (3, 9)
        let! w = Gen.choose (3, 9)
        let! depth = Gen.choose (1, 3)
        let! body = blocksGen depth (c, h, w)
        let! pooled = Gen.elements [ true; false ]
        let! classes = Gen.choose (1, 6)
        let head = (if pooled then [ PGlobalAvgPool; PFlatten ] else [ PFlatten ]) @ [ PLinear(classes, true) ]
        return { Seed = seed; Channels = c; Height = h; Width = w; Parts = PUnflatten(c, h, w) :: body @ head }
    }
    |> Arb.fromGen

/// The scalars of the initializers that carry the model's parameter names, read from the ONNX graph itself.
let private parameterScalarsInGraph (exported: ExportedModel) (model: torch.nn.Module) =
    let names = model.named_parameters () |> Seq.map (fun struct (n, _) -> n) |> Set.ofSeq
    let graphNames = exported.Model.Graph.Initializer |> Seq.map (fun t -> t.Name) |> Set.ofSeq
    let scalars =
        exported.Model.Graph.Initializer
        |> Seq.filter (fun t -> names.Contains t.Name)
        |> Seq.sumBy (fun t -> t.Dims |> Seq.fold (*) 1L)
    scalars, Set.isSubset names graphNames

let private agreeWithin (onnx: float32[]) (reference: float32[]) =
    onnx.Length = reference.Length && Comparison.maxAbsDifference onnx reference <= tolerance reference

/// A labelled set for InputBuffer: pixel bytes (with or without a per-channel normalisation) or float32 values.
type InputSetCase =
    { Seed: int
      Rows: int
      Channels: int
      Width: int
      Floats: bool
      Normalised: bool }

let private inputSetCases =
    gen {
        let! seed = Gen.choose (0, 1_000_000)
        let! rows = Gen.choose (1, 40)
        let! channels = Gen.choose (1, 3)
        let! width = Gen.choose (1, 30)
        let! floats = Gen.elements [ false; false; true ]
        let! normalised = Gen.elements [ false; true ]
        return { Seed = seed; Rows = rows; Channels = channels; Width = width; Floats = floats; Normalised = normalised }
    }
    |> Arb.fromGen

let private inputSet (case: InputSetCase) : Continual.Data.LabelledSet =
    let features = int64 (case.Channels * case.Width)
    let generator = new torch.Generator(uint64 case.Seed)
    let stored =
        if case.Floats then torch.rand([| int64 case.Rows; features |], generator = generator)
        else torch.randint(0L, 256L, [| int64 case.Rows; features |], dtype = torch.ScalarType.Byte, generator = generator)
    generator.Dispose()
    let labels = Array.init case.Rows (fun i -> i % 3)
    { Stored = stored
      Labels = torch.tensor(labels |> Array.map int64)
      LabelArray = labels
      Normalisation =
        if case.Normalised then
            Some { Mean = List.init case.Channels (fun c -> 0.1f * float32 (c + 1)); Std = List.init case.Channels (fun c -> 0.3f + 0.2f * float32 c) }
        else None }

[<Tests>]
let properties =
    testSequenced (
        testList "Onnx properties" [
            testPropertyWithConfig config "InputBuffer.Fill holds a set's materialised inputs bit for bit, one set after another in one array"
            <| Prop.forAll (Arb.zip (inputSetCases, inputSetCases)) (fun (first, second) ->
                let buffer = InputBuffer()
                let sameBits (case: InputSetCase) =
                    let set = inputSet case
                    try
                        let filled = buffer.Fill set
                        use inputs = set.AllInputs()
                        let expected = Comparison.toArray inputs
                        let got = Array.sub filled 0 expected.Length
                        Array.map System.BitConverter.SingleToInt32Bits got = Array.map System.BitConverter.SingleToInt32Bits expected
                        |> Prop.label (sprintf "%A" case)
                    finally set.Dispose()
                // The larger set first, then one that reuses the same array.
                let larger, smaller = if first.Rows * first.Channels * first.Width >= second.Rows * second.Channels * second.Width then first, second else second, first
                sameBits larger .&. sameBits smaller)


            testPropertyWithConfig config "random MLP backbones: ONNX Runtime matches TorchSharp; the graph holds exactly the model's parameters"
            <| Prop.forAll mlpCases (fun case ->
                torch.manual_seed (int64 case.Seed) |> ignore
                use model = Backbones.create (Mlp(case.Inputs, case.Hidden, case.Classes))
                (use _ = torch.no_grad ()
                 for p in model.parameters () do
                     use noise = torch.randn(p.shape).mul(Scalars.cached 0.2)
                     p.add_ noise |> ignore)
                let exported = Export.ofBackbone model
                use loaded = Runtime.load Auto (Export.toBytes exported.Model)
                let rows = 1 + case.Seed % 6
                let x, array = inputs (int64 case.Seed) rows case.Inputs
                use x = x
                let onnx = loaded.Logits(array, rows)
                let reference = Comparison.torchLogits model torch.CPU x
                let scalars, allThere = parameterScalarsInGraph exported model
                let count = Backbones.parameterCount model
                (agreeWithin onnx reference |> Prop.label "logits agree")
                .&. (scalars = count |> Prop.label (sprintf "graph parameters %d = model parameters %d" scalars count))
                .&. (allThere |> Prop.label "every named parameter is an initializer")
                .&. (exported.ParameterCount = count |> Prop.label "reported count")
                .&. (List.isEmpty (Checks.structural exported.Model) |> Prop.label "structurally valid"))

            testPropertyWithConfig config "random CNNs (Conv, BatchNorm, pools, residual Add, Flatten, Gemm): ONNX Runtime matches TorchSharp"
            <| Prop.forAll cnnCases (fun case ->
                let features = case.Channels * case.Height * case.Width
                let model, graph = build (int64 case.Seed) features case.Parts
                use _ = model
                let rows = 1 + case.Seed % 5
                let onnx, reference, exported = compare (int64 case.Seed + 1L) rows model graph
                let scalars, allThere = parameterScalarsInGraph exported model
                let count = Backbones.parameterCount model
                (agreeWithin onnx reference |> Prop.label (sprintf "logits agree (max difference %g)" (Comparison.maxAbsDifference onnx reference)))
                .&. (scalars = count |> Prop.label (sprintf "graph parameters %d = model parameters %d" scalars count))
                .&. (allThere |> Prop.label "every named parameter is an initializer")
                .&. (List.isEmpty (Checks.structural exported.Model) |> Prop.label "structurally valid")
                |> Prop.label (sprintf "%A" case.Parts))
        ])
