namespace Continual

open System
open System.IO
open System.Text
open System.Text.Json
open Continual.Models

/// Writing result files: results.json (configuration, matrices, metrics, timings, versions) and a CSV.
[<RequireQualifiedAccess>]
module Results =

    /// Writes bytes to a path atomically (see Files.writeAtomically).
    let writeAtomically (path: string) (content: byte[]) = Files.writeAtomically path content

    /// The configuration as canonical JSON (fixed field order), the input of the configuration hash.
    let configJson (config: Config) : string = Config.toJson config

    /// A short SHA-256 hash of the configuration, stable across runs and machines.
    let configHash (config: Config) : string = Config.hash config

    let private writeMatrix (w: Utf8JsonWriter) (name: string) (m: float[][]) =
        w.WriteStartArray name
        for row in m do
            w.WriteStartArray()
            for v in row do w.WriteNumberValue(Math.Round(v, 4))
            w.WriteEndArray()
        w.WriteEndArray()

    let private writeOptional (w: Utf8JsonWriter) (name: string) (v: float option) =
        match v with
        | Some x -> w.WriteNumber(name, Math.Round(x, 4))
        | None -> w.WriteNull name

    let private writeMetrics (w: Utf8JsonWriter) (name: string) (m: float[][]) (initial: float[]) (reference: float[] option) =
        w.WriteStartObject name
        w.WriteNumber("averageAccuracy", Math.Round(Metrics.averageAccuracy m, 4))
        writeOptional w "forgetting" (Metrics.forgetting m)
        writeOptional w "backwardTransfer" (Metrics.backwardTransfer m)
        // The baseline is the model as initialised; runs without it (older checkpoints) write null.
        writeOptional w "forwardTransfer" (if initial.Length = m.Length then Metrics.forwardTransfer m initial else None)
        writeOptional w "intransigence" (reference |> Option.bind (fun a -> if a.Length = m.Length then Metrics.intransigence m a else None))
        match Metrics.forgettingPerTask m with
        | Some values ->
            w.WriteStartArray "forgettingPerTask"
            for v in values do w.WriteNumberValue(Math.Round(v, 4))
            w.WriteEndArray()
        | None -> w.WriteNull "forgettingPerTask"
        writeOptional w "oldTaskAccuracy" (Metrics.oldTaskAccuracy m)
        w.WriteNumber("newTaskAccuracy", Math.Round(Metrics.newTaskAccuracy m, 4))
        w.WriteEndObject()

    /// Writes the footprint section: one entry per task with its bytes by kind and their total.
    let writeFootprint (w: Utf8JsonWriter) (footprint: Methods.Footprint[]) =
        w.WriteStartArray "footprint"
        footprint
        |> Array.iteri (fun i f ->
            w.WriteStartObject()
            w.WriteNumber("task", i + 1)
            w.WriteStartObject "bytes"
            for (k, v) in Methods.Footprint.kinds f do w.WriteNumber(k, v)
            w.WriteEndObject()
            w.WriteNumber("totalBytes", Methods.Footprint.total f)
            w.WriteEndObject())
        w.WriteEndArray()

    /// results.json as bytes, with intransigence measured against a reference (a JOINT run's final
    /// accuracies) when one is given. `extra` lets callers (ONNX verification, the CLI) add their own sections.
    let toJsonWith (reference: TaskAccuracies option) (result: ExperimentResult) (extra: Utf8JsonWriter -> unit) : byte[] =
        use stream = new MemoryStream()
        (use w = new Utf8JsonWriter(stream, JsonWriterOptions(Indented = true))
         let o = result.Outcome
         w.WriteStartObject()
         w.WriteString("tool", "continual")
         w.WriteString("started", result.StartedUtc.ToString("o"))
         w.WriteString("configHash", configHash result.Config)
         w.WritePropertyName "config"
         Config.write w result.Config
         w.WriteString("architecture", Backbones.describe result.Architecture)
         w.WriteStartObject "benchmark"
         w.WriteString("name", result.Benchmark.Name)
         w.WriteNumber("trainExamples", result.Benchmark.Train.Count)
         w.WriteNumber("testExamples", result.Benchmark.Test.Count)
         w.WriteStartArray "tasks"
         for t in result.Benchmark.Tasks do
             w.WriteStartArray()
             for c in t.Classes do w.WriteNumberValue c
             w.WriteEndArray()
         w.WriteEndArray()
         // Names by class index, and the task (0-based) that brought each class.
         w.WriteStartArray "classNames"
         for n in result.Benchmark.ClassNames do w.WriteStringValue n
         w.WriteEndArray()
         w.WriteStartArray "classToTask"
         for t in result.Benchmark.TaskOfClass do w.WriteNumberValue t
         w.WriteEndArray()
         w.WriteNumber("headClasses", Backbones.classes result.Architecture)
         w.WriteEndObject()
         writeMatrix w "classIl" o.ClassIl
         writeMatrix w "taskIl" o.TaskIl
         w.WriteStartObject "metrics"
         writeMetrics w "classIl" o.ClassIl o.InitialClassIl (reference |> Option.map (fun r -> r.ClassIl))
         writeMetrics w "taskIl" o.TaskIl o.InitialTaskIl (reference |> Option.map (fun r -> r.TaskIl))
         w.WriteEndObject()
         w.WriteStartObject "initialAccuracy"
         w.WriteStartArray "classIl"
         for v in o.InitialClassIl do w.WriteNumberValue(Math.Round(v, 4))
         w.WriteEndArray()
         w.WriteStartArray "taskIl"
         for v in o.InitialTaskIl do w.WriteNumberValue(Math.Round(v, 4))
         w.WriteEndArray()
         w.WriteEndObject()
         writeFootprint w o.Footprint
         w.WriteStartObject "timings"
         w.WriteNumber("wallSeconds", Math.Round(result.WallSeconds, 3))
         w.WriteNumber("trainSeconds", Math.Round(o.TrainSeconds, 3))
         w.WriteNumber("evalSeconds", Math.Round(o.EvalSeconds, 3))
         w.WriteNumber("steps", o.Steps)
         w.WriteNumber("stepsPerSecond", Math.Round(float o.Steps / max 1e-9 o.TrainSeconds, 1))
         w.WriteStartArray "taskSeconds"
         for s in o.TaskSeconds do w.WriteNumberValue(Math.Round(s, 3))
         w.WriteEndArray()
         w.WriteEndObject()
         w.WriteStartObject "versions"
         w.WriteString("continual", typeof<Config>.Assembly.GetName().Version.ToString())
         for (k, v) in Engine.versions () do w.WriteString(k, v)
         w.WriteEndObject()
         extra w
         w.WriteEndObject())
        stream.ToArray()

    /// results.json as bytes (no intransigence reference).
    let toJson (result: ExperimentResult) (extra: Utf8JsonWriter -> unit) : byte[] = toJsonWith None result extra

    /// The accuracy matrices as CSV, one line per (scenario, row, task).
    let toCsv (result: ExperimentResult) : byte[] =
        let sb = StringBuilder()
        sb.AppendLine "scenario,after_task,task,accuracy" |> ignore
        let add scenario (m: float[][]) =
            m |> Array.iteri (fun i row ->
                row |> Array.iteri (fun j v ->
                    sb.AppendLine(String.Join(",", scenario, string i, string j, v.ToString("0.####", Globalization.CultureInfo.InvariantCulture))) |> ignore))
        add "class-il" result.Outcome.ClassIl
        add "task-il" result.Outcome.TaskIl
        Encoding.UTF8.GetBytes(sb.ToString())

    /// Writes results.csv and then results.json into a folder, each atomically: results.json, the file
    /// that says a run is finished, comes last, so a failure leaves no results.json without its CSV.
    let writeWith (reference: TaskAccuracies option) (folder: string) (result: ExperimentResult) (extra: Utf8JsonWriter -> unit) =
        let json = toJsonWith reference result extra
        writeAtomically (Path.Combine(folder, "results.csv")) (toCsv result)
        writeAtomically (Path.Combine(folder, "results.json")) json

    /// Writes results.csv and then results.json (no intransigence reference), as `writeWith`.
    let write (folder: string) (result: ExperimentResult) (extra: Utf8JsonWriter -> unit) =
        let json = toJson result extra
        writeAtomically (Path.Combine(folder, "results.csv")) (toCsv result)
        writeAtomically (Path.Combine(folder, "results.json")) json
