/// Properties of src/Continual.Core/Methods/Rwalk.fs over three tasks: on a two-parameter quadratic per
/// task walked by SGD, the running Fisher carries across tasks, each task's path scores are summed over
/// windows, and the scores are averaged with the previous tasks' pairwise at each task end (after three
/// tasks s̄ = ¼ s_1 + ¼ s_2 + ½ s_3, the reference implementations' running average), Ω = F / max F +
/// s̄ / max s̄ — all against plain doubles.
module Continual.Properties.Methods.RwalkProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Methods
open Continual.Penalties
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support
open TorchSharp

type private RwalkCase =
    { Walk: Walk
      Every: int
      Alpha: float }

let private rwalkCase =
    gen {
        let! w = walk 3
        let! every = Gen.choose (1, 3)
        let! alpha = Gen.elements [ 0.3; 0.9 ]
        return { Walk = w; Every = every; Alpha = alpha }
    }

[<Tests>]
let tests =
    sequenced "methods.rwalk" [
        property 60 "over three tasks the scores average pairwise to ¼ s_1 + ¼ s_2 + ½ s_3 and Ω = F / max F + s̄ / max s̄" rwalkCase (fun c ->
            let w, alpha, epsilon, lambda = c.Walk, c.Alpha, 1e-2, 2.0
            // The reference: F ← α g² + (1 − α) F per step (g² the batch Fisher), loss += lr g² per step,
            // every `Every` steps (and at the task end) s += relu(loss / (½ F Δθ² + ε)) over the window.
            let mutable theta = Array.copy w.Start
            let mutable fisher = Array.zeroCreate<float> 2
            let perTask = ResizeArray<float[] * float[]>()
            for (t, steps) in List.indexed w.Steps do
                let scores = Array.zeroCreate 2
                let mutable loss = Array.zeroCreate<float> 2
                let mutable windowStart = Array.copy theta
                let mutable inWindow = 0
                let close () =
                    for i in 0 .. 1 do
                        let d = theta.[i] - windowStart.[i]
                        scores.[i] <- scores.[i] + max 0.0 (loss.[i] / (0.5 * fisher.[i] * d * d + epsilon))
                    loss <- Array.zeroCreate 2
                    windowStart <- Array.copy theta
                    inWindow <- 0
                for _ in 1 .. steps do
                    let g = walkGradient w t theta
                    fisher <- Array.map2 (fun f x -> alpha * x * x + (1.0 - alpha) * f) fisher g
                    loss <- Array.map2 (fun l x -> l + w.LearningRate * x * x) loss g
                    theta <- Array.map2 (fun x y -> x - w.LearningRate * y) theta g
                    inWindow <- inWindow + 1
                    if inWindow = c.Every then close ()
                if inWindow > 0 then close ()
                perTask.Add(scores, Array.copy fisher)
            let s t = fst perTask.[t]
            let averaged =
                [ s 0
                  weightedSum [ 0.5, s 0; 0.5, s 1 ]
                  weightedSum [ 0.25, s 0; 0.25, s 1; 0.5, s 2 ] ]
            // The transitions, in the shell's order: backward, Observe, step, AfterStep.
            let p = (vector w.Start).requires_grad_ true
            let mutable state = Rwalk.initial (Random.create 1L)
            try
                for (t, steps) in List.indexed w.Steps do
                    state <- transition Rwalk.owned (Rwalk.beginTask w.LearningRate [ p ]) state
                    for _ in 1 .. steps do
                        walkBackward w t false p
                        use g2 = p.grad.square ()
                        state <- transition Rwalk.owned (Rwalk.observe alpha 1 (Importance.blendSums [ g2 ]) [ p.grad ]) state
                        sgdUpdate w.LearningRate p
                        state <- transition Rwalk.owned (Rwalk.afterStep c.Every epsilon [ p ]) state
                    state <- transition Rwalk.owned (Rwalk.endTask lambda epsilon [ p ]) state
                    // Division by ½ F Δθ² + ε amplifies float32 round-off, hence 1e-3 (a wrong weight is off by far more).
                    arraysClose 1e-3 (sprintf "task %d: F" t) (snd perTask.[t]) (flatValues state.Running.Value)
                    arraysClose 1e-3 (sprintf "task %d: averaged scores" t) averaged.[t] (flatValues state.PreviousScores.Value)
                    arraysClose 0.0 (sprintf "task %d: the task's scores restart at zero" t) [| 0.0; 0.0 |] (flatValues state.Scores.Value)
                    // The penalty's curvature is λ Ω (the λ/2 form).
                    arraysClose 1e-3 (sprintf "task %d: Ω" t) (rwalkReference (snd perTask.[t]) averaged.[t]) (values state.Penalty.Value.Curvature |> Array.map (fun h -> h / lambda))
            finally
                for d in Rwalk.owned state do d.Dispose())

        property 60 "closing a window in place gives `score`'s scores bit for bit, restarts the window at θ and zeroes its loss" (Gen.zip (Gen.choose (0, 100000)) (Gen.elements [ 1.1920928955078125e-7; 1e-2 ])) (fun (seed, epsilon) ->
            // RWalk's results must not move when the window's score is computed in place for speed.
            torch.manual_seed (int64 seed) |> ignore
            let shapes = [ [| 7L; 5L |]; [| 7L |]; [| 3L; 7L |]; [| 3L |] ]
            let parameters = shapes |> List.map (fun s -> torch.randn s)
            let mutable state = Rwalk.initial (Random.create 1L)
            try
                state <- transition Rwalk.owned (Rwalk.beginTask 0.1 parameters) state
                // A random Fisher (some zeros), window loss (some negative) and displacement (some zero).
                let running = shapes |> List.map (fun s -> torch.rand(s).mul(torch.rand(s).gt(Scalars.cached 0.2)))
                state <- { state with Running = Some running; WindowSteps = 3 }
                for (l: Tensor) in state.WindowLoss.Value do l.copy_(torch.randn(l.shape).mul(Scalars.cached 0.01)) |> ignore
                for (s: Tensor) in state.Scores.Value do s.copy_(torch.rand(s.shape)) |> ignore
                (use _ = torch.no_grad ()
                 for (p: Tensor) in parameters do
                    p.add_(torch.randn(p.shape).mul(torch.rand(p.shape).gt(Scalars.cached 0.1))) |> ignore)
                let window = Rwalk.score epsilon running state.WindowLoss.Value parameters state.WindowStart.Value
                let expected = List.map2 (fun (s: Tensor) (w: Tensor) -> s.add w) state.Scores.Value window
                state <- transition Rwalk.owned (Rwalk.closeWindow epsilon parameters) state
                List.iteri2 (fun i (e: Tensor) (a: Tensor) ->
                    if not (Scalars.toBool ((e.eq a).all())) then
                        failtestf "tensor %d: the scores differ from score's by up to %g" i (Scalars.toFloat ((e - a).abs().max()))) expected state.Scores.Value
                List.iter2 (fun (p: Tensor) (s: Tensor) -> Expect.isTrue (Scalars.toBool ((p.eq s).all())) "the window restarts at θ") parameters state.WindowStart.Value
                for (l: Tensor) in state.WindowLoss.Value do Expect.equal (Scalars.toFloat (l.abs().max())) 0.0 "the window's loss restarts at zero"
                Expect.equal state.WindowSteps 0 "the window's step count restarts"
            finally
                for d in Rwalk.owned state do d.Dispose())
    ]
