using System.Globalization;
using Microsoft.FSharp.Collections;
using CoreBenchmark = global::Continual.Data.Benchmark;
using CoreLearner = global::Continual.Learner;
using TaskSource = global::Continual.Data.TaskSource;

namespace Continual.CSharp;

/// <summary>
/// One task of your own data, to add to a learner with <see cref="Learner.LearnTaskAsync(TaskData, IProgress{TrainingProgress}?, CancellationToken)"/>
/// or to start one with <see cref="Learner.Create(ExperimentBuilder, TaskData)"/>: an image folder, a CSV or
/// <c>.npy</c> folder, one task of a manifest, or arrays in memory (docs/data.md describes every layout). Its classes
/// must be new to the learner; the classifier head grows for them.
/// </summary>
/// <remarks>
/// Nothing is read until a learner takes the task; images are then brought to the learner's input size and colour.
/// A learner file records where each task came from and reads it again when loaded, so keep the files in place.
/// Tasks given as arrays are not in any file: pass them again to
/// <see cref="Learner.LoadAsync(string, IReadOnlyDictionary{string, TaskData}, CancellationToken)"/> under their name.
/// </remarks>
public sealed class TaskData
{
    private readonly string _kind;
    private readonly string _path;
    private readonly Dictionary<string, string> _options;
    private readonly ArrayTask? _arrays;

    private sealed record ArrayTask(float[] Train, int[] TrainLabels, float[] Test, int[] TestLabels, int Features, IReadOnlyList<string> ClassNames);

    private TaskData(string kind, string path, Dictionary<string, string> options, ArrayTask? arrays = null)
    {
        _kind = kind;
        _path = path;
        _options = options;
        _arrays = arrays;
    }

    /// <summary>The kind of source: folder, csv, npy, manifest or arrays.</summary>
    public string Kind => _kind;

    /// <summary>Where the task is: a folder, <c>MANIFEST#N</c>, or the name of a task given as arrays.</summary>
    public string Location => _kind == "manifest" ? $"{_path}#{_options["entry"]}" : _path;

    /// <summary>
    /// An image folder in the one-subfolder-per-class layout (<c>train/&lt;class&gt;/*.png|jpg</c>,
    /// <c>test/&lt;class&gt;/…</c>); the class names are the subfolder names.
    /// </summary>
    /// <exception cref="ArgumentException">The path is empty.</exception>
    public static TaskData FromImageFolder(string path) => new("folder", FullPath(path), []);

    /// <summary>A folder holding <c>train.csv</c> and <c>test.csv</c>: a header row, a label column and numeric features.</summary>
    /// <param name="folder">The folder.</param>
    /// <param name="labelColumn">The label column's name (its values are the class names).</param>
    /// <param name="featureScale">Divide every feature by this (255 for pixel values), or null to read them as written.</param>
    /// <exception cref="ArgumentException">The folder or the column name is empty, or the scale is not a positive number.</exception>
    public static TaskData FromCsv(string folder, string labelColumn = "label", double? featureScale = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(labelColumn);
        return new("csv", FullPath(folder), TableOptions(labelColumn, featureScale));
    }

    /// <summary>A folder holding <c>x_train.npy</c>, <c>y_train.npy</c>, <c>x_test.npy</c> and <c>y_test.npy</c>.</summary>
    /// <param name="folder">The folder.</param>
    /// <param name="featureScale">Divide every feature by this, or null to read them as written.</param>
    /// <exception cref="ArgumentException">The folder is empty, or the scale is not a positive number.</exception>
    public static TaskData FromNpy(string folder, double? featureScale = null) =>
        new("npy", FullPath(folder), TableOptions(null, featureScale));

    /// <summary>Task <paramref name="task"/> (counted from 1) of a task-stream manifest (YAML or JSON).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="task"/> is less than 1.</exception>
    public static TaskData FromManifest(string path, int task)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(task, 1);
        return new("manifest", FullPath(path), new() { ["entry"] = task.ToString(CultureInfo.InvariantCulture) });
    }

    /// <summary>
    /// Features and labels in memory (e.g. embeddings from another model): one row per example. Labels are
    /// 0 .. k-1 within this task; every class needs training examples.
    /// </summary>
    /// <param name="trainFeatures">Training examples, one row each.</param>
    /// <param name="trainLabels">Their labels, 0 .. k-1.</param>
    /// <param name="testFeatures">Test examples, with as many columns as the training examples.</param>
    /// <param name="testLabels">Their labels, among the training labels.</param>
    /// <param name="classNames">The name of each label (default "label 0", "label 1", … prefixed with <paramref name="name"/>), new to the learner.</param>
    /// <param name="name">The task's name, under which a loaded learner asks for these arrays again.</param>
    /// <exception cref="ArgumentException">The arrays do not fit together (row counts, column counts, labels out of range or not named).</exception>
    public static TaskData FromArrays(
        float[,] trainFeatures, int[] trainLabels, float[,] testFeatures, int[] testLabels,
        IReadOnlyList<string>? classNames = null, string name = "arrays")
    {
        ArgumentNullException.ThrowIfNull(trainFeatures);
        ArgumentNullException.ThrowIfNull(trainLabels);
        ArgumentNullException.ThrowIfNull(testFeatures);
        ArgumentNullException.ThrowIfNull(testLabels);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        if (trainFeatures.GetLength(0) != trainLabels.Length)
            throw new ArgumentException($"{trainFeatures.GetLength(0)} training rows but {trainLabels.Length} training labels", nameof(trainLabels));
        if (testFeatures.GetLength(0) != testLabels.Length)
            throw new ArgumentException($"{testFeatures.GetLength(0)} test rows but {testLabels.Length} test labels", nameof(testLabels));
        if (trainLabels.Length == 0) throw new ArgumentException("the task has no training examples", nameof(trainLabels));
        if (testLabels.Length == 0) throw new ArgumentException("the task has no test examples", nameof(testLabels));
        var features = trainFeatures.GetLength(1);
        if (features == 0) throw new ArgumentException("the examples have no features", nameof(trainFeatures));
        if (testFeatures.GetLength(1) != features)
            throw new ArgumentException($"test examples have {testFeatures.GetLength(1)} features but the training examples have {features}", nameof(testFeatures));
        var negative = trainLabels.Concat(testLabels).FirstOrDefault(l => l < 0, 0);
        if (negative < 0) throw new ArgumentException($"label {negative} is negative: labels are 0 .. k-1", nameof(trainLabels));
        var classes = trainLabels.Max() + 1;
        var names = classNames?.ToArray() ?? Enumerable.Range(0, classes).Select(c => $"{name} label {c}").ToArray();
        if (names.Length != classes)
            throw new ArgumentException($"{names.Length} class names for labels 0 .. {classes - 1}: name each label once", nameof(classNames));
        if (names.Any(string.IsNullOrWhiteSpace)) throw new ArgumentException("a class name is empty", nameof(classNames));
        var arrays = new ArrayTask(Flatten(trainFeatures), (int[])trainLabels.Clone(), Flatten(testFeatures), (int[])testLabels.Clone(), features, names);
        return new("arrays", name, [], arrays);
    }

    /// <inheritdoc />
    public override string ToString() => $"{_kind} {Location}";

    /// <summary>Where the task is and its data, read to fit the learner (the caller frees the benchmark).</summary>
    internal (TaskSource Source, CoreBenchmark Task) Load(CoreLearner learner)
    {
        var source = SourceFor(learner);
        return (source, Read(source));
    }

    /// <summary>Where the task is, with the options that make its data fit the learner (none without one).</summary>
    internal TaskSource SourceFor(CoreLearner? learner)
    {
        var options = learner is null ? MapModule.Empty<string, string>() : global::Continual.LearnerModule.taskOptions(learner);
        foreach (var (key, value) in _options) options = options.Add(key, value);
        return new TaskSource(_kind, _path, options);
    }

    /// <summary>The task's data as a one-task benchmark.</summary>
    internal CoreBenchmark Read(TaskSource source) =>
        _arrays is { } a ? ArraysBenchmark(a, _path) : global::Continual.Data.TaskLoaders.load(source);

    private static CoreBenchmark ArraysBenchmark(ArrayTask a, string name)
    {
        var train = global::Continual.Data.Benchmarks.ofFloats(a.Train, a.Features, a.TrainLabels);
        var test = global::Continual.Data.Benchmarks.ofFloats(a.Test, a.Features, a.TestLabels);
        var classes = a.ClassNames.Count;
        return new CoreBenchmark(
            name,
            new Tuple<int, int, int>(1, 1, a.Features),
            classes,
            ListModule.OfSeq(a.ClassNames),
            train,
            test,
            ListModule.OfSeq([new global::Continual.Data.TaskSpec(0, ListModule.OfSeq(Enumerable.Range(0, classes)))]));
    }

    private static float[] Flatten(float[,] values)
    {
        var flat = new float[values.Length];
        Buffer.BlockCopy(values, 0, flat, 0, values.Length * sizeof(float));
        return flat;
    }

    private static string FullPath(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        return Path.GetFullPath(path);
    }

    private static Dictionary<string, string> TableOptions(string? labelColumn, double? featureScale)
    {
        var options = new Dictionary<string, string>();
        if (labelColumn is not null) options["labelColumn"] = labelColumn;
        if (featureScale is { } scale)
        {
            if (!(scale > 0) || !double.IsFinite(scale))
                throw new ArgumentException($"the feature scale must be a positive number (got {scale})", nameof(featureScale));
            options["featureScale"] = scale.ToString("R", CultureInfo.InvariantCulture);
        }
        return options;
    }
}
