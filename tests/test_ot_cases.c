/* OT solver checks that need no oracle file: malformed input and options, a permuted
 * dominant-diagonal cost (the optimal plan is the known permutation), Sinkhorn at
 * epsilon = 1e-4 against the exact objective, and the not-converged status. */
#include "tfuse/ot.h"
#include "ot_internal.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Euclidean distances between two clouds of random points in R^dim, divided by the max.
 * cost (n, m). */
static void euclidean_cost(tf_rng *rng, int n, int m, int dim, double *cost)
{
    double *x = malloc((size_t)(n + m) * dim * sizeof(double));
    for (int k = 0; k < (n + m) * dim; k++) x[k] = tf_rng_normal(rng);
    double mx = 0.0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            double d2 = 0.0;
            for (int k = 0; k < dim; k++) {
                double d = x[i * dim + k] - x[(n + j) * dim + k];
                d2 += d * d;
            }
            cost[(int64_t)i * m + j] = sqrt(d2);
            mx = fmax(mx, sqrt(d2));
        }
    for (int64_t k = 0; k < (int64_t)n * m; k++) cost[k] /= mx;
    free(x);
}

/* Checks that st is TF_ERR_ARG and that the error message contains needle. */
static void expect_arg_error(const char *label, tf_status st, const char *needle)
{
    TU_CHECK(st == TF_ERR_ARG, "%s: status %s, expected invalid argument", label,
             tf_status_str(st));
    TU_CHECK(strstr(tf_error_get(), needle) != NULL, "%s: message \"%s\" does not name \"%s\"",
             label, tf_error_get(), needle);
}

static void test_bad_input(void)
{
    enum { N = 4, M = 5 };
    double cost[N * M], mu[N], nu[M], plan[N * M];
    for (int k = 0; k < N * M; k++) cost[k] = 0.1 * k;
    for (int i = 0; i < N; i++) mu[i] = 1.0 / N;
    for (int j = 0; j < M; j++) nu[j] = 1.0 / M;
    ot_sinkhorn_options opt = ot_sinkhorn_defaults(0.1);
    ot_info info;

    mu[3] = -0.25;
    expect_arg_error("emd negative mu", ot_emd_solve(N, M, cost, mu, nu, plan, &info), "mu[3]");
    expect_arg_error("sinkhorn negative mu",
                     ot_sinkhorn_solve(N, M, cost, mu, nu, &opt, plan, &info), "mu[3]");
    mu[3] = INFINITY;
    expect_arg_error("emd infinite mu", ot_emd_solve(N, M, cost, mu, nu, plan, &info), "mu[3]");
    mu[3] = 1.0 / N;
    nu[2] = NAN;
    expect_arg_error("emd NaN nu", ot_emd_solve(N, M, cost, mu, nu, plan, &info), "nu[2]");
    expect_arg_error("sinkhorn NaN nu", ot_sinkhorn_solve(N, M, cost, mu, nu, &opt, plan, &info),
                     "nu[2]");
    nu[2] = 1.0 / M;
    cost[1 * M + 2] = NAN;
    expect_arg_error("emd NaN cost", ot_emd_solve(N, M, cost, mu, nu, plan, &info), "cost[1, 2]");
    cost[1 * M + 2] = -INFINITY;
    expect_arg_error("sinkhorn infinite cost",
                     ot_sinkhorn_solve(N, M, cost, mu, nu, &opt, plan, &info), "cost[1, 2]");
    cost[1 * M + 2] = 0.7;
    nu[0] += 0.1;
    expect_arg_error("emd unequal mass", ot_emd_solve(N, M, cost, mu, nu, plan, &info), "sum(mu)");
    expect_arg_error("sinkhorn unequal mass",
                     ot_sinkhorn_solve(N, M, cost, mu, nu, &opt, plan, &info), "sum(mu)");
    nu[0] -= 0.1;
    expect_arg_error("emd zero rows", ot_emd_solve(0, M, cost, NULL, NULL, plan, &info), "n = 0");
    expect_arg_error("emd NULL plan", ot_emd_solve(N, M, cost, mu, nu, NULL, &info), "plan");
    expect_arg_error("emd NULL cost", ot_emd_solve(N, M, NULL, mu, nu, plan, &info), "cost");

    /* Sinkhorn options. */
    const struct {
        const char *field;
        ot_sinkhorn_options opt;
    } bad[] = {
        {"epsilon", {.epsilon = 0.0, .tolerance = 1e-9, .max_iter = 10}},
        {"epsilon", {.epsilon = NAN, .tolerance = 1e-9, .max_iter = 10}},
        {"tolerance", {.epsilon = 0.1, .tolerance = -1.0, .max_iter = 10}},
        {"max_iter", {.epsilon = 0.1, .tolerance = 1e-9, .max_iter = 0}},
        {"eps_factor",
         {.epsilon = 0.1, .tolerance = 1e-9, .max_iter = 10, .eps_scaling = 1, .eps_factor = 1.5}},
        {"eps_start",
         {.epsilon = 0.1,
          .tolerance = 1e-9,
          .max_iter = 10,
          .eps_scaling = 1,
          .eps_factor = 0.5,
          .eps_start = -2.0}},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        expect_arg_error(bad[k].field,
                         ot_sinkhorn_solve(N, M, cost, mu, nu, &bad[k].opt, plan, &info),
                         bad[k].field);
    /* info is optional for both solvers. */
    TU_CHECK(ot_emd_solve(N, M, cost, mu, nu, plan, NULL) == TF_OK, "emd with info NULL: %s",
             tf_error_get());
    TU_CHECK(ot_sinkhorn_solve(N, M, cost, mu, nu, &opt, plan, NULL) == TF_OK,
             "sinkhorn with info NULL: %s", tf_error_get());

    expect_arg_error("sinkhorn NULL options",
                     ot_sinkhorn_solve(N, M, cost, mu, nu, NULL, plan, &info), "options");
}

/* Cost C_ij = A_{i, sigma(j)} where A has diagonal entries in [0, 0.5) and off-diagonal
 * entries in [1, 2), so the unique optimal plan puts mu_i on (i, sigma^-1(i)). With
 * weighted, mu is random and nu_j = mu_{sigma(j)}, which takes the network simplex path. */
static void test_permutation(int n, int weighted, uint64_t seed)
{
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    int64_t *sigma = malloc((size_t)n * sizeof(int64_t));
    int *inverse = malloc((size_t)n * sizeof(int));
    double *cost = malloc((size_t)n * n * sizeof(double));
    double *plan = malloc((size_t)n * n * sizeof(double));
    double *want = calloc((size_t)n * n, sizeof(double));
    double *mu = malloc((size_t)n * sizeof(double)), *nu = malloc((size_t)n * sizeof(double));
    for (int64_t k = 0; k < n; k++) sigma[k] = k;
    tf_rng_shuffle(&rng, sigma, n);
    for (int j = 0; j < n; j++) inverse[sigma[j]] = j;
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        mu[i] = weighted ? 0.2 + tf_rng_uniform(&rng) : 1.0 / n;
        total += mu[i];
    }
    for (int i = 0; i < n; i++) mu[i] /= weighted ? total : 1.0;
    for (int j = 0; j < n; j++) nu[j] = mu[sigma[j]];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double u = tf_rng_uniform(&rng);
            cost[(int64_t)i * n + j] = sigma[j] == i ? 0.5 * u : 1.0 + u;
        }
    for (int i = 0; i < n; i++) want[(int64_t)i * n + inverse[i]] = mu[i];

    ot_info info;
    tf_status st = ot_emd_solve(n, n, cost, mu, nu, plan, &info);
    TU_CHECK(st == TF_OK, "permutation n = %d: status %s (%s)", n, tf_status_str(st),
             tf_error_get());
    char label[128];
    snprintf(label, sizeof label, "permutation plan n = %d weighted = %d", n, weighted);
    tu_close_f64(label, plan, want, (int64_t)n * n, 0.0, 1e-15);
    free(sigma);
    free(inverse);
    free(cost);
    free(plan);
    free(want);
    free(mu);
    free(nu);
}

/* Sinkhorn at epsilon = 1e-4 on max-normalized Euclidean costs: the plan must be finite
 * and meet the tolerance, and its cost must lie in [OT, OT + eps log(n m)], the entropic
 * gap bound for mass 1, widened by the marginal error times max C = 1. OT comes from
 * ot_emd_solve. Sinkhorn converges slowly at this epsilon (the L1 error falls from 2e-4
 * to 5e-6 between 500 and 16000 iterations at n = 512), hence the loose tolerance. */
static void test_small_epsilon(int n, int scaling, double tolerance)
{
    tf_rng rng;
    tf_rng_seed(&rng, 7 + n);
    double *cost = malloc((size_t)n * n * sizeof(double));
    double *plan = malloc((size_t)n * n * sizeof(double));
    euclidean_cost(&rng, n, n, 8, cost);
    ot_info exact, info;
    TU_CHECK(ot_emd_solve(n, n, cost, NULL, NULL, plan, &exact) == TF_OK, "emd n = %d", n);

    ot_sinkhorn_options opt = ot_sinkhorn_defaults(1e-4);
    opt.tolerance = tolerance;
    opt.max_iter = 20000;
    opt.eps_scaling = scaling;
    tf_status st = ot_sinkhorn_solve(n, n, cost, NULL, NULL, &opt, plan, &info);
    TU_CHECK(st == TF_OK && info.converged, "sinkhorn eps 1e-4 n = %d scaling = %d: status %s (%s)",
             n, scaling, tf_status_str(st), tf_error_get());
    int64_t bad = 0;
    for (int64_t k = 0; k < (int64_t)n * n; k++) bad += !isfinite(plan[k]) || plan[k] < 0.0;
    TU_CHECK(bad == 0, "sinkhorn eps 1e-4 n = %d: %lld non-finite or negative entries", n,
             (long long)bad);
    TU_CHECK(info.marginal_error < 1.01 * tolerance, "sinkhorn eps 1e-4 n = %d: marginal error %g",
             n, info.marginal_error);
    double gap = info.objective - exact.objective, bound = 1e-4 * log((double)n * n);
    TU_CHECK(gap > -info.marginal_error && gap <= bound + info.marginal_error,
             "sinkhorn eps 1e-4 n = %d: cost %.12g minus OT %.12g = %g outside [0, %g]", n,
             info.objective, exact.objective, gap, bound);
    free(cost);
    free(plan);
}

/* A cap of 3 iterations cannot reach 1e-12, so the status must report it and the plan
 * must stay finite. */
static void test_not_converged(void)
{
    enum { N = 40 };
    tf_rng rng;
    tf_rng_seed(&rng, 3);
    double cost[N * N], plan[N * N];
    euclidean_cost(&rng, N, N, 4, cost);
    ot_sinkhorn_options opt = ot_sinkhorn_defaults(0.01);
    opt.tolerance = 1e-12;
    opt.max_iter = 3;
    opt.eps_scaling = 0;
    ot_info info;
    tf_status st = ot_sinkhorn_solve(N, N, cost, NULL, NULL, &opt, plan, &info);
    TU_CHECK(st == TF_ERR_NOT_CONVERGED && !info.converged, "not converged: status %s",
             tf_status_str(st));
    TU_CHECK(strstr(tf_error_get(), "max_iter") != NULL, "not converged: message \"%s\"",
             tf_error_get());
    int finite = 1;
    for (int k = 0; k < N * N; k++) finite &= isfinite(plan[k]);
    TU_CHECK(finite && info.iterations == 3, "not converged: finite %d, iterations %lld", finite,
             (long long)info.iterations);
}

/* The vectorized exp against libm's on [-708, 709] (relative), and its ends: 0 or a
 * value below 1e-307 under -708, 0 at -750 and -inf, +inf at 710 and +inf. */
static void test_exp(void)
{
    enum { LEN = 20001 };
    static double x[LEN], got[LEN], want[LEN];
    for (int k = 0; k < LEN; k++) {
        x[k] = -708.0 + 1417.0 * k / (LEN - 1) - 1e-3 * (k % 7);
        want[k] = exp(x[k]);
    }
    x[0] = -708.0;
    want[0] = exp(x[0]);
    ot_exp_array(LEN, x, got);
    tu_close_f64("exp vs libm", got, want, LEN, 4e-16, 0.0);

    double ends[12] = {-720.0, -740.0,   -745.5, -750.0, -INFINITY, 710.0,
                       800.0,  INFINITY, -720.0, -750.0, 710.0,     -INFINITY};
    double out[12];
    ot_exp_array(12, ends, out);
    for (int k = 0; k < 12; k++) {
        if (ends[k] > 0)
            TU_CHECK(isinf(out[k]) && out[k] > 0, "exp(%g) = %g, expected +inf", ends[k], out[k]);
        else if (ends[k] < -745.2)
            TU_CHECK(out[k] == 0.0, "exp(%g) = %g, expected 0", ends[k], out[k]);
        else
            TU_CHECK(out[k] >= 0.0 && out[k] < 1e-307, "exp(%g) = %g, expected below 1e-307",
                     ends[k], out[k]);
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    test_exp();
    test_bad_input();
    const int sizes[] = {1, 2, 7, 100, 300};
    for (int k = 0; k < 5; k++) {
        test_permutation(sizes[k], 0, 100 + k);
        test_permutation(sizes[k], 1, 200 + k);
    }
    test_small_epsilon(512, 1, 1e-4);
    test_small_epsilon(64, 0, 1e-4);
    test_not_converged();
    int rc = tu_finish("test_ot_cases");
    MPI_Finalize();
    return rc;
}
