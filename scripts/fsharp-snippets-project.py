#!/usr/bin/env python3
"""Writes an F# project that compiles every ```fsharp block of the given Markdown files as written, in order,
as one program (later blocks use what earlier ones define, as the docs read). A block that fails to compile
fails the build, which names the Markdown file and line.
    scripts/fsharp-snippets-project.py OUT_FOLDER VERSION docs/fsharp.md ...
"""
import re
import sys
from pathlib import Path

out, version, sources = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
out.mkdir(parents=True, exist_ok=True)
text = ['module Snippets', '']
count = 0
for source in sources:
    lines = Path(source).read_text(encoding='utf-8').splitlines()
    i = 0
    while i < len(lines):
        if not re.match(r'^```fsharp\s*$', lines[i]):
            i += 1
            continue
        first = i + 2  # 1-based line number of the block's first line
        i += 1
        text.append(f'# {first} "{Path(source).resolve()}"')
        while i < len(lines) and not re.match(r'^```\s*$', lines[i]):
            text.append(lines[i])
            i += 1
        i += 1
        count += 1
if count == 0:
    sys.exit('error: no ```fsharp block in ' + ', '.join(sources))
(out / 'Snippets.fs').write_text('\n'.join(text) + '\n', encoding='utf-8')
(out / 'Snippets.fsproj').write_text(f'''<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Library</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <RuntimeIdentifier>linux-x64</RuntimeIdentifier>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
    <!-- The blocks are read top to bottom as a script would run them: module-level code is expected. -->
    <NoWarn>$(NoWarn);FS0988</NoWarn>
  </PropertyGroup>
  <ItemGroup>
    <Compile Include="Snippets.fs" />
    <PackageReference Include="Continual.Core" Version="{version}" />
    <PackageReference Include="Continual.Onnx" Version="{version}" />
  </ItemGroup>
</Project>
''', encoding='utf-8')
print(f'{count} F# blocks')
