namespace Continual.CSharp;

/// <summary>
/// Thrown by <see cref="ExperimentBuilder.Run"/> when the configuration is not valid; <see cref="Errors"/>
/// holds every problem (the same messages as <see cref="ExperimentBuilder.Validate"/>).
/// </summary>
public sealed class ExperimentValidationException : ArgumentException
{
    /// <summary>An exception listing the configuration's problems.</summary>
    public ExperimentValidationException(IReadOnlyList<string> errors)
        : base("The experiment's configuration is not valid: " + string.Join("; ", errors))
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
/// A learner file that cannot be used by <see cref="Learner.LoadAsync"/>: missing, truncated or corrupted
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
