module Continual.Tests.IdxTests

open System.IO
open Expecto
open TorchSharp
open Continual.Data
open Continual.Tests.TestData

let private expectDataError (expectedFragment: string) (expectedFile: string) (f: unit -> 'a) =
    try
        f () |> ignore
        failtestf "expected a data file error mentioning '%s'" expectedFragment
    with DataFileError(path, reason) ->
        Expect.stringContains reason expectedFragment "the reason says what is wrong"
        Expect.equal (Path.GetFileName path) expectedFile "the error names the file"

[<Tests>]
let tests =
    testList "IDX reader" [
        test "round-trips images and labels, gzip and plain" {
            use tmp = new TempFolder()
            let labels = [| 3uy; 1uy; 4uy; 1uy; 5uy |]
            let images = syntheticImages 7 labels
            for ext in [ ""; ".gz" ] do
                let ip = Path.Combine(tmp.Path, "img" + ext)
                let lp = Path.Combine(tmp.Path, "lbl" + ext)
                Idx.writeImages ip images
                Idx.writeLabels lp labels
                let back = Idx.readImages ip
                Expect.equal (back.Count, back.Rows, back.Cols) (5, 28, 28) "header"
                Expect.equal back.Pixels images.Pixels "pixels"
                Expect.equal (Idx.readLabels lp) labels "labels"
                // Read straight into a tensor: the same bytes, one row per image.
                let tensor, rows, cols = Idx.readImageTensor ip
                use tensor = tensor
                Expect.equal (tensor.shape, rows, cols) ([| 5L; 784L |], 28, 28) "tensor shape"
                Expect.equal (tensor.data<byte>().ToArray()) images.Pixels "tensor pixels"
            Expect.isTrue (File.ReadAllBytes(Path.Combine(tmp.Path, "img.gz")).[0] = 0x1fuy) "the .gz file is gzip"
        }

        test "a tensor read from a file keeps its pixels after the reader's array is out of reach and collected" {
            // readImageTensor shares the array it decompressed into: the tensor must pin it.
            use tmp = new TempFolder()
            let images = syntheticImages 3 (balancedLabels 10)
            let p = Path.Combine(tmp.Path, "img.gz")
            Idx.writeImages p images
            let tensor, _, _ = Idx.readImageTensor p
            use tensor = tensor
            for _ in 1 .. 3 do
                System.GC.Collect(2, System.GCCollectionMode.Forced, true, true)
                System.GC.WaitForPendingFinalizers()
                // Fresh large arrays, to reuse any memory a moved or freed array left.
                let churn = Array.init 8 (fun i -> Array.create (images.Pixels.Length) (byte (i + 1)))
                Expect.equal churn.Length 8 "churn"
            Expect.equal (tensor.data<byte>().ToArray()) images.Pixels "the tensor's pixels are the file's"
        }

        test "images over 2 GiB are read by chunks into the tensor, not into an array" {
            // A header that promises 30,000 images of 300x300 (2.7 GB) over a short payload: the array
            // reader refuses it without decompressing, the tensor reader goes by chunks and finds the end.
            use tmp = new TempFolder()
            let p = Path.Combine(tmp.Path, "huge")
            let bigEndian (v: int) = [| byte (v >>> 24); byte (v >>> 16); byte (v >>> 8); byte v |]
            File.WriteAllBytes(p, Array.concat [ bigEndian Idx.ImagesMagic; bigEndian 30000; bigEndian 300; bigEndian 300; Array.zeroCreate 1000 ])
            Expect.isNone (Idx.tryReadImages p) "too large for one array"
            expectDataError "more than one array holds" "huge" (fun () -> Idx.readImages p)
            expectDataError "the header promises 2700000016 bytes, the file holds 1016" "huge" (fun () -> Idx.readImageTensor p)
        }

        test "reads the real Fashion-MNIST test labels" {
            if hasFashionMnist () then
                let labels = Idx.readLabels (Benchmarks.findIdxFile fashionMnist "t10k-labels-idx1-ubyte")
                Expect.equal labels.Length 10000 "10,000 test labels"
                Expect.equal (labels |> Array.countBy id |> Array.map snd |> Array.distinct) [| 1000 |] "1,000 of each class"
            else
                skiptest "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        }

        test "wrong magic number is named" {
            use tmp = new TempFolder()
            let p = Path.Combine(tmp.Path, "labels-as-images")
            Idx.writeLabels p [| 1uy; 2uy |]
            expectDataError "wrong magic number" "labels-as-images" (fun () -> Idx.readImages p)
        }

        test "truncated data is named" {
            use tmp = new TempFolder()
            let p = Path.Combine(tmp.Path, "short")
            Idx.writeImages p (syntheticImages 1 [| 1uy; 2uy |])
            let bytes = File.ReadAllBytes p
            File.WriteAllBytes(p, bytes.[.. bytes.Length - 100])
            expectDataError "truncated" "short" (fun () -> Idx.readImages p)
            expectDataError "the header promises 1584 bytes, the file holds 1485" "short" (fun () -> Idx.readImageTensor p)
            File.WriteAllBytes(p, Array.append bytes [| 7uy; 7uy |])
            expectDataError "2 unexpected bytes after the 1584" "short" (fun () -> Idx.readImageTensor p)
            File.WriteAllBytes(p, bytes.[.. 6])
            expectDataError "shorter than the 16-byte IDX header" "short" (fun () -> Idx.readImages p)
        }

        test "truncated gzip stream is named" {
            use tmp = new TempFolder()
            let p = Path.Combine(tmp.Path, "cut.gz")
            Idx.writeImages p (syntheticImages 1 (balancedLabels 5))
            let bytes = File.ReadAllBytes p
            File.WriteAllBytes(p, bytes.[.. bytes.Length / 2])
            expectDataError "" "cut.gz" (fun () -> Idx.readImages p)
            expectDataError "" "cut.gz" (fun () -> Idx.readImageTensor p)
        }

        test "image and label counts that disagree are named" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 2 2
            Idx.writeLabels (Path.Combine(tmp.Path, "t10k-labels-idx1-ubyte.gz")) (balancedLabels 3)
            expectDataError "30 labels but t10k-images-idx3-ubyte.gz holds 20 images" "t10k-labels-idx1-ubyte.gz" (fun () ->
                Benchmarks.readIdxFolder tmp.Path 10)
        }

        test "labels out of range are named" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 2 2
            let labels = balancedLabels 2
            labels.[7] <- 12uy
            Idx.writeLabels (Path.Combine(tmp.Path, "train-labels-idx1-ubyte.gz")) labels
            expectDataError "label 12 at index 7 is out of range 0..9" "train-labels-idx1-ubyte.gz" (fun () ->
                Benchmarks.readIdxFolder tmp.Path 10)
        }

        test "a missing file is named" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 1 1
            File.Delete(Path.Combine(tmp.Path, "t10k-images-idx3-ubyte.gz"))
            expectDataError "file not found" "t10k-images-idx3-ubyte" (fun () -> Benchmarks.readIdxFolder tmp.Path 10)
        }

        test "split benchmark: 5 tasks of 2 classes in label order, inputs in [0, 1]" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 3 2
            let b = Benchmarks.splitMnistStyle "split-test" tmp.Path
            Expect.equal (b.Tasks |> List.map (fun t -> t.Classes)) [ [0;1]; [2;3]; [4;5]; [6;7]; [8;9] ] "tasks"
            Expect.equal (b.Train.Count, b.Test.Count) (30, 20) "counts"
            Expect.equal b.Train.Stored.shape [| 30L; 784L |] "flattened inputs"
            Expect.equal b.Train.Stored.dtype torch.ScalarType.Byte "stored as pixel bytes"
            use inputs = b.Train.AllInputs()
            Expect.isTrue ((Continual.Scalars.toFloat32 (inputs.min())) >= 0.0f && (Continual.Scalars.toFloat32 (inputs.max())) <= 1.0f) "scaled to [0, 1]"
            let task2 = Benchmarks.selectClasses [ 2; 3 ] b.Train
            Expect.equal (task2.LabelArray |> Array.distinct |> Array.sort) [| 2; 3 |] "task selection"
            Expect.equal task2.Count 6 "three of each class"
        }
    ]
