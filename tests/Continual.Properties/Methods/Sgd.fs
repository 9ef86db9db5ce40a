/// Properties of src/Continual.Core/Methods/Sgd.fs: fine-tuning's CE reads the batch alone (buffer draws,
/// when a strategy asks for some, change nothing), over every class.
module Continual.Properties.Methods.SgdProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Methods
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support

type private SgdCase =
    { Inputs: Block
      Labels: int[]
      Logits: Block
      Draw: Draw }

let private sgdCase =
    gen {
        let! classes = Gen.choose (2, 6)
        let! n = Gen.choose (1, 6)
        let! m = Gen.choose (1, 4)
        let! inputs = block n 4
        let! ls = labels n [ 0 .. classes - 1 ]
        let! logits = block n classes
        let! d = draw m classes
        return { Inputs = inputs; Labels = ls; Logits = logits; Draw = d }
    }

[<Tests>]
let tests =
    sequenced "methods.sgd" [
        property 60 "SGD's one term is CE over all classes on the batch, whatever the draws" sgdCase (fun c ->
            let expected = crossEntropyRef c.Logits.Matrix c.Labels
            for draws in [ []; [ None ]; [ Some c.Draw ]; [ Some c.Draw; Some c.Draw ] ] do
                match Sgd.method.Terms () (viewOf c.Inputs c.Labels c.Logits draws) |> termValues with
                | [ "ce", v ] -> expectNear 1e-5 (sprintf "ce with %d draws" draws.Length) expected v
                | other -> failtestf "one term \"ce\" expected, got %A" (List.map fst other))

        testCase "fine-tuning walks the stream task after task, JOINT all at once, neither with a buffer" <| fun () ->
            let sgd, joint = Sgd.strategy (), Sgd.joint ()
            Expect.equal sgd.Schedule Sequential "SGD is sequential"
            Expect.equal joint.Schedule Joint "JOINT learns all tasks at once"
            for s in [ sgd; joint ] do
                Expect.equal s.BufferSize 0 (s.Name + ": no buffer")
                Expect.isEmpty s.ReplayDraws (s.Name + ": no draws")
    ]
