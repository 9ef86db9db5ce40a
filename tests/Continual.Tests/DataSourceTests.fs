/// Tests of the user-data sources (Data.Images, Data.Folders, Data.TinyImageNet, Data.Tables,
/// Data.Manifest) on real files written in their real formats, and of their wiring into the CLI.
module Continual.Tests.DataSourceTests

open System
open System.IO
open Expecto
open TorchSharp
open Continual
open Continual.Data
open Continual.Tests.TestData
open Continual.Tests.DataGenerators

/// A set's inputs as floats (one place to change if storage changes).
let private floatsOf (set: LabelledSet) : float32[] =
    use f = set.AllInputs()
    f.contiguous().data<float32>().ToArray()

/// The floats ofBytes makes of bytes.
let private scaled (bytes: byte[]) = bytes |> Array.map (fun b -> scaledBytes.Value.[int b])

/// Runs f, expecting a DataFileError whose path ends with `pathEnd` and whose reason holds every fragment.
let private expectDataError (pathEnd: string) (fragments: string list) (f: unit -> unit) =
    try
        f ()
        failtest "expected a DataFileError"
    with DataFileError(path, reason) ->
        Expect.isTrue (path.Replace('\\', '/').EndsWith pathEnd) (sprintf "the error names %s (got %s: %s)" pathEnd path reason)
        for fragment in fragments do
            Expect.stringContains reason fragment (sprintf "message of %s" path)

let private withBenchmark (b: Benchmark) (f: Benchmark -> unit) =
    try f b finally Benchmarks.dispose b

let private twoClassGrayFolder (root: string) =
    writeImageFolder root
        [ "train", "b", [ grayImage 6 8 1; grayImage 6 8 2 ]
          "train", "a", [ grayImage 6 8 3 ]
          "train", "c", [ grayImage 6 8 4 ]
          "test", "a", [ grayImage 6 8 5 ]
          "test", "c", [ grayImage 6 8 6 ] ]

[<Tests>]
let imageTests =
    testList "Data sources: images" [
        test "a PNG image folder reads back exactly: pixels, labels, class names and tasks" {
            use temp = new TempFolder()
            twoClassGrayFolder temp.Path
            withBenchmark (ImageFolders.benchmark ImageOptions.defaults 2 temp.Path) (fun b ->
                Expect.equal b.InputShape (1, 6, 8) "shape"
                Expect.equal b.ClassNames [ "a"; "b"; "c" ] "sorted class names"
                Expect.equal b.Tasks [ { Index = 0; Classes = [ 0; 1 ] }; { Index = 1; Classes = [ 2 ] } ] "tasks of 2, the last takes what is left"
                Expect.equal b.Train.LabelArray [| 0; 1; 1; 2 |] "train labels in class then file order"
                Expect.equal b.Test.LabelArray [| 0; 2 |] "test labels"
                let expected = [ 3; 1; 2; 4 ] |> List.map (fun s -> (grayImage 6 8 s).Pixels) |> Array.concat
                Expect.equal (floatsOf b.Train) (scaled expected) "pixels as ofBytes scales them")
        }

        test "RGB PNG images are channel-major; gray turns them into BT.601 luma" {
            use temp = new TempFolder()
            let image = rgbImage 5 7 11
            writeImageFolder temp.Path [ "train", "x", [ image ]; "test", "x", [ image ] ]
            withBenchmark (ImageFolders.benchmark ImageOptions.defaults 2 temp.Path) (fun b ->
                Expect.equal b.InputShape (3, 5, 7) "three channels"
                Expect.equal (floatsOf b.Train) (scaled image.Pixels) "channel-major bytes")
            withBenchmark (ImageFolders.benchmark { ImageOptions.defaults with Colour = ColourMode.Gray } 2 temp.Path) (fun b ->
                Expect.equal b.InputShape (1, 5, 7) "one channel"
                let plane = 35
                let luma = Array.init plane (fun i -> byte ((299 * int image.Pixels.[i] + 587 * int image.Pixels.[plane + i] + 114 * int image.Pixels.[2 * plane + i] + 500) / 1000))
                Expect.equal (floatsOf b.Train) (scaled luma) "luma")
        }

        test "grayscale images become RGB by repeating the channel" {
            use temp = new TempFolder()
            let image = grayImage 4 4 9
            writeImageFolder temp.Path [ "train", "x", [ image ]; "test", "x", [ image ] ]
            withBenchmark (ImageFolders.benchmark { ImageOptions.defaults with Colour = ColourMode.Rgb } 2 temp.Path) (fun b ->
                Expect.equal b.InputShape (3, 4, 4) "three channels"
                Expect.equal (floatsOf b.Train) (scaled (Array.concat [ image.Pixels; image.Pixels; image.Pixels ])) "repeated")
        }

        test "JPEG files decode close to what was written, and a target size resizes and centre-crops" {
            use temp = new TempFolder()
            let flat = { Channels = 3; Height = 30; Width = 40; Pixels = Array.init (3 * 1200) (fun i -> byte (60 + 60 * (i / 1200))) }
            Images.write (Path.Combine(temp.Path, "train", "x", "a.jpg")) flat
            Images.write (Path.Combine(temp.Path, "test", "x", "b.jpeg")) flat
            withBenchmark (ImageFolders.benchmark ImageOptions.defaults 2 temp.Path) (fun b ->
                Expect.equal b.InputShape (3, 30, 40) "own size"
                let worst = Array.map2 (fun (a: float32) e -> abs (a - e)) (floatsOf b.Train) (scaled flat.Pixels) |> Array.max
                Expect.isLessThan worst (4.0f / 255.0f) "JPEG is lossy but close on flat colour")
            withBenchmark (ImageFolders.benchmark { ImageOptions.defaults with Size = Some(16, 16) } 2 temp.Path) (fun b ->
                Expect.equal b.InputShape (3, 16, 16) "resized and cropped"
                let values = floatsOf b.Train
                Expect.floatClose Accuracy.low (float values.[0]) (60.0 / 255.0) "red plane"
                Expect.floatClose Accuracy.low (float values.[2 * 256]) (180.0 / 255.0) "blue plane")
        }

        test "one folder as one task: its class subfolders are the task's classes" {
            use temp = new TempFolder()
            twoClassGrayFolder temp.Path
            withBenchmark (ImageFolders.task ImageOptions.defaults temp.Path) (fun b ->
                Expect.equal b.ClassNames [ "a"; "b"; "c" ] "classes"
                Expect.equal b.Tasks [ { Index = 0; Classes = [ 0; 1; 2 ] } ] "one task")
        }
    ]

[<Tests>]
let tinyImageNetTests =
    testList "Data sources: Tiny ImageNet" [
        test "a small copy of Tiny ImageNet's layout reads as tasks of 20, 64x64x3, val as test" {
            use temp = new TempFolder()
            let wnids = writeTinyImageNet temp.Path 40 2 1 3
            withBenchmark (TinyImageNet.splitTinyImageNet ImageOptions.defaults temp.Path) (fun b ->
                Expect.equal b.Name "split-tinyimagenet" "name"
                Expect.equal b.InputShape (3, 64, 64) "shape"
                Expect.equal b.NumClasses 40 "classes"
                Expect.equal b.Tasks.Length 2 "classes / 20 tasks"
                Expect.equal b.Tasks.[1].Classes [ 20 .. 39 ] "wnids.txt order"
                Expect.equal b.ClassNames.[3] "thing 3, object 3" "words.txt names"
                Expect.equal b.Train.Count 80 "train images"
                Expect.equal b.Test.LabelArray [| 0 .. 39 |] "val labels from val_annotations.txt"
                Expect.equal wnids.Length 40 "generator")
        }

        test "the full 200 classes give Split Tiny ImageNet's 10 tasks of 20" {
            use temp = new TempFolder()
            writeTinyImageNet temp.Path 200 1 1 5 |> ignore
            withBenchmark (TinyImageNet.splitTinyImageNet ImageOptions.defaults temp.Path) (fun b ->
                Expect.equal b.Tasks.Length 10 "10 tasks"
                Expect.isTrue (b.Tasks |> List.forall (fun t -> t.Classes.Length = 20)) "of 20 classes"
                Expect.equal b.Test.Count 200 "one val image a class")
        }

        test "a class count that is not a multiple of 20 is refused, naming wnids.txt" {
            use temp = new TempFolder()
            writeTinyImageNet temp.Path 30 1 1 3 |> ignore
            expectDataError "wnids.txt" [ "30 classes"; "multiple of 20" ] (fun () -> TinyImageNet.splitTinyImageNet ImageOptions.defaults temp.Path |> Benchmarks.dispose)
        }

        test "a validation image of a class outside wnids.txt is refused, naming the line" {
            use temp = new TempFolder()
            writeTinyImageNet temp.Path 20 1 1 3 |> ignore
            File.AppendAllLines(Path.Combine(temp.Path, "val", "val_annotations.txt"), [ "val_0.JPEG\tn99999999\t0\t0\t1\t1" ])
            expectDataError "val/val_annotations.txt" [ "line 21"; "n99999999"; "never seen in training" ] (fun () ->
                TinyImageNet.splitTinyImageNet ImageOptions.defaults temp.Path |> Benchmarks.dispose)
        }
    ]


[<Tests>]
let tableTests =
    testList "Data sources: tables" [
        test "a CSV table reads features as written, labels by name, classes in numeric order" {
            use temp = new TempFolder()
            File.WriteAllText(Path.Combine(temp.Path, "train.csv"), "f1,label,f2\n0.5,10,1e-3\n-2,2,3.25\n\"7\",10,8\n\n")
            File.WriteAllText(Path.Combine(temp.Path, "test.csv"), "f1,label,f2\n1,2,2\n")
            withBenchmark (Tables.csvBenchmark Tables.defaults 1 temp.Path) (fun b ->
                Expect.equal b.ClassNames [ "2"; "10" ] "numeric order"
                Expect.equal b.InputShape (1, 1, 2) "shape"
                Expect.equal b.Tasks.Length 2 "one class a task"
                Expect.equal b.Train.LabelArray [| 1; 0; 1 |] "labels"
                Expect.equal (floatsOf b.Train) [| 0.5f; 1e-3f; -2.0f; 3.25f; 7.0f; 8.0f |] "features as written")
            File.WriteAllText(Path.Combine(temp.Path, "train.csv"), "cls,a\ncat,1\ndog,2\n")
            File.WriteAllText(Path.Combine(temp.Path, "test.csv"), "cls,a\ndog,3\n")
            withBenchmark (Tables.csvBenchmark { Tables.defaults with LabelColumn = "cls" } 2 temp.Path) (fun b ->
                Expect.equal b.ClassNames [ "cat"; "dog" ] "names"
                Expect.equal b.Test.LabelArray [| 1 |] "test label")
        }

        test "a CSV of pixel integers with scale 255 equals ofBytes exactly" {
            use temp = new TempFolder()
            let bytes = [| 0uy; 1uy; 127uy; 128uy; 254uy; 255uy |]
            let row = bytes |> Array.map string |> String.concat ","
            File.WriteAllText(Path.Combine(temp.Path, "train.csv"), "label,a,b,c,d,e,f\n0," + row + "\n")
            File.WriteAllText(Path.Combine(temp.Path, "test.csv"), "label,a,b,c,d,e,f\n0," + row + "\n")
            withBenchmark (Tables.csvBenchmark { Tables.defaults with Scale = Some 255.0 } 2 temp.Path) (fun b ->
                Expect.equal (floatsOf b.Train) (scaled bytes) "the IDX path")
        }

        test ".npy features (float32, float64, uint8) and labels (int64, int32, uint8) read back" {
            use temp = new TempFolder()
            let file name = Path.Combine(temp.Path, name)
            let f32 = [| 1.5f; -2.0f; 3.0f; 4.0f; 5.0f; 6.0f |]
            Tables.writeNpy (file "x_train.npy") "<f4" [ 3; 2 ] (f32 |> Array.collect (fun (v: float32) -> BitConverter.GetBytes v))
            Tables.writeNpy (file "y_train.npy") "<i8" [ 3 ] ([| 1L; 0L; 1L |] |> Array.collect (fun (v: int64) -> BitConverter.GetBytes v))
            Tables.writeNpy (file "x_test.npy") "<f8" [ 1; 2 ] ([| 0.25; 0.5 |] |> Array.collect (fun (v: float) -> BitConverter.GetBytes v))
            Tables.writeNpy (file "y_test.npy") "<i4" [ 1 ] (BitConverter.GetBytes 0)
            withBenchmark (Tables.npyBenchmark None 2 temp.Path) (fun b ->
                Expect.equal b.InputShape (1, 1, 2) "shape"
                Expect.equal b.ClassNames [ "0"; "1" ] "names"
                Expect.equal b.Train.LabelArray [| 1; 0; 1 |] "labels"
                Expect.equal (floatsOf b.Train) f32 "float32"
                Expect.equal (floatsOf b.Test) [| 0.25f; 0.5f |] "float64")
            Tables.writeNpy (file "x_train.npy") "|u1" [ 3; 1; 2; 1 ] [| 0uy; 255uy; 1uy; 2uy; 3uy; 4uy |]
            Tables.writeNpy (file "y_train.npy") "|u1" [ 3 ] [| 0uy; 1uy; 1uy |]
            Tables.writeNpy (file "x_test.npy") "|u1" [ 1; 1; 2; 1 ] [| 9uy; 9uy |]
            withBenchmark (Tables.npyBenchmark None 2 temp.Path) (fun b ->
                Expect.equal b.InputShape (1, 2, 1) "[n, c, h, w]"
                Expect.equal (floatsOf b.Train) (scaled [| 0uy; 255uy; 1uy; 2uy; 3uy; 4uy |]) "uint8 scaled as images")
        }

        test "more than 256 classes keep their labels" {
            use temp = new TempFolder()
            let rows = [ for c in 0 .. 299 -> sprintf "c%03d,%d" c c ]
            File.WriteAllLines(Path.Combine(temp.Path, "train.csv"), "label,v" :: rows)
            File.WriteAllLines(Path.Combine(temp.Path, "test.csv"), [ "label,v"; "c299,1" ])
            withBenchmark (Tables.csvBenchmark { Tables.defaults with Scale = Some 255.0 } 100 temp.Path) (fun b ->
                Expect.equal b.NumClasses 300 "classes"
                Expect.equal b.Train.LabelArray [| 0 .. 299 |] "labels past 255"
                Expect.equal (b.Train.Labels.data<int64>().ToArray()) [| 0L .. 299L |] "label tensor"
                Expect.equal b.Test.LabelArray [| 299 |] "test label"
                Expect.equal b.Tasks.Length 3 "tasks of 100")
        }

        test ".npy arrays of other kinds are refused clearly" {
            use temp = new TempFolder()
            let path = Path.Combine(temp.Path, "x.npy")
            Tables.writeNpy path ">f4" [ 1; 1 ] [| 0uy; 0uy; 0uy; 0uy |]
            expectDataError "x.npy" [ "big-endian" ] (fun () -> Tables.readNpyFeatures None path |> ignore)
            Tables.writeNpy path "<i2" [ 1; 1 ] [| 0uy; 0uy |]
            expectDataError "x.npy" [ "not supported" ] (fun () -> Tables.readNpyFeatures None path |> ignore)
            expectDataError "x.npy" [ "not supported" ] (fun () -> Tables.readNpyLabels path |> ignore)
            Tables.writeNpy path "<f4" [ 1; 1 ] [| 0uy; 0uy; 0uy; 0uy |]
            let text = Text.Encoding.Latin1.GetString(File.ReadAllBytes path)
            File.WriteAllBytes(path, Text.Encoding.Latin1.GetBytes(text.Replace("'fortran_order': False", "'fortran_order': True ")))
            expectDataError "x.npy" [ "Fortran order" ] (fun () -> Tables.readNpyFeatures None path |> ignore)
            File.WriteAllText(path, "not numpy")
            expectDataError "x.npy" [ "not a NumPy" ] (fun () -> Tables.readNpy path |> ignore)
        }

        test "Fashion-MNIST as CSV (integers with scale 255, or the scaled floats) equals the IDX data exactly" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use temp = new TempFolder()
            let idx = Benchmarks.splitMnistStyle "split-fmnist" fashionMnist |> fun full -> let s = Benchmarks.subsample 20 10 full in Benchmarks.dispose full; s
            try
                for (mode, options) in [ Integers, { Tables.defaults with Scale = Some 255.0 }; Scaled, Tables.defaults ] do
                    let folder = Path.Combine(temp.Path, string mode)
                    writeIdxAsCsv fashionMnist folder mode (Some 20) (Some 10) |> ignore
                    withBenchmark (Tables.csvBenchmark options 2 folder) (fun csv ->
                        Expect.equal csv.Tasks idx.Tasks (sprintf "%A: tasks" mode)
                        Expect.equal csv.Train.LabelArray idx.Train.LabelArray (sprintf "%A: train labels" mode)
                        Expect.equal csv.Test.LabelArray idx.Test.LabelArray (sprintf "%A: test labels" mode)
                        Expect.isTrue (floatsOf csv.Train = floatsOf idx.Train) (sprintf "%A: train inputs bit for bit" mode)
                        Expect.isTrue (floatsOf csv.Test = floatsOf idx.Test) (sprintf "%A: test inputs bit for bit" mode))
            finally Benchmarks.dispose idx
        }

        test "ER learns a Fashion-MNIST CSV stream to exactly the accuracies of the same data from IDX (seed 0)" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use temp = new TempFolder()
            writeIdxAsCsv fashionMnist temp.Path Integers (Some 100) (Some 50) |> ignore
            let idx = { Experiment.defaults "er" 200 with Data.Folder = fashionMnist; Data.TrainPerClass = Some 100; Data.TestPerClass = Some 50 }
            let csv =
                { idx with
                    Data = { idx.Data with Benchmark = "csv"; Folder = temp.Path; TrainPerClass = None; TestPerClass = None; Source = { idx.Data.Source with FeatureScale = Some 255.0 } } }
            let learn config =
                let result = Experiment.run config RunHooks.none Threading.CancellationToken.None
                try result.Outcome.ClassIl, result.Outcome.TaskIl finally Experiment.release result
            let idxClass, idxTask = learn idx
            let csvClass, csvTask = learn csv
            Expect.equal idxClass.Length 5 "five tasks learned"
            Expect.isGreaterThan (Array.last idxTask |> Array.average) 60.0 "the run learned something (Task-IL, percent)"
            Expect.equal csvClass idxClass "Class-IL matrices equal"
            Expect.equal csvTask idxTask "Task-IL matrices equal"
        }

        test "Fashion-MNIST's own images as PNG folders equal the IDX data exactly" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            use temp = new TempFolder()
            let names = Benchmarks.fashionMnistClassNames
            let folders = writeIdxAsImageFolders fashionMnist temp.Path names (Some 5) (Some 3) [ [ 0; 1; 2; 3 ]; [ 4; 5; 6 ]; [ 7; 8; 9 ] ]
            Expect.equal folders.Length 3 "three task folders"
            withBenchmark (ImageFolders.task ImageOptions.defaults folders.[1]) (fun b ->
                Expect.equal b.ClassNames [ "Coat"; "Sandal"; "Shirt" ] "names of task 2"
                Expect.equal b.InputShape (1, 28, 28) "shape"
                let trainImages, trainLabels, _, _ = readIdx fashionMnist
                let expected = [| for l in [ 4; 5; 6 ] do for i in firstPerClass (Some 5) trainLabels do if int trainLabels.[i] = l then yield! trainImages.Pixels.[i * 784 .. i * 784 + 783] |]
                Expect.equal (floatsOf b.Train) (scaled expected) "the IDX pixels")
        }
    ]

[<Tests>]
let manifestTests =
    testList "Data sources: manifests" [
        test "a YAML manifest over an image folder: tasks of unequal size in the user's class order" {
            use temp = new TempFolder()
            twoClassGrayFolder (Path.Combine(temp.Path, "images"))
            let path =
                writeManifest (Path.Combine(temp.Path, "stream.yaml"))
                    "name: mine\nsource:\n  images: images\ntasks:\n  - classes: [c]\n  - classes: [b, a]\n"
            withBenchmark (Manifest.benchmark ImageOptions.defaults Tables.defaults path) (fun b ->
                Expect.equal b.Name "mine" "name"
                Expect.equal b.ClassNames [ "c"; "b"; "a" ] "the user's order"
                Expect.equal b.Tasks [ { Index = 0; Classes = [ 0 ] }; { Index = 1; Classes = [ 1; 2 ] } ] "unequal tasks"
                Expect.equal b.Train.LabelArray [| 2; 1; 1; 0 |] "labels by the manifest's order")
        }

        test "a JSON manifest over a CSV source, leaving out a class no task names" {
            use temp = new TempFolder()
            Directory.CreateDirectory(Path.Combine(temp.Path, "t")) |> ignore
            File.WriteAllText(Path.Combine(temp.Path, "t", "train.csv"), "y,v\ncat,1\ndog,2\nemu,3\n")
            File.WriteAllText(Path.Combine(temp.Path, "t", "test.csv"), "y,v\ndog,4\n")
            let path = writeManifest (Path.Combine(temp.Path, "stream.json")) """{"source": {"csv": "t", "label": "y", "scale": 2}, "tasks": [{"classes": ["dog"]}, {"classes": ["cat"]}]}"""
            withBenchmark (Manifest.benchmark ImageOptions.defaults Tables.defaults path) (fun b ->
                Expect.equal b.Name "stream" "the file's name"
                Expect.equal b.ClassNames [ "dog"; "cat" ] "classes"
                Expect.equal b.Train.LabelArray [| 1; 0 |] "emu left out"
                Expect.equal (floatsOf b.Train) [| 0.5f; 1.0f |] "scaled by 2")
        }

        test "a manifest of one folder per task" {
            use temp = new TempFolder()
            writeImageFolder (Path.Combine(temp.Path, "week1")) [ "train", "a", [ grayImage 4 4 1 ]; "train", "b", [ grayImage 4 4 2 ]; "test", "a", [ grayImage 4 4 3 ] ]
            writeImageFolder (Path.Combine(temp.Path, "week2")) [ "train", "c", [ grayImage 4 4 4 ]; "test", "c", [ grayImage 4 4 5 ] ]
            let path = writeManifest (Path.Combine(temp.Path, "m.yml")) "tasks:\n  - folder: week1\n  - folder: week2\n"
            withBenchmark (Manifest.benchmark ImageOptions.defaults Tables.defaults path) (fun b ->
                Expect.equal b.ClassNames [ "a"; "b"; "c" ] "classes"
                Expect.equal b.Tasks [ { Index = 0; Classes = [ 0; 1 ] }; { Index = 1; Classes = [ 2 ] } ] "one task a folder"
                Expect.equal b.Test.LabelArray [| 0; 2 |] "test labels"
                Expect.equal (floatsOf b.Train) (scaled (Array.concat [ (grayImage 4 4 1).Pixels; (grayImage 4 4 2).Pixels; (grayImage 4 4 4).Pixels ])) "pixels")
        }

        test "manifest errors name the manifest, the line and the entry" {
            use temp = new TempFolder()
            twoClassGrayFolder (Path.Combine(temp.Path, "images"))
            let check (text: string) (fragments: string list) =
                let path = writeManifest (Path.Combine(temp.Path, "bad.yaml")) text
                expectDataError "bad.yaml" fragments (fun () -> Manifest.benchmark ImageOptions.defaults Tables.defaults path |> Benchmarks.dispose)
            check "source: {images: images}\ntasks:\n  - classes: [a]\n    colour: red\n" [ "line 4"; "task 1"; "unknown key 'colour'" ]
            check "source: {images: images}\ntask:\n  - classes: [a]\n" [ "unknown key 'task'" ]
            check "source: {images: images}\ntasks:\n  - classes: [a]\n  - classes: [zebra]\n" [ "task 2"; "'zebra' is not in" ]
            check "source: {images: images}\ntasks:\n  - classes: [a, b]\n  - classes: [c, a]\n" [ "line 4"; "task 2"; "'a' is already in task 1" ]
            check "source: {images: images}\ntasks:\n  - classes: [a]\n  - classes: []\n" [ "line 4"; "task 2"; "empty" ]
            check "source: {images: images}\ntasks: []\n" [ "tasks is empty" ]
            check "tasks:\n  - classes: [a]\n" [ "needs a source" ]
            check "tasks: [\n" [ "not valid YAML or JSON" ]
        }
    ]

[<Tests>]
let badInputTests =
    testList "Data sources: bad input" [
        test "a corrupt image is refused, naming the image" {
            use temp = new TempFolder()
            twoClassGrayFolder temp.Path
            let bad = Path.Combine(temp.Path, "train", "b", "001.png")
            let bytes = File.ReadAllBytes bad
            File.WriteAllBytes(bad, bytes.[.. bytes.Length / 2])
            expectDataError "train/b/001.png" [ "cannot be decoded" ] (fun () -> ImageFolders.benchmark ImageOptions.defaults 2 temp.Path |> Benchmarks.dispose)
            File.WriteAllText(bad, "not an image at all")
            expectDataError "train/b/001.png" [ "cannot be decoded" ] (fun () -> ImageFolders.benchmark ImageOptions.defaults 2 temp.Path |> Benchmarks.dispose)
        }

        test "images of mixed sizes without a target size are refused, naming the image; a size accepts them" {
            use temp = new TempFolder()
            twoClassGrayFolder temp.Path
            Images.write (Path.Combine(temp.Path, "train", "c", "099.png")) (grayImage 7 8 1)
            expectDataError "train/c/099.png" [ "7x8"; "6x8"; "--image-size" ] (fun () -> ImageFolders.benchmark ImageOptions.defaults 2 temp.Path |> Benchmarks.dispose)
            withBenchmark (ImageFolders.benchmark { ImageOptions.defaults with Size = Some(6, 8) } 2 temp.Path) (fun b -> Expect.equal b.InputShape (1, 6, 8) "resized")
        }

        test "images of mixed channel counts in auto colour are refused, naming the image" {
            use temp = new TempFolder()
            twoClassGrayFolder temp.Path
            Images.write (Path.Combine(temp.Path, "test", "a", "099.png")) (rgbImage 6 8 1)
            expectDataError "test/a/099.png" [ "3 channels"; "--colour" ] (fun () -> ImageFolders.benchmark ImageOptions.defaults 2 temp.Path |> Benchmarks.dispose)
            withBenchmark (ImageFolders.benchmark { ImageOptions.defaults with Colour = ColourMode.Gray } 2 temp.Path) (fun b -> Expect.equal b.InputShape (1, 6, 8) "gray")
        }

        test "an empty class folder is refused, naming it" {
            use temp = new TempFolder()
            twoClassGrayFolder temp.Path
            Directory.CreateDirectory(Path.Combine(temp.Path, "train", "d")) |> ignore
            File.WriteAllText(Path.Combine(temp.Path, "train", "d", "notes.txt"), "no images here")
            expectDataError "train/d" [ "empty class folder" ] (fun () -> ImageFolders.benchmark ImageOptions.defaults 2 temp.Path |> Benchmarks.dispose)
        }

        test "a CSV with a non-numeric cell is refused, naming the line and the column" {
            use temp = new TempFolder()
            File.WriteAllText(Path.Combine(temp.Path, "train.csv"), "label,a,b\n0,1,2\n1,3,x7\n")
            File.WriteAllText(Path.Combine(temp.Path, "test.csv"), "label,a,b\n0,1,2\n")
            expectDataError "train.csv" [ "line 3"; "column 3 ('b')"; "'x7' is not a number" ] (fun () -> Tables.csvBenchmark Tables.defaults 2 temp.Path |> Benchmarks.dispose)
        }

        test "a ragged CSV row is refused, naming the line" {
            use temp = new TempFolder()
            File.WriteAllText(Path.Combine(temp.Path, "train.csv"), "label,a,b\n0,1,2\n1,3,4\n")
            File.WriteAllText(Path.Combine(temp.Path, "test.csv"), "label,a,b\n0,1,2\n1,3\n")
            expectDataError "test.csv" [ "line 3"; "2 cells"; "3 columns" ] (fun () -> Tables.csvBenchmark Tables.defaults 2 temp.Path |> Benchmarks.dispose)
        }

        test "a test label never seen in training is refused, naming the file or the folder" {
            use temp = new TempFolder()
            File.WriteAllText(Path.Combine(temp.Path, "train.csv"), "label,a\n0,1\n1,3\n")
            File.WriteAllText(Path.Combine(temp.Path, "test.csv"), "label,a\n0,1\n7,3\n")
            expectDataError "test.csv" [ "class '7'"; "never appears in training" ] (fun () -> Tables.csvBenchmark Tables.defaults 2 temp.Path |> Benchmarks.dispose)
            let images = Path.Combine(temp.Path, "images")
            twoClassGrayFolder images
            writeImageFolder images [ "test", "zebra", [ grayImage 6 8 1 ] ]
            expectDataError "test/zebra" [ "class 'zebra'"; "no training folder" ] (fun () -> ImageFolders.benchmark ImageOptions.defaults 2 images |> Benchmarks.dispose)
        }

        test "the same class name in two tasks is refused, naming the manifest (folder tasks too)" {
            use temp = new TempFolder()
            writeImageFolder (Path.Combine(temp.Path, "w1")) [ "train", "a", [ grayImage 4 4 1 ]; "test", "a", [ grayImage 4 4 3 ] ]
            writeImageFolder (Path.Combine(temp.Path, "w2")) [ "train", "a", [ grayImage 4 4 4 ]; "test", "a", [ grayImage 4 4 5 ] ]
            let path = writeManifest (Path.Combine(temp.Path, "m.yaml")) "tasks:\n  - folder: w1\n  - folder: w2\n"
            expectDataError "m.yaml" [ "line 3"; "task 2"; "class 'a' is already in task 1" ] (fun () -> Manifest.benchmark ImageOptions.defaults Tables.defaults path |> Benchmarks.dispose)
        }
    ]

[<Tests>]
let wiringTests =
    testList "Data sources: configuration and CLI" [
        test "source settings survive the configuration's JSON round trip; defaults are not written" {
            let d = Experiment.defaults "er" 200
            Expect.isFalse ((Config.toJson d).Contains "colour") "defaults leave the JSON as it was"
            let c =
                { d with
                    Data =
                        { d.Data with
                            Benchmark = "folder"
                            Source = { ImageSize = Some(32, 48); Colour = "rgb"; ClassesPerTask = Some 3; LabelColumn = "y"; FeatureScale = Some 255.0; Normalise = "0.5,0.4,0.3/0.2,0.2,0.2" } } }
            use doc = Text.Json.JsonDocument.Parse(Config.toJson c)
            Expect.equal (Config.ofJson doc.RootElement) c "round trip"
        }

        test "--normalise train normalises an image folder by its training set; given values must fit the channels" {
            use temp = new TempFolder()
            writeImageFolder temp.Path
                [ for c in [ "a"; "b" ] do
                    yield "train", c, [ for i in 0 .. 5 -> rgbImage 4 4 (i * 11 + (if c = "a" then 0 else 100)) ]
                    yield "test", c, [ rgbImage 4 4 (if c = "a" then 7 else 120) ] ]
            let d = Experiment.defaults "sgd" 0
            let withNormalise text =
                { d with Data = { d.Data with Benchmark = "folder"; Folder = temp.Path; Source = { d.Data.Source with Normalise = text } } }
            withBenchmark (Experiment.loadBenchmark (withNormalise "train")) (fun b ->
                let n = Expect.wantSome b.Train.Normalisation "the training set carries its normalisation"
                Expect.equal b.Test.Normalisation b.Train.Normalisation "the test set uses the training values"
                Expect.equal n.Mean.Length 3 "one mean per channel"
                use all = b.Train.AllInputs()
                use perChannel = all.reshape(int64 b.Train.Count, 3L, -1L)
                use means = perChannel.mean([| 0L; 2L |])
                for m in means.data<float32>().ToArray() do
                    Expect.isLessThan (abs m) 1e-5f "each training channel is centred")
            withBenchmark (Experiment.loadBenchmark (withNormalise "0.5,0.5,0.5/0.25,0.25,0.25")) (fun b ->
                use raw = { b.Train with Normalisation = None }.InputRange(0L, 1L)
                use normalised = b.Train.InputRange(0L, 1L)
                use expected = raw.sub(Scalars.cached 0.5).div(Scalars.cached 0.25)
                Expect.isTrue (normalised.allclose(expected, 0.0, 1e-6)) "(x - mean) / std")
            try
                Experiment.loadBenchmark (withNormalise "0.5/0.25") |> Benchmarks.dispose
                failtest "one value for three channels must be refused"
            with InvalidConfiguration errors ->
                Expect.stringContains (errors.Head.Message) "3 channels" "names the channel count"
            Expect.isNonEmpty (Experiment.validate (withNormalise "0.5/0")) "a zero standard deviation is refused"
            Expect.isNonEmpty (Experiment.validate (withNormalise "bright")) "an unknown value is refused"
            Expect.isNonEmpty (Experiment.validate { withNormalise "train" with Data = { (withNormalise "train").Data with Benchmark = "split-fmnist" } }) "--normalise applies to image sources only"
        }

        test "bad data options are usage errors (exit 2)" {
            use temp = new TempFolder()
            for (args, fragment) in
                [ [ "--benchmark"; "folder"; "--data"; temp.Path; "--image-size"; "big" ], "--image-size"
                  [ "--benchmark"; "folder"; "--data"; temp.Path; "--colour"; "purple" ], "colour"
                  [ "--benchmark"; "folder"; "--data"; temp.Path; "--classes-per-task"; "0" ], "classes per task"
                  [ "--benchmark"; "folder" ], "--data"
                  [ "--benchmark"; "split-fmnist"; "--image-size"; "32" ], "--image-size does not apply to split-fmnist"
                  [ "--benchmark"; "split-tinyimagenet"; "--data"; temp.Path; "--classes-per-task"; "5" ], "--classes-per-task does not apply"
                  [ "--benchmark"; "csv"; "--data"; Path.Combine(temp.Path, "none") ], "not found" ] do
                let code, _, errors = CliProcess.execute ("run" :: "--quiet" :: "--out" :: Path.Combine(temp.Path, "out") :: args) []
                Expect.equal code 2 (sprintf "%A: exit 2 (%s)" args errors)
                Expect.stringContains errors fragment "the message"
        }

        test "bad data ends in one line naming the file and exit 1" {
            use temp = new TempFolder()
            File.WriteAllText(Path.Combine(temp.Path, "train.csv"), "label,a\n0,1\n1,oops\n")
            File.WriteAllText(Path.Combine(temp.Path, "test.csv"), "label,a\n0,1\n")
            let code, _, errors = CliProcess.execute [ "run"; "--quiet"; "--benchmark"; "csv"; "--data"; temp.Path; "--strategy"; "sgd"; "--out"; Path.Combine(temp.Path, "out") ] []
            Expect.equal code 1 (sprintf "exit 1 (%s)" errors)
            Expect.stringContains errors "train.csv: line 3, column 2" "names the file, line and column"
            Expect.isFalse (File.Exists(Path.Combine(temp.Path, "out", "results.json"))) "nothing written"
        }

        test "continual run --benchmark split-tinyimagenet --backbone resnet18 runs end to end on a small copy" {
            use temp = new TempFolder()
            let data = Path.Combine(temp.Path, "tiny")
            writeTinyImageNet data 40 3 1 7 |> ignore
            let out = Path.Combine(temp.Path, "out")
            let code, output, errors =
                CliProcess.execute
                    [ "run"; "--quiet"; "--benchmark"; "split-tinyimagenet"; "--backbone"; "resnet18"; "--data"; data
                      "--strategy"; "er"; "--buffer"; "20"; "--epochs"; "1"; "--batch-size"; "10"; "--out"; out ] []
            Expect.equal code 0 (sprintf "exit 0\n%s\n%s" output errors)
            let results = File.ReadAllText(Path.Combine(out, "results.json"))
            Expect.stringContains results "split-tinyimagenet" "results name the benchmark"
            Expect.isTrue (File.Exists(Path.Combine(out, "task-2.onnx"))) "each task's model is exported"
        }
    ]
