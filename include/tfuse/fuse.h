/* Transformer fusion with optimal transport (Imfeld et al., "Transformer Fusion with
 * Optimal Transport", ICLR 2024), for ViT models.
 *
 * Each non-anchor parent is aligned to the anchor: for every group of neurons that can be
 * permuted without changing the function (the residual stream, the shared Q/K space and
 * the V space of each attention layer, the MLP hidden layer of each layer), a transport
 * plan between the parent's and the anchor's neurons is solved, and the parent's weights
 * are moved into the anchor's basis with it. The fused model is the weighted average of
 * the aligned parents.
 *
 * Notation: a plan between a parent group of width n and the anchor group of width m is
 * (n, m), row-major double, total mass 1. */
#ifndef TFUSE_FUSE_H
#define TFUSE_FUSE_H

#include "tfuse/common.h"
#include "tfuse/vit.h"

enum fuse_solver { FUSE_SOLVER_EXACT, FUSE_SOLVER_SINKHORN };

/* Feature by which neurons are compared. */
enum fuse_cost {
    FUSE_COST_ACTIVATION, /* its activations over the calibration samples */
    FUSE_COST_WEIGHT      /* its incoming weights and bias, inputs aligned, unit norm */
};

/* Policy that forms the maps of the residual stream. */
enum fuse_residual {
    FUSE_RESIDUAL_JOINT,    /* one map for the whole stream, from the stream's activations at
                               the embedding and after every residual join, concatenated */
    FUSE_RESIDUAL_MEAN,     /* a map per join: mean of the skip's and the branch's plans */
    FUSE_RESIDUAL_WEIGHTED, /* per join: plans weighted by the branch's and the skip's RMS
                               activation in the anchor (one scalar per join) */
    FUSE_RESIDUAL_SKIP,     /* per join: keep the skip's plan */
    FUSE_RESIDUAL_BRANCH,   /* per join: take the branch's plan */
    FUSE_RESIDUAL_IDENTITY  /* the identity plan everywhere on the stream (equal widths) */
};

/* Tokens of each calibration image that count as samples of a neuron's activations. */
enum fuse_tokens { FUSE_TOKENS_ALL, FUSE_TOKENS_CLS, FUSE_TOKENS_WINDOW };

enum fuse_distance { FUSE_DIST_EUCLIDEAN, FUSE_DIST_SQEUCLIDEAN, FUSE_DIST_COSINE };
enum fuse_norm { FUSE_NORM_MAX, FUSE_NORM_MEAN, FUSE_NORM_MEDIAN, FUSE_NORM_NONE };

/* Attention alignment. */
enum fuse_attention {
    FUSE_ATTN_SHARED_QK, /* Q and K share one map from their concatenated features; V own map */
    FUSE_ATTN_HEAD_AWARE /* a permutation of heads, then maps within each head */
};

/* Activations that describe a residual stream dimension for the joint map. */
enum fuse_stream_features {
    FUSE_STREAM_RESIDUAL,   /* the stream after the embedding and after every join */
    FUSE_STREAM_NORMALIZED, /* the LayerNorm outputs that attention and MLP read */
    FUSE_STREAM_BOTH        /* both, concatenated */
};

/* Statistics repair after averaging (see fuse_repair). */
enum fuse_repair {
    FUSE_REPAIR_NONE,
    FUSE_REPAIR_MLP,   /* MLP hidden neurons */
    FUSE_REPAIR_ALL,   /* Q, K, V and MLP hidden neurons */
    FUSE_REPAIR_STREAM /* also the attention and MLP branch outputs into the stream */
};

typedef struct {
    enum fuse_cost cost;
    enum fuse_solver solver;        /* default solver */
    double epsilon;                 /* Sinkhorn regularizer on the normalized cost */
    enum fuse_solver solver_attn;   /* solver for Q/K and V maps */
    enum fuse_solver solver_mlp;    /* solver for MLP hidden maps */
    enum fuse_solver solver_stream; /* solver for residual stream maps */
    enum fuse_residual residual;
    enum fuse_attention attention;
    enum fuse_tokens tokens;
    int window; /* side k of the central k x k patch window (FUSE_TOKENS_WINDOW) */
    int zscore; /* 1: z-score each neuron's activations over the samples */
    enum fuse_distance distance;
    enum fuse_norm norm;
    enum fuse_repair repair;                   /* applied to the fused model after averaging */
    enum fuse_stream_features stream_features; /* features of the joint stream map */
    int64_t ot_dist_threshold;    /* Sinkhorn problems with n * m >= this are solved by all ranks
                                     of a process group together with ot_sinkhorn_solve_auto;
                                     0: never. Such plans match the 1-rank ones only up to the
                                     Sinkhorn tolerance */
    int ot_group_ranks;           /* ranks per process group that solves units with such a problem
                                     (consecutive ranks, split with MPI_Comm_split); 0 or more than
                                     the rank count: one group of all ranks */
    int per_parent_stats;         /* 1: statistics and OT of one parent at a time, holding the
                                     statistics of one parent instead of all (one more forward
                                     pass of the anchor per parent); same maps */
    struct fuse_timings *timings; /* if not NULL, receives the seconds of each stage */
} fuse_options;

/* Seconds of the stages of one fusion on the calling rank; OT times are maxima over the
 * ranks. The fusion functions add to the fields, so zero the struct first. */
typedef struct fuse_timings {
    double statistics;   /* calibration statistics, in all */
    double forward;      /* forward passes of the calibration chunks on this rank */
    double sums;         /* statistics sums of those chunks */
    double reduction;    /* waiting and the tree reduction of the statistics */
    double ot_groups;    /* OT units solved by process groups (max over ranks) */
    double ot_local;     /* OT units solved by single ranks (max over ranks) */
    double ot_broadcast; /* broadcast of the plans */
    double alignment;    /* aligning the parents and averaging them */
    double repair;       /* statistics repair of the fused model */
    double writing;      /* writing the fused model, aligned parents and maps */
} fuse_timings;

/* Defaults: exact OT, joint residual map, shared Q/K, all tokens, z-scored Euclidean
 * distance divided by its maximum, epsilon 0.08. */
fuse_options fuse_options_default(void);

/* Activation statistics of one parent against the anchor, for one block of neurons. */
typedef struct fuse_stats fuse_stats;

/* The transport plans that align one parent to the anchor. Plans are (n, m) with n the
 * parent's and m the anchor's width. */
typedef struct {
    int layers;
    double *stream0;   /* (d_p, d_a) stream map after the embedding */
    double *patch;     /* (d_p, d_a) patch embedding map (per-join policies), else NULL */
    double *pos;       /* (d_p, d_a) position embedding map (per-join policies), else NULL */
    double **attn_out; /* [L] (d_p, d_a) attention output map (per-join policies) */
    double **stream1;  /* [L] (d_p, d_a) stream map after the attention join */
    double **mlp_out;  /* [L] (d_p, d_a) MLP output map (per-join policies) */
    double **stream2;  /* [L] (d_p, d_a) stream map after the MLP join */
    double **qk;       /* [L] (d_p, d_a) shared Q/K map */
    double **v;        /* [L] (d_p, d_a) V map */
    double **fc1;      /* [L] (f_p, f_a) MLP hidden map */
} fuse_maps;

void fuse_maps_free(fuse_maps **maps);

/* Groups of neurons that transport maps act on, named as a tensor axis refers to them. */
enum fuse_group {
    FUSE_GROUP_NONE = -1,   /* not aligned (raw inputs, classes, tokens) */
    FUSE_GROUP_STREAM0,     /* stream after the embedding */
    FUSE_GROUP_EMBED,       /* output of the patch or token embedding */
    FUSE_GROUP_POS,         /* position embedding dimensions */
    FUSE_GROUP_QK,          /* shared Q/K dimensions of a layer */
    FUSE_GROUP_V,           /* V dimensions of a layer */
    FUSE_GROUP_ATTN_OUT,    /* attention branch output of a layer */
    FUSE_GROUP_STREAM1,     /* stream after a layer's attention join */
    FUSE_GROUP_FC1,         /* MLP hidden neurons of a layer */
    FUSE_GROUP_MLP_OUT,     /* MLP branch output of a layer */
    FUSE_GROUP_STREAM2,     /* stream after a layer's MLP join */
    FUSE_GROUP_STREAM_IN,   /* stream entering a layer: STREAM0 or the previous STREAM2 */
    FUSE_GROUP_STREAM_FINAL /* stream after the last layer */
};

/* Returns the plan of a group at a layer (NULL for FUSE_GROUP_NONE); not owned. */
const double *fuse_maps_get(const fuse_maps *maps, enum fuse_group group, int layer);

/* One tensor, or a row block of one, and the groups its two axes belong to. The rows are
 * aligned on the output side; the columns on the input side, or on the output side when
 * col_output is set (e.g. position embeddings (T, d), whose columns are stream neurons). */
typedef struct {
    const char *name;
    int layer;
    const float *src; /* parent slice (rows_p, cols_p) */
    float *dst;       /* aligned slice (rows_a, cols_a) */
    int rows_p, rows_a, cols_p, cols_a;
    enum fuse_group row_group, col_group;
    int col_output;
} fuse_entry;

/* Moves every listed parent slice into the anchor's basis: dst = T_row^T src T_col. */
tf_status fuse_apply_entries(const fuse_entry *entries, int count, const fuse_maps *maps);

/* Lists the ViT's tensors as entries (parent pm, aligned am); returns the count, at most
 * fuse_vit_entry_count. */
int fuse_vit_entries(const vit_model *pm, vit_model *am, fuse_entry *list);
static inline int fuse_vit_entry_count(const vit_config *c)
{
    return 8 + 16 * c->layers;
}

/* Collective on comm. Computes the activation statistics of the calibration images for
 * every parent against the anchor: fixed chunks of 32 images, contiguous chunk ranges per
 * rank, added with reduce_chunks_sum, so the sums do not depend on the rank count. Then
 * solves the OT problems of every parent, spread over the ranks in units (the stream maps
 * of a parent, the maps inside one layer of a parent, or all weight-based maps of a
 * parent) balanced by an estimate of their cost, and broadcasts every plan, so every rank
 * returns all maps, bitwise equal to a 1-rank run unless opt->ot_dist_threshold is set.
 * With it set, process groups of opt->ot_group_ranks ranks solve the units with a large
 * Sinkhorn problem together, and those plans are bitwise equal at every rank count of
 * at least opt->ot_group_ranks (one group of all ranks when it is 0), provided that MPI
 * reduces in the same order on every group of that size.
 * Returns, for each parent p != anchor, maps[p] (maps[anchor] is NULL).
 * images: (S, channels, H, W) normalized calibration images, replicated on all ranks.
 * Caller frees each map with fuse_maps_free and the array with free. */
tf_status fuse_compute_maps(MPI_Comm comm, vit_model *const *parents, int n_parents, int anchor,
                            const float *images, int64_t n_images, const fuse_options *opt,
                            fuse_maps ***maps_out);

/* Moves the parameters of `parent` into the anchor's basis with maps, writing them into
 * `aligned`, which has the anchor's configuration. Not collective. */
tf_status fuse_align_parent(const vit_model *parent, const fuse_maps *maps, vit_model *aligned);

/* Collective on comm. Fills params[p] (count floats) for every parent p != anchor (at
 * most 64 parents). The k-th of those parents goes to rank k mod size, which calls
 * align(p, ctx) to fill params[p]; every rank first aligns all of its parents, then each
 * owner broadcasts its status, message and parameters in parent order. So every rank
 * returns all aligned parameters, bitwise the same as aligning every parent locally, and
 * the status of the first parent that failed. */
tf_status fuse_align_shared(MPI_Comm comm, int n_parents, int anchor, float *const *params,
                            int64_t count, tf_status (*align)(int p, void *ctx), void *ctx);

/* out = sum_p weights[p] * models[p], all with the same configuration. */
tf_status fuse_average(vit_model *const *models, const double *weights, int n, vit_model *out);

/* Collective on comm. Rescales the incoming weights and biases of the fused model's Q, K,
 * V (FUSE_REPAIR_ALL) and MLP hidden neurons, layer by layer, so that each neuron's mean
 * and standard deviation over the calibration images equal the weighted average of those
 * of the aligned parents (which must have the fused model's configuration). */
tf_status fuse_repair(MPI_Comm comm, vit_model *fused, vit_model *const *aligned,
                      const double *weights, int n, const float *images, int64_t n_images,
                      enum fuse_repair what);

#endif
