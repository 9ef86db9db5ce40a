/// Properties of src/Continual.Core/Methods/Er.fs one level above its formula: ER's one cross-entropy
/// is over the batch and its single draw together (every example weighs the same), read from the
/// current logits and the draw's labels, never from the logits the buffer stored.
module Continual.Properties.Methods.ErProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Methods
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support

type private ErCase =
    { Inputs: Block
      Labels: int[]
      Logits: Block
      Draw: Draw
      At: int }

let private erCase =
    gen {
        let! classes = Gen.choose (2, 6)
        let! n = Gen.choose (1, 5)
        let! m = Gen.choose (1, 7)
        let! inputs = block n 4
        let! ls = labels n [ 0 .. classes - 1 ]
        let! logits = block n classes
        let! d = draw m classes
        let! at = Gen.choose (0, 1000)
        return { Inputs = inputs; Labels = ls; Logits = logits; Draw = d; At = at }
    }

let private erTerms (c: ErCase) (d: Draw option) = Er.method.Terms () (viewOf c.Inputs c.Labels c.Logits [ d ]) |> termValues

/// The plain reference: the mean CE over the n batch rows and the m draw rows, one list of n + m.
let private reference (c: ErCase) (d: Draw) =
    crossEntropyRef (Array.append c.Logits.Matrix d.Current.Matrix) (Array.append c.Labels d.Labels)

[<Tests>]
let tests =
    sequenced "methods.er" [
        property 60 "ER's CE is the mean over the batch and the draw's rows together" erCase (fun c ->
            match erTerms c (Some c.Draw) with
            | [ "ce", v ] -> expectNear 1e-5 "ce" (reference c c.Draw) v
            | other -> failtestf "one term \"ce\" expected, got %A" (List.map fst other))

        property 60 "ER's CE reads the draw's labels and current logits, not the stored logits" erCase (fun c ->
            let before = erTerms c (Some c.Draw)
            let stored = { c.Draw with Stored = c.Draw.Stored.Bumped c.At 1.5f }
            expectSameTerms "the stored logits are not read" before (erTerms c (Some stored))
            let r = c.At % c.Draw.Labels.Length
            let ls = Array.copy c.Draw.Labels
            let row = c.Draw.Current.Matrix.[r]
            ls.[r] <- [ 0 .. row.Length - 1 ] |> List.filter ((<>) ls.[r]) |> List.maxBy (fun k -> abs (row.[k] - row.[ls.[r]]))
            let relabelled = { c.Draw with Labels = ls }
            let after = erTerms c (Some relabelled)
            expectNear 1e-5 "relabelled draw" (reference c relabelled) (snd after.Head)
            Expect.isFalse (near 1e-6 (snd before.Head) (snd after.Head)) "the draw's labels are read")

        property 40 "with an empty buffer ER is CE on the batch alone" erCase (fun c ->
            Expect.equal (erTerms c None |> List.map fst) [ "ce" ] "one term"
            expectNear 1e-5 "ce" (crossEntropyRef c.Logits.Matrix c.Labels) (snd (erTerms c None).Head)
            let strategy = Er.strategy Er.Settings.Default
            Expect.equal strategy.ReplayDraws [ Er.Settings.Default.Minibatch ] "ER asks for one draw"
            Expect.equal strategy.BufferSize Er.Settings.Default.BufferSize "ER's buffer")
    ]
