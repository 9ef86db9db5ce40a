/// Properties of src/Continual.Core/Methods/DistillationTerm.fs one level above its formulas: the KD term
/// compares the snapshot with the current model on every sample of the step (the batch, then each
/// non-empty buffer draw), on the old classes' logits only; there is no term before a snapshot exists.
module Continual.Properties.Methods.DistillationTermProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Methods
open Continual.Models
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support
open Continual.Properties.Methods.LwfProperties
open TorchSharp

type private KdCase =
    { Seed: int
      Split: ClassSplit
      Inputs: Block
      Labels: int[]
      Logits: Block
      Draws: Draw option list
      Temperature: float
      Weight: float }

let private kdCase =
    gen {
        let! seed = Gen.choose (0, 10000)
        let! split = classSplit true
        let! n = Gen.choose (1, 4)
        let! inputs = block n 4
        let! ls = labels n split.Seen
        let! logits = block n 4
        let! count = Gen.choose (0, 2)
        let! draws = Gen.listOfLength count (Gen.frequency [ 1, Gen.constant None; 3, Gen.choose (1, 4) |> Gen.bind (fun m -> draw m 4) |> Gen.map Some ])
        let! t = Gen.elements [ 1.0; 2.0; 4.0 ]
        let! weight = Gen.elements [ 0.5; 1.0; 3.0 ]
        return { Seed = seed; Split = split; Inputs = inputs; Labels = ls; Logits = logits; Draws = draws; Temperature = t; Weight = weight }
    }

/// The case's view, with a feature of width 5 per sample (the term concatenates every layer's features).
let private kdView (c: KdCase) (logits: Block) (draws: Draw option list) =
    let v = viewOf c.Inputs c.Labels logits draws
    { v with
        Output = { v.Output with Features = [ torch.zeros(int64 c.Labels.Length, 5L) ] }
        Replay = v.Replay |> List.map (Option.map (fun r -> { r with Features = [ torch.zeros(r.Logits.shape.[0], 5L) ] })) }

let private settingsOf (c: KdCase) = { DistillationSettings.Of Kd with Temperature = c.Temperature; Weight = c.Weight }

let private kdTerms (c: KdCase) (teacher: Backbone option) (oldClasses: int list) (logits: Block) (draws: Draw option list) =
    let state = { DistillationTerm.initial with Snapshot = teacher; OldClasses = oldClasses }
    DistillationTerm.terms (settingsOf c) state (kdView c logits draws) |> termValues

/// The plain reference: weight · KD at T on the old classes over the batch's rows then each draw's.
let private reference (c: KdCase) (teacher: Backbone) (logits: Block) (draws: Draw option list) =
    let present = draws |> List.choose id
    let inputs = Array.concat (c.Inputs.Matrix :: [ for d in present -> d.Inputs.Matrix ])
    let student = Array.concat (logits.Matrix :: [ for d in present -> d.Current.Matrix ])
    use x = torch.tensor(Array.concat inputs |> Array.map float32, dtype = torch.ScalarType.Float32).reshape(int64 inputs.Length, 4L)
    let teacherLogits = rowsOf (use _ = torch.no_grad () in teacher.forward x)
    c.Weight * Continual.Properties.DistillationSupport.kdRef c.Temperature (columns c.Split.Old teacherLogits) (columns c.Split.Old student)

[<Tests>]
let tests =
    sequenced "methods.distillation-term" [
        property 60 "KD compares the snapshot and the model on the batch and every non-empty draw, old classes only" kdCase (fun c ->
            use teacher = snapshotOf c.Seed
            match kdTerms c (Some teacher) c.Split.Old c.Logits c.Draws with
            | [ "distill.kd", v ] -> expectNear 1e-5 "distill.kd" (reference c teacher c.Logits c.Draws) v
            | other -> failtestf "one term \"distill.kd\" expected, got %A" (List.map fst other))

        property 60 "KD never reads the new and unseen classes' logits, of the model or the snapshot" kdCase (fun c ->
            use teacher = snapshotOf c.Seed
            let before = kdTerms c (Some teacher) c.Split.Old c.Logits c.Draws
            let others = c.Split.New @ c.Split.Unseen
            let moved = c.Draws |> List.map (Option.map (fun d -> { d with Current = bumpColumns others 3.0f d.Current }))
            expectSameTerms "after moving the model's other classes" before (kdTerms c (Some teacher) c.Split.Old (bumpColumns others 3.0f c.Logits) moved)
            bumpClassifier others 2.5 teacher
            expectSameTerms "after moving the snapshot's other classes" before (kdTerms c (Some teacher) c.Split.Old c.Logits c.Draws))

        property 30 "no term before the first snapshot or without old classes; a task start takes the old classes, a task end the snapshot" kdCase (fun c ->
            use teacher = snapshotOf c.Seed
            Expect.isEmpty (kdTerms c None c.Split.Old c.Logits c.Draws) "no snapshot: no term"
            Expect.isEmpty (kdTerms c (Some teacher) [] c.Logits c.Draws) "no old classes: no term"
            torch.manual_seed (int64 c.Seed) |> ignore
            use model = Backbones.create architecture
            let data = synthetic c.Seed 4 c.Split.New
            let context = { contextOf model data with Classes = c.Split.New; SeenClasses = c.Split.Seen }
            let m = DistillationTerm.create (settingsOf c)
            let m = Training.phase (fun m -> m.BeginTask context) m
            Expect.equal (Method.stateOf<DistillationTerm.State> m).OldClasses c.Split.Old "old classes: seen minus the task's"
            Expect.isNone (Method.stateOf<DistillationTerm.State> m).Snapshot "no snapshot before the first task end"
            let m = Training.phase (fun m -> m.EndTask context) m
            try
                match (Method.stateOf<DistillationTerm.State> m).Snapshot with
                | Some s ->
                    let atEnd = rowsOf (use _ = torch.no_grad () in model.forward data.Stored)
                    moveModel 0.5 model
                    arraysClose 1e-6 "the snapshot is the model at the task end" (Array.concat atEnd) (Array.concat (rowsOf (s.forward data.Stored)))
                | None -> failtest "a task end takes a snapshot"
            finally
                Method.dispose m)
    ]
