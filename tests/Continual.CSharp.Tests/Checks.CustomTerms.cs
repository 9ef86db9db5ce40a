using TorchSharp;
using static TorchSharp.torch;

namespace Continual.CSharp.Tests;

/// <summary>Checks of the custom-term extension point (ICustomTerm, ExperimentBuilder.WithCustomTerm).</summary>
internal static partial class Checks
{
    private static List<(string Name, Func<Task> Body)> CustomTermChecks =>
    [
        ("custom term: an L2-to-anchor term in C# (a class, and functions) gives the built-in L2 penalty's matrices", CustomL2MatchesBuiltInL2),
        ("custom term: a term's value reaches the loss, its task counted from 1", CustomTermValueReachesTheLoss),
        ("custom term: bad names are refused; a term is disposed with its result", CustomTermsRefusedAndDisposed),
        ("custom term: a learner takes the builder's terms, learns as Run does, and refuses to save them", LearnerWithCustomTerm),
    ];

    /// <summary>
    /// L2 to the last task's end, <c>λ/2 Σ (θ − θ*)²</c>, as the built-in L2 penalty defines it (Methods/L2.fs:
    /// importance 1 everywhere, Half scale, anchor replaced at every task's end), written with the public API only.
    /// </summary>
    private sealed class L2Anchor(double lambda) : ICustomTerm, IDisposable
    {
        private IReadOnlyList<Tensor>? _anchor;

        public List<int> EndedTasks { get; } = [];

        public int Steps { get; private set; }

        public int StepsWithValue { get; private set; }

        public bool Disposed { get; private set; }

        public string Name => "l2-anchor";

        public Tensor? Compute(TermContext context)
        {
            Steps++;
            if (_anchor is null) return null;
            StepsWithValue++;
            Tensor? sum = null;
            for (var i = 0; i < _anchor.Count; i++)
            {
                var square = (context.Parameters[i].Value - _anchor[i]).square().sum();
                sum = sum is null ? square : sum + square;
            }
            return sum! * (lambda / 2);
        }

        public void OnTaskEnd(TermTaskContext context)
        {
            EndedTasks.Add(context.Task);
            Assert.True(context.Parameters.All(p => p.Name.Length > 0) && context.Parameters.Select(p => p.Name).Distinct().Count() == context.Parameters.Count,
                $"parameter names are non-empty and distinct: {string.Join(", ", context.Parameters.Select(p => p.Name))}");
            Release();
            _anchor = context.SnapshotParameters();
        }

        public void Dispose()
        {
            Release();
            Disposed = true;
        }

        private void Release()
        {
            foreach (var t in _anchor ?? []) t.Dispose();
            _anchor = null;
        }
    }

    private static Task CustomL2MatchesBuiltInL2()
    {
        const double lambda = 20;
        var small = Subset().WithoutOnnxExport().WithTrainPerClass(20).WithTestPerClass(10).WithSeed(4).WithStrategy("sgd");
        var terms = new List<L2Anchor>();
        var custom = small.WithCustomTerm(() =>
        {
            var term = new L2Anchor(lambda);
            terms.Add(term);
            return term;
        });
        var builtIn = small.WithPenalty(Penalties.L2(lambda));
        // Same run settings: the built-in penalty brings no clipping or other protocol of its own.
        Assert.Equal(small.Settings.ToJson(), builtIn.WithoutPenalty().Settings.ToJson());
        Assert.Equal(small.Settings.ToJson(), custom.Settings.ToJson());

        using var plain = small.Run();
        using var reference = builtIn.Run();
        using (var mine = custom.Run())
        {
            Assert.Matrix(reference.ClassIncremental, mine.ClassIncremental, "custom vs built-in L2: class-il");
            Assert.Matrix(reference.TaskIncremental, mine.TaskIncremental, "custom vs built-in L2: task-il");
            Console.WriteLine($"     class-il, custom L2:   {string.Join(" | ", mine.ClassIncremental.Select(r => string.Join(" ", r.Select(v => v.ToString("0.0")))))}");
            Console.WriteLine($"     class-il, built-in L2: {string.Join(" | ", reference.ClassIncremental.Select(r => string.Join(" ", r.Select(v => v.ToString("0.0")))))}");
            Console.WriteLine($"     class-il, plain SGD:   {string.Join(" | ", plain.ClassIncremental.Select(r => string.Join(" ", r.Select(v => v.ToString("0.0")))))}");
            Assert.True(terms.Count == 1, $"one fresh term per run ({terms.Count} made)");
            var term = terms[0];
            Assert.True(term.EndedTasks.SequenceEqual([1, 2, 3, 4, 5]), $"OnTaskEnd saw tasks {string.Join(", ", term.EndedTasks)}");
            // 20 examples per class, 2 classes per task, batch 10: 4 steps per task; no anchor during task 1.
            Assert.True(term.Steps == 20 && term.StepsWithValue == 16, $"{term.Steps} steps, {term.StepsWithValue} with a value");
            Assert.True(!term.Disposed, "the term lives as long as the result");
        }
        Assert.True(terms[0].Disposed, "disposing the result disposes the term");

        // The same term from functions (docs/csharp.md's snippet), its state in captured variables.
        var released = 0;
        var functions = small.WithCustomTerm(() =>
        {
            IReadOnlyList<Tensor>? anchor = null;
            void Release()
            {
                foreach (var t in anchor ?? []) t.Dispose();
                anchor = null;
            }
            return CustomTerm.Create(
                "l2-anchor",
                compute: c =>
                {
                    if (anchor is null) return null;
                    Tensor sum = torch.zeros(1, device: c.Logits.device);
                    for (var i = 0; i < anchor.Count; i++) sum = sum + (c.Parameters[i].Value - anchor[i]).square().sum();
                    return sum * (lambda / 2);
                },
                onTaskEnd: c =>
                {
                    Release();
                    anchor = c.SnapshotParameters();
                },
                dispose: () =>
                {
                    released++;
                    Release();
                });
        });
        using (var fromFunctions = functions.Run())
        {
            Assert.Matrix(reference.ClassIncremental, fromFunctions.ClassIncremental, "CustomTerm.Create vs built-in L2: class-il");
            Assert.Matrix(reference.TaskIncremental, fromFunctions.TaskIncremental, "CustomTerm.Create vs built-in L2: task-il");
        }
        Assert.Equal(1, released);
        // The penalty is strong enough to matter: without it the matrices differ (else the check proves nothing).
        Assert.True(!plain.ClassIncremental.Zip(reference.ClassIncremental).All(p => p.First.SequenceEqual(p.Second)),
            "L2 with λ 20 changes the class-il matrix from plain SGD's");
        return Task.CompletedTask;
    }

    private static Task CustomTermValueReachesTheLoss()
    {
        var tasks = new List<int>();
        var builder = Subset().WithoutOnnxExport().WithTrainPerClass(20).WithTestPerClass(10).WithStrategy("sgd")
            .WithCustomTerm("nan-in-task-2", c =>
            {
                lock (tasks) tasks.Add(c.Task);
                Assert.True(c.Logits.shape[0] == c.Labels.shape[0] && c.Inputs.shape[0] == c.Labels.shape[0], "inputs, labels and logits share the batch");
                return c.Task == 2 ? c.Logits.sum() * double.NaN : null;
            });
        var e = Assert.Throws<TrainingDivergedException>(() => builder.Run());
        Assert.Equal(2, e.Task);
        Assert.True(tasks.First() == 1 && tasks.Last() == 2 && tasks.Count(t => t == 1) == 4, $"tasks seen: {string.Join(", ", tasks)}");
        return Task.CompletedTask;
    }

    private sealed class NamedTerm(string name) : ICustomTerm, IDisposable
    {
        public bool Disposed { get; private set; }

        public string Name => name;

        public Tensor? Compute(TermContext context) => null;

        public void Dispose() => Disposed = true;
    }

    private static Task CustomTermsRefusedAndDisposed()
    {
        var small = Subset().WithoutOnnxExport().WithTrainPerClass(20).WithTestPerClass(10).WithStrategy("sgd");
        var made = new List<NamedTerm>();
        ICustomTerm Make(string name)
        {
            var t = new NamedTerm(name);
            made.Add(t);
            return t;
        }

        var empty = Assert.Throws<ExperimentValidationException>(() => small.WithCustomTerm(() => Make(" ")).Run());
        Assert.True(empty.Message.Contains("empty name", StringComparison.Ordinal), empty.Message);
        var twice = Assert.Throws<ExperimentValidationException>(() => small.WithCustomTerm(() => Make("a")).WithCustomTerm(() => Make("a")).Run());
        Assert.True(twice.Message.Contains("two custom terms are named 'a'", StringComparison.Ordinal), twice.Message);
        Assert.True(made.Count == 3 && made.All(t => t.Disposed), "terms made for a refused run are disposed");

        Assert.Equal(0, small.WithCustomTerm(() => Make("c")).WithoutCustomTerms().CustomTermCount);
        return Task.CompletedTask;
    }

    private static async Task LearnerWithCustomTerm()
    {
        // A learner takes the builder's custom terms: the same matrices as Run, the term disposed with the learner,
        // and SaveAsync refuses (the term's state is beyond the file's reach).
        var builder = Subset().WithoutOnnxExport().WithTrainPerClass(20).WithTestPerClass(10).WithSeed(4).WithStrategy("sgd");
        var terms = new List<L2Anchor>();
        var withTerm = builder.WithCustomTerm(() => { var t = new L2Anchor(20.0); terms.Add(t); return t; });
        var run = withTerm.Run();
        var expected = run.ClassIncremental;
        run.Dispose();
        var plain = builder.Run();
        var sgd = plain.ClassIncremental;
        plain.Dispose();
        var file = Path.Combine(TestData.NewFolder("term-learner"), Learner.DefaultFileName);
        using (var learner = withTerm.CreateLearner())
        {
            while (learner.TasksLearned < learner.TaskCount) await learner.LearnTaskAsync();
            Assert.Matrix(expected, learner.ClassIncremental, "a learner with the term learns as Run does");
            Assert.True(!learner.ClassIncremental.Select(r => r.ToArray()).SelectMany(r => r).SequenceEqual(sgd.SelectMany(r => r)), "the term changed what SGD learns");
            await Assert.ThrowsAsync<NotSupportedException>(() => learner.SaveAsync(file));
            Assert.True(!File.Exists(file), "nothing written");
        }
        Assert.True(terms.Count == 2 && terms.All(t => t.Disposed), "each learner's and run's term is disposed with it");
    }
}
