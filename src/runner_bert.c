/* BERT tasks of the job runner: masked-language-model training on a verse corpus with a
 * tokenizer trained on the training books, and fusion of BERT parents, both evaluated on
 * the held-out books with the same seeded masks for every model. */
#include "runner_internal.h"
#include "tfuse/bert.h"
#include "tfuse/checkpoint.h"
#include "tfuse/fuse_bert.h"
#include "tfuse/h5file.h"
#include "tfuse/text.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sequences per forward pass in evaluation and calibration. */
enum { EVAL_BATCH = 32 };

/* Corpus, vocabulary and sequences of a task, the same on every rank. */
typedef struct {
    corpus *corpus;
    uint8_t *is_heldout; /* (num_books) */
    tok_vocab *vocab;
    text_seqs *train, *heldout;
    int *eval_ids, *eval_labels; /* (S, T) masked held-out ids and labels, S held-out seqs */
} bert_text;

static void bert_text_release(bert_text *d)
{
    corpus_free(&d->corpus);
    free(d->is_heldout);
    tok_vocab_free(&d->vocab);
    text_seqs_free(&d->train);
    text_seqs_free(&d->heldout);
    free(d->eval_ids);
    free(d->eval_labels);
    memset(d, 0, sizeof *d);
}

/* Loads the corpus file and marks its held-out books. Not collective. */
static tf_status load_corpus(const job_text *text, corpus **c_out, uint8_t **heldout_out)
{
    const char *names[JOB_MAX_HELDOUT];
    corpus *c = NULL;
    uint8_t *is_heldout = NULL;
    tf_status st = corpus_load(text->corpus, &c);
    if (st != TF_OK) {
        st = tf_error_set(st, "%s; generate the corpus with tools/bible_corpus.sh %s",
                          tf_error_get(), text->corpus);
        goto done;
    }
    is_heldout = tf_calloc((size_t)c->num_books, 1);
    if (!is_heldout) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < text->n_heldout; i++) names[i] = text->heldout[i];
    st = corpus_split(c, names, text->n_heldout, is_heldout);
    if (st != TF_OK) goto done;
    int training_books = 0;
    for (int b = 0; b < c->num_books; b++) training_books += !is_heldout[b];
    if (training_books == 0)
        st = tf_error_set(TF_ERR_ARG, "data.heldout lists every book of %s; keep some for training",
                          text->corpus);
done:
    if (st != TF_OK) {
        corpus_free(&c);
        free(is_heldout);
        return st;
    }
    *c_out = c;
    *heldout_out = is_heldout;
    return TF_OK;
}

/* Gives every rank the status and message of rank 0. Collective. */
static tf_status share_root_status(MPI_Comm comm, int rank, tf_status st)
{
    struct {
        int status;
        char message[1024];
    } msg = {(int)st, ""};
    if (rank == 0 && st != TF_OK) snprintf(msg.message, sizeof msg.message, "%s", tf_error_get());
    TF_MPI_CHECK(MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, comm));
    if (msg.status != TF_OK) return tf_error_set((tf_status)msg.status, "%s", msg.message);
    return TF_OK;
}

/* Trains a vocabulary on the training books on rank 0 and writes it to path under a
 * temporary name first. Collective: every rank returns rank 0's status. */
static tf_status train_vocab(MPI_Comm comm, const bert_text *d, int size, const char *path)
{
    int rank;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    tf_status st = TF_OK;
    if (rank == 0) {
        const char **texts = NULL;
        int64_t count = 0;
        tok_vocab *vocab = NULL;
        char tmp[JOB_PATH_MAX + 16];
        double t0 = tf_seconds();
        st = corpus_texts(d->corpus, d->is_heldout, 0, &texts, &count);
        if (st == TF_OK) st = tok_train(texts, count, size, &vocab);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        if (st == TF_OK) st = runner_make_parent_dirs(path);
        if (st == TF_OK) st = tok_vocab_save(vocab, tmp);
        if (st == TF_OK && rename(tmp, path) != 0)
            st = tf_error_set(TF_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        if (st != TF_OK) remove(tmp);
        if (st == TF_OK)
            TF_INFO("tokenizer: %d tokens trained on %lld verses in %.1f s, wrote %s", vocab->size,
                    (long long)count, tf_seconds() - t0, path);
        tok_vocab_free(&vocab);
        free(texts);
    }
    return share_root_status(comm, rank, st);
}

/* Masks all held-out sequences with the evaluation seed, as bert_evaluate does. */
static tf_status mask_heldout(bert_text *d, int vocab, const job_text *text)
{
    const int64_t n = d->heldout->count * d->heldout->seq_len;
    tf_rng rng;
    tf_rng_seed(&rng, text->eval_seed);
    d->eval_ids = tf_malloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    d->eval_labels = tf_malloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    if (!d->eval_ids || !d->eval_labels) return TF_ERR_NOMEM;
    return bert_mlm_mask(d->heldout->ids, n, vocab, text->mask_prob, &rng, d->eval_ids,
                         d->eval_labels, NULL);
}

/* Tokenizes the training and held-out books into sequences of seq_len tokens and masks
 * the held-out ones. Needs d->corpus, d->is_heldout and d->vocab. */
static tf_status build_sequences(bert_text *d, const job_text *text, int seq_len)
{
    tf_status st = text_seqs_build(d->corpus, d->is_heldout, 0, d->vocab, seq_len, &d->train);
    if (st == TF_OK)
        st = text_seqs_build(d->corpus, d->is_heldout, 1, d->vocab, seq_len, &d->heldout);
    if (st != TF_OK) return st;
    if (text->train_limit > 0 && text->train_limit < d->train->count)
        d->train->count = text->train_limit;
    if (d->heldout->count < 1)
        return tf_error_set(TF_ERR_ARG, "the held-out books of %s give no sequences", text->corpus);
    return mask_heldout(d, d->vocab->size, text);
}

/* ---- Evaluation ---------------------------------------------------------------------- */

/* Sums the local counts sums = {loss sum, masked tokens, correct} over comm into *out.
 * Every rank joins the reductions even after a local failure (st), so none waits forever. */
static tf_status finish_evaluation(MPI_Comm comm, tf_status st, double sums[3],
                                   bert_eval_result *out)
{
    double failed = st != TF_OK, any_failed = 0;
    TF_MPI_CHECK(MPI_Allreduce(&failed, &any_failed, 1, MPI_DOUBLE, MPI_MAX, comm));
    TF_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, comm));
    if (st != TF_OK) return st;
    if (any_failed) return tf_error_set(TF_ERR_MPI, "BERT evaluation failed on another rank");
    out->tokens = (int64_t)sums[1];
    out->loss = sums[1] > 0 ? sums[0] / sums[1] : 0.0;
    out->perplexity = exp(out->loss);
    out->accuracy = sums[1] > 0 ? sums[2] / sums[1] : 0.0;
    return TF_OK;
}

/* Computes masked-token loss, perplexity and accuracy of model on the held-out sequences
 * with the masks of mask_heldout. Collective on comm. Each rank scores a contiguous share
 * of the sequences, so the result equals bert_evaluate's up to the order of the sums. */
static tf_status evaluate(MPI_Comm comm, const bert_model *model, const bert_text *d,
                          bert_eval_result *out)
{
    int rank, size;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    const int T = model->cfg.seq_len;
    const int64_t S = d->heldout->count;
    const int64_t first = S * rank / size, last = S * (rank + 1) / size;
    bert_acts *acts = NULL;
    tf_status st = bert_acts_create(&model->cfg, EVAL_BATCH, &acts);
    double sums[3] = {0, 0, 0}; /* loss sum, masked tokens, correct */
    for (int64_t s = first; st == TF_OK && s < last; s += EVAL_BATCH) {
        int B = (int)(last - s < EVAL_BATCH ? last - s : EVAL_BATCH);
        float loss = 0;
        st = bert_forward(model, acts, d->eval_ids + s * T, d->heldout->lengths + s,
                          d->eval_labels + s * T, B, &loss);
        if (st != TF_OK) break;
        sums[0] += (double)loss * acts->num_pred;
        sums[1] += acts->num_pred;
        sums[2] += bert_count_correct(model, acts);
    }
    bert_acts_free(&acts);
    return finish_evaluation(comm, st, sums, out);
}

/* Computes the same metrics for the ensemble of n models. On each masked token the
 * ensemble predicts sum_t weights[t] * softmax(logits_t), and its loss is -log of that at
 * the label. Collective on comm. */
static tf_status evaluate_ensemble(MPI_Comm comm, bert_model *const *models, const double *weights,
                                   int n, const bert_text *d, bert_eval_result *out)
{
    int rank, size;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    const int T = models[0]->cfg.seq_len, V = models[0]->cfg.vocab;
    const int64_t S = d->heldout->count;
    const int64_t first = S * rank / size, last = S * (rank + 1) / size;
    tf_status st = TF_OK;
    for (int t = 1; st == TF_OK && t < n; t++)
        if (models[t]->cfg.seq_len != T || models[t]->cfg.vocab != V)
            st = tf_error_set(TF_ERR_ARG,
                              "ensemble evaluation: parent %d has seq_len %d and vocab %d, "
                              "parent 0 %d and %d",
                              t, models[t]->cfg.seq_len, models[t]->cfg.vocab, T, V);
    bert_acts **acts = tf_calloc((size_t)n, sizeof *acts);
    double *q = NULL;
    int64_t q_rows = 0;
    if (st == TF_OK && !acts) st = TF_ERR_NOMEM;
    for (int t = 0; st == TF_OK && t < n; t++)
        st = bert_acts_create(&models[t]->cfg, EVAL_BATCH, &acts[t]);
    double sums[3] = {0, 0, 0}; /* loss sum, masked tokens, correct */
    for (int64_t s = first; st == TF_OK && s < last; s += EVAL_BATCH) {
        int B = (int)(last - s < EVAL_BATCH ? last - s : EVAL_BATCH);
        const int *labels = d->eval_labels + s * T;
        for (int t = 0; st == TF_OK && t < n; t++) {
            float loss = 0;
            st = bert_forward(models[t], acts[t], d->eval_ids + s * T, d->heldout->lengths + s,
                              labels, B, &loss);
            if (st != TF_OK) break;
            /* The labels choose the predicted rows, so every model has the same ones. */
            const int64_t rows = acts[t]->num_pred;
            if (rows > q_rows) {
                free(q);
                q = tf_malloc((size_t)rows * V * sizeof *q);
                q_rows = q ? rows : 0;
                if (!q) {
                    st = TF_ERR_NOMEM;
                    break;
                }
            }
            if (t == 0 && rows > 0) memset(q, 0, (size_t)rows * V * sizeof *q);
            for (int64_t k = 0; k < rows * V; k++) q[k] += weights[t] * acts[t]->probs[k];
        }
        for (int i = 0; st == TF_OK && i < acts[0]->num_pred; i++) {
            const double *row = q + (int64_t)i * V;
            const int label = labels[acts[0]->pred_pos[i]];
            int best = 0;
            for (int v = 1; v < V; v++)
                if (row[v] > row[best]) best = v;
            sums[0] -= log(row[label] > 1e-300 ? row[label] : 1e-300);
            sums[1] += 1;
            sums[2] += best == label;
        }
    }
    for (int t = 0; acts && t < n; t++) bert_acts_free(&acts[t]);
    free(acts);
    free(q);
    return finish_evaluation(comm, st, sums, out);
}

/* ---- Training ------------------------------------------------------------------------ */

/* BERT training: the shared schedule (batches of sequences; the seed also draws the
 * masks), the masking rate and the distillation teachers. */
typedef struct {
    train_schedule s;
    double mask_prob;
    bert_model *const *teachers; /* (s.n_teachers) */
} bert_train_options;

/* Local buffers of one training loop. */
typedef struct {
    int *ids, *lengths, *labels; /* (B, T), (B), (B, T) of the global batch */
    float *grads;                /* (num_params) */
    float *targets;              /* (n, V) distillation targets, grown as needed */
    int64_t target_rows;
    bert_acts *acts;
    bert_acts **teacher_acts; /* (n_teachers) */
    bert_adamw *adam;
} train_buffers;

static void train_buffers_release(train_buffers *b, int n_teachers)
{
    free(b->ids);
    free(b->lengths);
    free(b->labels);
    free(b->grads);
    free(b->targets);
    bert_acts_free(&b->acts);
    for (int t = 0; b->teacher_acts && t < n_teachers; t++) bert_acts_free(&b->teacher_acts[t]);
    free(b->teacher_acts);
    bert_adamw_free(&b->adam);
}

static tf_status train_buffers_init(train_buffers *b, const bert_model *model,
                                    const bert_train_options *o, int local)
{
    const int64_t BT = (int64_t)o->s.batch_size * model->cfg.seq_len;
    memset(b, 0, sizeof *b);
    b->ids = tf_malloc((size_t)BT * sizeof(int));
    b->labels = tf_malloc((size_t)BT * sizeof(int));
    b->lengths = tf_malloc((size_t)o->s.batch_size * sizeof(int));
    b->grads = tf_malloc((size_t)model->num_params * sizeof(float));
    if (!b->ids || !b->labels || !b->lengths || !b->grads) return TF_ERR_NOMEM;
    tf_status st = bert_acts_create(&model->cfg, local > 0 ? local : 1, &b->acts);
    if (st == TF_OK)
        st =
            bert_adamw_create(model, o->s.beta1, o->s.beta2, o->s.eps, o->s.weight_decay, &b->adam);
    if (st != TF_OK || !(o->s.distill > 0 && o->s.n_teachers > 0)) return st;
    b->teacher_acts = tf_calloc((size_t)o->s.n_teachers, sizeof *b->teacher_acts);
    if (!b->teacher_acts) return TF_ERR_NOMEM;
    for (int t = 0; st == TF_OK && t < o->s.n_teachers; t++)
        st = bert_acts_create(&o->teachers[t]->cfg, local > 0 ? local : 1, &b->teacher_acts[t]);
    return st;
}

/* Distillation targets (n, V) for the predicted positions of the student's last forward
 * pass: (1 - a) onehot(label) + a sum_t w_t softmax(teacher t), with the teachers run on
 * the same B masked sequences, so their predicted positions are the student's. */
static tf_status distill_targets(const bert_train_options *o, train_buffers *b, const int *ids,
                                 const int *lengths, const int *labels, int B)
{
    const int n = b->acts->num_pred;
    const int vocab = o->teachers[0]->cfg.vocab;
    if (n > b->target_rows) {
        free(b->targets);
        b->targets = tf_malloc((size_t)n * vocab * sizeof(float));
        b->target_rows = b->targets ? n : 0;
        if (!b->targets) return TF_ERR_NOMEM;
    }
    float *q = b->targets;
    for (int64_t k = 0; k < (int64_t)n * vocab; k++) q[k] = 0;
    for (int t = 0; t < o->s.n_teachers; t++) {
        float unused = 0;
        tf_status st =
            bert_forward(o->teachers[t], b->teacher_acts[t], ids, lengths, labels, B, &unused);
        if (st != TF_OK) return st;
        const float w = (float)(o->s.distill * o->s.teacher_weights[t]);
        const float *probs = b->teacher_acts[t]->probs;
        for (int64_t k = 0; k < (int64_t)n * vocab; k++) q[k] += w * probs[k];
    }
    for (int i = 0; i < n; i++)
        q[(int64_t)i * vocab + labels[b->acts->pred_pos[i]]] += (float)(1.0 - o->s.distill);
    return TF_OK;
}

/* Runs the forward and backward pass of this rank's rows [first, first + count) of the
 * masked global batch. The gradient is scaled by the rank's share of the n_global masked
 * tokens, so the sum over ranks is the gradient of the batch mean. */
static tf_status local_step(bert_model *model, const bert_train_options *o, train_buffers *b,
                            int first, int count, int64_t n_global, double *loss_share)
{
    const int T = model->cfg.seq_len;
    const int *ids = b->ids + (int64_t)first * T, *labels = b->labels + (int64_t)first * T;
    const int *lengths = b->lengths + first;
    int64_t n_local = 0;
    for (int64_t k = 0; k < (int64_t)count * T; k++) n_local += labels[k] != BERT_IGNORE;
    *loss_share = 0;
    if (count == 0 || n_local == 0) {
        memset(b->grads, 0, (size_t)model->num_params * sizeof(float));
        return TF_OK;
    }
    float loss = 0;
    tf_status st = bert_forward(model, b->acts, ids, lengths, labels, count, &loss);
    const int distill = o->s.distill > 0 && o->s.n_teachers > 0;
    if (st == TF_OK && distill) st = distill_targets(o, b, ids, lengths, labels, count);
    if (st == TF_OK)
        st = distill ? bert_backward_soft(model, b->acts, b->targets, b->grads)
                     : bert_backward(model, b->acts, b->grads);
    if (st != TF_OK) return st;
    const float share = (float)n_local / (float)n_global;
    for (int64_t k = 0; k < model->num_params; k++) b->grads[k] *= share;
    *loss_share = (double)loss * share;
    return TF_OK;
}

/* Progress of a training loop between two log lines. */
typedef struct {
    double t_start, t_log, loss_sum;
    int64_t loss_steps, per_epoch;
    int64_t first_step;  /* steps restored from a checkpoint */
    int64_t timed_steps; /* steps since t_log, which excludes restored ones */
    double last_loss;    /* mean loss of the last progress line */
} train_progress;

/* Logs the mean loss since the last log line. Collective. Returns TF_ERR_NUMERIC when the
 * loss is not finite. */
static tf_status log_progress(MPI_Comm comm, const bert_train_options *o, train_progress *pr,
                              int64_t step, double lr)
{
    double mean_loss = 0;
    TF_MPI_CHECK(MPI_Allreduce(&pr->loss_sum, &mean_loss, 1, MPI_DOUBLE, MPI_SUM, comm));
    mean_loss /= (double)pr->loss_steps;
    if (!isfinite(mean_loss))
        return tf_error_set(TF_ERR_NUMERIC,
                            "%s: training loss became %g at step %lld; lower the learning rate",
                            o->s.label, mean_loss, (long long)step + 1);
    double now = tf_seconds();
    double rate = (double)(step + 1 - pr->first_step) / (now - pr->t_start);
    TF_INFO("%s: step %lld/%lld  epoch %.2f  MLM loss %.4f  lr %.2e  %.0f seq/s  %.0f s left",
            o->s.label, (long long)step + 1, (long long)o->s.steps,
            (double)(step + 1) / (double)pr->per_epoch, mean_loss, lr,
            (double)pr->timed_steps * o->s.batch_size / (now - pr->t_log),
            (double)(o->s.steps - step - 1) / rate);
    pr->t_log = now;
    pr->timed_steps = 0;
    pr->last_loss = mean_loss;
    pr->loss_sum = 0;
    pr->loss_steps = 0;
    return TF_OK;
}

/* One optimizer step on the global batch of sequences perm[first_seq .. first_seq + B).
 * Every rank masks the whole batch with a generator seeded by (seed, step), runs its rows
 * [first, first + count) and joins the one MPI_Allreduce of the gradients. A rank that
 * fails sends NaN gradients instead, so every rank leaves the step with an error. */
static tf_status train_step(MPI_Comm comm, bert_model *model, const text_seqs *train,
                            const bert_train_options *o, train_buffers *buf, const int64_t *perm,
                            int64_t first_seq, int first, int count, int64_t step,
                            double *loss_share)
{
    const int B = o->s.batch_size, T = model->cfg.seq_len;
    tf_rng mask_rng;
    tf_rng_seed(&mask_rng, (o->s.seed ^ 0x6d61736b00000000ULL) + (uint64_t)step * 7919u);
    tf_status st = bert_mlm_batch(train, perm, first_seq, B, model->cfg.vocab, o->mask_prob,
                                  &mask_rng, buf->ids, buf->lengths, buf->labels);
    int64_t n_global = 0;
    for (int64_t k = 0; st == TF_OK && k < (int64_t)B * T; k++)
        n_global += buf->labels[k] != BERT_IGNORE;
    *loss_share = 0;
    if (st == TF_OK && n_global > 0)
        st = local_step(model, o, buf, first, count, n_global, loss_share);
    else if (st == TF_OK)
        memset(buf->grads, 0, (size_t)model->num_params * sizeof(float));
    if (st != TF_OK) buf->grads[0] = NAN;
    TF_MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, buf->grads, (int)model->num_params, MPI_FLOAT, MPI_SUM, comm));
    if (st != TF_OK) return st;
    if (!isfinite(buf->grads[0]))
        return tf_error_set(TF_ERR_NUMERIC,
                            "%s: the gradient at step %lld is not finite, or another rank "
                            "failed; see its message",
                            o->s.label, (long long)step + 1);
    double lr = tf_cosine_lr(step, o->s.warmup_steps, o->s.steps, o->s.lr, o->s.min_lr);
    bert_adamw_step(buf->adam, model, buf->grads, lr);
    return TF_OK;
}

/* Settings a checkpoint of train_mlm must match; returns their count. */
static int checkpoint_settings(const bert_train_options *o, const bert_model *model,
                               int64_t train_count, ckpt_setting *s)
{
    const bert_config *c = &model->cfg;
    const int n = train_schedule_settings(&o->s, "training_sequences", train_count, s);
    const ckpt_setting list[] = {
        {"mask_prob", 1, 0, o->mask_prob},
        {"vocab", 0, c->vocab, 0},
        {"seq_len", 0, c->seq_len, 0},
        {"d", 0, c->d, 0},
        {"layers", 0, c->layers, 0},
        {"heads", 0, c->heads, 0},
        {"mlp", 0, c->mlp, 0},
        {"ln_eps", 1, 0, c->ln_eps},
        {"num_params", 0, model->num_params, 0},
    };
    memcpy(s + n, list, sizeof list);
    return n + (int)(sizeof list / sizeof list[0]);
}

/* Writes the state after progress's step (loss sum: this rank's share) to the checkpoint.
 * Collective. */
static tf_status checkpoint_save(MPI_Comm comm, const bert_train_options *o,
                                 const bert_model *model, const bert_adamw *adam,
                                 int64_t train_count, const train_progress *pr)
{
    ckpt_setting settings[CKPT_MAX_SETTINGS];
    const int n = checkpoint_settings(o, model, train_count, settings);
    const ckpt_state state = {.num_params = model->num_params,
                              .params = model->params,
                              .adam_m = adam->m,
                              .adam_v = adam->v,
                              .step = adam->step,
                              .loss_sum = pr->loss_sum,
                              .loss_steps = pr->loss_steps,
                              .last_loss = pr->last_loss};
    return ckpt_save_training(comm, o->s.checkpoint_path, "bert", o->s.label, settings, n, &state);
}

/* With o->s.resume, loads the checkpoint into model, adam and pr when it exists; *first_step
 * receives the steps it contains (0 without one). Collective. */
static tf_status checkpoint_restore(MPI_Comm comm, const bert_train_options *o, bert_model *model,
                                    bert_adamw *adam, int64_t train_count, train_progress *pr,
                                    int64_t *first_step)
{
    ckpt_setting settings[CKPT_MAX_SETTINGS];
    const int n = checkpoint_settings(o, model, train_count, settings);
    ckpt_state state = {.num_params = model->num_params,
                        .params = model->params,
                        .adam_m = adam->m,
                        .adam_v = adam->v};
    int found = 0;
    *first_step = 0;
    if (!o->s.checkpoint_path || !o->s.resume) return TF_OK;
    tf_status st = ckpt_resume_training(comm, o->s.checkpoint_path, "bert", o->s.label, settings, n,
                                        o->s.steps, &state, &found);
    if (st != TF_OK || !found) return st;
    adam->step = state.step;
    pr->loss_sum = state.loss_sum;
    pr->loss_steps = state.loss_steps;
    pr->last_loss = state.last_loss;
    *first_step = state.step;
    return TF_OK;
}

/* Collective on comm. Trains model (replicated, kept identical) for o->s.steps AdamW steps
 * with train_step, on batches drawn from a fresh shuffle of the sequences each epoch; the
 * masks do not depend on the number of ranks. */
static tf_status train_mlm(MPI_Comm comm, bert_model *model, const text_seqs *train,
                           const bert_train_options *o, double *seconds)
{
    int rank, size;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    const int B = o->s.batch_size;
    if (B > train->count)
        return tf_error_set(TF_ERR_ARG,
                            "%s: batch_size = %d exceeds the %lld training sequences; lower it",
                            o->s.label, B, (long long)train->count);
    if (model->num_params > INT32_MAX)
        return tf_error_set(TF_ERR_ARG, "%s: %lld parameters do not fit one MPI count", o->s.label,
                            (long long)model->num_params);
    const int first = (int)((int64_t)B * rank / size);
    const int count = (int)((int64_t)B * (rank + 1) / size) - first;
    train_progress pr = {.t_start = tf_seconds(), .per_epoch = train->count / B};
    pr.t_log = pr.t_start;
    train_buffers buf;
    int64_t *perm = tf_malloc((size_t)train->count * sizeof(int64_t));
    tf_status st = train_buffers_init(&buf, model, o, count);
    if (st == TF_OK && !perm) st = TF_ERR_NOMEM;

    if (st == TF_OK)
        st = checkpoint_restore(comm, o, model, buf.adam, train->count, &pr, &pr.first_step);
    const int64_t every = o->s.checkpoint_path ? o->s.checkpoint_every : 0;
    tf_rng order_rng;
    for (int64_t step = pr.first_step; st == TF_OK && step < o->s.steps; step++) {
        /* Each epoch's order depends on (seed, epoch) alone, so a resumed run draws it
         * again. */
        const int64_t in_epoch = step % pr.per_epoch;
        if (in_epoch == 0 || step == pr.first_step) {
            tf_rng_seed(&order_rng, o->s.seed * 1000003u + (uint64_t)(step / pr.per_epoch));
            for (int64_t i = 0; i < train->count; i++) perm[i] = i;
            tf_rng_shuffle(&order_rng, perm, train->count);
        }
        double loss_share = 0;
        st = train_step(comm, model, train, o, &buf, perm, in_epoch * B, first, count, step,
                        &loss_share);
        pr.loss_sum += loss_share;
        pr.loss_steps++;
        pr.timed_steps++;
        if (st == TF_OK && ((step + 1) % o->s.log_every == 0 || step + 1 == o->s.steps))
            st = log_progress(
                comm, o, &pr, step,
                tf_cosine_lr(step, o->s.warmup_steps, o->s.steps, o->s.lr, o->s.min_lr));
        if (st == TF_OK && every > 0 && (step + 1) % every == 0)
            st = checkpoint_save(comm, o, model, buf.adam, train->count, &pr);
        if (st == TF_OK && o->s.stop_after > 0 && step + 1 == o->s.stop_after &&
            step + 1 < o->s.steps)
            st = tf_error_set(TF_ERR_ARG, "%s: stopped after step %lld as stop_after requests",
                              o->s.label, (long long)step + 1);
    }
    if (seconds) *seconds = tf_seconds() - pr.t_start;
    train_buffers_release(&buf, o->s.n_teachers);
    free(perm);
    return st;
}

/* ---- Model files --------------------------------------------------------------------- */

/* Writes model to path under a temporary name with its vocabulary file as the attribute
 * "vocab_file", and for a finetuned fused model (f and method not NULL) its fusion_job
 * attribute. Collective. */
static tf_status save_model(MPI_Comm comm, const bert_model *model, const char *path,
                            const char *vocab_path, int overwrite, const job_fuse *f,
                            const job_method *method)
{
    h5f_file *h5 = NULL;
    tf_status st = h5f_create(comm, path, overwrite, &h5);
    if (st != TF_OK) return st;
    st = bert_model_write(model, h5, "/");
    if (st == TF_OK) st = h5f_set_attr_string(h5, "/", "vocab_file", vocab_path);
    if (st == TF_OK && f && method) st = runner_set_provenance(h5, f, method, 1);
    if (st != TF_OK) {
        h5f_discard(&h5);
        return st;
    }
    return h5f_commit(&h5);
}

/* Reads the "vocab_file" attribute of a BERT model file. Collective on comm. */
static tf_status read_vocab_attr(MPI_Comm comm, const char *path, char *out, size_t size)
{
    h5f_file *h5 = NULL;
    tf_status st = h5f_open(comm, path, &h5);
    if (st != TF_OK) return st;
    st = h5f_get_attr_string(h5, "/", "vocab_file", out, size);
    h5f_close(&h5);
    if (st != TF_OK)
        return tf_error_set(st,
                            "%s has no vocab_file attribute naming its vocabulary; BERT "
                            "models trained by tfuse train jobs have one",
                            path);
    return TF_OK;
}

/* ---- Train task ---------------------------------------------------------------------- */

/* Loads the vocabulary of a train task, training it first when the task names none, and
 * settles the model's vocabulary size. Collective. */
static tf_status prepare_vocab(MPI_Comm comm, const job_train *t, int resume, bert_text *d,
                               bert_config *cfg, char *vocab_path)
{
    tf_status st = TF_OK;
    char own[JOB_PATH_MAX];
    snprintf(own, sizeof own, "%.*s.vocab", JOB_PATH_MAX - 8, t->output);
    if (t->vocab[0]) {
        snprintf(vocab_path, JOB_PATH_MAX, "%s", t->vocab);
    } else if (resume && ckpt_exists(comm, own)) {
        /* The vocabulary of the interrupted run, which its checkpoint was trained with. */
        snprintf(vocab_path, JOB_PATH_MAX, "%s", own);
        TF_INFO("train %s: reusing the vocabulary %s (resume)", t->name, vocab_path);
    } else {
        snprintf(vocab_path, JOB_PATH_MAX, "%.*s.vocab", JOB_PATH_MAX - 8, t->output);
        st = train_vocab(comm, d, cfg->vocab, vocab_path);
    }
    if (st == TF_OK) st = tok_vocab_load(vocab_path, &d->vocab);
    if (st != TF_OK) return st;
    if (t->vocab[0] && cfg->vocab != 0 && cfg->vocab != d->vocab->size)
        return tf_error_set(TF_ERR_ARG,
                            "train %s: model.vocab = %d but %s has %d tokens; remove "
                            "model.vocab or make them equal",
                            t->name, cfg->vocab, vocab_path, d->vocab->size);
    if (!t->vocab[0] && d->vocab->size < cfg->vocab)
        TF_WARN("train %s: the tokenizer stopped at %d of the %d tokens requested, because no "
                "pair of pieces occurs twice more; the model uses %d",
                t->name, d->vocab->size, cfg->vocab, d->vocab->size);
    cfg->vocab = d->vocab->size;
    return bert_config_validate(cfg);
}

tf_status runner_run_train_bert(MPI_Comm comm, const job_train *t, const job_file *job)
{
    bert_text d = {0};
    bert_model *model = NULL;
    bert_config cfg = t->bert;
    char vocab_path[JOB_PATH_MAX], checkpoint[JOB_PATH_MAX + 16];
    snprintf(checkpoint, sizeof checkpoint, "%s.ckpt.h5", t->output);
    bert_eval_result eval = {0};
    double seconds = 0, unigram = 0;

    /* Step 1: corpus, vocabulary, sequences and a freshly initialized model. */
    tf_status st = load_corpus(&t->data.text, &d.corpus, &d.is_heldout);
    if (st == TF_OK) st = prepare_vocab(comm, t, job->resume, &d, &cfg, vocab_path);
    if (st == TF_OK) st = build_sequences(&d, &t->data.text, cfg.seq_len);
    if (st == TF_OK) st = bert_model_create(&cfg, &model);
    if (st != TF_OK) goto done;
    bert_model_init(model, t->seed);
    int64_t per_epoch = d.train->count / t->batch_size;
    if (per_epoch < 1) per_epoch = 1;
    const int64_t steps = t->steps > 0 ? t->steps : per_epoch * t->epochs;
    TF_INFO("train %s: BERT d %d, %d layer%s, %lld parameters; %lld training and %lld held-out "
            "sequences of %d tokens; batch %d, %lld step%s (%.2f epochs)",
            t->name, cfg.d, cfg.layers, cfg.layers == 1 ? "" : "s", (long long)model->num_params,
            (long long)d.train->count, (long long)d.heldout->count, cfg.seq_len, t->batch_size,
            (long long)steps, steps == 1 ? "" : "s", (double)steps / (double)per_epoch);

    /* Step 2: data-parallel AdamW on masked training sequences. */
    bert_train_options opt = {.s = runner_train_schedule(t, job, steps, checkpoint),
                              .mask_prob = t->data.text.mask_prob};
    st = train_mlm(comm, model, d.train, &opt, &seconds);

    /* Step 3: held-out metrics, then the model file. */
    if (st == TF_OK) st = evaluate(comm, model, &d, &eval);
    if (st == TF_OK)
        st = bert_unigram_loss(d.train, d.heldout, cfg.vocab, t->data.text.mask_prob,
                               t->data.text.eval_seed, &unigram);
    if (st != TF_OK) goto done;
    TF_INFO("train %s: held-out MLM loss %.4f, perplexity %.2f, masked-token accuracy %.2f %% "
            "on %lld tokens (unigram loss %.4f) after %.1f s, %.0f seq/s",
            t->name, eval.loss, eval.perplexity, 100 * eval.accuracy, (long long)eval.tokens,
            unigram, seconds, seconds > 0 ? (double)steps * t->batch_size / seconds : 0.0);
    st = save_model(comm, model, t->output, vocab_path, t->overwrite, NULL, NULL);
    if (st == TF_OK) TF_INFO("train %s: wrote %s", t->name, t->output);
    if (st == TF_OK) st = ckpt_remove(comm, checkpoint);
done:
    bert_model_free(&model);
    bert_text_release(&d);
    return st;
}

/* ---- Checks before any compute (rank 0 only) ----------------------------------------- */

/* Index of the BERT train task before `index` that trains the vocabulary file path, or -1. */
static int vocab_writer_task(const job_file *job, int index, const char *path)
{
    char written[JOB_PATH_MAX + 8];
    for (int k = index - 1; k >= 0; k--) {
        const job_train *t = &job->tasks[k].train;
        if (job->tasks[k].kind != JOB_TASK_TRAIN || t->arch != JOB_ARCH_BERT || t->vocab[0])
            continue;
        snprintf(written, sizeof written, "%s.vocab", t->output);
        if (strcmp(written, path) == 0) return k;
    }
    return -1;
}

tf_status runner_check_bert_train(const job_file *job, const job_train *t, int index, int ranks,
                                  int warn)
{
    bert_config cfg = t->bert;
    corpus *c = NULL;
    uint8_t *is_heldout = NULL;
    tok_vocab *vocab = NULL;
    if (cfg.vocab == 0) cfg.vocab = TOK_DEFAULT_VOCAB; /* replaced by the file's size */
    tf_status st = bert_config_validate(&cfg);
    if (st != TF_OK) return tf_error_set(st, "tasks[%d].model: %s", index, tf_error_get());
    st = load_corpus(&t->data.text, &c, &is_heldout);
    if (st != TF_OK) return tf_error_set(st, "tasks[%d].data: %s", index, tf_error_get());
    corpus_free(&c);
    free(is_heldout);
    const int writer = t->vocab[0] ? vocab_writer_task(job, index, t->vocab) : -1;
    if (writer >= 0) {
        const bert_config *w = &job->tasks[writer].train.bert;
        if (t->bert.vocab != 0 && t->bert.vocab != w->vocab)
            return tf_error_set(TF_ERR_ARG,
                                "tasks[%d].model.vocab = %d but tasks[%d] trains %s with at most "
                                "%d tokens; remove model.vocab",
                                index, t->bert.vocab, writer, t->vocab, w->vocab);
    } else if (t->vocab[0]) {
        st = tok_vocab_load(t->vocab, &vocab);
        if (st != TF_OK) return tf_error_set(st, "tasks[%d].vocab: %s", index, tf_error_get());
        int size = vocab->size;
        tok_vocab_free(&vocab);
        if (t->bert.vocab != 0 && t->bert.vocab != size)
            return tf_error_set(TF_ERR_ARG,
                                "tasks[%d].model.vocab = %d but the vocabulary file %s has %d "
                                "tokens; remove model.vocab or make them equal",
                                index, t->bert.vocab, t->vocab, size);
    } else {
        char path[JOB_PATH_MAX + 8];
        snprintf(path, sizeof path, "%s.vocab", t->output);
        if (!t->overwrite && !job->resume && runner_file_exists(path))
            return tf_error_set(TF_ERR_EXISTS,
                                "tasks[%d]: the vocabulary output %s exists; set \"overwrite\": "
                                "true, remove the file, or pass it as \"vocab\" to reuse it",
                                index, path);
    }
    if (warn && t->batch_size < ranks)
        TF_WARN("tasks[%d].batch_size = %d is smaller than the %d ranks, so %d %s idle "
                "in each step",
                index, t->batch_size, ranks, ranks - t->batch_size,
                ranks - t->batch_size == 1 ? "rank stays" : "ranks stay");
    return TF_OK;
}

/* Reads the architecture and configuration attributes of a model file on this rank alone.
 * Returns TF_OK with *is_bert 0 for another architecture. */
static tf_status read_bert_header(const char *path, int *is_bert, bert_config *cfg)
{
    h5f_file *h5 = NULL;
    char arch[32] = "";
    int64_t v[6] = {0};
    static const char *const names[6] = {"vocab", "seq_len", "d", "layers", "heads", "mlp"};
    *is_bert = 0;
    tf_status st = h5f_open(MPI_COMM_SELF, path, &h5);
    if (st != TF_OK) return st;
    st = h5f_get_attr_string(h5, "/", "architecture", arch, sizeof arch);
    if (st == TF_OK && strcmp(arch, "bert") == 0) {
        *is_bert = 1;
        for (int i = 0; st == TF_OK && i < 6; i++) st = h5f_get_attr_int(h5, "/", names[i], &v[i]);
        if (st == TF_OK) st = h5f_get_attr_double(h5, "/", "ln_eps", &cfg->ln_eps);
        int *fields[6] = {&cfg->vocab,  &cfg->seq_len, &cfg->d,
                          &cfg->layers, &cfg->heads,   &cfg->mlp};
        for (int i = 0; i < 6; i++) *fields[i] = (int)v[i];
    }
    h5f_close(&h5);
    return st;
}

/* Index of the train task before `index` that writes path, or -1. */
static int writer_task(const job_file *job, int index, const char *path)
{
    for (int k = index - 1; k >= 0; k--)
        if (job->tasks[k].kind == JOB_TASK_TRAIN && strcmp(job->tasks[k].train.output, path) == 0)
            return k;
    return -1;
}

int runner_parent_is_bert(const job_file *job, const job_fuse *f, int index, int p)
{
    int k = writer_task(job, index, f->parents[p]);
    if (k >= 0) return job->tasks[k].train.arch == JOB_ARCH_BERT;
    int is_bert = 0;
    bert_config cfg;
    if (read_bert_header(f->parents[p], &is_bert, &cfg) != TF_OK) return 0;
    return is_bert;
}

/* Rejects method options that have no meaning for BERT parents. */
static tf_status check_bert_method(const job_method *m, int index, int i)
{
    if (m->kind != JOB_METHOD_OT) return TF_OK;
    if (m->ot.tokens != FUSE_TOKENS_ALL)
        return tf_error_set(TF_ERR_ARG,
                            "tasks[%d].methods[%d] (%s): \"tokens\" other than \"all\" selects "
                            "ViT patches (\"cls\", \"window\"); BERT fusion uses every real "
                            "token, so remove the key",
                            index, i, m->name);
    if (m->ot.cost != FUSE_COST_ACTIVATION)
        return tf_error_set(TF_ERR_ARG,
                            "tasks[%d].methods[%d] (%s): BERT fusion supports \"cost\": "
                            "\"activation\" only; remove the key",
                            index, i, m->name);
    if (m->ot.repair == FUSE_REPAIR_STREAM)
        return tf_error_set(TF_ERR_ARG,
                            "tasks[%d].methods[%d] (%s): \"repair\": \"stream\" is "
                            "implemented for ViT models only; use \"mlp\" or \"all\" for BERT "
                            "parents",
                            index, i, m->name);
    return TF_OK;
}

/* Configuration of each parent: the model of an earlier BERT train task that writes it, or
 * the attributes of the file. Rejects parents that are not BERT models. */
static tf_status parent_configs(const job_file *job, const job_fuse *f, int index,
                                bert_config *cfgs)
{
    for (int p = 0; p < f->n_parents; p++) {
        int k = writer_task(job, index, f->parents[p]), is_bert = 1;
        if (k >= 0 && job->tasks[k].train.arch == JOB_ARCH_BERT) {
            cfgs[p] = job->tasks[k].train.bert;
            continue;
        }
        tf_status st = k < 0 ? read_bert_header(f->parents[p], &is_bert, &cfgs[p]) : TF_OK;
        if (st != TF_OK)
            return tf_error_set(st, "tasks[%d].parents[%d]: %s", index, p, tf_error_get());
        if (k >= 0 || !is_bert)
            return tf_error_set(TF_ERR_ARG,
                                "tasks[%d].parents[%d] (%s) is not a BERT model but parents[0] "
                                "is; fused parents must share one architecture",
                                index, p, f->parents[p]);
    }
    return TF_OK;
}

tf_status runner_check_bert_fuse(const job_file *job, const job_fuse *f, int index, int ranks,
                                 int warn)
{
    bert_config cfgs[JOB_MAX_PARENTS];
    if (!f->data.has_text)
        return tf_error_set(TF_ERR_ARG,
                            "tasks[%d].data must name a verse corpus (\"corpus\") because the "
                            "parents are BERT models",
                            index);
    tf_status st = parent_configs(job, f, index, cfgs);
    if (st != TF_OK) return st;
    const bert_config *a = &cfgs[f->anchor];
    for (int p = 0; p < f->n_parents; p++) {
        const bert_config *c = &cfgs[p];
        if ((c->vocab && a->vocab && c->vocab != a->vocab) || c->seq_len != a->seq_len ||
            c->layers != a->layers || c->heads != a->heads)
            return tf_error_set(TF_ERR_ARG,
                                "tasks[%d].parents[%d] has vocab %d, seq_len %d, %d layers, %d "
                                "heads but the anchor has %d, %d, %d, %d; fused BERT parents "
                                "must agree in all four",
                                index, p, c->vocab, c->seq_len, c->layers, c->heads, a->vocab,
                                a->seq_len, a->layers, a->heads);
        for (int m = 0; m < f->n_methods; m++) {
            const job_method *jm = &f->methods[m];
            if (jm->kind == JOB_METHOD_OT && jm->ot.residual == FUSE_RESIDUAL_IDENTITY &&
                c->d != a->d)
                return tf_error_set(TF_ERR_ARG,
                                    "tasks[%d].methods[%d] (%s): residual \"identity\" needs "
                                    "equal widths, but parents[%d] has d = %d and the anchor "
                                    "d = %d",
                                    index, m, jm->name, p, c->d, a->d);
            if (f->methods[m].kind == JOB_METHOD_VANILLA && (c->d != a->d || c->mlp != a->mlp))
                return tf_error_set(TF_ERR_ARG,
                                    "tasks[%d].methods[%d] (%s): vanilla averaging needs parents "
                                    "of equal shapes, but parents[%d] has d = %d, mlp = %d and "
                                    "the anchor d = %d, mlp = %d; use \"method\": \"ot\"",
                                    index, m, f->methods[m].name, p, c->d, c->mlp, a->d, a->mlp);
        }
    }
    for (int m = 0; m < f->n_methods; m++)
        if ((st = check_bert_method(&f->methods[m], index, m)) != TF_OK) return st;

    corpus *c = NULL;
    uint8_t *is_heldout = NULL;
    st = load_corpus(&f->data.text, &c, &is_heldout);
    corpus_free(&c);
    free(is_heldout);
    if (st != TF_OK) return tf_error_set(st, "tasks[%d].data: %s", index, tf_error_get());
    if (warn && f->finetune.steps > 0 && f->finetune.batch_size < ranks)
        TF_WARN("tasks[%d].finetune.batch_size = %d is smaller than the %d ranks, so some ranks "
                "stay idle in each step",
                index, f->finetune.batch_size, ranks);
    return TF_OK;
}

/* ---- Fuse task ----------------------------------------------------------------------- */

typedef struct {
    char name[JOB_NAME_MAX];
    bert_eval_result one_shot, finetuned;
    int has_finetuned;
    double seconds;
    fuse_timings timings; /* stages of the one-shot fusion on rank 0 */
    int built;            /* 1: fused in this run, 0: loaded from its file (resume) */
} bert_method_result;

int runner_fuse_is_bert(MPI_Comm comm, const job_fuse *f)
{
    int rank, is_bert = 0;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    if (rank == 0) {
        bert_config cfg;
        if (read_bert_header(f->parents[0], &is_bert, &cfg) != TF_OK) is_bert = 0;
    }
    TF_MPI_CHECK(MPI_Bcast(&is_bert, 1, MPI_INT, 0, comm));
    return is_bert;
}

/* Loads the parents and the vocabulary they share: every parent's vocab_file must hold
 * the same tokens in the same order, since fusion matches embedding rows by token id. */
static tf_status load_parents(MPI_Comm comm, const job_fuse *f, bert_model **parents, bert_text *d)
{
    char path[JOB_PATH_MAX];
    tf_status st = TF_OK;
    for (int p = 0; st == TF_OK && p < f->n_parents; p++) {
        tok_vocab *vocab = NULL;
        st = bert_model_load(comm, f->parents[p], &parents[p]);
        if (st == TF_OK) st = read_vocab_attr(comm, f->parents[p], path, sizeof path);
        if (st == TF_OK) st = tok_vocab_load(path, p == 0 ? &d->vocab : &vocab);
        if (st != TF_OK) {
            tf_error_set(st, "fuse task '%s', parents[%d]: %s", f->name, p, tf_error_get());
            break;
        }
        const tok_vocab *own = p == 0 ? d->vocab : vocab;
        int same = own->size == d->vocab->size && own->size == parents[p]->cfg.vocab;
        for (int i = 0; same && i < own->size; i++)
            same = strcmp(own->tokens[i], d->vocab->tokens[i]) == 0;
        tok_vocab_free(&vocab);
        if (!same)
            st = tf_error_set(TF_ERR_ARG,
                              "parent %d (%s) uses the vocabulary %s, which differs from "
                              "parent 0's or from its model's vocab size; train all parents "
                              "with one vocabulary (\"vocab\" in the train task)",
                              p, f->parents[p], path);
    }
    return st;
}

/* Draws calib_samples distinct training sequences with the calibration seed, the same on
 * every rank: ids (n, T) and lengths (n), freed by the caller. */
static tf_status calibration_sequences(const job_fuse *f, const text_seqs *train, int **ids_out,
                                       int **lengths_out)
{
    const int64_t n = f->calib_samples, T = train->seq_len;
    if (n > train->count)
        return tf_error_set(TF_ERR_ARG,
                            "calibration_samples = %lld exceeds the %lld training sequences; "
                            "lower it",
                            (long long)n, (long long)train->count);
    int64_t *perm = tf_malloc((size_t)train->count * sizeof(int64_t));
    int *ids = tf_malloc((size_t)(n * T) * sizeof(int));
    int *lengths = tf_malloc((size_t)n * sizeof(int));
    if (!perm || !ids || !lengths) {
        free(perm);
        free(ids);
        free(lengths);
        return TF_ERR_NOMEM;
    }
    tf_rng rng;
    tf_rng_seed(&rng, f->calib_seed ^ 0x63616c6962ULL);
    for (int64_t i = 0; i < train->count; i++) perm[i] = i;
    tf_rng_shuffle(&rng, perm, train->count);
    for (int64_t i = 0; i < n; i++) {
        memcpy(ids + i * T, train->ids + perm[i] * T, (size_t)T * sizeof(int));
        lengths[i] = train->lengths[perm[i]];
    }
    free(perm);
    *ids_out = ids;
    *lengths_out = lengths;
    return TF_OK;
}

/* One fused model with what went into it. */
typedef struct {
    bert_model *fused;
    bert_model **aligned; /* (n_parents) parents in the anchor's basis; NULL for vanilla */
    fuse_maps **maps;     /* (n_parents) maps, NULL for the anchor; NULL for vanilla */
} bert_fusion;

static void bert_fusion_release(bert_fusion *fu, int n)
{
    bert_model_free(&fu->fused);
    for (int p = 0; fu->aligned && p < n; p++) bert_model_free(&fu->aligned[p]);
    free(fu->aligned);
    for (int p = 0; fu->maps && p < n; p++) fuse_maps_free(&fu->maps[p]);
    free(fu->maps);
    memset(fu, 0, sizeof *fu);
}

/* Builds one fused model: the weighted average of the parents (vanilla) or of the parents
 * aligned to the anchor with OT maps computed on the calibration sequences. Collective. */
typedef struct {
    bert_model **parents;
    bert_fusion *fu;
} bert_align_ctx;

static tf_status bert_align_one(int p, void *ctx)
{
    bert_align_ctx *c = ctx;
    return fuse_bert_align_parent(c->parents[p], c->fu->maps[p], c->fu->aligned[p]);
}

static tf_status build_fusion(MPI_Comm comm, const job_fuse *f, const job_method *method,
                              bert_model **parents, const int *calib_ids, const int *calib_lengths,
                              bert_fusion *fu, fuse_timings *timings)
{
    const int n = f->n_parents;
    tf_status st = bert_model_create(&parents[f->anchor]->cfg, &fu->fused);
    if (st != TF_OK) return st;
    if (method->kind == JOB_METHOD_VANILLA) {
        for (int p = 0; p < n; p++)
            if (parents[p]->num_params != fu->fused->num_params)
                return tf_error_set(TF_ERR_ARG,
                                    "vanilla averaging needs parents of equal shapes; parent %d "
                                    "has %lld parameters and the anchor %lld",
                                    p, (long long)parents[p]->num_params,
                                    (long long)fu->fused->num_params);
        return fuse_bert_average(parents, method->weights, n, fu->fused);
    }
    fuse_options opt = method->ot;
    opt.timings = timings;
    st = fuse_bert_compute_maps(comm, parents, n, f->anchor, calib_ids, calib_lengths,
                                f->calib_samples, &opt, &fu->maps);
    if (st != TF_OK) return st;

    /* Each rank aligns its share of the parents and broadcasts them. */
    double t0 = tf_seconds();
    fu->aligned = tf_calloc((size_t)n, sizeof *fu->aligned);
    float **params = tf_calloc((size_t)n, sizeof *params);
    if (!fu->aligned || !params) st = TF_ERR_NOMEM;
    for (int p = 0; st == TF_OK && p < n; p++) {
        st = bert_model_create(&parents[f->anchor]->cfg, &fu->aligned[p]);
        if (st == TF_OK) params[p] = fu->aligned[p]->params;
    }
    st = runner_agree(comm, st, "allocating the aligned parents");
    bert_align_ctx ctx = {parents, fu};
    if (st == TF_OK) {
        bert_model_copy(fu->aligned[f->anchor], parents[f->anchor]);
        st = fuse_align_shared(comm, n, f->anchor, params, fu->fused->num_params, bert_align_one,
                               &ctx);
    }
    free(params);
    if (st == TF_OK) st = fuse_bert_average(fu->aligned, method->weights, n, fu->fused);
    double t1 = tf_seconds();
    if (st == TF_OK)
        st = fuse_bert_repair(comm, fu->fused, fu->aligned, method->weights, n, calib_ids,
                              calib_lengths, f->calib_samples, method->ot.repair);
    timings->alignment += t1 - t0;
    timings->repair += tf_seconds() - t1;
    return st;
}

static tf_status write_model(const void *model, h5f_file *h5, const char *group)
{
    return bert_model_write(model, h5, group);
}

static tf_status write_method_file(MPI_Comm comm, const job_fuse *f, const job_method *method,
                                   bert_model **parents, const bert_fusion *fu,
                                   const char *vocab_path)
{
    char path[JOB_PATH_MAX + 80];
    snprintf(path, sizeof path, "%s/%s.h5", f->output_dir, method->name);
    h5f_file *h5 = NULL;
    tf_status st = h5f_create(comm, path, f->overwrite, &h5);
    if (st != TF_OK) return st;
    int d[JOB_MAX_PARENTS], mlp[JOB_MAX_PARENTS];
    for (int p = 0; p < f->n_parents; p++) {
        d[p] = parents[p]->cfg.d;
        mlp[p] = parents[p]->cfg.mlp;
    }
    st = bert_model_write(fu->fused, h5, "/");
    if (st == TF_OK) st = h5f_set_attr_string(h5, "/", "vocab_file", vocab_path);
    if (st == TF_OK)
        st = runner_write_fusion_parts(h5, f, method, write_model, (const void *const *)fu->aligned,
                                       fu->maps, d, mlp);
    return runner_finish_method_file(&h5, st, f, path);
}

/* Finetunes model; checkpoint (NULL: none) is the checkpoint file of this finetune. */
static tf_status finetune(MPI_Comm comm, const job_fuse *f, const job_file *job,
                          const text_seqs *train, bert_model *model, bert_model *const *parents,
                          const char *label, const char *checkpoint)
{
    bert_train_options opt = {.s = runner_finetune_schedule(f, job, label, checkpoint),
                              .mask_prob = f->data.text.mask_prob,
                              .teachers = parents};
    return train_mlm(comm, model, train, &opt, NULL);
}

static void print_table(const job_fuse *f, const bert_eval_result *parent_eval,
                        const bert_method_result *results)
{
    char head[64];
    snprintf(head, sizeof head, "after finetune (%lld step%s)", (long long)f->finetune.steps,
             f->finetune.steps == 1 ? "" : "s");
    TF_INFO("%s", "");
    TF_INFO("held-out masked-token loss (perplexity, accuracy)");
    if (f->finetune.steps > 0)
        TF_INFO("%-32s %-28s %s", "model", "one-shot", head);
    else
        TF_INFO("%-32s %s", "model", "one-shot");
    for (int p = 0; p < f->n_parents; p++) {
        char label[JOB_PATH_MAX + 32];
        const char *base = strrchr(f->parents[p], '/');
        base = base ? base + 1 : f->parents[p];
        snprintf(label, sizeof label, "parent %d %.16s%s", p, base,
                 p == f->anchor ? " (anchor)" : "");
        TF_INFO("%-32s %.4f (%8.2f, %5.2f %%)", label, parent_eval[p].loss,
                parent_eval[p].perplexity, 100 * parent_eval[p].accuracy);
    }
    const bert_eval_result *ens = &parent_eval[f->n_parents];
    TF_INFO("%-32s %.4f (%8.2f, %5.2f %%)", "ensemble of the parents", ens->loss, ens->perplexity,
            100 * ens->accuracy);
    for (int m = 0; m < f->n_methods; m++) {
        const bert_method_result *r = &results[m];
        if (r->has_finetuned)
            TF_INFO("%-32s %.4f (%8.2f, %5.2f %%)  %.4f (%8.2f, %5.2f %%)", r->name,
                    r->one_shot.loss, r->one_shot.perplexity, 100 * r->one_shot.accuracy,
                    r->finetuned.loss, r->finetuned.perplexity, 100 * r->finetuned.accuracy);
        else
            TF_INFO("%-32s %.4f (%8.2f, %5.2f %%)", r->name, r->one_shot.loss,
                    r->one_shot.perplexity, 100 * r->one_shot.accuracy);
    }
    TF_INFO("%s", "");
}

static void add_eval(cJSON *item, const char *prefix, const bert_eval_result *e)
{
    char key[64];
    snprintf(key, sizeof key, "%sloss", prefix);
    cJSON_AddNumberToObject(item, key, e->loss);
    snprintf(key, sizeof key, "%sperplexity", prefix);
    cJSON_AddNumberToObject(item, key, e->perplexity);
    snprintf(key, sizeof key, "%saccuracy", prefix);
    cJSON_AddNumberToObject(item, key, e->accuracy);
}

/* Builds the JSON report (docs/FORMAT.md). Returns NULL when out of memory. */
static cJSON *report_json(const job_fuse *f, const bert_eval_result *parent_eval,
                          const bert_method_result *results, double unigram)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "architecture", "bert");
    cJSON_AddStringToObject(root, "corpus", f->data.text.corpus);
    cJSON_AddNumberToObject(root, "eval_seed", (double)f->data.text.eval_seed);
    cJSON_AddNumberToObject(root, "eval_tokens", (double)parent_eval[0].tokens);
    cJSON_AddNumberToObject(root, "unigram_loss", unigram);
    cJSON *parents = cJSON_AddArrayToObject(root, "parents");
    for (int p = 0; p < f->n_parents; p++) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "file", f->parents[p]);
        cJSON_AddNumberToObject(item, "weight", f->weights[p]);
        cJSON_AddBoolToObject(item, "anchor", p == f->anchor);
        add_eval(item, "heldout_", &parent_eval[p]);
        cJSON_AddItemToArray(parents, item);
    }
    cJSON *ens = cJSON_AddObjectToObject(root, "ensemble");
    if (ens) add_eval(ens, "heldout_", &parent_eval[f->n_parents]);
    runner_add_fuse_settings(root, f);
    cJSON *methods = cJSON_AddArrayToObject(root, "methods");
    for (int m = 0; m < f->n_methods; m++) {
        const job_method *jm = &f->methods[m];
        cJSON *item = runner_method_item(jm);
        add_eval(item, "one_shot_", &results[m].one_shot);
        if (results[m].has_finetuned) add_eval(item, "finetuned_", &results[m].finetuned);
        runner_finish_method_item(item, jm, results[m].seconds, results[m].built,
                                  &results[m].timings);
        cJSON_AddItemToArray(methods, item);
    }
    return root;
}

static tf_status write_report(const job_fuse *f, const bert_eval_result *parent_eval,
                              const bert_method_result *results, double unigram)
{
    cJSON *root = report_json(f, parent_eval, results, unigram);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return tf_error_set(TF_ERR_NOMEM, "cannot build report %s", f->report);
    tf_status st = runner_write_report(f, text);
    free(text);
    return st;
}

/* Builds the fusion of one method, or with resume loads it from its file, then evaluates
 * and saves it. On success fu->fused is the one-shot model. Collective. */
static tf_status one_shot(MPI_Comm comm, const job_fuse *f, const job_file *job,
                          const job_method *method, bert_model **parents, const bert_text *d,
                          const int *calib_ids, const int *calib_lengths, const char *vocab_path,
                          bert_fusion *fu, bert_method_result *r)
{
    char path[JOB_PATH_MAX + 80];
    snprintf(path, sizeof path, "%s/%s.h5", f->output_dir, method->name);
    const int reuse = job->resume && f->output_dir[0] && ckpt_exists(comm, path);
    double t0 = tf_seconds();
    tf_status st;
    if (reuse) {
        TF_INFO("fuse %s: %s: loading %s (resume)", f->name, method->name, path);
        st = runner_check_provenance(comm, path, f, method, 0);
        if (st == TF_OK) st = bert_model_load(comm, path, &fu->fused);
    } else {
        st = build_fusion(comm, f, method, parents, calib_ids, calib_lengths, fu, &r->timings);
        r->built = st == TF_OK;
    }
    r->seconds = tf_seconds() - t0;
    if (st == TF_OK) st = evaluate(comm, fu->fused, d, &r->one_shot);
    if (st == TF_OK)
        TF_INFO("fuse %s: %s one-shot: held-out MLM loss %.4f, accuracy %.2f %% (%s in %.2f s)",
                f->name, method->name, r->one_shot.loss, 100 * r->one_shot.accuracy,
                r->built ? "built" : "loaded", r->seconds);
    if (st == TF_OK && f->output_dir[0] && !reuse) {
        double t_write = tf_seconds();
        st = write_method_file(comm, f, method, parents, fu, vocab_path);
        r->timings.writing = tf_seconds() - t_write;
    }
    return st;
}

/* Finetunes the one-shot model in fu->fused, or with resume loads the finetuned file, then
 * evaluates it and saves it as <output_dir>/<method>-finetuned.h5. Collective. */
static tf_status finetune_method(MPI_Comm comm, const job_fuse *f, const job_file *job,
                                 const job_method *method, bert_model **parents, const bert_text *d,
                                 const char *vocab_path, bert_fusion *fu, bert_method_result *r)
{
    char tuned[JOB_PATH_MAX + 96], checkpoint[JOB_PATH_MAX + 112];
    snprintf(tuned, sizeof tuned, "%s/%s-finetuned.h5", f->output_dir, method->name);
    snprintf(checkpoint, sizeof checkpoint, "%s.ckpt.h5", tuned);
    const int have_dir = f->output_dir[0] != '\0';
    tf_status st;
    if (job->resume && have_dir && ckpt_exists(comm, tuned)) {
        bert_model_free(&fu->fused);
        TF_INFO("fuse %s: %s: loading %s (resume)", f->name, method->name, tuned);
        st = runner_check_provenance(comm, tuned, f, method, 1);
        if (st == TF_OK) st = bert_model_load(comm, tuned, &fu->fused);
    } else {
        st = finetune(comm, f, job, d->train, fu->fused, parents, method->name,
                      have_dir ? checkpoint : NULL);
        if (st == TF_OK && have_dir)
            st = save_model(comm, fu->fused, tuned, vocab_path, f->overwrite || job->resume, f,
                            method);
        if (st == TF_OK && have_dir) {
            TF_INFO("fuse %s: wrote %s", f->name, tuned);
            st = ckpt_remove(comm, checkpoint);
        }
    }
    if (st == TF_OK) st = evaluate(comm, fu->fused, d, &r->finetuned);
    r->has_finetuned = st == TF_OK;
    if (st == TF_OK)
        TF_INFO("fuse %s: %s after finetune: held-out MLM loss %.4f, accuracy %.2f %%", f->name,
                method->name, r->finetuned.loss, 100 * r->finetuned.accuracy);
    return st;
}

/* Builds, evaluates, saves and finetunes the fusion of one method. Collective. */
static tf_status run_method(MPI_Comm comm, const job_fuse *f, const job_file *job,
                            const job_method *method, bert_model **parents, const bert_text *d,
                            const int *calib_ids, const int *calib_lengths, const char *vocab_path,
                            bert_method_result *r)
{
    bert_fusion fu = {0};
    snprintf(r->name, sizeof r->name, "%s", method->name);
    tf_status st =
        one_shot(comm, f, job, method, parents, d, calib_ids, calib_lengths, vocab_path, &fu, r);
    if (st == TF_OK && f->finetune.steps > 0)
        st = finetune_method(comm, f, job, method, parents, d, vocab_path, &fu, r);
    bert_fusion_release(&fu, f->n_parents);
    if (st != TF_OK)
        st = tf_error_set(st, "fuse %s, method %s: %s", f->name, method->name, tf_error_get());
    return st;
}

tf_status runner_run_fuse_bert(MPI_Comm comm, const job_fuse *f, const job_file *job)
{
    int rank;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    const int n = f->n_parents;
    bert_text d = {0};
    bert_model **parents = tf_calloc((size_t)n, sizeof *parents);
    /* parent_eval[n] contains the ensemble of the parents. */
    bert_eval_result *parent_eval = tf_calloc((size_t)n + 1, sizeof *parent_eval);
    bert_method_result *results = tf_calloc((size_t)f->n_methods, sizeof *results);
    int *calib_ids = NULL, *calib_lengths = NULL;
    char vocab_path[JOB_PATH_MAX] = "";
    double unigram = 0;
    tf_status st = parents && parent_eval && results ? TF_OK : TF_ERR_NOMEM;

    /* Step 1: parents, their shared vocabulary, the corpus and calibration sequences. */
    if (st == TF_OK && !f->data.has_text)
        st = tf_error_set(TF_ERR_ARG,
                          "fuse %s: the parents are BERT models, so data must name "
                          "a verse corpus (\"corpus\")",
                          f->name);
    if (st == TF_OK) st = load_parents(comm, f, parents, &d);
    if (st == TF_OK) st = read_vocab_attr(comm, f->parents[0], vocab_path, sizeof vocab_path);
    if (st == TF_OK) st = load_corpus(&f->data.text, &d.corpus, &d.is_heldout);
    if (st == TF_OK) st = build_sequences(&d, &f->data.text, parents[f->anchor]->cfg.seq_len);
    if (st == TF_OK) st = calibration_sequences(f, d.train, &calib_ids, &calib_lengths);
    if (st == TF_OK)
        st = bert_unigram_loss(d.train, d.heldout, d.vocab->size, f->data.text.mask_prob,
                               f->data.text.eval_seed, &unigram);

    /* Step 2: the parents' own held-out metrics. */
    for (int p = 0; st == TF_OK && p < n; p++) {
        st = evaluate(comm, parents[p], &d, &parent_eval[p]);
        if (st == TF_OK)
            TF_INFO("fuse %s: parent %d (%s): held-out MLM loss %.4f, accuracy %.2f %%", f->name, p,
                    f->parents[p], parent_eval[p].loss, 100 * parent_eval[p].accuracy);
    }
    if (st == TF_OK) st = evaluate_ensemble(comm, parents, f->weights, n, &d, &parent_eval[n]);
    if (st == TF_OK)
        TF_INFO("fuse %s: ensemble of the parents (predictions averaged with the task's "
                "weights): held-out MLM loss %.4f, accuracy %.2f %%",
                f->name, parent_eval[n].loss, 100 * parent_eval[n].accuracy);

    /* Step 3: each method, one shot and after the optional finetune. */
    for (int m = 0; st == TF_OK && m < f->n_methods; m++)
        st = run_method(comm, f, job, &f->methods[m], parents, &d, calib_ids, calib_lengths,
                        vocab_path, &results[m]);

    /* Step 4: the table and the report. */
    if (st == TF_OK && rank == 0) print_table(f, parent_eval, results);
    if (st == TF_OK && f->report[0] && rank == 0)
        st = write_report(f, parent_eval, results, unigram);
    if (f->report[0]) st = share_root_status(comm, rank, st);

    for (int p = 0; parents && p < n; p++) bert_model_free(&parents[p]);
    free(parents);
    free(parent_eval);
    free(results);
    free(calib_ids);
    free(calib_lengths);
    bert_text_release(&d);
    return st;
}
