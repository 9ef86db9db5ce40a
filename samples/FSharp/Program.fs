// A new F# project's first use of Continual, built against the packages (see samples/README.md): a run of
// ER on a small subset of Split Fashion-MNIST through the core's modules, its results written as
// `continual run` writes them, then a learner that learns one task, is exported to ONNX and saved.
//   dotnet run -- [DATA_FOLDER] [OUTPUT_FOLDER]
open System
open System.IO
open System.Threading
open Continual
open Continual.Onnx

[<EntryPoint>]
let main args =
    let data = if args.Length > 0 then args.[0] else "/usr/share/datasets/fashion-mnist"
    let output = if args.Length > 1 then args.[1] else Path.Combine(Path.GetTempPath(), "continual-sample-fsharp")
    Directory.CreateDirectory output |> ignore
    let defaults = Experiment.defaults "er" 50
    let config =
        { defaults with
            Data = { defaults.Data with Folder = data; TrainPerClass = Some 40; TestPerClass = Some 20 } }

    let result = Experiment.run config RunHooks.none CancellationToken.None
    printfn "ER (50): Class-IL %.2f, Task-IL %.2f" (Metrics.averageAccuracy result.Outcome.ClassIl) (Metrics.averageAccuracy result.Outcome.TaskIl)
    Results.write (Path.Combine(output, "er")) result ignore
    Experiment.release result

    let learner = Learner.create config |> Learner.learnTask RunHooks.none CancellationToken.None
    let verification = LearnerExport.export (Path.Combine(output, "after-1.onnx")) learner
    printfn "ONNX: %s, largest logit difference %g on %d images (%s)"
        verification.File verification.MaxAbsDifference verification.ComparedImages verification.Provider
    Learner.save (Path.Combine(output, "learner.safetensors")) learner
    Learner.dispose learner
    if File.Exists(Path.Combine(output, "er", "results.json")) then
        printfn "F# sample: ok"
        0
    else
        eprintfn "error: results.json was not written"
        1
