// A new C# project's first use of Continual, built against the packages (see samples/README.md):
// learn two tasks of Split Fashion-MNIST with DER++ on a small subset, export the model to ONNX (verified
// under ONNX Runtime before it is written), then load the file with ONNX Runtime and classify one image.
//   dotnet run -- [DATA_FOLDER] [OUTPUT_FOLDER]
using Continual.CSharp;
using Microsoft.ML.OnnxRuntime;

var data = args.Length > 0 ? args[0] : "/usr/share/datasets/fashion-mnist";
var output = args.Length > 1 ? args[1] : Path.Combine(Path.GetTempPath(), "continual-sample-csharp");
Directory.CreateDirectory(output);

var builder = new ExperimentBuilder()
    .WithDataFolder(data)
    .WithMethod(Methods.Derpp(buffer: 50))
    .WithTrainPerClass(40)
    .WithTestPerClass(20)
    .WithSeed(0);
var problems = builder.Validate();
if (problems.Count > 0)
{
    foreach (var problem in problems) Console.Error.WriteLine(problem);
    return 2;
}

using var learner = builder.CreateLearner();
for (var i = 0; i < 2; i++)
{
    LearnedTask task = await learner.LearnTaskAsync();
    Console.WriteLine($"task {task.Task}: Class-IL {string.Join(", ", task.ClassIncrementalAccuracies.Select(a => a.ToString("0.0")))}");
}
var onnxPath = Path.Combine(output, "after-2.onnx");
learner.ExportOnnx(onnxPath);
await learner.SaveAsync(Path.Combine(output, Learner.DefaultFileName));

// Serving: ONNX Runtime alone, as a service without TorchSharp would.
using var session = new InferenceSession(onnxPath);
var pixels = new float[784];                                   // one blank 28x28 image
using var input = OrtValue.CreateTensorValueFromMemory(pixels, new long[] { 1, 784 });
using var runOptions = new RunOptions();
using var outputs = session.Run(runOptions, new[] { "input" }, new[] { input }, new[] { "logits" });
var logits = outputs[0].GetTensorDataAsSpan<float>().ToArray();
var tasks = session.ModelMetadata.CustomMetadataMap["continual.task"];
Console.WriteLine($"ONNX: {onnxPath} (after task {tasks}), {logits.Length} logits, class {Array.IndexOf(logits, logits.Max())}");
if (logits.Length != 10 || tasks != "2")
{
    Console.Error.WriteLine("error: the exported model is not the one expected");
    return 1;
}
Console.WriteLine("C# sample: ok");
return 0;
