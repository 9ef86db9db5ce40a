#!/usr/bin/env bash
# Set-up shared by the two commands of README: data, tools, packages, build. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dotnet >/dev/null 2>&1; then
    echo "error: the .NET 10 SDK (dotnet) is required" >&2
    exit 1
fi

data=/usr/share/datasets/fashion-mnist
if [ ! -e "$data/train-images-idx3-ubyte.gz" ] && [ ! -e "$data/train-images-idx3-ubyte" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "== installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "warning: $data is missing and apt-get cannot install it here; pass --data DIR to continual" >&2
    fi
fi

echo "== restoring tools and packages"
dotnet tool restore >/dev/null
dotnet paket restore
echo "== building (Release)"
dotnet build Continual.sln -c Release -nologo -clp:ErrorsOnly -v:quiet
