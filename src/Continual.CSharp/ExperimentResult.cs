using System.Collections.ObjectModel;
using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using TorchSharp;
using CoreResult = global::Continual.ExperimentResult;

namespace Continual.CSharp;

/// <summary>
/// A finished experiment: accuracy matrices, metrics, timings, and the trained model. Dispose it to
/// release the model (its figures stay readable afterwards, and <see cref="WriteResults"/> still works).
/// Not safe for concurrent use.
/// </summary>
public sealed class ExperimentResult : IDisposable
{
    private readonly CoreResult _result;
    private bool _disposed;

    private readonly global::Continual.Onnx.RunExporter? _exporter;

    internal ExperimentResult(CoreResult result, ExperimentSettings settings, global::Continual.Onnx.RunExporter? exporter = null)
    {
        _result = result;
        _exporter = exporter;
        Settings = settings;
        OnnxFiles = exporter is null
            ? Array.Empty<OnnxExportResult>()
            : Array.AsReadOnly(ListModule.ToArray(exporter.Reports)
                .Select(v => OnnxExportResult.Of(v, System.IO.Path.Combine(exporter.Settings.Folder, v.File)))
                .ToArray());
        var outcome = result.Outcome;
        ClassIncremental = Matrix(outcome.ClassIl);
        TaskIncremental = Matrix(outcome.TaskIl);
        ClassIncrementalAverageAccuracy = global::Continual.Metrics.averageAccuracy(outcome.ClassIl);
        TaskIncrementalAverageAccuracy = global::Continual.Metrics.averageAccuracy(outcome.TaskIl);
        ClassIncrementalForgetting = OptionModule.ToNullable(global::Continual.Metrics.forgetting(outcome.ClassIl));
        TaskIncrementalForgetting = OptionModule.ToNullable(global::Continual.Metrics.forgetting(outcome.TaskIl));
        ClassIncrementalBackwardTransfer = OptionModule.ToNullable(global::Continual.Metrics.backwardTransfer(outcome.ClassIl));
        TaskIncrementalBackwardTransfer = OptionModule.ToNullable(global::Continual.Metrics.backwardTransfer(outcome.TaskIl));
        WallTime = TimeSpan.FromSeconds(result.WallSeconds);
        TrainingTime = TimeSpan.FromSeconds(outcome.TrainSeconds);
        EvaluationTime = TimeSpan.FromSeconds(outcome.EvalSeconds);
        HookTime = TimeSpan.FromSeconds(outcome.HookSeconds);
        TaskTimes = Array.AsReadOnly(outcome.TaskSeconds.Select(TimeSpan.FromSeconds).ToArray());
        Steps = outcome.Steps;
        StartedUtc = result.StartedUtc;
        var benchmark = result.Benchmark;
        BenchmarkName = benchmark.Name;
        InputFeatures = benchmark.InputShape.Item1 * benchmark.InputShape.Item2 * benchmark.InputShape.Item3;
        ClassCount = benchmark.NumClasses;
        TrainExamples = benchmark.Train.Count;
        TestExamples = benchmark.Test.Count;
        TaskClasses = Array.AsReadOnly(
            SeqModule.ToArray(benchmark.Tasks)
                .Select(t => (IReadOnlyList<int>)Array.AsReadOnly(ListModule.ToArray(t.Classes)))
                .ToArray());
        Architecture = global::Continual.Models.Backbones.describe(result.Architecture);
    }

    private static ReadOnlyCollection<IReadOnlyList<double>> Matrix(double[][] rows) =>
        Array.AsReadOnly(rows.Select(r => (IReadOnlyList<double>)Array.AsReadOnly((double[])r.Clone())).ToArray());

    /// <summary>
    /// The model after each task, exported to <c>task-k.onnx</c> and verified under ONNX Runtime (in task order;
    /// empty with <see cref="ExperimentBuilder.WithoutOnnxExport"/>), each with its verification figures.
    /// </summary>
    public IReadOnlyList<OnnxExportResult> OnnxFiles { get; }

    /// <summary>The configuration the experiment ran with.</summary>
    public ExperimentSettings Settings { get; }

    /// <summary>
    /// Class-IL accuracy matrix in percent: <c>ClassIncremental[i][j]</c> is the accuracy on task j's test set
    /// after training task i (argmax over all classes). One row per task; JOINT has a single row.
    /// </summary>
    public IReadOnlyList<IReadOnlyList<double>> ClassIncremental { get; }

    /// <summary>Task-IL accuracy matrix in percent (argmax over the task's own classes), shaped as <see cref="ClassIncremental"/>.</summary>
    public IReadOnlyList<IReadOnlyList<double>> TaskIncremental { get; }

    /// <summary>Mean Class-IL accuracy over all tasks after the last one (percent).</summary>
    public double ClassIncrementalAverageAccuracy { get; }

    /// <summary>Mean Task-IL accuracy over all tasks after the last one (percent).</summary>
    public double TaskIncrementalAverageAccuracy { get; }

    /// <summary>Average Class-IL forgetting (percentage points); null when undefined (a single row, e.g. JOINT).</summary>
    public double? ClassIncrementalForgetting { get; }

    /// <summary>Average Task-IL forgetting (percentage points); null when undefined.</summary>
    public double? TaskIncrementalForgetting { get; }

    /// <summary>Class-IL backward transfer (percentage points, negative when tasks are forgotten); null when undefined.</summary>
    public double? ClassIncrementalBackwardTransfer { get; }

    /// <summary>Task-IL backward transfer (percentage points); null when undefined.</summary>
    public double? TaskIncrementalBackwardTransfer { get; }

    /// <summary>Whole run: loading, training, evaluation and hooks.</summary>
    public TimeSpan WallTime { get; }

    /// <summary>Time spent in training steps.</summary>
    public TimeSpan TrainingTime { get; }

    /// <summary>Time spent evaluating after each task.</summary>
    public TimeSpan EvaluationTime { get; }

    /// <summary>Time spent in after-task hooks (e.g. model export).</summary>
    public TimeSpan HookTime { get; }

    /// <summary>Training plus evaluation time of each task.</summary>
    public IReadOnlyList<TimeSpan> TaskTimes { get; }

    /// <summary>Optimiser steps taken.</summary>
    public long Steps { get; }

    /// <summary>When the run started (UTC).</summary>
    public DateTime StartedUtc { get; }

    /// <summary>The benchmark's name.</summary>
    public string BenchmarkName { get; }

    /// <summary>The backbone, e.g. "mlp 784-100-100-10".</summary>
    public string Architecture { get; }

    /// <summary>Numbers per input example (e.g. 784 for 28×28 grey images).</summary>
    public int InputFeatures { get; }

    /// <summary>Number of classes (outputs of the network).</summary>
    public int ClassCount { get; }

    /// <summary>Training examples used.</summary>
    public int TrainExamples { get; }

    /// <summary>Test examples used.</summary>
    public int TestExamples { get; }

    /// <summary>The classes each task brings, in stream order.</summary>
    public IReadOnlyList<IReadOnlyList<int>> TaskClasses { get; }

    /// <summary>
    /// Class-IL predictions of the trained network (argmax over all its logits) for examples given as
    /// consecutive rows of <see cref="InputFeatures"/> numbers, scaled like the training data (pixel / 255).
    /// </summary>
    /// <remarks>A strategy that evaluates with a classifier of its own (e.g. nearest mean of exemplars) may predict differently.</remarks>
    /// <exception cref="ObjectDisposedException">The result was disposed.</exception>
    /// <exception cref="ArgumentException">The length is not a multiple of <see cref="InputFeatures"/>.</exception>
    public int[] Predict(ReadOnlySpan<float> inputs) => ArgMax(PredictLogits(inputs), null);

    /// <summary>
    /// Task-IL predictions: the caller says which task the examples come from, and each prediction is the argmax
    /// over that task's classes only (<see cref="TaskClasses"/>), as the Task-IL accuracies are measured.
    /// </summary>
    /// <param name="inputs">Consecutive rows of <see cref="InputFeatures"/> numbers (pixel / 255).</param>
    /// <param name="task">The task the examples come from, counted from 1.</param>
    /// <exception cref="ObjectDisposedException">The result was disposed.</exception>
    /// <exception cref="ArgumentException">The length is not a multiple of <see cref="InputFeatures"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="task"/> is not between 1 and the number of tasks.</exception>
    public int[] Predict(ReadOnlySpan<float> inputs, int task) => ArgMax(PredictLogits(inputs), TaskMask(task));

    /// <summary>
    /// The trained network's logits for the examples: <see cref="ClassCount"/> numbers per example, row after row
    /// (the same numbers the exported ONNX model gives).
    /// </summary>
    /// <exception cref="ObjectDisposedException">The result was disposed.</exception>
    /// <exception cref="ArgumentException">The length is not a multiple of <see cref="InputFeatures"/>.</exception>
    public float[] PredictLogits(ReadOnlySpan<float> inputs)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (inputs.Length % InputFeatures != 0)
        {
            throw new ArgumentException($"{inputs.Length} numbers are not whole rows of {InputFeatures}", nameof(inputs));
        }
        var count = inputs.Length / InputFeatures;
        if (count == 0) return [];
        var model = _result.Outcome.State.Model;
        var device = global::Continual.Engine.device(_result.Config.Run.Device);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var x = torch.tensor(inputs.ToArray(), [count, InputFeatures], torch.ScalarType.Float32).to(device);
        model.eval();
        try
        {
            return model.forward(x).cpu().data<float>().ToArray();
        }
        finally
        {
            model.train();
        }
    }

    /// <summary>
    /// Class probabilities for the examples, <see cref="ClassCount"/> per example, row after row: the softmax of the
    /// logits over all classes, or, when <paramref name="task"/> is given (Task-IL), over that task's classes only
    /// (the other classes get 0).
    /// </summary>
    /// <param name="inputs">Consecutive rows of <see cref="InputFeatures"/> numbers (pixel / 255).</param>
    /// <param name="task">The task the examples come from, counted from 1; null for Class-IL.</param>
    /// <exception cref="ObjectDisposedException">The result was disposed.</exception>
    /// <exception cref="ArgumentException">The length is not a multiple of <see cref="InputFeatures"/>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="task"/> is not between 1 and the number of tasks.</exception>
    public float[] PredictProbabilities(ReadOnlySpan<float> inputs, int? task = null)
    {
        var mask = task is int t ? TaskMask(t) : null;
        var logits = PredictLogits(inputs);
        var probabilities = new float[logits.Length];
        for (var row = 0; row < logits.Length / ClassCount; row++)
        {
            var at = row * ClassCount;
            var max = double.NegativeInfinity;
            for (var c = 0; c < ClassCount; c++)
                if (mask is null || mask[c]) max = Math.Max(max, logits[at + c]);
            var sum = 0.0;
            var e = new double[ClassCount];
            for (var c = 0; c < ClassCount; c++)
            {
                e[c] = mask is null || mask[c] ? Math.Exp(logits[at + c] - max) : 0.0;
                sum += e[c];
            }
            for (var c = 0; c < ClassCount; c++) probabilities[at + c] = (float)(e[c] / sum);
        }
        return probabilities;
    }

    private bool[] TaskMask(int task)
    {
        if (task < 1 || task > TaskClasses.Count)
        {
            throw new ArgumentOutOfRangeException(nameof(task), task, $"tasks are counted from 1 to {TaskClasses.Count}");
        }
        var mask = new bool[ClassCount];
        foreach (var c in TaskClasses[task - 1]) mask[c] = true;
        return mask;
    }

    private int[] ArgMax(float[] logits, bool[]? mask)
    {
        var predictions = new int[logits.Length / ClassCount];
        for (var row = 0; row < predictions.Length; row++)
        {
            var best = -1;
            for (var c = 0; c < ClassCount; c++)
            {
                if (mask is not null && !mask[c]) continue;
                if (best < 0 || logits[row * ClassCount + c] > logits[row * ClassCount + best]) best = c;
            }
            predictions[row] = best;
        }
        return predictions;
    }

    /// <summary>results.json's content: configuration, matrices, metrics, timings and versions.</summary>
    public string ToJson() =>
        System.Text.Encoding.UTF8.GetString(global::Continual.Results.toJson(_result, OnnxSection()));

    /// <summary>
    /// Writes results.json (with its "onnx" section when the models were exported) and results.csv into a folder (created when missing), each atomically, in the
    /// same format as the command line's <c>continual run --out</c>.
    /// </summary>
    public void WriteResults(string folder)
    {
        ArgumentNullException.ThrowIfNull(folder);
        global::Continual.Results.write(folder, _result, OnnxSection());
    }

    // results.json's "onnx" section, as `continual run` writes it (nothing without ONNX export).
    private FSharpFunc<System.Text.Json.Utf8JsonWriter, Unit> OnnxSection() =>
        FuncConvert.FromAction<System.Text.Json.Utf8JsonWriter>(w => _exporter?.WriteJson(w, _result.Outcome.HookSeconds, _result.WallSeconds));

    /// <summary>Releases the trained model, optimiser and buffer. Safe to call more than once.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        global::Continual.Experiment.release(_result);
    }
}
