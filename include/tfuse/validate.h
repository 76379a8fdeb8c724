/* Checks of job inputs that read only file headers and metadata, so that `tfuse-mpi
 * --validate` and the start of every run can reject malformed data and model files before
 * any compute. None of these functions is collective: the job runner calls them on one rank
 * and broadcasts the outcome. */
#ifndef TFUSE_VALIDATE_H
#define TFUSE_VALIDATE_H

#include <stdint.h>
#include "tfuse/common.h"
#include "tfuse/vit.h"

/* What validate_idx_pair learned about an image and label file pair. */
typedef struct {
    int64_t count;  /* images in the files */
    int64_t offset; /* images skipped before the used ones */
    int64_t used;   /* images a loader with the same offset and limit keeps */
    int rows, cols; /* pixels per image */
    int max_label;  /* largest label among the used images */
} validate_idx_info;

/* Checks an idx3 image file and an idx1 label file as idx_image_set_load would read them
 * with the same offset and limit. The checks cover magic numbers, dimensions, equal counts
 * and file lengths. A file shorter than its header promises is rejected, and so is one with
 * bytes after the data when all images after the offset are kept. It reads the headers and
 * the used labels, and decompresses gzip files once to measure their length without keeping
 * the pixels. Returns TF_ERR_IO for a missing or unreadable file, TF_ERR_FORMAT for
 * malformed contents and TF_ERR_ARG for an offset outside [0, count), with a message naming
 * the file and the expected and found values. */
tf_status validate_idx_pair(const char *images_path, const char *labels_path, int64_t offset,
                            int64_t limit, validate_idx_info *info);

/* Checks a model file. It must be an HDF5 file with the root attributes of a tfuse model
 * (format "tfuse-model", format_version 1, architecture "vit", the vit_config fields) and
 * a valid configuration. Every /params dataset must exist, be floating point and have the
 * shape the configuration implies. The checks run in a probe child (include/tfuse/probe.h),
 * which then reads every attribute and dataset with h5f_scan. So a file that crashes or
 * hangs HDF5 fails here, and an accepted file is trusted by the later h5f_open. The values
 * are not checked, so NaN and infinite weights are found only when the model is loaded.
 * On success *cfg receives the configuration. Returns TF_ERR_IO when the file is missing
 * or unreadable, TF_ERR_FORMAT for malformed contents or a failed probe, and TF_ERR_ARG
 * for an invalid configuration, naming the file. */
tf_status validate_model_file(const char *path, vit_config *cfg);

#endif
