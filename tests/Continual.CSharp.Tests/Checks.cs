using System.Globalization;
using System.Text.Json;

namespace Continual.CSharp.Tests;

/// <summary>Reports progress on the training thread, in order (Progress&lt;T&gt; would post them later).</summary>
internal sealed class Recorder(Action<TrainingProgress>? onReport = null) : IProgress<TrainingProgress>
{
    public List<TrainingProgress> Reports { get; } = [];

    public void Report(TrainingProgress value)
    {
        Reports.Add(value);
        onReport?.Invoke(value);
    }
}

internal static partial class Checks
{
    public static List<(string Name, Func<Task> Body)> All() =>
    [
        ("surface: no F# type in any public signature", NoFSharpInPublicSignatures),
        ("surface: the signature check finds F# types where they are", SignatureCheckCanFail),
        .. SurfaceChecks,
        .. CustomTermChecks,
        ("builder: defaults are the core's reference defaults", DefaultsAreTheCoresDefaults),
        ("builder: every With method sets its part of the configuration", EveryWithMethodSetsItsField),
        ("builder: WithOption maps names onto the builder's setters and the method's settings", WithOptionMapsOntoFields),
        ("builder: option values are converted to the option's type or refused", ConversionsToFieldTypes),
        ("builder: immutable", BuilderIsImmutable),
        ("builder: null arguments are refused", NullArgumentsAreRefused),
        ("validate: bad options are rejected with messages", ValidationRejectsBadOptions),
        ("validate: Run refuses an invalid configuration before any work", RunRefusesInvalidConfiguration),
        ("run: DER++ gives 5x5 matrices in [0, 100] and consistent metrics", DerppMatrices),
        ("run: same seed gives identical matrices, another seed differs", SameSeedSameMatrices),
        ("run: progress is reported for every task", ProgressIsReported),
        ("run: results files are written", ResultsFilesAreWritten),
        ("run: Predict (Class-IL and Task-IL), its logits and probabilities agree with the last row; Dispose releases the model", PredictAndDispose),
        ("run: Dispose frees every tensor the run kept", DisposeFreesTensors),
        ("run: JOINT has one row and undefined forgetting", JointHasOneRow),
        ("run: the lecture's baselines by name, their metrics and footprint; WithMultiHead runs Task-IL and is refused where it does not apply", LectureBaselines),
        ("run: TrainPerClass / TestPerClass restrict the data", PerClassLimits),
        ("run: every known strategy runs by name", EveryKnownStrategyRuns),
        ("run: RunAsync gives the same result as Run", RunAsyncMatchesRun),
        ("run: a distillation term and a backbone are set by name (WithOption)", DistillationByOption),
        ("run: WithPenalty adds an importance penalty with its method's defaults", PenaltyWithDefaults),
        .. TypedChecks,
        .. LearnerChecks,
        .. OwnDataChecks,
        .. OnnxChecks,
        ("cancel: a cancelled token stops the run within a step", CancellationStopsTheRun),
        ("cancel: an already cancelled token runs nothing", PreCancelledTokenRunsNothing),
        ("cancel: RunAsync observes cancellation", RunAsyncCancellation),
        ("data: missing or corrupt files give ContinualDataException", DataErrors),
    ];

    private static ExperimentBuilder Subset() =>
        new ExperimentBuilder().WithBenchmark("split-fmnist").WithDataFolder(TestData.Folder).WithOnnxExport(TestData.NewFolder("onnx"));

    // One DER++ run shared by several checks, with its progress reports.
    private static readonly Lazy<(ExperimentResult Result, List<TrainingProgress> Reports)> Shared = new(() =>
    {
        var recorder = new Recorder();
        var result = Subset().WithStrategy("derpp").WithBuffer(500).WithSeed(0).Run(recorder);
        return (result, recorder.Reports);
    });

    private static Task NoFSharpInPublicSignatures()
    {
        var types = typeof(ExperimentBuilder).Assembly.GetExportedTypes();
        // The typed settings are part of the surface the check covers.
        foreach (var expected in TypedSurface.Concat(LearnerSurface))
            Assert.True(types.Contains(expected), $"{expected.Name} is not exported");
        var mentions = PublicSurface.FSharpMentions(types);
        Assert.True(mentions.Count == 0, "F# types in public signatures:\n" + string.Join("\n", mentions));
        Assert.True(types.All(t => t.Namespace == "Continual.CSharp"), "every public type lives in Continual.CSharp");
        return Task.CompletedTask;
    }

    private static Task SignatureCheckCanFail()
    {
        // The core's own types are F#: the check must flag them, or it proves nothing about the façade.
        var config = PublicSurface.FSharpMentions([typeof(global::Continual.Config)]);
        Assert.Contains("Penalty: Microsoft.FSharp.Core.FSharpOption", config);
        Assert.Contains("Distillation: Microsoft.FSharp.Collections.FSharpList", config);
        Assert.Contains("Method: Continual.Methods.MethodConfig", config);
        var data = PublicSurface.FSharpMentions([typeof(global::Continual.DataSettings)]);
        Assert.Contains("TrainPerClass", data);
        var module = PublicSurface.FSharpMentions([typeof(global::Continual.Experiment)]);
        Assert.Contains("FSharpList", module);
        Assert.True(PublicSurface.IsFSharp(typeof(global::Continual.TrainingEvent)));
        Assert.True(PublicSurface.IsFSharp(typeof(global::Continual.Methods.ImportanceConfig)));
        Assert.True(PublicSurface.IsFSharp(typeof(global::Continual.Methods.Der.PlusPlusSettings)));
        Assert.True(!PublicSurface.IsFSharp(typeof(DerppSettings)));
        Assert.True(!PublicSurface.IsFSharp(typeof(ExperimentResult)));
        Assert.True(!PublicSurface.IsFSharp(typeof(IReadOnlyList<double>)));
        return Task.CompletedTask;
    }

    private static Task DefaultsAreTheCoresDefaults()
    {
        foreach (var strategy in ExperimentBuilder.KnownStrategies)
        {
            var usesBuffer = global::Continual.Methods.Registry.tryMethod(strategy).Value.UsesBuffer;
            foreach (var buffer in new[] { 200, 500, 5120 })
            {
                var expected = global::Continual.Experiment.defaults(strategy, buffer);
                var settings = new ExperimentBuilder().WithStrategy(strategy).WithBuffer(buffer).Settings;
                Assert.Equal(expected.Run.LearningRate, settings.LearningRate);
                Assert.Equal(expected.Run.BatchSize, settings.BatchSize);
                Assert.Equal(expected.Run.Epochs, settings.Epochs);
                Assert.Equal(expected.Run.WeightDecay, settings.WeightDecay);
                Assert.Equal(Microsoft.FSharp.Core.OptionModule.ToNullable(expected.Run.ClipGrad), settings.GradientClipping);
                Assert.Equal(usesBuffer ? buffer : 0, settings.BufferSize);
                Assert.Equal(strategy, settings.Strategy);
                Assert.Equal<PenaltySettings?>(null, settings.Penalty);
                Assert.Equal(0, settings.Distillation.Count);
                // Everything, including settings this façade does not name, is the core's default: the
                // canonical JSON is the same.
                Assert.Equal(global::Continual.ConfigModule.toJson(expected), settings.ToJson());
            }
        }
        // ... and without WithBuffer the buffer is the default size (as on the command line).
        var sgd = new ExperimentBuilder().WithStrategy("sgd").Settings;
        Assert.Equal(0, sgd.BufferSize);
        var untouched = new ExperimentBuilder().Settings;
        Assert.Equal(ExperimentBuilder.DefaultStrategy, untouched.Strategy);
        Assert.Equal(ExperimentBuilder.DefaultBufferSize, untouched.BufferSize);
        Assert.Equal(global::Continual.Data.Benchmarks.defaultFashionMnistFolder, untouched.DataFolder);
        Assert.Equal<int?>(null, untouched.TrainPerClass);
        Assert.Equal("mlp", untouched.Backbone);
        Assert.Equal(global::Continual.ConfigModule.toJson(global::Continual.Experiment.defaults("derpp", 500)), untouched.ToJson());
        return Task.CompletedTask;
    }
    private static Task EveryWithMethodSetsItsField()
    {
        var s = new ExperimentBuilder()
            .WithStrategy(" DER ")
            .WithBuffer(321)
            .WithBenchmark("split-mnist")
            .WithDataFolder("/some/where")
            .WithLearningRate(0.0123)
            .WithBatchSize(7)
            .WithEpochs(3)
            .WithWeightDecay(0.001)
            .WithSeed(42)
            .WithDevice("cuda:1")
            .WithThreads(2)
            .WithTrainPerClass(11)
            .WithTestPerClass(5)
            .WithBackbone(" CNN ")
            .WithGradientClipping(0.5)
            .WithPenalty(Penalties.Mas(lambda: 0.25))
            .WithDistillation(Distillation.Nst().WithWeight(0.75))
            .Settings;
        Assert.Equal("der", s.Strategy);
        Assert.Equal(321, s.BufferSize);
        Assert.Equal("split-mnist", s.Benchmark);
        Assert.Equal("/some/where", s.DataFolder);
        Assert.Equal(0.0123, s.LearningRate);
        Assert.Equal(7, s.BatchSize);
        Assert.Equal(3, s.Epochs);
        Assert.Equal(0.001, s.WeightDecay);
        Assert.Equal(42L, s.Seed);
        Assert.Equal("cuda:1", s.Device);
        Assert.Equal(2, s.Threads);
        Assert.Equal<int?>(11, s.TrainPerClass);
        Assert.Equal<int?>(5, s.TestPerClass);
        Assert.Equal("cnn", s.Backbone);
        Assert.Equal<double?>(0.5, s.GradientClipping);
        Assert.Equal(321, ((DerSettings)s.Method).BufferSize);
        Assert.Equal(0.25, ((MasSettings)s.Penalty!).Lambda);
        Assert.Equal(0.75, ((NstDistillation)s.Distillation.Single()).Weight);
        // The JSON is the core's canonical form, so it names the same values.
        using var json = JsonDocument.Parse(s.ToJson());
        var root = json.RootElement;
        Assert.Equal(321, root.GetProperty("method").GetProperty("buffer").GetInt32());
        Assert.Equal(11, root.GetProperty("data").GetProperty("trainPerClass").GetInt32());
        Assert.Equal(0.0123, root.GetProperty("run").GetProperty("learningRate").GetDouble());
        Assert.Equal(0.5, root.GetProperty("run").GetProperty("clipGrad").GetDouble());
        Assert.Equal("mas", root.GetProperty("penalty").GetProperty("name").GetString());
        Assert.Equal("nst", root.GetProperty("distillation")[0].GetProperty("name").GetString());
        // Setting an optional value back to null means "all" / "none".
        Assert.Equal<int?>(null, new ExperimentBuilder().WithTrainPerClass(11).WithTrainPerClass(null).Settings.TrainPerClass);
        Assert.Equal<double?>(null, new ExperimentBuilder().WithPenalty("si").WithGradientClipping(null).Settings.GradientClipping);
        Assert.Equal(0, new ExperimentBuilder().WithDistillation(Distillation.Pod()).WithoutDistillation().Settings.Distillation.Count);
        return Task.CompletedTask;
    }
    private static Task WithOptionMapsOntoFields()
    {
        var s = new ExperimentBuilder()
            .WithOption("lr", 0.5)
            .WithOption("weight-decay", 0.25)
            .WithOption("Alpha", 2)
            .WithOption("minibatch", 64)
            .WithOption("train_per_class", 30)
            .WithOption("seed", 9)
            .WithOption("device", "cpu")
            .WithOption("clip-grad", "0.75")
            .Settings;
        Assert.Equal(0.5, s.LearningRate);
        Assert.Equal(0.25, s.WeightDecay);
        var derpp = (DerppSettings)s.Method;
        Assert.Equal(2.0, derpp.Alpha);
        Assert.Equal(64, derpp.Minibatch);
        Assert.Equal<int?>(30, s.TrainPerClass);
        Assert.Equal(9L, s.Seed);
        Assert.Equal<double?>(0.75, s.GradientClipping);
        // Strategy and buffer given by name choose the defaults exactly as their own methods do.
        var byName = new ExperimentBuilder().WithOption("strategy", "der").WithOption("buffer", 200).Settings;
        var typed = new ExperimentBuilder().WithStrategy("der").WithBuffer(200).Settings;
        Assert.Equal(typed.ToJson(), byName.ToJson());
        // Names that are no option, values an option cannot hold, and settings nothing in the
        // configuration has are reported, not ignored.
        var bad = new ExperimentBuilder()
            .WithDataFolder(TestData.Folder)
            .WithOption("warmth", 2.0)
            .WithOption("epochs", 2.5)
            .WithOption("batch-size", 1e12)
            .WithOption("lr", "fast")
            .Validate();
        Assert.Contains("unknown option 'warmth'", bad);
        Assert.Contains("whole number", bad);
        Assert.Contains("out of range", bad);
        Assert.Contains("'fast'", bad);
        Assert.Equal(4, bad.Count);
        var notApplicable = new ExperimentBuilder().WithDataFolder(TestData.Folder).WithStrategy("sgd").WithOption("alpha", 1).Validate();
        Assert.Contains("option 'alpha' does not apply", notApplicable);
        var unparsable = new ExperimentBuilder().WithDataFolder(TestData.Folder).WithOption("minibatch", 2.5).Validate();
        Assert.Contains("whole number (got '2.5')", unparsable);
        Assert.Contains("WithOption(\"minibatch\"", unparsable);
        // A later valid choice of the same option replaces the unusable one.
        var fixedUp = new ExperimentBuilder().WithDataFolder(TestData.Folder).WithOption("epochs", 2.5).WithEpochs(2);
        Assert.True(fixedUp.Validate().Count == 0, string.Join("; ", fixedUp.Validate()));
        Assert.Equal(2, fixedUp.Settings.Epochs);
        var bufferByName = new ExperimentBuilder().WithDataFolder(TestData.Folder).WithOption("buffer", 1.5);
        Assert.Contains("whole number", bufferByName.Validate());
        Assert.True(bufferByName.WithBuffer(200).Validate().Count == 0);
        var minibatchFixed = new ExperimentBuilder().WithDataFolder(TestData.Folder).WithOption("minibatch", "x").WithOption("minibatch", 16);
        Assert.True(minibatchFixed.Validate().Count == 0, string.Join("; ", minibatchFixed.Validate()));
        Assert.Equal(16, ((DerppSettings)minibatchFixed.Settings.Method).Minibatch);
        foreach (var name in new[] { "learningRate", "batchSize", "clipGrad", "alpha", "lambda", "fisherAlpha", "temperature", "scp-batch" })
            Assert.True(ExperimentBuilder.OptionNames.Contains(name), $"OptionNames lacks {name}");
        Assert.True(ExperimentBuilder.OptionNames.Distinct().Count() == ExperimentBuilder.OptionNames.Count, "OptionNames has duplicates");
        // Every listed name is accepted.
        foreach (var name in ExperimentBuilder.OptionNames)
            Assert.True(!new ExperimentBuilder().WithOption(name, "1").Validate().Any(e => e.Contains("unknown option")), $"{name} is listed but unknown");
        return Task.CompletedTask;
    }
    private static Task ConversionsToFieldTypes()
    {
        Assert.True(Options.TryInt(2.0, out var two, out _) && two == 2);
        Assert.True(Options.TryInt("30", out var thirty, out _) && thirty == 30);
        Assert.True(Options.TryLong(3e9, out var big, out _) && big == 3_000_000_000L);
        Assert.True(Options.TryDouble("0.5", out var half, out _) && half == 0.5);
        Assert.True(Options.TryText("cpu", out var text, out _) && text == "cpu");
        string? error;
        Assert.True(!Options.TryInt(2.5, out _, out error) && error!.Contains("whole number"), error);
        Assert.True(!Options.TryLong(double.NaN, out _, out error) && error!.Contains("whole number"), error);
        Assert.True(!Options.TryInt(3e9, out _, out error) && error!.Contains("out of range"), error);
        Assert.True(!Options.TryLong(1e300, out _, out error) && error!.Contains("out of range"), error);
        Assert.True(!Options.TryDouble("fast", out _, out error) && error!.Contains("number") && error.Contains("'fast'"), error);
        Assert.True(!Options.TryText(2.0, out _, out error) && error!.Contains("text"), error);
        Assert.True(Options.IsNone("none") && Options.IsNone(" None ") && !Options.IsNone(0.0) && !Options.IsNone("0"));
        // Values reach the core's settings as invariant text.
        Assert.Equal("0.1", Options.Text(0.1));
        Assert.Equal("1E+300", Options.Text(1e300));
        // Names: any case, '-' or '_', and the command line's short names.
        Assert.Equal<(string, string)?>(("weightDecay", "WithWeightDecay"), Options.BuilderOption("weight-decay"));
        Assert.Equal<(string, string)?>(("learningRate", "WithLearningRate"), Options.BuilderOption("LR"));
        Assert.Equal<(string, string)?>(("trainPerClass", "WithTrainPerClass"), Options.BuilderOption("train_per_class"));
        Assert.Equal<(string, string)?>(("dataFolder", "WithDataFolder"), Options.BuilderOption("data"));
        Assert.Equal<(string, string)?>(null, Options.BuilderOption("warmth"));
        // The method's, penalty's and distillation terms' settings, by the core's matching rule.
        Assert.Equal("fisher-alpha", Options.ComponentOption("fisher-alpha"));
        Assert.Equal("FisherAlpha", Options.ComponentOption("FisherAlpha"));
        Assert.Equal("distill-weight", Options.ComponentOption("distill-weight"));
        Assert.Equal("warmup_epochs", Options.ComponentOption("warmup_epochs"));
        // A command-line name in another spelling is handed to the core as the command line spells it.
        Assert.Equal("scp-alpha", Options.ComponentOption("SCP_Alpha"));
        Assert.Equal<string?>(null, Options.ComponentOption("warmth"));
        var scp = (ScpSettings)new ExperimentBuilder().WithMethod(Methods.Scp()).WithOption("ScpAlpha", 0.25).Settings.Method;
        Assert.Equal(0.25, scp.Alpha);
        // Every builder option has a setter of that name on the builder.
        foreach (var (name, _, setter) in Options.BuilderOptions)
            Assert.True(typeof(ExperimentBuilder).GetMethods().Any(m => m.Name == setter), $"{name}: no ExperimentBuilder.{setter}");
        return Task.CompletedTask;
    }

    private static Task BuilderIsImmutable()
    {
        var basis = new ExperimentBuilder().WithStrategy("er");
        var seeded = basis.WithSeed(5).WithLearningRate(0.2);
        var other = basis.WithOption("nonsense", 1);
        var typed = basis.WithMethod(Methods.Der(buffer: 200));
        Assert.Equal(0L, basis.Settings.Seed);
        Assert.Equal(global::Continual.Experiment.defaults("er", 500).Run.LearningRate, basis.Settings.LearningRate);
        Assert.Equal(5L, seeded.Settings.Seed);
        Assert.Equal(0.2, seeded.Settings.LearningRate);
        Assert.True(!basis.WithDataFolder(TestData.Folder).Validate().Any(e => e.Contains("nonsense")));
        Assert.Contains("nonsense", other.Validate());
        Assert.Equal("er", basis.Settings.Strategy);
        Assert.Equal("der", typed.Settings.Strategy);
        // The settings records are immutable too: With… returns a changed copy.
        var derpp = Methods.Derpp(buffer: 200);
        var changed = derpp.WithAlpha(0.5).WithBeta(0.25).WithMinibatch(7);
        Assert.Equal(0.2, derpp.Alpha);
        Assert.Equal(1.0, derpp.Beta);
        Assert.Equal(128, derpp.Minibatch);
        Assert.Equal(0.5, changed.Alpha);
        var kd = Distillation.Kd();
        Assert.Equal(1.0, kd.Weight);
        Assert.Equal(0.5, kd.WithWeight(0.5).Weight);
        Assert.Equal(2.0, kd.WithWeight(0.5).Temperature);
        Assert.Equal(1.0, kd.Weight);
        // No public property of the façade can be set.
        var settable = typeof(ExperimentBuilder).Assembly.GetExportedTypes()
            .SelectMany(t => t.GetProperties())
            .Where(p => p.DeclaringType!.Assembly == typeof(ExperimentBuilder).Assembly && p.SetMethod is { IsPublic: true })
            .Select(p => $"{p.DeclaringType!.Name}.{p.Name}")
            .ToList();
        Assert.True(settable.Count == 0, "settable: " + string.Join(", ", settable));
        return Task.CompletedTask;
    }

    private static Task NullArgumentsAreRefused()
    {
        var b = new ExperimentBuilder();
        Assert.Throws<ArgumentNullException>(() => b.WithStrategy(null!));
        Assert.Throws<ArgumentNullException>(() => b.WithBenchmark(null!));
        Assert.Throws<ArgumentNullException>(() => b.WithDataFolder(null!));
        Assert.Throws<ArgumentNullException>(() => b.WithDevice(null!));
        Assert.Throws<ArgumentNullException>(() => b.WithOption(null!, 1.0));
        Assert.Throws<ArgumentNullException>(() => b.WithOption("device", (string)null!));
        Assert.Throws<ArgumentNullException>(() => b.WithBackbone(null!));
        Assert.Throws<ArgumentNullException>(() => b.WithMethod(null!));
        Assert.Throws<ArgumentNullException>(() => b.WithPenalty((PenaltySettings)null!));
        Assert.Throws<ArgumentNullException>(() => b.WithDistillation(null!));
        Assert.Throws<ArgumentOutOfRangeException>(() => Penalties.Ewc().WithFisher((FisherKind)42));
        return Task.CompletedTask;
    }

    private static Task ValidationRejectsBadOptions()
    {
        var good = Subset();
        Assert.True(good.Validate().Count == 0, "a valid configuration: " + string.Join("; ", good.Validate()));
        (ExperimentBuilder Builder, string Mentions)[] cases =
        [
            (good.WithStrategy("no-such-method"), "unknown strategy 'no-such-method'"),
            (good.WithBenchmark("imagenet-42"), "unknown benchmark 'imagenet-42'"),
            (good.WithStrategy("er").WithBuffer(0), "ER's buffer size must be positive (got 0) (WithBuffer)"),
            (good.WithBuffer(-5), "(WithBuffer)"),
            (good.WithMethod(Methods.Icarl(memory: 0)), "iCaRL's memory must be positive (got 0) (WithBuffer)"),
            (good.WithLearningRate(0), "the learning rate must be a positive number (got 0) (WithLearningRate)"),
            (good.WithLearningRate(double.NaN), "(WithLearningRate)"),
            (good.WithLearningRate(double.PositiveInfinity), "(WithLearningRate)"),
            (good.WithBatchSize(0), "(WithBatchSize)"),
            (good.WithMethod(Methods.Derpp().WithMinibatch(-1)), "DER++'s buffer minibatch must be positive (got -1) (DerppSettings.WithMinibatch)"),
            (good.WithEpochs(0), "(WithEpochs)"),
            (good.WithMethod(Methods.Der().WithAlpha(-0.1)), "(DerSettings.WithAlpha)"),
            (good.WithMethod(Methods.Derpp().WithBeta(double.NaN)), "(DerppSettings.WithBeta)"),
            (good.WithWeightDecay(-1), "(WithWeightDecay)"),
            (good.WithThreads(0), "(WithThreads)"),
            (good.WithTrainPerClass(0), "(WithTrainPerClass)"),
            (good.WithTestPerClass(-3), "(WithTestPerClass)"),
            (good.WithGradientClipping(0), "(WithGradientClipping)"),
            (good.WithDevice("tpu"), "unknown device 'tpu' (expected cpu or cuda) (WithDevice)"),
            (good.WithBackbone("vgg"), "unknown backbone 'vgg'"),
            (good.WithPenalty("lwf"), "unknown penalty 'lwf'"),
            (good.WithDataFolder(Path.Combine(TestData.Folder, "absent")), "does not exist (WithDataFolder)"),
        ];
        foreach (var (builder, mentions) in cases)
        {
            var errors = builder.Validate();
            Assert.True(errors.Count >= 1, $"no error for a configuration that should mention '{mentions}'");
            Assert.Contains(mentions, errors);
        }
        // Several problems are reported together.
        var many = good.WithBatchSize(0).WithEpochs(0).WithStrategy("nope").Validate();
        Assert.True(many.Count >= 3, $"{many.Count} errors: {string.Join("; ", many)}");
        return Task.CompletedTask;
    }

    private static Task RunRefusesInvalidConfiguration()
    {
        var builder = Subset().WithEpochs(0).WithOption("nonsense", 1);
        var recorder = new Recorder();
        var e = Assert.Throws<ExperimentValidationException>(() => builder.Run(recorder));
        Assert.True(e.Errors.SequenceEqual(builder.Validate()), "the exception carries Validate's messages");
        Assert.Contains("(WithEpochs)", e.Errors);
        Assert.Contains("nonsense", e.Errors);
        Assert.True(e is ArgumentException);
        Assert.Equal(0, recorder.Reports.Count);
        return Task.CompletedTask;
    }

    private static double Mean(IEnumerable<double> values) => values.Average();

    private static Task DerppMatrices()
    {
        var result = Shared.Value.Result;
        foreach (var (m, name) in new[] { (result.ClassIncremental, "class-il"), (result.TaskIncremental, "task-il") })
        {
            Assert.True(m.Count == 5 && m.All(r => r.Count == 5), $"{name} is {m.Count}x{m.FirstOrDefault()?.Count}");
            Assert.True(m.SelectMany(r => r).All(v => v >= 0 && v <= 100), $"{name} has values outside [0, 100]");
        }
        for (var i = 0; i < 5; i++)
            for (var j = 0; j < 5; j++)
                Assert.True(result.TaskIncremental[i][j] >= result.ClassIncremental[i][j],
                    $"Task-IL below Class-IL at [{i}][{j}]: masking to the task's classes can only help");
        // It learned: Task-IL (two classes, chance 50%) after the last task is far above chance.
        Assert.True(result.TaskIncrementalAverageAccuracy > 70, $"Task-IL average {result.TaskIncrementalAverageAccuracy}");
        // Metrics against a plain reference over the matrices.
        foreach (var (m, average, forgetting, bwt) in new[]
                 {
                     (result.ClassIncremental, result.ClassIncrementalAverageAccuracy, result.ClassIncrementalForgetting, result.ClassIncrementalBackwardTransfer),
                     (result.TaskIncremental, result.TaskIncrementalAverageAccuracy, result.TaskIncrementalForgetting, result.TaskIncrementalBackwardTransfer),
                 })
        {
            Assert.Close(Mean(m[4]), average, 1e-9);
            Assert.True(forgetting.HasValue && bwt.HasValue, "forgetting and BWT are defined for a 5x5 matrix");
            Assert.Close(Mean(Enumerable.Range(0, 4).Select(j => Enumerable.Range(0, 4).Max(i => m[i][j]) - m[4][j])), forgetting!.Value, 1e-9);
            Assert.Close(Mean(Enumerable.Range(0, 4).Select(j => m[4][j] - m[j][j])), bwt!.Value, 1e-9);
        }
        Assert.Equal(TestData.TrainPerClass * 10, result.TrainExamples);
        Assert.Equal(TestData.TestPerClass * 10, result.TestExamples);
        Assert.Equal((long)(result.TrainExamples / result.Settings.BatchSize), result.Steps);
        Assert.Equal(5, result.TaskTimes.Count);
        Assert.True(result.WallTime >= result.TrainingTime && result.TrainingTime > TimeSpan.Zero);
        Assert.Equal("derpp", result.Settings.Strategy);
        Assert.Equal(784, result.InputFeatures);
        Assert.True(result.TaskClasses.Select(t => string.Join(",", t)).SequenceEqual(["0,1", "2,3", "4,5", "6,7", "8,9"]));
        // The matrices are read-only views.
        Assert.True(result.ClassIncremental[0] is not double[] && result.ClassIncremental is not IReadOnlyList<double>[]);
        return Task.CompletedTask;
    }

    private static Task SameSeedSameMatrices()
    {
        var first = Shared.Value.Result;
        using var again = Subset().WithStrategy("derpp").WithBuffer(500).WithSeed(0).Run();
        Assert.Matrix(first.ClassIncremental, again.ClassIncremental, "class-il, same seed");
        Assert.Matrix(first.TaskIncremental, again.TaskIncremental, "task-il, same seed");
        using var other = Subset().WithStrategy("derpp").WithBuffer(500).WithSeed(1).Run();
        var same = first.ClassIncremental.Zip(other.ClassIncremental).All(p => p.First.SequenceEqual(p.Second));
        Assert.True(!same, "seed 1 gave exactly seed 0's Class-IL matrix: the seed is not applied");
        return Task.CompletedTask;
    }

    private static Task ProgressIsReported()
    {
        var (result, reports) = Shared.Value;
        Assert.True(reports.Count > 0, "no progress reported");
        var started = reports.Where(r => r.Kind == TrainingProgressKind.TaskStarted).ToList();
        var finished = reports.Where(r => r.Kind == TrainingProgressKind.TaskFinished).ToList();
        Assert.True(started.Select(r => r.Task).SequenceEqual([1, 2, 3, 4, 5]), "one TaskStarted per task, in order, counted from 1");
        Assert.True(finished.Select(r => r.Task).SequenceEqual([1, 2, 3, 4, 5]), "one TaskFinished per task, in order, counted from 1");
        Assert.Equal(result.Steps, (long)started.Sum(r => r.TotalSteps));
        for (var t = 1; t <= 5; t++)
        {
            var ofTask = reports.Where(r => r.Task == t).ToList();
            Assert.Equal(TrainingProgressKind.TaskStarted, ofTask[0].Kind);
            Assert.Equal(TrainingProgressKind.TaskFinished, ofTask[^1].Kind);
            var steps = ofTask.Where(r => r.Kind == TrainingProgressKind.StepsCompleted).ToList();
            Assert.True(steps.Count >= 1, $"task {t}: no StepsCompleted report");
            Assert.True(steps.All(s => s.MeanLoss is double l && double.IsFinite(l) && l >= 0), $"task {t}: loss not a finite non-negative number");
            Assert.Equal(ofTask[0].TotalSteps, steps[^1].CompletedSteps);
            Assert.Equal(1.0, ofTask[^1].Fraction);
            Assert.True(ofTask[^1].ClassIncrementalAccuracies!.SequenceEqual(result.ClassIncremental[t - 1]), $"task {t}: reported Class-IL differs from the matrix row");
            Assert.True(ofTask[^1].TaskIncrementalAccuracies!.SequenceEqual(result.TaskIncremental[t - 1]), $"task {t}: reported Task-IL differs from the matrix row");
            Assert.True(ofTask[^1].TaskTime > TimeSpan.Zero);
        }
        return Task.CompletedTask;
    }

    private static Task ResultsFilesAreWritten()
    {
        var result = Shared.Value.Result;
        var folder = Path.Combine(TestData.NewFolder("results"), "nested", "run");
        result.WriteResults(folder);
        var jsonPath = Path.Combine(folder, "results.json");
        var csvPath = Path.Combine(folder, "results.csv");
        Assert.True(File.Exists(jsonPath) && File.Exists(csvPath), "results.json and results.csv exist");
        Assert.True(Directory.GetFiles(folder).Length == 2, "no temporary files are left behind");
        using var json = JsonDocument.Parse(File.ReadAllText(jsonPath));
        var root = json.RootElement;
        Assert.Equal("derpp", root.GetProperty("config").GetProperty("method").GetProperty("name").GetString());
        Assert.Equal(result.Settings.ToJson(), JsonSerializer.Serialize(root.GetProperty("config")));
        Assert.Equal(result.Settings.Hash, root.GetProperty("configHash").GetString());
        var classIl = root.GetProperty("classIl").EnumerateArray().Select(r => r.EnumerateArray().Select(v => v.GetDouble()).ToList()).ToList();
        Assert.Equal(5, classIl.Count);
        for (var i = 0; i < 5; i++)
            for (var j = 0; j < 5; j++)
                Assert.Close(result.ClassIncremental[i][j], classIl[i][j], 1e-4);
        Assert.Close(result.ClassIncrementalAverageAccuracy,
            root.GetProperty("metrics").GetProperty("classIl").GetProperty("averageAccuracy").GetDouble(), 1e-4);
        Assert.Equal(result.Steps, root.GetProperty("timings").GetProperty("steps").GetInt64());
        var lines = File.ReadAllLines(csvPath);
        Assert.Equal("scenario,after_task,task,accuracy", lines[0]);
        Assert.Equal(1 + 25 + 25, lines.Length);
        var last = lines.Single(l => l.StartsWith("task-il,4,4,", StringComparison.Ordinal));
        Assert.Close(result.TaskIncremental[4][4], double.Parse(last.Split(',')[3], CultureInfo.InvariantCulture), 1e-4);
        // ToJson is the file's content up to the moment of writing.
        using var fromString = JsonDocument.Parse(result.ToJson());
        Assert.Equal(root.GetProperty("configHash").GetString(), fromString.RootElement.GetProperty("configHash").GetString());
        return Task.CompletedTask;
    }

    private static Task PredictAndDispose()
    {
        using var result = Subset().WithStrategy("er").WithBuffer(200).WithSeed(3).Run();
        var (images, labels) = TestData.TestSet();
        var size = images.Rows * images.Cols;
        for (var task = 0; task < 5; task++)
        {
            // Task j's test images, in file order, as the evaluation takes them.
            var rows = Enumerable.Range(0, labels.Length).Where(i => result.TaskClasses[task].Contains(labels[i])).ToList();
            var inputs = new float[rows.Count * size];
            for (var k = 0; k < rows.Count; k++)
                for (var p = 0; p < size; p++)
                    inputs[k * size + p] = images.Pixels[rows[k] * size + p] / 255f;
            var predicted = result.Predict(inputs);
            Assert.Equal(rows.Count, predicted.Length);
            Assert.True(predicted.All(c => c >= 0 && c < result.ClassCount));
            var accuracy = 100.0 * rows.Where((r, k) => predicted[k] == labels[r]).Count() / rows.Count;
            Assert.Close(result.ClassIncremental[4][task], accuracy, 1e-9);
            // Task-IL: the task is given (counted from 1) and the argmax runs over its classes only.
            var taskIl = result.Predict(inputs, task + 1);
            Assert.True(taskIl.All(c => result.TaskClasses[task].Contains(c)), "Task-IL predictions stay in the task's classes");
            var taskAccuracy = 100.0 * rows.Where((r, k) => taskIl[k] == labels[r]).Count() / rows.Count;
            Assert.Close(result.TaskIncremental[4][task], taskAccuracy, 1e-9);
            // Logits and probabilities agree with the predictions.
            var logits = result.PredictLogits(inputs);
            Assert.Equal(rows.Count * result.ClassCount, logits.Length);
            var probabilities = result.PredictProbabilities(inputs);
            var taskProbabilities = result.PredictProbabilities(inputs, task + 1);
            for (var k = 0; k < rows.Count; k++)
            {
                var row = Enumerable.Range(0, result.ClassCount).ToArray();
                Assert.Equal(predicted[k], row.MaxBy(c => logits[k * result.ClassCount + c]));
                Assert.Equal(predicted[k], row.MaxBy(c => probabilities[k * result.ClassCount + c]));
                Assert.Equal(taskIl[k], row.MaxBy(c => taskProbabilities[k * result.ClassCount + c]));
                Assert.Close(1.0, row.Sum(c => (double)probabilities[k * result.ClassCount + c]), 1e-5);
                Assert.Close(1.0, row.Sum(c => (double)taskProbabilities[k * result.ClassCount + c]), 1e-5);
                Assert.True(row.Where(c => !result.TaskClasses[task].Contains(c)).All(c => taskProbabilities[k * result.ClassCount + c] == 0f),
                    "Task-IL probabilities are 0 outside the task's classes");
            }
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => result.Predict(new float[result.InputFeatures], 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => result.Predict(new float[result.InputFeatures], result.TaskClasses.Count + 1));
        Assert.Throws<ArgumentException>(() => result.Predict(new float[result.InputFeatures + 1]));
        Assert.Equal(0, result.Predict(ReadOnlySpan<float>.Empty).Length);
        var before = result.ClassIncremental;
        result.Dispose();
        Assert.Throws<ObjectDisposedException>(() => result.Predict(new float[result.InputFeatures]));
        result.Dispose(); // a second Dispose is harmless
        Assert.True(ReferenceEquals(before, result.ClassIncremental), "figures stay readable after Dispose");
        result.WriteResults(TestData.NewFolder("after-dispose"));
        return Task.CompletedTask;
    }

    private static long LiveTensors()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return TorchSharp.torch.Tensor.TotalCount;
    }

    private static Task DisposeFreesTensors()
    {
        var builder = Subset().WithStrategy("derpp").WithBuffer(200).WithTrainPerClass(20).WithTestPerClass(10);
        builder.Run().Dispose(); // warm-up: anything libtorch keeps once per process
        // TorchSharp's live count drifts when a module is made (a parameter takes over its first tensor's
        // handle without counting down): measure that drift on a bare model of the same architecture.
        var bare = LiveTensors();
        global::Continual.Models.Backbones.create(global::Continual.Models.Backbones.referenceMlp).Dispose();
        var drift = LiveTensors() - bare;
        var before = LiveTensors();
        var result = builder.Run();
        var held = LiveTensors();
        Assert.True(result.Architecture == "mlp 784-100-100-10", result.Architecture);
        Assert.True(held > before + drift, $"a finished run holds its model and buffer ({held} live tensors, {before} before)");
        result.Dispose();
        var after = LiveTensors();
        // A new run makes two modules: its model and the frozen copy of the untrained model that is
        // evaluated beside the first task (forward transfer's baseline); each drifts the count as a bare one.
        Assert.True(after - before == 2 * drift,
            $"after Dispose {after - before} tensors more than before the run; its two modules account for {2 * drift}");
        Console.WriteLine($"     live tensors: {before} before, {held} while the result is held, {after} after Dispose (drift {drift})");
        // Diagnostic only: what a cancelled run leaves to the finalizers.
        using var source = new CancellationTokenSource();
        var recorder = new Recorder(r => { if (r.Kind == TrainingProgressKind.TaskFinished && r.Task == 1) source.Cancel(); });
        var leftBefore = LiveTensors();
        Assert.Throws<OperationCanceledException>(() => builder.Run(recorder, source.Token));
        Console.WriteLine($"     a cancelled run leaves {LiveTensors() - leftBefore - drift} tensors alive after a garbage collection");
        return Task.CompletedTask;
    }

    private static Task JointHasOneRow()
    {
        using var result = Subset().WithStrategy("joint").Run();
        Assert.Equal(1, result.ClassIncremental.Count);
        Assert.Equal(5, result.ClassIncremental[0].Count);
        Assert.Equal<double?>(null, result.ClassIncrementalForgetting);
        Assert.Equal<double?>(null, result.TaskIncrementalBackwardTransfer);
        Assert.Equal(0, result.Settings.BufferSize);
        Assert.Equal((long)(result.TrainExamples / result.Settings.BatchSize), result.Steps);
        return Task.CompletedTask;
    }

    private static Task LectureBaselines()
    {
        foreach (var name in new[] { "finetune-fc", "feature-extraction", "lfl" })
        {
            using var result = Subset().WithStrategy(name).WithTrainPerClass(20).WithTestPerClass(10).Run();
            Assert.Equal(5, result.ClassIncremental.Count);
            using var json = JsonDocument.Parse(result.ToJson());
            var footprint = json.RootElement.GetProperty("footprint");
            Assert.Equal(5, footprint.GetArrayLength());
            var snapshots = footprint[4].GetProperty("bytes").GetProperty("snapshots").GetInt64();
            Assert.True(name == "lfl" ? snapshots > 0 : snapshots == 0, $"{name}: snapshots {snapshots}");
            Assert.Equal(JsonValueKind.Number, json.RootElement.GetProperty("metrics").GetProperty("taskIl").GetProperty("forwardTransfer").ValueKind);
        }
        using (var multi = Subset().WithStrategy("lwf").WithMultiHead().WithTrainPerClass(20).WithTestPerClass(10).Run())
            Assert.True(multi.TaskIncremental[^1].Average() > 50, "Task-IL above chance with one head per task");
        var problems = Subset().WithStrategy("derpp").WithMultiHead().Validate();
        Assert.True(problems.Any(p => p.Contains("one head per task")), string.Join("; ", problems));
        return Task.CompletedTask;
    }

    private static Task PerClassLimits()
    {
        using var result = Subset().WithStrategy("sgd").WithTrainPerClass(30).WithTestPerClass(7).WithBatchSize(4).Run();
        Assert.Equal(300, result.TrainExamples);
        Assert.Equal(70, result.TestExamples);
        // 60 examples per task in batches of 4.
        Assert.Equal(5L * 15, result.Steps);
        // Each test set has 14 examples, so every accuracy is a multiple of 100/14.
        Assert.True(result.ClassIncremental.SelectMany(r => r).All(v => Math.Abs(v * 14 / 100 - Math.Round(v * 14 / 100)) < 1e-9));
        return Task.CompletedTask;
    }

    private static Task EveryKnownStrategyRuns()
    {
        Assert.True(ExperimentBuilder.KnownStrategies.Count >= 5);
        foreach (var name in ExperimentBuilder.KnownStrategies)
        {
            // Without ONNX export: on 20 examples a class EWC's default λ grows logits for which ONNX Runtime and
            // TorchSharp differ by about 1e-3, above the export's absolute tolerance 1e-4 (the export checks cover ONNX).
            var builder = Subset().WithStrategy(name).WithBuffer(50).WithTrainPerClass(20).WithTestPerClass(10).WithoutOnnxExport();
            Assert.True(builder.Validate().Count == 0, $"{name}: {string.Join("; ", builder.Validate())}");
            ExperimentResult result;
            try { result = builder.Run(); }
            catch (Exception e) { throw new InvalidOperationException($"{name}: {e.Message}", e); }
            using var _ = result;
            Assert.Equal(name, result.Settings.Strategy);
            Assert.True(result.ClassIncremental.Count is 1 or 5, $"{name}: {result.ClassIncremental.Count} rows");
            Assert.True(result.ClassIncremental.All(r => r.Count == 5 && r.All(v => v >= 0 && v <= 100)), $"{name}: bad matrix");
        }
        return Task.CompletedTask;
    }

    private static Task DistillationByOption()
    {
        var builder = Subset().WithStrategy("der").WithBuffer(50).WithTrainPerClass(20).WithTestPerClass(10)
            .WithOption("distill", "sd").WithOption("distill-weight", 0.5).WithOption("backbone", "cnn");
        Assert.True(builder.Validate().Count == 0, string.Join("; ", builder.Validate()));
        using var result = builder.Run();
        var term = (SubspaceDistillation)result.Settings.Distillation.Single();
        Assert.Equal("sd", term.Name);
        Assert.Equal(0.5, term.Weight);
        Assert.Equal(2, term.Dimension);
        Assert.True(result.Architecture.StartsWith("cnn"), result.Architecture);
        Assert.Contains("unknown distillation term 'nope'", Subset().WithOption("distill", "nope").Validate());
        Assert.Equal(0, Subset().WithOption("distill", "kd").WithOption("distill", "none").Settings.Distillation.Count);
        return Task.CompletedTask;
    }
    private static Task PenaltyWithDefaults()
    {
        // The method's defaults come with the penalty, as with the command line's --penalty ...
        var expected = global::Continual.Experiment.withPenalty(
            Microsoft.FSharp.Core.FSharpOption<string>.Some("si"), global::Continual.Experiment.defaults("derpp", 500));
        var si = new ExperimentBuilder().WithStrategy("derpp").WithPenalty("SI").Settings;
        Assert.Equal(global::Continual.ConfigModule.toJson(expected), si.ToJson());
        Assert.Equal("si", si.Penalty!.Name);
        Assert.Equal(1.0, ((SiSettings)si.Penalty).C);
        Assert.Equal<double?>(1.0, si.GradientClipping);
        // ... whichever way it is named, and options set by name win whatever their order.
        var byOption = new ExperimentBuilder().WithStrategy("derpp").WithOption("lambda", 2.5).WithOption("penalty", "si").Settings;
        Assert.Equal(2.5, ((SiSettings)byOption.Penalty!).C);
        var scp = (ScpSettings)new ExperimentBuilder().WithStrategy("der").WithPenalty("scp").Settings.Penalty!;
        Assert.Equal(3.0, scp.Lambda);
        Assert.Equal(0.9, scp.Alpha);
        Assert.Equal<PenaltySettings?>(null, new ExperimentBuilder().WithPenalty("si").WithPenalty((string?)null).Settings.Penalty);
        Assert.Equal<PenaltySettings?>(null, new ExperimentBuilder().WithPenalty(Penalties.Si()).WithoutPenalty().Settings.Penalty);
        Assert.Equal<PenaltySettings?>(null, new ExperimentBuilder().WithPenalty("si").WithOption("penalty", "none").Settings.Penalty);
        Assert.Contains("unknown penalty", Subset().WithPenalty("lwf").Validate());
        // An unknown penalty leaves no configuration to describe.
        Assert.Throws<ExperimentValidationException>(() => _ = Subset().WithPenalty("lwf").Settings);
        Assert.Contains("unknown penalty 'lwf'", [Subset().WithPenalty("lwf").ToString()]);
        // It runs: DER++ with SI on a subset.
        var builder = Subset().WithStrategy("derpp").WithBuffer(50).WithTrainPerClass(20).WithTestPerClass(10).WithPenalty("si");
        Assert.True(builder.Validate().Count == 0, string.Join("; ", builder.Validate()));
        using var result = builder.Run();
        Assert.Equal(5, result.TaskIncremental.Count);
        return Task.CompletedTask;
    }
    private static async Task RunAsyncMatchesRun()
    {
        var recorder = new Recorder();
        using var result = await Subset().WithStrategy("derpp").WithBuffer(500).WithSeed(0).RunAsync(recorder);
        Assert.Matrix(Shared.Value.Result.ClassIncremental, result.ClassIncremental, "class-il, async");
        Assert.Equal(5, recorder.Reports.Count(r => r.Kind == TrainingProgressKind.TaskFinished));
    }

    private static Task CancellationStopsTheRun()
    {
        using var source = new CancellationTokenSource();
        // Cancel as soon as task 2 has been trained and evaluated.
        var recorder = new Recorder(r =>
        {
            if (r.Kind == TrainingProgressKind.TaskFinished && r.Task == 2) source.Cancel();
        });
        var builder = Subset().WithStrategy("derpp").WithBuffer(500);
        Assert.Throws<OperationCanceledException>(() => builder.Run(recorder, source.Token));
        var afterCancel = recorder.Reports.SkipWhile(r => !(r.Kind == TrainingProgressKind.TaskFinished && r.Task == 2)).Skip(1).ToList();
        // The shell may announce task 3, but not a single step of it is completed.
        Assert.True(afterCancel.All(r => r.Kind == TrainingProgressKind.TaskStarted && r.Task == 3),
            "reports after cancelling: " + string.Join(" | ", afterCancel));
        Assert.Equal(2, recorder.Reports.Count(r => r.Kind == TrainingProgressKind.TaskFinished));
        // A run after a cancelled one works normally.
        using var next = Subset().WithStrategy("sgd").WithTrainPerClass(10).WithTestPerClass(5).Run();
        Assert.Equal(5, next.ClassIncremental.Count);
        return Task.CompletedTask;
    }

    private static Task PreCancelledTokenRunsNothing()
    {
        var recorder = new Recorder();
        Assert.Throws<OperationCanceledException>(() => Subset().Run(recorder, new CancellationToken(true)));
        Assert.Equal(0, recorder.Reports.Count);
        return Task.CompletedTask;
    }

    private static async Task RunAsyncCancellation()
    {
        using var source = new CancellationTokenSource();
        var recorder = new Recorder(r =>
        {
            if (r.Kind == TrainingProgressKind.TaskStarted && r.Task == 1) source.Cancel();
        });
        await Assert.ThrowsAsync<OperationCanceledException>(() => Subset().WithStrategy("er").RunAsync(recorder, source.Token));
        Assert.True(recorder.Reports.All(r => r.Kind == TrainingProgressKind.TaskStarted), "no step completed after cancelling");
        await Assert.ThrowsAsync<OperationCanceledException>(() => Subset().RunAsync(null, new CancellationToken(true)));
    }

    private static Task DataErrors()
    {
        var empty = TestData.NewFolder("empty");
        var missing = Assert.Throws<ContinualDataException>(() => Subset().WithDataFolder(empty).Run());
        Assert.True(missing.Path.StartsWith(empty, StringComparison.Ordinal), $"path {missing.Path}");
        Assert.True(missing is IOException);
        var corrupt = TestData.NewFolder("corrupt");
        foreach (var file in Directory.GetFiles(TestData.Folder)) File.Copy(file, Path.Combine(corrupt, Path.GetFileName(file)));
        var images = Path.Combine(corrupt, "t10k-images-idx3-ubyte");
        var bytes = File.ReadAllBytes(images);
        File.WriteAllBytes(images, bytes[..(bytes.Length - 100)]);
        var truncated = Assert.Throws<ContinualDataException>(() => Subset().WithDataFolder(corrupt).Run());
        Assert.Equal(images, truncated.Path);
        Assert.True(truncated.Reason.Contains("truncated"), truncated.Reason);
        return Task.CompletedTask;
    }
}
