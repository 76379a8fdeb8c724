/* vit_backward_soft: with one-hot targets it equals vit_backward; the gradient is affine
 * in the targets, so a 30/70 mix of two one-hot targets gives the 30/70 mix of the two
 * gradients; and it matches central finite differences of the soft cross-entropy. */
#include "testutil.h"
#include "tfuse/vit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const vit_config tiny = {.image_size = 8, .channels = 1, .patch = 4, .d = 8,
                                .layers = 1, .heads = 2, .mlp = 16, .classes = 3,
                                .ln_eps = 1e-6};

/* Soft cross-entropy -sum_k t_k log p_k averaged over the batch, in double. */
static double soft_loss(const vit_model *m, vit_acts *a, const float *x, const float *t, int B)
{
    vit_forward(m, a, x, NULL, B, NULL);
    double loss = 0;
    for (int k = 0; k < B * tiny.classes; k++) loss -= t[k] * log((double)a->probs[k]);
    return loss / B;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const int B = 4, C = tiny.classes, len = tiny.image_size * tiny.image_size;
    vit_model *m = NULL;
    vit_model_create(&tiny, &m);
    vit_model_init(m, 9);
    vit_acts *a = NULL;
    vit_acts_create(&tiny, B, &a);
    float x[4 * 64];
    tf_rng rng;
    tf_rng_seed(&rng, 4);
    for (int k = 0; k < B * len; k++) x[k] = (float)tf_rng_normal(&rng);
    int y1[4] = {0, 1, 2, 1}, y2[4] = {2, 2, 0, 0};
    float t1[12] = {0}, t2[12] = {0}, mix[12];
    for (int b = 0; b < B; b++) {
        t1[b * C + y1[b]] = 1;
        t2[b * C + y2[b]] = 1;
    }
    for (int k = 0; k < B * C; k++) mix[k] = 0.3f * t1[k] + 0.7f * t2[k];
    const int64_t n = m->num_params;
    float *g_hard = calloc((size_t)n, sizeof(float)), *g1 = calloc((size_t)n, sizeof(float));
    float *g2 = calloc((size_t)n, sizeof(float)), *g_mix = calloc((size_t)n, sizeof(float));
    float *want = calloc((size_t)n, sizeof(float));

    vit_forward(m, a, x, y1, B, NULL);
    vit_backward(m, a, y1, g_hard);
    TU_CHECK(vit_backward_soft(m, a, t1, g1) == TF_OK, "vit_backward_soft failed");
    TU_CHECK(memcmp(g_hard, g1, (size_t)n * sizeof(float)) == 0,
             "one-hot soft targets must give vit_backward's gradient bitwise");
    vit_backward_soft(m, a, t2, g2);
    vit_backward_soft(m, a, mix, g_mix);
    for (int64_t k = 0; k < n; k++) want[k] = 0.3f * g1[k] + 0.7f * g2[k];
    tu_close_f32("gradient of mixed targets", g_mix, want, n, 1e-4, 1e-6);

    /* Finite differences on a few parameters of the head and the first layer. */
    double worst = 0;
    const int64_t probes[] = {m->p[VIT_HEAD_W] - m->params, m->p[VIT_HEAD_B] - m->params,
                              m->p[VIT_FC2_W] - m->params + 5, m->p[VIT_QKV_W] - m->params + 7};
    for (int i = 0; i < 4; i++) {
        float *p = m->params + probes[i], saved = *p;
        const double h = 1e-2;
        *p = saved + (float)h;
        double up = soft_loss(m, a, x, mix, B);
        *p = saved - (float)h;
        double down = soft_loss(m, a, x, mix, B);
        *p = saved;
        double fd = (up - down) / (2 * h);
        double err = fabs(fd - g_mix[probes[i]]) / fmax(1e-3, fabs(fd));
        worst = fmax(worst, err);
        TU_CHECK(err < 2e-2, "finite difference at parameter %lld: %.6g vs gradient %.6g",
                 (long long)probes[i], fd, (double)g_mix[probes[i]]);
    }
    TU_CHECK(vit_backward_soft(m, a, NULL, g1) == TF_ERR_ARG, "NULL targets must be rejected");
    free(g_hard);
    free(g1);
    free(g2);
    free(g_mix);
    free(want);
    vit_acts_free(&a);
    vit_model_free(&m);
    int rc = tu_finish("test_vit_soft");
    MPI_Finalize();
    return rc;
}
