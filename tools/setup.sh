#!/usr/bin/env bash
# Installs tfuse's Debian packages (only those missing) and builds tfuse in build/.
#   tools/setup.sh          packages for building and running jobs
#   tools/setup.sh --tests  also the independent oracles the tests use (NumPy, POT,
#                           h5py, PyTorch for Debian's /usr/bin/python3)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin
          libscalapack-openmpi-dev libhdf5-openmpi-dev hdf5-tools libcjson-dev
          libopenblas-dev zlib1g-dev dataset-fashion-mnist bible-kjv)
if [[ "${1:-}" == "--tests" ]]; then
    packages+=(python3 python3-numpy python3-pot python3-h5py python3-torch)
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if (( ${#missing[@]} > 0 )); then
    echo "setup: installing ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: installing packages needs root; run as root or install: ${missing[*]}" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The verse corpus that the BERT jobs read (jobs/bert_quickstart.json, jobs/study/bert_*.json).
if [[ ! -s runs/data/kjv.tsv ]]; then
    mkdir -p runs/data
    tools/bible_corpus.sh runs/data/kjv.tsv
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
