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

    let private writeMetrics (w: Utf8JsonWriter) (name: string) (m: float[][]) =
        w.WriteStartObject name
        w.WriteNumber("averageAccuracy", Math.Round(Metrics.averageAccuracy m, 4))
        writeOptional w "forgetting" (Metrics.forgetting m)
        writeOptional w "backwardTransfer" (Metrics.backwardTransfer m)
        w.WriteEndObject()

    /// results.json as bytes. `extra` lets callers (ONNX verification, the CLI) add their own sections.
    let toJson (result: ExperimentResult) (extra: Utf8JsonWriter -> unit) : byte[] =
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
         writeMetrics w "classIl" o.ClassIl
         writeMetrics w "taskIl" o.TaskIl
         w.WriteEndObject()
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
    let write (folder: string) (result: ExperimentResult) (extra: Utf8JsonWriter -> unit) =
        let json = toJson result extra
        writeAtomically (Path.Combine(folder, "results.csv")) (toCsv result)
        writeAtomically (Path.Combine(folder, "results.json")) json
