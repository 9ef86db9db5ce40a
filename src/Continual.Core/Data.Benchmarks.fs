namespace Continual.Data

open System.IO
open Continual
open TorchSharp

/// Labelled examples held as tensors: inputs flattened to [n, features] in [0, 1], labels int64 [n].
type LabelledSet =
    { Inputs: Tensor
      Labels: Tensor
      /// The labels as a plain array, for selecting by class without touching tensors.
      LabelArray: int[] }
    member this.Count = this.LabelArray.Length
    /// Frees the set's tensors.
    member this.Dispose() =
        this.Inputs.Dispose()
        this.Labels.Dispose()

/// One task of a split benchmark: the classes it brings.
type TaskSpec =
    { Index: int
      Classes: int list }

/// A class-incremental benchmark: train and test sets, and the stream of tasks over their classes.
type Benchmark =
    { Name: string
      /// Channels, height and width of one input; inputs are stored flattened.
      InputShape: int * int * int
      NumClasses: int
      /// The name of every class, by class index (what results and ONNX metadata report).
      ClassNames: string list
      Train: LabelledSet
      Test: LabelledSet
      Tasks: TaskSpec list }
    /// The task that brings a class, by class index.
    member this.TaskOfClass =
        let map = Array.create this.NumClasses -1
        for t in this.Tasks do
            for c in t.Classes do
                map.[c] <- t.Index
        map

/// Loading benchmarks from standard files.
[<RequireQualifiedAccess>]
module Benchmarks =

    /// Where Debian's dataset-fashion-mnist package installs the Fashion-MNIST IDX files.
    let defaultFashionMnistFolder = "/usr/share/datasets/fashion-mnist"

    /// The names of the four IDX files of an MNIST-style folder (each may also end in .gz).
    let idxFileNames =
        [ "train-images-idx3-ubyte"; "train-labels-idx1-ubyte"; "t10k-images-idx3-ubyte"; "t10k-labels-idx1-ubyte" ]

    /// The path of one IDX file in a folder, plain or gzip, failing clearly when neither is there.
    let findIdxFile (folder: string) (name: string) =
        DataFiles.checkFolder folder
        let plain = Path.Combine(folder, name)
        let gz = plain + ".gz"
        let found =
            if DataFiles.exists gz then gz
            elif DataFiles.exists plain then plain
            else raise (DataFileError(plain, "file not found (nor with .gz); an MNIST-style folder holds " + String.concat ", " idxFileNames))
        DataFiles.checkReadable found
        found

    /// A labelled set from raw bytes: `labels.Length` examples of `features` pixel bytes each, one after
    /// another, scaled to [0, 1].
    let ofBytes (pixels: byte[]) (features: int) (labels: byte[]) : LabelledSet =
        let inputs =
            use bytes = torch.tensor(pixels, dtype = torch.ScalarType.Byte).reshape(int64 labels.Length, int64 features)
            use asFloat = bytes.to_type torch.ScalarType.Float32
            asFloat.div((255.0f).ToScalar())
        let labelArray = labels |> Array.map int
        { Inputs = inputs
          Labels = torch.tensor(labelArray |> Array.map int64, dtype = torch.ScalarType.Int64)
          LabelArray = labelArray }

    /// A labelled set from floats: `labels.Length` examples of `featureCount` values each, one after
    /// another, kept as they are (feature tables are not scaled).
    // Also added on another branch with the same signature; the two are reconciled at merge.
    let ofFloats (features: float32[]) (featureCount: int) (labels: int[]) : LabelledSet =
        if features.Length <> labels.Length * featureCount then
            invalidArg (nameof features) (sprintf "%d examples of %d features need %d values (got %d)" labels.Length featureCount (labels.Length * featureCount) features.Length)
        { Inputs = torch.tensor(features, dtype = torch.ScalarType.Float32).reshape(int64 labels.Length, int64 featureCount)
          Labels = torch.tensor(labels |> Array.map int64, dtype = torch.ScalarType.Int64)
          LabelArray = Array.copy labels }

    let private toSet (imagesPath: string) (labelsPath: string) (images: IdxImages) (labels: byte[]) (numClasses: int) =
        if images.Count <> labels.Length then
            raise (DataFileError(labelsPath, sprintf "%d labels but %s holds %d images" labels.Length (Path.GetFileName imagesPath) images.Count))
        match labels |> Array.tryFindIndex (fun l -> int l >= numClasses) with
        | Some i -> raise (DataFileError(labelsPath, sprintf "label %d at index %d is out of range 0..%d" labels.[i] i (numClasses - 1)))
        | None -> ()
        ofBytes images.Pixels (images.Rows * images.Cols) labels

    /// Reads the four IDX files of an MNIST-style folder (MNIST, Fashion-MNIST). Every file is
    /// checked before any tensor is made.
    let readIdxFolder (folder: string) (numClasses: int) : LabelledSet * LabelledSet * (int * int) =
        let paths = idxFileNames |> List.map (findIdxFile folder)
        let trainImages = Idx.readImages paths.[0]
        let trainLabels = Idx.readLabels paths.[1]
        let testImages = Idx.readImages paths.[2]
        let testLabels = Idx.readLabels paths.[3]
        if trainImages.Count = 0 then raise (DataFileError(paths.[0], "holds 0 images: the training set is empty"))
        if testImages.Count = 0 then raise (DataFileError(paths.[2], "holds 0 images: the test set is empty"))
        if (testImages.Rows, testImages.Cols) <> (trainImages.Rows, trainImages.Cols) then
            raise (DataFileError(paths.[2], sprintf "images are %dx%d but the training images are %dx%d" testImages.Rows testImages.Cols trainImages.Rows trainImages.Cols))
        let train = toSet paths.[0] paths.[1] trainImages trainLabels numClasses
        let test = toSet paths.[2] paths.[3] testImages testLabels numClasses
        train, test, (trainImages.Rows, trainImages.Cols)

    /// Splits classes 0 .. numClasses-1 into consecutive tasks of classesPerTask classes, in label order.
    let splitTasks (numClasses: int) (classesPerTask: int) : TaskSpec list =
        if classesPerTask <= 0 || numClasses % classesPerTask <> 0 then
            invalidArg (nameof classesPerTask) (sprintf "%d classes cannot be split into tasks of %d" numClasses classesPerTask)
        [ for t in 0 .. numClasses / classesPerTask - 1 ->
            { Index = t; Classes = [ t * classesPerTask .. (t + 1) * classesPerTask - 1 ] } ]

    /// Fashion-MNIST's class names, by label.
    let fashionMnistClassNames =
        [ "T-shirt/top"; "Trouser"; "Pullover"; "Dress"; "Coat"; "Sandal"; "Shirt"; "Sneaker"; "Bag"; "Ankle boot" ]

    /// Class names "0" .. "n-1", for data whose classes have no other names (MNIST's digits).
    let numberedClassNames (count: int) = [ for c in 0 .. count - 1 -> string c ]

    /// Split MNIST-style benchmark (Split Fashion-MNIST, Split MNIST): 5 tasks of 2 classes in label order.
    let splitMnistStyle (name: string) (folder: string) : Benchmark =
        let train, test, (rows, cols) = readIdxFolder folder 10
        { Name = name
          InputShape = (1, rows, cols)
          NumClasses = 10
          ClassNames = if name = "split-fmnist" then fashionMnistClassNames else numberedClassNames 10
          Train = train
          Test = test
          Tasks = splitTasks 10 2 }

    /// Frees a benchmark's train and test tensors.
    let dispose (benchmark: Benchmark) =
        benchmark.Train.Dispose()
        benchmark.Test.Dispose()

    /// The examples of a set whose labels are among the given classes, in their original order.
    let selectClasses (classes: int list) (set: LabelledSet) : LabelledSet =
        let wanted = Set.ofList classes
        let indices = set.LabelArray |> Array.indexed |> Array.filter (fun (_, l) -> wanted.Contains l) |> Array.map fst
        use index = torch.tensor(indices |> Array.map int64, dtype = torch.ScalarType.Int64)
        { Inputs = set.Inputs.index_select(0L, index)
          Labels = set.Labels.index_select(0L, index)
          LabelArray = indices |> Array.map (fun i -> set.LabelArray.[i]) }

    /// The first `perClass` examples of every class (a smaller benchmark for quick runs and tests).
    let takePerClass (perClass: int) (set: LabelledSet) : LabelledSet =
        let counts = System.Collections.Generic.Dictionary<int, int>()
        let indices =
            set.LabelArray
            |> Array.indexed
            |> Array.filter (fun (_, l) ->
                let seen = match counts.TryGetValue l with | true, c -> c | _ -> 0
                counts.[l] <- seen + 1
                seen < perClass)
            |> Array.map fst
        use index = torch.tensor(indices |> Array.map int64, dtype = torch.ScalarType.Int64)
        { Inputs = set.Inputs.index_select(0L, index)
          Labels = set.Labels.index_select(0L, index)
          LabelArray = indices |> Array.map (fun i -> set.LabelArray.[i]) }

    /// A benchmark restricted to at most the given numbers of examples per class.
    let subsample (trainPerClass: int) (testPerClass: int) (benchmark: Benchmark) : Benchmark =
        { benchmark with
            Train = takePerClass trainPerClass benchmark.Train
            Test = takePerClass testPerClass benchmark.Test }
