/* Helpers shared by the OT solvers in src/ot_emd.c, src/ot_sinkhorn.c and mpi/ot_dist.c.
 * Private to libtfuse. */
#ifndef TFUSE_OT_INTERNAL_H
#define TFUSE_OT_INTERNAL_H

#include <stdint.h>
#include "tfuse/common.h"
#include "tfuse/ot.h"

/* Validates the marginals of an OT problem: n, m >= 1, entries finite and >= 0, equal
 * sums (relative tolerance 1e-9). Writes sum(mu) into *mass when mass is non-NULL. */
tf_status ot_check_marginals(const char *caller, int n, int m, const double *mu, const double *nu,
                             double *mass);

/* Validates an OT problem for the public solvers: n, m >= 1, cost non-NULL and finite,
 * marginals finite and >= 0 with equal sums (relative tolerance 1e-9). On failure sets
 * a message that starts with caller and names the offending value and index. Writes
 * sum(mu) into *mass when mass is non-NULL. */
tf_status ot_check_problem(const char *caller, int n, int m, const double *cost, const double *mu,
                           const double *nu, double *mass);

/* Returns mu[i], or 1/n when mu is NULL (uniform marginal). */
static inline double ot_marginal_at(const double *mu, int64_t i, int64_t n)
{
    return mu ? mu[i] : 1.0 / (double)n;
}

/* Computes out[j] = exp(x[j]) for j < len, to about 2 ulp for arguments in [-708, 709].
 * Below -708 the result may be 0 instead of a subnormal number, above 709 it may be +inf,
 * and NaN is not supported. Vectorized with AVX2 or AVX-512 when the compiler targets
 * them. */
void ot_exp_array(int64_t len, const double *x, double *out);

/* Shapes: row (m), g (m), out (m). Writes out_j = exp((shift + g_j - row_j) * inv_eps)
 * and returns the sum of out. */
double ot_exp_row_sum(int64_t m, const double *row, const double *g, double shift, double inv_eps,
                      double *out);

/* Shapes: x (m), y (m). Computes y += alpha x. */
void ot_add_scaled(int64_t m, double alpha, const double *x, double *y);

/* One fused Sinkhorn row sweep over a block of rows of the cost.
 * Shapes: cost (rows, m) row-major with leading dimension ld, f (rows) and g (m) dual
 * potentials in cost units, la (rows) the log of the row marginal (-inf for a row of
 * zero mass), colsum (m) accumulated and not cleared, work (m) scratch.
 * For each row i it computes r_i = sum_j exp((f_i + g_j - C_ij) / eps), replaces f_i by
 * the value that makes the row sum of the plan equal exp(la_i), and adds the updated
 * plan row to colsum. Returns sum_i |r_i - exp(la_i)|, the L1 row-marginal error of the
 * potentials before the update. */
double ot_sinkhorn_rows(int64_t rows, int64_t m, const double *cost, int64_t ld, double eps,
                        const double *la, const double *g, double *f, double *colsum, double *work);

/* Validates Sinkhorn options; the message starts with caller and names the field. */
tf_status ot_sinkhorn_check_options(const char *caller, const ot_sinkhorn_options *opt);

/* Writes the epsilon stages, from large to small, into eps (room for 64 values) and
 * returns their count; the last stage is always opt->epsilon. cost_absmax is max |C|,
 * the first stage when opt->eps_start is 0. */
int ot_sinkhorn_schedule(const ot_sinkhorn_options *opt, double cost_absmax, double *eps);

#endif
