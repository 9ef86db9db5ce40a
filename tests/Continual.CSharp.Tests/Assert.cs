using System.Runtime.CompilerServices;

namespace Continual.CSharp.Tests;

/// <summary>The few assertions the checks need; each failure names the expression that failed.</summary>
internal static class Assert
{
    internal sealed class Failure(string message) : Exception(message);

    public static void True(bool condition, string? message = null, [CallerArgumentExpression(nameof(condition))] string? expression = null)
    {
        if (!condition) throw new Failure(message ?? $"expected true: {expression}");
    }

    public static void Equal<T>(T expected, T actual, [CallerArgumentExpression(nameof(actual))] string? expression = null)
    {
        if (!EqualityComparer<T>.Default.Equals(expected, actual))
            throw new Failure($"{expression}: expected {expected}, got {actual}");
    }

    public static void Close(double expected, double actual, double tolerance, [CallerArgumentExpression(nameof(actual))] string? expression = null)
    {
        if (!(Math.Abs(expected - actual) <= tolerance))
            throw new Failure($"{expression}: expected {expected} ± {tolerance}, got {actual}");
    }

    public static TException Throws<TException>(Action action, [CallerArgumentExpression(nameof(action))] string? expression = null)
        where TException : Exception
    {
        try
        {
            action();
        }
        catch (TException e)
        {
            return e;
        }
        catch (Exception e)
        {
            throw new Failure($"{expression}: expected {typeof(TException).Name}, got {e.GetType().Name}: {e.Message}");
        }
        throw new Failure($"{expression}: expected {typeof(TException).Name}, nothing was thrown");
    }

    public static async Task<TException> ThrowsAsync<TException>(Func<Task> action, [CallerArgumentExpression(nameof(action))] string? expression = null)
        where TException : Exception
    {
        try
        {
            await action();
        }
        catch (TException e)
        {
            return e;
        }
        catch (Exception e)
        {
            throw new Failure($"{expression}: expected {typeof(TException).Name}, got {e.GetType().Name}: {e.Message}");
        }
        throw new Failure($"{expression}: expected {typeof(TException).Name}, nothing was thrown");
    }

    public static void Contains(string part, IEnumerable<string> messages, [CallerArgumentExpression(nameof(messages))] string? expression = null)
    {
        var list = messages.ToList();
        if (!list.Any(m => m.Contains(part, StringComparison.OrdinalIgnoreCase)))
            throw new Failure($"{expression}: no message mentions '{part}' in [{string.Join(" | ", list)}]");
    }

    public static void Matrix(IReadOnlyList<IReadOnlyList<double>> expected, IReadOnlyList<IReadOnlyList<double>> actual, string what)
    {
        True(expected.Count == actual.Count, $"{what}: {actual.Count} rows, expected {expected.Count}");
        for (var i = 0; i < expected.Count; i++)
        {
            True(expected[i].SequenceEqual(actual[i]), $"{what}: row {i} differs: [{string.Join(", ", expected[i])}] vs [{string.Join(", ", actual[i])}]");
        }
    }
}
