namespace Continual.Methods

open Continual
open Continual.Models
open TorchSharp

/// A distillation term that can be added to any strategy (`--distill NAME`).
type DistillationKind =
    /// Hinton KD on the old classes' logits (temperature T).
    | Kd
    /// FitNets on the embedding, with a trainable regressor (the shell trains it with the model).
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
    /// The defaults of a kind: weight 1, T 2, m 2, 32 relation samples.
    static member Of(kind: DistillationKind) = { Kind = kind; Weight = 1.0; Temperature = 2.0; SubspaceDim = 2; RelationSamples = 32 }

/// An extra distillation term on top of any strategy: the old model snapshot (taken at the end of
/// every task) against the current model, on every sample of the step (the batch and the buffer
/// draws). No term during the first task.
[<RequireQualifiedAccess>]
module DistillationTerm =

    /// The term's state: the snapshot, the old classes and (FitNets) the shell's regressor.
    type State =
        { Snapshot: Backbone option
          OldClasses: int list
          /// FitNets' regressor, built and trained by the shell (not owned by the state).
          Regressor: torch.nn.Module<Tensor, Tensor> option }

    /// The term before the first task.
    let initial : State = { Snapshot = None; OldClasses = []; Regressor = None }

    /// The term's value for one step (None when it has nothing to compare).
    let value (settings: DistillationSettings) (state: State) (teacher: Backbone) (view: StepView) : Tensor option =
        let draws = view.Replay |> List.choose id
        let inputs = torch.cat(Array.ofList (view.Batch.Inputs :: (draws |> List.map (fun d -> d.Draw.Inputs))), 0L)
        let logits = torch.cat(Array.ofList (view.Output.Logits :: (draws |> List.map (fun d -> d.Logits))), 0L)
        let features =
            view.Output.Features
            |> List.mapi (fun i f -> torch.cat(Array.ofList (f :: (draws |> List.map (fun d -> d.Features.[i]))), 0L))
        let old = Teacher.output teacher inputs
        let embedding = List.last features
        match settings.Kind with
        | Kd when state.OldClasses.IsEmpty -> None
        | Kd ->
            let index = Teacher.classIndex logits.device state.OldClasses
            Some(Distillation.kd settings.Temperature (old.Logits.index_select(1L, index)) (logits.index_select(1L, index)))
        | FitNets -> state.Regressor |> Option.map (fun r -> Distillation.fitNets old.Embedding (r.forward embedding))
        | Nst -> Some(List.zip old.Features features |> List.map (fun (t, s) -> Distillation.nst 2 0.0 t s) |> List.reduce Scalars.add)
        | Attention -> Some(Distillation.attentionTransfer 2.0 (List.zip old.Features features))
        | Rkd when inputs.shape.[0] < 2L -> None
        | Rkd ->
            let n = min inputs.shape.[0] (int64 settings.RelationSamples)
            let teacher, student = old.Embedding.narrow(0L, 0L, n), embedding.narrow(0L, 0L, n)
            Some(Scalars.add (Distillation.rkdDistance teacher student) (Distillation.rkdAngle teacher student))
        | Pod -> Some(Scalars.add (Distillation.podSpatial (List.zip old.Features features)) (Distillation.podFlat old.Embedding embedding))
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

    /// The term, weighted and named "distill.<kind>" (none during the first task).
    let terms (settings: DistillationSettings) (state: State) (view: StepView) : LossTerm list =
        match state.Snapshot with
        | None -> []
        | Some teacher ->
            value settings state teacher view
            |> Option.map (fun v -> { Name = "distill." + DistillationKind.name settings.Kind; Value = Scalars.mul v settings.Weight })
            |> Option.toList

    /// FitNets' regressor from the model's embedding of one example: identity-initialised, linear for
    /// flat embeddings and 1×1 convolutional for feature maps.
    let regressor (embedding: Tensor) : torch.nn.Module<Tensor, Tensor> =
        let shape = embedding.shape
        let width = int shape.[1]
        Distillation.fitNetsRegressor width width (shape.Length = 4)

    /// The term as a method.
    let method (settings: DistillationSettings) : Method<State> =
        { Method.empty "distill" with
            BeginTask = fun c s -> { s with OldClasses = c.SeenClasses |> List.except c.Classes }
            Terms = terms settings
            EndTask = fun c s -> { s with Snapshot = Some(Backbones.snapshot c.Device c.Model) }
            Auxiliary =
                match settings.Kind with
                | FitNets -> Some { Build = regressor; Attach = fun r s -> { s with Regressor = Some r } }
                | _ -> None
            Owned = fun s -> Teacher.owned s.Snapshot
            Footprint = fun s -> Footprint.snapshot s.Snapshot }

    /// The term packed before the first task.
    let create (settings: DistillationSettings) : MethodInstance = Method.pack (method settings) initial
