namespace Continual.Onnx

open System
open System.Collections.Generic
open System.Security.Cryptography
open System.Text.Json
open Google.Protobuf
open Onnx

/// What a task's model file says about itself in its `metadata_props`. Task numbers are 1-based
/// everywhere in files (task-1.onnx is the model after the first task); classes are 0-based labels.
type TaskModelInfo =
    { /// The number of tasks trained so far (the k of task-k.onnx).
      Task: int
      /// The number of tasks in the benchmark's stream.
      TaskCount: int
      /// The classes seen by the model so far, ascending.
      ClassesSeen: int list
      /// For each class c (index), the 1-based task that brings it: Task-IL masks the logits of
      /// every class whose task differs from the requested one.
      ClassToTask: int[]
      /// The name of every class by output index (`continual.class_names`, a JSON array), so that a
      /// service can answer with names; empty in files written before names were recorded.
      ClassNames: string list
      Strategy: string
      /// `Continual.Results.configHash` of the run's configuration.
      ConfigHash: string
      Benchmark: string
      Architecture: string
      /// The run's --test-per-class (None: the whole test set), needed to rebuild its test sets.
      TestPerClass: int option
      /// Test images of each task's test set.
      TestExamples: int[]
      /// Correct Class-IL predictions on each task's test set (TorchSharp, eval mode).
      ClassIlCorrect: int[]
      /// Correct Task-IL predictions on each task's test set (TorchSharp, eval mode).
      TaskIlCorrect: int[] }
    /// Class-IL accuracy (percent) on each task's test set.
    member this.ClassIlAccuracy = Array.map2 (fun c n -> if n = 0 then 0.0 else 100.0 * float c / float n) this.ClassIlCorrect this.TestExamples
    /// Task-IL accuracy (percent) on each task's test set.
    member this.TaskIlAccuracy = Array.map2 (fun c n -> if n = 0 then 0.0 else 100.0 * float c / float n) this.TaskIlCorrect this.TestExamples

/// Reading and writing Continual's `metadata_props` (keys start with "continual."; list values are JSON).
[<RequireQualifiedAccess>]
module Metadata =

    /// The prefix of every key Continual writes.
    [<Literal>]
    let Prefix = "continual."

    /// The version of the metadata layout.
    [<Literal>]
    let FormatVersion = "1"

    /// The key of the SHA-256 of the serialised graph, written last so that a file cut anywhere lacks it.
    [<Literal>]
    let GraphHashKey = "continual.graph_sha256"

    /// The lowercase hex SHA-256 of a graph's serialised bytes.
    let graphHash (graph: GraphProto) =
        Convert.ToHexString(SHA256.HashData(graph.ToByteArray())).ToLowerInvariant()

    let private json (v: 'T) = JsonSerializer.Serialize v

    /// The metadata entries of a task model, in the order they are written (the graph hash comes
    /// separately, last, from `stamp`).
    let entries (info: TaskModelInfo) : (string * string) list =
        [ Prefix + "format", FormatVersion
          Prefix + "task", string info.Task
          Prefix + "task_count", string info.TaskCount
          Prefix + "classes_seen", json (Array.ofList info.ClassesSeen)
          Prefix + "class_to_task", json info.ClassToTask
          if not info.ClassNames.IsEmpty then Prefix + "class_names", json (Array.ofList info.ClassNames)
          Prefix + "strategy", info.Strategy
          Prefix + "config_hash", info.ConfigHash
          Prefix + "benchmark", info.Benchmark
          Prefix + "architecture", info.Architecture
          Prefix + "input", "float32 [N, features]: pixels / 255, row-major, no normalisation"
          Prefix + "test_per_class", (match info.TestPerClass with Some n -> string n | None -> "all")
          Prefix + "test_examples", json info.TestExamples
          Prefix + "class_il_correct", json info.ClassIlCorrect
          Prefix + "task_il_correct", json info.TaskIlCorrect
          Prefix + "class_il_accuracy", json info.ClassIlAccuracy
          Prefix + "task_il_accuracy", json info.TaskIlAccuracy ]

    /// The model's doc string: a one-line summary of its metadata.
    let docString (info: TaskModelInfo) =
        let seen = json (Array.ofList info.ClassesSeen)
        $"Continual: {info.Strategy} on {info.Benchmark} ({info.Architecture}) after task {info.Task} of {info.TaskCount}; classes seen {seen}"

    /// The model with its task metadata, doc string and version set, and the graph hash as the last entry.
    let stamp (info: TaskModelInfo) (model: ModelProto) : ModelProto =
        let stamped = Export.withMetadata (entries info @ [ GraphHashKey, graphHash model.Graph ]) model
        stamped.ModelVersion <- int64 info.Task
        stamped.DocString <- docString info
        stamped

    /// The most classes a task model may have (the class-to-task map's length). Far above any
    /// benchmark; it bounds the work `verify` does for a forged file.
    [<Literal>]
    let MaxClasses = 100000

    /// The longest text value (strategy, benchmark, architecture, configuration hash) accepted.
    [<Literal>]
    let MaxTextLength = 256

    /// Every problem of a task model's metadata besides its presence and syntax: bounds (task within
    /// 1..task_count, task_count within 1..classes, classes within 1..MaxClasses, class indices within
    /// the class map, counts non-negative and correct counts at most the images), cross-checks (every
    /// class's task within the stream, every task with a class, the classes seen equal to those of
    /// tasks 1..task, or every class for JOINT, one test count per task, the recorded accuracies equal
    /// to those recomputed from the counts, model_version and the doc string equal to the task), and
    /// keys this format does not define. Each message names the metadata key.
    let problems (model: ModelProto) (info: TaskModelInfo) (recorded: IReadOnlyDictionary<string, string>) : string list =
        let key name = Prefix + name
        let classes = info.ClassToTask.Length
        [ let known = HashSet<string>((entries info |> List.map fst) @ [ GraphHashKey ])
          for k in recorded.Keys do
              if k.StartsWith Prefix && not (known.Contains k) then
                  sprintf "the metadata key %s is not part of format %s" k FormatVersion
          // One name per output: a growing head's model has outputs for the classes seen so far only.
          if info.ClassNames.Length > classes then
              sprintf "%s names %d classes but %s lists %d" (key "class_names") info.ClassNames.Length (key "class_to_task") classes
          if classes < 1 || classes > MaxClasses then
              sprintf "%s lists %d classes (expected 1 to %d)" (key "class_to_task") classes MaxClasses
          elif info.TaskCount < 1 || info.TaskCount > classes then
              sprintf "%s is %d, outside 1..%d (every task brings at least one of the %d classes)" (key "task_count") info.TaskCount classes classes
          elif info.Task < 1 || info.Task > info.TaskCount then
              sprintf "%s is %d, outside 1..%d (%s)" (key "task") info.Task info.TaskCount (key "task_count")
          else
              match info.ClassToTask |> Array.tryFindIndex (fun t -> t < 1 || t > info.TaskCount) with
              | Some c ->
                  sprintf "%s gives class %d the task %d, outside 1..%d (%s)" (key "class_to_task") c info.ClassToTask.[c] info.TaskCount (key "task_count")
              | None ->
                  match [ 1 .. info.TaskCount ] |> List.tryFind (fun t -> not (Array.contains t info.ClassToTask)) with
                  | Some t -> sprintf "%s gives no class to task %d of %d" (key "class_to_task") t info.TaskCount
                  | None ->
                      match info.ClassesSeen |> List.tryFind (fun c -> c < 0 || c >= classes) with
                      | Some c -> sprintf "%s holds class %d, outside 0..%d (%s)" (key "classes_seen") c (classes - 1) (key "class_to_task")
                      | None ->
                          let joint = info.Strategy = "joint"
                          let expected =
                              [ for c in 0 .. classes - 1 do
                                    if joint || info.ClassToTask.[c] <= info.Task then c ]
                          if info.ClassesSeen <> expected then
                              sprintf "%s is %s but %s gives %s after task %d%s" (key "classes_seen") (json (Array.ofList info.ClassesSeen))
                                  (key "class_to_task") (json (Array.ofList expected)) info.Task (if joint then " (JOINT: every class)" else "")
                          if joint && info.Task <> 1 then
                              sprintf "%s is %d but a JOINT run has one model (task 1)" (key "task") info.Task
                          if info.TestExamples.Length <> info.TaskCount then
                              sprintf "%s has %d entries but %s is %d" (key "test_examples") info.TestExamples.Length (key "task_count") info.TaskCount
          match info.TestExamples |> Array.tryFind (fun n -> n < 0) with
          | Some n -> sprintf "%s holds the negative count %d" (key "test_examples") n
          | None -> ()
          for name, correct in [ "class_il_correct", info.ClassIlCorrect; "task_il_correct", info.TaskIlCorrect ] do
              if correct.Length = info.TestExamples.Length then
                  match Array.zip correct info.TestExamples |> Array.tryFindIndex (fun (c, n) -> c < 0 || c > n) with
                  | Some j -> sprintf "%s says %d correct of task %d's %d test images" (key name) correct.[j] (j + 1) info.TestExamples.[j]
                  | None -> ()
          match info.TestPerClass with
          | Some n when n < 1 -> sprintf "%s is %d (expected a positive count or \"all\")" (key "test_per_class") n
          | _ -> ()
          for name, value in [ "strategy", info.Strategy; "benchmark", info.Benchmark; "architecture", info.Architecture; "config_hash", info.ConfigHash ] do
              if value.Length > MaxTextLength || value |> Seq.exists Char.IsControl then
                  sprintf "%s is not a short one-line text" (key name)
          if info.ConfigHash |> Seq.exists (fun c -> not (Char.IsAsciiHexDigitLower c || Char.IsAsciiDigit c)) then
              sprintf "%s '%s' is not a lowercase hexadecimal hash" (key "config_hash") info.ConfigHash
          // What the file reports beside the counts is recomputed from them, never trusted.
          for name, computed in [ "class_il_accuracy", info.ClassIlAccuracy; "task_il_accuracy", info.TaskIlAccuracy ] do
              let stated =
                  match recorded.TryGetValue(key name) with
                  | true, v -> (try JsonSerializer.Deserialize<float[]> v with _ -> null)
                  | _ -> null
              if isNull stated then sprintf "the metadata key %s is missing or unreadable" (key name)
              elif stated.Length <> computed.Length || Array.exists2 (fun (a: float) b -> not (abs (a - b) <= 1e-9)) stated computed then
                  sprintf "%s says %s but the recorded counts give %s" (key name) (json stated) (json computed)
          if model.ModelVersion <> int64 info.Task then
              sprintf "the model_version %d differs from %s %d" model.ModelVersion (key "task") info.Task
          if model.DocString <> docString info then
              sprintf "the doc string '%s' does not match the metadata (%s)" model.DocString (docString info)
          match recorded.TryGetValue(key "input") with
          | true, v when v = (entries info |> List.find (fun (k, _) -> k = key "input") |> snd) -> ()
          | _ -> sprintf "the metadata key %s is not the input layout this build writes" (key "input") ]

    /// The metadata of a model as a dictionary (the last value wins for a repeated key).
    let toDictionary (model: ModelProto) : IReadOnlyDictionary<string, string> =
        let d = Dictionary<string, string>()
        for p in model.MetadataProps do d.[p.Key] <- p.Value
        d :> _

    /// Reads a task model's metadata, checking that it is complete and that the graph is the one
    /// the hash was taken of. Error says what is missing or wrong.
    let read (model: ModelProto) : Result<TaskModelInfo, string> =
        let d = toDictionary model
        if not (d.Keys |> Seq.exists (fun k -> k.StartsWith Prefix)) then
            Error "the model has no continual.* metadata: it was not exported by Continual"
        else
            try
                let get key =
                    match d.TryGetValue(Prefix + key) with
                    | true, v -> v
                    | _ -> failwithf "the metadata key %s%s is missing (a truncated file?)" Prefix key
                let parse key (f: string -> 'T) =
                    let v = get key
                    try f v with _ -> failwithf "the metadata key %s%s has the unreadable value '%s'" Prefix key v
                let ints key =
                    parse key (fun v ->
                        match JsonSerializer.Deserialize<int[]> v with
                        | null -> failwith "null"
                        | a -> a)
                let format = get "format"
                if format <> FormatVersion then failwithf "metadata format %s is not supported (this build reads %s)" format FormatVersion
                let hash = get "graph_sha256"
                let actual = graphHash model.Graph
                if hash <> actual then
                    failwithf "the graph's SHA-256 %s differs from the recorded %s: the file is damaged" actual hash
                let info =
                    { Task = parse "task" int
                      TaskCount = parse "task_count" int
                      ClassesSeen = ints "classes_seen" |> List.ofArray
                      ClassToTask = ints "class_to_task"
                      ClassNames =
                        if d.ContainsKey(Prefix + "class_names") then
                            parse "class_names" (fun v ->
                                match JsonSerializer.Deserialize<string[]> v with
                                | null -> failwith "null"
                                | a -> List.ofArray a)
                        else []
                      Strategy = get "strategy"
                      ConfigHash = get "config_hash"
                      Benchmark = get "benchmark"
                      Architecture = get "architecture"
                      TestPerClass = parse "test_per_class" (fun v -> if v = "all" then None else Some(int v))
                      TestExamples = ints "test_examples"
                      ClassIlCorrect = ints "class_il_correct"
                      TaskIlCorrect = ints "task_il_correct" }
                if info.ClassIlCorrect.Length <> info.TestExamples.Length || info.TaskIlCorrect.Length <> info.TestExamples.Length then
                    failwith "the per-task metadata lists have different lengths"
                match problems model info d with
                | [] -> Ok info
                | first :: _ -> Error first
            with Failure message -> Error message
