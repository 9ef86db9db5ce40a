/// The comparison table and compare.json: one row per strategy (or sweep group) with its figures over
/// seeds, shared by `continual compare` and `continual compare --from`.
module Continual.Cli.CompareTable

open System
open System.IO
open Continual
open Spectre.Console

/// One strategy's figures over the seeds of a comparison, in seed order.
type Row =
    { /// The strategy as the table names it ("derpp", "sgd+si", "derpp lr=0.03").
      Label: string
      /// The label of the row's method (and penalty) alone: the paired baseline is the "sgd" row of the same Context.
      Strategy: string
      /// What else sets the row apart (a sweep's other options), "" for a plain comparison.
      Context: string
      Buffer: int
      /// The seeds of the figures below, in order.
      Seeds: int64 list
      ClassIl: float list
      TaskIl: float list
      WallSeconds: float
      /// Each seed's results.json, in the order of Seeds (the metrics table reads them back).
      Runs: string list }

/// A run read back from its results.json (ResultFiles.readRun), None where it cannot be read.
let private readRun (file: string) : ResultFiles.RunResults option =
    try Some(ResultFiles.readRun (Path.GetDirectoryName file))
    with ResultFiles.ResultFileError _ -> None

/// The model's accuracy in a scenario before task 1 (forward transfer's baseline), where recorded.
let private initialAccuracy (classIl: bool) (run: ResultFiles.RunResults) : float[] option =
    match run.Document.["initialAccuracy"] with
    | :? Text.Json.Nodes.JsonObject as i ->
        match i.[if classIl then "classIl" else "taskIl"] with
        | :? Text.Json.Nodes.JsonArray as values -> Some [| for v in values -> v.GetValue<float>() |]
        | _ -> None
    | _ -> None

/// Bytes of state kept after the last task, where recorded.
let private footprintBytes (run: ResultFiles.RunResults) : int64 option =
    run.Footprint |> Option.bind List.tryLast |> Option.map (fun f -> f.TotalBytes)

/// The lecture's metrics of one run in one scenario, the JOINT run of its seed as intransigence's
/// reference where the comparison has one: (name, value) in the metrics table's order.
let private metricsOf (reference: ResultFiles.RunResults option) (classIl: bool) (run: ResultFiles.RunResults) =
    let pick (f: ResultFiles.RunResults) = if classIl then f.ClassIl else f.TaskIl
    let m = pick run
    let last (r: float[][]) = if r.Length = 0 then None else Some r.[r.Length - 1]
    let initial = initialAccuracy classIl run
    [ "oldTaskAccuracy", (if m.Length = 0 then None else Metrics.oldTaskAccuracy m)
      "newTaskAccuracy", (last m |> Option.filter (fun row -> row.Length > 0) |> Option.map (fun _ -> Metrics.newTaskAccuracy m))
      "forwardTransfer", initial |> Option.bind (Metrics.forwardTransfer m)
      "intransigence", reference |> Option.bind (fun j -> last (pick j)) |> Option.bind (fun a -> if m.Length = 0 then None else Metrics.intransigence m a)
      "forgetting", (if m.Length = 0 then None else Metrics.forgetting m) ]

/// The names metricsOf gives, in its order.
let private metricNames = [ "oldTaskAccuracy"; "newTaskAccuracy"; "forwardTransfer"; "intransigence"; "forgetting" ]

/// Each row's runs read back, with the JOINT run of the same context and seed for each (None where absent).
let private runsOf (rows: Row list) =
    let figures = rows |> List.map (fun r -> r, r.Runs |> List.map readRun)
    let joint (row: Row) (seed: int64) =
        figures
        |> List.tryFind (fun (r, _) -> r.Strategy = "joint" && r.Context = row.Context)
        |> Option.bind (fun (r, runs) -> List.zip r.Seeds runs |> List.tryFind (fun (s, _) -> s = seed) |> Option.bind snd)
    [ for (row, runs) in figures ->
        row, List.zip row.Seeds runs |> List.choose (fun (seed, run) -> run |> Option.map (fun f -> seed, f, joint row seed)) ]

/// The metrics of every run of every row: per scenario and metric, the values in seed order (None
/// where a metric does not apply: JOINT's own intransigence, a growing head's forward transfer).
let private metricValues (rows: Row list) =
    [ for (row, runs) in runsOf rows ->
        row,
        [ for scenario, classIl in [ "classIl", true; "taskIl", false ] ->
            scenario,
            [ for name in metricNames ->
                name, [ for (_, f, j) in runs -> metricsOf (if row.Strategy = "joint" then None else j) classIl f |> List.find (fun (n, _) -> n = name) |> snd ] ] ],
        [ for (_, f, _) in runs -> footprintBytes f ] ]

/// Prints the lecture's metrics (means over seeds): old and new task accuracy in both scenarios, Task-IL
/// forward transfer, intransigence against the JOINT run of the same seed, Class-IL forgetting, and the
/// state kept after the last task.
let printMetrics (rows: Row list) =
    let table = Table(Title = TableTitle "the lecture's metrics, means over seeds (intransigence: against JOINT of the same seed)")
    for c in [ "strategy"; "Class-IL old"; "Class-IL new"; "Task-IL old"; "Task-IL new"; "Task-IL forward transfer"; "Task-IL intransigence"; "Class-IL forgetting"; "state kept (bytes)" ] do
        table.AddColumn(c) |> ignore
    let mean (values: float option list) =
        let present = values |> List.choose id
        if present.IsEmpty || present.Length <> values.Length then "—" else sprintf "%.2f" (List.average present)
    for (row, scenarios, footprints) in metricValues rows do
        let get scenario name = scenarios |> List.find (fun (s, _) -> s = scenario) |> snd |> List.find (fun (n, _) -> n = name) |> snd
        let state =
            let present = footprints |> List.choose id
            if present.IsEmpty then "—" else sprintf "%.0f" (present |> List.averageBy float)
        table.AddRow(
            row.Label, mean (get "classIl" "oldTaskAccuracy"), mean (get "classIl" "newTaskAccuracy"),
            mean (get "taskIl" "oldTaskAccuracy"), mean (get "taskIl" "newTaskAccuracy"), mean (get "taskIl" "forwardTransfer"),
            mean (get "taskIl" "intransigence"), mean (get "classIl" "forgetting"), state) |> ignore
    AnsiConsole.Write table

/// Figures of `row` at `seeds` (which it must hold).
let private at (seeds: int64 list) (row: Row) (values: float list) =
    let bySeed = List.zip row.Seeds values |> Map.ofList
    seeds |> List.map (fun s -> bySeed.[s])

/// Each row's paired Task-IL gain over SGD (mean, standard error) on the seeds both have: the "sgd" row
/// of the same context. Pairing by seed removes the swing both share.
let gainOverSgd (rows: Row list) (row: Row) : (float * float) option =
    rows
    |> List.tryFind (fun b -> b.Strategy = "sgd" && b.Context = row.Context)
    |> Option.filter (fun b -> b.Label <> row.Label)
    |> Option.bind (fun b ->
        let shared = row.Seeds |> List.filter (fun s -> List.contains s b.Seeds)
        if shared.IsEmpty then None
        else Some(Metrics.pairedDifference (at shared row row.TaskIl) (at shared b b.TaskIl)))

/// Every seed of the rows, in first-seen order.
let seedsOf (rows: Row list) = rows |> List.collect (fun r -> r.Seeds) |> List.distinct

/// Prints the table: mean ± sample s.d., the gain over SGD, per-seed figures and wall time per run.
let print (rows: Row list) =
    let seeds = seedsOf rows
    let perSeed (values: float list) = String.Join(" / ", values |> List.map (sprintf "%.2f"))
    let table = Table(Title = TableTitle(sprintf "mean ± sample s.d. over seeds %s" (String.Join(", ", seeds))))
    for c in [ "strategy"; "buffer"; "Class-IL"; "Task-IL"; "Task-IL − SGD (± s.e.)"; "Class-IL per seed"; "Task-IL per seed"; "wall s per run" ] do
        table.AddColumn(c) |> ignore
    for row in rows do
        let (cm, cs), (tm, ts) = Metrics.meanAndSpread row.ClassIl, Metrics.meanAndSpread row.TaskIl
        table.AddRow(
            row.Label,
            string row.Buffer,
            sprintf "%.2f ± %.2f" cm cs,
            sprintf "%.2f ± %.2f" tm ts,
            (match gainOverSgd rows row with Some(g, se) -> sprintf "%+.2f ± %.2f" g se | None -> "—"),
            perSeed row.ClassIl,
            perSeed row.TaskIl,
            sprintf "%.1f" row.WallSeconds) |> ignore
    AnsiConsole.Write table

/// The comparison as JSON: per strategy, the per-seed figures, their means and spreads, and the paired
/// Task-IL gain over SGD where SGD was run. `extra` adds sections at the end (a sweep's missing points).
let json (rows: Row list) (extra: Text.Json.Utf8JsonWriter -> unit) : byte[] =
    let seeds = seedsOf rows
    let values = metricValues rows
    use stream = new MemoryStream()
    (use w = new Text.Json.Utf8JsonWriter(stream, Text.Json.JsonWriterOptions(Indented = true))
     w.WriteStartObject()
     w.WriteStartArray("seeds")
     for s in seeds do w.WriteNumberValue s
     w.WriteEndArray()
     w.WriteStartArray("strategies")
     for row in rows do
         w.WriteStartObject()
         w.WriteString("strategy", row.Label)
         w.WriteNumber("buffer", row.Buffer)
         // Written only where a row lacks some seed (a sweep with missing points).
         if row.Seeds <> seeds then
             w.WriteStartArray("seeds")
             for s in row.Seeds do w.WriteNumberValue s
             w.WriteEndArray()
         for name, values in [ "classIl", row.ClassIl; "taskIl", row.TaskIl ] do
             let mean, spread = Metrics.meanAndSpread values
             w.WriteStartObject(name)
             w.WriteStartArray("perSeed")
             for v in values do w.WriteNumberValue v
             w.WriteEndArray()
             w.WriteNumber("mean", mean)
             w.WriteNumber("spread", spread)
             w.WriteEndObject()
         match gainOverSgd rows row with
         | Some(g, se) ->
             w.WriteStartObject("taskIlOverSgd")
             w.WriteNumber("mean", g)
             w.WriteNumber("standardError", se)
             w.WriteEndObject()
         | None -> ()
         w.WriteNumber("wallSecondsPerRun", row.WallSeconds)
         // The lecture's metrics per seed (null where one does not apply) and the state kept after the last task.
         let _, scenarios, footprints = values |> List.find (fun (r, _, _) -> obj.ReferenceEquals(r, row))
         w.WriteStartObject("metrics")
         for (scenario, metrics) in scenarios do
             w.WriteStartObject(scenario: string)
             for (name, perSeed) in metrics do
                 w.WriteStartArray(name: string)
                 for v in perSeed do
                     match v with
                     | Some x -> w.WriteNumberValue(Math.Round(x, 4))
                     | None -> w.WriteNullValue()
                 w.WriteEndArray()
             w.WriteEndObject()
         w.WriteEndObject()
         w.WriteStartArray("footprintBytes")
         for f in footprints do
             match f with
             | Some b -> w.WriteNumberValue b
             | None -> w.WriteNullValue()
         w.WriteEndArray()
         w.WriteEndObject()
     w.WriteEndArray()
     extra w
     w.WriteEndObject())
    stream.ToArray()
