/// `continual bench-penalties`: the time of each importance estimator on one 12,000-image task and the
/// per-step overhead of each penalty against plain SGD, measured in the same process.
module Continual.Cli.BenchPenalties

open System
open System.Diagnostics
open System.IO
open System.Threading
open Continual
open Continual.Data
open Continual.Models
open Continual.Penalties
open Continual.Methods
open Spectre.Console
open TorchSharp

/// A method that contributes its loss terms and penalties and nothing else: the cost of the penalty
/// alone, without the method's per-step bookkeeping.
let private termsOnly (m: MethodInstance) : MethodInstance = { m with Observe = None; AfterStep = None }

let private time (f: unit -> 'a) =
    let clock = Stopwatch.StartNew()
    let r = f ()
    r, clock.Elapsed.TotalSeconds

let private median (xs: float list) =
    let s = List.sort xs |> Array.ofList
    if s.Length % 2 = 1 then s.[s.Length / 2] else (s.[s.Length / 2 - 1] + s.[s.Length / 2]) / 2.0

/// Runs the benchmark with the configuration's data, device, seed and SGD settings.
let run (config: Config) (out: string option) : int =
    Engine.configureThreads config.Run.Threads
    let benchmark = Experiment.loadBenchmark config
    let settings = { Experiment.settings config with ProgressEvery = Int32.MaxValue }
    let c, h, w = benchmark.InputShape
    let architecture = Mlp(c * h * w, [ 100; 100 ], benchmark.NumClasses)
    let tasks = benchmark.Tasks |> Array.ofList
    let first = Benchmarks.selectClasses tasks.[0].Classes benchmark.Train
    let second = Benchmarks.selectClasses tasks.[1].Classes benchmark.Train
    let context (task: int) (data: LabelledSet) (state: TrainingState) =
        Training.taskContext architecture settings CancellationToken.None state task tasks.[task].Classes ([ for t in 0 .. task do yield! tasks.[t].Classes ] |> List.sort) data
    let batches (data: LabelledSet) =
        let n = data.Count / settings.BatchSize
        [| for i in 0 .. n - 1 ->
            let start = i * settings.BatchSize
            use rows = data.InputRange(int64 start, int64 settings.BatchSize)
            { Inputs = rows.``to``(settings.Device).DetachFromDisposeScope()
              Labels = data.Labels.narrow(0L, int64 start, int64 settings.BatchSize).``to``(settings.Device).DetachFromDisposeScope()
              LabelArray = Array.sub data.LabelArray start settings.BatchSize
              Task = 1 } |]
    let stepBatches = batches second
    try
        // ---- estimators on the first task's 12,000 images, after one epoch of SGD on it ----
        AnsiConsole.MarkupLine("estimators on task 1 ({0} images) after one epoch of SGD ...", first.Count)
        let sgd = Sgd.strategy ()
        let sgdState = Training.initialise architecture benchmark sgd settings
        let trained = Training.trainOn sgd settings 0 first ignore CancellationToken.None sgdState
        let model = trained.Model
        let rng = Random.create config.Run.Seed
        let scp = Scp.Settings.Default
        let dispose (ts: Tensor list) = ParameterTensors.dispose ts
        let estimators =
            [ for kind in [ Sampled; Empirical; LabelWeighted ] do
                let (f, _), s = time (fun () -> Estimate.fisher kind model first settings.Device rng)
                dispose f
                yield sprintf "Fisher, %s (closed form)" (FisherKind.name kind), s, first.Count
              let m, s = time (fun () -> Estimate.mas model first settings.Device)
              dispose m
              yield "MAS (closed form)", s, first.Count
              let (g, _), s = time (fun () -> Estimate.scp scp.Slices scp.BatchSize model first settings.Device rng)
              dispose g
              yield sprintf "SCP, %d slices, batches of %d" scp.Slices scp.BatchSize, s, first.Count ]
        // The one-sample-at-a-time reference on a subset, and the largest relative difference to the closed form.
        let subsetSize = min 1000 first.Count
        use subsetRows = first.InputRange(0L, int64 subsetSize)
        use subset = subsetRows.``to`` settings.Device
        let labels = Array.init subsetSize (fun i -> int64 first.LabelArray.[i])
        let objective = NegativeLogLikelihood(labels, false)
        let loop, loopSeconds = time (fun () -> PerSample.loopSums model subset objective Squares)
        let closed, closedSeconds = time (fun () -> PerSample.sums model subset objective Squares)
        let relative =
            List.map2 (fun (a: Tensor) (b: Tensor) ->
                use d = (a - b).abs()
                Scalars.toFloat (d.max()) / max 1e-30 (Scalars.toFloat (a.abs().max()))) loop closed
            |> List.max
        dispose loop
        dispose closed
        let estimatorTable = Table(Title = TableTitle(sprintf "importance estimation on one task (%d images)" first.Count))
        for col in [ "estimator"; "images"; "seconds" ] do estimatorTable.AddColumn(col) |> ignore
        for (name, s, n) in estimators do
            estimatorTable.AddRow(name, string n, sprintf "%.3f" s) |> ignore
        estimatorTable.AddRow(sprintf "Fisher, one backward per sample (%d images, x%d)" subsetSize (first.Count / subsetSize), string first.Count,
                              sprintf "%.3f" (loopSeconds * float first.Count / float subsetSize)) |> ignore
        AnsiConsole.Write estimatorTable
        AnsiConsole.MarkupLine(
            "closed form vs one sample at a time on {0} images: {1:0.000} s vs {2:0.000} s, largest relative difference {3:0.0e+0}",
            subsetSize, closedSeconds, loopSeconds, relative)
        Training.dispose trained

        // ---- per-step overhead, after the penalty is active (task 2), blocks interleaved ----
        let rounds, block = 15, 100
        AnsiConsole.MarkupLine("step overhead: {0} rounds of {1} steps each of SGD, the method, and its penalty term alone ...", rounds, block)
        let stepRows =
            [ for name in Experiment.importanceNames ->
                // The method's default settings and clipping, on this run's learning rate and seed.
                let defaults = Experiment.defaults name 500
                let methodConfig = { config with Method = defaults.Method; Run = { config.Run with ClipGrad = defaults.Run.ClipGrad } }
                let strategy = Experiment.strategy methodConfig
                let mutable state = Training.initialise architecture benchmark strategy settings
                // A short first task, then its end: the penalty is active from here on.
                state <- Training.beginTask ignore (context 0 first state) state
                let warm = { first with Stored = first.Stored.narrow(0L, 0L, 3000L); Labels = first.Labels.narrow(0L, 0L, 3000L); LabelArray = Array.sub first.LabelArray 0 3000 }
                state <- Training.trainOn strategy settings 0 warm ignore CancellationToken.None state
                warm.Dispose()
                let (ended, endSeconds) = time (fun () -> Training.endTask ignore (context 0 first state) state)
                state <- Training.beginTask ignore (context 1 second ended) ended
                let mutable cursor = 0
                let next () =
                    let b = stepBatches.[cursor % stepBatches.Length]
                    cursor <- cursor + 1
                    b
                // Process CPU time, not wall time: the machine may be shared, and time spent descheduled
                // is not the step's cost (libtorch runs on one intra-op thread here).
                let runBlock (s: Strategy) (methods: MethodInstance list) =
                    let mutable st = { state with Methods = methods }
                    use me = Process.GetCurrentProcess()
                    let before = me.TotalProcessorTime
                    for _ in 1 .. block do
                        let _, st' = Training.step s (next ()) st
                        st <- st'
                    me.Refresh()
                    let seconds = (me.TotalProcessorTime - before).TotalSeconds / float block
                    state <- st
                    seconds
                let methodMethods = ref state.Methods
                let plainMethods = sgd.Methods
                let plain, full, termOnly = ResizeArray(), ResizeArray(), ResizeArray()
                // One block of each untimed first (warm-up), then the timed rounds.
                for round in 0 .. rounds do
                    let p = runBlock sgd plainMethods
                    let f = runBlock strategy methodMethods.Value
                    methodMethods.Value <- state.Methods
                    let t = runBlock sgd (methodMethods.Value |> List.map termsOnly)
                    if round > 0 then
                        plain.Add p
                        full.Add f
                        termOnly.Add t
                Training.dispose { state with Methods = methodMethods.Value }
                // Ratios are taken round by round (neighbouring blocks see the same machine), then the median.
                let fullRatio = median [ for i in 0 .. plain.Count - 1 -> full.[i] / plain.[i] ]
                let termRatio = median [ for i in 0 .. plain.Count - 1 -> termOnly.[i] / plain.[i] ]
                let p, f, t = median (List.ofSeq plain), median (List.ofSeq full), median (List.ofSeq termOnly)
                name, endSeconds, p, f, t, fullRatio, termRatio ]
        let stepTable = Table(Title = TableTitle(sprintf "per-step CPU time after the first task (medians over %d interleaved rounds of %d steps; batch 10, MLP 784-100-100-10)" rounds block))
        for col in [ "method"; "task-end estimate s (12,000 images)"; "SGD step µs"; "method step µs"; "overhead"; "penalty-term step µs"; "penalty overhead" ] do
            stepTable.AddColumn(col) |> ignore
        for (name, endSeconds, p, f, t, fr, tr) in stepRows do
            stepTable.AddRow(
                name,
                sprintf "%.3f" endSeconds,
                sprintf "%.0f" (p * 1e6),
                sprintf "%.0f" (f * 1e6),
                sprintf "%+.0f%%" ((fr - 1.0) * 100.0),
                sprintf "%.0f" (t * 1e6),
                sprintf "%+.0f%%" ((tr - 1.0) * 100.0)) |> ignore
        AnsiConsole.Write stepTable
        match out with
        | Some folder ->
            // Full precision: System.Text.Json writes the shortest text that reads back as the same double.
            let json =
                Json.toBytes (fun w ->
                    w.WriteStartObject()
                    w.WriteStartArray "estimators"
                    for (name, s, n) in estimators do
                        w.WriteStartObject()
                        w.WriteString("estimator", name)
                        w.WriteNumber("images", n)
                        w.WriteNumber("seconds", s)
                        w.WriteEndObject()
                    w.WriteEndArray()
                    w.WriteStartObject "loopSeconds"
                    w.WriteNumber("images", subsetSize)
                    w.WriteNumber("closedForm", closedSeconds)
                    w.WriteNumber("oneAtATime", loopSeconds)
                    w.WriteNumber("largestRelativeDifference", relative)
                    w.WriteEndObject()
                    w.WriteStartArray "steps"
                    for (name, e, p, f, t, fr, tr) in stepRows do
                        w.WriteStartObject()
                        w.WriteString("method", name)
                        w.WriteNumber("taskEndSeconds", e)
                        w.WriteNumber("sgdStepSeconds", p)
                        w.WriteNumber("methodStepSeconds", f)
                        w.WriteNumber("penaltyTermStepSeconds", t)
                        w.WriteNumber("methodRatio", fr)
                        w.WriteNumber("penaltyTermRatio", tr)
                        w.WriteEndObject()
                    w.WriteEndArray()
                    w.WriteEndObject())
            Files.writeAtomically (Path.Combine(folder, "bench-penalties.json")) json
            AnsiConsole.MarkupLine("wrote {0}", Markup.Escape(Path.Combine(folder, "bench-penalties.json")))
        | None -> ()
        0
    finally
        for b in stepBatches do
            b.Inputs.Dispose()
            b.Labels.Dispose()
        first.Dispose()
        second.Dispose()
        benchmark.Train.Dispose()
        benchmark.Test.Dispose()
