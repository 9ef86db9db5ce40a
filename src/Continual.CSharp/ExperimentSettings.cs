using System.Collections.ObjectModel;
using Microsoft.FSharp.Core;
using CoreConfig = global::Continual.ExperimentConfig;

namespace Continual.CSharp;

/// <summary>
/// The complete, effective configuration of an experiment: the reference defaults of its strategy and
/// buffer size with the builder's choices applied. Immutable.
/// </summary>
public sealed class ExperimentSettings
{
    internal ExperimentSettings(CoreConfig config)
    {
        Config = config;
        var fields = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var field in ConfigFields.All)
        {
            fields[field.Name] = ConfigFields.Plain(field.GetValue(config));
        }
        Fields = new ReadOnlyDictionary<string, object?>(fields);
    }

    internal CoreConfig Config { get; }

    /// <summary>The benchmark's name, e.g. "split-fmnist".</summary>
    public string Benchmark => Config.Benchmark;

    /// <summary>The folder holding the benchmark's data files.</summary>
    public string DataFolder => Config.DataFolder;

    /// <summary>The strategy's name, e.g. "derpp".</summary>
    public string Strategy => Config.Strategy;

    /// <summary>Replay buffer slots (0 for strategies without a buffer).</summary>
    public int BufferSize => Config.BufferSize;

    /// <summary>Learning rate of plain SGD.</summary>
    public double LearningRate => Config.LearningRate;

    /// <summary>Training examples per step.</summary>
    public int BatchSize => Config.BatchSize;

    /// <summary>Buffer examples drawn per step.</summary>
    public int Minibatch => Config.Minibatch;

    /// <summary>DER / DER++ logit-matching weight.</summary>
    public double Alpha => Config.Alpha;

    /// <summary>DER++ buffer-label weight.</summary>
    public double Beta => Config.Beta;

    /// <summary>Epochs per task.</summary>
    public int Epochs => Config.Epochs;

    /// <summary>SGD weight decay.</summary>
    public double WeightDecay => Config.WeightDecay;

    /// <summary>Random seed of the model's initialisation, the data order and the buffer.</summary>
    public long Seed => Config.Seed;

    /// <summary>"cpu" or "cuda" (optionally "cuda:N").</summary>
    public string Device => Config.Device;

    /// <summary>libtorch intra-op threads (set once per process, by the first run).</summary>
    public int Threads => Config.Threads;

    /// <summary>At most this many training examples per class; null for all.</summary>
    public int? TrainPerClass => OptionModule.ToNullable(Config.TrainPerClass);

    /// <summary>At most this many test examples per class; null for all.</summary>
    public int? TestPerClass => OptionModule.ToNullable(Config.TestPerClass);

    /// <summary>
    /// Every field of the configuration by its name, including fields that strategies add (values are
    /// numbers, text, booleans, or null for an unset optional field).
    /// </summary>
    public IReadOnlyDictionary<string, object?> Fields { get; }

    /// <summary>The configuration as canonical JSON, as it appears in results.json.</summary>
    public string ToJson() => global::Continual.Results.configJson(Config);

    /// <summary>A short hash of the configuration, stable across runs and machines.</summary>
    public string Hash => global::Continual.Results.configHash(Config);

    /// <inheritdoc />
    public override string ToString() => ToJson();
}
