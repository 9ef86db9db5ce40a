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
        benchmark.Tasks |> List.map (fun t -> t, Benchmarks.selectClasses t.Classes benchmark.Test)

    /// Percent of rows whose argmax equals the label.
    let accuracy (logits: Tensor) (labels: Tensor) : float =
        if labels.shape.[0] = 0L then 0.0
        else
            use predicted = logits.argmax(1L)
            use correct = predicted.eq(labels)
            use count = correct.sum()
            100.0 * float (count.ToInt64()) / float labels.shape.[0]

    /// Class-IL and Task-IL accuracy on each task's test set (eval mode, no gradients), with the class
    /// scores given by `scores` from the model's output when set (e.g. iCaRL's nearest mean of
    /// exemplars) and by the logits otherwise.
    let evaluateWith (scores: (ModelOutput -> Tensor) option) (model: Backbone) (device: Device) (sets: TaskTestSets) : TaskAccuracies =
        use _ = torch.no_grad ()
        model.eval ()
        let results =
            sets
            |> List.map (fun (task, set) ->
                // One scope per task: only one task's inputs and logits are alive at a time.
                use scope = torch.NewDisposeScope()
                // Moved in the stored form, materialised on the device.
                let inputs = set.Materialise(set.Stored.``to`` device)
                let labels = set.Labels.``to`` device
                let logits =
                    match scores with
                    | Some score -> score (model.ForwardWithFeatures inputs)
                    | None -> model.forward inputs
                let classIl = accuracy logits labels
                let taskIl = accuracy (Losses.maskToClasses task.Classes logits) labels
                classIl, taskIl)
        model.train ()
        { ClassIl = results |> List.map fst |> Array.ofList
          TaskIl = results |> List.map snd |> Array.ofList }

    /// Class-IL and Task-IL accuracy of the model's logits on each task's test set (eval mode, no gradients).
    let evaluate (model: Backbone) (device: Device) (sets: TaskTestSets) : TaskAccuracies =
        evaluateWith None model device sets
