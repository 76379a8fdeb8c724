/* MLM masking proportions on a large sample, special tokens, determinism, and the evaluation
 * helpers checked against direct computations. */
#include "tfuse/bert.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* |observed - expected| within 5 binomial standard deviations of n trials. */
static void check_fraction(const char *what, int64_t hits, int64_t n, double p)
{
    double sd = sqrt(p * (1 - p) / (double)n), got = (double)hits / (double)n;
    TU_CHECK(fabs(got - p) <= 5 * sd, "%s: %.5f, expected %.5f +- %.5f (5 sd, n = %lld)", what, got,
             p, 5 * sd, (long long)n);
}

static void check_proportions(void)
{
    enum { N = 1000000, V = 50 };
    int *ids = tf_malloc(N * sizeof(int)), *masked = tf_malloc(N * sizeof(int));
    int *labels = tf_malloc(N * sizeof(int)), *again = tf_malloc(N * sizeof(int));
    tf_rng rng;
    tf_rng_seed(&rng, 5);
    int64_t specials = 0, normal = 0;
    for (int i = 0; i < N; i++) {
        ids[i] =
            i % 10 == 0 ? (int)tf_rng_below(&rng, TOK_NUM_SPECIAL) : (int)tf_rng_below(&rng, V);
        if (ids[i] < TOK_NUM_SPECIAL)
            specials++;
        else
            normal++;
    }
    int64_t selected = 0;
    tf_rng_seed(&rng, 42);
    TU_CHECK(bert_mlm_mask(ids, N, V, 0.15, &rng, masked, labels, &selected) == TF_OK, "mask");

    /* tally what happened at each position */
    int64_t sel = 0, to_mask = 0, unchanged = 0, to_other = 0, special_touched = 0, bad = 0;
    for (int i = 0; i < N; i++) {
        if (ids[i] < TOK_NUM_SPECIAL) {
            special_touched += labels[i] != BERT_IGNORE || masked[i] != ids[i];
            continue;
        }
        if (labels[i] == BERT_IGNORE) {
            bad += masked[i] != ids[i];
            continue;
        }
        sel++;
        bad += labels[i] != ids[i];
        if (masked[i] == TOK_MASK)
            to_mask++;
        else if (masked[i] == ids[i])
            unchanged++;
        else {
            to_other++;
            bad += masked[i] < TOK_NUM_SPECIAL || masked[i] >= V;
        }
    }
    TU_CHECK(selected == sel, "selected count %lld matches the labels %lld", (long long)selected,
             (long long)sel);
    TU_CHECK(special_touched == 0, "%lld special tokens were selected or changed",
             (long long)special_touched);
    TU_CHECK(bad == 0, "%lld positions with a wrong label or replacement", (long long)bad);
    check_fraction("selected among non-special tokens", sel, normal, 0.15);
    check_fraction("[MASK] among selected", to_mask, sel, 0.8);
    /* a random replacement equals the original with probability 1 / (V - 5) */
    const double same = 1.0 / (V - TOK_NUM_SPECIAL);
    check_fraction("unchanged among selected", unchanged, sel, 0.1 + 0.1 * same);
    check_fraction("other token among selected", to_other, sel, 0.1 * (1 - same));

    tf_rng_seed(&rng, 42);
    bert_mlm_mask(ids, N, V, 0.15, &rng, again, labels, NULL);
    TU_CHECK(memcmp(again, masked, N * sizeof(int)) == 0, "same seed gives the same masks");
    TU_CHECK(bert_mlm_mask(ids, N, V, 1.5, &rng, again, labels, NULL) == TF_ERR_ARG,
             "select_prob 1.5 rejected");
    TU_CHECK(bert_mlm_mask(ids, N, TOK_NUM_SPECIAL, 0.15, &rng, again, labels, NULL) == TF_ERR_ARG,
             "vocabulary of specials only rejected");
    free(ids);
    free(masked);
    free(labels);
    free(again);
}

/* Random sequences of random lengths, [CLS] ... [SEP] [PAD]... like text_seqs_build writes. */
static text_seqs *random_seqs(int64_t count, int T, int V, tf_rng *rng)
{
    text_seqs *s = tf_calloc(1, sizeof *s);
    s->count = count;
    s->seq_len = T;
    s->ids = tf_malloc((size_t)count * T * sizeof(int));
    s->lengths = tf_malloc((size_t)count * sizeof(int));
    for (int64_t i = 0; i < count; i++) {
        int len = 3 + (int)tf_rng_below(rng, T - 2);
        int *row = s->ids + i * T;
        row[0] = TOK_CLS;
        /* skewed frequencies so that the unigram model has something to learn */
        for (int t = 1; t < len - 1; t++)
            row[t] = TOK_NUM_SPECIAL + (int)((V - TOK_NUM_SPECIAL) * pow(tf_rng_uniform(rng), 3));
        row[len - 1] = TOK_SEP;
        for (int t = len; t < T; t++) row[t] = TOK_PAD;
        s->lengths[i] = len;
    }
    return s;
}

static void check_evaluation(void)
{
    const bert_config cfg = {
        .vocab = 30, .seq_len = 12, .d = 16, .layers = 1, .heads = 2, .mlp = 32, .ln_eps = 1e-5};
    const double p = 0.3;
    const uint64_t seed = 77;
    tf_rng rng;
    tf_rng_seed(&rng, 3);
    text_seqs *train = random_seqs(200, cfg.seq_len, cfg.vocab, &rng);
    text_seqs *test = random_seqs(23, cfg.seq_len, cfg.vocab, &rng);
    bert_model *m = NULL;
    bert_acts *small = NULL, *big = NULL;
    if (bert_model_create(&cfg, &m) || bert_acts_create(&cfg, 4, &small) ||
        bert_acts_create(&cfg, 23, &big))
        TF_DIE("%s", tf_error_get());
    bert_model_init(m, 1);
    for (int64_t k = 0; k < m->num_params; k++) m->params[k] += (float)(0.1 * tf_rng_normal(&rng));

    /* batch size 4 (with a last batch of 3) and one batch of 23 see the same masks */
    bert_eval_result r4, r23;
    TU_CHECK(bert_evaluate(m, small, test, p, seed, &r4) == TF_OK, "%s", tf_error_get());
    TU_CHECK(bert_evaluate(m, big, test, p, seed, &r23) == TF_OK, "%s", tf_error_get());
    TU_CHECK(r4.tokens == r23.tokens && r4.tokens > 0, "token counts %lld and %lld",
             (long long)r4.tokens, (long long)r23.tokens);
    tu_close_f64("loss, batch 4 vs 23", &r4.loss, &r23.loss, 1, 1e-5, 0);
    tu_close_f64("accuracy, batch 4 vs 23", &r4.accuracy, &r23.accuracy, 1, 0, 1e-12);
    double ppl = exp(r4.loss);
    tu_close_f64("perplexity = exp(loss)", &r4.perplexity, &ppl, 1, 1e-12, 0);

    /* direct computation from the logits of one forward pass over all 23 sequences */
    int ids[23 * 12], labels[23 * 12];
    tf_rng_seed(&rng, seed);
    bert_mlm_mask(test->ids, 23 * 12, cfg.vocab, p, &rng, ids, labels, NULL);
    TU_CHECK(bert_forward(m, big, ids, test->lengths, NULL, 23, NULL) == TF_OK, "forward");
    double total = 0;
    int64_t n = 0, correct = 0;
    for (int i = 0; i < 23 * 12; i++) {
        if (labels[i] == BERT_IGNORE) continue;
        const float *lg = big->logits + (int64_t)i * cfg.vocab;
        double mx = lg[0], s = 0;
        int best = 0;
        for (int v = 1; v < cfg.vocab; v++)
            if (lg[v] > lg[best]) best = v;
        mx = lg[best];
        for (int v = 0; v < cfg.vocab; v++) s += exp(lg[v] - mx);
        total += log(s) + mx - lg[labels[i]];
        correct += best == labels[i];
        n++;
    }
    double direct = total / n, direct_acc = (double)correct / n;
    TU_CHECK(n == r4.tokens, "direct count %lld", (long long)n);
    tu_close_f64("loss vs direct computation", &r4.loss, &direct, 1, 1e-5, 0);
    tu_close_f64("accuracy vs direct computation", &r4.accuracy, &direct_acc, 1, 0, 1e-12);

    /* unigram baseline against counts made here */
    double uni = 0, want = 0, counts[30] = {0}, norm = 0;
    TU_CHECK(bert_unigram_loss(train, test, cfg.vocab, p, seed, &uni) == TF_OK, "unigram");
    for (int64_t i = 0; i < train->count * train->seq_len; i++)
        if (train->ids[i] >= TOK_NUM_SPECIAL) counts[train->ids[i]]++;
    for (int v = TOK_NUM_SPECIAL; v < cfg.vocab; v++) norm += ++counts[v];
    for (int i = 0; i < 23 * 12; i++)
        if (labels[i] != BERT_IGNORE) want -= log(counts[labels[i]] / norm) / n;
    tu_close_f64("unigram loss", &uni, &want, 1, 1e-12, 0);
    TU_CHECK(uni < log(cfg.vocab - TOK_NUM_SPECIAL), "unigram %.3f beats uniform %.3f", uni,
             log(cfg.vocab - TOK_NUM_SPECIAL));

    text_seqs_free(&train);
    text_seqs_free(&test);
    bert_acts_free(&small);
    bert_acts_free(&big);
    bert_model_free(&m);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    check_proportions();
    check_evaluation();
    int rc = tu_finish("test_bert_mlm");
    MPI_Finalize();
    return rc;
}
