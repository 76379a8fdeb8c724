/* Data-parallel training: every rank holds the whole model, computes gradients on its
 * share of each global batch, and one MPI_Allreduce over the single gradient buffer makes
 * all ranks take the same AdamW step. */
#include "tfuse/train.h"
#include "tfuse/checkpoint.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void tf_images_to_float(const tf_image_set *set, const int64_t *indices, int count, float *out,
                        int *labels)
{
    const int64_t pixels = (int64_t)set->rows * set->cols;
    for (int i = 0; i < count; i++) {
        const uint8_t *src = set->pixels + indices[i] * pixels;
        float *dst = out + (int64_t)i * pixels;
        for (int64_t k = 0; k < pixels; k++)
            dst[k] = ((float)src[k] / 255.0f - TF_FASHION_MEAN) / TF_FASHION_STD;
        if (labels) labels[i] = set->labels[indices[i]];
    }
}

static tf_status check_labels(const tf_image_set *set, const vit_model *model)
{
    const vit_config *c = &model->cfg;
    if (set->rows != c->image_size || set->cols != c->image_size || c->channels != 1)
        return tf_error_set(TF_ERR_ARG, "images are %d x %d with 1 channel, but the model "
                            "expects %d x %d with %d channels", set->rows, set->cols,
                            c->image_size, c->image_size, c->channels);
    for (int64_t i = 0; i < set->count; i++)
        if (set->labels[i] >= c->classes)
            return tf_error_set(TF_ERR_ARG, "label %d of image %lld is not below the model's "
                                "class count %d", set->labels[i], (long long)i, c->classes);
    return TF_OK;
}

/* Targets for distillation: (1 - distill) onehot(y) + distill * sum_t w_t probs_t. */
static tf_status distill_targets(const train_options *opt, vit_acts **teacher_acts,
                                 const float *x, const int *y, int count, int classes,
                                 float *targets)
{
    for (int64_t k = 0; k < (int64_t)count * classes; k++) targets[k] = 0;
    for (int t = 0; t < opt->s.n_teachers; t++) {
        tf_status st = vit_forward(opt->teachers[t], teacher_acts[t], x, NULL, count, NULL);
        if (st != TF_OK) return st;
        const float *q = teacher_acts[t]->probs;
        for (int64_t k = 0; k < (int64_t)count * classes; k++)
            targets[k] += (float)(opt->s.distill * opt->s.teacher_weights[t]) * q[k];
    }
    for (int b = 0; b < count; b++)
        targets[(int64_t)b * classes + y[b]] += (float)(1 - opt->s.distill);
    return TF_OK;
}

int train_schedule_settings(const train_schedule *sch, const char *count_name, int64_t count,
                            ckpt_setting *s)
{
    const ckpt_setting list[] = {
        {"steps", 0, sch->steps, 0},
        {"batch_size", 0, sch->batch_size, 0},
        {"seed", 0, (int64_t)sch->seed, 0},
        {"warmup_steps", 0, sch->warmup_steps, 0},
        {count_name, 0, count, 0},
        {"teachers", 0, sch->distill > 0 ? sch->n_teachers : 0, 0},
        {"lr", 1, 0, sch->lr},
        {"min_lr", 1, 0, sch->min_lr},
        {"weight_decay", 1, 0, sch->weight_decay},
        {"beta1", 1, 0, sch->beta1},
        {"beta2", 1, 0, sch->beta2},
        {"eps", 1, 0, sch->eps},
        {"distill", 1, 0, sch->distill},
    };
    memcpy(s, list, sizeof list);
    return (int)(sizeof list / sizeof list[0]);
}

/* Settings a checkpoint of train_run must match; returns their count. */
static int checkpoint_settings(const train_options *opt, const vit_model *model,
                               int64_t train_count, ckpt_setting *s)
{
    const vit_config *c = &model->cfg;
    const int n = train_schedule_settings(&opt->s, "training_images", train_count, s);
    const ckpt_setting list[] = {
        {"image_size", 0, c->image_size, 0},
        {"channels", 0, c->channels, 0},
        {"patch", 0, c->patch, 0},
        {"d", 0, c->d, 0},
        {"layers", 0, c->layers, 0},
        {"heads", 0, c->heads, 0},
        {"mlp", 0, c->mlp, 0},
        {"classes", 0, c->classes, 0},
        {"ln_eps", 1, 0, c->ln_eps},
        {"num_params", 0, model->num_params, 0},
    };
    memcpy(s + n, list, sizeof list);
    return n + (int)(sizeof list / sizeof list[0]);
}

/* Writes state (loss_sum: this rank's share) to opt->s.checkpoint_path. Collective. */
static tf_status checkpoint_save(MPI_Comm comm, const train_options *opt, const vit_model *model,
                                 int64_t train_count, const ckpt_state *state)
{
    ckpt_setting settings[CKPT_MAX_SETTINGS];
    const int n = checkpoint_settings(opt, model, train_count, settings);
    return ckpt_save_training(comm, opt->s.checkpoint_path, "vit", opt->s.label, settings, n,
                              state);
}

/* Ends the step that leaves `state`: writes a checkpoint when one is due, and returns
 * TF_ERR_ARG when opt->s.stop_after requests a stop here. Collective. */
static tf_status end_step(MPI_Comm comm, const train_options *opt, const vit_model *model,
                          int64_t train_count, const ckpt_state *state)
{
    const int64_t done = state->step;
    if (opt->s.checkpoint_path && opt->s.checkpoint_every > 0 &&
        done % opt->s.checkpoint_every == 0) {
        tf_status st = checkpoint_save(comm, opt, model, train_count, state);
        if (st != TF_OK) return st;
    }
    if (opt->s.stop_after > 0 && done == opt->s.stop_after && done < opt->s.steps)
        return tf_error_set(TF_ERR_ARG, "%s: stopped after step %lld as stop_after requests",
                            opt->s.label, (long long)done);
    return TF_OK;
}

/* Loads opt->s.checkpoint_path into model and adam when opt->s.resume and the file exists.
 * Collective. */
static tf_status checkpoint_restore(MPI_Comm comm, const train_options *opt, vit_model *model,
                                    vit_adamw *adam, int64_t train_count, ckpt_state *state)
{
    ckpt_setting settings[CKPT_MAX_SETTINGS];
    const int n = checkpoint_settings(opt, model, train_count, settings);
    int found = 0;
    *state = (ckpt_state){.num_params = model->num_params,
                          .params = model->params,
                          .adam_m = adam->m,
                          .adam_v = adam->v};
    if (!opt->s.checkpoint_path || !opt->s.resume) return TF_OK;
    tf_status st = ckpt_resume_training(comm, opt->s.checkpoint_path, "vit", opt->s.label, settings,
                                        n, opt->s.steps, state, &found);
    if (st == TF_OK && found) adam->step = state->step;
    return st;
}

/* Fills perm with the shuffle of epoch `epoch`, seeded by (seed, epoch) alone, so that
 * every rank and a resumed run draw the same order. */
static void shuffle_epoch(int64_t *perm, int64_t count, uint64_t seed, int64_t epoch)
{
    tf_rng rng;
    tf_rng_seed(&rng, seed * 1000003u + (uint64_t)epoch);
    for (int64_t i = 0; i < count; i++) perm[i] = i;
    tf_rng_shuffle(&rng, perm, count);
}

tf_status train_run(MPI_Comm comm, vit_model *model, const tf_image_set *train,
                    const train_options *opt, train_result *result)
{
    int rank, size;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    tf_status st = check_labels(train, model);
    if (st != TF_OK) return st;
    const int global_batch = opt->s.batch_size;
    if (global_batch > train->count)
        return tf_error_set(TF_ERR_ARG, "batch size %d is larger than the %lld training images",
                            global_batch, (long long)train->count);
    const int local_first = (int)((int64_t)global_batch * rank / size);
    const int local_count = (int)((int64_t)global_batch * (rank + 1) / size) - local_first;
    const int64_t pixels = (int64_t)train->rows * train->cols;
    const int64_t per_epoch = train->count / global_batch;
    if (rank == 0 && opt->s.warmup_steps >= opt->s.steps)
        TF_WARN("%s: warmup_steps = %lld is not below the %lld training step%s, so the learning "
                "rate never reaches its peak %g; lower warmup_steps",
                opt->s.label ? opt->s.label : "training", (long long)opt->s.warmup_steps,
                (long long)opt->s.steps, opt->s.steps == 1 ? "" : "s", opt->s.lr);

    vit_acts *acts = NULL, **teacher_acts = NULL;
    vit_adamw *adam = NULL;
    float *targets = NULL;
    int64_t *perm = tf_malloc((size_t)train->count * sizeof(int64_t));
    float *x = tf_malloc((size_t)(local_count > 0 ? local_count : 1) * pixels * sizeof(float));
    int *y = tf_malloc((size_t)(local_count > 0 ? local_count : 1) * sizeof(int));
    float *grads = tf_malloc((size_t)model->num_params * sizeof(float));
    if (!perm || !x || !y || !grads) st = TF_ERR_NOMEM;
    if (st == TF_OK) st = vit_acts_create(&model->cfg, local_count > 0 ? local_count : 1, &acts);
    if (st == TF_OK)
        st = vit_adamw_create(model, opt->s.beta1, opt->s.beta2, opt->s.eps, opt->s.weight_decay,
                              &adam);
    const int distill = opt->s.distill > 0 && opt->s.n_teachers > 0;
    if (st == TF_OK && distill) {
        teacher_acts = tf_calloc((size_t)opt->s.n_teachers, sizeof *teacher_acts);
        if (!teacher_acts) st = TF_ERR_NOMEM;
        for (int t = 0; st == TF_OK && t < opt->s.n_teachers; t++)
            st = vit_acts_create(&opt->teachers[t]->cfg, local_count > 0 ? local_count : 1,
                                 &teacher_acts[t]);
        targets = tf_malloc((size_t)(local_count > 0 ? local_count : 1) *
                            model->cfg.classes * sizeof(float));
        if (st == TF_OK && !targets) st = TF_ERR_NOMEM;
    }

    ckpt_state saved = {0};
    if (st == TF_OK) st = checkpoint_restore(comm, opt, model, adam, train->count, &saved);
    double t_start = tf_seconds(), t_log = t_start, loss_sum = saved.loss_sum;
    double last_loss = saved.last_loss;
    int64_t loss_steps = saved.loss_steps, first_step = saved.step;
    int64_t timed_steps = 0; /* steps since t_log, which excludes restored ones */
    if (result) result->final_loss = last_loss;
    for (int64_t step = first_step; st == TF_OK && step < opt->s.steps; step++) {
        int64_t in_epoch = step % per_epoch;
        if (in_epoch == 0 || step == first_step)
            shuffle_epoch(perm, train->count, opt->s.seed, step / per_epoch);
        float loss = 0;
        if (local_count > 0) {
            tf_images_to_float(train, perm + in_epoch * global_batch + local_first, local_count,
                               x, y);
            st = vit_forward(model, acts, x, y, local_count, &loss);
            if (st == TF_OK && distill)
                st = distill_targets(opt, teacher_acts, x, y, local_count, model->cfg.classes,
                                     targets);
            if (st == TF_OK)
                st = distill ? vit_backward_soft(model, acts, targets, grads)
                             : vit_backward(model, acts, y, grads);
            if (st != TF_OK) break;
            float share = (float)local_count / (float)global_batch;
            for (int64_t k = 0; k < model->num_params; k++) grads[k] *= share;
        } else {
            memset(grads, 0, (size_t)model->num_params * sizeof(float));
        }
        TF_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, grads, (int)model->num_params, MPI_FLOAT,
                                   MPI_SUM, comm));
        double lr = tf_cosine_lr(step, opt->s.warmup_steps, opt->s.steps, opt->s.lr, opt->s.min_lr);
        vit_adamw_step(adam, model, grads, lr);
        loss_sum += (double)loss * local_count / global_batch;
        loss_steps++;
        timed_steps++;

        if ((step + 1) % opt->s.log_every == 0 || step + 1 == opt->s.steps) {
            double mean_loss = 0;
            TF_MPI_CHECK(MPI_Allreduce(&loss_sum, &mean_loss, 1, MPI_DOUBLE, MPI_SUM, comm));
            mean_loss /= (double)loss_steps;
            if (!isfinite(mean_loss)) {
                st = tf_error_set(TF_ERR_NUMERIC,
                                  "%s: training loss became %g at step %lld; "
                                  "lower the learning rate",
                                  opt->s.label, mean_loss, (long long)step + 1);
                break;
            }
            double now = tf_seconds();
            double rate = (double)(step + 1 - first_step) / (now - t_start);
            TF_INFO("%s: step %lld/%lld  epoch %.2f  loss %.4f  lr %.2e  %.0f img/s  "
                    "%.0f s left",
                    opt->s.label, (long long)step + 1, (long long)opt->s.steps,
                    (double)(step + 1) / (double)per_epoch, mean_loss, lr,
                    (double)timed_steps * global_batch / (now - t_log),
                    (double)(opt->s.steps - step - 1) / rate);
            t_log = now;
            timed_steps = 0;
            last_loss = mean_loss;
            if (result) result->final_loss = mean_loss;
            loss_sum = 0;
            loss_steps = 0;
        }
        if (st == TF_OK) {
            const ckpt_state state = {.num_params = model->num_params,
                                      .params = model->params,
                                      .adam_m = adam->m,
                                      .adam_v = adam->v,
                                      .step = step + 1,
                                      .loss_sum = loss_sum,
                                      .loss_steps = loss_steps,
                                      .last_loss = last_loss};
            st = end_step(comm, opt, model, train->count, &state);
        }
    }
    if (result && st == TF_OK) {
        result->seconds = tf_seconds() - t_start;
        result->first_step = first_step;
        result->images_per_second = result->seconds > 0 ? (double)(opt->s.steps - first_step) *
                                                              global_batch / result->seconds
                                                        : 0.0;
    }
    vit_acts_free(&acts);
    for (int t = 0; teacher_acts && t < opt->s.n_teachers; t++) vit_acts_free(&teacher_acts[t]);
    free(teacher_acts);
    free(targets);
    vit_adamw_free(&adam);
    free(perm);
    free(x);
    free(y);
    free(grads);
    return st;
}

/* Sums the local counts sums = {correct, loss sum} over comm and divides them by total.
 * Every rank joins the reduction even after a local failure (st), so none waits forever. */
static tf_status finish_eval(MPI_Comm comm, tf_status st, double sums[2], int64_t total,
                             double *accuracy, double *loss)
{
    double failed = st != TF_OK, any_failed = 0;
    TF_MPI_CHECK(MPI_Allreduce(&failed, &any_failed, 1, MPI_DOUBLE, MPI_MAX, comm));
    TF_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, comm));
    if (st != TF_OK) return st;
    if (any_failed) return tf_error_set(TF_ERR_MPI, "evaluation failed on another rank");
    *accuracy = sums[0] / (double)total;
    if (loss) *loss = sums[1] / (double)total;
    return TF_OK;
}

tf_status eval_accuracy(MPI_Comm comm, const vit_model *model, const tf_image_set *set,
                        int64_t limit, double *accuracy, double *loss)
{
    int rank, size;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    tf_status st = check_labels(set, model);
    if (st != TF_OK) return st;
    const int64_t total = limit > 0 && limit < set->count ? limit : set->count;
    const int64_t first = total * rank / size, last = total * (rank + 1) / size;
    const int batch = 250;
    const int64_t pixels = (int64_t)set->rows * set->cols;
    vit_acts *acts = NULL;
    float *x = tf_malloc((size_t)batch * pixels * sizeof(float));
    int *y = tf_malloc((size_t)batch * sizeof(int));
    int64_t idx[250];
    if (!x || !y) st = TF_ERR_NOMEM;
    if (st == TF_OK) st = vit_acts_create(&model->cfg, batch, &acts);
    double sums[2] = {0, 0}; /* correct, loss sum */
    for (int64_t start = first; st == TF_OK && start < last; start += batch) {
        int B = (int)(last - start < batch ? last - start : batch);
        for (int i = 0; i < B; i++) idx[i] = start + i;
        tf_images_to_float(set, idx, B, x, y);
        float batch_loss = 0;
        st = vit_forward(model, acts, x, y, B, &batch_loss);
        if (st != TF_OK) break;
        sums[0] += vit_count_correct(model, acts, y);
        sums[1] += (double)batch_loss * B;
    }
    vit_acts_free(&acts);
    free(x);
    free(y);
    return finish_eval(comm, st, sums, total, accuracy, loss);
}

/* Returns 1 when a and b have equal shapes, so that activation buffers sized for a fit b. */
static int same_shapes(const vit_config *a, const vit_config *b)
{
    return a->image_size == b->image_size && a->channels == b->channels && a->patch == b->patch &&
           a->d == b->d && a->layers == b->layers && a->heads == b->heads && a->mlp == b->mlp &&
           a->classes == b->classes;
}

tf_status eval_ensemble(MPI_Comm comm, vit_model *const *models, const double *weights, int n,
                        const tf_image_set *set, int64_t limit, double *accuracy, double *loss)
{
    int rank, size;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    if (n < 1) return tf_error_set(TF_ERR_ARG, "eval_ensemble: no models");
    tf_status st = TF_OK;
    for (int t = 0; st == TF_OK && t < n; t++) {
        st = check_labels(set, models[t]);
        if (st == TF_OK && (models[t]->cfg.classes != models[0]->cfg.classes ||
                            models[t]->cfg.image_size != models[0]->cfg.image_size ||
                            models[t]->cfg.channels != models[0]->cfg.channels))
            st = tf_error_set(TF_ERR_ARG,
                              "eval_ensemble: model %d differs from model 0 in classes or "
                              "input shape",
                              t);
    }
    if (st != TF_OK) return st;
    const int64_t total = limit > 0 && limit < set->count ? limit : set->count;
    const int64_t first = total * rank / size, last = total * (rank + 1) / size;
    const int batch = 250, classes = models[0]->cfg.classes;
    const int64_t pixels = (int64_t)set->rows * set->cols;
    vit_acts **acts = tf_calloc((size_t)n, sizeof *acts);
    float *x = tf_malloc((size_t)batch * pixels * sizeof(float));
    int *y = tf_malloc((size_t)batch * sizeof(int));
    double *q = tf_malloc((size_t)batch * classes * sizeof(double));
    int64_t idx[250];
    if (!acts || !x || !y || !q) st = TF_ERR_NOMEM;
    /* Models run one after another, so those of equal shapes share one set of buffers. */
    vit_acts **shared = tf_calloc((size_t)n, sizeof *shared);
    if (!shared) st = TF_ERR_NOMEM;
    for (int t = 0; st == TF_OK && t < n; t++) {
        for (int s = 0; s < t && !shared[t]; s++)
            if (same_shapes(&models[s]->cfg, &models[t]->cfg)) shared[t] = shared[s];
        if (!shared[t]) {
            st = vit_acts_create(&models[t]->cfg, batch, &acts[t]);
            shared[t] = acts[t];
        }
    }
    double sums[2] = {0, 0}; /* correct, loss sum */
    for (int64_t start = first; st == TF_OK && start < last; start += batch) {
        int B = (int)(last - start < batch ? last - start : batch);
        for (int i = 0; i < B; i++) idx[i] = start + i;
        tf_images_to_float(set, idx, B, x, y);
        for (int64_t k = 0; k < (int64_t)B * classes; k++) q[k] = 0;
        for (int t = 0; st == TF_OK && t < n; t++) {
            st = vit_forward(models[t], shared[t], x, NULL, B, NULL);
            for (int64_t k = 0; st == TF_OK && k < (int64_t)B * classes; k++)
                q[k] += weights[t] * shared[t]->probs[k];
        }
        for (int b = 0; st == TF_OK && b < B; b++) {
            const double *row = q + (int64_t)b * classes;
            int best = 0;
            for (int c = 1; c < classes; c++)
                if (row[c] > row[best]) best = c;
            sums[0] += best == y[b];
            sums[1] -= log(row[y[b]] > 1e-300 ? row[y[b]] : 1e-300);
        }
    }
    for (int t = 0; acts && t < n; t++) vit_acts_free(&acts[t]);
    free(acts);
    free(shared);
    free(x);
    free(y);
    free(q);
    return finish_eval(comm, st, sums, total, accuracy, loss);
}
