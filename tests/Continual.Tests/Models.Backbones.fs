/// Tests of the convolutional backbones and snapshots in src/Continual.Core/Models.fs.
module Continual.Tests.ModelsBackbones

open Expecto
open TorchSharp
open Continual
open Continual.Models
open Continual.Penalties

let private shapes (o: ModelOutput) = o.Features |> List.map (fun f -> List.ofArray f.shape)

let private sameValues (a: Tensor) (b: Tensor) = Scalars.toBool (a.eq(b).all())

/// The input and gradient of max_pool2d(x, 2) and of Pooling.maxPool2x2 on relu'd values rounded to
/// quarters (many exact ties: zero windows and equal positives), against the same upstream gradient.
let private poolBothWays (shape: int64[]) =
    let x0 = torch.nn.functional.relu ((torch.randn(shape) * 4.0).round() / 4.0)
    let run (pool: Tensor -> Tensor) =
        let x = x0.clone().requires_grad_(true)
        let y = pool x
        use upstream = torch.randn(y.shape, generator = (new torch.Generator(7UL)))
        torch.autograd.backward([| y |], [| upstream |])
        y.detach(), x.grad.clone()
    run (fun x -> torch.nn.functional.max_pool2d(x, 2L)), run Pooling.maxPool2x2

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

        testCase "float32 convolutions over the CNN's shapes, and over the ResNet-18's once it is built, agree with libtorch's float64 reference" <| fun () ->
            use _ = torch.NewDisposeScope()
            use _ = torch.no_grad ()
            let generator = new torch.Generator(5UL)
            let check (cin, cout, stride, size, batch) =
                let weight = torch.randn([| cout; cin; 3L; 3L |], generator = generator).mul_(Scalars.cached 0.1)
                let input = torch.randn([| batch; cin; size; size |], generator = generator)
                let fast = torch.nn.functional.conv2d(input, weight, strides = [| stride; stride |], padding = [| 1L; 1L |])
                let reference =
                    torch.nn.functional.conv2d(input.to_type torch.ScalarType.Float64, weight.to_type torch.ScalarType.Float64, strides = [| stride; stride |], padding = [| 1L; 1L |])
                let error = fast.to_type(torch.ScalarType.Float64).sub(reference).abs().max().item<float>() / reference.abs().max().item<float>()
                Expect.isLessThan error 1e-4 (sprintf "%d→%d channels, stride %d, %d×%d maps, %d rows: relative error" cin cout stride size size batch)
            // (channels in, out, stride, map size, batch): the CNN over Fashion-MNIST and CIFAR.
            for shape in [ 1L, 32L, 1L, 28L, 30L; 32L, 64L, 1L, 14L, 30L; 3L, 32L, 1L, 32L, 30L; 32L, 64L, 1L, 16L, 256L ] do
                check shape
            use resnet = Backbones.create (Backbones.ofName "resnet18" (3, 32, 32) 10)
            match Engine.checkConvolutions () with
            | Sound | FellBack _ -> ()
            | Unsound(error, reason) -> failtestf "the convolutions are off by %g and could not be fixed: %s" error reason
            // The ResNet-18's stages over Fashion-MNIST, CIFAR and Tiny ImageNet.
            for shape in [ 20L, 20L, 1L, 64L, 2L; 20L, 40L, 2L, 64L, 2L; 20L, 20L, 1L, 28L, 10L; 40L, 80L, 2L, 14L, 10L; 80L, 160L, 2L, 32L, 4L ] do
                check shape

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

        testCase "the CNN's 2×2 max-pooling gives max_pool2d's values, gradients and contiguous NCHW layout, ties included" <| fun () ->
            for shape in [ [| 6L; 32L; 28L; 28L |]; [| 5L; 3L; 7L; 9L |]; [| 1L; 1L; 2L; 2L |] ] do
                use _ = torch.NewDisposeScope()
                torch.manual_seed 4L |> ignore
                let (expected, expectedGrad), (pooled, grad) = poolBothWays shape
                Expect.equal pooled.shape expected.shape (sprintf "%A: shape" shape)
                Expect.isTrue (sameValues pooled expected) (sprintf "%A: values" shape)
                Expect.isTrue (sameValues grad expectedGrad) (sprintf "%A: gradients reach the element max_pool2d picks" shape)
                Expect.isTrue (pooled.is_contiguous ()) (sprintf "%A: contiguous" shape)
                use _ = torch.no_grad ()
                let x = torch.nn.functional.relu ((torch.randn(shape) * 4.0).round() / 4.0)
                let plain = Pooling.maxPool2x2 x
                Expect.isTrue (sameValues plain (torch.nn.functional.max_pool2d(x, 2L))) (sprintf "%A: values without gradients" shape)
                Expect.isTrue (plain.is_contiguous ()) (sprintf "%A: contiguous without gradients" shape)

        testCase "the CNN's ReLU after its pooling gives the values and gradients of the ReLU before it, bit for bit" <| fun () ->
            for shape in [ [| 6L; 32L; 28L; 28L |]; [| 5L; 3L; 7L; 9L |]; [| 1L; 1L; 2L; 2L |] ] do
                use _ = torch.NewDisposeScope()
                torch.manual_seed 5L |> ignore
                // Quarters of both signs: windows wholly negative or zero, ties at the maximum, mixed windows.
                let x0 = (torch.randn(shape) * 4.0).round() / 4.0
                let run (block: Tensor -> Tensor) =
                    let x = x0.clone().requires_grad_(true)
                    let y = block x
                    use upstream = torch.randn(y.shape, generator = (new torch.Generator(8UL)))
                    torch.autograd.backward([| y |], [| upstream |])
                    y.detach(), x.grad.clone()
                let expected, expectedGrad = run (fun x -> torch.nn.functional.max_pool2d(torch.nn.functional.relu x, 2L))
                let values, grad = run (fun x -> torch.nn.functional.relu (Pooling.maxPool2x2 x))
                Expect.isTrue (sameValues values expected) (sprintf "%A: values" shape)
                Expect.isTrue (sameValues grad expectedGrad) (sprintf "%A: gradients" shape)

        testCase "both convolutional backbones learn: SGD drives the loss on a small batch below half" <| fun () ->
            for name in [ "cnn"; "resnet18" ] do
                use _ = torch.NewDisposeScope()
                torch.manual_seed 3L |> ignore
                use model = Backbones.create (Backbones.ofName name (1, 28, 28) 10)
                use optimiser = torch.optim.SGD(model.parameters (), 0.1)
                let x = torch.rand(10L, 784L)
                let y = torch.tensor([| 0L; 1L; 2L; 3L; 4L; 5L; 6L; 7L; 8L; 9L |])
                let loss () = torch.nn.functional.cross_entropy(model.forward x, y)
                let first = Scalars.toFloat (loss ())
                for _ in 1 .. 100 do
                    use scope = torch.NewDisposeScope()
                    optimiser.zero_grad ()
                    let l = loss ()
                    l.backward ()
                    optimiser.step () |> ignore
                Expect.isLessThan (Scalars.toFloat (loss ())) (0.5 * first) (name + " fits the batch")
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
                (use _ = torch.no_grad () in flat.Values.add_(Scalars.cached 0.25) |> ignore)
                for (p, o) in List.zip parameters originals do
                    Expect.isTrue (sameValues p (o.add(Scalars.cached 0.25))) "parameters see the flat vector"
                // Backward accumulates into the flat gradient, an optimiser steps the flat values,
                // and zero_grad zeroes the gradient in place.
                use optimiser = torch.optim.SGD(model.parameters (), 0.5)
                model.train ()
                for _ in 1 .. 2 do
                    optimiser.zero_grad ()
                    Expect.equal (Scalars.toFloat (flat.Gradients.abs().sum())) 0.0 "zeroed in place"
                    use loss = (model.forward x).square().sum()
                    loss.backward ()
                    let expected = Quadratic.concatenate [ for p in parameters -> p.grad ]
                    Expect.isTrue (sameValues flat.Gradients expected) "gradients are views of the flat gradient"
                    Expect.isGreaterThan (Scalars.toFloat (flat.Gradients.abs().sum())) 0.0 "and backward reached them"
                    use valuesBefore = flat.Values.clone ()
                    optimiser.step () |> ignore
                    use expectedValues = valuesBefore.sub(flat.Gradients.mul(Scalars.cached 0.5))
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

[<Tests>]
let evaluationBatchTests =
    testSequenced <| testList "evaluation.batches" [
        for name, (channels, height, width) in [ "mlp", (1, 28, 28); "cnn", (1, 28, 28); "resnet18", (3, 16, 16) ] do
          yield testCase (sprintf "%s: scores in passes of Evaluation.batchSize rows (or 150) are one pass's bit for bit, and the accuracies are those of one pass" name) <| fun () ->
                use _ = torch.NewDisposeScope()
                torch.manual_seed 5L |> ignore
                let features = channels * height * width
                let n = 600 // more than Evaluation.batchSize: the default splits it
                use model = Backbones.create (Backbones.ofName name (channels, height, width) 4)
                for _ in 1 .. 3 do model.forward(torch.rand(16L, int64 features)) |> ignore // moves batch-norm statistics
                let labels = Array.init n (fun i -> i % 4)
                let values = (torch.rand(int64 n, int64 features)).data<float32>().ToArray()
                let set = Continual.Data.Benchmarks.ofFloats values features labels
                model.eval ()
                let reference =
                    use _ = torch.no_grad ()
                    model.forward (set.AllInputs())
                model.train ()
                // Passes of 150, 200 (600 / 256 → 3 passes) and 600 rows; never passes of a few rows, which
                // can take other matrix-product paths (Evaluation.batchSize).
                for size in [ 150; Evaluation.batchSize; n; 10 * n ] do
                    use _ = torch.inference_mode ()
                    model.eval ()
                    let scores = Evaluation.scoresIn size None model torch.CPU set
                    model.train ()
                    Expect.equal scores.shape reference.shape (sprintf "batch %d: shape" size)
                    Expect.isTrue (sameValues scores reference) (sprintf "batch %d: the same bits as one pass" size)
                let task : Continual.Data.TaskSpec = { Index = 0; Classes = [ 0; 1 ] }
                let accuracies = Evaluation.evaluate model torch.CPU [ task, set ]
                Expect.isTrue model.training "the model is back in training mode"
                Expect.equal accuracies.ClassIl [| Evaluation.accuracy reference set.Labels |] "Class-IL of one pass"
                Expect.equal accuracies.TaskIl [| Evaluation.accuracy (Losses.maskToClasses [ 0; 1 ] reference) set.Labels |] "Task-IL of one pass"

        yield testCase "an empty test set scores no rows, and a batch size below 1 is refused" <| fun () ->
            use _ = torch.NewDisposeScope()
            use model = Backbones.create (Backbones.ofName "cnn" (1, 28, 28) 4)
            let set = Continual.Data.Benchmarks.ofFloats [||] 784 [||]
            use _ = torch.inference_mode ()
            Expect.equal (Evaluation.scoresIn Evaluation.batchSize None model torch.CPU set).shape [| 0L; 4L |] "no rows"
            Expect.throwsT<System.ArgumentException> (fun () -> Evaluation.scoresIn 0 None model torch.CPU set |> ignore) "batch size 0"
    ]
