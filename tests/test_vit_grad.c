/* Gradient check of vit_backward against finite differences of vit_forward's loss, on a
 * tiny model with random parameters, for a random subset of entries of every tensor and for
 * three LayerNorm epsilons. Also checks the configuration and argument guards. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tfuse/vit.h"
#include "vit_kernels.h"

static vit_config tiny_config(double eps)
{
    vit_config c = {.image_size = 8,
                    .channels = 2,
                    .patch = 4,
                    .d = 8,
                    .layers = 2,
                    .heads = 2,
                    .mlp = 16,
                    .classes = 3,
                    .ln_eps = eps};
    return c;
}

/* Random parameters of order one, so that every path of the network carries signal:
 * weights N(0, 0.4^2), LayerNorm gains 1 + N(0, 0.2^2), everything else N(0, 0.2^2). */
static void randomize(vit_model *m, uint64_t seed)
{
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int k = 0; k < VIT_NUM_PARAMS; k++) {
        int gain = k == VIT_LN1_G || k == VIT_LN2_G || k == VIT_LNF_G;
        int weight = k == VIT_PATCH_W || k == VIT_QKV_W || k == VIT_PROJ_W || k == VIT_FC1_W ||
                     k == VIT_FC2_W || k == VIT_HEAD_W;
        for (int64_t i = 0; i < m->size[k]; i++) {
            double z = tf_rng_normal(&rng);
            m->p[k][i] = (float)(gain ? 1.0 + 0.2 * z : (weight ? 0.4 : 0.2) * z);
        }
    }
}

static double loss_at(vit_model *m, vit_acts *a, const float *images, const int *labels, int B)
{
    float loss = 0.0f;
    if (vit_forward(m, a, images, labels, B, &loss) != TF_OK) TF_DIE("%s", tf_error_get());
    return loss;
}

/* Fourth-order central difference of the loss in parameter index i:
 * (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / (12 h). */
static double numeric_grad(vit_model *m, vit_acts *a, const float *images, const int *labels, int B,
                           int64_t i)
{
    float saved = m->params[i];
    double h = 1e-2 * fmax(1.0, fabs(saved));
    double f[4];
    const double offsets[4] = {h, -h, 2 * h, -2 * h};
    for (int k = 0; k < 4; k++) {
        m->params[i] = (float)(saved + offsets[k]);
        f[k] = loss_at(m, a, images, labels, B);
    }
    m->params[i] = saved;
    return (8.0 * (f[0] - f[1]) - (f[2] - f[3])) / (12.0 * h);
}

static void check_gradients(double eps)
{
    vit_config cfg = tiny_config(eps);
    enum { B = 3 };
    vit_model *m = NULL;
    vit_acts *a = NULL;
    TU_CHECK(vit_model_create(&cfg, &m) == TF_OK, "model_create: %s", tf_error_get());
    TU_CHECK(vit_acts_create(&cfg, B, &a) == TF_OK, "acts_create: %s", tf_error_get());
    randomize(m, 11);

    int64_t pixels = (int64_t)B * cfg.channels * cfg.image_size * cfg.image_size;
    float *images = malloc((size_t)pixels * sizeof(float));
    float *grads = malloc((size_t)m->num_params * sizeof(float));
    tf_rng rng;
    tf_rng_seed(&rng, 5);
    for (int64_t i = 0; i < pixels; i++) images[i] = (float)tf_rng_normal(&rng);
    int labels[B] = {2, 0, 1};

    loss_at(m, a, images, labels, B);
    TU_CHECK(vit_backward(m, a, labels, grads) == TF_OK, "backward: %s", tf_error_get());

    /* Up to 16 entries of each tensor; pass if |analytic - numeric| <= 1e-4 + 1e-2 |numeric|.
     * The atol covers float rounding in the loss, about 1e-7 / h. */
    printf("LayerNorm eps %g\n", eps);
    for (int k = 0; k < VIT_NUM_PARAMS; k++) {
        int64_t off = m->p[k] - m->params, n = m->size[k];
        int samples = n < 16 ? (int)n : 16;
        double worst = 0.0, worst_rel = 0.0;
        int bad = 0;
        for (int s = 0; s < samples; s++) {
            int64_t i = off + (n <= 16 ? s : tf_rng_below(&rng, n));
            double num = numeric_grad(m, a, images, labels, B, i);
            double err = fabs(grads[i] - num);
            if (err > worst) worst = err;
            double rel = err / fmax(fabs(num), 1e-3);
            if (rel > worst_rel) worst_rel = rel;
            if (err > 1e-4 + 1e-2 * fabs(num)) {
                if (bad++ < 3)
                    fprintf(stderr, "  %s[%lld]: analytic %.6g, numeric %.6g\n", vit_param_name(k),
                            (long long)(i - off), grads[i], num);
            }
        }
        printf("  %-7s max abs error %.2e, max rel error %.2e over %d entries\n", vit_param_name(k),
               worst, worst_rel, samples);
        TU_CHECK(bad == 0, "gradient of %s (eps %g): %d of %d entries differ", vit_param_name(k),
                 eps, bad, samples);
    }
    free(images);
    free(grads);
    vit_acts_free(&a);
    vit_model_free(&m);
}

static void check_guards(void)
{
    vit_config good = tiny_config(1e-6), c;
    vit_model *m = NULL;
    c = good, c.patch = 3;
    TU_CHECK(vit_model_create(&c, &m) == TF_ERR_ARG && !m, "patch not dividing image accepted");
    c = good, c.heads = 3;
    TU_CHECK(vit_config_validate(&c) == TF_ERR_ARG, "d not a multiple of heads accepted");
    c = good, c.layers = 0;
    TU_CHECK(vit_config_validate(&c) == TF_ERR_ARG, "zero layers accepted");
    c = good, c.ln_eps = 0.0;
    TU_CHECK(vit_config_validate(&c) == TF_ERR_ARG, "zero LayerNorm eps accepted");
    c = good, c.ln_eps = NAN;
    TU_CHECK(vit_config_validate(&c) == TF_ERR_ARG, "NaN LayerNorm eps accepted");
    TU_CHECK(vit_config_validate(&good) == TF_OK, "valid config rejected: %s", tf_error_get());

    /* Sizes and names of the parameter table. */
    TU_CHECK(vit_model_create(&good, &m) == TF_OK, "model_create: %s", tf_error_get());
    int64_t total = 0;
    for (int k = 0; k < VIT_NUM_PARAMS; k++) total += m->size[k];
    TU_CHECK(total == m->num_params, "sizes sum to %lld, num_params %lld", (long long)total,
             (long long)m->num_params);
    /* patch_w 8x32, patch_b 8, cls 8, pos 5x8, 2 layers of (2*8 + 24*8 + 24 + 64 + 8 + 2*8
     * + 128 + 16 + 128 + 8), lnf 2*8, head 3x8 + 3. */
    TU_CHECK(m->num_params == 256 + 8 + 8 + 40 + 2 * 600 + 16 + 27, "num_params %lld",
             (long long)m->num_params);
    int64_t dims[4];
    TU_CHECK(vit_param_shape(&good, VIT_QKV_W, dims) == 3 && dims[0] == 2 && dims[1] == 24 &&
                 dims[2] == 8,
             "qkv_w shape");
    TU_CHECK(vit_param_name(VIT_FC1_W)[0] == 'f', "name of fc1_w is %s", vit_param_name(VIT_FC1_W));

    /* Batch and label guards. */
    vit_acts *a = NULL;
    TU_CHECK(vit_acts_create(&good, 0, &a) == TF_ERR_ARG, "max_batch 0 accepted");
    TU_CHECK(vit_acts_create(&good, 1 << 29, &a) == TF_ERR_ARG && !a,
             "max_batch 2^29 (2^31 token rows) accepted");
    TU_CHECK(vit_acts_create(&good, 2, &a) == TF_OK, "acts_create: %s", tf_error_get());
    float images[2 * 2 * 64] = {0};
    int labels[2] = {0, 3};
    float loss = 0.0f, grads[2048];
    TU_CHECK(vit_backward(m, a, labels, grads) == TF_ERR_ARG, "backward before forward accepted");
    TU_CHECK(vit_forward(m, a, images, NULL, 3, NULL) == TF_ERR_ARG, "batch above max accepted");
    TU_CHECK(vit_forward(m, a, images, labels, 2, &loss) == TF_ERR_ARG, "label 3 of 3 accepted");
    labels[1] = 1;
    TU_CHECK(vit_forward(m, a, images, labels, 2, &loss) == TF_OK, "forward: %s", tf_error_get());
    TU_CHECK(fabsf(loss - logf(3.0f)) < 1e-6f, "zero model loss %g, expected ln 3", loss);
    vit_config wider = good;
    wider.d = 16;
    vit_acts *wide = NULL;
    TU_CHECK(vit_acts_create(&wider, 2, &wide) == TF_OK, "acts_create: %s", tf_error_get());
    TU_CHECK(vit_forward(m, wide, images, labels, 2, &loss) == TF_ERR_ARG,
             "forward with activations of another width accepted");
    vit_model *wide_model = NULL;
    TU_CHECK(vit_model_create(&wider, &wide_model) == TF_OK, "model_create: %s", tf_error_get());
    TU_CHECK(vit_forward(wide_model, wide, images, labels, 2, &loss) == TF_OK, "forward: %s",
             tf_error_get());
    TU_CHECK(vit_backward(m, wide, labels, grads) == TF_ERR_ARG,
             "backward with activations of another width accepted");
    vit_model_free(&wide_model);
    vit_acts_free(&wide);
    vit_acts_free(&a);
    vit_acts_free(&a);
    TU_CHECK(a == NULL, "acts_free did not null the pointer");
    vit_model_free(&m);
    vit_model_free(&m);
    TU_CHECK(m == NULL, "model_free did not null the pointer");
}

/* Model copy, forward without labels or without a loss pointer, and logits that do not
 * depend on the other images of the batch or on the activations' max_batch. */
static void check_api(void)
{
    vit_config cfg = tiny_config(1e-5);
    vit_model *m = NULL, *copy = NULL;
    vit_acts *big = NULL, *small = NULL;
    if (vit_model_create(&cfg, &m) != TF_OK || vit_model_create(&cfg, &copy) != TF_OK ||
        vit_acts_create(&cfg, 5, &big) != TF_OK || vit_acts_create(&cfg, 2, &small) != TF_OK)
        TF_DIE("setup failed: %s", tf_error_get());
    randomize(m, 21);
    vit_model_copy(copy, m);
    TU_CHECK(memcmp(copy->params, m->params, (size_t)m->num_params * sizeof(float)) == 0,
             "vit_model_copy: parameters differ");

    tf_rng rng;
    tf_rng_seed(&rng, 22);
    float images[5 * 2 * 64];
    for (int i = 0; i < 5 * 2 * 64; i++) images[i] = (float)tf_rng_normal(&rng);
    int labels[5] = {0, 1, 2, 1, 0};
    float loss = -1.0f;
    TU_CHECK(vit_forward(copy, big, images, NULL, 5, &loss) == TF_OK, "forward: %s",
             tf_error_get());
    TU_CHECK(loss == -1.0f, "forward without labels wrote loss %g", loss);
    TU_CHECK(vit_forward(copy, big, images, labels, 5, NULL) == TF_OK,
             "forward with labels and no loss pointer: %s", tf_error_get());
    float logits5[15];
    memcpy(logits5, big->logits, sizeof logits5);
    int correct5 = vit_count_correct(copy, big, labels);
    TU_CHECK(vit_forward(m, small, images, labels, 2, &loss) == TF_OK, "forward: %s",
             tf_error_get());
    tu_close_f32("logits of images 0-1 in batches of 2 and 5", small->logits, logits5, 6, 1e-5,
                 1e-6);
    int correct2 = vit_count_correct(m, small, labels);
    int expect2 = 0;
    for (int b = 0; b < 2; b++) {
        int best = 0;
        for (int k = 1; k < 3; k++)
            if (logits5[b * 3 + k] > logits5[b * 3 + best]) best = k;
        expect2 += best == labels[b];
    }
    TU_CHECK(correct2 == expect2, "count_correct %d on 2 images, expected %d", correct2, expect2);
    TU_CHECK(correct5 >= correct2 && correct5 <= correct2 + 3, "count_correct %d on 5 images",
             correct5);

    /* A NaN pixel must surface as a NaN loss, not be absorbed by the kernels' clamps. */
    images[5] = NAN;
    TU_CHECK(vit_forward(m, small, images, labels, 2, &loss) == TF_OK, "forward: %s",
             tf_error_get());
    TU_CHECK(isnan(loss), "loss %g with a NaN pixel, expected NaN", loss);
    vit_acts_free(&big);
    vit_acts_free(&small);
    vit_model_free(&m);
    vit_model_free(&copy);
}

/* The GELU kernel's erf approximation against libm's erf in double, and its derivative
 * against Phi(x) + x phi(x), on a grid over [-12, 12] that includes 0. */
static void check_gelu(void)
{
    enum { N = 24001 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    float *dydx = malloc(N * sizeof(float)), *want_y = malloc(N * sizeof(float));
    float *want_dydx = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++) {
        x[i] = (float)(-12.0 + 1e-3 * i);
        double xi = x[i], cdf = 0.5 * (1.0 + erf(xi / sqrt(2.0)));
        want_y[i] = (float)(xi * cdf);
        want_dydx[i] = (float)(cdf + xi * exp(-0.5 * xi * xi) / sqrt(2.0 * 3.14159265358979323846));
    }
    vit_gelu_forward(y, dydx, x, N);
    /* erf's absolute error 1.5e-7 scales with |x| in GELU; float rounding adds about 1e-7
     * relative. */
    tu_close_f32("gelu", y, want_y, N, 2e-6, 1e-6);
    tu_close_f32("gelu derivative", dydx, want_dydx, N, 2e-6, 1e-6);
    double worst = 0.0;
    for (int i = 0; i < N; i++) worst = fmax(worst, fabs((double)y[i] - want_y[i]));
    printf("gelu: max abs error %.2e over [-12, 12]\n", worst);
    free(x), free(y), free(dydx), free(want_y), free(want_dydx);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    check_guards();
    check_gelu();
    check_api();
    check_gradients(1e-12);
    check_gradients(1e-6);
    check_gradients(1e-5);
    int rc = tu_finish("test_vit_grad");
    MPI_Finalize();
    return rc;
}
