namespace Continual.CSharp;

/// <summary>
/// Exported ONNX models read back on their own, long after their run, as <c>continual verify</c> does.
/// </summary>
public static class OnnxModels
{
    /// <summary>
    /// Verifies a <c>task-k.onnx</c> file (a run's, or <see cref="Learner.ExportOnnx"/>'s) under ONNX Runtime
    /// against the test data it was measured on: reads its metadata, rebuilds each task's test set from
    /// <paramref name="dataFolder"/> (restricted per class as the run was) and recomputes the Class-IL and Task-IL
    /// correct counts the file records. <see cref="OnnxVerification.Reproduced"/> says whether they are equal.
    /// </summary>
    /// <param name="path">The .onnx file.</param>
    /// <param name="dataFolder">The folder with the benchmark's files (e.g. the four IDX files of Fashion-MNIST).</param>
    /// <exception cref="OnnxModelFileException">The file is missing, damaged, not one of ours, or does not fit the data.</exception>
    /// <exception cref="ContinualDataException">The data files are missing or unreadable.</exception>
    public static OnnxVerification Verify(string path, string dataFolder)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(dataFolder);
        try
        {
            var v = global::Continual.Onnx.FileCheck.verifyFile(global::Continual.Onnx.ProviderPreference.Auto, path, dataFolder);
            var info = v.Info;
            return new OnnxVerification(
                System.IO.Path.GetFullPath(path),
                info.Task,
                info.TaskCount,
                info.Strategy,
                info.Benchmark,
                info.Architecture,
                info.ConfigHash,
                v.Provider,
                Array.AsReadOnly((int[])v.TestExamples.Clone()),
                Array.AsReadOnly((int[])info.ClassIlCorrect.Clone()),
                Array.AsReadOnly((int[])info.TaskIlCorrect.Clone()),
                Array.AsReadOnly((int[])v.OnnxClassIlCorrect.Clone()),
                Array.AsReadOnly((int[])v.OnnxTaskIlCorrect.Clone()),
                v.Reproduced);
        }
        catch (Exception e) when (FacadeErrors.Translate(e) is { } translated)
        {
            throw translated;
        }
    }
}

/// <summary>What <see cref="OnnxModels.Verify"/> found: the file's own record and the counts recomputed under ONNX Runtime.</summary>
public sealed class OnnxVerification
{
    internal OnnxVerification(
        string path, int task, int taskCount, string strategy, string benchmark, string architecture, string configHash,
        string provider, IReadOnlyList<int> testExamples, IReadOnlyList<int> recordedClassIncrementalCorrect,
        IReadOnlyList<int> recordedTaskIncrementalCorrect, IReadOnlyList<int> classIncrementalCorrect,
        IReadOnlyList<int> taskIncrementalCorrect, bool reproduced)
    {
        Path = path;
        Task = task;
        TaskCount = taskCount;
        Strategy = strategy;
        Benchmark = benchmark;
        Architecture = architecture;
        ConfigHash = configHash;
        Provider = provider;
        TestExamples = testExamples;
        RecordedClassIncrementalCorrect = recordedClassIncrementalCorrect;
        RecordedTaskIncrementalCorrect = recordedTaskIncrementalCorrect;
        ClassIncrementalCorrect = classIncrementalCorrect;
        TaskIncrementalCorrect = taskIncrementalCorrect;
        Reproduced = reproduced;
    }

    /// <summary>The file verified (full path).</summary>
    public string Path { get; }

    /// <summary>The number of tasks the model had learned (the k of task-k.onnx), counted from 1.</summary>
    public int Task { get; }

    /// <summary>The number of tasks in the benchmark's stream.</summary>
    public int TaskCount { get; }

    /// <summary>The strategy of the run that exported it.</summary>
    public string Strategy { get; }

    /// <summary>The benchmark it learned.</summary>
    public string Benchmark { get; }

    /// <summary>The backbone, described.</summary>
    public string Architecture { get; }

    /// <summary>The hash of the run's configuration (results.json's).</summary>
    public string ConfigHash { get; }

    /// <summary>The ONNX Runtime execution provider the check ran on.</summary>
    public string Provider { get; }

    /// <summary>Test images of each task's test set, rebuilt from the data folder.</summary>
    public IReadOnlyList<int> TestExamples { get; }

    /// <summary>Correct Class-IL predictions on each task's test set, as the file records them (TorchSharp's).</summary>
    public IReadOnlyList<int> RecordedClassIncrementalCorrect { get; }

    /// <summary>Correct Task-IL predictions on each task's test set, as the file records them (TorchSharp's).</summary>
    public IReadOnlyList<int> RecordedTaskIncrementalCorrect { get; }

    /// <summary>Correct Class-IL predictions on each task's test set, recomputed under ONNX Runtime.</summary>
    public IReadOnlyList<int> ClassIncrementalCorrect { get; }

    /// <summary>Correct Task-IL predictions on each task's test set, recomputed under ONNX Runtime.</summary>
    public IReadOnlyList<int> TaskIncrementalCorrect { get; }

    /// <summary>True when the recomputed counts (and test set sizes) equal the recorded ones for every task.</summary>
    public bool Reproduced { get; }
}
