namespace Continual.Onnx

open System
open System.IO
open System.Text
open System.Text.RegularExpressions
open Continual

/// A model repository that cannot be written (a file in its place, no space, no permission).
exception RepositoryError of path: string * reason: string
    with
        override this.Message = sprintf "%s: %s" this.path this.reason

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

    /// The longest model name accepted (Triton uses it as a folder name, and the export stages the
    /// model in a folder whose name adds about 50 characters to it).
    [<Literal>]
    let MaxNameLength = 128

    /// Why a model name is not one Triton accepts, or None when it is: letters, digits, '_', '-' and
    /// '.' only (no quotes, slashes or spaces, which would break config.pbtxt or the layout), not
    /// starting with '.', at most MaxNameLength characters.
    let nameProblem (name: string) : string option =
        if String.IsNullOrEmpty name then Some "the model name is empty"
        elif name.Length > MaxNameLength then Some(sprintf "the model name has %d characters (at most %d)" name.Length MaxNameLength)
        elif name.StartsWith '.' then Some(sprintf "the model name '%s' starts with '.'" name)
        else
            match name |> Seq.tryFind (fun c -> not (Char.IsAsciiLetterOrDigit c || c = '_' || c = '-' || c = '.')) with
            | Some c -> Some(sprintf "the model name '%s' holds '%s' (use letters, digits, '_', '-' and '.')" name (if Char.IsControl c || c = ' ' then sprintf "U+%04X" (int c) else string c))
            | None -> None

    /// A model name Triton accepts: the run folder's name with anything but letters, digits, '-', '_'
    /// and '.' replaced by '_', a leading '.' replaced by '_', cut to MaxNameLength characters.
    let modelName (runFolder: string) =
        let name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath runFolder))
        let cleaned = Regex.Replace(name, @"[^A-Za-z0-9_.\-]", "_")
        let cleaned = if cleaned.StartsWith '.' then "_" + cleaned.Substring 1 else cleaned
        if String.IsNullOrEmpty cleaned then "continual" else cleaned.Substring(0, min cleaned.Length MaxNameLength)

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

    /// What a run's results.json says of the run: its configuration hash and the number of models it
    /// trained (rows of its accuracy matrix: one per task, one for JOINT).
    let private readResults (runFolder: string) : (string * int) option =
        let path = Path.Combine(runFolder, "results.json")
        if not (File.Exists path) then None
        else
            try
                use doc = Text.Json.JsonDocument.Parse(File.ReadAllBytes path)
                let root = doc.RootElement
                Some(root.GetProperty("configHash").GetString(), root.GetProperty("classIl").GetArrayLength())
            with e -> raise (InvalidModelFile(path, sprintf "unreadable (%s)" e.Message))

    let private plural (items: int list) =
        match items with
        | [ k ] -> sprintf "task %d" k
        | _ -> "tasks " + String.Join(", ", items)

    /// Checks that a run folder holds one whole, finished run: every file valid (FileCheck.readFile,
    /// which checks the task number against the file name), one configuration hash in every file and
    /// in results.json, the same input and output shapes, and exactly the task models of the run
    /// (1..task_count, or 1 for JOINT, as many as results.json's accuracy matrix has rows). A folder
    /// without results.json is an unfinished run. Raises InvalidModelFile naming the missing tasks,
    /// the files that differ, or what is wrong. Returns the files' bytes, task numbers and metadata.
    let checkRun (runFolder: string) : (int * byte[] * TaskModelInfo) list * int * int =
        // The command line marks a folder whose run has not published its results (a stopped or killed
        // run, or one that `learn` is extending).
        if RunFolder.isIncomplete runFolder then
            raise (InvalidModelFile(runFolder, "the run did not finish (it is marked incomplete: continue it with `continual resume`)"))
        let files = taskFiles runFolder
        let checkedFiles =
            files
            |> List.map (fun (k, path) ->
                let bytes, model, info = FileCheck.readFile path
                let inputs, outputs = inputOutput path model
                k, path, bytes, info, inputs, outputs)
        let results = readResults runFolder
        // The run's configuration: results.json's when present, else the one most files share.
        let runHash =
            match results with
            | Some(hash, _) -> hash
            | None -> checkedFiles |> List.countBy (fun (_, _, _, i, _, _) -> i.ConfigHash) |> List.maxBy snd |> fst
        match checkedFiles |> List.filter (fun (_, _, _, i, _, _) -> i.ConfigHash <> runHash) with
        | [] -> ()
        | odd ->
            let names = odd |> List.map (fun (_, p, _, i, _, _) -> sprintf "%s (configuration %s)" (Path.GetFileName p) i.ConfigHash)
            let whose = if results.IsSome then "results.json's" else "the other files'"
            raise (InvalidModelFile(runFolder, sprintf "mixed runs: %s %s from %s configuration %s" (String.Join(", ", names)) (if names.Length = 1 then "differs" else "differ") whose runHash))
        let _, _, _, first, inputs, outputs = checkedFiles.Head
        for (_, p, _, info, i, o) in checkedFiles do
            if info.TaskCount <> first.TaskCount || info.ClassToTask <> first.ClassToTask || info.Strategy <> first.Strategy then
                raise (InvalidModelFile(runFolder, sprintf "%s describes a different task stream or strategy than %s" (Path.GetFileName p) (Path.GetFileName(files.Head |> snd))))
            if (i, o) <> (inputs, outputs) then
                raise (InvalidModelFile(runFolder, sprintf "%s has different input or output shapes than %s" (Path.GetFileName p) (Path.GetFileName(files.Head |> snd))))
        let models = if first.Strategy = "joint" then 1 else first.TaskCount
        let present = checkedFiles |> List.map (fun (k, _, _, _, _, _) -> k)
        let missing = [ 1 .. models ] |> List.except present
        let extra = present |> List.filter (fun k -> k > models)
        if not extra.IsEmpty then
            raise (InvalidModelFile(runFolder, sprintf "%s beyond the run's %d models: the folder mixes runs" (String.Join(", ", extra |> List.map (sprintf "task-%d.onnx"))) models))
        match results with
        | None ->
            let what = if missing.IsEmpty then "" else sprintf "; %s missing (%s)" (plural missing) (String.Join(", ", missing |> List.map (sprintf "task-%d.onnx")))
            raise (InvalidModelFile(runFolder, sprintf "the run did not finish (no results.json)%s" what))
        | Some(_, rows) when rows <> models ->
            raise (InvalidModelFile(runFolder, sprintf "results.json records %d models but the task files' metadata expects %d" rows models))
        | Some _ when not missing.IsEmpty ->
            raise (InvalidModelFile(runFolder, sprintf "%s missing: %s (the run has %d)" (plural missing) (String.Join(", ", missing |> List.map (sprintf "task-%d.onnx"))) models))
        | Some _ -> ()
        checkedFiles |> List.map (fun (k, _, bytes, info, _, _) -> k, bytes, info), inputs, outputs

    /// The prefix of the folders an export stages a model in (REPO/.<name>.export-<pid>-<id>.tmp).
    let private stagingPrefix (name: string) = sprintf ".%s.export-" name

    /// Removes staging folders left by killed exports of the same model (their process is gone).
    let private removeStale (repository: string) (name: string) =
        let prefix = stagingPrefix name
        for d in Directory.EnumerateDirectories(repository, prefix + "*.tmp") do
            let rest = Path.GetFileName(d).Substring prefix.Length
            let alive =
                match Int32.TryParse(rest.Split('-').[0]) with
                | true, pid ->
                    try
                        use p = Diagnostics.Process.GetProcessById pid
                        not p.HasExited
                    with _ -> false
                | _ -> true
            if not alive then
                try Directory.Delete(d, true) with _ -> ()

    let private writeFlushed (path: string) (bytes: byte[]) =
        Directory.CreateDirectory(Path.GetDirectoryName path) |> ignore
        use stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None)
        stream.Write(bytes, 0, bytes.Length)
        stream.Flush true

    /// `writeTriton` calling `staged` after each version is staged (progress, or fault injection in tests).
    let writeTritonObserved (staged: int -> unit) (runFolder: string) (repository: string) (name: string option) : RepositoryLayout =
        let name = defaultArg name (modelName runFolder)
        match nameProblem name with
        | Some reason -> raise (RepositoryError(repository, reason))
        | None -> ()
        let files, inputs, outputs = checkRun runFolder
        let _, _, first = files.Head
        let folder = Path.Combine(repository, name)
        if Directory.Exists folder || File.Exists folder then
            raise (InvalidModelFile(folder, "already exists; remove it or choose another --name"))
        let fail (path: string) (e: exn) =
            raise (RepositoryError(path, sprintf "cannot write the model repository (%s)" e.Message))
        if File.Exists repository then
            raise (RepositoryError(repository, "is a file; the model repository must be a folder"))
        let created = not (Directory.Exists repository)
        try Directory.CreateDirectory repository |> ignore
        with :? IOException | :? UnauthorizedAccessException as e -> fail repository e
        try removeStale repository name with :? IOException | :? UnauthorizedAccessException -> ()
        let staging = Path.Combine(repository, sprintf "%s%d-%s.tmp" (stagingPrefix name) Environment.ProcessId (Guid.NewGuid().ToString "N"))
        try
            try
                for (k, bytes, _) in files do
                    writeFlushed (Path.Combine(staging, string k, "model.onnx")) bytes
                    staged k
                writeFlushed (Path.Combine(staging, "config.pbtxt")) (Encoding.UTF8.GetBytes(tritonConfig name first inputs outputs))
                // One rename publishes the whole model; it fails when the name was taken meanwhile.
                Directory.Move(staging, folder)
            with :? IOException | :? UnauthorizedAccessException as e -> fail folder e
        finally
            if Directory.Exists staging then
                try Directory.Delete(staging, true) with _ -> ()
            // A repository folder this export created and could not fill goes too.
            if created && not (Directory.Exists folder) then
                try Directory.Delete repository with _ -> ()
        { ModelFolder = folder
          Name = name
          Versions = files |> List.map (fun (k, _, _) -> k)
          ConfigPath = Path.Combine(folder, "config.pbtxt")
          InputFeatures = inputs
          OutputFeatures = outputs }

    /// Writes a run folder's task models as a Triton model repository under `repository`. The name
    /// (default: the run folder's, cleaned) must pass `nameProblem`; the run must be whole and
    /// finished (`checkRun`). Everything is checked before anything is written; the model is then
    /// built in a staging folder inside `repository` and renamed into place, so a failure at any
    /// point leaves no REPO/<name> and nothing that blocks a retry. Fails when REPO/<name> exists.
    let writeTriton (runFolder: string) (repository: string) (name: string option) : RepositoryLayout =
        writeTritonObserved ignore runFolder repository name
