using System.Globalization;
using System.Reflection;
using Microsoft.FSharp.Core;
using Microsoft.FSharp.Reflection;
using CoreConfig = global::Continual.ExperimentConfig;

namespace Continual.CSharp;

/// <summary>
/// Reads and writes the fields of the core's configuration record by name. The façade builds every
/// configuration as "the reference defaults with some fields replaced", so fields that strategies add
/// to the record later keep their defaults and can be set through <see cref="ExperimentBuilder.WithOption(string, double)"/>
/// without any change here.
/// </summary>
internal static class ConfigFields
{
    /// <summary>The record's fields in declaration order (the order of its constructor's arguments).</summary>
    internal static readonly PropertyInfo[] All = FSharpType.GetRecordFields(typeof(CoreConfig), null);

    private static readonly Dictionary<string, string> Aliases = new()
    {
        // The command line's short names.
        ["lr"] = nameof(CoreConfig.LearningRate),
        ["buffer"] = nameof(CoreConfig.BufferSize),
        ["data"] = nameof(CoreConfig.DataFolder),
    };

    /// <summary>Letters and digits only, lower case: "weight-decay", "Weight_Decay" and "WeightDecay" agree.</summary>
    internal static string Normalise(string name) =>
        new string(name.Where(char.IsLetterOrDigit).ToArray()).ToLowerInvariant();

    /// <summary>The field a user's option name means (field name in any case, or the CLI's spelling), if any.</summary>
    internal static PropertyInfo? Find(string name)
    {
        var key = Normalise(name);
        if (Aliases.TryGetValue(key, out var alias)) key = Normalise(alias);
        return All.FirstOrDefault(f => Normalise(f.Name) == key);
    }

    private static bool IsOption(Type t) =>
        t.IsGenericType && t.GetGenericTypeDefinition() == typeof(FSharpOption<>);

    /// <summary>A readable name of a field's type for messages ("integer", "number", "optional integer").</summary>
    internal static string Describe(Type t)
    {
        if (IsOption(t)) return "optional " + Describe(t.GetGenericArguments()[0]);
        if (t == typeof(double) || t == typeof(float)) return "number";
        if (t == typeof(int) || t == typeof(long)) return "integer";
        if (t == typeof(string)) return "text";
        if (t == typeof(bool)) return "boolean";
        return t.Name;
    }

    /// <summary>
    /// Converts a façade value (double, int, long, string, bool or null) to a field's type, or says why it
    /// cannot be. Numbers meant for integer fields must be whole and in range; null means "none" for optional
    /// fields.
    /// </summary>
    internal static bool TryConvert(object? value, Type target, out object? converted, out string? error)
    {
        converted = null;
        error = null;
        if (IsOption(target))
        {
            if (value is null) return true; // None is null in compiled F#.
            var inner = target.GetGenericArguments()[0];
            if (!TryConvert(value, inner, out var innerValue, out error)) return false;
            converted = target.GetMethod("Some", BindingFlags.Public | BindingFlags.Static)!.Invoke(null, [innerValue]);
            return true;
        }
        if (target.Assembly != typeof(FSharpOption<>).Assembly && FSharpType.IsUnion(target, null))
        {
            // A choice among named cases (e.g. a backbone kind): matched by name like option names are.
            var cases = FSharpType.GetUnionCases(target, null).Where(c => c.GetFields().Length == 0).ToArray();
            var match = value is string name ? cases.FirstOrDefault(c => Normalise(c.Name) == Normalise(name)) : null;
            if (match is null)
            {
                error = $"expects one of {string.Join(", ", cases.Select(c => c.Name))} (got {Show(value)})";
                return false;
            }
            converted = FSharpValue.MakeUnion(match, [], null);
            return true;
        }
        switch (value)
        {
            case null:
                error = "a value is required";
                return false;
            case var v when target == typeof(string):
                if (v is string s) { converted = s; return true; }
                break;
            case var v when target == typeof(bool):
                if (v is bool b) { converted = b; return true; }
                if (v is string text && bool.TryParse(text, out var parsed)) { converted = parsed; return true; }
                break;
            case var v when target == typeof(double) || target == typeof(float):
                if (TryNumber(v, out var d))
                {
                    if (target == typeof(float) && double.IsFinite(d) && Math.Abs(d) > float.MaxValue)
                    {
                        error = $"{Show(d)} is out of range";
                        return false;
                    }
                    converted = target == typeof(float) ? (object)(float)d : d;
                    return true;
                }
                break;
            case var v when target == typeof(int) || target == typeof(long):
                if (TryNumber(v, out var n))
                {
                    if (!double.IsFinite(n) || Math.Floor(n) != n)
                    {
                        error = $"expects a whole number (got {Show(n)})";
                        return false;
                    }
                    var inRange = target == typeof(int)
                        ? n >= int.MinValue && n <= int.MaxValue
                        : n >= -9.223372036854775808e18 && n < 9.223372036854775808e18;
                    if (!inRange)
                    {
                        error = $"{Show(n)} is out of range";
                        return false;
                    }
                    converted = target == typeof(int) ? (object)(int)n : (long)n;
                    return true;
                }
                break;
        }
        error = $"expects a value of type {Describe(target)} (got {Show(value)})";
        return false;
    }

    private static bool TryNumber(object v, out double d)
    {
        switch (v)
        {
            case double x: d = x; return true;
            case float x: d = x; return true;
            case int x: d = x; return true;
            case long x when Math.Abs(x) <= (1L << 53): d = x; return true;
            case string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var p): d = p; return true;
            default: d = 0; return false;
        }
    }

    private static string Show(object? value) => value switch
    {
        null => "nothing",
        string s => $"'{s}'",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };

    /// <summary>A field's value as plain .NET data: options unwrapped (null for none), anything exotic as text.</summary>
    internal static object? Plain(object? value)
    {
        if (value is null) return null;
        var t = value.GetType();
        if (IsOption(t)) return Plain(t.GetProperty("Value")!.GetValue(value));
        if (t.IsPrimitive || value is string || value is decimal) return value;
        return value.ToString();
    }

    /// <summary>A copy of a configuration with some fields replaced (by field).</summary>
    internal static CoreConfig With(CoreConfig config, IReadOnlyDictionary<PropertyInfo, object?> replacements)
    {
        var values = FSharpValue.GetRecordFields(config, null);
        for (var i = 0; i < All.Length; i++)
        {
            if (replacements.TryGetValue(All[i], out var v)) values[i] = v;
        }
        return (CoreConfig)FSharpValue.MakeRecord(typeof(CoreConfig), values, null);
    }
}
