using System.Globalization;
using Microsoft.FSharp.Collections;
using CoreConfig = global::Continual.Config;
using CoreError = global::Continual.ConfigError;
using Registry = global::Continual.Methods.Registry;

namespace Continual.CSharp;

/// <summary>
/// The escape hatch's names and the façade's words: which names <see cref="ExperimentBuilder.WithOption(string, double)"/>
/// maps onto the builder's own setters (an explicit table), how option values are converted, and how the
/// core's configuration errors are told in the C# API's names.
/// </summary>
internal static class Options
{
    /// <summary>
    /// The options the builder sets itself, by canonical name (the configuration's JSON name where it has
    /// one), with other spellings and the builder method that sets them.
    /// </summary>
    internal static readonly (string Name, string[] Aliases, string Setter)[] BuilderOptions =
    [
        ("strategy", ["method"], nameof(ExperimentBuilder.WithStrategy)),
        ("buffer", ["bufferSize"], nameof(ExperimentBuilder.WithBuffer)),
        ("penalty", [], nameof(ExperimentBuilder.WithPenalty)),
        ("distill", ["distillation"], nameof(ExperimentBuilder.WithDistillation)),
        ("benchmark", [], nameof(ExperimentBuilder.WithBenchmark)),
        ("dataFolder", ["data", "folder"], nameof(ExperimentBuilder.WithDataFolder)),
        ("trainPerClass", [], nameof(ExperimentBuilder.WithTrainPerClass)),
        ("testPerClass", [], nameof(ExperimentBuilder.WithTestPerClass)),
        ("backbone", [], nameof(ExperimentBuilder.WithBackbone)),
        ("learningRate", ["lr"], nameof(ExperimentBuilder.WithLearningRate)),
        ("batchSize", [], nameof(ExperimentBuilder.WithBatchSize)),
        ("epochs", [], nameof(ExperimentBuilder.WithEpochs)),
        ("weightDecay", [], nameof(ExperimentBuilder.WithWeightDecay)),
        ("seed", [], nameof(ExperimentBuilder.WithSeed)),
        ("device", [], nameof(ExperimentBuilder.WithDevice)),
        ("threads", [], nameof(ExperimentBuilder.WithThreads)),
        ("clipGrad", ["gradientClipping"], nameof(ExperimentBuilder.WithGradientClipping)),
    ];

    /// <summary>The builder method that sets each part of the configuration, by the core's error path.</summary>
    private static readonly Dictionary<string, string> SetterOfPath = new(StringComparer.Ordinal)
    {
        ["run.learningRate"] = nameof(ExperimentBuilder.WithLearningRate),
        ["run.batchSize"] = nameof(ExperimentBuilder.WithBatchSize),
        ["run.epochs"] = nameof(ExperimentBuilder.WithEpochs),
        ["run.weightDecay"] = nameof(ExperimentBuilder.WithWeightDecay),
        ["run.seed"] = nameof(ExperimentBuilder.WithSeed),
        ["run.device"] = nameof(ExperimentBuilder.WithDevice),
        ["run.threads"] = nameof(ExperimentBuilder.WithThreads),
        ["run.clipGrad"] = nameof(ExperimentBuilder.WithGradientClipping),
        ["data.benchmark"] = nameof(ExperimentBuilder.WithBenchmark),
        ["data.folder"] = nameof(ExperimentBuilder.WithDataFolder),
        ["data.trainPerClass"] = nameof(ExperimentBuilder.WithTrainPerClass),
        ["data.testPerClass"] = nameof(ExperimentBuilder.WithTestPerClass),
        ["backbone"] = nameof(ExperimentBuilder.WithBackbone),
        ["method"] = nameof(ExperimentBuilder.WithMethod),
        ["penalty"] = nameof(ExperimentBuilder.WithPenalty),
        ["distillation"] = nameof(ExperimentBuilder.WithDistillation),
    };

    /// <summary>Letters and digits only, lower case: "weight-decay", "Weight_Decay" and "WeightDecay" agree.</summary>
    internal static string Normalise(string name) =>
        new string(name.Where(char.IsLetterOrDigit).ToArray()).ToLowerInvariant();

    /// <summary>The builder's option a name means (canonical name and setter), if any.</summary>
    internal static (string Name, string Setter)? BuilderOption(string name)
    {
        var key = Normalise(name);
        foreach (var (canonical, aliases, setter) in BuilderOptions)
        {
            if (Normalise(canonical) == key || aliases.Any(a => Normalise(a) == key)) return (canonical, setter);
        }
        return null;
    }

    /// <summary>
    /// The name to give the core for a setting of some method, importance method or distillation term of the
    /// registry (<c>Experiment.setOption</c>), or null when none has it: the name itself where the core's own
    /// rule matches it (a JSON name in any spelling, or a command-line name), else the command-line name it
    /// spells with other case or separators ("SCP_Alpha" for "scp-alpha").
    /// </summary>
    internal static string? ComponentOption(string name)
    {
        if (Matches(name)) return name;
        var key = Normalise(name);
        return AllSettings().Select(s => s.Option).FirstOrDefault(o => Normalise(o) == key);
    }

    private static bool Matches(string name) => Matches(name, byName: false) || Matches(name, byName: true);

    // Whether some component's setting has this command-line name (byName false) or JSON name (byName true).
    private static bool Matches(string name, bool byName) =>
        Registry.methods.Any(e => Registry.parseOption(byName, e.Settings, name, "0", e.Default.Invoke(ExperimentBuilder.DefaultBufferSize)) is not null)
        || Registry.importance.Any(e => Registry.parseOption(byName, e.Settings, name, "0", e.Default) is not null)
        || Registry.parseOption(byName, Registry.distillationSettings, name, "0", DistillationSettings.Reference(global::Continual.Methods.DistillationKind.Kd)) is not null;

    private static IEnumerable<(string Name, string Option)> AllSettings() =>
        Registry.methods.SelectMany(e => e.Settings.Select(s => (s.Name, s.Option)))
            .Concat(Registry.importance.SelectMany(e => e.Settings.Select(s => (s.Name, s.Option))))
            .Concat(Registry.distillationSettings.Select(s => (s.Name, s.Option)));

    /// <summary>
    /// The names of every setting of the registry's methods, importance methods and distillation terms: the
    /// JSON name, or the command-line name where the JSON name is one of the builder's own options (SCP's
    /// "batchSize" is "scp-batch"; the replay methods' "buffer" is the builder's).
    /// </summary>
    internal static IEnumerable<string> ComponentOptionNames() =>
        AllSettings()
            .Select(s => BuilderOption(s.Name) is null ? s.Name : BuilderOption(s.Option) is null ? s.Option : null)
            .OfType<string>()
            .Distinct();

    // ---- values ----

    internal static string Show(object? value) => value switch
    {
        null => "nothing",
        string s => $"'{s}'",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };

    /// <summary>A value as the core's settings parse it (numbers in the invariant culture).</summary>
    internal static string Text(object value) => value switch
    {
        string s => s,
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        _ => Show(value),
    };

    internal static bool TryDouble(object value, out double result, out string? error)
    {
        error = null;
        switch (value)
        {
            case double d:
                result = d;
                return true;
            case string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var parsed):
                result = parsed;
                return true;
            default:
                result = 0;
                error = $"expects a number (got {Show(value)})";
                return false;
        }
    }

    /// <summary>A whole number in [min, max]; numbers with a fraction, infinities and NaN are refused.</summary>
    internal static bool TryWhole(object value, double min, double max, out double result, out string? error)
    {
        if (!TryDouble(value, out result, out error)) return false;
        if (!double.IsFinite(result) || Math.Floor(result) != result)
        {
            error = $"expects a whole number (got {Show(result)})";
            return false;
        }
        if (result < min || result > max)
        {
            error = $"{Show(result)} is out of range";
            return false;
        }
        return true;
    }

    internal static bool TryInt(object value, out int result, out string? error)
    {
        var ok = TryWhole(value, int.MinValue, int.MaxValue, out var d, out error);
        result = ok ? (int)d : 0;
        return ok;
    }

    internal static bool TryLong(object value, out long result, out string? error)
    {
        // Doubles hold whole numbers exactly up to 2^53; larger seeds are refused rather than rounded.
        var ok = TryWhole(value, -9007199254740992.0, 9007199254740992.0, out var d, out error);
        result = ok ? (long)d : 0;
        return ok;
    }

    internal static bool TryText(object value, out string result, out string? error)
    {
        if (value is string s)
        {
            result = s;
            error = null;
            return true;
        }
        result = "";
        error = $"expects text (got {Show(value)})";
        return false;
    }

    /// <summary>"none" (or "all", "null") means no value; anything else must convert.</summary>
    internal static bool IsNone(object value) =>
        value is string s && s.Trim().ToLowerInvariant() is "none" or "all" or "null" or "";

    // ---- the core's errors in the façade's words ----

    /// <summary>
    /// A core configuration error as the façade tells it: the domain message followed by the C# member that
    /// sets the value at fault, e.g. "the learning rate must be a positive number (got 0) (WithLearningRate)"
    /// or "DER++'s logit weight α must be a non-negative number (got -1) (DerppSettings.WithAlpha)".
    /// </summary>
    internal static string Translate(CoreError error, CoreConfig config)
    {
        var hint = Hint(error.Path, config);
        return hint is null ? error.Message : $"{error.Message} ({hint})";
    }

    private static string? Hint(string path, CoreConfig config)
    {
        if (SetterOfPath.TryGetValue(path, out var setter)) return setter;
        if (path.StartsWith("distillation[") && path.EndsWith(']')) return nameof(ExperimentBuilder.WithDistillation);
        var dot = path.IndexOf('.');
        if (dot < 0) return null;
        var (part, setting) = (path[..dot], path[(dot + 1)..]);
        switch (part)
        {
            case "method":
                return MethodSettings.FromCore(config.Method).Member(setting) ?? WithOption(setting);
            case "penalty" when config.Penalty is not null:
                var penalty = PenaltySettings.FromCore(config.Penalty.Value);
                // The penalty's strength is its first setting (λ, SI's c).
                if (setting == "strength") setting = Registry.importanceEntryOf(config.Penalty.Value).Settings.Head.Name;
                return penalty.Member(setting) ?? WithOption(setting);
            case var terms when terms.StartsWith("distillation[") && terms.EndsWith(']'):
                // "distillation[i]": the i-th term, counted from 0.
                var index = int.Parse(terms["distillation[".Length..^1], System.Globalization.CultureInfo.InvariantCulture);
                var term = config.Distillation.ElementAtOrDefault(index);
                return (term is null ? null : DistillationSettings.FromCore(term).Member(setting)) ?? WithOption(setting);
            default:
                return null;
        }
    }

    private static string WithOption(string setting) => $"WithOption(\"{setting}\", …)";

    internal static FSharpList<T> List<T>(IEnumerable<T> items) => ListModule.OfSeq(items);
}
