/// Properties of src/Continual.Core/Methods/EwcPlusPlus.fs through its method record: over several
/// observed steps in two tasks the running Fisher is `Σ_k α (1 − α)^(K − k) F_k` of each step's batch
/// Fisher (its own inputs, labels and model), it carries over the task boundary, and each task end
/// freezes the penalty `Σ (λ/2) F (θ − θ*)²` at the parameters of that end.
module Continual.Properties.Methods.EwcPlusPlusProperties

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Data
open Continual.Methods
open Continual.Models
open Continual.Penalties
open Continual.Properties.PenaltiesFixtures
open Continual.Properties.Methods.Support
open TorchSharp

type private ObserveCase =
    { Case: DecayCase
      /// Per task, the (first row, size) of each observed batch.
      Batches: (int * int) list list }

let private observeCase =
    gen {
        let! c = decayCase
        let batch = Gen.zip (Gen.choose (0, 11)) (Gen.choose (1, 6))
        let! batches = Gen.listOfLength 2 (Gen.choose (1, 4) |> Gen.bind (fun k -> Gen.listOfLength k batch))
        return { Case = c; Batches = batches }
    }

/// A step view of the model on a whole data set (the batch), as the shell builds it.
let private viewOn (model: Backbone) (data: LabelledSet) : StepView =
    let output = model.ForwardWithFeatures data.Stored
    { Batch = { Inputs = data.Stored; Labels = data.Labels; LabelArray = data.LabelArray; Task = 0 }
      Output = output
      Replay = []
      Model = model
      Parameters = PerSample.parameters model; Heads = None }

let private arraysEqual (a: float[]) (b: float[]) = Array.forall2 (fun (x: float) y -> abs (x - y) <= 1e-9) a b

[<Tests>]
let tests =
    sequenced "methods.ewc++" [
        property 30 "over several observes in two tasks the running Fisher is Σ_k α (1 − α)^(K − k) F_k of each step's batch" observeCase (fun oc ->
            let c = oc.Case
            torch.manual_seed (int64 c.Seed) |> ignore
            use model = Backbones.create architecture
            let settings : EwcPlusPlus.Settings = { Lambda = c.Lambda; FisherAlpha = c.Decay; Fisher = c.Kind }
            let rng = Random.create (int64 c.Seed)
            let tasks = threeTasks c.Seed |> List.take 2
            let parameters = PerSample.parameters model
            let mutable instance = Method.pack (EwcPlusPlus.method settings) (EwcPlusPlus.initial rng)
            try
                let mutable running = Array.zeroCreate parameterCount
                let mutable r = rng
                for (t, (data, batches)) in List.indexed (List.zip tasks oc.Batches) do
                    instance <- Training.phase (fun m -> m.BeginTask(contextFor t model data)) instance
                    for (first, size) in batches do
                        use scope = torch.NewDisposeScope()
                        let size = min size (data.Count - first)
                        let x = data.Stored.narrow(0L, int64 first, int64 size)
                        let ys = Array.sub data.LabelArray first size
                        let output = model.ForwardWithFeatures x
                        let view =
                            { Batch = { Inputs = x; Labels = labelTensor ys; LabelArray = ys; Task = t }
                              Output = output
                              Replay = []
                              Model = model
                              Parameters = parameters; Heads = None }
                        // The reference: the batch's own Fisher (mean over its rows) at the model of the step.
                        let f, r' = Estimate.batchFisher c.Kind model x (x :: output.Features) output.Logits (ys |> Array.map int64) r
                        r <- r'
                        running <- Array.map2 (fun b old -> c.Decay * b + (1.0 - c.Decay) * old) (takeFlat f) running
                        instance <- Training.phase (fun m -> m.Observe.Value view) instance
                        moveModel 0.1 model
                    let state = Method.stateOf<EwcPlusPlus.State> instance
                    arraysClose 1e-5 (sprintf "task %d: the running Fisher" t) running (flatValues state.Running.Value)
                    Expect.equal state.Rng r (sprintf "task %d: the generator" t)
                    instance <- Training.phase (fun m -> m.EndTask(contextFor t model data)) instance
                    if t = 0 then moveModel 0.3 model
                expectPenalty (c.Lambda / 2.0) [ running, parametersOf model ] (parametersOf model) c.Displacement model instance
            finally
                Method.dispose instance)

        property 30 "each task end freezes the penalty at that end's parameters and running Fisher, while later steps blend on" decayCase (fun c ->
            torch.manual_seed (int64 c.Seed) |> ignore
            use model = Backbones.create architecture
            let parameters = PerSample.parameters model
            let running = [ for p in parameters -> torch.rand_like(p).DetachFromDisposeScope() ]
            let frozen = flatValues running
            let data = synthetic c.Seed 6 [ 0; 1 ]
            let settings : EwcPlusPlus.Settings = { Lambda = c.Lambda; FisherAlpha = c.Decay; Fisher = c.Kind }
            let state = { EwcPlusPlus.initial (Random.create 1L) with Running = Some running }
            let mutable instance = Training.phase (fun m -> m.EndTask(contextOf model data)) (Method.pack (EwcPlusPlus.method settings) state)
            try
                let anchor = parametersOf model
                // The model moves on and the next task's first step blends its batch into the running Fisher.
                moveModel 0.3 model
                instance <- Training.phase (fun m -> m.Observe.Value(viewOn model data)) instance
                let state = Method.stateOf<EwcPlusPlus.State> instance
                Expect.isFalse (arraysEqual frozen (flatValues state.Running.Value)) "the running Fisher moved on"
                expectPenalty (c.Lambda / 2.0) [ frozen, anchor ] anchor c.Displacement model instance
            finally
                Method.dispose instance)
    ]
