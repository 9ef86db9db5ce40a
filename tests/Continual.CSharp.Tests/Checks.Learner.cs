namespace Continual.CSharp.Tests;

internal static partial class Checks
{
    private static readonly Type[] LearnerSurface =
    [
        typeof(Learner), typeof(LearnedTask), typeof(LearnerEvaluation), typeof(OnnxExportResult),
        typeof(LearnerFileException), typeof(OnnxExportException),
    ];

    private static List<(string Name, Func<Task> Body)> LearnerChecks =>
    [
        ("learner: saved after task 2 and loaded into a new object, it finishes with the uninterrupted run's matrices (DER++ with SI, LwF)", SavedAndResumedEqualsUninterrupted),
        ("learner: learning every task gives ExperimentBuilder.Run's matrices; Evaluate gives the last row", LearnerMatchesRun),
        ("learner: a missing, truncated or foreign learner file gives LearnerFileException naming it", LearnerFileErrors),
        ("learner: ExportOnnx refuses before any task, then writes a file that verifies on its own", ExportOnnxAfterATask),
        ("learner: one operation at a time; all tasks learned; Dispose during an operation", LearnerGuards),
        ("learner: a cancelled token before the task leaves the learner usable, during it makes it unusable", LearnerCancellation),
    ];

    private static ExperimentBuilder SmallLearner() =>
        Subset().WithTrainPerClass(60).WithTestPerClass(20).WithSeed(3);

    private static async Task<Learner> LearnAll(Learner learner)
    {
        while (learner.TasksLearned < learner.TaskCount) await learner.LearnTaskAsync();
        return learner;
    }

    private static async Task SavedAndResumedEqualsUninterrupted()
    {
        var folder = TestData.NewFolder("learner");
        var configurations = new (string Label, ExperimentBuilder Builder)[]
        {
            ("DER++ with SI", SmallLearner().WithMethod(Methods.Derpp(buffer: 50)).WithPenalty(Penalties.Si())),
            ("LwF", SmallLearner().WithMethod(Methods.Lwf())),
        };
        foreach (var (label, builder) in configurations)
        {
            IReadOnlyList<IReadOnlyList<double>> wholeClass, wholeTask;
            using (var whole = await LearnAll(builder.CreateLearner()))
            {
                wholeClass = whole.ClassIncremental;
                wholeTask = whole.TaskIncremental;
            }
            Assert.Equal(5, wholeClass.Count);

            var file = Path.Combine(folder, label.Replace(' ', '-'), Learner.DefaultFileName);
            IReadOnlyList<IReadOnlyList<double>> firstTwo;
            using (var first = builder.CreateLearner())
            {
                Assert.Equal(0, first.TasksLearned);
                Assert.Equal(5, first.TaskCount);
                var recorder = new Recorder();
                var task0 = await first.LearnTaskAsync(recorder);
                var task1 = await first.LearnTaskAsync(recorder);
                Assert.Equal(1, task0.Task);
                Assert.Equal(2, task1.Task);
                Assert.True(task1.ClassIncrementalAccuracies.SequenceEqual(first.ClassIncremental[1]), $"{label}: the task's row is the matrix's");
                Assert.Equal(2, recorder.Reports.Count(r => r.Kind == TrainingProgressKind.TaskFinished));
                Assert.Equal(2, recorder.Reports.Last().Task);
                // Exporting draws nothing from the run's streams: the resumed run below still equals the whole one.
                first.ExportOnnx(Path.Combine(folder, label.Replace(' ', '-'), "after-2.onnx"));
                await first.SaveAsync(file);
                firstTwo = first.ClassIncremental;
            }
            Assert.True(new FileInfo(file).Length > 0, $"{label}: {file} was written");

            using var resumed = await Learner.LoadAsync(file);
            Assert.Equal(2, resumed.TasksLearned);
            Assert.Equal(builder.Settings.ToJson(), resumed.Settings.ToJson());
            Assert.Matrix(firstTwo, resumed.ClassIncremental, $"{label}: the loaded learner's Class-IL rows");
            await LearnAll(resumed);
            Assert.Matrix(wholeClass, resumed.ClassIncremental, $"{label}: Class-IL, resumed vs uninterrupted");
            Assert.Matrix(wholeTask, resumed.TaskIncremental, $"{label}: Task-IL, resumed vs uninterrupted");
        }
    }

    private static async Task LearnerMatchesRun()
    {
        var builder = SmallLearner().WithStrategy("er").WithBuffer(50);
        using var result = builder.Run();
        using var learner = await LearnAll(builder.CreateLearner());
        Assert.Matrix(result.ClassIncremental, learner.ClassIncremental, "Class-IL, learner vs Run");
        Assert.Matrix(result.TaskIncremental, learner.TaskIncremental, "Task-IL, learner vs Run");
        Assert.Equal(result.Steps, learner.Steps);
        Assert.Equal(result.Architecture, learner.Architecture);
        Assert.Equal(result.BenchmarkName, learner.BenchmarkName);
        Assert.Equal(5, learner.TaskClasses.Count);
        var now = learner.Evaluate();
        Assert.True(now.ClassIncrementalAccuracies.SequenceEqual(learner.ClassIncremental[^1]), "Evaluate's Class-IL is the last row");
        Assert.True(now.TaskIncrementalAccuracies.SequenceEqual(learner.TaskIncremental[^1]), "Evaluate's Task-IL is the last row");
        Assert.True(learner.ToString().Contains("5 of 5"), learner.ToString());
    }

    private static async Task LearnerFileErrors()
    {
        var folder = TestData.NewFolder("learner-files");
        var missing = Path.Combine(folder, "nowhere.safetensors");
        var e = await Assert.ThrowsAsync<LearnerFileException>(() => Learner.LoadAsync(missing));
        Assert.Equal(missing, e.Path);
        Assert.True(e.Message.Contains(missing), e.Message);
        Assert.True(e is IOException);

        var whole = Path.Combine(folder, "whole.safetensors");
        using (var learner = SmallLearner().WithStrategy("sgd").CreateLearner())
        {
            await learner.LearnTaskAsync();
            await learner.SaveAsync(whole);
        }
        var bytes = await File.ReadAllBytesAsync(whole);
        foreach (var cut in new[] { bytes.Length - 1, bytes.Length / 2, 20, 3 })
        {
            var truncated = Path.Combine(folder, $"truncated-{cut}.safetensors");
            await File.WriteAllBytesAsync(truncated, bytes[..cut]);
            var t = await Assert.ThrowsAsync<LearnerFileException>(() => Learner.LoadAsync(truncated));
            Assert.Equal(truncated, t.Path);
            Assert.True(t.Message.StartsWith(truncated + ": "), t.Message);
            Assert.True(t.Reason.Length > 0, "a reason");
        }
        // One byte changed inside the tensors: the checksum catches it.
        var flipped = Path.Combine(folder, "flipped.safetensors");
        var changed = (byte[])bytes.Clone();
        changed[^10] ^= 0x55;
        await File.WriteAllBytesAsync(flipped, changed);
        var f = await Assert.ThrowsAsync<LearnerFileException>(() => Learner.LoadAsync(flipped));
        Assert.True(f.Reason.Contains("checksum"), f.Reason);
        // Not a learner file at all, and a folder.
        var foreign = Path.Combine(folder, "foreign.safetensors");
        await File.WriteAllTextAsync(foreign, "hello");
        Assert.Equal(foreign, (await Assert.ThrowsAsync<LearnerFileException>(() => Learner.LoadAsync(foreign))).Path);
        Assert.Equal(folder, (await Assert.ThrowsAsync<LearnerFileException>(() => Learner.LoadAsync(folder))).Path);
        // The whole file still loads.
        using var loaded = await Learner.LoadAsync(whole);
        Assert.Equal(1, loaded.TasksLearned);
    }

    private static async Task ExportOnnxAfterATask()
    {
        var folder = TestData.NewFolder("learner-onnx");
        var path = Path.Combine(folder, "sub", "model.onnx");
        using var learner = SmallLearner().WithMethod(Methods.Derpp(buffer: 50)).CreateLearner();
        var refused = Assert.Throws<InvalidOperationException>(() => learner.ExportOnnx(path));
        Assert.True(refused.Message.Contains("no task"), refused.Message);
        Assert.True(!File.Exists(path), "nothing written before a task");

        await learner.LearnTaskAsync();
        await learner.LearnTaskAsync();
        var export = learner.ExportOnnx(path);
        Assert.True(File.Exists(path), $"{path} exists");
        Assert.Equal(new FileInfo(path).Length, export.Bytes);
        Assert.True(export.Bytes > 0);
        Assert.Equal(Path.GetFullPath(path), export.Path);
        Assert.Equal(2, export.TasksLearned);
        Assert.True(export.MaxAbsDifference <= 1e-4, $"max difference {export.MaxAbsDifference}");
        Assert.Equal(5, export.TestExamples.Count);
        Assert.True(export.TestExamples.All(n => n == 2 * 20), "20 test images per class, 2 classes per task");
        // The file verifies on its own (the exporter's checks, again, from the file and the data folder), and
        // its metadata tells what the model has learned.
        var check = global::Continual.Onnx.FileCheck.verifyFile(global::Continual.Onnx.ProviderPreference.Auto, path, TestData.Folder);
        Assert.True(check.Reproduced, "the file's recorded counts are reproduced");
        Assert.Equal(2, check.Info.Task);
        Assert.Equal("derpp", check.Info.Strategy);
        Assert.Equal(learner.Settings.Hash, check.Info.ConfigHash);
        Assert.True(check.Info.ClassesSeen.SequenceEqual(learner.TaskClasses.Take(2).SelectMany(c => c).Order()), "classes seen");
    }

    private static async Task LearnerGuards()
    {
        // The training thread waits at the task's start until the checks made while it runs are done.
        using var checkedWhileRunning = new ManualResetEventSlim();
        var holdFirstTask = new Recorder(r =>
        {
            if (r.Kind == TrainingProgressKind.TaskStarted) checkedWhileRunning.Wait(TimeSpan.FromSeconds(60));
        });
        var learner = SmallLearner().WithStrategy("sgd").CreateLearner();
        var running = learner.LearnTaskAsync(holdFirstTask);
        var busy = Assert.Throws<InvalidOperationException>(() => learner.Evaluate());
        Assert.True(busy.Message.Contains("LearnTaskAsync"), busy.Message);
        await Assert.ThrowsAsync<InvalidOperationException>(() => learner.SaveAsync(Path.Combine(TestData.NewFolder("busy"), "x")));
        await Assert.ThrowsAsync<InvalidOperationException>(() => learner.LearnTaskAsync());
        Assert.Throws<InvalidOperationException>(() => learner.ExportOnnx("x.onnx"));
        checkedWhileRunning.Set();
        await running;
        Assert.Equal(1, learner.TasksLearned);
        while (learner.TasksLearned < learner.TaskCount) await learner.LearnTaskAsync();
        var done = await Assert.ThrowsAsync<InvalidOperationException>(() => learner.LearnTaskAsync());
        Assert.True(done.Message.Contains("all 5 tasks"), done.Message);
        learner.Dispose();
        learner.Dispose();
        Assert.Throws<ObjectDisposedException>(() => learner.Evaluate());
        await Assert.ThrowsAsync<ObjectDisposedException>(() => learner.LearnTaskAsync());
        Assert.Equal(5, learner.ClassIncremental.Count);

        // Disposed while it learns: the task finishes, then the learner frees everything it held, its data
        // included. (A module's creation leaves a drift in TorchSharp's live count: measured on a bare model.)
        var bare = LiveTensors();
        global::Continual.Models.Backbones.create(global::Continual.Models.Backbones.referenceMlp).Dispose();
        var drift = LiveTensors() - bare;
        var before = LiveTensors();
        using var disposedWhileRunning = new ManualResetEventSlim();
        var holdUntilDisposed = new Recorder(r =>
        {
            if (r.Kind == TrainingProgressKind.TaskStarted) disposedWhileRunning.Wait(TimeSpan.FromSeconds(60));
        });
        var other = SmallLearner().WithStrategy("sgd").CreateLearner();
        var learning = other.LearnTaskAsync(holdUntilDisposed);
        Assert.True(LiveTensors() > before + drift, "a learner holds its model and data");
        other.Dispose();
        disposedWhileRunning.Set();
        var learned = await learning;
        Assert.Equal(1, learned.Task);
        Assert.Throws<ObjectDisposedException>(() => other.ExportOnnx("x.onnx"));
        var after = LiveTensors();
        // The learner made two modules: its model and the untrained copy evaluated beside its first task.
        Assert.True(after - before == 2 * drift, $"after Dispose {after - before} tensors more than before the learner; its two modules account for {2 * drift}");
    }

    private static async Task LearnerCancellation()
    {
        using var learner = SmallLearner().WithStrategy("er").WithBuffer(50).CreateLearner();
        var before = learner.LearnTaskAsync(null, new CancellationToken(true));
        await Assert.ThrowsAsync<OperationCanceledException>(() => before);
        Assert.True(before.IsCanceled, $"status {before.Status}");
        Assert.Equal(0, learner.TasksLearned);
        await learner.LearnTaskAsync();
        Assert.Equal(1, learner.TasksLearned);

        using var source = new CancellationTokenSource();
        var recorder = new Recorder(r =>
        {
            if (r.Kind == TrainingProgressKind.TaskStarted) source.Cancel();
        });
        await Assert.ThrowsAsync<OperationCanceledException>(() => learner.LearnTaskAsync(recorder, source.Token));
        var unusable = Assert.Throws<InvalidOperationException>(() => learner.Evaluate());
        Assert.True(unusable.Message.Contains("saved learner file"), unusable.Message);
        Assert.Equal(1, learner.ClassIncremental.Count);
    }
}
