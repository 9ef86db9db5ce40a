/// Properties of src/Continual.Core/Distillation.Losses.fs: each loss against its plain reference
/// implementation, and the invariants METHODS.md and issue 5 state.
module Continual.Properties.DistillationLosses

open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
open Continual
open Continual.Properties.DistillationSupport

let private tolerance = 1e-4

/// Two logit matrices of the same shape (n in 1..4, classes in 2..6) and a temperature in [0.5, 10].
let private logitPair =
    gen {
        let! n = Gen.choose (1, 4)
        let! c = Gen.choose (2, 6)
        let! a = matrix n c
        let! b = matrix n c
        let! t = Gen.choose (5, 100) |> Gen.map (fun i -> float i / 10.0)
        return a, b, t
    }

/// Two feature maps of one shape.
let private mapPair =
    gen {
        let! shape = mapShape
        let! a = featureMapOfShape shape
        let! b = featureMapOfShape shape
        return a, b
    }

/// Two embedding matrices (n in 3..6, D in 2..4) whose rows are well separated.
let private embeddingPair =
    gen {
        let! n = Gen.choose (3, 6)
        let! d = Gen.choose (2, 4)
        let! a = matrix n d
        let! b = matrix n d
        return a, b
    }
    |> Gen.filter (fun (a, b) -> minSeparation a > 0.1 && minSeparation b > 0.1)

let private gradientBound (loss: Tensor -> Tensor) (student: Tensor) =
    let s = student.detach().requires_grad_(true)
    let value = loss s
    value.backward ()
    floats s.grad |> Array.fold (fun worst g -> if System.Double.IsFinite g then max worst (abs g) else infinity) 0.0

let private gradientsFinite (loss: Tensor -> Tensor) (student: Tensor) =
    System.Double.IsFinite(gradientBound loss student)

[<Tests>]
let kdTests =
    testList "distillation.kd" [
        testCase "softmax with temperature reproduces the lecture's table" <| fun () ->
            scoped (fun () ->
                let p t (z: float list) = floats (Distillation.softmaxWithTemperature t (tensorOf [ 1; z.Length ] (Array.ofList z))) |> Array.map (fun v -> System.Math.Round(v, 3))
                Expect.equal (p 1.0 [ 5.0; 1.0 ]) [| 0.982; 0.018 |] "logits 5, 1 at T = 1"
                Expect.equal (p 10.0 [ 5.0; 1.0 ]) [| 0.599; 0.401 |] "logits 5, 1 at T = 10"
                Expect.equal (p 1.0 [ 3.0; 2.0 ]) [| 0.731; 0.269 |] "logits 3, 2 at T = 1")

        property "softmax with temperature matches the reference, sums to 1 and ignores a shift" logitPair (fun (a, _, t) ->
            let p = floats (Distillation.softmaxWithTemperature t (tensor2 a))
            let shifted = floats (Distillation.softmaxWithTemperature t (tensor2 (a |> Array.map (Array.map ((+) 1.5)))))
            let reference = Array.concat (a |> Array.map (softmaxRef t))
            let c = a.[0].Length
            Array.forall2 (close tolerance) p reference
            && Array.forall2 (close tolerance) p shifted
            && p |> Array.chunkBySize c |> Array.forall (fun row -> close tolerance (Array.sum row) 1.0))

        property "KD matches the reference" logitPair (fun (a, b, t) ->
            close tolerance (scalarOf (Distillation.kd t (tensor2 a) (tensor2 b))) (kdRef t a b))

        property "KD is non-negative" logitPair (fun (a, b, t) ->
            scalarOf (Distillation.kd t (tensor2 a) (tensor2 b)) >= -1e-6)

        property "KD is zero for equal logits" logitPair (fun (a, _, t) ->
            abs (scalarOf (Distillation.kd t (tensor2 a) (tensor2 a))) < 1e-5)

        property "KD is invariant to adding a constant to the logits" logitPair (fun (a, b, t) ->
            let shift k (m: float[][]) = m |> Array.map (Array.map ((+) k))
            let base' = scalarOf (Distillation.kd t (tensor2 a) (tensor2 b))
            close tolerance base' (scalarOf (Distillation.kd t (tensor2 (shift 1.7 a)) (tensor2 (shift -0.9 b)))))

        property "LwF's soft-target cross-entropy matches the reference" logitPair (fun (a, b, t) ->
            close tolerance (scalarOf (Distillation.softTargetCrossEntropy t (tensor2 a) (tensor2 b))) (softTargetRef t a b))
    ]

[<Tests>]
let fitNetsTests =
    let case =
        gen {
            let! n = Gen.choose (1, 4)
            let! ds = Gen.choose (1, 5)
            let! dt = Gen.choose (1, 5)
            let! v = matrix n ds
            let! w = matrix dt ds
            let! b = Gen.arrayOfLength dt value
            let! noise = matrix n dt
            return v, w, b, noise
        }
    let apply (w: float[][]) (b: float[]) (v: float[][]) = v |> Array.map (fun x -> Array.init w.Length (fun i -> dot w.[i] x + b.[i]))
    let regressorOf (w: float[][]) (b: float[]) =
        let r = torch.nn.Linear(int64 w.[0].Length, int64 w.Length)
        use _ = torch.no_grad ()
        r.weight.copy_(tensor2 w) |> ignore
        r.bias.copy_(tensorOf [ b.Length ] b) |> ignore
        r
    testList "distillation.fitnets" [
        property "FitNets is zero when the regressor maps student to teacher exactly" case (fun (v, w, b, _) ->
            use r = regressorOf w b
            let teacher = tensor2 (apply w b v)
            abs (scalarOf (Distillation.fitNets teacher (r.forward (tensor2 v)))) < 1e-5)

        property "FitNets matches the reference ½‖u − r(v)‖², averaged over the batch" case (fun (v, w, b, noise) ->
            use r = regressorOf w b
            let u = Array.map2 (Array.map2 (+)) (apply w b v) noise
            let reference = Array.map2 (fun (x: float[]) y -> 0.5 * (sub x y |> Array.sumBy (fun d -> d * d))) u (apply w b v) |> Array.average
            close tolerance (scalarOf (Distillation.fitNets (tensor2 u) (r.forward (tensor2 v)))) reference)

        property "the regressor starts as the identity when widths agree" (matrix 3 4) (fun v ->
            use r = Distillation.fitNetsRegressor 4 4 false
            let x = tensor2 v
            abs (scalarOf (Distillation.fitNets x (r.forward x))) < 1e-6)
    ]

[<Tests>]
let nstTests =
    testList "distillation.nst" [
        property "NST matches the reference MMD² with the polynomial kernel" mapPair (fun (a, b) ->
            close tolerance (scalarOf (Distillation.nst 2 0.0 (mapTensor a) (mapTensor b))) (nstRef 2 0.0 a b)
            && close tolerance (scalarOf (Distillation.nst 3 0.5 (mapTensor a) (mapTensor b))) (nstRef 3 0.5 a b))

        property "NST's MMD is non-negative" mapPair (fun (a, b) ->
            scalarOf (Distillation.nst 2 0.0 (mapTensor a) (mapTensor b)) >= -1e-5)

        property "NST's MMD is zero for equal maps" mapPair (fun (a, _) ->
            abs (scalarOf (Distillation.nst 2 0.0 (mapTensor a) (mapTensor a))) < 1e-5)
    ]

[<Tests>]
let attentionTests =
    testList "distillation.attention" [
        property "attention transfer matches the reference for p = 2 and p = 1" mapPair (fun (a, b) ->
            close tolerance (scalarOf (Distillation.attentionTransfer 2.0 [ mapTensor a, mapTensor b ])) (atRef 2.0 [ a, b ])
            && close tolerance (scalarOf (Distillation.attentionTransfer 1.0 [ mapTensor a, mapTensor b ])) (atRef 1.0 [ a, b ]))

        property "attention transfer is invariant to a positive rescaling of a feature map" (Gen.zip mapPair positive) (fun ((a, b), k) ->
            let scaled = { b with Values = b.Values |> Array.map ((*) k) }
            let before = scalarOf (Distillation.attentionTransfer 2.0 [ mapTensor a, mapTensor b ])
            close tolerance before (scalarOf (Distillation.attentionTransfer 2.0 [ mapTensor a, mapTensor scaled ]))
            && close tolerance before (scalarOf (Distillation.attentionTransfer 2.0 [ mapTensor { a with Values = a.Values |> Array.map ((*) k) }, mapTensor b ])))

        property "attention transfer is zero for equal maps and has finite gradients there" mapPair (fun (a, _) ->
            abs (scalarOf (Distillation.attentionTransfer 2.0 [ mapTensor a, mapTensor a ])) < 1e-5
            && gradientsFinite (fun s -> Distillation.attentionTransfer 2.0 [ mapTensor a, s ]) (mapTensor a))
    ]

[<Tests>]
let rkdTests =
    let transformed =
        gen {
            let! a, _ = embeddingPair
            let d = a.[0].Length
            let! q = orthogonal d
            let! s = positive
            let! t = Gen.arrayOfLength d value
            return a, similarity q s t a
        }
    testList "distillation.rkd" [
        property "distance and angle relations match the reference" embeddingPair (fun (a, _) ->
            Array.forall2 (close tolerance) (floats (Distillation.rkdDistanceRelations (tensor2 a))) (Array.concat (distanceRelationsRef a))
            && Array.forall2 (close tolerance) (floats (Distillation.rkdAngleRelations (tensor2 a))) (angleRelationsRef a |> Array.concat |> Array.concat))

        property "RKD's distance and angle losses match the reference" embeddingPair (fun (a, b) ->
            close tolerance (scalarOf (Distillation.rkdDistance (tensor2 a) (tensor2 b))) (rkdDistanceRef a b)
            && close tolerance (scalarOf (Distillation.rkdAngle (tensor2 a) (tensor2 b))) (rkdAngleRef a b))

        property "RKD's relations are invariant to translating, rotating and uniformly scaling the embeddings" transformed (fun (a, moved) ->
            Array.forall2 (close 1e-3) (floats (Distillation.rkdDistanceRelations (tensor2 a))) (floats (Distillation.rkdDistanceRelations (tensor2 moved)))
            && Array.forall2 (close 1e-3) (floats (Distillation.rkdAngleRelations (tensor2 a))) (floats (Distillation.rkdAngleRelations (tensor2 moved)))
            && abs (scalarOf (Distillation.rkdDistance (tensor2 a) (tensor2 moved))) < 1e-5
            && abs (scalarOf (Distillation.rkdAngle (tensor2 a) (tensor2 moved))) < 1e-5)

        property "RKD has finite gradients when student equals teacher" embeddingPair (fun (a, _) ->
            gradientsFinite (fun s -> (Distillation.rkdDistance (tensor2 a) s).add(Distillation.rkdAngle (tensor2 a) s)) (tensor2 a))
    ]

[<Tests>]
let podTests =
    let stagePairs =
        gen {
            let! k = Gen.choose (1, 3)
            let! n = Gen.choose (1, 3)
            let! stages =
                Gen.listOfLength k (gen {
                    let! shape = mapShape
                    let shape = n :: List.tail shape
                    let! a = featureMapOfShape shape
                    let! b = featureMapOfShape shape
                    return a, b })
            return stages
        }
    testList "distillation.pod" [
        property "POD-spatial matches the reference" stagePairs (fun stages ->
            close tolerance (scalarOf (Distillation.podSpatial [ for (a, b) in stages -> mapTensor a, mapTensor b ])) (podSpatialRef stages))

        property "POD-flat matches the reference" embeddingPair (fun (a, b) ->
            close tolerance (scalarOf (Distillation.podFlat (tensor2 a) (tensor2 b))) (podFlatRef a b))

        property "POD is zero for equal features, has finite gradients there, and ignores a positive rescaling" (Gen.zip stagePairs positive) (fun (stages, k) ->
            let same = [ for (a, _) in stages -> mapTensor a, mapTensor a ]
            let scaled = [ for (a, b) in stages -> mapTensor a, mapTensor { b with Values = b.Values |> Array.map ((*) k) } ]
            abs (scalarOf (Distillation.podSpatial same)) < 1e-5
            && close tolerance (scalarOf (Distillation.podSpatial [ for (a, b) in stages -> mapTensor a, mapTensor b ])) (scalarOf (Distillation.podSpatial scaled))
            && gradientsFinite (fun s -> Distillation.podSpatial [ mapTensor (fst stages.Head), s ]) (mapTensor (fst stages.Head)))
    ]

[<Tests>]
let subspaceTests =
    /// Labelled features of a few classes (1..3 classes, 1..5 samples each, D in 2..5) for old and
    /// new models, with m in 1..3; cases whose top-m subspace is ill-defined are left out.
    let case =
        gen {
            let! classes = Gen.choose (1, 3)
            let! counts = Gen.arrayOfLength classes (Gen.choose (1, 5))
            let! d = Gen.choose (2, 5)
            let! m = Gen.choose (1, 3)
            let labels = counts |> Array.mapi (fun c k -> Array.create k (c * 2)) |> Array.concat
            let! a = matrix labels.Length d
            let! b = matrix labels.Length d
            return m, labels, a, b
        }
        |> Gen.filter (fun (m, labels, a, b) ->
            [ a; b ] |> List.forall (fun x ->
                classGroups labels x |> Array.forall (fun (_, f) -> spectralGap (min m (min f.Length f.[0].Length)) f > 1e-3)))
    let sd m labels (a: float[][]) (b: float[][]) = scalarOf (Distillation.subspaceDistillation m labels (tensor2 a) (tensor2 b))
    testList "distillation.sd" [
        property "SD matches the reference (SVD bases, projection distance)" case (fun (m, labels, a, b) ->
            close 1e-3 (sd m labels a b) (sdRef m labels a b))

        property "SD's gradient matches central finite differences (float64)" (Gen.zip case (Gen.choose (0, 1000))) (fun ((m, labels, a, b), seed) ->
            let f64 (x: float[][]) = (tensor2 x).to_type(torch.ScalarType.Float64)
            let teacher = f64 a
            let student = (f64 b).requires_grad_(true)
            let loss = Distillation.subspaceDistillation m labels teacher student
            loss.backward ()
            let gradient = floats student.grad
            let direction = Array.init gradient.Length (fun i -> float (((i + 1) * (seed + 7) * 7919) % 2001 - 1000) / 1000.0)
            let at (h: float) =
                let moved = Array.map2 (fun (x: float) dx -> x + h * dx) (Array.concat b) direction
                // Built in float64 directly: a float32 round trip would lose the perturbation.
                use exact = torch.tensor(moved, dimensions = System.ReadOnlySpan<int64>([| int64 b.Length; int64 b.[0].Length |]))
                scalarOf (Distillation.subspaceDistillation m labels teacher exact)
            let h = 1e-6
            let numeric = (at h - at -h) / (2.0 * h)
            let analytic = Array.fold2 (fun acc g dx -> acc + g * dx) 0.0 gradient direction
            close 1e-3 numeric analytic)

        // Rank-deficient classes (repeated and zero rows, common for ReLU embeddings) have singular values
        // that repeat up to round-off; back-propagating through the SVD there gives NaN or gradients of
        // order 1/(σ_i² − σ_j²) ~ 1e12. Inputs here are O(1), so an exact gradient is far below 1e6.
        property "SD's gradient stays finite and bounded for rank-deficient classes" (matrix 3 4) (fun rows ->
            let student = [| rows.[0]; rows.[0]; rows.[0]; rows.[1]; Array.zeroCreate 4; Array.zeroCreate 4 |]
            let teacher = [| rows.[2]; rows.[1]; rows.[0]; rows.[2]; rows.[1]; rows.[0] |]
            let labels = Array.create 6 3
            [ 1; 2; 3; 4 ] |> List.forall (fun m ->
                [ gradientBound (fun s -> Distillation.subspaceDistillation m labels (tensor2 teacher) s) (tensor2 student)
                  gradientBound (fun s -> Distillation.subspaceDistillation m labels (tensor2 teacher) s) (tensor2 teacher)
                  gradientBound (fun s -> Distillation.subspaceDistillation m labels (tensor2 student) s) (tensor2 teacher) ]
                |> List.forall (fun g -> g < 1e6)))

        property "the SVD basis spans the reference's top-m subspace" case (fun (m, labels, a, _) ->
            classGroups labels a |> Array.forall (fun (_, f) ->
                let mk = min m (min f.Length f.[0].Length)
                let basis = Distillation.subspaceBasis mk (tensor2 f)
                let columns = floats (basis.t().contiguous()) |> Array.chunkBySize f.[0].Length
                abs (projectionDistanceRef columns (subspaceBasisRef mk f)) < 1e-3))

        property "SD is zero for equal features" case (fun (m, labels, a, _) -> abs (sd m labels a a) < 1e-4)

        property "SD is symmetric" case (fun (m, labels, a, b) -> close 1e-4 (sd m labels a b) (sd m labels b a))

        property "SD is within [0, 2m]" case (fun (m, labels, a, b) ->
            let v = sd m labels a b
            v >= -1e-4 && v <= 2.0 * float m + 1e-4)

        property "SD is invariant to per-class scaling of the features" (Gen.zip case (Gen.arrayOfLength 6 positive)) (fun ((m, labels, a, b), scales) ->
            let scaled = Array.map2 (fun (l: int) (row: float[]) -> row |> Array.map ((*) scales.[l / 2])) labels b
            close 1e-3 (sd m labels a b) (sd m labels a scaled))

        property "the projection distance is invariant to an orthogonal change of basis inside each subspace"
            (gen {
                let! m, labels, a, b = case
                let! q = orthogonal 3
                return m, labels, a, b, q })
            (fun (m, labels, a, b, q) ->
                let first = labels.[0]
                let rows (x: float[][]) = Array.zip labels x |> Array.filter (fun (l, _) -> l = first) |> Array.map snd
                let fa, fb = rows a, rows b
                let mk = min m (min fa.Length fa.[0].Length)
                let basisA = Distillation.subspaceBasis mk (tensor2 fa)
                let basisB = Distillation.subspaceBasis mk (tensor2 fb)
                // An orthogonal m × m matrix: the leading block of a 3 × 3 rotation re-orthonormalised.
                let block = Array.init mk (fun i -> Array.init mk (fun j -> q.[i].[j]))
                let rotation =
                    let basis = ResizeArray<float[]>()
                    for v in block do
                        let mutable u = Array.copy v
                        for w in basis do u <- Array.map2 (fun x y -> x - dot u w * y) u w
                        basis.Add(if norm u > 1e-6 then normalise u else Array.init mk (fun i -> if i = basis.Count then 1.0 else 0.0))
                    basis.ToArray()
                let isOrthogonal = rotation |> Array.forall (fun r -> close 1e-6 (norm r) 1.0)
                let before = scalarOf (Distillation.projectionDistance basisA basisB)
                let rotated = basisA.matmul(tensor2 rotation)
                not isOrthogonal
                || (close 1e-4 before (scalarOf (Distillation.projectionDistance rotated basisB))
                    && close 1e-4 before (scalarOf (Distillation.projectionDistance basisB rotated))))
    ]

[<Tests>]
let relationGraphTests =
    let transformed =
        gen {
            let! a, b = embeddingPair
            let d = a.[0].Length
            let! q = orthogonal d
            let! s = positive
            let! t = Gen.arrayOfLength d value
            return a, b, similarity q s t a
        }
    testList "distillation.relation" [
        property "the relation graph loss matches the reference for p = 1 and p = 2" embeddingPair (fun (a, b) ->
            close tolerance (scalarOf (Distillation.relationGraph 1.0 (tensor2 a) (tensor2 b))) (relationGraphRef 1.0 a b)
            && close tolerance (scalarOf (Distillation.relationGraph 2.0 (tensor2 a) (tensor2 b))) (relationGraphRef 2.0 a b))

        property "the relation graph loss is zero under translation, rotation and uniform scaling" transformed (fun (a, _, moved) ->
            abs (scalarOf (Distillation.relationGraph 1.0 (tensor2 a) (tensor2 moved))) < 1e-5)

        property "the relation graph loss has finite gradients when student equals teacher" transformed (fun (a, _, _) ->
            gradientsFinite (fun s -> Distillation.relationGraph 1.0 (tensor2 a) s) (tensor2 a))
    ]
