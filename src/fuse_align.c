/* Moving a parent's parameters into the anchor's basis with transport plans, and weighted
 * averaging.
 *
 * A plan P (n, m) between parent neurons (rows) and anchor neurons (columns) is used in two
 * normalizations. On the output side of a layer each anchor neuron becomes an average of
 * parent neurons: T_out = P diag(1/colsum), and W~ = T_out^T W. On the input side of the
 * consumer each parent input neuron passes its whole weight on: T_in = diag(1/rowsum) P,
 * and W^ = W T_in. With equal widths and uniform marginals both are n P; with unequal
 * widths only this pair keeps a widened network with duplicated neurons equivalent. */
#include "fuse_internal.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* Returns a new (n, m) matrix: P with columns (out side) or rows (in side) normalized to
 * sum 1; a zero row or column stays zero. */
static double *normalize_plan(const double *plan, int n, int m, int output_side)
{
    double *t = tf_malloc((size_t)n * m * sizeof(double));
    if (!t) return NULL;
    memcpy(t, plan, (size_t)n * m * sizeof(double));
    if (output_side) {
        for (int j = 0; j < m; j++) {
            double s = 0;
            for (int i = 0; i < n; i++) s += t[(int64_t)i * m + j];
            for (int i = 0; i < n; i++) t[(int64_t)i * m + j] = s > 0 ? t[(int64_t)i * m + j] / s : 0;
        }
    } else {
        for (int i = 0; i < n; i++) {
            double s = 0;
            for (int j = 0; j < m; j++) s += t[(int64_t)i * m + j];
            for (int j = 0; j < m; j++) t[(int64_t)i * m + j] = s > 0 ? t[(int64_t)i * m + j] / s : 0;
        }
    }
    return t;
}

/* out (ra, ca) = T_out^T (ra x rp)  W (rp, cp)  T_in (cp, ca), where out_plan is the
 * (rp, ra) plan of the rows and in_plan the (cp, ca) plan of the columns; a NULL plan is
 * the identity (then ra = rp or ca = cp). W is float; the product is formed in double. */
tf_status fuse_align_matrix(const float *W, int rp, int cp, const double *out_plan, int ra,
                            const double *in_plan, int ca, float *out)
{
    double *w = tf_malloc((size_t)rp * cp * sizeof(double));
    double *tmp = tf_malloc((size_t)rp * ca * sizeof(double));
    double *res = tf_malloc((size_t)ra * ca * sizeof(double));
    double *t_in = in_plan ? normalize_plan(in_plan, cp, ca, 0) : NULL;
    double *t_out = out_plan ? normalize_plan(out_plan, rp, ra, 1) : NULL;
    tf_status st = TF_OK;
    if (!w || !tmp || !res || (in_plan && !t_in) || (out_plan && !t_out)) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    for (int64_t k = 0; k < (int64_t)rp * cp; k++) w[k] = (double)W[k];
    if (t_in)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rp, ca, cp, 1.0, w, cp, t_in,
                    ca, 0.0, tmp, ca);
    else
        memcpy(tmp, w, (size_t)rp * cp * sizeof(double));
    if (t_out)
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ra, ca, rp, 1.0, t_out, ra, tmp,
                    ca, 0.0, res, ca);
    else
        memcpy(res, tmp, (size_t)ra * ca * sizeof(double));
    for (int64_t k = 0; k < (int64_t)ra * ca; k++) out[k] = (float)res[k];
done:
    free(w);
    free(tmp);
    free(res);
    free(t_in);
    free(t_out);
    return st;
}

/* A vector over neurons (e.g. a bias or a LayerNorm gain) on the output side. */
static tf_status align_vector(const float *v, int n, const double *plan, int m, float *out)
{
    return fuse_align_matrix(v, n, 1, plan, m, NULL, 1, out);
}

/* Parameters of layer l: Q, K and V blocks of the packed (3d, d) matrix. */
static tf_status align_layer(const vit_model *pm, const fuse_maps *maps, int l, vit_model *am)
{
    const int dp = pm->cfg.d, da = am->cfg.d, fp = pm->cfg.mlp, fa = am->cfg.mlp;
    const double *s_in = l == 0 ? maps->stream0 : maps->stream2[l - 1];
    const double *s_mid = maps->stream1[l];
    tf_status st = TF_OK;
#define P(which) (pm->p[which])
#define A(which) (am->p[which])
    st = align_vector(P(VIT_LN1_G) + (int64_t)l * dp, dp, s_in, da, A(VIT_LN1_G) + (int64_t)l * da);
    if (st == TF_OK)
        st = align_vector(P(VIT_LN1_B) + (int64_t)l * dp, dp, s_in, da,
                          A(VIT_LN1_B) + (int64_t)l * da);
    const double *qkv_maps[3] = {maps->qk[l], maps->qk[l], maps->v[l]};
    for (int part = 0; st == TF_OK && part < 3; part++) {
        const float *w = P(VIT_QKV_W) + ((int64_t)l * 3 * dp + (int64_t)part * dp) * dp;
        float *wa = A(VIT_QKV_W) + ((int64_t)l * 3 * da + (int64_t)part * da) * da;
        st = fuse_align_matrix(w, dp, dp, qkv_maps[part], da, s_in, da, wa);
        if (st == TF_OK)
            st = align_vector(P(VIT_QKV_B) + (int64_t)l * 3 * dp + (int64_t)part * dp, dp,
                              qkv_maps[part], da,
                              A(VIT_QKV_B) + (int64_t)l * 3 * da + (int64_t)part * da);
    }
    if (st == TF_OK)
        st = fuse_align_matrix(P(VIT_PROJ_W) + (int64_t)l * dp * dp, dp, dp, maps->attn_out[l], da,
                          maps->v[l], da, A(VIT_PROJ_W) + (int64_t)l * da * da);
    if (st == TF_OK)
        st = align_vector(P(VIT_PROJ_B) + (int64_t)l * dp, dp, maps->attn_out[l], da,
                          A(VIT_PROJ_B) + (int64_t)l * da);
    if (st == TF_OK)
        st = align_vector(P(VIT_LN2_G) + (int64_t)l * dp, dp, s_mid, da,
                          A(VIT_LN2_G) + (int64_t)l * da);
    if (st == TF_OK)
        st = align_vector(P(VIT_LN2_B) + (int64_t)l * dp, dp, s_mid, da,
                          A(VIT_LN2_B) + (int64_t)l * da);
    if (st == TF_OK)
        st = fuse_align_matrix(P(VIT_FC1_W) + (int64_t)l * fp * dp, fp, dp, maps->fc1[l], fa, s_mid,
                          da, A(VIT_FC1_W) + (int64_t)l * fa * da);
    if (st == TF_OK)
        st = align_vector(P(VIT_FC1_B) + (int64_t)l * fp, fp, maps->fc1[l], fa,
                          A(VIT_FC1_B) + (int64_t)l * fa);
    if (st == TF_OK)
        st = fuse_align_matrix(P(VIT_FC2_W) + (int64_t)l * dp * fp, dp, fp, maps->mlp_out[l], da,
                          maps->fc1[l], fa, A(VIT_FC2_W) + (int64_t)l * da * fa);
    if (st == TF_OK)
        st = align_vector(P(VIT_FC2_B) + (int64_t)l * dp, dp, maps->mlp_out[l], da,
                          A(VIT_FC2_B) + (int64_t)l * da);
#undef P
#undef A
    return st;
}

tf_status fuse_align_parent(const vit_model *parent, const fuse_maps *maps, vit_model *aligned)
{
    const vit_config *cp = &parent->cfg, *ca = &aligned->cfg;
    const int dp = cp->d, da = ca->d, T = vit_tokens(ca), C = ca->classes;
    const int L = ca->layers;
    const double *patch_map = maps->patch ? maps->patch : maps->stream0;
    const double *pos_map = maps->pos ? maps->pos : maps->stream0;
    const double *final_map = maps->stream2[L - 1];
    tf_status st;

    /* Embeddings: patch embedding and class token with the patch map, position
     * embeddings (T, d) with the position map applied to their columns. */
    st = fuse_align_matrix(parent->p[VIT_PATCH_W], dp, vit_patch_values(cp), patch_map, da, NULL,
                      vit_patch_values(ca), aligned->p[VIT_PATCH_W]);
    if (st == TF_OK)
        st = align_vector(parent->p[VIT_PATCH_B], dp, patch_map, da, aligned->p[VIT_PATCH_B]);
    if (st == TF_OK)
        st = align_vector(parent->p[VIT_CLS], dp, patch_map, da, aligned->p[VIT_CLS]);
    if (st == TF_OK) {
        /* pos~ (T, da) = pos (T, dp) T_out: the transpose of aligning pos^T row-wise. */
        double *t_out = normalize_plan(pos_map, dp, da, 1);
        if (!t_out) return TF_ERR_NOMEM;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < da; j++) {
                double s = 0;
                for (int i = 0; i < dp; i++)
                    s += (double)parent->p[VIT_POS][(int64_t)t * dp + i] * t_out[(int64_t)i * da + j];
                aligned->p[VIT_POS][(int64_t)t * da + j] = (float)s;
            }
        free(t_out);
    }

    /* Encoder layers. */
    for (int l = 0; st == TF_OK && l < L; l++) st = align_layer(parent, maps, l, aligned);

    /* Final LayerNorm with the last stream map; the classifier only on its input side. */
    if (st == TF_OK)
        st = align_vector(parent->p[VIT_LNF_G], dp, final_map, da, aligned->p[VIT_LNF_G]);
    if (st == TF_OK)
        st = align_vector(parent->p[VIT_LNF_B], dp, final_map, da, aligned->p[VIT_LNF_B]);
    if (st == TF_OK)
        st = fuse_align_matrix(parent->p[VIT_HEAD_W], C, dp, NULL, C, final_map, da,
                          aligned->p[VIT_HEAD_W]);
    if (st == TF_OK)
        memcpy(aligned->p[VIT_HEAD_B], parent->p[VIT_HEAD_B], (size_t)C * sizeof(float));
    return st;
}

tf_status fuse_average(vit_model *const *models, const double *weights, int n, vit_model *out)
{
    for (int p = 0; p < n; p++)
        if (models[p]->num_params != out->num_params)
            return tf_error_set(TF_ERR_ARG, "fuse_average: model %d has %lld parameters, the "
                                "output %lld", p, (long long)models[p]->num_params,
                                (long long)out->num_params);
    for (int64_t k = 0; k < out->num_params; k++) {
        double s = 0;
        for (int p = 0; p < n; p++) s += weights[p] * (double)models[p]->params[k];
        out->params[k] = (float)s;
    }
    return TF_OK;
}
