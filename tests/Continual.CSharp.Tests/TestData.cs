using Continual.Data;

namespace Continual.CSharp.Tests;

/// <summary>
/// A small real-format data set: the first images of every class of the real Fashion-MNIST files,
/// written as plain IDX files (the core's own writer) into a temporary folder. Made once per process.
/// </summary>
internal static class TestData
{
    public const string FashionMnist = "/usr/share/datasets/fashion-mnist";
    public const int TrainPerClass = 200;
    public const int TestPerClass = 100;

    private static readonly Lazy<string> SubsetFolder = new(WriteSubset);
    private static readonly List<string> Temporary = [];

    /// <summary>The subset's folder (200 training and 100 test images per class).</summary>
    public static string Folder => SubsetFolder.Value;

    /// <summary>A fresh empty temporary folder, removed at the end of the run.</summary>
    public static string NewFolder(string label)
    {
        var path = Path.Combine(Path.GetTempPath(), $"continual-csharp-{label}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(path);
        lock (Temporary) Temporary.Add(path);
        return path;
    }

    public static void Cleanup()
    {
        lock (Temporary)
        {
            foreach (var path in Temporary.Where(Directory.Exists)) Directory.Delete(path, true);
            Temporary.Clear();
        }
    }

    /// <summary>The test images and labels of the subset (read back with the core's reader).</summary>
    public static (IdxImages Images, byte[] Labels) TestSet() =>
        (Idx.readImages(Path.Combine(Folder, "t10k-images-idx3-ubyte")), Idx.readLabels(Path.Combine(Folder, "t10k-labels-idx1-ubyte")));

    private static string WriteSubset()
    {
        if (!Directory.Exists(FashionMnist))
        {
            throw new InvalidOperationException($"{FashionMnist} is missing: install Debian's dataset-fashion-mnist package");
        }
        var folder = NewFolder("fmnist-subset");
        Copy("train", TrainPerClass, folder);
        Copy("t10k", TestPerClass, folder);
        return folder;
    }

    private static void Copy(string prefix, int perClass, string folder)
    {
        var images = Idx.readImages(Benchmarks.findIdxFile(FashionMnist, $"{prefix}-images-idx3-ubyte"));
        var labels = Idx.readLabels(Benchmarks.findIdxFile(FashionMnist, $"{prefix}-labels-idx1-ubyte"));
        var size = images.Rows * images.Cols;
        var counts = new int[10];
        var keep = new List<int>();
        for (var i = 0; i < labels.Length; i++)
        {
            if (counts[labels[i]] < perClass)
            {
                counts[labels[i]]++;
                keep.Add(i);
            }
        }
        var pixels = new byte[keep.Count * size];
        for (var k = 0; k < keep.Count; k++)
        {
            Array.Copy(images.Pixels, keep[k] * size, pixels, k * size, size);
        }
        Idx.writeImages(Path.Combine(folder, $"{prefix}-images-idx3-ubyte"), new IdxImages(keep.Count, images.Rows, images.Cols, pixels));
        Idx.writeLabels(Path.Combine(folder, $"{prefix}-labels-idx1-ubyte"), keep.Select(i => labels[i]).ToArray());
    }
}
