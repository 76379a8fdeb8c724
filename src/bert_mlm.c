/* Masked-language-model batches, held-out evaluation and the unigram baseline. */
#include "tfuse/bert.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

tf_status bert_mlm_mask(const int *ids, int64_t count, int vocab, double select_prob, tf_rng *rng,
                        int *masked_ids, int *labels, int64_t *selected)
{
    if (!(select_prob >= 0 && select_prob <= 1) || vocab <= TOK_NUM_SPECIAL)
        return tf_error_set(TF_ERR_ARG,
                            "bert_mlm_mask: select_prob = %g or vocab = %d is invalid; need "
                            "select_prob in [0, 1] and vocab > %d",
                            select_prob, vocab, TOK_NUM_SPECIAL);
    int64_t num = 0;
    for (int64_t i = 0; i < count; i++) {
        masked_ids[i] = ids[i];
        labels[i] = BERT_IGNORE;
        if (ids[i] < TOK_NUM_SPECIAL || tf_rng_uniform(rng) >= select_prob) continue;
        labels[i] = ids[i];
        num++;
        double r = tf_rng_uniform(rng);
        if (r < 0.8)
            masked_ids[i] = TOK_MASK;
        else if (r < 0.9)
            masked_ids[i] = TOK_NUM_SPECIAL + (int)tf_rng_below(rng, vocab - TOK_NUM_SPECIAL);
    }
    if (selected) *selected = num;
    return TF_OK;
}

tf_status bert_mlm_batch(const text_seqs *seqs, const int64_t *order, int64_t first, int B,
                         int vocab, double select_prob, tf_rng *rng, int *ids, int *lengths,
                         int *labels)
{
    const int T = seqs->seq_len;
    for (int b = 0; b < B; b++) {
        int64_t row = order ? order[first + b] : first + b;
        if (row < 0 || row >= seqs->count)
            return tf_error_set(TF_ERR_ARG, "bert_mlm_batch: sequence %lld is outside [0, %lld)",
                                (long long)row, (long long)seqs->count);
        tf_status st = bert_mlm_mask(seqs->ids + row * T, T, vocab, select_prob, rng,
                                     ids + (int64_t)b * T, labels + (int64_t)b * T, NULL);
        if (st != TF_OK) return st;
        lengths[b] = seqs->lengths[row];
    }
    return TF_OK;
}

tf_status bert_evaluate(const bert_model *model, bert_acts *acts, const text_seqs *seqs,
                        double select_prob, uint64_t seed, bert_eval_result *out)
{
    const int T = model->cfg.seq_len, max_b = acts->max_batch;
    if (seqs->seq_len != T)
        return tf_error_set(TF_ERR_ARG,
                            "bert_evaluate: sequences have %d tokens but the model takes %d; "
                            "build them with the model's seq_len",
                            seqs->seq_len, T);
    int *ids = tf_malloc((size_t)max_b * T * sizeof(int));
    int *labels = tf_malloc((size_t)max_b * T * sizeof(int));
    int *lengths = tf_malloc((size_t)max_b * sizeof(int));
    tf_status st = ids && labels && lengths
                       ? TF_OK
                       : tf_error_set(TF_ERR_NOMEM, "bert_evaluate: out of memory");
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    double total = 0;
    int64_t tokens = 0, correct = 0;

    /* sequences in order, in batches of at most max_batch */
    for (int64_t first = 0; st == TF_OK && first < seqs->count; first += max_b) {
        int B = seqs->count - first < max_b ? (int)(seqs->count - first) : max_b;
        float loss = 0;
        st = bert_mlm_batch(seqs, NULL, first, B, model->cfg.vocab, select_prob, &rng, ids, lengths,
                            labels);
        if (st == TF_OK) st = bert_forward(model, acts, ids, lengths, labels, B, &loss);
        if (st != TF_OK) break;
        total += (double)loss * acts->num_pred;
        tokens += acts->num_pred;
        correct += bert_count_correct(model, acts);
    }

    free(ids);
    free(labels);
    free(lengths);
    if (st != TF_OK) return st;
    out->tokens = tokens;
    out->loss = tokens > 0 ? total / (double)tokens : 0.0;
    out->perplexity = exp(out->loss);
    out->accuracy = tokens > 0 ? (double)correct / (double)tokens : 0.0;
    return TF_OK;
}

tf_status bert_unigram_loss(const text_seqs *train, const text_seqs *heldout, int vocab,
                            double select_prob, uint64_t seed, double *loss)
{
    const int T = heldout->seq_len;
    double *freq = tf_calloc((size_t)vocab, sizeof(double));
    int *ids = tf_malloc((size_t)T * sizeof(int)), *labels = tf_malloc((size_t)T * sizeof(int));
    tf_status st = freq && ids && labels
                       ? TF_OK
                       : tf_error_set(TF_ERR_NOMEM, "bert_unigram_loss: out of memory");

    /* add-one smoothed frequencies of the non-special tokens */
    double norm = 0;
    for (int64_t i = 0; st == TF_OK && i < train->count * train->seq_len; i++) {
        int id = train->ids[i];
        if (id < 0 || id >= vocab)
            st = tf_error_set(TF_ERR_ARG, "bert_unigram_loss: token id %d is outside [0, %d)", id,
                              vocab);
        else if (id >= TOK_NUM_SPECIAL)
            freq[id] += 1.0;
    }
    for (int v = TOK_NUM_SPECIAL; v < vocab; v++) norm += freq[v] += 1.0;

    /* the masked tokens that bert_evaluate draws with the same seed */
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    double total = 0;
    int64_t tokens = 0;
    for (int64_t s = 0; st == TF_OK && s < heldout->count; s++) {
        st = bert_mlm_mask(heldout->ids + s * T, T, vocab, select_prob, &rng, ids, labels, NULL);
        for (int t = 0; st == TF_OK && t < T; t++) {
            if (labels[t] == BERT_IGNORE) continue;
            if (labels[t] >= vocab) {
                st = tf_error_set(TF_ERR_ARG,
                                  "bert_unigram_loss: held-out token id %d is outside [0, %d)",
                                  labels[t], vocab);
                break;
            }
            total -= log(freq[labels[t]] / norm);
            tokens++;
        }
    }
    free(freq);
    free(ids);
    free(labels);
    if (st == TF_OK) *loss = tokens > 0 ? total / (double)tokens : 0.0;
    return st;
}
