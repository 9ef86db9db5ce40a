namespace Continual.Onnx

open System.IO
open Continual
open Continual.Data
open TorchSharp

/// A .onnx file that cannot be verified (truncated, foreign, damaged, or its data does not match).
exception InvalidModelFile of path: string * reason: string
    with
        override this.Message = sprintf "%s: %s" this.path this.reason

/// The outcome of re-checking one exported file (`continual verify`).
type FileVerification =
    { Path: string
      Info: TaskModelInfo
      Provider: string
      ProviderNote: string option
      TestExamples: int[]
      OnnxClassIlCorrect: int[]
      OnnxTaskIlCorrect: int[] }
    /// True when the recomputed counts equal the recorded ones for every task.
    member this.Reproduced =
        this.TestExamples = this.Info.TestExamples
        && this.OnnxClassIlCorrect = this.Info.ClassIlCorrect
        && this.OnnxTaskIlCorrect = this.Info.TaskIlCorrect

/// Reading an exported file back and re-checking it on its own, long after its run.
[<RequireQualifiedAccess>]
module FileCheck =

    /// Reads and checks a .onnx file: protobuf, structure and Continual metadata. Raises
    /// InvalidModelFile with the reason when it is truncated, foreign or damaged.
    let readFile (path: string) : byte[] * Onnx.ModelProto * TaskModelInfo =
        let invalid reason = raise (InvalidModelFile(path, reason))
        if not (File.Exists path) then invalid "file not found"
        let bytes = File.ReadAllBytes path
        let model =
            match Checks.parse bytes with
            | Ok m -> m
            | Error reason -> invalid reason
        match Checks.structural model with
        | [] -> ()
        | problems -> invalid ("not a valid ONNX model: " + String.concat "; " problems)
        match Metadata.read model with
        | Ok info -> bytes, model, info
        | Error reason -> invalid reason

    /// The test set of an MNIST-style folder (t10k IDX files), scaled exactly as the training run
    /// scales it (Benchmarks.readIdxFolder), and restricted per class when the run was.
    let private readTestSet (folder: string) (classes: int) (testPerClass: int option) : LabelledSet =
        let imagesPath = Benchmarks.findIdxFile folder "t10k-images-idx3-ubyte"
        let labelsPath = Benchmarks.findIdxFile folder "t10k-labels-idx1-ubyte"
        let images = Idx.readImages imagesPath
        let labels = Idx.readLabels labelsPath
        if images.Count <> labels.Length then
            raise (DataFileError(labelsPath, sprintf "%d labels but %d images" labels.Length images.Count))
        match labels |> Array.tryFindIndex (fun l -> int l >= classes) with
        | Some i -> raise (DataFileError(labelsPath, sprintf "label %d at index %d is out of range 0..%d" labels.[i] i (classes - 1)))
        | None -> ()
        let inputs =
            use bytes = torch.tensor(images.Pixels, dtype = torch.ScalarType.Byte).reshape(int64 images.Count, int64 (images.Rows * images.Cols))
            use asFloat = bytes.to_type torch.ScalarType.Float32
            asFloat.div((255.0f).ToScalar())
        let labelArray = labels |> Array.map int
        let full =
            { Inputs = inputs
              Labels = torch.tensor(labelArray |> Array.map int64, dtype = torch.ScalarType.Int64)
              LabelArray = labelArray }
        match testPerClass with
        | None -> full
        | Some n ->
            let reduced = Benchmarks.takePerClass n full
            full.Dispose()
            reduced

    /// Re-checks an exported file on its own: reads its metadata, rebuilds the run's test sets from
    /// the IDX files in `dataFolder`, recomputes Class-IL and Task-IL correct counts under ONNX Runtime
    /// and returns them beside the recorded ones (see FileVerification.Reproduced). Raises
    /// InvalidModelFile for a truncated, foreign or damaged file, or data that does not fit it.
    let verifyFile (preference: ProviderPreference) (path: string) (dataFolder: string) : FileVerification =
        let bytes, _, info = readFile path
        use loaded =
            try Runtime.load preference bytes
            with ModelLoadError reason -> raise (InvalidModelFile(path, reason))
        let classes = loaded.OutputFeatures
        if info.ClassToTask.Length <> classes then
            raise (InvalidModelFile(path, sprintf "the class-to-task map has %d classes but the model has %d logits" info.ClassToTask.Length classes))
        let test = readTestSet dataFolder classes info.TestPerClass
        try
            if int (test.Inputs.shape.[1]) <> loaded.InputFeatures then
                raise (InvalidModelFile(path, sprintf "the model takes %d features but the images in %s have %d" loaded.InputFeatures dataFolder test.Inputs.shape.[1]))
            let tasks = [ for t in 1 .. info.TaskCount -> t, [ for c in 0 .. classes - 1 do if info.ClassToTask.[c] = t then c ] ]
            let results =
                tasks
                |> List.map (fun (_, taskClasses) ->
                    let set = Benchmarks.selectClasses taskClasses test
                    try
                        let logits = loaded.Logits(Comparison.toArray set.Inputs, set.Count)
                        let c, t = Comparison.correctCounts logits classes set.LabelArray taskClasses
                        set.Count, c, t
                    finally
                        set.Inputs.Dispose()
                        set.Labels.Dispose())
            { Path = path
              Info = info
              Provider = loaded.Provider
              ProviderNote = snd (Runtime.resolve preference)
              TestExamples = results |> List.map (fun (n, _, _) -> n) |> Array.ofList
              OnnxClassIlCorrect = results |> List.map (fun (_, c, _) -> c) |> Array.ofList
              OnnxTaskIlCorrect = results |> List.map (fun (_, _, t) -> t) |> Array.ofList }
        finally
            test.Dispose()
