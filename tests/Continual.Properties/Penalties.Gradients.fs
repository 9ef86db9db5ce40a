/// Properties of the per-sample gradient statistics (Penalties.Gradients.fs and the estimators built on
/// them): the closed form for the MLP equals one autograd pass per sample, on tiny random models.
module Continual.Properties.PenaltiesGradients

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Data
open Continual.Models
open Continual.Penalties
open Continual.Properties.PenaltiesFixtures
open TorchSharp

/// A tiny random case: a seeded MLP (4 inputs, one or two hidden layers, 3 classes) and n samples.
type Case =
    { Seed: int
      Hidden: int list
      Samples: int }

let private caseGen : Gen<Case> =
    gen {
        let! seed = Gen.choose (0, 100000)
        let! hidden = Gen.elements [ [ 5 ]; [ 3; 4 ]; [ 6; 2 ] ]
        let! samples = Gen.choose (1, 12)
        return { Seed = seed; Hidden = hidden; Samples = samples }
    }

let private modelOf (c: Case) =
    torch.manual_seed (int64 c.Seed) |> ignore
    let m = Backbones.create (Mlp(4, c.Hidden, 3))
    // Random biases so that some ReLUs are off and the masks matter.
    use _ = torch.no_grad ()
    for p in m.parameters () do
        if p.dim () = 1L then p.uniform_(-0.5, 0.5) |> ignore
    m

/// Random inputs and labels of a case, stored as float32 (so `Stored` is what the model is fed).
let private dataOf (c: Case) =
    let rnd = System.Random(c.Seed + 1)
    let x = Array.init (c.Samples * 4) (fun _ -> float32 (rnd.NextDouble() * 2.0 - 0.5))
    let labels = Array.init c.Samples (fun _ -> rnd.Next 3)
    { Stored = torch.tensor(x, dtype = torch.ScalarType.Float32).reshape(int64 c.Samples, 4L)
      Labels = torch.tensor(labels |> Array.map int64, dtype = torch.ScalarType.Int64)
      LabelArray = labels
      Normalisation = None }

let private sameStatistics (what: string) (expected: Tensor list) (actual: Tensor list) =
    arraysClose 1e-5 what (flatValues expected) (flatValues actual)

[<Tests>]
let tests =
    sequenced "per-sample gradients" [
        testPropertyWithConfig config "closed-form squared gradients equal one backward per sample" (Prop.forAll (Arb.fromGen caseGen) (fun c ->
            let model = modelOf c
            let data = dataOf c
            let labels = data.LabelArray |> Array.map int64
            for objective in [ NegativeLogLikelihood(labels, false); NegativeLogLikelihood(labels, true); SquaredNorm ] do
                sameStatistics (sprintf "%A" objective) (PerSample.loopSums model data.Stored objective Squares) (PerSample.sums model data.Stored objective Squares)
            true))

        testPropertyWithConfig config "closed-form gradient magnitudes equal one backward per sample" (Prop.forAll (Arb.fromGen caseGen) (fun c ->
            let model = modelOf c
            let data = dataOf c
            sameStatistics "MAS" (PerSample.loopSums model data.Stored SquaredNorm Magnitudes) (PerSample.sums model data.Stored SquaredNorm Magnitudes)
            true))

        testPropertyWithConfig config "the Fisher is the mean of squared per-sample gradients, for every kind" (Prop.forAll (Arb.fromGen caseGen) (fun c ->
            let model = modelOf c
            let data = dataOf c
            let rng = Random.create (int64 c.Seed)
            for kind in [ Sampled; Empirical; LabelWeighted ] do
                let fisher, _ = Estimate.fisher kind model data torch.CPU rng
                // The reference goes one sample at a time; the "true" Fisher's labels are the same draws
                // from the same generator.
                let labels = data.LabelArray |> Array.map int64
                let objective =
                    match kind with
                    | Empirical -> NegativeLogLikelihood(labels, false)
                    | LabelWeighted -> NegativeLogLikelihood(labels, true)
                    | Sampled ->
                        let logits = (use _ = torch.no_grad () in model.forward data.Stored)
                        let probabilities = torch.nn.functional.softmax(logits, 1L)
                        fst (Draws.categorical probabilities rng) |> fun drawn -> NegativeLogLikelihood(drawn, false)
                let reference = PerSample.loopSums model data.Stored objective Squares |> List.map (fun t -> t.div(Scalars.cached (float c.Samples)))
                sameStatistics (sprintf "Fisher %A" kind) reference fisher
            true))

        testPropertyWithConfig config "the batch Fisher from a step's own activations equals the reference" (Prop.forAll (Arb.fromGen caseGen) (fun c ->
            let model = modelOf c
            let data = dataOf c
            let output = model.ForwardWithFeatures data.Stored
            let labels = data.LabelArray |> Array.map int64
            let batch, _ = Estimate.batchFisher Empirical model data.Stored (data.Stored :: output.Features) output.Logits labels (Random.create 1L)
            let reference = PerSample.loopSums model data.Stored (NegativeLogLikelihood(labels, false)) Squares |> List.map (fun t -> t.div(Scalars.cached (float c.Samples)))
            sameStatistics "batch Fisher" reference batch
            true))

        testPropertyWithConfig config "the batch Fisher blended into a running Fisher in place equals decay · F + scale · Σ of one backward per sample" (Prop.forAll (Arb.fromGen (Gen.zip3 caseGen (Gen.choose (0, 100)) (Gen.choose (1, 300)))) (fun (c, d, s) ->
            let model = modelOf c
            let data = dataOf c
            let output = model.ForwardWithFeatures data.Stored
            let labels = data.LabelArray |> Array.map int64
            let decay, scale = float d / 100.0, float s / 100.0
            for kind, weighted in [ Empirical, false; LabelWeighted, true ] do
                torch.manual_seed (int64 c.Seed + 11L) |> ignore
                let start = PerSample.parameters model |> List.map (fun p -> torch.rand_like p)
                let running = start |> List.map (fun t -> t.clone ())
                Estimate.blendBatchFisher kind model (PerSample.parameters model) data.Stored (data.Stored :: output.Features) output.Logits labels decay scale running (Random.create 1L) |> ignore
                let sums = PerSample.loopSums model data.Stored (NegativeLogLikelihood(labels, weighted)) Squares
                let expected = List.map2 (fun (f: Tensor) (g: Tensor) -> f.mul(Scalars.cached decay).add(g, Scalars.cached scale)) start sums
                sameStatistics (sprintf "blended %A" kind) expected running
            true))

        testPropertyWithConfig config "the online Fisher blend is, bit for bit, the unfused formulation (one_hot, separate squares and products)" (Prop.forAll (Arb.fromGen (Gen.zip3 caseGen (Gen.choose (0, 100)) (Gen.choose (1, 300)))) (fun (c, d, s) ->
            // EWC++ and RWalk's results must not move when their per-step Fisher is reorganised for speed:
            // the fused, in-place blend is compared exactly with the formulation it replaced.
            let model = modelOf c
            let data = dataOf c
            let output = model.ForwardWithFeatures data.Stored
            let labels = data.LabelArray |> Array.map int64
            let decay, scale = float d / 100.0, float s / 100.0
            let ps = PerSample.parameters model
            for kind, weighted in [ Empirical, false; LabelWeighted, true ] do
                torch.manual_seed (int64 c.Seed + 11L) |> ignore
                let expected = ps |> List.map (fun p -> torch.rand_like p)
                let running = expected |> List.map (fun t -> t.clone ())
                // Twice with the same list: the second call reads the remembered chain.
                for _ in 1 .. 2 do
                    Estimate.blendBatchFisher kind model ps data.Stored (data.Stored :: output.Features) output.Logits labels decay scale running (Random.create 1L) |> ignore
                    use _ = torch.no_grad ()
                    use y = torch.tensor(labels, dtype = torch.ScalarType.Int64)
                    let p = torch.nn.functional.softmax(output.Logits, 1L)
                    let delta = p.sub(torch.nn.functional.one_hot(y, output.Logits.shape.[1]).to_type(output.Logits.dtype))
                    let sampleWeights = if weighted then Some(p.gather(1L, y.unsqueeze 1L).squeeze 1L) else None
                    let weights = [ for i in 0 .. 2 .. ps.Length - 2 -> ps.[i] ] |> Array.ofList
                    let activations = Array.ofList (data.Stored :: output.Features)
                    let deltas = Array.zeroCreate<Tensor> weights.Length
                    deltas.[weights.Length - 1] <- delta
                    for l in weights.Length - 2 .. -1 .. 0 do
                        deltas.[l] <- deltas.[l + 1].matmul(weights.[l + 1]).mul(activations.[l + 1].gt(Scalars.cached 0.0))
                    use ones = torch.ones([| int64 c.Samples |])
                    for l in 0 .. weights.Length - 1 do
                        let squares = deltas.[l].square ()
                        let squares = match sampleWeights with Some w -> squares.mul(w.unsqueeze 1L) | None -> squares
                        expected.[2 * l].addmm_(squares.t (), activations.[l].square (), float32 decay, float32 scale) |> ignore
                        expected.[2 * l + 1].addmv_(squares.t (), ones, float32 decay, float32 scale) |> ignore
                    List.iteri2 (fun i (e: Tensor) (a: Tensor) ->
                        if not (Scalars.toBool ((e.eq a).all())) then
                            use diff = (e - a).abs().max()
                            failtestf "%A, tensor %d: differs from the unfused formulation by up to %g" kind i (Scalars.toFloat diff)) expected running
            true))

        testPropertyWithConfig config "SCP with effective slices equals Σ over the original slices" (Prop.forAll (Arb.fromGen (Gen.zip caseGen (Gen.choose (1, 9)))) (fun (c, slices) ->
            let model = modelOf c
            let data = dataOf c
            let batch = max 1 (c.Samples / 2)
            let rng = Random.create (int64 c.Seed)
            let gamma, _ = Estimate.scp slices batch model data torch.CPU rng
            // Reference: every original slice, one autograd pass each, per batch mean; same draws.
            let ps = PerSample.parameters model
            let sums = ps |> List.map (fun p -> torch.zeros_like p)
            let mutable r = rng
            let mutable batches = 0
            for start in 0 .. batch .. c.Samples - 1 do
                let n = min batch (c.Samples - start)
                batches <- batches + 1
                let xi, r' = Draws.unitVectors slices 3 r
                r <- r'
                let mean = (model.forward (data.Stored.narrow(0L, int64 start, int64 n))).mean([| 0L |])
                for l in 0 .. slices - 1 do
                    let direction = torch.tensor([| for j in 0 .. 2 -> xi.[l, j] |], dtype = torch.ScalarType.Float32)
                    let grads = torch.autograd.grad([| mean.dot direction |], Array.ofList ps, null, true, false, true)
                    use _ = torch.no_grad ()
                    for (s, g) in Seq.zip sums grads do s.add_(g.square ()) |> ignore
            let reference = sums |> List.map (fun s -> s.div(Scalars.cached (float batches)))
            sameStatistics "SCP" reference gamma
            true))
    ]
