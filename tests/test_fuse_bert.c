/* OT fusion of BERT parents: a parent fused with a permuted copy of itself (stream
 * dimensions, attention heads, dimensions inside heads and MLP neurons permuted: the same
 * function, with the tied decoder following the embedding permutation) comes back unchanged
 * with exact OT; so do identical parents; and the vanilla average of the permuted pair is a
 * different function. Runs at several rank counts. */
#include "testutil.h"
#include "tfuse/fuse_bert.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const bert_config tiny = {.vocab = 30, .seq_len = 8, .d = 8, .layers = 2, .heads = 2,
                                 .mlp = 16, .ln_eps = 1e-6};

static bert_model *random_bert(uint64_t seed)
{
    bert_model *m = NULL;
    if (bert_model_create(&tiny, &m) != TF_OK) TF_DIE("bert_model_create: %s", tf_error_get());
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int64_t k = 0; k < m->num_params; k++) m->params[k] = (float)(0.3 * tf_rng_normal(&rng));
    const int gains[] = {BERT_EMB_LN_G, BERT_LN1_G, BERT_LN2_G, BERT_HEAD_LN_G};
    for (int g = 0; g < 4; g++)
        for (int64_t k = 0; k < m->size[gains[g]]; k++) m->p[gains[g]][k] += 1.0f;
    return m;
}

static void random_perm(tf_rng *rng, int *perm, int n)
{
    int64_t tmp[256];
    for (int i = 0; i < n; i++) tmp[i] = i;
    tf_rng_shuffle(rng, tmp, n);
    for (int i = 0; i < n; i++) perm[i] = (int)tmp[i];
}

/* Writes column i of src (rows, n) to column perm[i] of dst. */
static void permute_cols(float *dst, const float *src, int rows, int n, const int *perm)
{
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++) dst[r * n + perm[i]] = src[r * n + i];
}

/* Writes row i of src (n, cols) to row perm[i] of dst. */
static void permute_rows(float *dst, const float *src, int n, int cols, const int *perm)
{
    for (int i = 0; i < n; i++)
        memcpy(dst + (int64_t)perm[i] * cols, src + (int64_t)i * cols, (size_t)cols * sizeof(float));
}

static bert_model *permuted_copy(const bert_model *a, uint64_t seed)
{
    const int d = tiny.d, f = tiny.mlp, h = tiny.heads, e = d / h, V = tiny.vocab;
    bert_model *b = NULL;
    bert_model_create(&tiny, &b);
    bert_model_copy(b, a);
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    int s[64], qk[64], v[64], mlp[64], heads[16], inner[64];
    float tmp[4096];
    random_perm(&rng, s, d);
    permute_cols(b->p[BERT_TOK_EMB], a->p[BERT_TOK_EMB], V, d, s);
    permute_cols(b->p[BERT_POS_EMB], a->p[BERT_POS_EMB], tiny.seq_len, d, s);
    const int stream_vectors[] = {BERT_EMB_LN_G, BERT_EMB_LN_B, BERT_HEAD_B, BERT_HEAD_LN_G,
                                  BERT_HEAD_LN_B};
    for (int k = 0; k < 5; k++)
        permute_cols(b->p[stream_vectors[k]], a->p[stream_vectors[k]], 1, d, s);
    permute_rows(tmp, a->p[BERT_HEAD_W], d, d, s);
    permute_cols(b->p[BERT_HEAD_W], tmp, d, d, s);
    for (int l = 0; l < tiny.layers; l++) {
        random_perm(&rng, heads, h);
        for (int k = 0; k < h; k++) {
            random_perm(&rng, inner, e);
            for (int i = 0; i < e; i++) qk[k * e + i] = heads[k] * e + inner[i];
            random_perm(&rng, inner, e);
            for (int i = 0; i < e; i++) v[k * e + i] = heads[k] * e + inner[i];
        }
        random_perm(&rng, mlp, f);
        for (int part = 0; part < 3; part++) {
            const int *rows = part < 2 ? qk : v;
            const int64_t off = ((int64_t)l * 3 + part) * d * d;
            permute_rows(tmp, a->p[BERT_QKV_W] + off, d, d, rows);
            permute_cols(b->p[BERT_QKV_W] + off, tmp, d, d, s);
            permute_cols(b->p[BERT_QKV_B] + (l * 3 + part) * d,
                         a->p[BERT_QKV_B] + (l * 3 + part) * d, 1, d, rows);
        }
        permute_rows(tmp, a->p[BERT_PROJ_W] + l * d * d, d, d, s);
        permute_cols(b->p[BERT_PROJ_W] + l * d * d, tmp, d, d, v);
        const int per_layer[] = {BERT_PROJ_B, BERT_LN1_G, BERT_LN1_B, BERT_FC2_B, BERT_LN2_G,
                                 BERT_LN2_B};
        for (int k = 0; k < 6; k++)
            permute_cols(b->p[per_layer[k]] + l * d, a->p[per_layer[k]] + l * d, 1, d, s);
        permute_rows(tmp, a->p[BERT_FC1_W] + l * f * d, f, d, mlp);
        permute_cols(b->p[BERT_FC1_W] + l * f * d, tmp, f, d, s);
        permute_cols(b->p[BERT_FC1_B] + l * f, a->p[BERT_FC1_B] + l * f, 1, f, mlp);
        permute_rows(tmp, a->p[BERT_FC2_W] + l * d * f, d, f, s);
        permute_cols(b->p[BERT_FC2_W] + l * d * f, tmp, d, f, mlp);
    }
    return b;
}

/* Largest |logit difference| over all positions of the sequences. */
static double logit_gap(const bert_model *a, const bert_model *b, const int *ids,
                        const int *lengths, int n)
{
    bert_acts *xa = NULL, *xb = NULL;
    bert_acts_create(&tiny, n, &xa);
    bert_acts_create(&tiny, n, &xb);
    bert_forward(a, xa, ids, lengths, NULL, n, NULL);
    bert_forward(b, xb, ids, lengths, NULL, n, NULL);
    double gap = 0;
    for (int64_t k = 0; k < (int64_t)xa->num_pred * tiny.vocab; k++)
        gap = fmax(gap, fabs((double)xa->logits[k] - (double)xb->logits[k]));
    bert_acts_free(&xa);
    bert_acts_free(&xb);
    return gap;
}

static bert_model *fuse_two(bert_model **parents, int n, const fuse_options *opt,
                            const int *ids, const int *lengths, int n_seqs)
{
    fuse_maps **maps = NULL;
    tf_status st = fuse_bert_compute_maps(MPI_COMM_WORLD, parents, n, 0, ids, lengths, n_seqs,
                                          opt, &maps);
    TU_CHECK(st == TF_OK, "fuse_bert_compute_maps failed: %s", tf_error_get());
    if (st != TF_OK) return NULL;
    bert_model *aligned[4] = {NULL}, *fused = NULL;
    double weights[4];
    for (int p = 0; p < n; p++) {
        weights[p] = 1.0 / n;
        bert_model_create(&tiny, &aligned[p]);
        if (p == 0)
            bert_model_copy(aligned[p], parents[0]);
        else
            TU_CHECK(fuse_bert_align_parent(parents[p], maps[p], aligned[p]) == TF_OK,
                     "fuse_bert_align_parent failed: %s", tf_error_get());
    }
    bert_model_create(&tiny, &fused);
    TU_CHECK(fuse_bert_average(aligned, weights, n, fused) == TF_OK, "average failed");
    for (int p = 0; p < n; p++) {
        bert_model_free(&aligned[p]);
        fuse_maps_free(&maps[p]);
    }
    free(maps);
    return fused;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const int n_seqs = 40, T = tiny.seq_len;
    int *ids = malloc(sizeof(int) * n_seqs * T), lengths[40];
    tf_rng rng;
    tf_rng_seed(&rng, 7);
    for (int k = 0; k < n_seqs * T; k++) ids[k] = (int)tf_rng_below(&rng, tiny.vocab);
    for (int i = 0; i < n_seqs; i++) lengths[i] = 3 + (int)tf_rng_below(&rng, T - 2);

    bert_model *a = random_bert(1);
    bert_model *b = permuted_copy(a, 2);
    double same = logit_gap(a, b, ids, lengths, 8);
    TU_CHECK(same < 1e-4, "the permuted copy must compute the same function (gap %.3g)", same);

    const enum fuse_residual policies[] = {FUSE_RESIDUAL_JOINT, FUSE_RESIDUAL_MEAN};
    for (int r = 0; r < 2; r++) {
        fuse_options opt = fuse_options_default();
        opt.residual = policies[r];
        opt.attention = FUSE_ATTN_HEAD_AWARE;
        bert_model *parents[2] = {a, b};
        bert_model *fused = fuse_two(parents, 2, &opt, ids, lengths, n_seqs);
        if (!fused) continue;
        tu_close_f32(r ? "BERT permuted copy, mean, head-aware" : "BERT permuted copy, joint, "
                     "head-aware", fused->params, a->params, a->num_params, 1e-5, 1e-6);
        bert_model_free(&fused);
    }

    /* Identical parents, shared Q/K maps. */
    bert_model *c = NULL;
    bert_model_create(&tiny, &c);
    bert_model_copy(c, a);
    fuse_options opt = fuse_options_default();
    bert_model *same_parents[2] = {a, c};
    bert_model *fused = fuse_two(same_parents, 2, &opt, ids, lengths, n_seqs);
    if (fused) tu_close_f32("BERT identical parents", fused->params, a->params, a->num_params,
                            1e-5, 1e-6);
    bert_model_free(&fused);

    /* The vanilla average of the permuted pair is a different function. */
    bert_model *avg = NULL, *pair[2] = {a, b};
    double half[2] = {0.5, 0.5};
    bert_model_create(&tiny, &avg);
    fuse_bert_average(pair, half, 2, avg);
    double gap = logit_gap(a, avg, ids, lengths, 8);
    TU_CHECK(gap > 1e-2, "the vanilla average should differ (gap %.3g)", gap);

    /* Repair of an average of the permuted pair: the fused model's Q and MLP hidden
     * neurons must reach the averaged moments, so the average of a model with itself is
     * left unchanged by repair. */
    bert_model *self = NULL, *selfs[2] = {a, a};
    bert_model_create(&tiny, &self);
    fuse_bert_average(selfs, half, 2, self);
    TU_CHECK(fuse_bert_repair(MPI_COMM_WORLD, self, selfs, half, 2, ids, lengths, n_seqs,
                              FUSE_REPAIR_ALL) == TF_OK,
             "fuse_bert_repair failed: %s", tf_error_get());
    tu_close_f32("BERT self-average after repair", self->params, a->params, a->num_params,
                 1e-5, 1e-6);
    bert_model_free(&self);
    bert_model *repaired = NULL;
    bert_model_create(&tiny, &repaired);
    fuse_bert_average(pair, half, 2, repaired);
    TU_CHECK(fuse_bert_repair(MPI_COMM_WORLD, repaired, pair, half, 2, ids, lengths, n_seqs,
                              FUSE_REPAIR_ALL) == TF_OK,
             "fuse_bert_repair failed: %s", tf_error_get());
    double moved = 0;
    for (int64_t k = 0; k < repaired->num_params; k++)
        moved = fmax(moved, fabs((double)repaired->params[k] - (double)avg->params[k]));
    TU_CHECK(moved > 1e-3, "repair must change the average of two different models (%.3g)",
             moved);
    bert_model_free(&repaired);

    /* Three parents: statistics one parent at a time give the same fused model, bitwise. */
    bert_model *d = random_bert(3), *three[3] = {a, b, d};
    fuse_options one_pass = fuse_options_default(), per_parent = one_pass;
    per_parent.per_parent_stats = 1;
    bert_model *f1 = fuse_two(three, 3, &one_pass, ids, lengths, n_seqs);
    bert_model *f2 = fuse_two(three, 3, &per_parent, ids, lengths, n_seqs);
    if (f1 && f2)
        TU_CHECK(memcmp(f1->params, f2->params, sizeof(float) * (size_t)f1->num_params) == 0,
                 "BERT per-parent statistics change the fused model");
    bert_model_free(&f1);
    bert_model_free(&f2);
    bert_model_free(&d);

    /* Options that do not apply to BERT are rejected. */
    fuse_maps **maps = NULL;
    opt.repair = FUSE_REPAIR_STREAM;
    TU_CHECK(fuse_bert_compute_maps(MPI_COMM_WORLD, pair, 2, 0, ids, lengths, n_seqs, &opt,
                                    &maps) == TF_ERR_ARG && strstr(tf_error_get(), "repair"),
             "repair must be rejected for BERT: %s", tf_error_get());

    bert_model_free(&avg);
    bert_model_free(&c);
    bert_model_free(&a);
    bert_model_free(&b);
    free(ids);
    int rc = tu_finish("test_fuse_bert");
    MPI_Finalize();
    return rc;
}
