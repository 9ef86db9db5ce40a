using System.Diagnostics;
using Continual.CSharp.Tests;

// A plain console runner: every check runs in order; the last line is "N passed, N failed" and the exit
// code is non-zero when any check failed (or none ran). Arguments are substrings of check names to run only
// those; options starting with '-' (e.g. the --summary that test.sh passes every test program) are ignored.
var checks = Checks.All();
var filters = args.Where(a => !a.StartsWith('-')).ToArray();
var selected = filters.Length == 0 ? checks : checks.Where(c => filters.Any(f => c.Name.Contains(f, StringComparison.OrdinalIgnoreCase))).ToList();
int passed = 0, failed = 0;
var total = Stopwatch.StartNew();
foreach (var (name, body) in selected)
{
    var clock = Stopwatch.StartNew();
    try
    {
        await body();
        passed++;
        Console.WriteLine($"PASS {name} ({clock.Elapsed.TotalSeconds:0.00} s)");
    }
    catch (Exception e)
    {
        failed++;
        Console.WriteLine($"FAIL {name} ({clock.Elapsed.TotalSeconds:0.00} s)");
        Console.WriteLine("     " + e.ToString().Replace("\n", "\n     "));
    }
}
Console.WriteLine($"total {total.Elapsed.TotalSeconds:0.0} s");
TestData.Cleanup();
Console.WriteLine($"{passed} passed, {failed} failed");
return failed == 0 && selected.Count > 0 ? 0 : 1;
