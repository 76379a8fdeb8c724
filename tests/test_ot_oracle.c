/* Compares ot_emd_solve and ot_sinkhorn_solve with POT 0.8.2 on the problems written by
 * tests/ot_oracle.py: the exact objective with ot.emd2's, the Sinkhorn plan with
 * ot.sinkhorn(method='sinkhorn_log') at the same epsilon, and feasibility of the plans.
 * Usage: test_ot_oracle DIR (the directory the script wrote). */
#include "tfuse/ot.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Exact objective: relative tolerance against ot.emd2, absolute floor for zero costs. */
#define EMD_RTOL 1e-9
#define EMD_ATOL 1e-14
/* Marginals of every plan. */
#define MARGINAL_ATOL 1e-12
/* Sinkhorn plans: both solvers run to a marginal error near 1e-14 at the same epsilon. */
#define SINKHORN_ATOL 1e-11
#define SINKHORN_RTOL 1e-8

typedef struct {
    int n, m;
    double reg;
    double *cost, *mu, *nu, *plan_ref;
    double emd2;
} oracle_case;

static void read_doubles(FILE *fp, double *dst, size_t count, const char *path)
{
    if (fread(dst, sizeof(double), count, fp) != count)
        TF_DIE("%s: file is truncated; rerun tests/ot_oracle.py", path);
}

static oracle_case read_case(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/ot_case_%s.bin", dir, name);
    FILE *fp = fopen(path, "rb");
    if (!fp) TF_DIE("cannot open %s; run tests/ot_oracle.py first", path);
    oracle_case c = {0};
    int dims[2];
    if (fread(dims, sizeof(int), 2, fp) != 2) TF_DIE("%s: missing header", path);
    c.n = dims[0];
    c.m = dims[1];
    size_t nm = (size_t)c.n * c.m;
    read_doubles(fp, &c.reg, 1, path);
    c.cost = malloc(nm * sizeof(double));
    c.mu = malloc((size_t)c.n * sizeof(double));
    c.nu = malloc((size_t)c.m * sizeof(double));
    c.plan_ref = malloc(nm * sizeof(double));
    read_doubles(fp, c.cost, nm, path);
    read_doubles(fp, c.mu, (size_t)c.n, path);
    read_doubles(fp, c.nu, (size_t)c.m, path);
    read_doubles(fp, &c.emd2, 1, path);
    if (c.reg > 0) read_doubles(fp, c.plan_ref, nm, path);
    fclose(fp);
    return c;
}

/* Checks plan >= 0 and its row and column sums against mu and nu. */
static void check_feasible(const char *what, const char *name, const oracle_case *c,
                           const double *plan, double atol)
{
    double *rows = calloc((size_t)c->n, sizeof(double));
    double *cols = calloc((size_t)c->m, sizeof(double));
    double min_entry = 0.0;
    for (int i = 0; i < c->n; i++)
        for (int j = 0; j < c->m; j++) {
            double p = plan[(size_t)i * c->m + j];
            min_entry = fmin(min_entry, p);
            rows[i] += p;
            cols[j] += p;
        }
    TU_CHECK(min_entry >= 0.0, "%s %s: plan has a negative entry %g", what, name, min_entry);
    char label[256];
    snprintf(label, sizeof label, "%s %s row sums", what, name);
    tu_close_f64(label, rows, c->mu, c->n, 0.0, atol);
    snprintf(label, sizeof label, "%s %s column sums", what, name);
    tu_close_f64(label, cols, c->nu, c->m, 0.0, atol);
    free(rows);
    free(cols);
}

static void test_emd(const char *name, const oracle_case *c)
{
    double *plan = malloc((size_t)c->n * c->m * sizeof(double));
    ot_info info;
    tf_status st = ot_emd_solve(c->n, c->m, c->cost, c->mu, c->nu, plan, &info);
    TU_CHECK(st == TF_OK, "emd %s: status %s (%s)", name, tf_status_str(st), tf_error_get());
    double err = fabs(info.objective - c->emd2);
    TU_CHECK(err <= EMD_ATOL + EMD_RTOL * fabs(c->emd2),
             "emd %s: objective %.17g, ot.emd2 %.17g, relative error %.3g", name, info.objective,
             c->emd2, err / fmax(fabs(c->emd2), 1e-300));
    check_feasible("emd", name, c, plan, MARGINAL_ATOL);
    free(plan);
}

static void test_sinkhorn(const char *name, const oracle_case *c)
{
    double *plan = malloc((size_t)c->n * c->m * sizeof(double));
    ot_sinkhorn_options opt = ot_sinkhorn_defaults(c->reg);
    opt.tolerance = 1e-13;
    opt.max_iter = 1000000;
    ot_info info;
    tf_status st = ot_sinkhorn_solve(c->n, c->m, c->cost, c->mu, c->nu, &opt, plan, &info);
    TU_CHECK(st == TF_OK && info.converged, "sinkhorn %s: status %s (%s)", name, tf_status_str(st),
             tf_error_get());
    char label[256];
    snprintf(label, sizeof label, "sinkhorn %s plan vs POT (eps %g)", name, c->reg);
    tu_close_f64(label, plan, c->plan_ref, (int64_t)c->n * c->m, SINKHORN_RTOL, SINKHORN_ATOL);
    check_feasible("sinkhorn", name, c, plan, MARGINAL_ATOL);
    free(plan);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc < 2) TF_DIE("usage: test_ot_oracle DIR");
    char list[4096], name[256];
    snprintf(list, sizeof list, "%s/ot_cases.txt", argv[1]);
    FILE *fp = fopen(list, "r");
    if (!fp) TF_DIE("cannot open %s; run tests/ot_oracle.py first", list);
    int count = 0;
    while (fscanf(fp, "%255s", name) == 1) {
        oracle_case c = read_case(argv[1], name);
        test_emd(name, &c);
        if (c.reg > 0) test_sinkhorn(name, &c);
        free(c.cost);
        free(c.mu);
        free(c.nu);
        free(c.plan_ref);
        count++;
    }
    fclose(fp);
    TU_CHECK(count >= 10, "only %d oracle cases found in %s", count, list);
    int rc = tu_finish("test_ot_oracle");
    MPI_Finalize();
    return rc;
}
