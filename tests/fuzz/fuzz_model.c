/* libFuzzer target: the model file reader (vit_model_load on MPI_COMM_SELF) and the model
 * checks of job validation (validate_model_file) on the same file. A file that loads must
 * pass validation, both must agree on the configuration, and neither may leave an HDF5
 * object open. Probes are switched off (TFUSE_PROBE=off), so that both readers run in
 * this process, where the sanitizers and libFuzzer see them. fuzz_model_path.c fuzzes the
 * path with probes. */
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
    setenv("TFUSE_PROBE", "off", 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_temp(0, ".h5", data, size);
    vit_model *model = NULL;
    tf_status loaded = vit_model_load(MPI_COMM_SELF, path, &model);
    vit_config cfg;
    tf_status checked = validate_model_file(path, &cfg);
    if (loaded == TF_OK && checked != TF_OK) {
        fprintf(stderr, "the model loads but validation rejects it: %s\n", tf_error_get());
        abort();
    }
    if (loaded == TF_OK && memcmp(&cfg, &model->cfg, sizeof cfg) != 0) {
        fprintf(stderr, "loader and validation read different configurations\n");
        abort();
    }
    vit_model_free(&model);
    ssize_t open_objects = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (open_objects != 0) {
        fprintf(stderr, "%zd HDF5 objects are still open after reading the file\n", open_objects);
        abort();
    }
    return 0;
}
