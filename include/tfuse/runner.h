/* Runs the tasks of a job file: train ViT parents, fuse parents, evaluate and report. */
#ifndef TFUSE_RUNNER_H
#define TFUSE_RUNNER_H

#include "tfuse/job.h"

/* Collective on comm. Checks every task's inputs and outputs first (files present, outputs
 * absent unless the task sets overwrite, output directories creatable), then, unless
 * validate_only, runs the tasks in order. Returns the first failure with its message. */
tf_status runner_run_job(MPI_Comm comm, const job_file *job, int validate_only);

#endif
