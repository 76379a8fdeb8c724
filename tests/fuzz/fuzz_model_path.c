/* libFuzzer target: a parent model file on the program's path. validate_model_file runs
 * the model checks in a probe child process, and only a file that the probe accepts is
 * loaded in this process with vit_model_load, as a fuse task does after validation. A
 * crash or hang of HDF5 in the child is an expected outcome, and it must become an error
 * naming the file. A crash of this process is a failure. Also checks that a loaded model
 * has the configuration the probe reported and that no HDF5 object stays open.
 *
 * NOTE: the coverage counters of the child stay in the child, so libFuzzer sees only the
 * branches this process takes. The `model` target explores the readers themselves. */
#include "fuzz_common.h"
#include "tfuse/validate.h"
#include "tfuse/vit_io.h"

#include <hdf5.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    MPI_Init(argc, argv);
    tf_log_set_level(TF_LOG_ERROR);
    /* Below libFuzzer's -timeout (20 s in tools/fuzz.sh), so a hang in the child ends as
     * a probe error and not as a time-out of this process. */
    setenv("TFUSE_PROBE_SECONDS", "5", 0);
    return 0;
}

static void fuzz_require_path(const char *what, const char *path)
{
    if (strstr(tf_error_get(), path) == NULL) {
        fprintf(stderr, "%s failed without naming the file: %s\n", what, tf_error_get());
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_temp(0, ".h5", data, size);
    vit_config cfg;
    vit_model *model = NULL;
    tf_status checked = validate_model_file(path, &cfg);
    if (checked != TF_OK) fuzz_require_path("validate_model_file", path);
    if (checked == TF_OK) {
        tf_status loaded = vit_model_load(MPI_COMM_SELF, path, &model);
        if (loaded != TF_OK) fuzz_require_path("vit_model_load after the probe", path);
        if (loaded == TF_OK && memcmp(&cfg, &model->cfg, sizeof cfg) != 0) {
            fprintf(stderr, "the probe and the loader read different configurations\n");
            abort();
        }
    }
    vit_model_free(&model);
    ssize_t open_objects = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (open_objects != 0) {
        fprintf(stderr, "%zd HDF5 objects are still open after reading the file\n", open_objects);
        abort();
    }
    return 0;
}
