/* eval_ensemble against a direct computation: each model scores every image on its own, in
 * double precision, and the weighted average of the probabilities decides. Run at 2 ranks
 * so that the shards and the reduction are part of the test. Also: all weight on one model
 * gives that model's eval_accuracy, and an ensemble of copies of one model is that model. */
#include "testutil.h"
#include "tfuse/data.h"
#include "tfuse/train.h"
#include "tfuse/vit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { COUNT = 37, SIDE = 8, CLASSES = 3, N_MODELS = 3 };

static const vit_config narrow = {.image_size = SIDE,
                                  .channels = 1,
                                  .patch = 4,
                                  .d = 8,
                                  .layers = 1,
                                  .heads = 2,
                                  .mlp = 16,
                                  .classes = CLASSES,
                                  .ln_eps = 1e-6};
static const vit_config wide = {.image_size = SIDE,
                                .channels = 1,
                                .patch = 4,
                                .d = 12,
                                .layers = 1,
                                .heads = 2,
                                .mlp = 24,
                                .classes = CLASSES,
                                .ln_eps = 1e-6};

/* Accuracy and mean loss of the weighted ensemble, one image at a time. */
static void direct(vit_model *const *models, const double *w, int n, const tf_image_set *set,
                   double *accuracy, double *loss)
{
    vit_acts *acts[N_MODELS] = {NULL};
    for (int t = 0; t < n; t++) vit_acts_create(&models[t]->cfg, 1, &acts[t]);
    float x[SIDE * SIDE];
    int y = 0, correct = 0;
    double total = 0;
    for (int64_t i = 0; i < set->count; i++) {
        tf_images_to_float(set, &i, 1, x, &y);
        double q[CLASSES] = {0};
        for (int t = 0; t < n; t++) {
            vit_forward(models[t], acts[t], x, NULL, 1, NULL);
            for (int c = 0; c < CLASSES; c++) q[c] += w[t] * acts[t]->probs[c];
        }
        int best = 0;
        for (int c = 1; c < CLASSES; c++)
            if (q[c] > q[best]) best = c;
        correct += best == y;
        total -= log(q[y]);
    }
    for (int t = 0; t < n; t++) vit_acts_free(&acts[t]);
    *accuracy = (double)correct / (double)set->count;
    *loss = total / (double)set->count;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tf_image_set set = {.count = COUNT, .rows = SIDE, .cols = SIDE};
    set.pixels = malloc(COUNT * SIDE * SIDE);
    set.labels = malloc(COUNT);
    tf_rng rng;
    tf_rng_seed(&rng, 11);
    for (int k = 0; k < COUNT * SIDE * SIDE; k++)
        set.pixels[k] = (uint8_t)(tf_rng_next(&rng) & 255);
    for (int k = 0; k < COUNT; k++) set.labels[k] = (uint8_t)(tf_rng_next(&rng) % CLASSES);

    /* Large initial weights so that the models disagree and are confident. */
    vit_model *models[N_MODELS] = {NULL};
    for (int t = 0; t < N_MODELS; t++) {
        vit_model_create(t == 1 ? &wide : &narrow, &models[t]);
        vit_model_init(models[t], 100 + t);
        for (int64_t k = 0; k < models[t]->num_params; k++) models[t]->params[k] *= 20;
    }

    const double w[N_MODELS] = {0.2, 0.5, 0.3};
    double acc = -1, loss = -1, want_acc = -2, want_loss = -2;
    TU_CHECK(eval_ensemble(MPI_COMM_WORLD, models, w, N_MODELS, &set, 0, &acc, &loss) == TF_OK,
             "eval_ensemble failed: %s", tf_error_get());
    direct(models, w, N_MODELS, &set, &want_acc, &want_loss);
    TU_CHECK(acc == want_acc, "ensemble accuracy %.6f, direct %.6f", acc, want_acc);
    TU_CHECK(fabs(loss - want_loss) <= 1e-5 * fabs(want_loss), "ensemble loss %.9f, direct %.9f",
             loss, want_loss);

    /* The members disagree, so the ensemble is not simply one of them. */
    double single[N_MODELS];
    int differs = 0;
    for (int t = 0; t < N_MODELS; t++) {
        eval_accuracy(MPI_COMM_WORLD, models[t], &set, 0, &single[t], NULL);
        differs += single[t] != acc;
    }
    TU_CHECK(differs > 0, "test data too easy: every model scores the ensemble's accuracy");

    /* A limit scores the first images only. */
    direct(models, w, N_MODELS,
           &(tf_image_set){
               .count = 20, .rows = SIDE, .cols = SIDE, .pixels = set.pixels, .labels = set.labels},
           &want_acc, &want_loss);
    TU_CHECK(eval_ensemble(MPI_COMM_WORLD, models, w, N_MODELS, &set, 20, &acc, &loss) == TF_OK &&
                 acc == want_acc && fabs(loss - want_loss) <= 1e-5 * fabs(want_loss),
             "limit 20: accuracy %.6f loss %.9f, direct %.6f %.9f", acc, loss, want_acc, want_loss);

    /* All weight on model 1 gives model 1, and copies of model 2 give model 2. */
    const double only1[N_MODELS] = {0, 1, 0};
    double acc1 = -1, loss1 = -1, loss_single = -2;
    eval_accuracy(MPI_COMM_WORLD, models[1], &set, 0, &single[1], &loss_single);
    TU_CHECK(eval_ensemble(MPI_COMM_WORLD, models, only1, N_MODELS, &set, 0, &acc1, &loss1) ==
                     TF_OK &&
                 acc1 == single[1] && fabs(loss1 - loss_single) <= 1e-5 * fabs(loss_single),
             "weights 0 1 0: accuracy %.6f loss %.9f; model 1 alone %.6f %.9f", acc1, loss1,
             single[1], loss_single);
    vit_model *copies[2] = {models[2], models[2]};
    const double half[2] = {0.5, 0.5};
    TU_CHECK(eval_ensemble(MPI_COMM_WORLD, copies, half, 2, &set, 0, &acc, &loss) == TF_OK &&
                 acc == single[2],
             "two copies of model 2: accuracy %.6f, model 2 alone %.6f", acc, single[2]);

    /* A model with another class count is rejected, and the message names it. */
    vit_config other = narrow;
    other.classes = 5;
    vit_model *odd = NULL;
    vit_model_create(&other, &odd);
    vit_model_init(odd, 7);
    vit_model *mixed[2] = {models[0], odd};
    tf_status st = eval_ensemble(MPI_COMM_WORLD, mixed, half, 2, &set, 0, &acc, &loss);
    TU_CHECK(st == TF_ERR_ARG && strstr(tf_error_get(), "model 1") != NULL,
             "a model with 5 classes must be rejected with a message naming it: %s",
             tf_error_get());

    vit_model_free(&odd);
    for (int t = 0; t < N_MODELS; t++) vit_model_free(&models[t]);
    free(set.pixels);
    free(set.labels);
    int rc = tu_finish("test_eval_ensemble");
    MPI_Finalize();
    return rc;
}
