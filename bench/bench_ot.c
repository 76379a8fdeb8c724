/* Times tfuse's OT solvers on a cost matrix written by bench/bench_ot.py.
 *
 * Usage: bench_ot FILE emd
 *        bench_ot FILE sinkhorn EPSILON TOLERANCE
 *        mpirun -n P bench_ot FILE dist EPSILON TOLERANCE
 * FILE contains int32 n, int32 m, then the (n, m) cost as row-major float64; marginals are
 * uniform. Prints one JSON object on rank 0: seconds (solver only, without reading or
 * scattering the cost), objective, iterations, marginal error and a checksum of the plan
 * (sum of P_ij * (i + 1)) for comparison with POT's. */
#include "tfuse/ot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double *read_cost(const char *path, int *n, int *m)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) TF_DIE("cannot open %s", path);
    int dims[2];
    if (fread(dims, sizeof(int), 2, fp) != 2) TF_DIE("%s: missing header", path);
    size_t count = (size_t)dims[0] * dims[1];
    double *cost = malloc(count * sizeof(double));
    if (!cost) TF_DIE("out of memory for a %d x %d cost", dims[0], dims[1]);
    if (fread(cost, sizeof(double), count, fp) != count) TF_DIE("%s: truncated", path);
    fclose(fp);
    *n = dims[0];
    *m = dims[1];
    return cost;
}

/* Sum of P_ij * (i + 1) over a row-major (n, m) plan; rank-independent checksum. */
static double plan_checksum(int n, int m, const double *plan)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) sum += plan[(int64_t)i * m + j] * (i + 1);
    return sum;
}

static void print_result(const char *solver, double seconds, const ot_info *info, double checksum,
                         int ranks)
{
    printf("{\"solver\": \"%s\", \"ranks\": %d, \"seconds\": %.6f, \"objective\": %.17g, "
           "\"iterations\": %lld, \"marginal_error\": %.3g, \"checksum\": %.17g}\n",
           solver, ranks, seconds, info->objective, (long long)info->iterations,
           info->marginal_error, checksum);
}

/* Scatters the cost over a grid of all ranks, times ot_sinkhorn_solve_dist and gathers
 * the plan for the checksum. */
static void run_dist(int n, int m, const double *cost, const ot_sinkhorn_options *opt)
{
    int size = 1, rank = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    ot_grid *grid = NULL;
    int desc[9], rows, cols;
    if (ot_grid_create(MPI_COMM_WORLD, &grid) != TF_OK ||
        ot_dist_desc(grid, n, m, 64, desc, &rows, &cols) != TF_OK)
        TF_DIE("grid setup failed: %s", tf_error_get());
    size_t bytes = (size_t)desc[8] * (cols > 0 ? cols : 1) * sizeof(double);
    double *cost_local = malloc(bytes), *plan_local = malloc(bytes);
    double *plan = malloc((size_t)n * m * sizeof(double));
    if (!cost_local || !plan_local || !plan) TF_DIE("out of memory");
    ot_dist_scatter(grid, desc, cost, cost_local);

    ot_info info;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = tf_seconds();
    tf_status st =
        ot_sinkhorn_solve_dist(grid, desc, cost_local, NULL, NULL, opt, plan_local, &info);
    double seconds = tf_seconds() - t0;
    if (st != TF_OK) TF_DIE("ot_sinkhorn_solve_dist: %s", tf_error_get());
    if (ot_dist_gather(grid, desc, plan_local, plan) != TF_OK) TF_DIE("gather: %s", tf_error_get());
    if (rank == 0) print_result("dist", seconds, &info, plan_checksum(n, m, plan), size);
    free(cost_local);
    free(plan_local);
    free(plan);
    ot_grid_free(&grid);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc < 3) TF_DIE("usage: bench_ot FILE emd | sinkhorn EPS TOL | dist EPS TOL");
    int n, m;
    double *cost = read_cost(argv[1], &n, &m);
    const char *mode = argv[2];
    ot_sinkhorn_options opt = ot_sinkhorn_defaults(argc > 3 ? atof(argv[3]) : 0.05);
    if (argc > 4) opt.tolerance = atof(argv[4]);

    if (strcmp(mode, "dist") == 0) {
        run_dist(n, m, cost, &opt);
    } else {
        double *plan = malloc((size_t)n * m * sizeof(double));
        ot_info info;
        double t0 = tf_seconds();
        tf_status st;
        if (strcmp(mode, "emd") == 0)
            st = ot_emd_solve(n, m, cost, NULL, NULL, plan, &info);
        else if (strcmp(mode, "sinkhorn") == 0)
            st = ot_sinkhorn_solve(n, m, cost, NULL, NULL, &opt, plan, &info);
        else
            TF_DIE("unknown mode %s; expected emd, sinkhorn or dist", mode);
        double seconds = tf_seconds() - t0;
        if (st != TF_OK) TF_DIE("%s: %s", mode, tf_error_get());
        print_result(mode, seconds, &info, plan_checksum(n, m, plan), 1);
        free(plan);
    }
    free(cost);
    MPI_Finalize();
    return 0;
}
