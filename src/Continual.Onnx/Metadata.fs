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

    /// The model with its task metadata, doc string and version set, and the graph hash as the last entry.
    let stamp (info: TaskModelInfo) (model: ModelProto) : ModelProto =
        let stamped = Export.withMetadata (entries info @ [ GraphHashKey, graphHash model.Graph ]) model
        stamped.ModelVersion <- int64 info.Task
        let seen = json (Array.ofList info.ClassesSeen)
        stamped.DocString <-
            $"Continual: {info.Strategy} on {info.Benchmark} ({info.Architecture}) after task {info.Task} of {info.TaskCount}; classes seen {seen}"
        stamped

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
                Ok info
            with Failure message -> Error message
