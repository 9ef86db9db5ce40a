namespace Continual

/// Continual-learning metrics over an accuracy matrix R, where R.[i].[j] is the accuracy (percent) on
/// task j's test set after training task i. Rows may be fewer than columns (JOINT has one row).
[<RequireQualifiedAccess>]
module Metrics =

    let private lastRow (r: float[][]) =
        if r.Length = 0 then invalidArg "r" "the accuracy matrix has no rows"
        r.[r.Length - 1]

    /// Mean accuracy over all tasks after the last training step: mean_j R[T][j].
    let averageAccuracy (r: float[][]) : float = lastRow r |> Array.average

    /// Average forgetting: mean over j < T of (max over i < T of R[i][j]) - R[T][j]. None when the matrix
    /// has a single task (there is nothing to forget) or is neither square nor lower-triangular-complete
    /// (the rows of a learner that added tasks: row i covers at least tasks 0..i).
    let forgetting (r: float[][]) : float option =
        let t = r.Length
        // Rows recorded before a task was added to a learner are shorter: row i needs tasks 0..i only.
        if t < 2 || r.[t - 1].Length <> t || r |> Array.indexed |> Array.exists (fun (i, row) -> row.Length < i + 1 || row.Length > t) then None
        else
            Some(
                [| for j in 0 .. t - 2 ->
                     let best = [| for i in 0 .. t - 2 do if j < r.[i].Length then yield r.[i].[j] |] |> Array.max
                     best - r.[t - 1].[j] |]
                |> Array.average)

    /// Backward transfer: mean over j < T of R[T][j] - R[j][j]. None when the matrix is not square or
    /// has a single task.
    let backwardTransfer (r: float[][]) : float option =
        let t = r.Length
        if t < 2 || r.[t - 1].Length <> t || r |> Array.indexed |> Array.exists (fun (i, row) -> row.Length < i + 1 || row.Length > t) then None
        else Some([| for j in 0 .. t - 2 -> r.[t - 1].[j] - r.[j].[j] |] |> Array.average)

    /// Forward transfer (Lopez-Paz & Ranzato, GEM 2017): mean over j ≥ 1 of R[j-1][j] − b[j], how much
    /// training on tasks before j helps task j before it is trained, against `baseline.[j]`, the accuracy
    /// (percent) of a randomly initialised model on task j. `baseline.[0]` is not used (no task precedes
    /// task 0) but must be there: the baseline holds one figure per task. None when the matrix is not
    /// square or has a single task (the baseline is not read then); otherwise a baseline whose length is
    /// not the number of tasks throws ArgumentException.
    let forwardTransfer (r: float[][]) (baseline: float[]) : float option =
        let t = r.Length
        if t < 2 || r |> Array.exists (fun row -> row.Length <> t) then None
        elif baseline.Length <> t then
            invalidArg (nameof baseline) (sprintf "the baseline needs one accuracy per task: %d figures for %d tasks" baseline.Length t)
        else Some([| for j in 1 .. t - 1 -> r.[j - 1].[j] - baseline.[j] |] |> Array.average)

    /// Forgetting of each task but the last: max over i < T of R[i][j] − R[T][j], for j < T (the terms
    /// `forgetting` averages). None when `forgetting` is None.
    let forgettingPerTask (r: float[][]) : float[] option =
        match forgetting r with
        | None -> None
        | Some _ ->
            let t = r.Length
            Some [| for j in 0 .. t - 2 -> ([| for i in 0 .. t - 2 do if j < r.[i].Length then yield r.[i].[j] |] |> Array.max) - r.[t - 1].[j] |]

    /// Intransigence (Chaudhry et al. 2018): mean over tasks k of a*_k − R[k][k], how much less a task
    /// reaches right after it is learnt than a reference model reaches on it. Continual reads the
    /// reference a* from a JOINT run (all tasks trained together, its final accuracy on each task; the
    /// paper's a*_k trains jointly on tasks 1..k only: see docs/baselines.md). None when the matrix is
    /// not square; a reference whose length is not the number of tasks throws ArgumentException.
    let intransigence (r: float[][]) (reference: float[]) : float option =
        let t = r.Length
        if t < 1 || r |> Array.exists (fun row -> row.Length <> t) then None
        elif reference.Length <> t then
            invalidArg (nameof reference) (sprintf "the reference needs one accuracy per task: %d figures for %d tasks" reference.Length t)
        else Some([| for k in 0 .. t - 1 -> reference.[k] - r.[k].[k] |] |> Array.average)

    /// Accuracy on the old tasks at the end (the lecture's "old" column): the mean of the last row over
    /// every task but the last. None for a single task.
    let oldTaskAccuracy (r: float[][]) : float option =
        let last = lastRow r
        if last.Length < 2 then None else Some(Array.average last.[.. last.Length - 2])

    /// Accuracy on the new (last) task at the end (the lecture's "new" column): the last row's last entry.
    let newTaskAccuracy (r: float[][]) : float =
        let last = lastRow r
        if last.Length = 0 then invalidArg "r" "the accuracy matrix's last row is empty"
        last.[last.Length - 1]

    /// Mean and sample standard deviation of a list of figures (the spread across seeds).
    let meanAndSpread (values: float list) : float * float =
        let n = List.length values
        if n = 0 then invalidArg (nameof values) "no values"
        let mean = List.average values
        let spread =
            if n < 2 then 0.0
            else sqrt ((values |> List.sumBy (fun v -> (v - mean) ** 2.0)) / float (n - 1))
        mean, spread

    /// Paired difference of two methods run on the same seeds (`values.[k]` and `baseline.[k]` share a
    /// seed): the mean of `values.[k] − baseline.[k]` and its standard error (sample s.d. / √n; 0 for one
    /// seed). Pairing removes the seed-to-seed swing both methods share, which is most of a regulariser's
    /// Task-IL spread.
    let pairedDifference (values: float list) (baseline: float list) : float * float =
        if List.length values <> List.length baseline then
            invalidArg (nameof baseline) (sprintf "paired figures need the same seeds: %d values against %d" (List.length values) (List.length baseline))
        let differences = List.map2 (-) values baseline
        let mean, spread = meanAndSpread differences
        mean, spread / sqrt (float (List.length differences))
