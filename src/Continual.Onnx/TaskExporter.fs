namespace Continual.Onnx

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open Continual
open Continual.Models
open TorchSharp

/// A model whose ONNX export does not reproduce it; the message says which check failed and by how much.
exception VerificationFailed of reason: string
    with
        override this.Message = this.reason

/// What a run's model files record about the run (their metadata): all the exporter needs of it,
/// whatever the run's configuration looks like.
type RunIdentity =
    { Strategy: string
      /// The benchmark's name (split-fmnist, split-mnist, split-cifar10): `verify` reads the run's test
      /// data with that benchmark's reader.
      Benchmark: string
      /// The hash of the run's configuration (as in results.json): the files of one run share it.
      ConfigHash: string
      /// The run's --test-per-class (None: the whole test set), so that `verify` can rebuild its test sets.
      TestPerClass: int option
      /// True when the strategy trains one model on every class at once (JOINT): that model has seen every class.
      Joint: bool }

/// How a run's models are exported and verified.
type ExportSettings =
    { /// The run's output folder: task-<k>.onnx files go here.
      Folder: string
      Run: RunIdentity
      Provider: ProviderPreference
      /// The largest absolute difference allowed between ONNX Runtime's and TorchSharp's logits.
      Tolerance: float
      /// Test images (spread evenly over the tasks) whose logits are compared one by one.
      CompareImages: int }

/// Building export settings.
[<RequireQualifiedAccess>]
module ExportSettings =

    /// The settings of a run: its identity, output folder, provider Auto, tolerance 1e-4 and 1000
    /// compared images.
    let forRun (run: RunIdentity) (folder: string) : ExportSettings =
        { Folder = folder
          Run = run
          Provider = Auto
          Tolerance = 1e-4
          CompareImages = 1000 }

/// What exporting and verifying one task's model measured.
type TaskVerification =
    { /// 1-based task number (the k of task-k.onnx).
      Task: int
      File: string
      Bytes: int64
      Sha256: string
      /// The execution provider ONNX Runtime ran on.
      Provider: string
      ParameterCount: int64
      /// Logits compared one by one (images x classes).
      ComparedImages: int
      MaxAbsDifference: float
      TestExamples: int[]
      TorchClassIlCorrect: int[]
      TorchTaskIlCorrect: int[]
      OnnxClassIlCorrect: int[]
      OnnxTaskIlCorrect: int[]
      ExportSeconds: float
      VerifySeconds: float
      WriteSeconds: float }

/// Exporting a task's model and verifying it under ONNX Runtime against TorchSharp before it is written.
[<RequireQualifiedAccess>]
module TaskExporter =

    let private sha256 (bytes: byte[]) =
        Convert.ToHexString(Security.Cryptography.SHA256.HashData bytes).ToLowerInvariant()

    /// The file name of task k's model.
    let fileName (task: int) = $"task-{task}.onnx"

    /// The metadata of the model after a task (1-based `task`).
    let taskInfo (settings: ExportSettings) (after: AfterTask) (testExamples: int[]) : TaskModelInfo =
        let b = after.Benchmark
        let count (acc: float) (n: int) = int (Math.Round(acc * float n / 100.0))
        { Task = after.Task + 1
          TaskCount = b.Tasks.Length
          ClassesSeen =
            if settings.Run.Joint then b.Tasks |> List.collect (fun t -> t.Classes) |> List.sort
            else b.Tasks |> List.filter (fun t -> t.Index <= after.Task) |> List.collect (fun t -> t.Classes) |> List.sort
          ClassToTask = b.TaskOfClass |> Array.map (fun t -> t + 1)
          ClassNames = b.ClassNames |> List.truncate (Backbones.classes after.Architecture)
          Strategy = settings.Run.Strategy
          ConfigHash = settings.Run.ConfigHash
          Benchmark = settings.Run.Benchmark
          Architecture = Backbones.describe after.Architecture
          TestPerClass = settings.Run.TestPerClass
          TestExamples = testExamples
          ClassIlCorrect = Array.map2 count after.Accuracies.ClassIl testExamples
          TaskIlCorrect = Array.map2 count after.Accuracies.TaskIl testExamples }

    /// Exports the model after a task, verifies it under ONNX Runtime and, only when every check
    /// passes, writes it atomically to `path` (the settings' folder is not used). The checks: structural
    /// validity, strict loading, the exported parameter count equal to the model's, logits on the
    /// compared images within the tolerance of TorchSharp's eval-mode forward pass, and Class-IL and
    /// Task-IL accuracy on every task's whole test set equal to TorchSharp's. `testArrays` gives each
    /// task's test inputs as a row-major array, used before the next is asked for (callers may reuse
    /// one array: InputBuffer).
    /// Raises VerificationFailed naming the failed check.
    let exportTaskTo (settings: ExportSettings) (path: string) (testArrays: int -> float32[]) (after: AfterTask) : TaskVerification =
        let k = after.Task + 1
        let file = Path.GetFileName path
        let fail reason = raise (VerificationFailed(sprintf "ONNX verification failed after task %d: %s; %s was not written" k reason file))
        let clock = Stopwatch.StartNew()
        let testExamples = after.TestSets |> List.map (fun (_, s) -> s.Count) |> Array.ofList
        let info = taskInfo settings after testExamples
        let exported = Export.ofBackbone after.Model
        let model = Metadata.stamp info exported.Model
        let bytes = Export.toBytes model
        let exportSeconds = clock.Elapsed.TotalSeconds
        clock.Restart()
        match Checks.structural model with
        | [] -> ()
        | problems -> fail ("the exported graph is not valid ONNX: " + String.concat "; " problems)
        let expectedParameters = Backbones.parameterCount after.Model
        if exported.ParameterCount <> expectedParameters then
            fail (sprintf "the graph holds %d parameters but the model has %d" exported.ParameterCount expectedParameters)
        use loaded =
            try Runtime.load settings.Provider bytes
            with ModelLoadError reason -> fail reason
        let classes = loaded.OutputFeatures
        let perTask = max 1 ((settings.CompareImages + after.TestSets.Length - 1) / max 1 after.TestSets.Length)
        let onnxCounts = ResizeArray()
        let comparedOnnx = ResizeArray<float32>()
        let comparedRows = ResizeArray<Tensor>()
        try
            for (i, (task, set)) in List.indexed after.TestSets do
                let inputs = testArrays i
                let logits = loaded.Logits(inputs, set.Count)
                onnxCounts.Add(Comparison.correctCounts logits classes set.LabelArray task.Classes)
                let m = min perTask set.Count
                comparedOnnx.AddRange(ArraySegment(logits, 0, m * classes))
                comparedRows.Add(set.InputRange(0L, int64 m))
            let compared =
                use all = torch.cat(comparedRows.ToArray(), 0L)
                Comparison.torchLogits after.Model after.Device all
            let difference = Comparison.maxAbsDifference compared (comparedOnnx.ToArray())
            let comparedImages = compared.Length / classes
            if not (difference <= settings.Tolerance) then
                fail (sprintf "the largest logit difference between ONNX Runtime (%s) and TorchSharp on %d test images is %.3g, above the tolerance %g"
                          loaded.Provider comparedImages difference settings.Tolerance)
            let onnxClassIl = onnxCounts |> Seq.map fst |> Array.ofSeq
            let onnxTaskIl = onnxCounts |> Seq.map snd |> Array.ofSeq
            for (scenario, torchCounts, onnx) in [ "Class-IL", info.ClassIlCorrect, onnxClassIl; "Task-IL", info.TaskIlCorrect, onnxTaskIl ] do
                if torchCounts <> onnx then
                    let j = Array.zip torchCounts onnx |> Array.findIndex (fun (a, b) -> a <> b)
                    fail (sprintf "%s accuracy on task %d's test set differs: TorchSharp %d of %d correct, ONNX Runtime (%s) %d"
                              scenario (j + 1) torchCounts.[j] testExamples.[j] loaded.Provider onnx.[j])
            let verifySeconds = clock.Elapsed.TotalSeconds
            clock.Restart()
            Files.writeAtomically path bytes
            { Task = k
              File = file
              Bytes = int64 bytes.Length
              Sha256 = sha256 bytes
              Provider = loaded.Provider
              ParameterCount = exported.ParameterCount
              ComparedImages = comparedImages
              MaxAbsDifference = difference
              TestExamples = testExamples
              TorchClassIlCorrect = info.ClassIlCorrect
              TorchTaskIlCorrect = info.TaskIlCorrect
              OnnxClassIlCorrect = onnxClassIl
              OnnxTaskIlCorrect = onnxTaskIl
              ExportSeconds = exportSeconds
              VerifySeconds = verifySeconds
              WriteSeconds = clock.Elapsed.TotalSeconds }
        finally
            for t in comparedRows do t.Dispose()

    /// Exports the model after a task, verifies it and writes task-<k>.onnx into the settings' folder
    /// (see `exportTaskTo`). Raises VerificationFailed naming the failed check.
    let exportTask (settings: ExportSettings) (testArrays: int -> float32[]) (after: AfterTask) : TaskVerification =
        exportTaskTo settings (Path.Combine(settings.Folder, fileName (after.Task + 1))) testArrays after

    /// Writes the "onnx" section of results.json: provider, format, tolerance, per-task figures and
    /// the time export and verification took, also as a share of the run's wall time.
    let writeJson (w: Utf8JsonWriter) (settings: ExportSettings) (reports: TaskVerification list) (hookSeconds: float) (wallSeconds: float) =
        let provider, note = Runtime.resolve settings.Provider
        let round (v: float) = Math.Round(v, 4)
        let ints (name: string) (values: int[]) =
            w.WriteStartArray name
            for v in values do w.WriteNumberValue v
            w.WriteEndArray()
        w.WriteStartObject "onnx"
        w.WriteString("provider", (match reports with r :: _ -> r.Provider | [] -> provider))
        match note with
        | Some n -> w.WriteString("providerNote", n)
        | None -> ()
        w.WriteNumber("irVersion", Export.IrVersion)
        w.WriteNumber("opset", Export.OpsetVersion)
        w.WriteNumber("tolerance", settings.Tolerance)
        w.WriteStartArray "tasks"
        for r in reports do
            w.WriteStartObject()
            w.WriteNumber("task", r.Task)
            w.WriteString("file", r.File)
            w.WriteNumber("bytes", r.Bytes)
            w.WriteString("sha256", r.Sha256)
            w.WriteNumber("parameters", r.ParameterCount)
            w.WriteNumber("comparedImages", r.ComparedImages)
            w.WriteNumber("maxAbsDifference", r.MaxAbsDifference)
            ints "testExamples" r.TestExamples
            ints "torchClassIlCorrect" r.TorchClassIlCorrect
            ints "onnxClassIlCorrect" r.OnnxClassIlCorrect
            ints "torchTaskIlCorrect" r.TorchTaskIlCorrect
            ints "onnxTaskIlCorrect" r.OnnxTaskIlCorrect
            w.WriteBoolean("accuracyEqual", r.TorchClassIlCorrect = r.OnnxClassIlCorrect && r.TorchTaskIlCorrect = r.OnnxTaskIlCorrect)
            w.WriteNumber("exportSeconds", round r.ExportSeconds)
            w.WriteNumber("verifySeconds", round r.VerifySeconds)
            w.WriteNumber("writeSeconds", round r.WriteSeconds)
            w.WriteEndObject()
        w.WriteEndArray()
        w.WriteNumber("exportSeconds", round (reports |> List.sumBy (fun r -> r.ExportSeconds)))
        w.WriteNumber("verifySeconds", round (reports |> List.sumBy (fun r -> r.VerifySeconds + r.WriteSeconds)))
        w.WriteNumber("hookSeconds", round hookSeconds)
        w.WriteNumber("shareOfWallTime", round (if wallSeconds > 0.0 then hookSeconds / wallSeconds else 0.0))
        w.WriteEndObject()

/// A task's verification figures as JSON and back (a learner file keeps those of the tasks exported so
/// far, so that a resumed run reports every task).
[<RequireQualifiedAccess>]
module TaskVerification =

    open System.Text.Json.Nodes

    let private ints (values: int[]) = JsonArray([| for v in values -> JsonValue.Create v :> JsonNode |])
    let private intsOf (node: JsonNode) = node.AsArray() |> Seq.map (fun v -> v.GetValue<int>()) |> Array.ofSeq

    /// The figures as a JSON object.
    let toJson (r: TaskVerification) : JsonNode =
        let o = JsonObject()
        o.["task"] <- JsonValue.Create r.Task
        o.["file"] <- JsonValue.Create r.File
        o.["bytes"] <- JsonValue.Create r.Bytes
        o.["sha256"] <- JsonValue.Create r.Sha256
        o.["provider"] <- JsonValue.Create r.Provider
        o.["parameters"] <- JsonValue.Create r.ParameterCount
        o.["comparedImages"] <- JsonValue.Create r.ComparedImages
        o.["maxAbsDifference"] <- JsonValue.Create r.MaxAbsDifference
        o.["testExamples"] <- ints r.TestExamples
        o.["torchClassIlCorrect"] <- ints r.TorchClassIlCorrect
        o.["torchTaskIlCorrect"] <- ints r.TorchTaskIlCorrect
        o.["onnxClassIlCorrect"] <- ints r.OnnxClassIlCorrect
        o.["onnxTaskIlCorrect"] <- ints r.OnnxTaskIlCorrect
        o.["exportSeconds"] <- JsonValue.Create r.ExportSeconds
        o.["verifySeconds"] <- JsonValue.Create r.VerifySeconds
        o.["writeSeconds"] <- JsonValue.Create r.WriteSeconds
        o

    /// The figures read back from `toJson`'s object.
    let ofJson (o: JsonNode) : TaskVerification =
        { Task = o.["task"].GetValue<int>()
          File = o.["file"].GetValue<string>()
          Bytes = o.["bytes"].GetValue<int64>()
          Sha256 = o.["sha256"].GetValue<string>()
          Provider = o.["provider"].GetValue<string>()
          ParameterCount = o.["parameters"].GetValue<int64>()
          ComparedImages = o.["comparedImages"].GetValue<int>()
          MaxAbsDifference = o.["maxAbsDifference"].GetValue<float>()
          TestExamples = intsOf o.["testExamples"]
          TorchClassIlCorrect = intsOf o.["torchClassIlCorrect"]
          TorchTaskIlCorrect = intsOf o.["torchTaskIlCorrect"]
          OnnxClassIlCorrect = intsOf o.["onnxClassIlCorrect"]
          OnnxTaskIlCorrect = intsOf o.["onnxTaskIlCorrect"]
          ExportSeconds = o.["exportSeconds"].GetValue<float>()
          VerifySeconds = o.["verifySeconds"].GetValue<float>()
          WriteSeconds = o.["writeSeconds"].GetValue<float>() }

/// Warming up the export and verification path.
[<RequireQualifiedAccess>]
module WarmUp =

    /// Runs the whole export and verification path once on a two-by-two model (no random numbers
    /// are drawn, so a run's streams are untouched), so that a run's first task does not pay for
    /// ONNX Runtime's start-up and for compiling this code. Safe on a background thread.
    let exportPath (preference: ProviderPreference) =
        Runtime.warmUp preference
        use scope = torch.NewDisposeScope()
        let tensors = Collections.Generic.Dictionary<string, Tensor>()
        tensors.["w.weight"] <- torch.eye(2L)
        tensors.["w.bias"] <- torch.zeros(2L)
        let exported = Export.ofGraph { Name = "warm-up"; InputFeatures = 2; Layers = [ Gemm "w"; Relu ] } tensors (fun _ -> true)
        let info =
            { Task = 1; TaskCount = 1; ClassesSeen = [ 0; 1 ]; ClassToTask = [| 1; 1 |]; ClassNames = []; Strategy = ""; ConfigHash = ""
              Benchmark = ""; Architecture = ""; TestPerClass = None; TestExamples = [| 1 |]; ClassIlCorrect = [| 1 |]; TaskIlCorrect = [| 1 |] }
        let bytes = Export.toBytes (Metadata.stamp info exported.Model)
        match Checks.parse bytes with
        | Ok model ->
            Checks.structural model |> ignore
            Metadata.read model |> ignore
        | Error _ -> ()
        use loaded = Runtime.load preference bytes
        let logits = loaded.Logits([| 1.0f; 0.0f |], 1)
        Comparison.correctCounts logits 2 [| 0 |] [ 0; 1 ] |> ignore
        Comparison.maxAbsDifference logits logits |> ignore

/// Exports and verifies a run's model after every task (the after-task hook of `continual run`),
/// keeping each task's figures for results.json.
type RunExporter(settings: ExportSettings, previous: TaskVerification list) =
    let reports = ResizeArray<TaskVerification>(previous)
    let inputs = InputBuffer()
    // ONNX Runtime's start-up (environment, CUDA probe, first session) overlaps the first task's
    // training on another thread; failures here resurface, with their message, in the real load.
    let gate = obj ()
    let mutable warmUp: Threading.Tasks.Task = null
    /// An exporter of a run from its first task.
    new(settings: ExportSettings) = RunExporter(settings, [])
    /// The settings in use.
    member _.Settings = settings
    /// The figures of every task exported so far.
    member _.Reports = List.ofSeq reports
    /// Starts ONNX Runtime's warm-up on another thread, once (the after-task hook starts it too, and
    /// waits for it).
    member _.BeginWarmUp() =
        lock gate (fun () ->
            if isNull warmUp then
                warmUp <- Threading.Tasks.Task.Run(fun () -> try WarmUp.exportPath settings.Provider with _ -> ()))

    /// A run's training events: the warm-up begins with the first progress report (100 steps into the
    /// first task), not before the first step. Started earlier it shared the cores with the data and
    /// the model's set-up, and loading ONNX Runtime holds the dynamic loader's lock, which the first
    /// call of each of libtorch's functions in the first steps waits for.
    member this.Observe(event: TrainingEvent) =
        match event with
        | StepsCompleted _ -> this.BeginWarmUp()
        | _ -> ()

    /// The after-task hook: export, verify, write task-<k>.onnx (raises VerificationFailed).
    member this.AfterTask(after: AfterTask) =
        this.BeginWarmUp()
        warmUp.Wait()
        let testArray i = inputs.Fill(snd after.TestSets.[i])
        reports.Add(TaskExporter.exportTask settings testArray after)
    /// Waits for the background warm-up to end: a process must not exit while it runs in native code.
    member _.Finish() =
        match lock gate (fun () -> warmUp) with
        | null -> ()
        | started -> try started.Wait() with _ -> ()
    /// Writes the "onnx" section of results.json (hook and wall seconds come from the run's outcome).
    member _.WriteJson(w: Text.Json.Utf8JsonWriter, hookSeconds: float, wallSeconds: float) =
        TaskExporter.writeJson w settings (List.ofSeq reports) hookSeconds wallSeconds
