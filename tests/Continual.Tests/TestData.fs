/// Small data sets written in the real IDX format, for tests.
module Continual.Tests.TestData

open System
open System.IO
open Continual.Data

/// A fresh temporary folder, deleted when disposed.
type TempFolder() =
    let path = Path.Combine(Path.GetTempPath(), "continual-tests-" + Guid.NewGuid().ToString("N"))
    do Directory.CreateDirectory path |> ignore
    member _.Path = path
    interface IDisposable with
        member _.Dispose() = try Directory.Delete(path, true) with _ -> ()

/// Synthetic 28x28 images whose class is easy to learn: class c lights a horizontal band of rows.
let syntheticImages (seed: int) (labels: byte[]) : IdxImages =
    let rng = Random(seed)
    let pixels = Array.zeroCreate<byte> (labels.Length * 784)
    labels |> Array.iteri (fun i label ->
        for p in 0 .. 783 do
            let row = p / 28
            let inBand = row >= int label * 2 + 4 && row < int label * 2 + 6
            pixels.[i * 784 + p] <- byte (if inBand then 160 + rng.Next 96 else rng.Next 40))
    { Count = labels.Length; Rows = 28; Cols = 28; Pixels = pixels }

/// Labels 0..9 repeated, `perClass` of each.
let balancedLabels (perClass: int) : byte[] =
    Array.init (perClass * 10) (fun i -> byte (i % 10))

/// Writes an MNIST-style folder (four gzip IDX files) of synthetic data.
let writeSyntheticFolder (folder: string) (trainPerClass: int) (testPerClass: int) =
    let trainLabels = balancedLabels trainPerClass
    let testLabels = balancedLabels testPerClass
    Idx.writeImages (Path.Combine(folder, "train-images-idx3-ubyte.gz")) (syntheticImages 1 trainLabels)
    Idx.writeLabels (Path.Combine(folder, "train-labels-idx1-ubyte.gz")) trainLabels
    Idx.writeImages (Path.Combine(folder, "t10k-images-idx3-ubyte.gz")) (syntheticImages 2 testLabels)
    Idx.writeLabels (Path.Combine(folder, "t10k-labels-idx1-ubyte.gz")) testLabels

/// Where Debian's package puts Fashion-MNIST (the real data the end-to-end tests use).
let fashionMnist = Benchmarks.defaultFashionMnistFolder

/// True when the real Fashion-MNIST files are present.
let hasFashionMnist () =
    Benchmarks.idxFileNames |> List.forall (fun n -> File.Exists(Path.Combine(fashionMnist, n + ".gz")) || File.Exists(Path.Combine(fashionMnist, n)))

/// Every strategy, every importance penalty (on DER++) and every distillation term (on SGD; the relation
/// graph, which reads buffer draws, on ER), each once, plus LwF with KD: `make strategy buffer` builds each
/// configuration, with `buffer` examples for the methods that keep a memory.
let everyMethod (make: string -> int -> Continual.Config) (buffer: int) : (string * Continual.Config) list =
    [ for name in Continual.Experiment.strategyNames do
          yield name, make name (if List.contains name [ "er"; "der"; "derpp"; "icarl" ] then buffer else 0)
      for penalty in Continual.Experiment.importanceNames do
          yield sprintf "derpp + %s" penalty, make "derpp" buffer |> Continual.Experiment.withPenalty (Some penalty)
      for (kind, name) in Continual.Methods.DistillationKind.all do
          let baseName = if name = "relation" then "er" else "sgd"
          yield sprintf "%s + %s" baseName name, make baseName (if baseName = "er" then buffer else 0) |> Continual.Experiment.withDistillation kind
      yield "lwf + kd", make "lwf" 0 |> Continual.Experiment.withDistillation Continual.Methods.Kd ]

/// The repository's root: the first folder above the test binary that holds Continual.sln.
let repositoryRoot =
    lazy
        (let rec up (folder: DirectoryInfo) =
            if isNull folder then failwith "no folder above the test binary holds Continual.sln"
            elif File.Exists(Path.Combine(folder.FullName, "Continual.sln")) then folder.FullName
            else up folder.Parent
         up (DirectoryInfo AppContext.BaseDirectory))
