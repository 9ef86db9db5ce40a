/// Properties of src/Continual.Core/Methods/Der.fs one level above its formulas: each DER++ term reads
/// the draw it is meant to use (the first draw's stored logits, the second draw's labels), and the
/// shell's buffer that DER reads keeps the model's logits from before the optimiser step.
module Continual.Properties.Methods.DerProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Data
open Continual.Methods
open Continual.Models
open Continual.Replay
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support
open TorchSharp

/// A DER++ step: the batch's inputs, labels and logits, two draws, α and β, where to perturb.
type private DerppCase =
    { Classes: int
      Inputs: Block
      Labels: int[]
      Logits: Block
      First: Draw
      Second: Draw
      Alpha: float
      Beta: float
      At: int
      Delta: float32 }

let private derppCase =
    gen {
        let! classes = Gen.choose (2, 6)
        let! n = Gen.choose (1, 5)
        let! m1 = Gen.choose (1, 5)
        let! m2 = Gen.choose (1, 5)
        let! inputs = block n 4
        let! ls = labels n [ 0 .. classes - 1 ]
        let! logits = block n classes
        let! first = draw m1 classes
        let! second = draw m2 classes
        let! alpha = Gen.elements [ 0.3; 1.0; 2.5 ]
        let! beta = Gen.elements [ 0.5; 1.0; 1.7 ]
        let! at = Gen.choose (0, 1000)
        let! delta = Gen.elements [ 0.37f; -0.61f; 1.13f ]
        return { Classes = classes; Inputs = inputs; Labels = ls; Logits = logits; First = first; Second = second
                 Alpha = alpha; Beta = beta; At = at; Delta = delta }
    }

let private settings (c: DerppCase) : Der.PlusPlusSettings = { Der.PlusPlusSettings.Default with Alpha = c.Alpha; Beta = c.Beta }

/// DER's settings of a case (DER has no β).
let private derSettings (c: DerppCase) : Der.Settings = { BufferSize = (settings c).BufferSize; Minibatch = (settings c).Minibatch; Alpha = c.Alpha }

/// DER++'s terms on a case's view, as (name, value).
let private derppTerms (c: DerppCase) =
    Der.derppMethod (settings c) |> fun m -> m.Terms () (viewOf c.Inputs c.Labels c.Logits [ Some c.First; Some c.Second ]) |> termValues

/// The plain reference: CE on the batch, α MSE(current, stored) on the first draw, β CE on the second
/// draw's current logits and labels.
let private derppReference (c: DerppCase) =
    [ "ce", crossEntropyRef c.Logits.Matrix c.Labels
      "der.logits", c.Alpha * mseRef c.First.Current.Matrix c.First.Stored.Matrix
      "derpp.labels", c.Beta * crossEntropyRef c.Second.Current.Matrix c.Second.Labels ]

let private expectTerms (what: string) (expected: (string * float) list) (actual: (string * float) list) =
    Expect.equal (List.map fst actual) (List.map fst expected) (what + ": the terms' names")
    List.iter2 (fun (name, e) (_, a) -> expectNear 1e-5 (sprintf "%s: %s" what name) e a) expected actual

/// Every term but `changed` has exactly its old value.
let private onlyChanged (changed: string option) (before: (string * float) list) (after: (string * float) list) =
    List.iter2 (fun (name, b) (_, a) ->
        if Some name <> changed && not (near unchanged b a) then failtestf "%s changed from %.9g to %.9g" name b a) before after

/// A label of the same row that gives a different cross-entropy (the column farthest from the label's).
let private otherLabel (logits: float[]) (label: int) =
    [ 0 .. logits.Length - 1 ] |> List.filter ((<>) label) |> List.maxBy (fun c -> abs (logits.[c] - logits.[label]))

/// The labels with row `at` (modulo their length) moved to another class.
let private relabel (d: Draw) (at: int) =
    let r = at % d.Labels.Length
    let ls = Array.copy d.Labels
    ls.[r] <- otherLabel d.Current.Matrix.[r] ls.[r]
    { d with Labels = ls }

/// A buffer step case: slots, minibatch, the batch sizes of the steps, the data's seed.
type private BufferCase =
    { Capacity: int
      Minibatch: int
      Sizes: int list
      Seed: int }

let private bufferCase =
    gen {
        let! capacity = Gen.choose (1, 10)
        let! minibatch = Gen.choose (1, 4)
        let! steps = Gen.choose (1, 5)
        let! sizes = Gen.listOfLength steps (Gen.choose (1, 6))
        let! seed = Gen.choose (0, 10000)
        return { Capacity = capacity; Minibatch = minibatch; Sizes = sizes; Seed = seed }
    }

/// What a reference slot holds: the input row, the label, the logits at insertion, the task.
type private Slot = { Input: float[]; Label: int; Logits: float[]; Task: int }

[<Tests>]
let tests =
    sequenced "methods.der" [
        property 60 "DER++'s terms are CE on the batch, α MSE on the first draw's stored logits, β CE on the second draw's labels" derppCase (fun c ->
            expectTerms "DER++" (derppReference c) (derppTerms c))

        property 60 "perturbing the first draw's stored logits changes only der.logits" derppCase (fun c ->
            let before = derppTerms c
            let c' = { c with First = { c.First with Stored = c.First.Stored.Bumped c.At c.Delta } }
            let after = derppTerms c'
            onlyChanged (Some "der.logits") before after
            expectTerms "perturbed" (derppReference c') after)

        property 60 "perturbing the second draw's labels changes only derpp.labels" derppCase (fun c ->
            let before = derppTerms c
            let c' = { c with Second = relabel c.Second c.At }
            let after = derppTerms c'
            onlyChanged (Some "derpp.labels") before after
            expectTerms "perturbed" (derppReference c') after
            Expect.isFalse (near 1e-6 (snd before.[2]) (snd after.[2])) "the relabelled draw's CE differs")

        property 60 "the first draw's labels and the second draw's stored logits are read by no term" derppCase (fun c ->
            let before = derppTerms c
            let c' =
                { c with
                    First = relabel c.First c.At
                    Second = { c.Second with Stored = c.Second.Stored.Bumped c.At c.Delta } }
            onlyChanged None before (derppTerms c'))

        property 40 "DER's logit term reads its single draw; with an empty buffer DER and DER++ are CE on the batch" derppCase (fun c ->
            let der = Der.derMethod (derSettings c)
            let view = viewOf c.Inputs c.Labels c.Logits [ Some c.First ]
            expectTerms "DER" [ "ce", crossEntropyRef c.Logits.Matrix c.Labels; "der.logits", c.Alpha * mseRef c.First.Current.Matrix c.First.Stored.Matrix ]
                (der.Terms () view |> termValues)
            let ce = [ "ce", crossEntropyRef c.Logits.Matrix c.Labels ]
            expectTerms "DER, empty buffer" ce (der.Terms () (viewOf c.Inputs c.Labels c.Logits [ None ]) |> termValues)
            expectTerms "DER++, empty buffer" ce ((Der.derppMethod (settings c)).Terms () (viewOf c.Inputs c.Labels c.Logits [ None; None ]) |> termValues)
            let m = Der.PlusPlusSettings.Default.Minibatch
            Expect.equal (Der.derpp (settings c)).ReplayDraws [ m; m ] "DER++ asks for two draws of the minibatch size"
            Expect.equal (Der.der (derSettings c)).ReplayDraws [ m ] "DER asks for one draw")

        property 40 "after each step the buffer holds the pre-step logits of the examples reservoir sampling keeps" bufferCase (fun c ->
            let strategy = Der.derpp { Der.PlusPlusSettings.Default with BufferSize = c.Capacity; Minibatch = c.Minibatch }
            let data = synthetic c.Seed (List.sum c.Sizes) [ 0; 1; 2; 3 ]
            let bench =
                { Name = "tiny"; InputShape = (1, 2, 2); NumClasses = 4; ClassNames = Benchmarks.numberedClassNames 4; Train = data; Test = data
                  Tasks = [ { Index = 0; Classes = [ 0; 1 ] }; { Index = 1; Classes = [ 2; 3 ] } ] }
            let mutable state = Training.initialise architecture bench strategy trainingSettings
            try
                let reference = Array.create c.Capacity None
                let mutable rng = state.Buffer.Value.Rng
                let mutable seen = 0L
                let mutable start = 0
                for (k, size) in List.indexed c.Sizes do
                    use scope = torch.NewDisposeScope()
                    let x = data.Stored.narrow(0L, int64 start, int64 size)
                    let y = data.Labels.narrow(0L, int64 start, int64 size)
                    let ys = Array.sub data.LabelArray start size
                    let task = k % 2
                    let logitsOf () = rowsOf (use _ = torch.no_grad () in state.Model.forward x)
                    let before = logitsOf ()
                    // The reference: the step's draws advance the buffer's generator first, then each row
                    // offers itself to the reservoir in order.
                    for _ in strategy.ReplayDraws do
                        let filled = int (min seen (int64 c.Capacity))
                        if filled > 0 then rng <- snd (Random.sampleWithoutReplacement c.Minibatch filled rng)
                    let inputs = rowsOf x
                    for r in 0 .. size - 1 do
                        let slot, rng' = Reservoir.slot c.Capacity seen rng
                        rng <- rng'
                        seen <- seen + 1L
                        slot |> Option.iter (fun s -> reference.[s] <- Some { Input = inputs.[r]; Label = ys.[r]; Logits = before.[r]; Task = task })
                    let _, next = Training.step strategy { Inputs = x; Labels = y; LabelArray = ys; Task = task } state
                    state <- next
                    let after = logitsOf ()
                    if Array.forall2 (Array.forall2 (fun (a: float) b -> abs (a - b) < 1e-4)) before after then
                        failtest "the step did not move the model's logits (the property would not tell pre- from post-step)"
                    let buffer = state.Buffer.Value
                    Expect.equal buffer.Seen seen "examples offered"
                    Expect.equal buffer.Rng rng "the buffer's generator"
                    let stored = rowsOf buffer.Logits
                    let examples = rowsOf buffer.Examples
                    let labelsHeld = floats buffer.Labels
                    for s in 0 .. c.Capacity - 1 do
                        match reference.[s] with
                        | Some slot ->
                            arraysClose 1e-5 (sprintf "step %d, slot %d: stored logits" k s) slot.Logits stored.[s]
                            arraysClose 0.0 (sprintf "step %d, slot %d: input" k s) slot.Input examples.[s]
                            Expect.equal (int labelsHeld.[s]) slot.Label (sprintf "step %d, slot %d: label" k s)
                            Expect.equal buffer.LabelArray.[s] slot.Label (sprintf "step %d, slot %d: host label" k s)
                            Expect.equal buffer.TaskIds.[s] slot.Task (sprintf "step %d, slot %d: task" k s)
                        | None ->
                            Expect.equal buffer.TaskIds.[s] -1 (sprintf "step %d, slot %d: empty" k s)
                            Expect.equal buffer.LabelArray.[s] -1 (sprintf "step %d, slot %d: empty label" k s)
                    start <- start + size
            finally
                Training.dispose state)
    ]
