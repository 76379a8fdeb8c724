/* Two forward and backward passes over the same inputs give bitwise equal logits, loss
 * and gradients, on the same activations and on freshly allocated ones. Run by CTest with
 * one and with two OpenBLAS threads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tfuse/vit.h"

enum { B = 32 };

static void run_pass(const vit_model *m, vit_acts *a, const float *images, const int *labels,
                     float *loss, float *logits, float *grads)
{
    TU_CHECK(vit_forward(m, a, images, labels, B, loss) == TF_OK, "forward: %s", tf_error_get());
    TU_CHECK(vit_backward(m, a, labels, grads) == TF_OK, "backward: %s", tf_error_get());
    memcpy(logits, a->logits, (size_t)B * m->cfg.classes * sizeof(float));
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    vit_config cfg = {.image_size = 28,
                      .channels = 1,
                      .patch = 7,
                      .d = 64,
                      .layers = 4,
                      .heads = 4,
                      .mlp = 256,
                      .classes = 10,
                      .ln_eps = 1e-12};
    vit_model *m = NULL;
    vit_acts *a = NULL, *fresh = NULL;
    if (vit_model_create(&cfg, &m) != TF_OK || vit_acts_create(&cfg, B, &a) != TF_OK ||
        vit_acts_create(&cfg, B, &fresh) != TF_OK)
        TF_DIE("setup failed: %s", tf_error_get());
    vit_model_init(m, 42);

    tf_rng rng;
    tf_rng_seed(&rng, 7);
    int64_t pixels = (int64_t)B * 28 * 28;
    float *images = malloc((size_t)pixels * sizeof(float));
    for (int64_t i = 0; i < pixels; i++) images[i] = (float)tf_rng_normal(&rng);
    int labels[B];
    for (int b = 0; b < B; b++) labels[b] = (int)tf_rng_below(&rng, 10);

    size_t gbytes = (size_t)m->num_params * sizeof(float);
    float *g[3], logits[3][B * 10], loss[3];
    for (int k = 0; k < 3; k++) g[k] = malloc(gbytes);
    run_pass(m, a, images, labels, &loss[0], logits[0], g[0]);
    run_pass(m, a, images, labels, &loss[1], logits[1], g[1]);
    run_pass(m, fresh, images, labels, &loss[2], logits[2], g[2]);

    for (int k = 1; k < 3; k++) {
        const char *which = k == 1 ? "repeat" : "fresh activations";
        TU_CHECK(memcmp(&loss[0], &loss[k], sizeof(float)) == 0, "%s: loss %.9g vs %.9g", which,
                 loss[0], loss[k]);
        TU_CHECK(memcmp(logits[0], logits[k], sizeof logits[0]) == 0, "%s: logits differ", which);
        int64_t first = -1;
        for (int64_t i = 0; i < m->num_params && first < 0; i++)
            if (memcmp(&g[0][i], &g[k][i], sizeof(float)) != 0) first = i;
        TU_CHECK(first < 0, "%s: gradients differ first at index %lld", which, (long long)first);
    }

    /* The gradient is not trivially zero, so equality means something. */
    double norm = 0.0;
    for (int64_t i = 0; i < m->num_params; i++) norm += (double)g[0][i] * g[0][i];
    printf("loss %.6f, squared gradient norm %.6g\n", loss[0], norm);
    TU_CHECK(norm > 1e-8, "squared gradient norm %g is zero", norm);

    for (int k = 0; k < 3; k++) free(g[k]);
    free(images);
    vit_acts_free(&a);
    vit_acts_free(&fresh);
    vit_model_free(&m);
    int rc = tu_finish("test_vit_determinism");
    MPI_Finalize();
    return rc;
}
