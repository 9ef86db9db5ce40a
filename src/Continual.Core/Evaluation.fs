namespace Continual

open Continual
open Continual.Data
open Continual.Models
open TorchSharp

/// Accuracy of a model on every task's test set, in both scenarios, from one forward pass per task.
type TaskAccuracies =
    { /// Class-IL: argmax over all classes (percent), one entry per task.
      ClassIl: float[]
      /// Task-IL: argmax over the task's own classes (percent), one entry per task.
      TaskIl: float[] }

/// Evaluating models on benchmarks.
[<RequireQualifiedAccess>]
module Evaluation =

    /// Test inputs and labels of each task, selected once and kept for every evaluation.
    type TaskTestSets = (TaskSpec * LabelledSet) list

    /// Splits a benchmark's test set by task.
    let testSets (benchmark: Benchmark) : TaskTestSets =
        List.zip benchmark.Tasks (Benchmarks.selectClassGroups (benchmark.Tasks |> List.map (fun t -> t.Classes)) benchmark.Test)

    /// Percent of rows whose argmax equals the label.
    let accuracy (logits: Tensor) (labels: Tensor) : float =
        if labels.shape.[0] = 0L then 0.0
        else
            use predicted = logits.argmax(1L)
            use correct = predicted.eq(labels)
            use count = correct.sum()
            100.0 * float (Scalars.toInt64 count) / float labels.shape.[0]

    /// The most rows per forward pass when evaluating. Each row's scores do not depend on the other rows
    /// of its pass (evaluation mode: batch normalisation uses its running statistics), and libtorch's CPU
    /// kernels give a row the same bits in a pass of a hundred rows or more as in one pass over the whole
    /// set (checked for every backbone in the tests; passes of a few rows can take other matrix-product
    /// paths and differ in the last bit), so this only sets speed and memory: passes of a few hundred
    /// rows keep the CNN's and the ResNet's feature maps in cache, where one pass over a whole test set
    /// made the CPU fault in gigabytes. A larger set is split into passes of nearly equal size, each at
    /// least half of this.
    let batchSize = 256

    /// The class scores of every row of a set, in batches of `batchSize` rows (≥ 1) moved in the stored
    /// form and materialised on the device: `scores` of the model's output when set (e.g. iCaRL's
    /// nearest mean of exemplars), the logits otherwise. The model must be in evaluation mode and the
    /// caller in inference mode or without gradients; the result belongs to the caller's dispose scope.
    let scoresIn (batchSize: int) (scores: (ModelOutput -> Tensor) option) (model: Backbone) (device: Device) (set: LabelledSet) : Tensor =
        if batchSize < 1 then invalidArg (nameof batchSize) (sprintf "the evaluation batch size must be at least 1, not %d" batchSize)
        let n = int64 set.Count
        let pass (start: int64) (count: int64) =
            use scope = torch.NewDisposeScope()
            let inputs = set.Materialise(set.Stored.narrow(0L, start, count).``to`` device)
            let result =
                match scores with
                | Some score -> score (model.ForwardWithFeatures inputs)
                | None -> model.forward inputs
            result.MoveToOuterDisposeScope()
        if n <= int64 batchSize then pass 0L n
        else
            // Passes of nearly equal size (never a last pass of a row or two: see `batchSize`).
            let passes = (n + int64 batchSize - 1L) / int64 batchSize
            let size i = n / passes + (if i < n % passes then 1L else 0L)
            let starts = Array.scan (+) 0L (Array.init (int passes) (fun i -> size (int64 i)))
            let parts = [| for i in 0 .. int passes - 1 -> pass starts.[i] (size (int64 i)) |]
            let all = torch.cat(parts, 0L)
            for p in parts do
                p.Dispose()
            all

    /// Class-IL and Task-IL accuracy on each task's test set (eval mode, inference mode, in batches of
    /// `batchSize` rows), with the class scores given by `scores` from the model's output when set (e.g.
    /// iCaRL's nearest mean of exemplars) and by the logits otherwise.
    let evaluateWith (scores: (ModelOutput -> Tensor) option) (model: Backbone) (device: Device) (sets: TaskTestSets) : TaskAccuracies =
        use _ = torch.inference_mode ()
        model.eval ()
        try
            let results =
                sets
                |> List.map (fun (task, set) ->
                    use scope = torch.NewDisposeScope()
                    let logits = scoresIn batchSize scores model device set
                    let labels = set.Labels.``to`` device
                    let classIl = accuracy logits labels
                    let taskIl = accuracy (Losses.maskToClasses task.Classes logits) labels
                    classIl, taskIl)
            { ClassIl = results |> List.map fst |> Array.ofList
              TaskIl = results |> List.map snd |> Array.ofList }
        finally
            model.train ()

    /// Class-IL and Task-IL accuracy of the model's logits on each task's test set (eval mode, inference mode).
    let evaluate (model: Backbone) (device: Device) (sets: TaskTestSets) : TaskAccuracies =
        evaluateWith None model device sets
