/* Data-parallel training and sharded evaluation of ViT classifiers over MPI ranks. */
#ifndef TFUSE_TRAIN_H
#define TFUSE_TRAIN_H

#include "tfuse/checkpoint.h"
#include "tfuse/common.h"
#include "tfuse/data.h"
#include "tfuse/vit.h"

/* Fashion-MNIST pixel statistics after scaling to [0, 1], used to normalize inputs. */
#define TF_FASHION_MEAN 0.2860f
#define TF_FASHION_STD 0.3530f

/* The settings that training ViT and BERT models share. */
typedef struct {
    int64_t steps;      /* optimizer steps */
    int batch_size;     /* global batch, split over the ranks */
    double lr, min_lr, weight_decay, beta1, beta2, eps;
    int64_t warmup_steps;
    uint64_t seed;      /* order of the training examples (and, for BERT, the masks) */
    int log_every;      /* steps between progress lines */
    const char *label;  /* name in progress lines */
    /* Distillation: with distill > 0 the loss is the cross-entropy against
     * (1 - distill) onehot(label) + distill q, where q is the weighted average of the
     * teachers' predicted probabilities (teacher_weights sum to 1). */
    double distill;
    const double *teacher_weights;
    int n_teachers;
    /* Checkpoints: with checkpoint_every > 0 and a checkpoint_path, the state (parameters,
     * AdamW moments, step) is written to checkpoint_path after every checkpoint_every
     * steps. With resume, a checkpoint found there whose settings equal this run's is
     * continued; one with other settings is rejected. The caller deletes the checkpoint
     * once its output is complete (ckpt_remove). */
    const char *checkpoint_path;
    int64_t checkpoint_every;
    int resume;
    /* Test hook that simulates a stopped job: with stop_after in (0, steps) training
     * returns TF_ERR_ARG after that many steps, keeping only the checkpoints written. */
    int64_t stop_after;
} train_schedule;

/* Writes to s the settings of sch that a training checkpoint must match, with the count of
 * training examples under the name count_name, and returns their number. The caller
 * appends the settings of its model after them. */
int train_schedule_settings(const train_schedule *sch, const char *count_name, int64_t count,
                            ckpt_setting *s);

typedef struct {
    train_schedule s;
    vit_model *const *teachers; /* (s.n_teachers) distillation teachers */
} train_options;

typedef struct {
    double final_loss;  /* mean training loss over the last log interval */
    double seconds;
    double images_per_second;
    int64_t first_step; /* steps restored from a checkpoint, 0 without one */
} train_result;

/* Converts images[indices[i]] to floats in (count, rows * cols), normalized with the
 * Fashion-MNIST mean and standard deviation, and writes their labels (may be NULL). */
void tf_images_to_float(const tf_image_set *set, const int64_t *indices, int count,
                        float *out, int *labels);

/* Collective on comm. Trains `model` (replicated on every rank, kept identical) for
 * opt->steps AdamW steps on global batches drawn from a fresh shuffle each epoch; each rank
 * runs forward and backward on its share of the batch and one MPI_Allreduce sums the
 * gradients. Labels must be < model classes (checked). A run resumed from a checkpoint
 * ends with the parameters of an uninterrupted run, bitwise when the rank count is the
 * same. */
tf_status train_run(MPI_Comm comm, vit_model *model, const tf_image_set *train,
                    const train_options *opt, train_result *result);

/* Collective on comm. Test accuracy (fraction correct) and mean cross-entropy of the model
 * on the first `limit` images of set (limit <= 0: all), sharded over ranks. */
tf_status eval_accuracy(MPI_Comm comm, const vit_model *model, const tf_image_set *set,
                        int64_t limit, double *accuracy, double *loss);

/* Collective on comm. The same for the ensemble of n models (equal classes and input
 * shape, any widths): it predicts the class of the largest sum_t weights[t] *
 * softmax(logits_t), and its loss is the mean of -log of that sum at the label. */
tf_status eval_ensemble(MPI_Comm comm, vit_model *const *models, const double *weights, int n,
                        const tf_image_set *set, int64_t limit, double *accuracy, double *loss);

#endif
