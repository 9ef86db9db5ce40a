/// A bare TorchSharp training loop, the speed reference of `continual bench`: the reference protocol's
/// MLP (784-100-100-10, Xavier-uniform weights, zero biases) on Split Fashion-MNIST (tasks of two
/// classes in label order), plain SGD, for SGD (fine-tuning) and DER++ (a reservoir buffer, one forward
/// pass over the batch and the two buffer draws, alpha * MSE on stored logits + beta * CE). No
/// abstractions and no evaluation: it does the same training work as a run, not the same arithmetic
/// bit for bit. It prints one line of JSON with its training seconds.
module Continual.Bench.BareLoop

open System
open System.Collections.Generic
open System.IO
open System.IO.Compression
open TorchSharp

/// The bytes of an IDX file, raw or gzipped.
let private readIdx (folder: string) (name: string) : byte[] =
    let raw = Path.Combine(folder, name)
    if File.Exists raw then File.ReadAllBytes raw
    else
        use file = File.OpenRead(raw + ".gz")
        use unzip = new GZipStream(file, CompressionMode.Decompress)
        use bytes = new MemoryStream()
        unzip.CopyTo bytes
        bytes.ToArray()

let private bigEndian (b: byte[]) (at: int) =
    (int b.[at] <<< 24) ||| (int b.[at + 1] <<< 16) ||| (int b.[at + 2] <<< 8) ||| int b.[at + 3]

/// Peak resident set size in MiB (VmHWM), 0 where /proc is not there.
let private peakRssMiB () =
    try
        File.ReadAllLines "/proc/self/status"
        |> Array.tryFind (fun l -> l.StartsWith "VmHWM:")
        |> Option.map (fun l -> float (l.Split(' ', StringSplitOptions.RemoveEmptyEntries).[1]) / 1024.0)
        |> Option.defaultValue 0.0
    with _ -> 0.0

let private linear (inputs: int64) (outputs: int64) : TorchSharp.Modules.Linear =
    let layer = torch.nn.Linear(inputs, outputs)
    torch.nn.init.xavier_uniform_ layer.weight |> ignore
    torch.nn.init.zeros_ layer.bias |> ignore
    layer

[<EntryPoint>]
let main argv =
    let options =
        argv |> Array.chunkBySize 2 |> Array.map (fun a -> a.[0].TrimStart '-', (if a.Length > 1 then a.[1] else "")) |> Map.ofArray
    let get name (fallback: string) = options.TryFind name |> Option.defaultValue fallback
    let data = get "data" "/usr/share/datasets/fashion-mnist"
    let strategy = get "strategy" "sgd"
    if strategy <> "sgd" && strategy <> "derpp" then
        eprintfn "BareLoop: --strategy is sgd or derpp (got %s)" strategy
        exit 2
    let derpp = strategy = "derpp"
    let lr = float (get "lr" "0.03")
    let batch = int (get "batch-size" "10")
    let epochs = int (get "epochs" "1")
    let seed = int (get "seed" "0")
    let bufferSize = int (get "buffer" "500")
    let minibatch = int (get "minibatch" "10")
    let alpha = float (get "alpha" "1.0")
    let beta = float (get "beta" "0.5")
    let perClass = int (get "train-per-class" "0")
    let classesPerTask = int (get "classes-per-task" "2")
    torch.set_num_threads (int (get "threads" "1"))
    torch.manual_seed (int64 seed) |> ignore
    let rng = Random seed

    // Data: the training IDX files, the first `perClass` images of each class (all when 0), in [0, 1].
    let images = readIdx data "train-images-idx3-ubyte"
    let labels = readIdx data "train-labels-idx1-ubyte"
    let n = bigEndian labels 4
    let pixels = bigEndian images 8 * bigEndian images 12
    let counts = Array.zeroCreate 256
    let kept =
        [| for i in 0 .. n - 1 do
               let c = int labels.[8 + i]
               if perClass <= 0 || counts.[c] < perClass then
                   counts.[c] <- counts.[c] + 1
                   yield i |]
    let features = Array.zeroCreate<float32> (kept.Length * pixels)
    kept |> Array.iteri (fun row i -> for p in 0 .. pixels - 1 do features.[row * pixels + p] <- float32 images.[16 + i * pixels + p] / 255.0f)
    let x = torch.tensor(features, dtype = torch.ScalarType.Float32).reshape(int64 kept.Length, int64 pixels)
    let keptLabels = kept |> Array.map (fun i -> int64 labels.[8 + i])
    let y = torch.tensor(keptLabels, dtype = torch.ScalarType.Int64)
    let classes = (Array.max keptLabels |> int) + 1
    let tasks = (classes + classesPerTask - 1) / classesPerTask

    let fc1, fc2, head = linear (int64 pixels) 100L, linear 100L 100L, linear 100L (int64 classes)
    let forward (input: torch.Tensor) : torch.Tensor =
        head.forward(torch.nn.functional.relu(fc2.forward(torch.nn.functional.relu(fc1.forward input))))
    let optimiser = torch.optim.SGD(Seq.concat [ fc1.parameters (); fc2.parameters (); head.parameters () ], lr)

    // The reservoir buffer: examples, labels and the logits they had when stored.
    let bufferX = torch.zeros([| int64 bufferSize; int64 pixels |])
    let bufferY = torch.zeros([| int64 bufferSize |], dtype = torch.int64)
    let bufferLogits = torch.zeros([| int64 bufferSize; int64 classes |])
    let mutable seen = 0
    let draw (filled: int) (k: int) =
        // k distinct slots of the filled part (a partial Fisher-Yates shuffle).
        let slots = Array.init filled id
        for j in 0 .. k - 1 do
            let r = j + rng.Next(filled - j)
            let t = slots.[j]
            slots.[j] <- slots.[r]
            slots.[r] <- t
        torch.tensor(Array.init k (fun j -> int64 slots.[j]), dtype = torch.ScalarType.Int64)
    let store (xb: torch.Tensor) (yb: torch.Tensor) (logits: torch.Tensor) : unit =
        let slotOf = Dictionary<int, int64>()
        for j in 0 .. int xb.shape.[0] - 1 do
            let slot = if seen < bufferSize then seen else rng.Next(seen + 1)
            if slot < bufferSize then slotOf.[slot] <- int64 j
            seen <- seen + 1
        if slotOf.Count > 0 then
            use _ = torch.no_grad ()
            let slots = torch.tensor([| for kv in slotOf -> int64 kv.Key |], dtype = torch.ScalarType.Int64)
            let rows = torch.tensor([| for kv in slotOf -> kv.Value |], dtype = torch.ScalarType.Int64)
            bufferX.index_copy_(0L, slots, xb.index_select(0L, rows)) |> ignore
            bufferY.index_copy_(0L, slots, yb.index_select(0L, rows)) |> ignore
            bufferLogits.index_copy_(0L, slots, logits.index_select(0L, rows)) |> ignore

    let clock = Diagnostics.Stopwatch.StartNew()
    let mutable steps = 0L
    for task in 0 .. tasks - 1 do
        let taskRows =
            [| for row in 0 .. kept.Length - 1 do
                   if int keptLabels.[row] / classesPerTask = task then yield int64 row |]
        for _ in 1 .. epochs do
            let order = Array.copy taskRows
            rng.Shuffle order
            for start in 0 .. batch .. order.Length - 1 do
                use scope = torch.NewDisposeScope()
                let rows = torch.tensor(order.[start .. min (order.Length - 1) (start + batch - 1)], dtype = torch.ScalarType.Int64)
                let xb = x.index_select(0L, rows)
                let yb = y.index_select(0L, rows)
                optimiser.zero_grad ()
                let b = xb.shape.[0]
                let filled = min seen bufferSize
                if derpp && filled > 0 then
                    let k = min minibatch filled
                    let first, second = draw filled k, draw filled k
                    let input = torch.cat([| xb; bufferX.index_select(0L, first); bufferX.index_select(0L, second) |], 0L)
                    let output = forward input
                    let current = output.narrow(0L, 0L, b)
                    let loss =
                        torch.nn.functional.cross_entropy(current, yb)
                        + alpha * torch.nn.functional.mse_loss(output.narrow(0L, b, int64 k), bufferLogits.index_select(0L, first))
                        + beta * torch.nn.functional.cross_entropy(output.narrow(0L, b + int64 k, int64 k), bufferY.index_select(0L, second))
                    loss.backward ()
                    optimiser.step () |> ignore
                    store xb yb (current.detach ())
                else
                    let output = forward xb
                    let loss = torch.nn.functional.cross_entropy(output, yb)
                    loss.backward ()
                    optimiser.step () |> ignore
                    if derpp then store xb yb (output.detach ())
                steps <- steps + 1L
    let trainSeconds = clock.Elapsed.TotalSeconds
    let wallSeconds = (DateTime.Now - Diagnostics.Process.GetCurrentProcess().StartTime).TotalSeconds
    printfn
        """{"strategy":"%s","buffer":%d,"steps":%d,"trainSeconds":%.3f,"wallSeconds":%.3f,"peakRssMiB":%.0f}"""
        strategy (if derpp then bufferSize else 0) steps trainSeconds wallSeconds (peakRssMiB ())
    0
