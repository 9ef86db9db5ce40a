/// Properties of src/Continual.Core/Evaluation.fs and Losses.maskToClasses: Task-IL predictions and
/// accuracies consider only the task's own classes (a logit of another class, however large, never
/// changes them), checked on random logits against a plain argmax reference.
module Continual.Properties.EvaluationProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Data
open Continual.Models
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support
open TorchSharp

/// Rows of tie-free logits: each row a shuffle of 0 .. classes−1 plus a fraction below 1, so that the
/// argmax over any set of columns is unique.
let private tieFree (rows: int) (classes: int) : Gen<float32[][]> =
    gen {
        let! order = Gen.shuffle [| 0 .. classes - 1 |]
        let! fraction = Gen.arrayOfLength classes (Gen.choose (0, 900))
        let! scale = Gen.elements [ 0.5f; 1.0f; 3.0f ]
        return Array.map2 (fun (k: int) (f: int) -> scale * (float32 k + float32 f / 1000.0f)) order fraction
    }
    |> Gen.arrayOfLength rows

/// The plain argmax of a row over some of its columns.
let private argmaxOver (classes: int list) (row: float32[]) = classes |> List.maxBy (fun c -> row.[c])

let private tensorOfRows (rows: float32[][]) =
    torch.tensor(Array.concat rows, dtype = torch.ScalarType.Float32).reshape(int64 rows.Length, int64 rows.[0].Length)

/// Logits, a task's classes (a non-empty proper subset), a row and an outside class to boost.
type private MaskCase =
    { Logits: float32[][]
      Task: int list
      Boost: float32 }

let private maskCase =
    gen {
        let! classes = Gen.choose (2, 8)
        let! n = Gen.choose (1, 6)
        let! logits = tieFree n classes
        let! keep = Gen.arrayOfLength classes (Gen.elements [ true; false ]) |> Gen.filter (fun k -> Array.contains true k && Array.contains false k)
        let! boost = Gen.elements [ 10.0f; 1e6f; 3e38f ]
        return { Logits = logits; Task = [ for c in 0 .. classes - 1 do if keep.[c] then c ]; Boost = boost }
    }

let private maskedPredictions (task: int list) (logits: float32[][]) =
    use t = tensorOfRows logits
    use masked = Losses.maskToClasses task t
    use predicted = masked.argmax 1L
    predicted.data<int64>().ToArray() |> Array.map int

/// A test set per task: the tasks split the classes, each task's rows are labelled from its own classes
/// and have their own count (the scores are looked up by it).
type private EvaluationCase =
    { Tasks: int list list
      Labels: int[] list
      Logits: float32[][] list
      /// For every row, a class outside its task whose logit is raised far above the rest.
      Outside: int[] list }

let private evaluationCase =
    gen {
        let! taskCount = Gen.choose (2, 3)
        let! perTask = Gen.choose (2, 3)
        let classes = taskCount * perTask
        let tasks = [ for t in 0 .. taskCount - 1 -> [ t * perTask .. t * perTask + perTask - 1 ] ]
        let! cases =
            tasks
            |> List.mapi (fun t task ->
                gen {
                    // Row counts 1-4, 5-8, 9-12: distinct per task.
                    let! n = Gen.choose (4 * t + 1, 4 * t + 4)
                    let! ls = labels n task
                    let! logits = tieFree n classes
                    let! outside = Gen.arrayOfLength n (Gen.elements [ for c in 0 .. classes - 1 do if not (List.contains c task) then c ])
                    return ls, logits, outside
                })
            |> Gen.collectToList id
        return { Tasks = tasks; Labels = cases |> List.map (fun (l, _, _) -> l); Logits = cases |> List.map (fun (_, z, _) -> z); Outside = cases |> List.map (fun (_, _, o) -> o) }
    }

let private percent (hits: bool[]) = 100.0 * float (hits |> Array.filter id |> Array.length) / float hits.Length

let private model = lazy (Backbones.create architecture)

/// Evaluation.evaluateWith on the case's test sets with scores that are the case's logits for each task.
let private evaluate (c: EvaluationCase) (logits: float32[][] list) =
    let sets =
        List.zip c.Tasks c.Labels
        |> List.mapi (fun t (task, ls) ->
            { Index = t; Classes = task },
            { Stored = torch.zeros(int64 ls.Length, 4L); Labels = labelTensor ls; LabelArray = ls; Normalisation = None })
    let byCount = dict [ for z in logits -> z.Length, z ]
    let scores (output: ModelOutput) = tensorOfRows byCount.[int output.Logits.shape.[0]]
    Evaluation.evaluateWith (Some scores) (model.Force()) torch.CPU sets

[<Tests>]
let tests =
    sequenced "evaluation" [
        property 60 "the Task-IL prediction is the argmax over the task's classes" maskCase (fun c ->
            let expected = c.Logits |> Array.map (argmaxOver c.Task)
            Expect.equal (maskedPredictions c.Task c.Logits) expected "masked argmax")

        property 60 "a logit of another class, however large, never changes the Task-IL prediction" maskCase (fun c ->
            let before = maskedPredictions c.Task c.Logits
            let outside = [ 0 .. c.Logits.[0].Length - 1 ] |> List.except c.Task
            for o in outside do
                let boosted = c.Logits |> Array.map (fun row -> row |> Array.mapi (fun k v -> if k = o then c.Boost else v))
                Expect.equal (maskedPredictions c.Task boosted) before (sprintf "class %d boosted to %g" o c.Boost))

        property 40 "Evaluation's Task-IL accuracy counts the argmax over each task's classes, Class-IL over all" evaluationCase (fun c ->
            let accuracies = evaluate c c.Logits
            for (t, (task, (ls, logits))) in List.indexed (List.zip c.Tasks (List.zip c.Labels c.Logits)) do
                let all = [ 0 .. logits.[0].Length - 1 ]
                expectNear 1e-9 (sprintf "task %d Class-IL" t) (percent (Array.map2 (fun row y -> argmaxOver all row = y) logits ls)) accuracies.ClassIl.[t]
                expectNear 1e-9 (sprintf "task %d Task-IL" t) (percent (Array.map2 (fun row y -> argmaxOver task row = y) logits ls)) accuracies.TaskIl.[t])

        property 40 "raising other tasks' logits leaves every Task-IL accuracy and zeroes Class-IL" evaluationCase (fun c ->
            let before = evaluate c c.Logits
            let boosted = List.map2 (Array.map2 (fun (row: float32[]) o -> row |> Array.mapi (fun k v -> if k = o then 1e6f else v))) c.Logits c.Outside
            let after = evaluate c boosted
            Expect.equal after.TaskIl before.TaskIl "Task-IL accuracies"
            Expect.equal after.ClassIl (Array.zeroCreate c.Tasks.Length) "Class-IL: every row predicts its boosted outside class")
    ]
