/* Statistics repair for fused BERT models (see fuse_repair for the ViT and the reason):
 * the Q, K, V (FUSE_REPAIR_ALL) and MLP hidden neurons of the fused model are rescaled
 * through their incoming weights and biases so that their mean and standard deviation over
 * the real tokens of the calibration sequences equal the weighted averages of the aligned
 * parents'. Layers are repaired in forward order. Sums go through reduce_chunks_sum, so the
 * result does not depend on the number of ranks. */
#include "tfuse/fuse_bert.h"
#include "tfuse/reduce.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { KIND_Q, KIND_K, KIND_V, KIND_FC1, KINDS };
#define CHUNK 32

typedef struct {
    const bert_model *model;
    const int *ids, *lengths;
    int64_t n_seqs;
    int *ignore;
    bert_acts *acts;
    int stride; /* max(d, f) */
} moments_ctx;

/* Buffer layout: sums [L][KINDS][stride], then squares likewise, then the token count. */
static tf_status moments_fill(int64_t chunk, double *buffer, int64_t len, void *ctx)
{
    moments_ctx *c = ctx;
    const bert_config *cfg = &c->model->cfg;
    const int T = cfg->seq_len, d = cfg->d, f = cfg->mlp, L = cfg->layers;
    const int64_t start = chunk * CHUNK;
    const int B = (int)(c->n_seqs - start < CHUNK ? c->n_seqs - start : CHUNK);
    tf_status st = bert_forward(c->model, c->acts, c->ids + start * T,
                                c->lengths ? c->lengths + start : NULL, c->ignore, B, NULL);
    if (st != TF_OK) return st;
    const int64_t plane = (int64_t)B * T, half = (int64_t)L * KINDS * c->stride;
    double tokens = 0;
    for (int b = 0; b < B; b++) {
        const int length = c->lengths ? c->lengths[start + b] : T;
        tokens += length;
        for (int t = 0; t < length; t++)
            for (int l = 0; l < L; l++)
                for (int kind = 0; kind < KINDS; kind++) {
                    const int64_t row = (int64_t)l * plane + (int64_t)b * T + t;
                    const float *x = kind == KIND_FC1 ? c->acts->fc1 + row * f
                                                      : c->acts->qkv + row * 3 * d + (int64_t)kind * d;
                    const int width = kind == KIND_FC1 ? f : d;
                    double *s = buffer + ((int64_t)l * KINDS + kind) * c->stride;
                    for (int j = 0; j < width; j++) {
                        s[j] += x[j];
                        s[half + j] += (double)x[j] * x[j];
                    }
                }
    }
    buffer[len - 1] += tokens;
    return TF_OK;
}

/* Collective: per-neuron means and standard deviations of one model, (L, KINDS, stride). */
static tf_status collect(MPI_Comm comm, const bert_model *model, const int *ids,
                         const int *lengths, int64_t n_seqs, double *mean, double *sd)
{
    const bert_config *cfg = &model->cfg;
    moments_ctx c = {.model = model, .ids = ids, .lengths = lengths, .n_seqs = n_seqs,
                     .stride = cfg->d > cfg->mlp ? cfg->d : cfg->mlp};
    const int64_t half = (int64_t)cfg->layers * KINDS * c.stride, len = 2 * half + 1;
    double *sums = tf_malloc((size_t)len * sizeof(double));
    c.ignore = tf_malloc((size_t)CHUNK * cfg->seq_len * sizeof(int));
    tf_status st = sums && c.ignore ? bert_acts_create(cfg, CHUNK, &c.acts) : TF_ERR_NOMEM;
    for (int k = 0; c.ignore && k < CHUNK * cfg->seq_len; k++) c.ignore[k] = BERT_IGNORE;
    int failed = st != TF_OK, any_failed = 0;
    TF_MPI_CHECK(MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, comm));
    if (st == TF_OK && any_failed) st = tf_error_set(TF_ERR_NOMEM, "repair setup failed");
    if (st == TF_OK)
        st = reduce_chunks_sum(comm, (n_seqs + CHUNK - 1) / CHUNK, len, moments_fill, &c, sums);
    for (int64_t k = 0; st == TF_OK && k < half; k++) {
        double count = sums[len - 1] > 0 ? sums[len - 1] : 1;
        mean[k] = sums[k] / count;
        double var = sums[half + k] / count - mean[k] * mean[k];
        sd[k] = var > 0 ? sqrt(var) : 0;
    }
    bert_acts_free(&c.acts);
    free(c.ignore);
    free(sums);
    return st;
}

/* Rescales `width` rows (width, in) with bias so that moments (mu_f, sd_f) become
 * (mu_t, sd_t); neurons without spread are left alone. */
static void repair_rows(float *w, float *b, int width, int in, const double *mu_f,
                        const double *sd_f, const double *mu_t, const double *sd_t)
{
    for (int j = 0; j < width; j++) {
        if (!(sd_f[j] > 1e-12)) continue;
        double scale = sd_t[j] / sd_f[j];
        for (int k = 0; k < in; k++) w[(int64_t)j * in + k] = (float)(w[(int64_t)j * in + k] * scale);
        b[j] = (float)((b[j] - mu_f[j]) * scale + mu_t[j]);
    }
}

tf_status fuse_bert_repair(MPI_Comm comm, bert_model *fused, bert_model *const *aligned,
                           const double *weights, int n, const int *ids, const int *lengths,
                           int64_t n_seqs, enum fuse_repair what)
{
    if (what == FUSE_REPAIR_NONE) return TF_OK;
    if (what == FUSE_REPAIR_STREAM)
        return tf_error_set(TF_ERR_ARG, "repair \"stream\" is implemented for ViT models only; "
                            "use \"mlp\" or \"all\" for BERT parents");
    const bert_config *c = &fused->cfg;
    const int d = c->d, f = c->mlp, stride = d > f ? d : f;
    const int64_t len = (int64_t)c->layers * KINDS * stride;
    double *mu_t = tf_calloc((size_t)len, sizeof(double)), *sd_t = tf_calloc((size_t)len, 8);
    double *mu = tf_malloc((size_t)len * 8), *sd = tf_malloc((size_t)len * 8);
    tf_status st = mu_t && sd_t && mu && sd ? TF_OK : TF_ERR_NOMEM;

    /* Targets: weighted averages of the aligned parents' means and deviations. */
    for (int p = 0; st == TF_OK && p < n; p++) {
        if (weights[p] == 0) continue;
        st = collect(comm, aligned[p], ids, lengths, n_seqs, mu, sd);
        for (int64_t k = 0; st == TF_OK && k < len; k++) {
            mu_t[k] += weights[p] * mu[k];
            sd_t[k] += weights[p] * sd[k];
        }
    }

    /* Layer by layer: measure, repair Q/K/V; measure again, repair the MLP hidden layer. */
    for (int l = 0; st == TF_OK && l < c->layers; l++) {
        const int64_t base = (int64_t)l * KINDS * stride;
        if (what == FUSE_REPAIR_ALL) {
            st = collect(comm, fused, ids, lengths, n_seqs, mu, sd);
            for (int kind = KIND_Q; st == TF_OK && kind <= KIND_V; kind++) {
                const int64_t o = base + (int64_t)kind * stride;
                repair_rows(fused->p[BERT_QKV_W] + ((int64_t)l * 3 + kind) * d * d,
                            fused->p[BERT_QKV_B] + ((int64_t)l * 3 + kind) * d, d, d, mu + o,
                            sd + o, mu_t + o, sd_t + o);
            }
        }
        if (st == TF_OK) st = collect(comm, fused, ids, lengths, n_seqs, mu, sd);
        if (st == TF_OK) {
            const int64_t o = base + (int64_t)KIND_FC1 * stride;
            repair_rows(fused->p[BERT_FC1_W] + (int64_t)l * f * d, fused->p[BERT_FC1_B] + l * f,
                        f, d, mu + o, sd + o, mu_t + o, sd_t + o);
        }
    }
    free(mu_t);
    free(sd_t);
    free(mu);
    free(sd);
    return st;
}
