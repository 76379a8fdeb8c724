/* Distributed log-domain Sinkhorn on a BLACS process grid.
 *
 * The cost C (n, m) is distributed block-cyclically as in ScaLAPACK, so each rank stores
 * a column-major local block of R rows and K columns. Each rank keeps the dual
 * potentials f (rows) and g (columns) of its local rows and columns only. One iteration:
 *   1. column update of g from the column sums of the plan, which need a sum over the
 *      process rows (the grid's column communicator);
 *   2. row sums of the updated plan, summed over the process columns (the grid's row
 *      communicator); their L1 error against mu is the stopping criterion;
 *   3. row update of f from those row sums.
 * On a grid with one process row every rank stores whole columns, and steps 1 and 2 are
 * one pass over the local block with the single-rank kernel (ot_sinkhorn_rows applied
 * to C^T). Otherwise step 1 reduces partial column sums before step 2 recomputes the
 * exponentials with the new g. */
#include "tfuse/ot.h"
#include "ot_internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* BLACS and ScaLAPACK tools from libscalapack-openmpi, which ships no C header. */
extern int Csys2blacs_handle(MPI_Comm comm);
extern void Cfree_blacs_system_handle(int handle);
extern void Cblacs_gridinit(int *context, char *order, int nprow, int npcol);
extern void Cblacs_gridinfo(int context, int *nprow, int *npcol, int *myrow, int *mycol);
extern void Cblacs_gridexit(int context);
extern int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc,
                   const int *nprocs);
extern void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb,
                      const int *irsrc, const int *icsrc, const int *ictxt, const int *lld,
                      int *info);

/* Range of sums accepted without recomputing with the exact maximum (as single-rank). */
#define OT_SUM_MIN 1e-200
#define OT_SUM_MAX 1e200

/* Private part of a grid: the BLACS system handle and the row and column communicators
 * (ranks in the same process row, and in the same process column). */
typedef struct {
    ot_grid pub;
    int handle;
    MPI_Comm row_comm, col_comm;
} grid_impl;

tf_status ot_grid_create(MPI_Comm comm, ot_grid **grid)
{
    int size = 0, rank = 0;
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    grid_impl *g = tf_calloc(1, sizeof(grid_impl));
    if (!g) return TF_ERR_NOMEM;

    int nprow = (int)sqrt((double)size);
    while (size % nprow != 0) nprow--;
    g->pub.comm = comm;
    g->handle = Csys2blacs_handle(comm);
    g->pub.context = g->handle;
    Cblacs_gridinit(&g->pub.context, "Row", nprow, size / nprow);
    Cblacs_gridinfo(g->pub.context, &g->pub.nprow, &g->pub.npcol, &g->pub.myrow, &g->pub.mycol);
    TF_MPI_CHECK(MPI_Comm_split(comm, g->pub.myrow, g->pub.mycol, &g->row_comm));
    TF_MPI_CHECK(MPI_Comm_split(comm, g->pub.mycol, g->pub.myrow, &g->col_comm));
    *grid = &g->pub;
    return TF_OK;
}

void ot_grid_free(ot_grid **grid)
{
    if (!grid || !*grid) return;
    grid_impl *g = (grid_impl *)*grid;
    MPI_Comm_free(&g->row_comm);
    MPI_Comm_free(&g->col_comm);
    Cblacs_gridexit(g->pub.context);
    Cfree_blacs_system_handle(g->handle);
    free(g);
    *grid = NULL;
}

tf_status ot_dist_desc(const ot_grid *grid, int n, int m, int block, int desc[9], int *local_rows,
                       int *local_cols)
{
    if (n < 1 || m < 1 || block < 1)
        return tf_error_set(TF_ERR_ARG,
                            "ot_dist_desc: invalid n = %d, m = %d or block = %d; "
                            "all must be >= 1",
                            n, m, block);
    int zero = 0, info = 0;
    int rows = numroc_(&n, &block, &grid->myrow, &zero, &grid->nprow);
    int cols = numroc_(&m, &block, &grid->mycol, &zero, &grid->npcol);
    int lld = rows > 1 ? rows : 1;
    descinit_(desc, &n, &m, &block, &block, &zero, &zero, &grid->context, &lld, &info);
    if (info != 0)
        return tf_error_set(TF_ERR_ARG, "ot_dist_desc: descinit rejected argument %d", -info);
    *local_rows = rows;
    *local_cols = cols;
    return TF_OK;
}

/* Global index of local index l in a block-cyclic dimension. */
static int64_t global_index(int l, int block, int coord, int source, int nprocs)
{
    int shifted = (coord - source + nprocs) % nprocs;
    return ((int64_t)(l / block) * nprocs + shifted) * block + l % block;
}

/* Local counts of desc on this rank. */
static void local_shape(const ot_grid *grid, const int desc[9], int *rows, int *cols)
{
    *rows = numroc_(&desc[2], &desc[4], &grid->myrow, &desc[6], &grid->nprow);
    *cols = numroc_(&desc[3], &desc[5], &grid->mycol, &desc[7], &grid->npcol);
}

void ot_dist_scatter(const ot_grid *grid, const int desc[9], const double *full, double *local)
{
    int rows, cols, m = desc[3], lld = desc[8];
    local_shape(grid, desc, &rows, &cols);
    for (int jl = 0; jl < cols; jl++) {
        int64_t j = global_index(jl, desc[5], grid->mycol, desc[7], grid->npcol);
        for (int il = 0; il < rows; il++) {
            int64_t i = global_index(il, desc[4], grid->myrow, desc[6], grid->nprow);
            local[il + (int64_t)jl * lld] = full[i * m + j];
        }
    }
}

tf_status ot_dist_gather(const ot_grid *grid, const int desc[9], const double *local, double *full)
{
    int n = desc[2], m = desc[3], size = grid->nprow * grid->npcol;
    if ((int64_t)n * m > INT_MAX)
        return tf_error_set(TF_ERR_ARG,
                            "ot_dist_gather: n * m = %lld exceeds the MPI count limit %d; "
                            "keep the plan distributed",
                            (long long)n * m, INT_MAX);
    int rows, cols;
    local_shape(grid, desc, &rows, &cols);
    int mine[3] = {grid->myrow, grid->mycol, rows * cols};
    int *info = tf_malloc((size_t)3 * size * sizeof(int));
    int *counts = tf_malloc((size_t)2 * size * sizeof(int));
    double *packed = tf_malloc((size_t)rows * cols * sizeof(double));
    double *all = tf_malloc((size_t)n * m * sizeof(double));
    tf_status st = TF_OK;
    if (!info || !counts || !packed || !all) {
        st = TF_ERR_NOMEM;
        goto done;
    }

    /* Pack without the leading-dimension padding, then exchange all blocks. */
    for (int jl = 0; jl < cols; jl++)
        memcpy(packed + (int64_t)jl * rows, local + (int64_t)jl * desc[8],
               (size_t)rows * sizeof(double));
    TF_MPI_CHECK(MPI_Allgather(mine, 3, MPI_INT, info, 3, MPI_INT, grid->comm));
    int *displs = counts + size;
    for (int p = 0, offset = 0; p < size; p++) {
        counts[p] = info[3 * p + 2];
        displs[p] = offset;
        offset += counts[p];
    }
    TF_MPI_CHECK(MPI_Allgatherv(packed, rows * cols, MPI_DOUBLE, all, counts, displs, MPI_DOUBLE,
                                grid->comm));

    /* Unpack each rank's block into its global positions. */
    for (int p = 0; p < size; p++) {
        int prow = info[3 * p], pcol = info[3 * p + 1];
        int prows = numroc_(&desc[2], &desc[4], &prow, &desc[6], &grid->nprow);
        int pcols = numroc_(&desc[3], &desc[5], &pcol, &desc[7], &grid->npcol);
        const double *src = all + displs[p];
        for (int jl = 0; jl < pcols; jl++) {
            int64_t j = global_index(jl, desc[5], pcol, desc[7], grid->npcol);
            for (int il = 0; il < prows; il++) {
                int64_t i = global_index(il, desc[4], prow, desc[6], grid->nprow);
                full[i * m + j] = src[il + (int64_t)jl * prows];
            }
        }
    }

done:
    free(info);
    free(counts);
    free(packed);
    free(all);
    if (st == TF_ERR_NOMEM)
        return tf_error_set(st, "ot_dist_gather: out of memory for n = %d, m = %d", n, m);
    return st;
}

/* Makes all ranks of comm return the same status and message: the lowest failing rank
 * broadcasts its own. Collective. */
static tf_status agree_status(MPI_Comm comm, tf_status st)
{
    int rank, size, first;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    int mine = st != TF_OK ? rank : size;
    TF_MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
    if (first == size) return TF_OK;
    char message[1024] = {0};
    int code = (int)st;
    if (rank == first) snprintf(message, sizeof message, "%s", tf_error_get());
    TF_MPI_CHECK(MPI_Bcast(&code, 1, MPI_INT, first, comm));
    TF_MPI_CHECK(MPI_Bcast(message, (int)sizeof message, MPI_CHAR, first, comm));
    return tf_error_set((tf_status)code, "%s", message);
}

/* In-place MPI_Allreduce that sleeps while it waits. A rank that finishes its sweep
 * first would otherwise spin in MPI and burn the CPU time that the other ranks need on
 * an oversubscribed node. It polls with MPI_Test for 50 microseconds, then sleeps
 * between polls, from 20 microseconds doubling up to 200. Collective on comm. */
static void dist_allreduce(void *buf, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm)
{
    int size = 1, done = 0;
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    if (size == 1) return;
    MPI_Request request;
    TF_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, count, type, op, comm, &request));
    double spin_until = tf_seconds() + 50e-6;
    long pause_ns = 20000;
    for (;;) {
        TF_MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
        if (done) return;
        if (tf_seconds() < spin_until) continue;
        struct timespec pause = {0, pause_ns};
        nanosleep(&pause, NULL);
        if (pause_ns < 200000) pause_ns *= 2;
    }
}

typedef struct {
    const ot_grid *grid;
    MPI_Comm row_comm, col_comm;
    int rows, cols, lld, mb, nb;
    const double *c;         /* (rows, cols) column-major, leading dimension lld */
    double *la, *lb, *a, *b; /* (rows), (cols), (rows), (cols) log marginals and marginals */
    double *f, *g;           /* (rows), (cols) potentials */
    double *rowsum, *rowmax; /* (rows) */
    double *colsum, *colmax; /* (cols) */
    double *work;            /* (max(rows, cols)) */
} dist_state;

/* Steps 1 and 2 on a grid with one process row: the single-rank kernel on C^T updates g
 * and accumulates the local part of the row sums. */
static void dist_columns_fused(dist_state *s, double eps)
{
    memset(s->rowsum, 0, (size_t)s->rows * sizeof(double));
    ot_sinkhorn_rows(s->cols, s->rows, s->c, s->lld, eps, s->lb, s->f, s->g, s->rowsum, s->work);
}

/* Exact column update with the column maximum of f_i - C_ij as shift. Collective on the
 * column communicator. */
static void dist_columns_exact(dist_state *s, double eps)
{
    for (int jl = 0; jl < s->cols; jl++) {
        const double *col = s->c + (int64_t)jl * s->lld;
        double mx = -INFINITY;
        for (int il = 0; il < s->rows; il++) mx = fmax(mx, s->f[il] - col[il]);
        s->colmax[jl] = mx;
    }
    dist_allreduce(s->colmax, s->cols, MPI_DOUBLE, MPI_MAX, s->col_comm);
    for (int jl = 0; jl < s->cols; jl++)
        s->colsum[jl] = ot_exp_row_sum(s->rows, s->c + (int64_t)jl * s->lld, s->f, -s->colmax[jl],
                                       1.0 / eps, s->work);
    dist_allreduce(s->colsum, s->cols, MPI_DOUBLE, MPI_SUM, s->col_comm);
    for (int jl = 0; jl < s->cols; jl++)
        s->g[jl] = s->lb[jl] == -INFINITY
                       ? -INFINITY
                       : eps * s->lb[jl] - s->colmax[jl] - eps * log(s->colsum[jl]);
}

/* Steps 1 and 2 on a general grid: reduce the column sums of the current plan over the
 * process rows, update g, then sum the rows of the updated plan locally. */
static void dist_columns_reduced(dist_state *s, double eps)
{
    double inv_eps = 1.0 / eps;
    for (int jl = 0; jl < s->cols; jl++)
        s->colsum[jl] = s->lb[jl] == -INFINITY
                            ? 0.0
                            : ot_exp_row_sum(s->rows, s->c + (int64_t)jl * s->lld, s->f, s->g[jl],
                                             inv_eps, s->work);
    dist_allreduce(s->colsum, s->cols, MPI_DOUBLE, MPI_SUM, s->col_comm);

    int exact = 0;
    for (int jl = 0; jl < s->cols; jl++) {
        if (s->lb[jl] == -INFINITY)
            s->g[jl] = -INFINITY;
        else if (s->colsum[jl] >= OT_SUM_MIN && s->colsum[jl] <= OT_SUM_MAX)
            s->g[jl] += eps * (s->lb[jl] - log(s->colsum[jl]));
        else
            exact = 1;
    }
    /* Every rank of the column communicator has the same sums, so all agree here. */
    if (exact) dist_columns_exact(s, eps);

    memset(s->rowsum, 0, (size_t)s->rows * sizeof(double));
    for (int jl = 0; jl < s->cols; jl++) {
        if (s->lb[jl] == -INFINITY) continue;
        ot_exp_row_sum(s->rows, s->c + (int64_t)jl * s->lld, s->f, s->g[jl], inv_eps, s->work);
        ot_add_scaled(s->rows, 1.0, s->work, s->rowsum);
    }
}

/* Exact row update with the row maximum of g_j - C_ij as shift. Collective on the row
 * communicator. */
static void dist_rows_exact(dist_state *s, double eps)
{
    for (int il = 0; il < s->rows; il++) {
        s->rowmax[il] = -INFINITY;
        s->rowsum[il] = 0.0;
    }
    for (int jl = 0; jl < s->cols; jl++) {
        const double *col = s->c + (int64_t)jl * s->lld;
        for (int il = 0; il < s->rows; il++)
            s->rowmax[il] = fmax(s->rowmax[il], s->g[jl] - col[il]);
    }
    dist_allreduce(s->rowmax, s->rows, MPI_DOUBLE, MPI_MAX, s->row_comm);
    for (int jl = 0; jl < s->cols; jl++) {
        const double *col = s->c + (int64_t)jl * s->lld;
        for (int il = 0; il < s->rows; il++)
            s->work[il] = (s->g[jl] - col[il] - s->rowmax[il]) / eps;
        ot_exp_array(s->rows, s->work, s->work);
        ot_add_scaled(s->rows, 1.0, s->work, s->rowsum);
    }
    dist_allreduce(s->rowsum, s->rows, MPI_DOUBLE, MPI_SUM, s->row_comm);
    for (int il = 0; il < s->rows; il++)
        s->f[il] = s->la[il] == -INFINITY
                       ? -INFINITY
                       : eps * s->la[il] - s->rowmax[il] - eps * log(s->rowsum[il]);
}

/* Step 3: row update of f from the reduced row sums. */
static void dist_rows_update(dist_state *s, double eps)
{
    int exact = 0;
    for (int il = 0; il < s->rows; il++) {
        if (s->la[il] == -INFINITY)
            s->f[il] = -INFINITY;
        else if (s->rowsum[il] >= OT_SUM_MIN && s->rowsum[il] <= OT_SUM_MAX)
            s->f[il] += eps * (s->la[il] - log(s->rowsum[il]));
        else
            exact = 1;
    }
    if (exact) dist_rows_exact(s, eps);
}

/* Returns the L1 error of the reduced row sums against mu, summed over all rows.
 * Collective on the column communicator, which is a local copy on a grid with one
 * process row. Every process column computes the same value from the same row sums. */
static double dist_row_error(const dist_state *s)
{
    double total = 0.0;
    for (int il = 0; il < s->rows; il++) total += fabs(s->rowsum[il] - s->a[il]);
    dist_allreduce(&total, 1, MPI_DOUBLE, MPI_SUM, s->col_comm);
    return total;
}

/* Runs iterations at one epsilon until the row error is below tol or max_iter ran.
 * Returns the iteration count and writes the last error into *err. Collective. */
static int64_t dist_stage(dist_state *s, double eps, double tol, int64_t max_iter, double *err)
{
    int64_t it = 0;
    *err = INFINITY;
    while (it < max_iter) {
        if (s->grid->nprow == 1)
            dist_columns_fused(s, eps);
        else
            dist_columns_reduced(s, eps);
        dist_allreduce(s->rowsum, s->rows, MPI_DOUBLE, MPI_SUM, s->row_comm);
        it++;
        *err = dist_row_error(s);
        if (*err < tol) break;
        dist_rows_update(s, eps);
    }
    return it;
}

/* Writes the local plan block and returns, on every rank, the objective and the L1 row
 * plus column error of the whole plan. plan (rows, cols), leading dimension lld. */
static void dist_write_plan(dist_state *s, double eps, double *plan, double *objective, double *err)
{
    memset(s->rowsum, 0, (size_t)s->rows * sizeof(double));
    double local[2] = {0.0, 0.0}, total[2];
    for (int jl = 0; jl < s->cols; jl++) {
        const double *col = s->c + (int64_t)jl * s->lld;
        double *pcol = plan + (int64_t)jl * s->lld;
        s->colsum[jl] = ot_exp_row_sum(s->rows, col, s->f, s->g[jl], 1.0 / eps, pcol);
        ot_add_scaled(s->rows, 1.0, pcol, s->rowsum);
        for (int il = 0; il < s->rows; il++) local[0] += col[il] * pcol[il];
    }
    dist_allreduce(s->colsum, s->cols, MPI_DOUBLE, MPI_SUM, s->col_comm);
    dist_allreduce(s->rowsum, s->rows, MPI_DOUBLE, MPI_SUM, s->row_comm);
    if (s->grid->myrow == 0)
        for (int jl = 0; jl < s->cols; jl++) local[1] += fabs(s->colsum[jl] - s->b[jl]);
    if (s->grid->mycol == 0)
        for (int il = 0; il < s->rows; il++) local[1] += fabs(s->rowsum[il] - s->a[il]);
    TF_MPI_CHECK(MPI_Allreduce(local, total, 2, MPI_DOUBLE, MPI_SUM, s->grid->comm));
    *objective = total[0];
    *err = total[1];
}

static void dist_state_free(dist_state *s)
{
    free(s->la);
    free(s->lb);
    free(s->a);
    free(s->b);
    free(s->f);
    free(s->g);
    free(s->rowsum);
    free(s->rowmax);
    free(s->colsum);
    free(s->colmax);
    free(s->work);
}

/* Checks desc against the grid and the local cost for finite values. Local. */
static tf_status dist_check(const char *fn, const ot_grid *grid, const int desc[9],
                            const double *cost_local)
{
    if (desc[0] != 1 || desc[1] != grid->context || desc[4] < 1 || desc[5] < 1)
        return tf_error_set(TF_ERR_ARG,
                            "%s: desc is not a dense descriptor on this grid (type %d, "
                            "context %d, grid context %d, blocks %d x %d)",
                            fn, desc[0], desc[1], grid->context, desc[4], desc[5]);
    int rows, cols;
    local_shape(grid, desc, &rows, &cols);
    if (desc[8] < rows)
        return tf_error_set(TF_ERR_ARG, "%s: leading dimension %d is below the %d local rows", fn,
                            desc[8], rows);
    if (rows > 0 && cols > 0 && !cost_local)
        return tf_error_set(TF_ERR_ARG, "%s: cost_local is NULL", fn);
    for (int jl = 0; jl < cols; jl++)
        for (int il = 0; il < rows; il++) {
            double v = cost_local[il + (int64_t)jl * desc[8]];
            if (isfinite(v)) continue;
            return tf_error_set(
                TF_ERR_ARG, "%s: cost[%lld, %lld] = %g is not finite", fn,
                (long long)global_index(il, desc[4], grid->myrow, desc[6], grid->nprow),
                (long long)global_index(jl, desc[5], grid->mycol, desc[7], grid->npcol), v);
        }
    return TF_OK;
}

/* Allocates the state and fills the local marginals. Local. */
static tf_status dist_state_init(dist_state *s, const ot_grid *grid, const int desc[9],
                                 const double *cost_local, const double *mu, const double *nu)
{
    const grid_impl *impl = (const grid_impl *)grid;
    int n = desc[2], m = desc[3];
    s->grid = grid;
    s->row_comm = impl->row_comm;
    s->col_comm = impl->col_comm;
    local_shape(grid, desc, &s->rows, &s->cols);
    s->lld = desc[8];
    s->c = cost_local;
    size_t r = (size_t)s->rows + 1, k = (size_t)s->cols + 1;
    s->la = tf_malloc(r * sizeof(double));
    s->a = tf_malloc(r * sizeof(double));
    s->f = tf_malloc(r * sizeof(double));
    s->rowsum = tf_malloc(r * sizeof(double));
    s->rowmax = tf_malloc(r * sizeof(double));
    s->lb = tf_malloc(k * sizeof(double));
    s->b = tf_malloc(k * sizeof(double));
    s->g = tf_malloc(k * sizeof(double));
    s->colsum = tf_malloc(k * sizeof(double));
    s->colmax = tf_malloc(k * sizeof(double));
    s->work = tf_malloc((r > k ? r : k) * sizeof(double));
    if (!s->la || !s->a || !s->f || !s->rowsum || !s->rowmax || !s->lb || !s->b || !s->g ||
        !s->colsum || !s->colmax || !s->work)
        return tf_error_set(TF_ERR_NOMEM, "ot_sinkhorn_solve_dist: out of memory");

    for (int il = 0; il < s->rows; il++) {
        int64_t i = global_index(il, desc[4], grid->myrow, desc[6], grid->nprow);
        s->a[il] = ot_marginal_at(mu, i, n);
        s->la[il] = log(s->a[il]);
        s->f[il] = s->a[il] > 0.0 ? 0.0 : -INFINITY;
    }
    for (int jl = 0; jl < s->cols; jl++) {
        int64_t j = global_index(jl, desc[5], grid->mycol, desc[7], grid->npcol);
        s->b[jl] = ot_marginal_at(nu, j, m);
        s->lb[jl] = log(s->b[jl]);
        s->g[jl] = s->b[jl] > 0.0 ? 0.0 : -INFINITY;
    }
    return TF_OK;
}

tf_status ot_sinkhorn_solve_dist(const ot_grid *grid, const int desc[9], const double *cost_local,
                                 const double *mu, const double *nu, const ot_sinkhorn_options *opt,
                                 double *plan_local, ot_info *info)
{
    const char *fn = "ot_sinkhorn_solve_dist";
    if (!grid || !desc) return tf_error_set(TF_ERR_ARG, "%s: grid or desc is NULL", fn);
    double mass = 0.0;
    dist_state s = {0};

    /* Check input on every rank, then agree on the first failure. */
    tf_status st = ot_check_marginals(fn, desc[2], desc[3], mu, nu, &mass);
    if (st == TF_OK) st = ot_sinkhorn_check_options(fn, opt);
    if (st == TF_OK) st = dist_check(fn, grid, desc, cost_local);
    if (st == TF_OK) st = dist_state_init(&s, grid, desc, cost_local, mu, nu);
    st = agree_status(grid->comm, st);
    if (st != TF_OK) goto done;

    /* Epsilon schedule from the global max |C|. */
    double absmax = 0.0, eps[64];
    for (int jl = 0; jl < s.cols; jl++)
        for (int il = 0; il < s.rows; il++)
            absmax = fmax(absmax, fabs(s.c[il + (int64_t)jl * s.lld]));
    TF_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &absmax, 1, MPI_DOUBLE, MPI_MAX, grid->comm));
    int stages = ot_sinkhorn_schedule(opt, absmax, eps);

    /* Same stage tolerances and caps as the single-rank solver. */
    int64_t iterations = 0;
    double err = INFINITY;
    for (int k = 0; k < stages; k++) {
        int last = k == stages - 1;
        double tol = last ? opt->tolerance : fmax(opt->tolerance, 1e-3 * mass);
        int64_t cap = last ? opt->max_iter : 100;
        iterations += dist_stage(&s, eps[k], tol, cap, &err);
    }
    int converged = err < opt->tolerance;

    double objective = 0.0, plan_err = 0.0;
    dist_write_plan(&s, opt->epsilon, plan_local, &objective, &plan_err);
    if (info) {
        info->objective = objective;
        info->iterations = iterations;
        info->marginal_error = plan_err;
        info->converged = converged;
    }
    if (!converged)
        st = tf_error_set(TF_ERR_NOT_CONVERGED,
                          "%s: no convergence in max_iter = %lld iterations at epsilon = %g "
                          "(marginal error %g, tolerance %g); raise max_iter or epsilon",
                          fn, (long long)opt->max_iter, opt->epsilon, err, opt->tolerance);

done:
    dist_state_free(&s);
    return st;
}

tf_status ot_sinkhorn_solve_auto(MPI_Comm comm, int64_t threshold, int n, int m, const double *cost,
                                 const double *mu, const double *nu, const ot_sinkhorn_options *opt,
                                 double *plan, ot_info *info)
{
    int size = 1;
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    if (size == 1 || (int64_t)n * m < threshold)
        return ot_sinkhorn_solve(n, m, cost, mu, nu, opt, plan, info);

    const char *fn = "ot_sinkhorn_solve_auto";
    ot_grid *grid = NULL;
    double *cost_local = NULL, *plan_local = NULL;
    int desc[9], rows = 0, cols = 0;
    tf_status st = ot_check_problem(fn, n, m, cost, mu, nu, NULL);
    if (st == TF_OK && !plan) st = tf_error_set(TF_ERR_ARG, "%s: plan is NULL", fn);
    if (st == TF_OK) st = ot_grid_create(comm, &grid);
    if (st == TF_OK) st = ot_dist_desc(grid, n, m, 64, desc, &rows, &cols);
    if (st == TF_OK) {
        size_t bytes = (size_t)desc[8] * (cols > 0 ? cols : 1) * sizeof(double);
        cost_local = tf_malloc(bytes);
        plan_local = tf_malloc(bytes);
        if (!cost_local || !plan_local)
            st = tf_error_set(TF_ERR_NOMEM, "%s: out of memory for the local blocks", fn);
    }
    st = agree_status(comm, st);
    if (st != TF_OK) goto done;

    /* Scatter, solve on the grid, gather the plan back to every rank. */
    ot_dist_scatter(grid, desc, cost, cost_local);
    st = ot_sinkhorn_solve_dist(grid, desc, cost_local, mu, nu, opt, plan_local, info);
    if (st == TF_OK || st == TF_ERR_NOT_CONVERGED) {
        char message[1024];
        snprintf(message, sizeof message, "%s", tf_error_get());
        tf_status gathered = ot_dist_gather(grid, desc, plan_local, plan);
        if (gathered != TF_OK)
            st = gathered;
        else if (st != TF_OK)
            tf_error_set(st, "%s", message);
    }

done:
    free(cost_local);
    free(plan_local);
    ot_grid_free(&grid);
    return st;
}
