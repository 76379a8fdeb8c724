"""Compare ViT training throughput of tfuse and PyTorch on the same cores.

Runs bench_vit_train (tfuse, OPENBLAS_NUM_THREADS=n) and bench_vit_train_torch.py (PyTorch,
torch.set_num_threads(n)) alternately, ROUNDS times for each thread count, and prints the
median images per second of each and the median of the per-round ratios tfuse / PyTorch,
by wall-clock time and by CPU time of the process (steadier when other jobs share the CPUs).
PyTorch runs twice per round, with OpenMP's default wait policy and with
OMP_WAIT_POLICY=PASSIVE, and keeps the faster: on a shared machine the spinning default can
slow it down tenfold at 2 threads.

Usage: /usr/bin/python3 bench/bench_vit_train.py BENCH_BINARY [ROUNDS] [STEPS]
"""
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def median_rates(command, env):
    """Runs one benchmark program; returns its median images per second and per CPU second."""
    output = subprocess.run(command, env=env, check=True, capture_output=True,
                            text=True).stdout
    match = re.search(r"median: ([0-9.]+) images/s, ([0-9.]+) images per CPU second", output)
    if not match:
        raise SystemExit(f"no median in the output of {' '.join(command)}:\n{output}")
    return float(match.group(1)), float(match.group(2))


def main():
    if len(sys.argv) < 2:
        raise SystemExit("usage: bench_vit_train.py BENCH_BINARY [ROUNDS] [STEPS]")
    binary = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    steps = sys.argv[3] if len(sys.argv) > 3 else "20"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "unknown")
    print(f"CPU: {cpu}; {os.cpu_count()} logical CPUs; load average "
          f"{os.getloadavg()[0]:.2f} at start")
    print(f"batch 128, default ViT, {steps} steps per repeat, 3 repeats per run, "
          f"{rounds} rounds")
    print("threads  tfuse img/s  torch img/s  ratio  tfuse img/CPU-s  torch img/CPU-s  ratio")
    for threads in (1, 2):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        rows = []
        for _ in range(rounds):
            ours = median_rates([binary, steps, "128", "3"], env)
            torch_command = [sys.executable, os.path.join(HERE, "bench_vit_train_torch.py"),
                             str(threads), steps, "128", "3"]
            theirs = max(median_rates(torch_command, env),
                         median_rates(torch_command, dict(env, OMP_WAIT_POLICY="PASSIVE")))
            rows.append((ours[0], theirs[0], ours[0] / theirs[0], ours[1], theirs[1],
                         ours[1] / theirs[1]))
            print("  round: threads %d, tfuse %.0f, torch %.0f, ratio %.2f; per CPU second "
                  "tfuse %.0f, torch %.0f, ratio %.2f" % ((threads,) + rows[-1]), flush=True)
        medians = [statistics.median(column) for column in zip(*rows)]
        print("%7d  %11.0f  %11.0f  %5.2f  %15.0f  %15.0f  %5.2f" % tuple([threads] + medians),
              flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
