using System.Runtime.CompilerServices;

// The checks exercise the option table, the value conversions and the error translation directly.
[assembly: InternalsVisibleTo("Continual.CSharp.Tests")]
