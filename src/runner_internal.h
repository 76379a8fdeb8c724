/* Private to the job runner. */
#ifndef TFUSE_RUNNER_INTERNAL_H
#define TFUSE_RUNNER_INTERNAL_H

#include "tfuse/data.h"
#include "tfuse/fuse.h"
#include "tfuse/job.h"
#include "tfuse/train.h"

struct cJSON;
int runner_file_exists(const char *path);
/* Creates the directories above path (like mkdir -p) and checks the last is writable. */
tf_status runner_make_parent_dirs(const char *path);
/* TF_ERR_EXISTS if path exists and overwrite is 0; else creates its directory. */
tf_status runner_check_output(const char *path, int overwrite, const char *key);
tf_status runner_load_data(const job_data *data, tf_image_set **train, tf_image_set **test);
/* Writes a fuse task's JSON report text to f->report through a temporary file and a
 * rename. Called on rank 0 only. */
tf_status runner_write_report(const job_fuse *f, const char *text);
/* Adds to a method's report item the object "timings" with the seconds of each stage of
 * its fusion on rank 0 (OT stages: maxima over the ranks). Returns 0 if out of memory. */
int runner_add_timings(struct cJSON *item, const struct fuse_timings *t);
/* Adds to a fuse report's root the calibration draw and the finetune settings. */
void runner_add_fuse_settings(struct cJSON *root, const job_fuse *f);
/* Returns a new report item for a method with its name, kind and, for OT, its solver,
 * epsilon (when a solver is Sinkhorn), residual policy and attention maps; NULL when out of
 * memory. runner_finish_method_item adds fusion_seconds, resumed, config and, for OT
 * methods built in this run, timings. */
struct cJSON *runner_method_item(const job_method *jm);
void runner_finish_method_item(struct cJSON *item, const job_method *jm, double seconds, int built,
                               const fuse_timings *timings);
/* Collective on comm. Returns st if it failed, else a failure naming `what` if st failed
 * on another rank, so that every rank leaves a setup step together. */
tf_status runner_agree(MPI_Comm comm, tf_status st, const char *what);
/* Writes the method's settings with defaults filled in (job_method_json) as JSON text to
 * the root attribute fusion_config of a fused model file. */
tf_status runner_set_config_attr(struct h5f_file *h5, const job_method *method);
/* Writes the root attribute fusion_job of a fused model file: JSON with the method's
 * settings, the parents, the anchor, the calibration draw and, when finetuned is 1, the
 * finetune settings. */
tf_status runner_set_provenance(struct h5f_file *h5, const job_fuse *f, const job_method *m,
                                int finetuned);
/* Writes a model under group of an open file. */
typedef tf_status (*runner_model_writer)(const void *model, struct h5f_file *h5, const char *group);
/* Writes what a fused model file contains besides the model: the attributes fusion_method,
 * fusion_config, fusion_job, fusion_anchor and fusion_parent<p>, and, as the task asks,
 * each parent aligned into the anchor's basis (aligned[p], written by write_model; aligned
 * may be NULL) and its transport maps (maps[p] may be NULL). d and mlp give each parent's
 * model and MLP widths. */
tf_status runner_write_fusion_parts(struct h5f_file *h5, const job_fuse *f,
                                    const job_method *method, runner_model_writer write_model,
                                    const void *const *aligned, fuse_maps *const *maps,
                                    const int *d, const int *mlp);
/* Commits the fused model file *h5 at path if st is TF_OK, else discards it; returns the
 * first failure. */
tf_status runner_finish_method_file(struct h5f_file **h5, tf_status st, const job_fuse *f,
                                    const char *path);
/* Collective on comm. Checks that the fusion_job attribute of the file at path equals what
 * this job would write, before resume reuses the file. Otherwise fails with a message that
 * names the first differing setting, because the report would describe another model. */
tf_status runner_check_provenance(MPI_Comm comm, const char *path, const job_fuse *f,
                                  const job_method *m, int finetuned);

/* The training schedule of train task t (steps: its step count) and of the finetune of fuse
 * task f, with checkpoints at checkpoint (NULL: none) and the job's resume settings. */
train_schedule runner_train_schedule(const job_train *t, const job_file *job, int64_t steps,
                                     const char *checkpoint);
train_schedule runner_finetune_schedule(const job_fuse *f, const job_file *job, const char *label,
                                        const char *checkpoint);

/* Runs a fuse task of job; with job->resume, methods whose output files exist are loaded
 * from them instead of being rebuilt and finetuned again, and a finetune continues from its
 * checkpoint. Collective on comm. */
tf_status runner_run_fuse(MPI_Comm comm, const job_fuse *f, const job_file *job);

/* ---- BERT tasks (src/runner_bert.c) ---- */

/* Checks the inputs of BERT train task `index` on one rank before any compute:
 * configuration, corpus, held-out books, vocabulary file (unless an earlier task of the job
 * writes it) and batch. Warns when warn (ranks: job size). */
tf_status runner_check_bert_train(const job_file *job, const job_train *t, int index, int ranks,
                                  int warn);
/* Returns 1 when parent p of fuse task `index` is a BERT model: an earlier train task with
 * "architecture": "bert" writes it, or the file's architecture attribute is "bert". */
int runner_parent_is_bert(const job_file *job, const job_fuse *f, int index, int p);
/* Checks a fuse task with BERT parents on one rank: parents, methods, corpus, calibration
 * and finetune batch. Outputs are checked by the caller. */
tf_status runner_check_bert_fuse(const job_file *job, const job_fuse *f, int index, int ranks,
                                 int warn);
/* Returns 1 when the first parent of f is a BERT model file. Collective on comm. */
int runner_fuse_is_bert(MPI_Comm comm, const job_fuse *f);
/* Runs a BERT train or fuse task of job, resuming as runner_run_fuse describes. Collective
 * on comm. */
tf_status runner_run_train_bert(MPI_Comm comm, const job_train *t, const job_file *job);
tf_status runner_run_fuse_bert(MPI_Comm comm, const job_fuse *f, const job_file *job);

#endif
