namespace Continual.Onnx

open System
open System.IO
open System.Text
open System.Text.RegularExpressions
open Continual

/// A model repository written by `Repository.writeTriton`.
type RepositoryLayout =
    { /// REPO/<name>.
      ModelFolder: string
      Name: string
      /// One version per task: version k is the model after task k (REPO/<name>/<k>/model.onnx).
      Versions: int list
      ConfigPath: string
      InputFeatures: int
      OutputFeatures: int }

/// Laying out a run's task models as a model repository for Triton Inference Server (and KServe,
/// whose Triton runtime reads the same layout): REPO/<name>/config.pbtxt and REPO/<name>/<k>/model.onnx.
[<RequireQualifiedAccess>]
module Repository =

    /// The largest batch the configuration allows; the batch dimension of the models is dynamic.
    [<Literal>]
    let MaxBatchSize = 1024

    /// The task models of a run folder (task-<k>.onnx), by task number. Fails when there are none.
    let taskFiles (runFolder: string) : (int * string) list =
        if not (Directory.Exists runFolder) then raise (InvalidModelFile(runFolder, "run folder not found"))
        let pattern = Regex(@"^task-(\d+)\.onnx$")
        let files =
            Directory.GetFiles runFolder
            |> Array.choose (fun path ->
                let m = pattern.Match(Path.GetFileName path)
                if m.Success then Some(int m.Groups.[1].Value, path) else None)
            |> Array.sortBy fst
            |> List.ofArray
        if files.IsEmpty then
            raise (InvalidModelFile(runFolder, "no task-<k>.onnx files (was the run made with --no-onnx?)"))
        files

    /// A model name Triton accepts: the run folder's name with anything but letters, digits, '-', '_'
    /// and '.' replaced by '_'.
    let modelName (runFolder: string) =
        let name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath runFolder))
        let cleaned = Regex.Replace(name, @"[^A-Za-z0-9_.\-]", "_")
        if String.IsNullOrEmpty cleaned then "continual" else cleaned

    /// The config.pbtxt of a model: ONNX Runtime platform, float input `input` [features] and output
    /// `logits` [classes] after the batch dimension, dynamic batching, every version served.
    let tritonConfig (name: string) (info: TaskModelInfo) (inputFeatures: int) (outputFeatures: int) : string =
        let sb = StringBuilder()
        let line (s: string) = sb.Append(s).Append('\n') |> ignore
        line (sprintf "# Written by continual export: %s on %s (%s), configuration %s." info.Strategy info.Benchmark info.Architecture info.ConfigHash)
        line "# Version k is the model after task k; every version is served. Inputs are pixels / 255, row-major."
        line (sprintf "name: \"%s\"" name)
        line "platform: \"onnxruntime_onnx\""
        line (sprintf "max_batch_size: %d" MaxBatchSize)
        line "version_policy: { all: { } }"
        line "input ["
        line "  {"
        line (sprintf "    name: \"%s\"" Export.InputName)
        line "    data_type: TYPE_FP32"
        line (sprintf "    dims: [ %d ]" inputFeatures)
        line "  }"
        line "]"
        line "output ["
        line "  {"
        line (sprintf "    name: \"%s\"" Export.OutputName)
        line "    data_type: TYPE_FP32"
        line (sprintf "    dims: [ %d ]" outputFeatures)
        line "  }"
        line "]"
        line "dynamic_batching { }"
        sb.ToString()

    let private inputOutput (path: string) (model: Onnx.ModelProto) =
        let features (v: Onnx.ValueInfoProto) =
            let dims = v.Type.TensorType.Shape.Dim
            if dims.Count <> 2 || dims.[1].DimValue <= 0L then
                raise (InvalidModelFile(path, sprintf "'%s' is not a [N, features] tensor" v.Name))
            int dims.[1].DimValue
        let find (values: Google.Protobuf.Collections.RepeatedField<Onnx.ValueInfoProto>) name =
            match values |> Seq.tryFind (fun v -> v.Name = name) with
            | Some v -> features v
            | None -> raise (InvalidModelFile(path, sprintf "the model has no '%s'" name))
        find model.Graph.Input Export.InputName, find model.Graph.Output Export.OutputName

    /// Writes a run folder's task models as a Triton model repository under `repository`. Every file
    /// is checked (structure, Continual metadata, same configuration, same shapes) before anything is
    /// written; each model.onnx and config.pbtxt is written atomically. Fails when REPO/<name> exists.
    let writeTriton (runFolder: string) (repository: string) (name: string option) : RepositoryLayout =
        let files = taskFiles runFolder
        let name = defaultArg name (modelName runFolder)
        if String.IsNullOrWhiteSpace name || name.Contains '/' || name.Contains '\\' || name = "." || name = ".." then
            raise (InvalidModelFile(name, "not a usable model name"))
        let checkedFiles =
            files
            |> List.map (fun (k, path) ->
                let bytes, model, info = FileCheck.readFile path
                if info.Task <> k then
                    raise (InvalidModelFile(path, sprintf "the file name says task %d but its metadata says task %d" k info.Task))
                let inputs, outputs = inputOutput path model
                k, bytes, info, inputs, outputs)
        let _, _, first, inputs, outputs = checkedFiles.Head
        for (_, _, info, i, o) in checkedFiles do
            if info.ConfigHash <> first.ConfigHash then
                raise (InvalidModelFile(runFolder, sprintf "the files come from different runs (configurations %s and %s)" first.ConfigHash info.ConfigHash))
            if (i, o) <> (inputs, outputs) then
                raise (InvalidModelFile(runFolder, "the files have different input or output shapes"))
        let folder = Path.Combine(repository, name)
        if Directory.Exists folder || File.Exists folder then
            raise (InvalidModelFile(folder, "already exists; remove it or choose another --name"))
        for (k, bytes, _, _, _) in checkedFiles do
            Files.writeAtomically (Path.Combine(folder, string k, "model.onnx")) bytes
        let configPath = Path.Combine(folder, "config.pbtxt")
        Files.writeAtomically configPath (Encoding.UTF8.GetBytes(tritonConfig name first inputs outputs))
        { ModelFolder = folder
          Name = name
          Versions = checkedFiles |> List.map (fun (k, _, _, _, _) -> k)
          ConfigPath = configPath
          InputFeatures = inputs
          OutputFeatures = outputs }
