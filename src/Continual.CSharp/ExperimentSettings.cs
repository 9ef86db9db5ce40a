using Microsoft.FSharp.Core;
using CoreConfig = global::Continual.Config;
using CoreConfigs = global::Continual.ConfigModule;

namespace Continual.CSharp;

/// <summary>
/// The complete, effective configuration of an experiment, typed: the method, penalty and distillation
/// terms as the C# settings records, the run and data settings, with the builder's choices applied to the
/// reference defaults. Immutable.
/// </summary>
public sealed class ExperimentSettings
{
    internal ExperimentSettings(CoreConfig config)
    {
        Config = config;
        Method = MethodSettings.FromCore(config.Method);
        Penalty = config.Penalty is null ? null : PenaltySettings.FromCore(config.Penalty.Value);
        Distillation = Array.AsReadOnly(config.Distillation.Select(DistillationSettings.FromCore).ToArray());
    }

    internal CoreConfig Config { get; }

    /// <summary>The method's name, e.g. "derpp".</summary>
    public string Strategy => CoreConfigs.methodName(Config);

    /// <summary>The method's memory: replay buffer slots or iCaRL's exemplars (0 for methods without one).</summary>
    public int BufferSize => CoreConfigs.bufferSize(Config);

    /// <summary>The method with its settings, e.g. a <see cref="DerppSettings"/> (pattern-match on the type to read them).</summary>
    public MethodSettings Method { get; }

    /// <summary>The importance penalty added to the method, or null for none.</summary>
    public PenaltySettings? Penalty { get; }

    /// <summary>The distillation terms added to the method, in order.</summary>
    public IReadOnlyList<DistillationSettings> Distillation { get; }

    /// <summary>The benchmark's name, e.g. "split-fmnist".</summary>
    public string Benchmark => Config.Data.Benchmark;

    /// <summary>The folder holding the benchmark's data files.</summary>
    public string DataFolder => Config.Data.Folder;

    /// <summary>At most this many training examples per class; null for all.</summary>
    public int? TrainPerClass => OptionModule.ToNullable(Config.Data.TrainPerClass);

    /// <summary>At most this many test examples per class; null for all.</summary>
    public int? TestPerClass => OptionModule.ToNullable(Config.Data.TestPerClass);

    /// <summary>The backbone: "mlp", "cnn" or "resnet18".</summary>
    public string Backbone => Config.Backbone;

    /// <summary>Learning rate of plain SGD.</summary>
    public double LearningRate => Config.Run.LearningRate;

    /// <summary>Training examples per step.</summary>
    public int BatchSize => Config.Run.BatchSize;

    /// <summary>Epochs per task.</summary>
    public int Epochs => Config.Run.Epochs;

    /// <summary>SGD weight decay.</summary>
    public double WeightDecay => Config.Run.WeightDecay;

    /// <summary>Random seed of the model's initialisation, the data order and the buffer.</summary>
    public long Seed => Config.Run.Seed;

    /// <summary>"cpu" or "cuda" (optionally "cuda:N").</summary>
    public string Device => Config.Run.Device;

    /// <summary>libtorch intra-op threads (set once per process, by the first run).</summary>
    public int Threads => Config.Run.Threads;

    /// <summary>The bound every gradient element is clipped to before a step, or null for no clipping.</summary>
    public double? GradientClipping => OptionModule.ToNullable(Config.Run.ClipGrad);

    /// <summary>The configuration as canonical JSON (the "config" section of results.json), the input of <see cref="Hash"/>.</summary>
    /// <exception cref="ArgumentException">A number is infinite or NaN, which JSON cannot hold (such a configuration does not validate).</exception>
    public string ToJson() => CoreConfigs.toJson(Config);

    /// <summary>A short hash of the configuration, stable across runs and machines.</summary>
    /// <exception cref="ArgumentException">A number is infinite or NaN (see <see cref="ToJson"/>).</exception>
    public string Hash => CoreConfigs.hash(Config);

    /// <summary>The canonical JSON (<see cref="ToJson"/>); where a number is infinite or NaN, a note saying so instead.</summary>
    public override string ToString()
    {
        try
        {
            return ToJson();
        }
        catch (ArgumentException)
        {
            return $"{Strategy} (no JSON: a number is infinite or NaN)";
        }
    }
}
