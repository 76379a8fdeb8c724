/* Reproducible tree sums of chunk buffers over MPI ranks (see tfuse/reduce.h).
 *
 * The tree's leaves are runs of reduce_leaf_chunks(n) consecutive chunks (one chunk each
 * up to REDUCE_MAX_LEAVES chunks). Each rank keeps a stack of complete tree nodes in
 * increasing leaf order. Pushing a node merges it with the node below while the two are the
 * left and right child of one parent. So the stack always contains the largest complete
 * nodes of the leaves seen so far: at most about 2 log2(leaves) + 1 of them for a range
 * that starts anywhere, and log2(leaves) + 1 for a range that starts at leaf 0.
 *
 * The ranks then combine their stacks as a reduce-scatter followed by an all-gather. The
 * values are cut into one segment per rank. Rank o receives segment o of every rank's
 * nodes and pushes them, in rank order, onto a stack of segment-length nodes, where the
 * same merge rule completes the tree. Then each rank broadcasts its segment. Every rank
 * sends and receives about 2 len (size - 1) / size values plus the nodes beyond the first
 * of its stack, whatever the number of ranks, and does 1 / size of the final additions. */
#include "tfuse/reduce.h"

#include <stdlib.h>
#include <string.h>

enum { STACK_MAX = 160, TAG_COUNT = 7301, TAG_NODE = 7302, TAG_DATA = 7303 };

/* Doubles per MPI message, so that every count fits in int. */
#define PIECE (INT64_C(1) << 26)

typedef struct {
    int64_t start; /* first leaf covered; a multiple of 2^level */
    int64_t level; /* the node covers leaves [start, start + 2^level), clipped */
    double *data;  /* (len) */
} tree_node;

typedef struct {
    int64_t n_leaves, len;
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
 * overflow, which the bound on the depth excludes for any int64_t leaf count. */
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

/* Completes the tree once every leaf has been pushed: a left child whose right sibling
 * starts past the last leaf becomes its parent unchanged, a right child is merged into
 * its left sibling, until one node (the root's value) remains. */
static tf_status stack_finish(node_stack *s)
{
    while (s->count > 1) {
        tree_node *top = &s->node[s->count - 1];
        const int64_t width = INT64_C(1) << top->level;
        int before = s->count;
        if (top->start % (2 * width) == 0) {
            if (top->start + width < s->n_leaves)
                return tf_error_set(TF_ERR_ARG, "reduce_chunks_sum: leaf %lld is missing",
                                    (long long)(top->start + width));
            top->level++;
        }
        stack_merge(s);
        if (s->count == before && top->start % (2 * width) != 0)
            return tf_error_set(TF_ERR_ARG,
                                "reduce_chunks_sum: tree node at leaf %lld "
                                "has no left sibling",
                                (long long)top->start);
    }
    return TF_OK;
}

int64_t reduce_leaf_chunks(int64_t n_chunks)
{
    return n_chunks > REDUCE_MAX_LEAVES ? (n_chunks + REDUCE_MAX_LEAVES - 1) / REDUCE_MAX_LEAVES
                                        : 1;
}

/* Number of leaves of the tree over n_chunks chunks. */
static int64_t leaf_count(int64_t n_chunks)
{
    const int64_t g = reduce_leaf_chunks(n_chunks);
    return (n_chunks + g - 1) / g;
}

/* Leaves [*first, *last) of `rank`: contiguous ranges whose lengths differ by at most one. */
static void leaf_range(int64_t leaves, int rank, int size, int64_t *first, int64_t *last)
{
    *first = leaves * rank / size;
    *last = leaves * (rank + 1) / size;
}

void reduce_chunk_range(int64_t n_chunks, int rank, int size, int64_t *first, int64_t *last)
{
    const int64_t g = reduce_leaf_chunks(n_chunks);
    leaf_range(leaf_count(n_chunks), rank, size, first, last);
    *first = *first * g < n_chunks ? *first * g : n_chunks;
    *last = *last * g < n_chunks ? *last * g : n_chunks;
}

static void recv_doubles(MPI_Comm comm, int source, double *x, int64_t len)
{
    for (int64_t off = 0; off < len; off += PIECE) {
        int count = (int)(len - off < PIECE ? len - off : PIECE);
        TF_MPI_CHECK(
            MPI_Recv(x + off, count, MPI_DOUBLE, source, TAG_DATA, comm, MPI_STATUS_IGNORE));
    }
}

/* Segment [*lo, *hi) of the len values that rank `owner` of `size` adds up. */
static void segment(int64_t len, int owner, int size, int64_t *lo, int64_t *hi)
{
    *lo = len * owner / size;
    *hi = len * (owner + 1) / size;
}

static int64_t pieces(int64_t len)
{
    return (len + PIECE - 1) / PIECE;
}

/* Starts sending, to every other rank o, this rank's node list and the o-th segment of
 * each node. head is the list ([count, start, level, ...]). It and the nodes must stay
 * unchanged until the requests complete. Returns the number of requests. */
static int start_sends(MPI_Comm comm, int rank, int size, const node_stack *local, int64_t len,
                       const int64_t *head, MPI_Request *req)
{
    int n = 0;
    for (int o = 0; o < size; o++) {
        if (o == rank) continue;
        TF_MPI_CHECK(MPI_Isend(head, 1 + 2 * STACK_MAX, MPI_INT64_T, o, TAG_NODE, comm, &req[n++]));
        int64_t lo, hi;
        segment(len, o, size, &lo, &hi);
        for (int i = 0; i < local->count; i++)
            for (int64_t off = lo; off < hi; off += PIECE) {
                int count = (int)(hi - off < PIECE ? hi - off : PIECE);
                TF_MPI_CHECK(MPI_Isend(local->node[i].data + off, count, MPI_DOUBLE, o, TAG_DATA,
                                       comm, &req[n++]));
            }
    }
    return n;
}

/* Pushes a copy of one node (or of a received one in *incoming) onto the segment stack.
 * After a failure nothing is pushed, so that the caller can go on receiving. */
static tf_status push_copy(node_stack *seg, int64_t start, int64_t level, double **incoming)
{
    double *next = stack_buffer(seg);
    if (!next) return TF_ERR_NOMEM;
    tf_status st = stack_push(seg, start, level, *incoming);
    if (st == TF_OK)
        *incoming = next;
    else
        stack_recycle(seg, next);
    return st;
}

/* Receives, from every rank in rank order (which is leaf order), its nodes' values in
 * this rank's segment [lo, hi), and pushes them onto seg. This rank's own nodes are copied
 * in at their place. After a failure the rest is still received, so that no sender blocks
 * forever. */
static tf_status gather_segment(MPI_Comm comm, int rank, int size, const node_stack *local,
                                int64_t lo, int64_t hi, node_stack *seg, double **incoming)
{
    tf_status st = TF_OK;
    int64_t head[1 + 2 * STACK_MAX];
    for (int q = 0; q < size; q++) {
        if (q == rank) {
            for (int i = 0; st == TF_OK && i < local->count; i++) {
                memcpy(*incoming, local->node[i].data + lo, (size_t)(hi - lo) * sizeof(double));
                st = push_copy(seg, local->node[i].start, local->node[i].level, incoming);
            }
            continue;
        }
        TF_MPI_CHECK(
            MPI_Recv(head, 1 + 2 * STACK_MAX, MPI_INT64_T, q, TAG_NODE, comm, MPI_STATUS_IGNORE));
        for (int64_t i = 0; i < head[0]; i++) {
            recv_doubles(comm, q, *incoming, hi - lo);
            if (st == TF_OK) st = push_copy(seg, head[1 + 2 * i], head[2 + 2 * i], incoming);
        }
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

/* Fills this rank's leaves [first, last) in order and pushes each: leaf k is the sum of
 * chunks [k g, (k + 1) g) added into one zeroed buffer in chunk order. */
static tf_status fill_local(node_stack *s, int64_t first, int64_t last, int64_t g, int64_t n_chunks,
                            int64_t len, reduce_fill_fn fill, void *ctx)
{
    for (int64_t k = first; k < last; k++) {
        double *data = stack_buffer(s);
        if (!data) return TF_ERR_NOMEM;
        memset(data, 0, (size_t)s->len * sizeof(double));
        tf_status st = TF_OK;
        for (int64_t c = k * g; st == TF_OK && c < (k + 1) * g && c < n_chunks; c++)
            st = fill(c, data, len, ctx);
        if (st == TF_OK) st = stack_push(s, k, 0, data);
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
    int64_t lo, hi, first, last;
    const int64_t leaves = leaf_count(n_chunks);
    segment(len, rank, size, &lo, &hi);
    leaf_range(leaves, rank, size, &first, &last);
    node_stack *local = tf_calloc(1, sizeof *local), *seg = tf_calloc(1, sizeof *seg);
    tf_status st = local && seg ? TF_OK : TF_ERR_NOMEM;
    double *incoming = NULL;
    if (st == TF_OK) {
        local->n_leaves = seg->n_leaves = leaves;
        local->len = len > 0 ? len : 1;
        seg->len = hi > lo ? hi - lo : 1;
        if (size > 1 && !(incoming = stack_buffer(seg))) st = TF_ERR_NOMEM;
    }

    /* Step 1: this rank's leaves into the largest complete nodes of its range. */
    if (st == TF_OK)
        st = fill_local(local, first, last, reduce_leaf_chunks(n_chunks), n_chunks, len, fill, ctx);
    st = agree(comm, st);

    /* Step 2: rank o adds up segment o of the result: it receives that segment of every
     * rank's nodes, in rank order, and merges them on the same tree. */
    if (st == TF_OK && size > 1) {
        int64_t head[1 + 2 * STACK_MAX] = {local->count};
        for (int i = 0; i < local->count; i++) {
            head[1 + 2 * i] = local->node[i].start;
            head[2 + 2 * i] = local->node[i].level;
        }
        int64_t n_req = 0;
        for (int o = 0; o < size; o++) {
            int64_t olo, ohi;
            segment(len, o, size, &olo, &ohi);
            if (o != rank) n_req += 1 + local->count * pieces(ohi - olo);
        }
        MPI_Request *req = tf_malloc((size_t)n_req * sizeof *req);
        /* NOTE: the other ranks are already waiting for this rank's nodes, so a failed
         * allocation of the request list cannot be reported. It ends the job in MPI. */
        if (!req) tf_mpi_fail(MPI_ERR_NO_MEM, "reduction requests", __FILE__, __LINE__);
        int n = start_sends(comm, rank, size, local, len, head, req);
        st = gather_segment(comm, rank, size, local, lo, hi, seg, &incoming);
        TF_MPI_CHECK(MPI_Waitall(n, req, MPI_STATUSES_IGNORE));
        free(req);
    }
    /* On one rank the local nodes cover every leaf and the segment is everything. */
    node_stack *sums = size > 1 ? seg : local;
    if (st == TF_OK) st = stack_finish(sums);
    st = agree(comm, st);

    /* Step 3: every rank's segment to every rank. */
    if (st == TF_OK && hi > lo) {
        if (sums->count == 1)
            memcpy(result + lo, sums->node[0].data, (size_t)(hi - lo) * sizeof(double));
        else
            memset(result + lo, 0, (size_t)(hi - lo) * sizeof(double));
    }
    for (int o = 0; st == TF_OK && size > 1 && o < size; o++) {
        int64_t olo, ohi;
        segment(len, o, size, &olo, &ohi);
        for (int64_t off = olo; off < ohi; off += PIECE) {
            int count = (int)(ohi - off < PIECE ? ohi - off : PIECE);
            TF_MPI_CHECK(MPI_Bcast(result + off, count, MPI_DOUBLE, o, comm));
        }
    }
    free(incoming);
    if (local) stack_free(local);
    if (seg) stack_free(seg);
    free(local);
    free(seg);
    return st;
}
