namespace Continual.Strategies

open Continual
open Continual.Data
open Continual.Models
open Continual.Replay
open TorchSharp

/// A distillation term that can be added to any strategy (`--distill NAME`).
type DistillationKind =
    /// Hinton KD on the old classes' logits (temperature T).
    | Kd
    /// FitNets on the embedding, with a trainable regressor (its own SGD at the run's learning rate).
    | FitNets
    /// Neuron selectivity transfer (polynomial kernel, d = 2, c = 0) on every layer's features.
    | Nst
    /// Attention transfer (p = 2) on every layer's features.
    | Attention
    /// Relational KD: distance plus angle relations of the embeddings.
    | Rkd
    /// PODNet: POD-spatial on every layer plus POD-flat on the embedding.
    | Pod
    /// Subspace distillation on the embedding, per class present in the step.
    | Subspace
    /// The exemplar relation graph on the buffer minibatch's embeddings (needs a replay buffer).
    | RelationGraph

/// Settings of an extra distillation term.
type DistillationSettings =
    { Kind: DistillationKind
      /// The weight the term is multiplied by.
      Weight: float
      /// KD's temperature.
      Temperature: float
      /// SD's subspace dimension m (capped per class at its sample count).
      SubspaceDim: int
      /// At most this many samples enter the relation terms (RKD, relation graph), whose angle
      /// relations cost n³ per step: the batch first, then the buffer draws.
      RelationSamples: int }

/// Settings of LwF (Li & Hoiem), METHODS.md's reference conventions by default.
type LwfSettings =
    { /// Weight of the distillation term (α).
      Alpha: float
      /// Temperature of the soft targets (T = 2).
      Temperature: float
      /// Use the lecture's balancing `λ·L_old + (1 − λ)·L_new`, `λ = |Y_old| / |Y_seen|`, instead of
      /// `L_new + α·L_old` (α still multiplies L_old).
      Balanced: bool
      /// Epochs of the classifier warm-up before every task after the first (1 in the reference).
      WarmupEpochs: int }

/// The names of the extra distillation terms.
[<RequireQualifiedAccess>]
module DistillationKind =

    /// Every kind with its command-line name.
    let all =
        [ Kd, "kd"; FitNets, "fitnets"; Nst, "nst"; Attention, "at"; Rkd, "rkd"; Pod, "pod"; Subspace, "sd"; RelationGraph, "relation" ]

    /// The command-line names.
    let names = all |> List.map snd

    /// The kind a name denotes.
    let parse (name: string) : DistillationKind option =
        let n = name.Trim().ToLowerInvariant()
        all |> List.tryFind (fun (_, s) -> s = n) |> Option.map fst

    /// The command-line name of a kind.
    let name (kind: DistillationKind) = all |> List.find (fun (k, _) -> k = kind) |> snd

/// Helpers shared by the distillation extensions.
module internal DistillationSupport =

    let scalar (v: float) : Scalar = v.ToScalar()

    let indexTensor (device: Device) (items: int list) =
        torch.tensor(items |> List.map int64 |> Array.ofList, dtype = torch.ScalarType.Int64, device = device)

    /// The old model snapshot's output on inputs, without building a graph.
    let teacherOutput (teacher: Backbone) (inputs: Tensor) : ModelOutput =
        use _ = torch.no_grad ()
        teacher.ForwardWithFeatures inputs

    /// The model's embeddings of inputs (eval mode, no gradients), computed in chunks; host arrays.
    let embeddings (model: Backbone) (device: Device) (inputs: Tensor) : float32[][] =
        use _ = torch.no_grad ()
        let n = int inputs.shape.[0]
        let chunk = 1000
        [| for start in 0 .. chunk .. n - 1 do
               use scope = torch.NewDisposeScope()
               let x = inputs.narrow(0L, int64 start, int64 (min chunk (n - start))).``to`` device
               let e = (model.ForwardWithFeatures x).Embedding.cpu().contiguous()
               let width = int e.shape.[1]
               let flat = e.data<float32>().ToArray()
               yield! Array.init (int e.shape.[0]) (fun r -> Array.sub flat (r * width) width) |]

    let disposeSnapshot (snapshot: Backbone option) = snapshot |> Option.iter (fun m -> m.Dispose())

open DistillationSupport

/// An extra distillation term on top of any strategy: the old model snapshot (taken at the end of
/// every task) against the current model, on every sample of the step (the batch and the buffer
/// draws). No term during the first task.
type DistillationExtension
    private
    (
        settings: DistillationSettings,
        snapshot: Backbone option,
        oldClasses: int list,
        regressor: (torch.nn.Module<Tensor, Tensor> * torch.optim.Optimizer) option
    ) =
    inherit Extension()

    /// A term with no snapshot yet.
    new(settings: DistillationSettings) = new DistillationExtension(settings, None, [], None)

    /// The term's settings.
    member _.Settings = settings

    override _.Name = "distill"

    override _.BeginTask(context: TaskContext) =
        let oldClasses = context.SeenClasses |> List.except context.Classes
        let regressor =
            match settings.Kind, regressor with
            | FitNets, None ->
                use probe = context.Train.Inputs.narrow(0L, 0L, 1L).``to`` context.Device
                let shape = (teacherOutput context.Model probe).Embedding.shape
                let width = int shape.[1]
                let r = Distillation.fitNetsRegressor width width (shape.Length = 4)
                r.``to`` context.Device |> ignore
                Some(r, torch.optim.SGD(r.parameters (), context.LearningRate) :> torch.optim.Optimizer)
            | _ -> regressor
        new DistillationExtension(settings, snapshot, oldClasses, regressor)

    override _.Terms(view: StepView) =
        match snapshot with
        | None -> []
        | Some teacher ->
            let draws = view.Replay |> List.choose id
            let inputs = torch.cat(Array.ofList (view.Batch.Inputs :: (draws |> List.map (fun d -> d.Draw.Inputs))), 0L)
            let logits = torch.cat(Array.ofList (view.Output.Logits :: (draws |> List.map (fun d -> d.Logits))), 0L)
            let features =
                view.Output.Features
                |> List.mapi (fun i f -> torch.cat(Array.ofList (f :: (draws |> List.map (fun d -> d.Features.[i]))), 0L))
            let old = teacherOutput teacher inputs
            let embedding = List.last features
            let value =
                match settings.Kind with
                | Kd when oldClasses.IsEmpty -> None
                | Kd ->
                    let index = indexTensor logits.device oldClasses
                    Some(Distillation.kd settings.Temperature (old.Logits.index_select(1L, index)) (logits.index_select(1L, index)))
                | FitNets ->
                    regressor |> Option.map (fun (r, _) -> Distillation.fitNets old.Embedding (r.forward embedding))
                | Nst ->
                    Some(List.zip old.Features features |> List.map (fun (t, s) -> Distillation.nst 2 0.0 t s) |> List.reduce (fun a b -> a.add b))
                | Attention -> Some(Distillation.attentionTransfer 2.0 (List.zip old.Features features))
                | Rkd when inputs.shape.[0] < 2L -> None
                | Rkd ->
                    let n = min inputs.shape.[0] (int64 settings.RelationSamples)
                    let teacher, student = old.Embedding.narrow(0L, 0L, n), embedding.narrow(0L, 0L, n)
                    Some((Distillation.rkdDistance teacher student).add(Distillation.rkdAngle teacher student))
                | Pod -> Some((Distillation.podSpatial (List.zip old.Features features)).add(Distillation.podFlat old.Embedding embedding))
                | Subspace ->
                    let labels =
                        Array.concat (view.Batch.LabelArray :: [ for d in draws -> d.Draw.Labels.cpu().data<int64>().ToArray() |> Array.map int ])
                    Some(Distillation.subspaceDistillation settings.SubspaceDim labels old.Embedding embedding)
                | RelationGraph ->
                    match draws with
                    | first :: _ when first.Draw.Labels.shape.[0] >= 2L ->
                        let n = min first.Draw.Labels.shape.[0] (int64 settings.RelationSamples)
                        let teacher = old.Embedding.narrow(0L, view.Batch.Inputs.shape.[0], n)
                        Some(Distillation.relationGraph 1.0 teacher ((List.last first.Features).narrow(0L, 0L, n)))
                    | _ -> None
            value
            |> Option.map (fun v -> { Name = "distill." + DistillationKind.name settings.Kind; Value = v.mul(scalar settings.Weight) })
            |> Option.toList

    override this.AfterStep _ =
        match regressor with
        | Some(_, optimiser) ->
            optimiser.step () |> ignore
            optimiser.zero_grad ()
        | None -> ()
        this

    override _.EndTask(context: TaskContext) =
        disposeSnapshot snapshot
        new DistillationExtension(settings, Some(Backbones.snapshot context.Device context.Model), oldClasses, regressor)

    override _.Dispose() =
        disposeSnapshot snapshot
        regressor |> Option.iter (fun (r, o) -> o.Dispose(); r.Dispose())

/// Learning without Forgetting in the reference conventions (METHODS.md): before every task after the
/// first, a warm-up that trains only the classifier on the new task's logits with the features frozen;
/// then the model (frozen as a snapshot) gives the soft targets of the new task's images, and a step's
/// loss is CE over all seen classes plus α times the soft-target cross-entropy over the old classes.
/// A snapshot taken right after the warm-up gives exactly the logits the reference records, without
/// needing each batch's positions in the training set.
type LwfExtension
    private
    (settings: LwfSettings, rng: RandomState, snapshot: Backbone option, seenClasses: int list, oldClasses: int list) =
    inherit Extension()

    /// LwF before the first task, its warm-up shuffles drawn from `seed`.
    new(settings: LwfSettings, seed: int64) = new LwfExtension(settings, Random.split 7L (Random.create seed), None, [], [])

    /// The classifier warm-up: `epochs` passes over the task's data training only the classifier with
    /// plain SGD at the run's learning rate, CE over the task's own classes, features frozen.
    static member WarmUp (context: TaskContext) (epochs: int) (rng: RandomState) : RandomState =
        let model = context.Model
        let classifier = model.Classifier
        use optimiser = torch.optim.SGD(classifier.parameters (), context.LearningRate)
        let n = context.Train.Count
        let mutable rng = rng
        model.eval ()
        try
            for _ in 1 .. epochs do
                let order, next = Random.permutation n rng
                rng <- next
                for start in 0 .. context.BatchSize .. n - 1 do
                    use scope = torch.NewDisposeScope()
                    let size = min context.BatchSize (n - start)
                    let index = torch.tensor(Array.sub order start size, dtype = torch.ScalarType.Int64)
                    let x = context.Train.Inputs.index_select(0L, index).``to`` context.Device
                    let y = context.Train.Labels.index_select(0L, index).``to`` context.Device
                    let embedding = (teacherOutput model x).Embedding.detach()
                    optimiser.zero_grad ()
                    let logits = classifier.forward embedding
                    let loss = Losses.crossEntropy (Losses.maskToClasses context.Classes logits) y
                    loss.backward ()
                    optimiser.step () |> ignore
            optimiser.zero_grad ()
        finally
            model.train ()
        rng

    /// The settings.
    member _.Settings = settings

    override _.Name = "lwf"

    override _.BeginTask(context: TaskContext) =
        let oldClasses = context.SeenClasses |> List.except context.Classes
        disposeSnapshot snapshot
        if oldClasses.IsEmpty then
            new LwfExtension(settings, rng, None, context.SeenClasses, [])
        else
            let rng = LwfExtension.WarmUp context settings.WarmupEpochs rng
            new LwfExtension(settings, rng, Some(Backbones.snapshot context.Device context.Model), context.SeenClasses, oldClasses)

    override _.Terms(view: StepView) =
        let logits = view.Output.Logits
        let ce = Losses.crossEntropy (Losses.maskToClasses seenClasses logits) view.Batch.Labels
        match snapshot with
        | None -> [ { Name = "ce"; Value = ce } ]
        | Some teacher ->
            let index = indexTensor logits.device oldClasses
            let targets = (teacherOutput teacher view.Batch.Inputs).Logits.index_select(1L, index)
            let soft = Distillation.softTargetCrossEntropy settings.Temperature targets (logits.index_select(1L, index))
            if settings.Balanced then
                let lambda = float oldClasses.Length / float seenClasses.Length
                [ { Name = "ce"; Value = ce.mul(scalar (1.0 - lambda)) }
                  { Name = "lwf.kd"; Value = soft.mul(scalar (lambda * settings.Alpha)) } ]
            else
                [ { Name = "ce"; Value = ce }
                  { Name = "lwf.kd"; Value = soft.mul(scalar settings.Alpha) } ]

    override _.Dispose() = disposeSnapshot snapshot

/// One class's exemplars: inputs [k, features] on the host device in herding order.
type internal ClassExemplars = { Class: int; Inputs: Tensor }

/// iCaRL (Rebuffi et al.) in the reference conventions: a fixed memory split evenly over the classes
/// seen, filled by herding at every task end (older classes shrink by truncating their herding order);
/// the exemplars are trained on together with each new task's data; the loss is sigmoid binary
/// cross-entropy over the seen classes, with the old model's sigmoid outputs as targets for the old
/// classes and one-hot labels for the new ones; evaluation uses the nearest mean of exemplars in the
/// embedding (class means computed with the current model at the task end).
type IcarlExtension
    private
    (
        memory: int,
        exemplars: ClassExemplars list,
        means: (Tensor * Tensor) option,
        snapshot: Backbone option,
        oldClasses: int list,
        newClasses: int list
    ) =
    inherit Extension()

    /// iCaRL with a memory of `memory` exemplars, before the first task.
    new(memory: int) = new IcarlExtension(memory, [], None, None, [], [])

    /// The memory size.
    member _.Memory = memory

    /// How many exemplars each class holds, by class.
    member _.ExemplarCounts = exemplars |> List.map (fun e -> e.Class, int e.Inputs.shape.[0])

    override _.Name = "icarl"

    override _.BeginTask(context: TaskContext) =
        new IcarlExtension(memory, exemplars, means, snapshot, context.SeenClasses |> List.except context.Classes, context.Classes)

    override _.ExtraTrainingData() =
        match exemplars with
        | [] -> None
        | _ ->
            let labels = exemplars |> List.collect (fun e -> List.replicate (int e.Inputs.shape.[0]) e.Class) |> Array.ofList
            Some { Inputs = torch.cat([| for e in exemplars -> e.Inputs |], 0L)
                   Labels = torch.tensor(labels |> Array.map int64, dtype = torch.ScalarType.Int64)
                   LabelArray = labels }

    override _.Terms(view: StepView) =
        let logits = view.Output.Logits
        let device = logits.device
        let classes = logits.shape.[1]
        let oneHot = torch.nn.functional.one_hot(view.Batch.Labels, classes).to_type(torch.ScalarType.Float32)
        let newTargets = oneHot.index_select(1L, indexTensor device newClasses)
        let targets =
            match snapshot, oldClasses with
            | _, [] -> newTargets
            | Some teacher, _ ->
                let old = (teacherOutput teacher view.Batch.Inputs).Logits.sigmoid().index_select(1L, indexTensor device oldClasses)
                torch.cat([| old; newTargets |], 1L)
            | None, _ -> torch.cat([| oneHot.index_select(1L, indexTensor device oldClasses); newTargets |], 1L)
        let outputs = logits.index_select(1L, indexTensor device (oldClasses @ newClasses))
        [ { Name = "icarl.bce"; Value = torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets) } ]

    override _.EndTask(context: TaskContext) =
        disposeSnapshot snapshot
        let model = context.Model
        let seen = context.SeenClasses
        let perClass = memory / max 1 seen.Length
        // Old classes keep the first perClass exemplars of their herding order.
        let kept =
            exemplars
            |> List.filter (fun e -> not (List.contains e.Class context.Classes))
            |> List.map (fun e ->
                let k = min perClass (int e.Inputs.shape.[0])
                let shrunk = e.Inputs.narrow(0L, 0L, int64 k).clone().DetachFromDisposeScope()
                e.Inputs.Dispose()
                { e with Inputs = shrunk })
        exemplars |> List.filter (fun e -> List.contains e.Class context.Classes) |> List.iter (fun e -> e.Inputs.Dispose())
        model.eval ()
        let added =
            context.Classes
            |> List.map (fun c ->
                use scope = torch.NewDisposeScope()
                let rows = [| for i in 0 .. context.Train.Count - 1 do if context.Train.LabelArray.[i] = c then int64 i |]
                let inputs = context.Train.Inputs.index_select(0L, torch.tensor(rows, dtype = torch.ScalarType.Int64))
                let picks = Herding.select perClass (embeddings model context.Device inputs)
                let chosen = inputs.index_select(0L, torch.tensor(picks |> Array.map int64, dtype = torch.ScalarType.Int64))
                { Class = c; Inputs = chosen.DetachFromDisposeScope() })
        let exemplars = (kept @ added) |> List.sortBy (fun e -> e.Class)
        // Class means of the exemplars' embeddings under the model that will be evaluated.
        let classMeans =
            use _ = torch.no_grad ()
            use scope = torch.NewDisposeScope()
            let classes = int (teacherOutput model (context.Train.Inputs.narrow(0L, 0L, 1L).``to`` context.Device)).Logits.shape.[1]
            let rows =
                exemplars
                |> List.map (fun e -> e.Class, (model.ForwardWithFeatures(e.Inputs.``to`` context.Device)).Embedding.mean([| 0L |]))
            let width = (snd rows.Head).shape.[0]
            let table = torch.zeros([| int64 classes; width |], device = context.Device)
            let missing = Array.create classes true
            for (c, m) in rows do
                table.[int64 c].copy_ m |> ignore
                missing.[c] <- false
            let mask = torch.tensor(missing, dtype = torch.ScalarType.Bool, device = context.Device)
            table.DetachFromDisposeScope(), mask.DetachFromDisposeScope()
        model.train ()
        means |> Option.iter (fun (t, m) -> t.Dispose(); m.Dispose())
        new IcarlExtension(memory, exemplars, Some classMeans, Some(Backbones.snapshot context.Device model), oldClasses, context.Classes)

    override _.Scores =
        means
        |> Option.map (fun (table, missing) ->
            fun (output: ModelOutput) ->
                let distances = output.Embedding.unsqueeze(1L).sub(table.unsqueeze 0L).pow(scalar 2.0).sum(2L)
                distances.neg().masked_fill(missing.unsqueeze 0L, System.Single.NegativeInfinity))

    override _.Dispose() =
        disposeSnapshot snapshot
        exemplars |> List.iter (fun e -> e.Inputs.Dispose())
        means |> Option.iter (fun (t, m) -> t.Dispose(); m.Dispose())

/// The distillation family's strategies.
[<RequireQualifiedAccess>]
module DistillationStrategies =

    /// LwF's reference settings: α 1, T 2, no balancing, one warm-up epoch.
    let lwfDefaults = { Alpha = 1.0; Temperature = 2.0; Balanced = false; WarmupEpochs = 1 }

    /// Learning without Forgetting (all its terms come from its extension).
    let lwf (settings: LwfSettings) (seed: int64) : Strategy =
        { Strategies.sgd with
            Name = "lwf"
            Terms = fun _ -> []
            Extensions = [ new LwfExtension(settings, seed) ] }

    /// iCaRL with a memory of `memory` exemplars (kept by the extension, not the reservoir buffer).
    let icarl (memory: int) : Strategy =
        { Strategies.sgd with
            Name = "icarl"
            Terms = fun _ -> []
            Extensions = [ new IcarlExtension(memory) ] }

    /// A strategy with an extra distillation term.
    let withDistillation (settings: DistillationSettings) (strategy: Strategy) : Strategy =
        Strategies.withExtension (new DistillationExtension(settings)) strategy
