/* Job files: JSON documents that list tasks (train a model, fuse models), read with
 * cJSON and checked against the schema in docs/JOBS.md. Unknown keys, wrong types and
 * out-of-range values are errors that name the file, the key path and the value. */
#ifndef TFUSE_JOB_H
#define TFUSE_JOB_H

#include "tfuse/bert.h"
#include "tfuse/common.h"
#include "tfuse/fuse.h"
#include "tfuse/vit.h"

#define JOB_PATH_MAX 1024
#define JOB_NAME_MAX 64
#define JOB_MAX_PARENTS 64
#define JOB_MAX_METHODS 32
#define JOB_MAX_HELDOUT 66

/* Verse corpus of a BERT task: the data object with a "corpus" key (docs/JOBS.md). */
typedef struct {
    char corpus[JOB_PATH_MAX]; /* corpus file written by tools/bible_corpus.sh */
    int n_heldout;             /* books held out for evaluation */
    char heldout[JOB_MAX_HELDOUT][JOB_NAME_MAX];
    double mask_prob;    /* MLM selection probability, 0.15 in BERT */
    uint64_t eval_seed;  /* seed of the evaluation masks, equal for every model scored */
    int64_t train_limit; /* training sequences used, 0 = all */
} job_text;

typedef struct {
    char train_images[JOB_PATH_MAX];
    char train_labels[JOB_PATH_MAX];
    char test_images[JOB_PATH_MAX];
    char test_labels[JOB_PATH_MAX];
    int64_t train_offset; /* training images skipped before the used ones */
    int64_t train_limit;  /* images used, 0 = all */
    int64_t test_limit;
    int has_text; /* 1: a verse corpus for BERT (text), 0: idx image files */
    job_text text;
} job_data;

typedef struct {
    double lr, min_lr, weight_decay, beta1, beta2, eps;
    int64_t warmup_steps;
} job_optimizer;

enum job_arch { JOB_ARCH_VIT, JOB_ARCH_BERT };

typedef struct {
    char name[JOB_NAME_MAX];
    enum job_arch arch;
    vit_config model;         /* JOB_ARCH_VIT */
    bert_config bert;         /* JOB_ARCH_BERT; bert.vocab 0 takes the size of the vocab file */
    char vocab[JOB_PATH_MAX]; /* BERT: existing vocabulary file; "" trains one on the
                                 training books and writes it to <output>.vocab */
    job_data data;
    job_optimizer optimizer;
    int epochs;
    int64_t steps; /* if > 0, train this many steps instead of whole epochs */
    int batch_size;
    uint64_t seed;
    int log_every;
    int64_t checkpoint_every; /* steps between checkpoints in <output>.ckpt.h5, 0 = none */
    char output[JOB_PATH_MAX];
    int overwrite;
} job_train;

enum job_method_kind { JOB_METHOD_VANILLA, JOB_METHOD_OT };

typedef struct {
    char name[JOB_NAME_MAX];
    enum job_method_kind kind;
    fuse_options ot;
    /* Averaging weights of this method, one per parent: the method's own "weights" or,
     * without that key, a copy of the task's. The task's weights also weigh the
     * parents' predictions in a finetune's distillation targets. */
    int n_weights;
    int own_weights; /* 1 when weights come from the method's own "weights" key */
    double weights[JOB_MAX_PARENTS];
} job_method;

typedef struct {
    int64_t steps; /* 0: no finetune */
    double lr, min_lr, weight_decay;
    int64_t warmup_steps;
    int batch_size;
    uint64_t seed;
    double distill; /* weight of the parents' averaged predictions in the targets, [0, 1] */
    int64_t checkpoint_every; /* steps between checkpoints in
                                 <output_dir>/<method>-finetuned.h5.ckpt.h5, 0 = none */
} job_finetune;

typedef struct {
    char name[JOB_NAME_MAX];
    int n_parents;
    char parents[JOB_MAX_PARENTS][JOB_PATH_MAX];
    int anchor;
    double weights[JOB_MAX_PARENTS];
    job_data data;         /* calibration from train_*, evaluation from test_*; for BERT
                              parents both from the corpus (training and held-out books) */
    int64_t calib_samples; /* calibration images, or sequences for BERT */
    uint64_t calib_seed;   /* which training images or sequences are drawn */
    int n_methods;
    job_method methods[JOB_MAX_METHODS];
    job_finetune finetune;
    char output_dir[JOB_PATH_MAX]; /* one <method>.h5 per method; "" = none */
    char report[JOB_PATH_MAX];     /* JSON report; "" = none */
    int save_aligned;              /* write each aligned parent into the method's file */
    int save_maps;                 /* write the transport maps into the method's file */
    int overwrite;
} job_fuse;

enum job_task_kind { JOB_TASK_TRAIN, JOB_TASK_FUSE };

typedef struct {
    enum job_task_kind kind;
    job_train train;
    job_fuse fuse;
} job_task;

typedef struct {
    char path[JOB_PATH_MAX];
    int resume;         /* reuse outputs that exist and continue from checkpoints */
    int64_t stop_after; /* test hook, not read from JSON: > 0 stops every training loop
                           with an error after that many steps, as if the job were killed */
    int n_tasks;
    job_task *tasks; /* owned */
} job_file;

/* Reads and checks a job file. Not collective (each rank may parse the same file).
 * On failure returns TF_ERR_IO (unreadable) or TF_ERR_ARG (invalid content) with a
 * message naming the file, the key path (e.g. tasks[1].methods[0].solver) and the value
 * found, or for a JSON syntax error "FILE:LINE:COLUMN:" and the text around it.
 * Caller frees with job_file_free. */
tf_status job_file_load(const char *path, job_file **out);
/* Parses job text held in memory; `path` names it in messages. */
tf_status job_file_parse(const char *text, const char *path, job_file **out);
void job_file_free(job_file **job);

/* The method's settings with every default filled in, as a JSON object with the keys of
 * a job file's method (cJSON; the caller deletes it), or NULL if out of memory. For
 * reports and model files, so that every output records how it was made. */
struct cJSON *job_method_json(const job_method *m);
/* The same for a fuse task's finetune settings. */
struct cJSON *job_finetune_json(const job_finetune *f);

#endif
