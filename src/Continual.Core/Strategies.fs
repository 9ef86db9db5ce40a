namespace Continual.Strategies

open Continual
open Continual.Data
open Continual.Models
open Continual.Penalties
open Continual.Replay
open TorchSharp

/// The training batch of one step.
type StepBatch =
    { Inputs: Tensor
      Labels: Tensor
      LabelArray: int[]
      Task: int }

/// A buffer draw together with the current model's logits and features on it.
type ReplayView =
    { Draw: ReplayDraw
      Logits: Tensor
      /// The current model's per-layer features on the draw (as in ModelOutput.Features).
      Features: Tensor list }

/// Everything a strategy's loss may look at in one step: the batch, the current model's output on it,
/// one entry per buffer draw the strategy asked for (None while the buffer is empty), and the model
/// itself (parameter penalties read its parameters).
type StepView =
    { Batch: StepBatch
      Output: ModelOutput
      Replay: ReplayView option list
      Model: Backbone }

/// What an extension sees at a task boundary.
type TaskContext =
    { Task: int
      /// The classes of this task.
      Classes: int list
      /// Every class seen up to and including this task.
      SeenClasses: int list
      /// This task's training data (for importance estimation, recorded targets, herding).
      Train: LabelledSet
      Model: Backbone
      Architecture: Architecture
      Device: Device
      LearningRate: float
      BatchSize: int }

/// A quadratic penalty as a named loss term that the shell applies in closed form: after backward
/// it adds the penalty's gradient `H (θ − θ*)` to the model's flat gradient and the value to the
/// reported loss. Same value and gradient as an autograd term, at a few operations per step.
type PenaltyTerm =
    { Name: string
      Penalty: Quadratic }

/// A loss extension with its own state (importance, anchors, an old-model snapshot, path integrals).
/// Objects are values: every transition returns the extension's next value, which the shell threads
/// through the run, so all state is explicit. Tensors held inside may be updated in place within a
/// transition for speed; tensors kept across steps must be detached from the step's dispose scope.
[<AbstractClass>]
type Extension() =
    /// Name of the extension; its loss terms are named "<name>" or "<name>.<part>".
    abstract Name: string
    /// Called before the first step of a task.
    abstract BeginTask: TaskContext -> Extension
    /// Extra loss terms for one step (pure: reads the view and the extension's state).
    abstract Terms: StepView -> LossTerm list
    /// The quadratic penalties of the extension's current state (they do not depend on the batch),
    /// applied in closed form by the shell: their gradients enter every step after backward, before
    /// clipping and AfterBackwardOn.
    abstract Penalties: PenaltyTerm list
    /// Called after backward and gradient clipping, before the optimiser step (gradients are in p.grad).
    abstract AfterBackward: Backbone -> Extension
    /// Called after backward and gradient clipping, before the optimiser step, with the step's view
    /// (importance estimated from the batch itself, as EWC++ and RWalk do, needs its activations).
    /// By default it calls AfterBackward with the model.
    abstract AfterBackwardOn: StepView -> Extension
    /// Called after the optimiser step.
    abstract AfterStep: Backbone -> Extension
    /// Called after the last step of a task, before evaluation.
    abstract EndTask: TaskContext -> Extension
    /// Examples the shell trains on together with the task's data, shuffled in with it (iCaRL's
    /// exemplar set), read right after BeginTask; None for most extensions. The shell disposes them.
    abstract ExtraTrainingData: unit -> LabelledSet option
    /// Class scores that replace the model's logits at evaluation (iCaRL's nearest mean of
    /// exemplars), as a function of the model's output; None keeps the logits.
    abstract Scores: (ModelOutput -> Tensor) option
    /// Frees the tensors the extension holds.
    abstract Dispose: unit -> unit
    default this.BeginTask _ = this
    default _.Terms _ = []
    default _.Penalties = []
    default this.AfterBackward _ = this
    default this.AfterBackwardOn view = this.AfterBackward view.Model
    default this.AfterStep _ = this
    default this.EndTask _ = this
    default _.ExtraTrainingData() = None
    default _.Scores = None
    default _.Dispose() = ()

/// How a strategy walks the stream.
type Schedule =
    /// Task after task (the continual setting).
    | Sequential
    /// All tasks' data shuffled together and learned at once (JOINT, the upper bound).
    | Joint

/// A continual-learning method: its loss terms as a pure function of the step's view, and what the
/// shell must prepare for it. The shell sums the terms and steps the optimiser; a strategy never does.
type Strategy =
    { Name: string
      Schedule: Schedule
      /// Buffer slots (0 for none); the buffer is filled by reservoir sampling during all of training.
      BufferSize: int
      /// Sizes of the independent buffer minibatches drawn every step.
      ReplayDraws: int list
      /// The named loss terms of one step.
      Terms: StepView -> LossTerm list
      /// Extra terms with their own state (penalties, distillation), in the order they are added.
      Extensions: Extension list
      /// Clip every gradient element to [-c, c] before the step (SI's protocol), when set.
      ClipGradValue: float option }

/// The strategies of the replay family and the bounds.
[<RequireQualifiedAccess>]
module Strategies =

    let private ce (view: StepView) =
        { Name = "ce"; Value = Losses.crossEntropy view.Output.Logits view.Batch.Labels }

    /// Plain fine-tuning: cross-entropy on the current batch (the lower bound).
    let sgd : Strategy =
        { Name = "sgd"
          Schedule = Sequential
          BufferSize = 0
          ReplayDraws = []
          Terms = fun view -> [ ce view ]
          Extensions = []
          ClipGradValue = None }

    /// All data at once with the SGD loss (the upper bound).
    let joint : Strategy = { sgd with Name = "joint"; Schedule = Joint }

    /// Experience replay: one cross-entropy over the batch concatenated with a buffer minibatch.
    let er (bufferSize: int) (minibatch: int) : Strategy =
        { sgd with
            Name = "er"
            BufferSize = bufferSize
            ReplayDraws = [ minibatch ]
            Terms =
              fun view ->
                match view.Replay with
                | [ Some replay ] ->
                    use logits = torch.cat([| view.Output.Logits; replay.Logits |], 0L)
                    use labels = torch.cat([| view.Batch.Labels; replay.Draw.Labels |], 0L)
                    [ { Name = "ce"; Value = Losses.crossEntropy logits labels } ]
                | _ -> [ ce view ] }

    /// The DER logit term alone: alpha times the MSE between the current and the stored logits.
    let derTerm (alpha: float) (replay: ReplayView) : LossTerm =
        { Name = "der.logits"; Value = (Losses.derLogitMatching replay.Logits replay.Draw.Logits).mul(alpha.ToScalar()) }

    /// Dark Experience Replay: CE on the batch plus alpha x MSE to the stored logits of a buffer minibatch.
    let der (bufferSize: int) (minibatch: int) (alpha: float) : Strategy =
        { sgd with
            Name = "der"
            BufferSize = bufferSize
            ReplayDraws = [ minibatch ]
            Terms =
              fun view ->
                match view.Replay with
                | [ Some replay ] -> [ ce view; derTerm alpha replay ]
                | _ -> [ ce view ] }

    /// DER++: DER plus beta x CE on the labels of a second, independent buffer minibatch.
    let derpp (bufferSize: int) (minibatch: int) (alpha: float) (beta: float) : Strategy =
        { sgd with
            Name = "derpp"
            BufferSize = bufferSize
            ReplayDraws = [ minibatch; minibatch ]
            Terms =
              fun view ->
                match view.Replay with
                | [ Some first; Some second ] ->
                    [ ce view
                      derTerm alpha first
                      { Name = "derpp.labels"; Value = (Losses.crossEntropy second.Logits second.Draw.Labels).mul(beta.ToScalar()) } ]
                | _ -> [ ce view ] }

    /// A strategy with an extension added after the ones it has (e.g. DER++ plus SI).
    let withExtension (extension: Extension) (strategy: Strategy) : Strategy =
        { strategy with Extensions = strategy.Extensions @ [ extension ] }
