using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.FSharp.Core;
using Registry = global::Continual.Methods.Registry;

namespace Continual.CSharp.Tests;

/// <summary>Checks of the typed builders: Methods, Penalties, Distillation and ExperimentBuilder.WithMethod and friends.</summary>
internal static partial class Checks
{
    /// <summary>The public types of the typed surface (the signature check covers every exported type; these must be among them).</summary>
    private static readonly Type[] TypedSurface =
    [
        typeof(Methods), typeof(Penalties), typeof(Distillation), typeof(FisherKind),
        typeof(MethodSettings), typeof(SgdSettings), typeof(JointSettings), typeof(ErSettings), typeof(DerSettings),
        typeof(DerppSettings), typeof(LwfSettings), typeof(IcarlSettings),
        typeof(PenaltySettings), typeof(EwcSettings), typeof(OnlineEwcSettings), typeof(EwcPlusPlusSettings), typeof(SiSettings),
        typeof(MasSettings), typeof(RwalkSettings), typeof(ScpSettings), typeof(L2Settings),
        typeof(DistillationSettings), typeof(KdDistillation), typeof(FitNetsDistillation), typeof(NstDistillation),
        typeof(AttentionTransferDistillation), typeof(RkdDistillation), typeof(PodDistillation), typeof(SubspaceDistillation),
        typeof(RelationGraphDistillation),
    ];

    private static List<(string Name, Func<Task> Body)> TypedChecks =>
    [
        ("typed: every factory's defaults are the registry's, typed and named paths agree", FactoriesGiveTheRegistrysDefaults),
        ("typed: Methods.Derpp(buffer: 200) brings its reference settings; WithAlpha changes only α", DerppSettingsReachTheConfiguration),
        ("typed: a method brings its run settings and a penalty its clipping, unless set, in any order", ProtocolUnlessSetExplicitly),
        ("typed: WithBuffer resizes a typed method; options by name apply over typed settings", BufferAndOptionsOverTypedMethods),
        ("typed: the settings read back are the typed ones", SettingsReadBack),
        ("typed: a registry method without a typed builder is carried by name, its options applied", NamedFallback),
        ("typed: invalid values are told with the C# member that sets them", MessagesNameCSharpMembers),
        ("validate: no message a C# caller can see contains '--'", NoCommandLineOptionsInMessages),
        ("run: typed settings reach results.json's config", TypedSettingsInResults),
        ("run: the typed builder gives the same matrices as the named path", TypedRunMatchesNamedRun),
    ];

    /// <summary>Each method's factory at a buffer size (the typed twin of WithStrategy(name).WithBuffer(size)).</summary>
    private static readonly Dictionary<string, Func<int, MethodSettings>> Factories = new()
    {
        ["sgd"] = _ => Methods.Sgd(),
        ["joint"] = _ => Methods.Joint(),
        ["er"] = b => Methods.Er(buffer: b),
        ["der"] = b => Methods.Der(buffer: b),
        ["derpp"] = b => Methods.Derpp(buffer: b),
        ["lwf"] = _ => Methods.Lwf(),
        ["icarl"] = b => Methods.Icarl(memory: b),
        ["ewc"] = _ => Methods.Ewc(),
        ["ewc-online"] = _ => Methods.OnlineEwc(),
        ["ewc++"] = _ => Methods.EwcPlusPlus(),
        ["si"] = _ => Methods.Si(),
        ["mas"] = _ => Methods.Mas(),
        ["l2"] = _ => Methods.L2(),
        ["rwalk"] = _ => Methods.Rwalk(),
        ["scp"] = _ => Methods.Scp(),
    };

    private static readonly Dictionary<string, Func<PenaltySettings>> PenaltyFactories = new()
    {
        ["ewc"] = () => Penalties.Ewc(),
        ["ewc-online"] = () => Penalties.OnlineEwc(),
        ["ewc++"] = () => Penalties.EwcPlusPlus(),
        ["si"] = () => Penalties.Si(),
        ["mas"] = () => Penalties.Mas(),
        ["l2"] = () => Penalties.L2(),
        ["rwalk"] = () => Penalties.Rwalk(),
        ["scp"] = () => Penalties.Scp(),
    };

    private static readonly Dictionary<string, Func<DistillationSettings>> TermFactories = new()
    {
        ["kd"] = () => Distillation.Kd(),
        ["fitnets"] = () => Distillation.FitNets(),
        ["nst"] = () => Distillation.Nst(),
        ["at"] = () => Distillation.AttentionTransfer(),
        ["rkd"] = () => Distillation.Rkd(),
        ["pod"] = () => Distillation.Pod(),
        ["sd"] = () => Distillation.Subspace(),
        ["relation"] = () => Distillation.RelationGraph(),
    };

    private static Task FactoriesGiveTheRegistrysDefaults()
    {
        // Every factory is a method of the registry; a registry method without one is reached by name.
        Assert.True(Factories.Keys.All(ExperimentBuilder.KnownStrategies.Contains), "Methods names only the registry's methods");
        Assert.True(PenaltyFactories.Keys.All(Registry.importanceNames.Contains), "Penalties names only the registry's importance methods");
        foreach (var name in ExperimentBuilder.KnownStrategies.Where(n => !Factories.ContainsKey(n)))
            Assert.Equal(name, new ExperimentBuilder().WithStrategy(name).Settings.Method.Name);
        Assert.True(TermFactories.Keys.Order().SequenceEqual(global::Continual.Methods.DistillationKindModule.names.Order()), "Distillation covers every term");
        foreach (var (name, factory) in Factories)
        {
            var entry = Registry.tryMethod(name).Value;
            foreach (var buffer in new[] { 50, 200, 500, 2000, 5120 })
            {
                var method = factory(buffer);
                Assert.Equal(name, method.Name);
                // The factory's settings are the registry's for the buffer size ...
                Assert.Equal(entry.Default.Invoke(buffer), method.ToCore());
                // ... and the typed path gives the configuration of the named one, run settings included.
                var typed = new ExperimentBuilder().WithMethod(method).Settings.ToJson();
                var named = new ExperimentBuilder().WithStrategy(name).WithBuffer(buffer).Settings.ToJson();
                Assert.Equal(named, typed);
            }
        }
        foreach (var (name, factory) in PenaltyFactories)
        {
            var penalty = factory();
            Assert.Equal(name, penalty.Name);
            Assert.Equal(Registry.tryImportance(name).Value.Default, penalty.ToImportance());
            var typed = new ExperimentBuilder().WithMethod(Methods.Der(buffer: 200)).WithPenalty(penalty).Settings.ToJson();
            var named = new ExperimentBuilder().WithStrategy("der").WithBuffer(200).WithPenalty(name).Settings.ToJson();
            Assert.Equal(named, typed);
            // Methods.X and Penalties.X are the same settings.
            Assert.Equal<MethodSettings>(penalty, Factories[name](500));
        }
        foreach (var (name, factory) in TermFactories)
        {
            var term = factory();
            Assert.Equal(name, term.Name);
            Assert.Equal(global::Continual.Methods.DistillationSettings.Of(global::Continual.Methods.DistillationKindModule.parse(name).Value), term.ToCore());
            var typed = new ExperimentBuilder().WithDistillation(term).Settings.ToJson();
            var named = new ExperimentBuilder().WithOption("distill", name).Settings.ToJson();
            Assert.Equal(named, typed);
        }
        // Optional arguments set just their setting.
        Assert.Equal(Methods.Derpp(buffer: 200).WithAlpha(0.3).WithBeta(0.7).WithMinibatch(5), Methods.Derpp(buffer: 200, minibatch: 5, alpha: 0.3, beta: 0.7));
        Assert.Equal(Methods.Der(buffer: 5120).WithAlpha(0.1), Methods.Der(buffer: 5120, alpha: 0.1));
        Assert.Equal(Methods.Er(buffer: 200).WithMinibatch(32), Methods.Er(buffer: 200, minibatch: 32));
        Assert.Equal(Methods.Lwf().WithAlpha(2).WithTemperature(3), Methods.Lwf(alpha: 2, temperature: 3));
        Assert.Equal(Penalties.Ewc().WithLambda(5).WithFisher(FisherKind.Empirical), Penalties.Ewc(lambda: 5, fisher: FisherKind.Empirical));
        Assert.Equal(Penalties.OnlineEwc().WithLambda(5).WithGamma(0.9).WithFisher(FisherKind.Sampled), Penalties.OnlineEwc(lambda: 5, gamma: 0.9, fisher: FisherKind.Sampled));
        Assert.Equal(Penalties.EwcPlusPlus().WithLambda(5).WithFisherAlpha(0.5).WithFisher(FisherKind.LabelWeighted), Penalties.EwcPlusPlus(lambda: 5, fisherAlpha: 0.5, fisher: FisherKind.LabelWeighted));
        Assert.Equal(Penalties.Si().WithC(2).WithXi(0.5), Penalties.Si(c: 2, xi: 0.5));
        Assert.Equal(Penalties.Mas().WithLambda(2), Penalties.Mas(lambda: 2));
        Assert.Equal(Penalties.Rwalk().WithLambda(2), Penalties.Rwalk(lambda: 2));
        Assert.Equal(Penalties.Scp().WithLambda(2).WithAlpha(0.5), Penalties.Scp(lambda: 2, alpha: 0.5));
        Assert.Equal(Distillation.Kd().WithTemperature(4), Distillation.Kd(temperature: 4));
        Assert.Equal(Distillation.Subspace().WithDimension(4), Distillation.Subspace(dimension: 4));
        Assert.Equal(Distillation.Rkd().WithSamples(8), Distillation.Rkd(samples: 8));
        Assert.Equal(Distillation.RelationGraph().WithSamples(8), Distillation.RelationGraph(samples: 8));
        Assert.Equal(Methods.Icarl(memory: 2000).Memory, 2000);
        return Task.CompletedTask;
    }

    private static Task DerppSettingsReachTheConfiguration()
    {
        var reference = new ExperimentBuilder().WithMethod(Methods.Derpp(buffer: 200)).Settings;
        var derpp = (DerppSettings)reference.Method;
        Assert.Equal(0.2, derpp.Alpha);
        Assert.Equal(1.0, derpp.Beta);
        Assert.Equal(128, derpp.Minibatch);
        Assert.Equal(200, derpp.BufferSize);
        Assert.Equal(0.03, reference.LearningRate);
        Assert.Equal(200, reference.BufferSize);
        Assert.Equal("derpp", reference.Strategy);
        // WithAlpha changes α and nothing else in the whole configuration.
        var changed = new ExperimentBuilder().WithMethod(Methods.Derpp(buffer: 200).WithAlpha(0.3)).Settings;
        Assert.Equal(0.3, ((DerppSettings)changed.Method).Alpha);
        var differences = Differences(JsonDocument.Parse(reference.ToJson()).RootElement, JsonDocument.Parse(changed.ToJson()).RootElement, "");
        Assert.True(differences.SequenceEqual(["method.alpha"]), "differences: " + string.Join(", ", differences));
        Assert.True(reference.Hash != changed.Hash, "the hash follows the settings");
        // The other replay settings reach the configuration the same way.
        var der = (DerSettings)new ExperimentBuilder().WithMethod(Methods.Der(buffer: 500)).Settings.Method;
        Assert.Equal((128, 1.0), (der.Minibatch, der.Alpha));
        var er = new ExperimentBuilder().WithMethod(Methods.Er(buffer: 200)).Settings;
        Assert.Equal((0.01, 10), (er.LearningRate, ((ErSettings)er.Method).Minibatch));
        var lwf = new ExperimentBuilder().WithMethod(Methods.Lwf().WithTemperature(3).Balanced()).Settings;
        Assert.Equal((3.0, true, 5e-4), (((LwfSettings)lwf.Method).Temperature, ((LwfSettings)lwf.Method).IsBalanced, lwf.WeightDecay));
        Assert.True(!((LwfSettings)lwf.Method).Balanced(false).IsBalanced);
        return Task.CompletedTask;
    }

    /// <summary>The JSON paths where two documents differ.</summary>
    private static List<string> Differences(JsonElement a, JsonElement b, string path)
    {
        if (a.ValueKind == JsonValueKind.Object && b.ValueKind == JsonValueKind.Object)
        {
            var names = a.EnumerateObject().Select(p => p.Name).Union(b.EnumerateObject().Select(p => p.Name));
            return names.SelectMany(n =>
                a.TryGetProperty(n, out var x) && b.TryGetProperty(n, out var y) ? Differences(x, y, path.Length == 0 ? n : path + "." + n) : [path + "." + n]).ToList();
        }
        return a.GetRawText() == b.GetRawText() ? [] : [path];
    }

    private static Task ProtocolUnlessSetExplicitly()
    {
        // SI alone: its learning rate and clipping.
        var si = new ExperimentBuilder().WithMethod(Methods.Si(c: 2)).Settings;
        Assert.Equal((0.1, (double?)1.0), (si.LearningRate, si.GradientClipping));
        Assert.Equal(2.0, ((SiSettings)si.Method).C);
        // A penalty brings its clipping (SI, SCP), others none.
        var derpp = new ExperimentBuilder().WithMethod(Methods.Derpp(buffer: 200));
        Assert.Equal<double?>(null, derpp.Settings.GradientClipping);
        Assert.Equal<double?>(1.0, derpp.WithPenalty(Penalties.Si(c: 1)).Settings.GradientClipping);
        Assert.Equal<double?>(1.0, derpp.WithPenalty(Penalties.Scp()).Settings.GradientClipping);
        Assert.Equal<double?>(null, derpp.WithPenalty(Penalties.Ewc(lambda: 100)).Settings.GradientClipping);
        // Set explicitly, the caller's clipping wins in either order, "none" included.
        Assert.Equal<double?>(null, derpp.WithPenalty(Penalties.Si()).WithGradientClipping(null).Settings.GradientClipping);
        Assert.Equal<double?>(null, derpp.WithGradientClipping(null).WithPenalty(Penalties.Si()).Settings.GradientClipping);
        Assert.Equal<double?>(0.5, derpp.WithGradientClipping(0.5).WithPenalty(Penalties.Si()).Settings.GradientClipping);
        Assert.Equal<double?>(5.0, new ExperimentBuilder().WithGradientClipping(5).WithMethod(Methods.Scp()).Settings.GradientClipping);
        // Learning rate and weight decay: the method's unless set, whatever the order.
        Assert.Equal(0.5, new ExperimentBuilder().WithLearningRate(0.5).WithMethod(Methods.Si()).Settings.LearningRate);
        Assert.Equal(0.5, new ExperimentBuilder().WithMethod(Methods.Si()).WithLearningRate(0.5).Settings.LearningRate);
        Assert.Equal(0.0, new ExperimentBuilder().WithWeightDecay(0).WithMethod(Methods.Lwf()).Settings.WeightDecay);
        Assert.Equal(5e-4, new ExperimentBuilder().WithMethod(Methods.Lwf()).Settings.WeightDecay);
        // Choosing another method afterwards brings that method's settings.
        var replaced = new ExperimentBuilder().WithMethod(Methods.Si()).WithMethod(Methods.Er(buffer: 200)).Settings;
        Assert.Equal((0.01, (double?)null), (replaced.LearningRate, replaced.GradientClipping));
        Assert.Equal(0.1, new ExperimentBuilder().WithMethod(Methods.Er(buffer: 200)).WithStrategy("si").Settings.LearningRate);
        return Task.CompletedTask;
    }

    private static Task BufferAndOptionsOverTypedMethods()
    {
        // A typed method's memory is its own; a later WithBuffer resizes it and keeps its other settings.
        var typed = new ExperimentBuilder().WithMethod(Methods.Derpp(buffer: 500).WithAlpha(0.3));
        Assert.Equal(500, typed.Settings.BufferSize);
        var resized = (DerppSettings)typed.WithBuffer(300).Settings.Method;
        Assert.Equal((300, 0.3, 10), (resized.BufferSize, resized.Alpha, resized.Minibatch));
        Assert.Equal(300, ((IcarlSettings)new ExperimentBuilder().WithMethod(Methods.Icarl(memory: 2000)).WithBuffer(300).Settings.Method).Memory);
        // A later WithMethod replaces an earlier WithBuffer.
        Assert.Equal(200, new ExperimentBuilder().WithBuffer(300).WithMethod(Methods.Er(buffer: 200)).Settings.BufferSize);
        // The reference run settings follow the memory's size (ER: 0.01 at 200, 0.1 at 500).
        Assert.Equal(0.1, new ExperimentBuilder().WithMethod(Methods.Er(buffer: 200)).WithBuffer(500).Settings.LearningRate);
        // Options by name apply over the typed settings, whatever the order; others stay.
        var over = (DerppSettings)new ExperimentBuilder().WithOption("alpha", 0.9).WithMethod(Methods.Derpp(buffer: 200).WithBeta(0.25)).Settings.Method;
        Assert.Equal((0.9, 0.25), (over.Alpha, over.Beta));
        var fisher = (EwcSettings)new ExperimentBuilder().WithMethod(Methods.Ewc()).WithOption("fisher", "empirical").WithOption("lambda", 7).Settings.Method;
        Assert.Equal((FisherKind.Empirical, 7.0), (fisher.Fisher, fisher.Lambda));
        var temperature = new ExperimentBuilder().WithMethod(Methods.Lwf()).WithDistillation(Distillation.Kd()).WithOption("temperature", 4).Settings;
        Assert.Equal((4.0, 4.0), (((LwfSettings)temperature.Method).Temperature, ((KdDistillation)temperature.Distillation[0]).Temperature));
        return Task.CompletedTask;
    }

    private static Task NamedFallback()
    {
        // A core method the façade had no typed builder for (L2's core settings, wrapped the way FromCore
        // wraps an unknown case): it runs as a method and as a penalty, and options by name reach it.
        var core = global::Continual.Methods.ImportanceConfig.NewL2(new global::Continual.Methods.L2.Settings(0.5));
        var named = new NamedPenaltySettings(core);
        Assert.Equal("l2", named.Name);
        var asPenalty = new ExperimentBuilder().WithMethod(Methods.Er(buffer: 200)).WithPenalty(named).WithOption("lambda", 2.0);
        Assert.Equal(0, asPenalty.Validate().Count);
        using (var json = System.Text.Json.JsonDocument.Parse(asPenalty.Settings.ToJson()))
        {
            var penalty = json.RootElement.GetProperty("penalty");
            Assert.Equal("l2", penalty.GetProperty("name").GetString());
            Assert.Equal(2.0, penalty.GetProperty("lambda").GetDouble());
        }
        var asMethod = new ExperimentBuilder().WithMethod(named);
        Assert.Equal("l2", asMethod.Settings.Strategy);
        Assert.Equal(core, ((PenaltySettings)asMethod.Settings.Method).ToImportance());
        var method = new NamedMethodSettings(global::Continual.Methods.MethodConfig.NewImportance(core));
        Assert.Equal("l2", method.Name);
        Assert.Equal(global::Continual.Methods.MethodConfig.NewImportance(core), method.ToCore());
        return Task.CompletedTask;
    }

    private static Task SettingsReadBack()
    {
        MethodSettings[] methods =
        [
            Methods.Sgd(), Methods.Joint(), Methods.Er(buffer: 200, minibatch: 3), Methods.Der(buffer: 5120, alpha: 0.7),
            Methods.Derpp(buffer: 200).WithAlpha(0.3), Methods.Lwf().WithTemperature(2).Balanced().WithWarmupEpochs(0),
            Methods.Icarl(memory: 2000), Methods.Ewc(lambda: 100, fisher: FisherKind.Empirical), Methods.OnlineEwc(gamma: 0.5),
            Methods.EwcPlusPlus(fisherAlpha: 0.01), Methods.Si(c: 1), Methods.Mas(lambda: 1), Methods.Rwalk().WithScoreEvery(5).WithEpsilon(1e-3),
            Methods.Scp().WithSlices(7).WithBatchSize(20),
        ];
        foreach (var method in methods)
        {
            var settings = new ExperimentBuilder().WithMethod(method).Settings;
            Assert.Equal(method, settings.Method);
            Assert.Equal(method.Name, settings.Strategy);
        }
        DistillationSettings[] terms =
        [
            Distillation.Kd(temperature: 3).WithWeight(0.5), Distillation.FitNets().WithWeight(2), Distillation.Nst(),
            Distillation.AttentionTransfer(), Distillation.Rkd(samples: 16), Distillation.Pod(), Distillation.Subspace(dimension: 3),
            Distillation.RelationGraph(samples: 8),
        ];
        var builder = new ExperimentBuilder().WithMethod(Methods.Er(buffer: 200)).WithPenalty(Penalties.Mas(lambda: 0.5));
        foreach (var term in terms) builder = builder.WithDistillation(term);
        var read = builder.Settings;
        Assert.Equal<PenaltySettings?>(Penalties.Mas(lambda: 0.5), read.Penalty);
        Assert.True(read.Distillation.SequenceEqual(terms), "terms read back in order: " + string.Join(", ", read.Distillation));
        // A term read back carries everything, settings its kind does not use included: it gives the same configuration again.
        var viaOption = new ExperimentBuilder().WithOption("distill", "fitnets").WithOption("temperature", 5).Settings;
        var again = new ExperimentBuilder().WithDistillation(viaOption.Distillation[0]).Settings;
        Assert.Equal(viaOption.ToJson(), again.ToJson());
        // Records print their settings.
        Assert.Contains("Alpha = 0.3", [Methods.Derpp(buffer: 200).WithAlpha(0.3).ToString()]);
        return Task.CompletedTask;
    }

    /// <summary>Builders with one invalid value each, over every setting the registry knows, and the combinations the core refuses.</summary>
    private static IEnumerable<(string What, ExperimentBuilder Builder)> InvalidCatalog()
    {
        var good = Subset();
        // Every setting of every method, importance method (alone and as a penalty) and distillation term,
        // set to -1 by name: refused by its check or its parser.
        foreach (var entry in Registry.methods)
            foreach (var setting in entry.Settings)
                yield return ($"{entry.Name}.{setting.Name}", good.WithStrategy(entry.Name).WithOption(OptionName(setting.Name, setting.Option), -1));
        foreach (var entry in Registry.importance)
            foreach (var setting in entry.Settings)
                yield return ($"derpp + {entry.Name}.{setting.Name}", good.WithPenalty(entry.Name).WithOption(OptionName(setting.Name, setting.Option), -1));
        foreach (var kind in global::Continual.Methods.DistillationKindModule.names)
            foreach (var setting in Registry.distillationSettings)
                yield return ($"der + {kind}.{setting.Name}", good.WithStrategy("der").WithOption("distill", kind).WithOption(OptionName(setting.Name, setting.Option), -1));
        // The same through the typed builders.
        yield return ("typed derpp α", good.WithMethod(Methods.Derpp().WithAlpha(-1)));
        yield return ("typed lwf warm-up", good.WithMethod(Methods.Lwf().WithWarmupEpochs(-1)));
        yield return ("typed rwalk window", good.WithMethod(Methods.Rwalk().WithScoreEvery(0)));
        yield return ("typed scp α", good.WithPenalty(Penalties.Scp(alpha: 1)));
        yield return ("typed ewc++ α", good.WithPenalty(Penalties.EwcPlusPlus(fisherAlpha: 2)));
        yield return ("typed kd temperature", good.WithDistillation(Distillation.Kd(temperature: 0)));
        yield return ("typed sd dimension", good.WithDistillation(Distillation.Subspace(dimension: 0)));
        yield return ("typed rkd samples", good.WithDistillation(Distillation.Rkd(samples: 0)));
        yield return ("typed weight", good.WithDistillation(Distillation.Pod().WithWeight(-2)));
        // Combinations.
        yield return ("si of strength 0", good.WithPenalty(Penalties.Si(c: 0)));
        yield return ("ewc of strength 0", good.WithPenalty(Penalties.Ewc(lambda: 0)));
        yield return ("a penalty on an importance method", good.WithMethod(Methods.Ewc()).WithPenalty(Penalties.Si()));
        yield return ("a penalty on joint", good.WithMethod(Methods.Joint()).WithPenalty("mas"));
        yield return ("the relation graph without a buffer", good.WithMethod(Methods.Sgd()).WithDistillation(Distillation.RelationGraph()));
        // The run, the data and the builder's own options.
        yield return ("learning rate", good.WithLearningRate(-1));
        yield return ("batch size", good.WithBatchSize(0));
        yield return ("epochs", good.WithEpochs(0));
        yield return ("weight decay", good.WithWeightDecay(double.NaN));
        yield return ("threads", good.WithThreads(-1));
        yield return ("clipping", good.WithGradientClipping(-1));
        yield return ("device", good.WithDevice("tpu"));
        if (!TorchSharp.torch.cuda.is_available()) yield return ("cuda", good.WithDevice("cuda:3"));
        yield return ("benchmark", good.WithBenchmark("imagenet"));
        yield return ("backbone", good.WithBackbone("vgg"));
        yield return ("train per class", good.WithTrainPerClass(0));
        yield return ("test per class", good.WithTestPerClass(0));
        yield return ("data folder", good.WithDataFolder("/no/such/folder"));
        yield return ("buffer", good.WithBuffer(0));
        yield return ("unknown strategy", good.WithStrategy("gem"));
        yield return ("unknown penalty", good.WithPenalty("agem"));
        yield return ("unknown term", good.WithOption("distill", "dkd"));
        yield return ("unknown option", good.WithOption("warmth", 1));
        yield return ("option of nothing here", good.WithStrategy("sgd").WithOption("beta", 1));
        yield return ("unparsable option", good.WithOption("alpha", "much"));
        yield return ("unparsable run option", good.WithOption("epochs", "many"));
        yield return ("fisher", good.WithPenalty("ewc").WithOption("fisher", "fake"));
    }

    /// <summary>
    /// The name WithOption reaches a setting by: its JSON name, or its command-line name where the JSON name
    /// is a builder option ("batchSize") or another setting's command-line name (SCP's "alpha" is "scp-alpha";
    /// "alpha" is DER's α).
    /// </summary>
    private static string OptionName(string name, string option) =>
        name is "batchSize" || (name is "alpha" && option != name) ? option : name;

    private static readonly Regex Hint = new(@"\(([A-Za-z][A-Za-z0-9]*\.)?(With[A-Za-z]*|Balanced)(\(""[^""]*"", …\))?\)$");

    private static Task MessagesNameCSharpMembers()
    {
        var assembly = typeof(ExperimentBuilder).Assembly;
        var count = 0;
        foreach (var (what, builder) in InvalidCatalog())
        {
            var errors = builder.Validate();
            Assert.True(errors.Count >= 1, $"{what}: no error");
            foreach (var error in errors)
            {
                count++;
                // Every message ends with the C# member that sets the value at fault, and that member exists.
                var match = Hint.Match(error);
                Assert.True(match.Success, $"{what}: no C# member named in: {error}");
                var type = match.Groups[1].Success ? assembly.GetType("Continual.CSharp." + match.Groups[1].Value.TrimEnd('.')) : typeof(ExperimentBuilder);
                Assert.True(type is not null, $"{what}: no type {match.Groups[1].Value} ({error})");
                Assert.True(type!.GetMethods().Any(m => m.Name == match.Groups[2].Value && m.IsPublic), $"{what}: {type.Name} has no {match.Groups[2].Value} ({error})");
            }
        }
        Console.WriteLine($"     {count} messages checked");
        // A few in full.
        string[] First(ExperimentBuilder b) => [.. b.Validate()];
        var good = Subset();
        Assert.Contains("DER++'s logit weight α must be a non-negative number (got -1) (DerppSettings.WithAlpha)", First(good.WithMethod(Methods.Derpp().WithAlpha(-1))));
        Assert.Contains("the penalty si with strength 0 adds nothing (SiSettings.WithC)", First(good.WithPenalty(Penalties.Si(c: 0))));
        Assert.Contains("KD's temperature must be a positive number (got 0) (KdDistillation.WithTemperature)", First(good.WithDistillation(Distillation.Kd(temperature: 0))));
        Assert.Contains("SD's subspace dimension must be positive (got 0) (SubspaceDistillation.WithDimension)", First(good.WithDistillation(Distillation.Subspace(dimension: 0))));
        Assert.Contains("the distillation term's weight must be a non-negative number (got -2) (PodDistillation.WithWeight)", First(good.WithDistillation(Distillation.Pod().WithWeight(-2))));
        Assert.Contains("cannot be added to ewc, itself an importance method (one per run) (WithPenalty)", First(good.WithMethod(Methods.Ewc()).WithPenalty(Penalties.Si())));
        Assert.Contains("use a method with a replay buffer (er, der, derpp), not sgd (WithDistillation)", First(good.WithMethod(Methods.Sgd()).WithDistillation(Distillation.RelationGraph())));
        Assert.Contains("LwF's warm-up epochs must not be negative (got -1) (LwfSettings.WithWarmupEpochs)", First(good.WithMethod(Methods.Lwf().WithWarmupEpochs(-1))));
        Assert.Contains("SCP's samples per batch mean must be positive (got -1) (ScpSettings.WithBatchSize)", First(good.WithMethod(Methods.Scp()).WithOption("scp-batch", -1)));
        return Task.CompletedTask;
    }

    private static Task NoCommandLineOptionsInMessages()
    {
        var messages = new List<string>();
        foreach (var (what, builder) in InvalidCatalog())
        {
            messages.AddRange(builder.Validate().Select(m => $"{what}: {m}"));
            try
            {
                _ = builder.Settings;
            }
            catch (ExperimentValidationException e)
            {
                messages.Add($"{what}: {e.Message}");
            }
            messages.Add($"{what}: {builder}");
            var thrown = Assert.Throws<ExperimentValidationException>(() => builder.Run());
            messages.Add($"{what}: {thrown.Message}");
        }
        Assert.True(messages.Count > 100, $"only {messages.Count} messages");
        var dashed = messages.Where(m => m.Contains("--", StringComparison.Ordinal)).ToList();
        Assert.True(dashed.Count == 0, "messages with a command-line option:\n" + string.Join("\n", dashed));
        // The core's own errors do carry command-line names (for the CLI); the façade shows none of them.
        var coreErrors = global::Continual.Experiment.validate(Subset().WithLearningRate(0).Settings.Config);
        Assert.Equal("lr", coreErrors.Single().Option.Value);
        return Task.CompletedTask;
    }

    private static Task TypedSettingsInResults()
    {
        var builder = Subset().WithTrainPerClass(20).WithTestPerClass(10)
            .WithMethod(Methods.Derpp(buffer: 200).WithAlpha(0.3))
            .WithPenalty(Penalties.Si(c: 0.5))
            .WithDistillation(Distillation.Kd(temperature: 3).WithWeight(0.5));
        Assert.True(builder.Validate().Count == 0, string.Join("; ", builder.Validate()));
        using var result = builder.Run();
        var folder = TestData.NewFolder("typed-results");
        result.WriteResults(folder);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "results.json")));
        var config = json.RootElement.GetProperty("config");
        var method = config.GetProperty("method");
        Assert.Equal("derpp", method.GetProperty("name").GetString());
        Assert.Equal(200, method.GetProperty("buffer").GetInt32());
        Assert.Equal(0.3, method.GetProperty("alpha").GetDouble());
        Assert.Equal(1.0, method.GetProperty("beta").GetDouble());
        Assert.Equal(128, method.GetProperty("minibatch").GetInt32());
        var penalty = config.GetProperty("penalty");
        Assert.Equal("si", penalty.GetProperty("name").GetString());
        Assert.Equal(0.5, penalty.GetProperty("c").GetDouble());
        Assert.Equal(0.9, penalty.GetProperty("xi").GetDouble());
        var run = config.GetProperty("run");
        Assert.Equal(0.03, run.GetProperty("learningRate").GetDouble());
        Assert.Equal(1.0, run.GetProperty("clipGrad").GetDouble());
        var kd = config.GetProperty("distillation").EnumerateArray().Single();
        Assert.Equal("kd", kd.GetProperty("name").GetString());
        Assert.Equal(3.0, kd.GetProperty("temperature").GetDouble());
        Assert.Equal(0.5, kd.GetProperty("weight").GetDouble());
        Assert.Equal(20, config.GetProperty("data").GetProperty("trainPerClass").GetInt32());
        Assert.Equal(result.Settings.Hash, json.RootElement.GetProperty("configHash").GetString());
        Assert.Equal(result.Settings.ToJson(), JsonSerializer.Serialize(config));
        // The core reads the section back to the same configuration.
        Assert.Equal(result.Settings.ToJson(), global::Continual.ConfigModule.toJson(global::Continual.ConfigModule.ofJson(config)));
        return Task.CompletedTask;
    }

    private static Task TypedRunMatchesNamedRun()
    {
        var small = Subset().WithTrainPerClass(20).WithTestPerClass(10).WithSeed(4);
        (ExperimentBuilder Typed, ExperimentBuilder Named)[] pairs =
        [
            (small.WithMethod(Methods.Derpp(buffer: 50).WithAlpha(0.3)).WithPenalty(Penalties.Si(c: 0.5)),
             small.WithStrategy("derpp").WithBuffer(50).WithOption("alpha", 0.3).WithPenalty("si").WithOption("lambda", 0.5)),
            (small.WithMethod(Methods.Lwf().WithTemperature(3).Balanced()),
             small.WithStrategy("lwf").WithOption("temperature", 3).WithOption("balanced", "true")),
            (small.WithMethod(Methods.Er(buffer: 50)).WithDistillation(Distillation.Kd(temperature: 2).WithWeight(0.5)),
             small.WithStrategy("er").WithBuffer(50).WithOption("distill", "kd").WithOption("distill-weight", 0.5)),
        ];
        foreach (var (typed, named) in pairs)
        {
            Assert.Equal(named.Settings.ToJson(), typed.Settings.ToJson());
            using var a = typed.Run();
            using var b = named.Run();
            Assert.Matrix(b.ClassIncremental, a.ClassIncremental, $"{a.Settings.Strategy}: class-il");
            Assert.Matrix(b.TaskIncremental, a.TaskIncremental, $"{a.Settings.Strategy}: task-il");
            Assert.True(a.ClassIncremental.Count == 5);
        }
        return Task.CompletedTask;
    }
}
