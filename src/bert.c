/* BERT-style masked-language model: parameter table, activations, forward and backward
 * passes. Shapes follow the notation of tfuse/bert.h. */
#include "tfuse/bert.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 1/sqrt(2) and 1/sqrt(2 pi), spelled out because strict C11 hides M_SQRT1_2. */
#define BERT_SQRT1_2 0.70710678118654752440
#define BERT_INV_SQRT_2PI 0.39894228040143267794

/* ---------------------------------------------------------------------------------------
 * Parameter table */

static const char *const param_names[BERT_NUM_PARAMS] = {
    "tok_emb", "pos_emb", "emb_ln_g", "emb_ln_b", "qkv_w",     "qkv_b",     "proj_w",
    "proj_b",  "ln1_g",   "ln1_b",    "fc1_w",    "fc1_b",     "fc2_w",     "fc2_b",
    "ln2_g",   "ln2_b",   "head_w",   "head_b",   "head_ln_g", "head_ln_b", "decoder_b"};

void bert_config_default(bert_config *cfg)
{
    cfg->vocab = TOK_DEFAULT_VOCAB;
    cfg->seq_len = 64;
    cfg->d = 128;
    cfg->layers = 4;
    cfg->heads = 4;
    cfg->mlp = 512;
    cfg->ln_eps = 1e-5;
}

tf_status bert_config_validate(const bert_config *cfg)
{
    if (!cfg) return tf_error_set(TF_ERR_ARG, "bert_config_validate: configuration is NULL");
    const struct {
        const char *name;
        int value;
    } fields[] = {{"vocab", cfg->vocab},   {"seq_len", cfg->seq_len}, {"d", cfg->d},
                  {"layers", cfg->layers}, {"heads", cfg->heads},     {"mlp", cfg->mlp}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (fields[i].value < 1 || fields[i].value > (1 << 24))
            return tf_error_set(TF_ERR_ARG,
                                "bert config: %s = %d is invalid; it must be in [1, 16777216]",
                                fields[i].name, fields[i].value);
    }
    if (cfg->d % cfg->heads != 0)
        return tf_error_set(TF_ERR_ARG,
                            "bert config: d = %d is not a multiple of heads = %d; choose heads "
                            "dividing d",
                            cfg->d, cfg->heads);
    if (!(cfg->ln_eps > 0) || !isfinite(cfg->ln_eps))
        return tf_error_set(TF_ERR_ARG, "bert config: ln_eps = %g is invalid; it must be > 0",
                            cfg->ln_eps);
    return TF_OK;
}

const char *bert_param_name(int which)
{
    if (which < 0 || which >= BERT_NUM_PARAMS) return "invalid";
    return param_names[which];
}

int bert_param_shape(const bert_config *c, int which, int64_t dims[4])
{
    const int64_t V = c->vocab, T = c->seq_len, d = c->d, L = c->layers, f = c->mlp;
    switch (which) {
    case BERT_TOK_EMB:
        dims[0] = V, dims[1] = d;
        return 2;
    case BERT_POS_EMB:
        dims[0] = T, dims[1] = d;
        return 2;
    case BERT_EMB_LN_G:
    case BERT_EMB_LN_B:
    case BERT_HEAD_B:
    case BERT_HEAD_LN_G:
    case BERT_HEAD_LN_B:
        dims[0] = d;
        return 1;
    case BERT_QKV_W:
        dims[0] = L, dims[1] = 3 * d, dims[2] = d;
        return 3;
    case BERT_QKV_B:
        dims[0] = L, dims[1] = 3 * d;
        return 2;
    case BERT_PROJ_W:
        dims[0] = L, dims[1] = d, dims[2] = d;
        return 3;
    case BERT_PROJ_B:
    case BERT_LN1_G:
    case BERT_LN1_B:
    case BERT_FC2_B:
    case BERT_LN2_G:
    case BERT_LN2_B:
        dims[0] = L, dims[1] = d;
        return 2;
    case BERT_FC1_W:
        dims[0] = L, dims[1] = f, dims[2] = d;
        return 3;
    case BERT_FC1_B:
        dims[0] = L, dims[1] = f;
        return 2;
    case BERT_FC2_W:
        dims[0] = L, dims[1] = d, dims[2] = f;
        return 3;
    case BERT_HEAD_W:
        dims[0] = d, dims[1] = d;
        return 2;
    case BERT_DECODER_B:
        dims[0] = V;
        return 1;
    default:
        return 0;
    }
}

int bert_param_decays(int which)
{
    return which == BERT_TOK_EMB || which == BERT_QKV_W || which == BERT_PROJ_W ||
           which == BERT_FC1_W || which == BERT_FC2_W || which == BERT_HEAD_W;
}

tf_status bert_model_create(const bert_config *cfg, bert_model **out)
{
    *out = NULL;
    tf_status st = bert_config_validate(cfg);
    if (st != TF_OK) return st;
    bert_model *m = tf_calloc(1, sizeof *m);
    if (!m) return tf_error_set(TF_ERR_NOMEM, "bert_model_create: out of memory");
    m->cfg = *cfg;
    for (int i = 0; i < BERT_NUM_PARAMS; i++) {
        int64_t dims[4], n = 1;
        int nd = bert_param_shape(cfg, i, dims);
        for (int k = 0; k < nd; k++) n *= dims[k];
        m->size[i] = n;
        m->num_params += n;
    }
    m->params = tf_calloc((size_t)m->num_params, sizeof(float));
    if (!m->params) {
        long long count = (long long)m->num_params;
        free(m);
        return tf_error_set(TF_ERR_NOMEM, "bert_model_create: no memory for %lld parameters",
                            count);
    }
    int64_t off = 0;
    for (int i = 0; i < BERT_NUM_PARAMS; i++) {
        m->p[i] = m->params + off;
        off += m->size[i];
    }
    *out = m;
    return TF_OK;
}

void bert_model_free(bert_model **model)
{
    if (!model || !*model) return;
    free((*model)->params);
    free(*model);
    *model = NULL;
}

static float truncated_normal(tf_rng *rng, double std)
{
    double z;
    do z = tf_rng_normal(rng);
    while (fabs(z) > 2.0);
    return (float)(z * std);
}

void bert_model_init(bert_model *model, uint64_t seed)
{
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    memset(model->params, 0, (size_t)model->num_params * sizeof(float));
    for (int i = 0; i < BERT_NUM_PARAMS; i++) {
        float *p = model->p[i];
        int64_t n = model->size[i];
        if (bert_param_decays(i) || i == BERT_POS_EMB) {
            for (int64_t k = 0; k < n; k++) p[k] = truncated_normal(&rng, BERT_INIT_STD);
        } else if (i == BERT_EMB_LN_G || i == BERT_LN1_G || i == BERT_LN2_G ||
                   i == BERT_HEAD_LN_G) {
            for (int64_t k = 0; k < n; k++) p[k] = 1.0f;
        }
    }
}

void bert_model_copy(bert_model *dst, const bert_model *src)
{
    memcpy(dst->params, src->params, (size_t)src->num_params * sizeof(float));
}

/* ---------------------------------------------------------------------------------------
 * Activations */

/* Backward workspace: gradients of the stream and of the wide intermediate buffers. */
typedef struct {
    float *dx;     /* (B, T, d) gradient of the current layer output */
    float *dres;   /* (B, T, d) gradient of a LayerNorm input */
    float *dln1;   /* (B, T, d) */
    float *datty;  /* (B, T, d) */
    float *dqkv;   /* (B, T, 3*d) */
    float *dfc;    /* (B, T, f) */
    float *dp;     /* (T, T) one head's gradient of the attention probabilities */
    float *dlogit; /* (pred_capacity, V) */
} bert_scratch;

static void acts_release(bert_acts *a)
{
    int **ints[] = {&a->ids, &a->lengths, &a->labels, &a->pred_pos};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) free(*ints[i]);
    float **fl[] = {&a->emb,      &a->emb_ln,    &a->emb_mean,  &a->emb_rstd, &a->qkv,
                    &a->att,      &a->atty,      &a->attn_out,  &a->res1,     &a->ln1,
                    &a->ln1_mean, &a->ln1_rstd,  &a->fc1,       &a->gelu,     &a->res2,
                    &a->ln2,      &a->ln2_mean,  &a->ln2_rstd,  &a->head_pre, &a->head_gelu,
                    &a->head_ln,  &a->head_mean, &a->head_rstd, &a->logits,   &a->probs};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) free(*fl[i]);
    bert_scratch *s = a->scratch;
    if (s) {
        float **sf[] = {&s->dx,   &s->dres, &s->dln1, &s->datty,
                        &s->dqkv, &s->dfc,  &s->dp,   &s->dlogit};
        for (size_t i = 0; i < sizeof sf / sizeof sf[0]; i++) free(*sf[i]);
        free(s);
    }
}

/* Allocates the float buffers of the activations except the (n, V) ones, which
 * acts_reserve_pred grows; returns 0 if one allocation failed. */
static int acts_alloc_floats(bert_acts *a, bert_scratch *s, const bert_config *c, int64_t B)
{
    const int64_t T = c->seq_len, d = c->d, f = c->mlp, L = c->layers, h = c->heads;
    const int64_t BT = B * T;
    struct {
        float **ptr;
        int64_t count;
    } table[] = {
        {&a->emb, BT * d},      {&a->emb_ln, BT * d},       {&a->emb_mean, BT},
        {&a->emb_rstd, BT},     {&a->qkv, L * BT * 3 * d},  {&a->att, L * B * h * T * T},
        {&a->atty, L * BT * d}, {&a->attn_out, L * BT * d}, {&a->res1, L * BT * d},
        {&a->ln1, L * BT * d},  {&a->ln1_mean, L * BT},     {&a->ln1_rstd, L * BT},
        {&a->fc1, L * BT * f},  {&a->gelu, L * BT * f},     {&a->res2, L * BT * d},
        {&a->ln2, L * BT * d},  {&a->ln2_mean, L * BT},     {&a->ln2_rstd, L * BT},
        {&a->head_pre, BT * d}, {&a->head_gelu, BT * d},    {&a->head_ln, BT * d},
        {&a->head_mean, BT},    {&a->head_rstd, BT},        {&s->dx, BT * d},
        {&s->dres, BT * d},     {&s->dln1, BT * d},         {&s->datty, BT * d},
        {&s->dqkv, BT * 3 * d}, {&s->dfc, BT * f},          {&s->dp, T * T},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        *table[i].ptr = tf_malloc((size_t)table[i].count * sizeof(float));
        if (!*table[i].ptr) return 0;
    }
    return 1;
}

tf_status bert_acts_create(const bert_config *cfg, int max_batch, bert_acts **out)
{
    *out = NULL;
    tf_status st = bert_config_validate(cfg);
    if (st != TF_OK) return st;
    if (max_batch < 1)
        return tf_error_set(TF_ERR_ARG, "bert_acts_create: max_batch = %d must be >= 1", max_batch);
    if ((int64_t)max_batch * cfg->seq_len > INT32_MAX / 4)
        return tf_error_set(TF_ERR_ARG,
                            "bert_acts_create: max_batch * seq_len = %lld is too large for "
                            "int positions; use a smaller batch",
                            (long long)max_batch * cfg->seq_len);
    bert_acts *a = tf_calloc(1, sizeof *a);
    bert_scratch *s = tf_calloc(1, sizeof *s);
    if (!a || !s) {
        free(a);
        free(s);
        return tf_error_set(TF_ERR_NOMEM, "bert_acts_create: out of memory");
    }
    a->scratch = s;
    a->max_batch = max_batch;
    const int64_t BT = (int64_t)max_batch * cfg->seq_len;
    a->ids = tf_malloc((size_t)BT * sizeof(int));
    a->labels = tf_malloc((size_t)BT * sizeof(int));
    a->pred_pos = tf_malloc((size_t)BT * sizeof(int));
    a->lengths = tf_malloc((size_t)max_batch * sizeof(int));
    if (!a->ids || !a->labels || !a->pred_pos || !a->lengths ||
        !acts_alloc_floats(a, s, cfg, max_batch)) {
        acts_release(a);
        free(a);
        return tf_error_set(TF_ERR_NOMEM, "bert_acts_create: no memory for batch %d", max_batch);
    }
    *out = a;
    return TF_OK;
}

void bert_acts_free(bert_acts **acts)
{
    if (!acts || !*acts) return;
    acts_release(*acts);
    free(*acts);
    *acts = NULL;
}

/* ---------------------------------------------------------------------------------------
 * Kernels. N is a number of rows (tokens), in and out widths are written beside each. */

/* I and O are the input and output widths nin and nout.
 * out (N, O) = in (N, I) W^T + b, with W (O, I) and b (O). */
static void linear_forward(float *out, const float *in, const float *W, const float *b, int N,
                           int nin, int nout)
{
    for (int n = 0; n < N; n++) memcpy(out + (int64_t)n * nout, b, (size_t)nout * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, nout, nin, 1.0f, in, nin, W, nin, 1.0f,
                out, nout);
}

/* Given dout (N, O), accumulates dW (O, I) += dout^T in and db (O) += column sums of dout,
 * and writes din (N, I) = dout W (or adds it if accumulate is 1; din may be NULL). */
static void linear_backward(float *din, float *dW, float *db, const float *dout, const float *in,
                            const float *W, int N, int nin, int nout, int accumulate)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nout, nin, N, 1.0f, dout, nout, in, nin,
                1.0f, dW, nin);
    for (int n = 0; n < N; n++) {
        const float *row = dout + (int64_t)n * nout;
        for (int o = 0; o < nout; o++) db[o] += row[o];
    }
    if (din)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, nin, nout, 1.0f, dout, nout, W,
                    nin, accumulate ? 1.0f : 0.0f, din, nin);
}

/* LayerNorm over the last axis: out (N, d) = g * (in - mean) * rstd + b; mean, rstd (N). */
static void layernorm_forward(float *out, float *mean, float *rstd, const float *in, const float *g,
                              const float *b, int N, int d, double eps)
{
    for (int n = 0; n < N; n++) {
        const float *x = in + (int64_t)n * d;
        float *y = out + (int64_t)n * d;
        double s = 0, ss = 0;
        for (int i = 0; i < d; i++) s += x[i];
        double mu = s / d;
        for (int i = 0; i < d; i++) ss += (x[i] - mu) * (x[i] - mu);
        double r = 1.0 / sqrt(ss / d + eps);
        for (int i = 0; i < d; i++) y[i] = (float)((x[i] - mu) * r) * g[i] + b[i];
        mean[n] = (float)mu;
        rstd[n] = (float)r;
    }
}

/* Backward of layernorm_forward: din (N, d) is overwritten; dg, db (d) accumulate. */
static void layernorm_backward(float *din, float *dg, float *db, const float *dout, const float *in,
                               const float *mean, const float *rstd, const float *g, int N, int d)
{
    for (int n = 0; n < N; n++) {
        const float *x = in + (int64_t)n * d, *dy = dout + (int64_t)n * d;
        float *dx = din + (int64_t)n * d;
        double mu = mean[n], r = rstd[n], sum_dxh = 0, sum_dxh_xh = 0;
        for (int i = 0; i < d; i++) {
            double xh = (x[i] - mu) * r, dxh = (double)dy[i] * g[i];
            dg[i] += (float)(dy[i] * xh);
            db[i] += dy[i];
            sum_dxh += dxh;
            sum_dxh_xh += dxh * xh;
        }
        sum_dxh /= d;
        sum_dxh_xh /= d;
        for (int i = 0; i < d; i++) {
            double xh = (x[i] - mu) * r, dxh = (double)dy[i] * g[i];
            dx[i] = (float)(r * (dxh - sum_dxh - xh * sum_dxh_xh));
        }
    }
}

/* Exact GELU x * Phi(x) on n values, and its backward din = dout * GELU'(in). */
static void gelu_forward(float *out, const float *in, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = 0.5f * in[i] * (1.0f + erff(in[i] * (float)BERT_SQRT1_2));
}

static void gelu_backward(float *din, const float *dout, const float *in, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float x = in[i];
        float cdf = 0.5f * (1.0f + erff(x * (float)BERT_SQRT1_2));
        float pdf = expf(-0.5f * x * x) * (float)BERT_INV_SQRT_2PI;
        din[i] = dout[i] * (cdf + x * pdf);
    }
}

/* Softmax of each row of scores (T, T) over keys j < len, in place; keys j >= len get 0. */
static void masked_softmax_rows(float *p, int T, int len)
{
    for (int i = 0; i < T; i++) {
        float *row = p + (int64_t)i * T;
        float mx = -FLT_MAX;
        for (int j = 0; j < len; j++) mx = row[j] > mx ? row[j] : mx;
        double s = 0;
        for (int j = 0; j < len; j++) {
            row[j] = expf(row[j] - mx);
            s += row[j];
        }
        float inv = (float)(1.0 / s);
        for (int j = 0; j < len; j++) row[j] *= inv;
        for (int j = len; j < T; j++) row[j] = 0.0f;
    }
}

/* Multi-head self-attention of one sequence: qkv (T, 3*d) rows [Q | K | V], att (h, T, T)
 * receives the probabilities, y (T, d) the heads' outputs concatenated. Keys t >= len are
 * masked out. */
static void attention_forward(float *y, float *att, const float *qkv, int T, int d, int h, int len)
{
    const int hs = d / h, ld = 3 * d;
    const float scale = (float)(1.0 / sqrt((double)hs));
    for (int k = 0; k < h; k++) {
        const float *q = qkv + k * hs, *key = qkv + d + k * hs, *v = qkv + 2 * d + k * hs;
        float *p = att + (int64_t)k * T * T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, ld, key, ld, 0.0f,
                    p, T);
        masked_softmax_rows(p, T, len);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, v, ld, 0.0f,
                    y + k * hs, d);
    }
}

/* Backward of attention_forward for one sequence: dy (T, d) -> dqkv (T, 3*d), overwritten.
 * dp (T, T) is workspace. */
static void attention_backward(float *dqkv, float *dp, const float *dy, const float *att,
                               const float *qkv, int T, int d, int h)
{
    const int hs = d / h, ld = 3 * d;
    const float scale = (float)(1.0 / sqrt((double)hs));
    for (int k = 0; k < h; k++) {
        const float *q = qkv + k * hs, *key = qkv + d + k * hs, *v = qkv + 2 * d + k * hs;
        const float *p = att + (int64_t)k * T * T, *dyk = dy + k * hs;
        float *dq = dqkv + k * hs, *dk = dqkv + d + k * hs, *dv = dqkv + 2 * d + k * hs;
        /* dP = dY V^T and dV = P^T dY */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dyk, d, v, ld, 0.0f,
                    dp, T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, dyk, d, 0.0f, dv,
                    ld);
        /* softmax backward: dS = P * (dP - rowsum(P * dP)), then scaled */
        for (int i = 0; i < T; i++) {
            const float *pr = p + (int64_t)i * T;
            float *dr = dp + (int64_t)i * T;
            double dot = 0;
            for (int j = 0; j < T; j++) dot += (double)pr[j] * dr[j];
            for (int j = 0; j < T; j++) dr[j] = pr[j] * (float)(dr[j] - dot) * scale;
        }
        /* dQ = dS K and dK = dS^T Q */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, dp, T, key, ld, 0.0f,
                    dq, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, dp, T, q, ld, 0.0f, dk,
                    ld);
    }
}

/* ---------------------------------------------------------------------------------------
 * Forward pass */

/* Grows the (n, V) buffers logits, probs and the scratch's dlogit to at least n rows, at
 * most max_rows. They grow on demand because a training batch predicts only its masked
 * positions. */
static tf_status acts_reserve_pred(bert_acts *a, int n, int V, int64_t max_rows)
{
    if (n <= a->pred_capacity) return TF_OK;
    bert_scratch *s = a->scratch;
    float **bufs[] = {&a->logits, &a->probs, &s->dlogit};
    const int64_t rows = n + n / 2 < max_rows ? n + n / 2 : max_rows;
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        float *grown = realloc(*bufs[i], (size_t)(rows * V) * sizeof(float));
        if (!grown)
            return tf_error_set(TF_ERR_NOMEM,
                                "bert_forward: no memory for logits of %lld positions",
                                (long long)rows);
        *bufs[i] = grown;
    }
    a->pred_capacity = (int)rows;
    return TF_OK;
}

static tf_status check_inputs(const bert_config *c, const int *ids, const int *lengths,
                              const int *labels, int B)
{
    const int T = c->seq_len;
    for (int64_t i = 0; i < (int64_t)B * T; i++) {
        if (ids[i] < 0 || ids[i] >= c->vocab)
            return tf_error_set(TF_ERR_ARG,
                                "bert_forward: token id %d at sequence %lld position %lld is "
                                "outside [0, %d)",
                                ids[i], (long long)(i / T), (long long)(i % T), c->vocab);
        if (labels && labels[i] != BERT_IGNORE && (labels[i] < 0 || labels[i] >= c->vocab))
            return tf_error_set(TF_ERR_ARG,
                                "bert_forward: label %d at sequence %lld position %lld is "
                                "neither %d nor in [0, %d)",
                                labels[i], (long long)(i / T), (long long)(i % T), BERT_IGNORE,
                                c->vocab);
    }
    for (int b = 0; lengths && b < B; b++) {
        if (lengths[b] < 1 || lengths[b] > T)
            return tf_error_set(TF_ERR_ARG,
                                "bert_forward: length %d of sequence %d is outside [1, %d]",
                                lengths[b], b, T);
    }
    return TF_OK;
}

/* emb (B*T, d) = E[ids] + P[t], then the embedding LayerNorm. */
static void embed_forward(const bert_model *m, bert_acts *a, int B)
{
    const int T = m->cfg.seq_len, d = m->cfg.d;
    for (int64_t i = 0; i < (int64_t)B * T; i++) {
        const float *e = m->p[BERT_TOK_EMB] + (int64_t)a->ids[i] * d;
        const float *pos = m->p[BERT_POS_EMB] + (i % T) * d;
        float *out = a->emb + i * d;
        for (int k = 0; k < d; k++) out[k] = e[k] + pos[k];
    }
    layernorm_forward(a->emb_ln, a->emb_mean, a->emb_rstd, a->emb, m->p[BERT_EMB_LN_G],
                      m->p[BERT_EMB_LN_B], B * T, d, m->cfg.ln_eps);
}

/* One post-LN encoder layer l on x (B*T, d); its output is ln2 of layer l. */
static void layer_forward(const bert_model *m, bert_acts *a, int l, const float *x, int B)
{
    const bert_config *c = &m->cfg;
    const int T = c->seq_len, d = c->d, f = c->mlp, h = c->heads, N = B * T;
    const int64_t sd = (int64_t)N * d, sf = (int64_t)N * f;
    float *qkv = a->qkv + l * sd * 3, *att = a->att + (int64_t)l * B * h * T * T;
    float *atty = a->atty + l * sd, *attn_out = a->attn_out + l * sd, *res1 = a->res1 + l * sd;
    float *ln1 = a->ln1 + l * sd, *fc1 = a->fc1 + l * sf, *gelu = a->gelu + l * sf;
    float *res2 = a->res2 + l * sd, *ln2 = a->ln2 + l * sd;

    linear_forward(qkv, x, m->p[BERT_QKV_W] + (int64_t)l * 3 * d * d,
                   m->p[BERT_QKV_B] + (int64_t)l * 3 * d, N, d, 3 * d);
    for (int b = 0; b < B; b++)
        attention_forward(atty + (int64_t)b * T * d, att + (int64_t)b * h * T * T,
                          qkv + (int64_t)b * T * 3 * d, T, d, h, a->lengths[b]);
    linear_forward(attn_out, atty, m->p[BERT_PROJ_W] + (int64_t)l * d * d,
                   m->p[BERT_PROJ_B] + (int64_t)l * d, N, d, d);
    for (int64_t i = 0; i < sd; i++) res1[i] = x[i] + attn_out[i];
    layernorm_forward(ln1, a->ln1_mean + (int64_t)l * N, a->ln1_rstd + (int64_t)l * N, res1,
                      m->p[BERT_LN1_G] + (int64_t)l * d, m->p[BERT_LN1_B] + (int64_t)l * d, N, d,
                      c->ln_eps);

    linear_forward(fc1, ln1, m->p[BERT_FC1_W] + (int64_t)l * f * d,
                   m->p[BERT_FC1_B] + (int64_t)l * f, N, d, f);
    gelu_forward(gelu, fc1, sf);
    linear_forward(res2, gelu, m->p[BERT_FC2_W] + (int64_t)l * d * f,
                   m->p[BERT_FC2_B] + (int64_t)l * d, N, f, d);
    for (int64_t i = 0; i < sd; i++) res2[i] += ln1[i];
    layernorm_forward(ln2, a->ln2_mean + (int64_t)l * N, a->ln2_rstd + (int64_t)l * N, res2,
                      m->p[BERT_LN2_G] + (int64_t)l * d, m->p[BERT_LN2_B] + (int64_t)l * d, N, d,
                      c->ln_eps);
}

/* MLM head on all B*T rows of x, then the tied decoder on the predicted rows; returns the
 * sum of their cross-entropies (0 without labels). */
static double head_forward(const bert_model *m, bert_acts *a, const float *x, int B)
{
    const bert_config *c = &m->cfg;
    const int N = B * c->seq_len, d = c->d, V = c->vocab;
    linear_forward(a->head_pre, x, m->p[BERT_HEAD_W], m->p[BERT_HEAD_B], N, d, d);
    gelu_forward(a->head_gelu, a->head_pre, (int64_t)N * d);
    layernorm_forward(a->head_ln, a->head_mean, a->head_rstd, a->head_gelu, m->p[BERT_HEAD_LN_G],
                      m->p[BERT_HEAD_LN_B], N, d, c->ln_eps);

    /* gather the predicted rows into backward workspace, then logits = z E^T + bias */
    const int n = a->num_pred;
    float *z = ((bert_scratch *)a->scratch)->dres;
    for (int r = 0; r < n; r++)
        memcpy(z + (int64_t)r * d, a->head_ln + (int64_t)a->pred_pos[r] * d,
               (size_t)d * sizeof(float));
    if (n > 0) linear_forward(a->logits, z, m->p[BERT_TOK_EMB], m->p[BERT_DECODER_B], n, d, V);

    double loss = 0;
    for (int r = 0; r < n; r++) {
        const float *lg = a->logits + (int64_t)r * V;
        float *pr = a->probs + (int64_t)r * V;
        float mx = -FLT_MAX;
        for (int v = 0; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
        double s = 0;
        for (int v = 0; v < V; v++) {
            pr[v] = expf(lg[v] - mx);
            s += pr[v];
        }
        const float inv = (float)(1.0 / s);
        for (int v = 0; v < V; v++) pr[v] *= inv;
        int y = a->labels[a->pred_pos[r]];
        if (y >= 0) loss += log(s) + mx - lg[y];
    }
    return loss;
}

tf_status bert_forward(const bert_model *model, bert_acts *acts, const int *ids, const int *lengths,
                       const int *labels, int batch, float *loss)
{
    const bert_config *c = &model->cfg;
    const int T = c->seq_len, L = c->layers, d = c->d;
    if (batch < 1 || batch > acts->max_batch)
        return tf_error_set(TF_ERR_ARG, "bert_forward: batch %d is outside [1, %d]", batch,
                            acts->max_batch);
    tf_status st = check_inputs(c, ids, lengths, labels, batch);
    if (st != TF_OK) return st;

    /* record the inputs and choose the rows that get logits */
    const int N = batch * T;
    acts->batch = batch;
    memcpy(acts->ids, ids, (size_t)N * sizeof(int));
    for (int b = 0; b < batch; b++) acts->lengths[b] = lengths ? lengths[b] : T;
    acts->num_pred = 0;
    for (int i = 0; i < N; i++) {
        acts->labels[i] = labels ? labels[i] : BERT_IGNORE;
        if (!labels || labels[i] != BERT_IGNORE) acts->pred_pos[acts->num_pred++] = i;
    }

    st = acts_reserve_pred(acts, acts->num_pred, c->vocab, (int64_t)acts->max_batch * T);
    if (st != TF_OK) {
        acts->batch = 0;
        return st;
    }

    /* embeddings, encoder layers, MLM head */
    embed_forward(model, acts, batch);
    for (int l = 0; l < L; l++) {
        const float *x = l == 0 ? acts->emb_ln : acts->ln2 + (int64_t)(l - 1) * N * d;
        layer_forward(model, acts, l, x, batch);
    }
    double total = head_forward(model, acts, acts->ln2 + (int64_t)(L - 1) * N * d, batch);
    if (labels && loss) *loss = acts->num_pred > 0 ? (float)(total / acts->num_pred) : 0.0f;
    return TF_OK;
}

int bert_count_correct(const bert_model *model, const bert_acts *acts)
{
    const int V = model->cfg.vocab;
    int correct = 0;
    for (int r = 0; r < acts->num_pred; r++) {
        const float *lg = acts->logits + (int64_t)r * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (lg[v] > lg[best]) best = v;
        correct += best == acts->labels[acts->pred_pos[r]];
    }
    return correct;
}

/* ---------------------------------------------------------------------------------------
 * Backward pass */

/* Backward through the decoder and the MLM head from the logit gradient in s->dlogit
 * (n, V); leaves the gradient of the last layer output in s->dx. */
static void head_backward(const bert_model *m, bert_acts *a, float *grads_p[], const float *x)
{
    const bert_config *c = &m->cfg;
    const int N = a->batch * c->seq_len, d = c->d, V = c->vocab, n = a->num_pred;
    bert_scratch *s = a->scratch;

    /* the decoder input z is regathered from head_ln */
    float *z = s->dres, *dz = s->datty;
    for (int r = 0; r < n; r++)
        memcpy(z + (int64_t)r * d, a->head_ln + (int64_t)a->pred_pos[r] * d,
               (size_t)d * sizeof(float));
    linear_backward(dz, grads_p[BERT_TOK_EMB], grads_p[BERT_DECODER_B], s->dlogit, z,
                    m->p[BERT_TOK_EMB], n, d, V, 0);

    /* scatter into a (N, d) gradient of head_ln, zero at rows without a prediction */
    float *dhead = s->dln1;
    memset(dhead, 0, (size_t)N * d * sizeof(float));
    for (int r = 0; r < n; r++)
        memcpy(dhead + (int64_t)a->pred_pos[r] * d, dz + (int64_t)r * d, (size_t)d * sizeof(float));
    layernorm_backward(s->dres, grads_p[BERT_HEAD_LN_G], grads_p[BERT_HEAD_LN_B], dhead,
                       a->head_gelu, a->head_mean, a->head_rstd, m->p[BERT_HEAD_LN_G], N, d);
    gelu_backward(s->dres, s->dres, a->head_pre, (int64_t)N * d);
    linear_backward(s->dx, grads_p[BERT_HEAD_W], grads_p[BERT_HEAD_B], s->dres, x,
                    m->p[BERT_HEAD_W], N, d, d, 0);
}

/* Backward of encoder layer l: s->dx contains the gradient of its output (ln2) on entry and of
 * its input x on return. */
static void layer_backward(const bert_model *m, bert_acts *a, float *g[], int l, const float *x)
{
    const bert_config *c = &m->cfg;
    const int B = a->batch, T = c->seq_len, d = c->d, f = c->mlp, h = c->heads, N = B * T;
    const int64_t sd = (int64_t)N * d, sf = (int64_t)N * f, ln = (int64_t)l * N;
    const int64_t ld = (int64_t)l * d;
    bert_scratch *s = a->scratch;

    /* LN2, MLP branch and its residual */
    layernorm_backward(s->dres, g[BERT_LN2_G] + ld, g[BERT_LN2_B] + ld, s->dx, a->res2 + l * sd,
                       a->ln2_mean + ln, a->ln2_rstd + ln, m->p[BERT_LN2_G] + ld, N, d);
    memcpy(s->dln1, s->dres, (size_t)sd * sizeof(float));
    linear_backward(s->dfc, g[BERT_FC2_W] + ld * f, g[BERT_FC2_B] + ld, s->dres, a->gelu + l * sf,
                    m->p[BERT_FC2_W] + ld * f, N, f, d, 0);
    gelu_backward(s->dfc, s->dfc, a->fc1 + l * sf, sf);
    linear_backward(s->dln1, g[BERT_FC1_W] + ld * f, g[BERT_FC1_B] + (int64_t)l * f, s->dfc,
                    a->ln1 + l * sd, m->p[BERT_FC1_W] + ld * f, N, d, f, 1);

    /* LN1, attention branch and its residual */
    layernorm_backward(s->dres, g[BERT_LN1_G] + ld, g[BERT_LN1_B] + ld, s->dln1, a->res1 + l * sd,
                       a->ln1_mean + ln, a->ln1_rstd + ln, m->p[BERT_LN1_G] + ld, N, d);
    memcpy(s->dx, s->dres, (size_t)sd * sizeof(float));
    linear_backward(s->datty, g[BERT_PROJ_W] + ld * d, g[BERT_PROJ_B] + ld, s->dres,
                    a->atty + l * sd, m->p[BERT_PROJ_W] + ld * d, N, d, d, 0);
    const float *att = a->att + (int64_t)l * B * h * T * T, *qkv = a->qkv + l * sd * 3;
    for (int b = 0; b < B; b++)
        attention_backward(s->dqkv + (int64_t)b * T * 3 * d, s->dp, s->datty + (int64_t)b * T * d,
                           att + (int64_t)b * h * T * T, qkv + (int64_t)b * T * 3 * d, T, d, h);
    linear_backward(s->dx, g[BERT_QKV_W] + ld * 3 * d, g[BERT_QKV_B] + ld * 3, s->dqkv, x,
                    m->p[BERT_QKV_W] + ld * 3 * d, N, d, 3 * d, 1);
}

/* Embedding LayerNorm backward, then scatter into the token and position tables. */
static void embed_backward(const bert_model *m, bert_acts *a, float *g[])
{
    const int T = m->cfg.seq_len, d = m->cfg.d, N = a->batch * T;
    bert_scratch *s = a->scratch;
    layernorm_backward(s->dres, g[BERT_EMB_LN_G], g[BERT_EMB_LN_B], s->dx, a->emb, a->emb_mean,
                       a->emb_rstd, m->p[BERT_EMB_LN_G], N, d);
    for (int64_t i = 0; i < N; i++) {
        float *de = g[BERT_TOK_EMB] + (int64_t)a->ids[i] * d;
        float *dp = g[BERT_POS_EMB] + (i % T) * d;
        const float *src = s->dres + i * d;
        for (int k = 0; k < d; k++) {
            de[k] += src[k];
            dp[k] += src[k];
        }
    }
}

/* Backward pass from the logit gradient in the scratch's dlogit; overwrites grads. */
static void backward_from_logits(const bert_model *model, bert_acts *acts, float *grads)
{
    const bert_config *c = &model->cfg;
    const int N = acts->batch * c->seq_len, d = c->d;

    /* gradient views laid out like the parameters, all accumulated from zero */
    float *g[BERT_NUM_PARAMS];
    for (int i = 0; i < BERT_NUM_PARAMS; i++) g[i] = grads + (model->p[i] - model->params);
    memset(grads, 0, (size_t)model->num_params * sizeof(float));
    if (acts->num_pred == 0) return;

    head_backward(model, acts, g, acts->ln2 + (int64_t)(c->layers - 1) * N * d);
    for (int l = c->layers - 1; l >= 0; l--) {
        const float *x = l == 0 ? acts->emb_ln : acts->ln2 + (int64_t)(l - 1) * N * d;
        layer_backward(model, acts, g, l, x);
    }
    embed_backward(model, acts, g);
}

tf_status bert_backward(const bert_model *model, bert_acts *acts, float *grads)
{
    const int V = model->cfg.vocab, n = acts->num_pred;
    bert_scratch *s = acts->scratch;
    if (acts->batch < 1)
        return tf_error_set(TF_ERR_ARG, "bert_backward: no forward pass recorded in acts");
    for (int r = 0; r < n; r++)
        if (acts->labels[acts->pred_pos[r]] < 0)
            return tf_error_set(TF_ERR_ARG,
                                "bert_backward: the last forward pass had no labels; call "
                                "bert_forward with labels first");

    /* dlogits = (probs - onehot(label)) / n */
    for (int r = 0; r < n; r++) {
        float *dl = s->dlogit + (int64_t)r * V;
        memcpy(dl, acts->probs + (int64_t)r * V, (size_t)V * sizeof(float));
        dl[acts->labels[acts->pred_pos[r]]] -= 1.0f;
        for (int v = 0; v < V; v++) dl[v] /= (float)n;
    }
    backward_from_logits(model, acts, grads);
    return TF_OK;
}

tf_status bert_backward_soft(const bert_model *model, bert_acts *acts, const float *targets,
                             float *grads)
{
    const int V = model->cfg.vocab, n = acts->num_pred;
    bert_scratch *s = acts->scratch;
    if (acts->batch < 1)
        return tf_error_set(TF_ERR_ARG, "bert_backward_soft: no forward pass recorded in acts");

    /* dlogits = (probs - targets) / n */
    for (int64_t i = 0; i < (int64_t)n * V; i++)
        s->dlogit[i] = (acts->probs[i] - targets[i]) / (float)n;
    backward_from_logits(model, acts, grads);
    return TF_OK;
}
