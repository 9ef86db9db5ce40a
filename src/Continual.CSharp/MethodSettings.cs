using CoreConfig = global::Continual.Methods.MethodConfig;
using CoreMethods = global::Continual.Methods;
using Registry = global::Continual.Methods.Registry;

namespace Continual.CSharp;

/// <summary>
/// The method a run trains with, with its own settings: one of the sealed records made by
/// <see cref="Methods"/> (e.g. <see cref="DerppSettings"/>). Immutable; every <c>With…</c> method returns a
/// changed copy. Values are checked when the experiment is validated, not when they are set.
/// </summary>
public abstract record MethodSettings
{
    private protected MethodSettings()
    {
    }

    /// <summary>The method's name, as in results.json and <see cref="ExperimentBuilder.KnownStrategies"/> (e.g. "derpp").</summary>
    public abstract string Name { get; }

    /// <summary>The core's form of these settings.</summary>
    internal abstract CoreConfig ToCore();

    /// <summary>
    /// The C# member that sets a setting, by its name in the configuration's JSON (e.g. "alpha"), such as
    /// "DerppSettings.WithAlpha"; null when these settings have none.
    /// </summary>
    internal string? Member(string setting) =>
        setting == "buffer" ? nameof(ExperimentBuilder.WithBuffer)
        : OwnMember(setting) is string member ? $"{GetType().Name}.{member}"
        : null;

    /// <summary>The name of this type's method that sets a setting (by JSON name), or null.</summary>
    private protected abstract string? OwnMember(string setting);

    /// <summary>The C# settings of a core configuration's method.</summary>
    internal static MethodSettings FromCore(CoreConfig config) => config switch
    {
        CoreConfig.Er er => new ErSettings(er.Item),
        CoreConfig.Der der => new DerSettings(der.Item),
        CoreConfig.Derpp derpp => new DerppSettings(derpp.Item),
        CoreConfig.Lwf lwf => new LwfSettings(lwf.Item),
        CoreConfig.Icarl icarl => new IcarlSettings(icarl.Item),
        CoreConfig.Importance importance => PenaltySettings.FromCore(importance.Item),
        _ when config.IsSgd => SgdSettings.Instance,
        _ when config.IsJoint => JointSettings.Instance,
        // A method added to the core's registry without a typed builder here: reached by name.
        _ => new NamedMethodSettings(config),
    };

    /// <summary>The registry's reference settings of a method for a buffer size (as <c>Experiment.defaults</c> chooses them).</summary>
    internal static MethodSettings Reference(string name, int buffer) =>
        FromCore(Registry.tryMethod(name).Value.Default.Invoke(buffer));
}

/// <summary>
/// A method of the core's registry that this façade has no typed builder for: chosen with
/// <see cref="ExperimentBuilder.WithStrategy"/>, its settings set with <see cref="ExperimentBuilder.WithOption(string, double)"/>
/// and read from <see cref="ExperimentSettings.ToJson"/>. A method needs only its core module and registry
/// entry to be usable from C#; a typed builder is a convenience added on top.
/// </summary>
public sealed record NamedMethodSettings : MethodSettings
{
    private readonly CoreConfig _core;

    internal NamedMethodSettings(CoreConfig core)
    {
        _core = core;
        Name = Registry.nameOf(core);
    }

    /// <inheritdoc />
    public override string Name { get; }

    internal override CoreConfig ToCore() => _core;

    private protected override string? OwnMember(string setting) => null;
}

/// <summary>Fine-tuning with plain SGD, the lower bound. No settings of its own.</summary>
public sealed record SgdSettings : MethodSettings
{
    internal static readonly SgdSettings Instance = new();

    private SgdSettings()
    {
    }

    /// <inheritdoc />
    public override string Name => "sgd";

    internal override CoreConfig ToCore() => CoreConfig.Sgd;

    private protected override string? OwnMember(string setting) => null;
}

/// <summary>All tasks trained at once, the upper bound (one row in the accuracy matrices). No settings of its own.</summary>
public sealed record JointSettings : MethodSettings
{
    internal static readonly JointSettings Instance = new();

    private JointSettings()
    {
    }

    /// <inheritdoc />
    public override string Name => "joint";

    internal override CoreConfig ToCore() => CoreConfig.Joint;

    private protected override string? OwnMember(string setting) => null;
}

/// <summary>Experience replay (ER): cross-entropy over the batch and a minibatch drawn from a reservoir buffer.</summary>
public sealed record ErSettings : MethodSettings
{
    internal ErSettings(CoreMethods.Er.Settings s)
    {
        BufferSize = s.BufferSize;
        Minibatch = s.Minibatch;
    }

    /// <inheritdoc />
    public override string Name => "er";

    /// <summary>Buffer slots (set by <see cref="Methods.Er"/>'s <c>buffer</c> or <see cref="ExperimentBuilder.WithBuffer"/>).</summary>
    public int BufferSize { get; internal init; }

    /// <summary>Examples drawn from the buffer every step.</summary>
    public int Minibatch { get; internal init; }

    /// <summary>These settings with another buffer minibatch.</summary>
    public ErSettings WithMinibatch(int minibatch) => this with { Minibatch = minibatch };

    internal override CoreConfig ToCore() => CoreConfig.NewEr(new CoreMethods.Er.Settings(BufferSize, Minibatch));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "minibatch" => nameof(WithMinibatch),
        _ => null,
    };
}

/// <summary>Dark experience replay (DER): cross-entropy plus α times the MSE to the logits stored with a buffer minibatch.</summary>
public sealed record DerSettings : MethodSettings
{
    internal DerSettings(CoreMethods.Der.Settings s)
    {
        BufferSize = s.BufferSize;
        Minibatch = s.Minibatch;
        Alpha = s.Alpha;
    }

    /// <inheritdoc />
    public override string Name => "der";

    /// <summary>Buffer slots (set by <see cref="Methods.Der"/>'s <c>buffer</c> or <see cref="ExperimentBuilder.WithBuffer"/>).</summary>
    public int BufferSize { get; internal init; }

    /// <summary>Examples in the buffer minibatch.</summary>
    public int Minibatch { get; internal init; }

    /// <summary>Weight α of the logit-matching term.</summary>
    public double Alpha { get; internal init; }

    /// <summary>These settings with another buffer minibatch.</summary>
    public DerSettings WithMinibatch(int minibatch) => this with { Minibatch = minibatch };

    /// <summary>These settings with another logit weight α.</summary>
    public DerSettings WithAlpha(double alpha) => this with { Alpha = alpha };

    internal override CoreConfig ToCore() => CoreConfig.NewDer(new CoreMethods.Der.Settings(BufferSize, Minibatch, Alpha));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "minibatch" => nameof(WithMinibatch),
        "alpha" => nameof(WithAlpha),
        _ => null,
    };
}

/// <summary>DER++: DER plus β times the cross-entropy on the labels of a second buffer minibatch.</summary>
public sealed record DerppSettings : MethodSettings
{
    internal DerppSettings(CoreMethods.Der.PlusPlusSettings s)
    {
        BufferSize = s.BufferSize;
        Minibatch = s.Minibatch;
        Alpha = s.Alpha;
        Beta = s.Beta;
    }

    /// <inheritdoc />
    public override string Name => "derpp";

    /// <summary>Buffer slots (set by <see cref="Methods.Derpp"/>'s <c>buffer</c> or <see cref="ExperimentBuilder.WithBuffer"/>).</summary>
    public int BufferSize { get; internal init; }

    /// <summary>Examples in each of the two buffer minibatches.</summary>
    public int Minibatch { get; internal init; }

    /// <summary>Weight α of the logit-matching term.</summary>
    public double Alpha { get; internal init; }

    /// <summary>Weight β of the label term.</summary>
    public double Beta { get; internal init; }

    /// <summary>These settings with another buffer minibatch.</summary>
    public DerppSettings WithMinibatch(int minibatch) => this with { Minibatch = minibatch };

    /// <summary>These settings with another logit weight α.</summary>
    public DerppSettings WithAlpha(double alpha) => this with { Alpha = alpha };

    /// <summary>These settings with another label weight β.</summary>
    public DerppSettings WithBeta(double beta) => this with { Beta = beta };

    internal override CoreConfig ToCore() => CoreConfig.NewDerpp(new CoreMethods.Der.PlusPlusSettings(BufferSize, Minibatch, Alpha, Beta));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "minibatch" => nameof(WithMinibatch),
        "alpha" => nameof(WithAlpha),
        "beta" => nameof(WithBeta),
        _ => null,
    };
}

/// <summary>Learning without forgetting (LwF): distillation of the previous model's outputs on the new data.</summary>
public sealed record LwfSettings : MethodSettings
{
    internal LwfSettings(CoreMethods.Lwf.Settings s)
    {
        Alpha = s.Alpha;
        Temperature = s.Temperature;
        IsBalanced = s.Balanced;
        WarmupEpochs = s.WarmupEpochs;
    }

    /// <inheritdoc />
    public override string Name => "lwf";

    /// <summary>Weight α of the distillation term.</summary>
    public double Alpha { get; internal init; }

    /// <summary>Temperature of the soft targets.</summary>
    public double Temperature { get; internal init; }

    /// <summary>Whether the old and the new term are balanced by λ = |Y_old| / |Y_seen| (see <see cref="Balanced"/>).</summary>
    public bool IsBalanced { get; internal init; }

    /// <summary>Epochs of the classifier warm-up before every task after the first.</summary>
    public int WarmupEpochs { get; internal init; }

    /// <summary>These settings with another distillation weight α.</summary>
    public LwfSettings WithAlpha(double alpha) => this with { Alpha = alpha };

    /// <summary>These settings with another temperature.</summary>
    public LwfSettings WithTemperature(double temperature) => this with { Temperature = temperature };

    /// <summary>
    /// These settings with the lecture's balancing <c>λ·L_old + (1 − λ)·L_new</c>, λ = |Y_old| / |Y_seen|,
    /// instead of <c>L_new + α·L_old</c> (α still multiplies L_old); <c>Balanced(false)</c> turns it off.
    /// </summary>
    public LwfSettings Balanced(bool balanced = true) => this with { IsBalanced = balanced };

    /// <summary>These settings with another number of warm-up epochs.</summary>
    public LwfSettings WithWarmupEpochs(int epochs) => this with { WarmupEpochs = epochs };

    internal override CoreConfig ToCore() => CoreConfig.NewLwf(new CoreMethods.Lwf.Settings(Alpha, Temperature, IsBalanced, WarmupEpochs));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "alpha" => nameof(WithAlpha),
        "temperature" => nameof(WithTemperature),
        "balanced" => nameof(Balanced),
        "warmupEpochs" => nameof(WithWarmupEpochs),
        _ => null,
    };
}

/// <summary>iCaRL: herding exemplars, sigmoid distillation and the nearest mean of exemplars.</summary>
public sealed record IcarlSettings : MethodSettings
{
    internal IcarlSettings(CoreMethods.Icarl.Settings s)
    {
        Memory = s.Memory;
    }

    /// <inheritdoc />
    public override string Name => "icarl";

    /// <summary>Exemplars kept over all classes (set by <see cref="Methods.Icarl"/>'s <c>memory</c> or <see cref="ExperimentBuilder.WithBuffer"/>).</summary>
    public int Memory { get; internal init; }

    internal override CoreConfig ToCore() => CoreConfig.NewIcarl(new CoreMethods.Icarl.Settings(Memory));

    private protected override string? OwnMember(string setting) => null;
}

/// <summary>
/// The methods a run can train with, their optional settings defaulting to the reference protocol's
/// (the core's registry; for the replay methods the buffer size chooses them, as the command line does).
/// Pass one to <see cref="ExperimentBuilder.WithMethod"/>.
/// </summary>
/// <example>
/// <code>
/// var derpp = Methods.Derpp(buffer: 500).WithAlpha(0.3);
/// var lwf = Methods.Lwf().WithTemperature(2).Balanced();
/// </code>
/// </example>
public static class Methods
{
    /// <summary>Fine-tuning with plain SGD (the lower bound).</summary>
    public static SgdSettings Sgd() => SgdSettings.Instance;

    /// <summary>All tasks at once (the upper bound).</summary>
    public static JointSettings Joint() => JointSettings.Instance;

    /// <summary>Experience replay with a buffer of <paramref name="buffer"/> slots.</summary>
    /// <param name="buffer">Buffer slots; also chooses the reference settings of the nearest published size (200, 500, 5120).</param>
    /// <param name="minibatch">Examples drawn per step (default: the reference setting, 10).</param>
    public static ErSettings Er(int buffer = ExperimentBuilder.DefaultBufferSize, int? minibatch = null)
    {
        var s = (ErSettings)MethodSettings.Reference("er", buffer);
        return s with { Minibatch = minibatch ?? s.Minibatch };
    }

    /// <summary>Dark experience replay with a buffer of <paramref name="buffer"/> slots.</summary>
    /// <param name="buffer">Buffer slots; also chooses the reference settings of the nearest published size (200, 500, 5120).</param>
    /// <param name="minibatch">Examples in the buffer minibatch (default: the reference setting for the buffer size).</param>
    /// <param name="alpha">Weight α of the logit term (default: the reference setting for the buffer size).</param>
    public static DerSettings Der(int buffer = ExperimentBuilder.DefaultBufferSize, int? minibatch = null, double? alpha = null)
    {
        var s = (DerSettings)MethodSettings.Reference("der", buffer);
        return s with { Minibatch = minibatch ?? s.Minibatch, Alpha = alpha ?? s.Alpha };
    }

    /// <summary>DER++ with a buffer of <paramref name="buffer"/> slots.</summary>
    /// <param name="buffer">Buffer slots; also chooses the reference settings of the nearest published size (200, 500, 5120).</param>
    /// <param name="minibatch">Examples in each buffer minibatch (default: the reference setting for the buffer size).</param>
    /// <param name="alpha">Weight α of the logit term (default: the reference setting for the buffer size).</param>
    /// <param name="beta">Weight β of the label term (default: the reference setting for the buffer size).</param>
    public static DerppSettings Derpp(int buffer = ExperimentBuilder.DefaultBufferSize, int? minibatch = null, double? alpha = null, double? beta = null)
    {
        var s = (DerppSettings)MethodSettings.Reference("derpp", buffer);
        return s with { Minibatch = minibatch ?? s.Minibatch, Alpha = alpha ?? s.Alpha, Beta = beta ?? s.Beta };
    }

    /// <summary>Learning without forgetting (reference: α 1, T 2, not balanced, one warm-up epoch).</summary>
    /// <param name="alpha">Weight α of the distillation term.</param>
    /// <param name="temperature">Temperature of the soft targets.</param>
    public static LwfSettings Lwf(double? alpha = null, double? temperature = null)
    {
        var s = (LwfSettings)MethodSettings.Reference("lwf", ExperimentBuilder.DefaultBufferSize);
        return s with { Alpha = alpha ?? s.Alpha, Temperature = temperature ?? s.Temperature };
    }

    /// <summary>iCaRL with a memory of <paramref name="memory"/> exemplars.</summary>
    public static IcarlSettings Icarl(int memory = ExperimentBuilder.DefaultBufferSize) =>
        (IcarlSettings)MethodSettings.Reference("icarl", memory);

    /// <summary>EWC trained alone (fine-tuning plus its penalty); see <see cref="Penalties.Ewc"/>.</summary>
    public static EwcSettings Ewc(double? lambda = null, FisherKind? fisher = null) => Penalties.Ewc(lambda, fisher);

    /// <summary>Online EWC trained alone; see <see cref="Penalties.OnlineEwc"/>.</summary>
    public static OnlineEwcSettings OnlineEwc(double? lambda = null, double? gamma = null, FisherKind? fisher = null) =>
        Penalties.OnlineEwc(lambda, gamma, fisher);

    /// <summary>EWC++ trained alone; see <see cref="Penalties.EwcPlusPlus"/>.</summary>
    public static EwcPlusPlusSettings EwcPlusPlus(double? lambda = null, double? fisherAlpha = null, FisherKind? fisher = null) =>
        Penalties.EwcPlusPlus(lambda, fisherAlpha, fisher);

    /// <summary>SI trained alone (with its reference learning rate 0.1 and gradient clipping); see <see cref="Penalties.Si"/>.</summary>
    public static SiSettings Si(double? c = null, double? xi = null) => Penalties.Si(c, xi);

    /// <summary>MAS trained alone; see <see cref="Penalties.Mas"/>.</summary>
    public static MasSettings Mas(double? lambda = null) => Penalties.Mas(lambda);

    /// <summary>L2 trained alone; see <see cref="Penalties.L2"/>.</summary>
    public static L2Settings L2(double? lambda = null) => Penalties.L2(lambda);

    /// <summary>RWalk trained alone; see <see cref="Penalties.Rwalk"/>.</summary>
    public static RwalkSettings Rwalk(double? lambda = null) => Penalties.Rwalk(lambda);

    /// <summary>SCP trained alone (with its gradient clipping); see <see cref="Penalties.Scp"/>.</summary>
    public static ScpSettings Scp(double? lambda = null, double? alpha = null) => Penalties.Scp(lambda, alpha);
}
