/* Transport maps for ViT fusion: calibration statistics, one OT problem per group of
 * neurons, and the residual-stream policies. */
#include "fuse_internal.h"
#include "tfuse/ot.h"
#include "tfuse/reduce.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

fuse_options fuse_options_default(void)
{
    fuse_options o;
    memset(&o, 0, sizeof o);
    o.cost = FUSE_COST_ACTIVATION;
    o.solver = o.solver_attn = o.solver_mlp = o.solver_stream = FUSE_SOLVER_EXACT;
    o.epsilon = 0.08;
    o.residual = FUSE_RESIDUAL_JOINT;
    o.attention = FUSE_ATTN_SHARED_QK;
    o.tokens = FUSE_TOKENS_ALL;
    o.window = 2;
    o.zscore = 1;
    o.distance = FUSE_DIST_EUCLIDEAN;
    o.norm = FUSE_NORM_MAX;
    o.repair = FUSE_REPAIR_NONE;
    o.stream_features = FUSE_STREAM_RESIDUAL;
    return o;
}

static void free_list(double **list, int n)
{
    if (!list) return;
    for (int i = 0; i < n; i++) free(list[i]);
    free(list);
}

void fuse_maps_free(fuse_maps **maps)
{
    if (!maps || !*maps) return;
    fuse_maps *m = *maps;
    free(m->stream0);
    free(m->patch);
    free(m->pos);
    free_list(m->attn_out, m->layers);
    free_list(m->stream1, m->layers);
    free_list(m->mlp_out, m->layers);
    free_list(m->stream2, m->layers);
    free_list(m->qk, m->layers);
    free_list(m->v, m->layers);
    free_list(m->fc1, m->layers);
    free(m);
    *maps = NULL;
}

fuse_maps *fuse_maps_create(int layers)
{
    fuse_maps *m = tf_calloc(1, sizeof *m);
    if (!m) return NULL;
    m->layers = layers;
    double ***lists[] = {&m->attn_out, &m->stream1, &m->mlp_out, &m->stream2,
                         &m->qk,       &m->v,       &m->fc1};
    for (size_t i = 0; i < sizeof lists / sizeof *lists; i++) {
        *lists[i] = tf_calloc((size_t)layers, sizeof(double *));
        if (!*lists[i]) {
            fuse_maps_free(&m);
            return NULL;
        }
    }
    return m;
}

tf_status fuse_maps_create_all(MPI_Comm comm, int n, int anchor, int layers, fuse_maps ***out)
{
    fuse_maps **maps = tf_calloc((size_t)n, sizeof *maps);
    tf_status st = maps ? TF_OK : TF_ERR_NOMEM;
    for (int p = 0; st == TF_OK && p < n; p++) {
        if (p == anchor) continue;
        maps[p] = fuse_maps_create(layers);
        if (!maps[p]) st = TF_ERR_NOMEM;
    }
    *out = maps;
    return fuse_agree(comm, st, "allocating the maps");
}

void fuse_maps_free_all(fuse_maps ***maps, int n)
{
    if (!maps || !*maps) return;
    for (int p = 0; p < n; p++) fuse_maps_free(&(*maps)[p]);
    free(*maps);
    *maps = NULL;
}

/* Token indices whose activations are samples: all T tokens, the class token only, or the
 * class token plus the central k x k window of the patch grid. Returns the count. */
static int select_tokens(const vit_config *c, const fuse_options *opt, int *tokens)
{
    const int T = vit_tokens(c), grid = c->image_size / c->patch;
    if (opt->tokens == FUSE_TOKENS_ALL) {
        for (int t = 0; t < T; t++) tokens[t] = t;
        return T;
    }
    tokens[0] = 0;
    if (opt->tokens == FUSE_TOKENS_CLS) return 1;
    int k = opt->window < grid ? opt->window : grid, first = (grid - k) / 2, count = 1;
    for (int r = first; r < first + k; r++)
        for (int col = first; col < first + k; col++) tokens[count++] = 1 + r * grid + col;
    return count;
}

/* While fuse_solve_units runs the units of a process group, Sinkhorn problems go to
 * ot_sinkhorn_solve_auto on the group's communicator; otherwise comm is MPI_COMM_NULL.
 * Before each problem that the group solves together, its ranks agree that none of them
 * has failed (group_agree), so that a rank that failed on its own, e.g. out of memory
 * while building a cost, does not leave the others waiting inside the solver. */
static struct {
    MPI_Comm comm;
    int size;          /* ranks in comm */
    int64_t threshold; /* n * m from which the group solves a problem together */
    int stopped;       /* 1 once an agreement did not return GROUP_SOLVE: none follows */
} dist_solve = {MPI_COMM_NULL, 1, 0, 0};

/* Next step of a rank of a process group, as stated in group_agree. */
enum group_state {
    GROUP_SOLVE, /* enter the next problem solved together */
    GROUP_DONE,  /* finished every unit of the group */
    GROUP_FAILED /* failed on its own and stops */
};

/* Collective on dist_solve.comm: every rank states what it does next. Returns the common
 * state, or GROUP_FAILED if a rank failed or the ranks disagree, which means that the group
 * stops. The ranks make one agreement per problem solved together and one at the end, so
 * that every rank takes part in the same number of them. */
static enum group_state group_agree(enum group_state mine)
{
    int state[2] = {(int)mine, -(int)mine}; /* max and -min over the group */
    TF_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, state, 2, MPI_INT, MPI_MAX, dist_solve.comm));
    enum group_state all = state[0] == -state[1] ? (enum group_state)state[0] : GROUP_FAILED;
    if (all != GROUP_SOLVE) dist_solve.stopped = 1;
    return all;
}

/* Solves one OT problem with uniform marginals; the plan has total mass 1. */
tf_status fuse_solve_plan(const double *cost, int n, int m, enum fuse_solver solver, double epsilon,
                          const char *what, double *plan)
{
    ot_info info;
    tf_status st;
    const int together = dist_solve.comm != MPI_COMM_NULL && dist_solve.size > 1 &&
                         (int64_t)n * m >= dist_solve.threshold;
    if (solver == FUSE_SOLVER_EXACT) {
        st = ot_emd_solve(n, m, cost, NULL, NULL, plan, &info);
    } else {
        ot_sinkhorn_options so = ot_sinkhorn_defaults(epsilon);
        if (together && (dist_solve.stopped || group_agree(GROUP_SOLVE) != GROUP_SOLVE))
            return tf_error_set(TF_ERR_MPI,
                                "OT for %s (%d x %d) was not started because "
                                "another rank of the process group failed",
                                what, n, m);
        if (together)
            st = ot_sinkhorn_solve_auto(dist_solve.comm, dist_solve.threshold, n, m, cost, NULL,
                                        NULL, &so, plan, &info);
        else
            st = ot_sinkhorn_solve(n, m, cost, NULL, NULL, &so, plan, &info);
        if (st == TF_ERR_NOT_CONVERGED) {
            TF_WARN("Sinkhorn for %s (%d x %d, epsilon %g) stopped at the iteration cap with "
                    "marginal error %.3g; using its plan",
                    what, n, m, epsilon, info.marginal_error);
            st = TF_OK;
        }
    }
    if (st != TF_OK)
        return tf_error_set(st, "OT for %s (%d x %d) failed: %s", what, n, m, tf_error_get());
    TF_DEBUG("%s: %d x %d, objective %.6g, %lld iterations", what, n, m, info.objective,
             (long long)info.iterations);
    return TF_OK;
}

/* Builds the cost from the listed blocks and solves it into a new (n, m) plan. */
static tf_status map_from_blocks(const fuse_stats *stats, const int *blocks, int n_blocks,
                                 const fuse_options *opt, enum fuse_solver solver, const char *what,
                                 double **out)
{
    const int n = stats->block[blocks[0]].n, m = stats->block[blocks[0]].m;
    double *cost = tf_malloc((size_t)n * m * sizeof(double));
    double *plan = tf_malloc((size_t)n * m * sizeof(double));
    tf_status st = cost && plan ? TF_OK : TF_ERR_NOMEM;
    if (st == TF_OK) st = fuse_stats_cost(stats, blocks, n_blocks, opt, cost);
    if (st == TF_OK) st = fuse_solve_plan(cost, n, m, solver, opt->epsilon, what, plan);
    free(cost);
    if (st != TF_OK) {
        free(plan);
        return st;
    }
    *out = plan;
    return TF_OK;
}

/* Map of the position embeddings: each of the d dimensions is a point in R^T (a column
 * of pos), compared by Euclidean distance; depends on weights only. */
tf_status fuse_position_map(const fuse_view *parent, const fuse_view *anchor,
                            const fuse_options *opt, double **out)
{
    const int n = parent->cfg.d, m = anchor->cfg.d, T = anchor->pos_rows;
    const float *pp = parent->pos, *pa = anchor->pos;
    double *cost = tf_malloc((size_t)n * m * sizeof(double));
    double *plan = tf_malloc((size_t)n * m * sizeof(double));
    tf_status st = cost && plan ? TF_OK : TF_ERR_NOMEM;
    for (int i = 0; st == TF_OK && i < n; i++)
        for (int j = 0; j < m; j++) {
            double d2 = 0;
            for (int t = 0; t < T; t++) {
                double diff = (double)pp[(int64_t)t * n + i] - (double)pa[(int64_t)t * m + j];
                d2 += diff * diff;
            }
            cost[(int64_t)i * m + j] = sqrt(d2);
        }
    if (st == TF_OK) {
        fuse_cost_normalize(cost, (int64_t)n * m, opt->norm);
        st = fuse_solve_plan(cost, n, m, opt->solver_stream, opt->epsilon, "position embedding",
                             plan);
    }
    free(cost);
    if (st != TF_OK) {
        free(plan);
        return st;
    }
    *out = plan;
    return TF_OK;
}

/* Plan of a residual join from the skip's and the branch's plans by the policy. */
double *fuse_join_plans(const double *skip, const double *branch, int64_t count,
                        const fuse_options *opt, double branch_weight)
{
    double *out = tf_malloc((size_t)count * sizeof(double));
    if (!out) return NULL;
    double w = 0.5;
    if (opt->residual == FUSE_RESIDUAL_WEIGHTED) w = branch_weight;
    if (opt->residual == FUSE_RESIDUAL_SKIP) w = 0.0;
    if (opt->residual == FUSE_RESIDUAL_BRANCH) w = 1.0;
    for (int64_t i = 0; i < count; i++) out[i] = (1.0 - w) * skip[i] + w * branch[i];
    return out;
}

static double *copy_plan(const double *plan, int64_t count)
{
    double *out = tf_malloc((size_t)count * sizeof(double));
    if (out) memcpy(out, plan, (size_t)count * sizeof(double));
    return out;
}

static double *identity_plan(int n)
{
    double *out = tf_calloc((size_t)n * n, sizeof(double));
    if (out)
        for (int i = 0; i < n; i++) out[(int64_t)i * n + i] = 1.0 / n;
    return out;
}

/* Weight of the branch at a join for the "weighted" policy: its share of the RMS
 * activation in the anchor. */
static double branch_share(const fuse_stats *stats, int skip_block, int branch_block)
{
    double s = fuse_stats_anchor_rms(stats, skip_block);
    double b = fuse_stats_anchor_rms(stats, branch_block);
    return s + b > 0 ? b / (s + b) : 0.5;
}

/* Stream maps under one joint map: every stream map is the same plan. */
static tf_status stream_maps_joint(const fuse_stats *stats, const fuse_options *opt,
                                   fuse_maps *maps, int d_p, int d_a)
{
    const int L = maps->layers;
    int *blocks = tf_malloc(sizeof(int) * (size_t)(4 * L + 1));
    if (!blocks) return TF_ERR_NOMEM;
    int count = 0;
    if (opt->stream_features != FUSE_STREAM_NORMALIZED) {
        blocks[count++] = BLOCK_X0;
        for (int l = 0; l < L; l++) {
            blocks[count++] = fuse_layer_block(l, BLOCK_RES1);
            blocks[count++] = fuse_layer_block(l, BLOCK_RES2);
        }
    }
    if (opt->stream_features != FUSE_STREAM_RESIDUAL) {
        for (int l = 0; l < L; l++) {
            blocks[count++] = fuse_layer_block(l, BLOCK_LN1);
            blocks[count++] = fuse_layer_block(l, BLOCK_LN2);
        }
    }
    double *plan = NULL;
    tf_status st = map_from_blocks(stats, blocks, count, opt, opt->solver_stream,
                                   "residual stream (joint)", &plan);
    free(blocks);
    if (st != TF_OK) return st;
    const int64_t size = (int64_t)d_p * d_a;
    maps->stream0 = plan;
    for (int l = 0; l < L; l++) {
        maps->attn_out[l] = copy_plan(plan, size);
        maps->stream1[l] = copy_plan(plan, size);
        maps->mlp_out[l] = copy_plan(plan, size);
        maps->stream2[l] = copy_plan(plan, size);
        if (!maps->attn_out[l] || !maps->stream1[l] || !maps->mlp_out[l] || !maps->stream2[l])
            return TF_ERR_NOMEM;
    }
    return TF_OK;
}

/* Stream maps with one map per join, combined by the residual policy. */
static tf_status stream_maps_per_join(const fuse_stats *stats, const fuse_view *parent,
                                      const fuse_view *anchor, const fuse_options *opt,
                                      fuse_maps *maps)
{
    const int L = maps->layers, d_p = parent->cfg.d, d_a = anchor->cfg.d;
    const int64_t size = (int64_t)d_p * d_a;
    char what[96];
    int block;
    tf_status st;

    if (opt->residual == FUSE_RESIDUAL_IDENTITY) {
        if (d_p != d_a)
            return tf_error_set(TF_ERR_ARG,
                                "residual policy \"identity\" needs equal model "
                                "widths, but the parent has d = %d and the anchor d = %d",
                                d_p, d_a);
        maps->stream0 = identity_plan(d_a);
        maps->patch = identity_plan(d_a);
        maps->pos = identity_plan(d_a);
        for (int l = 0; l < L; l++) {
            maps->attn_out[l] = identity_plan(d_a);
            maps->stream1[l] = identity_plan(d_a);
            maps->mlp_out[l] = identity_plan(d_a);
            maps->stream2[l] = identity_plan(d_a);
        }
        return TF_OK;
    }

    /* The embedding join: position embeddings are the skip, patch embeddings the branch. */
    block = BLOCK_PATCH;
    st =
        map_from_blocks(stats, &block, 1, opt, opt->solver_stream, "patch embedding", &maps->patch);
    if (st == TF_OK) st = fuse_position_map(parent, anchor, opt, &maps->pos);
    if (st != TF_OK) return st;
    maps->stream0 = fuse_join_plans(maps->pos, maps->patch, size, opt,
                                    branch_share(stats, BLOCK_X0, BLOCK_PATCH));
    const double *stream = maps->stream0;
    for (int l = 0; l < L; l++) {
        int skip_block = l == 0 ? BLOCK_X0 : fuse_layer_block(l - 1, BLOCK_RES2);
        block = fuse_layer_block(l, BLOCK_ATTN_OUT);
        snprintf(what, sizeof what, "layer %d attention output", l);
        st = map_from_blocks(stats, &block, 1, opt, opt->solver_stream, what, &maps->attn_out[l]);
        if (st != TF_OK) return st;
        maps->stream1[l] = fuse_join_plans(stream, maps->attn_out[l], size, opt,
                                           branch_share(stats, skip_block, block));
        block = fuse_layer_block(l, BLOCK_MLP_OUT);
        snprintf(what, sizeof what, "layer %d MLP output", l);
        st = map_from_blocks(stats, &block, 1, opt, opt->solver_stream, what, &maps->mlp_out[l]);
        if (st != TF_OK || !maps->stream1[l]) return st != TF_OK ? st : TF_ERR_NOMEM;
        maps->stream2[l] =
            fuse_join_plans(maps->stream1[l], maps->mlp_out[l], size, opt,
                            branch_share(stats, fuse_layer_block(l, BLOCK_RES1), block));
        if (!maps->stream2[l]) return TF_ERR_NOMEM;
        stream = maps->stream2[l];
    }
    return TF_OK;
}

/* Maps inside layer l: the MLP hidden layer and, unless head-aware maps replace them, the
 * shared Q/K map and the V map. */
static tf_status layer_maps(const fuse_stats *stats, const fuse_options *opt, fuse_maps *maps,
                            int l)
{
    char what[96];
    int fc1 = fuse_layer_block(l, BLOCK_FC1);
    tf_status st;
    snprintf(what, sizeof what, "layer %d MLP hidden", l);
    st = map_from_blocks(stats, &fc1, 1, opt, opt->solver_mlp, what, &maps->fc1[l]);
    if (st != TF_OK) return st;
    if (opt->attention == FUSE_ATTN_HEAD_AWARE) return TF_OK;
    int qk[2] = {fuse_layer_block(l, BLOCK_Q), fuse_layer_block(l, BLOCK_K)};
    int v = fuse_layer_block(l, BLOCK_V);
    snprintf(what, sizeof what, "layer %d Q/K", l);
    st = map_from_blocks(stats, qk, 2, opt, opt->solver_attn, what, &maps->qk[l]);
    if (st != TF_OK) return st;
    snprintf(what, sizeof what, "layer %d V", l);
    return map_from_blocks(stats, &v, 1, opt, opt->solver_attn, what, &maps->v[l]);
}

tf_status fuse_head_aware_maps(const fuse_stats *stats, const fuse_view *parent,
                               const fuse_view *anchor, const fuse_options *opt, fuse_maps *maps,
                               int layer);

/* Calibration images per chunk of the reproducible reduction. Fixed, so that the sums do
 * not depend on the number of ranks. */
#define FUSE_CHUNK_IMAGES 32

/* State of the chunk callback of accumulate_stats. */
typedef struct {
    vit_model *const *parents;
    int n_parents, anchor;
    const float *images;
    int64_t n_images;
    int image_len, n_tokens;
    const int *tokens;
    vit_acts **acts;          /* [n_parents] forward buffers for one chunk */
    fuse_stats **stats;       /* [n_parents] scratch sums of one chunk (NULL at the anchor) */
    double t_forward, t_sums; /* seconds spent in forward passes and in the sums */
} stats_chunk_ctx;

/* Statistics of one chunk of calibration images: a forward pass of every parent, then the
 * sums of each non-anchor parent against the anchor, written to buffer parent by parent
 * as [sums (buffer_len), samples]. */
static tf_status stats_chunk_fill(int64_t chunk, double *buffer, int64_t len, void *ctx)
{
    stats_chunk_ctx *c = ctx;
    const int64_t start = chunk * FUSE_CHUNK_IMAGES;
    const int B =
        (int)(c->n_images - start < FUSE_CHUNK_IMAGES ? c->n_images - start : FUSE_CHUNK_IMAGES);
    const float *x = c->images + start * c->image_len;
    tf_status st = TF_OK;
    double t0 = tf_seconds();
    for (int p = 0; st == TF_OK && p < c->n_parents; p++)
        st = vit_forward(c->parents[p], c->acts[p], x, NULL, B, NULL);
    double t1 = tf_seconds();
    c->t_forward += t1 - t0;
    int64_t off = 0;
    for (int p = 0; st == TF_OK && p < c->n_parents; p++) {
        fuse_stats *s = c->stats[p];
        if (p == c->anchor) continue;
        /* The reduction hands over a zeroed buffer: accumulate straight into it. */
        double *own = fuse_stats_bind(s, buffer + off);
        s->samples = 0;
        st = fuse_stats_accumulate(s, c->parents[p], c->acts[p], c->parents[c->anchor],
                                   c->acts[c->anchor], c->tokens, c->n_tokens);
        fuse_stats_bind(s, own);
        if (st != TF_OK) break;
        buffer[off + s->buffer_len] += s->samples;
        off += s->buffer_len + 1;
    }
    c->t_sums += tf_seconds() - t1;
    return st == TF_OK && off != len
               ? tf_error_set(TF_ERR_ARG, "stats_chunk_fill: wrote %lld of %lld values",
                              (long long)off, (long long)len)
               : st;
}

int64_t fuse_stats_sums_len(fuse_stats *const *stats, int n_parents, int anchor)
{
    int64_t len = 0;
    for (int p = 0; p < n_parents; p++)
        if (p != anchor) len += stats[p]->buffer_len + 1;
    return len;
}

tf_status fuse_reduce_stats(MPI_Comm comm, tf_status setup, fuse_stats **stats, int n_parents,
                            int anchor, int64_t n_chunks, reduce_fill_fn fill, void *ctx)
{
    const int64_t len = fuse_stats_sums_len(stats, n_parents, anchor);
    double *sums = tf_malloc((size_t)(len > 0 ? len : 1) * sizeof(double));
    tf_status st = setup == TF_OK && !sums ? TF_ERR_NOMEM : setup;

    /* All ranks agree on the setup before the reduction, so that none waits for another. */
    int failed = st != TF_OK, any_failed = 0;
    TF_MPI_CHECK(MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, comm));
    if (st == TF_OK && any_failed)
        st = tf_error_set(TF_ERR_NOMEM, "calibration statistics: setup failed on another rank");
    if (st == TF_OK) st = reduce_chunks_sum(comm, n_chunks, len, fill, ctx, sums);
    int64_t off = 0;
    for (int p = 0; st == TF_OK && p < n_parents; p++) {
        if (p == anchor) continue;
        memcpy(stats[p]->buffer, sums + off, (size_t)stats[p]->buffer_len * sizeof(double));
        stats[p]->samples = sums[off + stats[p]->buffer_len];
        off += stats[p]->buffer_len + 1;
    }
    free(sums);
    return st;
}

/* Collective on comm. Runs the calibration images through all parents, chunk by chunk
 * (each rank takes a contiguous range of chunks), and sums the statistics of every parent
 * against the anchor with reduce_chunks_sum, so the sums are bitwise the same for any
 * number of ranks. */
static tf_status accumulate_stats(MPI_Comm comm, vit_model *const *parents, int n_parents,
                                  int anchor, const float *images, int64_t n_images,
                                  const fuse_options *opt, fuse_stats **stats)
{
    const vit_config *ca = &parents[anchor]->cfg;
    int tokens[4096];
    stats_chunk_ctx ctx = {.parents = parents,
                           .n_parents = n_parents,
                           .anchor = anchor,
                           .images = images,
                           .n_images = n_images,
                           .image_len = ca->channels * ca->image_size * ca->image_size,
                           .n_tokens = select_tokens(ca, opt, tokens),
                           .tokens = tokens,
                           .stats = stats};
    ctx.acts = tf_calloc((size_t)n_parents, sizeof *ctx.acts);
    tf_status st = ctx.acts ? TF_OK : TF_ERR_NOMEM;
    for (int p = 0; st == TF_OK && p < n_parents; p++)
        st = vit_acts_create(&parents[p]->cfg, FUSE_CHUNK_IMAGES, &ctx.acts[p]);
    const int64_t n_chunks = (n_images + FUSE_CHUNK_IMAGES - 1) / FUSE_CHUNK_IMAGES;
    double t0 = tf_seconds();
    st = fuse_reduce_stats(comm, st, stats, n_parents, anchor, n_chunks, stats_chunk_fill, &ctx);
    const double t_reduction = tf_seconds() - t0 - ctx.t_forward - ctx.t_sums;
    TF_INFO("fuse timing: statistics on rank 0: forward passes %.3f s, sums %.3f s, waiting and "
            "reduction %.3f s (%lld values per chunk)",
            ctx.t_forward, ctx.t_sums, t_reduction,
            (long long)fuse_stats_sums_len(stats, n_parents, anchor));
    if (opt->timings) {
        opt->timings->forward += ctx.t_forward;
        opt->timings->sums += ctx.t_sums;
        opt->timings->reduction += t_reduction;
    }
    for (int p = 0; ctx.acts && p < n_parents; p++) vit_acts_free(&ctx.acts[p]);
    free(ctx.acts);
    return st;
}

/* A unit of OT work: the maps of one parent that one function computes. Units are
 * independent, so each can run on any rank or process group. */
enum unit_kind {
    UNIT_STREAM, /* residual stream maps (one joint problem, or one per join) */
    UNIT_LAYER,  /* Q/K, V and MLP hidden maps of one layer */
    UNIT_WEIGHT  /* every weight-based map, solved layer by layer (each needs the last) */
};

typedef struct {
    enum unit_kind kind;
    int parent, layer;
    double work;              /* estimated cost, arbitrary units */
    int64_t largest_sinkhorn; /* n * m of its largest Sinkhorn problem, 0 if none */
    int group;                /* process group that runs it together, or -1: one rank */
    int owner;                /* rank that runs it, or the group's first rank, which
                                 broadcasts its plans */
} ot_unit;

/* Outcome of a unit on the rank that broadcasts it: status and, on failure, the message
 * (owned, freed with the results). */
typedef struct {
    tf_status status;
    char *message;
} unit_result;

/* Estimated cost of one problem: about (n + m) / 2 passes over the cost for the exact
 * solver (the Jonker-Volgenant assignment is O(n^3) at worst), about 300 sweeps for
 * Sinkhorn with epsilon annealing. An estimate for balancing only. */
static double problem_work(int n, int m, enum fuse_solver solver)
{
    double nm = (double)n * m;
    return solver == FUSE_SOLVER_EXACT ? nm * 0.5 * (n + m) : 300.0 * nm;
}

static void unit_add(ot_unit *u, int n, int m, enum fuse_solver solver)
{
    u->work += problem_work(n, m, solver);
    if (solver == FUSE_SOLVER_SINKHORN && (int64_t)n * m > u->largest_sinkhorn)
        u->largest_sinkhorn = (int64_t)n * m;
}

/* Fills the estimate of a unit from the problems it solves. */
static void unit_estimate(ot_unit *u, const vit_config *cp, const vit_config *ca,
                          const fuse_options *opt)
{
    const int dp = cp->d, da = ca->d, h = ca->heads;
    u->work = 1.0;
    u->largest_sinkhorn = 0;
    if (u->kind != UNIT_LAYER) {
        if (opt->residual == FUSE_RESIDUAL_JOINT && opt->cost == FUSE_COST_ACTIVATION)
            unit_add(u, dp, da, opt->solver_stream);
        else if (opt->residual != FUSE_RESIDUAL_IDENTITY)
            for (int k = 0; k < 2 + 2 * ca->layers; k++) unit_add(u, dp, da, opt->solver_stream);
    }
    const int first = u->kind == UNIT_LAYER ? u->layer : 0;
    const int last = u->kind == UNIT_STREAM ? 0 : u->kind == UNIT_LAYER ? u->layer + 1 : ca->layers;
    for (int l = first; l < last; l++) {
        unit_add(u, cp->mlp, ca->mlp, opt->solver_mlp);
        if (opt->attention == FUSE_ATTN_HEAD_AWARE) {
            /* 2 h^2 inner problems, never distributed, and one h x h assignment. */
            u->work += 2.0 * h * h * problem_work(dp / h, da / h, opt->solver_attn);
            u->work += problem_work(h, h, FUSE_SOLVER_EXACT);
        } else {
            unit_add(u, dp, da, opt->solver_attn);
            unit_add(u, dp, da, opt->solver_attn);
        }
    }
}

int fuse_group_ranks(int requested, int size)
{
    return requested >= 1 && requested <= size ? requested : size;
}

/* Indices of work (count) in order of decreasing work; ties keep index order. */
static void order_by_work(const double *work, int count, int *order)
{
    for (int i = 0; i < count; i++) {
        int j = i;
        for (; j > 0 && work[order[j - 1]] < work[i]; j--) order[j] = order[j - 1];
        order[j] = i;
    }
}

/* Index of the smallest of load (n), the lowest on ties. */
static int least_loaded(const double *load, int n)
{
    int best = 0;
    for (int k = 1; k < n; k++) best = load[k] < load[best] ? k : best;
    return best;
}

tf_status fuse_schedule_units(int count, const double *work, const int *large, int size,
                              int group_ranks, int *group, int *owner)
{
    if (count < 0 || size < 1 || group_ranks < 1 || group_ranks > size)
        return tf_error_set(TF_ERR_ARG,
                            "fuse_schedule_units: invalid count %d, size %d or group_ranks %d; "
                            "need count >= 0 and 1 <= group_ranks <= size",
                            count, size, group_ranks);
    const int groups = size / group_ranks;
    double *group_load = tf_calloc((size_t)groups, sizeof(double));
    double *rank_load = tf_calloc((size_t)size, sizeof(double));
    int *order = tf_malloc((size_t)(count > 0 ? count : 1) * sizeof(int));
    tf_status st = group_load && rank_load && order ? TF_OK : TF_ERR_NOMEM;
    if (st != TF_OK) goto done;
    order_by_work(work, count, order);

    /* Large units, largest first, each to the group with the least work. */
    for (int k = 0; k < count; k++) {
        const int i = order[k];
        if (!large[i]) continue;
        group[i] = least_loaded(group_load, groups);
        owner[i] = group[i] * group_ranks;
        group_load[group[i]] += work[i];
    }

    /* Each rank of a group carries an equal share of its group's work; the ranks past
     * the last full group carry none. Small units then go to the least loaded rank. */
    for (int r = 0; r < groups * group_ranks; r++)
        rank_load[r] = group_load[r / group_ranks] / group_ranks;
    for (int k = 0; k < count; k++) {
        const int i = order[k];
        if (large[i]) continue;
        group[i] = -1;
        owner[i] = least_loaded(rank_load, size);
        rank_load[owner[i]] += work[i];
    }

done:
    free(group_load);
    free(rank_load);
    free(order);
    return st;
}

/* Lists the units of every non-anchor parent and schedules them with fuse_schedule_units:
 * units with a Sinkhorn problem of at least opt->ot_dist_threshold entries go to process
 * groups of group_ranks ranks. Every rank computes the same list. Returns the count, or
 * -1 on failure (message set). */
static int units_plan(const fuse_view *views, int n_parents, int anchor, const fuse_options *opt,
                      int size, int group_ranks, ot_unit **out)
{
    const int L = views[anchor].cfg.layers;
    const int per_parent = opt->cost == FUSE_COST_WEIGHT ? 1 : 1 + L;
    const int64_t total = (int64_t)(n_parents > 1 ? n_parents - 1 : 0) * per_parent;
    const size_t len = (size_t)(total > 0 ? total : 1);
    ot_unit *u = tf_calloc(len, sizeof *u);
    double *work = tf_malloc(len * sizeof(double));
    int *large = tf_malloc(len * sizeof(int)), *group = tf_malloc(len * sizeof(int));
    int *owner = tf_malloc(len * sizeof(int));
    int count = 0;
    tf_status st = u && work && large && group && owner ? TF_OK : TF_ERR_NOMEM;
    for (int p = 0; st == TF_OK && p < n_parents; p++) {
        if (p == anchor) continue;
        for (int k = 0; k < per_parent; k++) {
            ot_unit *x = &u[count];
            x->parent = p;
            x->kind = opt->cost == FUSE_COST_WEIGHT ? UNIT_WEIGHT
                      : k == 0                      ? UNIT_STREAM
                                                    : UNIT_LAYER;
            x->layer = k - 1;
            unit_estimate(x, &views[p].cfg, &views[anchor].cfg, opt);
            work[count] = x->work;
            large[count] =
                opt->ot_dist_threshold > 0 && x->largest_sinkhorn >= opt->ot_dist_threshold;
            count++;
        }
    }
    if (st == TF_OK) st = fuse_schedule_units(count, work, large, size, group_ranks, group, owner);
    for (int i = 0; st == TF_OK && i < count; i++) {
        u[i].group = group[i];
        u[i].owner = owner[i];
    }
    free(work);
    free(large);
    free(group);
    free(owner);
    if (st != TF_OK) {
        free(u);
        return -1;
    }
    *out = u;
    return count;
}

static tf_status unit_run(const ot_unit *u, const fuse_view *views, int anchor, fuse_stats **stats,
                          const fuse_options *opt, fuse_maps **maps)
{
    const int p = u->parent;
    const fuse_view *parent = &views[p], *anchor_model = &views[anchor];
    tf_status st = TF_OK;
    if (u->kind == UNIT_WEIGHT) {
        if (!parent->vit || !anchor_model->vit)
            return tf_error_set(TF_ERR_ARG, "weight-based costs are implemented for ViT models "
                                            "only; use \"cost\": \"activation\"");
        return fuse_weight_maps(parent->vit, anchor_model->vit, opt, maps[p]);
    }
    if (u->kind == UNIT_STREAM) {
        if (opt->residual == FUSE_RESIDUAL_JOINT)
            return stream_maps_joint(stats[p], opt, maps[p], parent->cfg.d, anchor_model->cfg.d);
        return stream_maps_per_join(stats[p], parent, anchor_model, opt, maps[p]);
    }
    st = layer_maps(stats[p], opt, maps[p], u->layer);
    if (st == TF_OK && opt->attention == FUSE_ATTN_HEAD_AWARE)
        st = fuse_head_aware_maps(stats[p], parent, anchor_model, opt, maps[p], u->layer);
    return st;
}

/* The plan slots a unit writes, with their element counts. Returns the count (at most
 * 3 + 7 L). */
static int unit_slots(const ot_unit *u, fuse_maps *m, const vit_config *cp, const vit_config *ca,
                      double **slot[], int64_t counts[])
{
    const int64_t dd = (int64_t)cp->d * ca->d, ff = (int64_t)cp->mlp * ca->mlp;
    int k = 0;
#define SLOT(ptr, size) (slot[k] = &(ptr), counts[k++] = (size))
    if (u->kind != UNIT_LAYER) {
        SLOT(m->stream0, dd);
        SLOT(m->patch, dd);
        SLOT(m->pos, dd);
        for (int l = 0; l < m->layers; l++) {
            SLOT(m->attn_out[l], dd);
            SLOT(m->stream1[l], dd);
            SLOT(m->mlp_out[l], dd);
            SLOT(m->stream2[l], dd);
        }
    }
    for (int l = 0; l < m->layers; l++) {
        if (u->kind == UNIT_STREAM || (u->kind == UNIT_LAYER && l != u->layer)) continue;
        SLOT(m->qk[l], dd);
        SLOT(m->v[l], dd);
        SLOT(m->fc1[l], ff);
    }
#undef SLOT
    return k;
}

/* Stores a unit's status and, on failure, the current error message prefixed by origin,
 * the rank or group that failed (e.g. "rank 3"). Returns status. */
static tf_status result_set(unit_result *r, tf_status status, const char *origin)
{
    r->status = status;
    if (status == TF_OK) return status;
    char message[512];
    snprintf(message, sizeof message, "%s: %s", origin, tf_error_get());
    free(r->message);
    r->message = tf_malloc(strlen(message) + 1);
    if (r->message) memcpy(r->message, message, strlen(message) + 1);
    return status;
}

static void results_free(unit_result *results, int count)
{
    for (int i = 0; results && i < count; i++) free(results[i].message);
    free(results);
}

/* Collective: the owner of a unit sends its status, its message and every plan it wrote
 * to all ranks. */
static tf_status unit_broadcast(MPI_Comm comm, int rank, const ot_unit *u,
                                const unit_result *result, fuse_maps *m, const vit_config *cp,
                                const vit_config *ca)
{
    double **slot[3 + 7 * 64];
    int64_t counts[3 + 7 * 64];
    int head[1 + 3 + 7 * 64];
    char message[512];
    const int n = unit_slots(u, m, cp, ca, slot, counts);
    head[0] = (int)result->status;
    for (int k = 0; k < n; k++) head[1 + k] = *slot[k] != NULL;
    snprintf(message, sizeof message, "%s",
             result->status == TF_OK ? ""
             : result->message       ? result->message
                                     : "failed, and the message could not be stored");
    TF_MPI_CHECK(MPI_Bcast(head, 1 + n, MPI_INT, u->owner, comm));
    TF_MPI_CHECK(MPI_Bcast(message, sizeof message, MPI_CHAR, u->owner, comm));
    if (head[0] != TF_OK) return tf_error_set((tf_status)head[0], "%s", message);
    for (int k = 0; k < n; k++) {
        if (!head[1 + k]) continue;
        if (counts[k] > INT32_MAX)
            return tf_error_set(TF_ERR_ARG, "a plan of %lld values is too large for MPI_Bcast",
                                (long long)counts[k]);
        if (rank != u->owner && !*slot[k]) *slot[k] = tf_malloc((size_t)counts[k] * 8);
        /* NOTE: an allocation failure here aborts in MPI, since the broadcast cannot be
         * skipped by one rank alone. */
        if (!*slot[k]) tf_mpi_fail(MPI_ERR_NO_MEM, "plan allocation", __FILE__, __LINE__);
        TF_MPI_CHECK(MPI_Bcast(*slot[k], (int)counts[k], MPI_DOUBLE, u->owner, comm));
    }
    return TF_OK;
}

/* Collective on group, the ranks of process group my_group from world rank first_rank.
 * Runs the group's units in list order, Sinkhorn problems of at least
 * opt->ot_dist_threshold entries on all ranks of the group together, and stores every
 * unit's outcome on every rank of the group. If a rank fails, all stop at their next
 * agreement, and every unit of the group gets the status and message of the lowest rank
 * that failed on its own. Returns the number of units the group ran. */
static int group_run(MPI_Comm group, int my_group, int first_rank, const ot_unit *units, int count,
                     const fuse_view *views, int anchor, fuse_stats **stats,
                     const fuse_options *opt, fuse_maps **maps, unit_result *results)
{
    int grank, gsize, ran = 0;
    TF_MPI_CHECK(MPI_Comm_rank(group, &grank));
    TF_MPI_CHECK(MPI_Comm_size(group, &gsize));
    dist_solve.comm = group;
    dist_solve.size = gsize;
    dist_solve.threshold = opt->ot_dist_threshold;
    dist_solve.stopped = 0;

    tf_status st = TF_OK;
    for (int i = 0; st == TF_OK && i < count; i++) {
        if (units[i].group != my_group) continue;
        st = unit_run(&units[i], views, anchor, stats, opt, maps);
        ran++;
    }
    const int own_failure = st != TF_OK && !dist_solve.stopped;
    if (!dist_solve.stopped && group_agree(st == TF_OK ? GROUP_DONE : GROUP_FAILED) != GROUP_DONE &&
        st == TF_OK)
        st = tf_error_set(TF_ERR_MPI, "stopped because another rank of the group failed");

    /* The lowest rank that failed on its own sends its status and message to the group. */
    int first = own_failure ? grank : gsize, code = (int)st;
    char message[512] = "";
    TF_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, group));
    if (first < gsize) {
        if (grank == first) snprintf(message, sizeof message, "%s", tf_error_get());
        TF_MPI_CHECK(MPI_Bcast(&code, 1, MPI_INT, first, group));
        TF_MPI_CHECK(MPI_Bcast(message, sizeof message, MPI_CHAR, first, group));
        st = tf_error_set((tf_status)code, "%s", message);
    } else if (st != TF_OK) {
        st = tf_error_set(TF_ERR_MPI, "the ranks disagree on the number of Sinkhorn problems "
                                      "they solve together");
    }
    char origin[96];
    snprintf(origin, sizeof origin, "process group %d (ranks %d to %d), rank %d", my_group,
             first_rank, first_rank + gsize - 1, first_rank + (first < gsize ? first : 0));
    for (int i = 0; i < count; i++)
        if (units[i].group == my_group) result_set(&results[i], st, origin);

    dist_solve.comm = MPI_COMM_NULL;
    dist_solve.size = 1;
    dist_solve.stopped = 0;
    return ran;
}

/* Number of process groups named one by one in the log line of fuse_solve_units. */
enum { LOG_GROUPS = 8 };

/* Rank 0 logs the units and seconds of the first LOG_GROUPS groups (per_group, 2 values
 * each) and the largest time of any group. */
static void log_groups(int groups, int group_ranks, int size, int large, int64_t threshold,
                       const double *per_group, double t_max)
{
    char text[1024];
    int len = snprintf(text, sizeof text,
                       "%d unit%s with a Sinkhorn problem of at least %lld entries in %.3f s (max "
                       "over groups)",
                       large, large == 1 ? "" : "s", (long long)threshold, t_max);
    for (int k = 0; k < groups && k < LOG_GROUPS && len < (int)sizeof text; k++)
        len +=
            snprintf(text + len, sizeof text - (size_t)len, "; group %d: %d unit%s, %.3f s", k,
                     (int)per_group[2 * k], per_group[2 * k] == 1 ? "" : "s", per_group[2 * k + 1]);
    if (groups > LOG_GROUPS && len < (int)sizeof text)
        snprintf(text + len, sizeof text - (size_t)len, "; %d more groups", groups - LOG_GROUPS);
    TF_INFO("fuse timing: OT process groups of %d ranks (%d group%s, %d rank%s in none): %s",
            group_ranks, groups, groups == 1 ? "" : "s", size - groups * group_ranks,
            size - groups * group_ranks == 1 ? "" : "s", text);
}

tf_status fuse_solve_units(MPI_Comm comm, const fuse_view *views, int n_parents, int anchor,
                           fuse_stats **stats, const fuse_options *opt, fuse_maps **maps)
{
    return fuse_solve_units_report(comm, views, n_parents, anchor, stats, opt, maps, NULL);
}

/* Runs every unit: first the process groups their large units, all groups at the same
 * time, then each rank its small units, then each owner broadcasts its plans. Every rank
 * returns all maps. */
tf_status fuse_solve_units_report(MPI_Comm comm, const fuse_view *views, int n_parents, int anchor,
                                  fuse_stats **stats, const fuse_options *opt, fuse_maps **maps,
                                  fuse_group_report *report)
{
    int rank, size;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    if (views[anchor].cfg.layers > 64)
        return tf_error_set(TF_ERR_ARG, "fusion supports at most 64 layers, found %d",
                            views[anchor].cfg.layers);
    if (opt->ot_group_ranks < 0)
        return tf_error_set(TF_ERR_ARG,
                            "ot_group_ranks = %d is invalid; use 0 for one group "
                            "of all ranks, or the number of ranks per group",
                            opt->ot_group_ranks);
    const int g = fuse_group_ranks(opt->ot_group_ranks, size), groups = size / g;
    const int my_group = rank < groups * g ? rank / g : -1;
    ot_unit *units = NULL;
    const int count = units_plan(views, n_parents, anchor, opt, size, g, &units);
    unit_result *results = tf_calloc((size_t)(count > 0 ? count : 1), sizeof *results);

    /* All ranks agree on the setup before the first collective, so that none waits. */
    int failed = count < 0 || !results, any_failed = 0;
    TF_MPI_CHECK(MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, comm));
    if (any_failed) {
        free(units);
        results_free(results, count);
        return failed ? tf_error_set(TF_ERR_NOMEM, "OT scheduling failed: %s", tf_error_get())
                      : tf_error_set(TF_ERR_NOMEM, "OT scheduling failed on another rank");
    }
    int large = 0, mine = 0, group_units = 0;
    double work = 0, total_work = 0;
    for (int i = 0; i < count; i++) {
        large += units[i].group >= 0;
        total_work += units[i].group < 0 ? units[i].work : 0;
    }
    if (rank == 0 && large > 0 && opt->ot_group_ranks > size)
        TF_WARN("ot_group_ranks = %d exceeds the %d ranks; one group of all ranks solves the "
                "units with a Sinkhorn problem of at least %lld entries",
                opt->ot_group_ranks, size, (long long)opt->ot_dist_threshold);

    /* Step 1: units with a large Sinkhorn problem, each group on its own communicator. */
    double t0 = tf_seconds();
    if (large > 0) {
        MPI_Comm group = MPI_COMM_NULL;
        TF_MPI_CHECK(MPI_Comm_split(comm, my_group >= 0 ? my_group : MPI_UNDEFINED, rank, &group));
        if (group != MPI_COMM_NULL) {
            group_units = group_run(group, my_group, my_group * g, units, count, views, anchor,
                                    stats, opt, maps, results);
            TF_MPI_CHECK(MPI_Comm_free(&group));
        }
    }
    const double t_group = tf_seconds() - t0;

    /* Step 2: own units; a failure is reported in the broadcast of that unit. */
    char origin[32];
    snprintf(origin, sizeof origin, "rank %d", rank);
    for (int i = 0; i < count; i++) {
        if (units[i].group >= 0 || units[i].owner != rank) continue;
        result_set(&results[i], unit_run(&units[i], views, anchor, stats, opt, maps), origin);
        work += units[i].work;
        mine++;
    }
    const double t_local = tf_seconds() - t0 - t_group;

    /* Step 3: times and unit counts for the log, reduced to rank 0. */
    double t_max[2] = {t_group, t_local}, per_group[2 * LOG_GROUPS] = {0};
    if (my_group >= 0 && my_group < LOG_GROUPS && rank == my_group * g) {
        per_group[2 * my_group] = group_units;
        per_group[2 * my_group + 1] = t_group;
    }
    TF_MPI_CHECK(
        MPI_Reduce(rank == 0 ? MPI_IN_PLACE : t_max, t_max, 2, MPI_DOUBLE, MPI_MAX, 0, comm));
    TF_MPI_CHECK(MPI_Reduce(rank == 0 ? MPI_IN_PLACE : per_group, per_group, 2 * LOG_GROUPS,
                            MPI_DOUBLE, MPI_SUM, 0, comm));
    double t1 = tf_seconds();

    /* Step 4: broadcast, unit by unit in list order. Every rank joins each one. */
    tf_status st = TF_OK;
    for (int i = 0; st == TF_OK && i < count; i++) {
        const int p = units[i].parent;
        st = unit_broadcast(comm, rank, &units[i], &results[i], maps[p], &views[p].cfg,
                            &views[anchor].cfg);
    }
    if (large > 0) log_groups(groups, g, size, large, opt->ot_dist_threshold, per_group, t_max[0]);
    if (opt->timings) {
        opt->timings->ot_groups += t_max[0];
        opt->timings->ot_local += t_max[1];
        opt->timings->ot_broadcast += tf_seconds() - t1;
    }
    TF_INFO("fuse timing: OT %d unit%s over %d rank%s: process groups %.3f s, local %.3f s (max "
            "over ranks; rank 0: %d unit%s, %.0f %% of the estimated work of local units), "
            "broadcast %.3f s",
            count, count == 1 ? "" : "s", size, size == 1 ? "" : "s", t_max[0], t_max[1], mine,
            mine == 1 ? "" : "s", total_work > 0 ? 100 * work / total_work : 0.0,
            tf_seconds() - t1);
    if (report) {
        report->group_ranks = g;
        report->groups = groups;
        report->my_group = my_group;
        report->large_units = large;
        report->group_units = group_units;
    }
    results_free(results, count);
    free(units);
    return st;
}

static tf_status check_compatible(vit_model *const *parents, int n_parents, int anchor)
{
    const vit_config *a = &parents[anchor]->cfg;
    for (int p = 0; p < n_parents; p++) {
        const vit_config *c = &parents[p]->cfg;
        if (c->image_size != a->image_size || c->channels != a->channels || c->patch != a->patch ||
            c->layers != a->layers || c->heads != a->heads || c->classes != a->classes)
            return tf_error_set(TF_ERR_ARG,
                                "parent %d is incompatible with the anchor (parent %d): image "
                                "size, channels, patch, layers, heads and classes must match "
                                "(found %d/%d/%d/%d/%d/%d, anchor %d/%d/%d/%d/%d/%d)",
                                p, anchor, c->image_size, c->channels, c->patch, c->layers,
                                c->heads, c->classes, a->image_size, a->channels, a->patch,
                                a->layers, a->heads, a->classes);
    }
    return TF_OK;
}

void fuse_view_vit(const vit_model *m, fuse_view *v)
{
    v->cfg = m->cfg;
    v->pos = m->p[VIT_POS];
    v->pos_rows = vit_tokens(&m->cfg);
    v->vit = m;
}

/* Statistics and maps of the n parents against parents[anchor] into maps[p] (created by
 * the caller for p != anchor): one statistics pass over all of them, then their OT units.
 * Collective on comm. */
static tf_status maps_of(MPI_Comm comm, vit_model *const *parents, int n, int anchor,
                         const float *images, int64_t n_images, const fuse_options *opt,
                         fuse_maps **maps)
{
    tf_status st = TF_OK;
    fuse_stats **stats = tf_calloc((size_t)n, sizeof *stats);
    fuse_view *views = tf_calloc((size_t)n, sizeof *views);
    if (!stats || !views) st = TF_ERR_NOMEM;

    /* Step 1: activation statistics, sharded over ranks and reduced. */
    for (int p = 0; st == TF_OK && opt->cost == FUSE_COST_ACTIVATION && p < n; p++) {
        if (p == anchor) continue;
        stats[p] = fuse_stats_create(&parents[p]->cfg, &parents[anchor]->cfg);
        if (!stats[p]) st = TF_ERR_NOMEM;
    }
    st = fuse_agree(comm, st, "allocating the statistics");
    double t0 = tf_seconds();
    if (st == TF_OK && opt->cost == FUSE_COST_ACTIVATION)
        st = accumulate_stats(comm, parents, n, anchor, images, n_images, opt, stats);
    if (opt->cost == FUSE_COST_ACTIVATION) {
        TF_INFO("fuse timing: calibration statistics %.3f s (%lld images)", tf_seconds() - t0,
                (long long)n_images);
        if (opt->timings) opt->timings->statistics += tf_seconds() - t0;
    }

    /* Step 2: the OT problems of these parents, spread over the ranks, then broadcast. */
    for (int p = 0; st == TF_OK && p < n; p++) fuse_view_vit(parents[p], &views[p]);
    if (st == TF_OK) st = fuse_solve_units(comm, views, n, anchor, stats, opt, maps);
    for (int p = 0; stats && p < n; p++) fuse_stats_free(&stats[p]);
    free(stats);
    free(views);
    return st;
}

tf_status fuse_compute_maps(MPI_Comm comm, vit_model *const *parents, int n_parents, int anchor,
                            const float *images, int64_t n_images, const fuse_options *opt,
                            fuse_maps ***maps_out)
{
    *maps_out = NULL;
    tf_status st = check_compatible(parents, n_parents, anchor);
    if (st != TF_OK) return st;
    fuse_maps **maps = NULL;
    st = fuse_maps_create_all(comm, n_parents, anchor, parents[anchor]->cfg.layers, &maps);

    /* All parents in one pass, or (per_parent_stats) one parent at a time with the anchor,
     * which keeps the statistics of one parent only. The maps are the same either way. */
    if (st == TF_OK && !opt->per_parent_stats)
        st = maps_of(comm, parents, n_parents, anchor, images, n_images, opt, maps);
    for (int p = 0; st == TF_OK && opt->per_parent_stats && p < n_parents; p++) {
        if (p == anchor) continue;
        vit_model *pair[2] = {parents[anchor], parents[p]};
        fuse_maps *pair_maps[2] = {NULL, maps[p]};
        st = maps_of(comm, pair, 2, 0, images, n_images, opt, pair_maps);
    }
    if (st != TF_OK) {
        fuse_maps_free_all(&maps, n_parents);
        return st;
    }
    *maps_out = maps;
    return TF_OK;
}
