#!/usr/bin/env bash
# Set-up shared by the two commands of README: data, tools, packages, build. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dotnet >/dev/null 2>&1; then
    echo "error: the .NET 10 SDK (dotnet) is required" >&2
    exit 1
fi

# Debian packages: the Fashion-MNIST IDX files, the official ONNX checker (python3-onnx) that a test
# runs over our exported models, numpy for Debian's /usr/bin/python3 (python3-numpy), which a test
# runs scripts/read-learner.py with, and Chromium (below).
data=/usr/share/datasets/fashion-mnist
missing=()
if [ ! -e "$data/train-images-idx3-ubyte.gz" ] && [ ! -e "$data/train-images-idx3-ubyte" ]; then
    missing+=(dataset-fashion-mnist)
fi
if ! python3 -c "import onnx.checker" >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 && ! dpkg -s python3-onnx >/dev/null 2>&1; then
    missing+=(python3-onnx)
fi
if ! /usr/bin/python3 -c "import numpy" >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 && ! dpkg -s python3-numpy >/dev/null 2>&1; then
    missing+=(python3-numpy)
fi
# Slurm and munge: scripts/slurm-local.sh starts a single-node cluster from them, on which a test runs a
# sweep as a real job array (docs/sweeps.md).
for package in slurm-wlm munge; do
    if command -v dpkg >/dev/null 2>&1 && ! dpkg -s "$package" >/dev/null 2>&1; then
        missing+=("$package")
    fi
done
# Chromium: a test opens the HTML page of `continual report` headless (screenshot, images loaded, no
# console errors); it brings the fonts (fonts-dejavu-core, fonts-liberation) that the plots' text uses.
if ! command -v chromium >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 && ! dpkg -s chromium >/dev/null 2>&1; then
    missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "== installing ${missing[*]} (Debian packages)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "warning: missing ${missing[*]} and apt-get cannot install them here; pass --data DIR to continual" >&2
    fi
fi

echo "== restoring tools and packages"
dotnet tool restore >/dev/null
dotnet paket restore
echo "== building (Release)"
dotnet build Continual.sln -c Release -nologo -clp:ErrorsOnly -v:quiet
