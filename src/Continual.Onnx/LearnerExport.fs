namespace Continual.Onnx

open System
open System.IO
open Continual

/// Exporting a learner's current model to one ONNX file, verified under ONNX Runtime against
/// TorchSharp exactly as a run's after-task export is (`TaskExporter.exportTaskTo`).
[<RequireQualifiedAccess>]
module LearnerExport =

    /// What a configuration's model files record about its run: the one place where a configuration
    /// becomes a run identity, so that the exporter itself does not depend on the configuration's type.
    let runIdentity (config: Config) : RunIdentity =
        { Strategy = Config.methodName config
          Benchmark = config.Data.Benchmark
          ConfigHash = Config.hash config
          TestPerClass = config.Data.TestPerClass
          Joint = (config.Method = Methods.MethodConfig.Joint) }

    /// The export settings for a learner's model written to `path`: its run identity, the file's
    /// folder, provider Auto, tolerance 1e-4 and 1000 compared images (as `ExportSettings.forRun`).
    let settings (path: string) (learner: Learner) : ExportSettings =
        ExportSettings.forRun (runIdentity learner.Config) (Path.GetDirectoryName(Path.GetFullPath path))

    /// Exports the learner's model as it stands after its last learned task, verifies it under ONNX
    /// Runtime (structure, strict loading, parameter count, logits within the settings' tolerance,
    /// Class-IL and Task-IL accuracy on every task's test set equal to TorchSharp's) and, only when every
    /// check passes, writes it atomically to `path`. The file's metadata names the task (tasks learned),
    /// and the accuracies it records are those of the model's own logits (as a run's task-k.onnx).
    /// Raises InvalidOperationException for a learner that has learned no task or stands inside a
    /// task (loaded from a mid-task checkpoint), and VerificationFailed, ExportError or ModelLoadError
    /// when the export cannot be made or verified (nothing is written then).
    let exportWith (settings: ExportSettings) (path: string) (learner: Learner) : TaskVerification =
        if isNull path then nullArg (nameof path)
        match learner.Point.Position with
        | Some p ->
            invalidOp (sprintf "the learner stands inside task %d (step %d of epoch %d): learn to the task's end before exporting its model"
                           (p.Task + 1) p.Step (p.Epoch + 1))
        | None -> ()
        if learner.TasksLearned = 0 then
            invalidOp "the learner has learned no task yet: there is no model to export"
        let device = (Experiment.settings learner.Config).Device
        let testSets = Evaluation.testSets learner.Benchmark
        try
            let model = learner.Point.State.Model
            let after =
                { Task = learner.TasksLearned - 1
                  Model = model
                  Architecture = learner.Architecture
                  Benchmark = learner.Benchmark
                  Accuracies = Evaluation.evaluate model device testSets
                  TestSets = testSets
                  Device = device }
            let inputs = InputBuffer()
            let testArray i = inputs.Fill(snd testSets.[i])
            TaskExporter.exportTaskTo settings path testArray after
        finally
            for (_, set) in testSets do set.Dispose()

    /// Exports and verifies the learner's model into `path` with the default settings (see `exportWith`).
    let export (path: string) (learner: Learner) : TaskVerification =
        if isNull path then nullArg (nameof path)
        exportWith (settings path learner) path learner
