/// Tests of src/Continual.Core/Data.Cifar.fs on small files generated in CIFAR-10's binary format.
module Continual.Tests.DataCifar

open System.IO
open Expecto
open TorchSharp
open Continual
open Continual.Data

/// A fresh folder with five training batches of `perBatch` records and a test batch of `testCount`,
/// pixel values and labels from a fixed generator; returns the folder and every file's contents.
let private generate (folder: string) (perBatch: int) (testCount: int) =
    let rng = System.Random 5
    [ for name in Cifar.fileNames ->
        let count = if name = Cifar.testFileName then testCount else perBatch
        let labels = Array.init count (fun _ -> byte (rng.Next 10))
        let pixels = Array.init (count * 3072) (fun _ -> byte (rng.Next 256))
        Cifar.writeBatch (Path.Combine(folder, name)) labels pixels
        name, (labels, pixels) ]

let private tempFolder () =
    let path = Path.Combine(Path.GetTempPath(), "continual-cifar-" + System.Guid.NewGuid().ToString "N")
    Directory.CreateDirectory path |> ignore
    path

let private expectDataError (f: unit -> unit) (fragment: string) =
    try
        f ()
        failtest "expected a DataFileError"
    with DataFileError(path, reason) ->
        Expect.stringContains (path + ": " + reason) fragment "the error names the problem"

[<Tests>]
let cifarTests =
    testList "data.cifar" [
        testCase "reads generated batches: labels, and pixels channel-first scaled to [0, 1]" <| fun () ->
            let folder = tempFolder ()
            try
                let files = generate folder 4 4 |> dict
                let train, test = Cifar.readFolder folder
                Expect.equal train.Stored.shape [| 20L; 3072L |] "five batches of four"
                Expect.equal test.Stored.shape [| 4L; 3072L |] "the test batch"
                let labels = [ for n in Cifar.trainFileNames -> fst files.[n] ] |> Array.concat |> Array.map int
                Expect.equal train.LabelArray labels "labels in file order"
                Expect.equal (train.Labels.data<int64>().ToArray() |> Array.map int) labels "label tensor"
                // Record 6 is the third record of data_batch_2; check red, green and blue at (row 5, col 7).
                let _, pixels = files.["data_batch_2.bin"]
                use record6 = train.InputRange(6L, 1L)
                for channel in 0 .. 2 do
                    let expected = float32 pixels.[2 * 3072 + channel * 1024 + 5 * 32 + 7] / 255.0f
                    let actual = Scalars.toFloat32 (record6.[0L, int64 (channel * 1024 + 5 * 32 + 7)])
                    Expect.floatClose Accuracy.high (float actual) (float expected) (sprintf "channel %d" channel)
                for s in [ train; test ] do
                    s.Dispose()
            finally
                Directory.Delete(folder, true)

        testCase "finds the files in the archive's cifar-10-batches-bin subfolder" <| fun () ->
            let folder = tempFolder ()
            try
                generate (Path.Combine(folder, "cifar-10-batches-bin")) 2 2 |> ignore
                let b = Cifar.splitCifar10 folder
                Expect.equal b.InputShape (3, 32, 32) "32 × 32 RGB"
                Expect.equal (b.Tasks |> List.map (fun t -> t.Classes)) [ [ 0; 1 ]; [ 2; 3 ]; [ 4; 5 ]; [ 6; 7 ]; [ 8; 9 ] ] "5 tasks of 2 classes"
                for s in [ b.Train; b.Test ] do
                    s.Dispose()
            finally
                Directory.Delete(folder, true)

        testCase "rejects truncated files, bad labels and missing files with the path" <| fun () ->
            let folder = tempFolder ()
            try
                generate folder 2 2 |> ignore
                let path = Path.Combine(folder, "data_batch_3.bin")
                let bytes = File.ReadAllBytes path
                File.WriteAllBytes(path, Array.sub bytes 0 (bytes.Length - 5))
                expectDataError (fun () -> Cifar.readFolder folder |> ignore) "data_batch_3.bin: 6141 bytes is not a whole number of 3073-byte records"
                bytes.[3073] <- 10uy
                File.WriteAllBytes(path, bytes)
                expectDataError (fun () -> Cifar.readFolder folder |> ignore) "label 10 of record 1 is out of range"
                File.Delete path
                expectDataError (fun () -> Cifar.readFolder folder |> ignore) "data_batch_3.bin: file not found"
            finally
                Directory.Delete(folder, true)

        testCase "a strategy runs end to end on a generated Split CIFAR-10 with the small CNN" <| fun () ->
            let folder = tempFolder ()
            try
                generate folder 20 20 |> ignore
                let config = { Experiment.defaults "der" 100 with Data.Benchmark = "split-cifar10"; Data.Folder = folder; Backbone = "cnn"; Distillation = [ Methods.DistillationSettings.Of Methods.Attention ] }
                let result = Experiment.run config RunHooks.none System.Threading.CancellationToken.None
                try
                    Expect.equal result.Outcome.ClassIl.Length 5 "one row per task"
                    Expect.stringStarts (Continual.Models.Backbones.describe result.Architecture) "cnn 3x32x32" "the CNN on RGB 32 × 32"
                finally
                    Experiment.release result
            finally
                Directory.Delete(folder, true)
    ]
