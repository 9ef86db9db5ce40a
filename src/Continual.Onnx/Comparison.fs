namespace Continual.Onnx

open System
open System.Runtime.InteropServices
open Continual
open TorchSharp

/// Comparing ONNX Runtime's logits with TorchSharp's: correct-prediction counts and differences.
[<RequireQualifiedAccess>]
module Comparison =

    /// Index of the largest of `count` values from `offset` (the first one on ties, as TorchSharp's argmax).
    let private argmaxAt (values: float32[]) (offset: int) (indices: int[]) =
        let mutable best = indices.[0]
        let mutable bestValue = values.[offset + best]
        for i in 1 .. indices.Length - 1 do
            let v = values.[offset + indices.[i]]
            if v > bestValue then
                best <- indices.[i]
                bestValue <- v
        best

    /// Correct Class-IL (argmax over all classes) and Task-IL (argmax over `taskClasses`) predictions
    /// of row-major logits [rows, classes] against labels.
    let correctCounts (logits: float32[]) (classes: int) (labels: int[]) (taskClasses: int list) : int * int =
        let all = Array.init classes id
        // A growing head has no outputs yet for the classes of later tasks: Task-IL masks to those it has.
        let own = taskClasses |> List.filter (fun c -> c < classes) |> List.sort |> Array.ofList
        let mutable classIl = 0
        let mutable taskIl = 0
        for r in 0 .. labels.Length - 1 do
            if argmaxAt logits (r * classes) all = labels.[r] then classIl <- classIl + 1
            if own.Length > 0 && argmaxAt logits (r * classes) own = labels.[r] then taskIl <- taskIl + 1
        classIl, taskIl

    /// The values of a float tensor as a row-major array.
    let toArray (t: Tensor) : float32[] =
        use scope = torch.NewDisposeScope()
        let cpu = t.detach().cpu().to_type(torch.ScalarType.Float32).contiguous()
        // A span copy of the storage: TensorAccessor.ToArray walks the elements one by one.
        MemoryMarshal.Cast<byte, float32>(Span<byte>.op_Implicit cpu.bytes : ReadOnlySpan<byte>).ToArray()

    /// A labelled set's inputs, materialised as float32 (what the model is fed), as a row-major array.
    let inputArray (set: Continual.Data.LabelledSet) : float32[] =
        let values = Array.zeroCreate<float32> (set.Count * set.Features)
        set.CopyInputsTo(Span<float32>(values))
        values


    /// TorchSharp's logits of a module in eval mode (no gradients), the module's mode restored after.
    let torchLogits (model: torch.nn.Module<Tensor, Tensor>) (device: Device) (inputs: Tensor) : float32[] =
        let wasTraining = model.training
        use _ = torch.no_grad ()
        use scope = torch.NewDisposeScope()
        model.eval ()
        try
            let logits = model.forward (inputs.``to`` device)
            toArray logits
        finally
            if wasTraining then model.train ()

    /// The largest absolute difference between two equally long arrays (infinity when any value is NaN).
    let maxAbsDifference (a: float32[]) (b: float32[]) : float =
        if a.Length <> b.Length then invalidArg (nameof b) (sprintf "%d values against %d" a.Length b.Length)
        let mutable m = 0.0
        for i in 0 .. a.Length - 1 do
            let d = abs (float a.[i] - float b.[i])
            if Double.IsNaN d then m <- Double.PositiveInfinity
            elif d > m then m <- d
        m

/// Row-major float32 inputs of one labelled set at a time, in one array reused from set to set
/// (ONNX Runtime reads it in place): verifying every task's test set holds the largest set's floats
/// once, instead of a new array per set. An array from `Fill` is valid until the next `Fill`.
type InputBuffer() =
    let mutable buffer: float32[] = [||]
    /// The set's materialised inputs in the first Count x Features values of the buffer
    /// (`LabelledSet.CopyInputsTo`).
    member _.Fill(set: Continual.Data.LabelledSet) : float32[] =
        let needed = set.Count * set.Features
        if buffer.Length < needed then buffer <- Array.zeroCreate needed
        set.CopyInputsTo(Span<float32>(buffer))
        buffer
