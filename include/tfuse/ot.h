/* Optimal transport solvers: exact (earth mover's distance) and entropic (log-domain
 * Sinkhorn), single-rank and distributed.
 *
 * Notation: a problem has n source points (rows, marginal mu) and m target points
 * (columns, marginal nu). Costs C and plans P are (n, m) row-major doubles. A NULL
 * marginal means uniform (1/n or 1/m). Marginals must be nonnegative and finite and
 * sum to the same mass (relative tolerance 1e-9); costs must be finite. */
#ifndef TFUSE_OT_H
#define TFUSE_OT_H

#include <stdint.h>
#include "tfuse/common.h"

typedef struct {
    double objective;       /* sum_ij C_ij P_ij */
    int64_t iterations;     /* solver iterations (pivots, or Sinkhorn sweeps over all eps) */
    double marginal_error;  /* final L1 norm of the marginal violation (Sinkhorn) */
    int converged;          /* 1 if the stopping rule was met */
} ot_info;

/* Solves exact OT min <C, P> s.t. P 1 = mu, P^T 1 = nu, P >= 0. Writes the plan into
 * plan (n, m), caller-allocated. Returns TF_ERR_ARG for malformed input (negative or
 * non-finite marginals, non-finite costs, unequal masses) with a message naming the
 * value, TF_ERR_NOT_CONVERGED if the pivot cap is hit. Not collective. */
tf_status ot_emd_solve(int n, int m, const double *cost, const double *mu, const double *nu,
                       double *plan, ot_info *info);

typedef struct {
    double epsilon;      /* target entropic regularizer, > 0 */
    double tolerance;    /* stop when the marginal error is below this */
    int64_t max_iter;    /* iteration cap at the target epsilon */
    int eps_scaling;     /* 1: anneal epsilon from eps_start down to epsilon */
    double eps_start;    /* first epsilon when annealing (e.g. max cost) */
    double eps_factor;   /* epsilon shrinks by this factor per stage, in (0, 1) */
} ot_sinkhorn_options;

/* Default options: tolerance 1e-9, max_iter 100000, annealing on from max(C) by 0.5. */
ot_sinkhorn_options ot_sinkhorn_defaults(double epsilon);

/* Solves entropic OT min <C, P> - epsilon H(P) with marginals mu and nu in the log
 * domain in double precision; writes the plan into plan (n, m). Returns
 * TF_ERR_NOT_CONVERGED (plan still written, finite) when max_iter is reached. */
tf_status ot_sinkhorn_solve(int n, int m, const double *cost, const double *mu,
                            const double *nu, const ot_sinkhorn_options *opt, double *plan,
                            ot_info *info);

#endif
