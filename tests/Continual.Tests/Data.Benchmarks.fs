/// Compact storage of labelled sets: uint8 images materialised as float32 on demand, float feature
/// tables, and per-channel normalisation.
module Continual.Tests.DataBenchmarks

open System
open Expecto
open TorchSharp
open Continual
open Continual.Data
open Continual.Tests.TestData

/// The float inputs as the loader computed them before compact storage: bytes to float32, then / 255.
let private eagerFloats (pixels: byte[]) (features: int) : Tensor =
    use bytes = torch.tensor(pixels, dtype = torch.ScalarType.Byte).reshape(int64 (pixels.Length / features), int64 features)
    use asFloat = bytes.to_type torch.ScalarType.Float32
    asFloat.div(Scalars.cached 255.0)

/// Bitwise equality of two float tensors (NaN-free here), shape included.
let private identical (a: Tensor) (b: Tensor) =
    a.dtype = b.dtype && a.shape = b.shape && (Scalars.toBool (a.eq(b).all()))

/// `n` random three-channel 4 × 4 images whose channels have different ranges (0-255, 50-149,
/// 200-219), with labels 0..3.
let private threeChannelBytes (seed: int) (n: int) =
    let rnd = Random(seed)
    let pixels =
        Array.init (n * 48) (fun k ->
            match (k % 48) / 16 with
            | 0 -> byte (rnd.Next 256)
            | 1 -> byte (50 + rnd.Next 100)
            | _ -> byte (200 + rnd.Next 20))
    pixels, Array.init n (fun i -> byte (i % 4))

/// Per-channel mean and population standard deviation of a [n, channels · hw] float tensor, in float64.
let private referenceStatistics (channels: int) (inputs: Tensor) =
    use x = inputs.to_type(torch.ScalarType.Float64).reshape(inputs.shape.[0], int64 channels, -1L).transpose(0L, 1L).reshape(int64 channels, -1L)
    use mean = x.mean([| 1L |])
    use std = x.std(1L, false)
    mean.data<float>().ToArray(), std.data<float>().ToArray()

[<Tests>]
let tests =
    testList "data.compact" [
        test "images are stored as uint8 and materialise exactly as the eager float32 / 255" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 12 3
            let b = Benchmarks.splitMnistStyle "split-test" tmp.Path
            let pixels = (Idx.readImages (IO.Path.Combine(tmp.Path, "train-images-idx3-ubyte.gz"))).Pixels
            try
                Expect.equal b.Train.Stored.dtype torch.ScalarType.Byte "train stored as bytes"
                Expect.equal b.Test.Stored.dtype torch.ScalarType.Byte "test stored as bytes"
                Expect.equal b.Train.Features 784 "features"
                use expected = eagerFloats pixels 784
                use all = b.Train.AllInputs()
                Expect.isTrue (identical all expected) "every row bit-identical to the eager conversion"
                // The same values as .NET's own single-precision division, pixel by pixel.
                let values = all.data<float32>().ToArray()
                Expect.isTrue (Array.forall2 (fun (v: float32) (p: byte) -> v = float32 p / 255.0f) values pixels) "byte / 255 in float32"
                use index = torch.tensor([| 7L; 0L; 119L; 7L |], dtype = torch.ScalarType.Int64)
                use at = b.Train.InputsAt index
                use expectedAt = expected.index_select(0L, index)
                Expect.isTrue (identical at expectedAt) "rows by index"
                use range = b.Train.InputRange(30L, 25L)
                use expectedRange = expected.narrow(0L, 30L, 25L)
                Expect.isTrue (identical range expectedRange) "a range of rows"
                let task = Benchmarks.selectClasses [ 2; 3 ] b.Train
                try
                    Expect.equal task.Stored.dtype torch.ScalarType.Byte "selecting classes keeps bytes"
                    use rows = task.AllInputs()
                    let indices = b.Train.LabelArray |> Array.indexed |> Array.filter (fun (_, l) -> l = 2 || l = 3) |> Array.map (fst >> int64)
                    use index = torch.tensor(indices, dtype = torch.ScalarType.Int64)
                    use expectedRows = expected.index_select(0L, index)
                    Expect.isTrue (identical rows expectedRows) "the task's rows"
                finally
                    task.Dispose()
            finally
                Benchmarks.dispose b
        }

        test "the real Fashion-MNIST test set materialises exactly as byte / 255" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            let path = Benchmarks.findIdxFile fashionMnist "t10k-images-idx3-ubyte"
            let images = Idx.readImages path
            let labels = Idx.readLabels (Benchmarks.findIdxFile fashionMnist "t10k-labels-idx1-ubyte")
            let set = Benchmarks.ofBytes images.Pixels 784 labels
            try
                Expect.equal set.Stored.dtype torch.ScalarType.Byte "stored as bytes"
                Expect.equal set.Stored.shape [| 10000L; 784L |] "shape"
                use expected = eagerFloats images.Pixels 784
                use all = set.AllInputs()
                Expect.isTrue (identical all expected) "bit-identical to the eager conversion"
            finally
                set.Dispose()
        }

        test "class groups selected at once hold the rows, labels and inputs of each group selected alone" {
            let pixels, labels = threeChannelBytes 11 40
            let set = Benchmarks.ofBytes pixels 48 labels
            // Groups in another order than the labels, one empty, one overlapping another.
            let groups = [ [ 2; 3 ]; [ 0 ]; [ 7 ]; [ 1; 0 ] ]
            let together = Benchmarks.selectClassGroups groups set
            Expect.equal together.Length groups.Length "one set per group"
            for (classes, grouped) in List.zip groups together do
                let alone = Benchmarks.selectClasses classes set
                Expect.equal grouped.LabelArray alone.LabelArray (sprintf "%A: the labels, in order" classes)
                Expect.isTrue (identical grouped.Stored alone.Stored) (sprintf "%A: the stored bytes" classes)
                Expect.isTrue (Scalars.toBool (grouped.Labels.eq(alone.Labels).all())) (sprintf "%A: the label tensor" classes)
                use a = grouped.InputRange(0L, int64 grouped.Count)
                use b = alone.InputRange(0L, int64 alone.Count)
                Expect.isTrue (identical a b) (sprintf "%A: the inputs" classes)
                alone.Dispose()
            // Each set frees its own view; the rest stay whole.
            together.Head.Dispose()
            Expect.equal (together.[1].Stored.shape.[0]) 10L "class 0's ten rows outlive the first set"
            for s in together.Tail do s.Dispose()
            set.Dispose()
        }

        test "feature tables are stored and materialised as float32, unchanged" {
            let values = Array.init 12 (fun i -> float32 i * 0.37f - 1.5f)
            let set = Benchmarks.ofFloats values 4 [| 2; 0; 1 |]
            try
                Expect.equal set.Stored.dtype torch.ScalarType.Float32 "stored as float32"
                Expect.equal set.Stored.shape [| 3L; 4L |] "shape"
                Expect.equal set.LabelArray [| 2; 0; 1 |] "labels"
                use all = set.AllInputs()
                Expect.equal (all.data<float32>().ToArray()) values "values as given"
                use row = set.InputRange(1L, 1L)
                Expect.equal (row.data<float32>().ToArray()) values.[4..7] "one row"
                Expect.throwsT<ArgumentException> (fun () -> Benchmarks.ofFloats values 5 [| 0; 1 |] |> ignore) "a ragged table is refused"
            finally
                set.Dispose()
        }

        test "per-channel statistics from the training set, in chunks, match the whole-set computation" {
            // More rows than one statistics chunk, so the chunked sums are exercised.
            let pixels, labels = threeChannelBytes 3 5000
            let train = Benchmarks.ofBytes pixels 48 labels
            try
                let stats = Benchmarks.channelStatistics 3 train
                use all = train.AllInputs()
                let mean, std = referenceStatistics 3 all
                for c in 0 .. 2 do
                    Expect.floatClose Accuracy.medium (float stats.Mean.[c]) mean.[c] (sprintf "mean of channel %d" c)
                    Expect.floatClose Accuracy.medium (float stats.Std.[c]) std.[c] (sprintf "std of channel %d" c)
                Expect.isTrue (stats.Mean.[2] > 0.78f && stats.Std.[2] < 0.03f) "the channels differ"
            finally
                train.Dispose()
        }

        test "normalised by the training set: mean 0, std 1 per channel on it, and the test set uses its values" {
            let trainPixels, trainLabels = threeChannelBytes 4 3000
            // A test set from another distribution: all its pixels are brighter by 5.
            let testPixels = (fst (threeChannelBytes 5 400)) |> Array.map (fun p -> byte (min 255 (int p + 5)))
            let benchmark =
                { Name = "three-channel"; InputShape = (3, 4, 4); NumClasses = 4; ClassNames = Benchmarks.numberedClassNames 4
                  Train = Benchmarks.ofBytes trainPixels 48 trainLabels
                  Test = Benchmarks.ofBytes testPixels 48 (Array.init 400 (fun i -> byte (i % 4)))
                  Tasks = Benchmarks.splitTasks 4 2 }
            let plainTest = benchmark.Test
            try
                Expect.isNone benchmark.Train.Normalisation "no normalisation unless asked for"
                let normalised = Benchmarks.normaliseByTraining benchmark
                let n = normalised.Train.Normalisation |> Option.get
                Expect.equal normalised.Test.Normalisation (Some n) "the test set carries the training set's values"
                Expect.equal normalised.Train.Stored.dtype torch.ScalarType.Byte "still stored as bytes"
                use trainInputs = normalised.Train.AllInputs()
                let mean, std = referenceStatistics 3 trainInputs
                for c in 0 .. 2 do
                    Expect.isLessThan (abs mean.[c]) 1e-5 (sprintf "channel %d centred" c)
                    Expect.isLessThan (abs (std.[c] - 1.0)) 1e-4 (sprintf "channel %d scaled to std 1" c)
                // The test set: (x - training mean) / training std, channel by channel.
                use testInputs = normalised.Test.AllInputs()
                use plain = plainTest.AllInputs()
                use byChannel = plain.reshape(400L, 3L, 16L)
                use m = torch.tensor(Array.ofList n.Mean).reshape(1L, 3L, 1L)
                use s = torch.tensor(Array.ofList n.Std).reshape(1L, 3L, 1L)
                use expected = byChannel.sub(m).div(s).reshape(400L, 48L)
                Expect.isTrue (identical testInputs expected) "the test set is normalised with the training values"
                let testMean, _ = referenceStatistics 3 testInputs
                Expect.isGreaterThan testMean.[2] 0.5 "the brighter test set is not re-centred on itself"
                use rows = normalised.Test.InputRange(10L, 5L)
                use expectedRows = expected.narrow(0L, 10L, 5L)
                Expect.isTrue (identical rows expectedRows) "ranges are normalised too"
            finally
                Benchmarks.dispose benchmark
        }

        test "joining a task's bytes with exemplars taken from them stores bytes and materialises as the parts do" {
            let pixels, labels = threeChannelBytes 7 5000
            let task = Benchmarks.ofBytes pixels 48 labels
            // Exemplars as iCaRL keeps them: materialised float32 rows of the same kind of data.
            use exemplarRows = torch.tensor([| 3L; 4100L; 17L; 3L |], dtype = torch.ScalarType.Int64)
            let exemplars = { task with Stored = task.InputsAt exemplarRows; Labels = task.Labels.index_select(0L, exemplarRows); LabelArray = [| labels.[3]; labels.[4100]; labels.[17]; labels.[3] |] |> Array.map int }
            // Values that are not byte / 255 (and a −0, which equals +0 by value) cannot be stored as bytes.
            let odd = Benchmarks.ofFloats (Array.init 96 (fun i -> if i = 5 then -0.0f elif i = 50 then 0.3f else float32 (i % 7) / 255.0f)) 48 [| 1; 2 |]
            let oddZero = Benchmarks.ofFloats (Array.init 48 (fun i -> if i = 5 then -0.0f else 0.0f)) 48 [| 0 |]
            let joined = Benchmarks.join task [ exemplars ]
            let mixed = Benchmarks.join task [ exemplars; odd ]
            let zero = Benchmarks.join task [ oddZero ]
            try
                Expect.equal joined.Stored.dtype torch.ScalarType.Byte "bytes joined with exemplars from bytes stay bytes"
                Expect.equal joined.Count 5004 "every row"
                Expect.equal joined.LabelArray (Array.append task.LabelArray exemplars.LabelArray) "labels in order"
                Expect.equal (joined.Labels.data<int64>().ToArray()) (Array.append task.LabelArray exemplars.LabelArray |> Array.map int64) "label tensor in order"
                use all = joined.AllInputs()
                use taskInputs = task.AllInputs()
                use exemplarInputs = exemplars.AllInputs()
                use expected = torch.cat([| taskInputs; exemplarInputs |], 0L)
                Expect.isTrue (identical all expected) "the join materialises bit for bit as its parts"
                Expect.equal mixed.Stored.dtype torch.ScalarType.Float32 "a part that is not bytes keeps the join float32"
                use mixedAll = mixed.AllInputs()
                use oddInputs = odd.AllInputs()
                use expectedMixed = torch.cat([| taskInputs; exemplarInputs; oddInputs |], 0L)
                Expect.isTrue (identical mixedAll expectedMixed) "the float32 join holds every part's values"
                Expect.equal zero.Stored.dtype torch.ScalarType.Float32 "a −0 is not taken for a byte"
                use zeroAll = zero.AllInputs()
                Expect.isTrue (Scalars.toBool (zeroAll.[5000L, 5L].signbit())) "the −0 is kept"
                Expect.throwsT<ArgumentException> (fun () -> Benchmarks.join task [ Benchmarks.ofFloats [| 0.0f; 1.0f |] 2 [| 0 |] ] |> ignore) "rows of another width are refused"
            finally
                for s in [ joined; mixed; zero; exemplars; odd; oddZero; task ] do s.Dispose()
        }

        test "a normalisation that does not fit the data is refused" {
            let pixels, labels = threeChannelBytes 6 10
            let set = Benchmarks.ofBytes pixels 48 labels
            try
                Expect.throwsT<ArgumentException> (fun () -> Benchmarks.withNormalisation { Mean = [ 0.5f; 0.5f; 0.5f; 0.5f; 0.5f ]; Std = [ 1.0f; 1.0f; 1.0f; 1.0f; 1.0f ] } set |> ignore) "5 channels do not divide 48 features"
                Expect.throwsT<ArgumentException> (fun () -> Benchmarks.withNormalisation { Mean = [ 0.5f; 0.5f; 0.5f ]; Std = [ 1.0f; 0.0f; 1.0f ] } set |> ignore) "a zero standard deviation"
                Expect.throwsT<ArgumentException> (fun () -> Benchmarks.withNormalisation { Mean = [ 0.5f; 0.5f; 0.5f ]; Std = [ 1.0f ] } set |> ignore) "one std per mean"
            finally
                set.Dispose()
        }
    ]
