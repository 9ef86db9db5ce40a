#!/usr/bin/env bash
# The packages work in a fresh project: packs them (scripts/pack.sh) into a local folder feed, copies
# samples/ into a fresh temporary folder with its own NuGet.config (the feed, plus the machine's usual
# sources), builds and runs the C# and the F# sample against the packages, then installs the `continual`
# tool from the feed with `dotnet tool install --tool-path` and runs a small benchmark with it; also
# compiles the C# blocks of README.md and docs/csharp.md against the packages.
# Our package ids are removed from the global packages folder first, so no stale copy is used.
# Each check prints PASS or FAIL; the last line is "N passed, N failed"; the exit code is non-zero
# when a check failed.
#   scripts/test-packages.sh [DATA_FOLDER]
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
data=${1:-/usr/share/datasets/fashion-mnist}
work=$(mktemp -d -t continual-packages.XXXXXX)
trap 'rm -rf "$work"' EXIT
feed="$work/feed"
passed=0
failed=0
check() {   # check NAME COMMAND...: runs the command with its output in $work/NAME.log
    local name=$1; shift
    local start=$SECONDS
    if "$@" >"$work/$name.log" 2>&1; then
        passed=$((passed + 1)); echo "PASS $name ($((SECONDS - start)) s)"
    else
        failed=$((failed + 1)); echo "FAIL $name ($((SECONDS - start)) s)"; sed 's/^/     /' "$work/$name.log" | tail -40
    fi
}

version=$(dotnet msbuild src/Continual.Core/Continual.Core.fsproj -getProperty:Version -nologo)
check pack scripts/pack.sh "$feed"
for id in Continual.Core Continual.Onnx Continual.CSharp continual; do
    check "package-$id" test -f "$feed/$id.$version.nupkg"
done

# A fresh folder, as a new user's: the samples and a NuGet.config naming the feed. No <clear/>: the
# machine's own sources (user-level NuGet.Config) still serve TorchSharp, FSharp.Core and ONNX Runtime.
cp -r samples "$work/samples"
cat > "$work/samples/NuGet.config" <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="continual-local" value="$feed" />
  </packageSources>
</configuration>
XML
packages=$(dotnet nuget locals global-packages --list | sed 's/^global-packages: //')
for id in continual.core continual.onnx continual.csharp continual; do rm -rf "${packages:?}/$id/$version"; done

# The samples' and snippets' output folders hold hard links to the natives in the NuGet cache rather than
# 800 MB copies each (as the repository's own builds do; Directory.Build.props). MSBuild reads these
# from the environment; it copies where a link cannot be made.
export CreateHardLinksForCopyLocalIfPossible=true CreateHardLinksForPublishFilesIfPossible=true

cd "$work/samples"
build() { dotnet build "$1" -c Release -nologo -clp:ErrorsOnly -v:quiet -p:ContinualVersion="$version"; }
check build-csharp-sample build CSharp/Continual.Samples.CSharp.csproj
check build-fsharp-sample build FSharp/Continual.Samples.FSharp.fsproj
# The samples must have used the packages just packed, not project references or another copy.
check csharp-sample-uses-feed grep -q "\"Continual.CSharp/$version\"" CSharp/obj/project.assets.json
check run-csharp-sample CSharp/bin/Release/net10.0/linux-x64/Continual.Samples.CSharp "$data" "$work/out-csharp"
check run-fsharp-sample FSharp/bin/Release/net10.0/linux-x64/Continual.Samples.FSharp "$data" "$work/out-fsharp"

# The C# blocks of README.md and docs/csharp.md compile as written against the packages.
check docs-csharp-snippets-compile bash -c "python3 '$repo/scripts/snippets-project.py' '$work/snippets' '$version' \
    '$repo/README.md' '$repo/docs/csharp.md' && dotnet build '$work/snippets/Snippets.csproj' -c Release -nologo -clp:ErrorsOnly -v:quiet"

# The F# blocks of docs/fsharp.md compile as written (as one program, in order) against the packages.
check docs-fsharp-snippets-compile bash -c "python3 '$repo/scripts/fsharp-snippets-project.py' '$work/fsnippets' '$version' \
    '$repo/docs/fsharp.md' && dotnet build '$work/fsnippets/Snippets.fsproj' -c Release -nologo -clp:ErrorsOnly -v:quiet"

# The tool, as `dotnet tool install` gives it to a user.
check tool-install dotnet tool install --tool-path "$work/tool" --add-source "$feed" --version "$version" continual
check tool-run "$work/tool/continual" run --data "$data" --strategy er --buffer 50 --train-per-class 20 \
    --test-per-class 20 --out "$work/tool-run" --quiet
check tool-run-outputs test -s "$work/tool-run/results.json" -a -s "$work/tool-run/task-5.onnx"
# The installed tool draws (ScottPlot, with the Skia and HarfBuzz natives it carries) and writes the report.
check tool-plot bash -c "'$work/tool/continual' plot '$work/tool-run' && test -s '$work/tool-run/plots/final-accuracy.png' \
    && '$work/tool/continual' report '$work/tool-run' && grep -q 'data:image/png;base64' '$work/tool-run/report.html'"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
