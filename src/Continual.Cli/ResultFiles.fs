/// Reading finished runs back for `continual plot` and `continual report`: a run folder's results.json,
/// or a comparison folder (compare.json beside one run folder per strategy and seed).
[<RequireQualifiedAccess>]
module Continual.Cli.ResultFiles

open System
open System.IO
open System.Text.Json.Nodes
open Continual

/// A folder that holds no finished run or comparison, or a results file that cannot be read: the path
/// and why (the command line prints it as one line and exits 1).
exception ResultFileError of path: string * reason: string
    with
        override this.Message = sprintf "%s: %s" this.path this.reason

/// What a run's model and memory took after one task (results.json's "footprint" array, where present):
/// bytes by part (parameters, buffer, importance, ...) and their total.
type FootprintEntry =
    { Task: int
      Bytes: (string * int64) list
      TotalBytes: int64 }

/// One finished run, as its results.json records it.
type RunResults =
    { /// The run's folder.
      Folder: string
      /// The method as `compare` names it: the strategy, "+penalty" where one was added, and each
      /// distillation term as "-kind" (e.g. "derpp+ewc", "sgd-kd").
      Label: string
      Seed: int64
      Benchmark: string
      Architecture: string
      /// R.[i].[j]: Class-IL accuracy (percent) on task j after training task i.
      ClassIl: float[][]
      TaskIl: float[][]
      /// The "metrics" section: per scenario ("classIl", "taskIl"), each figure as results.json holds it
      /// (numbers, null, or arrays such as forgettingPerTask where the run wrote them).
      Metrics: (string * (string * JsonNode) list) list
      /// Per task, where the run recorded it (None for runs written before footprints were recorded).
      Footprint: FootprintEntry list option
      /// The run's configuration section, for the report's table.
      Config: JsonObject
      /// The whole document.
      Document: JsonObject }

/// A folder to plot: one run, or a comparison of several (grouped by method in compare.json's order,
/// each group in seed order).
type ResultSet =
    { Folder: string
      IsComparison: bool
      Runs: RunResults list
      /// compare.json, for a comparison.
      Comparison: JsonObject option }

/// The methods of a result set in order, each with its runs (one per seed).
let groups (set: ResultSet) : (string * RunResults list) list =
    set.Runs |> List.groupBy (fun r -> r.Label)

let private fail path reason = raise (ResultFileError(path, reason))

let private matrix (path: string) (name: string) (doc: JsonObject) : float[][] =
    match doc.[name] with
    | :? JsonArray as rows when rows.Count > 0 ->
        [| for row in rows ->
               match row with
               | :? JsonArray as cells -> [| for c in cells -> c.GetValue<float>() |]
               | _ -> fail path (sprintf "\"%s\" is not a matrix of numbers" name) |]
    | _ -> fail path (sprintf "has no \"%s\" accuracy matrix" name)

let private footprintOf (path: string) (doc: JsonObject) : FootprintEntry list option =
    match doc.["footprint"] with
    | :? JsonArray as entries when entries.Count > 0 ->
        Some
            [ for e in entries ->
                  match e with
                  | :? JsonObject as o ->
                      let bytes =
                          match o.["bytes"] with
                          | :? JsonObject as b -> [ for KeyValue(k, v) in b -> k, v.GetValue<int64>() ]
                          | _ -> []
                      let total =
                          match o.["totalBytes"] with
                          | null -> List.sumBy snd bytes
                          | v -> v.GetValue<int64>()
                      { Task = (match o.["task"] with null -> 0 | v -> v.GetValue<int>()); Bytes = bytes; TotalBytes = total }
                  | _ -> fail path "\"footprint\" is not an array of objects" ]
    | _ -> None

/// The label `compare` gives a configuration section: method, "+penalty", "-distillation" terms.
let labelOf (config: JsonObject) : string =
    let name (node: JsonNode) =
        match node with
        | :? JsonObject as o when not (isNull o.["name"]) -> Some(o.["name"].GetValue<string>())
        | _ -> None
    let methodName = config.["method"] |> name |> Option.defaultValue "?"
    let penalty = config.["penalty"] |> name |> Option.map (fun p -> "+" + p) |> Option.defaultValue ""
    let distill =
        match config.["distillation"] with
        | :? JsonArray as terms -> [ for t in terms -> match name t with Some n -> "-" + n | None -> "" ] |> String.concat ""
        | _ -> ""
    methodName + penalty + distill

/// Reads one run's results.json (the file or its folder).
let readRun (folder: string) : RunResults =
    let path = Path.Combine(folder, "results.json")
    let doc =
        try
            match JsonNode.Parse(File.ReadAllText path) with
            | :? JsonObject as o -> o
            | _ -> fail path "is not a JSON object"
        with
        | :? Text.Json.JsonException as e -> fail path (sprintf "is not valid JSON (%s)" (e.Message.Split('.').[0]))
        | :? IOException | :? UnauthorizedAccessException as e -> fail path (sprintf "cannot be read (%s)" e.Message)
    if isNull doc.["tool"] || doc.["tool"].GetValue<string>() <> "continual" then
        fail path "is not a results file of continual (no \"tool\": \"continual\")"
    let config = match doc.["config"] with :? JsonObject as c -> c | _ -> fail path "has no \"config\" section"
    let seed =
        match config.["run"] with
        | :? JsonObject as r when not (isNull r.["seed"]) -> r.["seed"].GetValue<int64>()
        | _ -> 0L
    let text (node: JsonNode) = match node with null -> "" | n -> n.ToString()
    let metrics =
        match doc.["metrics"] with
        | :? JsonObject as m ->
            [ for KeyValue(scenario, node) in m do
                  match node with
                  | :? JsonObject as figures -> yield scenario, [ for KeyValue(k, v) in figures -> k, v ]
                  | _ -> () ]
        | _ -> []
    try
        { Folder = Path.GetFullPath folder
          Label = labelOf config
          Seed = seed
          Benchmark = (match doc.["benchmark"] with :? JsonObject as b -> text b.["name"] | _ -> "")
          Architecture = text doc.["architecture"]
          ClassIl = matrix path "classIl" doc
          TaskIl = matrix path "taskIl" doc
          Metrics = metrics
          Footprint = footprintOf path doc
          Config = config
          Document = doc }
    with
    | :? InvalidOperationException | :? FormatException as e -> fail path (sprintf "holds a value of the wrong kind (%s)" e.Message)

/// Reads a run folder or a comparison folder. Raises ResultFileError for a missing folder, a folder of
/// a run that did not finish, or one that holds neither results.json nor compare.json.
let read (folder: string) : ResultSet =
    let full = Path.GetFullPath folder
    if File.Exists full then fail full "is a file, not a run or comparison folder"
    if not (Directory.Exists full) then fail full "no such folder"
    if RunFolder.isIncomplete full then
        fail full "holds a run or comparison that did not finish (continue a run with `continual resume`)"
    let compare = Path.Combine(full, "compare.json")
    if File.Exists(Path.Combine(full, "results.json")) then
        { Folder = full; IsComparison = false; Runs = [ readRun full ]; Comparison = None }
    elif File.Exists compare then
        let summary =
            try
                match JsonNode.Parse(File.ReadAllText compare) with
                | :? JsonObject as o -> o
                | _ -> fail compare "is not a JSON object"
            with :? Text.Json.JsonException -> fail compare "is not valid JSON"
        let order =
            match summary.["strategies"] with
            | :? JsonArray as a -> [ for s in a -> match s with :? JsonObject as o when not (isNull o.["strategy"]) -> o.["strategy"].GetValue<string>() | _ -> "" ]
            | _ -> []
        let runs =
            Directory.GetDirectories full
            |> Array.filter (fun d -> File.Exists(Path.Combine(d, "results.json")) && not (RunFolder.isIncomplete d))
            |> Array.map readRun
            |> List.ofArray
            |> List.sortBy (fun r ->
                (match List.tryFindIndex ((=) r.Label) order with Some i -> i | None -> Int32.MaxValue), r.Label, r.Seed)
        if runs.IsEmpty then fail full "holds compare.json but no run folder with a results.json"
        { Folder = full; IsComparison = true; Runs = runs; Comparison = Some summary }
    else
        fail full "is not a run folder (no results.json) nor a comparison folder (no compare.json)"

/// A figure of the metrics section as a number, where it is one.
let metric (scenario: string) (name: string) (run: RunResults) : float option =
    run.Metrics
    |> List.tryFind (fun (s, _) -> s = scenario)
    |> Option.bind (fun (_, figures) -> figures |> List.tryFind (fun (k, _) -> k = name))
    |> Option.bind (fun (_, v) ->
        match v with
        | :? JsonValue as n -> (match n.TryGetValue<float>() with | true, x -> Some x | _ -> None)
        | _ -> None)

/// A figure of the metrics section as an array of numbers (e.g. forgettingPerTask), where it is one.
let metricArray (scenario: string) (name: string) (run: RunResults) : float[] option =
    run.Metrics
    |> List.tryFind (fun (s, _) -> s = scenario)
    |> Option.bind (fun (_, figures) -> figures |> List.tryFind (fun (k, _) -> k = name))
    |> Option.bind (fun (_, v) ->
        match v with
        | :? JsonArray as a ->
            let values = [| for x in a -> match x with :? JsonValue as n -> (match n.TryGetValue<float>() with | true, f -> Some f | _ -> None) | _ -> None |]
            if values |> Array.forall Option.isSome then Some(values |> Array.map Option.get) else None
        | _ -> None)
