"""Benchmark tfuse's OT solvers against POT on the same problems, in one run.

Run through bench/bench_ot.sh, which pins one thread. For each shape it generates a
cost matrix (Euclidean distances between two random point clouds, divided by the max),
writes it for the C program bench_ot, and times:
  - exact OT: ot.emd against ot_emd_solve;
  - Sinkhorn: ot.sinkhorn(method='sinkhorn_log') against ot_sinkhorn_solve at the same
    epsilon and threshold. POT stops when the L2 norm of the column-marginal error,
    checked every 10 iterations, is below stopThr. tfuse stops when the L1 norm of the
    same error, checked every iteration, is below its tolerance. L1 >= L2, so at equal
    thresholds tfuse's rule is the stricter one.
  - the distributed Sinkhorn at 1 and 2 ranks (mpirun).
Marginals are uniform. Prints a Markdown table with times and ratios (POT / tfuse).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import ot

MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_btl": "self,vader",
}


def cost_matrix(n, m, dim, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    y = rng.standard_normal((m, dim))
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    c = np.sqrt(np.maximum(sq, 0.0))
    return c / c.max()


def write_cost(path, c):
    with open(path, "wb") as out:
        np.array(c.shape, dtype="<i4").tofile(out)
        np.ascontiguousarray(c, dtype="<f8").tofile(out)


def checksum(plan):
    """Sum of P_ij * (i + 1), as bench_ot computes it."""
    return float((plan.sum(1) * np.arange(1, plan.shape[0] + 1)).sum())


def run_tfuse(exe, args, ranks=0):
    cmd = [exe] + [str(a) for a in args]
    env = dict(os.environ)
    if ranks:
        cmd = ["mpirun", "-n", str(ranks)] + cmd
        env.update(MPI_ENV)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def pot_emd(c):
    n, m = c.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    t0 = time.perf_counter()
    plan = ot.emd(a, b, c, numItermax=100_000_000)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "objective": float((plan * c).sum()), "checksum": checksum(plan)}


def pot_sinkhorn(c, eps, tol):
    n, m = c.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    t0 = time.perf_counter()
    plan, log = ot.sinkhorn(a, b, c, eps, method="sinkhorn_log", stopThr=tol,
                            numItermax=1_000_000, log=True)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "objective": float((plan * c).sum()),
            "checksum": checksum(plan), "iterations": int(log["niter"]) + 1}


def rel(x, y):
    return abs(x - y) / max(abs(y), 1e-300)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exe", required=True, help="path of the bench_ot program")
    parser.add_argument("--shapes", default="384x384,768x768,1536x1536,3072x3072,3072x1536")
    parser.add_argument("--eps", default="0.05,0.01", help="Sinkhorn epsilons")
    parser.add_argument("--tol", type=float, default=1e-9, help="Sinkhorn stopping threshold")
    parser.add_argument("--sinkhorn-max", type=int, default=3072,
                        help="largest max(n, m) at which to run Sinkhorn")
    parser.add_argument("--dist-n", type=int, default=3072, help="n = m of the 1 vs 2 rank run")
    parser.add_argument("--dist-eps", type=float, default=0.01)
    parser.add_argument("--dim", type=int, default=64, help="dimension of the point clouds")
    args = parser.parse_args()

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    eps_list = [float(e) for e in args.eps.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, m in shapes:
            c = cost_matrix(n, m, args.dim, seed=n * 100003 + m)
            path = os.path.join(tmp, f"cost_{n}x{m}.bin")
            write_cost(path, c)

            ref = pot_emd(c)
            got = run_tfuse(args.exe, [path, "emd"])
            rows.append(("exact", f"{n}x{m}", "-", ref, got))
            print(f"exact {n}x{m}: POT {ref['seconds']:.3f} s, tfuse {got['seconds']:.3f} s",
                  file=sys.stderr, flush=True)

            if max(n, m) > args.sinkhorn_max:
                continue
            for eps in eps_list:
                ref = pot_sinkhorn(c, eps, args.tol)
                got = run_tfuse(args.exe, [path, "sinkhorn", eps, args.tol])
                rows.append(("sinkhorn", f"{n}x{m}", eps, ref, got))
                print(f"sinkhorn {n}x{m} eps {eps}: POT {ref['seconds']:.3f} s, "
                      f"tfuse {got['seconds']:.3f} s", file=sys.stderr, flush=True)

        dist = []
        if args.dist_n:
            c = cost_matrix(args.dist_n, args.dist_n, args.dim, seed=7)
            path = os.path.join(tmp, "cost_dist.bin")
            write_cost(path, c)
            for ranks in (1, 2):
                dist.append(run_tfuse(args.exe, [path, "dist", args.dist_eps, args.tol], ranks))

    if rows:
        print("| problem | shape | eps | POT s | tfuse s | POT / tfuse | iterations POT / tfuse "
              "| objective rel. diff |")
        print("|---|---|---|---|---|---|---|---|")
    for kind, shape, eps, ref, got in rows:
        iterations = f"{ref['iterations']} / {got['iterations']}" if kind == "sinkhorn" else "-"
        print(f"| {kind} | {shape} | {eps} | {ref['seconds']:.3f} | {got['seconds']:.3f} "
              f"| {ref['seconds'] / got['seconds']:.1f} | {iterations} "
              f"| {rel(got['objective'], ref['objective']):.1e} |")
    if dist:
        print()
        print("| distributed Sinkhorn | shape | eps | 1 rank s | 2 ranks s | speedup "
              "| iterations | objective rel. diff |")
        print("|---|---|---|---|---|---|---|---|")
        one_rank, two_ranks = dist
        print(f"| dist | {args.dist_n}x{args.dist_n} | {args.dist_eps} "
              f"| {one_rank['seconds']:.3f} | {two_ranks['seconds']:.3f} "
              f"| {one_rank['seconds'] / two_ranks['seconds']:.2f} "
              f"| {one_rank['iterations']} / {two_ranks['iterations']} "
              f"| {rel(two_ranks['objective'], one_rank['objective']):.1e} |")
    print()
    load = os.getloadavg()
    print(f"Run at {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"POT {ot.__version__}, NumPy {np.__version__}, tolerance {args.tol}, "
          f"point-cloud dimension {args.dim}, load average at the end "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min).")


if __name__ == "__main__":
    main()
