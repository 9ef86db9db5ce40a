/// Properties of src/Continual.Core/Methods/Scp.fs over three tasks with α in (0, 1): Γ is
/// `α²(1 − α) Γ_1 + α(1 − α) Γ_2 + (1 − α) Γ_3` of the sliced estimates each task end makes on its own
/// data (the model moving between tasks, the generator threaded through the slices), and the penalty
/// is `λ Σ Γ (θ − θ*)²` anchored at the last task's end.
module Continual.Properties.Methods.ScpProperties

open Expecto
open Continual
open Continual.Methods
open Continual.Models
open Continual.Penalties
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support
open TorchSharp

[<Tests>]
let tests =
    sequenced "methods.scp" [
        property 30 "after three tasks Γ = α²(1 − α) Γ_1 + α(1 − α) Γ_2 + (1 − α) Γ_3 and the penalty is λ Σ Γ (θ − θ_3)²" decayCase (fun c ->
            torch.manual_seed (int64 c.Seed) |> ignore
            use model = Backbones.create architecture
            let settings : Scp.Settings = { Lambda = c.Lambda; Alpha = c.Decay; Slices = 5; BatchSize = 5 }
            let rng = Random.create (int64 c.Seed)
            let gammas = ResizeArray()
            let mutable r = rng
            let reference _ data =
                let g, r' = Estimate.scp settings.Slices settings.BatchSize model data torch.CPU r
                r <- r'
                gammas.Add(takeFlat g)
            let instance = Method.pack (Scp.method settings) (Scp.initial rng) |> endTasks model (threeTasks c.Seed) reference
            try
                let state = Method.stateOf<Scp.State> instance
                let a = c.Decay
                let expected = weightedSum [ a * a * (1.0 - a), gammas.[0]; a * (1.0 - a), gammas.[1]; 1.0 - a, gammas.[2] ]
                arraysClose 1e-5 "α²(1 − α) Γ_1 + α(1 − α) Γ_2 + (1 − α) Γ_3" expected (flatValues state.Gamma.Value)
                Expect.equal state.Rng r "the generator after the three estimates"
                expectPenalty c.Lambda [ expected, parametersOf model ] (parametersOf model) c.Displacement model instance
            finally
                Method.dispose instance)
    ]
