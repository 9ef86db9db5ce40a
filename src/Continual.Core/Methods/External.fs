namespace Continual.Methods

open System
open Continual
open TorchSharp

/// A loss term written outside the core (the C# façade's custom terms): an object that keeps its own
/// state across steps and tasks, where a core method keeps it in an immutable state value. Its state
/// lives in the object, so a learner file cannot hold it (Learners.save refuses a learner that has one).
type IExternalTerm =
    /// The term's name, as its loss term is named (e.g. "l2-anchor").
    abstract Name: string
    /// The term's value at one step (a scalar of the step's dispose scope, on the graph of the model's
    /// parameters), or null for no term this step.
    abstract Value: StepView -> Tensor
    /// Called before the first step of a task, inside a dispose scope of the shell.
    abstract BeginTask: TaskContext -> unit
    /// Called after the last step of a task, before evaluation, inside a dispose scope of the shell: what
    /// the term keeps must be detached from it.
    abstract EndTask: TaskContext -> unit

/// Packing external terms as methods the shell runs.
[<RequireQualifiedAccess>]
module ExternalTerm =

    /// The method of an external term: its value as a named loss term, its task hooks, and the term
    /// itself as what the method owns when it is IDisposable (freed with the run's state).
    let method (term: IExternalTerm) : Method<IExternalTerm> =
        { Method.empty term.Name with
            Terms =
                fun t view ->
                    match t.Value view with
                    | null -> []
                    | value -> [ { Name = t.Name; Value = value } ]
            BeginTask = fun context t -> t.BeginTask context; t
            EndTask = fun context t -> t.EndTask context; t
            Owned = fun t -> match box t with :? IDisposable as d -> [ d ] | _ -> [] }

    /// An external term packed as the shell's method instance.
    let create (term: IExternalTerm) : MethodInstance = Method.pack (method term) term

    /// Whether a packed method is an external term (whose state a learner file cannot hold).
    let isExternal (instance: MethodInstance) : bool = instance.StateType = typeof<IExternalTerm>
