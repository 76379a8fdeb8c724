#!/bin/sh
# Runs the OT benchmark (tfuse against POT, one thread each) and prints a Markdown table.
# Usage: bench/bench_ot.sh BUILD_DIR [options of bench/bench_ot.py]
# BUILD_DIR must contain tests/bench_ot (make bench_ot).
set -eu
build=$1
shift
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec /usr/bin/python3 "$(dirname "$0")/bench_ot.py" --exe "$build/tests/bench_ot" "$@"
