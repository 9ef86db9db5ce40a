/// Properties of src/Continual.Core/Methods/Lwf.fs one level above its formulas: the soft-target term
/// reads only the old classes' logits, of the snapshot and of the current model; the CE is over the
/// seen classes only; a task start takes the old classes and a frozen snapshot of the model then.
module Continual.Properties.Methods.LwfProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Methods
open Continual.Models
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support
open TorchSharp

/// Classes of the tiny architecture split into old, new and unseen ones (at least one old, one new).
type ClassSplit =
    { Old: int list
      New: int list }
    member s.Seen = s.Old @ s.New |> List.sort
    member s.Unseen = [ 0 .. 3 ] |> List.except s.Seen

/// 0: old, 1: new, 2: unseen.
let classSplit (needOld: bool) : Gen<ClassSplit> =
    Gen.arrayOfLength 4 (Gen.choose (0, 2))
    |> Gen.filter (fun roles -> Array.contains 1 roles && (not needOld || Array.contains 0 roles))
    |> Gen.map (fun roles ->
        { Old = [ for c in 0 .. 3 do if roles.[c] = 0 then c ]
          New = [ for c in 0 .. 3 do if roles.[c] = 1 then c ] })

type private LwfCase =
    { Seed: int
      Split: ClassSplit
      Inputs: Block
      Labels: int[]
      Logits: Block
      Alpha: float
      Temperature: float
      Balanced: bool }

let private lwfCase =
    gen {
        let! seed = Gen.choose (0, 10000)
        let! split = classSplit true
        let! n = Gen.choose (1, 5)
        let! inputs = block n 4
        let! ls = labels n split.New
        let! logits = block n 4
        let! alpha = Gen.elements [ 0.5; 1.0; 2.0 ]
        let! t = Gen.elements [ 1.0; 2.0; 4.0 ]
        let! balanced = Gen.elements [ false; true ]
        return { Seed = seed; Split = split; Inputs = inputs; Labels = ls; Logits = logits; Alpha = alpha; Temperature = t; Balanced = balanced }
    }

/// A frozen snapshot of a fresh model drawn from a seed.
let snapshotOf (seed: int) =
    torch.manual_seed (int64 seed) |> ignore
    use model = Backbones.create architecture
    Backbones.snapshot torch.CPU model

/// Adds `delta` to the classifier's weights and bias of the given classes (a snapshot's included).
let bumpClassifier (classes: int list) (delta: float) (model: Backbone) =
    use _ = torch.no_grad ()
    for p in model.Classifier.parameters () do
        for c in classes do
            use row = p.[int64 c]
            row.add_(Scalars.cached delta) |> ignore

let private settingsOf (c: LwfCase) : Lwf.Settings =
    { Lwf.Settings.Default with Alpha = c.Alpha; Temperature = c.Temperature; Balanced = c.Balanced }

let private terms (c: LwfCase) (teacher: Backbone) (logits: Block) =
    let state = { Lwf.initial 1L with Snapshot = Some teacher; SeenClasses = c.Split.Seen; OldClasses = c.Split.Old }
    Lwf.terms (settingsOf c) state (viewOf c.Inputs c.Labels logits []) |> termValues

/// The plain reference: CE over the seen classes; α times the soft-target CE between the snapshot's and
/// the current old-class logits at temperature T; balanced: (1 − λ) CE and λ α soft, λ = |old| / |seen|.
let private reference (c: LwfCase) (teacher: Backbone) (logits: Block) =
    let teacherLogits = rowsOf (use _ = torch.no_grad () in teacher.forward c.Inputs.Tensor)
    let ce = maskedCrossEntropyRef c.Split.Seen logits.Matrix c.Labels
    let soft = Continual.Properties.DistillationSupport.softTargetRef c.Temperature (columns c.Split.Old teacherLogits) (columns c.Split.Old logits.Matrix)
    if c.Balanced then
        let lambda = float c.Split.Old.Length / float c.Split.Seen.Length
        [ "ce", (1.0 - lambda) * ce; "lwf.kd", lambda * c.Alpha * soft ]
    else [ "ce", ce; "lwf.kd", c.Alpha * soft ]

let private expectTerms (what: string) (expected: (string * float) list) (actual: (string * float) list) =
    Expect.equal (List.map fst actual) (List.map fst expected) (what + ": the terms' names")
    List.iter2 (fun (name, e) (_, a) -> expectNear 1e-5 (sprintf "%s: %s" what name) e a) expected actual

/// The block with every entry of the given columns moved by `delta`.
let bumpColumns (columns: int list) (delta: float32) (b: Block) =
    { b with Values = b.Values |> Array.mapi (fun i v -> if List.contains (i % b.Cols) columns then v + delta else v) }

[<Tests>]
let tests =
    sequenced "methods.lwf" [
        property 60 "LwF's terms are CE over the seen classes and α soft-target CE over the old classes' snapshot logits" lwfCase (fun c ->
            use teacher = snapshotOf c.Seed
            expectTerms "LwF" (reference c teacher c.Logits) (terms c teacher c.Logits))

        property 60 "the snapshot's logits of new and unseen classes are never read" lwfCase (fun c ->
            use teacher = snapshotOf c.Seed
            let before = terms c teacher c.Logits
            bumpClassifier (c.Split.New @ c.Split.Unseen) 2.5 teacher
            expectSameTerms "after moving the snapshot's other classes" before (terms c teacher c.Logits)
            // An old class of the snapshot is read.
            bumpClassifier [ c.Split.Old.Head ] 2.5 teacher
            let after = terms c teacher c.Logits
            expectTerms "old class moved" (reference c teacher c.Logits) after)

        property 60 "the current logits of new classes enter only the CE, those of unseen classes no term" lwfCase (fun c ->
            use teacher = snapshotOf c.Seed
            let before = terms c teacher c.Logits
            let newMoved = terms c teacher (bumpColumns c.Split.New 1.7f c.Logits)
            expectNear unchanged "lwf.kd after moving the new classes' logits" (snd before.[1]) (snd newMoved.[1])
            expectSameTerms "after moving the unseen classes' logits" before (terms c teacher (bumpColumns c.Split.Unseen 40.0f c.Logits)))

        property 60 "the gradients reach the current logits as α (q_T − p_T) / (n T) on old classes for the soft term and softmax − one-hot on seen classes for the CE" lwfCase (fun c ->
            use teacher = snapshotOf c.Seed
            let state = { Lwf.initial 1L with Snapshot = Some teacher; SeenClasses = c.Split.Seen; OldClasses = c.Split.Old }
            let teacherLogits = rowsOf (use _ = torch.no_grad () in teacher.forward c.Inputs.Tensor)
            let z = c.Logits.Matrix
            let n = float z.Length
            let lambda = if c.Balanced then float c.Split.Old.Length / float c.Split.Seen.Length else 0.0
            let softWeight = (if c.Balanced then lambda else 1.0) * c.Alpha
            let ceWeight = 1.0 - lambda
            let softmax (t: float) (xs: float[]) =
                let m = Array.max xs
                let e = xs |> Array.map (fun x -> exp ((x - m) / t))
                let total = Array.sum e
                e |> Array.map (fun v -> v / total)
            let gradientOf (name: string) =
                let logits = c.Logits.Tensor.requires_grad_ true
                let view = { viewOf c.Inputs c.Labels c.Logits [] with Output = { Logits = logits; Features = [] } }
                let term = Lwf.terms (settingsOf c) state view |> List.find (fun t -> t.Name = name)
                term.Value.backward ()
                rowsOf logits.grad
            let expectedSoft =
                Array.init z.Length (fun r ->
                    let q = softmax c.Temperature [| for k in c.Split.Old -> z.[r].[k] |]
                    let p = softmax c.Temperature [| for k in c.Split.Old -> teacherLogits.[r].[k] |]
                    Array.init 4 (fun k ->
                        match List.tryFindIndex ((=) k) c.Split.Old with
                        | Some i -> softWeight * (q.[i] - p.[i]) / (n * c.Temperature)
                        | None -> 0.0))
            let expectedCe =
                Array.init z.Length (fun r ->
                    let q = softmax 1.0 [| for k in c.Split.Seen -> z.[r].[k] |]
                    Array.init 4 (fun k ->
                        match List.tryFindIndex ((=) k) c.Split.Seen with
                        | Some i -> ceWeight * (q.[i] - (if c.Labels.[r] = k then 1.0 else 0.0)) / n
                        | None -> 0.0))
            arraysClose 1e-5 "the soft term's gradient" (Array.concat expectedSoft) (Array.concat (gradientOf "lwf.kd"))
            arraysClose 1e-5 "the CE's gradient" (Array.concat expectedCe) (Array.concat (gradientOf "ce")))

        property 40 "a task start takes the old classes and a frozen snapshot of the model then, only when old classes exist" (Gen.zip (classSplit false) (Gen.choose (0, 10000))) (fun (split, seed) ->
            torch.manual_seed (int64 seed) |> ignore
            use model = Backbones.create architecture
            let data = synthetic seed 6 split.New
            let context = { contextOf model data with Classes = split.New; SeenClasses = split.Seen }
            let m = Method.pack (Lwf.method Lwf.Settings.Default) (Lwf.initial 1L)
            Expect.equal (m.WarmUp context |> Option.isSome) (not split.Old.IsEmpty) "a warm-up exactly when old classes exist"
            let started = Training.phase (fun m -> m.BeginTask context) m
            try
                let state = Method.stateOf<Lwf.State> started
                Expect.equal state.OldClasses split.Old "old classes: seen minus the task's"
                Expect.equal state.SeenClasses split.Seen "seen classes"
                match state.Snapshot with
                | None -> Expect.isEmpty split.Old "no snapshot only without old classes"
                | Some teacher ->
                    let x = data.Stored
                    let atStart = rowsOf (use _ = torch.no_grad () in model.forward x)
                    arraysClose 1e-6 "the snapshot's logits are the model's" (Array.concat atStart) (Array.concat (rowsOf (teacher.forward x)))
                    moveModel 0.5 model
                    arraysClose 1e-6 "the snapshot stays when the model moves" (Array.concat atStart) (Array.concat (rowsOf (teacher.forward x)))
                    Expect.isFalse (teacher.parameters () |> Seq.exists (fun p -> p.requires_grad)) "the snapshot takes no gradients"
            finally
                Method.dispose started)
    ]
