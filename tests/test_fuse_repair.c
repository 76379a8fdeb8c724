/* Statistics repair: after fuse_repair, every repaired neuron of the fused model has the
 * mean and standard deviation that the repair targets (weighted averages over the aligned
 * parents), recomputed here independently from plain forward passes; and a model averaged
 * with itself is left unchanged. */
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

static vit_model *random_model(uint64_t seed)
{
    vit_model *m = NULL;
    vit_model_create(&tiny, &m);
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int64_t k = 0; k < m->num_params; k++) m->params[k] = (float)(0.3 * tf_rng_normal(&rng));
    for (int64_t k = 0; k < m->size[VIT_LN1_G]; k++) m->p[VIT_LN1_G][k] += 1.0f;
    for (int64_t k = 0; k < m->size[VIT_LN2_G]; k++) m->p[VIT_LN2_G][k] += 1.0f;
    return m;
}

/* Mean and population standard deviation of column j of x (rows, stride), in double. */
static void column_moments(const float *x, int64_t rows, int stride, int j, double *mean,
                           double *sd)
{
    double s = 0, q = 0;
    for (int64_t r = 0; r < rows; r++) {
        s += x[r * stride + j];
        q += (double)x[r * stride + j] * x[r * stride + j];
    }
    *mean = s / rows;
    *sd = sqrt(fmax(q / rows - *mean * *mean, 0));
}

/* Moments of fc1 pre-activations and of Q at every layer, on all images at once. */
static void model_moments(const vit_model *m, const float *x, int n, double *mu, double *sd)
{
    vit_acts *acts = NULL;
    vit_acts_create(&m->cfg, n, &acts);
    vit_forward(m, acts, x, NULL, n, NULL);
    const int64_t rows = (int64_t)n * vit_tokens(&m->cfg);
    const int d = m->cfg.d, f = m->cfg.mlp;
    int k = 0;
    for (int l = 0; l < m->cfg.layers; l++) {
        for (int j = 0; j < f; j++, k++)
            column_moments(acts->fc1 + l * rows * f, rows, f, j, &mu[k], &sd[k]);
        for (int j = 0; j < d; j++, k++)
            column_moments(acts->qkv + l * rows * 3 * d, rows, 3 * d, j, &mu[k], &sd[k]);
    }
    vit_acts_free(&acts);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const int n = 40, len = tiny.image_size * tiny.image_size;
    float *x = malloc((size_t)n * len * sizeof(float));
    tf_rng rng;
    tf_rng_seed(&rng, 3);
    for (int k = 0; k < n * len; k++) x[k] = (float)tf_rng_normal(&rng);

    /* Two unrelated models averaged 30/70, then repaired. */
    vit_model *parents[2] = {random_model(1), random_model(2)};
    double weights[2] = {0.3, 0.7};
    vit_model *fused = NULL;
    vit_model_create(&tiny, &fused);
    fuse_average(parents, weights, 2, fused);
    tf_status st = fuse_repair(MPI_COMM_WORLD, fused, parents, weights, 2, x, n, FUSE_REPAIR_ALL);
    TU_CHECK(st == TF_OK, "fuse_repair failed: %s", tf_error_get());

    const int count = tiny.layers * (tiny.mlp + tiny.d);
    double mu[2][256], sd[2][256], mu_f[256], sd_f[256], mu_t[256], sd_t[256];
    model_moments(parents[0], x, n, mu[0], sd[0]);
    model_moments(parents[1], x, n, mu[1], sd[1]);
    model_moments(fused, x, n, mu_f, sd_f);
    for (int k = 0; k < count; k++) {
        mu_t[k] = weights[0] * mu[0][k] + weights[1] * mu[1][k];
        sd_t[k] = weights[0] * sd[0][k] + weights[1] * sd[1][k];
    }
    tu_close_f64("repaired means", mu_f, mu_t, count, 1e-3, 1e-4);
    tu_close_f64("repaired standard deviations", sd_f, sd_t, count, 1e-3, 1e-4);

    /* Repair must have changed something here: the plain average has other moments. */
    vit_model *plain = NULL;
    vit_model_create(&tiny, &plain);
    fuse_average(parents, weights, 2, plain);
    double mu_p[256], sd_p[256], gap = 0;
    model_moments(plain, x, n, mu_p, sd_p);
    for (int k = 0; k < count; k++) gap = fmax(gap, fabs(sd_p[k] - sd_t[k]));
    TU_CHECK(gap > 1e-2, "the plain average should miss the target deviations (gap %.3g)", gap);

    /* A model averaged with itself is unchanged by repair. */
    vit_model *same[2] = {parents[0], parents[0]};
    vit_model *self = NULL;
    vit_model_create(&tiny, &self);
    fuse_average(same, weights, 2, self);
    fuse_repair(MPI_COMM_WORLD, self, same, weights, 2, x, n, FUSE_REPAIR_STREAM);
    tu_close_f32("self-average after repair", self->params, parents[0]->params,
                 self->num_params, 1e-5, 1e-6);

    vit_model_free(&self);
    vit_model_free(&plain);
    vit_model_free(&fused);
    vit_model_free(&parents[0]);
    vit_model_free(&parents[1]);
    free(x);
    int rc = tu_finish("test_fuse_repair");
    MPI_Finalize();
    return rc;
}
