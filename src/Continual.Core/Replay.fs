namespace Continual.Replay

open Continual
open TorchSharp

/// Reservoir sampling as a pure decision (Vitter's algorithm R).
[<RequireQualifiedAccess>]
module Reservoir =

    /// Where the example with 0-based arrival number `seen` goes in a reservoir of `capacity` slots:
    /// slot `seen` while the reservoir is filling; afterwards a uniform r in [0, seen] replaces slot r
    /// when r < capacity, and the example is dropped otherwise. Each of the first n+1 examples is then
    /// held with probability capacity / (n + 1).
    let slot (capacity: int) (seen: int64) (rng: RandomState) : int option * RandomState =
        if capacity <= 0 then None, rng
        elif seen < int64 capacity then Some(int seen), rng
        else
            let r, rng' = Random.nextBelow (seen + 1L) rng
            (if r < int64 capacity then Some(int r) else None), rng'

/// A replay buffer filled by reservoir sampling over the whole stream. Its tensors are allocated
/// once and updated in place by `Replay.add`; everything else is a value.
type ReplayBuffer =
    { Capacity: int
      /// Inputs, [capacity, features].
      Examples: Tensor
      /// Labels, int64 [capacity].
      Labels: Tensor
      /// The model's logits when the example was inserted (DER), [capacity, classes].
      Logits: Tensor
      /// The task each slot's example came from (-1 while empty).
      TaskIds: int[]
      /// The label of each slot (-1 while empty), mirrored on the host.
      LabelArray: int[]
      /// How many of each slot's logits were stored: the head's width when the example was inserted.
      /// A head that grew later leaves the columns beyond it without a stored value (zeros in `Logits`).
      LogitWidths: int[]
      /// How many examples the stream has offered so far.
      Seen: int64
      Rng: RandomState }
    /// How many slots hold an example.
    member this.Filled = int (min this.Seen (int64 this.Capacity))

/// A draw from the buffer for one step.
type ReplayDraw =
    { Inputs: Tensor
      Labels: Tensor
      Logits: Tensor
      /// Which stored logits hold a value ([n, classes], bool), None when all do: the columns of classes
      /// added to the head after an example was stored have none.
      Valid: Tensor option }

/// Operations on replay buffers.
[<RequireQualifiedAccess>]
module Replay =

    /// An empty buffer for inputs of `features` values and `classes` logits.
    let create (capacity: int) (features: int) (classes: int) (rng: RandomState) : ReplayBuffer =
        if capacity < 0 then invalidArg (nameof capacity) "buffer size must not be negative"
        let allocate (shape: int64[]) (dtype: torch.ScalarType) =
            let t = torch.zeros(shape, dtype = dtype)
            t.DetachFromDisposeScope()
        { Capacity = capacity
          Examples = allocate [| int64 capacity; int64 features |] torch.ScalarType.Float32
          Labels = allocate [| int64 capacity |] torch.ScalarType.Int64
          Logits = allocate [| int64 capacity; int64 classes |] torch.ScalarType.Float32
          TaskIds = Array.create capacity -1
          LabelArray = Array.create capacity -1
          LogitWidths = Array.create capacity classes
          Seen = 0L
          Rng = rng }

    /// Offers a batch to the buffer (reservoir sampling, example by example). The tensors are
    /// written in place; the returned value carries the new count and generator state.
    let add (task: int) (inputs: Tensor) (labels: Tensor) (labelArray: int[]) (logits: Tensor) (buffer: ReplayBuffer) =
        let mutable rng = buffer.Rng
        let mutable seen = buffer.Seen
        // slot -> row of the batch; a later row that lands in the same slot overwrites an earlier one.
        let placed = System.Collections.Generic.Dictionary<int, int>()
        for row in 0 .. labelArray.Length - 1 do
            let slot, rng' = Reservoir.slot buffer.Capacity seen rng
            rng <- rng'
            seen <- seen + 1L
            match slot with
            | Some s ->
                placed.[s] <- row
                buffer.TaskIds.[s] <- task
                buffer.LabelArray.[s] <- labelArray.[row]
                buffer.LogitWidths.[s] <- int logits.shape.[1]
            | None -> ()
        if placed.Count > 0 then
            use _ = torch.no_grad ()
            use slots = torch.tensor([| for kv in placed -> int64 kv.Key |], dtype = torch.ScalarType.Int64)
            use rows = torch.tensor([| for kv in placed -> int64 kv.Value |], dtype = torch.ScalarType.Int64)
            use x = inputs.index_select(0L, rows)
            use y = labels.index_select(0L, rows)
            use z = logits.index_select(0L, rows)
            buffer.Examples.index_copy_(0L, slots, x) |> ignore
            buffer.Labels.index_copy_(0L, slots, y) |> ignore
            buffer.Logits.index_copy_(0L, slots, z) |> ignore
        { buffer with Seen = seen; Rng = rng }

    /// Draws `count` distinct examples uniformly (fewer when the buffer holds fewer). The tensors
    /// belong to the caller's dispose scope. None when the buffer is empty.
    let sample (count: int) (buffer: ReplayBuffer) : ReplayDraw option * ReplayBuffer =
        if buffer.Filled = 0 || count <= 0 then None, buffer
        else
            let indices, rng = Random.sampleWithoutReplacement count buffer.Filled buffer.Rng
            let index = torch.tensor(indices, dtype = torch.ScalarType.Int64)
            let classes = int buffer.Logits.shape.[1]
            // Decided on the host, so that a buffer whose logits are all whole (every fixed head) costs nothing more.
            let valid =
                if indices |> Array.forall (fun i -> buffer.LogitWidths.[int i] >= classes) then None
                else
                    let widths = torch.tensor(indices |> Array.map (fun i -> int64 buffer.LogitWidths.[int i]), dtype = torch.ScalarType.Int64, device = buffer.Logits.device)
                    let columns = torch.arange(int64 classes, dtype = torch.ScalarType.Int64, device = buffer.Logits.device)
                    Some(columns.unsqueeze(0L).lt(widths.unsqueeze 1L))
            Some { Inputs = buffer.Examples.index_select(0L, index)
                   Labels = buffer.Labels.index_select(0L, index)
                   Logits = buffer.Logits.index_select(0L, index)
                   Valid = valid },
            { buffer with Rng = rng }

    /// The buffer for a head of `classes` ≥ its width: the stored logits get zero columns, which
    /// `LogitWidths` marks as not stored (the old tensor is left to the caller to free).
    let grow (classes: int) (buffer: ReplayBuffer) : ReplayBuffer =
        let width = int buffer.Logits.shape.[1]
        if classes < width then invalidArg (nameof classes) (sprintf "the buffer's logits cannot shrink from %d to %d" width classes)
        if classes = width then buffer
        else
            use _ = torch.no_grad ()
            use zeros = torch.zeros([| int64 buffer.Capacity; int64 (classes - width) |], dtype = buffer.Logits.dtype, device = buffer.Logits.device)
            { buffer with
                Logits = torch.cat([| buffer.Logits; zeros |], 1L).DetachFromDisposeScope()
                LogitWidths = Array.copy buffer.LogitWidths }

    /// Frees the buffer's tensors.
    let dispose (buffer: ReplayBuffer) =
        buffer.Examples.Dispose()
        buffer.Labels.Dispose()
        buffer.Logits.Dispose()
