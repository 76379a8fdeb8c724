/* Training sanity check on a learnable synthetic task: the class is the position of the one
 * bright patch among 9, under Gaussian noise. A small ViT trained with AdamW must bring the
 * loss well below ln 9 and classify held-out images almost perfectly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "testutil.h"
#include "tfuse/vit.h"

enum { SIDE = 12, PATCH = 4, CLASSES = 9, BATCH = 32, STEPS = 300, HELD_OUT = 256 };

/* images (n, 1, SIDE, SIDE): noise N(0, 0.5^2), plus 1.5 on the pixels of patch labels[i]. */
static void make_batch(tf_rng *rng, float *images, int *labels, int n)
{
    int per_row = SIDE / PATCH;
    for (int i = 0; i < n; i++) {
        int label = (int)tf_rng_below(rng, CLASSES);
        labels[i] = label;
        float *img = images + (int64_t)i * SIDE * SIDE;
        for (int p = 0; p < SIDE * SIDE; p++) img[p] = (float)(0.5 * tf_rng_normal(rng));
        int y0 = (label / per_row) * PATCH, x0 = (label % per_row) * PATCH;
        for (int y = 0; y < PATCH; y++)
            for (int x = 0; x < PATCH; x++) img[(y0 + y) * SIDE + x0 + x] += 1.5f;
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    vit_config cfg = {.image_size = SIDE,
                      .channels = 1,
                      .patch = PATCH,
                      .d = 32,
                      .layers = 2,
                      .heads = 4,
                      .mlp = 64,
                      .classes = CLASSES,
                      .ln_eps = 1e-6};
    vit_model *model = NULL;
    vit_acts *acts = NULL;
    vit_adamw *opt = NULL;
    if (vit_model_create(&cfg, &model) != TF_OK ||
        vit_acts_create(&cfg, HELD_OUT, &acts) != TF_OK ||
        vit_adamw_create(model, 0.9, 0.999, 1e-8, 0.05, &opt) != TF_OK)
        TF_DIE("setup failed: %s", tf_error_get());
    vit_model_init(model, 1);

    tf_rng rng;
    tf_rng_seed(&rng, 2);
    float *images = malloc((size_t)HELD_OUT * SIDE * SIDE * sizeof(float));
    float *grads = malloc((size_t)model->num_params * sizeof(float));
    int labels[HELD_OUT];
    float loss = 0.0f, first_loss = 0.0f, last_loss = 0.0f;

    /* Train on fresh batches with a warmup-plus-cosine schedule. */
    for (int step = 0; step < STEPS; step++) {
        make_batch(&rng, images, labels, BATCH);
        if (vit_forward(model, acts, images, labels, BATCH, &loss) != TF_OK ||
            vit_backward(model, acts, labels, grads) != TF_OK)
            TF_DIE("training step %d failed: %s", step, tf_error_get());
        vit_adamw_step(opt, model, grads, tf_cosine_lr(step, 20, STEPS, 3e-3, 1e-4));
        if (step == 0) first_loss = loss;
        if (step % 50 == 0 || step == STEPS - 1) printf("step %3d loss %.4f\n", step, loss);
    }

    /* Evaluate on held-out images. */
    make_batch(&rng, images, labels, HELD_OUT);
    TU_CHECK(vit_forward(model, acts, images, labels, HELD_OUT, &last_loss) == TF_OK, "forward: %s",
             tf_error_get());
    int correct = vit_count_correct(model, acts, labels);
    double accuracy = (double)correct / HELD_OUT;
    printf("held-out loss %.4f (ln %d = %.4f, first step %.4f), accuracy %.3f\n", last_loss,
           CLASSES, log((double)CLASSES), first_loss, accuracy);
    TU_CHECK(fabs(first_loss - log((double)CLASSES)) < 0.2, "initial loss %.4f, expected near %.4f",
             first_loss, log((double)CLASSES));
    TU_CHECK(last_loss < 0.2 * log((double)CLASSES), "held-out loss %.4f not below %.4f", last_loss,
             0.2 * log((double)CLASSES));
    TU_CHECK(accuracy >= 0.95, "held-out accuracy %.3f below 0.95", accuracy);

    free(images);
    free(grads);
    vit_adamw_free(&opt);
    vit_acts_free(&acts);
    vit_model_free(&model);
    int rc = tu_finish("test_vit_train");
    MPI_Finalize();
    return rc;
}
