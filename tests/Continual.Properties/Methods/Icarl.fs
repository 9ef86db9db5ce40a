/// Properties of src/Continual.Core/Methods/Icarl.fs one level above its formulas: the BCE's targets are
/// the snapshot's sigmoid outputs for the old classes and one-hot labels for the new ones (whatever the
/// example's label), over the old and new classes only.
module Continual.Properties.Methods.IcarlProperties

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

type private IcarlCase =
    { Seed: int
      Split: ClassSplit
      Inputs: Block
      Labels: int[]
      Logits: Block }

let private icarlCase =
    gen {
        let! seed = Gen.choose (0, 10000)
        let! split = classSplit false
        let! n = Gen.choose (1, 5)
        let! inputs = block n 4
        // Exemplars of old classes train with the new task's examples.
        let! ls = labels n split.Seen
        let! logits = block n 4
        return { Seed = seed; Split = split; Inputs = inputs; Labels = ls; Logits = logits }
    }

let private softplus (x: float) = if x > 0.0 then x + log (1.0 + exp (-x)) else log (1.0 + exp x)

/// The plain reference: the mean over examples and the old-then-new classes of
/// −[t log σ(z) + (1 − t) log(1 − σ(z))], t the snapshot's σ for old classes, one-hot for new ones.
let private reference (c: IcarlCase) (teacher: Backbone) (logits: Block) =
    let teacherLogits = rowsOf (use _ = torch.no_grad () in teacher.forward c.Inputs.Tensor)
    let z = logits.Matrix
    [| for r in 0 .. z.Length - 1 do
         for k in c.Split.Old @ c.Split.New ->
             let t =
                 if List.contains k c.Split.Old then 1.0 / (1.0 + exp (-teacherLogits.[r].[k]))
                 elif c.Labels.[r] = k then 1.0
                 else 0.0
             t * softplus (-z.[r].[k]) + (1.0 - t) * softplus z.[r].[k] |]
    |> Array.average

let private term (c: IcarlCase) (teacher: Backbone) (logits: Block) =
    let state =
        { Icarl.initial with
            Snapshot = (if c.Split.Old.IsEmpty then None else Some teacher)
            OldClasses = c.Split.Old
            NewClasses = c.Split.New }
    match Icarl.terms state (viewOf c.Inputs c.Labels logits []) |> termValues with
    | [ "icarl.bce", v ] -> v
    | other -> failtestf "one term \"icarl.bce\" expected, got %A" (List.map fst other)

[<Tests>]
let tests =
    sequenced "methods.icarl" [
        property 60 "iCaRL's BCE targets are the snapshot's sigmoid for old classes and one-hot for new ones" icarlCase (fun c ->
            use teacher = snapshotOf c.Seed
            expectNear 1e-5 "icarl.bce" (reference c teacher c.Logits) (term c teacher c.Logits))

        property 60 "unseen classes' logits and the snapshot's new and unseen classes are never read" icarlCase (fun c ->
            use teacher = snapshotOf c.Seed
            let before = term c teacher c.Logits
            expectNear unchanged "after moving the unseen classes' logits" before (term c teacher (bumpColumns c.Split.Unseen 40.0f c.Logits))
            bumpClassifier (c.Split.New @ c.Split.Unseen) 2.5 teacher
            expectNear unchanged "after moving the snapshot's new and unseen classes" before (term c teacher c.Logits)
            if not c.Split.Old.IsEmpty then
                bumpClassifier [ c.Split.Old.Head ] 2.5 teacher
                expectNear 1e-5 "after moving an old class of the snapshot" (reference c teacher c.Logits) (term c teacher c.Logits))

        property 60 "the BCE's gradient reaches the current logits as (σ(z) − t) / (n k) on old and new classes only" icarlCase (fun c ->
            use teacher = snapshotOf c.Seed
            let teacherLogits = rowsOf (use _ = torch.no_grad () in teacher.forward c.Inputs.Tensor)
            let z = c.Logits.Matrix
            let classes = c.Split.Old @ c.Split.New
            let scale = float (z.Length * classes.Length)
            let sigmoid x = 1.0 / (1.0 + exp (-x))
            let expected =
                Array.init z.Length (fun r ->
                    Array.init 4 (fun k ->
                        if List.contains k c.Split.Old then (sigmoid z.[r].[k] - sigmoid teacherLogits.[r].[k]) / scale
                        elif List.contains k c.Split.New then (sigmoid z.[r].[k] - (if c.Labels.[r] = k then 1.0 else 0.0)) / scale
                        else 0.0))
            let state =
                { Icarl.initial with
                    Snapshot = (if c.Split.Old.IsEmpty then None else Some teacher)
                    OldClasses = c.Split.Old
                    NewClasses = c.Split.New }
            let logits = c.Logits.Tensor.requires_grad_ true
            let view = { viewOf c.Inputs c.Labels c.Logits [] with Output = { Logits = logits; Features = [] } }
            (Icarl.terms state view).Head.Value.backward ()
            arraysClose 1e-5 "the BCE's gradient" (Array.concat expected) (floats logits.grad))
    ]
