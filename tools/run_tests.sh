#!/usr/bin/env bash
# Installs what the tests need, builds tfuse and runs the test suite with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --tests
source tools/mpienv.sh
cd build
ctest --output-on-failure --timeout 900 "$@"
