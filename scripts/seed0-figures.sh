#!/usr/bin/env bash
# The seed-0 Split Fashion-MNIST figures of every strategy, penalty and distillation term, as a table
# (final average Class-IL and Task-IL, and a digest of both accuracy matrices). A refactor must leave
# this table unchanged: run it before and after with the two builds and diff the outputs.
#   scripts/seed0-figures.sh [CONTINUAL_BINARY] [WORK_DIR] > figures.tsv
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-src/Continual.Cli/bin/Release/net10.0/linux-x64/continual}
work=${2:-$(mktemp -d)}
mkdir -p "$work"
configs=(
  "sgd|--strategy sgd"
  "joint|--strategy joint"
  "er-500|--strategy er --buffer 500"
  "der-500|--strategy der --buffer 500"
  "derpp-500|--strategy derpp --buffer 500"
  "lwf|--strategy lwf"
  "lwf-balanced|--strategy lwf --lwf-balance"
  "icarl-500|--strategy icarl --buffer 500"
  "ewc|--strategy ewc"
  "ewc-online|--strategy ewc-online"
  "ewc++|--strategy ewc++"
  "si|--strategy si"
  "mas|--strategy mas"
  "rwalk|--strategy rwalk"
  "scp|--strategy scp"
  "derpp-500+si|--strategy derpp --buffer 500 --penalty si"
  "er-500+ewc-online|--strategy er --buffer 500 --penalty ewc-online"
  "der-500+kd|--strategy der --buffer 500 --distill kd"
  "der-500+fitnets|--strategy der --buffer 500 --distill fitnets"
  "der-500+nst|--strategy der --buffer 500 --distill nst"
  "der-500+at|--strategy der --buffer 500 --distill at"
  "der-500+rkd|--strategy der --buffer 500 --distill rkd"
  "der-500+pod|--strategy der --buffer 500 --distill pod"
  "der-500+sd|--strategy der --buffer 500 --distill sd"
  "der-500+relation|--strategy der --buffer 500 --distill relation"
  "sgd+fitnets|--strategy sgd --distill fitnets"
  "si+fitnets|--strategy si --distill fitnets"
  "lwf+kd|--strategy lwf --distill kd"
  "icarl-200+pod|--strategy icarl --buffer 200 --distill pod"
)
run_one() {
  local name=$1 args=$2
  # shellcheck disable=SC2086
  # A run that fails (e.g. diverges) is a figure too: its row records the error.
  "$bin" run $args --seed 0 --no-onnx --out "$work/$name" >"$work/$name.log" 2>&1 || true
}
export -f run_one; export bin work
printf '%s\n' "${configs[@]}" | xargs -P 2 -I{} bash -c 'IFS="|" read -r n a <<<"{}"; run_one "$n" "$a"'
printf 'configuration\tClass-IL\tTask-IL\tmatrices\n'
for c in "${configs[@]}"; do
  name=${c%%|*}
  if [ ! -f "$work/$name/results.json" ]; then
    printf '%s\t%s\n' "$name" "$(grep -m1 'error' "$work/$name.log" | cut -c1-90)"
    continue
  fi
  /usr/bin/python3 - "$work/$name/results.json" "$name" <<'PY'
import hashlib, json, sys
d = json.load(open(sys.argv[1]))
m = d["metrics"]
digest = hashlib.sha256(json.dumps([d["classIl"], d["taskIl"]]).encode()).hexdigest()[:12]
def avg(s):
    v = m[s]["averageAccuracy"] if isinstance(m.get(s), dict) else None
    return v
print("%s\t%s\t%s\t%s" % (sys.argv[2], avg("classIl"), avg("taskIl"), digest))
PY
done
