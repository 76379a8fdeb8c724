/* Statistics repair after fusion. Averaging two aligned networks shrinks the spread of
 * hidden activations, because the averaged neurons are only partly correlated ("variance
 * collapse"; Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation
 * Repair", ICLR 2023). Here every repaired neuron of the fused model is rescaled and
 * shifted, through its incoming weights and bias, so that its mean and standard deviation
 * over the calibration samples equal the weighted averages of the aligned parents' ones.
 * Layers are repaired in order, because repairing layer l changes the inputs of l + 1. */
#include "fuse_internal.h"
#include "tfuse/reduce.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Neuron groups that can be repaired in each layer: Q, K, V and the MLP hidden layer. */
enum { REPAIR_Q, REPAIR_K, REPAIR_V, REPAIR_FC1, REPAIR_ATTN_OUT, REPAIR_MLP_OUT, REPAIR_KINDS };

typedef struct {
    int layers, d, f;
    double *sum, *sq; /* [L][kind][width], width = d for Q/K/V and f for fc1 (padded to max) */
    int stride;       /* max(d, f) */
    double count;
} moments;

static double *slot(const moments *m, double *base, int l, int kind)
{
    return base + ((int64_t)l * REPAIR_KINDS + kind) * m->stride;
}

static tf_status moments_init(moments *m, const vit_config *c)
{
    m->layers = c->layers;
    m->d = c->d;
    m->f = c->mlp;
    m->stride = c->d > c->mlp ? c->d : c->mlp;
    m->count = 0;
    int64_t len = (int64_t)c->layers * REPAIR_KINDS * m->stride;
    m->sum = tf_calloc((size_t)len, sizeof(double));
    m->sq = tf_calloc((size_t)len, sizeof(double));
    return m->sum && m->sq ? TF_OK : TF_ERR_NOMEM;
}

static void moments_free(moments *m)
{
    free(m->sum);
    free(m->sq);
    m->sum = m->sq = NULL;
}

/* Adds the activations of one forward pass (all tokens) to the sums. Branch outputs are
 * the differences of the stream across each residual join. */
static void moments_add(moments *m, const vit_acts *a, const vit_config *c)
{
    const int64_t rows = (int64_t)a->batch * vit_tokens(c);
    const int d = m->d;
    for (int l = 0; l < m->layers; l++) {
        const float *stream_in = l == 0 ? a->x0 : a->res2 + (int64_t)(l - 1) * rows * d;
        const float *res1 = a->res1 + (int64_t)l * rows * d, *res2 = a->res2 + (int64_t)l * rows * d;
        for (int kind = 0; kind < REPAIR_KINDS; kind++) {
            int width = kind == REPAIR_FC1 ? m->f : d;
            int64_t row_stride = kind == REPAIR_FC1 ? m->f : kind <= REPAIR_V ? 3 * d : d;
            const float *x = kind == REPAIR_FC1 ? a->fc1 + (int64_t)l * rows * m->f
                             : kind <= REPAIR_V ? a->qkv + (int64_t)l * rows * 3 * d + (int64_t)kind * d
                             : kind == REPAIR_ATTN_OUT ? res1 : res2;
            const float *minus = kind == REPAIR_ATTN_OUT ? stream_in
                                 : kind == REPAIR_MLP_OUT ? res1 : NULL;
            double *s = slot(m, m->sum, l, kind), *q = slot(m, m->sq, l, kind);
            for (int64_t r = 0; r < rows; r++)
                for (int j = 0; j < width; j++) {
                    double v = x[r * row_stride + j] - (minus ? minus[r * row_stride + j] : 0.0f);
                    s[j] += v;
                    q[j] += v * v;
                }
        }
    }
    m->count += (double)rows;
}

/* Calibration images per chunk of the reproducible reduction, independent of the rank
 * count. */
#define REPAIR_CHUNK_IMAGES 32

typedef struct {
    const vit_model *model;
    const float *images;
    int64_t n_images;
    vit_acts *acts;
    const moments *shape; /* layers, widths and stride of the sums */
} moments_chunk_ctx;

/* Sums of one chunk of images, written to buffer as [sum (n), sq (n), count]. */
static tf_status moments_chunk_fill(int64_t chunk, double *buffer, int64_t len, void *ctx)
{
    moments_chunk_ctx *c = ctx;
    const vit_config *cfg = &c->model->cfg;
    const int64_t start = chunk * REPAIR_CHUNK_IMAGES, n = (len - 1) / 2;
    const int B = (int)(c->n_images - start < REPAIR_CHUNK_IMAGES ? c->n_images - start
                                                                   : REPAIR_CHUNK_IMAGES);
    const int64_t image_len = (int64_t)cfg->channels * cfg->image_size * cfg->image_size;
    tf_status st = vit_forward(c->model, c->acts, c->images + start * image_len, NULL, B, NULL);
    if (st != TF_OK) return st;
    moments part = *c->shape;
    part.sum = buffer;
    part.sq = buffer + n;
    part.count = 0;
    moments_add(&part, c->acts, cfg);
    buffer[2 * n] += part.count;
    return TF_OK;
}

/* Collective: per-neuron sums of one model over the calibration images, chunk by chunk
 * over the ranks of comm and added with reduce_chunks_sum, so they are bitwise the same
 * for any number of ranks. */
static tf_status moments_collect(MPI_Comm comm, const vit_model *model, const float *images,
                                 int64_t n_images, moments *m)
{
    const int64_t n = (int64_t)m->layers * REPAIR_KINDS * m->stride, len = 2 * n + 1;
    moments_chunk_ctx ctx = {.model = model, .images = images, .n_images = n_images,
                             .shape = m};
    double *sums = tf_malloc((size_t)len * sizeof(double));
    tf_status st = sums ? vit_acts_create(&model->cfg, REPAIR_CHUNK_IMAGES, &ctx.acts)
                        : TF_ERR_NOMEM;

    /* All ranks agree on the setup before the reduction, so that none waits for another. */
    int failed = st != TF_OK, any_failed = 0;
    TF_MPI_CHECK(MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, comm));
    if (st == TF_OK && any_failed)
        st = tf_error_set(TF_ERR_NOMEM, "repair statistics: setup failed on another rank");
    const int64_t n_chunks = (n_images + REPAIR_CHUNK_IMAGES - 1) / REPAIR_CHUNK_IMAGES;
    if (st == TF_OK) st = reduce_chunks_sum(comm, n_chunks, len, moments_chunk_fill, &ctx, sums);
    if (st == TF_OK) {
        memcpy(m->sum, sums, (size_t)n * sizeof(double));
        memcpy(m->sq, sums + n, (size_t)n * sizeof(double));
        m->count = sums[2 * n];
    }
    vit_acts_free(&ctx.acts);
    free(sums);
    return st;
}

static void mean_std(const moments *m, int l, int kind, int j, double *mean, double *std)
{
    double s = slot(m, m->sum, l, kind)[j], q = slot(m, m->sq, l, kind)[j];
    *mean = s / m->count;
    double var = q / m->count - *mean * *mean;
    *std = var > 0 ? sqrt(var) : 0;
}

/* Rescales the rows of one neuron group of layer l so that the fused model's moments match
 * the target. Rows are (width, in) with bias (width). */
static void repair_rows(float *w, float *b, int width, int in, const moments *fused,
                        const moments *target, int l, int kind)
{
    for (int j = 0; j < width; j++) {
        double mu_f, sd_f, mu_t, sd_t;
        mean_std(fused, l, kind, j, &mu_f, &sd_f);
        mean_std(target, l, kind, j, &mu_t, &sd_t);
        if (sd_f < 1e-8 * (fabs(mu_f) + 1e-30) || sd_f == 0) continue;
        double scale = sd_t / sd_f;
        for (int k = 0; k < in; k++) w[(int64_t)j * in + k] = (float)(w[(int64_t)j * in + k] * scale);
        b[j] = (float)((b[j] - mu_f) * scale + mu_t);
    }
}

tf_status fuse_repair(MPI_Comm comm, vit_model *fused, vit_model *const *aligned,
                      const double *weights, int n, const float *images, int64_t n_images,
                      enum fuse_repair what)
{
    if (what == FUSE_REPAIR_NONE) return TF_OK;
    const vit_config *c = &fused->cfg;
    const int d = c->d, f = c->mlp;
    moments target = {0}, part = {0}, current = {0};
    tf_status st = moments_init(&target, c);
    if (st == TF_OK) st = moments_init(&part, c);
    if (st == TF_OK) st = moments_init(&current, c);

    /* Target moments: weighted averages of the aligned parents' means and deviations. The
     * target stores them as if they came from `count` samples, so mean_std returns them. */
    int64_t len = (int64_t)c->layers * REPAIR_KINDS * target.stride;
    double *mu = tf_calloc((size_t)len, sizeof(double)), *sd = tf_calloc((size_t)len, sizeof(double));
    if (st == TF_OK && (!mu || !sd)) st = TF_ERR_NOMEM;
    for (int p = 0; st == TF_OK && p < n; p++) {
        if (weights[p] == 0) continue;
        st = moments_collect(comm, aligned[p], images, n_images, &part);
        for (int64_t k = 0; st == TF_OK && k < len; k++) {
            double m = part.sum[k] / part.count, var = part.sq[k] / part.count - m * m;
            mu[k] += weights[p] * m;
            sd[k] += weights[p] * (var > 0 ? sqrt(var) : 0);
        }
    }
    if (st == TF_OK) {
        target.count = 1;
        for (int64_t k = 0; k < len; k++) {
            target.sum[k] = mu[k];
            target.sq[k] = sd[k] * sd[k] + mu[k] * mu[k];
        }
    }

    /* Layer by layer, in the order of the forward pass: each group is measured after every
     * group before it was repaired, because those change its inputs. */
    for (int l = 0; st == TF_OK && l < c->layers; l++) {
        if (what >= FUSE_REPAIR_ALL) {
            st = moments_collect(comm, fused, images, n_images, &current);
            if (st != TF_OK) break;
            for (int kind = REPAIR_Q; kind <= REPAIR_V; kind++)
                repair_rows(fused->p[VIT_QKV_W] + ((int64_t)l * 3 * d + (int64_t)kind * d) * d,
                            fused->p[VIT_QKV_B] + (int64_t)l * 3 * d + (int64_t)kind * d, d, d,
                            &current, &target, l, kind);
        }
        if (what == FUSE_REPAIR_STREAM) {
            st = moments_collect(comm, fused, images, n_images, &current);
            if (st != TF_OK) break;
            repair_rows(fused->p[VIT_PROJ_W] + (int64_t)l * d * d,
                        fused->p[VIT_PROJ_B] + (int64_t)l * d, d, d, &current, &target, l,
                        REPAIR_ATTN_OUT);
        }
        st = moments_collect(comm, fused, images, n_images, &current);
        if (st != TF_OK) break;
        repair_rows(fused->p[VIT_FC1_W] + (int64_t)l * f * d, fused->p[VIT_FC1_B] + (int64_t)l * f,
                    f, d, &current, &target, l, REPAIR_FC1);
        if (what == FUSE_REPAIR_STREAM) {
            st = moments_collect(comm, fused, images, n_images, &current);
            if (st != TF_OK) break;
            repair_rows(fused->p[VIT_FC2_W] + (int64_t)l * d * f,
                        fused->p[VIT_FC2_B] + (int64_t)l * d, d, f, &current, &target, l,
                        REPAIR_MLP_OUT);
        }
    }
    moments_free(&target);
    moments_free(&part);
    moments_free(&current);
    free(mu);
    free(sd);
    return st;
}
