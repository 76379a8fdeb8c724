/* Private to the job runner. */
#ifndef TFUSE_RUNNER_INTERNAL_H
#define TFUSE_RUNNER_INTERNAL_H

#include "tfuse/data.h"
#include "tfuse/job.h"

int runner_file_exists(const char *path);
/* Creates the directories above path (like mkdir -p) and checks the last is writable. */
tf_status runner_make_parent_dirs(const char *path);
/* TF_ERR_EXISTS if path exists and overwrite is 0; else creates its directory. */
tf_status runner_check_output(const char *path, int overwrite, const char *key);
tf_status runner_load_data(const job_data *data, tf_image_set **train, tf_image_set **test);
tf_status runner_run_fuse(MPI_Comm comm, const job_fuse *f);

#endif
