#!/usr/bin/env bash
# Packs Continual.Core, Continual.Onnx, Continual.CSharp (symbols embedded in each assembly) and the
# `continual` .NET tool into one local folder feed (default artifacts/packages, emptied first).
# The version is Directory.Build.props' <Version>. docs/packages.md says how to use the feed.
#   scripts/pack.sh [FEED [MSBUILD OPTIONS...]]
# e.g. scripts/pack.sh artifacts/packages -p:ContinuousIntegrationBuild=true   (a release: /_/ paths in the PDBs)
set -euo pipefail
cd "$(dirname "$0")/.."
feed=${1:-artifacts/packages}
mkdir -p "$feed"
feed=$(cd "$feed" && pwd)
rm -f "$feed"/*.nupkg "$feed"/*.snupkg

dotnet tool restore >/dev/null
dotnet paket restore >/dev/null
# One pack of the solution: the test projects are not packable.
dotnet pack Continual.sln -c Release -o "$feed" -nologo -clp:ErrorsOnly -v:quiet "${@:2}"
ls -1 "$feed"
