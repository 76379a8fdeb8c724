/* Private to the fusion module: activation statistics, cost matrices and plan algebra. */
#ifndef TFUSE_FUSE_INTERNAL_H
#define TFUSE_FUSE_INTERNAL_H

#include "tfuse/fuse.h"

/* Blocks of neurons whose activations are recorded. Per-layer kinds are indexed
 * block = BLOCK_LAYER0 + l * BLOCK_PER_LAYER + kind. */
enum {
    BLOCK_X0 = 0,    /* stream after the embedding, (d) */
    BLOCK_PATCH = 1, /* patch embedding output (class token at token 0), (d) */
    BLOCK_LAYER0 = 2
};
enum {
    BLOCK_Q = 0,     /* (d) query */
    BLOCK_K,         /* (d) key */
    BLOCK_V,         /* (d) value */
    BLOCK_ATTN_OUT,  /* (d) attention branch output W_O y + b */
    BLOCK_RES1,      /* (d) stream after the attention join */
    BLOCK_FC1,       /* (f) MLP hidden before GELU */
    BLOCK_MLP_OUT,   /* (d) MLP branch output */
    BLOCK_RES2,      /* (d) stream after the MLP join */
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

/* Adds one calibration batch: acts_p and acts_a from vit_forward of the parent and the
 * anchor on the same B images. tokens lists the selected token indices (n_tokens). */
tf_status fuse_stats_accumulate(fuse_stats *stats, const vit_model *parent,
                                const vit_acts *acts_p, const vit_model *anchor,
                                const vit_acts *acts_a, const int *tokens, int n_tokens);

/* Writes the (n, m) cost between the parent's and the anchor's neurons, from the
 * concatenation of the listed blocks (each z-scored on its own if opt->zscore), with
 * opt's distance and normalization. */
tf_status fuse_stats_cost(const fuse_stats *stats, const int *blocks, int n_blocks,
                          const fuse_options *opt, double *cost);

/* Divides a cost by its max, mean or median (opt->norm); a zero scale leaves it alone. */
void fuse_cost_normalize(double *cost, int64_t count, enum fuse_norm norm);

/* Root mean square of the anchor's activations over all neurons of a block. */
double fuse_stats_anchor_rms(const fuse_stats *stats, int block);

#endif
