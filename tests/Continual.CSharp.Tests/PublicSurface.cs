using System.Reflection;
using System.Reflection.Emit;

namespace Continual.CSharp.Tests;

/// <summary>
/// Finds F# types in public signatures: every type a caller outside the assembly can see (public and
/// protected members, base types, interfaces, generic arguments, array element types) is inspected.
/// </summary>
internal static class PublicSurface
{
    private const BindingFlags Visible =
        BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    /// <summary>Every "member: type" where a visible signature of these types mentions an F# type.</summary>
    public static List<string> FSharpMentions(IEnumerable<Type> types)
    {
        var found = new List<string>();
        foreach (var type in types)
        {
            void Check(string where, Type? t)
            {
                foreach (var bad in Mentioned(t).Where(IsFSharp).Distinct())
                    found.Add($"{type.FullName}.{where}: {bad.FullName ?? bad.Name}");
            }
            if (IsFSharp(type)) found.Add($"{type.FullName} is itself an F# type");
            Check("(base type)", type.BaseType);
            foreach (var i in type.GetInterfaces()) Check("(interface)", i);
            foreach (var member in type.GetMembers(Visible))
            {
                switch (member)
                {
                    case MethodBase m when IsVisible(m):
                        if (m is MethodInfo mi) Check(m.Name + " (return)", mi.ReturnType);
                        foreach (var p in m.GetParameters()) Check($"{m.Name}({p.Name})", p.ParameterType);
                        if (m.IsGenericMethodDefinition)
                            foreach (var g in m.GetGenericArguments())
                                foreach (var c in g.GetGenericParameterConstraints()) Check($"{m.Name}<{g.Name}>", c);
                        break;
                    case PropertyInfo p when (p.GetMethod is { } get && IsVisible(get)) || (p.SetMethod is { } set && IsVisible(set)):
                        Check(p.Name, p.PropertyType);
                        foreach (var index in p.GetIndexParameters()) Check($"{p.Name}[{index.Name}]", index.ParameterType);
                        break;
                    case FieldInfo f when f.IsPublic || f.IsFamily || f.IsFamilyOrAssembly:
                        Check(f.Name, f.FieldType);
                        break;
                    case EventInfo e when e.AddMethod is { } add && IsVisible(add):
                        Check(e.Name, e.EventHandlerType);
                        break;
                }
            }
        }
        return found;
    }

    private static bool IsVisible(MethodBase m) => m.IsPublic || m.IsFamily || m.IsFamilyOrAssembly;

    /// <summary>A type and every type it is built from.</summary>
    private static IEnumerable<Type> Mentioned(Type? t)
    {
        if (t is null) yield break;
        yield return t;
        if (t.HasElementType)
            foreach (var e in Mentioned(t.GetElementType())) yield return e;
        if (t.IsGenericType && !t.IsGenericTypeDefinition)
            foreach (var a in t.GetGenericArguments())
                foreach (var e in Mentioned(a)) yield return e;
    }

    /// <summary>
    /// An F# type: defined in FSharp.Core (FSharpOption, FSharpList, FSharpFunc, Unit, ...), or compiled by
    /// F# (records, unions and modules carry CompilationMapping; any type of an assembly the F# compiler
    /// built, such as Continual.Core, counts: those carry FSharpInterfaceDataVersion).
    /// </summary>
    public static bool IsFSharp(Type t)
    {
        if (t.IsGenericParameter) return false;
        var assembly = t.Assembly;
        if (assembly.GetName().Name == "FSharp.Core" || (t.Namespace?.StartsWith("Microsoft.FSharp", StringComparison.Ordinal) ?? false))
            return true;
        if (t.GetCustomAttributesData().Any(a => a.AttributeType.FullName == "Microsoft.FSharp.Core.CompilationMappingAttribute"))
            return true;
        return assembly.GetCustomAttributesData().Any(a => a.AttributeType.FullName == "Microsoft.FSharp.Core.FSharpInterfaceDataVersionAttribute");
    }
    /// <summary>
    /// Every exception type that code of <paramref name="assembly"/> constructs (a <c>newobj</c> of a type
    /// derived from <see cref="Exception"/> in any method body, compiler-generated ones included: lambdas,
    /// async state machines), with a method that constructs it.
    /// </summary>
    public static Dictionary<Type, string> ConstructedExceptions(Assembly assembly)
    {
        var found = new Dictionary<Type, string>();
        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        foreach (var type in assembly.GetTypes())
        {
            var methods = type.GetMethods(all).Cast<MethodBase>().Concat(type.GetConstructors(all));
            foreach (var method in methods)
            {
                byte[]? il;
                try { il = method.GetMethodBody()?.GetILAsByteArray(); }
                catch (Exception) { continue; }
                if (il is null) continue;
                foreach (var token in NewObjTokens(il))
                {
                    MethodBase? constructor;
                    try { constructor = method.Module.ResolveMethod(token, GenericArguments(type), GenericArguments(method)); }
                    catch (Exception) { continue; }
                    var created = constructor?.DeclaringType;
                    if (created is not null && typeof(Exception).IsAssignableFrom(created))
                        found.TryAdd(created.IsGenericType ? created.GetGenericTypeDefinition() : created, $"{type.FullName}.{method.Name}");
                }
            }
        }
        return found;
    }

    private static Type[]? GenericArguments(Type t) => t.IsGenericTypeDefinition ? t.GetGenericArguments() : null;

    private static Type[]? GenericArguments(MethodBase m) => m.IsGenericMethodDefinition ? m.GetGenericArguments() : null;

    private static readonly Dictionary<short, OpCode> OpCodesByValue =
        typeof(OpCodes).GetFields(BindingFlags.Public | BindingFlags.Static)
            .Select(f => (OpCode)f.GetValue(null)!)
            .GroupBy(o => o.Value)
            .ToDictionary(g => g.Key, g => g.First());

    /// <summary>The metadata tokens of every newobj instruction, found by decoding the IL instruction by instruction.</summary>
    private static IEnumerable<int> NewObjTokens(byte[] il)
    {
        var at = 0;
        while (at < il.Length)
        {
            short value = il[at] == 0xFE && at + 1 < il.Length ? (short)(0xFE00 | il[at + 1]) : il[at];
            if (!OpCodesByValue.TryGetValue(value, out var op)) yield break; // not IL we can decode: stop, never guess
            at += op.Size;
            if (op == OpCodes.Newobj) yield return BitConverter.ToInt32(il, at);
            at += op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, at),
                _ => 4,
            };
        }
    }
}
