namespace Continual.Onnx

open System
open System.Collections.Generic
open Google.Protobuf
open Onnx

/// Structural checks of ONNX models, the subset of the official checker's rules that matters for the
/// graphs Continual writes (the official checker is a Python package and cannot run here). ONNX
/// Runtime's strict loading (Runtime.load) is the second, independent check.
[<RequireQualifiedAccess>]
module Checks =

    /// Parses the bytes of a .onnx file. A truncated or foreign file is an Error with the reason.
    let parse (bytes: byte[]) : Result<ModelProto, string> =
        if bytes.Length = 0 then Error "the file is empty"
        else
            try
                let model = ModelProto.Parser.ParseFrom bytes
                if model.Graph = null then Error "no graph in the file (a truncated file or not an ONNX model)"
                elif model.IrVersion <= 0L then Error "no IR version in the file (a truncated file or not an ONNX model)"
                else Ok model
            with :? InvalidProtocolBufferException as e ->
                Error(sprintf "not a valid ONNX protobuf (truncated or not an ONNX model): %s" e.Message)

    /// Operators Continual writes, with the numbers of inputs each accepts (opset 17).
    let knownOperators: IReadOnlyDictionary<string, int * int> =
        readOnlyDict
            [ "Gemm", (2, 3)
              "Relu", (1, 1)
              "Conv", (2, 3)
              "BatchNormalization", (5, 5)
              "MaxPool", (1, 1)
              "AveragePool", (1, 1)
              "GlobalAveragePool", (1, 1)
              "Flatten", (1, 1)
              "Add", (2, 2)
              "Reshape", (2, 2) ]

    let private elementSize (dataType: int) =
        match enum<TensorProto.Types.DataType> dataType with
        | TensorProto.Types.DataType.Float
        | TensorProto.Types.DataType.Int32 -> Some 4
        | TensorProto.Types.DataType.Int64
        | TensorProto.Types.DataType.Double -> Some 8
        | _ -> None

    let private tensorTypeErrors (where: string) (v: ValueInfoProto) =
        [ if v.Type = null || v.Type.TensorType = null then
              sprintf "%s '%s' has no tensor type" where v.Name
          else
              let t = v.Type.TensorType
              if t.ElemType = 0 then sprintf "%s '%s' has no element type" where v.Name
              if t.Shape = null then sprintf "%s '%s' has no shape" where v.Name
              else
                  for d in t.Shape.Dim do
                      if d.ValueCase = TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue && d.DimValue < 0L then
                          sprintf "%s '%s' has a negative dimension" where v.Name ]

    /// Every structural problem of a model, as readable messages (empty when none): IR version and
    /// opset import present, names present and unique, every node input defined before it is used
    /// (graph input, initializer or an earlier node's output), every graph output produced, known
    /// operators with the right number of inputs, initializer data matching its dims, no unused
    /// initializer, typed graph inputs and outputs, unique metadata keys.
    let structural (model: ModelProto) : string list =
        [ if model.IrVersion < 3L then sprintf "IR version %d is missing or too old" model.IrVersion
          let defaultOpset = model.OpsetImport |> Seq.tryFind (fun o -> o.Domain = "" || o.Domain = "ai.onnx")
          match defaultOpset with
          | None -> "no opset import for the default ONNX domain"
          | Some o when o.Version < 1L -> sprintf "opset import of the default domain has version %d" o.Version
          | Some _ -> ()
          let metadataKeys = HashSet<string>()
          for p in model.MetadataProps do
              if not (metadataKeys.Add p.Key) then sprintf "metadata key '%s' appears more than once" p.Key
          let g = model.Graph
          if g = null then "the model has no graph"
          else
              if String.IsNullOrEmpty g.Name then "the graph has no name"
              let defined = HashSet<string>()
              let initializerNames = HashSet<string>()
              for t in g.Initializer do
                  if String.IsNullOrEmpty t.Name then "an initializer has no name"
                  elif not (initializerNames.Add t.Name) then sprintf "initializer '%s' appears more than once" t.Name
                  defined.Add t.Name |> ignore
                  if t.Dims |> Seq.exists (fun d -> d < 0L) then sprintf "initializer '%s' has a negative dimension" t.Name
                  let count = t.Dims |> Seq.fold (fun acc d -> acc * d) 1L
                  match elementSize t.DataType with
                  | None -> sprintf "initializer '%s' has an element type (%d) Continual does not write" t.Name t.DataType
                  | Some size ->
                      let stored =
                          if not t.RawData.IsEmpty then
                              if int64 t.RawData.Length % int64 size <> 0L then -1L else int64 t.RawData.Length / int64 size
                          else
                              int64 (t.FloatData.Count + t.Int64Data.Count + t.Int32Data.Count + t.DoubleData.Count)
                      if stored <> count then
                          sprintf "initializer '%s' holds %d values but its dims %A need %d" t.Name stored (List.ofSeq t.Dims) count
              let inputNames = HashSet<string>()
              for i in g.Input do
                  if String.IsNullOrEmpty i.Name then "a graph input has no name"
                  elif not (inputNames.Add i.Name) then sprintf "graph input '%s' appears more than once" i.Name
                  yield! tensorTypeErrors "graph input" i
                  defined.Add i.Name |> ignore
              if g.Input.Count = 0 then "the graph has no input"
              if g.Output.Count = 0 then "the graph has no output"
              let nodeNames = HashSet<string>()
              let used = HashSet<string>()
              for n in g.Node do
                  let label = if String.IsNullOrEmpty n.Name then $"a {n.OpType} node" else $"node '{n.Name}'"
                  if String.IsNullOrEmpty n.Name then sprintf "%s has no name" label
                  elif not (nodeNames.Add n.Name) then sprintf "node name '%s' appears more than once" n.Name
                  if n.Domain <> "" && n.Domain <> "ai.onnx" then sprintf "%s uses the domain '%s', which the model does not import" label n.Domain
                  match knownOperators.TryGetValue n.OpType with
                  | true, (low, high) ->
                      if n.Input.Count < low || n.Input.Count > high then
                          sprintf "%s (%s) has %d inputs, expected %d to %d" label n.OpType n.Input.Count low high
                  | _ -> sprintf "%s uses the operator '%s', which Continual does not write" label n.OpType
                  for i in n.Input do
                      if i <> "" then
                          used.Add i |> ignore
                          if not (defined.Contains i) then
                              sprintf "%s reads '%s', which is not a graph input, an initializer or an earlier node's output" label i
                  if n.Output.Count = 0 then sprintf "%s has no output" label
                  for o in n.Output do
                      if String.IsNullOrEmpty o then sprintf "%s has an unnamed output" label
                      elif not (defined.Add o) then sprintf "%s writes '%s', which is already defined (values are assigned once)" label o
              for o in g.Output do
                  yield! tensorTypeErrors "graph output" o
                  if not (defined.Contains o.Name) then sprintf "graph output '%s' is not produced by any node" o.Name
                  used.Add o.Name |> ignore
              for t in g.Initializer do
                  if not (used.Contains t.Name) then sprintf "initializer '%s' is not used by any node" t.Name ]
