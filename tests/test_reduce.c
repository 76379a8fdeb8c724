/* reduce_chunks_sum against a serial pairwise sum written here from the tree's definition:
 * results must be bitwise equal at every rank count, for chunk counts that are not powers
 * of two, for more ranks than chunks and for more chunks than leaves. Chunk values span 16 orders
 * of magnitude, so a different association order changes the sum (checked too, so the test can
 * fail). Also: a failing fill makes every rank fail, and a negative chunk count is rejected. */
#include "testutil.h"
#include "tfuse/reduce.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Chunk c's values: normal times 10^u, u uniform in [-8, 8), seeded by (c, i). */
static double chunk_value(int64_t c, int64_t i)
{
    tf_rng rng;
    tf_rng_seed(&rng, (uint64_t)c * 1000003u + (uint64_t)i);
    double scale = pow(10.0, 16.0 * tf_rng_uniform(&rng) - 8.0);
    return tf_rng_normal(&rng) * scale;
}

typedef struct {
    int64_t fail_at; /* chunk whose fill fails, or -1 */
    int64_t calls;   /* fills done on this rank */
    int64_t len;     /* values the caller asked for; each fill must receive this count */
    int64_t bad_len; /* fills that received another count */
} fill_ctx;

static tf_status fill(int64_t chunk, double *buffer, int64_t len, void *ctx)
{
    fill_ctx *f = ctx;
    f->calls++;
    f->bad_len += len != f->len;
    if (chunk == f->fail_at)
        return tf_error_set(TF_ERR_NUMERIC, "chunk %lld failed on purpose", (long long)chunk);
    for (int64_t i = 0; i < len; i++) buffer[i] += chunk_value(chunk, i);
    return TF_OK;
}

/* Chunks per leaf: one up to REDUCE_MAX_LEAVES chunks, else ceil(n / REDUCE_MAX_LEAVES). */
static int64_t chunks_per_leaf(int64_t n)
{
    int64_t g = 1;
    while (g * REDUCE_MAX_LEAVES < n) g++;
    return g;
}

/* Sum of the node covering leaves [lo, lo + 2^level), clipped at the last of the n chunks:
 * left + right, or left alone if the right child is empty. A leaf adds its g chunks to
 * zero in chunk order. Returns 0 (and leaves out alone) for an empty node. */
static int serial_node(int64_t lo, int level, int64_t n, int64_t g, int64_t len, double *out)
{
    if (lo * g >= n) return 0;
    if (level == 0) {
        for (int64_t i = 0; i < len; i++) {
            out[i] = 0.0;
            for (int64_t c = lo * g; c < (lo + 1) * g && c < n; c++) out[i] += chunk_value(c, i);
        }
        return 1;
    }
    double *right = malloc((size_t)len * sizeof(double));
    serial_node(lo, level - 1, n, g, len, out);
    if (serial_node(lo + (INT64_C(1) << (level - 1)), level - 1, n, g, len, right))
        for (int64_t i = 0; i < len; i++) out[i] += right[i];
    free(right);
    return 1;
}

static void serial_tree(int64_t n, int64_t len, double *out)
{
    const int64_t g = chunks_per_leaf(n), leaves = (n + g - 1) / g;
    int level = 0;
    while ((INT64_C(1) << level) < leaves) level++;
    memset(out, 0, (size_t)len * sizeof(double));
    serial_node(0, level, n, g, len, out);
}

static void check_count(int64_t n, int64_t len, int rank, int size)
{
    double *got = malloc((size_t)(len > 0 ? len : 1) * sizeof(double)),
           *want = malloc((size_t)(len > 0 ? len : 1) * sizeof(double));
    fill_ctx ctx = {.fail_at = -1, .calls = 0, .len = len};
    tf_status st = reduce_chunks_sum(MPI_COMM_WORLD, n, len, fill, &ctx, got);
    TU_CHECK(ctx.bad_len == 0, "n = %lld, len = %lld: %lld fills received another length",
             (long long)n, (long long)len, (long long)ctx.bad_len);
    TU_CHECK(st == TF_OK, "n = %lld: reduce_chunks_sum failed: %s", (long long)n, tf_error_get());
    serial_tree(n, len, want);
    int64_t bad = 0, first_bad = -1;
    for (int64_t i = 0; i < len; i++)
        if (memcmp(&got[i], &want[i], sizeof(double)) != 0 && bad++ == 0) first_bad = i;
    TU_CHECK(bad == 0,
             "n = %lld, len = %lld at %d ranks: %lld of %lld values differ from the "
             "serial tree sum, first at %lld: %.17g vs %.17g",
             (long long)n, (long long)len, size, (long long)bad, (long long)len,
             (long long)first_bad, first_bad >= 0 ? got[first_bad] : 0.0,
             first_bad >= 0 ? want[first_bad] : 0.0);

    /* Each rank fills exactly the chunks of its range. */
    int64_t first, last;
    reduce_chunk_range(n, rank, size, &first, &last);
    TU_CHECK(ctx.calls == last - first, "n = %lld: rank %d filled %lld chunks, owns %lld",
             (long long)n, rank, (long long)ctx.calls, (long long)(last - first));
    free(got);
    free(want);
}

/* The data are order-sensitive: a left-to-right sum differs from the tree sum. */
static void check_order_matters(int64_t n, int64_t len)
{
    double *tree = malloc((size_t)len * sizeof(double));
    serial_tree(n, len, tree);
    int64_t differ = 0;
    for (int64_t i = 0; i < len; i++) {
        double seq = 0;
        for (int64_t c = 0; c < n; c++) seq += chunk_value(c, i);
        differ += seq != tree[i];
    }
    TU_CHECK(differ > 0,
             "n = %lld: sequential and tree sums agree on all %lld values, so the "
             "test data cannot detect a changed order",
             (long long)n, (long long)len);
    free(tree);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    const int64_t counts[] = {0, 1, 2, 3, 5, 6, 7, 13, 31, 33, 100};
    for (size_t k = 0; k < sizeof counts / sizeof *counts; k++)
        check_count(counts[k], 257, rank, size);
    check_count(1, 1, rank, size);
    check_count(37, 1, rank, size);
    check_count(13, 3, rank, size); /* fewer values than ranks at 4 ranks */
    check_count(6, 0, rank, size);
    /* More chunks than leaves: runs of 2 and 3 chunks per leaf. */
    check_count(REDUCE_MAX_LEAVES + 1, 5, rank, size);
    check_count(2 * REDUCE_MAX_LEAVES + 452, 5, rank, size);
    TU_CHECK(reduce_leaf_chunks(2 * REDUCE_MAX_LEAVES + 452) == 3, "chunks per leaf: %lld",
             (long long)reduce_leaf_chunks(2 * REDUCE_MAX_LEAVES + 452));
    check_order_matters(100, 257);

    /* A fill that fails on one chunk makes every rank fail. */
    double out[4];
    fill_ctx ctx = {.fail_at = 5, .calls = 0, .len = 4};
    tf_status st = reduce_chunks_sum(MPI_COMM_WORLD, 9, 4, fill, &ctx, out);
    TU_CHECK(st != TF_OK, "a failing fill on chunk 5 returned TF_OK on rank %d", rank);
    int64_t first, last;
    reduce_chunk_range(9, rank, size, &first, &last);
    if (first <= 5 && 5 < last)
        TU_CHECK(strstr(tf_error_get(), "chunk 5") != NULL, "owner's message lost: %s",
                 tf_error_get());
    else
        TU_CHECK(strstr(tf_error_get(), "another rank") != NULL, "message on rank %d: %s", rank,
                 tf_error_get());

    st = reduce_chunks_sum(MPI_COMM_WORLD, -1, 4, fill, &ctx, out);
    TU_CHECK(st == TF_ERR_ARG, "n_chunks = -1 returned %s", tf_status_str(st));

    int rc = tu_finish("reduce");
    MPI_Finalize();
    return rc;
}
