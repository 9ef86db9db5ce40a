using System.Reflection;
using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using Continual.Data;
using CoreConfig = global::Continual.ExperimentConfig;
using CoreExperiment = global::Continual.Experiment;

namespace Continual.CSharp;

/// <summary>
/// Configures and runs a continual-learning experiment: a strategy trained on a benchmark's stream of
/// tasks, evaluated after every task.
/// </summary>
/// <remarks>
/// <para>
/// The builder is immutable: every <c>With…</c> method returns a new builder, so one base configuration can
/// be varied freely (e.g. over seeds). Options not set take the reference protocol's defaults for the
/// strategy and buffer size (the command line's defaults): strategy "derpp", buffer 500, benchmark
/// "split-fmnist" read from /usr/share/datasets/fashion-mnist, learning rate, minibatch, alpha and beta
/// from the published settings, batch 10, one epoch, seed 0, CPU.
/// </para>
/// <para>
/// Strategy and benchmark names are passed through as text, so every strategy the core knows
/// (<see cref="KnownStrategies"/>) can be run without changes to this class.
/// </para>
/// </remarks>
/// <example>
/// <code>
/// using var result = new ExperimentBuilder()
///     .WithBenchmark("split-fmnist")
///     .WithStrategy("derpp")
///     .WithBuffer(500)
///     .WithSeed(0)
///     .Run();
/// Console.WriteLine(result.ClassIncrementalAverageAccuracy);
/// </code>
/// </example>
public sealed class ExperimentBuilder
{
    /// <summary>The strategy run when none is chosen (as on the command line).</summary>
    public const string DefaultStrategy = "derpp";

    /// <summary>The buffer size whose reference settings apply when none is chosen (as on the command line).</summary>
    public const int DefaultBufferSize = 500;

    private readonly string _strategy;
    private readonly int? _buffer;
    // An importance penalty added with its method's defaults (WithPenalty), or null.
    private readonly string? _penalty;
    // Fields replaced by the caller, in the order they were set (a later choice of a field wins).
    private readonly (PropertyInfo Property, object? Value)[] _replacements;
    // Options whose name or value could not be used, by the field (or unknown name) they concern;
    // reported by Validate. A later valid choice of the same field clears its problem.
    private readonly (string Key, string Message)[] _problems;

    /// <summary>A builder with every option at its default.</summary>
    public ExperimentBuilder()
        : this(DefaultStrategy, null, null, [], [])
    {
    }

    private ExperimentBuilder(string strategy, int? buffer, string? penalty, (PropertyInfo, object?)[] replacements, (string, string)[] problems)
    {
        _strategy = strategy;
        _buffer = buffer;
        _penalty = penalty;
        _replacements = replacements;
        _problems = problems;
    }

    /// <summary>The strategies this build knows (e.g. sgd, joint, er, der, derpp).</summary>
    public static IReadOnlyList<string> KnownStrategies => ListModule.ToArray(CoreExperiment.strategyNames);

    /// <summary>The benchmarks this build knows (e.g. split-fmnist, split-mnist).</summary>
    public static IReadOnlyList<string> KnownBenchmarks => ListModule.ToArray(CoreExperiment.benchmarkNames);

    /// <summary>
    /// The names <see cref="WithOption(string, double)"/> accepts: every field of the configuration
    /// (matched ignoring case, '-' and '_'; the command line's "lr", "buffer" and "data" work too).
    /// </summary>
    public static IReadOnlyList<string> OptionNames => ConfigFields.All.Select(f => f.Name).ToArray();

    /// <summary>Chooses the strategy by name, e.g. "sgd", "joint", "er", "der", "derpp" (default "derpp").</summary>
    public ExperimentBuilder WithStrategy(string strategy)
    {
        ArgumentNullException.ThrowIfNull(strategy);
        return new ExperimentBuilder(strategy.Trim().ToLowerInvariant(), _buffer, _penalty, _replacements, Without(nameof(CoreConfig.Strategy)));
    }

    /// <summary>
    /// Adds a parameter-importance penalty to the strategy by name ("ewc", "ewc-online", "ewc++", "si",
    /// "mas", "rwalk" or "scp"), e.g. DER++ plus SI, with that method's default hyper-parameters and
    /// gradient clipping, as the command line's --penalty does; options set with
    /// <see cref="WithOption(string, double)"/> (e.g. "lambda") override them whatever their order.
    /// Null or "none" removes it. An unknown name is reported by <see cref="Validate"/>.
    /// </summary>
    public ExperimentBuilder WithPenalty(string? penalty)
    {
        var name = penalty?.Trim().ToLowerInvariant();
        var chosen = string.IsNullOrEmpty(name) || name == "none" ? null : name;
        var penaltyField = ConfigFields.Find(nameof(CoreConfig.Penalty))!;
        return new ExperimentBuilder(_strategy, _buffer, chosen, _replacements.Where(r => r.Property != penaltyField).ToArray(), Without(nameof(CoreConfig.Penalty)));
    }

    /// <summary>Replay buffer size; also selects the reference settings of the nearest published size (200, 500, 5120).</summary>
    public ExperimentBuilder WithBuffer(int size) => new(_strategy, size, _penalty, _replacements, Without(nameof(CoreConfig.BufferSize)));

    /// <summary>The benchmark by name: "split-fmnist" (default) or "split-mnist".</summary>
    public ExperimentBuilder WithBenchmark(string benchmark) =>
        Set(nameof(CoreConfig.Benchmark), NotNull(benchmark).Trim().ToLowerInvariant());

    /// <summary>The folder holding the benchmark's files (for the MNIST family: the four IDX files, plain or .gz).</summary>
    public ExperimentBuilder WithDataFolder(string folder) => Set(nameof(CoreConfig.DataFolder), NotNull(folder));

    /// <summary>Learning rate of plain SGD (default: the strategy's reference setting).</summary>
    public ExperimentBuilder WithLearningRate(double learningRate) => Set(nameof(CoreConfig.LearningRate), learningRate);

    /// <summary>Training examples per step (default 10).</summary>
    public ExperimentBuilder WithBatchSize(int batchSize) => Set(nameof(CoreConfig.BatchSize), batchSize);

    /// <summary>Buffer examples drawn per step (default: the strategy's reference setting).</summary>
    public ExperimentBuilder WithMinibatch(int minibatch) => Set(nameof(CoreConfig.Minibatch), minibatch);

    /// <summary>DER / DER++ logit-matching weight α (default: the reference setting).</summary>
    public ExperimentBuilder WithAlpha(double alpha) => Set(nameof(CoreConfig.Alpha), alpha);

    /// <summary>DER++ buffer-label weight β (default: the reference setting).</summary>
    public ExperimentBuilder WithBeta(double beta) => Set(nameof(CoreConfig.Beta), beta);

    /// <summary>Epochs per task (default 1).</summary>
    public ExperimentBuilder WithEpochs(int epochs) => Set(nameof(CoreConfig.Epochs), epochs);

    /// <summary>SGD weight decay (default 0).</summary>
    public ExperimentBuilder WithWeightDecay(double weightDecay) => Set(nameof(CoreConfig.WeightDecay), weightDecay);

    /// <summary>Random seed of the initialisation, the data order and the buffer (default 0). Same seed, same results.</summary>
    public ExperimentBuilder WithSeed(long seed) => Set(nameof(CoreConfig.Seed), seed);

    /// <summary>"cpu" (default) or "cuda" / "cuda:N" (needs the CUDA build of libtorch).</summary>
    public ExperimentBuilder WithDevice(string device) => Set(nameof(CoreConfig.Device), NotNull(device));

    /// <summary>libtorch intra-op threads (default 1). libtorch takes this once per process: the first run's value stays.</summary>
    public ExperimentBuilder WithThreads(int threads) => Set(nameof(CoreConfig.Threads), threads);

    /// <summary>Use at most this many training examples per class (null: all).</summary>
    public ExperimentBuilder WithTrainPerClass(int? count) => Set(nameof(CoreConfig.TrainPerClass), count);

    /// <summary>Use at most this many test examples per class (null: all).</summary>
    public ExperimentBuilder WithTestPerClass(int? count) => Set(nameof(CoreConfig.TestPerClass), count);

    /// <summary>
    /// Sets any numeric field of the configuration by name, including hyper-parameters that strategies
    /// add to it (see <see cref="OptionNames"/>). Names match ignoring case, '-' and '_', so "weight-decay"
    /// and "WeightDecay" are the same option. Integer fields take whole numbers only. An unknown name or an
    /// unusable value is reported by <see cref="Validate"/>.
    /// </summary>
    public ExperimentBuilder WithOption(string name, double value) => SetByName(name, value);

    /// <summary>
    /// Sets any text, boolean or named-choice field of the configuration by name, e.g. a field naming an
    /// extra penalty that a strategy adds (numbers written as text are accepted for numeric fields). See
    /// <see cref="WithOption(string, double)"/> for how names match; choices match their case names the same way.
    /// </summary>
    public ExperimentBuilder WithOption(string name, string value) => SetByName(name, NotNull(value));

    /// <summary>The effective configuration this builder describes (defaults plus choices).</summary>
    public ExperimentSettings Settings => new(BuildConfig());

    /// <summary>
    /// Every problem of the configuration, as messages a user can act on; empty when it can run.
    /// Checks the options' names and values, the core's rules (strategy, benchmark, ranges), that the
    /// data folder exists and that a CUDA device is available when one is asked for.
    /// </summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = _problems.Select(p => p.Message).ToList();
        var config = BuildConfig();
        errors.AddRange(CoreExperiment.validate(config));
        if (!Directory.Exists(config.DataFolder))
        {
            errors.Add($"data folder '{config.DataFolder}' does not exist");
        }
        var device = config.Device.Trim().ToLowerInvariant();
        if (device.StartsWith("cuda", StringComparison.Ordinal) && !TorchSharp.torch.cuda.is_available())
        {
            errors.Add($"device '{config.Device}' was asked for, but CUDA is not available (this build uses the CPU build of libtorch)");
        }
        return errors.AsReadOnly();
    }

    /// <summary>
    /// Validates the configuration, loads the data and runs the experiment on the calling thread.
    /// </summary>
    /// <param name="progress">
    /// Receives a report when each task starts, every 100 steps and at each task's end, and when each task
    /// is evaluated. Reports are made on the training thread; <see cref="Progress{T}"/> forwards them to its
    /// synchronisation context (and may deliver the last ones after this method returns).
    /// </param>
    /// <param name="cancellationToken">Checked before loading and before every training step.</param>
    /// <returns>The result; dispose it to release the trained model.</returns>
    /// <exception cref="ExperimentValidationException">The configuration is not valid (nothing was run).</exception>
    /// <exception cref="ContinualDataException">A data file is missing or unreadable.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    public ExperimentResult Run(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var errors = Validate();
        if (errors.Count > 0) throw new ExperimentValidationException(errors);
        cancellationToken.ThrowIfCancellationRequested();
        var config = BuildConfig();
        var events = new ProgressTranslator(progress);
        var hooks = global::Continual.RunHooksModule.events(FuncConvert.FromAction<global::Continual.TrainingEvent>(events.OnEvent));
        global::Continual.ExperimentResult result;
        try
        {
            result = CoreExperiment.run(config, hooks, cancellationToken);
        }
        catch (DataFileError e)
        {
            throw new ContinualDataException(e.path, e.reason, e);
        }
        return new ExperimentResult(result, new ExperimentSettings(config));
    }

    /// <summary>
    /// Runs the experiment on a thread-pool thread (see <see cref="Run"/>). Every failure, including an
    /// invalid configuration and cancellation, surfaces when the task is awaited.
    /// </summary>
    public Task<ExperimentResult> RunAsync(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Task.Run(() => Run(progress, cancellationToken), cancellationToken);

    /// <inheritdoc />
    public override string ToString() => Settings.ToJson();

    private static T NotNull<T>(T value, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(value))] string? name = null)
        where T : class
    {
        ArgumentNullException.ThrowIfNull(value, name);
        return value;
    }

    private ExperimentBuilder Set(string field, object? value)
    {
        var property = ConfigFields.Find(field)
            ?? throw new InvalidOperationException($"the core's configuration has no field '{field}'");
        return Replace(property, value, field);
    }

    private ExperimentBuilder SetByName(string name, object value)
    {
        ArgumentNullException.ThrowIfNull(name);
        var property = ConfigFields.Find(name);
        if (property is null)
        {
            return Problem(ConfigFields.Normalise(name), $"unknown option '{name}' (known: {string.Join(", ", OptionNames)})");
        }
        // Strategy and buffer size also choose the defaults, exactly as their own methods do.
        if (property.Name == nameof(CoreConfig.Strategy) && value is string strategy) return WithStrategy(strategy);
        // So does a penalty: it brings its method's defaults, as WithPenalty does.
        if (property.Name == nameof(CoreConfig.Penalty) && value is string penalty) return WithPenalty(penalty);
        if (property.Name == nameof(CoreConfig.BufferSize)
            && ConfigFields.TryConvert(value, typeof(int), out var size, out _))
        {
            return WithBuffer((int)size!);
        }
        return Replace(property, value, name);
    }

    private ExperimentBuilder Replace(PropertyInfo property, object? value, string shownName)
    {
        if (!ConfigFields.TryConvert(value, property.PropertyType, out var converted, out var error))
        {
            return Problem(property.Name, $"option '{shownName}' ({property.Name}) {error}");
        }
        return new ExperimentBuilder(_strategy, _buffer, _penalty, [.. _replacements, (property, converted)], Without(property.Name));
    }

    private ExperimentBuilder Problem(string key, string message) =>
        new(_strategy, _buffer, _penalty, _replacements, [.. Without(key), (key, message)]);

    private (string, string)[] Without(string key) => _problems.Where(p => p.Key != key).ToArray();

    internal CoreConfig BuildConfig()
    {
        var defaults = CoreExperiment.defaults(_strategy, _buffer ?? DefaultBufferSize);
        if (_penalty is not null) defaults = CoreExperiment.withPenalty(FSharpOption<string>.Some(_penalty), defaults);
        var replacements = new Dictionary<PropertyInfo, object?>();
        if (_buffer is int buffer) replacements[ConfigFields.Find(nameof(CoreConfig.BufferSize))!] = buffer;
        foreach (var (property, value) in _replacements) replacements[property] = value;
        return ConfigFields.With(defaults, replacements);
    }

    /// <summary>Turns the core's events into <see cref="TrainingProgress"/> reports.</summary>
    private sealed class ProgressTranslator(IProgress<TrainingProgress>? progress)
    {
        private readonly Dictionary<int, int> _steps = [];

        internal void OnEvent(global::Continual.TrainingEvent e)
        {
            if (progress is null) return;
            switch (e)
            {
                case global::Continual.TrainingEvent.TaskStarted started:
                    _steps[started.task] = started.steps;
                    progress.Report(new TrainingProgress(TrainingProgressKind.TaskStarted, started.task, 0, started.steps, null, null, null, null));
                    break;
                case global::Continual.TrainingEvent.PhaseStarted phase:
                    var total = _steps.GetValueOrDefault(phase.task);
                    progress.Report(new TrainingProgress(TrainingProgressKind.PhaseStarted, phase.task, total, total, null, null, null, null, phase.phase));
                    break;
                case global::Continual.TrainingEvent.StepsCompleted done:
                    progress.Report(new TrainingProgress(TrainingProgressKind.StepsCompleted, done.task, done.completed, done.steps, done.meanLoss, null, null, null));
                    break;
                case global::Continual.TrainingEvent.TaskFinished finished:
                    var steps = _steps.GetValueOrDefault(finished.task);
                    progress.Report(new TrainingProgress(
                        TrainingProgressKind.TaskFinished,
                        finished.task,
                        steps,
                        steps,
                        null,
                        Array.AsReadOnly((double[])finished.accuracies.ClassIl.Clone()),
                        Array.AsReadOnly((double[])finished.accuracies.TaskIl.Clone()),
                        TimeSpan.FromSeconds(finished.seconds)));
                    break;
            }
        }
    }
}
