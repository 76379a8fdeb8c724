/* Checks bert_backward against central finite differences of bert_forward's loss on a tiny
 * model, for a random subset of the entries of every parameter tensor, and checks that the
 * padding mask makes real positions independent of padding tokens. */
#include "tfuse/bert.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 3, SAMPLES_PER_TENSOR = 12 };

static const bert_config tiny = {
    .vocab = 20, .seq_len = 8, .d = 8, .layers = 2, .heads = 2, .mlp = 16, .ln_eps = 1e-5};

/* Random parameters far from the initialization so that every path carries gradient:
 * matrices N(0, 0.4^2), biases N(0, 0.2^2), LayerNorm gains 1 + N(0, 0.2^2). */
static void randomize(bert_model *m, tf_rng *rng)
{
    for (int i = 0; i < BERT_NUM_PARAMS; i++) {
        const char *name = bert_param_name(i);
        int gain = strstr(name, "_g") != NULL;
        int bias = !gain && (strstr(name, "_b") != NULL);
        for (int64_t k = 0; k < m->size[i]; k++) {
            double z = tf_rng_normal(rng);
            m->p[i][k] = (float)(gain ? 1.0 + 0.2 * z : bias ? 0.2 * z : 0.4 * z);
        }
    }
}

static float loss_of(const bert_model *m, bert_acts *a, const int *ids, const int *lengths,
                     const int *labels)
{
    float loss = NAN;
    tf_status st = bert_forward(m, a, ids, lengths, labels, B, &loss);
    if (st != TF_OK) TF_DIE("bert_forward failed: %s", tf_error_get());
    return loss;
}

static void check_gradients(bert_model *m, bert_acts *a, const int *ids, const int *lengths,
                            const int *labels, tf_rng *rng)
{
    float *grads = tf_malloc((size_t)m->num_params * sizeof(float));
    loss_of(m, a, ids, lengths, labels);
    TU_CHECK(bert_backward(m, a, grads) == TF_OK, "bert_backward: %s", tf_error_get());

    /* Richardson-extrapolated central differences (4 D(h/2) - D(h)) / 3 with h = 1e-2, whose
     * truncation error is O(h^4); the model accumulates the loss in double, so float rounding
     * adds about 1e-4 */
    const float h = 1e-2f;
    for (int i = 0; i < BERT_NUM_PARAMS; i++) {
        int n = m->size[i] < SAMPLES_PER_TENSOR ? (int)m->size[i] : SAMPLES_PER_TENSOR;
        float got[SAMPLES_PER_TENSOR], want[SAMPLES_PER_TENSOR];
        for (int s = 0; s < n; s++) {
            int64_t k = m->size[i] <= SAMPLES_PER_TENSOR ? s : tf_rng_below(rng, m->size[i]);
            float *p = m->p[i] + k, saved = *p;
            double diff[2];
            for (int r = 0; r < 2; r++) {
                float step = r == 0 ? h : h / 2;
                *p = saved + step;
                double up = loss_of(m, a, ids, lengths, labels);
                *p = saved - step;
                double down = loss_of(m, a, ids, lengths, labels);
                diff[r] = (up - down) / (2.0 * step);
            }
            *p = saved;
            want[s] = (float)((4.0 * diff[1] - diff[0]) / 3.0);
            got[s] = grads[(m->p[i] - m->params) + k];
        }
        char what[64];
        snprintf(what, sizeof what, "d loss / d %s", bert_param_name(i));
        tu_close_f32(what, got, want, n, 5e-3, 3e-4);
    }
    free(grads);
}

/* Mean cross-entropy against targets (n, V) computed here from the model's probabilities. */
static double soft_loss_of(const bert_model *m, bert_acts *a, const int *ids, const int *lengths,
                           const int *labels, const float *targets)
{
    loss_of(m, a, ids, lengths, labels);
    const int V = tiny.vocab;
    double total = 0;
    for (int64_t i = 0; i < (int64_t)a->num_pred * V; i++)
        if (targets[i] > 0) total -= targets[i] * log((double)a->probs[i]);
    return total / a->num_pred;
}

/* bert_backward_soft: one-hot targets reproduce bert_backward, and random target
 * distributions match finite differences of soft_loss_of. */
static void check_soft_targets(bert_model *m, bert_acts *a, const int *ids, const int *lengths,
                               const int *labels, tf_rng *rng)
{
    const int V = tiny.vocab;
    float *hard = tf_malloc((size_t)m->num_params * sizeof(float));
    float *soft = tf_malloc((size_t)m->num_params * sizeof(float));
    loss_of(m, a, ids, lengths, labels);
    const int n = a->num_pred;
    float *targets = tf_calloc((size_t)n * V, sizeof(float));
    for (int r = 0; r < n; r++) targets[(int64_t)r * V + labels[a->pred_pos[r]]] = 1.0f;
    TU_CHECK(bert_backward(m, a, hard) == TF_OK, "backward");
    TU_CHECK(bert_backward_soft(m, a, targets, soft) == TF_OK, "backward_soft");
    tu_close_f32("soft gradient with one-hot targets vs bert_backward", soft, hard, m->num_params,
                 1e-6, 1e-9);

    for (int r = 0; r < n; r++) {
        double sum = 0;
        for (int v = 0; v < V; v++) sum += targets[(int64_t)r * V + v] = (float)tf_rng_uniform(rng);
        for (int v = 0; v < V; v++) targets[(int64_t)r * V + v] /= (float)sum;
    }
    loss_of(m, a, ids, lengths, labels);
    TU_CHECK(bert_backward_soft(m, a, targets, soft) == TF_OK, "backward_soft");
    const float h = 1e-2f;
    for (int i = 0; i < BERT_NUM_PARAMS; i++) {
        float got[4], want[4];
        for (int s = 0; s < 4; s++) {
            int64_t k = tf_rng_below(rng, m->size[i]);
            float *p = m->p[i] + k, saved = *p;
            double diff[2];
            for (int r = 0; r < 2; r++) {
                float step = r == 0 ? h : h / 2;
                *p = saved + step;
                double up = soft_loss_of(m, a, ids, lengths, labels, targets);
                *p = saved - step;
                double down = soft_loss_of(m, a, ids, lengths, labels, targets);
                diff[r] = (up - down) / (2.0 * step);
            }
            *p = saved;
            want[s] = (float)((4.0 * diff[1] - diff[0]) / 3.0);
            got[s] = soft[(m->p[i] - m->params) + k];
        }
        char what[64];
        snprintf(what, sizeof what, "d soft loss / d %s", bert_param_name(i));
        tu_close_f32(what, got, want, 4, 5e-3, 3e-4);
    }
    free(hard);
    free(soft);
    free(targets);
}

/* Logits at real positions must not depend on the tokens at padding positions. */
static void check_padding_mask(bert_model *m, bert_acts *a, const int *ids, const int *lengths)
{
    const int T = tiny.seq_len, V = tiny.vocab, N = B * T;
    float *before = tf_malloc((size_t)N * V * sizeof(float));
    TU_CHECK(bert_forward(m, a, ids, lengths, NULL, B, NULL) == TF_OK, "forward: %s",
             tf_error_get());
    TU_CHECK(a->num_pred == N, "without labels all %d positions are predicted, got %d", N,
             a->num_pred);
    memcpy(before, a->logits, (size_t)N * V * sizeof(float));
    int changed[B * 8];
    memcpy(changed, ids, sizeof changed);
    for (int b = 0; b < B; b++)
        for (int t = lengths[b]; t < T; t++) changed[b * T + t] = (changed[b * T + t] + 7) % V;
    TU_CHECK(bert_forward(m, a, changed, lengths, NULL, B, NULL) == TF_OK, "forward: %s",
             tf_error_get());
    int same = 1;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < lengths[b]; t++)
            for (int v = 0; v < V; v++) {
                int64_t k = ((int64_t)b * T + t) * V + v;
                same &= before[k] == a->logits[k];
            }
    TU_CHECK(same, "logits at real positions changed when only padding tokens changed");
    free(before);
}

static void check_bad_inputs(bert_model *m, bert_acts *a, const int *ids, const int *lengths,
                             const int *labels)
{
    const int N = B * tiny.seq_len;
    int bad[B * 8], bad_len[B];
    float loss = 0;
    memcpy(bad, ids, sizeof bad);
    bad[5] = tiny.vocab;
    TU_CHECK(bert_forward(m, a, bad, lengths, labels, B, &loss) == TF_ERR_ARG,
             "id = V is rejected");
    memcpy(bad, labels, sizeof bad);
    bad[N - 1] = -2;
    TU_CHECK(bert_forward(m, a, ids, lengths, bad, B, &loss) == TF_ERR_ARG, "label -2 is rejected");
    memcpy(bad_len, lengths, sizeof bad_len);
    bad_len[1] = 0;
    TU_CHECK(bert_forward(m, a, ids, bad_len, labels, B, &loss) == TF_ERR_ARG,
             "length 0 is rejected");
    TU_CHECK(bert_forward(m, a, ids, lengths, labels, B + 1, &loss) == TF_ERR_ARG,
             "batch above max_batch is rejected");
    bert_config odd = tiny;
    odd.heads = 3;
    TU_CHECK(bert_config_validate(&odd) == TF_ERR_ARG, "d not a multiple of heads is rejected");
    TU_CHECK(strstr(tf_error_get(), "heads") != NULL, "message names heads: %s", tf_error_get());
    TU_CHECK(bert_forward(m, a, ids, lengths, NULL, B, NULL) == TF_OK, "forward: %s",
             tf_error_get());
    float *grads = tf_malloc((size_t)m->num_params * sizeof(float));
    TU_CHECK(bert_backward(m, a, grads) == TF_ERR_ARG, "backward after a forward without labels");

    /* no label at all: loss 0 and a zero gradient */
    int none[B * 8];
    for (int i = 0; i < B * 8; i++) none[i] = BERT_IGNORE;
    for (int64_t k = 0; k < m->num_params; k++) grads[k] = 1.0f;
    TU_CHECK(bert_forward(m, a, ids, lengths, none, B, &loss) == TF_OK && loss == 0.0f,
             "loss without labels is 0, got %g", loss);
    TU_CHECK(bert_backward(m, a, grads) == TF_OK, "backward without labels");
    int zero = 1;
    for (int64_t k = 0; k < m->num_params; k++) zero &= grads[k] == 0.0f;
    TU_CHECK(zero, "gradient without labels is zero");
    free(grads);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    bert_model *m = NULL;
    bert_acts *a = NULL;
    if (bert_model_create(&tiny, &m) != TF_OK || bert_acts_create(&tiny, B, &a) != TF_OK)
        TF_DIE("setup failed: %s", tf_error_get());
    tf_rng rng;
    tf_rng_seed(&rng, 1234);
    randomize(m, &rng);

    /* three sequences of lengths 8, 5 and 3; labels at about 40 % of the real positions,
     * some on a token id that also occurs as input so the tied embedding gets both uses */
    const int T = tiny.seq_len, lengths[B] = {8, 5, 3};
    int ids[B * 8], labels[B * 8];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (int)tf_rng_below(&rng, tiny.vocab);
        int real = i % T < lengths[i / T];
        labels[i] =
            real && tf_rng_uniform(&rng) < 0.4 ? (int)tf_rng_below(&rng, tiny.vocab) : BERT_IGNORE;
    }
    labels[1] = ids[0];
    labels[T + 4] = ids[T + 2];

    check_gradients(m, a, ids, lengths, labels, &rng);
    check_soft_targets(m, a, ids, lengths, labels, &rng);
    check_padding_mask(m, a, ids, lengths);
    check_bad_inputs(m, a, ids, lengths, labels);

    bert_acts_free(&a);
    bert_model_free(&m);
    TU_CHECK(a == NULL && m == NULL, "free sets the pointers to NULL");
    bert_model_free(&m);
    int rc = tu_finish("test_bert_grad");
    MPI_Finalize();
    return rc;
}
