/// Properties of a growing head (Models.Growth.fs, Backbones.grow): growth leaves the old outputs of
/// any input unchanged, and a penalty's value and its gradient on the old rows the same.
module Continual.Properties.ModelsGrowth

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Models
open Continual.Penalties
open Continual.Properties.PropertyConfig
open TorchSharp

/// Shapes of a tiny MLP 4-5-c before (c = 4) and after (c = 6) growth.
let private shapesBefore = [ [| 5L; 4L |]; [| 5L |]; [| 4L; 5L |]; [| 4L |] ]
let private shapesAfter = [ [| 5L; 4L |]; [| 5L |]; [| 6L; 5L |]; [| 6L |] ]
let private count (shapes: int64[] list) = shapes |> List.sumBy (Array.fold (*) 1L) |> int

let private values (lo: int) (hi: int) (n: int) : Gen<float32[]> =
    Gen.arrayOfLength n (Gen.choose (lo, hi)) |> Gen.map (Array.map (fun i -> float32 i / 1000.0f))

let private split (shapes: int64[] list) (flat: float32[]) : Tensor list =
    let mutable offset = 0
    [ for shape in shapes ->
        let n = int (Array.fold (*) 1L shape)
        let t = torch.tensor(Array.sub flat offset n).reshape(shape)
        offset <- offset + n
        t ]

[<Tests>]
let tests =
    testList "models.growth" [
        testPropertyWithConfig (fixedSeed 40) "growth leaves the old logits of any input unchanged and keeps the old rows exactly"
            (Prop.forAll (Arb.fromGen (Gen.zip (Gen.choose (0, 10000)) (values -2000 2000 (3 * 16)))) (fun (seed, inputs) ->
                use scope = torch.NewDisposeScope()
                torch.manual_seed (int64 seed) |> ignore
                use model = Backbones.create (Backbones.ofName "mlp" (1, 4, 4) 3)
                use grown = Backbones.grow torch.CPU 7 model
                let x = torch.tensor(inputs).reshape(3L, 16L)
                model.eval ()
                grown.eval ()
                use _ = torch.no_grad ()
                let before = model.forward x
                let after = grown.forward x
                let difference = Scalars.toFloat32 ((after.narrow(1L, 0L, 3L) - before).abs().max())
                let rowsKept =
                    Seq.zip (model.parameters ()) (grown.parameters ())
                    |> Seq.forall (fun (o, g) -> (Scalars.toBool (g.narrow(0L, 0L, o.shape.[0]).eq(o).all())))
                difference <= 1e-5f && rowsKept && after.shape.[1] = 7L))

        testPropertyWithConfig (fixedSeed 60) "a penalty's value right after growth equals its value before, and its gradient on the old rows too"
            (Prop.forAll
                (Arb.fromGen (Gen.zip3 (values 0 3000 (count shapesBefore)) (values -2000 2000 (count shapesBefore)) (values -2000 2000 (count shapesAfter))))
                (fun (importance, anchor, theta) ->
                    use scope = torch.NewDisposeScope()
                    let grownParameters = split shapesAfter theta
                    let growth = { OldClasses = 4; NewClasses = 6; OldShapes = shapesBefore; Parameters = grownParameters }
                    // θ before the growth: the grown parameters' old rows.
                    let oldParameters = List.map2 (fun (p: Tensor) (s: int64[]) -> p.narrow(0L, 0L, s.[0])) grownParameters shapesBefore
                    let q = Quadratic.create Half 1.3 (split shapesBefore importance) (split shapesBefore anchor)
                    let grown = HeadGrowth.growQuadratic growth q
                    let before = Quadratic.value q oldParameters
                    let after = Quadratic.value grown grownParameters
                    let g0 = torch.zeros([| int64 (count shapesBefore) |])
                    Quadratic.addGradient q (Quadratic.concatenate oldParameters) g0
                    let g1 = torch.zeros([| int64 (count shapesAfter) |])
                    Quadratic.addGradient grown (Quadratic.concatenate grownParameters) g1
                    let oldRowsOfNew = HeadGrowth.growFlat growth RowFill.Zeros g0
                    let gradientSame = (Scalars.toFloat32 ((g1 - oldRowsOfNew).abs().max())) <= 1e-6f
                    Quadratic.dispose q
                    Quadratic.dispose grown
                    abs (after - before) <= 1e-6 * (1.0 + abs before) && gradientSame)) ]
