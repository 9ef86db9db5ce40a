module Continual.Tests.OnnxTests

open System
open System.IO
open System.Text.Json
open Expecto
open Google.Protobuf
open Onnx
open Continual
open Continual.Data
open Continual.Models
open Continual.Onnx
open Continual.Tests.OnnxModules
open TorchSharp

let private conv stride padding dilation groups =
    { Stride = stride; Padding = padding; Dilation = dilation; Groups = groups }

let private pool kernel stride padding = { Kernel = kernel; Stride = stride; Padding = padding }

/// Exports the module, runs it under ONNX Runtime and TorchSharp on 9 random rows, and checks the
/// logits agree within the named tolerance and that the graph is structurally valid.
let private agrees (name: string) (features: int) (parts: Part list) =
    test name {
        let model, graph = build 17L features parts
        use _ = model
        let onnx, reference, exported = compare 5L 9 model graph
        Expect.equal onnx.Length reference.Length "as many logits from ONNX Runtime as from TorchSharp"
        let diff = Comparison.maxAbsDifference onnx reference
        Expect.isLessThanOrEqual diff (tolerance reference) (sprintf "%s: max |ONNX - TorchSharp| = %g" name diff)
        // The logits are not all equal: the comparison has something to compare.
        Expect.isGreaterThan (Array.max reference - Array.min reference) 1e-3f "the module's outputs vary"
        Expect.equal (Checks.structural exported.Model) [] "the export passes the structural checks"
        Expect.equal exported.ParameterCount (Backbones.parameterCount model) "every parameter exported once"
    }

let private image = PUnflatten(2, 7, 6)

let private case (name: string) (features: int) (parts: Part list) = name, features, parts

/// One small module per operator (and a few combinations), each with a description.
let private opCases =
    [
        case "Gemm with bias" 5 [ PLinear(4, true) ]
        case "Gemm without bias" 5 [ PLinear(3, false) ]
        case "Relu between Gemms" 6 [ PLinear(8, true); PRelu; PLinear(3, true) ]
        case "Conv 3x3, padding 1" 84 [ image; PConv(3, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, true); PFlatten ]
        case "Conv stride 2, rectangular kernel, no bias" 84 [ image; PConv(4, (3, 1), conv (2, 1) (0, 0) (1, 1) 1, false); PFlatten ]
        case "Conv dilation 2, groups 2" 84 [ image; PConv(4, (2, 2), conv (1, 1) (1, 0) (2, 2) 2, true); PFlatten ]
        case "BatchNormalization (inference form) after Conv" 84 [ image; PConv(3, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, false); PBatchNorm; PFlatten ]
        case "BatchNormalization over flat features" 6 [ PLinear(5, true); PBatchNorm; PRelu; PLinear(2, true) ]
        case "MaxPool 3x3 stride 2 padding 1" 84 [ image; PMaxPool(pool (3, 3) (2, 2) (1, 1)); PFlatten ]
        case "AveragePool counting padding" 84 [ image; PAvgPool(pool (3, 3) (2, 2) (1, 1), true); PFlatten ]
        case "AveragePool not counting padding" 84 [ image; PAvgPool(pool (2, 3) (1, 2) (1, 1), false); PFlatten ]
        case "GlobalAveragePool" 84 [ image; PGlobalAvgPool; PFlatten ]
        case "Flatten then Gemm" 84 [ image; PRelu; PFlatten; PLinear(3, true) ]
        case "Residual with identity shortcut (Add)" 84
            [ image
              PResidual([ PConv(2, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, false); PBatchNorm; PRelu; PConv(2, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, false); PBatchNorm ], [])
              PRelu
              PFlatten ]
        case "Residual with projection shortcut" 84
            [ image
              PResidual(
                  [ PConv(4, (3, 3), conv (2, 2) (1, 1) (1, 1) 1, false); PBatchNorm; PRelu; PConv(4, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, false); PBatchNorm ],
                  [ PConv(4, (1, 1), conv (2, 2) (0, 0) (1, 1) 1, false); PBatchNorm ])
              PRelu
              PGlobalAvgPool
              PFlatten
              PLinear(3, true) ]
        case "a small ResNet-style stack" 196
            [ PUnflatten(1, 14, 14)
              PConv(4, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, false); PBatchNorm; PRelu
              PMaxPool(pool (2, 2) (2, 2) (0, 0))
              PResidual([ PConv(4, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, false); PBatchNorm; PRelu; PConv(4, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, false); PBatchNorm ], [])
              PRelu
              PAvgPool(pool (2, 2) (2, 2) (0, 0), true)
              PFlatten
              PLinear(5, true) ]
        ]

let opTests =
    testList "each operator against TorchSharp" [ for (name, features, parts) in opCases -> agrees name features parts ]

let private mlp () =
    torch.manual_seed 3L |> ignore
    Backbones.create (Mlp(20, [ 16; 12 ], 6))

let private exportMlp () =
    use model = mlp ()
    Export.ofBackbone model

let backboneTests =
    testList "backbones" [
        test "the MLP backbone exports with IR 8, opset 17, input/logits and a dynamic batch" {
            let exported = exportMlp ()
            let m = exported.Model
            Expect.equal m.IrVersion 8L "IR version"
            Expect.equal (m.OpsetImport |> Seq.map (fun o -> o.Domain, o.Version) |> List.ofSeq) [ "", 17L ] "opset import"
            let input = m.Graph.Input |> Seq.exactlyOne
            let output = m.Graph.Output |> Seq.exactlyOne
            Expect.equal input.Name "input" "input name"
            Expect.equal output.Name "logits" "output name"
            let dims (v: ValueInfoProto) = v.Type.TensorType.Shape.Dim |> Seq.map (fun d -> if d.DimParam <> "" then d.DimParam else string d.DimValue) |> List.ofSeq
            Expect.equal (dims input) [ "N"; "20" ] "input [N, 20]"
            Expect.equal (dims output) [ "N"; "6" ] "logits [N, 6]"
            Expect.equal input.Type.TensorType.ElemType 1 "float input"
            Expect.equal (m.Graph.Node |> Seq.map (fun n -> n.OpType) |> List.ofSeq) [ "Gemm"; "Relu"; "Gemm"; "Relu"; "Gemm" ] "Gemm/Relu chain"
            Expect.equal (m.Graph.Initializer |> Seq.map (fun t -> t.Name) |> Set.ofSeq)
                (set [ "hiddenLayers.0.weight"; "hiddenLayers.0.bias"; "hiddenLayers.1.weight"; "hiddenLayers.1.bias"; "classifier.weight"; "classifier.bias" ])
                "initializers carry the state-dict names"
            Expect.equal (Checks.structural m) [] "structurally valid"
        }
        test "the CNN and reduced ResNet-18 backbones export and match TorchSharp" {
            for architecture in [ Cnn(1, 28, 28, 10); ResNet18(1, 28, 28, 8, 10) ] do
                torch.manual_seed 5L |> ignore
                use model = Backbones.create architecture
                // Batch-norm running statistics away from their initial 0 / 1, as after training.
                let warmUp () =
                    use _ = torch.no_grad ()
                    for _ in 1 .. 3 do
                        use batch = torch.rand(16L, 784L).mul(Scalars.cached 2.0)
                        model.forward batch |> ignore
                warmUp ()
                let exported = Export.ofBackbone model
                Expect.equal (Checks.structural exported.Model) [] "structurally valid"
                let parameters = model.parameters () |> Seq.sumBy (fun p -> p.numel ())
                let initialised = exported.Model.Graph.Initializer |> Seq.filter (fun t -> not (t.Name.EndsWith "running_mean" || t.Name.EndsWith "running_var")) |> Seq.sumBy (fun t -> t.Dims |> Seq.fold (*) 1L)
                Expect.isGreaterThanOrEqual initialised parameters (sprintf "%s: every parameter is in the graph" (Backbones.describe architecture))
                use loaded = Runtime.load Auto (Export.toBytes exported.Model)
                let x, array = inputs 9L 9 784
                use x = x
                let reference = Comparison.torchLogits model torch.CPU x
                let onnx = loaded.Logits(array, 9, batchSize = 4)
                let diff = Comparison.maxAbsDifference onnx reference
                Expect.isLessThanOrEqual diff 1e-4 (sprintf "%s: max difference %g" (Backbones.describe architecture) diff)
        }
        test "the MLP backbone's logits match TorchSharp for batches of 1, 7 and 300" {
            use model = mlp ()
            // Trained-looking weights: not the zero biases of a fresh model.
            use _ = torch.no_grad ()
            for p in model.parameters () do
                use noise = torch.randn(p.shape).mul(Scalars.cached 0.1)
                p.add_ noise |> ignore
            let exported = Export.ofBackbone model
            use loaded = Runtime.load Auto (Export.toBytes exported.Model)
            for rows in [ 1; 7; 300 ] do
                let x, array = inputs (int64 rows) rows 20
                use x = x
                let reference = Comparison.torchLogits model torch.CPU x
                let onnx = loaded.Logits(array, rows, batchSize = 64)
                let diff = Comparison.maxAbsDifference onnx reference
                Expect.isLessThanOrEqual diff 1e-4 (sprintf "batch %d: max difference %g" rows diff)
            Expect.isTrue model.training "the model's training mode is restored after the eval-mode forward"
        }
        test "ONNX Runtime runs on the CPU provider here, or CUDA where it loads, and says which" {
            let provider, note = Runtime.resolve Auto
            use loaded = Runtime.load Auto (Export.toBytes (exportMlp ()).Model)
            Expect.equal loaded.Provider provider "the session runs on the resolved provider"
            match Runtime.cudaAvailability.Force() with
            | Ok() -> Expect.equal provider Runtime.CudaProvider "CUDA is used when it runs"
            | Error reason ->
                Expect.equal provider Runtime.CpuProvider "falls back to the CPU"
                Expect.isSome note "the fallback is explained"
                Expect.stringContains note.Value reason "with ONNX Runtime's reason"
            Expect.isTrue (Runtime.capturesLog ()) "ONNX Runtime's log is captured"
        }
    ]

let private withModel (change: ModelProto -> unit) =
    let m = (exportMlp ()).Model.Clone()
    change m
    m

let private expectProblem (m: ModelProto) (fragment: string) =
    let problems = Checks.structural m
    Expect.exists problems (fun p -> p.Contains fragment) (sprintf "a problem mentioning '%s' in %A" fragment problems)

let checkTests =
    testList "structural checks" [
        test "a node reading an undefined value" {
            let m = withModel (fun m -> m.Graph.Node.[2].Input.[0] <- "nowhere")
            expectProblem m "reads 'nowhere'"
        }
        test "nodes out of topological order" {
            let m = withModel (fun m ->
                let first = m.Graph.Node.[0]
                m.Graph.Node.RemoveAt 0
                m.Graph.Node.Add first)
            expectProblem m "not a graph input, an initializer or an earlier node's output"
        }
        test "duplicate node names and reassigned values" {
            let m = withModel (fun m ->
                m.Graph.Node.[1].Name <- m.Graph.Node.[0].Name
                m.Graph.Node.[1].Output.[0] <- m.Graph.Node.[0].Output.[0])
            expectProblem m "appears more than once"
            expectProblem m "already defined"
        }
        test "an initializer whose data does not match its dims" {
            let m = withModel (fun m -> m.Graph.Initializer.[0].Dims.[0] <- m.Graph.Initializer.[0].Dims.[0] + 1L)
            expectProblem m "holds"
        }
        test "a missing opset import and IR version" {
            let m = withModel (fun m ->
                m.OpsetImport.Clear()
                m.IrVersion <- 0L)
            expectProblem m "no opset import"
            expectProblem m "IR version"
        }
        test "an unused initializer and an output nobody produces" {
            let m = withModel (fun m ->
                m.Graph.Initializer.Add(TensorProto(Name = "stray", DataType = 1, RawData = ByteString.CopyFrom(Array.zeroCreate<byte> 4)))
                m.Graph.Initializer.[m.Graph.Initializer.Count - 1].Dims.Add 1L
                m.Graph.Output.[0].Name <- "ghost")
            expectProblem m "'stray' is not used"
            expectProblem m "'ghost' is not produced"
        }
        test "an unknown operator" {
            let m = withModel (fun m -> m.Graph.Node.[1].OpType <- "Gelu")
            expectProblem m "'Gelu'"
        }
    ]

let strictLoadingTests =
    testList "strict loading in ONNX Runtime" [
        test "a clean export loads with nothing logged at warning level" {
            use loaded = Runtime.load CpuOnly (Export.toBytes (exportMlp ()).Model)
            Expect.equal loaded.LoadLog [] "no warnings"
        }
        test "ONNX Runtime's warning about an unused initializer fails the load" {
            let m = withModel (fun m ->
                let t = TensorProto(Name = "stray", DataType = 1, RawData = ByteString.CopyFrom(Array.zeroCreate<byte> 4))
                t.Dims.Add 1L
                m.Graph.Initializer.Add t)
            Expect.throwsC (fun () -> use _ = Runtime.load CpuOnly (Export.toBytes m) in ()) (fun e ->
                Expect.isTrue (e :? ModelLoadError) (sprintf "a ModelLoadError, got %s" (e.GetType().Name))
                Expect.stringContains e.Message "stray" "ONNX Runtime's warning names the initializer")
        }
        test "a weight of the wrong shape is refused with ONNX Runtime's reason" {
            let m = withModel (fun m ->
                let w = m.Graph.Initializer |> Seq.find (fun t -> t.Name = "classifier.weight")
                w.Dims.[1] <- 6L
                w.Dims.[0] <- 24L)
            Expect.throwsC (fun () -> use _ = Runtime.load CpuOnly (Export.toBytes m) in ()) (fun e ->
                Expect.isTrue (e :? ModelLoadError) (sprintf "a ModelLoadError, got %s" (e.GetType().Name))
                Expect.stringContains e.Message "ONNX Runtime" "names ONNX Runtime")
        }
    ]

let private messageOf (f: unit -> unit) =
    try
        f ()
        failwith "expected an error"
    with
    | ExportError _ as e -> e.Message

let exportErrorTests =
    testList "unsupported layers and models are named" [
        test "Conv over a flat input names the layer and the fix" {
            let model, _ = build 1L 84 [ image; PConv(2, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, true); PFlatten ]
            use _ = model
            let graph = { Name = "bad"; InputFeatures = 84; Layers = [ Conv("1", conv (1, 1) (1, 1) (1, 1) 1); Flatten ] }
            let message = messageOf (fun () -> Export.ofGraph graph (model.state_dict ()) (fun _ -> true) |> ignore)
            Expect.stringContains message "Conv '1'" "names the layer"
            Expect.stringContains message "Unflatten" "says what is missing"
        }
        test "a layer reading a tensor the model lacks" {
            let model, _ = build 1L 5 [ PLinear(3, true) ]
            use _ = model
            let graph = { Name = "bad"; InputFeatures = 5; Layers = [ Gemm "head" ] }
            let message = messageOf (fun () -> Export.ofGraph graph (model.state_dict ()) (fun _ -> true) |> ignore)
            Expect.stringContains message "Gemm 'head'" "names the layer"
            Expect.stringContains message "head.weight" "names the tensor"
        }
        test "a graph that leaves model parameters out does not describe the model" {
            let model, _ = build 1L 5 [ PLinear(4, true); PRelu; PLinear(3, true) ]
            use _ = model
            let graph = { Name = "partial"; InputFeatures = 5; Layers = [ Gemm "0" ] }
            let message = messageOf (fun () -> Export.ofModule graph model |> ignore)
            Expect.stringContains message "2.weight" "lists the unused parameter"
        }
        test "a graph that does not end in flat logits" {
            let model, _ = build 1L 84 [ image; PConv(2, (3, 3), conv (1, 1) (1, 1) (1, 1) 1, true) ]
            use _ = model
            let graph = { Name = "image-out"; InputFeatures = 84; Layers = [ Unflatten(2, 7, 6); Conv("1", conv (1, 1) (1, 1) (1, 1) 1) ] }
            let message = messageOf (fun () -> Export.ofGraph graph (model.state_dict ()) (fun _ -> true) |> ignore)
            Expect.stringContains message "logits must be flat" "explains"
        }
        test "a residual block whose branches disagree" {
            let model, _ = build 1L 84 [ image; PConv(3, (1, 1), conv (1, 1) (0, 0) (1, 1) 1, false); PFlatten ]
            use _ = model
            let graph = { Name = "bad-residual"; InputFeatures = 84; Layers = [ Unflatten(2, 7, 6); Residual([ Conv("1", conv (1, 1) (0, 0) (1, 1) 1) ], []); Flatten ] }
            let message = messageOf (fun () -> Export.ofGraph graph (model.state_dict ()) (fun _ -> true) |> ignore)
            Expect.stringContains message "Residual" "names the layer"
            Expect.stringContains message "shortcut" "explains"
        }
    ]

let rec private hasResidual (parts: Part list) = parts |> List.exists (function PResidual _ -> true | _ -> false)

let sequentialTests =
    testList "layer graphs read from TorchSharp Sequential modules" [
        test "every Sequential test module reads back as the layer graph it was built from" {
            for (name, features, parts) in opCases do
                let model, graph = build 2L features parts
                use _ = model
                match model with
                | :? TorchSharp.Modules.Sequential as sequential when not (hasResidual parts) ->
                    let read = LayerGraph.ofSequential "test" features sequential
                    Expect.equal read.Layers graph.Layers name
                    let exported = Export.ofModule read model
                    Expect.equal exported.ParameterCount (Backbones.parameterCount model) name
                | :? TorchSharp.Modules.Sequential as sequential ->
                    let message = messageOf (fun () -> LayerGraph.ofSequential "test" features sequential |> ignore)
                    Expect.stringContains message "ResidualModule" (name + ": names the custom module")
                    Expect.stringContains message "LayerGraph.Residual" (name + ": says how to describe it")
                | other -> failtestf "%s: the builder made a %s" name (other.GetType().Name)
        }
        test "an unsupported module is an error naming it and its type" {
            use model = torch.nn.Sequential([| ("fc", torch.nn.Linear(4L, 3L) :> torch.nn.Module<Tensor, Tensor>); ("squash", torch.nn.Sigmoid()) |])
            let message = messageOf (fun () -> LayerGraph.ofSequential "bad" 4 model |> ignore)
            Expect.stringContains message "layer 'squash' (Sigmoid)" "names the module and its type"
            Expect.stringContains message "no mapping" "says why"
        }
        test "an unsupported setting is an error naming it" {
            use model = torch.nn.Sequential([| ("pool", torch.nn.MaxPool2d(2L, ceil_mode = true) :> torch.nn.Module<Tensor, Tensor>) |])
            let message = messageOf (fun () -> LayerGraph.ofSequential "bad" 4 model |> ignore)
            Expect.stringContains message "layer 'pool' (MaxPool2d)" "names the module"
            Expect.stringContains message "ceil_mode" "names the setting"
        }
    ]

// ---- end to end on small generated IDX data -------------------------------------------------

let private writeData (folder: string) =
    let rng = Random 11
    let make perClass =
        let count = perClass * 10
        let labels = Array.init count (fun i -> byte (i % 10))
        let pixels = Array.zeroCreate<byte> (count * 784)
        for i in 0 .. count - 1 do
            let c = int labels.[i]
            for p in 0 .. 783 do
                let row, col = p / 28, p % 28
                // Each class lights its own band of rows, plus noise.
                let signal = if row / 3 = c then 180 else 0
                pixels.[i * 784 + p] <- byte (min 255 (signal + rng.Next 60))
        { Count = count; Rows = 28; Cols = 28; Pixels = pixels }, labels
    let trainImages, trainLabels = make 30
    let testImages, testLabels = make 12
    Idx.writeImages (Path.Combine(folder, "train-images-idx3-ubyte.gz")) trainImages
    Idx.writeLabels (Path.Combine(folder, "train-labels-idx1-ubyte.gz")) trainLabels
    Idx.writeImages (Path.Combine(folder, "t10k-images-idx3-ubyte")) testImages
    Idx.writeLabels (Path.Combine(folder, "t10k-labels-idx1-ubyte")) testLabels

/// Small CIFAR-10 binary batches in the real format (Cifar.writeBatch): five training batches of 20
/// records and a test batch of 20 (CIFAR-10's six batches are all of one size), labels cycling through
/// the ten classes, random pixels.
let private writeCifar (folder: string) =
    let rng = Random 11
    for name in Cifar.fileNames do
        let count = 20
        let labels = Array.init count (fun i -> byte (i % 10))
        let pixels = Array.init (count * 3072) (fun _ -> byte (rng.Next 256))
        Cifar.writeBatch (Path.Combine(folder, name)) labels pixels

/// The export settings `continual run` uses for a configuration.
let private exportSettings (config: Config) (out: string) =
    ExportSettings.forRun (Continual.Cli.OnnxCommands.runIdentity config) out

let private temporaryFolder () =
    let d = Path.Combine(Path.GetTempPath(), "continual-onnx-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory d |> ignore
    d

/// One small DER++ run with the exporter hook; returns the run folder, data folder and results.json.
let private endToEnd =
    lazy
        (let root = temporaryFolder ()
         let data = Path.Combine(root, "data")
         writeData data
         let out = Path.Combine(root, "run")
         let config =
             { Experiment.defaults "derpp" 50 with
                 Data.Folder = data
                 Data.TestPerClass = Some 10 }
         let exporter = RunExporter(exportSettings config out)
         let result = Experiment.run config { RunHooks.none with AfterTask = exporter.AfterTask } Threading.CancellationToken.None
         try
             Results.write out result (fun w -> exporter.WriteJson(w, result.Outcome.HookSeconds, result.WallSeconds))
             root, data, out, config, result.Outcome.ClassIl, exporter.Reports
         finally
             Experiment.release result)

/// Runs a configuration on the generated data with the exporter hook.
let private runWith (settings: ExportSettings -> ExportSettings) (strategy: string) =
    let root, data, _, _, _, _ = endToEnd.Force()
    let out = Path.Combine(root, strategy + "-" + Guid.NewGuid().ToString "N")
    let config = { Experiment.defaults strategy 50 with Data.Folder = data; Data.TestPerClass = Some 10 }
    let exporter = RunExporter(settings (exportSettings config out))
    let result = Experiment.run config { RunHooks.none with AfterTask = exporter.AfterTask } Threading.CancellationToken.None
    Experiment.release result
    out, exporter

let endToEndTests =
    testList "end to end" [
        test "a failed verification stops the run with a clear message and writes no file" {
            Expect.throwsC (fun () -> runWith (fun s -> { s with Tolerance = -1.0 }) "sgd" |> ignore) (fun e ->
                Expect.isTrue (e :? VerificationFailed) (sprintf "a VerificationFailed, got %s" (e.GetType().Name))
                Expect.stringContains e.Message "after task 1" "names the task"
                Expect.stringContains e.Message "tolerance" "names the check"
                Expect.stringContains e.Message "task-1.onnx was not written" "says what happened to the file")
            let root, _, _, _, _, _ = endToEnd.Force()
            let written = Directory.GetDirectories(root, "sgd-*") |> Array.collect (fun d -> Directory.GetFiles(d, "*.onnx"))
            Expect.isEmpty written "no unverified model on disk"
        }
        test "JOINT leaves one model that has seen every class" {
            let out, exporter = runWith id "joint"
            Expect.equal (exporter.Reports |> List.map (fun r -> r.File)) [ "task-1.onnx" ] "one model"
            let _, _, info = FileCheck.readFile (Path.Combine(out, "task-1.onnx"))
            Expect.equal info.ClassesSeen [ 0 .. 9 ] "every class seen"
            Expect.equal info.Strategy "joint" "strategy"
        }
        test "a run leaves one verified task-<k>.onnx per task, written atomically" {
            let _, _, out, _, _, reports = endToEnd.Force()
            let files = Directory.GetFiles out |> Array.map Path.GetFileName |> Array.sort
            Expect.equal files [| "results.csv"; "results.json"; "task-1.onnx"; "task-2.onnx"; "task-3.onnx"; "task-4.onnx"; "task-5.onnx" |] "no temporary files left"
            Expect.equal (reports |> List.map (fun r -> r.Task)) [ 1 .. 5 ] "one report per task"
            for r in reports do
                Expect.isLessThanOrEqual r.MaxAbsDifference 1e-4 "logits within 1e-4"
                Expect.equal r.OnnxClassIlCorrect r.TorchClassIlCorrect "Class-IL equal"
                Expect.equal r.OnnxTaskIlCorrect r.TorchTaskIlCorrect "Task-IL equal"
                Expect.isGreaterThanOrEqual r.ComparedImages 50 "every test image compared (50 here)"
        }
        test "results.json carries the onnx section" {
            let _, _, out, _, _, _ = endToEnd.Force()
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "results.json")))
            let onnx = doc.RootElement.GetProperty "onnx"
            let provider = onnx.GetProperty("provider").GetString()
            Expect.contains [ Runtime.CpuProvider; Runtime.CudaProvider ] provider "provider named"
            Expect.equal (onnx.GetProperty("tasks").GetArrayLength()) 5 "five tasks"
            let t = onnx.GetProperty("tasks").[2]
            Expect.isTrue (t.GetProperty("accuracyEqual").GetBoolean()) "accuracy equal"
            Expect.isLessThanOrEqual (t.GetProperty("maxAbsDifference").GetDouble()) 1e-4 "difference recorded"
            Expect.isGreaterThan (onnx.GetProperty("hookSeconds").GetDouble()) 0.0 "time recorded"
        }
        test "metadata: task, classes seen, class-to-task map, strategy, hash, TorchSharp accuracy" {
            let _, _, out, config, classIl, _ = endToEnd.Force()
            let _, _, info = FileCheck.readFile (Path.Combine(out, "task-3.onnx"))
            Expect.equal info.Task 3 "task"
            Expect.equal info.TaskCount 5 "task count"
            Expect.equal info.ClassesSeen [ 0 .. 5 ] "classes seen after task 3"
            Expect.equal info.ClassToTask [| 1; 1; 2; 2; 3; 3; 4; 4; 5; 5 |] "class-to-task map"
            Expect.equal info.Strategy "derpp" "strategy"
            Expect.equal info.ConfigHash (Results.configHash config) "configuration hash"
            Expect.equal info.TestExamples [| 20; 20; 20; 20; 20 |] "test images per task"
            Expect.equal info.ClassIlAccuracy classIl.[2] "Class-IL accuracy equals the run's matrix row"
            use loaded = Runtime.loadFile CpuOnly (Path.Combine(out, "task-3.onnx"))
            Expect.equal loaded.Metadata.["continual.class_to_task"] "[1,1,2,2,3,3,4,4,5,5]" "readable by ONNX Runtime's own metadata API"
        }
        test "verify reproduces the recorded accuracy of every file exactly" {
            let _, data, out, _, _, _ = endToEnd.Force()
            for k in 1 .. 5 do
                let v = FileCheck.verifyFile Auto (Path.Combine(out, sprintf "task-%d.onnx" k)) data
                Expect.isTrue v.Reproduced (sprintf "task %d: %A vs %A" k v.OnnxClassIlCorrect v.Info.ClassIlCorrect)
        }
        test "verify notices test data that differs from the run's" {
            let root, data, out, _, _, _ = endToEnd.Force()
            let other = Path.Combine(root, "other-data")
            Directory.CreateDirectory other |> ignore
            for f in Directory.GetFiles data do File.Copy(f, Path.Combine(other, Path.GetFileName f), true)
            // Different test labels: the same images, the labels rotated by one class.
            let labels = Idx.readLabels (Path.Combine(other, "t10k-labels-idx1-ubyte")) |> Array.map (fun l -> byte ((int l + 1) % 10))
            Idx.writeLabels (Path.Combine(other, "t10k-labels-idx1-ubyte")) labels
            let v = FileCheck.verifyFile Auto (Path.Combine(out, "task-5.onnx")) other
            Expect.isFalse v.Reproduced "the recomputed counts differ"
        }
        test "verify re-checks a Split CIFAR-10 run's files from CIFAR-10's binary batches" {
            let root = temporaryFolder ()
            try
                let data = Path.Combine(root, "cifar")
                writeCifar data
                let out = Path.Combine(root, "run")
                let config = { Experiment.defaults "sgd" 0 with Data.Benchmark = "split-cifar10"; Data.Folder = data; Data.TestPerClass = Some 2 }
                let exporter = RunExporter(exportSettings config out)
                let result = Experiment.run config { RunHooks.none with AfterTask = exporter.AfterTask } Threading.CancellationToken.None
                Experiment.release result
                let files = [ for k in 1 .. 5 -> Path.Combine(out, sprintf "task-%d.onnx" k) ]
                for path in files do
                    let v = FileCheck.verifyFile Auto path data
                    Expect.equal v.Info.Benchmark "split-cifar10" "the benchmark is recorded"
                    Expect.equal v.TestExamples [| 4; 4; 4; 4; 4 |] "two test images per class, as in the run"
                    Expect.isTrue v.Reproduced (sprintf "%s: %A vs %A" path v.OnnxClassIlCorrect v.Info.ClassIlCorrect)
                // The IDX folder of the other runs is not CIFAR-10 data: the CIFAR-10 reader says what is missing.
                let _, idxData, _, _, _, _ = endToEnd.Force()
                Expect.throwsC (fun () -> FileCheck.verifyFile Auto files.[4] idxData |> ignore) (fun e ->
                    Expect.isTrue (e :? DataFileError) (sprintf "a DataFileError, got %s: %s" (e.GetType().Name) e.Message)
                    Expect.stringContains e.Message "a CIFAR-10 folder holds" "names the CIFAR-10 files")
                // Different test labels (rotated by one class) are noticed.
                let testBatch = Path.Combine(data, Cifar.testFileName)
                let labels, pixels = Cifar.readBatch testBatch
                Cifar.writeBatch testBatch (labels |> Array.map (fun l -> byte ((int l + 1) % 10))) pixels
                Expect.isFalse (FileCheck.verifyFile Auto files.[4] data).Reproduced "the recomputed counts differ"
            finally
                Directory.Delete(root, true)
        }
        test "truncated, damaged and foreign files get clear errors" {
            let root, data, out, _, _, _ = endToEnd.Force()
            let bytes = File.ReadAllBytes(Path.Combine(out, "task-2.onnx"))
            let attempt (name: string) (content: byte[]) (fragment: string) =
                let path = Path.Combine(root, name)
                File.WriteAllBytes(path, content)
                Expect.throwsC (fun () -> FileCheck.verifyFile Auto path data |> ignore) (fun e ->
                    Expect.isTrue (e :? InvalidModelFile) (sprintf "%s: an InvalidModelFile, got %s: %s" name (e.GetType().Name) e.Message)
                    Expect.stringContains e.Message fragment (sprintf "%s: the message explains" name))
            for cut in [ bytes.Length - 1; bytes.Length - 30; bytes.Length / 2; 100; 3 ] do
                let path = sprintf "cut-%d.onnx" cut
                let p = Path.Combine(root, path)
                File.WriteAllBytes(p, Array.sub bytes 0 cut)
                Expect.throwsC (fun () -> FileCheck.verifyFile Auto p data |> ignore) (fun e ->
                    Expect.isTrue (e :? InvalidModelFile) (sprintf "cut at %d: %s: %s" cut (e.GetType().Name) e.Message))
            attempt "empty.onnx" [||] "empty"
            attempt "text.onnx" (Text.Encoding.UTF8.GetBytes "this is not a model\n") "not"
            let damaged = Array.copy bytes
            // Flip a byte inside the first weight's raw data (well inside the graph).
            damaged.[bytes.Length / 3] <- damaged.[bytes.Length / 3] ^^^ 0x40uy
            attempt "damaged.onnx" damaged ""
            let foreign = withModel ignore
            attempt "foreign.onnx" (Export.toBytes foreign) "not exported by Continual"
        }
        test "a Triton model repository: one version per task and config.pbtxt" {
            let root, _, out, config, _, _ = endToEnd.Force()
            let repo = Path.Combine(root, "repo")
            let layout = Repository.writeTriton out repo None
            Expect.equal layout.Name "run" "named after the run folder"
            Expect.equal layout.Versions [ 1 .. 5 ] "versions"
            for k in 1 .. 5 do
                let copy = Path.Combine(repo, "run", string k, "model.onnx")
                Expect.isTrue (File.Exists copy) (sprintf "version %d" k)
                Expect.sequenceEqual (File.ReadAllBytes copy) (File.ReadAllBytes(Path.Combine(out, sprintf "task-%d.onnx" k))) "the task's file, unchanged"
            let text = File.ReadAllText(Path.Combine(repo, "run", "config.pbtxt"))
            for fragment in
                [ "name: \"run\""; "platform: \"onnxruntime_onnx\""; "max_batch_size: 1024"; "name: \"input\""; "dims: [ 784 ]"
                  "name: \"logits\""; "dims: [ 10 ]"; "data_type: TYPE_FP32"; "version_policy: { all: { } }"; "dynamic_batching { }"; Results.configHash config ] do
                Expect.stringContains text fragment "config.pbtxt"
            Expect.throwsC (fun () -> Repository.writeTriton out repo None |> ignore) (fun e -> Expect.stringContains e.Message "already exists" "no silent overwrite")
            let named = Repository.writeTriton out repo (Some "fashion")
            Expect.isTrue (File.Exists(Path.Combine(repo, "fashion", "5", "model.onnx"))) "--name"
            Expect.equal named.OutputFeatures 10 "classes"
        }
    ]

// ---- the official ONNX checker, where Debian's python3-onnx is installed ---------------------

let private checkerScript =
    String.concat "\n"
        [ "import sys, onnx"
          "from onnx import checker, shape_inference"
          "for p in sys.argv[1:]:"
          "    try:"
          "        m = onnx.load(p)"
          "        checker.check_model(m, full_check=True)"
          "        shape_inference.infer_shapes(m, check_type=True, strict_mode=True)"
          "        print('ok ' + p)"
          "    except Exception as e:"
          "        print('fail ' + p + ': ' + str(e).replace('\\n', ' '))" ]

let private run (exe: string) (args: string list) = CliProcess.executeProgram exe args []

/// A Python with the official onnx package (Debian's python3-onnx lives in /usr/bin/python3).
let private officialChecker =
    lazy
        ([ "python3"; "/usr/bin/python3" ]
         |> List.tryFind (fun exe ->
             try
                 let code, _, _ = run exe [ "-c"; "import onnx.checker, onnx.shape_inference" ]
                 code = 0
             with _ -> false))

let officialCheckerTests =
    testList "official ONNX checker" [
        test "onnx.checker (full check) and strict shape inference accept every kind of export and reject a broken one" {
            match officialChecker.Force() with
            | None -> skiptest "needs Python with the onnx package (Debian: apt-get install python3-onnx)"
            | Some python ->
                let root, _, out, _, _, _ = endToEnd.Force()
                let folder = Path.Combine(root, "checker")
                Directory.CreateDirectory folder |> ignore
                let good =
                    [ for (i, (_, features, parts)) in List.indexed opCases do
                          let model, graph = build 3L features parts
                          use _ = model
                          let path = Path.Combine(folder, $"op-{i}.onnx")
                          File.WriteAllBytes(path, Export.toBytes (Export.ofModule graph model).Model)
                          yield path
                      for k in 1 .. 5 do
                          yield Path.Combine(out, $"task-{k}.onnx") ]
                let broken = Path.Combine(folder, "broken.onnx")
                File.WriteAllBytes(broken, Export.toBytes (withModel (fun m -> m.Graph.Node.[2].Input.[0] <- "nowhere")))
                let code, output, errors = run python ([ "-c"; checkerScript ] @ good @ [ broken ])
                Expect.equal code 0 (sprintf "the checker script ran: %s" errors)
                let lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> List.ofArray
                for path in good do
                    Expect.contains lines ("ok " + path) (sprintf "accepted: %s (output: %s)" path output)
                Expect.isTrue (lines |> List.exists (fun l -> l.StartsWith("fail " + broken))) "the broken model is rejected: the checker checks"
        }
    ]

let metadataTests =
    testList "metadata" [
        test "metadata round-trips and the graph hash guards the graph" {
            let info =
                { Task = 2; TaskCount = 5; ClassesSeen = [ 0; 1; 2; 3 ]; ClassToTask = [| 1; 1; 2; 2; 3; 3; 4; 4; 5; 5 |]; ClassNames = []
                  Strategy = "er"; ConfigHash = "abc"; Benchmark = "split-fmnist"; Architecture = "mlp 20-16-12-6"
                  TestPerClass = Some 7; TestExamples = [| 14; 14; 14; 14; 14 |]
                  ClassIlCorrect = [| 3; 14; 0; 0; 1 |]; TaskIlCorrect = [| 14; 13; 7; 8; 9 |] }
            let m = Metadata.stamp info (exportMlp ()).Model
            Expect.equal (Metadata.read m) (Ok info) "round trip"
            Expect.equal (m.MetadataProps |> Seq.last).Key Metadata.GraphHashKey "graph hash written last"
            Expect.equal m.ModelVersion 2L "model_version is the task"
            let parsed = match Checks.parse (Export.toBytes m) with Ok p -> p | Error e -> failwith e
            Expect.equal (Metadata.read parsed) (Ok info) "round trip through bytes"
            m.Graph.Node.[1].Name <- "renamed"
            match Metadata.read m with
            | Error reason -> Expect.stringContains reason "damaged" "a changed graph is detected"
            | Ok _ -> failtest "a changed graph must not read as valid"
        }
    ]

[<Tests>]
let tests =
    testSequenced (
        testList "Onnx" [ opTests; sequentialTests; backboneTests; checkTests; strictLoadingTests; exportErrorTests; metadataTests; endToEndTests; officialCheckerTests ])
