using System.Runtime.CompilerServices;

// The checks exercise the name and value conversions directly, including field types the
// configuration does not have yet (choices among named cases).
[assembly: InternalsVisibleTo("Continual.CSharp.Tests")]
