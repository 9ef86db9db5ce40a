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
      WallSeconds: float }

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
         w.WriteEndObject()
     w.WriteEndArray()
     extra w
     w.WriteEndObject())
    stream.ToArray()
