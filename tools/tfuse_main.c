/* tfuse-mpi: runs a job file under MPI.
 *
 *   mpirun -n 4 tfuse-mpi [--validate] [--verbose] job.json
 */
#include "tfuse/common.h"
#include "tfuse/job.h"
#include "tfuse/runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_usage(FILE *out)
{
    fprintf(out, "usage: mpirun -n N tfuse-mpi [--validate] [--verbose] JOB.json\n"
                 "\n"
                 "Runs the tasks of a job file in order: train tasks train parent models and\n"
                 "fuse tasks fuse them with optimal transport. Both cover two architectures:\n"
                 "  ViT   image classification on Fashion-MNIST (\"architecture\": \"vit\",\n"
                 "        the default)\n"
                 "  BERT  masked language modelling on text, such as a verse corpus\n"
                 "        (\"architecture\": \"bert\")\n"
                 "docs/JOBS.md describes every key of a job file, with examples.\n"
                 "\n"
                 "  --validate  check the job file, its inputs and outputs, then exit\n"
                 "  --verbose   print debug messages (per-problem OT sizes and timings)\n"
                 "  --help      print this help\n");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const char *job_path = NULL;
    int validate_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--validate") == 0) {
            validate_only = 1;
        } else if (strcmp(argv[i], "--verbose") == 0) {
            tf_log_set_level(TF_LOG_DEBUG);
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (tf_world_rank() == 0) print_usage(stdout);
            MPI_Finalize();
            return 0;
        } else if (argv[i][0] == '-') {
            tf_die_all("unknown option %s; see tfuse-mpi --help", argv[i]);
        } else if (job_path) {
            tf_die_all("more than one job file given (%s and %s); pass one", job_path, argv[i]);
        } else {
            job_path = argv[i];
        }
    }
    if (!job_path) {
        if (tf_world_rank() == 0) print_usage(stderr);
        tf_die_all("no job file given");
    }

    /* Every rank reads and checks the same job, so a failure here is the same on all
     * ranks and is reported once. */
    job_file *job = NULL;
    tf_status st = job_file_load(job_path, &job);
    if (st != TF_OK) tf_die_all("%s", tf_error_get());
    st = runner_run_job(MPI_COMM_WORLD, job, 1);
    if (st != TF_OK) tf_die_all("%s", tf_error_get());

    /* A failure while running may hit one rank only: MPI_Abort ends them all. */
    double t0 = tf_seconds();
    if (!validate_only) st = runner_run_job(MPI_COMM_WORLD, job, 0);
    if (st != TF_OK) TF_DIE("%s", tf_error_get());
    if (validate_only)
        TF_INFO("%s: valid (%d task%s)", job_path, job->n_tasks, job->n_tasks == 1 ? "" : "s");
    else if (job->n_tasks == 1)
        TF_INFO("%s: the task finished in %.1f s", job_path, tf_seconds() - t0);
    else
        TF_INFO("%s: all %d tasks finished in %.1f s", job_path, job->n_tasks, tf_seconds() - t0);
    job_file_free(&job);
    MPI_Finalize();
    return 0;
}
