namespace Continual.CSharp;

/// <summary>What a progress report is about.</summary>
public enum TrainingProgressKind
{
    /// <summary>Training of a task begins (for JOINT: of all tasks at once).</summary>
    TaskStarted,

    /// <summary>Some steps of the current task are done; carries their mean loss.</summary>
    StepsCompleted,

    /// <summary>A task is trained and evaluated on every task's test set; carries the accuracies.</summary>
    TaskFinished,

    /// <summary>A phase outside the task's steps begins (a warm-up, or the end of a task: importance
    /// estimation, herding, snapshots); carries its name in <see cref="TrainingProgress.Phase"/>.</summary>
    PhaseStarted,
}

/// <summary>A progress report of a running experiment (see <see cref="ExperimentBuilder.Run"/>).</summary>
public sealed class TrainingProgress
{
    internal TrainingProgress(
        TrainingProgressKind kind,
        int task,
        int completedSteps,
        int totalSteps,
        double? meanLoss,
        IReadOnlyList<double>? classIncremental,
        IReadOnlyList<double>? taskIncremental,
        TimeSpan? taskTime,
        string? phase = null)
    {
        Phase = phase;
        Kind = kind;
        Task = task;
        CompletedSteps = completedSteps;
        TotalSteps = totalSteps;
        MeanLoss = meanLoss;
        ClassIncrementalAccuracies = classIncremental;
        TaskIncrementalAccuracies = taskIncremental;
        TaskTime = taskTime;
    }

    /// <summary>What this report is about.</summary>
    public TrainingProgressKind Kind { get; }

    /// <summary>The task being trained, counted from 1 as the command line and the ONNX files count them (JOINT trains once, as task 1).</summary>
    public int Task { get; }

    /// <summary>Steps of this task done so far (0 when it starts; all of them when it finishes).</summary>
    public int CompletedSteps { get; }

    /// <summary>Steps this task takes in all (epochs × batches).</summary>
    public int TotalSteps { get; }

    /// <summary>Mean training loss over the steps since the previous report (StepsCompleted only).</summary>
    public double? MeanLoss { get; }

    /// <summary>Class-IL accuracy (percent) on every task's test set after this task (TaskFinished only).</summary>
    public IReadOnlyList<double>? ClassIncrementalAccuracies { get; }

    /// <summary>Task-IL accuracy (percent) on every task's test set after this task (TaskFinished only).</summary>
    public IReadOnlyList<double>? TaskIncrementalAccuracies { get; }

    /// <summary>Time spent training and evaluating this task (TaskFinished only).</summary>
    public TimeSpan? TaskTime { get; }

    /// <summary>The phase that begins, for example "lwf: classifier warm-up" (PhaseStarted only).</summary>
    public string? Phase { get; }

    /// <summary>The fraction of this task's steps done, in [0, 1].</summary>
    public double Fraction => TotalSteps <= 0 ? 0.0 : (double)CompletedSteps / TotalSteps;

    /// <inheritdoc />
    public override string ToString() => Kind switch
    {
        TrainingProgressKind.TaskStarted => $"task {Task}: started, {TotalSteps} steps",
        TrainingProgressKind.StepsCompleted => $"task {Task}: {CompletedSteps}/{TotalSteps} steps, loss {MeanLoss:0.0000}",
        TrainingProgressKind.PhaseStarted => $"task {Task}: {Phase}",
        _ => $"task {Task}: finished in {TaskTime?.TotalSeconds:0.00} s",
    };
}
