/* The job runner: each task is a flat sequence of steps (load, compute, evaluate, save),
 * with every output written under a temporary name and renamed when complete. */
#include "tfuse/runner.h"
#include "tfuse/checkpoint.h"
#include "tfuse/data.h"
#include "tfuse/h5file.h"
#include "tfuse/train.h"
#include "tfuse/validate.h"
#include "tfuse/vit_io.h"
#include "runner_internal.h"

#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int runner_file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Directories this process created, in order, so that a failed job can remove those it
 * left empty. Directories beyond the first 64 are created but not recorded. */
enum { CREATED_DIRS_MAX = 64 };
static char created_dirs[CREATED_DIRS_MAX][JOB_PATH_MAX];
static int n_created_dirs;

/* mkdir that records a directory it creates; an existing one is fine. */
static int make_dir(const char *dir)
{
    if (mkdir(dir, 0777) == 0) {
        if (n_created_dirs < CREATED_DIRS_MAX)
            snprintf(created_dirs[n_created_dirs++], JOB_PATH_MAX, "%s", dir);
        return 0;
    }
    return errno == EEXIST ? 0 : -1;
}

/* Removes, newest first, the directories this process created that are still empty. */
static void remove_created_dirs(void)
{
    while (n_created_dirs > 0) rmdir(created_dirs[--n_created_dirs]);
}

tf_status runner_make_parent_dirs(const char *path)
{
    char dir[JOB_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return TF_OK;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (make_dir(dir) != 0)
            return tf_error_set(TF_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
        *p = '/';
    }
    if (make_dir(dir) != 0)
        return tf_error_set(TF_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
    if (access(dir, W_OK) != 0)
        return tf_error_set(TF_ERR_IO, "output directory %s is not writable: %s", dir,
                            strerror(errno));
    return TF_OK;
}

/* ---- Validation ----------------------------------------------------------------------
 * Every check below runs on rank 0 before any compute (see check_job_on_root), reading
 * only headers and metadata of the inputs. */

/* Data file pairs already checked in this pass, so that tasks sharing their data (the
 * usual case) decompress each file once. */
enum { CHECKED_PAIRS_MAX = 16 };
typedef struct {
    int count;
    struct {
        const char *images, *labels; /* owned by the job */
        int64_t offset, limit;
        validate_idx_info info;
    } pairs[CHECKED_PAIRS_MAX];
} checked_pairs;

typedef struct {
    const job_file *job;
    int ranks;            /* size of the communicator the job runs on */
    int create_dirs;      /* 1: create missing output directories; 0: only check they can be */
    int warn;             /* 1: log warnings (only in the first of the two passes of a run) */
    checked_pairs *cache; /* NULL: no cache */
} check_ctx;

/* Logs a warning about the job file: "warning: JOB.json: MESSAGE". TF_WARN would put the
 * C function name where users look for the job file. */
#define JOB_WARN(ctx, ...) tf_log(TF_LOG_WARN, (ctx)->job ? (ctx)->job->path : "job", __VA_ARGS__)

/* Returns "" for one and "s" for any other count, for plurals in messages. */
static const char *plural_s(long long count)
{
    return count == 1 ? "" : "s";
}

/* Returns 1 when a and b name the same file: equal strings, or both exist with the same
 * device and inode. */
static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (strcmp(a, b) == 0) return 1;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Checks that the directory of path exists or can be created: the nearest existing
 * ancestor must be a writable directory. Creates the missing directories when create. */
static tf_status check_output_dir(const char *path, const char *key, int create)
{
    char dir[JOB_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';

    struct stat sb;
    char existing[JOB_PATH_MAX];
    snprintf(existing, sizeof existing, "%s", dir);
    while (stat(existing, &sb) != 0) {
        if (strcmp(existing, ".") == 0 || strcmp(existing, "/") == 0)
            return tf_error_set(TF_ERR_IO, "output %s (%s) cannot be written: %s", path, key,
                                strerror(errno));
        char *up = strrchr(existing, '/');
        if (!up)
            snprintf(existing, sizeof existing, ".");
        else if (up == existing)
            existing[1] = '\0';
        else
            *up = '\0';
    }
    if (!S_ISDIR(sb.st_mode))
        return tf_error_set(TF_ERR_IO,
                            "output %s (%s) cannot be written: '%s' is not a "
                            "directory",
                            path, key, existing);
    if (access(existing, W_OK | X_OK) != 0)
        return tf_error_set(TF_ERR_IO,
                            "output %s (%s) cannot be written: directory '%s' is not "
                            "writable (%s)",
                            path, key, existing, strerror(errno));
    if (!create) return TF_OK;
    tf_status st = runner_make_parent_dirs(path);
    if (st != TF_OK) return tf_error_set(st, "output %s (%s): %s", path, key, tf_error_get());
    return TF_OK;
}

/* Logs the temporary files "<path>.tmp*" that an interrupted run may have left. */
static void warn_stale_temporaries(const check_ctx *ctx, const char *path)
{
    char pattern[JOB_PATH_MAX + 8];
    glob_t found;
    snprintf(pattern, sizeof pattern, "%s.tmp*", path);
    if (glob(pattern, GLOB_NOSORT, NULL, &found) != 0) return;
    JOB_WARN(ctx,
             "found %zu temporary file%s such as %s, left by an interrupted run that wrote "
             "%s; delete them",
             (size_t)found.gl_pathc, plural_s((long long)found.gl_pathc), found.gl_pathv[0], path);
    globfree(&found);
}

static tf_status check_output(const check_ctx *ctx, const char *path, int overwrite,
                              const char *key)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return tf_error_set(TF_ERR_IO, "output %s (%s) is a directory; expected a file name", path,
                            key);
    const int resume = ctx->job && ctx->job->resume;
    if (!overwrite && !resume && runner_file_exists(path))
        return tf_error_set(TF_ERR_EXISTS,
                            "output %s (%s) exists; set \"overwrite\": true in the task to "
                            "replace it, set \"resume\": true at the top level of the job to "
                            "keep it and continue a stopped job, or remove the file",
                            path, key);
    if (ctx->warn) warn_stale_temporaries(ctx, path);
    return check_output_dir(path, key, ctx->create_dirs);
}

/* Warns when the checkpoint of output exists but the job does not resume, because the
 * training then starts from step 0 and replaces it. Also warns about temporary checkpoint
 * files that an interrupted write left. */
static void warn_unused_checkpoint(const check_ctx *ctx, const char *output)
{
    char path[JOB_PATH_MAX + 128];
    snprintf(path, sizeof path, "%s.ckpt.h5", output);
    if (ctx->warn) warn_stale_temporaries(ctx, path);
    if (ctx->warn && !ctx->job->resume && runner_file_exists(path))
        JOB_WARN(ctx,
                 "checkpoint %s exists, but the job does not set \"resume\": true, so training "
                 "starts from step 0 and replaces it",
                 path);
}

tf_status runner_check_output(const char *path, int overwrite, const char *key)
{
    const check_ctx ctx = {.job = NULL, .ranks = 1, .create_dirs = 1, .warn = 0, .cache = NULL};
    return check_output(&ctx, path, overwrite, key);
}

/* Checks one image and label file pair against the model that reads it: format and
 * length, image size and channels, and, when check_labels, every used label below the
 * class count. */
static tf_status check_data_pair(const check_ctx *ctx, const char *images, const char *labels,
                                 int64_t offset, int64_t limit, const vit_config *model,
                                 int check_labels, const char *key, validate_idx_info *info)
{
    checked_pairs *cache = ctx->cache;
    int cached = 0;
    for (int i = 0; cache && !cached && i < cache->count; i++) {
        if (strcmp(cache->pairs[i].images, images) == 0 &&
            strcmp(cache->pairs[i].labels, labels) == 0 && cache->pairs[i].offset == offset &&
            cache->pairs[i].limit == limit) {
            *info = cache->pairs[i].info;
            cached = 1;
        }
    }
    if (!cached) {
        tf_status st = validate_idx_pair(images, labels, offset, limit, info);
        if (st != TF_OK) return tf_error_set(st, "%s: %s", key, tf_error_get());
        if (cache && cache->count < CHECKED_PAIRS_MAX) {
            cache->pairs[cache->count].images = images;
            cache->pairs[cache->count].labels = labels;
            cache->pairs[cache->count].offset = offset;
            cache->pairs[cache->count].limit = limit;
            cache->pairs[cache->count].info = *info;
            cache->count++;
        }
    }
    if (info->rows != model->image_size || info->cols != model->image_size)
        return tf_error_set(TF_ERR_ARG,
                            "%s: images in '%s' are %d x %d pixels, but the model "
                            "expects %d x %d (image_size)",
                            key, images, info->rows, info->cols, model->image_size,
                            model->image_size);
    if (model->channels != 1)
        return tf_error_set(TF_ERR_ARG,
                            "%s: idx images have 1 channel, but the model has "
                            "channels = %d",
                            key, model->channels);
    if (check_labels && info->max_label >= model->classes)
        return tf_error_set(TF_ERR_ARG,
                            "%s: label file '%s' contains label %d, but the model "
                            "has %d classes (labels 0..%d)",
                            key, labels, info->max_label, model->classes, model->classes - 1);
    return TF_OK;
}

/* Checks the training and test files of a task; check_train_labels is 0 when no training
 * step reads the training labels. */
static tf_status check_data(const check_ctx *ctx, const job_data *data, const vit_config *model,
                            int check_train_labels, int index, validate_idx_info *train,
                            validate_idx_info *test)
{
    char key[96];
    if (data->train_offset > 0)
        snprintf(key, sizeof key, "tasks[%d].data (training images, train_offset = %lld)", index,
                 (long long)data->train_offset);
    else
        snprintf(key, sizeof key, "tasks[%d].data (training images)", index);
    tf_status st = check_data_pair(ctx, data->train_images, data->train_labels, data->train_offset,
                                   data->train_limit, model, check_train_labels, key, train);
    if (st != TF_OK) return st;
    snprintf(key, sizeof key, "tasks[%d].data (test images)", index);
    return check_data_pair(ctx, data->test_images, data->test_labels, 0, data->test_limit, model, 1,
                           key, test);
}

/* Checks a global batch against the training images and the ranks that share it. */
static tf_status check_batch(const check_ctx *ctx, int batch, const validate_idx_info *train,
                             const char *key)
{
    if (batch > train->used)
        return tf_error_set(TF_ERR_ARG,
                            "%s = %d exceeds the %lld training images used; lower it, "
                            "raise data.train_limit or lower data.train_offset",
                            key, batch, (long long)train->used);
    if (ctx->warn && batch < ctx->ranks)
        JOB_WARN(ctx, "%s = %d is smaller than the %d ranks, so %d %s idle in each step", key,
                 batch, ctx->ranks, ctx->ranks - batch,
                 ctx->ranks - batch == 1 ? "rank stays" : "ranks stay");
    return TF_OK;
}

static tf_status check_train(const check_ctx *ctx, const job_train *t, int index)
{
    char key[64];
    validate_idx_info train, test;
    warn_unused_checkpoint(ctx, t->output);
    if (t->arch == JOB_ARCH_BERT) {
        tf_status st = runner_check_bert_train(ctx->job, t, index, ctx->ranks, ctx->warn);
        snprintf(key, sizeof key, "tasks[%d].output", index);
        return st != TF_OK ? st : check_output(ctx, t->output, t->overwrite, key);
    }
    tf_status st = vit_config_validate(&t->model);
    if (st != TF_OK) return tf_error_set(st, "tasks[%d].model: %s", index, tf_error_get());
    st = check_data(ctx, &t->data, &t->model, 1, index, &train, &test);
    if (st != TF_OK) return st;
    snprintf(key, sizeof key, "tasks[%d].batch_size", index);
    if ((st = check_batch(ctx, t->batch_size, &train, key)) != TF_OK) return st;
    if (ctx->warn && test.used < ctx->ranks)
        JOB_WARN(ctx,
                 "tasks[%d]: %lld test image%s for %d ranks, so some ranks stay idle during "
                 "evaluation",
                 index, (long long)test.used, plural_s(test.used), ctx->ranks);
    snprintf(key, sizeof key, "tasks[%d].output", index);
    return check_output(ctx, t->output, t->overwrite, key);
}

/* Configuration of parent p: the model of an earlier train task that writes it, or the
 * attributes of the file. */
static tf_status check_parent(const check_ctx *ctx, const job_fuse *f, int index, int p,
                              vit_config *cfg)
{
    for (int k = index - 1; k >= 0; k--) {
        const job_task *task = &ctx->job->tasks[k];
        if (task->kind == JOB_TASK_TRAIN && same_file(task->train.output, f->parents[p])) {
            *cfg = task->train.model;
            return TF_OK;
        }
    }
    tf_status st = validate_model_file(f->parents[p], cfg);
    if (st != TF_OK) return tf_error_set(st, "tasks[%d].parents[%d]: %s", index, p, tf_error_get());
    return TF_OK;
}

/* Fused parents must agree in everything but the widths d and mlp. */
static tf_status check_compatible(const vit_config *c, const vit_config *a, int index, int p,
                                  int anchor)
{
    const struct {
        const char *name;
        int parent, anchor;
    } fields[] = {{"image_size", c->image_size, a->image_size},
                  {"channels", c->channels, a->channels},
                  {"patch", c->patch, a->patch},
                  {"layers", c->layers, a->layers},
                  {"heads", c->heads, a->heads},
                  {"classes", c->classes, a->classes}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (fields[i].parent != fields[i].anchor)
            return tf_error_set(TF_ERR_ARG,
                                "tasks[%d].parents[%d] has %s = %d but the anchor "
                                "(parents[%d]) has %s = %d; fused parents must agree in "
                                "image_size, channels, patch, layers, heads and classes",
                                index, p, fields[i].name, fields[i].parent, anchor, fields[i].name,
                                fields[i].anchor);
    return TF_OK;
}

/* Checks what each method needs of the parents' shapes. */
static tf_status check_methods(const job_fuse *f, const vit_config *cfgs, int index)
{
    const vit_config *a = &cfgs[f->anchor];
    const int grid = a->image_size / a->patch;
    for (int m = 0; m < f->n_methods; m++) {
        const job_method *method = &f->methods[m];
        for (int p = 0; p < f->n_parents; p++) {
            const vit_config *c = &cfgs[p];
            if (method->kind == JOB_METHOD_VANILLA && (c->d != a->d || c->mlp != a->mlp))
                return tf_error_set(TF_ERR_ARG,
                                    "tasks[%d].methods[%d] (%s): vanilla averaging "
                                    "needs parents of equal shapes, but parents[%d] has d = %d, "
                                    "mlp = %d and the anchor d = %d, mlp = %d; use \"method\": "
                                    "\"ot\"",
                                    index, m, method->name, p, c->d, c->mlp, a->d, a->mlp);
            if (method->kind == JOB_METHOD_OT && method->ot.residual == FUSE_RESIDUAL_IDENTITY &&
                c->d != a->d)
                return tf_error_set(TF_ERR_ARG,
                                    "tasks[%d].methods[%d] (%s): residual \"identity\" "
                                    "needs equal widths, but parents[%d] has d = %d and the "
                                    "anchor d = %d",
                                    index, m, method->name, p, c->d, a->d);
        }
        if (method->kind == JOB_METHOD_OT && method->ot.tokens == FUSE_TOKENS_WINDOW &&
            method->ot.window > grid)
            return tf_error_set(TF_ERR_ARG,
                                "tasks[%d].methods[%d].window = %d exceeds the patch "
                                "grid side %d (image_size / patch)",
                                index, m, method->ot.window, grid);
    }
    return TF_OK;
}

/* Checks the outputs of a fuse task: one file per method in output_dir, and the report. */
static tf_status check_fuse_outputs(const check_ctx *ctx, const job_fuse *f, int index)
{
    char key[96], path[JOB_PATH_MAX + 80];
    tf_status st;
    if (f->output_dir[0]) {
        for (int m = 0; m < f->n_methods; m++) {
            snprintf(path, sizeof path, "%s/%s.h5", f->output_dir, f->methods[m].name);
            snprintf(key, sizeof key, "tasks[%d].methods[%d]", index, m);
            if ((st = check_output(ctx, path, f->overwrite, key)) != TF_OK) return st;
            if (f->finetune.steps <= 0) continue;
            snprintf(path, sizeof path, "%s/%s-finetuned.h5", f->output_dir, f->methods[m].name);
            if ((st = check_output(ctx, path, f->overwrite, key)) != TF_OK) return st;
            warn_unused_checkpoint(ctx, path);
        }
    }
    if (f->report[0]) {
        snprintf(key, sizeof key, "tasks[%d].report", index);
        if ((st = check_output(ctx, f->report, f->overwrite, key)) != TF_OK) return st;
    }
    return TF_OK;
}

/* A fuse task may read parents that an earlier train task of the same job writes; their
 * configuration then comes from that task. */
static tf_status check_fuse(const check_ctx *ctx, const job_fuse *f, int index)
{
    char key[64];
    validate_idx_info train, test;
    vit_config cfgs[JOB_MAX_PARENTS];
    tf_status st;
    if (runner_parent_is_bert(ctx->job, f, index, 0)) {
        st = runner_check_bert_fuse(ctx->job, f, index, ctx->ranks, ctx->warn);
        return st != TF_OK ? st : check_fuse_outputs(ctx, f, index);
    }
    /* A missing or unreadable parents[0] is reported as such, not as a ViT model. */
    if (f->data.has_text && (st = check_parent(ctx, f, index, 0, &cfgs[0])) != TF_OK) return st;
    if (f->data.has_text)
        return tf_error_set(TF_ERR_ARG,
                            "tasks[%d].data names a verse corpus, but parents[0] is not a BERT "
                            "model; give ViT parents idx image files",
                            index);
    for (int p = 0; p < f->n_parents; p++)
        if ((st = check_parent(ctx, f, index, p, &cfgs[p])) != TF_OK) return st;
    for (int p = 0; p < f->n_parents; p++)
        if ((st = check_compatible(&cfgs[p], &cfgs[f->anchor], index, p, f->anchor)) != TF_OK)
            return st;
    if ((st = check_methods(f, cfgs, index)) != TF_OK) return st;

    const int finetune = f->finetune.steps > 0;
    st = check_data(ctx, &f->data, &cfgs[f->anchor], finetune, index, &train, &test);
    if (st != TF_OK) return st;
    if (f->calib_samples > train.used)
        return tf_error_set(TF_ERR_ARG,
                            "tasks[%d].calibration_samples = %lld exceeds the %lld "
                            "training images used; lower it, raise data.train_limit or lower "
                            "data.train_offset",
                            index, (long long)f->calib_samples, (long long)train.used);
    if (ctx->warn && f->calib_samples < ctx->ranks)
        JOB_WARN(ctx,
                 "tasks[%d].calibration_samples = %lld is smaller than the %d ranks, so some "
                 "ranks hold no calibration images",
                 index, (long long)f->calib_samples, ctx->ranks);
    snprintf(key, sizeof key, "tasks[%d].finetune.batch_size", index);
    if (finetune && (st = check_batch(ctx, f->finetune.batch_size, &train, key)) != TF_OK)
        return st;
    if (ctx->warn && test.used < ctx->ranks)
        JOB_WARN(ctx,
                 "tasks[%d]: %lld test image%s for %d ranks, so some ranks stay idle during "
                 "evaluation",
                 index, (long long)test.used, plural_s(test.used), ctx->ranks);
    return check_fuse_outputs(ctx, f, index);
}

/* One output file of a job, and whether a train task writes it. */
typedef struct {
    char path[JOB_PATH_MAX + 80];
    int from_train;
} job_output;

/* Lists the outputs of every task into *out (caller frees); returns the count or -1. */
static int job_outputs(const job_file *job, job_output **out)
{
    int total = 0;
    for (int i = 0; i < job->n_tasks; i++) {
        const job_task *task = &job->tasks[i];
        if (task->kind == JOB_TASK_TRAIN)
            total++;
        else
            total +=
                (task->fuse.output_dir[0] ? 2 * task->fuse.n_methods : 0) + !!task->fuse.report[0];
    }
    job_output *list = tf_calloc((size_t)total + 1, sizeof *list);
    if (!list) return -1;
    int n = 0;
    for (int i = 0; i < job->n_tasks; i++) {
        const job_task *task = &job->tasks[i];
        const job_fuse *f = &task->fuse;
        if (task->kind == JOB_TASK_TRAIN) {
            snprintf(list[n].path, sizeof list[n].path, "%s", task->train.output);
            list[n++].from_train = 1;
            continue;
        }
        for (int m = 0; f->output_dir[0] && m < f->n_methods; m++) {
            snprintf(list[n++].path, sizeof list[0].path, "%s/%s.h5", f->output_dir,
                     f->methods[m].name);
            if (f->finetune.steps > 0)
                snprintf(list[n++].path, sizeof list[0].path, "%s/%s-finetuned.h5", f->output_dir,
                         f->methods[m].name);
        }
        if (f->report[0]) snprintf(list[n++].path, sizeof list[0].path, "%s", f->report);
    }
    *out = list;
    return n;
}

/* Returns 1 when writing `out` would replace a file that the job reads: a data file, or a
 * parent unless a train task writes it (the usual train-then-fuse job). */
static int replaces_input(const job_file *job, const job_output *out)
{
    for (int i = 0; i < job->n_tasks; i++) {
        const job_task *task = &job->tasks[i];
        const job_data *d = task->kind == JOB_TASK_TRAIN ? &task->train.data : &task->fuse.data;
        if (same_file(out->path, d->train_images) || same_file(out->path, d->train_labels) ||
            same_file(out->path, d->test_images) || same_file(out->path, d->test_labels))
            return 1;
        for (int p = 0; task->kind == JOB_TASK_FUSE && !out->from_train && p < task->fuse.n_parents;
             p++)
            if (same_file(out->path, task->fuse.parents[p])) return 1;
    }
    return 0;
}

/* No two outputs of a job may be the same file, and no output may replace an input. */
static tf_status check_job_outputs(const job_file *job)
{
    job_output *outputs = NULL;
    int n = job_outputs(job, &outputs);
    if (n < 0) return TF_ERR_NOMEM;
    tf_status st = TF_OK;
    for (int i = 0; st == TF_OK && i < n; i++) {
        for (int j = 0; st == TF_OK && j < i; j++)
            if (same_file(outputs[i].path, outputs[j].path))
                st = tf_error_set(TF_ERR_ARG,
                                  "two outputs of the job are the same file %s; give "
                                  "each task and method its own output",
                                  outputs[i].path);
        if (st == TF_OK && replaces_input(job, &outputs[i]))
            st = tf_error_set(TF_ERR_ARG,
                              "output %s is also an input of the job; choose another "
                              "output path",
                              outputs[i].path);
    }
    free(outputs);
    return st;
}

static tf_status check_job(const check_ctx *ctx)
{
    const job_file *job = ctx->job;
    tf_status st = TF_OK;
    for (int i = 0; st == TF_OK && i < job->n_tasks; i++) {
        const job_task *task = &job->tasks[i];
        st = task->kind == JOB_TASK_TRAIN ? check_train(ctx, &task->train, i)
                                          : check_fuse(ctx, &task->fuse, i);
    }
    if (st == TF_OK) st = check_job_outputs(job);
    if (st != TF_OK) st = tf_error_set(st, "%s: %s", job->path, tf_error_get());
    return st;
}

/* Runs check_job on rank 0 of comm and gives every rank its status and message, so that
 * the file system sees one reader and all ranks fail alike. Collective. */
static tf_status check_job_on_root(MPI_Comm comm, const job_file *job, int validate_only)
{
    int rank = 0, size = 1;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    struct {
        int status;
        char message[2048];
    } report = {TF_OK, ""};
    if (rank == 0) {
        checked_pairs *cache = tf_calloc(1, sizeof *cache);
        check_ctx ctx = {.job = job,
                         .ranks = size,
                         .create_dirs = !validate_only,
                         .warn = validate_only,
                         .cache = cache};
        report.status = (int)check_job(&ctx);
        free(cache);
        if (report.status != TF_OK)
            snprintf(report.message, sizeof report.message, "%s", tf_error_get());
    }
    TF_MPI_CHECK(MPI_Bcast(&report, (int)sizeof report, MPI_BYTE, 0, comm));
    if (report.status != TF_OK) return tf_error_set((tf_status)report.status, "%s", report.message);
    return TF_OK;
}

/* Loads the training and test sets of a task; every rank reads the files. */
tf_status runner_load_data(const job_data *data, tf_image_set **train, tf_image_set **test)
{
    tf_status st = idx_image_set_load(data->train_images, data->train_labels, data->train_offset,
                                      data->train_limit, train);
    if (st == TF_OK)
        st = idx_image_set_load(data->test_images, data->test_labels, 0, data->test_limit, test);
    if (st != TF_OK) idx_image_set_free(train);
    return st;
}

train_schedule runner_train_schedule(const job_train *t, const job_file *job, int64_t steps,
                                     const char *checkpoint)
{
    return (train_schedule){.steps = steps,
                            .batch_size = t->batch_size,
                            .lr = t->optimizer.lr,
                            .min_lr = t->optimizer.min_lr,
                            .weight_decay = t->optimizer.weight_decay,
                            .beta1 = t->optimizer.beta1,
                            .beta2 = t->optimizer.beta2,
                            .eps = t->optimizer.eps,
                            .warmup_steps = t->optimizer.warmup_steps,
                            .seed = t->seed,
                            .log_every = t->log_every,
                            .label = t->name,
                            .checkpoint_path = checkpoint,
                            .checkpoint_every = t->checkpoint_every,
                            .resume = job->resume,
                            .stop_after = job->stop_after};
}

static tf_status run_train(MPI_Comm comm, const job_train *t, const job_file *job)
{
    if (job->resume && runner_file_exists(t->output)) {
        TF_INFO("train %s: %s exists; skipped (resume)", t->name, t->output);
        return TF_OK;
    }
    if (t->arch == JOB_ARCH_BERT) return runner_run_train_bert(comm, t, job);
    char checkpoint[JOB_PATH_MAX + 16];
    snprintf(checkpoint, sizeof checkpoint, "%s.ckpt.h5", t->output);
    tf_image_set *train = NULL, *test = NULL;
    vit_model *model = NULL;
    double accuracy = 0, loss = 0;
    train_result result = {0};

    /* Step 1: data and a freshly initialized model. */
    tf_status st = runner_load_data(&t->data, &train, &test);
    if (st == TF_OK) st = vit_model_create(&t->model, &model);
    if (st != TF_OK) goto done;
    vit_model_init(model, t->seed);
    int64_t per_epoch = train->count / t->batch_size;
    if (per_epoch < 1) per_epoch = 1;
    int64_t steps = t->steps > 0 ? t->steps : per_epoch * t->epochs;
    TF_INFO("train %s: %lld parameters, %lld image%s, batch %d, %lld step%s (%.2f epochs)", t->name,
            (long long)model->num_params, (long long)train->count, plural_s(train->count),
            t->batch_size, (long long)steps, plural_s(steps), (double)steps / (double)per_epoch);

    /* Step 2: data-parallel AdamW. */
    train_options opt = {.s = runner_train_schedule(t, job, steps, checkpoint)};
    st = train_run(comm, model, train, &opt, &result);
    if (st != TF_OK) goto done;

    /* Step 3: test accuracy, then the model file. */
    st = eval_accuracy(comm, model, test, 0, &accuracy, &loss);
    if (st != TF_OK) goto done;
    TF_INFO("train %s: test accuracy %.2f %% (loss %.4f) after %.1f s, %.0f img/s", t->name,
            100 * accuracy, loss, result.seconds, result.images_per_second);
    st = vit_model_save(model, comm, t->output, t->overwrite);
    if (st == TF_OK) TF_INFO("train %s: wrote %s", t->name, t->output);
    if (st == TF_OK) st = ckpt_remove(comm, checkpoint);
done:
    vit_model_free(&model);
    idx_image_set_free(&train);
    idx_image_set_free(&test);
    return st;
}

tf_status runner_run_job(MPI_Comm comm, const job_file *job, int validate_only)
{
    tf_status st = check_job_on_root(comm, job, validate_only);
    if (st != TF_OK || validate_only) {
        remove_created_dirs();
        return st;
    }
    for (int i = 0; st == TF_OK && i < job->n_tasks; i++) {
        const job_task *task = &job->tasks[i];
        double t0 = tf_seconds();
        st = task->kind == JOB_TASK_TRAIN ? run_train(comm, &task->train, job)
                                          : runner_run_fuse(comm, &task->fuse, job);
        if (st == TF_OK)
            TF_INFO("task %d of %d (%s) finished in %.1f s", i + 1, job->n_tasks,
                    task->kind == JOB_TASK_TRAIN ? task->train.name : task->fuse.name,
                    tf_seconds() - t0);
    }
    /* A failed job leaves no directory of its own behind unless something was written in
     * it. Every rank has returned from the failed task, so no file is being written. */
    if (st != TF_OK) remove_created_dirs();
    return st;
}
