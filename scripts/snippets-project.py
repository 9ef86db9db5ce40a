#!/usr/bin/env python3
"""Writes a C# project that compiles every ```csharp block of the given Markdown files as written.

Each block becomes one class: its using directives go to the top of its file, the rest becomes the body
of an async method (top-level statements, local functions and `await` all compile there, as they do in
a program's Main). A block that fails to compile fails the build, which names the file and line.
    scripts/snippets-project.py OUT_FOLDER VERSION README.md docs/csharp.md ...
"""
import re
import sys
from pathlib import Path

out, version, sources = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
out.mkdir(parents=True, exist_ok=True)
directive = re.compile(r'^\s*using\s+(static\s+)?[A-Za-z_][A-Za-z0-9_.]*(\s*=\s*[A-Za-z_][A-Za-z0-9_.<>, ]*)?\s*;\s*$')
count = 0
for source in sources:
    lines = Path(source).read_text(encoding='utf-8').splitlines()
    i = 0
    while i < len(lines):
        start = re.match(r'^(\s*)```csharp\s*$', lines[i])
        if not start:
            i += 1
            continue
        indent = len(start.group(1))
        first = i + 2  # 1-based line number of the block's first line
        i += 1
        block = []
        while i < len(lines) and not re.match(r'^\s*```\s*$', lines[i]):
            block.append(lines[i][indent:] if lines[i][:indent].strip() == '' else lines[i])
            i += 1
        i += 1
        count += 1
        usings = [l for l in block if directive.match(l)]
        body = ['' if directive.match(l) else l for l in block]  # blank lines keep #line's numbers right
        name = f'Snippet{count:02d}'
        text = [f'// {source}, line {first}'] + usings + [
            '#pragma warning disable CS1998, CS0162, CS8321',
            f'internal static class {name}',
            '{',
            '    internal static async System.Threading.Tasks.Task RunAsync()',
            '    {',
            f'#line {first} "{Path(source).resolve()}"']
        text += body
        text += ['#line default', '    }', '}']
        (out / f'{name}.cs').write_text('\n'.join(text) + '\n', encoding='utf-8')
(out / 'Snippets.csproj').write_text(f'''<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Library</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <RuntimeIdentifier>linux-x64</RuntimeIdentifier>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Continual.CSharp" Version="{version}" />
  </ItemGroup>
</Project>
''', encoding='utf-8')
print(f'{count} C# blocks from {", ".join(sources)}')
if count == 0:
    sys.exit('error: no ```csharp block found')
