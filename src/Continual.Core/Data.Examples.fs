namespace Continual.Data

open System
open System.Collections.Generic
open Continual
open TorchSharp

/// The values of examples before they become tensors: bytes (images, byte-valued tables), scaled to
/// [0, 1] as the IDX and CIFAR readers scale them, or floats (feature tables), kept as they are.
[<RequireQualifiedAccess>]
type ExampleValues =
    /// `features` bytes per example, one example after another.
    | Bytes of pixels: byte[]
    /// `features` floats per example, one example after another.
    | Floats of values: float32[]

/// Examples read from the user's files, labelled by class NAME (the class order is chosen later, by
/// the benchmark or a manifest).
type Examples =
    { Values: ExampleValues
      /// Values per example (C·H·W for images, the column count for tables).
      Features: int
      /// The class name of every example, in order.
      Classes: string[]
      /// Where the examples come from (a folder or a file), for messages.
      Origin: string }
    member this.Count = this.Classes.Length

/// Assembling benchmarks from examples labelled by class name.
[<RequireQualifiedAccess>]
module Examples =

    /// The distinct class names of examples, in their first-appearance order.
    let classNames (examples: Examples) : string list =
        let seen = HashSet<string>(StringComparer.Ordinal)
        [ for c in examples.Classes do if seen.Add c then c ]

    /// Sorts class names as a user expects: numerically when every name is an integer ("2" before
    /// "10"), ordinally otherwise.
    let sortNames (names: string seq) : string list =
        let names = List.ofSeq names
        let numbers = names |> List.map (fun n -> Int64.TryParse(n, Globalization.NumberStyles.AllowLeadingSign, Globalization.CultureInfo.InvariantCulture))
        if not names.IsEmpty && numbers |> List.forall fst then
            List.zip names numbers |> List.sortBy (fun (_, (_, v)) -> v) |> List.map fst
        else List.sortWith (fun a b -> String.CompareOrdinal(a, b)) names

    /// Examples of several sources as one (all bytes or all floats, the same feature count).
    let concat (origin: string) (parts: Examples list) : Examples =
        match parts with
        | [] -> invalidArg (nameof parts) "no examples to concatenate"
        | [ one ] -> one
        | first :: _ ->
            for p in parts do
                if p.Features <> first.Features then
                    raise (DataFileError(p.Origin, sprintf "examples have %d values each where %s's have %d (set an image size so that every task agrees)" p.Features first.Origin first.Features))
            let values =
                match first.Values with
                | ExampleValues.Bytes _ ->
                    parts
                    |> List.map (fun p ->
                        match p.Values with
                        | ExampleValues.Bytes b -> b
                        | ExampleValues.Floats _ -> raise (DataFileError(p.Origin, sprintf "holds float features but %s holds images or bytes: one stream cannot mix them" first.Origin)))
                    |> Array.concat
                    |> ExampleValues.Bytes
                | ExampleValues.Floats _ ->
                    parts
                    |> List.map (fun p ->
                        match p.Values with
                        | ExampleValues.Floats f -> f
                        | ExampleValues.Bytes _ -> raise (DataFileError(p.Origin, sprintf "holds images or bytes but %s holds float features: one stream cannot mix them" first.Origin)))
                    |> Array.concat
                    |> ExampleValues.Floats
            { Values = values; Features = first.Features; Classes = parts |> List.map (fun p -> p.Classes) |> Array.concat; Origin = origin }

    /// Refuses test classes that never appear in training, naming the test source and the class.
    let checkTestClasses (train: Examples) (test: Examples) =
        let known = HashSet<string>(train.Classes, StringComparer.Ordinal)
        match test.Classes |> Array.tryFindIndex (fun c -> not (known.Contains c)) with
        | Some i ->
            raise (DataFileError(test.Origin, sprintf "test example %d has class '%s', which never appears in training (%s)" (i + 1) test.Classes.[i] train.Origin))
        | None -> ()

    /// Benchmarks.ofBytes with int labels: ofBytes takes byte labels, so more than 256 classes get their
    /// labels set here.
    let private ofByteLabels (pixels: byte[]) (features: int) (labels: int[]) : LabelledSet =
        if labels |> Array.forall (fun l -> l < 256) then Benchmarks.ofBytes pixels features (labels |> Array.map byte)
        else
            let set = Benchmarks.ofBytes pixels features (Array.zeroCreate labels.Length)
            set.Labels.Dispose()
            { set with Labels = torch.tensor(labels |> Array.map int64, dtype = torch.ScalarType.Int64); LabelArray = labels }

    /// Keeps the examples of the given classes and labels them by their index in `classOrder`.
    let private toSet (classOrder: string list) (examples: Examples) : LabelledSet =
        let index = Dictionary<string, int>(StringComparer.Ordinal)
        classOrder |> List.iteri (fun i c -> index.[c] <- i)
        let kept = [| for i in 0 .. examples.Count - 1 do if index.ContainsKey examples.Classes.[i] then i |]
        let labels = kept |> Array.map (fun i -> index.[examples.Classes.[i]])
        let f = examples.Features
        let all = kept.Length = examples.Count
        match examples.Values with
        | ExampleValues.Bytes pixels ->
            let chosen =
                if all then pixels
                else
                    let out = Array.zeroCreate<byte> (kept.Length * f)
                    kept |> Array.iteri (fun k i -> Buffer.BlockCopy(pixels, i * f, out, k * f, f))
                    out
            ofByteLabels chosen f labels
        | ExampleValues.Floats values ->
            let chosen =
                if all then values
                else
                    let out = Array.zeroCreate<float32> (kept.Length * f)
                    kept |> Array.iteri (fun k i -> Array.blit values (i * f) out (k * f) f)
                    out
            Benchmarks.ofFloats chosen f labels

    /// A benchmark from train and test examples: classes in `classOrder` (examples of other classes are
    /// left out), tasks as lists of class names. Every class of a task must have training examples;
    /// a test class never seen in training is refused.
    let benchmark (name: string) (inputShape: int * int * int) (classOrder: string list) (tasks: string list list) (train: Examples) (test: Examples) : Benchmark =
        let c, h, w = inputShape
        if c * h * w <> train.Features then
            invalidArg (nameof inputShape) (sprintf "an input of %dx%dx%d has %d values, but the examples have %d" c h w (c * h * w) train.Features)
        if test.Features <> train.Features then
            raise (DataFileError(test.Origin, sprintf "test examples have %d values each but the training examples (%s) have %d" test.Features train.Origin train.Features))
        checkTestClasses train test
        let present = HashSet<string>(train.Classes, StringComparer.Ordinal)
        match classOrder |> List.tryFind (fun c -> not (present.Contains c)) with
        | Some missing -> raise (DataFileError(train.Origin, sprintf "class '%s' has no training example" missing))
        | None -> ()
        let index = classOrder |> List.mapi (fun i c -> c, i) |> dict
        let trainSet = toSet classOrder train
        let testSet = toSet classOrder test
        { Name = name
          InputShape = inputShape
          NumClasses = classOrder.Length
          ClassNames = classOrder
          Train = trainSet
          Test = testSet
          Tasks = tasks |> List.mapi (fun i classes -> { Index = i; Classes = classes |> List.map (fun c -> index.[c]) }) }

    /// Class names cut into consecutive tasks of `classesPerTask` (the last task takes what is left).
    let chunkTasks (classesPerTask: int) (classOrder: string list) : string list list =
        if classesPerTask <= 0 then invalidArg (nameof classesPerTask) (sprintf "classes per task must be positive (got %d)" classesPerTask)
        classOrder |> List.chunkBySize classesPerTask
