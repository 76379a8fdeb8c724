#include "testutil.h"

#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>

static int passed, failed;

void tu_check(int ok, const char *file, int line, const char *fmt, ...)
{
    if (ok) {
        passed++;
        return;
    }
    failed++;
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fprintf(stderr, "FAIL [rank %d] %s:%d: ", rank, file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
}

static int close_report(const char *what, int64_t n, int64_t bad, double max_abs,
                        double max_rel, double rtol, double atol)
{
    if (bad == 0) {
        passed++;
        return 1;
    }
    failed++;
    fprintf(stderr,
            "FAIL %s: %lld of %lld values differ (rtol %.1e, atol %.1e); max abs error %.3e, "
            "max rel error %.3e\n",
            what, (long long)bad, (long long)n, rtol, atol, max_abs, max_rel);
    return 0;
}

#define TU_CLOSE_BODY                                                                          \
    int64_t bad = 0;                                                                           \
    double max_abs = 0, max_rel = 0;                                                           \
    for (int64_t i = 0; i < n; i++) {                                                          \
        double g = (double)got[i], w = (double)want[i];                                        \
        double err = fabs(g - w);                                                              \
        int ok = err <= atol + rtol * fabs(w) && isfinite(g);                                  \
        if (err > max_abs || !isfinite(err)) max_abs = err;                                    \
        if (w != 0 && err / fabs(w) > max_rel) max_rel = err / fabs(w);                        \
        if (!ok) {                                                                             \
            if (bad < 10)                                                                      \
                fprintf(stderr, "  %s[%lld]: got %.17g, expected %.17g\n", what,              \
                        (long long)i, g, w);                                                   \
            bad++;                                                                             \
        }                                                                                      \
    }                                                                                          \
    return close_report(what, n, bad, max_abs, max_rel, rtol, atol);

int tu_close_f64(const char *what, const double *got, const double *want, int64_t n,
                 double rtol, double atol)
{
    TU_CLOSE_BODY
}

int tu_close_f32(const char *what, const float *got, const float *want, int64_t n,
                 double rtol, double atol)
{
    TU_CLOSE_BODY
}

int tu_failures(void)
{
    return failed;
}

int tu_finish(const char *name)
{
    int counts[2] = {passed, failed}, total[2] = {0, 0};
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) printf("%s: %d passed, %d failed\n", name, total[0], total[1]);
    return total[1] == 0 ? 0 : 1;
}
