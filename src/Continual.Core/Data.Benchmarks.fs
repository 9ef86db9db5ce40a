namespace Continual.Data

open System.IO
open Continual
open TorchSharp

/// Per-channel normalisation applied when inputs are materialised: channel c of every row becomes
/// `(x - Mean[c]) / Std[c]`, where x is the [0, 1] value. Rows are flattened channel-first, so the
/// channel count is `Mean.Length` and each channel holds `features / Mean.Length` values.
type ChannelNormalisation =
    { Mean: float32 list
      Std: float32 list }

/// Labelled examples held as tensors. Images are stored compactly as their uint8 pixel bytes and
/// converted to float32 only when rows are materialised (a batch, an evaluation, an estimate), so a
/// large set costs one byte a pixel; feature tables are stored as float32.
type LabelledSet =
    { /// The inputs as stored, flattened to [n, features]: uint8 pixel bytes (materialised as
      /// `byte / 255`, in [0, 1]) or float32 values (materialised as they are).
      Stored: Tensor
      Labels: Tensor
      /// The labels as a plain array, for selecting by class without touching tensors.
      LabelArray: int[]
      /// Per-channel normalisation applied on materialisation; None keeps the values above.
      Normalisation: ChannelNormalisation option }
    member this.Count = this.LabelArray.Length
    /// Values per example (the second dimension of the stored inputs).
    member this.Features = int this.Stored.shape.[1]
    /// Float32 inputs of rows taken from `Stored` (by `narrow`, `index_select`, moved to any device),
    /// computed on their device: bytes become `byte / 255`, then the set's normalisation applies.
    /// Always a new tensor handle, which the caller frees (for float32 rows without normalisation it
    /// shares their storage).
    member this.Materialise(storedRows: Tensor) : Tensor =
        let unit =
            if storedRows.dtype = torch.ScalarType.Byte then
                use asFloat = storedRows.to_type torch.ScalarType.Float32
                // A divisor tensor on the rows' own device: CUDA turns division by a host scalar into
                // multiplication by its reciprocal, which differs in the last bit from loading on the CPU.
                use divisor = torch.tensor(255.0f, device = storedRows.device)
                asFloat.div divisor
            elif storedRows.dtype = torch.ScalarType.Float32 then storedRows.alias ()
            else invalidArg (nameof storedRows) (sprintf "stored inputs are uint8 or float32, not %A" storedRows.dtype)
        match this.Normalisation with
        | None -> unit
        | Some n ->
            use unit = unit
            let channels = int64 n.Mean.Length
            use mean = torch.tensor(Array.ofList n.Mean, device = storedRows.device).reshape(1L, channels, 1L)
            use std = torch.tensor(Array.ofList n.Std, device = storedRows.device).reshape(1L, channels, 1L)
            use byChannel = unit.reshape(unit.shape.[0], channels, unit.shape.[1] / channels)
            use centred = byChannel.sub mean
            use scaled = centred.div std
            scaled.reshape(unit.shape.[0], unit.shape.[1])
    /// Float32 inputs of the rows at `index` (int64), on the storage's device.
    member this.InputsAt(index: Tensor) : Tensor =
        use rows = this.Stored.index_select(0L, index)
        this.Materialise rows
    /// Float32 inputs of `count` consecutive rows from `start`, on the storage's device.
    member this.InputRange(start: int64, count: int64) : Tensor =
        use rows = this.Stored.narrow(0L, start, count)
        this.Materialise rows
    /// Float32 inputs of every row (a full float copy of image data: prefer rows or ranges).
    member this.AllInputs() : Tensor = this.Materialise this.Stored
    /// Every row's float32 inputs, row-major, into the first Count × Features values of `destination`
    /// (a CPU array: ONNX Runtime's input). Pixel bytes without normalisation are turned into
    /// `byte / 255` here, the float32 division `Materialise` makes (the same bits), without libtorch's
    /// temporary copies of the set; anything else goes through `AllInputs`.
    member this.CopyInputsTo(destination: System.Span<float32>) =
        let needed = this.Count * this.Features
        if destination.Length < needed then
            invalidArg (nameof destination) (sprintf "%d values do not hold %d rows of %d" destination.Length this.Count this.Features)
        let stored = this.Stored
        if stored.dtype = torch.ScalarType.Byte && this.Normalisation.IsNone && stored.device_type = DeviceType.CPU && stored.is_contiguous () then
            let pixels : System.ReadOnlySpan<byte> = System.Span<byte>.op_Implicit stored.bytes
            for i in 0 .. needed - 1 do
                destination.[i] <- float32 pixels.[i] / 255.0f
        else
            use scope = torch.NewDisposeScope()
            let inputs = this.AllInputs().cpu().to_type(torch.ScalarType.Float32).contiguous()
            let values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float32>(System.Span<byte>.op_Implicit inputs.bytes : System.ReadOnlySpan<byte>)
            values.CopyTo(destination.Slice(0, needed))
    /// Frees the set's tensors.
    member this.Dispose() =
        this.Stored.Dispose()
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
    /// another, stored as uint8 and materialised in [0, 1].
    let ofBytes (pixels: byte[]) (features: int) (labels: byte[]) : LabelledSet =
        if pixels.Length <> labels.Length * features then
            invalidArg (nameof pixels) (sprintf "%d labels of %d features need %d bytes (got %d)" labels.Length features (labels.Length * features) pixels.Length)
        let inputs =
            use bytes = torch.tensor(pixels, dtype = torch.ScalarType.Byte)
            bytes.reshape(int64 labels.Length, int64 features)
        let labelArray = labels |> Array.map int
        { Stored = inputs
          Labels = torch.tensor(labelArray |> Array.map int64, dtype = torch.ScalarType.Int64)
          LabelArray = labelArray
          Normalisation = None }

    /// A labelled set from float32 values (a feature table, e.g. embeddings): `labels.Length` examples
    /// of `featureCount` values each, one after another, stored and materialised as they are.
    let ofFloats (features: float32[]) (featureCount: int) (labels: int[]) : LabelledSet =
        if features.Length <> labels.Length * featureCount then
            invalidArg (nameof features) (sprintf "%d labels of %d features need %d values (got %d)" labels.Length featureCount (labels.Length * featureCount) features.Length)
        let inputs =
            use values = torch.tensor(features, dtype = torch.ScalarType.Float32)
            values.reshape(int64 labels.Length, int64 featureCount)
        { Stored = inputs
          Labels = torch.tensor(labels |> Array.map int64, dtype = torch.ScalarType.Int64)
          LabelArray = Array.copy labels
          Normalisation = None }

    /// Rows of a set, in the given order, still in their stored form (uint8 stays uint8), with the
    /// set's normalisation.
    let selectRows (indices: int[]) (set: LabelledSet) : LabelledSet =
        use index = torch.tensor(indices |> Array.map int64, dtype = torch.ScalarType.Int64)
        { set with
            Stored = set.Stored.index_select(0L, index)
            Labels = set.Labels.index_select(0L, index)
            LabelArray = indices |> Array.map (fun i -> set.LabelArray.[i]) }

    /// Rows copied at a time when sets are joined.
    let private joinChunk = 4096

    /// A float32 [n, features] tensor as the pixel bytes it was made from, when every value is exactly
    /// `byte / 255` as `bytesSet` (a set of bytes without normalisation) materialises it, so that the
    /// bytes give the same floats bit for bit; None otherwise.
    let private exactBytes (bytesSet: LabelledSet) (values: Tensor) : Tensor option =
        use _ = torch.no_grad ()
        use scope = torch.NewDisposeScope()
        use scale = 255.0f.ToScalar()
        use low = 0.0.ToScalar()
        use high = 255.0.ToScalar()
        let bytes = values.mul(scale).round().clamp(low, high).to_type torch.ScalarType.Byte
        use back = bytesSet.Materialise bytes
        // equal compares by value: a −0 (never made from a byte) would pass as +0 without signbit.
        if back.dtype = values.dtype && Scalars.toBool (back.eq(values).all()) && not (Scalars.toBool (values.signbit().any())) then
            Some(bytes.MoveToOuterDisposeScope())
        else None

    /// One set of the rows of `first` then those of each of `rest` (their labels in the same order),
    /// materialising to the same floats as each part does. When `first` stores pixel bytes without
    /// normalisation and every other part is such bytes or float32 values that are exactly `byte / 255`
    /// (exemplars taken from such data), the join stores bytes: a quarter of a float32 join. Otherwise it
    /// is float32, filled in chunks so that no part exists twice as float32 at once. The parts are left
    /// as they are (the caller frees them).
    let join (first: LabelledSet) (rest: LabelledSet list) : LabelledSet =
        let sets = first :: rest
        if sets |> List.exists (fun s -> s.Features <> first.Features) then
            invalidArg (nameof rest) (sprintf "sets of %s features cannot be joined" (sets |> List.map (fun s -> string s.Features) |> List.distinct |> String.concat " and "))
        let labels = torch.cat([| for s in sets -> s.Labels |], 0L)
        let labelArray = Array.concat [ for s in sets -> s.LabelArray ]
        let asBytes (s: LabelledSet) =
            match s.Normalisation with
            | Some _ -> None
            | None when s.Stored.dtype = torch.ScalarType.Byte -> Some(s.Stored.alias ())
            | None when s.Stored.dtype = torch.ScalarType.Float32 -> exactBytes first s.Stored
            | None -> None
        let byteParts =
            if first.Stored.dtype <> torch.ScalarType.Byte || first.Normalisation.IsSome then None
            else
                let parts = sets |> List.map asBytes
                if parts |> List.forall Option.isSome then Some(parts |> List.map Option.get)
                else
                    parts |> List.iter (Option.iter (fun t -> t.Dispose()))
                    None
        match byteParts with
        | Some parts ->
            let stored = torch.cat(Array.ofList parts, 0L)
            parts |> List.iter (fun t -> t.Dispose())
            { Stored = stored; Labels = labels; LabelArray = labelArray; Normalisation = None }
        | None ->
            // Materialised parts (normalised where each is), so the join needs no normalisation.
            let inputs = torch.empty([| int64 labelArray.Length; int64 first.Features |], dtype = torch.ScalarType.Float32)
            let mutable offset = 0L
            for s in sets do
                for start in 0 .. joinChunk .. s.Count - 1 do
                    let n = min joinChunk (s.Count - start)
                    use rows = s.InputRange(int64 start, int64 n)
                    use target = inputs.narrow(0L, offset + int64 start, int64 n)
                    target.copy_ rows |> ignore
                offset <- offset + int64 s.Count
            { Stored = inputs; Labels = labels; LabelArray = labelArray; Normalisation = None }

    /// Rows read per chunk when statistics go over a whole set, so that no full float copy is made.
    let private statisticsChunk = 4096

    /// The per-channel mean and (population) standard deviation of a set's [0, 1] values, the set's own
    /// normalisation ignored, computed in float64 over chunks of rows (two passes: the mean, then the
    /// squared deviations from it). A constant channel gets Std 1, so it is only centred.
    let channelStatistics (channels: int) (set: LabelledSet) : ChannelNormalisation =
        if channels <= 0 || set.Features % channels <> 0 then
            invalidArg (nameof channels) (sprintf "%d features cannot be split into %d channels" set.Features channels)
        if set.Count = 0 then invalidArg (nameof set) "the set is empty: no statistics to compute"
        let plain = { set with Normalisation = None }
        let perChannel = float (set.Count * (set.Features / channels))
        let sumOver (f: Tensor -> Tensor) =
            use _ = torch.no_grad ()
            use total = torch.zeros([| int64 channels |], dtype = torch.ScalarType.Float64)
            for start in 0 .. statisticsChunk .. set.Count - 1 do
                use scope = torch.NewDisposeScope()
                let count = min statisticsChunk (set.Count - start)
                let rows = plain.InputRange(int64 start, int64 count).to_type(torch.ScalarType.Float64).reshape(int64 count, int64 channels, -1L)
                Scalars.addInPlace total ((f rows).sum([| 0L; 2L |])) |> ignore
            total.data<float>().ToArray()
        let mean = sumOver id |> Array.map (fun s -> s / perChannel)
        use meanTensor = torch.tensor(mean, dtype = torch.ScalarType.Float64).reshape(1L, int64 channels, 1L)
        let variance = sumOver (fun rows -> rows.sub(meanTensor).square()) |> Array.map (fun s -> s / perChannel)
        { Mean = mean |> Array.map float32 |> List.ofArray
          Std = variance |> Array.map (fun v -> let s = sqrt v in if s > 0.0 then float32 s else 1.0f) |> List.ofArray }

    /// A set that materialises with the given normalisation (the same storage, shared: free only one of
    /// the two sets). Fails when the values do not fit the set's features.
    let withNormalisation (normalisation: ChannelNormalisation) (set: LabelledSet) : LabelledSet =
        let channels = normalisation.Mean.Length
        if channels = 0 || normalisation.Std.Length <> channels then
            invalidArg (nameof normalisation) (sprintf "one mean and one standard deviation per channel (got %d and %d)" channels normalisation.Std.Length)
        if set.Features % channels <> 0 then
            invalidArg (nameof normalisation) (sprintf "%d features cannot be split into %d channels" set.Features channels)
        match normalisation.Std |> List.tryFind (fun s -> not (s > 0.0f) || not (System.Single.IsFinite s)) with
        | Some s -> invalidArg (nameof normalisation) (sprintf "standard deviations must be positive and finite (got %g)" s)
        | None -> ()
        { set with Normalisation = Some normalisation }

    /// A labelled set from images already stored as a uint8 tensor [count, features] (it is taken, not
    /// copied) and their labels, checked against the class count.
    let private toSet (imagesPath: string) (labelsPath: string) (images: Tensor) (labels: byte[]) (numClasses: int) =
        let count = int images.shape.[0]
        if count <> labels.Length then
            raise (DataFileError(labelsPath, sprintf "%d labels but %s holds %d images" labels.Length (Path.GetFileName imagesPath) count))
        match labels |> Array.tryFindIndex (fun l -> int l >= numClasses) with
        | Some i -> raise (DataFileError(labelsPath, sprintf "label %d at index %d is out of range 0..%d" labels.[i] i (numClasses - 1)))
        | None -> ()
        let labelArray = labels |> Array.map int
        { Stored = images
          Labels = torch.tensor(labelArray |> Array.map int64, dtype = torch.ScalarType.Int64)
          LabelArray = labelArray
          Normalisation = None }

    /// Reads the four IDX files of an MNIST-style folder (MNIST, Fashion-MNIST). Every file is
    /// checked before the sets are made; the pixels are read into uint8 tensors at one byte a pixel.
    /// The training images are decompressed on another thread while this one decompresses the test
    /// images, then loads libtorch or waits for the load the tool began at its start
    /// (Engine.loadLibraries): the labels, read first here, have already called every native function
    /// that reading needs, so neither thread waits for the dynamic loader.
    let readIdxFolder (folder: string) (numClasses: int) : LabelledSet * LabelledSet * (int * int) =
        let paths = idxFileNames |> List.map (findIdxFile folder)
        let trainLabels = Idx.readLabels paths.[1]
        let testLabels = Idx.readLabels paths.[3]
        let trainReading = System.Threading.Tasks.Task.Run(fun () -> Idx.tryReadImages paths.[0])
        // This thread decompresses the test images meanwhile, instead of waiting for the load.
        let testReading = try Ok(Idx.tryReadImages paths.[2]) with e -> Error(System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture e)
        // The read has ended, whatever happened on either thread, before this one goes on; a data file's
        // error is raised as itself, the training images' first.
        (try Engine.loadLibraries () finally (try trainReading.Wait() with _ -> ()))
        let trainRead = trainReading.GetAwaiter().GetResult()
        let testRead =
            match testReading with
            | Ok read -> read
            | Error error ->
                error.Throw()
                None
        let trainImages, rows, cols = Idx.imageTensorOf paths.[0] trainRead
        try
            let testImages, testRows, testCols = Idx.imageTensorOf paths.[2] testRead
            try
                if trainImages.shape.[0] = 0L then raise (DataFileError(paths.[0], "holds 0 images: the training set is empty"))
                if testImages.shape.[0] = 0L then raise (DataFileError(paths.[2], "holds 0 images: the test set is empty"))
                if (testRows, testCols) <> (rows, cols) then
                    raise (DataFileError(paths.[2], sprintf "images are %dx%d but the training images are %dx%d" testRows testCols rows cols))
                let train = toSet paths.[0] paths.[1] trainImages trainLabels numClasses
                let test = toSet paths.[2] paths.[3] testImages testLabels numClasses
                train, test, (rows, cols)
            with _ ->
                testImages.Dispose()
                reraise ()
        with _ ->
            trainImages.Dispose()
            reraise ()

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

    /// The indices of the labels among the given classes, in order.
    let private rowsOf (classes: int list) (labels: int[]) : int[] =
        let wanted = System.Collections.Generic.HashSet<int>(classes)
        let rows = ResizeArray<int>()
        for i in 0 .. labels.Length - 1 do
            if wanted.Contains labels.[i] then rows.Add i
        rows.ToArray()

    /// The examples of a set whose labels are among the given classes, in their original order.
    let selectClasses (classes: int list) (set: LabelledSet) : LabelledSet =
        selectRows (rowsOf classes set.LabelArray) set

    /// `selectClasses` for several groups of classes at once (each group's examples in their original
    /// order): one gather into one tensor, of which each set holds a view. A tensor of 2 MiB or more can
    /// get huge pages (Startup in the tool), where five small ones are faulted in 4 KiB at a time.
    let selectClassGroups (groups: int list list) (set: LabelledSet) : LabelledSet list =
        let rows = groups |> List.map (fun classes -> rowsOf classes set.LabelArray)
        let all = selectRows (Array.concat rows) set
        try
            let mutable offset = 0
            [ for indices in rows ->
                let start, count = int64 offset, int64 indices.Length
                offset <- offset + indices.Length
                { all with
                    Stored = all.Stored.narrow(0L, start, count)
                    Labels = all.Labels.narrow(0L, start, count)
                    LabelArray = Array.sub all.LabelArray (int start) indices.Length } ]
        finally
            // The views keep the gathered storage alive.
            all.Dispose()

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
        selectRows indices set

    /// A benchmark restricted to at most the given numbers of examples per class.
    let subsample (trainPerClass: int) (testPerClass: int) (benchmark: Benchmark) : Benchmark =
        { benchmark with
            Train = takePerClass trainPerClass benchmark.Train
            Test = takePerClass testPerClass benchmark.Test }

    /// A benchmark whose train and test sets both materialise with the given per-channel
    /// normalisation (values given by the user, or `channelStatistics` of the training set).
    let normaliseWith (normalisation: ChannelNormalisation) (benchmark: Benchmark) : Benchmark =
        let channels, _, _ = benchmark.InputShape
        if normalisation.Mean.Length <> channels then
            invalidArg (nameof normalisation) (sprintf "%s has %d channels but the normalisation gives %d" benchmark.Name channels normalisation.Mean.Length)
        { benchmark with
            Train = withNormalisation normalisation benchmark.Train
            Test = withNormalisation normalisation benchmark.Test }

    /// A benchmark normalised per channel by its training set's mean and standard deviation; the test
    /// set uses the training set's values, as a model sees them at inference.
    let normaliseByTraining (benchmark: Benchmark) : Benchmark =
        let channels, _, _ = benchmark.InputShape
        normaliseWith (channelStatistics channels benchmark.Train) benchmark
