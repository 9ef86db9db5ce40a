/// Properties of the importance estimators and their state transitions (Importance.Estimates.fs and the Methods/ modules):
/// importance non-negative and finite, online EWC with γ = 1 sums the tasks' Fishers, EWC++ and SCP
/// updates are convex combinations, SI's and RWalk's scores match a hand-stepped reference.
module Continual.Properties.PenaltiesImportance

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Models
open Continual.Penalties
open Continual.Methods
open Continual.Properties.PenaltiesFixtures
open TorchSharp

let private vector (xs: float[]) = torch.tensor(xs |> Array.map float32, dtype = torch.ScalarType.Float32)

let private finiteNonNegative (xs: float[]) = xs |> Array.forall (fun x -> x >= 0.0 && not (System.Double.IsNaN x) && not (System.Double.IsInfinity x))

/// A two-parameter quadratic `L(θ) = ½ Σ a_i (θ_i − b_i)²` walked by plain SGD.
type Walk =
    { A: float[]
      B: float[]
      Start: float[]
      LearningRate: float
      /// Steps per task, for two tasks.
      Steps: int * int }

let private walkGen : Gen<Walk> =
    let value lo hi = Gen.choose (lo, hi) |> Gen.map (fun i -> float (float32 i / 100.0f))
    gen {
        let! a = Gen.arrayOfLength 2 (value 10 400)
        let! b = Gen.arrayOfLength 2 (value -300 300)
        let! start = Gen.arrayOfLength 2 (value -300 300)
        let! lr = Gen.elements [ 0.05; 0.1; 0.3 ]
        let! s1 = Gen.choose (1, 7)
        let! s2 = Gen.choose (1, 7)
        // lr · a ≤ 0.8: the walk contracts without landing on b, where the gradient would be float32
        // round-off and a float32-vs-double comparison meaningless.
        let a = a |> Array.map (fun x -> min x (float (float32 (0.8 / lr))))
        return { A = a; B = b; Start = start; LearningRate = lr; Steps = s1, s2 }
    }

let private gradientAt (w: Walk) (theta: float[]) = Array.init 2 (fun i -> w.A.[i] * (theta.[i] - w.B.[i]))

/// One SGD step of the walk with tensors: backward of the quadratic, gradients clipped when asked.
let private tensorStep (w: Walk) (clip: bool) (p: Tensor) =
    p.grad |> fun g -> if not (isNull g) then g.zero_() |> ignore
    let a, b = vector w.A, vector w.B
    let loss = ((p - b).square() * a).sum() * 0.5
    loss.backward ()
    if clip then p.grad.clamp_(Scalars.cached (-1.0), Scalars.cached 1.0) |> ignore

let private sgdUpdate (lr: float) (p: Tensor) =
    use _ = torch.no_grad ()
    p.add_(p.grad, Scalars.cached (-lr)) |> ignore

[<Tests>]
let tests =
    sequenced "importance" [
        testList "every method's importance is non-negative and finite" [
            for name in methods ->
                testCase name <| fun () ->
                    let e, _, anchor = methodState name 1.7 2
                    let r = reference name 1.7 e anchor
                    for (omega, _) in r.Pairs do
                        Expect.isTrue (finiteNonNegative omega) (sprintf "%s: importance >= 0 and finite" name)
                        Expect.isTrue (omega |> Array.exists (fun x -> x > 0.0)) (sprintf "%s: some importance is positive" name)
        ]

        testPropertyWithConfig config "online EWC with γ = 1 is the sum of the tasks' Fishers" (Prop.forAll (Arb.fromGen (Gen.choose (0, 10000))) (fun seed ->
            torch.manual_seed (int64 seed) |> ignore
            let model = Backbones.create architecture
            let first = synthetic seed 20 [ 0; 1 ]
            let second = synthetic (seed + 7) 20 [ 2; 3 ]
            let rng = Random.create (int64 seed)
            let s1 = OnlineEwc.endTask { Lambda = 1.0; Gamma = 1.0; Fisher = LabelWeighted } (contextOf model first) (OnlineEwc.initial rng)
            let f1, _ = Estimate.fisher LabelWeighted model first torch.CPU rng
            // The model moves between the tasks.
            (use _ = torch.no_grad () in for p in model.parameters () do p.add_(torch.randn_like p, Scalars.cached 0.3) |> ignore)
            let f2, _ = Estimate.fisher LabelWeighted model second torch.CPU rng
            let s2 = OnlineEwc.endTask { Lambda = 1.0; Gamma = 1.0; Fisher = LabelWeighted } (contextOf model second) s1
            arraysClose 1e-6 "F = F_1 + F_2" (Array.map2 (+) (flatValues f1) (flatValues f2)) (flatValues s2.Fisher.Value)
            true))

        testPropertyWithConfig config "the EWC++ update is the convex combination α F_batch + (1 − α) F" (Prop.forAll (Arb.fromGen (Gen.zip3 (Gen.choose (0, 100)) (Gen.arrayOfLength 6 (Gen.choose (0, 1000))) (Gen.arrayOfLength 6 (Gen.choose (0, 1000))))) (fun (a, x, y) ->
            let alpha = float a / 100.0
            let batch, running = Array.map float x, Array.map float y
            // EWC++'s observe with a batch of `count` samples whose squared gradients sum to count · F_batch.
            let count = 1 + a % 7
            let state = { EwcPlusPlus.initial (Random.create 1L) with Running = Some [ vector running ] }
            use sums = (vector batch).mul(Scalars.cached (float count))
            let updated = EwcPlusPlus.observe alpha count (Importance.blendSums [ sums ]) [ vector batch ] state
            let result = flatValues updated.Running.Value
            let expected = Array.map2 (fun b r -> alpha * b + (1.0 - alpha) * r) batch running
            arraysClose 1e-6 "α F_batch + (1 − α) F" expected result
            Array.forall2 (fun (v: float) (b: float, r: float) -> v >= min b r - 1e-3 && v <= max b r + 1e-3) result (Array.zip batch running)))

        testPropertyWithConfig config "the SCP update is the convex combination α Γ_old + (1 − α) Γ_t" (Prop.forAll (Arb.fromGen (Gen.zip (Gen.choose (0, 99)) (Gen.choose (0, 10000)))) (fun (a, seed) ->
            let alpha = float a / 100.0
            torch.manual_seed (int64 seed) |> ignore
            let model = Backbones.create architecture
            let first = synthetic seed 20 [ 0; 1 ]
            let second = synthetic (seed + 3) 20 [ 2; 3 ]
            let rng = Random.create (int64 seed)
            let s1 = Scp.endTask { Lambda = 1.0; Alpha = alpha; Slices = 5; BatchSize = 8 } (contextOf model first) (Scp.initial rng)
            let old = flatValues s1.Gamma.Value
            let current, _ = Estimate.scp 5 8 model second torch.CPU s1.Rng
            let s2 = Scp.endTask { Lambda = 1.0; Alpha = alpha; Slices = 5; BatchSize = 8 } (contextOf model second) s1
            let first1, _ = Estimate.scp 5 8 model first torch.CPU rng
            arraysClose 1e-6 "first task: (1 − α) Γ_1" (flatValues first1 |> Array.map (fun g -> (1.0 - alpha) * g)) old
            arraysClose 1e-6 "α Γ_old + (1 − α) Γ_t" (Array.map2 (fun o c -> alpha * o + (1.0 - alpha) * c) old (flatValues current)) (flatValues s2.Gamma.Value)
            true))

        testPropertyWithConfig config "SI's importance matches a hand-stepped two-parameter quadratic" (Prop.forAll (Arb.fromGen walkGen) (fun w ->
            let c, xi = 0.7, 0.9
            // Reference: plain doubles, clipping to [-1, 1], ω += lr g², Ω += ω / ((θ − θ_start)² + ξ).
            let mutable theta = Array.copy w.Start
            let mutable start = Array.copy w.Start
            let omegaBig = Array.zeroCreate 2
            for steps in [ fst w.Steps; snd w.Steps ] do
                let omega = Array.zeroCreate 2
                for _ in 1 .. steps do
                    let g = gradientAt w theta |> Array.map (fun x -> max -1.0 (min 1.0 x))
                    for i in 0 .. 1 do omega.[i] <- omega.[i] + w.LearningRate * g.[i] * g.[i]
                    theta <- Array.map2 (fun t x -> t - w.LearningRate * x) theta g
                for i in 0 .. 1 do omegaBig.[i] <- omegaBig.[i] + omega.[i] / ((theta.[i] - start.[i]) ** 2.0 + xi)
                start <- Array.copy theta
            // The transitions on a two-element parameter tensor.
            let p = (vector w.Start).requires_grad_ true
            let mutable state = Si.initial
            for steps in [ fst w.Steps; snd w.Steps ] do
                state <- Si.beginTask w.LearningRate [ p ] state
                for _ in 1 .. steps do
                    tensorStep w true p
                    state <- Si.observe [ p.grad ] state
                    sgdUpdate w.LearningRate p
                state <- Si.endTask c xi [ p ] state
            arraysClose 1e-4 "θ" theta (values p)
            arraysClose 1e-4 "Ω" omegaBig (flatValues state.Importance.Value)
            // Its penalty at a probe point: c Σ Ω (θ − θ_end)².
            let probe = [| theta.[0] + 0.5; theta.[1] - 0.25 |]
            let expected = c * (omegaBig.[0] * 0.25 + omegaBig.[1] * 0.0625)
            close 1e-4 expected (Quadratic.value state.Penalty.Value [ vector probe ])))

        testPropertyWithConfig config "RWalk's scores match a hand-stepped two-parameter quadratic" (Prop.forAll (Arb.fromGen (Gen.zip walkGen (Gen.choose (1, 3)))) (fun (w, every) ->
            let alpha, epsilon, lambda = 0.9, 1e-2, 2.0
            // Reference: F ← α g² + (1 − α) F per step (g² as the batch Fisher), loss += lr g², every
            // `every` steps s += relu(loss / (½ F Δθ² + ε)); scores averaged across the two tasks.
            let theta = ref (Array.copy w.Start)
            let fisher = ref (Array.zeroCreate<float> 2)
            let mutable previous: float[] option = None
            for steps in [ fst w.Steps; snd w.Steps ] do
                let scores = Array.zeroCreate 2
                let loss = ref (Array.zeroCreate<float> 2)
                let windowStart = ref (Array.copy theta.Value)
                let inWindow = ref 0
                let close () =
                    for i in 0 .. 1 do
                        let d = theta.Value.[i] - windowStart.Value.[i]
                        scores.[i] <- scores.[i] + max 0.0 (loss.Value.[i] / (0.5 * fisher.Value.[i] * d * d + epsilon))
                    loss.Value <- Array.zeroCreate 2
                    windowStart.Value <- Array.copy theta.Value
                    inWindow.Value <- 0
                for _ in 1 .. steps do
                    let g = gradientAt w theta.Value
                    fisher.Value <- Array.map2 (fun f x -> alpha * x * x + (1.0 - alpha) * f) fisher.Value g
                    loss.Value <- Array.map2 (fun l x -> l + w.LearningRate * x * x) loss.Value g
                    theta.Value <- Array.map2 (fun t x -> t - w.LearningRate * x) theta.Value g
                    inWindow.Value <- inWindow.Value + 1
                    if inWindow.Value = every then close ()
                if inWindow.Value > 0 then close ()
                previous <- Some(match previous with None -> scores | Some p -> Array.map2 (fun a b -> 0.5 * (a + b)) p scores)
            let expectedScores = previous.Value
            let expectedOmega = rwalkReference fisher.Value expectedScores
            // The transitions.
            let p = (vector w.Start).requires_grad_ true
            let mutable state = Rwalk.initial (Random.create 1L)
            for steps in [ fst w.Steps; snd w.Steps ] do
                state <- Rwalk.beginTask w.LearningRate [ p ] state
                for _ in 1 .. steps do
                    tensorStep w false p
                    use g2 = p.grad.square ()
                    state <- Rwalk.observe alpha 1 (Importance.blendSums [ g2 ]) [ p.grad ] state
                    sgdUpdate w.LearningRate p
                    state <- Rwalk.afterStep every epsilon [ p ] state
                state <- Rwalk.endTask lambda epsilon [ p ] state
            // Scores divide by ½ F Δθ² + ε: float32 round-off is amplified, hence 1e-3 (a broken formula is off by factors).
            arraysClose 1e-4 "θ" theta.Value (values p)
            arraysClose 1e-3 "F" fisher.Value (flatValues state.Running.Value)
            arraysClose 1e-3 "scores" expectedScores (flatValues state.PreviousScores.Value)
            // The penalty's curvature is λ Ω (the λ/2 form).
            arraysClose 1e-3 "Ω" expectedOmega (values state.Penalty.Value.Curvature |> Array.map (fun h -> h / lambda))
            true))
    ]
