/* Exact invariances of OT fusion on small random ViTs:
 * - a parent fused with a copy of itself whose residual stream, attention heads, the
 *   dimensions inside each head and the MLP neurons are permuted (the same function) comes
 *   back unchanged with exact OT, for every residual policy that can see the stream
 *   permutation, and for head-aware attention maps; the vanilla average does not;
 * - a parent fused with a widened copy (MLP neurons duplicated, outgoing weights halved)
 *   comes back unchanged;
 * - N identical parents fuse to the same parent for every policy.
 * Runs at several rank counts: the calibration images are sharded over the ranks. */
#include "testutil.h"
#include "tfuse/fuse.h"
#include "tfuse/vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const vit_config tiny = {.image_size = 8, .channels = 1, .patch = 4, .d = 8,
                                .layers = 2, .heads = 2, .mlp = 16, .classes = 3,
                                .ln_eps = 1e-6};

/* Random parameters with unit-scale LayerNorm gains and visible biases, so that neurons
 * are distinct and ties in the costs are unlikely. */
static vit_model *random_model(const vit_config *cfg, uint64_t seed)
{
    vit_model *m = NULL;
    if (vit_model_create(cfg, &m) != TF_OK) TF_DIE("vit_model_create: %s", tf_error_get());
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int64_t k = 0; k < m->num_params; k++) m->params[k] = (float)(0.3 * tf_rng_normal(&rng));
    for (int64_t k = 0; k < m->size[VIT_LN1_G]; k++) m->p[VIT_LN1_G][k] += 1.0f;
    for (int64_t k = 0; k < m->size[VIT_LN2_G]; k++) m->p[VIT_LN2_G][k] += 1.0f;
    for (int64_t k = 0; k < m->size[VIT_LNF_G]; k++) m->p[VIT_LNF_G][k] += 1.0f;
    return m;
}

static void random_perm(tf_rng *rng, int *perm, int n)
{
    int64_t tmp[4096];
    for (int i = 0; i < n; i++) tmp[i] = i;
    tf_rng_shuffle(rng, tmp, n);
    for (int i = 0; i < n; i++) perm[i] = (int)tmp[i];
}

/* Copies row `from` of a (rows, cols) matrix src to row `to` of dst. */
static void copy_row(float *dst, const float *src, int cols, int to, int from)
{
    memcpy(dst + (int64_t)to * cols, src + (int64_t)from * cols, (size_t)cols * sizeof(float));
}

/* Returns a functionally identical model: stream dims, heads, dims inside heads (Q/K
 * together, V separately) and MLP neurons permuted. new index = perm[old]. */
static vit_model *permuted_copy(const vit_model *a, uint64_t seed, int permute_stream)
{
    const vit_config *c = &a->cfg;
    const int d = c->d, f = c->mlp, h = c->heads, e = d / h, T = vit_tokens(c), L = c->layers;
    const int P = vit_patch_values(c);
    vit_model *b = NULL;
    vit_model_create(c, &b);
    vit_model_copy(b, a);
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    int s[64], qk[64], v[64], mlp[256], heads[16], inner[64];
    if (permute_stream)
        random_perm(&rng, s, d);
    else
        for (int i = 0; i < d; i++) s[i] = i;

    /* Stream: outputs of patch_w, patch_b, cls, pos columns, norms, proj/fc2 outputs. */
    for (int i = 0; i < d; i++) {
        copy_row(b->p[VIT_PATCH_W], a->p[VIT_PATCH_W], P, s[i], i);
        b->p[VIT_PATCH_B][s[i]] = a->p[VIT_PATCH_B][i];
        b->p[VIT_CLS][s[i]] = a->p[VIT_CLS][i];
        for (int t = 0; t < T; t++) b->p[VIT_POS][t * d + s[i]] = a->p[VIT_POS][t * d + i];
        b->p[VIT_LNF_G][s[i]] = a->p[VIT_LNF_G][i];
        b->p[VIT_LNF_B][s[i]] = a->p[VIT_LNF_B][i];
        for (int k = 0; k < c->classes; k++)
            b->p[VIT_HEAD_W][k * d + s[i]] = a->p[VIT_HEAD_W][k * d + i];
    }
    for (int l = 0; l < L; l++) {
        random_perm(&rng, heads, h);
        for (int k = 0; k < h; k++) {
            random_perm(&rng, inner, e);
            for (int i = 0; i < e; i++) qk[k * e + i] = heads[k] * e + inner[i];
            random_perm(&rng, inner, e);
            for (int i = 0; i < e; i++) v[k * e + i] = heads[k] * e + inner[i];
        }
        random_perm(&rng, mlp, f);
        const float *wa = a->p[VIT_QKV_W] + (int64_t)l * 3 * d * d;
        float *wb = b->p[VIT_QKV_W] + (int64_t)l * 3 * d * d;
        const float *ba = a->p[VIT_QKV_B] + l * 3 * d;
        float *bb = b->p[VIT_QKV_B] + l * 3 * d;
        for (int part = 0; part < 3; part++)
            for (int r = 0; r < d; r++) {
                int to = part < 2 ? qk[r] : v[r];
                for (int col = 0; col < d; col++)
                    wb[(part * d + to) * d + s[col]] = wa[(part * d + r) * d + col];
                bb[part * d + to] = ba[part * d + r];
            }
        for (int r = 0; r < d; r++)
            for (int col = 0; col < d; col++)
                b->p[VIT_PROJ_W][(int64_t)l * d * d + s[r] * d + v[col]] =
                    a->p[VIT_PROJ_W][(int64_t)l * d * d + r * d + col];
        for (int i = 0; i < d; i++) {
            b->p[VIT_PROJ_B][l * d + s[i]] = a->p[VIT_PROJ_B][l * d + i];
            b->p[VIT_LN1_G][l * d + s[i]] = a->p[VIT_LN1_G][l * d + i];
            b->p[VIT_LN1_B][l * d + s[i]] = a->p[VIT_LN1_B][l * d + i];
            b->p[VIT_LN2_G][l * d + s[i]] = a->p[VIT_LN2_G][l * d + i];
            b->p[VIT_LN2_B][l * d + s[i]] = a->p[VIT_LN2_B][l * d + i];
            b->p[VIT_FC2_B][l * d + s[i]] = a->p[VIT_FC2_B][l * d + i];
        }
        for (int r = 0; r < f; r++) {
            for (int col = 0; col < d; col++)
                b->p[VIT_FC1_W][(int64_t)l * f * d + mlp[r] * d + s[col]] =
                    a->p[VIT_FC1_W][(int64_t)l * f * d + r * d + col];
            b->p[VIT_FC1_B][l * f + mlp[r]] = a->p[VIT_FC1_B][l * f + r];
        }
        for (int r = 0; r < d; r++)
            for (int col = 0; col < f; col++)
                b->p[VIT_FC2_W][(int64_t)l * d * f + s[r] * f + mlp[col]] =
                    a->p[VIT_FC2_W][(int64_t)l * d * f + r * f + col];
    }
    return b;
}

/* A copy with every MLP neuron duplicated (mlp doubled): both copies get the neuron's
 * incoming weights and bias, and each carries half of its outgoing weights. */
static vit_model *widened_copy(const vit_model *a)
{
    vit_config wide = a->cfg;
    wide.mlp *= 2;
    const int d = a->cfg.d, f = a->cfg.mlp, L = a->cfg.layers;
    vit_model *b = NULL;
    vit_model_create(&wide, &b);
    for (int which = 0; which < VIT_NUM_PARAMS; which++)
        if (which != VIT_FC1_W && which != VIT_FC1_B && which != VIT_FC2_W)
            memcpy(b->p[which], a->p[which], (size_t)a->size[which] * sizeof(float));
    for (int l = 0; l < L; l++)
        for (int r = 0; r < f; r++)
            for (int copy = 0; copy < 2; copy++) {
                int to = copy ? f + (f - 1 - r) : r; /* second copies in reverse order */
                memcpy(b->p[VIT_FC1_W] + (int64_t)l * 2 * f * d + (int64_t)to * d,
                       a->p[VIT_FC1_W] + (int64_t)l * f * d + (int64_t)r * d,
                       (size_t)d * sizeof(float));
                b->p[VIT_FC1_B][l * 2 * f + to] = a->p[VIT_FC1_B][l * f + r];
                for (int row = 0; row < d; row++)
                    b->p[VIT_FC2_W][(int64_t)l * d * 2 * f + row * 2 * f + to] =
                        0.5f * a->p[VIT_FC2_W][(int64_t)l * d * f + row * f + r];
            }
    return b;
}

static float *random_images(int n, uint64_t seed)
{
    const int len = tiny.image_size * tiny.image_size;
    float *x = malloc((size_t)n * len * sizeof(float));
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int64_t k = 0; k < (int64_t)n * len; k++) x[k] = (float)tf_rng_normal(&rng);
    return x;
}

/* Largest |logit difference| of two models on the images. */
static double logit_gap(const vit_model *a, const vit_model *b, const float *x, int n)
{
    vit_acts *acts_a = NULL, *acts_b = NULL;
    vit_acts_create(&a->cfg, n, &acts_a);
    vit_acts_create(&b->cfg, n, &acts_b);
    vit_forward(a, acts_a, x, NULL, n, NULL);
    vit_forward(b, acts_b, x, NULL, n, NULL);
    double gap = 0;
    for (int k = 0; k < n * a->cfg.classes; k++)
        gap = fmax(gap, fabs((double)acts_a->logits[k] - (double)acts_b->logits[k]));
    vit_acts_free(&acts_a);
    vit_acts_free(&acts_b);
    return gap;
}

/* Fuses the parents with opt (anchor 0, equal weights) into a new model. */
static vit_model *fuse_models(vit_model **parents, int n, const fuse_options *opt,
                              const float *calib, int n_calib)
{
    fuse_maps **maps = NULL;
    tf_status st = fuse_compute_maps(MPI_COMM_WORLD, parents, n, 0, calib, n_calib, opt, &maps);
    TU_CHECK(st == TF_OK, "fuse_compute_maps failed: %s", tf_error_get());
    if (st != TF_OK) return NULL;
    vit_model **aligned = calloc((size_t)n, sizeof *aligned);
    double weights[8];
    for (int p = 0; p < n; p++) {
        weights[p] = 1.0 / n;
        vit_model_create(&parents[0]->cfg, &aligned[p]);
        if (p == 0)
            vit_model_copy(aligned[p], parents[0]);
        else
            TU_CHECK(fuse_align_parent(parents[p], maps[p], aligned[p]) == TF_OK,
                     "fuse_align_parent failed: %s", tf_error_get());
    }
    vit_model *fused = NULL;
    vit_model_create(&parents[0]->cfg, &fused);
    TU_CHECK(fuse_average(aligned, weights, n, fused) == TF_OK, "fuse_average failed");
    TU_CHECK(fuse_repair(MPI_COMM_WORLD, fused, aligned, weights, n, calib, n_calib,
                         opt->repair) == TF_OK,
             "fuse_repair failed: %s", tf_error_get());
    for (int p = 0; p < n; p++) {
        vit_model_free(&aligned[p]);
        fuse_maps_free(&maps[p]);
    }
    free(aligned);
    free(maps);
    return fused;
}

static const char *const residual_names[] = {"joint", "mean", "weighted", "skip", "branch",
                                             "identity"};

static void test_permuted_copy(const float *calib, int n_calib)
{
    vit_model *a = random_model(&tiny, 11);
    vit_model *b = permuted_copy(a, 12, 1);
    double same = logit_gap(a, b, calib, 16);
    TU_CHECK(same < 1e-4, "the permuted copy must compute the same function (gap %.3g)", same);

    /* Every policy except identity sees the stream permutation. */
    for (int r = FUSE_RESIDUAL_JOINT; r <= FUSE_RESIDUAL_BRANCH; r++)
        for (int attn = 0; attn < 2; attn++) {
            fuse_options opt = fuse_options_default();
            opt.residual = (enum fuse_residual)r;
            opt.attention = attn ? FUSE_ATTN_HEAD_AWARE : FUSE_ATTN_SHARED_QK;
            opt.repair = attn ? FUSE_REPAIR_STREAM : FUSE_REPAIR_NONE;
            vit_model *parents[2] = {a, b};
            vit_model *fused = fuse_models(parents, 2, &opt, calib, n_calib);
            if (!fused) continue;
            char what[96];
            snprintf(what, sizeof what, "permuted copy, residual %s, %s", residual_names[r],
                     attn ? "head-aware" : "shared Q/K");
            tu_close_f32(what, fused->params, a->params, a->num_params, 1e-5, 1e-6);
            vit_model_free(&fused);
        }

    /* Weight-based costs, which support the per-join policies. */
    for (int r = FUSE_RESIDUAL_MEAN; r <= FUSE_RESIDUAL_BRANCH; r++) {
        if (r == FUSE_RESIDUAL_WEIGHTED) continue;
        for (int attn = 0; attn < 2; attn++) {
            fuse_options opt = fuse_options_default();
            opt.cost = FUSE_COST_WEIGHT;
            opt.residual = (enum fuse_residual)r;
            opt.attention = attn ? FUSE_ATTN_HEAD_AWARE : FUSE_ATTN_SHARED_QK;
            vit_model *parents[2] = {a, b};
            vit_model *fused = fuse_models(parents, 2, &opt, calib, n_calib);
            if (!fused) continue;
            char what[96];
            snprintf(what, sizeof what, "permuted copy, weight cost, residual %s, %s",
                     residual_names[r], attn ? "head-aware" : "shared Q/K");
            tu_close_f32(what, fused->params, a->params, a->num_params, 1e-5, 1e-6);
            vit_model_free(&fused);
        }
    }

    /* The vanilla average of the two is a different function. */
    vit_model *avg = NULL;
    vit_model_create(&tiny, &avg);
    vit_model *parents[2] = {a, b};
    double half[2] = {0.5, 0.5};
    fuse_average(parents, half, 2, avg);
    double gap = logit_gap(a, avg, calib, 16);
    TU_CHECK(gap > 1e-2, "vanilla average of a permuted copy should differ (gap %.3g)", gap);
    vit_model_free(&avg);
    vit_model_free(&a);
    vit_model_free(&b);
}

static void test_widened_copy(const float *calib, int n_calib)
{
    vit_model *a = random_model(&tiny, 21);
    vit_model *wide = widened_copy(a);
    double same = logit_gap(a, wide, calib, 16);
    TU_CHECK(same < 1e-4, "the widened copy must compute the same function (gap %.3g)", same);
    fuse_options opt = fuse_options_default();
    vit_model *parents[2] = {a, wide};
    vit_model *fused = fuse_models(parents, 2, &opt, calib, n_calib);
    if (fused) {
        tu_close_f32("widened copy fused onto the original", fused->params, a->params,
                     a->num_params, 1e-5, 1e-6);
        vit_model_free(&fused);
    }
    vit_model_free(&a);
    vit_model_free(&wide);
}

static void test_identical_parents(const float *calib, int n_calib)
{
    vit_model *a = random_model(&tiny, 31);
    vit_model *copies[4] = {a, NULL, NULL, NULL};
    for (int p = 1; p < 4; p++) {
        vit_model_create(&tiny, &copies[p]);
        vit_model_copy(copies[p], a);
    }
    for (int r = FUSE_RESIDUAL_JOINT; r <= FUSE_RESIDUAL_IDENTITY; r++) {
        fuse_options opt = fuse_options_default();
        opt.residual = (enum fuse_residual)r;
        opt.repair = (enum fuse_repair)(r % 4); /* repair of equal parents changes nothing */
        vit_model *fused = fuse_models(copies, 4, &opt, calib, n_calib);
        if (!fused) continue;
        char what[96];
        snprintf(what, sizeof what, "4 identical parents, residual %s", residual_names[r]);
        tu_close_f32(what, fused->params, a->params, a->num_params, 1e-5, 1e-6);
        vit_model_free(&fused);
    }
    for (int p = 0; p < 4; p++) vit_model_free(&copies[p]);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const int n_calib = 48;
    float *calib = random_images(n_calib, 5);
    test_permuted_copy(calib, n_calib);
    test_widened_copy(calib, n_calib);
    test_identical_parents(calib, n_calib);
    free(calib);
    int rc = tu_finish("test_fuse_invariance");
    MPI_Finalize();
    return rc;
}
