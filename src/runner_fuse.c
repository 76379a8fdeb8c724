/* The fuse task: load parents, evaluate them, build each requested fusion (vanilla average
 * or OT), optionally finetune it, evaluate, write the fused models, maps and a report. */
#include "runner_internal.h"
#include "tfuse/checkpoint.h"
#include "tfuse/fuse.h"
#include "tfuse/h5file.h"
#include "tfuse/train.h"
#include "tfuse/vit_io.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char name[JOB_NAME_MAX];
    double one_shot, one_shot_loss;
    double finetuned, finetuned_loss; /* < 0: not finetuned */
    double seconds;
    fuse_timings timings; /* stages of the one-shot fusion on rank 0 */
    int built;            /* 1: fused in this run, 0: loaded from its file (resume) */
} method_result;

/* Draws n distinct training images with the calibration seed, the same on every rank, and
 * converts them to normalized floats. */
static float *calibration_images(const tf_image_set *train, int64_t n, uint64_t seed)
{
    int64_t *perm = tf_malloc((size_t)train->count * sizeof(int64_t));
    const int64_t pixels = (int64_t)train->rows * train->cols;
    float *x = tf_malloc((size_t)n * pixels * sizeof(float));
    if (!perm || !x) {
        free(perm);
        free(x);
        return NULL;
    }
    tf_rng rng;
    tf_rng_seed(&rng, seed ^ 0x63616c6962ULL);
    for (int64_t i = 0; i < train->count; i++) perm[i] = i;
    tf_rng_shuffle(&rng, perm, train->count);
    for (int64_t i = 0; i < n; i += 1024) {
        int count = (int)(n - i < 1024 ? n - i : 1024);
        tf_images_to_float(train, perm + i, count, x + i * pixels, NULL);
    }
    free(perm);
    return x;
}

/* Writes the transport maps of parent p under /maps/parent<p>/: stream and embedding maps
 * (d_p, d_a), per-layer maps (d_p, d_a) and the MLP hidden maps (f_p, f_a). */
static tf_status write_maps(h5f_file *h5, const fuse_maps *maps, int p, const int64_t dd[2],
                            const int64_t ff[2])
{
    char name[128];
    tf_status st = TF_OK;
    const struct {
        const char *label;
        const double *plan;
    } embedding[] = {{"stream0", maps->stream0}, {"patch", maps->patch}, {"pos", maps->pos}};
    for (size_t i = 0; st == TF_OK && i < sizeof embedding / sizeof embedding[0]; i++) {
        if (!embedding[i].plan) continue;
        snprintf(name, sizeof name, "maps/parent%d/%s", p, embedding[i].label);
        st = h5f_write_f64(h5, name, 2, dd, embedding[i].plan);
    }
    for (int l = 0; st == TF_OK && l < maps->layers; l++) {
        const struct {
            const char *label;
            double *const *plans;
            const int64_t *dims;
        } layer[] = {{"qk", maps->qk, dd},
                     {"v", maps->v, dd},
                     {"attn_out", maps->attn_out, dd},
                     {"stream1", maps->stream1, dd},
                     {"fc1", maps->fc1, ff},
                     {"mlp_out", maps->mlp_out, dd},
                     {"stream2", maps->stream2, dd}};
        for (size_t i = 0; st == TF_OK && i < sizeof layer / sizeof layer[0]; i++) {
            if (!layer[i].plans || !layer[i].plans[l]) continue;
            snprintf(name, sizeof name, "maps/parent%d/layer%d/%s", p, l, layer[i].label);
            st = h5f_write_f64(h5, name, 2, layer[i].dims, layer[i].plans[l]);
        }
    }
    return st;
}

tf_status runner_write_fusion_parts(h5f_file *h5, const job_fuse *f, const job_method *method,
                                    runner_model_writer write_model, const void *const *aligned,
                                    fuse_maps *const *maps, const int *d, const int *mlp)
{
    tf_status st = h5f_set_attr_string(h5, "/", "fusion_method", method->name);
    if (st == TF_OK) st = runner_set_config_attr(h5, method);
    if (st == TF_OK) st = runner_set_provenance(h5, f, method, 0);
    if (st == TF_OK) st = h5f_set_attr_int(h5, "/", "fusion_anchor", f->anchor);
    for (int p = 0; st == TF_OK && p < f->n_parents; p++) {
        char key[64];
        snprintf(key, sizeof key, "fusion_parent%d", p);
        st = h5f_set_attr_string(h5, "/", key, f->parents[p]);
        if (st == TF_OK && aligned && f->save_aligned) {
            snprintf(key, sizeof key, "aligned/parent%d", p);
            st = write_model(aligned[p], h5, key);
        }
        if (st == TF_OK && maps && maps[p] && f->save_maps) {
            const int64_t dd[2] = {d[p], d[f->anchor]}, ff[2] = {mlp[p], mlp[f->anchor]};
            st = write_maps(h5, maps[p], p, dd, ff);
        }
    }
    return st;
}

tf_status runner_finish_method_file(h5f_file **h5, tf_status st, const job_fuse *f,
                                    const char *path)
{
    if (st != TF_OK) {
        h5f_discard(h5);
        return st;
    }
    st = h5f_commit(h5);
    if (st == TF_OK) TF_INFO("fuse %s: wrote %s", f->name, path);
    return st;
}

typedef struct {
    vit_model **parents, **aligned;
    fuse_maps **maps;
} align_ctx;

static tf_status align_one(int p, void *ctx)
{
    align_ctx *c = ctx;
    return fuse_align_parent(c->parents[p], c->maps[p], c->aligned[p]);
}

/* Builds one fused model: the weighted average of the parents (vanilla) or of the parents
 * aligned to the anchor with OT, adding the stage times to *timings. On success
 * *aligned_out contains the aligned parents and *maps_out the maps (both NULL for vanilla),
 * freed by the caller. */
static tf_status build_fusion(MPI_Comm comm, const job_fuse *f, const job_method *method,
                              vit_model **parents, const float *calib, vit_model *fused,
                              vit_model ***aligned_out, fuse_maps ***maps_out,
                              fuse_timings *timings)
{
    const int n = f->n_parents;
    *aligned_out = NULL;
    *maps_out = NULL;
    if (method->kind == JOB_METHOD_VANILLA) {
        for (int p = 0; p < n; p++)
            if (parents[p]->num_params != parents[f->anchor]->num_params)
                return tf_error_set(TF_ERR_ARG,
                                    "method %s: vanilla averaging needs parents "
                                    "of equal widths; parent %d differs from the anchor",
                                    method->name, p);
        return fuse_average(parents, method->weights, n, fused);
    }
    fuse_maps **maps = NULL;
    fuse_options opt = method->ot;
    opt.timings = timings;
    tf_status st =
        fuse_compute_maps(comm, parents, n, f->anchor, calib, f->calib_samples, &opt, &maps);
    if (st != TF_OK) return st;

    /* Each rank aligns its share of the parents and broadcasts them. */
    double t0 = tf_seconds();
    vit_model **aligned = tf_calloc((size_t)n, sizeof *aligned);
    float **params = tf_calloc((size_t)n, sizeof *params);
    if (!aligned || !params) st = TF_ERR_NOMEM;
    for (int p = 0; st == TF_OK && p < n; p++) {
        st = vit_model_create(&parents[f->anchor]->cfg, &aligned[p]);
        if (st == TF_OK) params[p] = aligned[p]->params;
    }
    st = runner_agree(comm, st, "allocating the aligned parents");
    align_ctx ctx = {parents, aligned, maps};
    if (st == TF_OK) {
        vit_model_copy(aligned[f->anchor], parents[f->anchor]);
        st = fuse_align_shared(comm, n, f->anchor, params, aligned[f->anchor]->num_params,
                               align_one, &ctx);
    }
    free(params);
    if (st == TF_OK) st = fuse_average(aligned, method->weights, n, fused);
    double t1 = tf_seconds();
    if (st == TF_OK)
        st = fuse_repair(comm, fused, aligned, method->weights, n, calib, f->calib_samples,
                         method->ot.repair);
    timings->alignment += t1 - t0;
    timings->repair += tf_seconds() - t1;
    TF_INFO("fuse timing: alignment and average %.3f s, repair %.3f s", t1 - t0, tf_seconds() - t1);
    *aligned_out = aligned;
    *maps_out = maps;
    return st;
}

/* Writes json as compact text to the root attribute `name` and deletes json (NULL: out of
 * memory). */
static tf_status set_json_attr(h5f_file *h5, const char *name, cJSON *json)
{
    char *text = json ? cJSON_PrintUnformatted(json) : NULL;
    cJSON_Delete(json);
    if (!text) return TF_ERR_NOMEM;
    tf_status st = h5f_set_attr_string(h5, "/", name, text);
    free(text);
    return st;
}

tf_status runner_set_config_attr(h5f_file *h5, const job_method *method)
{
    return set_json_attr(h5, "fusion_config", job_method_json(method));
}

/* What a fused model file depends on, as a JSON object: the method's settings, the
 * parents, the anchor and the calibration draw, and for a finetuned file (finetuned = 1)
 * the finetune settings. NULL if out of memory. */
static cJSON *provenance_json(const job_fuse *f, const job_method *m, int finetuned)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *method = job_method_json(m);
    cJSON *parents = cJSON_CreateArray();
    int ok = j && method && parents;
    for (int p = 0; ok && p < f->n_parents; p++) {
        cJSON *name = cJSON_CreateString(f->parents[p]);
        ok = name != NULL;
        if (ok) cJSON_AddItemToArray(parents, name);
    }
    if (ok) {
        cJSON_AddItemToObject(j, "method", method);
        cJSON_AddItemToObject(j, "parents", parents);
        method = parents = NULL;
        ok = cJSON_AddNumberToObject(j, "anchor", f->anchor) &&
             cJSON_AddNumberToObject(j, "calibration_samples", (double)f->calib_samples) &&
             cJSON_AddNumberToObject(j, "calibration_seed", (double)f->calib_seed);
    }
    /* The training data the calibration draw and the finetune read. */
    if (ok && f->data.has_text)
        ok = cJSON_AddStringToObject(j, "corpus", f->data.text.corpus) &&
             cJSON_AddNumberToObject(j, "train_limit", (double)f->data.text.train_limit);
    else if (ok)
        ok = cJSON_AddStringToObject(j, "train_images", f->data.train_images) &&
             cJSON_AddNumberToObject(j, "train_offset", (double)f->data.train_offset) &&
             cJSON_AddNumberToObject(j, "train_limit", (double)f->data.train_limit);
    if (ok && finetuned) {
        cJSON *ft = job_finetune_json(&f->finetune);
        ok = ft != NULL;
        if (ok) cJSON_AddItemToObject(j, "finetune", ft);
    }
    cJSON_Delete(method);
    cJSON_Delete(parents);
    if (!ok) cJSON_Delete(j);
    return ok ? j : NULL;
}

tf_status runner_set_provenance(h5f_file *h5, const job_fuse *f, const job_method *m,
                                int finetuned)
{
    return set_json_attr(h5, "fusion_job", provenance_json(f, m, finetuned));
}

/* Finds the first key of want whose value differs in have, descending into objects (such
 * as "method"), and writes "key = have-value, but the job has want-value" to out. */
static void describe_difference(const cJSON *have, const cJSON *want, char *out, size_t size)
{
    const cJSON *item = NULL;
    cJSON_ArrayForEach(item, want)
    {
        const cJSON *old = cJSON_GetObjectItemCaseSensitive(have, item->string);
        if (old && cJSON_Compare(old, item, 1)) continue;
        if (old && cJSON_IsObject(old) && cJSON_IsObject(item)) {
            char inner[400];
            describe_difference(old, item, inner, sizeof inner);
            snprintf(out, size, "%s.%s", item->string, inner);
            return;
        }
        char *a = old ? cJSON_PrintUnformatted(old) : NULL;
        char *b = cJSON_PrintUnformatted(item);
        snprintf(out, size, "%s = %.80s, but the job has %.80s", item->string,
                 a ? a : "(missing)", b ? b : "?");
        free(a);
        free(b);
        return;
    }
    snprintf(out, size, "keys the job does not have");
}

tf_status runner_check_provenance(MPI_Comm comm, const char *path, const job_fuse *f,
                                  const job_method *m, int finetuned)
{
    const size_t size = 1 << 20;
    char *text = tf_malloc(size);
    cJSON *want = provenance_json(f, m, finetuned);
    h5f_file *h5 = NULL;
    tf_status st = text && want ? TF_OK : TF_ERR_NOMEM;
    st = runner_agree(comm, st, "reading the settings of a resumed file");
    if (st == TF_OK) st = h5f_open(comm, path, &h5);
    if (st == TF_OK) {
        st = h5f_get_attr_string(h5, "/", "fusion_job", text, size);
        if (st != TF_OK)
            st = tf_error_set(TF_ERR_FORMAT,
                              "%s: resume cannot reuse this file: it has no readable "
                              "fusion_job attribute that records how it was made (an older "
                              "tfuse or another program wrote it); remove it or write to "
                              "another output_dir",
                              path);
        h5f_close(&h5);
    }
    cJSON *have = st == TF_OK ? cJSON_Parse(text) : NULL;
    if (st == TF_OK && !cJSON_Compare(have, want, 1)) {
        char diff[512];
        if (have)
            describe_difference(have, want, diff, sizeof diff);
        else
            snprintf(diff, sizeof diff, "a fusion_job attribute that is not valid JSON");
        st = tf_error_set(TF_ERR_ARG,
                          "%s: resume cannot reuse this file: it was made with %s; remove "
                          "it or write to another output_dir",
                          path, diff);
    }
    cJSON_Delete(have);
    cJSON_Delete(want);
    free(text);
    return st;
}

/* Writes a finetuned model with its fusion_job attribute to path. Collective. */
static tf_status save_finetuned(MPI_Comm comm, const job_fuse *f, const job_method *method,
                                const vit_model *model, const char *path, int overwrite)
{
    h5f_file *h5 = NULL;
    tf_status st = h5f_create(comm, path, overwrite, &h5);
    if (st != TF_OK) return st;
    st = vit_model_write(model, h5, "/");
    if (st == TF_OK) st = runner_set_provenance(h5, f, method, 1);
    if (st != TF_OK) {
        h5f_discard(&h5);
        return st;
    }
    return h5f_commit(&h5);
}

static tf_status write_model(const void *model, h5f_file *h5, const char *group)
{
    return vit_model_write(model, h5, group);
}

static tf_status write_method_file(MPI_Comm comm, const job_fuse *f, const job_method *method,
                                   vit_model **parents, const vit_model *fused, vit_model **aligned,
                                   fuse_maps **maps)
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
    st = vit_model_write(fused, h5, "/");
    if (st == TF_OK)
        st = runner_write_fusion_parts(h5, f, method, write_model, (const void *const *)aligned,
                                       maps, d, mlp);
    return runner_finish_method_file(&h5, st, f, path);
}

train_schedule runner_finetune_schedule(const job_fuse *f, const job_file *job, const char *label,
                                        const char *checkpoint)
{
    const job_finetune *ft = &f->finetune;
    return (train_schedule){.steps = ft->steps,
                            .batch_size = ft->batch_size,
                            .lr = ft->lr,
                            .min_lr = ft->min_lr,
                            .weight_decay = ft->weight_decay,
                            .beta1 = 0.9,
                            .beta2 = 0.999,
                            .eps = 1e-8,
                            .warmup_steps = ft->warmup_steps,
                            .seed = ft->seed,
                            .log_every = ft->steps >= 10 ? (int)(ft->steps / 5) : 1,
                            .label = label,
                            .distill = ft->distill,
                            .teacher_weights = f->weights,
                            .n_teachers = f->n_parents,
                            .checkpoint_path = checkpoint,
                            .checkpoint_every = ft->checkpoint_every,
                            .resume = job->resume,
                            .stop_after = job->stop_after};
}

/* Finetunes model; checkpoint (NULL: none) is the checkpoint file of this finetune. */
static tf_status finetune(MPI_Comm comm, const job_fuse *f, const job_file *job,
                          const tf_image_set *train, vit_model *model, vit_model *const *parents,
                          const char *label, const char *checkpoint)
{
    train_options opt = {.s = runner_finetune_schedule(f, job, label, checkpoint),
                         .teachers = parents};
    return train_run(comm, model, train, &opt, NULL);
}

/* Accuracy and loss of the parents' ensemble, which averages their predicted probabilities
 * with the task's weights and is the teacher of a finetune with distillation. */
typedef struct {
    double accuracy, loss;
} ensemble_result;

static tf_status write_report(const job_fuse *f, const double *parent_acc,
                              const ensemble_result *ensemble, const method_result *results,
                              int rank);

static void print_table(const job_fuse *f, const double *parent_acc,
                        const ensemble_result *ensemble, const method_result *results)
{
    char head[64];
    snprintf(head, sizeof head, "after finetune (%lld step%s)", (long long)f->finetune.steps,
             f->finetune.steps == 1 ? "" : "s");
    TF_INFO("%s", "");
    if (f->finetune.steps > 0)
        TF_INFO("%-36s %10s %s", "model", "one-shot", head);
    else
        TF_INFO("%-36s %10s", "model", "one-shot");
    for (int p = 0; p < f->n_parents; p++) {
        char label[JOB_PATH_MAX + 32];
        const char *base = strrchr(f->parents[p], '/');
        base = base ? base + 1 : f->parents[p];
        snprintf(label, sizeof label, "parent %d %.20s%s", p, base,
                 p == f->anchor ? " (anchor)" : "");
        TF_INFO("%-36s %9.2f%%", label, 100 * parent_acc[p]);
    }
    TF_INFO("%-36s %9.2f%%", "ensemble of the parents", 100 * ensemble->accuracy);
    for (int m = 0; m < f->n_methods; m++) {
        if (results[m].finetuned >= 0)
            TF_INFO("%-36s %9.2f%% %9.2f%%", results[m].name, 100 * results[m].one_shot,
                    100 * results[m].finetuned);
        else
            TF_INFO("%-36s %9.2f%%", results[m].name, 100 * results[m].one_shot);
    }
    TF_INFO("%s", "");
}

/* One method: build the fused model (or, with resume, load it from its file), evaluate
 * and write it; then finetune it (or load the finetuned file), evaluate and write that. */
static tf_status run_method(MPI_Comm comm, const job_fuse *f, const job_file *job,
                            const job_method *method, vit_model **parents, const float *calib,
                            const tf_image_set *train, const tf_image_set *test, method_result *r)
{
    char path[JOB_PATH_MAX + 80], tuned_path[JOB_PATH_MAX + 96], checkpoint[JOB_PATH_MAX + 112];
    snprintf(path, sizeof path, "%s/%s.h5", f->output_dir, method->name);
    snprintf(tuned_path, sizeof tuned_path, "%s/%s-finetuned.h5", f->output_dir, method->name);
    snprintf(checkpoint, sizeof checkpoint, "%s.ckpt.h5", tuned_path);
    const int have_dir = f->output_dir[0] != '\0', resume = job->resume;
    vit_model *fused = NULL, **aligned = NULL;
    fuse_maps **maps = NULL;
    tf_status st = TF_OK;
    snprintf(r->name, sizeof r->name, "%s", method->name);
    r->finetuned = -1;

    /* One shot. */
    double t0 = tf_seconds();
    if (resume && have_dir && runner_file_exists(path)) {
        TF_INFO("fuse %s: %s: loading %s (resume)", f->name, method->name, path);
        st = runner_check_provenance(comm, path, f, method, 0);
        if (st == TF_OK) st = vit_model_load(comm, path, &fused);
    } else {
        st = vit_model_create(&parents[f->anchor]->cfg, &fused);
        if (st == TF_OK)
            st = build_fusion(comm, f, method, parents, calib, fused, &aligned, &maps, &r->timings);
        r->built = st == TF_OK;
        if (st == TF_OK && have_dir) {
            double t_write = tf_seconds();
            st = write_method_file(comm, f, method, parents, fused, aligned, maps);
            r->timings.writing = tf_seconds() - t_write;
            TF_INFO("fuse timing: writing %.3f s", r->timings.writing);
        }
    }
    r->seconds = tf_seconds() - t0;
    if (st == TF_OK) st = eval_accuracy(comm, fused, test, 0, &r->one_shot, &r->one_shot_loss);
    if (st == TF_OK)
        TF_INFO("fuse %s: %s one-shot: %.2f %% (%s in %.2f s)", f->name, method->name,
                100 * r->one_shot, r->built ? "built" : "loaded", r->seconds);

    /* Finetune, saved beside the one-shot model. */
    if (st == TF_OK && f->finetune.steps > 0) {
        if (resume && have_dir && runner_file_exists(tuned_path)) {
            vit_model_free(&fused);
            TF_INFO("fuse %s: %s: loading %s (resume)", f->name, method->name, tuned_path);
            st = runner_check_provenance(comm, tuned_path, f, method, 1);
            if (st == TF_OK) st = vit_model_load(comm, tuned_path, &fused);
        } else {
            st = finetune(comm, f, job, train, fused, parents, method->name,
                          have_dir ? checkpoint : NULL);
            if (st == TF_OK && have_dir)
                st = save_finetuned(comm, f, method, fused, tuned_path, f->overwrite || resume);
            if (st == TF_OK && have_dir) st = ckpt_remove(comm, checkpoint);
        }
        if (st == TF_OK)
            st = eval_accuracy(comm, fused, test, 0, &r->finetuned, &r->finetuned_loss);
        if (st == TF_OK)
            TF_INFO("fuse %s: %s after finetune: %.2f %%", f->name, method->name,
                    100 * r->finetuned);
    }
    for (int p = 0; aligned && p < f->n_parents; p++) vit_model_free(&aligned[p]);
    free(aligned);
    for (int p = 0; maps && p < f->n_parents; p++) fuse_maps_free(&maps[p]);
    free(maps);
    vit_model_free(&fused);
    return st;
}

tf_status runner_run_fuse(MPI_Comm comm, const job_fuse *f, const job_file *job)
{
    if (runner_fuse_is_bert(comm, f)) return runner_run_fuse_bert(comm, f, job);
    int rank;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    const int n = f->n_parents;
    tf_image_set *train = NULL, *test = NULL;
    vit_model **parents = tf_calloc((size_t)n, sizeof *parents);
    double *parent_acc = tf_calloc((size_t)n, sizeof(double));
    method_result *results = tf_calloc((size_t)f->n_methods, sizeof *results);
    float *calib = NULL;
    tf_status st = parents && parent_acc && results ? TF_OK : TF_ERR_NOMEM;

    /* Step 1: parents, data and calibration images. */
    double t_load = tf_seconds();
    for (int p = 0; st == TF_OK && p < n; p++) {
        st = vit_model_load(comm, f->parents[p], &parents[p]);
        if (st != TF_OK)
            tf_error_set(st, "fuse task '%s', parents[%d]: %s", f->name, p, tf_error_get());
    }
    if (st == TF_OK) TF_INFO("fuse timing: loading parents %.3f s", tf_seconds() - t_load);
    if (st == TF_OK) st = runner_load_data(&f->data, &train, &test);
    if (st == TF_OK && f->calib_samples > train->count)
        st = tf_error_set(TF_ERR_ARG,
                          "calibration_samples = %lld exceeds the %lld training "
                          "images",
                          (long long)f->calib_samples, (long long)train->count);
    if (st == TF_OK && !(calib = calibration_images(train, f->calib_samples, f->calib_seed)))
        st = TF_ERR_NOMEM;

    /* Step 2: the parents' own accuracy. */
    for (int p = 0; st == TF_OK && p < n; p++) {
        st = eval_accuracy(comm, parents[p], test, 0, &parent_acc[p], NULL);
        if (st == TF_OK)
            TF_INFO("fuse %s: parent %d (%s): %.2f %%", f->name, p, f->parents[p],
                    100 * parent_acc[p]);
    }
    ensemble_result ensemble = {0, 0};
    if (st == TF_OK)
        st = eval_ensemble(comm, parents, f->weights, n, test, 0, &ensemble.accuracy,
                           &ensemble.loss);
    if (st == TF_OK)
        TF_INFO("fuse %s: ensemble of the parents (predictions averaged with the task's "
                "weights): %.2f %%",
                f->name, 100 * ensemble.accuracy);

    /* Step 3: each method, one shot and after the optional finetune. */
    for (int m = 0; st == TF_OK && m < f->n_methods; m++) {
        st = run_method(comm, f, job, &f->methods[m], parents, calib, train, test, &results[m]);
        if (st != TF_OK)
            st = tf_error_set(st, "fuse %s, method %s: %s", f->name, f->methods[m].name,
                              tf_error_get());
    }

    /* Step 4: the table and the report. */
    if (st == TF_OK && rank == 0) print_table(f, parent_acc, &ensemble, results);
    if (st == TF_OK && f->report[0]) st = write_report(f, parent_acc, &ensemble, results, rank);

    for (int p = 0; parents && p < n; p++) vit_model_free(&parents[p]);
    free(parents);
    free(parent_acc);
    free(results);
    free(calib);
    idx_image_set_free(&train);
    idx_image_set_free(&test);
    return st;
}

tf_status runner_agree(MPI_Comm comm, tf_status st, const char *what)
{
    int failed = st != TF_OK, any = 0;
    TF_MPI_CHECK(MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, comm));
    if (st == TF_OK && any) return tf_error_set(TF_ERR_NOMEM, "%s failed on another rank", what);
    return st;
}

int runner_add_timings(cJSON *item, const fuse_timings *t)
{
    cJSON *o = cJSON_AddObjectToObject(item, "timings");
    if (!o) return 0;
    const struct {
        const char *name;
        double value;
    } stages[] = {{"statistics", t->statistics},
                  {"forward", t->forward},
                  {"statistics_sums", t->sums},
                  {"reduction", t->reduction},
                  {"ot_groups", t->ot_groups},
                  {"ot_local", t->ot_local},
                  {"ot_broadcast", t->ot_broadcast},
                  {"alignment", t->alignment},
                  {"repair", t->repair},
                  {"writing", t->writing}};
    for (size_t k = 0; k < sizeof stages / sizeof *stages; k++)
        if (!cJSON_AddNumberToObject(o, stages[k].name, stages[k].value)) return 0;
    return 1;
}

tf_status runner_write_report(const job_fuse *f, const char *text)
{
    char tmp[JOB_PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s.tmp", f->report);
    FILE *out = fopen(tmp, "w");
    tf_status st = TF_OK;
    if (!out || fputs(text, out) < 0 || fputc('\n', out) == EOF) st = TF_ERR_IO;
    if (out && fclose(out) != 0) st = TF_ERR_IO;
    if (st == TF_OK && rename(tmp, f->report) != 0) st = TF_ERR_IO;
    if (st != TF_OK) {
        remove(tmp);
        return tf_error_set(TF_ERR_IO, "cannot write report %s: %s", f->report, strerror(errno));
    }
    TF_INFO("fuse %s: wrote %s", f->name, f->report);
    return TF_OK;
}

void runner_add_fuse_settings(cJSON *root, const job_fuse *f)
{
    cJSON_AddNumberToObject(root, "calibration_samples", (double)f->calib_samples);
    cJSON_AddNumberToObject(root, "calibration_seed", (double)f->calib_seed);
    cJSON_AddNumberToObject(root, "finetune_steps", (double)f->finetune.steps);
    if (f->finetune.steps > 0)
        cJSON_AddItemToObject(root, "finetune", job_finetune_json(&f->finetune));
}

cJSON *runner_method_item(const job_method *jm)
{
    static const char *const residual_names[] = {"joint", "mean",   "weighted",
                                                 "skip",  "branch", "identity"};
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "name", jm->name);
    cJSON_AddStringToObject(item, "method", jm->kind == JOB_METHOD_OT ? "ot" : "vanilla");
    if (jm->kind == JOB_METHOD_OT) {
        cJSON_AddStringToObject(item, "solver",
                                jm->ot.solver == FUSE_SOLVER_EXACT ? "exact" : "sinkhorn");
        if (jm->ot.solver == FUSE_SOLVER_SINKHORN || jm->ot.solver_attn == FUSE_SOLVER_SINKHORN ||
            jm->ot.solver_mlp == FUSE_SOLVER_SINKHORN ||
            jm->ot.solver_stream == FUSE_SOLVER_SINKHORN)
            cJSON_AddNumberToObject(item, "epsilon", jm->ot.epsilon);
        cJSON_AddStringToObject(item, "residual", residual_names[jm->ot.residual]);
        cJSON_AddStringToObject(item, "attention",
                                jm->ot.attention == FUSE_ATTN_HEAD_AWARE ? "head_aware"
                                                                         : "shared_qk");
    }
    return item;
}

void runner_finish_method_item(cJSON *item, const job_method *jm, double seconds, int built,
                               const fuse_timings *timings)
{
    cJSON_AddNumberToObject(item, "fusion_seconds", seconds);
    cJSON_AddBoolToObject(item, "resumed", !built);
    cJSON_AddItemToObject(item, "config", job_method_json(jm));
    if (built && jm->kind == JOB_METHOD_OT) runner_add_timings(item, timings);
}

static tf_status write_report(const job_fuse *f, const double *parent_acc,
                              const ensemble_result *ensemble, const method_result *results,
                              int rank)
{
    if (rank != 0) return TF_OK;
    cJSON *root = cJSON_CreateObject();
    cJSON *parents = cJSON_AddArrayToObject(root, "parents");
    for (int p = 0; p < f->n_parents; p++) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddStringToObject(item, "file", f->parents[p]);
        cJSON_AddNumberToObject(item, "weight", f->weights[p]);
        cJSON_AddBoolToObject(item, "anchor", p == f->anchor);
        cJSON_AddNumberToObject(item, "test_accuracy", parent_acc[p]);
        cJSON_AddItemToArray(parents, item);
    }
    cJSON *ens = cJSON_AddObjectToObject(root, "ensemble");
    cJSON_AddNumberToObject(ens, "test_accuracy", ensemble->accuracy);
    cJSON_AddNumberToObject(ens, "test_loss", ensemble->loss);
    runner_add_fuse_settings(root, f);
    cJSON *methods = cJSON_AddArrayToObject(root, "methods");
    for (int m = 0; m < f->n_methods; m++) {
        const job_method *jm = &f->methods[m];
        cJSON *item = runner_method_item(jm);
        cJSON_AddNumberToObject(item, "one_shot_accuracy", results[m].one_shot);
        cJSON_AddNumberToObject(item, "one_shot_loss", results[m].one_shot_loss);
        if (results[m].finetuned >= 0) {
            cJSON_AddNumberToObject(item, "finetuned_accuracy", results[m].finetuned);
            cJSON_AddNumberToObject(item, "finetuned_loss", results[m].finetuned_loss);
        }
        runner_finish_method_item(item, jm, results[m].seconds, results[m].built,
                                  &results[m].timings);
        cJSON_AddItemToArray(methods, item);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return TF_ERR_NOMEM;
    tf_status st = runner_write_report(f, text);
    free(text);
    return st;
}
