namespace Continual.Data

open System.IO
open Continual
open TorchSharp

/// Reading and writing CIFAR-10's standard binary files (`data_batch_1.bin` … `data_batch_5.bin`,
/// `test_batch.bin`): records of one label byte and 3072 pixel bytes, the 1024 red values first, then
/// green, then blue, each a 32 × 32 image in row-major order.
[<RequireQualifiedAccess>]
module Cifar =

    /// Bytes per record: the label and 3 × 32 × 32 pixels.
    [<Literal>]
    let RecordSize = 3073

    /// The five training files.
    let trainFileNames = [ for i in 1 .. 5 -> sprintf "data_batch_%d.bin" i ]

    /// The test file.
    let testFileName = "test_batch.bin"

    /// Every file a CIFAR-10 folder must hold.
    let fileNames = trainFileNames @ [ testFileName ]

    /// The path of one file in a folder, or in its `cifar-10-batches-bin` subfolder (the layout of the
    /// official archive), failing clearly when neither holds it.
    let findFile (folder: string) (name: string) =
        DataFiles.checkFolder folder
        let direct = Path.Combine(folder, name)
        let nested = Path.Combine(folder, "cifar-10-batches-bin", name)
        let found =
            if DataFiles.exists direct then direct
            elif DataFiles.exists nested then nested
            else raise (DataFileError(direct, "file not found; a CIFAR-10 folder holds " + String.concat ", " fileNames))
        DataFiles.checkReadable found
        found

    /// Reads one batch file: its labels and its pixels (record after record, without the labels).
    let readBatch (path: string) : byte[] * byte[] =
        DataFiles.checkReadable path
        let bytes = File.ReadAllBytes path
        if bytes.Length = 0 then raise (DataFileError(path, "holds 0 records"))
        if bytes.Length % RecordSize <> 0 then
            raise (DataFileError(path, sprintf "%d bytes is not a whole number of %d-byte records" bytes.Length RecordSize))
        let count = bytes.Length / RecordSize
        let labels = Array.init count (fun i -> bytes.[i * RecordSize])
        match labels |> Array.tryFindIndex (fun l -> l > 9uy) with
        | Some i -> raise (DataFileError(path, sprintf "label %d of record %d is out of range 0..9" labels.[i] i))
        | None -> ()
        let pixels = Array.zeroCreate<byte> (count * (RecordSize - 1))
        for i in 0 .. count - 1 do
            System.Buffer.BlockCopy(bytes, i * RecordSize + 1, pixels, i * (RecordSize - 1), RecordSize - 1)
        labels, pixels

    /// Writes a batch file atomically from labels and pixels (3072 bytes per label), e.g. small files
    /// in the standard format for tests.
    let writeBatch (path: string) (labels: byte[]) (pixels: byte[]) =
        if pixels.Length <> labels.Length * (RecordSize - 1) then
            invalidArg (nameof pixels) (sprintf "%d labels need %d pixel bytes (got %d)" labels.Length (labels.Length * (RecordSize - 1)) pixels.Length)
        let bytes = Array.zeroCreate<byte> (labels.Length * RecordSize)
        for i in 0 .. labels.Length - 1 do
            bytes.[i * RecordSize] <- labels.[i]
            System.Buffer.BlockCopy(pixels, i * (RecordSize - 1), bytes, i * RecordSize + 1, RecordSize - 1)
        Continual.Files.writeAtomically path bytes

    let private toSet (batches: (byte[] * byte[]) list) : LabelledSet =
        let labels = batches |> List.map fst |> Array.concat
        let pixels = batches |> List.map snd |> Array.concat
        Benchmarks.ofBytes pixels (RecordSize - 1) labels

    /// Reads a CIFAR-10 folder: the five training batches and the test batch, inputs in [0, 1]
    /// flattened channel-first ([n, 3 · 32 · 32]). Every file is checked before any tensor is made.
    let readFolder (folder: string) : LabelledSet * LabelledSet =
        let paths = fileNames |> List.map (findFile folder)
        let batches = paths |> List.map readBatch
        // The six batches hold the same number of records (10000 each in CIFAR-10): one that differs
        // was cut, even at a record boundary.
        let counts = batches |> List.map (fst >> Array.length)
        let trainingCount = counts |> List.take 5 |> List.max
        match List.zip paths counts |> List.take 5 |> List.tryFind (fun (_, c) -> c <> trainingCount) with
        | Some(path, count) ->
            raise (DataFileError(path, sprintf "holds %d records where the other training batches hold %d (CIFAR-10's hold 10000 each): the file is cut or from another set" count trainingCount))
        | None -> ()
        let testCount = List.last counts
        if testCount <> trainingCount then
            raise (DataFileError(List.last paths, sprintf "holds %d records where each training batch holds %d (CIFAR-10's test batch holds 10000, as each training batch): the file is cut or from another set" testCount trainingCount))
        toSet (List.take 5 batches), toSet [ List.last batches ]

    /// Split CIFAR-10: 5 tasks of 2 classes in label order, 32 × 32 RGB.
    let splitCifar10 (folder: string) : Benchmark =
        let train, test = readFolder folder
        { Name = "split-cifar10"
          InputShape = (3, 32, 32)
          NumClasses = 10
          ClassNames = [ "airplane"; "automobile"; "bird"; "cat"; "deer"; "dog"; "frog"; "horse"; "ship"; "truck" ]
          Train = train
          Test = test
          Tasks = Benchmarks.splitTasks 10 2 }
