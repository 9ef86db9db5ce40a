#!/usr/bin/env bash
# Runs every test: set-up if needed, then each test program (Expecto and the C# checks run as programs,
# which exit non-zero on failure). Ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")"
# Disk: the build's output folders link the natives rather than copy them, but the packages test packs and
# installs the tool (about 2 GiB in the temporary folder at its peak). Say so up front when space is short.
for folder in . "${TMPDIR:-/tmp}"; do
    free=$(df -Pk "$folder" 2>/dev/null | awk 'NR == 2 { print int($4 / 1048576) }')
    if [ -n "$free" ] && [ "$free" -lt 3 ]; then
        echo "warning: $(cd "$folder" && pwd) has only $free GiB free; the tests need about 3 GiB (the packages test about 2 GiB of it)" >&2
    fi
done
scripts/setup.sh || exit 1

passed=0
failed=0
status=0
for project in tests/*/; do
    name=$(basename "$project")
    binary="$project/bin/Release/net10.0/linux-x64/$name"
    [ -x "$binary" ] || { echo "error: $binary was not built" >&2; status=1; continue; }
    echo "== $name"
    log=$(mktemp)
    # Sequenced: libtorch and ONNX Runtime share native thread pools; one test at a time keeps runs
    # reproducible on 2 cores (a parallel run crashed once in native code under heavy load).
    "$binary" --summary --sequenced 2>&1 | tee "$log"
    code=${PIPESTATUS[0]}
    clean=$(sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$log")
    # Expecto: "... – N passed, N ignored, N failed, N errored." ; the C# checks: "N passed, N failed".
    p=$(grep -oE '[0-9]+ passed' <<<"$clean" | tail -1 | grep -oE '[0-9]+' || echo 0)
    f=$(grep -oE '[0-9]+ failed' <<<"$clean" | tail -1 | grep -oE '[0-9]+' || echo 0)
    e=$(grep -oE '[0-9]+ errored' <<<"$clean" | tail -1 | grep -oE '[0-9]+' || echo 0)
    passed=$((passed + p))
    failed=$((failed + f + e))
    if [ "$code" -ne 0 ]; then status=1; [ $((f + e)) -eq 0 ] && failed=$((failed + 1)); fi
    if [ "$p" -eq 0 ] && [ "$code" -eq 0 ]; then echo "error: $name ran no test" >&2; status=1; fi
    rm -f "$log"
done
# The packages in a fresh project: pack, build and run samples/ against them, install and run the tool,
# compile the docs' C# blocks (scripts/test-packages.sh; about 3.5 minutes here, most of it packing the tool).
echo "== packages (scripts/test-packages.sh)"
log=$(mktemp)
scripts/test-packages.sh 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
p=$(grep -oE '^[0-9]+ passed' "$log" | tail -1 | grep -oE '[0-9]+' || echo 0)
f=$(grep -oE '[0-9]+ failed$' "$log" | tail -1 | grep -oE '[0-9]+' || echo 0)
passed=$((passed + p))
failed=$((failed + f))
if [ "$code" -ne 0 ]; then status=1; [ "$f" -eq 0 ] && failed=$((failed + 1)); fi
rm -f "$log"

printf "\n%s passed, %s failed\n" "$passed" "$failed"
exit $status
