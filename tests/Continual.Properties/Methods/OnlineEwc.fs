/// Properties of src/Continual.Core/Methods/OnlineEwc.fs over three tasks with a decay γ in (0, 1):
/// the running Fisher is `γ² F_1 + γ F_2 + F_3` of the Fishers each task end estimates on its own data
/// (the model moving between tasks), the generator is threaded through the estimates, and the penalty
/// is `λ Σ F (θ − θ*)²` anchored at the last task's end.
module Continual.Properties.Methods.OnlineEwcProperties

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
    sequenced "methods.online-ewc" [
        property 30 "after three tasks F = γ² F_1 + γ F_2 + F_3 and the penalty is λ Σ F (θ − θ_3)²" decayCase (fun c ->
            torch.manual_seed (int64 c.Seed) |> ignore
            use model = Backbones.create architecture
            let settings : OnlineEwc.Settings = { Lambda = c.Lambda; Gamma = c.Decay; Fisher = c.Kind }
            let rng = Random.create (int64 c.Seed)
            let fishers = ResizeArray()
            let mutable r = rng
            let reference _ data =
                let f, r' = Estimate.fisher c.Kind model data torch.CPU r
                r <- r'
                fishers.Add(takeFlat f)
            let instance = Method.pack (OnlineEwc.method settings) (OnlineEwc.initial rng) |> endTasks model (threeTasks c.Seed) reference
            try
                let state = Method.stateOf<OnlineEwc.State> instance
                let g = c.Decay
                let expected = weightedSum [ g * g, fishers.[0]; g, fishers.[1]; 1.0, fishers.[2] ]
                arraysClose 1e-5 "γ² F_1 + γ F_2 + F_3" expected (flatValues state.Fisher.Value)
                Expect.equal state.Rng r "the generator after the three estimates"
                expectPenalty c.Lambda [ expected, parametersOf model ] (parametersOf model) c.Displacement model instance
            finally
                Method.dispose instance)
    ]
