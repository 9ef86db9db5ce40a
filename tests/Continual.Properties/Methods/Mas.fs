/// Properties of src/Continual.Core/Methods/Mas.fs over three tasks: Ω is the plain sum of the
/// importances each task end estimates on its own data (the model moving between tasks), and the
/// penalty is `Σ (λ/2) Ω (θ − θ*)²` anchored at the last task's end.
module Continual.Properties.Methods.MasProperties

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
    sequenced "methods.mas" [
        property 30 "after three tasks Ω = Ω_1 + Ω_2 + Ω_3 and the penalty is Σ (λ/2) Ω (θ − θ_3)²" decayCase (fun c ->
            torch.manual_seed (int64 c.Seed) |> ignore
            use model = Backbones.create architecture
            let importances = ResizeArray()
            let reference _ data = importances.Add(takeFlat (Estimate.mas model data torch.CPU))
            let instance = Method.pack (Mas.method { Lambda = c.Lambda }) Mas.initial |> endTasks model (threeTasks c.Seed) reference
            try
                let state = Method.stateOf<Mas.State> instance
                let expected = weightedSum [ 1.0, importances.[0]; 1.0, importances.[1]; 1.0, importances.[2] ]
                arraysClose 1e-5 "Ω_1 + Ω_2 + Ω_3" expected (flatValues state.Importance.Value)
                expectPenalty (c.Lambda / 2.0) [ expected, parametersOf model ] (parametersOf model) c.Displacement model instance
            finally
                Method.dispose instance)
    ]
