#!/usr/bin/env bash
# Set-up (data, tools, packages, build), then the main job: DER++ with buffer 500 on Split Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
# --overwrite: running the main job again replaces its own earlier results (a run refuses a folder that
# holds results otherwise).
exec src/Continual.Cli/bin/Release/net10.0/linux-x64/continual run \
    --benchmark split-fmnist --strategy derpp --buffer 500 --seed 0 --out runs/split-fmnist-derpp-500-s0 --overwrite "$@"
