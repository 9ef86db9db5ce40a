using System.Collections.ObjectModel;
using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using CoreLearner = global::Continual.Learner;
using CoreLearners = global::Continual.LearnerModule;

namespace Continual.CSharp;

/// <summary>
/// A learner that outlives its process: a configuration, its benchmark, its whole training state and the
/// accuracies measured so far. It learns the stream one task at a time (<see cref="LearnTaskAsync(IProgress{TrainingProgress}?, CancellationToken)"/>), can be
/// saved after any task (<see cref="SaveAsync"/>, one safetensors file written atomically) and loaded in another
/// process (<see cref="LoadAsync(string, CancellationToken)"/>) to go on exactly where it stopped: the resumed run's accuracy matrices equal
/// an uninterrupted run's.
/// </summary>
/// <remarks>
/// <para>
/// One operation at a time: a call made while another is running (for example <see cref="Evaluate"/> while
/// <see cref="LearnTaskAsync(IProgress{TrainingProgress}?, CancellationToken)"/> has not finished) throws <see cref="InvalidOperationException"/>. The properties
/// may be read at any time; they show the learner as of its last finished operation.
/// </para>
/// <para>
/// A <see cref="LearnTaskAsync(IProgress{TrainingProgress}?, CancellationToken)"/> that fails or is cancelled part-way frees the training state (the core does so
/// at once, so that a failed run holds no memory): the learner is then unusable, and every later operation
/// throws <see cref="InvalidOperationException"/>; load the last saved file to go on.
/// </para>
/// <para>
/// Model initialisation seeds libtorch's global generator and a loaded learner restores it, so learners
/// trained at the same time in one process are not reproducible; learn with one at a time.
/// </para>
/// </remarks>
/// <example>
/// <code>
/// using (var learner = new ExperimentBuilder().WithMethod(Methods.Derpp(buffer: 200)).CreateLearner())
/// {
///     await learner.LearnTaskAsync();
///     await learner.LearnTaskAsync();
///     await learner.SaveAsync("derpp.safetensors");
/// }
/// // later, in another process:
/// using var resumed = await Learner.LoadAsync("derpp.safetensors");
/// while (resumed.TasksLearned &lt; resumed.TaskCount) await resumed.LearnTaskAsync();
/// </code>
/// </example>
public sealed class Learner : IDisposable
{
    /// <summary>The file name a run folder keeps its learner in (the command line's checkpoints use it).</summary>
    public const string DefaultFileName = CoreLearners.FileName;

    private readonly object _gate = new();
    private volatile CoreLearner _learner;
    private string? _running;
    private bool _disposed;
    private bool _freed;

    // Set when a failed or cancelled LearnTaskAsync left the core's training state freed.
    private string? _broken;

    // Custom terms the learner owns (ExperimentBuilder.WithCustomTerm), disposed with it.
    private readonly ExternalTerm[] _terms;

    private Learner(CoreLearner learner, ExternalTerm[]? terms = null)
    {
        _learner = learner;
        _terms = terms ?? [];
        Settings = new ExperimentSettings(learner.Config);
        var benchmark = learner.Benchmark;
        BenchmarkName = benchmark.Name;
        Architecture = global::Continual.Models.Backbones.describe(learner.Architecture);
    }

    /// <summary>
    /// Creates a learner for a configuration: validates it, loads the benchmark and builds the untrained model
    /// (the same as <see cref="ExperimentBuilder.CreateLearner()"/>).
    /// </summary>
    /// <exception cref="ExperimentValidationException">The configuration is not valid (nothing was loaded).</exception>
    /// <exception cref="ContinualDataException">A data file is missing or unreadable.</exception>
    public static Learner Create(ExperimentBuilder settings) => Create(settings, CancellationToken.None);

    /// <summary>
    /// Creates a learner for a configuration as <see cref="Create(ExperimentBuilder)"/> does, observing
    /// <paramref name="cancellationToken"/> while the data load: a cancellation throws at once, and the abandoned load
    /// frees what it read.
    /// </summary>
    /// <exception cref="ExperimentValidationException">The configuration is not valid (nothing was loaded).</exception>
    /// <exception cref="ContinualDataException">A data file is missing or unreadable.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled before or while the data loaded.</exception>
    public static Learner Create(ExperimentBuilder settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var config = settings.ValidConfig();
        return WithCustomTerms(settings, () =>
        {
            var benchmark = ExperimentBuilder.LoadBenchmark(config, cancellationToken);
            try
            {
                return CoreLearners.createOwning(benchmark, config);
            }
            catch
            {
                global::Continual.Data.Benchmarks.dispose(benchmark);
                throw;
            }
        });
    }

    // A learner made by `create`, with the settings' custom terms (fresh ones, which the learner then owns).
    private static Learner WithCustomTerms(ExperimentBuilder settings, Func<CoreLearner> create)
    {
        var terms = settings.CreateCustomTerms();
        try
        {
            var learner = create();
            return new Learner(terms.Length == 0 ? learner : CoreLearners.addTerms(Options.List<global::Continual.Methods.IExternalTerm>(terms), learner), terms);
        }
        catch (Exception e)
        {
            foreach (var term in terms) term.Dispose();
            if (FacadeErrors.Translate(e) is { } translated) throw translated;
            throw;
        }
    }

    /// <summary>
    /// Creates a learner whose first task is your own data (an image folder, a CSV or an .npy folder): the
    /// settings' data become that task, and the classifier head grows as later tasks bring new classes
    /// (<see cref="LearnTaskAsync(TaskData, IProgress{TrainingProgress}?, CancellationToken)"/>).
    /// </summary>
    /// <exception cref="ArgumentException">The first task is a manifest entry or arrays (those can only follow).</exception>
    /// <exception cref="ExperimentValidationException">The configuration is not valid.</exception>
    /// <exception cref="ContinualDataException">The task's files are missing, unreadable or malformed.</exception>
    public static Learner Create(ExperimentBuilder settings, TaskData firstTask)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(firstTask);
        var config = settings.ValidConfig();
        return WithCustomTerms(settings, () => CoreLearners.createFromTask(config, firstTask.SourceFor(null)));
    }

    /// <summary>
    /// Loads a learner file whose stream has tasks that were given as arrays
    /// (<see cref="TaskData.FromArrays"/>): those are taken from <paramref name="tasksInMemory"/> by their names;
    /// every other task is read again from its files.
    /// </summary>
    /// <param name="path">The learner file.</param>
    /// <param name="tasksInMemory">The tasks given as arrays, by the name they were given under.</param>
    /// <param name="cancellationToken">Checked before loading.</param>
    /// <exception cref="LearnerFileException">The file cannot be used, or a task given as arrays is not in <paramref name="tasksInMemory"/>.</exception>
    /// <exception cref="ContinualDataException">The data files are missing or unreadable.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled before or while loading.</exception>
    public static Task<Learner> LoadAsync(string path, IReadOnlyDictionary<string, TaskData> tasksInMemory, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tasksInMemory);
        var fallback = CoreLearners.loaderFor(path);
        var loader = FuncConvert.FromFunc<global::Continual.Data.TaskSource, global::Continual.Data.Benchmark>(source =>
        {
            if (source.Kind != "arrays") return fallback.Invoke(source);
            if (tasksInMemory.TryGetValue(source.Path, out var data)) return data.Read(source);
            throw new LearnerFileException(path, $"its task '{source.Path}' was given as arrays: pass it to LoadAsync in tasksInMemory under that name");
        });
        return LoadWithAsync(path, loader, cancellationToken);
    }

    /// <summary>
    /// Loads a learner file written by <see cref="SaveAsync"/> (or by the command line's checkpoints) and the
    /// benchmark its configuration names, on a thread-pool thread. The learner goes on exactly where it was saved.
    /// </summary>
    /// <param name="path">The learner file.</param>
    /// <param name="cancellationToken">
    /// Observed while the files are read: a cancellation throws at once, and the abandoned load frees what it read.
    /// </param>
    /// <returns>The learner; dispose it to release its model and data.</returns>
    /// <exception cref="LearnerFileException">
    /// The file is missing, truncated or corrupted, of another format or version, or holds a configuration or
    /// benchmark split this build cannot rebuild.
    /// </exception>
    /// <exception cref="ContinualDataException">The benchmark's data files are missing or unreadable.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled before or while loading.</exception>
    public static Task<Learner> LoadAsync(string path, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(path);
        return LoadWithAsync(path, CoreLearners.loaderFor(path), cancellationToken);
    }

    // Loads on a thread-pool thread while the caller waits on the token: a cancellation while the files are read
    // throws at once, and the abandoned load frees what it read when it ends.
    private static async Task<Learner> LoadWithAsync(
        string path, FSharpFunc<global::Continual.Data.TaskSource, global::Continual.Data.Benchmark> loader, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var loading = Task.Run(() =>
        {
            try
            {
                return CoreLearners.loadWith(loader, path);
            }
            catch (global::Continual.LearnerFileError e)
            {
                throw new LearnerFileException(e.path, e.reason, e);
            }
            catch (global::Continual.InvalidConfiguration e)
            {
                throw new LearnerFileException(path, "its configuration is not valid: " + e.Message, e);
            }
            catch (Exception e) when (FacadeErrors.Translate(e) is { } translated)
            {
                throw translated;
            }
        });
        try
        {
            return new Learner(await loading.WaitAsync(cancellationToken).ConfigureAwait(false));
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            _ = loading.ContinueWith(t => { if (t.IsCompletedSuccessfully) CoreLearners.dispose(t.Result); }, TaskScheduler.Default);
            throw;
        }
    }

    /// <summary>The learner's configuration.</summary>
    public ExperimentSettings Settings { get; }

    /// <summary>The benchmark's name, e.g. "split-fmnist".</summary>
    public string BenchmarkName { get; }

    /// <summary>The backbone, e.g. "mlp 784-100-100-10".</summary>
    public string Architecture { get; }

    /// <summary>The classes each task brings, in stream order (tasks added with <see cref="LearnTaskAsync(TaskData, IProgress{TrainingProgress}?, CancellationToken)"/> included).</summary>
    public IReadOnlyList<IReadOnlyList<int>> TaskClasses =>
        Array.AsReadOnly(
            SeqModule.ToArray(_learner.Benchmark.Tasks)
                .Select(t => (IReadOnlyList<int>)Array.AsReadOnly(ListModule.ToArray(t.Classes)))
                .ToArray());

    /// <summary>The name of every class by class index (what the learner's outputs and ONNX models mean).</summary>
    public IReadOnlyList<string> ClassNames => Array.AsReadOnly(ListModule.ToArray(_learner.Benchmark.ClassNames));

    /// <summary>Tasks the stream has in all (JOINT learns them as one, so its count is 1).</summary>
    public int TaskCount => _learner.TaskCount;

    /// <summary>Tasks learned so far (0 for a new learner; <see cref="TaskCount"/> when the stream is learned).</summary>
    public int TasksLearned => _learner.TasksLearned;

    /// <summary>Optimiser steps taken so far.</summary>
    public long Steps => _learner.Point.State.StepsTaken;

    /// <summary>
    /// Class-IL accuracy matrix so far, in percent: <c>ClassIncremental[i][j]</c> is the accuracy on task j's test
    /// set after learning task i (argmax over all classes). One row per task learned (as
    /// <see cref="ExperimentResult.ClassIncremental"/>); empty before the first task.
    /// </summary>
    public IReadOnlyList<IReadOnlyList<double>> ClassIncremental => Matrix(_learner.Point.Record.ClassIl);

    /// <summary>Task-IL accuracy matrix so far, in percent (argmax over the task's own classes), shaped as <see cref="ClassIncremental"/>.</summary>
    public IReadOnlyList<IReadOnlyList<double>> TaskIncremental => Matrix(_learner.Point.Record.TaskIl);

    /// <summary>
    /// Learns the next task of the stream on a thread-pool thread: trains it, then evaluates the model on every
    /// task's test set (adding a row to <see cref="ClassIncremental"/> and <see cref="TaskIncremental"/>). A learner
    /// loaded from a file saved inside a task finishes that task.
    /// </summary>
    /// <param name="progress">
    /// Receives the same reports as <see cref="ExperimentBuilder.Run"/> (tasks counted from 1), on the training thread.
    /// </param>
    /// <param name="cancellationToken">
    /// Checked before the task starts and before every training step. A cancellation before the task starts leaves
    /// the learner as it was; one during the task leaves it unusable (see the remarks on <see cref="Learner"/>).
    /// </param>
    /// <returns>The task learned and the accuracies after it.</returns>
    /// <exception cref="InvalidOperationException">
    /// Every task is learned already, another operation is running, or an earlier failure left the learner unusable.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The learner was disposed.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    /// <exception cref="TrainingDivergedException">The loss stopped being a finite number; the learner is unusable.</exception>
    /// <exception cref="ContinualDataException">The benchmark's data could not be read.</exception>
    public Task<LearnedTask> LearnTaskAsync(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        RunAsync(nameof(LearnTaskAsync), () =>
        {
            var learner = _learner;
            var next = learner.Point.Position is { } position ? position.Value.Task : learner.TasksLearned;
            if (next >= learner.TaskCount)
            {
                throw new InvalidOperationException($"the learner has learned all {learner.TaskCount} tasks of {learner.Benchmark.Name}");
            }
            cancellationToken.ThrowIfCancellationRequested();
            return LearnNext(progress, cancellationToken);
        });

    // Learns the learner's next task (inside an operation); a failure frees the core's training state.
    private LearnedTask LearnNext(IProgress<TrainingProgress>? progress, CancellationToken cancellationToken)
    {
        var learner = _learner;
        var next = learner.Point.Position is { } position ? position.Value.Task : learner.TasksLearned;
        var events = new ExperimentBuilder.ProgressTranslator(progress);
        var hooks = global::Continual.RunHooksModule.events(FuncConvert.FromAction<global::Continual.TrainingEvent>(events.OnEvent));
        CoreLearner learned;
        try
        {
            learned = CoreLearners.learnTask(hooks, cancellationToken, learner);
        }
        catch (Exception e)
        {
            // The core freed the model, optimiser, buffer and methods: nothing can go on from here.
            _broken = $"its {nameof(LearnTaskAsync)} failed or was cancelled inside task {next + 1} ({e.GetType().Name}), which freed its training state; load a saved learner file to go on";
            if (FacadeErrors.Translate(e) is { } translated) throw translated;
            throw;
        }
        _learner = learned;
        var record = learned.Point.Record;
        return new LearnedTask(
            learned.TasksLearned,
            ReadOnly(record.ClassIl[^1]),
            ReadOnly(record.TaskIl[^1]),
            TimeSpan.FromSeconds(record.TaskSeconds[^1]));
    }

    /// <summary>
    /// Adds a task of your own data to the end of the learner's stream and learns it: its classes get the indices
    /// after the learner's, the classifier head grows for them, and the accuracies after it cover the test data of
    /// every task seen so far. Images are brought to the learner's input size and colour.
    /// </summary>
    /// <param name="data">The task (<see cref="TaskData"/>); its class names must be new to the learner.</param>
    /// <param name="progress">Receives progress events (tasks counted from 1).</param>
    /// <param name="cancellationToken">As for <see cref="LearnTaskAsync(IProgress{TrainingProgress}?, CancellationToken)"/>.</param>
    /// <returns>The task learned and the accuracies after it.</returns>
    /// <exception cref="ArgumentException">
    /// The task does not fit the learner: a class name it knows already, a test label never seen in training,
    /// inputs of another shape or kind. The learner is unchanged.
    /// </exception>
    /// <exception cref="ContinualDataException">The task's files are missing, unreadable or malformed; the learner is unchanged.</exception>
    /// <exception cref="InvalidOperationException">
    /// The learner has not learned all its tasks yet, learns JOINT (which cannot add tasks), another operation is
    /// running, or an earlier failure left it unusable.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The learner was disposed.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    /// <exception cref="TrainingDivergedException">The loss stopped being a finite number; the learner is unusable.</exception>
    public Task<LearnedTask> LearnTaskAsync(TaskData data, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(data);
        return RunAsync(nameof(LearnTaskAsync), () =>
        {
            var learner = _learner;
            var next = learner.Point.Position is { } position ? position.Value.Task : learner.TasksLearned;
            if (next < learner.TaskCount)
            {
                throw new InvalidOperationException($"the learner has learned {next} of its {learner.TaskCount} tasks: learn them before adding one");
            }
            cancellationToken.ThrowIfCancellationRequested();
            var (source, task) = data.Load(learner);
            try
            {
                _learner = CoreLearners.addTask(source, task, learner);
            }
            finally
            {
                global::Continual.Data.Benchmarks.dispose(task);
            }
            return LearnNext(progress, cancellationToken);
        });
    }

    /// <summary>
    /// Evaluates the model as it stands now on every task's test set, with the method's own classifier (iCaRL's
    /// nearest mean of exemplars where the method has one). Draws no random numbers: the learner's run is unchanged.
    /// </summary>
    /// <exception cref="InvalidOperationException">Another operation is running, or the learner is unusable.</exception>
    /// <exception cref="ObjectDisposedException">The learner was disposed.</exception>
    public LearnerEvaluation Evaluate()
    {
        Enter(nameof(Evaluate));
        try
        {
            var accuracies = CoreLearners.evaluate(_learner);
            return new LearnerEvaluation(ReadOnly(accuracies.ClassIl), ReadOnly(accuracies.TaskIl));
        }
        catch (Exception e) when (FacadeErrors.Translate(e) is { } translated)
        {
            throw translated;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Saves the learner to one file (safetensors: the model, optimiser, buffer, every method's state, the random
    /// generators and the accuracies so far), atomically, on a thread-pool thread: a process killed at any instant
    /// leaves the previous file or the new one. <see cref="LoadAsync(string, CancellationToken)"/> reads it back.
    /// </summary>
    /// <param name="path">The file to write (its folder is created when missing); <see cref="DefaultFileName"/> is the usual name.</param>
    /// <param name="cancellationToken">Checked before writing (a write, once started, runs to its end).</param>
    /// <exception cref="InvalidOperationException">Another operation is running, or the learner is unusable.</exception>
    /// <exception cref="ObjectDisposedException">The learner was disposed.</exception>
    /// <exception cref="IOException">The file cannot be written.</exception>
    /// <exception cref="NotSupportedException">
    /// The learner has custom terms (<see cref="ExperimentBuilder.WithCustomTerm(Func{ICustomTerm})"/>), whose state lives in
    /// their own objects and cannot be saved; nothing is written.
    /// </exception>
    /// <exception cref="OperationCanceledException">The token was cancelled before writing.</exception>
    public Task SaveAsync(string path, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(path);
        return RunAsync(nameof(SaveAsync), () =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            CoreLearners.save(path, _learner);
            return true;
        });
    }

    /// <summary>
    /// Exports the model as it stands after the last learned task to an ONNX file, verified under ONNX Runtime
    /// against TorchSharp exactly as <c>continual run</c>'s task-k.onnx files are (structure, strict loading,
    /// parameter count, logits within 1e-4, equal Class-IL and Task-IL accuracy on every task's test set); the file
    /// is written, atomically, only when every check passes. Its metadata names the tasks learned, the classes seen
    /// and the configuration's hash, as a run's files do.
    /// </summary>
    /// <param name="path">The .onnx file to write (its folder is created when missing).</param>
    /// <returns>What the export and verification measured.</returns>
    /// <exception cref="InvalidOperationException">
    /// The learner has learned no task yet, stands inside a task (loaded from a mid-task file), another operation
    /// is running, or the learner is unusable.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The learner was disposed.</exception>
    /// <exception cref="OnnxExportException">The model cannot be exported or its export fails a check (nothing was written).</exception>
    public OnnxExportResult ExportOnnx(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        Enter(nameof(ExportOnnx));
        try
        {
            var v = global::Continual.Onnx.LearnerExport.export(path, _learner);
            return OnnxExportResult.Of(v, path);
        }
        catch (Exception e) when (FacadeErrors.Translate(e) is { } translated)
        {
            throw translated;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Releases the model, optimiser, buffer, method states and data. Safe to call more than once; when an
    /// operation is running, they are released as soon as it ends.
    /// </summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            if (_running is null) Free();
        }
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"{Settings.Strategy} on {BenchmarkName} ({Architecture}): {TasksLearned} of {TaskCount} tasks learned";

    // ---- one operation at a time ----

    private void Enter(string operation)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_running is not null)
            {
                throw new InvalidOperationException($"{operation} was called while {_running} is running: a learner does one operation at a time");
            }
            if (_broken is not null)
            {
                throw new InvalidOperationException($"the learner cannot be used: {_broken}");
            }
            _running = operation;
        }
    }

    private void Exit()
    {
        lock (_gate)
        {
            _running = null;
            if (_disposed) Free();
        }
    }

    // Runs an operation on a thread-pool thread once the learner is free; every failure (including a call
    // while another operation runs) surfaces when the task is awaited, and an OperationCanceledException
    // makes it a cancelled task.
    private async Task<T> RunAsync<T>(string operation, Func<T> body)
    {
        Enter(operation);
        try
        {
            return await Task.Run(body).ConfigureAwait(false);
        }
        catch (Exception e) when (FacadeErrors.Translate(e) is { } translated)
        {
            throw translated;
        }
        finally
        {
            Exit();
        }
    }

    private void Free()
    {
        if (_freed) return;
        _freed = true;
        foreach (var term in _terms) term.Dispose();
        if (_broken is null)
        {
            CoreLearners.dispose(_learner);
        }
        else if (_learner.OwnsBenchmark)
        {
            // The training state is freed already; only the data remains.
            global::Continual.Data.Benchmarks.dispose(_learner.Benchmark);
        }
    }

    private static ReadOnlyCollection<T> ReadOnly<T>(T[] values) => Array.AsReadOnly((T[])values.Clone());

    private static ReadOnlyCollection<IReadOnlyList<double>> Matrix(double[][] rows) =>
        Array.AsReadOnly(rows.Select(r => (IReadOnlyList<double>)ReadOnly(r)).ToArray());
}

/// <summary>A task a <see cref="Learner"/> has just learned, with the accuracies measured after it.</summary>
public sealed class LearnedTask
{
    internal LearnedTask(int task, IReadOnlyList<double> classIncremental, IReadOnlyList<double> taskIncremental, TimeSpan time)
    {
        Task = task;
        ClassIncrementalAccuracies = classIncremental;
        TaskIncrementalAccuracies = taskIncremental;
        Time = time;
    }

    /// <summary>The task learned, counted from 1 (as <see cref="TrainingProgress.Task"/>).</summary>
    public int Task { get; }

    /// <summary>Class-IL accuracy (percent) on every task's test set after this task: the new row of <see cref="Learner.ClassIncremental"/>.</summary>
    public IReadOnlyList<double> ClassIncrementalAccuracies { get; }

    /// <summary>Task-IL accuracy (percent) on every task's test set after this task: the new row of <see cref="Learner.TaskIncremental"/>.</summary>
    public IReadOnlyList<double> TaskIncrementalAccuracies { get; }

    /// <summary>Time spent training and evaluating this task.</summary>
    public TimeSpan Time { get; }

    /// <inheritdoc />
    public override string ToString() =>
        $"task {Task}: Class-IL [{string.Join(", ", ClassIncrementalAccuracies.Select(a => a.ToString("0.00", System.Globalization.CultureInfo.InvariantCulture)))}]";
}

/// <summary>A learner's accuracy now on every task's test set (see <see cref="Learner.Evaluate"/>).</summary>
public sealed class LearnerEvaluation
{
    internal LearnerEvaluation(IReadOnlyList<double> classIncremental, IReadOnlyList<double> taskIncremental)
    {
        ClassIncrementalAccuracies = classIncremental;
        TaskIncrementalAccuracies = taskIncremental;
    }

    /// <summary>Class-IL accuracy (percent) on each task's test set, in stream order.</summary>
    public IReadOnlyList<double> ClassIncrementalAccuracies { get; }

    /// <summary>Task-IL accuracy (percent) on each task's test set, in stream order.</summary>
    public IReadOnlyList<double> TaskIncrementalAccuracies { get; }
}

/// <summary>What exporting a learner's model to ONNX and verifying it measured (see <see cref="Learner.ExportOnnx"/>).</summary>
public sealed class OnnxExportResult
{
    internal OnnxExportResult(
        string path,
        int tasksLearned,
        long bytes,
        string sha256,
        string provider,
        long parameterCount,
        int comparedImages,
        double maxAbsDifference,
        IReadOnlyList<int> testExamples,
        IReadOnlyList<int> classIncrementalCorrect,
        IReadOnlyList<int> taskIncrementalCorrect,
        TimeSpan time)
    {
        Path = path;
        TasksLearned = tasksLearned;
        Bytes = bytes;
        Sha256 = sha256;
        Provider = provider;
        ParameterCount = parameterCount;
        ComparedImages = comparedImages;
        MaxAbsDifference = maxAbsDifference;
        TestExamples = testExamples;
        ClassIncrementalCorrect = classIncrementalCorrect;
        TaskIncrementalCorrect = taskIncrementalCorrect;
        Time = time;
    }

    internal static OnnxExportResult Of(global::Continual.Onnx.TaskVerification v, string path) =>
        new(System.IO.Path.GetFullPath(path),
            v.Task,
            v.Bytes,
            v.Sha256,
            v.Provider,
            v.ParameterCount,
            v.ComparedImages,
            v.MaxAbsDifference,
            Array.AsReadOnly((int[])v.TestExamples.Clone()),
            Array.AsReadOnly((int[])v.OnnxClassIlCorrect.Clone()),
            Array.AsReadOnly((int[])v.OnnxTaskIlCorrect.Clone()),
            TimeSpan.FromSeconds(v.ExportSeconds + v.VerifySeconds + v.WriteSeconds));

    /// <summary>The file written (full path).</summary>
    public string Path { get; }

    /// <summary>Tasks the exported model had learned (the task number k its metadata records, as in task-k.onnx).</summary>
    public int TasksLearned { get; }

    /// <summary>The file's size in bytes.</summary>
    public long Bytes { get; }

    /// <summary>The file's SHA-256, lower-case hexadecimal.</summary>
    public string Sha256 { get; }

    /// <summary>The ONNX Runtime execution provider the model was verified on, e.g. "CPUExecutionProvider".</summary>
    public string Provider { get; }

    /// <summary>Parameters the exported graph holds (equal to the model's).</summary>
    public long ParameterCount { get; }

    /// <summary>Test images whose logits were compared one by one with TorchSharp's.</summary>
    public int ComparedImages { get; }

    /// <summary>The largest absolute difference between ONNX Runtime's and TorchSharp's logits on those images.</summary>
    public double MaxAbsDifference { get; }

    /// <summary>Test examples of each task.</summary>
    public IReadOnlyList<int> TestExamples { get; }

    /// <summary>Test examples of each task that the ONNX model classifies right over all classes (Class-IL; equal to TorchSharp's count).</summary>
    public IReadOnlyList<int> ClassIncrementalCorrect { get; }

    /// <summary>Test examples of each task that the ONNX model classifies right within the task's classes (Task-IL; equal to TorchSharp's count).</summary>
    public IReadOnlyList<int> TaskIncrementalCorrect { get; }

    /// <summary>Time spent exporting, verifying and writing.</summary>
    public TimeSpan Time { get; }
}
