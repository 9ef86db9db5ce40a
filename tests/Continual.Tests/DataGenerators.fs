/// Writers of real data files in the user-facing formats (PNG/JPEG image folders, Tiny ImageNet's
/// layout, CSV tables, .npy arrays, manifests), for the data-source tests and the acceptance tests.
module Continual.Tests.DataGenerators

open System
open System.Globalization
open System.IO
open System.Text
open Continual.Data

/// A folder-safe class name (Fashion-MNIST's "T-shirt/top" becomes "T-shirt-top").
let folderName (className: string) = className.Replace('/', '-').Replace('\\', '-')

/// The IDX images and labels of an MNIST-style folder: train images, train labels, test images,
/// test labels.
let readIdx (idxFolder: string) =
    let paths = Benchmarks.idxFileNames |> List.map (Benchmarks.findIdxFile idxFolder)
    Idx.readImages paths.[0], Idx.readLabels paths.[1], Idx.readImages paths.[2], Idx.readLabels paths.[3]

/// The indices of the first `perClass` examples of each label, in the original order (what
/// `Benchmarks.takePerClass` keeps, so `--train-per-class N` on the IDX files selects the same examples).
let firstPerClass (perClass: int option) (labels: byte[]) : int[] =
    let counts = Array.zeroCreate 256
    [| for i in 0 .. labels.Length - 1 do
           let l = int labels.[i]
           counts.[l] <- counts.[l] + 1
           match perClass with
           | Some n when counts.[l] > n -> ()
           | _ -> i |]

/// Writes one 28 × 28 grayscale IDX image as a PNG (lossless: decoding gives the same bytes).
let private writeIdxImage (images: IdxImages) (i: int) (path: string) =
    let size = images.Rows * images.Cols
    Images.write path { Channels = 1; Height = images.Rows; Width = images.Cols; Pixels = images.Pixels.[i * size .. (i + 1) * size - 1] }

/// Writes Fashion-MNIST's own images (from its IDX files) as PNG image folders, one folder per task:
/// OUT/task-<k>/train/<class>/<index>.png and OUT/task-<k>/test/<class>/<index>.png, where `tasks`
/// lists the labels of each task and class folders are named after `classNames` (folder-safe). At most
/// `trainPerClass` / `testPerClass` images per class (the first ones). Returns the task folders.
let writeIdxAsImageFolders (idxFolder: string) (out: string) (classNames: string list) (trainPerClass: int option) (testPerClass: int option) (tasks: int list list) : string list =
    let trainImages, trainLabels, testImages, testLabels = readIdx idxFolder
    [ for (k, labels) in List.indexed tasks do
          let taskFolder = Path.Combine(out, sprintf "task-%d" (k + 1))
          for (split, images, allLabels, limit) in [ "train", trainImages, trainLabels, trainPerClass; "test", testImages, testLabels, testPerClass ] do
              for i in firstPerClass limit allLabels do
                  let l = int allLabels.[i]
                  if List.contains l labels then
                      writeIdxImage images i (Path.Combine(taskFolder, split, folderName classNames.[l], sprintf "%05d.png" i))
          taskFolder ]

/// The same images as ONE image folder (OUT/train/<class>/, OUT/test/<class>/).
let writeIdxAsImageFolder (idxFolder: string) (out: string) (classNames: string list) (trainPerClass: int option) (testPerClass: int option) =
    let trainImages, trainLabels, testImages, testLabels = readIdx idxFolder
    for (split, images, allLabels, limit) in [ "train", trainImages, trainLabels, trainPerClass; "test", testImages, testLabels, testPerClass ] do
        for i in firstPerClass limit allLabels do
            writeIdxImage images i (Path.Combine(out, split, folderName classNames.[int allLabels.[i]], sprintf "%05d.png" i))

/// How a CSV written from IDX data holds its pixels.
type CsvPixels =
    /// Integers 0-255 as in the IDX file (read with --feature-scale 255: bytes, scaled as IDX is).
    | Integers
    /// The very floats the IDX reader makes (pixel / 255 in float32), written to round-trip exactly.
    | Scaled

/// The 256 values Benchmarks.ofBytes makes of the bytes 0-255 (taken from its tensor).
let scaledBytes : Lazy<float32[]> =
    lazy
        (let set = Benchmarks.ofBytes (Array.init 256 byte) 1 (Array.zeroCreate 256)
         let values = (use all = set.AllInputs() in all.data<float32>().ToArray())
         set.Dispose()
         values)

/// Writes OUT/train.csv and OUT/test.csv from an MNIST-style IDX folder: a header "label,p0,...",
/// then one image a line in the IDX order (the first `perClass` of each class when given), the label
/// as its number. Returns the two paths.
let writeIdxAsCsv (idxFolder: string) (out: string) (pixels: CsvPixels) (trainPerClass: int option) (testPerClass: int option) =
    let trainImages, trainLabels, testImages, testLabels = readIdx idxFolder
    let scaled = scaledBytes.Value
    let write (path: string) (images: IdxImages) (labels: byte[]) (limit: int option) =
        let size = images.Rows * images.Cols
        let builder = StringBuilder()
        builder.Append("label").Append(String.Join("", [| for p in 0 .. size - 1 -> sprintf ",p%d" p |])).Append('\n') |> ignore
        for i in firstPerClass limit labels do
            builder.Append(int labels.[i]) |> ignore
            for p in 0 .. size - 1 do
                let b = images.Pixels.[i * size + p]
                builder.Append(',') |> ignore
                match pixels with
                | Integers -> builder.Append(int b) |> ignore
                | Scaled ->
                    // The value ofBytes computes, taken from the tensor so that no rounding can differ.
                    builder.Append(scaled.[int b].ToString("R", CultureInfo.InvariantCulture)) |> ignore
            builder.Append('\n') |> ignore
        Directory.CreateDirectory out |> ignore
        File.WriteAllText(path, builder.ToString())
    let trainPath = Path.Combine(out, Tables.csvTrainFile)
    let testPath = Path.Combine(out, Tables.csvTestFile)
    write trainPath trainImages trainLabels trainPerClass
    write testPath testImages testLabels testPerClass
    trainPath, testPath

/// A 64 × 64 RGB image of class `c`: a class-specific colour and stripe pattern plus noise (learnable).
let tinyImage (rng: Random) (c: int) : DecodedImage =
    let plane = 64 * 64
    let pixels = Array.zeroCreate<byte> (3 * plane)
    let colour = [| (c * 97) % 256; (c * 57 + 80) % 256; (c * 31 + 160) % 256 |]
    for ch in 0 .. 2 do
        for y in 0 .. 63 do
            for x in 0 .. 63 do
                let stripe = ((x + y * (c % 3)) / (4 + c % 5)) % 2 = 0
                let v = (if stripe then colour.[ch] else 255 - colour.[ch]) + rng.Next(-20, 21)
                pixels.[ch * plane + y * 64 + x] <- byte (max 0 (min 255 v))
    { Channels = 3; Height = 64; Width = 64; Pixels = pixels }

/// Writes a small copy of Tiny ImageNet's layout with JPEG files: `classes` wnids (n00000000 ...),
/// wnids.txt, words.txt, train/<wnid>/images/<wnid>_<i>.JPEG (and a boxes file, as the original),
/// val/images/val_<i>.JPEG with val/val_annotations.txt. One training image of the first class is
/// grayscale, as a few of Tiny ImageNet's are. Returns the wnids.
let writeTinyImageNet (out: string) (classes: int) (trainPerClass: int) (valPerClass: int) (seed: int) : string list =
    let rng = Random seed
    let wnids = [ for c in 0 .. classes - 1 -> sprintf "n%08d" (1000 + c) ]
    Directory.CreateDirectory out |> ignore
    File.WriteAllLines(Path.Combine(out, "wnids.txt"), wnids)
    File.WriteAllLines(Path.Combine(out, "words.txt"), [ for (c, w) in List.indexed wnids -> sprintf "%s\tthing %d, object %d" w c c ])
    for (c, w) in List.indexed wnids do
        let folder = Path.Combine(out, "train", w, "images")
        Directory.CreateDirectory folder |> ignore
        for i in 0 .. trainPerClass - 1 do
            let image = tinyImage rng c
            let image =
                if c = 0 && i = 0 then { Channels = 1; Height = 64; Width = 64; Pixels = image.Pixels.[.. 64 * 64 - 1] }
                else image
            Images.write (Path.Combine(folder, sprintf "%s_%d.JPEG" w i)) image
        File.WriteAllLines(Path.Combine(out, "train", w, w + "_boxes.txt"), [ for i in 0 .. trainPerClass - 1 -> sprintf "%s_%d.JPEG\t0\t0\t63\t63" w i ])
    let valImages = Path.Combine(out, "val", "images")
    Directory.CreateDirectory valImages |> ignore
    let annotations =
        [ for i in 0 .. classes * valPerClass - 1 do
              let c = i % classes
              Images.write (Path.Combine(valImages, sprintf "val_%d.JPEG" i)) (tinyImage rng c)
              yield sprintf "val_%d.JPEG\t%s\t0\t0\t63\t63" i wnids.[c] ]
    File.WriteAllLines(Path.Combine(out, "val", "val_annotations.txt"), annotations)
    wnids

/// Writes a small image folder of synthetic images: for each (split, class, images) the images as
/// PNG files OUT/split/class/<i>.png.
let writeImageFolder (out: string) (content: (string * string * DecodedImage list) list) =
    for (split, className, images) in content do
        for (i, image) in List.indexed images do
            Images.write (Path.Combine(out, split, className, sprintf "%03d.png" i)) image

/// A grayscale image whose pixel (y, x) is (seed + 7y + 3x) mod 256.
let grayImage (height: int) (width: int) (seed: int) : DecodedImage =
    { Channels = 1; Height = height; Width = width; Pixels = Array.init (height * width) (fun p -> byte ((seed + 7 * (p / width) + 3 * (p % width)) % 256)) }

/// An RGB image whose channel planes differ: (seed + 50c + 5y + x) mod 256.
let rgbImage (height: int) (width: int) (seed: int) : DecodedImage =
    let plane = height * width
    { Channels = 3; Height = height; Width = width; Pixels = Array.init (3 * plane) (fun i -> let c, p = i / plane, i % plane in byte ((seed + 50 * c + 5 * (p / width) + p % width) % 256)) }

/// Writes a manifest file's text.
let writeManifest (path: string) (text: string) =
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath path)) |> ignore
    File.WriteAllText(path, text)
    path
