/// Properties of src/Continual.Core/Methods/Si.fs through its method record over three tasks: on a
/// two-parameter quadratic per task walked by clipped SGD, Ω = Σ_t ω_t / ((θ_t − θ_(t−1))² + ξ) with
/// each task's path integral ω_t = Σ lr g² and θ_(t−1) the previous task's end, against plain doubles.
module Continual.Properties.Methods.SiProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Methods
open Continual.Models
open Continual.Penalties
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support
open TorchSharp

type private SiCase =
    { Walk: Walk
      C: float
      Xi: float }

let private siCase =
    gen {
        let! w = walk 3
        let! c = Gen.elements [ 0.5; 1.0; 2.5 ]
        let! xi = Gen.elements [ 0.1; 0.9; 2.0 ]
        return { Walk = w; C = c; Xi = xi }
    }

/// A view whose only meaningful field is the parameter list (SI's Observe reads its gradients).
let private viewWith (p: Tensor) =
    let zeros = { Rows = 1; Cols = 4; Values = Array.zeroCreate 4 }
    { viewOf zeros [| 0 |] zeros [] with Parameters = [ p ] }

[<Tests>]
let tests =
    sequenced "methods.si" [
        property 60 "over three tasks Ω = Σ_t ω_t / ((θ_t − θ_(t−1))² + ξ), anchored at each task's end" siCase (fun c ->
            let w = c.Walk
            // The reference in doubles: gradients clipped to [-1, 1], ω += lr g², θ −= lr g.
            let mutable theta = Array.copy w.Start
            let mutable start = Array.copy w.Start
            let omegaBig = Array.zeroCreate 2
            let expected = ResizeArray()
            for (t, steps) in List.indexed w.Steps do
                let omega = Array.zeroCreate 2
                for _ in 1 .. steps do
                    let g = walkGradient w t theta |> Array.map (fun x -> max -1.0 (min 1.0 x))
                    for i in 0 .. 1 do omega.[i] <- omega.[i] + w.LearningRate * g.[i] * g.[i]
                    theta <- Array.map2 (fun x y -> x - w.LearningRate * y) theta g
                for i in 0 .. 1 do omegaBig.[i] <- omegaBig.[i] + omega.[i] / ((theta.[i] - start.[i]) ** 2.0 + c.Xi)
                start <- Array.copy theta
                expected.Add(Array.copy omegaBig, Array.copy theta)
            // The method record, as the shell drives it: BeginTask, then per step backward, clipping,
            // Observe and the optimiser step, and EndTask.
            use model = Backbones.create architecture
            let data = synthetic 1 4 [ 0 ]
            let p = (vector w.Start).requires_grad_ true
            let context t = { contextFor t model data with Parameters = [ p ]; LearningRate = w.LearningRate }
            let mutable instance = Si.create { C = c.C; Xi = c.Xi }
            try
                for (t, steps) in List.indexed w.Steps do
                    instance <- Training.phase (fun m -> m.BeginTask(context t)) instance
                    for _ in 1 .. steps do
                        walkBackward w t true p
                        instance <- Training.phase (fun m -> m.Observe.Value(viewWith p)) instance
                        sgdUpdate w.LearningRate p
                    instance <- Training.phase (fun m -> m.EndTask(context t)) instance
                    let state = Method.stateOf<Si.State> instance
                    let omegaBig, thetaEnd = expected.[t]
                    arraysClose 1e-4 (sprintf "task %d: θ" t) thetaEnd (values p)
                    arraysClose 1e-4 (sprintf "task %d: Ω" t) omegaBig (flatValues state.Importance.Value)
                    arraysClose 1e-6 (sprintf "task %d: the next task's start is this end" t) (values p) (flatValues state.Start.Value)
                    arraysClose 0.0 (sprintf "task %d: ω restarts at zero" t) [| 0.0; 0.0 |] (flatValues state.Omega.Value)
                // Its penalty at a probe: c Σ Ω (θ − θ_3)².
                let omegaBig, thetaEnd = expected.[2]
                let probe = [| thetaEnd.[0] + 0.5; thetaEnd.[1] - 0.25 |]
                let state = Method.stateOf<Si.State> instance
                use probeTensor = vector probe
                expectNear 1e-4 "penalty" (c.C * (omegaBig.[0] * 0.25 + omegaBig.[1] * 0.0625)) (Quadratic.value state.Penalty.Value [ probeTensor ])
            finally
                Method.dispose instance)
    ]
