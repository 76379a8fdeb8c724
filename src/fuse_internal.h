/* Private to the fusion module: activation statistics, cost matrices and plan algebra. */
#ifndef TFUSE_FUSE_INTERNAL_H
#define TFUSE_FUSE_INTERNAL_H

#include "tfuse/fuse.h"
#include "tfuse/reduce.h"

/* Blocks of neurons whose activations are recorded. Per-layer kinds are indexed
 * block = BLOCK_LAYER0 + l * BLOCK_PER_LAYER + kind. */
enum {
    BLOCK_X0 = 0,    /* stream after the embedding, (d) */
    BLOCK_PATCH = 1, /* patch embedding output (class token at token 0), (d) */
    BLOCK_LAYER0 = 2
};
enum {
    BLOCK_Q = 0,    /* (d) query */
    BLOCK_K,        /* (d) key */
    BLOCK_V,        /* (d) value */
    BLOCK_ATTN_OUT, /* (d) attention branch output W_O y + b */
    BLOCK_RES1,     /* (d) stream after the attention join */
    BLOCK_FC1,      /* (f) MLP hidden before GELU */
    BLOCK_MLP_OUT,  /* (d) MLP branch output */
    BLOCK_RES2,     /* (d) stream after the MLP join */
    BLOCK_LN1,      /* (d) LayerNorm 1 output (the stream as attention reads it) */
    BLOCK_LN2,      /* (d) LayerNorm 2 output (the stream as the MLP reads it) */
    BLOCK_PER_LAYER
};

static inline int fuse_block_count(int layers)
{
    return BLOCK_LAYER0 + layers * BLOCK_PER_LAYER;
}
static inline int fuse_layer_block(int layer, int kind)
{
    return BLOCK_LAYER0 + layer * BLOCK_PER_LAYER + kind;
}

/* Sums over the calibration samples for one block: parent widths n, anchor width m. */
typedef struct {
    int n, m;
    double *sum_p, *sq_p; /* (n) */
    double *sum_a, *sq_a; /* (m) */
    double *cross;        /* (n, m) sum of x_p x_a^T */
} fuse_block_stats;

/* Statistics of one parent against the anchor; every array lives in one buffer so that
 * one MPI_Allreduce combines them. */
struct fuse_stats {
    int n_blocks;
    double samples;          /* S, the number of (image, token) samples */
    fuse_block_stats *block; /* [n_blocks] */
    double *buffer;
    int64_t buffer_len;
};

fuse_stats *fuse_stats_create(const vit_config *parent, const vit_config *anchor);
void fuse_stats_free(fuse_stats **stats);

/* Points the arrays of stats into buffer (buffer_len doubles, same layout) and returns the
 * buffer used before. Lets a chunk accumulate straight into a reduction buffer; bind the
 * returned buffer back before fuse_stats_free, which frees stats->buffer. */
double *fuse_stats_bind(fuse_stats *stats, double *buffer);

/* Adds one calibration batch: acts_p and acts_a from vit_forward of the parent and the
 * anchor on the same B images. tokens lists the selected token indices (n_tokens). */
tf_status fuse_stats_accumulate(fuse_stats *stats, const vit_model *parent, const vit_acts *acts_p,
                                const vit_model *anchor, const vit_acts *acts_a, const int *tokens,
                                int n_tokens);

/* Writes the (n, m) cost between the parent's and the anchor's neurons, from the
 * concatenation of the listed blocks (each z-scored on its own if opt->zscore), with
 * opt's distance and normalization. */
tf_status fuse_stats_cost(const fuse_stats *stats, const int *blocks, int n_blocks,
                          const fuse_options *opt, double *cost);

/* Divides a cost by its max, mean or median (opt->norm); a zero scale leaves it alone. */
void fuse_cost_normalize(double *cost, int64_t count, enum fuse_norm norm);

/* Root mean square of the anchor's activations over all neurons of a block. */
double fuse_stats_anchor_rms(const fuse_stats *stats, int block);

/* out (ra, ca) = T_out^T W (rp, cp) T_in with the output-side normalization of out_plan
 * (rp, ra) and the input-side normalization of in_plan (cp, ca); NULL plans are the
 * identity. */
tf_status fuse_align_matrix(const float *W, int rp, int cp, const double *out_plan, int ra,
                            const double *in_plan, int ca, float *out);

/* Maximum number of models in one weighted average (a job file allows 64 parents). */
#define FUSE_MAX_AVERAGE 64

/* Collective on comm. Returns st if it failed, else a failure naming `what` if st failed
 * on another rank, so that every rank leaves a setup step together. */
tf_status fuse_agree(MPI_Comm comm, tf_status st, const char *what);

/* out[k] = sum_p weights[p] * buffers[p][k] for k < count, summed in double. */
void fuse_average_buffers(const float *const *buffers, const double *weights, int n, int64_t count,
                          float *out);

/* Solves a plan of total mass 1 with uniform marginals by the given solver; `what` names
 * the problem in messages. */
tf_status fuse_solve_plan(const double *cost, int n, int m, enum fuse_solver solver, double epsilon,
                          const char *what, double *plan);

/* Head-aware Q/K and V plans (n, m) of one layer from their full cost matrices. */
tf_status fuse_head_aware_layer(const double *cost_qk, const double *cost_v, int heads, int n,
                                int m, const fuse_options *opt, double *plan_qk, double *plan_v);

/* Plan of a residual join: (1 - w) skip + w branch, w by the residual policy (branch_weight
 * for "weighted"). Returns a new (n, m) array or NULL. */
double *fuse_join_plans(const double *skip, const double *branch, int64_t count,
                        const fuse_options *opt, double branch_weight);

/* What the OT stage needs of a model, whatever its architecture. */
typedef struct {
    vit_config cfg;   /* d, mlp, heads and layers; the other fields matter for ViT only */
    const float *pos; /* position embeddings (pos_rows, d) */
    int pos_rows;
    const vit_model *vit; /* the model when it is a ViT (weight-based costs), else NULL */
} fuse_view;

void fuse_view_vit(const vit_model *m, fuse_view *v);

/* A maps record with every plan NULL, for `layers` layers. */
fuse_maps *fuse_maps_create(int layers);
/* Collective on comm. Allocates *out, an array of n maps records with one of `layers`
 * layers for every parent but the anchor, and agrees on the outcome over comm. On failure
 * *out may be partly filled; free it with fuse_maps_free_all. */
tf_status fuse_maps_create_all(MPI_Comm comm, int n, int anchor, int layers, fuse_maps ***out);
/* Frees the n records of *maps and the array, and sets *maps to NULL; accepts NULL. */
void fuse_maps_free_all(fuse_maps ***maps, int n);

/* Collective on comm. Solves every OT problem of every non-anchor parent from the
 * statistics, spread over the ranks, and broadcasts the plans, so that every rank returns
 * all maps. maps[p] must be created for p != anchor. Units with a Sinkhorn problem of at
 * least opt->ot_dist_threshold entries are solved by process groups of
 * opt->ot_group_ranks consecutive ranks (MPI_Comm_split), each group on its own BLACS
 * grid and all groups at the same time; see fuse_schedule_units. A failure on any rank is
 * returned, with its message, on every rank. */
tf_status fuse_solve_units(MPI_Comm comm, const fuse_view *views, int n_parents, int anchor,
                           fuse_stats **stats, const fuse_options *opt, fuse_maps **maps);

/* Process groups of one call of fuse_solve_units_report, reported to each rank. */
typedef struct {
    int group_ranks; /* ranks per group (fuse_group_ranks) */
    int groups;      /* number of groups, size / group_ranks */
    int my_group;    /* the calling rank's group, -1 if it is in none */
    int large_units; /* units solved by groups, over all groups */
    int group_units; /* units solved by the calling rank's group */
} fuse_group_report;

/* fuse_solve_units, which also fills report (if not NULL) on every rank. */
tf_status fuse_solve_units_report(MPI_Comm comm, const fuse_view *views, int n_parents, int anchor,
                                  fuse_stats **stats, const fuse_options *opt, fuse_maps **maps,
                                  fuse_group_report *report);

/* Ranks per process group for a requested opt->ot_group_ranks on size ranks: the request
 * if it lies in [1, size], else size (0 requests one group of all ranks). */
int fuse_group_ranks(int requested, int size);

/* Assigns count OT units to process groups and ranks. work (count) are estimated costs,
 * and large[i] != 0 marks a unit that a process group solves. The groups are
 * size / group_ranks blocks of consecutive ranks from rank 0; the remaining ranks are in
 * no group. Large units go, largest first, to the group with the least work so far. Each
 * rank of a group then carries an equal share of its group's work, and small units go,
 * largest first, to the rank with the least load. Ties go to the lowest index, and equal work keeps
 * list order. Writes group[i] (-1 for small units) and owner[i]: the rank that solves a
 * small unit, or the first rank of the group, which broadcasts the plans. Not collective.
 * Returns TF_ERR_ARG unless 1 <= group_ranks <= size, TF_ERR_NOMEM. */
tf_status fuse_schedule_units(int count, const double *work, const int *large, int size,
                              int group_ranks, int *group, int *owner);

/* Adds rows samples of one block: xp (rows, n) from the parent, xa (rows, m) from the
 * anchor. Does not count samples (see fuse_stats.samples). */
void fuse_stats_add(fuse_stats *stats, int block, const double *xp, const double *xa, int64_t rows);

/* Position-embedding plan from the columns of the two models' position embeddings. */
tf_status fuse_position_map(const fuse_view *parent, const fuse_view *anchor,
                            const fuse_options *opt, double **out);

/* Every map from weights alone, layer by layer (each layer's costs use the maps of its
 * inputs). Needs a per-join residual policy. */
tf_status fuse_weight_maps(const vit_model *parent, const vit_model *anchor,
                           const fuse_options *opt, fuse_maps *maps);

/* Returns the number of doubles that the summed statistics of every parent but the anchor
 * take: each parent's buffer followed by its sample count, back to back. */
int64_t fuse_stats_sums_len(fuse_stats *const *stats, int n_parents, int anchor);
/* Collective on comm. setup is this rank's status after allocating what fill needs; when
 * it or any other rank's failed, every rank returns a failure before reducing. Otherwise
 * sums the statistics that fill (as for reduce_chunks_sum) writes in the layout of
 * fuse_stats_sums_len over n_chunks chunks, and stores them in stats[p]->buffer and
 * stats[p]->samples of every parent but the anchor. */
tf_status fuse_reduce_stats(MPI_Comm comm, tf_status setup, fuse_stats **stats, int n_parents,
                            int anchor, int64_t n_chunks, reduce_fill_fn fill, void *ctx);

#endif
