using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using Continual.Data;
using Tensor = TorchSharp.torch.Tensor;
using CoreConfig = global::Continual.Config;
using CoreData = global::Continual.DataSettings;
using CoreExperiment = global::Continual.Experiment;
using CoreRun = global::Continual.RunSettings;
using Registry = global::Continual.Methods.Registry;

namespace Continual.CSharp;

/// <summary>
/// Configures and runs a continual-learning experiment: a method trained on a benchmark's stream of
/// tasks, evaluated after every task.
/// </summary>
/// <remarks>
/// <para>
/// The builder is immutable: every <c>With…</c> method returns a new builder, so one base configuration can
/// be varied freely (e.g. over seeds). The method is typed (<see cref="WithMethod"/> with <see cref="Methods"/>)
/// or named (<see cref="WithStrategy"/>); either way it brings the reference protocol's run settings
/// (learning rate, weight decay, gradient clipping), and an added penalty brings its clipping, unless the
/// caller sets them, in any order. Options not set take the command line's defaults: DER++ with a
/// 500-slot buffer, Split Fashion-MNIST read from /usr/share/datasets/fashion-mnist, the reference MLP,
/// batch 10, one epoch, seed 0, CPU.
/// </para>
/// <para>
/// Values are checked by <see cref="Validate"/> (and before <see cref="Run"/>), whose messages name the C#
/// member that sets the value at fault.
/// </para>
/// </remarks>
/// <example>
/// <code>
/// using var result = new ExperimentBuilder()
///     .WithMethod(Methods.Derpp(buffer: 500).WithAlpha(0.3))
///     .WithPenalty(Penalties.Si(c: 1))
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

    private readonly State _s;

    /// <summary>A builder with every option at its default.</summary>
    public ExperimentBuilder()
        : this(new State())
    {
    }

    private ExperimentBuilder(State state)
    {
        _s = state;
    }

    /// <summary>What the caller chose; everything else is the defaults'.</summary>
    private sealed record State
    {
        // The method: by name (WithStrategy) or typed (WithMethod); exactly one is set.
        public string? Strategy { get; init; } = DefaultStrategy;

        public MethodSettings? Method { get; init; }

        // The buffer size: with a named method it chooses the reference settings; with a typed one it
        // resizes the method's memory (a later WithMethod clears it).
        public int? Buffer { get; init; }

        // The added penalty: by name, typed, or none.
        public string? PenaltyName { get; init; }

        public PenaltySettings? Penalty { get; init; }

        public DistillationSettings[] Distillation { get; init; } = [];

        public string? Benchmark { get; init; }

        public string? DataFolder { get; init; }

        public int? TrainPerClass { get; init; }

        public int? TestPerClass { get; init; }
        public bool? GrowingHead { get; init; }
        public bool? MultiHead { get; init; }

        public string? Backbone { get; init; }

        public double? LearningRate { get; init; }

        public int? BatchSize { get; init; }

        public int? Epochs { get; init; }

        public double? WeightDecay { get; init; }

        public long? Seed { get; init; }

        public string? Device { get; init; }

        public int? Threads { get; init; }

        // Set explicitly (a bound, or null for no clipping) when ClipGradSet.
        public bool ClipGradSet { get; init; }

        public double? ClipGrad { get; init; }

        // ONNX export after every task (on by default, as on the command line) and the folder it writes into
        // (null: a new folder under the system's temporary folder).
        public bool OnnxExport { get; init; } = true;

        public string? OnnxFolder { get; init; }

        // Custom terms (WithCustomTerm): a factory each, called once per run for a fresh term.
        public Func<ICustomTerm>[] CustomTerms { get; init; } = [];

        // Settings of the method, the penalty or the distillation terms set by name (WithOption), applied
        // in order over the typed ones; one per normalised name (a later value replaces an earlier one).
        public (string Key, string Name, string Text)[] Options { get; init; } = [];

        // Options whose name or value could not be used, by the option they concern; reported by
        // Validate. A later valid choice of the same option clears its problem.
        public (string Key, string Message)[] Problems { get; init; } = [];

        public State Without(string key) => this with { Problems = Problems.Where(p => p.Key != key).ToArray() };
    }

    /// <summary>
    /// Exports the model to <c>task-k.onnx</c> in <paramref name="folder"/> (created when missing) after every task,
    /// verified under ONNX Runtime against TorchSharp before it is written, as <c>continual run</c> does (export is on
    /// by default; without this call the files go to a new folder under the system's temporary folder).
    /// <see cref="ExperimentResult.OnnxFiles"/> lists the files with their verification figures.
    /// </summary>
    public ExperimentBuilder WithOnnxExport(string folder) => new(_s with { OnnxExport = true, OnnxFolder = NotNull(folder) });

    /// <summary>Turns the after-task ONNX export off (as <c>continual run --no-onnx</c>).</summary>
    public ExperimentBuilder WithoutOnnxExport() => new(_s with { OnnxExport = false, OnnxFolder = null });

    /// <summary>Whether <see cref="Run"/> exports the model to ONNX after every task.</summary>
    public bool ExportsOnnx => _s.OnnxExport;

    /// <summary>The strategies this build knows (e.g. sgd, joint, er, der, derpp).</summary>
    public static IReadOnlyList<string> KnownStrategies => ListModule.ToArray(CoreExperiment.strategyNames);

    /// <summary>The benchmarks this build knows (e.g. split-fmnist, split-mnist).</summary>
    public static IReadOnlyList<string> KnownBenchmarks => ListModule.ToArray(CoreExperiment.benchmarkNames);

    /// <summary>
    /// The names <see cref="WithOption(string, double)"/> accepts: the builder's own options (learningRate,
    /// batchSize, seed, …, strategy, buffer, penalty, distill) and every setting of the methods, importance
    /// methods and distillation terms by its name in results.json (alpha, lambda, fisherAlpha, …; SCP's
    /// batchSize is "scp-batch"). Names match ignoring case, '-' and '_'.
    /// </summary>
    public static IReadOnlyList<string> OptionNames =>
        Options.BuilderOptions.Select(o => o.Name).Concat(Options.ComponentOptionNames()).ToArray();

    /// <summary>
    /// Chooses the method by name, e.g. "sgd", "joint", "er", "der", "derpp", "si" (default "derpp"), with
    /// its reference settings for the buffer size (<see cref="WithBuffer"/>). An unknown name is reported by
    /// <see cref="Validate"/>. Replaces a method chosen by <see cref="WithMethod"/>.
    /// </summary>
    public ExperimentBuilder WithStrategy(string strategy)
    {
        ArgumentNullException.ThrowIfNull(strategy);
        return new(_s.Without("strategy") with { Strategy = strategy.Trim().ToLowerInvariant(), Method = null });
    }

    /// <summary>
    /// Chooses the method with its settings, e.g. <c>Methods.Derpp(buffer: 500).WithAlpha(0.3)</c>. It brings
    /// its reference run settings (learning rate, weight decay, gradient clipping) unless they are set on this
    /// builder. Replaces a method chosen by name or an earlier one; its buffer size replaces an earlier
    /// <see cref="WithBuffer"/>.
    /// </summary>
    public ExperimentBuilder WithMethod(MethodSettings method)
    {
        ArgumentNullException.ThrowIfNull(method);
        return new(_s.Without("strategy").Without("buffer") with { Method = method, Strategy = null, Buffer = null });
    }

    /// <summary>
    /// Replay buffer size (iCaRL: exemplar memory). With a method chosen by name it also selects the reference
    /// settings of the nearest published size (200, 500, 5120); with one chosen by <see cref="WithMethod"/> it
    /// resizes that method's memory and keeps its other settings. Ignored by methods without a memory.
    /// </summary>
    public ExperimentBuilder WithBuffer(int size) => new(_s.Without("buffer") with { Buffer = size });

    /// <summary>
    /// Adds a parameter-importance penalty to the method by name ("ewc", "ewc-online", "ewc++", "si", "mas",
    /// "rwalk" or "scp"), e.g. DER++ plus SI, with that method's reference settings and gradient clipping.
    /// Null or "none" removes it. An unknown name is reported by <see cref="Validate"/>.
    /// </summary>
    public ExperimentBuilder WithPenalty(string? penalty)
    {
        var name = penalty?.Trim().ToLowerInvariant();
        var chosen = string.IsNullOrEmpty(name) || name == "none" ? null : name;
        return new(_s.Without("penalty") with { PenaltyName = chosen, Penalty = null });
    }

    /// <summary>
    /// Adds a parameter-importance penalty with its settings, e.g. <c>Penalties.Si(c: 1)</c>, to the method
    /// (one penalty per run: it replaces an earlier one). Its gradient clipping (SI, SCP) comes with it unless
    /// the method clips already or <see cref="WithGradientClipping"/> is set.
    /// </summary>
    public ExperimentBuilder WithPenalty(PenaltySettings penalty)
    {
        ArgumentNullException.ThrowIfNull(penalty);
        return new(_s.Without("penalty") with { Penalty = penalty, PenaltyName = null });
    }

    /// <summary>Removes the added penalty, if any.</summary>
    public ExperimentBuilder WithoutPenalty() => new(_s.Without("penalty") with { Penalty = null, PenaltyName = null });

    /// <summary>
    /// Adds a distillation term against the previous task's model, e.g. <c>Distillation.Kd(temperature: 2)</c>;
    /// several terms are added in order.
    /// </summary>
    public ExperimentBuilder WithDistillation(DistillationSettings term)
    {
        ArgumentNullException.ThrowIfNull(term);
        return new(_s with { Distillation = [.. _s.Distillation, term] });
    }

    /// <summary>
    /// Adds a loss term or penalty written in C# (see <see cref="ICustomTerm"/>): every run calls
    /// <paramref name="factory"/> once for a fresh term and adds its value to every step's loss under its name, after
    /// the method's, penalty's and distillation's terms. Several terms are added in order. Custom terms are code,
    /// not settings: <see cref="Settings"/> and results.json do not show them. A <see cref="Learner"/> made from the
    /// builder takes fresh terms too, but cannot be saved while it holds them.
    /// </summary>
    /// <example>
    /// <code>
    /// var builder = new ExperimentBuilder().WithStrategy("sgd").WithCustomTerm(() =&gt; new L2Anchor(lambda: 0.1));
    /// </code>
    /// </example>
    public ExperimentBuilder WithCustomTerm(Func<ICustomTerm> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        return new(_s with { CustomTerms = [.. _s.CustomTerms, factory] });
    }

    /// <summary>
    /// Adds a custom term of a type with a parameterless constructor, a fresh instance for every run (see
    /// <see cref="WithCustomTerm(Func{ICustomTerm})"/>).
    /// </summary>
    public ExperimentBuilder WithCustomTerm<TTerm>()
        where TTerm : ICustomTerm, new() => WithCustomTerm(() => new TTerm());

    /// <summary>
    /// Adds a stateless custom term given as a function of the step (see <see cref="ICustomTerm.Compute"/>): e.g. a
    /// confidence penalty <c>c =&gt; -0.1 * entropy(c.Logits)</c>. The function returns a scalar tensor of the step's
    /// dispose scope, or null for no term at that step.
    /// </summary>
    public ExperimentBuilder WithCustomTerm(string name, Func<TermContext, Tensor?> compute)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(compute);
        return WithCustomTerm(() => new FunctionTerm(name, compute, null, null, null));
    }

    /// <summary>Removes every custom term.</summary>
    public ExperimentBuilder WithoutCustomTerms() => new(_s with { CustomTerms = [] });

    /// <summary>How many custom terms <see cref="WithCustomTerm(Func{ICustomTerm})"/> added.</summary>
    public int CustomTermCount => _s.CustomTerms.Length;

    /// <summary>Removes every distillation term.</summary>
    public ExperimentBuilder WithoutDistillation() =>
        new(_s with { Distillation = [], Problems = _s.Problems.Where(p => !p.Key.StartsWith("distill", StringComparison.Ordinal)).ToArray() });

    /// <summary>The benchmark by name: "split-fmnist" (default), "split-mnist" or "split-cifar10".</summary>
    public ExperimentBuilder WithBenchmark(string benchmark) =>
        new(_s.Without("benchmark") with { Benchmark = NotNull(benchmark).Trim().ToLowerInvariant() });

    /// <summary>The folder holding the benchmark's files (for the MNIST family: the four IDX files, plain or .gz).</summary>
    public ExperimentBuilder WithDataFolder(string folder) => new(_s.Without("dataFolder") with { DataFolder = NotNull(folder) });

    /// <summary>Use at most this many training examples per class (null: all).</summary>
    public ExperimentBuilder WithTrainPerClass(int? count) => new(_s.Without("trainPerClass") with { TrainPerClass = count });

    /// <summary>Use at most this many test examples per class (null: all).</summary>
    public ExperimentBuilder WithTestPerClass(int? count) => new(_s.Without("testPerClass") with { TestPerClass = count });

    /// <summary>A classifier head that starts with the first task's classes and grows before every task
    /// that brings new ones (true), or one output per class of the benchmark from the start (false, the
    /// default). See docs/growing-head.md.</summary>
    public ExperimentBuilder WithGrowingHead(bool growing = true) => new(_s with { GrowingHead = growing });

    /// <summary>One output head per task (Task-IL, LwF's original form) instead of one head over every
    /// class; strategies that need a single head (der, derpp, icarl, distillation terms) refuse it.</summary>
    public ExperimentBuilder WithMultiHead(bool multi = true) => new(_s with { MultiHead = multi });

    /// <summary>The backbone by name: "mlp" (default, the reference MLP), "cnn" or "resnet18".</summary>
    public ExperimentBuilder WithBackbone(string backbone) =>
        new(_s.Without("backbone") with { Backbone = NotNull(backbone).Trim().ToLowerInvariant() });

    /// <summary>Learning rate of plain SGD (default: the method's reference setting).</summary>
    public ExperimentBuilder WithLearningRate(double learningRate) => new(_s.Without("learningRate") with { LearningRate = learningRate });

    /// <summary>Training examples per step (default 10).</summary>
    public ExperimentBuilder WithBatchSize(int batchSize) => new(_s.Without("batchSize") with { BatchSize = batchSize });

    /// <summary>Epochs per task (default 1).</summary>
    public ExperimentBuilder WithEpochs(int epochs) => new(_s.Without("epochs") with { Epochs = epochs });

    /// <summary>SGD weight decay (default: the method's reference setting, 0 but for LwF).</summary>
    public ExperimentBuilder WithWeightDecay(double weightDecay) => new(_s.Without("weightDecay") with { WeightDecay = weightDecay });

    /// <summary>Random seed of the initialisation, the data order and the buffer (default 0). Same seed, same results.</summary>
    public ExperimentBuilder WithSeed(long seed) => new(_s.Without("seed") with { Seed = seed });

    /// <summary>"cpu" (default) or "cuda" / "cuda:N" (needs the CUDA build of libtorch).</summary>
    public ExperimentBuilder WithDevice(string device) => new(_s.Without("device") with { Device = NotNull(device) });

    /// <summary>libtorch intra-op threads (default 1, the fastest measured for every backbone at batch 10). libtorch takes this once per process: the first run's value stays. A run is deterministic for a given thread count; another count changes its results bit for bit.</summary>
    public ExperimentBuilder WithThreads(int threads) => new(_s.Without("threads") with { Threads = threads });

    /// <summary>
    /// Clips every gradient element to [-bound, bound] before each step; null for no clipping. Default: the
    /// method's reference clipping (SI, SCP), or the added penalty's.
    /// </summary>
    public ExperimentBuilder WithGradientClipping(double? bound) => new(_s.Without("clipGrad") with { ClipGradSet = true, ClipGrad = bound });

    /// <summary>
    /// The escape hatch: sets an option by name (see <see cref="OptionNames"/>). The builder's own options
    /// (e.g. "learningRate" or "lr", "epochs", "seed", "buffer") go to their <c>With…</c> method; any other name is
    /// a setting of the method, the penalty or the distillation terms (e.g. "alpha", "lambda", "fisher-alpha"),
    /// set on every one of them that has it, over their typed settings whatever the order. Names match ignoring
    /// case, '-' and '_'. An unknown name, an unusable value (2.5 for a whole number) or a setting that nothing in
    /// the configuration has is reported by <see cref="Validate"/>.
    /// </summary>
    public ExperimentBuilder WithOption(string name, double value) => SetByName(name, value);

    /// <summary>
    /// Sets an option from text (see <see cref="WithOption(string, double)"/>): names such as "strategy",
    /// "penalty", "distill" (adds a term by name: kd, fitnets, nst, at, rkd, pod, sd, relation), "backbone",
    /// "device" or "fisher" (true, empirical, weighted); numbers written as text are accepted for numeric
    /// options, and "none" clears the optional ones (clipGrad, trainPerClass, testPerClass, penalty, distill).
    /// </summary>
    public ExperimentBuilder WithOption(string name, string value) => SetByName(name, NotNull(value));

    /// <summary>
    /// The effective configuration this builder describes (defaults plus choices).
    /// </summary>
    /// <exception cref="ExperimentValidationException">
    /// The builder names a method, penalty or distillation term this build does not know, so there is no
    /// configuration to describe (other problems are reported by <see cref="Validate"/> only).
    /// </exception>
    public ExperimentSettings Settings
    {
        get
        {
            var built = Build();
            if (built.Fatal.Count > 0) throw new ExperimentValidationException(built.Fatal);
            return new ExperimentSettings(built.Config);
        }
    }

    /// <summary>
    /// Every problem of the configuration, as messages a user can act on, each naming the C# member that sets
    /// the value at fault (e.g. "(WithLearningRate)", "(DerppSettings.WithAlpha)"); empty when it can run.
    /// Checks the options' names and values, the core's rules (method, benchmark, ranges, combinations), that
    /// the data folder exists and that a CUDA device is available when one is asked for.
    /// </summary>
    public IReadOnlyList<string> Validate()
    {
        var built = Build();
        var errors = new List<string>(built.Fatal);
        errors.AddRange(built.Problems);
        var config = built.Config;
        errors.AddRange(CoreExperiment.validate(config).Select(e => Options.Translate(e, config)));
        if (!Directory.Exists(config.Data.Folder))
        {
            errors.Add($"data folder '{config.Data.Folder}' does not exist ({nameof(WithDataFolder)})");
        }
        var device = config.Run.Device.Trim().ToLowerInvariant();
        if (device.StartsWith("cuda", StringComparison.Ordinal) && !TorchSharp.torch.cuda.is_available())
        {
            errors.Add($"device '{config.Run.Device}' was asked for, but CUDA is not available (this build uses the CPU build of libtorch) ({nameof(WithDevice)})");
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
    /// <param name="cancellationToken">
    /// Observed while the data loads (the call returns at once; the load ends in the background) and checked before
    /// every training step and evaluation phase.
    /// </param>
    /// <returns>The result; dispose it to release the trained model.</returns>
    /// <exception cref="ExperimentValidationException">The configuration is not valid (nothing was run).</exception>
    /// <exception cref="ContinualDataException">A data file is missing or unreadable.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    /// <exception cref="TrainingDivergedException">The loss stopped being a finite number (nothing is kept).</exception>
    /// <exception cref="OnnxExportException">A task's ONNX export failed a check (see <see cref="WithoutOnnxExport"/>).</exception>
    public ExperimentResult Run(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var config = ValidRunConfig();
        cancellationToken.ThrowIfCancellationRequested();
        var events = new ProgressTranslator(progress);
        global::Continual.Onnx.RunExporter? exporter = null;
        // The exporter sees the events too: its ONNX Runtime warm-up begins once training is under way.
        var hooks = global::Continual.RunHooksModule.events(FuncConvert.FromAction<global::Continual.TrainingEvent>(e =>
        {
            exporter?.Observe(e);
            events.OnEvent(e);
        }));
        if (_s.OnnxExport)
        {
            var folder = Path.GetFullPath(_s.OnnxFolder ?? Path.Combine(Path.GetTempPath(), "continual-onnx", $"{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Guid.NewGuid():N}"));
            Directory.CreateDirectory(folder);
            exporter = new global::Continual.Onnx.RunExporter(
                global::Continual.Onnx.ExportSettingsModule.forRun(global::Continual.Onnx.LearnerExport.runIdentity(config), folder));
            hooks = new global::Continual.RunHooks(
                hooks.OnEvent, hooks.OnStepTerms, FuncConvert.FromAction<global::Continual.AfterTask>(exporter.AfterTask), hooks.Checkpoint, hooks.CheckpointEvery, hooks.StopRequested);
        }
        global::Continual.ExperimentResult result;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            var benchmark = LoadBenchmark(config, cancellationToken);
            try
            {
                var terms = CreateCustomTerms();
                global::Continual.ExperimentResult run;
                try
                {
                    run = CoreExperiment.runOnWith(Options.List<global::Continual.Methods.IExternalTerm>(terms), benchmark, config, hooks, cancellationToken);
                }
                catch
                {
                    // A run that ends in an exception has freed its state but for what the terms own.
                    foreach (var term in terms) term.Dispose();
                    throw;
                }
                // The wall time includes loading, as the core's Experiment.run counts it.
                result = new global::Continual.ExperimentResult(run.Config, run.Architecture, run.Benchmark, run.Outcome, clock.Elapsed.TotalSeconds, run.StartedUtc);
            }
            finally
            {
                Benchmarks.dispose(benchmark);
            }
        }
        catch (Exception e) when (FacadeErrors.Translate(e) is { } translated)
        {
            throw translated;
        }
        finally
        {
            exporter?.Finish();
        }
        return new ExperimentResult(result, new ExperimentSettings(config), exporter);
    }

    /// <summary>
    /// Loads the benchmark on a thread-pool thread while the caller waits on <paramref name="cancellationToken"/>:
    /// a cancellation while the files are read throws at once; the abandoned load frees what it read when it ends.
    /// </summary>
    internal static Benchmark LoadBenchmark(CoreConfig config, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var loading = Task.Run(() => CoreExperiment.loadBenchmark(config));
        try
        {
            return loading.WaitAsync(cancellationToken).GetAwaiter().GetResult();
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            loading.ContinueWith(t => { if (t.IsCompletedSuccessfully) Benchmarks.dispose(t.Result); }, TaskScheduler.Default);
            throw;
        }
    }

    /// <summary>
    /// Runs the experiment on a thread-pool thread (see <see cref="Run"/>). Every failure, including an
    /// invalid configuration and cancellation, surfaces when the task is awaited.
    /// </summary>
    public Task<ExperimentResult> RunAsync(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Task.Run(() => Run(progress, cancellationToken), cancellationToken);

    /// <summary>
    /// Creates a <see cref="Learner"/> for this configuration: validates it, loads the benchmark and builds
    /// the untrained model, ready to learn the stream task by task (see <see cref="Learner.Create(ExperimentBuilder)"/>).
    /// </summary>
    /// <exception cref="ExperimentValidationException">The configuration is not valid (nothing was loaded).</exception>
    /// <exception cref="ContinualDataException">A data file is missing or unreadable.</exception>
    public Learner CreateLearner() => Learner.Create(this);

    /// <summary>
    /// A learner for this configuration (<see cref="Learner.Create(ExperimentBuilder, CancellationToken)"/>), observing
    /// <paramref name="cancellationToken"/> while the data load.
    /// </summary>
    /// <exception cref="ExperimentValidationException">The configuration is not valid (nothing was loaded).</exception>
    /// <exception cref="ContinualDataException">A data file is missing or unreadable.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled before or while the data loaded.</exception>
    public Learner CreateLearner(CancellationToken cancellationToken) => Learner.Create(this, cancellationToken);

    /// <summary>The validated configuration (the core's type); throws when <see cref="Validate"/> finds problems.</summary>
    /// <exception cref="ExperimentValidationException">The configuration is not valid.</exception>
    internal CoreConfig ValidConfig() => ValidRunConfig();

    /// <summary>The validated configuration for <see cref="Run"/> (custom terms are passed apart).</summary>
    private CoreConfig ValidRunConfig()
    {
        var errors = Validate();
        if (errors.Count > 0) throw new ExperimentValidationException(errors);
        return Build().Config;
    }

    /// <summary>The configuration's canonical JSON (see <see cref="ExperimentSettings.ToString"/>), or its problems when it names something unknown.</summary>
    public override string ToString()
    {
        var built = Build();
        return built.Fatal.Count > 0 ? string.Join("; ", built.Fatal) : new ExperimentSettings(built.Config).ToString();
    }

    /// <summary>
    /// A fresh term from every custom-term factory, in order, checked: a factory returns a term, names are
    /// non-empty and distinct. On a problem the terms made are disposed and nothing runs.
    /// </summary>
    /// <exception cref="ExperimentValidationException">A factory returned null or a name is empty or repeated.</exception>
    internal ExternalTerm[] CreateCustomTerms()
    {
        var terms = new List<ExternalTerm>();
        var problems = new List<string>();
        try
        {
            foreach (var factory in _s.CustomTerms)
            {
                if (factory() is not ICustomTerm term)
                {
                    problems.Add($"a custom term's factory returned null ({nameof(WithCustomTerm)})");
                    continue;
                }
                terms.Add(new ExternalTerm(term));
                var name = term.Name;
                if (string.IsNullOrWhiteSpace(name))
                    problems.Add($"a custom term ({term.GetType().Name}) has an empty name ({nameof(ICustomTerm)}.{nameof(ICustomTerm.Name)})");
                else if (terms.Count(t => t.Name == name) > 1)
                    problems.Add($"two custom terms are named '{name}' ({nameof(ICustomTerm)}.{nameof(ICustomTerm.Name)})");
            }
        }
        catch
        {
            foreach (var term in terms) term.Dispose();
            throw;
        }
        if (problems.Count > 0)
        {
            foreach (var term in terms) term.Dispose();
            throw new ExperimentValidationException(problems);
        }
        return [.. terms];
    }

    private static T NotNull<T>(T value, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(value))] string? name = null)
        where T : class
    {
        ArgumentNullException.ThrowIfNull(value, name);
        return value;
    }

    // ---- the escape hatch ----

    private ExperimentBuilder SetByName(string name, object value)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (Options.BuilderOption(name) is var (canonical, setter))
        {
            return SetBuilderOption(canonical, setter, name, value);
        }
        var key = Options.Normalise(name);
        if (Options.ComponentOption(name) is not string option)
        {
            return Problem(key, $"unknown option '{name}' (known: {string.Join(", ", OptionNames)}) ({nameof(WithOption)})");
        }
        var text = Options.Text(value);
        return new(_s.Without(key) with { Options = [.. _s.Options.Where(o => o.Key != key), (key, option.Trim(), text)] });
    }

    private ExperimentBuilder SetBuilderOption(string canonical, string setter, string shown, object value)
    {
        string? error;
        switch (canonical)
        {
            case "strategy":
                if (Options.TryText(value, out var strategy, out error)) return WithStrategy(strategy);
                break;
            case "buffer":
                if (Options.TryInt(value, out var buffer, out error)) return WithBuffer(buffer);
                break;
            case "penalty":
                if (Options.TryText(value, out var penalty, out error)) return WithPenalty(penalty);
                break;
            case "distill":
                if (Options.IsNone(value)) return WithoutDistillation();
                if (!Options.TryText(value, out var term, out error)) break;
                var kind = global::Continual.Methods.DistillationKindModule.parse(term);
                if (kind is null)
                {
                    var known = string.Join(", ", global::Continual.Methods.DistillationKindModule.names);
                    return Problem("distill:" + term, $"unknown distillation term '{term}' (expected one of: {known}) ({nameof(WithDistillation)})");
                }
                return WithDistillation(DistillationSettings.FromCore(DistillationSettings.Reference(kind.Value)));
            case "benchmark":
                if (Options.TryText(value, out var benchmark, out error)) return WithBenchmark(benchmark);
                break;
            case "dataFolder":
                if (Options.TryText(value, out var folder, out error)) return WithDataFolder(folder);
                break;
            case "trainPerClass":
                if (Options.IsNone(value)) return WithTrainPerClass(null);
                if (Options.TryInt(value, out var train, out error)) return WithTrainPerClass(train);
                break;
            case "testPerClass":
                if (Options.IsNone(value)) return WithTestPerClass(null);
                if (Options.TryInt(value, out var test, out error)) return WithTestPerClass(test);
                break;
            case "backbone":
                if (Options.TryText(value, out var backbone, out error)) return WithBackbone(backbone);
                break;
            case "learningRate":
                if (Options.TryDouble(value, out var lr, out error)) return WithLearningRate(lr);
                break;
            case "batchSize":
                if (Options.TryInt(value, out var batch, out error)) return WithBatchSize(batch);
                break;
            case "epochs":
                if (Options.TryInt(value, out var epochs, out error)) return WithEpochs(epochs);
                break;
            case "weightDecay":
                if (Options.TryDouble(value, out var decay, out error)) return WithWeightDecay(decay);
                break;
            case "seed":
                if (Options.TryLong(value, out var seed, out error)) return WithSeed(seed);
                break;
            case "device":
                if (Options.TryText(value, out var device, out error)) return WithDevice(device);
                break;
            case "threads":
                if (Options.TryInt(value, out var threads, out error)) return WithThreads(threads);
                break;
            case "clipGrad":
                if (Options.IsNone(value)) return WithGradientClipping(null);
                if (Options.TryDouble(value, out var clip, out error)) return WithGradientClipping(clip);
                break;
            default:
                throw new InvalidOperationException($"the option '{canonical}' has no setter");
        }
        return Problem(canonical, $"option '{shown}' {error} ({setter})");
    }

    private ExperimentBuilder Problem(string key, string message) =>
        new(_s.Without(key) with { Problems = [.. _s.Without(key).Problems, (key, message)] });

    // ---- the configuration ----

    /// <summary>
    /// A configuration, the problems found building it (options that could not be used) and the fatal ones
    /// (an unknown method, penalty or distillation term: the configuration shows the defaults there instead).
    /// </summary>
    private sealed record Built(CoreConfig Config, List<string> Problems, List<string> Fatal);

    private static MethodSettings Resized(MethodSettings method, int size) => method switch
    {
        ErSettings s => s with { BufferSize = size },
        DerSettings s => s with { BufferSize = size },
        DerppSettings s => s with { BufferSize = size },
        IcarlSettings s => s with { Memory = size },
        _ => method,
    };

    private static int? BufferOf(MethodSettings method) => method switch
    {
        ErSettings s => s.BufferSize,
        DerSettings s => s.BufferSize,
        DerppSettings s => s.BufferSize,
        IcarlSettings s => s.Memory,
        _ => null,
    };

    private Built Build()
    {
        var problems = _s.Problems.Select(p => p.Message).ToList();
        var fatal = new List<string>();

        // The method, with the reference protocol's run settings for it (Experiment.defaults).
        CoreConfig config;
        if (_s.Method is MethodSettings typed)
        {
            var method = _s.Buffer is int size ? Resized(typed, size) : typed;
            var reference = CoreExperiment.defaults(method.Name, BufferOf(method) ?? DefaultBufferSize);
            config = With(reference, method: method.ToCore());
        }
        else if (_s.Strategy is string name && Registry.tryMethod(name) is not null)
        {
            config = CoreExperiment.defaults(name, _s.Buffer ?? DefaultBufferSize);
        }
        else
        {
            fatal.Add($"unknown strategy '{_s.Strategy}' (expected one of: {string.Join(", ", KnownStrategies)}) ({nameof(WithStrategy)})");
            config = CoreExperiment.defaults(DefaultStrategy, _s.Buffer ?? DefaultBufferSize);
        }

        // The penalty, with its clipping unless the method clips (Experiment.withPenalty).
        if (_s.Penalty is PenaltySettings penalty)
        {
            config = CoreExperiment.withPenalty(FSharpOption<string>.Some(penalty.Name), config);
            config = With(config, penalty: FSharpOption<global::Continual.Methods.ImportanceConfig>.Some(penalty.ToImportance()));
        }
        else if (_s.PenaltyName is string penaltyName)
        {
            if (Registry.tryImportance(penaltyName) is not null)
            {
                config = CoreExperiment.withPenalty(FSharpOption<string>.Some(penaltyName), config);
            }
            else
            {
                var known = string.Join(", ", CoreExperiment.importanceNames);
                fatal.Add($"unknown penalty '{penaltyName}' (expected one of: {known}) ({nameof(WithPenalty)})");
            }
        }

        config = With(config, distillation: Options.List(_s.Distillation.Select(d => d.ToCore())));

        // The data, the backbone and the run settings the caller chose.
        var d = config.Data;
        var data = new CoreData(
            _s.Benchmark ?? d.Benchmark,
            _s.DataFolder ?? d.Folder,
            _s.TrainPerClass is int train ? FSharpOption<int>.Some(train) : FSharpOption<int>.None,
            _s.TestPerClass is int test ? FSharpOption<int>.Some(test) : FSharpOption<int>.None,
            d.AllowMissingClasses,
            d.Source);
        var r = config.Run;
        var run = new CoreRun(
            _s.LearningRate ?? r.LearningRate,
            _s.BatchSize ?? r.BatchSize,
            _s.Epochs ?? r.Epochs,
            _s.WeightDecay ?? r.WeightDecay,
            _s.Seed ?? r.Seed,
            _s.Device ?? r.Device,
            _s.Threads ?? r.Threads,
            !_s.ClipGradSet ? r.ClipGrad : _s.ClipGrad is double clip ? FSharpOption<double>.Some(clip) : FSharpOption<double>.None);
        var head = _s.GrowingHead is bool growing ? (growing ? global::Continual.HeadKind.Growing : global::Continual.HeadKind.Fixed) : config.Head;
        var heads = _s.MultiHead is bool multi ? (multi ? global::Continual.HeadCount.Multi : global::Continual.HeadCount.Single) : config.Heads;
        config = new CoreConfig(run, data, _s.Backbone ?? config.Backbone, config.Method, config.Penalty, config.Distillation, head, heads);

        // Settings set by name, over the typed ones.
        foreach (var (_, option, text) in _s.Options)
        {
            var result = CoreExperiment.setOption(option, text, config);
            if (result is null)
            {
                var parts = new List<string> { "the method " + global::Continual.ConfigModule.methodName(config) };
                if (config.Penalty is not null) parts.Add("its penalty");
                if (!config.Distillation.IsEmpty) parts.Add("its distillation terms");
                var owners = parts.Count == 1 ? parts[0] + " has" : string.Join(", ", parts[..^1]) + " and " + parts[^1] + " have";
                problems.Add($"option '{option}' does not apply: {owners} no such setting ({nameof(WithOption)})");
            }
            else if (result.Value.IsError)
            {
                problems.Add($"{result.Value.ErrorValue} ({nameof(WithOption)}(\"{option}\", …))");
            }
            else
            {
                config = result.Value.ResultValue;
            }
        }
        return new Built(config, problems, fatal);
    }

    private static CoreConfig With(
        CoreConfig config,
        global::Continual.Methods.MethodConfig? method = null,
        FSharpOption<global::Continual.Methods.ImportanceConfig>? penalty = null,
        FSharpList<global::Continual.Methods.DistillationSettings>? distillation = null) =>
        new(config.Run, config.Data, config.Backbone, method ?? config.Method, penalty ?? config.Penalty, distillation ?? config.Distillation, config.Head, config.Heads);

    /// <summary>Turns the core's events into <see cref="TrainingProgress"/> reports.</summary>
    internal sealed class ProgressTranslator(IProgress<TrainingProgress>? progress)
    {
        private readonly Dictionary<int, int> _steps = [];

        internal void OnEvent(global::Continual.TrainingEvent e)
        {
            if (progress is null) return;
            switch (e)
            {
                case global::Continual.TrainingEvent.TaskStarted started:
                    _steps[started.task] = started.steps;
                    progress.Report(new TrainingProgress(TrainingProgressKind.TaskStarted, started.task + 1, 0, started.steps, null, null, null, null));
                    break;
                case global::Continual.TrainingEvent.PhaseStarted phase:
                    var total = _steps.GetValueOrDefault(phase.task);
                    progress.Report(new TrainingProgress(TrainingProgressKind.PhaseStarted, phase.task + 1, total, total, null, null, null, null, phase.phase));
                    break;
                case global::Continual.TrainingEvent.StepsCompleted done:
                    progress.Report(new TrainingProgress(TrainingProgressKind.StepsCompleted, done.task + 1, done.completed, done.steps, done.meanLoss, null, null, null));
                    break;
                case global::Continual.TrainingEvent.TaskFinished finished:
                    var steps = _steps.GetValueOrDefault(finished.task);
                    progress.Report(new TrainingProgress(
                        TrainingProgressKind.TaskFinished,
                        finished.task + 1,
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
