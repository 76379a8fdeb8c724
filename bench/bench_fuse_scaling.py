"""Summarizes the logs of bench/bench_fuse_scaling.sh: median seconds per stage at 1 and 2
ranks (summed over the job's methods), the speed-up, per-rank CPU seconds and peak memory,
and the load average before each run.

    /usr/bin/python3 bench/bench_fuse_scaling.py OUT REPS
"""
import glob
import os
import re
import statistics
import sys

NUMBER = r"([0-9.]+) s"
STAGES = [
    ("loading parents", r"loading parents " + NUMBER),
    ("forward passes (rank 0)", r"forward passes " + NUMBER),
    ("statistics sums (rank 0)", r", sums " + NUMBER),
    ("waiting and tree reduction", r"waiting and reduction " + NUMBER),
    ("calibration statistics, total", r"calibration statistics " + NUMBER),
    ("OT, local (max over ranks)", r"local " + NUMBER),
    ("OT, plan broadcast", r"broadcast " + NUMBER),
    ("alignment and average", r"alignment and average " + NUMBER),
    ("repair", r"repair " + NUMBER),
    ("writing HDF5", r"writing " + NUMBER),
    ("fuse task (log)", r"finished in " + NUMBER),
]


def parse(path):
    """Returns {stage: seconds summed over methods}, the wall time and the load line."""
    text = open(path).read()
    out = {}
    for name, pattern in STAGES:
        values = [float(v) for v in re.findall(r"fuse timing: .*?" + pattern, text)]
        if name == "fuse task (log)":
            values = [float(v) for v in re.findall(r"task 1 of 1 \(scaling\) " + pattern, text)]
        out[name] = sum(values)
    wall = re.search(r"^wall ([0-9.]+)", text, re.M)
    out["mpirun wall time"] = float(wall.group(1)) if wall else float("nan")
    load = re.search(r"^load (.*)$", text, re.M)
    return out, load.group(1) if load else "?"


def rank_usage(prefix):
    """Returns (max CPU seconds over ranks, max peak RSS in MiB over ranks)."""
    cpu, rss = [], []
    for path in glob.glob(prefix + ".rank*.time"):
        fields = open(path).read().split()
        try:
            cpu.append(float(fields[-3]) + float(fields[-2]))
            rss.append(float(fields[-1]) / 1024)
        except (IndexError, ValueError):
            pass
    return (max(cpu) if cpu else float("nan"), max(rss) if rss else float("nan"))


def main():
    out, reps = sys.argv[1], int(sys.argv[2])
    runs = {1: [], 2: []}
    for np in (1, 2):
        for rep in range(1, reps + 1):
            log = os.path.join(out, "np%d.rep%d.log" % (np, rep))
            if not os.path.exists(log):
                continue
            stages, load = parse(log)
            cpu, rss = rank_usage(os.path.join(out, "np%d.rep%d" % (np, rep)))
            stages["CPU seconds, busiest rank"] = cpu
            stages["peak memory per rank, MiB"] = rss
            runs[np].append(stages)
            print("np%d rep %d: wall %.1f s, load before the run %s" %
                  (np, rep, stages["mpirun wall time"], load))
    if not runs[1] or not runs[2]:
        print("missing runs")
        return
    print()
    print("| stage | 1 rank (s) | 2 ranks (s) | speed-up |")
    print("|---|---|---|---|")
    names = [n for n, _ in STAGES] + ["mpirun wall time", "CPU seconds, busiest rank",
                                      "peak memory per rank, MiB"]
    for name in names:
        a = statistics.median(r[name] for r in runs[1])
        b = statistics.median(r[name] for r in runs[2])
        ratio = "%.2fx" % (a / b) if b > 0 and "memory" not in name else ""
        print("| %s | %.2f | %.2f | %s |" % (name, a, b, ratio))


if __name__ == "__main__":
    main()
