/* Reproducible tree sums of chunk buffers over MPI ranks (see tfuse/reduce.h).
 *
 * Each rank keeps a stack of complete tree nodes in increasing chunk order. Pushing a node
 * merges it with the node below while the two are the left and right child of one parent,
 * so the stack always contains the largest complete nodes of the chunks seen so far: at most
 * about 2 log2(chunks) + 1 of them for a range that starts anywhere, and log2(chunks) + 1
 * for a range that starts at chunk 0. */
#include "tfuse/reduce.h"

#include <stdlib.h>
#include <string.h>

enum { STACK_MAX = 160, TAG_COUNT = 7301, TAG_NODE = 7302, TAG_DATA = 7303 };

/* Doubles per MPI message, so that every count fits in int. */
#define PIECE (INT64_C(1) << 26)

typedef struct {
    int64_t start; /* first chunk covered; a multiple of 2^level */
    int64_t level; /* the node covers chunks [start, start + 2^level), clipped */
    double *data;  /* (len) */
} tree_node;

typedef struct {
    int64_t n_chunks, len;
    tree_node node[STACK_MAX];
    int count;
    double *spare[STACK_MAX]; /* buffers of len doubles free for reuse */
    int n_spare;
} node_stack;

static double *stack_buffer(node_stack *s)
{
    if (s->n_spare > 0) return s->spare[--s->n_spare];
    return tf_malloc((size_t)s->len * sizeof(double));
}

static void stack_recycle(node_stack *s, double *data)
{
    if (s->n_spare < STACK_MAX)
        s->spare[s->n_spare++] = data;
    else
        free(data);
}

static void stack_free(node_stack *s)
{
    for (int i = 0; i < s->count; i++) free(s->node[i].data);
    for (int i = 0; i < s->n_spare; i++) free(s->spare[i]);
    s->count = s->n_spare = 0;
}

/* Merges the top two nodes while they are siblings: lower (left) += upper (right). */
static void stack_merge(node_stack *s)
{
    while (s->count >= 2) {
        tree_node *lower = &s->node[s->count - 2], *upper = &s->node[s->count - 1];
        const int64_t width = INT64_C(1) << lower->level;
        if (lower->level != upper->level || lower->start % (2 * width) != 0 ||
            lower->start + width != upper->start)
            return;
        for (int64_t i = 0; i < s->len; i++) lower->data[i] += upper->data[i];
        lower->level++;
        stack_recycle(s, upper->data);
        s->count--;
    }
}

/* Pushes a node and merges; the stack owns data on success only. Fails only on stack
 * overflow, which the bound on the depth excludes for any int64_t chunk count. */
static tf_status stack_push(node_stack *s, int64_t start, int64_t level, double *data)
{
    if (s->count == STACK_MAX) {
        return tf_error_set(TF_ERR_ARG, "reduce_chunks_sum: more than %d open tree nodes",
                            STACK_MAX);
    }
    s->node[s->count++] = (tree_node){start, level, data};
    stack_merge(s);
    return TF_OK;
}

/* Completes the tree once every chunk has been pushed: a left child whose right sibling
 * starts past the last chunk becomes its parent unchanged, a right child is merged into
 * its left sibling, until one node (the root's value) remains. */
static tf_status stack_finish(node_stack *s)
{
    while (s->count > 1) {
        tree_node *top = &s->node[s->count - 1];
        const int64_t width = INT64_C(1) << top->level;
        int before = s->count;
        if (top->start % (2 * width) == 0) {
            if (top->start + width < s->n_chunks)
                return tf_error_set(TF_ERR_ARG, "reduce_chunks_sum: chunk %lld is missing",
                                    (long long)(top->start + width));
            top->level++;
        }
        stack_merge(s);
        if (s->count == before && top->start % (2 * width) != 0)
            return tf_error_set(TF_ERR_ARG,
                                "reduce_chunks_sum: tree node at chunk %lld "
                                "has no left sibling",
                                (long long)top->start);
    }
    return TF_OK;
}

void reduce_chunk_range(int64_t n_chunks, int rank, int size, int64_t *first, int64_t *last)
{
    *first = n_chunks * rank / size;
    *last = n_chunks * (rank + 1) / size;
}

static void send_doubles(MPI_Comm comm, int dest, const double *x, int64_t len)
{
    for (int64_t off = 0; off < len; off += PIECE) {
        int count = (int)(len - off < PIECE ? len - off : PIECE);
        TF_MPI_CHECK(MPI_Send(x + off, count, MPI_DOUBLE, dest, TAG_DATA, comm));
    }
}

static void recv_doubles(MPI_Comm comm, int source, double *x, int64_t len)
{
    for (int64_t off = 0; off < len; off += PIECE) {
        int count = (int)(len - off < PIECE ? len - off : PIECE);
        TF_MPI_CHECK(
            MPI_Recv(x + off, count, MPI_DOUBLE, source, TAG_DATA, comm, MPI_STATUS_IGNORE));
    }
}

static void send_stack(MPI_Comm comm, int dest, const node_stack *s)
{
    int64_t count = s->count;
    TF_MPI_CHECK(MPI_Send(&count, 1, MPI_INT64_T, dest, TAG_COUNT, comm));
    for (int i = 0; i < s->count; i++) {
        int64_t head[2] = {s->node[i].start, s->node[i].level};
        TF_MPI_CHECK(MPI_Send(head, 2, MPI_INT64_T, dest, TAG_NODE, comm));
        send_doubles(comm, dest, s->node[i].data, s->len);
    }
}

/* Receives the nodes of rank `source` and pushes them in order. After a failure the rest
 * is still received (into one buffer) so that the sender does not block forever. */
static tf_status recv_stack(MPI_Comm comm, int source, node_stack *s, double **incoming)
{
    tf_status st = TF_OK;
    int64_t count = 0;
    TF_MPI_CHECK(MPI_Recv(&count, 1, MPI_INT64_T, source, TAG_COUNT, comm, MPI_STATUS_IGNORE));
    for (int64_t i = 0; i < count; i++) {
        int64_t head[2];
        TF_MPI_CHECK(MPI_Recv(head, 2, MPI_INT64_T, source, TAG_NODE, comm, MPI_STATUS_IGNORE));
        recv_doubles(comm, source, *incoming, s->len);
        if (st != TF_OK) continue;
        double *next = stack_buffer(s);
        if (!next) {
            st = TF_ERR_NOMEM;
            continue;
        }
        st = stack_push(s, head[0], head[1], *incoming);
        if (st == TF_OK)
            *incoming = next;
        else
            stack_recycle(s, next);
    }
    return st;
}

/* Agrees on a status over comm: returns the local one if it failed, else the worst
 * remote one with a message saying so. */
static tf_status agree(MPI_Comm comm, tf_status st)
{
    int local = (int)st, worst = 0;
    TF_MPI_CHECK(MPI_Allreduce(&local, &worst, 1, MPI_INT, MPI_MAX, comm));
    if (st == TF_OK && worst != TF_OK)
        return tf_error_set((tf_status)worst, "reduce_chunks_sum failed on another rank");
    return st;
}

/* Fills this rank's chunks in order and pushes each as a leaf. */
static tf_status fill_local(node_stack *s, int64_t first, int64_t last, reduce_fill_fn fill,
                            void *ctx)
{
    for (int64_t c = first; c < last; c++) {
        double *data = stack_buffer(s);
        if (!data) return TF_ERR_NOMEM;
        memset(data, 0, (size_t)s->len * sizeof(double));
        tf_status st = fill(c, data, s->len, ctx);
        if (st == TF_OK) st = stack_push(s, c, 0, data);
        if (st != TF_OK) {
            stack_recycle(s, data);
            return st;
        }
    }
    return TF_OK;
}

tf_status reduce_chunks_sum(MPI_Comm comm, int64_t n_chunks, int64_t len, reduce_fill_fn fill,
                            void *ctx, double *result)
{
    int rank = 0, size = 1;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    if (n_chunks < 0 || len < 0)
        return tf_error_set(TF_ERR_ARG,
                            "reduce_chunks_sum: n_chunks = %lld and len = %lld "
                            "must be >= 0",
                            (long long)n_chunks, (long long)len);
    node_stack *s = tf_calloc(1, sizeof *s);
    if (!s) return agree(comm, TF_ERR_NOMEM);
    s->n_chunks = n_chunks;
    s->len = len > 0 ? len : 1;
    int64_t first, last;
    reduce_chunk_range(n_chunks, rank, size, &first, &last);
    double *incoming = stack_buffer(s);

    /* Step 1: this rank's chunks into the largest complete nodes of its range. */
    tf_status st = incoming ? fill_local(s, first, last, fill, ctx) : TF_ERR_NOMEM;
    st = agree(comm, st);

    /* Step 2: binomial tree over ranks; rank r + step sends its nodes to rank r, whose
     * range ends where the sender's begins, so nodes keep arriving in chunk order. */
    for (int step = 1; st == TF_OK && step < size; step *= 2) {
        if (rank % (2 * step) == step) {
            send_stack(comm, rank - step, s);
            break;
        }
        if (rank % (2 * step) == 0 && rank + step < size)
            st = recv_stack(comm, rank + step, s, &incoming);
    }
    if (st == TF_OK && rank == 0) st = stack_finish(s);
    st = agree(comm, st);

    /* Step 3: rank 0 has the root and broadcasts it. */
    if (st == TF_OK && len > 0) {
        if (rank == 0) {
            if (s->count == 1)
                memcpy(result, s->node[0].data, (size_t)len * sizeof(double));
            else
                memset(result, 0, (size_t)len * sizeof(double));
        }
        for (int64_t off = 0; off < len; off += PIECE) {
            int count = (int)(len - off < PIECE ? len - off : PIECE);
            TF_MPI_CHECK(MPI_Bcast(result + off, count, MPI_DOUBLE, 0, comm));
        }
    }
    free(incoming);
    stack_free(s);
    free(s);
    return st;
}
