"""Compare ViT training throughput of tfuse and PyTorch on the same cores.

Runs bench_vit_train (tfuse, OPENBLAS_NUM_THREADS=n) and bench_vit_train_torch.py (PyTorch,
torch.set_num_threads(n)) alternately, ROUNDS times for each thread count, and prints the
median images per second of each and the median of the per-round ratios tfuse / PyTorch.
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


def median_rate(command, env):
    output = subprocess.run(command, env=env, check=True, capture_output=True,
                            text=True).stdout
    match = re.search(r"median: ([0-9.]+) images/s", output)
    if not match:
        raise SystemExit(f"no median in the output of {' '.join(command)}:\n{output}")
    return float(match.group(1))


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
    print("threads  tfuse img/s  torch img/s  ratio (median of rounds)")
    for threads in (1, 2):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        ours, theirs, ratios = [], [], []
        for _ in range(rounds):
            a = median_rate([binary, steps, "128", "3"], env)
            torch_command = [sys.executable, os.path.join(HERE, "bench_vit_train_torch.py"),
                             str(threads), steps, "128", "3"]
            b = max(median_rate(torch_command, env),
                    median_rate(torch_command, dict(env, OMP_WAIT_POLICY="PASSIVE")))
            ours.append(a)
            theirs.append(b)
            ratios.append(a / b)
            print(f"  round: threads {threads}, tfuse {a:.0f}, torch {b:.0f}, ratio {a / b:.2f}",
                  flush=True)
        print(f"{threads:7d}  {statistics.median(ours):11.0f}  {statistics.median(theirs):11.0f}"
              f"  {statistics.median(ratios):.2f}", flush=True)


if __name__ == "__main__":
    main()
