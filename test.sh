#!/usr/bin/env bash
# Runs every test: set-up if needed, then each test program (Expecto and the C# checks run as programs,
# which exit non-zero on failure). Ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")"
scripts/setup.sh || exit 1

passed=0
failed=0
status=0
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Adds one program's counts from its log and exit code. Expecto ends with "... – N passed, N ignored,
# N failed, N errored."; the C# checks with "N passed, N failed".
count() {   # count NAME LOG CODE
    local name=$1 log=$2 code=$3 clean p f e
    clean=$(sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' "$log")
    p=$(grep -oE '[0-9]+ passed' <<<"$clean" | tail -1 | grep -oE '[0-9]+' || echo 0)
    f=$(grep -oE '[0-9]+ failed' <<<"$clean" | tail -1 | grep -oE '[0-9]+' || echo 0)
    e=$(grep -oE '[0-9]+ errored' <<<"$clean" | tail -1 | grep -oE '[0-9]+' || echo 0)
    passed=$((passed + p))
    failed=$((failed + f + e))
    if [ "$code" -ne 0 ]; then status=1; [ $((f + e)) -eq 0 ] && failed=$((failed + 1)); fi
    if [ "$p" -eq 0 ] && [ "$code" -eq 0 ]; then echo "error: $name ran no test" >&2; status=1; fi
}

binary() { echo "tests/$1/bin/Release/net10.0/linux-x64/$1"; }

# Sequenced: libtorch and ONNX Runtime share native thread pools; one test at a time keeps runs
# reproducible on 2 cores (a parallel run crashed once in native code under heavy load).
for name in $(ls tests); do
    [ "$name" = Continual.Tests ] && continue
    [ -x "$(binary "$name")" ] || { echo "error: $(binary "$name") was not built" >&2; status=1; continue; }
    echo "== $name"
    "$(binary "$name")" --summary --sequenced 2>&1 | tee "$logs/$name.log"
    count "$name" "$logs/$name.log" "${PIPESTATUS[0]}"
done

# The longest program runs as two processes side by side (--shard K/N: every test once, each process
# sequenced): separate processes share no thread pool, and most tests keep one core busy.
name=Continual.Tests
if [ -x "$(binary $name)" ]; then
    shards=2
    echo "== $name ($shards processes side by side; each one's output follows when it ends)"
    pids=()
    for k in $(seq 0 $((shards - 1))); do
        "$(binary $name)" --summary --sequenced --no-spinner --shard "$k/$shards" >"$logs/shard-$k.log" 2>&1 &
        pids+=($!)
    done
    for k in $(seq 0 $((shards - 1))); do
        wait "${pids[$k]}"; code=$?
        echo "== $name, shard $((k + 1)) of $shards"
        cat "$logs/shard-$k.log"
        count "$name shard $k" "$logs/shard-$k.log" "$code"
    done
else
    echo "error: $(binary $name) was not built" >&2; status=1
fi

# The packages in a fresh project: pack, build and run samples/ against them, install and run the tool,
# compile the docs' C# blocks (scripts/test-packages.sh; about 2 minutes here, most of it packing the
# tool). After the tests: packing rebuilds in place what the tests' command-line runs start.
echo "== packages (scripts/test-packages.sh)"
scripts/test-packages.sh 2>&1 | tee "$logs/packages.log"
code=${PIPESTATUS[0]}
p=$(grep -oE '^[0-9]+ passed' "$logs/packages.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
f=$(grep -oE '[0-9]+ failed$' "$logs/packages.log" | tail -1 | grep -oE '[0-9]+' || echo 0)
passed=$((passed + p))
failed=$((failed + f))
if [ "$code" -ne 0 ]; then status=1; [ "$f" -eq 0 ] && failed=$((failed + 1)); fi

printf "\n%s passed, %s failed\n" "$passed" "$failed"
exit $status
