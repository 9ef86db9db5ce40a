namespace Continual.Data

open TorchSharp

/// Where a task added to a learner came from, so that a learner loaded in another process can read its
/// data again: a kind defined by the data loaders (e.g. an image folder, a CSV file), a path and the
/// loader's options. Recorded in the learner file, not in the run's configuration.
type TaskSource =
    { Kind: string
      Path: string
      Options: Map<string, string> }

/// A task that cannot be added to a learner: the message says why.
exception TaskDataError of reason: string
    with
        override this.Message = this.reason

/// Appending one-task benchmarks to a benchmark (a learner's stream that grows task by task).
[<RequireQualifiedAccess>]
module TaskStream =

    let private fail reason = raise (TaskDataError reason)

    /// Checks a one-task benchmark against the benchmark it would be appended to: same input shape, a
    /// name for every class and no name already known, labels within its classes, some training data,
    /// and no test label that never appears in training.
    let check (task: Benchmark) (benchmark: Benchmark) : unit =
        let k = task.NumClasses
        if k <= 0 then fail (sprintf "the task %s has no classes" task.Name)
        if task.InputShape <> benchmark.InputShape then
            let c, h, w = task.InputShape
            let c', h', w' = benchmark.InputShape
            fail (sprintf "the task %s has inputs of %dx%dx%d, the learner's are %dx%dx%d" task.Name c h w c' h' w')
        if task.ClassNames.Length <> k then
            fail (sprintf "the task %s names %d classes but has %d" task.Name task.ClassNames.Length k)
        match task.ClassNames |> List.countBy id |> List.tryFind (fun (_, n) -> n > 1) with
        | Some(name, _) -> fail (sprintf "the same class name in two tasks: '%s' appears twice in the task %s" name task.Name)
        | None -> ()
        let known = benchmark.ClassNames |> List.indexed |> List.map (fun (i, n) -> n, i) |> Map.ofList
        match task.ClassNames |> List.tryFind known.ContainsKey with
        | Some name ->
            fail (sprintf "the same class name in two tasks: '%s' is class %d of the learner (task %d) and a class of the task %s"
                    name known.[name] (benchmark.TaskOfClass.[known.[name]] + 1) task.Name)
        | None -> ()
        if task.Train.Count = 0 then fail (sprintf "the task %s has no training examples" task.Name)
        let kind (set: LabelledSet) = if set.Stored.dtype = torch.ScalarType.Byte then "image bytes" else "float features"
        if task.Train.Stored.dtype <> benchmark.Train.Stored.dtype then
            fail (sprintf "the task %s holds %s but the learner's data are %s" task.Name (kind task.Train) (kind benchmark.Train))
        for (what, set) in [ "training", task.Train; "test", task.Test ] do
            match set.LabelArray |> Array.tryFind (fun l -> l < 0 || l >= k) with
            | Some l -> fail (sprintf "the task %s has a %s label %d outside its classes 0..%d" task.Name what l (k - 1))
            | None -> ()
        let trained = Set.ofArray task.Train.LabelArray
        match task.Test.LabelArray |> Array.tryFind (fun l -> not (trained.Contains l)) with
        | Some l -> fail (sprintf "the task %s has a test label that never appears in training: class '%s'" task.Name task.ClassNames.[l])
        | None -> ()

    let private shifted (offset: int) (first: LabelledSet) (second: LabelledSet) : LabelledSet =
        use _ = torch.no_grad ()
        use offsetScalar = (int64 offset).ToScalar()
        use labels = second.Labels.add offsetScalar
        // The stream keeps its own normalisation: the added examples are seen as the earlier ones are.
        { Stored = torch.cat([| first.Stored; second.Stored |], 0L)
          Labels = torch.cat([| first.Labels; labels |], 0L)
          LabelArray = Array.append first.LabelArray (second.LabelArray |> Array.map (fun l -> l + offset))
          Normalisation = first.Normalisation }

    /// The benchmark with a one-task benchmark appended (`check`ed first): its classes get the global
    /// indices after the existing ones, its names are appended, its examples (labels shifted) are
    /// appended to the training and test sets, and one task of all its classes ends the stream. New
    /// tensors: both inputs are left to their owners.
    let append (task: Benchmark) (benchmark: Benchmark) : Benchmark =
        check task benchmark
        let offset = benchmark.NumClasses
        let k = task.NumClasses
        { benchmark with
            NumClasses = offset + k
            ClassNames = benchmark.ClassNames @ task.ClassNames
            Train = shifted offset benchmark.Train task.Train
            Test = shifted offset benchmark.Test task.Test
            Tasks = benchmark.Tasks @ [ { Index = benchmark.Tasks.Length; Classes = [ offset .. offset + k - 1 ] } ] }
