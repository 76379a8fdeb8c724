/* Compares tfuse's ViT with an independent PyTorch implementation (tests/vit_torch_ref.py,
 * float64): logits, loss, the gradient of every parameter tensor and the activations that
 * fusion reads, on three configurations. Usage: test_vit_torch PYTHON SCRIPT. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil.h"
#include "tfuse/vit.h"

typedef struct {
    char name[33];
    int64_t count;
    double *values;
} record;

typedef struct {
    const char *label;
    vit_config cfg;
    int batch;
    uint64_t seed;
} test_case;

/* Parameters: vit_model_init's weights times 10 (std 0.2), and N(0, 0.1^2) added to biases,
 * gains, class token and position embeddings, so that no term of the forward pass is
 * trivially zero or linear. */
static void make_params(vit_model *m, uint64_t seed)
{
    vit_model_init(m, seed);
    tf_rng rng;
    tf_rng_seed(&rng, seed + 1);
    for (int k = 0; k < VIT_NUM_PARAMS; k++) {
        int matrix = k == VIT_PATCH_W || k == VIT_QKV_W || k == VIT_PROJ_W || k == VIT_FC1_W ||
                     k == VIT_FC2_W || k == VIT_HEAD_W;
        for (int64_t i = 0; i < m->size[k]; i++) {
            if (matrix)
                m->p[k][i] *= 10.0f;
            else
                m->p[k][i] += (float)(0.1 * tf_rng_normal(&rng));
        }
    }
}

static int write_input(const char *path, const vit_model *m, const float *images, const int *labels,
                       int batch)
{
    const vit_config *c = &m->cfg;
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int32_t head[9] = {c->image_size, c->channels, c->patch,   c->d, c->layers,
                       c->heads,      c->mlp,      c->classes, batch};
    int64_t pixels = (int64_t)batch * c->channels * c->image_size * c->image_size;
    int ok = fwrite(head, sizeof head, 1, f) == 1 && fwrite(&c->ln_eps, 8, 1, f) == 1 &&
             fwrite(&m->num_params, 8, 1, f) == 1 &&
             fwrite(m->params, 4, (size_t)m->num_params, f) == (size_t)m->num_params &&
             fwrite(images, 4, (size_t)pixels, f) == (size_t)pixels &&
             fwrite(labels, 4, (size_t)batch, f) == (size_t)batch;
    return fclose(f) == 0 && ok;
}

/* Reads all records of the reference output; returns their number or -1. */
static int read_output(const char *path, record *recs, int max)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    int n = 0;
    char name[32];
    while (n < max && fread(name, 32, 1, f) == 1) {
        record *r = &recs[n];
        memcpy(r->name, name, 32);
        r->name[32] = '\0';
        if (fread(&r->count, 8, 1, f) != 1 || r->count < 0 || r->count > (1 << 28)) break;
        r->values = malloc((size_t)r->count * sizeof(double));
        if (fread(r->values, 8, (size_t)r->count, f) != (size_t)r->count) break;
        n++;
    }
    fclose(f);
    return n;
}

static const record *find(const record *recs, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(recs[i].name, name) == 0) return &recs[i];
    return NULL;
}

/* Compares got (n) with the reference record `name` at rtol 1e-4 and an atol of 1e-5 times
 * the largest reference magnitude, since float32 sums of mixed-sign terms lose relative
 * accuracy on entries much smaller than the tensor's scale. */
static double worst_ratio; /* largest error / tolerance of the current case */

static void compare(const char *label, const char *name, const float *got, int64_t n,
                    const record *recs, int nrec)
{
    const record *r = find(recs, nrec, name);
    TU_CHECK(r != NULL, "%s: reference has no record %s", label, name);
    if (!r) return;
    TU_CHECK(r->count == n, "%s: %s has %lld values, reference %lld", label, name, (long long)n,
             (long long)r->count);
    if (r->count != n) return;
    float *want = malloc((size_t)n * sizeof(float));
    double scale = 0.0;
    for (int64_t i = 0; i < n; i++) {
        want[i] = (float)r->values[i];
        if (fabs(r->values[i]) > scale) scale = fabs(r->values[i]);
    }
    char what[128];
    snprintf(what, sizeof what, "%s %s", label, name);
    tu_close_f32(what, got, want, n, 1e-4, 1e-5 * scale);
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - r->values[i]);
        double ratio = err / (1e-5 * scale + 1e-4 * fabs(r->values[i]) + 1e-300);
        if (ratio > worst_ratio) worst_ratio = ratio;
    }
    free(want);
}

static void run_case(const test_case *tc, const char *python, const char *script)
{
    const vit_config *c = &tc->cfg;
    int B = tc->batch;
    vit_model *m = NULL;
    vit_acts *a = NULL;
    if (vit_model_create(c, &m) != TF_OK || vit_acts_create(c, B, &a) != TF_OK)
        TF_DIE("%s: setup failed: %s", tc->label, tf_error_get());
    make_params(m, tc->seed);
    tf_rng rng;
    tf_rng_seed(&rng, tc->seed + 2);
    int64_t pixels = (int64_t)B * c->channels * c->image_size * c->image_size;
    float *images = malloc((size_t)pixels * sizeof(float));
    for (int64_t i = 0; i < pixels; i++) images[i] = (float)tf_rng_normal(&rng);
    int *labels = malloc((size_t)B * sizeof(int));
    for (int b = 0; b < B; b++) labels[b] = (int)tf_rng_below(&rng, c->classes);
    float loss = 0.0f, *grads = malloc((size_t)m->num_params * sizeof(float));
    TU_CHECK(vit_forward(m, a, images, labels, B, &loss) == TF_OK, "forward: %s", tf_error_get());
    TU_CHECK(vit_backward(m, a, labels, grads) == TF_OK, "backward: %s", tf_error_get());

    /* Run the PyTorch reference on the same parameters and inputs. */
    char in[256], out[256], cmd[1024];
    snprintf(in, sizeof in, "vit_torch_%s.in", tc->label);
    snprintf(out, sizeof out, "vit_torch_%s.out", tc->label);
    remove(out);
    TU_CHECK(write_input(in, m, images, labels, B), "%s: cannot write %s", tc->label, in);
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' '%s'", python, script, in, out);
    int status = system(cmd);
    int rc = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    TU_CHECK(rc == 0,
             "%s: the PyTorch reference failed (exit status %d) running: %s. It needs NumPy and "
             "torch importable by that interpreter.",
             tc->label, rc, cmd);
    record recs[64];
    int nrec = rc == 0 ? read_output(out, recs, 64) : -1;
    TU_CHECK(nrec == 33, "%s: read %d records from %s, expected 33", tc->label, nrec, out);

    if (nrec > 0) {
        worst_ratio = 0.0;
        int64_t L = c->layers, T = vit_tokens(c), d = c->d, f = c->mlp, h = c->heads;
        int64_t rows = L * B * T;
        compare(tc->label, "logits", a->logits, (int64_t)B * c->classes, recs, nrec);
        compare(tc->label, "loss", &loss, 1, recs, nrec);
        for (int k = 0; k < VIT_NUM_PARAMS; k++)
            compare(tc->label, vit_param_name(k), grads + (m->p[k] - m->params), m->size[k], recs,
                    nrec);
        compare(tc->label, "x0", a->x0, B * T * d, recs, nrec);
        compare(tc->label, "ln1", a->ln1, rows * d, recs, nrec);
        compare(tc->label, "qkv", a->qkv, rows * 3 * d, recs, nrec);
        compare(tc->label, "att", a->att, rows * h * T, recs, nrec);
        compare(tc->label, "atty", a->atty, rows * d, recs, nrec);
        compare(tc->label, "res1", a->res1, rows * d, recs, nrec);
        compare(tc->label, "ln2", a->ln2, rows * d, recs, nrec);
        compare(tc->label, "fc1", a->fc1, rows * f, recs, nrec);
        compare(tc->label, "res2", a->res2, rows * d, recs, nrec);
        compare(tc->label, "lnf", a->lnf, (int64_t)B * d, recs, nrec);

        printf("%s: loss %.7f; logits, loss, %d gradients and 10 activations compared with "
               "PyTorch, largest error %.3f of its tolerance\n",
               tc->label, loss, VIT_NUM_PARAMS, worst_ratio);

        /* Three AdamW steps on the same batch, as adamw_steps in vit_torch_ref.py: lr 1e-2,
         * betas 0.9 and 0.999, eps 1e-4, weight decay 0.1 on the matrices only. The large eps
         * keeps entries whose gradient is near zero, and so differs in sign between float
         * and double, from moving by a full step. */
        vit_adamw *opt = NULL;
        TU_CHECK(vit_adamw_create(m, 0.9, 0.999, 1e-4, 0.1, &opt) == TF_OK, "adamw_create: %s",
                 tf_error_get());
        for (int step = 0; step < 3 && opt; step++) {
            if (step > 0 && (vit_forward(m, a, images, labels, B, &loss) != TF_OK ||
                             vit_backward(m, a, labels, grads) != TF_OK))
                TF_DIE("%s: training step %d failed: %s", tc->label, step, tf_error_get());
            vit_adamw_step(opt, m, grads, 1e-2);
        }
        vit_adamw_free(&opt);
        const record *r = find(recs, nrec, "adamw_params");
        TU_CHECK(r && r->count == m->num_params, "%s: no adamw_params record of %lld values",
                 tc->label, (long long)m->num_params);
        if (r && r->count == m->num_params) {
            float *want = malloc((size_t)m->num_params * sizeof(float));
            for (int64_t i = 0; i < m->num_params; i++) want[i] = (float)r->values[i];
            char what[128];
            snprintf(what, sizeof what, "%s parameters after 3 AdamW steps", tc->label);
            tu_close_f32(what, m->params, want, m->num_params, 1e-5, 5e-5);
            free(want);
        }
    }
    for (int i = 0; i < nrec; i++) free(recs[i].values);
    remove(in);
    remove(out);
    free(images), free(labels), free(grads);
    vit_acts_free(&a);
    vit_model_free(&m);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc != 3) TF_DIE("usage: test_vit_torch PYTHON SCRIPT");
    const test_case cases[] = {
        {"tiny", {8, 2, 4, 8, 2, 2, 16, 3, 1e-5}, 3, 11},
        {"three_channels", {12, 3, 4, 24, 1, 3, 48, 5, 1e-6}, 5, 12},
        {"default", {28, 1, 7, 64, 4, 4, 256, 10, 1e-12}, 8, 13},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&cases[i], argv[1], argv[2]);
    int rc = tu_finish("test_vit_torch");
    MPI_Finalize();
    return rc;
}
