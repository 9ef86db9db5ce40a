/// Tests of the convolutional backbones and snapshots in src/Continual.Core/Models.fs.
module Continual.Tests.ModelsBackbones

open Expecto
open TorchSharp
open Continual
open Continual.Models
open Continual.Penalties

let private shapes (o: ModelOutput) = o.Features |> List.map (fun f -> List.ofArray f.shape)

let private sameValues (a: Tensor) (b: Tensor) = a.eq(b).all().ToBoolean()

[<Tests>]
let backboneTests =
    testSequenced <| testList "models.backbones" [
        testCase "the CNN and the reduced ResNet-18 expose per-stage maps, the embedding and the logits" <| fun () ->
            use _ = torch.NewDisposeScope()
            torch.manual_seed 1L |> ignore
            use cnn = Backbones.create (Backbones.ofName "cnn" (1, 28, 28) 10)
            let o = cnn.ForwardWithFeatures(torch.rand(4L, 784L))
            Expect.equal (shapes o) [ [ 4L; 32L; 14L; 14L ]; [ 4L; 64L; 7L; 7L ]; [ 4L; 128L ] ] "CNN stages and embedding"
            Expect.equal o.Logits.shape [| 4L; 10L |] "CNN logits"
            use resnet = Backbones.create (Backbones.ofName "resnet18" (3, 32, 32) 10)
            let r = resnet.ForwardWithFeatures(torch.rand(2L, 3072L))
            Expect.equal (shapes r) [ [ 2L; 20L; 32L; 32L ]; [ 2L; 40L; 16L; 16L ]; [ 2L; 80L; 8L; 8L ]; [ 2L; 160L; 4L; 4L ]; [ 2L; 160L ] ] "ResNet stages and embedding"
            Expect.equal r.Logits.shape [| 2L; 10L |] "ResNet logits"
            for (model, output) in [ cnn, o; resnet, r ] do
                Expect.isTrue (sameValues (model.Classifier.forward output.Embedding) output.Logits) "the classifier maps the embedding to the logits"

        testCase "a snapshot reproduces the model (batch-norm statistics included), is frozen, and leaves torch's generator alone" <| fun () ->
            use _ = torch.NewDisposeScope()
            torch.manual_seed 2L |> ignore
            use model = Backbones.create (ResNet18(1, 28, 28, 4, 10))
            for _ in 1 .. 3 do model.forward(torch.rand(8L, 784L)) |> ignore // moves the running statistics
            let state = torch.get_rng_state ()
            use snapshot = Backbones.snapshot torch.CPU model
            let afterSnapshot = torch.rand(3L)
            torch.set_rng_state state
            Expect.isTrue (sameValues afterSnapshot (torch.rand(3L))) "the generator is where it was"
            model.eval ()
            let x = torch.rand(5L, 784L)
            Expect.isTrue (sameValues (model.forward x) (snapshot.forward x)) "same outputs in eval mode"
            Expect.isTrue (snapshot.parameters () |> Seq.forall (fun p -> not p.requires_grad)) "no gradients"
            model.train ()

        testCase "both convolutional backbones learn: SGD drives the loss on a small batch below half" <| fun () ->
            for name in [ "cnn"; "resnet18" ] do
                use _ = torch.NewDisposeScope()
                torch.manual_seed 3L |> ignore
                use model = Backbones.create (Backbones.ofName name (1, 28, 28) 10)
                use optimiser = torch.optim.SGD(model.parameters (), 0.1)
                let x = torch.rand(10L, 784L)
                let y = torch.tensor([| 0L; 1L; 2L; 3L; 4L; 5L; 6L; 7L; 8L; 9L |])
                let loss () = torch.nn.functional.cross_entropy(model.forward x, y)
                let first = (loss ()).ToDouble()
                for _ in 1 .. 100 do
                    use scope = torch.NewDisposeScope()
                    optimiser.zero_grad ()
                    let l = loss ()
                    l.backward ()
                    optimiser.step () |> ignore
                Expect.isLessThan ((loss ()).ToDouble()) (0.5 * first) (name + " fits the batch")
    ]

[<Tests>]
let flatParameterTests =
    testSequenced <| testList "models.flat parameters" [
        for architecture in [ Mlp(16, [ 8 ], 4); Cnn(1, 8, 8, 4); ResNet18(1, 8, 8, 2, 4) ] do
            yield testCase (Backbones.describe architecture) <| fun () ->
                use _ = torch.NewDisposeScope()
                torch.manual_seed 3L |> ignore
                use model = Backbones.create architecture
                model.eval ()
                let features = match architecture with Mlp(i, _, _) -> int64 i | _ -> 64L
                use x = torch.rand(3L, features)
                use before = model.forward x
                let parameters = [ for p in model.parameters () -> p ]
                let originals = parameters |> List.map (fun p -> p.detach().clone())
                let flat = FlatParameters.create model
                Expect.isTrue (FlatParameters.isBound flat model) "bound right after creation"
                Expect.equal flat.Values.shape.[0] (Backbones.parameterCount model) "one element per scalar"
                for (p, o) in List.zip parameters originals do
                    Expect.isTrue (sameValues p o) "values kept"
                Expect.isTrue (sameValues (model.forward x) before) "same outputs"
                // Parameters are views of the flat vector: writing to it changes the model.
                (use _ = torch.no_grad () in flat.Values.add_((0.25).ToScalar()) |> ignore)
                for (p, o) in List.zip parameters originals do
                    Expect.isTrue (sameValues p (o.add((0.25).ToScalar()))) "parameters see the flat vector"
                // Backward accumulates into the flat gradient, an optimiser steps the flat values,
                // and zero_grad zeroes the gradient in place.
                use optimiser = torch.optim.SGD(model.parameters (), 0.5)
                model.train ()
                for _ in 1 .. 2 do
                    optimiser.zero_grad ()
                    Expect.equal (flat.Gradients.abs().sum().ToDouble()) 0.0 "zeroed in place"
                    use loss = (model.forward x).square().sum()
                    loss.backward ()
                    let expected = Quadratic.concatenate [ for p in parameters -> p.grad ]
                    Expect.isTrue (sameValues flat.Gradients expected) "gradients are views of the flat gradient"
                    Expect.isGreaterThan (flat.Gradients.abs().sum().ToDouble()) 0.0 "and backward reached them"
                    use valuesBefore = flat.Values.clone ()
                    optimiser.step () |> ignore
                    use expectedValues = valuesBefore.sub(flat.Gradients.mul((0.5).ToScalar()))
                    Expect.isTrue (flat.Values.allclose(expectedValues, 1e-6, 1e-7)) "the step moved the flat values"
                Expect.isTrue (FlatParameters.isBound flat model) "still bound after training steps"
                FlatParameters.dispose flat

        yield testCase "a broken layout is detected" <| fun () ->
            use _ = torch.NewDisposeScope()
            use model = Backbones.create (Mlp(6, [ 5 ], 3))
            let flat = FlatParameters.create model
            let last = model.parameters () |> Seq.last
            last.grad <- torch.zeros_like last
            Expect.isFalse (FlatParameters.isBound flat model) "a replaced gradient shows"
            FlatParameters.dispose flat
    ]
