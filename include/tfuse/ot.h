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
 * Uniform marginals are solved as assignment problems: Jonker-Volgenant when n = m, and
 * successive shortest paths with capacities max / min when max(n, m) is a multiple of
 * min(n, m). Everything else goes to a network simplex. info may be NULL;
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

/* ---- Distributed Sinkhorn ---------------------------------------------------------
 * The cost and the plan are (n, m) matrices distributed block-cyclically over a BLACS
 * process grid as in ScaLAPACK. A 9-integer array descriptor (from descinit) describes
 * the layout, and each rank stores a column-major local array with leading dimension
 * desc[8]. Marginals are replicated on every rank. */

/* A BLACS process grid over an MPI communicator, with the rank's place in it. */
typedef struct {
    MPI_Comm comm;    /* the communicator the grid was built on (not owned) */
    int context;      /* BLACS context */
    int nprow, npcol; /* grid shape, nprow * npcol = size of comm */
    int myrow, mycol; /* this rank's coordinates */
} ot_grid;

/* Creates a row-major BLACS grid over comm of shape nprow x npcol with nprow the largest
 * divisor of the size <= sqrt(size). Collective on comm. Free with ot_grid_free. */
tf_status ot_grid_create(MPI_Comm comm, ot_grid **grid);
/* Releases the BLACS context; accepts NULL and sets *grid to NULL. Collective. */
void ot_grid_free(ot_grid **grid);

/* Fills desc for an (n, m) matrix on grid with square blocks of size block, source
 * process (0, 0), and writes this rank's local row and column counts. Not collective. */
tf_status ot_dist_desc(const ot_grid *grid, int n, int m, int block, int desc[9], int *local_rows,
                       int *local_cols);

/* Copies this rank's entries of full (n, m) row-major, present on every rank, into
 * local (column-major, leading dimension desc[8]). desc must come from the same grid.
 * Not collective. */
void ot_dist_scatter(const ot_grid *grid, const int desc[9], const double *full, double *local);

/* Gathers a distributed (n, m) matrix into full (n, m) row-major on every rank of
 * grid->comm. Collective. Returns TF_ERR_ARG if n * m does not fit in int (MPI counts). */
tf_status ot_dist_gather(const ot_grid *grid, const int desc[9], const double *local, double *full);

/* Solves entropic OT as ot_sinkhorn_solve does, with the cost distributed over grid as
 * described by desc (global size n x m in desc[2], desc[3]), and writes the plan into
 * plan_local with the same layout. Collective on grid->comm; every rank returns the
 * same status, message and info. Per iteration the row and column sums of the plan
 * are reduced over the grid's row and column communicators. The iteration updates
 * the column potentials first, so the stopping rule checks the L1 row error. At
 * convergence the plan equals ot_sinkhorn_solve's up to the tolerance. */
tf_status ot_sinkhorn_solve_dist(const ot_grid *grid, const int desc[9], const double *cost_local,
                                 const double *mu, const double *nu, const ot_sinkhorn_options *opt,
                                 double *plan_local, ot_info *info);

/* Solves entropic OT with the full cost (n, m) present on every rank of comm and
 * writes the full plan on every rank. Problems with n * m < threshold, or comm of size
 * 1, run ot_sinkhorn_solve on each rank (same input, same result, no messages); larger
 * ones are scattered over a grid of all ranks, solved by ot_sinkhorn_solve_dist and
 * gathered. Collective on comm. */
tf_status ot_sinkhorn_solve_auto(MPI_Comm comm, int64_t threshold, int n, int m, const double *cost,
                                 const double *mu, const double *nu, const ot_sinkhorn_options *opt,
                                 double *plan, ot_info *info);

#endif
