namespace Continual.Onnx

open System
open System.Collections.Concurrent
open System.Collections.Generic
open Microsoft.ML.OnnxRuntime
open Onnx

/// Which ONNX Runtime execution provider runs a model.
type ProviderPreference =
    /// The CUDA execution provider where it loads and a GPU is present, the CPU provider otherwise.
    | Auto
    /// The CPU execution provider only.
    | CpuOnly
    /// The CUDA execution provider, or an error when it cannot run here.
    | CudaOnly

/// A model that ONNX Runtime refuses or warns about, with the reason.
exception ModelLoadError of reason: string
    with
        override this.Message = this.reason

/// One message ONNX Runtime logged.
type RuntimeLogRecord =
    { Severity: OrtLoggingLevel
      Category: string
      Message: string }

/// A model loaded in an ONNX Runtime session: input `input` float [N, InputFeatures], output `logits`
/// float [N, OutputFeatures]. Dispose it to free the session.
type LoadedModel(session: InferenceSession, provider: string, inputFeatures: int, outputFeatures: int, log: RuntimeLogRecord list) =
    /// The ONNX Runtime session.
    member _.Session = session
    /// The execution provider the session runs on: "CUDAExecutionProvider" or "CPUExecutionProvider".
    member _.Provider = provider
    /// Features of one input sample.
    member _.InputFeatures = inputFeatures
    /// Logits per sample.
    member _.OutputFeatures = outputFeatures
    /// What ONNX Runtime logged at warning level or above while loading (placement notes only; graph
    /// warnings make loading fail).
    member _.LoadLog = log
    /// The `metadata_props` of the model, as ONNX Runtime reads them.
    member _.Metadata: IReadOnlyDictionary<string, string> = session.ModelMetadata.CustomMetadataMap :> _

    /// Logits of `rows` samples stored row-major in `inputs` (rows x InputFeatures), computed in
    /// batches of at most `batchSize` rows; the result is rows x OutputFeatures, row-major.
    member _.Logits(inputs: float32[], rows: int, ?batchSize: int) : float32[] =
        let batchSize = defaultArg batchSize 2048
        if rows < 0 || inputs.Length < rows * inputFeatures then
            invalidArg (nameof inputs) (sprintf "%d values cannot hold %d rows of %d features" inputs.Length rows inputFeatures)
        let output = Array.zeroCreate<float32> (rows * outputFeatures)
        use runOptions = new RunOptions()
        let mutable start = 0
        while start < rows do
            let n = min batchSize (rows - start)
            use input =
                OrtValue.CreateTensorValueFromMemory(
                    OrtMemoryInfo.DefaultInstance,
                    Memory<float32>(inputs, start * inputFeatures, n * inputFeatures),
                    [| int64 n; int64 inputFeatures |])
            use results = session.Run(runOptions, [| Export.InputName |], [| input |], [| Export.OutputName |])
            let logits = results.[0].GetTensorDataAsSpan<float32>()
            if logits.Length <> n * outputFeatures then
                failwithf "ONNX Runtime returned %d logits for %d rows of %d classes" logits.Length n outputFeatures
            logits.CopyTo(Span<float32>(output, start * outputFeatures, n * outputFeatures))
            start <- start + n
        output

    interface IDisposable with
        member _.Dispose() = session.Dispose()

/// ONNX Runtime sessions for exported models: provider choice, strict loading with captured logs.
///
/// The process's ONNX Runtime environment is created here, once, with a logging function, so that
/// what ONNX Runtime says while loading a model can be checked (and stays off stderr). Loading is
/// strict: `session.strict_shape_type_inference` is on, and any warning about the graph fails it.
[<RequireQualifiedAccess>]
module Runtime =

    /// The CPU execution provider's name.
    [<Literal>]
    let CpuProvider = "CPUExecutionProvider"

    /// The CUDA execution provider's name.
    [<Literal>]
    let CudaProvider = "CUDAExecutionProvider"

    let private records = ConcurrentDictionary<string, ConcurrentQueue<RuntimeLogRecord>>()

    // Kept in a field: ONNX Runtime calls it from native code for the life of the process.
    let private logger =
        DOrtLoggingFunction(fun _ severity category logId _ message ->
            let queue = records.GetOrAdd((if isNull logId then "" else logId), fun _ -> ConcurrentQueue())
            queue.Enqueue { Severity = severity; Category = category; Message = message })

    let private environment =
        lazy
            (if OrtEnv.IsCreated then
                 // Someone created the environment first: its logs cannot be captured.
                 false
             else
                 let mutable options =
                     EnvironmentCreationOptions(
                         logId = "continual",
                         logLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_WARNING,
                         loggingFunction = logger)
                 OrtEnv.CreateInstanceWithOptions(&options) |> ignore
                 true)

    /// Whether this process captures ONNX Runtime's log (false when the ONNX Runtime environment
    /// was created before Continual.Onnx first used it).
    let capturesLog () = environment.Force()

    let private takeLog (logId: string) : RuntimeLogRecord list =
        match records.TryRemove logId with
        | true, queue -> List.ofSeq queue
        | _ -> []

    /// Placement notes of the CUDA provider (some shape nodes stay on the CPU); they are about the
    /// execution provider, not the graph.
    let private isPlacementNote (r: RuntimeLogRecord) =
        r.Message.Contains "were not assigned to the preferred execution providers"
        || r.Message.Contains "Memcpy nodes are added to the graph"

    let private cudaOptions () =
        let o = new OrtCUDAProviderOptions()
        // TF32 matrix products are not float32-exact and would break the 1e-4 comparison on Ampere and later.
        o.UpdateOptions(Dictionary(dict [ "device_id", "0"; "use_tf32", "0" ]))
        o

    /// A one-node model (Relu over [N, 1]) used to probe an execution provider.
    let private probeModel () =
        let g = GraphProto(Name = "probe")
        let node = NodeProto(OpType = "Relu", Name = "relu")
        node.Input.Add Export.InputName
        node.Output.Add Export.OutputName
        g.Node.Add node
        g.Input.Add(Export.batchValueInfo Export.InputName 1)
        g.Output.Add(Export.batchValueInfo Export.OutputName 1)
        let m = ModelProto(IrVersion = Export.IrVersion, Graph = g)
        m.OpsetImport.Add(OperatorSetIdProto(Domain = "", Version = Export.OpsetVersion))
        Export.toBytes m

    /// Whether the CUDA execution provider runs here: Ok () or Error with ONNX Runtime's reason.
    /// Probed once per process with a one-node model.
    let cudaAvailability: Lazy<Result<unit, string>> =
        lazy
            (environment.Force() |> ignore
             if not (OrtEnv.Instance().GetAvailableProviders() |> Array.contains CudaProvider) then
                 Error "this ONNX Runtime build has no CUDA execution provider"
             else
                 let logId = "continual-probe-" + Guid.NewGuid().ToString "N"
                 try
                     try
                         use options = new SessionOptions(LogId = logId)
                         use cuda = cudaOptions ()
                         options.AppendExecutionProvider_CUDA cuda
                         use session = new InferenceSession(probeModel (), options)
                         use input = OrtValue.CreateTensorValueFromMemory([| -1.0f |], [| 1L; 1L |])
                         use runOptions = new RunOptions()
                         use _ = session.Run(runOptions, [| Export.InputName |], [| input |], [| Export.OutputName |])
                         Ok()
                     with :? OnnxRuntimeException as e ->
                         let message = e.Message.Replace('\n', ' ').Trim()
                         let marker = "with error:"
                         let at = message.IndexOf marker
                         if at >= 0 then Error("its library does not load: " + message.Substring(at + marker.Length).Trim())
                         else Error message
                 finally
                     takeLog logId |> ignore)

    /// The provider a preference resolves to here, with a note on why CUDA is not used (Auto only).
    let resolve (preference: ProviderPreference) : string * string option =
        match preference with
        | CpuOnly -> CpuProvider, None
        | CudaOnly ->
            match cudaAvailability.Force() with
            | Ok() -> CudaProvider, None
            | Error reason -> raise (ModelLoadError(sprintf "the CUDA execution provider was asked for but cannot run here: %s" reason))
        | Auto ->
            match cudaAvailability.Force() with
            | Ok() -> CudaProvider, None
            | Error reason -> CpuProvider, Some(sprintf "CUDA execution provider unavailable (%s)" reason)

    let private features (where: string) (name: string) (metadata: IReadOnlyDictionary<string, NodeMetadata>) =
        match metadata.TryGetValue name with
        | true, m when m.ElementDataType = Tensors.TensorElementType.Float && m.Dimensions.Length = 2 && m.Dimensions.[1] > 0 ->
            m.Dimensions.[1]
        | true, m ->
            raise (ModelLoadError(sprintf "the %s '%s' is %A [%s], expected float [N, features]" where name m.ElementDataType (String.Join(", ", m.Dimensions))))
        | _ ->
            raise (ModelLoadError(sprintf "the model has no %s named '%s' (it has: %s)" where name (String.Join(", ", metadata.Keys))))

    /// Loads a serialised model strictly: ONNX Runtime must accept it with strict shape and type
    /// inference and log no warning about the graph, and it must have Continual's input and output.
    /// Raises ModelLoadError with ONNX Runtime's words otherwise.
    let load (preference: ProviderPreference) (bytes: byte[]) : LoadedModel =
        environment.Force() |> ignore
        let provider, _ = resolve preference
        let logId = "continual-" + Guid.NewGuid().ToString "N"
        let session =
            try
                use options =
                    new SessionOptions(
                        LogId = logId,
                        LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_WARNING,
                        GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
                        // The caller's thread alone: verification runs a few rows, and a pool per session
                        // (a thread per core, spinning while idle) competed with libtorch's training thread
                        // for the cores (the ONNX phase of a full sgd run, 4 paired runs on 2 cores: 0.72 s
                        // with ONNX Runtime's default pool, 0.58 s with this).
                        IntraOpNumThreads = 1,
                        InterOpNumThreads = 1)
                options.AddSessionConfigEntry("session.strict_shape_type_inference", "1")
                if provider = CudaProvider then
                    use cuda = cudaOptions ()
                    options.AppendExecutionProvider_CUDA cuda
                new InferenceSession(bytes, options)
            with :? OnnxRuntimeException as e ->
                takeLog logId |> ignore
                raise (ModelLoadError(sprintf "ONNX Runtime refuses the model: %s" (e.Message.Trim())))
        let log = takeLog logId |> List.filter (fun r -> r.Severity >= OrtLoggingLevel.ORT_LOGGING_LEVEL_WARNING)
        match log |> List.filter (isPlacementNote >> not) with
        | [] ->
            try
                let inputs = features "input" Export.InputName session.InputMetadata
                let outputs = features "output" Export.OutputName session.OutputMetadata
                new LoadedModel(session, provider, int inputs, int outputs, log)
            with _ ->
                session.Dispose()
                reraise ()
        | warnings ->
            session.Dispose()
            raise (ModelLoadError(
                sprintf "ONNX Runtime warned about the graph while loading it: %s"
                    (String.Join(" | ", warnings |> List.map (fun r -> sprintf "[%A] %s" r.Severity r.Message)))))

    /// Loads a file strictly (see load).
    let loadFile (preference: ProviderPreference) (path: string) : LoadedModel =
        load preference (IO.File.ReadAllBytes path)

    /// Does once what the first export of a process would otherwise pay for while it waits: creates
    /// the ONNX Runtime environment, probes CUDA, and loads and runs a one-node model on the
    /// provider the preference resolves to. Safe to run on a background thread.
    let warmUp (preference: ProviderPreference) =
        environment.Force() |> ignore
        use probe = load preference (probeModel ())
        probe.Logits([| 1.0f |], 1) |> ignore
