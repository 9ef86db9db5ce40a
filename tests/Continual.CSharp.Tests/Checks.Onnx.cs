using System.Text.Json;

namespace Continual.CSharp.Tests;

/// <summary>ONNX from C#: the after-task export of Run (on by default), its figures, and Verify.</summary>
internal static partial class Checks
{
    private static List<(string Name, Func<Task> Body)> OnnxChecks =>
    [
        ("onnx: Run exports and verifies task-1..5.onnx by default; OnnxFiles and results.json list them; Verify reproduces them", RunExportsOnnxByDefault),
        ("onnx: WithoutOnnxExport exports nothing", WithoutOnnxExportExportsNothing),
        ("onnx: Verify refuses a damaged file with OnnxModelFileException", VerifyRefusesDamagedFile),
    ];

    private static async Task RunExportsOnnxByDefault()
    {
        var folder = TestData.NewFolder("onnx-default");
        var builder = new ExperimentBuilder().WithDataFolder(TestData.Folder).WithStrategy("er").WithBuffer(200)
            .WithTrainPerClass(50).WithTestPerClass(30).WithOnnxExport(folder);
        Assert.True(new ExperimentBuilder().ExportsOnnx, "export is on by default");
        using var result = await builder.RunAsync();
        Assert.Equal(5, result.OnnxFiles.Count);
        for (var k = 1; k <= 5; k++)
        {
            var file = result.OnnxFiles[k - 1];
            Assert.Equal(Path.Combine(folder, $"task-{k}.onnx"), file.Path);
            Assert.True(File.Exists(file.Path), $"{file.Path} was written");
            Assert.Equal(k, file.TasksLearned);
            Assert.True(file.MaxAbsDifference <= 1e-4, $"task {k}: logits within 1e-4 ({file.MaxAbsDifference})");
            Assert.True(file.ComparedImages > 0);
            // The ONNX model's accuracy is the run's: row k-1 of the matrices, in percent, from the counts.
            for (var j = 0; j < 5; j++)
            {
                Assert.Close(result.ClassIncremental[k - 1][j], 100.0 * file.ClassIncrementalCorrect[j] / file.TestExamples[j], 1e-9);
                Assert.Close(result.TaskIncremental[k - 1][j], 100.0 * file.TaskIncrementalCorrect[j] / file.TestExamples[j], 1e-9);
            }
            var verified = OnnxModels.Verify(file.Path, TestData.Folder);
            Assert.True(verified.Reproduced, $"task {k}: Verify reproduces the recorded counts");
            Assert.Equal(k, verified.Task);
            Assert.Equal(5, verified.TaskCount);
            Assert.Equal("er", verified.Strategy);
            Assert.True(verified.ClassIncrementalCorrect.SequenceEqual(file.ClassIncrementalCorrect));
        }
        using var json = JsonDocument.Parse(result.ToJson());
        Assert.Equal(5, json.RootElement.GetProperty("onnx").GetProperty("tasks").GetArrayLength());
    }

    private static Task WithoutOnnxExportExportsNothing()
    {
        var folder = TestData.NewFolder("onnx-off");
        var builder = Subset().WithStrategy("sgd").WithTrainPerClass(10).WithTestPerClass(5).WithOnnxExport(folder).WithoutOnnxExport();
        Assert.True(!builder.ExportsOnnx);
        using var result = builder.Run();
        Assert.Equal(0, result.OnnxFiles.Count);
        Assert.Equal(0, Directory.GetFiles(folder).Length);
        using var json = JsonDocument.Parse(result.ToJson());
        Assert.True(!json.RootElement.TryGetProperty("onnx", out _), "no onnx section without export");
        return Task.CompletedTask;
    }

    private static Task VerifyRefusesDamagedFile()
    {
        var folder = TestData.NewFolder("onnx-damaged");
        var damaged = Path.Combine(folder, "task-1.onnx");
        File.WriteAllBytes(damaged, [1, 2, 3, 4, 5]);
        var e = Assert.Throws<OnnxModelFileException>(() => OnnxModels.Verify(damaged, TestData.Folder));
        Assert.Equal(damaged, e.Path);
        Assert.Throws<OnnxModelFileException>(() => OnnxModels.Verify(Path.Combine(folder, "missing.onnx"), TestData.Folder));
        return Task.CompletedTask;
    }
}
