/* ViT models in HDF5 files (layout in docs/FORMAT.md).
 *
 * One float32 dataset per parameter tensor under /params/<name> (names from
 * vit_param_name, shapes from vit_param_shape, row-major with matrices stored (out, in)),
 * and the architecture as attributes of the root group: format "tfuse-model",
 * format_version 1, architecture "vit", and every vit_config field under its C name. */
#ifndef TFUSE_VIT_IO_H
#define TFUSE_VIT_IO_H

#include <mpi.h>
#include "tfuse/common.h"
#include "tfuse/h5file.h"
#include "tfuse/vit.h"

/* Saves a model to path. Collective on comm; every rank passes the same (replicated)
 * model. The file is written under a temporary name and renamed when complete (see
 * h5f_create). Returns TF_ERR_EXISTS when path exists and overwrite is 0, TF_ERR_IO when
 * the directory is missing or not writable. */
tf_status vit_model_save(const vit_model *model, MPI_Comm comm, const char *path, int overwrite);

/* Writes the model's attributes and /params datasets into an open file under `group`
 * ("/" for a model file, or e.g. "aligned/parent0" for a model stored inside another
 * file; its datasets then go to <group>/params). Collective. */
tf_status vit_model_write(const vit_model *model, h5f_file *f, const char *group);

/* Loads a model from path on every rank of comm. Collective. Returns TF_ERR_FORMAT when an
 * attribute is missing or the format or architecture differ, and TF_ERR_ARG (from
 * vit_config_validate) for an invalid configuration. Returns TF_ERR_FORMAT naming the
 * dataset when one is missing or has the wrong shape, and TF_ERR_NUMERIC naming the tensor
 * and the first bad index when a value is NaN or infinite. On success *out receives a
 * model that the caller frees with vit_model_free. */
tf_status vit_model_load(MPI_Comm comm, const char *path, vit_model **out);

/* Reads a model stored under `group` of an open file, as written by vit_model_write, with
 * the same checks as vit_model_load. Collective. */
tf_status vit_model_read(h5f_file *f, const char *group, vit_model **out);

#endif
