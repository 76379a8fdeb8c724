/* Weight-based transport maps: a neuron is its row of incoming weights (with its bias),
 * after the inputs have been moved into the anchor's basis with the map of the layer that
 * produces them, scaled to unit norm. Each layer's cost therefore depends on the maps of
 * its inputs, so the layers are solved in order. */
#include "fuse_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rows of one side of a cost: n rows of k floats, concatenated from up to two
 * (weights, bias) pairs. */
typedef struct {
    int n, k;
    double *rows; /* (n, k), unit norm */
} row_set;

static void row_set_free(row_set *r)
{
    free(r->rows);
    r->rows = NULL;
}

/* Concatenates [W1 | b1 | W2 | b2] row by row (W2 may be NULL) and scales rows to unit
 * norm. W1, W2 are (n, k1) and (n, k2). */
static tf_status row_set_build(row_set *r, int n, const float *w1, const float *b1, int k1,
                               const float *w2, const float *b2, int k2)
{
    r->n = n;
    r->k = k1 + 1 + (w2 ? k2 + 1 : 0);
    r->rows = tf_malloc((size_t)n * r->k * sizeof(double));
    if (!r->rows) return TF_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        double *dst = r->rows + (int64_t)i * r->k, norm = 0;
        int c = 0;
        for (int j = 0; j < k1; j++) dst[c++] = w1[(int64_t)i * k1 + j];
        dst[c++] = b1[i];
        for (int j = 0; w2 && j < k2; j++) dst[c++] = w2[(int64_t)i * k2 + j];
        if (w2) dst[c++] = b2[i];
        for (int j = 0; j < r->k; j++) norm += dst[j] * dst[j];
        norm = sqrt(norm);
        for (int j = 0; j < r->k && norm > 0; j++) dst[j] /= norm;
    }
    return TF_OK;
}

/* (n, m) Euclidean distances between unit rows, normalized by opt->norm. */
static tf_status row_cost(const row_set *p, const row_set *a, const fuse_options *opt,
                          double *cost)
{
    if (p->k != a->k)
        return tf_error_set(TF_ERR_ARG, "weight cost: rows of %d and %d values", p->k, a->k);
    for (int i = 0; i < p->n; i++)
        for (int j = 0; j < a->n; j++) {
            double d2 = 0;
            const double *x = p->rows + (int64_t)i * p->k, *y = a->rows + (int64_t)j * a->k;
            for (int c = 0; c < p->k; c++) d2 += (x[c] - y[c]) * (x[c] - y[c]);
            cost[(int64_t)i * a->n + j] = sqrt(d2);
        }
    fuse_cost_normalize(cost, (int64_t)p->n * a->n, opt->norm);
    return TF_OK;
}

/* Solves the map between parent rows (W1 T_in1 | b1 [| W2 T_in2 | b2]) and the anchor's
 * rows. in_plan aligns the parent's inputs (NULL: inputs already shared). */
typedef struct {
    const float *w, *b; /* parent (n, kp), (n) */
    int kp;
    const float *wa, *ba; /* anchor (m, ka), (m) */
    int ka;
    const double *in_plan; /* (kp, ka) or NULL */
} weight_part;

static tf_status weight_cost(const weight_part *parts, int n_parts, int n, int m,
                             const fuse_options *opt, double *cost)
{
    float *aligned[2] = {NULL, NULL};
    row_set rp = {0}, ra = {0};
    tf_status st = TF_OK;
    for (int q = 0; q < n_parts && st == TF_OK; q++) {
        aligned[q] = tf_malloc((size_t)n * parts[q].ka * sizeof(float));
        if (!aligned[q]) st = TF_ERR_NOMEM;
        else if (parts[q].in_plan)
            st = fuse_align_matrix(parts[q].w, n, parts[q].kp, NULL, n, parts[q].in_plan,
                                   parts[q].ka, aligned[q]);
        else
            memcpy(aligned[q], parts[q].w, (size_t)n * parts[q].ka * sizeof(float));
    }
    if (st == TF_OK)
        st = row_set_build(&rp, n, aligned[0], parts[0].b, parts[0].ka,
                           n_parts > 1 ? aligned[1] : NULL, n_parts > 1 ? parts[1].b : NULL,
                           n_parts > 1 ? parts[1].ka : 0);
    if (st == TF_OK)
        st = row_set_build(&ra, m, parts[0].wa, parts[0].ba, parts[0].ka,
                           n_parts > 1 ? parts[1].wa : NULL, n_parts > 1 ? parts[1].ba : NULL,
                           n_parts > 1 ? parts[1].ka : 0);
    if (st == TF_OK) st = row_cost(&rp, &ra, opt, cost);
    free(aligned[0]);
    free(aligned[1]);
    row_set_free(&rp);
    row_set_free(&ra);
    return st;
}

static tf_status weight_map(const weight_part *parts, int n_parts, int n, int m,
                            const fuse_options *opt, enum fuse_solver solver, const char *what,
                            double **out)
{
    double *cost = tf_malloc((size_t)n * m * sizeof(double));
    double *plan = tf_malloc((size_t)n * m * sizeof(double));
    tf_status st = cost && plan ? TF_OK : TF_ERR_NOMEM;
    if (st == TF_OK) st = weight_cost(parts, n_parts, n, m, opt, cost);
    if (st == TF_OK) st = fuse_solve_plan(cost, n, m, solver, opt->epsilon, what, plan);
    free(cost);
    if (st != TF_OK) {
        free(plan);
        return st;
    }
    *out = plan;
    return TF_OK;
}

#define LAYER(model, which, l, stride) ((model)->p[which] + (int64_t)(l) * (stride))

/* Q/K and V maps of layer l, shared or head-aware. */
static tf_status attention_maps(const vit_model *pm, const vit_model *am, int l,
                                const double *s_in, const fuse_options *opt, fuse_maps *maps)
{
    const int dp = pm->cfg.d, da = am->cfg.d;
    const float *wp = LAYER(pm, VIT_QKV_W, l, 3 * dp * dp), *bp = LAYER(pm, VIT_QKV_B, l, 3 * dp);
    const float *wa = LAYER(am, VIT_QKV_W, l, 3 * da * da), *ba = LAYER(am, VIT_QKV_B, l, 3 * da);
    weight_part qk[2], v;
    for (int part = 0; part < 3; part++) {
        weight_part w = {wp + (int64_t)part * dp * dp, bp + part * dp, dp,
                         wa + (int64_t)part * da * da, ba + part * da, da, s_in};
        if (part < 2) qk[part] = w;
        else v = w;
    }
    char what[64];
    if (opt->attention == FUSE_ATTN_SHARED_QK) {
        snprintf(what, sizeof what, "layer %d Q/K (weights)", l);
        tf_status st = weight_map(qk, 2, dp, da, opt, opt->solver_attn, what, &maps->qk[l]);
        snprintf(what, sizeof what, "layer %d V (weights)", l);
        if (st == TF_OK) st = weight_map(&v, 1, dp, da, opt, opt->solver_attn, what, &maps->v[l]);
        return st;
    }
    double *cost_qk = tf_malloc((size_t)dp * da * sizeof(double));
    double *cost_v = tf_malloc((size_t)dp * da * sizeof(double));
    maps->qk[l] = tf_malloc((size_t)dp * da * sizeof(double));
    maps->v[l] = tf_malloc((size_t)dp * da * sizeof(double));
    tf_status st = cost_qk && cost_v && maps->qk[l] && maps->v[l] ? TF_OK : TF_ERR_NOMEM;
    if (st == TF_OK) st = weight_cost(qk, 2, dp, da, opt, cost_qk);
    if (st == TF_OK) st = weight_cost(&v, 1, dp, da, opt, cost_v);
    if (st == TF_OK)
        st = fuse_head_aware_layer(cost_qk, cost_v, am->cfg.heads, dp, da, opt, maps->qk[l],
                                   maps->v[l]);
    free(cost_qk);
    free(cost_v);
    return st;
}

/* Maps of layer l given the stream map entering it. */
static tf_status layer_maps(const vit_model *pm, const vit_model *am, int l, const double *s_in,
                            const fuse_options *opt, fuse_maps *maps)
{
    const int dp = pm->cfg.d, da = am->cfg.d, fp = pm->cfg.mlp, fa = am->cfg.mlp;
    const int64_t size = (int64_t)dp * da;
    char what[64];
    tf_status st = attention_maps(pm, am, l, s_in, opt, maps);
    if (st != TF_OK) return st;

    weight_part out = {LAYER(pm, VIT_PROJ_W, l, dp * dp), LAYER(pm, VIT_PROJ_B, l, dp), dp,
                       LAYER(am, VIT_PROJ_W, l, da * da), LAYER(am, VIT_PROJ_B, l, da), da,
                       maps->v[l]};
    snprintf(what, sizeof what, "layer %d attention output (weights)", l);
    st = weight_map(&out, 1, dp, da, opt, opt->solver_stream, what, &maps->attn_out[l]);
    if (st != TF_OK) return st;
    maps->stream1[l] = fuse_join_plans(s_in, maps->attn_out[l], size, opt, 0.5);
    if (!maps->stream1[l]) return TF_ERR_NOMEM;

    weight_part fc1 = {LAYER(pm, VIT_FC1_W, l, fp * dp), LAYER(pm, VIT_FC1_B, l, fp), dp,
                       LAYER(am, VIT_FC1_W, l, fa * da), LAYER(am, VIT_FC1_B, l, fa), da,
                       maps->stream1[l]};
    snprintf(what, sizeof what, "layer %d MLP hidden (weights)", l);
    st = weight_map(&fc1, 1, fp, fa, opt, opt->solver_mlp, what, &maps->fc1[l]);
    if (st != TF_OK) return st;

    weight_part fc2 = {LAYER(pm, VIT_FC2_W, l, dp * fp), LAYER(pm, VIT_FC2_B, l, dp), fp,
                       LAYER(am, VIT_FC2_W, l, da * fa), LAYER(am, VIT_FC2_B, l, da), fa,
                       maps->fc1[l]};
    snprintf(what, sizeof what, "layer %d MLP output (weights)", l);
    st = weight_map(&fc2, 1, dp, da, opt, opt->solver_stream, what, &maps->mlp_out[l]);
    if (st != TF_OK) return st;
    maps->stream2[l] = fuse_join_plans(maps->stream1[l], maps->mlp_out[l], size, opt, 0.5);
    return maps->stream2[l] ? TF_OK : TF_ERR_NOMEM;
}

tf_status fuse_weight_maps(const vit_model *pm, const vit_model *am, const fuse_options *opt,
                           fuse_maps *maps)
{
    if (opt->residual == FUSE_RESIDUAL_JOINT || opt->residual == FUSE_RESIDUAL_WEIGHTED ||
        opt->residual == FUSE_RESIDUAL_IDENTITY)
        return tf_error_set(TF_ERR_ARG, "weight-based costs support the residual policies "
                            "mean, skip and branch; joint and weighted need activation "
                            "costs, identity needs no costs");
    const int dp = pm->cfg.d, da = am->cfg.d, P = vit_patch_values(&am->cfg);
    const int64_t size = (int64_t)dp * da;

    /* Embedding join: patch embedding rows (raw pixel inputs) and position columns. */
    weight_part patch = {pm->p[VIT_PATCH_W], pm->p[VIT_PATCH_B], P,
                         am->p[VIT_PATCH_W], am->p[VIT_PATCH_B], P, NULL};
    tf_status st = weight_map(&patch, 1, dp, da, opt, opt->solver_stream,
                              "patch embedding (weights)", &maps->patch);
    fuse_view vp, va;
    fuse_view_vit(pm, &vp);
    fuse_view_vit(am, &va);
    if (st == TF_OK) st = fuse_position_map(&vp, &va, opt, &maps->pos);
    if (st != TF_OK) return st;
    maps->stream0 = fuse_join_plans(maps->pos, maps->patch, size, opt, 0.5);
    if (!maps->stream0) return TF_ERR_NOMEM;

    /* Layers in order: each reads the stream map its predecessor produced. */
    const double *stream = maps->stream0;
    for (int l = 0; l < maps->layers; l++) {
        st = layer_maps(pm, am, l, stream, opt, maps);
        if (st != TF_OK) return st;
        stream = maps->stream2[l];
    }
    return TF_OK;
}
