namespace Continual.Onnx

open System
open System.IO
open Continual.Data

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
    /// The 0-based indices of the tasks whose classes the model has seen (from the checked class map).
    member this.TasksSeen =
        this.Info.ClassesSeen |> List.map (fun c -> this.Info.ClassToTask.[c] - 1) |> List.distinct |> List.sort
    /// Class-IL accuracy (percent) recomputed under ONNX Runtime on each task's test set.
    member this.OnnxClassIlAccuracy =
        Array.map2 (fun c n -> if n = 0 then 0.0 else 100.0 * float c / float n) this.OnnxClassIlCorrect this.TestExamples
    /// Task-IL accuracy (percent) recomputed under ONNX Runtime on each task's test set.
    member this.OnnxTaskIlAccuracy =
        Array.map2 (fun c n -> if n = 0 then 0.0 else 100.0 * float c / float n) this.OnnxTaskIlCorrect this.TestExamples

/// Reading an exported file back and re-checking it on its own, long after its run.
[<RequireQualifiedAccess>]
module FileCheck =

    let private taskFileName = Text.RegularExpressions.Regex(@"^task-(\d+)\.onnx$")

    /// The task a file's path names, with where it says so: `task-<k>.onnx` (a run folder), or
    /// `<k>/model.onnx` (a model repository's version k). None for any other name.
    let taskOfPath (path: string) : (int * string) option =
        let name = Path.GetFileName path
        let m = taskFileName.Match name
        let number (s: string) = match System.Int32.TryParse s with | true, k -> Some k | _ -> None
        if m.Success then
            number m.Groups.[1].Value |> Option.map (fun k -> k, "the file name " + name)
        elif name = "model.onnx" then
            let version = Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath path))
            if not (isNull version) && version.Length > 0 && version |> Seq.forall Char.IsAsciiDigit then
                number version |> Option.map (fun k -> k, sprintf "the version folder %s" version)
            else None
        else None

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
        | Ok info ->
            match taskOfPath path with
            | Some(k, where) when k <> info.Task ->
                invalid (sprintf "%s says task %d but the metadata key %stask says %d" where k Metadata.Prefix info.Task)
            | _ -> bytes, model, info
        | Error reason -> invalid reason

    /// The test set of the run that wrote `path`, read from `dataFolder` by the reader of the benchmark
    /// its metadata names (so scaled exactly as the run scaled it), restricted per class when the run was.
    let private readTestSet (path: string) (info: TaskModelInfo) (dataFolder: string) : LabelledSet =
        let benchmark =
            match info.Benchmark with
            | "split-fmnist"
            | "split-mnist" -> Benchmarks.splitMnistStyle info.Benchmark dataFolder
            | "split-cifar10" -> Cifar.splitCifar10 dataFolder
            | other -> raise (InvalidModelFile(path, sprintf "the benchmark '%s' is not one this build can read" other))
        // The readers load the training set too; only the test set is needed.
        benchmark.Train.Dispose()
        match info.TestPerClass with
        | None -> benchmark.Test
        | Some n ->
            let reduced = Benchmarks.takePerClass n benchmark.Test
            benchmark.Test.Dispose()
            reduced

    /// Re-checks an exported file on its own: reads its metadata, rebuilds the run's test sets from
    /// `dataFolder` (IDX files for Split Fashion-MNIST and Split MNIST, CIFAR-10's binary batches for
    /// Split CIFAR-10, as the metadata's benchmark says), recomputes Class-IL and Task-IL correct
    /// counts under ONNX Runtime and returns them beside the recorded ones (see
    /// FileVerification.Reproduced). Raises InvalidModelFile for a truncated, foreign or damaged file,
    /// or data that does not fit it, and DataFileError for missing or malformed data files.
    let verifyFile (preference: ProviderPreference) (path: string) (dataFolder: string) : FileVerification =
        let bytes, _, info = readFile path
        use loaded =
            try Runtime.load preference bytes
            with ModelLoadError reason -> raise (InvalidModelFile(path, reason))
        let classes = loaded.OutputFeatures
        // The map covers the stream's classes; a growing head has logits for the classes seen so far.
        if info.ClassToTask.Length < classes then
            raise (InvalidModelFile(path, sprintf "the class-to-task map has %d classes but the model has %d logits" info.ClassToTask.Length classes))
        match info.ClassesSeen |> List.tryFind (fun c -> c >= classes) with
        | Some c -> raise (InvalidModelFile(path, sprintf "the metadata has seen class %d but the model has %d logits" c classes))
        | None -> ()
        if not info.ClassNames.IsEmpty && info.ClassNames.Length <> classes then
            raise (InvalidModelFile(path, sprintf "the metadata names %d classes (continual.class_names) but the model has %d logits" info.ClassNames.Length classes))
        let test = readTestSet path info dataFolder
        try
            if test.Features <> loaded.InputFeatures then
                raise (InvalidModelFile(path, sprintf "the model takes %d features but the images in %s have %d" loaded.InputFeatures dataFolder test.Features))
            let tasks = [ for t in 1 .. info.TaskCount -> t, [ for c in 0 .. info.ClassToTask.Length - 1 do if info.ClassToTask.[c] = t then c ] ]
            let results =
                tasks
                |> List.map (fun (_, taskClasses) ->
                    let set = Benchmarks.selectClasses taskClasses test
                    try
                        let logits = loaded.Logits(Comparison.inputArray set, set.Count)
                        let c, t = Comparison.correctCounts logits classes set.LabelArray taskClasses
                        set.Count, c, t
                    finally
                        set.Dispose())
            { Path = path
              Info = info
              Provider = loaded.Provider
              ProviderNote = snd (Runtime.resolve preference)
              TestExamples = results |> List.map (fun (n, _, _) -> n) |> Array.ofList
              OnnxClassIlCorrect = results |> List.map (fun (_, c, _) -> c) |> Array.ofList
              OnnxTaskIlCorrect = results |> List.map (fun (_, _, t) -> t) |> Array.ofList }
        finally
            test.Dispose()
