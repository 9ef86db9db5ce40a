using System.Globalization;
using System.Text;

namespace Continual.CSharp.Tests;

internal static partial class Checks
{
    private static List<(string Name, Func<Task> Body)> OwnDataChecks =>
    [
        ("own data: a learner starts from an image folder and takes more folders as tasks; class names follow; it reloads from its file", ImageFolderTasks),
        ("own data: CSV then arrays: a learner reloaded with its arrays continues exactly as in process; without them it names the task", CsvThenArrays),
        ("own data: a task that does not fit is refused with ArgumentException and the learner is unchanged", OwnDataRefusals),
    ];

    // A grey 8x8 image whose pixels depend on the class (learnable) and the example.
    private static global::Continual.Data.DecodedImage GreyImage(int cls, int example) =>
        new(1, 8, 8, Enumerable.Range(0, 64).Select(p => (byte)((cls * 60 + (p % 8) * 4 + example * 3) % 256)).ToArray());

    private static string ImageTask(string root, string name, params string[] classes)
    {
        var folder = Path.Combine(root, name);
        for (var c = 0; c < classes.Length; c++)
            foreach (var split in new[] { "train", "test" })
                for (var i = 0; i < (split == "train" ? 12 : 4); i++)
                    global::Continual.Data.Images.write(
                        Path.Combine(folder, split, classes[c], $"{i:000}.png"),
                        GreyImage(classes[c].Length + c * 2, i + (split == "test" ? 50 : 0)));
        return folder;
    }

    private static ExperimentBuilder OwnDataBuilder() =>
        new ExperimentBuilder().WithMethod(Methods.Er(buffer: 16)).WithSeed(5).WithoutOnnxExport();

    private static async Task ImageFolderTasks()
    {
        var root = TestData.NewFolder("own-images");
        var first = ImageTask(root, "first", "ant", "bee");
        var second = ImageTask(root, "second", "cat", "dog", "eel");
        var file = Path.Combine(root, "learner", Learner.DefaultFileName);
        using (var learner = Learner.Create(OwnDataBuilder(), TaskData.FromImageFolder(first)))
        {
            Assert.Equal(1, learner.TaskCount);
            var one = await learner.LearnTaskAsync();
            Assert.Equal(1, one.Task);
            var two = await learner.LearnTaskAsync(TaskData.FromImageFolder(second));
            Assert.Equal(2, two.Task);
            Assert.Equal(2, learner.TaskCount);
            Assert.True(learner.ClassNames.SequenceEqual(["ant", "bee", "cat", "dog", "eel"]), string.Join(",", learner.ClassNames));
            Assert.True(learner.TaskClasses[1].SequenceEqual([2, 3, 4]), "the second task's classes follow the first's");
            Assert.Equal(2, two.ClassIncrementalAccuracies.Count);
            await learner.SaveAsync(file);
        }
        using var loaded = await Learner.LoadAsync(file);
        Assert.Equal(2, loaded.TasksLearned);
        Assert.True(loaded.ClassNames.SequenceEqual(["ant", "bee", "cat", "dog", "eel"]), "the reloaded learner read its added task again");
        var third = await loaded.LearnTaskAsync(TaskData.FromImageFolder(ImageTask(root, "third", "fox")));
        Assert.Equal(3, third.Task);
        Assert.Equal(3, loaded.ClassIncremental[^1].Count);
    }

    private static void WriteCsv(string folder, int offset)
    {
        Directory.CreateDirectory(folder);
        foreach (var (file, count) in new[] { ("train.csv", 10), ("test.csv", 4) })
        {
            var text = new StringBuilder("label,a,b,c\n");
            for (var c = 0; c < 2; c++)
                for (var i = 0; i < count; i++)
                    text.Append(CultureInfo.InvariantCulture, $"k{offset + c},{c + 0.1 * i},{1 - c + 0.05 * i},{0.3 * c}\n");
            File.WriteAllText(Path.Combine(folder, file), text.ToString());
        }
    }

    private static TaskData Arrays(string name, int offset, int classes)
    {
        float[,] Rows(int perClass, int shift)
        {
            var rows = new float[classes * perClass, 3];
            for (var c = 0; c < classes; c++)
                for (var i = 0; i < perClass; i++)
                {
                    rows[c * perClass + i, 0] = 0.2f * c + 0.01f * (i + shift);
                    rows[c * perClass + i, 1] = 1f - 0.3f * c;
                    rows[c * perClass + i, 2] = 0.5f + 0.1f * c - 0.02f * i;
                }
            return rows;
        }
        int[] Labels(int perClass) => Enumerable.Range(0, classes * perClass).Select(i => i / perClass).ToArray();
        return TaskData.FromArrays(Rows(10, 0), Labels(10), Rows(4, 30), Labels(4),
            Enumerable.Range(0, classes).Select(c => $"m{offset + c}").ToArray(), name);
    }

    private static async Task CsvThenArrays()
    {
        var root = TestData.NewFolder("own-tables");
        var csv = Path.Combine(root, "csv");
        WriteCsv(csv, 0);
        var file = Path.Combine(root, "learner", Learner.DefaultFileName);
        var second = Arrays("week-2", 0, 2);
        IReadOnlyList<IReadOnlyList<double>> inProcess;
        using (var learner = Learner.Create(OwnDataBuilder(), TaskData.FromCsv(csv)))
        {
            await learner.LearnTaskAsync();
            await learner.LearnTaskAsync(second);
            await learner.SaveAsync(file);
            await learner.LearnTaskAsync(Arrays("week-3", 2, 3));
            inProcess = learner.ClassIncremental;
            Assert.True(learner.ClassNames.SequenceEqual(["k0", "k1", "m0", "m1", "m2", "m3", "m4"]), string.Join(",", learner.ClassNames));
        }
        var missing = await Assert.ThrowsAsync<LearnerFileException>(() => Learner.LoadAsync(file));
        Assert.True(missing.Message.Contains("week-2"), missing.Message);
        using var loaded = await Learner.LoadAsync(file, new Dictionary<string, TaskData> { ["week-2"] = second });
        await loaded.LearnTaskAsync(Arrays("week-3", 2, 3));
        Assert.Matrix(inProcess, loaded.ClassIncremental, "reloaded with its arrays, the learner continues exactly as in process");
    }

    private static async Task OwnDataRefusals()
    {
        var root = TestData.NewFolder("own-refusals");
        var first = ImageTask(root, "first", "ant", "bee");
        using var learner = Learner.Create(OwnDataBuilder(), TaskData.FromImageFolder(first));
        // A learner learns the tasks it has before it takes a new one.
        await Assert.ThrowsAsync<InvalidOperationException>(() => learner.LearnTaskAsync(TaskData.FromImageFolder(first)));
        await learner.LearnTaskAsync();
        var before = learner.ClassIncremental;
        var again = await Assert.ThrowsAsync<ArgumentException>(() => learner.LearnTaskAsync(TaskData.FromImageFolder(first)));
        Assert.True(again.Message.Contains("the same class name in two tasks"), again.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => learner.LearnTaskAsync(Arrays("tables", 0, 2)));
        var missing = await Assert.ThrowsAsync<ContinualDataException>(() => learner.LearnTaskAsync(TaskData.FromImageFolder(Path.Combine(root, "nowhere"))));
        Assert.True(missing.Path.EndsWith("nowhere"), missing.Path);
        Assert.Equal(1, learner.TaskCount);
        Assert.Matrix(before, learner.ClassIncremental, "the refused tasks changed nothing");
        // A usable learner after the refusals.
        await learner.LearnTaskAsync(TaskData.FromImageFolder(ImageTask(root, "second", "cat")));
        Assert.Equal(2, learner.TasksLearned);
        // Arrays that do not fit together, and arrays as a first task.
        Assert.Throws<ArgumentException>(() => TaskData.FromArrays(new float[3, 2], [0, 1], new float[1, 2], [0]));
        Assert.Throws<ArgumentException>(() => TaskData.FromArrays(new float[2, 2], [0, 1], new float[1, 3], [0]));
        Assert.Throws<ArgumentException>(() => TaskData.FromArrays(new float[2, 2], [0, 1], new float[1, 2], [0], ["only one"]));
        Assert.Throws<ArgumentException>(() => Learner.Create(OwnDataBuilder(), Arrays("first", 0, 2)));
    }
}
