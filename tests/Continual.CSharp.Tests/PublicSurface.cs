using System.Reflection;

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
}
