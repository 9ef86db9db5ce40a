using Microsoft.FSharp.Collections;
using TorchSharp;
using static TorchSharp.torch;
using CoreMethods = global::Continual.Methods;

namespace Continual.CSharp;

/// <summary>
/// A loss term or penalty written in C#, added to a run's loss by <see cref="ExperimentBuilder.WithCustomTerm(Func{ICustomTerm})"/>.
/// Every training step the run calls <see cref="Compute"/> and adds the tensor it returns to the loss under
/// <see cref="Name"/>, after the method's own terms, so its gradient flows into the model with theirs;
/// <see cref="OnTaskStart"/> and <see cref="OnTaskEnd"/> let the term keep state across tasks (an anchor, an
/// importance estimate).
/// </summary>
/// <remarks>
/// <para>
/// <b>Tensor lifetimes.</b> Every training step runs in a TorchSharp dispose scope of its own, and so does
/// every call of <see cref="OnTaskStart"/> and <see cref="OnTaskEnd"/>: each tensor made there, including the
/// value <see cref="Compute"/> returns, is freed when the call's scope ends. A tensor the term keeps across
/// steps or tasks must be moved out of the scope on purpose, e.g. <c>p.detach().clone().DetachFromDisposeScope()</c>
/// or <see cref="TermTaskContext.SnapshotParameters"/>; the term then owns it and frees it itself, when it
/// replaces it and in <see cref="IDisposable.Dispose"/>. A term that implements <see cref="IDisposable"/> is
/// disposed with the run's model, when the <see cref="ExperimentResult"/> is disposed. Tensors the contexts
/// hand out (inputs, logits, parameters) belong to the run: read them, never dispose or modify them in place.
/// </para>
/// <para>
/// <b>State.</b> A term's state lives in its own object, so it is not part of a learner file; and since one
/// builder may run many times, <see cref="ExperimentBuilder.WithCustomTerm(Func{ICustomTerm})"/> takes a factory
/// that makes a fresh term for every run.
/// </para>
/// </remarks>
/// <example>
/// An L2-to-anchor penalty, <c>λ/2 Σ (θ − θ*)²</c> with θ* the parameters where the last task ended:
/// <code>
/// sealed class L2Anchor(double lambda) : ICustomTerm, IDisposable
/// {
///     private IReadOnlyList&lt;Tensor&gt;? _anchor;
///     public string Name =&gt; "l2-anchor";
///     public Tensor? Compute(TermContext context)
///     {
///         if (_anchor is null) return null; // nothing to hold on to during the first task
///         var sum = torch.zeros(1, device: context.Logits.device);
///         for (var i = 0; i &lt; _anchor.Count; i++) sum = sum + (context.Parameters[i].Value - _anchor[i]).square().sum();
///         return sum * (lambda / 2);
///     }
///     public void OnTaskEnd(TermTaskContext context)
///     {
///         Dispose();
///         _anchor = context.SnapshotParameters();
///     }
///     public void Dispose()
///     {
///         foreach (var t in _anchor ?? []) t.Dispose();
///         _anchor = null;
///     }
/// }
/// </code>
/// </example>
public interface ICustomTerm
{
    /// <summary>
    /// The term's name, e.g. "l2-anchor": the loss term's name in the run (it must be non-empty and differ
    /// from the other custom terms' names).
    /// </summary>
    string Name { get; }

    /// <summary>
    /// The term's value at one training step: a scalar (one element) tensor computed from the context's tensors,
    /// so that its gradient reaches the model's parameters; or null for no term at this step (e.g. before the
    /// first task has ended). The tensor belongs to the step's dispose scope: return it, do not keep it.
    /// </summary>
    Tensor? Compute(TermContext context);

    /// <summary>
    /// Called before the first step of every task (after the method's own task start). Runs in a dispose scope:
    /// tensors kept past the call must be detached from it (see <see cref="ICustomTerm"/>). Does nothing unless implemented.
    /// </summary>
    void OnTaskStart(TermTaskContext context)
    {
    }

    /// <summary>
    /// Called after the last step of every task, before the task's evaluation, with the parameters as they
    /// ended it: the place to take snapshots (<see cref="TermTaskContext.SnapshotParameters"/>). Runs in a dispose
    /// scope: tensors kept past the call must be detached from it (see <see cref="ICustomTerm"/>). Does nothing
    /// unless implemented.
    /// </summary>
    void OnTaskEnd(TermTaskContext context)
    {
    }
}

/// <summary>A parameter of the model by its name, e.g. "layers.0.weight" (a tensor of the run: never dispose it).</summary>
public sealed class ModelParameter
{
    internal ModelParameter(string name, Tensor value)
    {
        Name = name;
        Value = value;
    }

    /// <summary>The parameter's name in the model (TorchSharp's <c>named_parameters()</c>).</summary>
    public string Name { get; }

    /// <summary>The parameter itself, on the run's device, with its gradient tracked.</summary>
    public Tensor Value { get; }

    /// <inheritdoc/>
    public override string ToString() => $"{Name} [{string.Join(", ", Value.shape)}]";
}

/// <summary>
/// What a custom term sees at one training step: the batch, the model's output on it and the model's
/// parameters. Every tensor here belongs to the run; the term reads them and never disposes them.
/// </summary>
public sealed class TermContext
{
    internal TermContext(int task, Tensor inputs, Tensor labels, Tensor logits, IReadOnlyList<Tensor> features, IReadOnlyList<ModelParameter> parameters)
    {
        Task = task;
        Inputs = inputs;
        Labels = labels;
        Logits = logits;
        Features = features;
        Parameters = parameters;
    }

    /// <summary>The task being learned, counted from 1.</summary>
    public int Task { get; }

    /// <summary>The batch's inputs (float32, on the run's device; images as [n, channels, height, width]).</summary>
    public Tensor Inputs { get; }

    /// <summary>The batch's labels (int64 class indices, [n]).</summary>
    public Tensor Labels { get; }

    /// <summary>The model's logits on the batch ([n, classes], on the graph: a term of them trains the model).</summary>
    public Tensor Logits { get; }

    /// <summary>The model's per-layer features on the batch, first layer first, the last one the embedding the classifier reads.</summary>
    public IReadOnlyList<Tensor> Features { get; }

    /// <summary>The model's parameters in <c>parameters()</c> order, by name.</summary>
    public IReadOnlyList<ModelParameter> Parameters { get; }
}

/// <summary>
/// What a custom term sees at a task's start or end: the task, its classes and the model's parameters.
/// </summary>
public sealed class TermTaskContext
{
    internal TermTaskContext(int task, IReadOnlyList<int> classes, IReadOnlyList<int> seenClasses, IReadOnlyList<ModelParameter> parameters)
    {
        Task = task;
        Classes = classes;
        SeenClasses = seenClasses;
        Parameters = parameters;
    }

    /// <summary>The task, counted from 1.</summary>
    public int Task { get; }

    /// <summary>The classes of this task.</summary>
    public IReadOnlyList<int> Classes { get; }

    /// <summary>Every class seen up to and including this task.</summary>
    public IReadOnlyList<int> SeenClasses { get; }

    /// <summary>The model's parameters in <c>parameters()</c> order, by name (tensors of the run: never dispose them).</summary>
    public IReadOnlyList<ModelParameter> Parameters { get; }

    /// <summary>
    /// Copies of the model's parameters as they are now, in <see cref="Parameters"/> order: detached from the
    /// graph and moved out of the dispose scope, so they outlive the call. The caller owns them and disposes them.
    /// </summary>
    public IReadOnlyList<Tensor> SnapshotParameters()
    {
        using var _ = torch.no_grad();
        return Parameters.Select(p => p.Value.detach().clone().DetachFromDisposeScope()).ToArray();
    }
}

/// <summary>A custom term as the core runs it: the façade's contexts built from the core's views.</summary>
internal sealed class ExternalTerm(ICustomTerm term) : CoreMethods.IExternalTerm, IDisposable
{
    // Parameter names, listed once per model (a module walk per step costs time); the model is replaced when its head grows.
    private object? _namedFor;
    private string[] _names = [];
    private bool _disposed;

    public ICustomTerm Term => term;

    public string Name => term.Name;

    public Tensor Value(CoreMethods.StepView view)
    {
        var batch = view.Batch;
        var context = new TermContext(
            batch.Task + 1,
            batch.Inputs,
            batch.Labels,
            view.Output.Logits,
            ListModule.ToArray(view.Output.Features),
            Named(view.Model, view.Parameters));
        return term.Compute(context)!;
    }

    public void BeginTask(CoreMethods.TaskContext context) => term.OnTaskStart(TaskContext(context));

    public void EndTask(CoreMethods.TaskContext context) => term.OnTaskEnd(TaskContext(context));

    // Idempotent: a run that fails disposes its methods, and the builder disposes the terms it made.
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (term is IDisposable disposable) disposable.Dispose();
    }

    private TermTaskContext TaskContext(CoreMethods.TaskContext context) =>
        new(context.Task + 1,
            Array.AsReadOnly(ListModule.ToArray(context.Classes)),
            Array.AsReadOnly(ListModule.ToArray(context.SeenClasses)),
            Named(context.Model, context.Parameters));

    private ModelParameter[] Named(nn.Module model, FSharpList<Tensor> parameters)
    {
        var values = ListModule.ToArray(parameters);
        if (!ReferenceEquals(model, _namedFor) || _names.Length != values.Length)
        {
            _names = model.named_parameters().Select(p => p.name).ToArray();
            _namedFor = model;
        }
        var named = new ModelParameter[values.Length];
        for (var i = 0; i < values.Length; i++)
        {
            named[i] = new ModelParameter(i < _names.Length ? _names[i] : $"parameter.{i}", values[i]);
        }
        return named;
    }
}

/// <summary>Custom terms made from functions, for terms that need no class of their own.</summary>
public static class CustomTerm
{
    /// <summary>
    /// A custom term from functions: <paramref name="compute"/> is <see cref="ICustomTerm.Compute"/>, and the optional
    /// <paramref name="onTaskStart"/>, <paramref name="onTaskEnd"/> and <paramref name="dispose"/> are called at a task's
    /// start, at its end and when the run's result is disposed. State kept across calls lives in the functions'
    /// captured variables; make the term inside <see cref="ExperimentBuilder.WithCustomTerm(Func{ICustomTerm})"/>'s
    /// factory, so that every run starts from fresh variables. The lifetime rules of <see cref="ICustomTerm"/> apply.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> or <paramref name="compute"/> is null.</exception>
    public static ICustomTerm Create(
        string name,
        Func<TermContext, Tensor?> compute,
        Action<TermTaskContext>? onTaskStart = null,
        Action<TermTaskContext>? onTaskEnd = null,
        Action? dispose = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(compute);
        return new FunctionTerm(name, compute, onTaskStart, onTaskEnd, dispose);
    }
}

/// <summary>A custom term given as functions (<see cref="CustomTerm.Create"/>).</summary>
internal sealed class FunctionTerm(
    string name,
    Func<TermContext, Tensor?> compute,
    Action<TermTaskContext>? onTaskStart,
    Action<TermTaskContext>? onTaskEnd,
    Action? dispose) : ICustomTerm, IDisposable
{
    public string Name => name;

    public Tensor? Compute(TermContext context) => compute(context);

    public void OnTaskStart(TermTaskContext context) => onTaskStart?.Invoke(context);

    public void OnTaskEnd(TermTaskContext context) => onTaskEnd?.Invoke(context);

    public void Dispose() => dispose?.Invoke();
}
