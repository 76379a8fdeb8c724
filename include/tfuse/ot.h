/* Optimal transport solvers: exact (earth mover's distance) and entropic (log-domain
 * Sinkhorn), single-rank and distributed.
 *
 * Notation: a problem has n source points (rows, marginal mu) and m target points
 * (columns, marginal nu). Costs C and plans P are (n, m) row-major doubles. A NULL
 * marginal means uniform (1/n or 1/m). Marginals must be nonnegative and finite and
 * sum to the same mass (relative tolerance 1e-9); costs must be finite. Negative costs
 * are allowed: both solvers depend on C only up to a constant shift, which changes the
 * objective by the shift times the mass and leaves the plan unchanged.
 * A message for malformed input names the function, the value and its index, e.g.
 * "ot_emd_solve: mu[3] = -0.25 is invalid; marginals must be finite and >= 0". */
#ifndef TFUSE_OT_H
#define TFUSE_OT_H

#include <stdint.h>
#include "tfuse/common.h"

typedef struct {
    double objective;      /* sum_ij C_ij P_ij */
    int64_t iterations;    /* solver iterations (pivots, or Sinkhorn sweeps over all eps) */
    double marginal_error; /* final L1 norm of the marginal violation (Sinkhorn) */
    int converged;         /* 1 if the stopping rule was met */
} ot_info;

/* Solves exact OT min <C, P> s.t. P 1 = mu, P^T 1 = nu, P >= 0. Writes the plan into
 * plan (n, m), caller-allocated. Returns TF_ERR_ARG for malformed input (negative or
 * non-finite marginals, non-finite costs, unequal masses) with a message naming the
 * value, TF_ERR_NOT_CONVERGED if the pivot cap is hit. Not collective.
 * Uniform marginals with max(n, m) a multiple of min(n, m) are solved as an assignment
 * problem (Jonker-Volgenant); everything else by a network simplex. info may be NULL;
 * info->iterations counts network simplex pivots (0 on the assignment path). */
tf_status ot_emd_solve(int n, int m, const double *cost, const double *mu, const double *nu,
                       double *plan, ot_info *info);

typedef struct {
    double epsilon;    /* target entropic regularizer, > 0 */
    double tolerance;  /* stop when the marginal error is below this */
    int64_t max_iter;  /* iteration cap at the target epsilon */
    int eps_scaling;   /* 1: anneal epsilon from eps_start down to epsilon */
    double eps_start;  /* first epsilon when annealing; 0 selects max |C| */
    double eps_factor; /* epsilon shrinks by this factor per stage, in (0, 1) */
} ot_sinkhorn_options;

/* Default options: tolerance 1e-9, max_iter 100000, annealing on from max |C| by 0.5. */
ot_sinkhorn_options ot_sinkhorn_defaults(double epsilon);

/* Solves entropic OT min <C, P> - epsilon H(P) with marginals mu and nu in the log
 * domain in double precision; writes the plan into plan (n, m). Returns
 * TF_ERR_NOT_CONVERGED (plan still written, finite) when max_iter is reached.
 * Stopping rule: after each row update the rows of the plan match mu, and the solver
 * stops once the L1 column error sum_j |(P^T 1)_j - nu_j| is below tolerance. This is
 * POT's rule for ot.sinkhorn (method 'sinkhorn_log') with the L1 norm in place of L2,
 * so at equal thresholds it is at least as strict, and it is checked every iteration
 * at no extra cost. With annealing, each larger epsilon runs at most 100 iterations or
 * until its error is below max(tolerance, 1e-3 * mass). info may be NULL; info->iterations
 * counts sweeps over all stages and info->marginal_error is the L1 row plus column
 * error of the returned plan. Not collective. */
tf_status ot_sinkhorn_solve(int n, int m, const double *cost, const double *mu, const double *nu,
                            const ot_sinkhorn_options *opt, double *plan, ot_info *info);

#endif
