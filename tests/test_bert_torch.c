/* Compares bert_forward's logits and loss and bert_backward's gradients with a float64
 * PyTorch model built from nn.TransformerEncoderLayer (tests/bert_torch_ref.py).
 * Usage: test_bert_torch PYTHON SCRIPT */
#include "tfuse/bert.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 4 };
static const bert_config cfg = {
    .vocab = 37, .seq_len = 10, .d = 12, .layers = 2, .heads = 3, .mlp = 20, .ln_eps = 1e-5};

static void write_input(const char *path, const bert_model *m, const int *ids, const int *lengths,
                        const int *labels)
{
    const int N = B * cfg.seq_len;
    const int32_t header[7] = {cfg.vocab, cfg.seq_len, cfg.d, cfg.layers, cfg.heads, cfg.mlp, B};
    FILE *f = fopen(path, "wb");
    if (!f) TF_DIE("cannot write %s", path);
    int ok = fwrite(header, sizeof header, 1, f) == 1;
    ok &= fwrite(&cfg.ln_eps, sizeof(double), 1, f) == 1;
    ok &= fwrite(m->params, sizeof(float), (size_t)m->num_params, f) == (size_t)m->num_params;
    ok &= fwrite(ids, sizeof(int32_t), N, f) == (size_t)N;
    ok &= fwrite(lengths, sizeof(int32_t), B, f) == B;
    ok &= fwrite(labels, sizeof(int32_t), N, f) == (size_t)N;
    if (fclose(f) != 0 || !ok) TF_DIE("writing %s failed", path);
}

/* Reads the reference: logits (B, T, V), the loss and the gradient (num_params), float64. */
static double *read_reference(const char *path, int64_t count)
{
    double *ref = tf_malloc((size_t)count * sizeof(double));
    FILE *f = fopen(path, "rb");
    if (!f || fread(ref, sizeof(double), (size_t)count, f) != (size_t)count)
        TF_DIE("cannot read %lld values from %s", (long long)count, path);
    fclose(f);
    return ref;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc != 3) TF_DIE("usage: %s PYTHON SCRIPT", argv[0]);
    const int T = cfg.seq_len, V = cfg.vocab, N = B * T;
    bert_model *m = NULL;
    bert_acts *a = NULL;
    if (bert_model_create(&cfg, &m) != TF_OK || bert_acts_create(&cfg, B, &a) != TF_OK)
        TF_DIE("%s", tf_error_get());

    /* random parameters away from the initialization, padded inputs, 30 % labels */
    tf_rng rng;
    tf_rng_seed(&rng, 2024);
    bert_model_init(m, 3);
    for (int64_t k = 0; k < m->num_params; k++) m->params[k] += (float)(0.3 * tf_rng_normal(&rng));
    const int lengths[B] = {10, 7, 1, 4};
    int ids[B * 10], labels[B * 10];
    for (int i = 0; i < N; i++) ids[i] = (int)tf_rng_below(&rng, V);
    for (int i = 0; i < N; i++) {
        labels[i] =
            i % T < lengths[i / T] && tf_rng_uniform(&rng) < 0.3 ? ids[(i * 7) % N] : BERT_IGNORE;
    }
    labels[2 * T] = 5;

    /* the reference */
    write_input("test_bert_torch.in", m, ids, lengths, labels);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s' test_bert_torch.in test_bert_torch.ref", argv[1], argv[2]);
    if (system(cmd) != 0) TF_DIE("the reference script failed: %s", cmd);
    double *ref = read_reference("test_bert_torch.ref", (int64_t)N * V + 1 + m->num_params);

    /* logits at every position, then loss and gradients */
    float *logits = tf_malloc((size_t)N * V * sizeof(float));
    float *grads = tf_malloc((size_t)m->num_params * sizeof(float));
    TU_CHECK(bert_forward(m, a, ids, lengths, NULL, B, NULL) == TF_OK, "forward");
    memcpy(logits, a->logits, (size_t)N * V * sizeof(float));
    float loss = 0;
    TU_CHECK(bert_forward(m, a, ids, lengths, labels, B, &loss) == TF_OK, "forward, labels");
    TU_CHECK(bert_backward(m, a, grads) == TF_OK, "backward");

    double *want = tf_malloc((size_t)N * V * sizeof(double));
    double got_loss = loss;
    for (int64_t i = 0; i < (int64_t)N * V; i++) want[i] = ref[i];
    float *want32 = tf_malloc((size_t)N * V * sizeof(float));
    for (int64_t i = 0; i < (int64_t)N * V; i++) want32[i] = (float)want[i];
    tu_close_f32("logits", logits, want32, (int64_t)N * V, 1e-4, 1e-4);
    tu_close_f64("loss", &got_loss, &ref[(int64_t)N * V], 1, 1e-5, 1e-6);

    /* float32 against float64: each tensor to rtol 2e-3 plus atol 2e-5 of its scale */
    const double *gref = ref + (int64_t)N * V + 1;
    for (int i = 0; i < BERT_NUM_PARAMS; i++) {
        const int64_t off = m->p[i] - m->params, n = m->size[i];
        double scale = 0;
        for (int64_t k = 0; k < n; k++)
            scale = fabs(gref[off + k]) > scale ? fabs(gref[off + k]) : scale;
        float *w = tf_malloc((size_t)n * sizeof(float));
        for (int64_t k = 0; k < n; k++) w[k] = (float)gref[off + k];
        char what[64];
        snprintf(what, sizeof what, "d loss / d %s", bert_param_name(i));
        tu_close_f32(what, grads + off, w, n, 2e-3, 2e-5 * scale + 1e-7);
        free(w);
    }

    free(ref);
    free(want);
    free(want32);
    free(logits);
    free(grads);
    bert_acts_free(&a);
    bert_model_free(&m);
    if (tu_failures() == 0) remove("test_bert_torch.in");
    remove("test_bert_torch.ref");
    int rc = tu_finish("test_bert_torch");
    MPI_Finalize();
    return rc;
}
