namespace Continual.CSharp;

/// <summary>
/// Thrown by <see cref="ExperimentBuilder.Run"/> when the configuration is not valid; <see cref="Errors"/>
/// holds every problem (the same messages as <see cref="ExperimentBuilder.Validate"/>).
/// </summary>
public sealed class ExperimentValidationException : ArgumentException
{
    /// <summary>An exception listing the configuration's problems.</summary>
    public ExperimentValidationException(IReadOnlyList<string> errors)
        : this(errors, null)
    {
    }

    /// <summary>An exception listing the configuration's problems, found by the core (<paramref name="innerException"/>).</summary>
    public ExperimentValidationException(IReadOnlyList<string> errors, Exception? innerException)
        : base("The experiment's configuration is not valid: " + string.Join("; ", errors), innerException)
    {
        Errors = errors;
    }

    /// <summary>Every problem found, as messages a user can act on.</summary>
    public IReadOnlyList<string> Errors { get; }
}

/// <summary>A data file that is missing or cannot be read (wrong format, truncated, inconsistent).</summary>
public sealed class ContinualDataException : IOException
{
    /// <summary>An exception about one data file or folder.</summary>
    public ContinualDataException(string path, string reason, Exception? innerException = null)
        : base($"{path}: {reason}", innerException)
    {
        Path = path;
        Reason = reason;
    }

    /// <summary>The file or folder at fault.</summary>
    public string Path { get; }

    /// <summary>What is wrong with it.</summary>
    public string Reason { get; }
}

/// <summary>
/// A learner file that cannot be used by <see cref="Learner.LoadAsync(string, CancellationToken)"/>: missing, truncated or corrupted
/// (its checksum does not match), of another format or version, or saved with a configuration or benchmark
/// this build cannot rebuild. The message names the file and the problem.
/// </summary>
public sealed class LearnerFileException : IOException
{
    /// <summary>An exception about one learner file.</summary>
    public LearnerFileException(string path, string reason, Exception? innerException = null)
        : base($"{path}: {reason}", innerException)
    {
        Path = path;
        Reason = reason;
    }

    /// <summary>The learner file at fault.</summary>
    public string Path { get; }

    /// <summary>What is wrong with it.</summary>
    public string Reason { get; }
}

/// <summary>
/// A model that could not be exported to ONNX, or whose export does not reproduce it under ONNX Runtime
/// (see <see cref="Learner.ExportOnnx"/>); the message says which check failed and by how much. Nothing was
/// written.
/// </summary>
public sealed class OnnxExportException : Exception
{
    /// <summary>An exception with the failed check's description.</summary>
    public OnnxExportException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }
}

/// <summary>
/// An ONNX file that cannot be verified by <see cref="OnnxModels.Verify"/>: missing, truncated or damaged, not a
/// model this library exported, or one whose metadata does not fit the data it is checked on.
/// </summary>
public sealed class OnnxModelFileException : IOException
{
    /// <summary>An exception about one ONNX file.</summary>
    public OnnxModelFileException(string path, string reason, Exception? innerException = null)
        : base($"{path}: {reason}", innerException)
    {
        Path = path;
        Reason = reason;
    }

    /// <summary>The file at fault.</summary>
    public string Path { get; }

    /// <summary>What is wrong with it.</summary>
    public string Reason { get; }
}

/// <summary>
/// Training produced a loss that is not a finite number (the learning rate, a penalty's strength or a
/// distillation weight is too large for the data); the run stopped instead of reporting chance accuracy.
/// The training state of the run (or learner) was freed.
/// </summary>
public sealed class TrainingDivergedException : ArithmeticException
{
    /// <summary>An exception naming where the loss stopped being finite.</summary>
    public TrainingDivergedException(string message, int task, int step, double loss, Exception? innerException = null)
        : base(message, innerException)
    {
        Task = task;
        Step = step;
        Loss = loss;
    }

    /// <summary>The task being learned, counted from 1.</summary>
    public int Task { get; }

    /// <summary>The step of that task at which the loss was found not finite.</summary>
    public int Step { get; }

    /// <summary>The loss found (NaN or an infinity).</summary>
    public double Loss { get; }
}

/// <summary>
/// The one place where the F# core's exceptions become the façade's documented .NET exceptions; every
/// public entry point that calls the core passes what it catches through <see cref="Translate"/>.
/// </summary>
internal static class FacadeErrors
{
    /// <summary>
    /// The .NET exception to throw for an exception of the core, or null when <paramref name="e"/> is not one
    /// of the core's (a .NET exception such as <see cref="OperationCanceledException"/> or
    /// <see cref="IOException"/>, which goes on as it is).
    /// </summary>
    public static Exception? Translate(Exception e) => e switch
    {
        global::Continual.Data.DataFileError x => new ContinualDataException(x.path, x.reason, e),
        // Task data given in memory that does not fit together (a class name in two tasks, a label out of range).
        global::Continual.Data.TaskDataError => new ArgumentException(e.Message, e),
        global::Continual.LearnerFileError x => new LearnerFileException(x.path, x.reason, e),
        global::Continual.SafetensorsError x => new LearnerFileException(x.path, x.reason, e),
        global::Continual.StateCodecError x => new LearnerFileException(x.path, x.reason, e),
        global::Continual.InvalidConfiguration => new ExperimentValidationException([e.Message], e),
        global::Continual.TrainingDiverged x => new TrainingDivergedException(e.Message, x.task + 1, x.step, x.loss, e),
        global::Continual.RunStopped => new OperationCanceledException(e.Message, e),
        global::Continual.Onnx.VerificationFailed or global::Continual.Onnx.ExportError or global::Continual.Onnx.ModelLoadError =>
            new OnnxExportException(e.Message, e),
        global::Continual.Onnx.InvalidModelFile x => new OnnxModelFileException(x.path, x.reason, e),
        global::Continual.Onnx.RepositoryError x => new IOException($"{x.path}: {x.reason}", e),
        _ => null,
    };
}
