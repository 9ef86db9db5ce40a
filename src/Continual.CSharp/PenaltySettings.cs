using CoreConfig = global::Continual.Methods.MethodConfig;
using CoreFisher = global::Continual.Penalties.FisherKind;
using CoreImportance = global::Continual.Methods.ImportanceConfig;
using CoreMethods = global::Continual.Methods;
using Registry = global::Continual.Methods.Registry;

namespace Continual.CSharp;

/// <summary>Which labels the diagonal Fisher uses for (∂ log p(y|x) / ∂θ)².</summary>
public enum FisherKind
{
    /// <summary>The "true" Fisher: y drawn from the model's own p(y|x), one draw per sample.</summary>
    Sampled,

    /// <summary>The empirical Fisher: y the training label.</summary>
    Empirical,

    /// <summary>The training label, each sample's squared gradient weighted by p(y|x).</summary>
    LabelWeighted,
}

/// <summary>
/// A parameter-importance method with its settings, made by <see cref="Penalties"/> (or <see cref="Methods"/>):
/// added as a penalty to another method with <see cref="ExperimentBuilder.WithPenalty(PenaltySettings)"/>
/// (e.g. DER++ plus SI), or trained alone with <see cref="ExperimentBuilder.WithMethod"/> (fine-tuning
/// plus its penalty). Immutable; every <c>With…</c> method returns a changed copy.
/// </summary>
public abstract record PenaltySettings : MethodSettings
{
    private protected PenaltySettings()
    {
    }

    /// <summary>The core's form of the importance method's settings.</summary>
    internal abstract CoreImportance ToImportance();

    internal sealed override CoreConfig ToCore() => CoreConfig.NewImportance(ToImportance());

    /// <summary>The C# settings of a core importance configuration.</summary>
    internal static PenaltySettings FromCore(CoreImportance config) => config switch
    {
        CoreImportance.Ewc s => new EwcSettings(s.Item),
        CoreImportance.OnlineEwc s => new OnlineEwcSettings(s.Item),
        CoreImportance.EwcPlusPlus s => new EwcPlusPlusSettings(s.Item),
        CoreImportance.Si s => new SiSettings(s.Item),
        CoreImportance.Mas s => new MasSettings(s.Item),
        CoreImportance.Rwalk s => new RwalkSettings(s.Item),
        CoreImportance.Scp s => new ScpSettings(s.Item),
        CoreImportance.L2 s => new L2Settings(s.Item),
        // An importance method added to the core's registry without a typed builder here: reached by name.
        _ => new NamedPenaltySettings(config),
    };

    /// <summary>The registry's reference settings of an importance method.</summary>
    internal static PenaltySettings Reference(string name) => FromCore(Registry.tryImportance(name).Value.Default);

    internal static CoreFisher FisherToCore(FisherKind kind) => kind switch
    {
        FisherKind.Sampled => CoreFisher.Sampled,
        FisherKind.Empirical => CoreFisher.Empirical,
        FisherKind.LabelWeighted => CoreFisher.LabelWeighted,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "not a Fisher kind"),
    };

    internal static FisherKind FisherFromCore(CoreFisher kind) =>
        kind.IsSampled ? FisherKind.Sampled : kind.IsEmpirical ? FisherKind.Empirical : FisherKind.LabelWeighted;

    private protected static FisherKind Checked(FisherKind kind) =>
        Enum.IsDefined(kind) ? kind : throw new ArgumentOutOfRangeException(nameof(kind), kind, "not a Fisher kind");
}

/// <summary>
/// An importance method of the core's registry that this façade has no typed builder for: chosen with
/// <see cref="ExperimentBuilder.WithStrategy"/> or <see cref="ExperimentBuilder.WithPenalty(string?)"/>, its
/// settings set with <see cref="ExperimentBuilder.WithOption(string, double)"/>.
/// </summary>
public sealed record NamedPenaltySettings : PenaltySettings
{
    private readonly CoreImportance _core;

    internal NamedPenaltySettings(CoreImportance core)
    {
        _core = core;
        Name = Registry.importanceEntryOf(core).Name;
    }

    /// <inheritdoc />
    public override string Name { get; }

    internal override CoreImportance ToImportance() => _core;

    private protected override string? OwnMember(string setting) => null;
}

/// <summary>EWC: one Fisher and anchor per task.</summary>
public sealed record EwcSettings : PenaltySettings
{
    internal EwcSettings(CoreMethods.Ewc.Settings s)
    {
        Lambda = s.Lambda;
        Fisher = FisherFromCore(s.Fisher);
    }

    /// <inheritdoc />
    public override string Name => "ewc";

    /// <summary>Penalty strength λ.</summary>
    public double Lambda { get; internal init; }

    /// <summary>The Fisher's labels.</summary>
    public FisherKind Fisher { get; internal init; }

    /// <summary>These settings with another strength λ.</summary>
    public EwcSettings WithLambda(double lambda) => this with { Lambda = lambda };

    /// <summary>These settings with another kind of Fisher.</summary>
    public EwcSettings WithFisher(FisherKind fisher) => this with { Fisher = Checked(fisher) };

    internal override CoreImportance ToImportance() => CoreImportance.NewEwc(new CoreMethods.Ewc.Settings(Lambda, FisherToCore(Fisher)));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "lambda" => nameof(WithLambda),
        "fisher" => nameof(WithFisher),
        _ => null,
    };
}

/// <summary>Online EWC: one running Fisher, decayed by γ at every task.</summary>
public sealed record OnlineEwcSettings : PenaltySettings
{
    internal OnlineEwcSettings(CoreMethods.OnlineEwc.Settings s)
    {
        Lambda = s.Lambda;
        Gamma = s.Gamma;
        Fisher = FisherFromCore(s.Fisher);
    }

    /// <inheritdoc />
    public override string Name => "ewc-online";

    /// <summary>Penalty strength λ.</summary>
    public double Lambda { get; internal init; }

    /// <summary>Decay γ of the old Fisher.</summary>
    public double Gamma { get; internal init; }

    /// <summary>The Fisher's labels.</summary>
    public FisherKind Fisher { get; internal init; }

    /// <summary>These settings with another strength λ.</summary>
    public OnlineEwcSettings WithLambda(double lambda) => this with { Lambda = lambda };

    /// <summary>These settings with another decay γ.</summary>
    public OnlineEwcSettings WithGamma(double gamma) => this with { Gamma = gamma };

    /// <summary>These settings with another kind of Fisher.</summary>
    public OnlineEwcSettings WithFisher(FisherKind fisher) => this with { Fisher = Checked(fisher) };

    internal override CoreImportance ToImportance() =>
        CoreImportance.NewOnlineEwc(new CoreMethods.OnlineEwc.Settings(Lambda, Gamma, FisherToCore(Fisher)));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "lambda" => nameof(WithLambda),
        "gamma" => nameof(WithGamma),
        "fisher" => nameof(WithFisher),
        _ => null,
    };
}

/// <summary>EWC++: a running Fisher updated every batch.</summary>
public sealed record EwcPlusPlusSettings : PenaltySettings
{
    internal EwcPlusPlusSettings(CoreMethods.EwcPlusPlus.Settings s)
    {
        Lambda = s.Lambda;
        FisherAlpha = s.FisherAlpha;
        Fisher = FisherFromCore(s.Fisher);
    }

    /// <inheritdoc />
    public override string Name => "ewc++";

    /// <summary>Penalty strength λ.</summary>
    public double Lambda { get; internal init; }

    /// <summary>Weight α of the new batch in the running Fisher, in [0, 1].</summary>
    public double FisherAlpha { get; internal init; }

    /// <summary>The Fisher's labels.</summary>
    public FisherKind Fisher { get; internal init; }

    /// <summary>These settings with another strength λ.</summary>
    public EwcPlusPlusSettings WithLambda(double lambda) => this with { Lambda = lambda };

    /// <summary>These settings with another weight α of the batch Fisher.</summary>
    public EwcPlusPlusSettings WithFisherAlpha(double fisherAlpha) => this with { FisherAlpha = fisherAlpha };

    /// <summary>These settings with another kind of Fisher.</summary>
    public EwcPlusPlusSettings WithFisher(FisherKind fisher) => this with { Fisher = Checked(fisher) };

    internal override CoreImportance ToImportance() =>
        CoreImportance.NewEwcPlusPlus(new CoreMethods.EwcPlusPlus.Settings(Lambda, FisherAlpha, FisherToCore(Fisher)));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "lambda" => nameof(WithLambda),
        "fisherAlpha" => nameof(WithFisherAlpha),
        "fisher" => nameof(WithFisher),
        _ => null,
    };
}

/// <summary>Synaptic intelligence (SI): path integrals of every parameter's contribution to the loss.</summary>
public sealed record SiSettings : PenaltySettings
{
    internal SiSettings(CoreMethods.Si.Settings s)
    {
        C = s.C;
        Xi = s.Xi;
    }

    /// <inheritdoc />
    public override string Name => "si";

    /// <summary>Penalty strength c.</summary>
    public double C { get; internal init; }

    /// <summary>Damping ξ.</summary>
    public double Xi { get; internal init; }

    /// <summary>These settings with another strength c.</summary>
    public SiSettings WithC(double c) => this with { C = c };

    /// <summary>These settings with another damping ξ.</summary>
    public SiSettings WithXi(double xi) => this with { Xi = xi };

    internal override CoreImportance ToImportance() => CoreImportance.NewSi(new CoreMethods.Si.Settings(C, Xi));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "c" => nameof(WithC),
        "xi" => nameof(WithXi),
        _ => null,
    };
}

/// <summary>Memory-aware synapses (MAS): sensitivity of the output norm.</summary>
public sealed record MasSettings : PenaltySettings
{
    internal MasSettings(CoreMethods.Mas.Settings s)
    {
        Lambda = s.Lambda;
    }

    /// <inheritdoc />
    public override string Name => "mas";

    /// <summary>Penalty strength λ.</summary>
    public double Lambda { get; internal init; }

    /// <summary>These settings with another strength λ.</summary>
    public MasSettings WithLambda(double lambda) => this with { Lambda = lambda };

    internal override CoreImportance ToImportance() => CoreImportance.NewMas(new CoreMethods.Mas.Settings(Lambda));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "lambda" => nameof(WithLambda),
        _ => null,
    };
}

/// <summary>L2: every parameter anchored equally where the last task ended.</summary>
public sealed record L2Settings : PenaltySettings
{
    internal L2Settings(CoreMethods.L2.Settings s)
    {
        Lambda = s.Lambda;
    }

    /// <inheritdoc />
    public override string Name => "l2";

    /// <summary>Penalty strength λ.</summary>
    public double Lambda { get; internal init; }

    /// <summary>These settings with another strength λ.</summary>
    public L2Settings WithLambda(double lambda) => this with { Lambda = lambda };

    internal override CoreImportance ToImportance() => CoreImportance.NewL2(new CoreMethods.L2.Settings(Lambda));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "lambda" => nameof(WithLambda),
        _ => null,
    };
}

/// <summary>RWalk: EWC++'s running Fisher plus path scores.</summary>
public sealed record RwalkSettings : PenaltySettings
{
    internal RwalkSettings(CoreMethods.Rwalk.Settings s)
    {
        Lambda = s.Lambda;
        FisherAlpha = s.FisherAlpha;
        ScoreEvery = s.ScoreEvery;
        Epsilon = s.Epsilon;
        Fisher = FisherFromCore(s.Fisher);
    }

    /// <inheritdoc />
    public override string Name => "rwalk";

    /// <summary>Penalty strength λ.</summary>
    public double Lambda { get; internal init; }

    /// <summary>Weight α of the new batch in the running Fisher, in [0, 1].</summary>
    public double FisherAlpha { get; internal init; }

    /// <summary>Steps per path-score window.</summary>
    public int ScoreEvery { get; internal init; }

    /// <summary>ε in the score's denominator.</summary>
    public double Epsilon { get; internal init; }

    /// <summary>The Fisher's labels.</summary>
    public FisherKind Fisher { get; internal init; }

    /// <summary>These settings with another strength λ.</summary>
    public RwalkSettings WithLambda(double lambda) => this with { Lambda = lambda };

    /// <summary>These settings with another weight α of the batch Fisher.</summary>
    public RwalkSettings WithFisherAlpha(double fisherAlpha) => this with { FisherAlpha = fisherAlpha };

    /// <summary>These settings with another score window.</summary>
    public RwalkSettings WithScoreEvery(int steps) => this with { ScoreEvery = steps };

    /// <summary>These settings with another ε.</summary>
    public RwalkSettings WithEpsilon(double epsilon) => this with { Epsilon = epsilon };

    /// <summary>These settings with another kind of Fisher.</summary>
    public RwalkSettings WithFisher(FisherKind fisher) => this with { Fisher = Checked(fisher) };

    internal override CoreImportance ToImportance() =>
        CoreImportance.NewRwalk(new CoreMethods.Rwalk.Settings(Lambda, FisherAlpha, ScoreEvery, Epsilon, FisherToCore(Fisher)));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "lambda" => nameof(WithLambda),
        "fisherAlpha" => nameof(WithFisherAlpha),
        "scoreEvery" => nameof(WithScoreEvery),
        "epsilon" => nameof(WithEpsilon),
        "fisher" => nameof(WithFisher),
        _ => null,
    };
}

/// <summary>Sliced Cramér preservation (SCP).</summary>
public sealed record ScpSettings : PenaltySettings
{
    internal ScpSettings(CoreMethods.Scp.Settings s)
    {
        Lambda = s.Lambda;
        Alpha = s.Alpha;
        Slices = s.Slices;
        BatchSize = s.BatchSize;
    }

    /// <inheritdoc />
    public override string Name => "scp";

    /// <summary>Penalty strength λ.</summary>
    public double Lambda { get; internal init; }

    /// <summary>Weight α of the old Γ, in [0, 1).</summary>
    public double Alpha { get; internal init; }

    /// <summary>Random slices per batch.</summary>
    public int Slices { get; internal init; }

    /// <summary>Samples per batch mean.</summary>
    public int BatchSize { get; internal init; }

    /// <summary>These settings with another strength λ.</summary>
    public ScpSettings WithLambda(double lambda) => this with { Lambda = lambda };

    /// <summary>These settings with another weight α of the old Γ.</summary>
    public ScpSettings WithAlpha(double alpha) => this with { Alpha = alpha };

    /// <summary>These settings with another number of slices per batch.</summary>
    public ScpSettings WithSlices(int slices) => this with { Slices = slices };

    /// <summary>These settings with another number of samples per batch mean.</summary>
    public ScpSettings WithBatchSize(int batchSize) => this with { BatchSize = batchSize };

    internal override CoreImportance ToImportance() =>
        CoreImportance.NewScp(new CoreMethods.Scp.Settings(Lambda, Alpha, Slices, BatchSize));

    private protected override string? OwnMember(string setting) => setting switch
    {
        "lambda" => nameof(WithLambda),
        "alpha" => nameof(WithAlpha),
        "slices" => nameof(WithSlices),
        "batchSize" => nameof(WithBatchSize),
        _ => null,
    };
}

/// <summary>
/// The parameter-importance methods, their optional settings defaulting to the core registry's reference
/// settings. Add one to another method with <see cref="ExperimentBuilder.WithPenalty(PenaltySettings)"/>; its
/// gradient clipping (SI, SCP) comes with it unless the run clips already or the caller chose the clipping.
/// </summary>
/// <example>
/// <code>
/// var builder = new ExperimentBuilder().WithMethod(Methods.Derpp(buffer: 500)).WithPenalty(Penalties.Si(c: 1));
/// </code>
/// </example>
public static class Penalties
{
    /// <summary>EWC (reference: λ 100, the sampled "true" Fisher).</summary>
    /// <param name="lambda">Penalty strength λ.</param>
    /// <param name="fisher">The Fisher's labels.</param>
    public static EwcSettings Ewc(double? lambda = null, FisherKind? fisher = null)
    {
        var s = (EwcSettings)PenaltySettings.Reference("ewc");
        return s with { Lambda = lambda ?? s.Lambda, Fisher = fisher ?? s.Fisher };
    }

    /// <summary>Online EWC (reference: λ 90, γ 1, the p(y|x)-weighted Fisher).</summary>
    /// <param name="lambda">Penalty strength λ.</param>
    /// <param name="gamma">Decay γ of the old Fisher.</param>
    /// <param name="fisher">The Fisher's labels.</param>
    public static OnlineEwcSettings OnlineEwc(double? lambda = null, double? gamma = null, FisherKind? fisher = null)
    {
        var s = (OnlineEwcSettings)PenaltySettings.Reference("ewc-online");
        return s with { Lambda = lambda ?? s.Lambda, Gamma = gamma ?? s.Gamma, Fisher = fisher ?? s.Fisher };
    }

    /// <summary>EWC++ (reference: λ 100, α 0.001, the empirical Fisher).</summary>
    /// <param name="lambda">Penalty strength λ.</param>
    /// <param name="fisherAlpha">Weight α of the new batch in the running Fisher.</param>
    /// <param name="fisher">The Fisher's labels.</param>
    public static EwcPlusPlusSettings EwcPlusPlus(double? lambda = null, double? fisherAlpha = null, FisherKind? fisher = null)
    {
        var s = (EwcPlusPlusSettings)PenaltySettings.Reference("ewc++");
        return s with { Lambda = lambda ?? s.Lambda, FisherAlpha = fisherAlpha ?? s.FisherAlpha, Fisher = fisher ?? s.Fisher };
    }

    /// <summary>SI (reference: c 1, ξ 0.9; gradients clipped to 1).</summary>
    /// <param name="c">Penalty strength c.</param>
    /// <param name="xi">Damping ξ.</param>
    public static SiSettings Si(double? c = null, double? xi = null)
    {
        var s = (SiSettings)PenaltySettings.Reference("si");
        return s with { C = c ?? s.C, Xi = xi ?? s.Xi };
    }

    /// <summary>MAS (reference: λ 0.1).</summary>
    /// <param name="lambda">Penalty strength λ.</param>
    public static MasSettings Mas(double? lambda = null)
    {
        var s = (MasSettings)PenaltySettings.Reference("mas");
        return s with { Lambda = lambda ?? s.Lambda };
    }

    /// <summary>L2 (reference: λ 0.1).</summary>
    /// <param name="lambda">Penalty strength λ.</param>
    public static L2Settings L2(double? lambda = null)
    {
        var s = (L2Settings)PenaltySettings.Reference("l2");
        return s with { Lambda = lambda ?? s.Lambda };
    }

    /// <summary>RWalk (reference: λ 10, α 0.9, 10-step windows, ε the float32 machine epsilon, the empirical Fisher).</summary>
    /// <param name="lambda">Penalty strength λ.</param>
    public static RwalkSettings Rwalk(double? lambda = null)
    {
        var s = (RwalkSettings)PenaltySettings.Reference("rwalk");
        return s with { Lambda = lambda ?? s.Lambda };
    }

    /// <summary>SCP (reference: λ 3, α 0.9, 50 slices, batch means of 100 samples; gradients clipped to 1).</summary>
    /// <param name="lambda">Penalty strength λ.</param>
    /// <param name="alpha">Weight α of the old Γ.</param>
    public static ScpSettings Scp(double? lambda = null, double? alpha = null)
    {
        var s = (ScpSettings)PenaltySettings.Reference("scp");
        return s with { Lambda = lambda ?? s.Lambda, Alpha = alpha ?? s.Alpha };
    }
}
