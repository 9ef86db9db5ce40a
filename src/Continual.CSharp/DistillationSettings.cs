using CoreKind = global::Continual.Methods.DistillationKind;
using CoreKinds = global::Continual.Methods.DistillationKindModule;
using CoreTerm = global::Continual.Methods.DistillationSettings;

namespace Continual.CSharp;

/// <summary>
/// A distillation term against the previous task's model snapshot, added to any method with
/// <see cref="ExperimentBuilder.WithDistillation"/>: one of the sealed records made by <see cref="Distillation"/>
/// (e.g. <see cref="KdDistillation"/>). Immutable; every <c>With…</c> method returns a changed copy.
/// </summary>
public abstract record DistillationSettings
{
    private protected DistillationSettings(CoreTerm core)
    {
        Weight = core.Weight;
        TemperatureSetting = core.Temperature;
        DimensionSetting = core.SubspaceDim;
        SamplesSetting = core.RelationSamples;
    }

    /// <summary>The term's name, as in results.json (e.g. "kd", "sd").</summary>
    public string Name => CoreKinds.name(Kind);

    /// <summary>The weight the term is multiplied by.</summary>
    public double Weight { get; private protected init; }

    // Every term carries all of the core's settings, so that a term read back from a configuration gives
    // the same configuration again; the kinds that use one expose it.
    private protected double TemperatureSetting { get; init; }

    private protected int DimensionSetting { get; init; }

    private protected int SamplesSetting { get; init; }

    internal abstract CoreKind Kind { get; }

    internal CoreTerm ToCore() => new(Kind, Weight, TemperatureSetting, DimensionSetting, SamplesSetting);

    /// <summary>The C# member that sets a setting of this term (by JSON name), e.g. "KdDistillation.WithTemperature"; null when it has none.</summary>
    internal string? Member(string setting) => OwnMember(setting) is string member ? $"{GetType().Name}.{member}" : null;

    private protected virtual string? OwnMember(string setting) => setting == "weight" ? "WithWeight" : null;

    /// <summary>The C# term of a core term.</summary>
    internal static DistillationSettings FromCore(CoreTerm term) => term.Kind.Tag switch
    {
        CoreKind.Tags.Kd => new KdDistillation(term),
        CoreKind.Tags.FitNets => new FitNetsDistillation(term),
        CoreKind.Tags.Nst => new NstDistillation(term),
        CoreKind.Tags.Attention => new AttentionTransferDistillation(term),
        CoreKind.Tags.Rkd => new RkdDistillation(term),
        CoreKind.Tags.Pod => new PodDistillation(term),
        CoreKind.Tags.Subspace => new SubspaceDistillation(term),
        CoreKind.Tags.RelationGraph => new RelationGraphDistillation(term),
        _ => throw new ArgumentException($"a distillation term this façade does not know: {term}", nameof(term)),
    };

    /// <summary>The core's default term of a kind (weight 1, its reference settings).</summary>
    internal static CoreTerm Reference(CoreKind kind) => CoreTerm.Of(kind);
}

/// <summary>Hinton's knowledge distillation on the old classes' logits.</summary>
public sealed record KdDistillation : DistillationSettings
{
    internal KdDistillation(CoreTerm core)
        : base(core)
    {
    }

    /// <summary>Temperature of the soft targets.</summary>
    public double Temperature => TemperatureSetting;

    internal override CoreKind Kind => CoreKind.Kd;

    /// <summary>This term with another weight.</summary>
    public KdDistillation WithWeight(double weight) => this with { Weight = weight };

    /// <summary>This term with another temperature.</summary>
    public KdDistillation WithTemperature(double temperature) => this with { TemperatureSetting = temperature };

    private protected override string? OwnMember(string setting) => setting == "temperature" ? nameof(WithTemperature) : base.OwnMember(setting);
}

/// <summary>FitNets on the embedding, through a trainable regressor trained with the model.</summary>
public sealed record FitNetsDistillation : DistillationSettings
{
    internal FitNetsDistillation(CoreTerm core)
        : base(core)
    {
    }

    internal override CoreKind Kind => CoreKind.FitNets;

    /// <summary>This term with another weight.</summary>
    public FitNetsDistillation WithWeight(double weight) => this with { Weight = weight };
}

/// <summary>Neuron selectivity transfer (polynomial kernel) on every layer's features.</summary>
public sealed record NstDistillation : DistillationSettings
{
    internal NstDistillation(CoreTerm core)
        : base(core)
    {
    }

    internal override CoreKind Kind => CoreKind.Nst;

    /// <summary>This term with another weight.</summary>
    public NstDistillation WithWeight(double weight) => this with { Weight = weight };
}

/// <summary>Attention transfer (p = 2) on every layer's features.</summary>
public sealed record AttentionTransferDistillation : DistillationSettings
{
    internal AttentionTransferDistillation(CoreTerm core)
        : base(core)
    {
    }

    internal override CoreKind Kind => CoreKind.Attention;

    /// <summary>This term with another weight.</summary>
    public AttentionTransferDistillation WithWeight(double weight) => this with { Weight = weight };
}

/// <summary>Relational knowledge distillation: distance and angle relations of the embeddings.</summary>
public sealed record RkdDistillation : DistillationSettings
{
    internal RkdDistillation(CoreTerm core)
        : base(core)
    {
    }

    /// <summary>At most this many samples enter the relations (whose angle terms cost n³ per step).</summary>
    public int Samples => SamplesSetting;

    internal override CoreKind Kind => CoreKind.Rkd;

    /// <summary>This term with another weight.</summary>
    public RkdDistillation WithWeight(double weight) => this with { Weight = weight };

    /// <summary>This term with another number of relation samples.</summary>
    public RkdDistillation WithSamples(int samples) => this with { SamplesSetting = samples };

    private protected override string? OwnMember(string setting) => setting == "relationSamples" ? nameof(WithSamples) : base.OwnMember(setting);
}

/// <summary>PODNet's pooled outputs distillation: POD-spatial on every layer, POD-flat on the embedding.</summary>
public sealed record PodDistillation : DistillationSettings
{
    internal PodDistillation(CoreTerm core)
        : base(core)
    {
    }

    internal override CoreKind Kind => CoreKind.Pod;

    /// <summary>This term with another weight.</summary>
    public PodDistillation WithWeight(double weight) => this with { Weight = weight };
}

/// <summary>Subspace distillation on the embedding, per class present in the step.</summary>
public sealed record SubspaceDistillation : DistillationSettings
{
    internal SubspaceDistillation(CoreTerm core)
        : base(core)
    {
    }

    /// <summary>The subspace dimension (capped per class at its sample count).</summary>
    public int Dimension => DimensionSetting;

    internal override CoreKind Kind => CoreKind.Subspace;

    /// <summary>This term with another weight.</summary>
    public SubspaceDistillation WithWeight(double weight) => this with { Weight = weight };

    /// <summary>This term with another subspace dimension.</summary>
    public SubspaceDistillation WithDimension(int dimension) => this with { DimensionSetting = dimension };

    private protected override string? OwnMember(string setting) => setting == "subspaceDim" ? nameof(WithDimension) : base.OwnMember(setting);
}

/// <summary>The exemplar relation graph on the buffer minibatch's embeddings (needs a method with a replay buffer: ER, DER, DER++).</summary>
public sealed record RelationGraphDistillation : DistillationSettings
{
    internal RelationGraphDistillation(CoreTerm core)
        : base(core)
    {
    }

    /// <summary>At most this many samples enter the relations.</summary>
    public int Samples => SamplesSetting;

    internal override CoreKind Kind => CoreKind.RelationGraph;

    /// <summary>This term with another weight.</summary>
    public RelationGraphDistillation WithWeight(double weight) => this with { Weight = weight };

    /// <summary>This term with another number of relation samples.</summary>
    public RelationGraphDistillation WithSamples(int samples) => this with { SamplesSetting = samples };

    private protected override string? OwnMember(string setting) => setting == "relationSamples" ? nameof(WithSamples) : base.OwnMember(setting);
}

/// <summary>
/// The distillation terms, with weight 1 and their reference settings unless given. Add any number of
/// them to a method with <see cref="ExperimentBuilder.WithDistillation"/>; they are added in order.
/// </summary>
/// <example>
/// <code>
/// var builder = new ExperimentBuilder()
///     .WithMethod(Methods.Der(buffer: 200))
///     .WithDistillation(Distillation.Kd(temperature: 2).WithWeight(0.5))
///     .WithDistillation(Distillation.Subspace(dimension: 2));
/// </code>
/// </example>
public static class Distillation
{
    /// <summary>Knowledge distillation on the old classes' logits (reference temperature 2).</summary>
    public static KdDistillation Kd(double? temperature = null)
    {
        var term = new KdDistillation(DistillationSettings.Reference(CoreKind.Kd));
        return temperature is double t ? term.WithTemperature(t) : term;
    }

    /// <summary>FitNets on the embedding.</summary>
    public static FitNetsDistillation FitNets() => new(DistillationSettings.Reference(CoreKind.FitNets));

    /// <summary>Neuron selectivity transfer on every layer's features.</summary>
    public static NstDistillation Nst() => new(DistillationSettings.Reference(CoreKind.Nst));

    /// <summary>Attention transfer on every layer's features.</summary>
    public static AttentionTransferDistillation AttentionTransfer() => new(DistillationSettings.Reference(CoreKind.Attention));

    /// <summary>Relational knowledge distillation (reference: 32 relation samples).</summary>
    public static RkdDistillation Rkd(int? samples = null)
    {
        var term = new RkdDistillation(DistillationSettings.Reference(CoreKind.Rkd));
        return samples is int n ? term.WithSamples(n) : term;
    }

    /// <summary>PODNet's pooled outputs distillation.</summary>
    public static PodDistillation Pod() => new(DistillationSettings.Reference(CoreKind.Pod));

    /// <summary>Subspace distillation (reference dimension 2).</summary>
    public static SubspaceDistillation Subspace(int? dimension = null)
    {
        var term = new SubspaceDistillation(DistillationSettings.Reference(CoreKind.Subspace));
        return dimension is int m ? term.WithDimension(m) : term;
    }

    /// <summary>The exemplar relation graph (reference: 32 relation samples; needs ER, DER or DER++).</summary>
    public static RelationGraphDistillation RelationGraph(int? samples = null)
    {
        var term = new RelationGraphDistillation(DistillationSettings.Reference(CoreKind.RelationGraph));
        return samples is int n ? term.WithSamples(n) : term;
    }
}
