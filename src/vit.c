/* Pre-LN ViT classifier: parameter table, activations, forward and backward passes.
 * The kernels live in vit_kernels.c; this file lays out memory and sequences the layers. */
#include "tfuse/vit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vit_kernels.h"

/* Workspace behind vit_acts.scratch; the forward pass fills dgelu and uses emb and work. */
typedef struct {
    float *dx;      /* (B, T, d) gradient of the residual stream */
    float *dln;     /* (B, T, d) gradient of a LayerNorm output or of atty */
    float *dwide;   /* (B, T, max(3*d, f)) gradient of qkv or of the MLP hidden layer */
    float *emb;     /* (B, N, d) patch embeddings, then their gradient */
    float *cls;     /* (B, d) class tokens entering the final LayerNorm */
    float *dlnf;    /* (B, d) gradient of the final LayerNorm output */
    float *dlog;    /* (B, C) gradient of the logits */
    float *dgelu;   /* (L, B, T, f) GELU derivative at fc1 */
    float *work;    /* vit_attention_work(T, d, h) floats for the attention kernels */
    vit_config cfg; /* configuration the buffers were sized for */
} vit_scratch;

static const char *const param_names[VIT_NUM_PARAMS] = {
    "patch_w", "patch_b", "cls",   "pos",   "ln1_g", "ln1_b", "qkv_w", "qkv_b", "proj_w", "proj_b",
    "ln2_g",   "ln2_b",   "fc1_w", "fc1_b", "fc2_w", "fc2_b", "lnf_g", "lnf_b", "head_w", "head_b"};

tf_status vit_config_validate(const vit_config *cfg)
{
    if (!cfg) return tf_error_set(TF_ERR_ARG, "vit_config_validate: configuration is NULL");
    const struct {
        const char *name;
        int value;
    } positive[] = {{"image_size", cfg->image_size},
                    {"channels", cfg->channels},
                    {"patch", cfg->patch},
                    {"d", cfg->d},
                    {"layers", cfg->layers},
                    {"heads", cfg->heads},
                    {"mlp", cfg->mlp},
                    {"classes", cfg->classes}};
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++) {
        if (positive[i].value <= 0)
            return tf_error_set(TF_ERR_ARG, "invalid ViT configuration: %s = %d, must be positive",
                                positive[i].name, positive[i].value);
    }
    if (cfg->image_size % cfg->patch != 0)
        return tf_error_set(TF_ERR_ARG,
                            "invalid ViT configuration: image_size = %d is not a multiple of "
                            "patch = %d",
                            cfg->image_size, cfg->patch);
    if (cfg->d % cfg->heads != 0)
        return tf_error_set(TF_ERR_ARG,
                            "invalid ViT configuration: d = %d is not a multiple of heads = %d",
                            cfg->d, cfg->heads);
    if (!(cfg->ln_eps > 0.0) || !isfinite(cfg->ln_eps))
        return tf_error_set(TF_ERR_ARG,
                            "invalid ViT configuration: ln_eps = %g, must be positive and finite",
                            cfg->ln_eps);
    /* Keep every per-image count within int, since BLAS takes int dimensions. */
    int64_t side = cfg->image_size / cfg->patch;
    int64_t per_patch = (int64_t)cfg->patch * cfg->patch * cfg->channels;
    int64_t widest = 3 * (int64_t)cfg->d > cfg->mlp ? 3 * (int64_t)cfg->d : cfg->mlp;
    if (side * side + 1 > 65536 || per_patch > (1 << 24) || widest > (1 << 24))
        return tf_error_set(TF_ERR_ARG,
                            "invalid ViT configuration: sizes too large (tokens %lld, values per "
                            "patch %lld, widest layer %lld)",
                            (long long)(side * side + 1), (long long)per_patch, (long long)widest);
    return TF_OK;
}

const char *vit_param_name(int which)
{
    if (which < 0 || which >= VIT_NUM_PARAMS) return "unknown";
    return param_names[which];
}

int vit_param_shape(const vit_config *cfg, int which, int64_t dims[4])
{
    int64_t d = cfg->d, L = cfg->layers, f = cfg->mlp;
    switch (which) {
    case VIT_PATCH_W:
        dims[0] = d, dims[1] = vit_patch_values(cfg);
        return 2;
    case VIT_POS:
        dims[0] = vit_tokens(cfg), dims[1] = d;
        return 2;
    case VIT_PATCH_B:
    case VIT_CLS:
    case VIT_LNF_G:
    case VIT_LNF_B:
        dims[0] = d;
        return 1;
    case VIT_LN1_G:
    case VIT_LN1_B:
    case VIT_PROJ_B:
    case VIT_LN2_G:
    case VIT_LN2_B:
    case VIT_FC2_B:
        dims[0] = L, dims[1] = d;
        return 2;
    case VIT_QKV_W:
        dims[0] = L, dims[1] = 3 * d, dims[2] = d;
        return 3;
    case VIT_QKV_B:
        dims[0] = L, dims[1] = 3 * d;
        return 2;
    case VIT_PROJ_W:
        dims[0] = L, dims[1] = d, dims[2] = d;
        return 3;
    case VIT_FC1_W:
        dims[0] = L, dims[1] = f, dims[2] = d;
        return 3;
    case VIT_FC1_B:
        dims[0] = L, dims[1] = f;
        return 2;
    case VIT_FC2_W:
        dims[0] = L, dims[1] = d, dims[2] = f;
        return 3;
    case VIT_HEAD_W:
        dims[0] = cfg->classes, dims[1] = d;
        return 2;
    case VIT_HEAD_B:
        dims[0] = cfg->classes;
        return 1;
    }
    return 0;
}

tf_status vit_model_create(const vit_config *cfg, vit_model **out)
{
    *out = NULL;
    tf_status status = vit_config_validate(cfg);
    if (status != TF_OK) return status;
    vit_model *model = tf_calloc(1, sizeof *model);
    if (!model) return TF_ERR_NOMEM;
    model->cfg = *cfg;
    model->num_params = 0;
    for (int k = 0; k < VIT_NUM_PARAMS; k++) {
        int64_t dims[4];
        int nd = vit_param_shape(cfg, k, dims);
        model->size[k] = 1;
        for (int i = 0; i < nd; i++) model->size[k] *= dims[i];
        model->num_params += model->size[k];
    }
    model->params = tf_calloc((size_t)model->num_params, sizeof(float));
    if (!model->params) {
        free(model);
        return TF_ERR_NOMEM;
    }
    float *next = model->params;
    for (int k = 0; k < VIT_NUM_PARAMS; k++) {
        model->p[k] = next;
        next += model->size[k];
    }
    *out = model;
    return TF_OK;
}

void vit_model_free(vit_model **model)
{
    if (!model || !*model) return;
    free((*model)->params);
    free(*model);
    *model = NULL;
}

/* Standard normal draw rejected outside [-2, 2], times 0.02. */
static float truncated_normal(tf_rng *rng)
{
    double z;
    do {
        z = tf_rng_normal(rng);
    } while (fabs(z) > 2.0);
    return (float)(0.02 * z);
}

void vit_model_init(vit_model *model, uint64_t seed)
{
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int k = 0; k < VIT_NUM_PARAMS; k++) {
        float *p = model->p[k];
        int64_t n = model->size[k];
        int is_gain = k == VIT_LN1_G || k == VIT_LN2_G || k == VIT_LNF_G;
        int is_bias = k == VIT_PATCH_B || k == VIT_QKV_B || k == VIT_PROJ_B || k == VIT_FC1_B ||
                      k == VIT_FC2_B || k == VIT_HEAD_B || k == VIT_LN1_B || k == VIT_LN2_B ||
                      k == VIT_LNF_B;
        for (int64_t i = 0; i < n; i++) {
            if (is_gain)
                p[i] = 1.0f;
            else if (is_bias)
                p[i] = 0.0f;
            else
                p[i] = truncated_normal(&rng);
        }
    }
}

void vit_model_copy(vit_model *dst, const vit_model *src)
{
    if (dst->num_params != src->num_params) {
        TF_ERROR("models of %lld and %lld parameters differ in configuration; nothing copied",
                 (long long)src->num_params, (long long)dst->num_params);
        return;
    }
    memcpy(dst->params, src->params, (size_t)src->num_params * sizeof(float));
}

/* Frees every buffer of the activations and the scratch; accepts partial allocations. */
static void acts_release(vit_acts *a)
{
    float **bufs[] = {&a->patches,  &a->x0,       &a->ln1,      &a->ln1_mean, &a->ln1_rstd,
                      &a->qkv,      &a->att,      &a->atty,     &a->res1,     &a->ln2,
                      &a->ln2_mean, &a->ln2_rstd, &a->fc1,      &a->gelu,     &a->res2,
                      &a->lnf,      &a->lnf_mean, &a->lnf_rstd, &a->logits,   &a->probs};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(*bufs[i]);
    vit_scratch *s = a->scratch;
    if (s) {
        float **sb[] = {&s->dx,   &s->dln,  &s->dwide, &s->emb, &s->cls,
                        &s->dlnf, &s->dlog, &s->dgelu, &s->work};
        for (size_t i = 0; i < sizeof sb / sizeof sb[0]; i++) free(*sb[i]);
        free(s);
    }
    free(a);
}

tf_status vit_acts_create(const vit_config *cfg, int max_batch, vit_acts **out)
{
    *out = NULL;
    tf_status status = vit_config_validate(cfg);
    if (status != TF_OK) return status;
    if (max_batch <= 0)
        return tf_error_set(TF_ERR_ARG, "vit_acts_create: max_batch = %d, must be positive",
                            max_batch);
    /* BLAS and the attention loops index B*T rows and B*h (image, head) pairs with int. */
    int64_t max_rows = (int64_t)max_batch * vit_tokens(cfg);
    int64_t max_pairs = (int64_t)max_batch * cfg->heads;
    if (max_rows > INT32_MAX / 4 || max_pairs > INT32_MAX / 4)
        return tf_error_set(TF_ERR_ARG,
                            "vit_acts_create: max_batch = %d gives %lld token rows, too many for "
                            "int indexing; use a smaller batch",
                            max_batch, (long long)max_rows);
    vit_acts *a = tf_calloc(1, sizeof *a);
    vit_scratch *s = tf_calloc(1, sizeof *s);
    if (!a || !s) {
        free(a);
        free(s);
        return TF_ERR_NOMEM;
    }
    a->scratch = s;
    s->cfg = *cfg;
    a->max_batch = max_batch;
    int64_t B = max_batch, T = vit_tokens(cfg), N = T - 1, d = cfg->d, L = cfg->layers;
    int64_t f = cfg->mlp, h = cfg->heads, C = cfg->classes, P = vit_patch_values(cfg);
    int64_t wide = 3 * d > f ? 3 * d : f;
    struct {
        float **buf;
        int64_t count;
    } plan[] = {{&a->patches, B * N * P},
                {&a->x0, B * T * d},
                {&a->ln1, L * B * T * d},
                {&a->ln1_mean, L * B * T},
                {&a->ln1_rstd, L * B * T},
                {&a->qkv, L * B * T * 3 * d},
                {&a->att, L * B * h * T * T},
                {&a->atty, L * B * T * d},
                {&a->res1, L * B * T * d},
                {&a->ln2, L * B * T * d},
                {&a->ln2_mean, L * B * T},
                {&a->ln2_rstd, L * B * T},
                {&a->fc1, L * B * T * f},
                {&a->gelu, L * B * T * f},
                {&a->res2, L * B * T * d},
                {&a->lnf, B * d},
                {&a->lnf_mean, B},
                {&a->lnf_rstd, B},
                {&a->logits, B * C},
                {&a->probs, B * C},
                {&s->dx, B * T * d},
                {&s->dln, B * T * d},
                {&s->dwide, B * T * wide},
                {&s->emb, B * N * d},
                {&s->cls, B * d},
                {&s->dlnf, B * d},
                {&s->dlog, B * C},
                {&s->dgelu, L * B * T * f},
                {&s->work, vit_attention_work((int)T, (int)d, (int)h)}};
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++) {
        *plan[i].buf = tf_malloc((size_t)plan[i].count * sizeof(float));
        if (!*plan[i].buf) {
            acts_release(a);
            return TF_ERR_NOMEM;
        }
    }
    *out = a;
    return TF_OK;
}

void vit_acts_free(vit_acts **acts)
{
    if (!acts || !*acts) return;
    acts_release(*acts);
    *acts = NULL;
}

/* images (B, channels, S, S) -> patches (B, N, P) with P ordered (channel, row, column) as
 * the flattened weight of a stride-patch convolution, and N in row-major patch order. */
static void extract_patches(float *patches, const float *images, const vit_config *c, int batch)
{
    int S = c->image_size, p = c->patch, side = S / p, P = vit_patch_values(c);
    int N = side * side;
    for (int b = 0; b < batch; b++) {
        const float *img = images + (int64_t)b * c->channels * S * S;
        for (int n = 0; n < N; n++) {
            int py = n / side, px = n % side;
            float *dst = patches + ((int64_t)b * N + n) * P;
            for (int ch = 0; ch < c->channels; ch++) {
                for (int i = 0; i < p; i++) {
                    const float *src = img + ((int64_t)ch * S + py * p + i) * S + px * p;
                    float *row = dst + (ch * p + i) * p;
                    for (int j = 0; j < p; j++) row[j] = src[j]; /* p is small: no memcpy */
                }
            }
        }
    }
}

/* emb (B, N, d) patch embeddings without bias -> x0 (B, T, d): token 0 is cls + pos[0],
 * token 1 + n is emb[n] + patch_b + pos[1 + n]. */
static void assemble_tokens(float *x0, const float *emb, const vit_model *m, int batch)
{
    int d = m->cfg.d, T = vit_tokens(&m->cfg), N = T - 1;
    const float *pos = m->p[VIT_POS], *cls = m->p[VIT_CLS], *pb = m->p[VIT_PATCH_B];
    for (int b = 0; b < batch; b++) {
        float *xb = x0 + (int64_t)b * T * d;
        for (int i = 0; i < d; i++) xb[i] = cls[i] + pos[i];
        for (int n = 0; n < N; n++) {
            const float *e = emb + ((int64_t)b * N + n) * d;
            float *xt = xb + (int64_t)(1 + n) * d;
            const float *pt = pos + (int64_t)(1 + n) * d;
            for (int i = 0; i < d; i++) xt[i] = e[i] + pb[i] + pt[i];
        }
    }
}

/* One encoder layer l on B*T rows: x -> res1[l] -> res2[l], filling every layer-l buffer. */
static void layer_forward(const vit_model *m, vit_acts *a, int l, const float *x)
{
    const vit_config *c = &m->cfg;
    int B = a->batch, T = vit_tokens(c), d = c->d, f = c->mlp;
    int64_t rows = (int64_t)B * T, Lrd = rows * d, Lrf = rows * f;
    float *ln1 = a->ln1 + l * Lrd, *qkv = a->qkv + l * rows * 3 * d, *atty = a->atty + l * Lrd;
    float *res1 = a->res1 + l * Lrd, *ln2 = a->ln2 + l * Lrd, *res2 = a->res2 + l * Lrd;
    float *fc1 = a->fc1 + l * Lrf, *gelu = a->gelu + l * Lrf;
    float *att = a->att + (int64_t)l * B * c->heads * T * T;
    vit_scratch *s = a->scratch;

    vit_layernorm_forward(ln1, a->ln1_mean + l * rows, a->ln1_rstd + l * rows, x,
                          m->p[VIT_LN1_G] + l * d, m->p[VIT_LN1_B] + l * d, rows, d, c->ln_eps);
    vit_linear_forward(qkv, ln1, m->p[VIT_QKV_W] + (int64_t)l * 3 * d * d,
                       m->p[VIT_QKV_B] + l * 3 * d, NULL, rows, d, 3 * d);
    vit_attention_forward(atty, att, qkv, B, T, d, c->heads, s->work);
    vit_linear_forward(res1, atty, m->p[VIT_PROJ_W] + (int64_t)l * d * d, m->p[VIT_PROJ_B] + l * d,
                       x, rows, d, d);

    vit_layernorm_forward(ln2, a->ln2_mean + l * rows, a->ln2_rstd + l * rows, res1,
                          m->p[VIT_LN2_G] + l * d, m->p[VIT_LN2_B] + l * d, rows, d, c->ln_eps);
    vit_linear_forward(fc1, ln2, m->p[VIT_FC1_W] + (int64_t)l * f * d, m->p[VIT_FC1_B] + l * f,
                       NULL, rows, d, f);
    vit_gelu_forward(gelu, s->dgelu + l * Lrf, fc1, Lrf);
    vit_linear_forward(res2, gelu, m->p[VIT_FC2_W] + (int64_t)l * d * f, m->p[VIT_FC2_B] + l * d,
                       res1, rows, f, d);
}

/* Copies the class token (row 0 of each image) of stream (B, T, d) into cls (B, d). */
static void gather_class_tokens(float *cls, const float *stream, int batch, int tokens, int d)
{
    for (int b = 0; b < batch; b++)
        memcpy(cls + (int64_t)b * d, stream + (int64_t)b * tokens * d, (size_t)d * sizeof(float));
}

static tf_status check_labels(const int *labels, int batch, int classes, const char *func)
{
    for (int b = 0; b < batch; b++) {
        if (labels[b] < 0 || labels[b] >= classes)
            return tf_error_set(TF_ERR_ARG, "%s: label %d of image %d is outside [0, %d)", func,
                                labels[b], b, classes);
    }
    return TF_OK;
}

/* Rejects activations sized for another configuration, which would overflow their buffers. */
static tf_status check_shapes(const vit_model *model, const vit_acts *acts, const char *func)
{
    const vit_config *m = &model->cfg, *a = &((const vit_scratch *)acts->scratch)->cfg;
    if (m->image_size != a->image_size || m->channels != a->channels || m->patch != a->patch ||
        m->d != a->d || m->layers != a->layers || m->heads != a->heads || m->mlp != a->mlp ||
        m->classes != a->classes)
        return tf_error_set(TF_ERR_ARG,
                            "%s: activations were created for another configuration (d %d, "
                            "layers %d, mlp %d) than the model's (d %d, layers %d, mlp %d); "
                            "create them with vit_acts_create(&model->cfg, ...)",
                            func, a->d, a->layers, a->mlp, m->d, m->layers, m->mlp);
    return TF_OK;
}

tf_status vit_forward(const vit_model *model, vit_acts *acts, const float *images,
                      const int *labels, int batch, float *loss)
{
    const vit_config *c = &model->cfg;
    if (batch <= 0 || batch > acts->max_batch)
        return tf_error_set(TF_ERR_ARG, "vit_forward: batch = %d is outside [1, %d] (max_batch)",
                            batch, acts->max_batch);
    if (labels && check_labels(labels, batch, c->classes, "vit_forward") != TF_OK)
        return TF_ERR_ARG;
    if (check_shapes(model, acts, "vit_forward") != TF_OK) return TF_ERR_ARG;
    vit_scratch *s = acts->scratch;
    int T = vit_tokens(c), N = T - 1, d = c->d, L = c->layers;
    int64_t rows = (int64_t)batch * T;
    acts->batch = batch;

    /* Patch embedding as one GEMM, then class token and position embeddings. */
    extract_patches(acts->patches, images, c, batch);
    vit_linear_forward(s->emb, acts->patches, model->p[VIT_PATCH_W], NULL, NULL, (int64_t)batch * N,
                       vit_patch_values(c), d);
    assemble_tokens(acts->x0, s->emb, model, batch);

    /* Encoder layers. */
    for (int l = 0; l < L; l++)
        layer_forward(model, acts, l, l == 0 ? acts->x0 : acts->res2 + (l - 1) * rows * d);

    /* Final LayerNorm on the class token, head, softmax and loss. */
    gather_class_tokens(s->cls, acts->res2 + (L - 1) * rows * d, batch, T, d);
    vit_layernorm_forward(acts->lnf, acts->lnf_mean, acts->lnf_rstd, s->cls, model->p[VIT_LNF_G],
                          model->p[VIT_LNF_B], batch, d, c->ln_eps);
    vit_linear_forward(acts->logits, acts->lnf, model->p[VIT_HEAD_W], model->p[VIT_HEAD_B], NULL,
                       batch, d, c->classes);
    double mean_loss =
        vit_softmax_xent_forward(acts->probs, acts->logits, labels, batch, c->classes);
    if (labels && loss) *loss = (float)mean_loss;
    return TF_OK;
}

/* Backward of layer l. On entry s->dx contains dLoss/dres2[l], and on exit dLoss/dx with x the
 * layer input. Writes the gradients of layer l's parameters into g (laid out as params). */
static void layer_backward(const vit_model *m, vit_acts *a, int l, const float *x, float *g)
{
    const vit_config *c = &m->cfg;
    vit_scratch *s = a->scratch;
    int B = a->batch, T = vit_tokens(c), d = c->d, f = c->mlp;
    int64_t rows = (int64_t)B * T, Lrd = rows * d, Lrf = rows * f;
    const float *pb = m->params;
#define GRAD(k) (g + (m->p[k] - pb))

    /* MLP: res2 = res1 + fc2(gelu(fc1(ln2(res1)))). */
    vit_linear_backward(s->dwide, GRAD(VIT_FC2_W) + (int64_t)l * d * f, GRAD(VIT_FC2_B) + l * d,
                        s->dx, a->gelu + l * Lrf, m->p[VIT_FC2_W] + (int64_t)l * d * f, rows, f, d,
                        0);
    vit_gelu_backward(s->dwide, s->dwide, s->dgelu + l * Lrf, Lrf);
    vit_linear_backward(s->dln, GRAD(VIT_FC1_W) + (int64_t)l * f * d, GRAD(VIT_FC1_B) + l * f,
                        s->dwide, a->ln2 + l * Lrd, m->p[VIT_FC1_W] + (int64_t)l * f * d, rows, d,
                        f, 0);
    vit_layernorm_backward(s->dx, GRAD(VIT_LN2_G) + l * d, GRAD(VIT_LN2_B) + l * d, s->dln,
                           a->res1 + l * Lrd, a->ln2_mean + l * rows, a->ln2_rstd + l * rows,
                           m->p[VIT_LN2_G] + l * d, rows, d);

    /* Attention: res1 = x + proj(attention(qkv(ln1(x)))). */
    vit_linear_backward(s->dln, GRAD(VIT_PROJ_W) + (int64_t)l * d * d, GRAD(VIT_PROJ_B) + l * d,
                        s->dx, a->atty + l * Lrd, m->p[VIT_PROJ_W] + (int64_t)l * d * d, rows, d, d,
                        0);
    vit_attention_backward(s->dwide, s->dln, a->att + (int64_t)l * B * c->heads * T * T,
                           a->qkv + l * rows * 3 * d, B, T, d, c->heads, s->work);
    vit_linear_backward(s->dln, GRAD(VIT_QKV_W) + (int64_t)l * 3 * d * d,
                        GRAD(VIT_QKV_B) + l * 3 * d, s->dwide, a->ln1 + l * Lrd,
                        m->p[VIT_QKV_W] + (int64_t)l * 3 * d * d, rows, d, 3 * d, 0);
    vit_layernorm_backward(s->dx, GRAD(VIT_LN1_G) + l * d, GRAD(VIT_LN1_B) + l * d, s->dln, x,
                           a->ln1_mean + l * rows, a->ln1_rstd + l * rows, m->p[VIT_LN1_G] + l * d,
                           rows, d);
#undef GRAD
}

/* Backward of the head and final LayerNorm: fills s->dx (B, T, d) with dLoss/dres2[L-1],
 * nonzero only on class tokens, and the gradients of head and lnf. */
static void head_backward(const vit_model *m, vit_acts *a, const int *labels, const float *targets,
                          float *g)
{
    const vit_config *c = &m->cfg;
    vit_scratch *s = a->scratch;
    int B = a->batch, T = vit_tokens(c), d = c->d, C = c->classes, L = c->layers;
    const float *pb = m->params;

    /* Mean cross-entropy: dlogits = (probs - target) / B, the target being onehot(label)
     * or a given distribution. */
    for (int b = 0; b < B; b++) {
        for (int k = 0; k < C; k++) {
            float t = targets ? targets[b * C + k] : (labels && k == labels[b] ? 1.0f : 0.0f);
            s->dlog[b * C + k] = (a->probs[b * C + k] - t) / B;
        }
    }
    vit_linear_backward(s->dlnf, g + (m->p[VIT_HEAD_W] - pb), g + (m->p[VIT_HEAD_B] - pb), s->dlog,
                        a->lnf, m->p[VIT_HEAD_W], B, d, C, 0);

    /* Final LayerNorm on the class tokens; the other tokens receive no gradient. */
    gather_class_tokens(s->cls, a->res2 + (int64_t)(L - 1) * B * T * d, B, T, d);
    memset(s->dx, 0, (size_t)B * T * d * sizeof(float));
    float *dcls = s->emb; /* (B, d), unused until the embedding backward */
    memset(dcls, 0, (size_t)B * d * sizeof(float));
    vit_layernorm_backward(dcls, g + (m->p[VIT_LNF_G] - pb), g + (m->p[VIT_LNF_B] - pb), s->dlnf,
                           s->cls, a->lnf_mean, a->lnf_rstd, m->p[VIT_LNF_G], B, d);
    for (int b = 0; b < B; b++)
        memcpy(s->dx + (int64_t)b * T * d, dcls + (int64_t)b * d, (size_t)d * sizeof(float));
}

/* Backward of the embeddings: s->dx (B, T, d) contains dLoss/dx0. */
static void embed_backward(const vit_model *m, vit_acts *a, float *g)
{
    const vit_config *c = &m->cfg;
    vit_scratch *s = a->scratch;
    int B = a->batch, T = vit_tokens(c), N = T - 1, d = c->d;
    const float *pb = m->params;
    float *dpos = g + (m->p[VIT_POS] - pb), *dcls = g + (m->p[VIT_CLS] - pb);
    float *dpb = g + (m->p[VIT_PATCH_B] - pb);

    memset(dpos, 0, (size_t)T * d * sizeof(float));
    for (int b = 0; b < B; b++) {
        const float *dxb = s->dx + (int64_t)b * T * d;
        for (int64_t i = 0; i < (int64_t)T * d; i++) dpos[i] += dxb[i];
        memcpy(s->emb + (int64_t)b * N * d, dxb + d, (size_t)N * d * sizeof(float));
    }
    memcpy(dcls, dpos, (size_t)d * sizeof(float));
    memset(dpb, 0, (size_t)d * sizeof(float));
    for (int t = 1; t < T; t++)
        for (int i = 0; i < d; i++) dpb[i] += dpos[(int64_t)t * d + i];
    vit_linear_backward(NULL, g + (m->p[VIT_PATCH_W] - pb), NULL, s->emb, a->patches,
                        m->p[VIT_PATCH_W], (int64_t)B * N, vit_patch_values(c), d, 0);
}

tf_status vit_backward(const vit_model *model, vit_acts *acts, const int *labels, float *grads)
{
    const vit_config *c = &model->cfg;
    if (acts->batch <= 0)
        return tf_error_set(TF_ERR_ARG, "vit_backward: no forward pass on these activations");
    if (check_shapes(model, acts, "vit_backward") != TF_OK) return TF_ERR_ARG;
    if (!labels) return tf_error_set(TF_ERR_ARG, "vit_backward: labels are NULL");
    if (check_labels(labels, acts->batch, c->classes, "vit_backward") != TF_OK) return TF_ERR_ARG;
    int64_t rows = (int64_t)acts->batch * vit_tokens(c);

    head_backward(model, acts, labels, NULL, grads);
    for (int l = c->layers - 1; l >= 0; l--)
        layer_backward(model, acts, l, l == 0 ? acts->x0 : acts->res2 + (l - 1) * rows * c->d,
                       grads);
    embed_backward(model, acts, grads);
    return TF_OK;
}

tf_status vit_backward_soft(const vit_model *model, vit_acts *acts, const float *targets,
                            float *grads)
{
    const vit_config *c = &model->cfg;
    if (acts->batch <= 0)
        return tf_error_set(TF_ERR_ARG, "vit_backward_soft: no forward pass on these activations");
    if (check_shapes(model, acts, "vit_backward_soft") != TF_OK) return TF_ERR_ARG;
    if (!targets) return tf_error_set(TF_ERR_ARG, "vit_backward_soft: targets are NULL");
    int64_t rows = (int64_t)acts->batch * vit_tokens(c);

    head_backward(model, acts, NULL, targets, grads);
    for (int l = c->layers - 1; l >= 0; l--)
        layer_backward(model, acts, l, l == 0 ? acts->x0 : acts->res2 + (l - 1) * rows * c->d,
                       grads);
    embed_backward(model, acts, grads);
    return TF_OK;
}

int vit_count_correct(const vit_model *model, const vit_acts *acts, const int *labels)
{
    int C = model->cfg.classes, correct = 0;
    for (int b = 0; b < acts->batch; b++) {
        const float *z = acts->logits + (int64_t)b * C;
        int best = 0;
        for (int k = 1; k < C; k++)
            if (z[k] > z[best]) best = k;
        correct += best == labels[b];
    }
    return correct;
}
