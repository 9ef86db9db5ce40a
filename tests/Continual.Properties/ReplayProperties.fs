/// Properties of Random.fs and Replay.fs.
module Continual.Properties.ReplayProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
open Continual
open Continual.Replay
open Continual.Properties.PropertyConfig

/// How often each of the n examples of a stream ends up in a reservoir of size k, over many streams.
let private holdFrequencies (k: int) (n: int) (trials: int) (seed: int64) =
    let counts = Array.zeroCreate<int> n
    let mutable rng = Random.create seed
    for _ in 1 .. trials do
        let slots = Array.create k -1
        for i in 0 .. n - 1 do
            let slot, next = Reservoir.slot k (int64 i) rng
            rng <- next
            slot |> Option.iter (fun s -> slots.[s] <- i)
        for s in slots do
            if s >= 0 then counts.[s] <- counts.[s] + 1
    counts |> Array.map (fun c -> float c / float trials)

[<Tests>]
let tests =
    testList "replay" [
        testPropertyWithConfig (fixedSeed 30) "reservoir keeps each seen example with probability K/(n+1)"
        <| fun (kRaw: PositiveInt) (extraRaw: NonNegativeInt) (seed: int) ->
            let k = 1 + kRaw.Get % 12
            let n = k + extraRaw.Get % 40
            let trials = 4000
            let p = min 1.0 (float k / float n)
            // Each frequency is a binomial mean: allow 5 standard deviations (plus float slack at p = 1).
            let tolerance = 5.0 * sqrt (p * (1.0 - p) / float trials) + 1e-9
            let frequencies = holdFrequencies k n trials (int64 seed)
            frequencies
            |> Array.forall (fun f -> abs (f - p) <= tolerance)
            |> Prop.label (sprintf "k=%d n=%d p=%.3f freqs=%A" k n p frequencies)

        testPropertyWithConfig (fixedSeed 200) "the reservoir fills slots 0..K-1 in order, then replaces or drops"
        <| fun (kRaw: PositiveInt) (seen: NonNegativeInt) (seed: int) ->
            let k = kRaw.Get % 50 + 1
            let slot, _ = Reservoir.slot k (int64 seen.Get) (Random.create (int64 seed))
            if seen.Get < k then slot = Some seen.Get
            else
                match slot with
                | Some s -> s >= 0 && s < k
                | None -> true

        testPropertyWithConfig (fixedSeed 200) "sampling without replacement draws distinct indices in range"
        <| fun (count: PositiveInt) (nRaw: PositiveInt) (seed: int) ->
            let n = nRaw.Get % 600 + 1
            let drawn, _ = Random.sampleWithoutReplacement (count.Get % 200) n (Random.create (int64 seed))
            drawn.Length = min (count.Get % 200) n
            && (drawn |> Array.distinct).Length = drawn.Length
            && drawn |> Array.forall (fun i -> i >= 0L && i < int64 n)

        testPropertyWithConfig (fixedSeed 100) "a permutation holds every index once"
        <| fun (nRaw: NonNegativeInt) (seed: int) ->
            let n = nRaw.Get % 500
            let p, _ = Random.permutation n (Random.create (int64 seed))
            Array.sort p = Array.init n int64

        testPropertyWithConfig (fixedSeed 100) "integers below a bound stay below it"
        <| fun (bound: PositiveInt) (seed: int) ->
            let v, _ = Random.nextBelow (int64 bound.Get) (Random.create (int64 seed))
            v >= 0L && v < int64 bound.Get

        test "the buffer's tensors hold the examples its host arrays say" {
            use inputs = TorchSharp.torch.arange(0.0f, 60.0f).reshape(20L, 3L).to_type(TorchSharp.torch.ScalarType.Float32)
            use labels = TorchSharp.torch.tensor(Array.init 20 (fun i -> int64 (i % 10)), dtype = TorchSharp.torch.ScalarType.Int64)
            use logits = TorchSharp.torch.zeros(20L, 10L)
            let buffer = Replay.create 5 3 10 (Random.create 3L)
            let buffer = Replay.add 0 inputs labels (Array.init 20 (fun i -> i % 10)) logits buffer
            Expect.equal buffer.Seen 20L "seen"
            for slot in 0 .. 4 do
                let row = buffer.Examples.[int64 slot]
                let first = Scalars.toFloat32 (row.[0L])
                let source = int first / 3
                Expect.equal (buffer.LabelArray.[slot]) (source % 10) "host label matches the stored example"
                Expect.equal (int (Scalars.toInt64 (buffer.Labels.[int64 slot]))) (source % 10) "tensor label matches"
            Replay.dispose buffer
        }
    ]
