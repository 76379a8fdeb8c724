/* The job runner: each task is a flat sequence of steps (load, compute, evaluate, save),
 * with every output written under a temporary name and renamed when complete. */
#include "tfuse/runner.h"
#include "tfuse/data.h"
#include "tfuse/h5file.h"
#include "tfuse/train.h"
#include "tfuse/vit_io.h"
#include "runner_internal.h"

#include <errno.h>
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
        if (mkdir(dir, 0777) != 0 && errno != EEXIST)
            return tf_error_set(TF_ERR_IO, "cannot create directory %s: %s", dir,
                                strerror(errno));
        *p = '/';
    }
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return tf_error_set(TF_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
    if (access(dir, W_OK) != 0)
        return tf_error_set(TF_ERR_IO, "output directory %s is not writable: %s", dir,
                            strerror(errno));
    return TF_OK;
}

static tf_status check_input(const char *path, const char *what)
{
    if (access(path, R_OK) != 0)
        return tf_error_set(TF_ERR_IO, "%s %s cannot be read: %s", what, path, strerror(errno));
    return TF_OK;
}

tf_status runner_check_output(const char *path, int overwrite, const char *key)
{
    if (!overwrite && runner_file_exists(path))
        return tf_error_set(TF_ERR_EXISTS, "output %s (%s) exists; set \"overwrite\": true in "
                            "the task or remove the file", path, key);
    return runner_make_parent_dirs(path);
}

static tf_status check_train(const job_train *t, int index)
{
    char key[64];
    tf_status st = vit_config_validate(&t->model);
    if (st != TF_OK)
        return tf_error_set(st, "tasks[%d].model: %s", index, tf_error_get());
    if ((st = check_input(t->data.train_images, "training images")) != TF_OK) return st;
    if ((st = check_input(t->data.train_labels, "training labels")) != TF_OK) return st;
    if ((st = check_input(t->data.test_images, "test images")) != TF_OK) return st;
    if ((st = check_input(t->data.test_labels, "test labels")) != TF_OK) return st;
    snprintf(key, sizeof key, "tasks[%d].output", index);
    return runner_check_output(t->output, t->overwrite, key);
}

/* A fuse task may read parents that an earlier train task of the same job writes. */
static tf_status check_fuse(const job_file *job, const job_fuse *f, int index)
{
    char key[96], path[JOB_PATH_MAX + 80];
    tf_status st;
    for (int p = 0; p < f->n_parents; p++) {
        int made_earlier = 0;
        for (int k = 0; k < index; k++)
            if (job->tasks[k].kind == JOB_TASK_TRAIN &&
                strcmp(job->tasks[k].train.output, f->parents[p]) == 0)
                made_earlier = 1;
        if (made_earlier) continue;
        snprintf(key, sizeof key, "parent model (tasks[%d].parents[%d])", index, p);
        if ((st = check_input(f->parents[p], key)) != TF_OK) return st;
    }
    if ((st = check_input(f->data.train_images, "calibration images")) != TF_OK) return st;
    if ((st = check_input(f->data.train_labels, "calibration labels")) != TF_OK) return st;
    if ((st = check_input(f->data.test_images, "test images")) != TF_OK) return st;
    if ((st = check_input(f->data.test_labels, "test labels")) != TF_OK) return st;
    if (f->output_dir[0]) {
        for (int m = 0; m < f->n_methods; m++) {
            snprintf(path, sizeof path, "%s/%s.h5", f->output_dir, f->methods[m].name);
            snprintf(key, sizeof key, "tasks[%d].methods[%d]", index, m);
            if ((st = runner_check_output(path, f->overwrite, key)) != TF_OK) return st;
        }
    }
    if (f->report[0]) {
        snprintf(key, sizeof key, "tasks[%d].report", index);
        if ((st = runner_check_output(f->report, f->overwrite, key)) != TF_OK) return st;
    }
    return TF_OK;
}

/* Loads the training and test sets of a task; every rank reads the files. */
tf_status runner_load_data(const job_data *data, tf_image_set **train, tf_image_set **test)
{
    tf_status st = idx_image_set_load(data->train_images, data->train_labels, data->train_limit,
                                      train);
    if (st == TF_OK)
        st = idx_image_set_load(data->test_images, data->test_labels, data->test_limit, test);
    if (st != TF_OK) idx_image_set_free(train);
    return st;
}

static tf_status run_train(MPI_Comm comm, const job_train *t)
{
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
    TF_INFO("train %s: %lld parameters, %lld images, batch %d, %lld steps (%.2f epochs)",
            t->name, (long long)model->num_params, (long long)train->count, t->batch_size,
            (long long)steps, (double)steps / (double)per_epoch);

    /* Step 2: data-parallel AdamW. */
    train_options opt = {.steps = steps, .batch_size = t->batch_size, .lr = t->optimizer.lr,
                         .min_lr = t->optimizer.min_lr,
                         .weight_decay = t->optimizer.weight_decay,
                         .beta1 = t->optimizer.beta1, .beta2 = t->optimizer.beta2,
                         .eps = t->optimizer.eps, .warmup_steps = t->optimizer.warmup_steps,
                         .seed = t->seed, .log_every = t->log_every, .label = t->name};
    st = train_run(comm, model, train, &opt, &result);
    if (st != TF_OK) goto done;

    /* Step 3: test accuracy, then the model file. */
    st = eval_accuracy(comm, model, test, 0, &accuracy, &loss);
    if (st != TF_OK) goto done;
    TF_INFO("train %s: test accuracy %.2f %% (loss %.4f) after %.1f s, %.0f img/s", t->name,
            100 * accuracy, loss, result.seconds, result.images_per_second);
    st = vit_model_save(model, comm, t->output, t->overwrite);
    if (st == TF_OK) TF_INFO("train %s: wrote %s", t->name, t->output);
done:
    vit_model_free(&model);
    idx_image_set_free(&train);
    idx_image_set_free(&test);
    return st;
}

tf_status runner_run_job(MPI_Comm comm, const job_file *job, int validate_only)
{
    tf_status st = TF_OK;
    for (int i = 0; st == TF_OK && i < job->n_tasks; i++) {
        const job_task *task = &job->tasks[i];
        st = task->kind == JOB_TASK_TRAIN ? check_train(&task->train, i)
                                          : check_fuse(job, &task->fuse, i);
        if (st != TF_OK) st = tf_error_set(st, "%s: %s", job->path, tf_error_get());
    }
    if (st != TF_OK || validate_only) return st;
    for (int i = 0; st == TF_OK && i < job->n_tasks; i++) {
        const job_task *task = &job->tasks[i];
        double t0 = tf_seconds();
        st = task->kind == JOB_TASK_TRAIN ? run_train(comm, &task->train)
                                          : runner_run_fuse(comm, &task->fuse);
        if (st == TF_OK)
            TF_INFO("task %d of %d (%s) finished in %.1f s", i + 1, job->n_tasks,
                    task->kind == JOB_TASK_TRAIN ? task->train.name : task->fuse.name,
                    tf_seconds() - t0);
    }
    return st;
}
