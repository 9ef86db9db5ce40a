/// Properties of every importance penalty (Penalties.Quadratic.fs and each method's prepared penalty):
/// non-negative, zero at the anchor, positive once moved, linear in λ and Ω, quadratic in the
/// displacement, and with the autograd gradient `λ Ω (θ − θ*)` of a plain-array reference.
module Continual.Properties.PenaltiesQuadratic

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Penalties
open Continual.Properties.PenaltiesFixtures
open TorchSharp

let private lambda = 1.7

/// The tiny MLP's parameter shapes.
let private shapes = [ [| 5L; 4L |]; [| 5L |]; [| 4L; 5L |]; [| 4L |] ]

let private tensors (flat: float[]) : Tensor list =
    let mutable offset = 0
    [ for shape in shapes ->
        let n = int (Array.fold (*) 1L shape)
        let t = torch.tensor(Array.sub flat offset n |> Array.map float32, dtype = torch.ScalarType.Float32).reshape(shape)
        offset <- offset + n
        t ]

let private nonNegative : Gen<float[]> =
    Gen.arrayOfLength parameterCount (Gen.frequency [ 1, Gen.constant 0; 3, Gen.choose (1, 5000) ])
    |> Gen.map (Array.map (fun i -> float (float32 i / 1000.0f)))

let private anyValues : Gen<float[]> =
    Gen.arrayOfLength parameterCount (Gen.choose (-3000, 3000)) |> Gen.map (Array.map (fun i -> float (float32 i / 1000.0f)))

let private add (a: float[]) (b: float[]) = Array.map2 (fun x y -> float (float32 (x + y))) a b

/// Properties of one method's penalty, from its state after training on tiny tasks.
let private methodProperties (name: string) =
    let twoTasks () = methodState name lambda 2
    let oneTask () = methodState name lambda 1
    let scaledLambda () = methodState name (3.0 * lambda) 1
    testList name [
        testPropertyWithConfig config "non-negative" (Prop.forAll (Arb.fromGen displacement) (fun d ->
            let e, model, anchor = twoTasks ()
            let v, _ = termAt e model (add anchor d)
            v >= 0.0))

        testCase "exactly zero at the anchor, with a zero gradient" <| fun () ->
            let e, model, anchor = oneTask ()
            let v, g = termAt e model anchor
            Expect.equal v 0.0 "the penalty at θ = θ* is exactly 0"
            Expect.isTrue (g |> Array.forall (fun x -> x = 0.0)) "its gradient at θ = θ* is exactly 0"

        testPropertyWithConfig config "positive when an important parameter moved" (Prop.forAll (Arb.fromGen displacement) (fun d ->
            let e, model, anchor = twoTasks ()
            let r = reference name lambda e anchor
            let theta = add anchor d
            let moved = r.Pairs |> List.exists (fun (omega, a) -> Array.exists2 (fun (o: float) (x: float, t: float) -> o > 0.0 && x <> t) omega (Array.zip a theta))
            let v, _ = termAt e model theta
            not moved || v > 0.0))

        testPropertyWithConfig config "equals the plain-array reference" (Prop.forAll (Arb.fromGen displacement) (fun d ->
            let e, model, anchor = twoTasks ()
            let theta = add anchor d
            let v, _ = termAt e model theta
            close 1e-4 (referenceValue (reference name lambda e anchor) theta) v))

        testPropertyWithConfig config "the gradient training applies equals λ Ω (θ − θ*) of the reference" (Prop.forAll (Arb.fromGen displacement) (fun d ->
            let e, model, anchor = twoTasks ()
            let theta = add anchor d
            let _, g = termAt e model theta
            arraysClose 1e-4 "gradient" (referenceGradient (reference name lambda e anchor) theta) g
            true))

        testPropertyWithConfig config "autograd gradient of the penalty as a loss term equals λ Ω (θ − θ*) of the reference" (Prop.forAll (Arb.fromGen displacement) (fun d ->
            let e, _, anchor = twoTasks ()
            let theta = add anchor d
            let p = tensors theta |> List.map (fun t -> t.requires_grad_ true)
            match e.Penalties() with
            | [ term ] ->
                let value = Quadratic.term term.Penalty p
                value.backward ()
                arraysClose 1e-4 "gradient" (referenceGradient (reference name lambda e anchor) theta) (flatValues [ for x in p -> x.grad ])
                true
            | other -> failwithf "one penalty expected, got %d" other.Length))

        testPropertyWithConfig config "linear in λ" (Prop.forAll (Arb.fromGen displacement) (fun d ->
            let e1, model1, anchor1 = oneTask ()
            let e3, model3, anchor3 = scaledLambda ()
            Expect.equal anchor3 anchor1 "the same training before the penalty exists"
            let v1, _ = termAt e1 model1 (add anchor1 d)
            let v3, _ = termAt e3 model3 (add anchor3 d)
            close 1e-5 (3.0 * v1) v3))

        testPropertyWithConfig config "linear in Ω" (Prop.forAll (Arb.fromGen (Gen.choose (1, 40))) (fun k ->
            let e, model, anchor = oneTask ()
            let r = reference name lambda e anchor
            let scale = if r.Coefficient = lambda then Whole else Half
            let theta = Array.map (fun x -> x + 0.01) anchor
            let build (factor: float) =
                Quadratic.consolidate scale lambda [ for (omega, a) in r.Pairs -> tensors (Array.map (fun o -> o * factor) omega), tensors a ]
            let q1, qk = build 1.0, build (float k / 8.0)
            let v1, vk = Quadratic.value q1 (tensors theta), Quadratic.value qk (tensors theta)
            Quadratic.dispose q1
            Quadratic.dispose qk
            close 1e-5 (float k / 8.0 * v1) vk))

        testPropertyWithConfig config "quadratic in the displacement" (Prop.forAll (Arb.fromGen (Gen.zip displacement (Gen.elements [ -2.0; 0.5; 3.0 ]))) (fun (d, t) ->
            let e, model, anchor = oneTask ()
            let v1, _ = termAt e model (Array.map2 (+) anchor d)
            let vt, _ = termAt e model (Array.map2 (fun a x -> a + t * x) anchor d)
            close 1e-4 (t * t * v1) vt))
    ]

[<Tests>]
let tests =
    sequenced "penalties" [
        testList "every method's penalty" [ for name in methods -> methodProperties name ]

        testList "quadratic" [
            testPropertyWithConfig config "term has the value and gradient of the definition" (Prop.forAll (Arb.fromGen (Gen.zip3 nonNegative anyValues anyValues)) (fun (omega, anchor, theta) ->
                for scale in [ Half; Whole ] do
                    let q = Quadratic.create scale lambda (tensors omega) (tensors anchor)
                    let p1 = tensors theta |> List.map (fun t -> t.requires_grad_ true)
                    let p2 = tensors theta |> List.map (fun t -> t.requires_grad_ true)
                    let fast = Quadratic.term q p1
                    let definition = Quadratic.penalty scale lambda (tensors omega) (tensors anchor) p2
                    fast.backward ()
                    definition.backward ()
                    Expect.isTrue (close 1e-5 (Scalars.toFloat definition) (Scalars.toFloat fast)) "same value"
                    arraysClose 1e-5 "same gradient" (flatValues [ for p in p2 -> p.grad ]) (flatValues [ for p in p1 -> p.grad ])
                    Quadratic.dispose q
                true))

            testPropertyWithConfig config "the closed form adds the definition's gradient, and valueAt is its value" (Prop.forAll (Arb.fromGen (Gen.zip3 nonNegative anyValues (Gen.zip anyValues anyValues))) (fun (omega, anchor, (theta, earlier)) ->
                for scale in [ Half; Whole ] do
                    let q = Quadratic.create scale lambda (tensors omega) (tensors anchor)
                    let p = tensors theta |> List.map (fun t -> t.requires_grad_ true)
                    let definition = Quadratic.penalty scale lambda (tensors omega) (tensors anchor) p
                    definition.backward ()
                    // Gradients already in the buffer (the task loss's) must be kept and added to.
                    use values = Quadratic.concatenate (tensors theta)
                    use gradients = Quadratic.concatenate (tensors earlier)
                    Quadratic.addGradient q values gradients
                    let v = Quadratic.valueAt q values
                    Expect.isTrue (close 1e-5 (Scalars.toFloat definition) v) "same value"
                    let expected = Array.map2 (+) earlier (flatValues [ for x in p -> x.grad ])
                    arraysClose 1e-5 "earlier gradient plus the definition's" expected (flatValues [ gradients ])
                    Quadratic.dispose q
                true))

            testCase "the closed form refuses vectors of another length" <| fun () ->
                let q = Quadratic.create Half lambda (tensors (Array.create parameterCount 1.0)) (tensors (Array.zeroCreate parameterCount))
                use short = torch.zeros([| int64 parameterCount - 1L |])
                Expect.throwsT<System.ArgumentException> (fun () -> Quadratic.addGradient q short short) "length checked"
                Expect.throwsT<System.ArgumentException> (fun () -> Quadratic.valueAt q short |> ignore) "length checked"
                Quadratic.dispose q

            testPropertyWithConfig config "consolidating anchors equals the sum of the tasks' penalties" (Prop.forAll (Arb.fromGen (Gen.zip3 (Gen.listOfLength 3 nonNegative) (Gen.listOfLength 3 anyValues) anyValues)) (fun (omegas, anchors, theta) ->
                let pairs = List.zip omegas anchors
                let q = Quadratic.consolidate Half lambda [ for (o, a) in pairs -> tensors o, tensors a ]
                let r = { Name = "ewc"; Coefficient = lambda / 2.0; Pairs = pairs }
                let p = tensors theta |> List.map (fun t -> t.requires_grad_ true)
                let term = Quadratic.term q p
                term.backward ()
                Expect.isTrue (close 1e-4 (referenceValue r theta) (Scalars.toFloat term)) "value"
                arraysClose 1e-4 "gradient" (referenceGradient r theta) (flatValues [ for x in p -> x.grad ])
                Quadratic.dispose q
                true))

            testPropertyWithConfig config "equal anchors consolidate to exactly zero at that anchor" (Prop.forAll (Arb.fromGen (Gen.zip (Gen.listOfLength 3 nonNegative) anyValues)) (fun (omegas, anchor) ->
                let q = Quadratic.consolidate Half lambda [ for o in omegas -> tensors o, tensors anchor ]
                let v = Quadratic.value q (tensors anchor)
                Quadratic.dispose q
                v = 0.0))
        ]
    ]
