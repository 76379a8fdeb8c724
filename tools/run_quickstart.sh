#!/usr/bin/env bash
# Installs and builds tfuse, then trains two ViT parents on Fashion-MNIST and fuses them
# (jobs/quickstart.json). RANKS sets the MPI rank count (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
source tools/mpienv.sh
mpirun -n "${RANKS:-2}" build/tfuse-mpi jobs/quickstart.json "$@"
