"""Write OT test problems and POT's solutions for tests/test_ot_oracle.c.

Run with /usr/bin/python3 (NumPy and POT 0.8.2). Usage: ot_oracle.py OUTDIR

For every case it writes OUTDIR/ot_case_<name>.bin, little-endian:
  int32 n, int32 m, float64 reg (0: no Sinkhorn reference),
  float64 cost (n*m, row-major), mu (n), nu (m),
  float64 emd2 (ot.emd2 objective),
  float64 sinkhorn plan (n*m) when reg > 0.
and lists the case names, one per line, in OUTDIR/ot_cases.txt.
"""
import os
import sys
import warnings

import numpy as np
import ot

# Stopping threshold and iteration cap of the Sinkhorn reference; POT stops when the
# L2 norm of the column-marginal error, checked every 10 iterations, is below stopThr.
SINKHORN_STOP = 1e-14
SINKHORN_MAXITER = 200000


def euclidean_cost(rng, n, m, dim):
    """Euclidean distances between two random point clouds, divided by the max."""
    x = rng.standard_normal((n, dim))
    y = rng.standard_normal((m, dim)) + 0.5
    c = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    return c / c.max()


def random_marginal(rng, n, zeros=0):
    w = rng.uniform(0.1, 1.0, n)
    if zeros:
        w[rng.choice(n, zeros, replace=False)] = 0.0
    return w / w.sum()


def uniform(n):
    return np.full(n, 1.0 / n)


def cases(rng):
    """Yields (name, cost, mu, nu, reg)."""
    yield "square_uniform", euclidean_cost(rng, 50, 50, 5), uniform(50), uniform(50), 0.05
    yield "square_large", euclidean_cost(rng, 200, 200, 8), uniform(200), uniform(200), 0.0
    yield "rect_wide", euclidean_cost(rng, 40, 70, 4), uniform(40), uniform(70), 0.05
    yield "rect_multiple", euclidean_cost(rng, 60, 30, 4), uniform(60), uniform(30), 0.1
    yield "rect_multiple_wide", euclidean_cost(rng, 20, 60, 3), uniform(20), uniform(60), 0.0
    yield "rect_multiple_large", euclidean_cost(rng, 150, 50, 6), uniform(150), uniform(50), 0.0
    yield "rect_multiple_ties", rng.integers(0, 3, (20, 60)).astype(float), uniform(20), \
        uniform(60), 0.0
    yield "nonuniform", euclidean_cost(rng, 45, 35, 6), random_marginal(rng, 45), \
        random_marginal(rng, 35), 0.02
    yield "nonuniform_large", euclidean_cost(rng, 150, 120, 6), random_marginal(rng, 150), \
        random_marginal(rng, 120), 0.0
    yield "nonuniform_square", euclidean_cost(rng, 64, 64, 3), random_marginal(rng, 64), \
        random_marginal(rng, 64), 0.01
    ties = rng.integers(0, 3, (30, 30)).astype(float)
    yield "ties_square", ties, uniform(30), uniform(30), 0.1
    ties = rng.integers(0, 2, (25, 40)).astype(float)
    yield "ties_rect", ties, random_marginal(rng, 25), random_marginal(rng, 40), 0.1
    yield "zero_cost", np.zeros((20, 30)), uniform(20), uniform(30), 0.1
    yield "one_row", euclidean_cost(rng, 1, 17, 2), np.ones(1), random_marginal(rng, 17), 0.05
    yield "one_col", euclidean_cost(rng, 13, 1, 2), random_marginal(rng, 13), np.ones(1), 0.05
    yield "one_by_one", np.array([[0.7]]), np.ones(1), np.ones(1), 0.05
    yield "zero_mass_entries", euclidean_cost(rng, 30, 20, 3), random_marginal(rng, 30, 5), \
        random_marginal(rng, 20, 3), 0.05
    neg = rng.uniform(-1.0, 1.0, (30, 30))
    yield "negative_cost", neg, uniform(30), uniform(30), 0.1
    # Mass 2 instead of 1, integer-valued marginals: many degenerate pivots.
    yield "mass_two", euclidean_cost(rng, 24, 36, 4), np.full(24, 2.0 / 24), \
        np.full(36, 2.0 / 36), 0.05


def write_case(path, cost, mu, nu, reg):
    n, m = cost.shape
    emd2 = ot.emd2(mu, nu, cost, numItermax=10_000_000)
    with open(path, "wb") as out:
        np.array([n, m], dtype="<i4").tofile(out)
        np.array([reg], dtype="<f8").tofile(out)
        for arr in (cost, mu, nu):
            np.ascontiguousarray(arr, dtype="<f8").tofile(out)
        np.array([emd2], dtype="<f8").tofile(out)
        if reg > 0:
            with warnings.catch_warnings(), np.errstate(divide="ignore"):
                warnings.simplefilter("error", UserWarning)
                plan = ot.sinkhorn(mu, nu, cost, reg, method="sinkhorn_log",
                                   stopThr=SINKHORN_STOP, numItermax=SINKHORN_MAXITER)
            np.ascontiguousarray(plan, dtype="<f8").tofile(out)


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20240501)
    names = []
    for name, cost, mu, nu, reg in cases(rng):
        write_case(os.path.join(outdir, f"ot_case_{name}.bin"), cost, mu, nu, reg)
        names.append(name)
    with open(os.path.join(outdir, "ot_cases.txt"), "w") as out:
        out.write("\n".join(names) + "\n")


if __name__ == "__main__":
    main()
