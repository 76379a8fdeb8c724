/* Moving a parent's parameters into the anchor's basis with transport plans, and weighted
 * averaging.
 *
 * A plan P (n, m) between parent neurons (rows) and anchor neurons (columns) is used in two
 * normalizations. On the output side of a layer each anchor neuron becomes an average of
 * parent neurons: T_out = P diag(1/colsum), and W~ = T_out^T W. On the input side of the
 * consumer each parent input neuron passes its whole weight on: T_in = diag(1/rowsum) P,
 * and W^ = W T_in. With equal widths and uniform marginals both are n P; with unequal
 * widths only this pair keeps a widened network with duplicated neurons equivalent.
 *
 * Which plan applies to which side of which tensor is data: an architecture lists its
 * tensors (or row blocks of them) as fuse_entry records, and one loop applies them. */
#include "fuse_internal.h"

#include <cblas.h>
#include <stdio.h>
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
            for (int i = 0; i < n; i++)
                t[(int64_t)i * m + j] = s > 0 ? t[(int64_t)i * m + j] / s : 0;
        }
    } else {
        for (int i = 0; i < n; i++) {
            double s = 0;
            for (int j = 0; j < m; j++) s += t[(int64_t)i * m + j];
            for (int j = 0; j < m; j++)
                t[(int64_t)i * m + j] = s > 0 ? t[(int64_t)i * m + j] / s : 0;
        }
    }
    return t;
}

/* out (ra, ca) = T_row^T W (rp, cp) T_col, where row_plan (rp, ra) is normalized for the
 * output side and col_plan (cp, ca) for the input side, unless col_output says the columns
 * are output-side neurons too (as the columns of position embeddings are). A NULL plan is
 * the identity (then ra = rp or ca = cp). W is float; the products are formed in double. */
static tf_status align_sides(const float *W, int rp, int cp, const double *row_plan, int ra,
                             const double *col_plan, int ca, int col_output, float *out)
{
    double *w = tf_malloc((size_t)rp * cp * sizeof(double));
    double *tmp = tf_malloc((size_t)rp * ca * sizeof(double));
    double *res = tf_malloc((size_t)ra * ca * sizeof(double));
    double *t_col = col_plan ? normalize_plan(col_plan, cp, ca, col_output) : NULL;
    double *t_row = row_plan ? normalize_plan(row_plan, rp, ra, 1) : NULL;
    tf_status st = TF_OK;
    if (!w || !tmp || !res || (col_plan && !t_col) || (row_plan && !t_row)) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    for (int64_t k = 0; k < (int64_t)rp * cp; k++) w[k] = (double)W[k];
    if (t_col)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rp, ca, cp, 1.0, w, cp, t_col, ca,
                    0.0, tmp, ca);
    else
        memcpy(tmp, w, (size_t)rp * cp * sizeof(double));
    if (t_row)
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ra, ca, rp, 1.0, t_row, ra, tmp, ca,
                    0.0, res, ca);
    else
        memcpy(res, tmp, (size_t)ra * ca * sizeof(double));
    for (int64_t k = 0; k < (int64_t)ra * ca; k++) out[k] = (float)res[k];
done:
    free(w);
    free(tmp);
    free(res);
    free(t_col);
    free(t_row);
    return st;
}

tf_status fuse_align_matrix(const float *W, int rp, int cp, const double *out_plan, int ra,
                            const double *in_plan, int ca, float *out)
{
    return align_sides(W, rp, cp, out_plan, ra, in_plan, ca, 0, out);
}

const double *fuse_maps_get(const fuse_maps *maps, enum fuse_group group, int layer)
{
    switch (group) {
    case FUSE_GROUP_NONE:
        return NULL;
    case FUSE_GROUP_STREAM0:
        return maps->stream0;
    case FUSE_GROUP_EMBED:
        return maps->patch ? maps->patch : maps->stream0;
    case FUSE_GROUP_POS:
        return maps->pos ? maps->pos : maps->stream0;
    case FUSE_GROUP_QK:
        return maps->qk[layer];
    case FUSE_GROUP_V:
        return maps->v[layer];
    case FUSE_GROUP_ATTN_OUT:
        return maps->attn_out[layer];
    case FUSE_GROUP_STREAM1:
        return maps->stream1[layer];
    case FUSE_GROUP_FC1:
        return maps->fc1[layer];
    case FUSE_GROUP_MLP_OUT:
        return maps->mlp_out[layer];
    case FUSE_GROUP_STREAM2:
        return maps->stream2[layer];
    case FUSE_GROUP_STREAM_IN:
        return layer == 0 ? maps->stream0 : maps->stream2[layer - 1];
    case FUSE_GROUP_STREAM_FINAL:
        return maps->stream2[maps->layers - 1];
    }
    return NULL;
}

tf_status fuse_apply_entries(const fuse_entry *entries, int count, const fuse_maps *maps)
{
    for (int i = 0; i < count; i++) {
        const fuse_entry *e = &entries[i];
        const double *row_plan = fuse_maps_get(maps, e->row_group, e->layer);
        const double *col_plan = fuse_maps_get(maps, e->col_group, e->layer);
        if ((e->row_group != FUSE_GROUP_NONE && !row_plan) ||
            (e->col_group != FUSE_GROUP_NONE && !col_plan))
            return tf_error_set(TF_ERR_ARG, "no transport map for tensor %s (layer %d)", e->name,
                                e->layer);
        tf_status st = align_sides(e->src, e->rows_p, e->cols_p, row_plan, e->rows_a, col_plan,
                                   e->cols_a, e->col_output, e->dst);
        if (st != TF_OK) return st;
    }
    return TF_OK;
}

/* Appends one entry; a slice starts `offset_p` / `offset_a` elements into the tensors. */
static void add_entry(fuse_entry *list, int *count, const char *name, int layer, const float *src,
                      float *dst, int rows_p, int rows_a, int cols_p, int cols_a,
                      enum fuse_group row_group, enum fuse_group col_group, int col_output)
{
    list[(*count)++] = (fuse_entry){name,   layer,  src,       dst,       rows_p,    rows_a,
                                    cols_p, cols_a, row_group, col_group, col_output};
}

int fuse_vit_entries(const vit_model *pm, vit_model *am, fuse_entry *list)
{
    const vit_config *cp = &pm->cfg, *ca = &am->cfg;
    const int dp = cp->d, da = ca->d, fp = cp->mlp, fa = ca->mlp;
    const int T = vit_tokens(ca), P = vit_patch_values(ca), C = ca->classes;
    int n = 0;
#define SRC(which, off) (pm->p[which] + (off))
#define DST(which, off) (am->p[which] + (off))
    /* Embeddings: patch embedding and class token with the embedding map, position
     * embeddings (T, d) with the position map on their columns. */
    add_entry(list, &n, "patch_w", 0, SRC(VIT_PATCH_W, 0), DST(VIT_PATCH_W, 0), dp, da, P, P,
              FUSE_GROUP_EMBED, FUSE_GROUP_NONE, 0);
    add_entry(list, &n, "patch_b", 0, SRC(VIT_PATCH_B, 0), DST(VIT_PATCH_B, 0), dp, da, 1, 1,
              FUSE_GROUP_EMBED, FUSE_GROUP_NONE, 0);
    add_entry(list, &n, "cls", 0, SRC(VIT_CLS, 0), DST(VIT_CLS, 0), dp, da, 1, 1, FUSE_GROUP_EMBED,
              FUSE_GROUP_NONE, 0);
    add_entry(list, &n, "pos", 0, SRC(VIT_POS, 0), DST(VIT_POS, 0), T, T, dp, da, FUSE_GROUP_NONE,
              FUSE_GROUP_POS, 1);

    /* Encoder layers: Q, K, V are row blocks of the packed (3d, d) matrix. */
    for (int l = 0; l < ca->layers; l++) {
        const int64_t lp = l, la = l;
        add_entry(list, &n, "ln1_g", l, SRC(VIT_LN1_G, lp * dp), DST(VIT_LN1_G, la * da), dp, da, 1,
                  1, FUSE_GROUP_STREAM_IN, FUSE_GROUP_NONE, 0);
        add_entry(list, &n, "ln1_b", l, SRC(VIT_LN1_B, lp * dp), DST(VIT_LN1_B, la * da), dp, da, 1,
                  1, FUSE_GROUP_STREAM_IN, FUSE_GROUP_NONE, 0);
        for (int part = 0; part < 3; part++) {
            enum fuse_group g = part < 2 ? FUSE_GROUP_QK : FUSE_GROUP_V;
            add_entry(list, &n, "qkv_w", l, SRC(VIT_QKV_W, (lp * 3 + part) * dp * dp),
                      DST(VIT_QKV_W, (la * 3 + part) * da * da), dp, da, dp, da, g,
                      FUSE_GROUP_STREAM_IN, 0);
            add_entry(list, &n, "qkv_b", l, SRC(VIT_QKV_B, (lp * 3 + part) * dp),
                      DST(VIT_QKV_B, (la * 3 + part) * da), dp, da, 1, 1, g, FUSE_GROUP_NONE, 0);
        }
        add_entry(list, &n, "proj_w", l, SRC(VIT_PROJ_W, lp * dp * dp),
                  DST(VIT_PROJ_W, la * da * da), dp, da, dp, da, FUSE_GROUP_ATTN_OUT, FUSE_GROUP_V,
                  0);
        add_entry(list, &n, "proj_b", l, SRC(VIT_PROJ_B, lp * dp), DST(VIT_PROJ_B, la * da), dp, da,
                  1, 1, FUSE_GROUP_ATTN_OUT, FUSE_GROUP_NONE, 0);
        add_entry(list, &n, "ln2_g", l, SRC(VIT_LN2_G, lp * dp), DST(VIT_LN2_G, la * da), dp, da, 1,
                  1, FUSE_GROUP_STREAM1, FUSE_GROUP_NONE, 0);
        add_entry(list, &n, "ln2_b", l, SRC(VIT_LN2_B, lp * dp), DST(VIT_LN2_B, la * da), dp, da, 1,
                  1, FUSE_GROUP_STREAM1, FUSE_GROUP_NONE, 0);
        add_entry(list, &n, "fc1_w", l, SRC(VIT_FC1_W, lp * fp * dp), DST(VIT_FC1_W, la * fa * da),
                  fp, fa, dp, da, FUSE_GROUP_FC1, FUSE_GROUP_STREAM1, 0);
        add_entry(list, &n, "fc1_b", l, SRC(VIT_FC1_B, lp * fp), DST(VIT_FC1_B, la * fa), fp, fa, 1,
                  1, FUSE_GROUP_FC1, FUSE_GROUP_NONE, 0);
        add_entry(list, &n, "fc2_w", l, SRC(VIT_FC2_W, lp * dp * fp), DST(VIT_FC2_W, la * da * fa),
                  dp, da, fp, fa, FUSE_GROUP_MLP_OUT, FUSE_GROUP_FC1, 0);
        add_entry(list, &n, "fc2_b", l, SRC(VIT_FC2_B, lp * dp), DST(VIT_FC2_B, la * da), dp, da, 1,
                  1, FUSE_GROUP_MLP_OUT, FUSE_GROUP_NONE, 0);
    }

    /* Final LayerNorm with the last stream map; the classifier only on its input side. */
    add_entry(list, &n, "lnf_g", 0, SRC(VIT_LNF_G, 0), DST(VIT_LNF_G, 0), dp, da, 1, 1,
              FUSE_GROUP_STREAM_FINAL, FUSE_GROUP_NONE, 0);
    add_entry(list, &n, "lnf_b", 0, SRC(VIT_LNF_B, 0), DST(VIT_LNF_B, 0), dp, da, 1, 1,
              FUSE_GROUP_STREAM_FINAL, FUSE_GROUP_NONE, 0);
    add_entry(list, &n, "head_w", 0, SRC(VIT_HEAD_W, 0), DST(VIT_HEAD_W, 0), C, C, dp, da,
              FUSE_GROUP_NONE, FUSE_GROUP_STREAM_FINAL, 0);
    add_entry(list, &n, "head_b", 0, SRC(VIT_HEAD_B, 0), DST(VIT_HEAD_B, 0), C, C, 1, 1,
              FUSE_GROUP_NONE, FUSE_GROUP_NONE, 0);
#undef SRC
#undef DST
    return n;
}

tf_status fuse_align_parent(const vit_model *parent, const fuse_maps *maps, vit_model *aligned)
{
    fuse_entry *entries = tf_malloc((size_t)fuse_vit_entry_count(&aligned->cfg) * sizeof *entries);
    if (!entries) return TF_ERR_NOMEM;
    int count = fuse_vit_entries(parent, aligned, entries);
    tf_status st = fuse_apply_entries(entries, count, maps);
    free(entries);
    return st;
}

tf_status fuse_agree(MPI_Comm comm, tf_status st, const char *what)
{
    int failed = st != TF_OK, any = 0;
    TF_MPI_CHECK(MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, comm));
    if (st == TF_OK && any) return tf_error_set(TF_ERR_NOMEM, "%s failed on another rank", what);
    return st;
}

tf_status fuse_align_shared(MPI_Comm comm, int n_parents, int anchor, float *const *params,
                            int64_t count, tf_status (*align)(int p, void *ctx), void *ctx)
{
    int rank, size;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    if (n_parents > FUSE_MAX_AVERAGE)
        return tf_error_set(TF_ERR_ARG, "fuse_align_shared: %d parents; at most %d", n_parents,
                            FUSE_MAX_AVERAGE);

    /* First every rank aligns all of its parents, so that the owners work at the same time.
     * After its first failure a rank skips the rest, so that its error stays the current
     * one. A copy of the message goes out with the broadcast of that parent. */
    int owner[FUSE_MAX_AVERAGE], status[FUSE_MAX_AVERAGE], failed_here = 0;
    char message[FUSE_MAX_AVERAGE][256];
    for (int p = 0, k = 0; p < n_parents; p++) {
        owner[p] = p == anchor ? -1 : k++ % size;
        status[p] = TF_OK;
        message[p][0] = '\0';
        if (owner[p] != rank) continue;
        if (failed_here) {
            status[p] = TF_ERR_ARG;
            snprintf(message[p], sizeof message[p], "skipped after an earlier failure");
            continue;
        }
        status[p] = (int)align(p, ctx);
        failed_here = status[p] != TF_OK;
        if (failed_here) snprintf(message[p], sizeof message[p], "%s", tf_error_get());
    }

    /* Then each owner broadcasts its status, message and parameters, in parent order. */
    tf_status st = TF_OK;
    for (int p = 0; p < n_parents; p++) {
        if (owner[p] < 0) continue;
        TF_MPI_CHECK(MPI_Bcast(&status[p], 1, MPI_INT, owner[p], comm));
        TF_MPI_CHECK(MPI_Bcast(message[p], sizeof message[p], MPI_CHAR, owner[p], comm));
        if (status[p] != TF_OK) {
            /* The first failure wins; its owner keeps its own message. */
            if (st == TF_OK && rank == owner[p])
                st = (tf_status)status[p]; /* the full message is still the current error */
            else if (st == TF_OK)
                st = tf_error_set((tf_status)status[p], "rank %d: %s", owner[p], message[p]);
            continue;
        }
        for (int64_t off = 0; off < count; off += INT32_MAX) {
            int piece = (int)(count - off < INT32_MAX ? count - off : INT32_MAX);
            TF_MPI_CHECK(MPI_Bcast(params[p] + off, piece, MPI_FLOAT, owner[p], comm));
        }
    }
    return st;
}

void fuse_average_buffers(const float *const *buffers, const double *weights, int n, int64_t count,
                          float *out)
{
    for (int64_t k = 0; k < count; k++) {
        double s = 0;
        for (int p = 0; p < n; p++) s += weights[p] * (double)buffers[p][k];
        out[k] = (float)s;
    }
}

tf_status fuse_average(vit_model *const *models, const double *weights, int n, vit_model *out)
{
    const float *buffers[FUSE_MAX_AVERAGE];
    if (n > FUSE_MAX_AVERAGE)
        return tf_error_set(TF_ERR_ARG, "fuse_average: %d models; at most %d", n, FUSE_MAX_AVERAGE);
    for (int p = 0; p < n; p++) {
        if (models[p]->num_params != out->num_params)
            return tf_error_set(TF_ERR_ARG,
                                "fuse_average: model %d has %lld parameters, the "
                                "output %lld",
                                p, (long long)models[p]->num_params, (long long)out->num_params);
        buffers[p] = models[p]->params;
    }
    fuse_average_buffers(buffers, weights, n, out->num_params, out->params);
    return TF_OK;
}
