/* Activation statistics for OT costs. The distance between two neurons' activation vectors
 * over S samples needs only per-neuron sums, sums of squares and the cross products, since
 * |x - y|^2 = |x|^2 + |y|^2 - 2 x.y and z-scoring is an affine map of each vector. Ranks
 * accumulate these over their share of the calibration images and add them with one
 * MPI_Allreduce; raw activations never leave a rank. */
#include "fuse_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int block_width(const vit_config *c, int block)
{
    if (block < BLOCK_LAYER0) return c->d;
    return (block - BLOCK_LAYER0) % BLOCK_PER_LAYER == BLOCK_FC1 ? c->mlp : c->d;
}

fuse_stats *fuse_stats_create(const vit_config *parent, const vit_config *anchor)
{
    fuse_stats *s = tf_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->n_blocks = fuse_block_count(anchor->layers);
    s->block = tf_calloc((size_t)s->n_blocks, sizeof *s->block);
    int64_t total = 0;
    for (int b = 0; b < s->n_blocks; b++) {
        int n = block_width(parent, b), m = block_width(anchor, b);
        total += 2 * (int64_t)n + 2 * (int64_t)m + (int64_t)n * m;
    }
    s->buffer_len = total;
    s->buffer = tf_calloc((size_t)total, sizeof(double));
    if (!s->block || !s->buffer) {
        fuse_stats_free(&s);
        return NULL;
    }
    for (int b = 0; b < s->n_blocks; b++) {
        s->block[b].n = block_width(parent, b);
        s->block[b].m = block_width(anchor, b);
    }
    fuse_stats_bind(s, s->buffer);
    return s;
}

double *fuse_stats_bind(fuse_stats *s, double *buffer)
{
    double *previous = s->buffer, *p = buffer;
    s->buffer = buffer;
    for (int b = 0; b < s->n_blocks; b++) {
        fuse_block_stats *k = &s->block[b];
        k->sum_p = p, p += k->n;
        k->sq_p = p, p += k->n;
        k->sum_a = p, p += k->m;
        k->sq_a = p, p += k->m;
        k->cross = p, p += (int64_t)k->n * k->m;
    }
    return previous;
}

void fuse_stats_free(fuse_stats **stats)
{
    if (!stats || !*stats) return;
    free((*stats)->block);
    free((*stats)->buffer);
    free(*stats);
    *stats = NULL;
}

/* Copies block `block` of one model's activations for the selected tokens into rows of
 * out (R = B * n_tokens rows, width columns), as doubles. Branch outputs are differences of
 * the stream before and after the join. */
static void gather_block(const vit_model *model, const vit_acts *a, int block, const int *tokens,
                         int n_tokens, double *out)
{
    const vit_config *c = &model->cfg;
    const int B = a->batch, T = vit_tokens(c), d = c->d, f = c->mlp;
    const int64_t plane = (int64_t)B * T;
    int l = block < BLOCK_LAYER0 ? -1 : (block - BLOCK_LAYER0) / BLOCK_PER_LAYER;
    int kind = block < BLOCK_LAYER0 ? block : (block - BLOCK_LAYER0) % BLOCK_PER_LAYER;
    const float *stream_in = l <= 0 ? a->x0 : a->res2 + (int64_t)(l - 1) * plane * d;
    int width = block_width(c, block);
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < n_tokens; i++) {
            int64_t row = (int64_t)b * T + tokens[i];
            double *dst = out + ((int64_t)b * n_tokens + i) * width;
            const float *x = NULL, *minus = NULL;
            if (block == BLOCK_X0) {
                x = a->x0 + row * d;
            } else if (block == BLOCK_PATCH) {
                x = a->x0 + row * d;
                minus = model->p[VIT_POS] + (int64_t)tokens[i] * d;
            } else if (kind <= BLOCK_V) {
                x = a->qkv + ((int64_t)l * plane + row) * 3 * d + (int64_t)kind * d;
            } else if (kind == BLOCK_ATTN_OUT) {
                x = a->res1 + ((int64_t)l * plane + row) * d;
                minus = stream_in + row * d;
            } else if (kind == BLOCK_RES1) {
                x = a->res1 + ((int64_t)l * plane + row) * d;
            } else if (kind == BLOCK_FC1) {
                x = a->fc1 + ((int64_t)l * plane + row) * f;
            } else if (kind == BLOCK_LN1) {
                x = a->ln1 + ((int64_t)l * plane + row) * d;
            } else if (kind == BLOCK_LN2) {
                x = a->ln2 + ((int64_t)l * plane + row) * d;
            } else if (kind == BLOCK_MLP_OUT) {
                x = a->res2 + ((int64_t)l * plane + row) * d;
                minus = a->res1 + ((int64_t)l * plane + row) * d;
            } else {
                x = a->res2 + ((int64_t)l * plane + row) * d;
            }
            for (int j = 0; j < width; j++) dst[j] = (double)x[j] - (minus ? minus[j] : 0.0);
        }
    }
}

static void add_sums(const double *x, int64_t rows, int width, double *sum, double *sq)
{
    for (int64_t r = 0; r < rows; r++)
        for (int j = 0; j < width; j++) {
            sum[j] += x[r * width + j];
            sq[j] += x[r * width + j] * x[r * width + j];
        }
}

void fuse_stats_add(fuse_stats *stats, int block, const double *xp, const double *xa, int64_t rows)
{
    fuse_block_stats *k = &stats->block[block];
    add_sums(xp, rows, k->n, k->sum_p, k->sq_p);
    add_sums(xa, rows, k->m, k->sum_a, k->sq_a);
    /* cross (n, m) += xp^T (n, R) xa (R, m) */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k->n, k->m, (int)rows, 1.0, xp, k->n, xa,
                k->m, 1.0, k->cross, k->m);
}

tf_status fuse_stats_accumulate(fuse_stats *stats, const vit_model *parent, const vit_acts *acts_p,
                                const vit_model *anchor, const vit_acts *acts_a, const int *tokens,
                                int n_tokens)
{
    const int64_t rows = (int64_t)acts_a->batch * n_tokens;
    int max_width = parent->cfg.mlp > parent->cfg.d ? parent->cfg.mlp : parent->cfg.d;
    if (anchor->cfg.mlp > max_width) max_width = anchor->cfg.mlp;
    if (anchor->cfg.d > max_width) max_width = anchor->cfg.d;
    double *xp = tf_malloc((size_t)rows * max_width * sizeof(double));
    double *xa = tf_malloc((size_t)rows * max_width * sizeof(double));
    if (!xp || !xa) {
        free(xp);
        free(xa);
        return TF_ERR_NOMEM;
    }
    for (int b = 0; b < stats->n_blocks; b++) {
        gather_block(parent, acts_p, b, tokens, n_tokens, xp);
        gather_block(anchor, acts_a, b, tokens, n_tokens, xa);
        fuse_stats_add(stats, b, xp, xa, rows);
    }
    stats->samples += (double)rows;
    free(xp);
    free(xa);
    return TF_OK;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void fuse_cost_normalize(double *cost, int64_t count, enum fuse_norm norm)
{
    double scale = 0;
    if (norm == FUSE_NORM_NONE || count == 0) return;
    if (norm == FUSE_NORM_MAX) {
        for (int64_t i = 0; i < count; i++) scale = cost[i] > scale ? cost[i] : scale;
    } else if (norm == FUSE_NORM_MEAN) {
        for (int64_t i = 0; i < count; i++) scale += cost[i];
        scale /= (double)count;
    } else {
        double *copy = tf_malloc((size_t)count * sizeof(double));
        if (!copy) return;
        memcpy(copy, cost, (size_t)count * sizeof(double));
        qsort(copy, (size_t)count, sizeof(double), compare_double);
        scale = count % 2 ? copy[count / 2] : 0.5 * (copy[count / 2 - 1] + copy[count / 2]);
        free(copy);
    }
    if (scale > 0)
        for (int64_t i = 0; i < count; i++) cost[i] /= scale;
}

/* Mean and scale of each neuron: z-scoring divides by the population standard deviation;
 * a constant neuron gets scale 0, so its z-scored vector is zero. */
static void neuron_moments(const double *sum, const double *sq, int n, double S, int zscore,
                           double *mean, double *inv_std)
{
    for (int i = 0; i < n; i++) {
        if (!zscore) {
            mean[i] = 0;
            inv_std[i] = 1;
            continue;
        }
        mean[i] = sum[i] / S;
        double var = sq[i] / S - mean[i] * mean[i];
        double tiny = 1e-12 * (sq[i] / S);
        inv_std[i] = var > tiny && var > 0 ? 1.0 / sqrt(var) : 0.0;
    }
}

tf_status fuse_stats_cost(const fuse_stats *stats, const int *blocks, int n_blocks,
                          const fuse_options *opt, double *cost)
{
    const int n = stats->block[blocks[0]].n, m = stats->block[blocks[0]].m;
    const double S = stats->samples;
    double *dot = tf_calloc((size_t)n * m, sizeof(double));
    double *norm_p = tf_calloc((size_t)n, sizeof(double));
    double *norm_a = tf_calloc((size_t)m, sizeof(double));
    double *mean_p = tf_malloc((size_t)n * sizeof(double)), *is_p = tf_malloc((size_t)n * 8);
    double *mean_a = tf_malloc((size_t)m * sizeof(double)), *is_a = tf_malloc((size_t)m * 8);
    tf_status st = TF_OK;
    if (!dot || !norm_p || !norm_a || !mean_p || !is_p || !mean_a || !is_a) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    for (int q = 0; q < n_blocks; q++) {
        const fuse_block_stats *k = &stats->block[blocks[q]];
        if (k->n != n || k->m != m) {
            st = tf_error_set(TF_ERR_ARG, "fuse_stats_cost: blocks of different widths");
            goto done;
        }
        neuron_moments(k->sum_p, k->sq_p, n, S, opt->zscore, mean_p, is_p);
        neuron_moments(k->sum_a, k->sq_a, m, S, opt->zscore, mean_a, is_a);
        /* z_i . z_j = (sum x_i y_j - S mu_i mu_j) / (sigma_i sigma_j) */
        for (int i = 0; i < n; i++)
            for (int j = 0; j < m; j++)
                dot[(int64_t)i * m + j] +=
                    (k->cross[(int64_t)i * m + j] - S * mean_p[i] * mean_a[j]) * is_p[i] * is_a[j];
        for (int i = 0; i < n; i++)
            norm_p[i] += (k->sq_p[i] - S * mean_p[i] * mean_p[i]) * is_p[i] * is_p[i];
        for (int j = 0; j < m; j++)
            norm_a[j] += (k->sq_a[j] - S * mean_a[j] * mean_a[j]) * is_a[j] * is_a[j];
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            int64_t ij = (int64_t)i * m + j;
            double d2 = norm_p[i] + norm_a[j] - 2 * dot[ij];
            if (d2 < 0) d2 = 0;
            if (opt->distance == FUSE_DIST_EUCLIDEAN) {
                cost[ij] = sqrt(d2);
            } else if (opt->distance == FUSE_DIST_SQEUCLIDEAN) {
                cost[ij] = d2;
            } else {
                double denom = sqrt(norm_p[i] * norm_a[j]);
                cost[ij] = denom > 0 ? 1.0 - dot[ij] / denom : 1.0;
            }
        }
    fuse_cost_normalize(cost, (int64_t)n * m, opt->norm);
done:
    free(dot);
    free(norm_p);
    free(norm_a);
    free(mean_p);
    free(is_p);
    free(mean_a);
    free(is_a);
    return st;
}

double fuse_stats_anchor_rms(const fuse_stats *stats, int block)
{
    const fuse_block_stats *k = &stats->block[block];
    double sq = 0;
    for (int j = 0; j < k->m; j++) sq += k->sq_a[j];
    return stats->samples > 0 ? sqrt(sq / (stats->samples * k->m)) : 0.0;
}
