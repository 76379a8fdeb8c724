/* Distributed Sinkhorn against the single-rank solver, run at 1, 2 and 4 ranks: the
 * plans must agree at every rank count. Also checks the scatter/gather round trip, the
 * size switch of ot_sinkhorn_solve_auto and that a bad cost entry on one rank gives
 * every rank the same status and message. */
#include "tfuse/ot.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Both solvers run to an L1 marginal error of 1e-13, so their plans agree to about
 * that much in absolute terms (the iteration orders differ). */
#define PLAN_RTOL 1e-8
#define PLAN_ATOL 1e-12

static int world_rank;

/* Euclidean distances between random point clouds divided by the max; the same on all
 * ranks because the generator is seeded identically. cost (n, m). */
static void euclidean_cost(uint64_t seed, int n, int m, double *cost)
{
    enum { DIM = 5 };
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    double *x = malloc((size_t)(n + m) * DIM * sizeof(double)), mx = 0.0;
    for (int k = 0; k < (n + m) * DIM; k++) x[k] = tf_rng_normal(&rng);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            double d2 = 0.0;
            for (int k = 0; k < DIM; k++) {
                double d = x[i * DIM + k] - x[(n + j) * DIM + k];
                d2 += d * d;
            }
            cost[(int64_t)i * m + j] = sqrt(d2);
            mx = fmax(mx, sqrt(d2));
        }
    for (int64_t k = 0; k < (int64_t)n * m; k++) cost[k] /= mx;
    free(x);
}

/* Random positive marginal of mass 1 with `zeros` entries set to 0. */
static void random_marginal(uint64_t seed, int n, int zeros, double *w)
{
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    double total = 0.0;
    for (int i = 0; i < n; i++) w[i] = i < zeros ? 0.0 : 0.1 + tf_rng_uniform(&rng);
    for (int i = 0; i < n; i++) total += w[i];
    for (int i = 0; i < n; i++) w[i] /= total;
}

/* Solves one problem with both solvers on a grid with the given block size and compares
 * the gathered plan, objective and status. */
static void compare_case(const char *name, const ot_grid *grid, int n, int m, int block,
                         const double *mu, const double *nu, double eps, int scaling, double offset,
                         double outlier)
{
    double *cost = malloc((size_t)n * m * sizeof(double));
    double *want = malloc((size_t)n * m * sizeof(double));
    double *got = malloc((size_t)n * m * sizeof(double));
    euclidean_cost(n * 1000 + m, n, m, cost);
    for (int64_t k = 0; k < (int64_t)n * m; k++) cost[k] += offset;
    for (int j = 0; j < m; j++) cost[j] += outlier;
    ot_sinkhorn_options opt = ot_sinkhorn_defaults(eps);
    opt.tolerance = 1e-13;
    opt.eps_scaling = scaling;
    ot_info ref, info;
    tf_status st_ref = ot_sinkhorn_solve(n, m, cost, mu, nu, &opt, want, &ref);
    TU_CHECK(st_ref == TF_OK, "%s: single-rank status %s (%s)", name, tf_status_str(st_ref),
             tf_error_get());

    int desc[9], rows, cols;
    TU_CHECK(ot_dist_desc(grid, n, m, block, desc, &rows, &cols) == TF_OK, "%s: desc", name);
    size_t local_bytes = (size_t)desc[8] * (cols > 0 ? cols : 1) * sizeof(double);
    double *cost_local = malloc(local_bytes), *plan_local = malloc(local_bytes);
    ot_dist_scatter(grid, desc, cost, cost_local);
    tf_status st = ot_sinkhorn_solve_dist(grid, desc, cost_local, mu, nu, &opt, plan_local, &info);
    TU_CHECK(st == TF_OK && info.converged, "%s: distributed status %s (%s)", name,
             tf_status_str(st), tf_error_get());
    TU_CHECK(ot_dist_gather(grid, desc, plan_local, got) == TF_OK, "%s: gather", name);

    char label[256];
    snprintf(label, sizeof label, "%s plan (grid %d x %d, block %d)", name, grid->nprow,
             grid->npcol, block);
    tu_close_f64(label, got, want, (int64_t)n * m, PLAN_RTOL, PLAN_ATOL);
    TU_CHECK(fabs(info.objective - ref.objective) <= 1e-10 * fabs(ref.objective),
             "%s: objective %.15g vs single-rank %.15g", name, info.objective, ref.objective);
    TU_CHECK(info.marginal_error < 1e-12, "%s: marginal error %g", name, info.marginal_error);
    free(cost);
    free(want);
    free(got);
    free(cost_local);
    free(plan_local);
}

/* Scatter then gather must give back the matrix bit for bit. */
static void test_round_trip(const ot_grid *grid)
{
    enum { N = 29, M = 41 };
    double full[N * M], back[N * M];
    for (int k = 0; k < N * M; k++) full[k] = k + 0.25;
    int desc[9], rows, cols;
    ot_dist_desc(grid, N, M, 3, desc, &rows, &cols);
    double *local = malloc((size_t)desc[8] * (cols > 0 ? cols : 1) * sizeof(double));
    ot_dist_scatter(grid, desc, full, local);
    memset(back, 0, sizeof back);
    TU_CHECK(ot_dist_gather(grid, desc, local, back) == TF_OK, "round trip gather");
    tu_close_f64("scatter/gather round trip", back, full, N * M, 0.0, 0.0);
    free(local);
}

/* A NaN at global (5, 7), owned by one rank, must fail on every rank with a message that
 * names the index. */
static void test_bad_cost(const ot_grid *grid)
{
    enum { N = 12, M = 10 };
    double cost[N * M];
    euclidean_cost(5, N, M, cost);
    cost[5 * M + 7] = NAN;
    int desc[9], rows, cols;
    ot_dist_desc(grid, N, M, 2, desc, &rows, &cols);
    double *local = malloc((size_t)desc[8] * (cols > 0 ? cols : 1) * sizeof(double));
    double *plan = malloc((size_t)desc[8] * (cols > 0 ? cols : 1) * sizeof(double));
    ot_dist_scatter(grid, desc, cost, local);
    ot_sinkhorn_options opt = ot_sinkhorn_defaults(0.1);
    tf_status st = ot_sinkhorn_solve_dist(grid, desc, local, NULL, NULL, &opt, plan, NULL);
    TU_CHECK(st == TF_ERR_ARG, "bad cost: status %s on rank %d", tf_status_str(st), world_rank);
    TU_CHECK(strstr(tf_error_get(), "cost[5, 7]") != NULL, "bad cost: message \"%s\" on rank %d",
             tf_error_get(), world_rank);
    free(local);
    free(plan);
}

/* Below the threshold and above it, the auto solver returns the single-rank plan. */
static void test_auto(void)
{
    enum { N = 40, M = 24 };
    double cost[N * M], want[N * M], got[N * M];
    euclidean_cost(11, N, M, cost);
    ot_sinkhorn_options opt = ot_sinkhorn_defaults(0.05);
    opt.tolerance = 1e-13;
    ot_info info;
    TU_CHECK(ot_sinkhorn_solve(N, M, cost, NULL, NULL, &opt, want, &info) == TF_OK, "auto ref");
    const int64_t thresholds[2] = {0, (int64_t)N * M + 1};
    for (int k = 0; k < 2; k++) {
        memset(got, 0, sizeof got);
        tf_status st = ot_sinkhorn_solve_auto(MPI_COMM_WORLD, thresholds[k], N, M, cost, NULL, NULL,
                                              &opt, got, &info);
        TU_CHECK(st == TF_OK, "auto threshold %lld: status %s (%s)", (long long)thresholds[k],
                 tf_status_str(st), tf_error_get());
        char label[64];
        snprintf(label, sizeof label, "auto plan threshold %lld", (long long)thresholds[k]);
        tu_close_f64(label, got, want, N * M, PLAN_RTOL, PLAN_ATOL);
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    ot_grid *grid = NULL;
    if (ot_grid_create(MPI_COMM_WORLD, &grid) != TF_OK) TF_DIE("grid: %s", tf_error_get());

    test_round_trip(grid);
    double mu[70], nu[50];
    random_marginal(1, 70, 0, mu);
    random_marginal(2, 50, 0, nu);
    compare_case("nonuniform 70x50", grid, 70, 50, 8, mu, nu, 0.05, 1, 0.0, 0.0);
    compare_case("uniform 33x47 block 4", grid, 33, 47, 4, NULL, NULL, 0.02, 1, 0.0, 0.0);
    compare_case("uniform 64x64 block 64", grid, 64, 64, 64, NULL, NULL, 0.1, 1, 0.0, 0.0);
    random_marginal(3, 30, 4, mu);
    random_marginal(4, 25, 3, nu);
    compare_case("zero-mass entries 30x25", grid, 30, 25, 5, mu, nu, 0.05, 1, 0.0, 0.0);
    /* Without annealing, costs offset by 3 at epsilon 0.005 make exp(-C / eps) underflow
     * in the first sweeps, and row 0 offset by 3 more underflows after each column
     * update. Both exercise the exact-maximum paths. */
    compare_case("no annealing offset 3", grid, 24, 20, 3, NULL, NULL, 0.005, 0, 3.0, 3.0);
    test_bad_cost(grid);
    test_auto();

    ot_grid_free(&grid);
    TU_CHECK(grid == NULL, "ot_grid_free sets the pointer to NULL");
    int rc = tu_finish("test_ot_dist");
    MPI_Finalize();
    return rc;
}
