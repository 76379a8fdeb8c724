#!/usr/bin/env bash
# Runs one libFuzzer target for a fixed time.
#
#   tools/fuzz.sh TARGET SECONDS      TARGET: job, idx, model or model_path
#
# Builds the fuzz targets with clang, ASan and UBSan into build-fuzz (TFUSE_FUZZ_BUILD
# overrides it), copies the seed corpus tests/fuzz/corpus/TARGET into
# build-fuzz/corpus/TARGET (new inputs go there, so the checked-in seeds stay as they are)
# and runs the target on one core. A crashing input is saved as build-fuzz/crash-*; rerun
# it with build-fuzz/tests/fuzz_TARGET FILE. The exit status is the fuzzer's: 0 when no input
# failed. model_path starts from the model seeds and the regression inputs in
# tests/fuzz/regress/model, files that crash or hang HDF5 itself.
#
# FUZZ_KEEP_GOING=1 runs libFuzzer in fork mode and keeps going after a crash, saving
# every crashing input. The model target needs it for long runs, because HDF5 1.10 itself
# reads out of bounds on some corrupt files (see docs/ROBUSTNESS.md). model_path needs no
# fork mode: it reads each file first in a probe child process, as tfuse-mpi does.
set -euo pipefail
if [[ $# -ne 2 || ! $1 =~ ^(job|idx|model|model_path)$ || ! $2 =~ ^[0-9]+$ ]]; then
    echo "usage: tools/fuzz.sh job|idx|model|model_path SECONDS" >&2
    exit 2
fi
target=$1 seconds=$2
cd "$(dirname "$0")/.."
root=$PWD
build=${TFUSE_FUZZ_BUILD:-build-fuzz}
if ! command -v clang > /dev/null; then
    echo "error: clang not found; install it (Debian: apt-get install clang)" >&2
    exit 1
fi

CC=clang cmake -S . -B "$build" -DTFUSE_FUZZ=ON -DTFUSE_SANITIZE=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$build" -j 2 --target "fuzz_$target"

mkdir -p "$build/corpus/$target"
seeds=(tests/fuzz/corpus/$target)
[[ $target == model_path ]] && seeds=(tests/fuzz/corpus/model tests/fuzz/regress/model)
for dir in "${seeds[@]}"; do cp -n "$root/$dir"/* "$build/corpus/$target/"; done
source tools/mpienv.sh
# The file targets write every input to a temporary file; memory-backed is much faster.
if [[ -z ${TMPDIR:-} && -d /dev/shm && -w /dev/shm ]]; then export TMPDIR=/dev/shm; fi
# The model target initializes MPI once; Open MPI and HDF5 keep allocations until exit,
# which LeakSanitizer would report after every run.
leaks=1
[[ $target == model || $target == model_path ]] && leaks=0
export ASAN_OPTIONS=detect_leaks=$leaks:allocator_may_return_null=1
# model_path: a probe child that HDF5 crashes prints an AddressSanitizer report. Symbolizing
# it takes longer than the run itself, so it is off; rerun a saved input for a symbolized
# stack. A 2 s probe limit ends the files that HDF5 never finishes decoding sooner.
if [[ $target == model_path ]]; then
    ASAN_OPTIONS+=:symbolize=0
    export TFUSE_PROBE_SECONDS=${TFUSE_PROBE_SECONDS:-2}
fi
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$build"
keep_going=()
if [[ ${FUZZ_KEEP_GOING:-0} == 1 ]]; then keep_going=(-fork=1 -ignore_crashes=1); fi
exec "tests/fuzz_$target" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
    -print_final_stats=1 "${keep_going[@]}" "corpus/$target"
