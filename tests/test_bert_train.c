/* Determinism of bert_forward/bert_backward, batch independence, and a short training run on
 * a synthetic masked-token task that a working model must learn. */
#include "tfuse/bert.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Synthetic task: ids 0..4 are special, 4 is the mask token; each sequence is an arithmetic
 * progression 5 + (a + s t) mod 19 with random start a and step s in {1, 2, 3}. A masked token
 * follows from its neighbours, so the loss can approach 0, while the best unigram loss is
 * log 19 = 2.94. */
enum { SPECIALS = 5, CYCLE = 19, MASK_ID = 4 };

static const bert_config small = {.vocab = SPECIALS + CYCLE,
                                  .seq_len = 16,
                                  .d = 32,
                                  .layers = 2,
                                  .heads = 2,
                                  .mlp = 64,
                                  .ln_eps = 1e-5};

static void make_batch(tf_rng *rng, int B, int *ids, int *labels)
{
    const int T = small.seq_len;
    for (int b = 0; b < B; b++) {
        int start = (int)tf_rng_below(rng, CYCLE), step = 1 + (int)tf_rng_below(rng, 3);
        int any = 0;
        for (int t = 0; t < T; t++) {
            int i = b * T + t, tok = SPECIALS + (start + step * t) % CYCLE;
            int masked = tf_rng_uniform(rng) < 0.15 || (t == T - 1 && !any);
            ids[i] = masked ? MASK_ID : tok;
            labels[i] = masked ? tok : BERT_IGNORE;
            any |= masked;
        }
    }
}

/* Two fresh runs of forward and backward on the same input give bitwise equal results. */
static void check_determinism(const bert_model *m, const int *ids, const int *labels, int B)
{
    float *g[2];
    float loss[2];
    for (int r = 0; r < 2; r++) {
        bert_acts *a = NULL;
        g[r] = tf_malloc((size_t)m->num_params * sizeof(float));
        if (bert_acts_create(&m->cfg, B, &a) != TF_OK) TF_DIE("%s", tf_error_get());
        TU_CHECK(bert_forward(m, a, ids, NULL, labels, B, &loss[r]) == TF_OK, "forward");
        TU_CHECK(bert_backward(m, a, g[r]) == TF_OK, "backward");
        bert_acts_free(&a);
    }
    TU_CHECK(loss[0] == loss[1], "loss repeats exactly: %.9g vs %.9g", loss[0], loss[1]);
    TU_CHECK(memcmp(g[0], g[1], (size_t)m->num_params * sizeof(float)) == 0,
             "gradients repeat bitwise");
    free(g[0]);
    free(g[1]);
}

/* The logits of one sequence do not depend on the other sequences of its batch. */
static void check_batch_independence(const bert_model *m, const int *ids, int B)
{
    const int T = small.seq_len, V = small.vocab;
    bert_acts *all = NULL, *one = NULL;
    if (bert_acts_create(&m->cfg, B, &all) != TF_OK || bert_acts_create(&m->cfg, 1, &one))
        TF_DIE("%s", tf_error_get());
    TU_CHECK(bert_forward(m, all, ids, NULL, NULL, B, NULL) == TF_OK, "forward batch");
    const int b = B - 1;
    TU_CHECK(bert_forward(m, one, ids + b * T, NULL, NULL, 1, NULL) == TF_OK, "forward one");
    tu_close_f32("logits of the last sequence alone vs in the batch", one->logits,
                 all->logits + (int64_t)b * T * V, (int64_t)T * V, 1e-5, 1e-5);
    bert_acts_free(&all);
    bert_acts_free(&one);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    enum { B = 16, STEPS = 1500, EVAL_BATCHES = 8 };
    const int N = B * small.seq_len;
    bert_model *m = NULL;
    bert_acts *a = NULL;
    bert_adamw *opt = NULL;
    if (bert_model_create(&small, &m) != TF_OK || bert_acts_create(&small, B, &a) != TF_OK)
        TF_DIE("%s", tf_error_get());
    bert_model_init(m, 7);
    if (bert_adamw_create(m, 0.9, 0.999, 1e-8, 0.01, &opt) != TF_OK) TF_DIE("%s", tf_error_get());
    int *ids = tf_malloc((size_t)N * sizeof(int)), *labels = tf_malloc((size_t)N * sizeof(int));
    float *grads = tf_malloc((size_t)m->num_params * sizeof(float));
    tf_rng data, eval;
    tf_rng_seed(&data, 11);

    make_batch(&data, B, ids, labels);
    check_determinism(m, ids, labels, B);
    check_batch_independence(m, ids, B);

    /* train with a linear warmup over 40 steps to lr 3e-3 */
    float loss = 0, first = 0;
    for (int step = 0; step < STEPS; step++) {
        make_batch(&data, B, ids, labels);
        if (bert_forward(m, a, ids, NULL, labels, B, &loss) != TF_OK ||
            bert_backward(m, a, grads) != TF_OK)
            TF_DIE("%s", tf_error_get());
        if (step == 0) first = loss;
        double lr = 3e-3 * (step < 40 ? (step + 1) / 40.0 : 1.0);
        bert_adamw_step(opt, m, grads, lr);
    }
    TU_CHECK(opt->step == STEPS, "optimizer counted %lld steps", (long long)opt->step);

    /* held-out batches from another seed */
    tf_rng_seed(&eval, 99);
    double sum = 0;
    int count = 0, correct = 0;
    for (int e = 0; e < EVAL_BATCHES; e++) {
        make_batch(&eval, B, ids, labels);
        TU_CHECK(bert_forward(m, a, ids, NULL, labels, B, &loss) == TF_OK, "eval forward");
        sum += (double)loss * a->num_pred;
        count += a->num_pred;
        correct += bert_count_correct(m, a);
    }
    double held = sum / count, acc = (double)correct / count;
    printf("synthetic task: first loss %.3f, held-out loss %.3f, accuracy %.3f over %d tokens "
           "(unigram loss %.3f)\n",
           first, held, acc, count, log(CYCLE));
    TU_CHECK(first > 2.5, "initial loss %.3f is near log V = %.3f", first, log(small.vocab));
    TU_CHECK(held < 0.8, "held-out loss %.3f is below 0.8", held);
    TU_CHECK(acc > 0.75, "held-out accuracy %.3f is above 0.75", acc);

    free(ids);
    free(labels);
    free(grads);
    bert_adamw_free(&opt);
    bert_acts_free(&a);
    bert_model_free(&m);
    int rc = tu_finish("test_bert_train");
    MPI_Finalize();
    return rc;
}
