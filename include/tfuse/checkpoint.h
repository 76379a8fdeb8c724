/* Training checkpoints: the state that a training loop keeps between optimizer steps,
 * stored in one HDF5 file so that a stopped run continues from its last checkpoint.
 *
 * A checkpoint contains the parameters and both AdamW moments as flat float32 datasets
 * "params", "adam_m" and "adam_v" (num_params each), the counters as root attributes, and
 * the settings of the run (steps, batch, seed, optimizer, model configuration) as root
 * attributes named "setting_<name>". A run resumes only from a checkpoint whose settings
 * all equal its own, so the continued run is bitwise the uninterrupted one at the same
 * rank count. */
#ifndef TFUSE_CHECKPOINT_H
#define TFUSE_CHECKPOINT_H

#include <mpi.h>
#include <stdint.h>
#include "tfuse/common.h"

/* Largest number of settings a caller passes. */
#define CKPT_MAX_SETTINGS 32

/* One setting of a training run that a checkpoint must match: an integer (is_real 0) or a
 * double (is_real 1). Doubles are compared bitwise, since they round-trip exactly. */
typedef struct {
    const char *name;
    int is_real;
    int64_t integer;
    double real;
} ckpt_setting;

/* State of a training loop after `step` optimizer steps. The buffers belong to the caller. */
typedef struct {
    int64_t num_params;
    float *params, *adam_m, *adam_v; /* (num_params) each */
    int64_t step;                    /* optimizer steps done, also AdamW's step count */
    double loss_sum;                 /* training loss summed over all ranks since the last
                                        progress line */
    int64_t loss_steps;              /* steps in loss_sum */
    double last_loss;                /* mean loss of the last progress line, 0 before it */
    int ranks;                       /* size of the communicator that wrote the checkpoint */
} ckpt_state;

/* Writes state and settings to path under a temporary name and renames it when complete
 * (h5f_create with overwrite, then h5f_commit), so an interrupted write leaves the previous
 * checkpoint intact. `arch` ("vit" or "bert") is stored and checked on load. Collective on
 * comm; every rank passes the same (replicated) state. */
tf_status ckpt_save(MPI_Comm comm, const char *path, const char *arch, const ckpt_setting *settings,
                    int n_settings, const ckpt_state *state);

/* Loads the checkpoint at path into state, whose num_params and buffers the caller sets.
 * Collective on comm. Sets *found to 0 and returns TF_OK when path does not exist.
 * Returns TF_ERR_ARG naming the file and the setting when the architecture or a setting
 * differs from the caller's, and TF_ERR_FORMAT or TF_ERR_IO for a file that is not a
 * readable checkpoint or whose tensors do not have num_params elements. On any failure
 * the buffers may be partly overwritten. */
tf_status ckpt_load(MPI_Comm comm, const char *path, const char *arch, const ckpt_setting *settings,
                    int n_settings, ckpt_state *state, int *found);

/* Saves the state of a training loop, as ckpt_save, but with state->loss_sum being this
 * rank's share: the file stores the sum over the ranks of comm. Logs the write, prefixed
 * with label. Collective on comm. */
tf_status ckpt_save_training(MPI_Comm comm, const char *path, const char *arch, const char *label,
                             const ckpt_setting *settings, int n_settings, const ckpt_state *state);

/* Loads a training checkpoint, as ckpt_load, for a run of total_steps steps, and logs the
 * resume. Afterwards rank 0 has the stored loss sum and the other ranks 0, so that the
 * sum over ranks at the next progress line is the stored one. Warns when the checkpoint
 * was written by another number of ranks. Returns TF_ERR_FORMAT when the stored step
 * exceeds total_steps. Collective on comm. */
tf_status ckpt_resume_training(MPI_Comm comm, const char *path, const char *arch, const char *label,
                               const ckpt_setting *settings, int n_settings, int64_t total_steps,
                               ckpt_state *state, int *found);

/* Deletes the checkpoint at path if it exists. Rank 0 removes it and sends the result to
 * the other ranks, so no rank returns before the file is gone. Collective on comm. Returns
 * TF_ERR_IO when the file exists but cannot be removed. */
tf_status ckpt_remove(MPI_Comm comm, const char *path);

/* Returns 1 when path exists, as seen by rank 0 of comm. Collective. */
int ckpt_exists(MPI_Comm comm, const char *path);

#endif
