namespace Continual.Onnx

open System
open System.Collections.Generic
open System.Runtime.InteropServices
open Google.Protobuf
open Onnx
open Continual
open Continual.Models
open TorchSharp

/// An exported model: the ONNX ModelProto and what went into it.
type ExportedModel =
    { Model: ModelProto
      /// Scalars copied from the module's trainable parameters (equals the module's parameter count).
      ParameterCount: int64
      /// Scalars copied from buffers (BatchNorm running statistics).
      BufferCount: int64
      InputFeatures: int
      OutputFeatures: int }

/// Writing a layer graph and a TorchSharp module's tensors as an ONNX model.
///
/// The protobuf types are OnnxSharp's (NuGet OnnxSharp 0.3.2, classes generated from the official
/// onnx.proto by protoc, on Google.Protobuf 3.30): a maintained package that tracks onnx.proto, so
/// the team keeps no .proto copy and no Grpc.Tools code generation step in the build.
///
/// The file is IR version 8 with opset 17 of the default domain, the pairing of ONNX 1.12, which
/// every ONNX Runtime since 1.12 and every standard checker accepts. Input `input` is
/// float [N, features] and output `logits` float [N, classes] with a symbolic batch dimension N.
/// Initializers carry the TorchSharp state-dict names (e.g. `classifier.weight`), little-endian raw data.
[<RequireQualifiedAccess>]
module Export =

    /// The ONNX IR version written.
    [<Literal>]
    let IrVersion = 8L

    /// The opset version of the default ONNX domain written.
    [<Literal>]
    let OpsetVersion = 17L

    /// The name of the graph input: float [N, features].
    [<Literal>]
    let InputName = "input"

    /// The name of the graph output: float [N, classes].
    [<Literal>]
    let OutputName = "logits"

    /// The symbolic name of the dynamic batch dimension.
    [<Literal>]
    let BatchDimension = "N"

    /// The ONNX element type code of float32 tensors.
    let floatType = int TensorProto.Types.DataType.Float

    let private int64Type = int TensorProto.Types.DataType.Int64

    let private attrInt (name: string) (v: int64) =
        AttributeProto(Name = name, Type = AttributeProto.Types.AttributeType.Int, I = v)

    let private attrFloat (name: string) (v: float32) =
        AttributeProto(Name = name, Type = AttributeProto.Types.AttributeType.Float, F = v)

    let private attrInts (name: string) (values: int list) =
        let a = AttributeProto(Name = name, Type = AttributeProto.Types.AttributeType.Ints)
        a.Ints.AddRange(values |> List.map int64)
        a

    /// A float tensor [N, features] value description with the symbolic batch dimension.
    let batchValueInfo (name: string) (features: int) =
        let shape = TensorShapeProto()
        shape.Dim.Add(TensorShapeProto.Types.Dimension(DimParam = BatchDimension))
        shape.Dim.Add(TensorShapeProto.Types.Dimension(DimValue = int64 features))
        ValueInfoProto(Name = name, Type = TypeProto(TensorType = TypeProto.Types.Tensor(ElemType = floatType, Shape = shape)))

    /// A TensorProto holding a TorchSharp tensor's values as float32 (the tensor may live on any device).
    let floatTensor (name: string) (tensor: Tensor) : TensorProto =
        use scope = torch.NewDisposeScope()
        let cpu = tensor.detach().cpu().to_type(torch.ScalarType.Float32).contiguous()
        let storage = Span<byte>.op_Implicit cpu.bytes : ReadOnlySpan<byte>
        let proto = TensorProto(Name = name, DataType = floatType)
        proto.Dims.AddRange(cpu.shape)
        if BitConverter.IsLittleEndian then
            proto.RawData <- ByteString.CopyFrom storage
        else
            proto.FloatData.AddRange(MemoryMarshal.Cast<byte, float32>(storage).ToArray())
        proto

    /// Collects nodes and initializers while a graph is walked; every name it hands out is unique.
    type private Builder(tensors: IReadOnlyDictionary<string, Tensor>, isParameter: string -> bool) =
        let nodes = ResizeArray<NodeProto>()
        let initializers = ResizeArray<TensorProto>()
        let added = HashSet<string>()
        let mutable parameterCount = 0L
        let mutable bufferCount = 0L
        member _.Nodes = nodes
        member _.Initializers = initializers
        member _.ParameterCount = parameterCount
        member _.BufferCount = bufferCount
        member _.Has(name: string) = tensors.ContainsKey name
        /// Adds a model tensor as an initializer (once) and returns its name.
        member _.Tensor(name: string) =
            if added.Add name then
                let t = tensors.[name]
                initializers.Add(floatTensor name t)
                if isParameter name then parameterCount <- parameterCount + t.numel ()
                else bufferCount <- bufferCount + t.numel ()
            name
        /// Adds an int64 constant as an initializer and returns its name.
        member _.Constant(name: string, values: int64[]) =
            if not (added.Add name) then invalidOp (sprintf "duplicate constant %s" name)
            let proto = TensorProto(Name = name, DataType = int64Type)
            proto.Dims.Add(int64 values.Length)
            proto.Int64Data.AddRange values
            initializers.Add proto
            name
        /// Adds a node with one output named after it and returns the output's name.
        member _.Node(opType: string, name: string, inputs: string list, attributes: AttributeProto list) =
            let node = NodeProto(OpType = opType, Name = name)
            node.Input.AddRange inputs
            let output = name + "_output_0"
            node.Output.Add output
            node.Attribute.AddRange attributes
            nodes.Add node
            output

    let private pair (a, b) = [ a; b ]
    let private pads (h, w) = [ h; w; h; w ]

    let private tensorsShape (b: Builder) (name: string) : int[] =
        let t = b.Initializers |> Seq.find (fun t -> t.Name = name)
        t.Dims |> Seq.map int |> Array.ofSeq

    let rec private emit (b: Builder) (path: string) (input: string) (layers: Layer list) : string =
        layers
        |> List.indexed
        |> List.fold
            (fun value (i, layer) ->
                let here = $"{path}/{i}"
                let name (op: string) = $"{here}/{op}"
                let withBias p = if b.Has(p + ".bias") then [ b.Tensor(p + ".bias") ] else []
                match layer with
                | Unflatten(c, h, w) ->
                    let shape = b.Constant(name "shape", [| 0L; int64 c; int64 h; int64 w |])
                    b.Node("Reshape", name "Reshape", [ value; shape ], [])
                | Gemm p ->
                    b.Node("Gemm", name "Gemm", value :: b.Tensor(p + ".weight") :: withBias p, [ attrInt "transB" 1L ])
                | Relu -> b.Node("Relu", name "Relu", [ value ], [])
                | Conv(p, s) ->
                    let weight = b.Tensor(p + ".weight")
                    let shape = tensorsShape b weight
                    b.Node(
                        "Conv",
                        name "Conv",
                        value :: weight :: withBias p,
                        [ attrInts "kernel_shape" [ shape.[2]; shape.[3] ]
                          attrInts "strides" (pair s.Stride)
                          attrInts "pads" (pads s.Padding)
                          attrInts "dilations" (pair s.Dilation)
                          attrInt "group" (int64 s.Groups) ])
                | BatchNorm(p, eps) ->
                    let inputs = [ value ] @ ([ ".weight"; ".bias"; ".running_mean"; ".running_var" ] |> List.map (fun s -> b.Tensor(p + s)))
                    b.Node("BatchNormalization", name "BatchNormalization", inputs, [ attrFloat "epsilon" (float32 eps) ])
                | MaxPool s ->
                    b.Node(
                        "MaxPool",
                        name "MaxPool",
                        [ value ],
                        [ attrInts "kernel_shape" (pair s.Kernel); attrInts "strides" (pair s.Stride); attrInts "pads" (pads s.Padding) ])
                | AveragePool(s, countIncludePad) ->
                    b.Node(
                        "AveragePool",
                        name "AveragePool",
                        [ value ],
                        [ attrInts "kernel_shape" (pair s.Kernel)
                          attrInts "strides" (pair s.Stride)
                          attrInts "pads" (pads s.Padding)
                          attrInt "count_include_pad" (if countIncludePad then 1L else 0L) ])
                | GlobalAveragePool -> b.Node("GlobalAveragePool", name "GlobalAveragePool", [ value ], [])
                | Flatten -> b.Node("Flatten", name "Flatten", [ value ], [ attrInt "axis" 1L ])
                | Residual(body, shortcut) ->
                    let bodyOut = emit b (here + "/body") value body
                    let shortcutOut = if shortcut.IsEmpty then value else emit b (here + "/shortcut") value shortcut
                    b.Node("Add", name "Add", [ bodyOut; shortcutOut ], []))
            input

    /// Exports a layer graph with the tensors it names. `isParameter` tells trainable parameters from
    /// buffers (for the counts). Raises ExportError naming the layer or tensor that does not fit.
    let ofGraph (graph: LayerGraph) (tensors: IReadOnlyDictionary<string, Tensor>) (isParameter: string -> bool) : ExportedModel =
        let tensorShape name =
            match tensors.TryGetValue name with
            | true, t -> Some t.shape
            | _ -> None
        let outputs = LayerGraph.outputFeatures tensorShape graph
        let b = Builder(tensors, isParameter)
        let last = emit b "" InputName graph.Layers
        // The last node's output is the graph output.
        let producer = b.Nodes |> Seq.findBack (fun n -> n.Output.Contains last)
        producer.Output.[producer.Output.IndexOf last] <- OutputName
        let g = GraphProto(Name = graph.Name)
        g.Node.AddRange b.Nodes
        g.Initializer.AddRange b.Initializers
        g.Input.Add(batchValueInfo InputName graph.InputFeatures)
        g.Output.Add(batchValueInfo OutputName outputs)
        let model =
            ModelProto(
                IrVersion = IrVersion,
                ProducerName = "continual",
                ProducerVersion = typeof<Backbone>.Assembly.GetName().Version.ToString(),
                Graph = g)
        model.OpsetImport.Add(OperatorSetIdProto(Domain = "", Version = OpsetVersion))
        { Model = model
          ParameterCount = b.ParameterCount
          BufferCount = b.BufferCount
          InputFeatures = graph.InputFeatures
          OutputFeatures = outputs }

    /// Exports a TorchSharp module described by a layer graph, reading its state dict. Every trainable
    /// parameter of the module must be used by the graph; otherwise the graph does not describe the
    /// module and this raises ExportError listing the unused ones.
    let ofModule (graph: LayerGraph) (model: torch.nn.Module) : ExportedModel =
        let tensors = model.state_dict ()
        let parameters = model.named_parameters () |> Seq.map (fun struct (n, _) -> n) |> HashSet
        let used = LayerGraph.tensorNames tensors.ContainsKey graph.Layers |> HashSet
        let unused = parameters |> Seq.filter (used.Contains >> not) |> List.ofSeq
        if not unused.IsEmpty then
            raise (ExportError(sprintf "graph '%s'" graph.Name,
                               sprintf "the model's parameters %s are not used by it, so it does not describe this model" (String.Join(", ", unused))))
        ofGraph graph tensors parameters.Contains

    /// Exports a backbone through the layer graph of its architecture (LayerGraph.ofArchitecture).
    let ofBackbone (model: Backbone) : ExportedModel = ofModule (LayerGraph.ofArchitecture model.Architecture) model

    /// The model with `metadata_props` entries appended, in order.
    let withMetadata (entries: (string * string) list) (model: ModelProto) : ModelProto =
        let copy = model.Clone()
        for (k, v) in entries do
            copy.MetadataProps.Add(StringStringEntryProto(Key = k, Value = v))
        copy

    /// The serialised model (the bytes of a .onnx file).
    let toBytes (model: ModelProto) : byte[] = model.ToByteArray()
