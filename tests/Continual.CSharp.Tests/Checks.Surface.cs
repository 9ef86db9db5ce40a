using System.Reflection;
using System.Runtime.InteropServices;

namespace Continual.CSharp.Tests;

/// <summary>
/// The façade's exceptions: every exception type its code constructs is a .NET type that is documented,
/// every exception type of the F# core and of Continual.Onnx is translated at the façade's boundary, and a
/// run or learner that diverges gets the façade's <see cref="TrainingDivergedException"/>.
/// </summary>
internal static partial class Checks
{
    private static List<(string Name, Func<Task> Body)> SurfaceChecks =>
    [
        ("surface: every exception the façade constructs is a documented .NET type", FacadeExceptionsAreDocumentedDotNetTypes),
        ("surface: the exception scan finds what the core and the façade construct", ExceptionScanFindsConstructions),
        ("surface: every exception type of the core and of Continual.Onnx is translated at the façade's boundary", EveryCoreExceptionIsTranslated),
        ("surface: a diverging run throws TrainingDivergedException, its task counted from 1", DivergingRunThrowsDotNetException),
        ("surface: a diverging learner throws TrainingDivergedException and is then refused", DivergingLearnerThrowsDotNetException),
        ("cancel: a token cancelled while the data loads ends Run while the load is still blocked", CancellationObservedWhileLoading),
        ("cancel: a token cancelled while Learner.LoadAsync or Create reads the data ends it while the load is still blocked", LoadAsyncObservesCancellationWhileLoading),
    ];

    private static Assembly Facade => typeof(ExperimentBuilder).Assembly;

    private static readonly Lazy<string> FacadeXmlDocs = new(() =>
        File.ReadAllText(Path.ChangeExtension(Facade.Location, ".xml")));

    private static readonly Lazy<string> CSharpGuide = new(() =>
    {
        // docs/csharp.md, found from the test binary's folder upwards (the repository's root).
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var guide = Path.Combine(dir.FullName, "docs", "csharp.md");
            if (File.Exists(guide)) return File.ReadAllText(guide);
        }
        throw new FileNotFoundException("docs/csharp.md was not found above " + AppContext.BaseDirectory);
    });

    private static Task FacadeExceptionsAreDocumentedDotNetTypes()
    {
        var problems = new List<string>();
        foreach (var (type, where) in PublicSurface.ConstructedExceptions(Facade))
        {
            if (PublicSurface.IsFSharp(type))
                problems.Add($"{where} constructs the F# exception {type.FullName}");
            else if (type.Assembly == Facade)
            {
                if (!type.IsPublic) problems.Add($"{where} constructs {type.FullName}, which callers cannot catch by type");
                if (!FacadeXmlDocs.Value.Contains($"\"T:{type.FullName}\"", StringComparison.Ordinal))
                    problems.Add($"{type.FullName} has no XML documentation");
                if (!CSharpGuide.Value.Contains(type.Name, StringComparison.Ordinal))
                    problems.Add($"{type.FullName} is not named in docs/csharp.md");
            }
            else if (!(type.Namespace ?? "").StartsWith("System", StringComparison.Ordinal) || type.Assembly.GetName().Name!.StartsWith("Continual", StringComparison.Ordinal))
                problems.Add($"{where} constructs {type.FullName} ({type.Assembly.GetName().Name}), neither the façade's nor .NET's");
        }
        Assert.True(problems.Count == 0, string.Join("\n", problems));
        return Task.CompletedTask;
    }

    private static Task ExceptionScanFindsConstructions()
    {
        // The scan must see what is there, or the check above proves nothing: the core constructs its F#
        // exceptions, and the façade constructs its own.
        var core = PublicSurface.ConstructedExceptions(typeof(global::Continual.Config).Assembly).Keys;
        Assert.True(core.Contains(typeof(global::Continual.Data.DataFileError)), "the scan finds DataFileError in the core");
        Assert.True(core.Contains(typeof(global::Continual.TrainingDiverged)), "the scan finds TrainingDiverged in the core");
        Assert.True(core.Any(PublicSurface.IsFSharp));
        var facade = PublicSurface.ConstructedExceptions(Facade).Keys;
        foreach (var expected in new[] { typeof(ContinualDataException), typeof(LearnerFileException), typeof(OnnxExportException),
                                         typeof(TrainingDivergedException), typeof(ExperimentValidationException), typeof(ArgumentException) })
            Assert.True(facade.Contains(expected), $"the scan finds {expected.Name} in the façade");
        return Task.CompletedTask;
    }

    /// <summary>Every exception type defined in the core's and Continual.Onnx's assemblies.</summary>
    private static IEnumerable<Type> CoreExceptionTypes() =>
        new[] { typeof(global::Continual.Config).Assembly, typeof(global::Continual.Onnx.TaskVerification).Assembly }
            .SelectMany(a => a.GetTypes())
            .Where(t => typeof(Exception).IsAssignableFrom(t) && !t.IsAbstract);

    /// <summary>An instance of an F# exception type, built with its widest constructor and plain field values.</summary>
    private static Exception Instance(Type type)
    {
        var constructor = type.GetConstructors().OrderByDescending(c => c.GetParameters().Length).First();
        var arguments = constructor.GetParameters().Select(p => p.ParameterType switch
        {
            var t when t == typeof(string) => "x",
            var t when t.IsValueType => Activator.CreateInstance(t),
            var t when t.IsGenericType && t.GetGenericTypeDefinition().FullName == "Microsoft.FSharp.Collections.FSharpList`1" =>
                t.GetProperty("Empty", BindingFlags.Public | BindingFlags.Static)!.GetValue(null),
            _ => null,
        }).ToArray();
        return (Exception)constructor.Invoke(arguments);
    }

    private static Task EveryCoreExceptionIsTranslated()
    {
        var types = CoreExceptionTypes().ToList();
        Assert.True(types.Contains(typeof(global::Continual.TrainingDiverged)) && types.Contains(typeof(global::Continual.Onnx.VerificationFailed)),
            "the core's exception types are found");
        var problems = new List<string>();
        foreach (var type in types)
        {
            var original = Instance(type);
            var translated = FacadeErrors.Translate(original);
            if (translated is null) problems.Add($"{type.FullName} is not translated (FacadeErrors.Translate)");
            else if (PublicSurface.IsFSharp(translated.GetType())) problems.Add($"{type.FullName} becomes {translated.GetType().FullName}, an F# type");
            else if (!ReferenceEquals(translated.InnerException, original)) problems.Add($"{type.FullName}: the translation does not keep it as its inner exception");
        }
        Assert.True(problems.Count == 0, string.Join("\n", problems));
        // .NET's own exceptions go on as they are.
        Assert.True(FacadeErrors.Translate(new OperationCanceledException()) is null);
        Assert.True(FacadeErrors.Translate(new IOException()) is null);
        return Task.CompletedTask;
    }

    private static ExperimentBuilder Diverging() =>
        Subset().WithStrategy("sgd").WithLearningRate(1e12).WithTrainPerClass(20).WithTestPerClass(10);

    private static Task DivergingRunThrowsDotNetException()
    {
        var e = Assert.Throws<TrainingDivergedException>(() => Diverging().Run());
        Assert.Equal(1, e.Task);
        Assert.True(!double.IsFinite(e.Loss), $"the loss reported is not finite ({e.Loss})");
        Assert.True(e.InnerException is global::Continual.TrainingDiverged, "the core's exception is kept as the inner exception");
        Assert.True(e.Message.Contains("task 1", StringComparison.Ordinal), e.Message);
        return Task.CompletedTask;
    }

    private static async Task DivergingLearnerThrowsDotNetException()
    {
        using var learner = Diverging().CreateLearner();
        var e = await Assert.ThrowsAsync<TrainingDivergedException>(() => learner.LearnTaskAsync());
        Assert.Equal(1, e.Task);
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => learner.LearnTaskAsync());
        Assert.True(refused.Message.Contains("inside task 1", StringComparison.Ordinal), refused.Message);
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int mkfifo(string path, uint mode);

    [DllImport("libc", SetLastError = true)]
    private static extern int open(string path, int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern int close(int fd);

    private static async Task CancellationObservedWhileLoading()
    {
        var folder = FifoDataFolder("fifo", out var fifo);
        var recorder = new Recorder();
        await CancelledWhileBlockedOn(fifo, token => Task.Run(() => Subset().WithDataFolder(folder).WithStrategy("sgd").Run(recorder, token)));
        Assert.Equal(0, recorder.Reports.Count);
    }

    private static async Task LoadAsyncObservesCancellationWhileLoading()
    {
        // A learner saved on a copy of the test data, whose training images then become a FIFO.
        var folder = TestData.NewFolder("fifo-learner");
        foreach (var file in Directory.GetFiles(TestData.Folder))
            File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
        var saved = Path.Combine(folder, "learner", Learner.DefaultFileName);
        using (var learner = Subset().WithDataFolder(folder).WithStrategy("sgd").WithTrainPerClass(10).WithTestPerClass(5).CreateLearner())
        {
            await learner.LearnTaskAsync();
            await learner.SaveAsync(saved);
        }
        foreach (var file in Directory.GetFiles(folder, "train-images*")) File.Delete(file);
        var fifo = Path.Combine(folder, "train-images-idx3-ubyte");
        Assert.True(mkfifo(fifo, Convert.ToUInt32("600", 8)) == 0, $"mkfifo failed ({Marshal.GetLastPInvokeError()})");
        await CancelledWhileBlockedOn(fifo, token => Learner.LoadAsync(saved, token));
        // Creating a learner is cancelled the same way (a FIFO of its own: no reader of the first may be left on it).
        var other = FifoDataFolder("fifo-create", out var otherFifo);
        await CancelledWhileBlockedOn(otherFifo, token => Task.Run(() => Subset().WithDataFolder(other).WithStrategy("sgd").CreateLearner(token)));
    }

    // A copy of the test data whose training images are a FIFO: the loader blocks opening it until a writer comes,
    // and then in reading it until the writer closes it.
    private static string FifoDataFolder(string label, out string fifo)
    {
        var folder = TestData.NewFolder(label);
        foreach (var file in Directory.GetFiles(TestData.Folder))
            File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
        fifo = Path.Combine(folder, "train-images-idx3-ubyte");
        foreach (var file in Directory.GetFiles(folder, "train-images*")) File.Delete(file);
        Assert.True(mkfifo(fifo, Convert.ToUInt32("600", 8)) == 0, $"mkfifo failed ({Marshal.GetLastPInvokeError()})");
        return folder;
    }

    // Starts an operation that reads `fifo`, cancels it while the read is blocked there, and expects it to end at
    // once with OperationCanceledException.
    private static async Task CancelledWhileBlockedOn(string fifo, Func<CancellationToken, Task> start)
    {
        using var source = new CancellationTokenSource();
        var operation = start(source.Token);
        // A non-blocking open for writing succeeds only once a reader has the FIFO open: then the load is under way.
        const int WriteOnlyNonBlocking = 0x1 | 0x800;
        var writer = -1;
        for (var i = 0; i < 6000 && writer < 0 && !operation.IsCompleted; i++)
        {
            writer = open(fifo, WriteOnlyNonBlocking);
            if (writer < 0) await Task.Delay(10);
        }
        try
        {
            Assert.True(writer >= 0, operation.IsCompleted ? $"the operation ended before reading the data: {operation.Exception?.InnerException?.Message}" : "the load never opened the FIFO");
            source.Cancel();
            // The writer stays open, so the load cannot end: only the cancellation can end the operation. (Without
            // it, it would wait here for ever; the bound only keeps a failing check from hanging the suite.)
            var ended = await Task.WhenAny(operation, Task.Delay(TimeSpan.FromMinutes(2))) == operation;
            Assert.True(ended, "the operation did not end while the data was loading");
            await Assert.ThrowsAsync<OperationCanceledException>(() => operation);
        }
        finally
        {
            if (writer >= 0) close(writer);   // the abandoned load reads end-of-file and ends
        }
    }
}
