/* Checks the AdamW update against values worked out by hand and against a double-precision
 * transcription of the textbook rule with bias-corrected moments and decoupled decay. Also
 * checks the warmup-plus-cosine schedule at its landmarks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "testutil.h"
#include "tfuse/vit.h"

/* One textbook AdamW step in double: m, v moments; mhat = m / (1 - b1^t), vhat likewise;
 * p <- p - lr * wd * p - lr * mhat / (sqrt(vhat) + eps). */
static double reference_step(double p, double g, double *m, double *v, int t, double lr, double wd,
                             double b1, double b2, double eps)
{
    *m = b1 * *m + (1 - b1) * g;
    *v = b2 * *v + (1 - b2) * g * g;
    double mhat = *m / (1 - pow(b1, t)), vhat = *v / (1 - pow(b2, t));
    return p - lr * wd * p - lr * mhat / (sqrt(vhat) + eps);
}

static void check_adamw(void)
{
    vit_config cfg = {.image_size = 4,
                      .channels = 1,
                      .patch = 2,
                      .d = 4,
                      .layers = 1,
                      .heads = 2,
                      .mlp = 8,
                      .classes = 2,
                      .ln_eps = 1e-6};
    vit_model *model = NULL;
    vit_adamw *opt = NULL;
    TU_CHECK(vit_model_create(&cfg, &model) == TF_OK, "model_create: %s", tf_error_get());
    TU_CHECK(vit_adamw_create(model, 1.5, 0.999, 1e-8, 0.1, &opt) == TF_ERR_ARG,
             "beta1 1.5 accepted");
    TU_CHECK(vit_adamw_create(model, 0.9, 0.999, 1e-8, 0.1, &opt) == TF_OK, "adamw_create: %s",
             tf_error_get());
    int64_t n = model->num_params;
    float *grads = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) model->params[i] = 0.5f;
    for (int64_t i = 0; i < n; i++) grads[i] = 0.1f;

    /* Step 1 by hand: mhat = g and vhat = g^2, so the Adam term is lr * g / (|g| + eps),
     * 0.01 * 0.1 / (0.1 + 1e-8) = 0.0099999990. Decayed tensors also lose lr * wd * p =
     * 0.0005. */
    vit_adamw_step(opt, model, grads, 0.01);
    TU_CHECK(opt->step == 1, "step counter %lld", (long long)opt->step);
    TU_CHECK(fabs(model->p[VIT_QKV_W][0] - 0.4895000010) < 1e-7, "qkv_w after step 1: %.9f",
             model->p[VIT_QKV_W][0]);
    TU_CHECK(fabs(model->p[VIT_HEAD_W][3] - 0.4895000010) < 1e-7, "head_w after step 1: %.9f",
             model->p[VIT_HEAD_W][3]);
    TU_CHECK(fabs(model->p[VIT_QKV_B][0] - 0.4900000010) < 1e-7, "qkv_b after step 1: %.9f",
             model->p[VIT_QKV_B][0]);
    TU_CHECK(fabs(model->p[VIT_POS][0] - 0.4900000010) < 1e-7, "pos after step 1: %.9f",
             model->p[VIT_POS][0]);
    TU_CHECK(fabs(model->p[VIT_LN1_G][0] - 0.4900000010) < 1e-7, "ln1_g after step 1: %.9f",
             model->p[VIT_LN1_G][0]);

    /* Steps 2 to 4 with varied gradients against the double reference. */
    double *p = malloc((size_t)n * sizeof(double));
    double *m = calloc((size_t)n, sizeof(double)), *v = calloc((size_t)n, sizeof(double));
    float *got = malloc((size_t)n * sizeof(float)), *want = malloc((size_t)n * sizeof(float));
    for (int k = 0; k < VIT_NUM_PARAMS; k++) {
        int decayed = k == VIT_PATCH_W || k == VIT_QKV_W || k == VIT_PROJ_W || k == VIT_FC1_W ||
                      k == VIT_FC2_W || k == VIT_HEAD_W;
        for (int64_t i = model->p[k] - model->params, e = i + model->size[k]; i < e; i++)
            p[i] = reference_step(0.5, 0.1, &m[i], &v[i], 1, 0.01, decayed ? 0.1 : 0.0, 0.9, 0.999,
                                  1e-8);
    }
    tf_rng rng;
    tf_rng_seed(&rng, 3);
    for (int t = 2; t <= 4; t++) {
        double lr = 0.01 / t;
        for (int64_t i = 0; i < n; i++) grads[i] = (float)(tf_rng_normal(&rng) * 0.3);
        vit_adamw_step(opt, model, grads, lr);
        for (int k = 0; k < VIT_NUM_PARAMS; k++) {
            int decayed = k == VIT_PATCH_W || k == VIT_QKV_W || k == VIT_PROJ_W || k == VIT_FC1_W ||
                          k == VIT_FC2_W || k == VIT_HEAD_W;
            for (int64_t i = model->p[k] - model->params, e = i + model->size[k]; i < e; i++)
                p[i] = reference_step(p[i], grads[i], &m[i], &v[i], t, lr, decayed ? 0.1 : 0.0, 0.9,
                                      0.999, 1e-8);
        }
    }
    for (int64_t i = 0; i < n; i++) want[i] = (float)p[i], got[i] = model->params[i];
    tu_close_f32("params after 4 AdamW steps", got, want, n, 1e-6, 1e-7);
    for (int64_t i = 0; i < n; i++) want[i] = (float)m[i], got[i] = opt->m[i];
    tu_close_f32("first moment", got, want, n, 1e-5, 1e-8);
    for (int64_t i = 0; i < n; i++) want[i] = (float)v[i], got[i] = opt->v[i];
    tu_close_f32("second moment", got, want, n, 1e-5, 1e-10);

    free(p), free(m), free(v), free(got), free(want), free(grads);
    vit_adamw_free(&opt);
    vit_adamw_free(&opt);
    TU_CHECK(opt == NULL, "adamw_free did not null the pointer");
    vit_model_free(&model);
}

static void check_cosine(void)
{
    const double peak = 1e-3, low = 1e-5;
    struct {
        int64_t step;
        double want;
    } cases[] = {
        {0, 1e-4}, /* warmup: peak * (step + 1) / warmup */
        {4, 5e-4},
        {9, 1e-3},  /* last warmup step reaches the peak */
        {10, 1e-3}, /* cosine starts at the peak */
        {35, low + 0.5 * (peak - low) * (1 + cos(3.14159265358979323846 / 4))},
        {60, 0.5 * (peak + low)}, /* halfway through the decay */
        {110, low},               /* end */
        {500, low},               /* after the end */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double got = tf_cosine_lr(cases[i].step, 10, 110, peak, low);
        TU_CHECK(fabs(got - cases[i].want) <= 1e-15 + 1e-12 * cases[i].want,
                 "cosine lr at step %lld: %.12g, expected %.12g", (long long)cases[i].step, got,
                 cases[i].want);
    }
    TU_CHECK(tf_cosine_lr(0, 0, 100, peak, low) == peak, "no warmup: step 0 is not the peak");
    double prev = tf_cosine_lr(10, 10, 110, peak, low);
    int monotone = 1;
    for (int64_t s = 11; s <= 110; s++) {
        double cur = tf_cosine_lr(s, 10, 110, peak, low);
        if (cur > prev) monotone = 0;
        prev = cur;
    }
    TU_CHECK(monotone, "cosine decay is not monotone");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    check_adamw();
    check_cosine();
    int rc = tu_finish("test_vit_adamw");
    MPI_Finalize();
    return rc;
}
