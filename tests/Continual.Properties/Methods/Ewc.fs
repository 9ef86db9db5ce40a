/// Properties of src/Continual.Core/Methods/Ewc.fs over three tasks: one (Fisher, anchor) pair per task,
/// each the Fisher of that task's data at the model of its end and the parameters then, and the
/// penalty `Σ_t (λ/2) F_t (θ − θ*_t)²` over all of them.
module Continual.Properties.Methods.EwcProperties

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
    sequenced "methods.ewc" [
        property 30 "after three tasks EWC keeps each task's Fisher and anchor and penalises Σ_t (λ/2) F_t (θ − θ*_t)²" decayCase (fun c ->
            torch.manual_seed (int64 c.Seed) |> ignore
            use model = Backbones.create architecture
            let settings : Ewc.Settings = { Lambda = c.Lambda; Fisher = c.Kind }
            let rng = Random.create (int64 c.Seed)
            let pairs = ResizeArray()
            let mutable r = rng
            let reference _ data =
                let f, r' = Estimate.fisher c.Kind model data torch.CPU r
                r <- r'
                pairs.Add(takeFlat f, parametersOf model)
            let instance = Method.pack (Ewc.method settings) (Ewc.initial rng) |> endTasks model (threeTasks c.Seed) reference
            try
                let state = Method.stateOf<Ewc.State> instance
                Expect.equal state.Tasks.Length 3 "one pair per task"
                for (t, ((f, a), (fisher, anchor))) in List.indexed (List.zip (List.ofSeq pairs) state.Tasks) do
                    arraysClose 1e-5 (sprintf "task %d: Fisher" t) f (flatValues fisher)
                    arraysClose 0.0 (sprintf "task %d: anchor" t) a (flatValues anchor)
                Expect.equal state.Rng r "the generator after the three estimates"
                expectPenalty (c.Lambda / 2.0) (List.ofSeq pairs) (parametersOf model) c.Displacement model instance
            finally
                Method.dispose instance)
    ]
