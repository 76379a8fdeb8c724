#!/bin/bash
# Strong scaling of one fuse job (jobs/scaling/fuse.json: four d = 384, 6-layer ViT parents,
# 256 calibration images, exact OT with repair and Sinkhorn OT) at 1 and 2 ranks, REPS runs
# each, with the seconds of every stage from the "fuse timing" log lines; then one run at 4
# and at 8 ranks (oversubscribed) whose fused models must be bitwise identical to the 1-rank
# ones (h5diff). Prints a table of medians (bench/bench_fuse_scaling.py) and the load
# average before each run, because other work on the machine slows the ranks down. With
# Linux's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled = 1) all ranks of
# one mpirun share the CPU time of one session, so under load from other sessions the
# wall time cannot drop with more ranks; the busiest rank's CPU seconds still can.
#
#   bench/bench_fuse_scaling.sh            # BUILD=build REPS=3 OUT=runs/scaling/bench
#   ORDER=blocked bench/bench_fuse_scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/mpienv.sh
BUILD=${BUILD:-build}
REPS=${REPS:-3}
OUT=${OUT:-runs/scaling/bench}
BIN=$BUILD/tfuse-mpi
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.time

if [ ! -x "$BIN" ]; then
    echo "error: $BIN not found; build first (cmake -B $BUILD && make -C $BUILD -j2 tfuse-mpi)" >&2
    exit 1
fi
if [ ! -f runs/scaling/parent-d.h5 ]; then
    echo "creating the parents (jobs/scaling/parents.json)"
    mpirun -n 2 "$BIN" jobs/scaling/parents.json > "$OUT/parents.log" 2>&1
fi

# run NP TAG: one fuse run; per-rank CPU seconds and peak memory go to $OUT/TAG.rankR.time.
run() {
    local np=$1 tag=$2
    echo "load $(cut -d' ' -f1-3 /proc/loadavg)" > "$OUT/$tag.log"
    local start end
    rm -f runs/scaling/fused/*.h5
    start=$(date +%s.%N)
    mpirun -n "$np" sh -c '/usr/bin/time -f "%e %U %S %M" -o "$0.rank$OMPI_COMM_WORLD_RANK.time" "$1" "$2"' \
        "$OUT/$tag" "$BIN" jobs/scaling/fuse.json >> "$OUT/$tag.log" 2>&1
    end=$(date +%s.%N)
    echo "wall $(echo "$end - $start" | bc)" >> "$OUT/$tag.log"
    echo "$tag: $(tail -n 1 "$OUT/$tag.log"), $(head -n 1 "$OUT/$tag.log")"
}

# ORDER=alternate (default): the two rank counts alternate, so that a change of load
# affects both alike. ORDER=blocked: for each rank count one untimed warm-up run, then the
# REPS timed runs; on this machine the first 2-rank run after a 1-rank run is slower than
# the next ones (see docs/SCALING.md).
if [ "${ORDER:-alternate}" = blocked ]; then
    for np in 1 2; do
        run "$np" "np$np.warmup"
        for rep in $(seq 1 "$REPS"); do
            run "$np" "np$np.rep$rep"
        done
        mkdir -p "$OUT/np$np" && cp runs/scaling/fused/*.h5 "$OUT/np$np/"
    done
else
    for rep in $(seq 1 "$REPS"); do
        for np in 1 2; do
            run "$np" "np$np.rep$rep"
            if [ "$rep" = 1 ]; then
                mkdir -p "$OUT/np$np" && cp runs/scaling/fused/*.h5 "$OUT/np$np/"
            fi
        done
    done
fi
for np in 4 8; do
    run "$np" "np$np.rep1"
    mkdir -p "$OUT/np$np" && cp runs/scaling/fused/*.h5 "$OUT/np$np/"
done

# Fused models at 2, 4 and 8 ranks against 1 rank: bitwise (h5diff without tolerance).
status=0
for np in 2 4 8; do
    for f in "$OUT"/np1/*.h5; do
        if h5diff -q "$f" "$OUT/np$np/$(basename "$f")"; then
            echo "np$np $(basename "$f"): identical to np1"
        else
            echo "np$np $(basename "$f"): DIFFERS from np1"
            status=1
        fi
    done
done
/usr/bin/python3 bench/bench_fuse_scaling.py "$OUT" "$REPS"
exit $status
