/* fuse_align_shared: every rank ends with every parent's parameters, each parent is
 * aligned exactly once (by its owner), and the anchor is left alone. A failure on the
 * owner of one parent reaches every rank with the owner's message. The owner skips its
 * later parents, and the other ranks' parents are still shared. */
#include "testutil.h"
#include "tfuse/fuse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_PARENTS = 5, ANCHOR = 1, COUNT = 1001 };

typedef struct {
    float *params[N_PARENTS];
    int calls[N_PARENTS]; /* align calls per parent on this rank */
    int fail_parent;      /* parent whose alignment fails, or -1 */
} test_ctx;

/* The value parent p's aligned parameter i must have: depends on (p, i) only. */
static float expected(int p, int64_t i)
{
    return (float)(p * 10000 + i) * 0.25f;
}

static tf_status align(int p, void *ctx)
{
    test_ctx *c = ctx;
    c->calls[p]++;
    if (p == c->fail_parent) return tf_error_set(TF_ERR_NUMERIC, "parent %d failed on purpose", p);
    for (int64_t i = 0; i < COUNT; i++) c->params[p][i] = expected(p, i);
    return TF_OK;
}

static void run(int rank, int size, int fail_parent)
{
    test_ctx c = {.fail_parent = fail_parent};
    for (int p = 0; p < N_PARENTS; p++) {
        c.params[p] = malloc(COUNT * sizeof(float));
        for (int64_t i = 0; i < COUNT; i++) c.params[p][i] = -1.0f;
    }
    tf_status st = fuse_align_shared(MPI_COMM_WORLD, N_PARENTS, ANCHOR, c.params, COUNT, align, &c);

    /* Calls: each non-anchor parent once over all ranks, on rank k mod size, except the
     * parents after a failure on the same rank, which that rank skips. */
    int total[N_PARENTS], owner[N_PARENTS];
    MPI_Allreduce(c.calls, total, N_PARENTS, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    for (int p = 0, k = 0; p < N_PARENTS; p++) owner[p] = p == ANCHOR ? -1 : k++ % size;
    for (int p = 0; p < N_PARENTS; p++) {
        const int skipped = fail_parent >= 0 && p > fail_parent && owner[p] == owner[fail_parent];
        const int want = p == ANCHOR || skipped ? 0 : 1;
        TU_CHECK(total[p] == want, "parent %d aligned %d times, expected %d", p, total[p], want);
        TU_CHECK(c.calls[p] == (rank == owner[p] && want), "rank %d aligned parent %d %d times",
                 rank, p, c.calls[p]);
    }
    if (fail_parent < 0) {
        TU_CHECK(st == TF_OK, "fuse_align_shared failed: %s", tf_error_get());
        int64_t bad = 0;
        for (int p = 0; p < N_PARENTS; p++)
            for (int64_t i = 0; i < COUNT; i++)
                bad += c.params[p][i] != (p == ANCHOR ? -1.0f : expected(p, i));
        TU_CHECK(bad == 0, "rank %d: %lld parameters differ from the owner's", rank,
                 (long long)bad);
    } else {
        TU_CHECK(st == TF_ERR_NUMERIC, "a failing parent %d returned %s on rank %d", fail_parent,
                 tf_status_str(st), rank);
        TU_CHECK(strstr(tf_error_get(), "parent 3 failed on purpose") != NULL,
                 "rank %d message: %s", rank, tf_error_get());
        /* A parent after the failing one is still shared when another rank owns it. */
        if (owner[4] != owner[fail_parent])
            TU_CHECK(c.params[4][7] == expected(4, 7),
                     "rank %d: parent 4 not shared after a failure", rank);
    }
    for (int p = 0; p < N_PARENTS; p++) free(c.params[p]);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    run(rank, size, -1);
    run(rank, size, 3);
    int rc = tu_finish("align_shared");
    MPI_Finalize();
    return rc;
}
