/* Tensors and attributes in HDF5 files, written and read collectively with parallel HDF5
 * (the MPI-IO file driver).
 *
 * Every function that takes an h5f_file is collective on the communicator the file was
 * created or opened with, so all ranks call it with the same arguments. All ranks return
 * the same status, and on failure the message of the lowest failing rank. Tensors are
 * replicated: every rank passes or receives the whole tensor. */
#ifndef TFUSE_H5FILE_H
#define TFUSE_H5FILE_H

#include <stddef.h>
#include <stdint.h>
#include <mpi.h>
#include "tfuse/common.h"

typedef struct h5f_file h5f_file;

/* Creates a new file for writing. Collective on comm. The file is written under a
 * temporary name in the same directory ("<path>.tmp.<id>", see h5f_temp_path) and gets its
 * final name only in h5f_commit, so an interrupted job never leaves a partial file at path.
 * Returns TF_ERR_EXISTS when path exists and overwrite is 0, TF_ERR_IO when the directory
 * is missing or not writable or path is a directory. On success *out receives a handle
 * that the caller ends with h5f_commit or h5f_discard. */
tf_status h5f_create(MPI_Comm comm, const char *path, int overwrite, h5f_file **out);

/* Closes the file and renames it to its final path (replacing an existing file when the
 * handle was created with overwrite). Collective. Frees *f and sets it to NULL, also on
 * failure, after which the temporary file is removed. */
tf_status h5f_commit(h5f_file **f);

/* Closes the file and deletes it: the temporary file of a created handle, for failures.
 * Collective. Accepts NULL and a pointer to NULL. On a handle from h5f_open it only closes. */
void h5f_discard(h5f_file **f);

/* Opens an existing file read-only. Collective on comm. Rank 0 first runs h5f_probe on a
 * file that this process has not probed or written before (probe_is_trusted), unless
 * TFUSE_PROBE=off. Returns TF_ERR_IO when path is missing or unreadable and TF_ERR_FORMAT
 * when it is not an HDF5 file or the probe rejects it, naming the path. The caller closes
 * the handle with h5f_close. */
tf_status h5f_open(MPI_Comm comm, const char *path, h5f_file **out);

/* Closes a handle from h5f_open. Collective. Accepts NULL; sets *f to NULL. On a handle
 * from h5f_create it discards the temporary file, like h5f_discard. */
void h5f_close(h5f_file **f);

/* Final path of the file, and the temporary path it is written under until h5f_commit
 * (equal to the final path for handles from h5f_open). Owned by the handle. */
const char *h5f_path(const h5f_file *f);
const char *h5f_temp_path(const h5f_file *f);

/* Writes a tensor of ndims (1..4) dims, row-major, as dataset `name`. The name may contain
 * groups ("maps/layer0/qk"); missing intermediate groups are created. Every rank passes the
 * whole tensor, and each rank writes its block of dims[0] rows with collective MPI-IO
 * (ranks beyond dims[0] write nothing). Stored as IEEE little-endian float32 or float64.
 * Returns TF_ERR_ARG for invalid dims or an existing dataset of that name. */
tf_status h5f_write_f32(h5f_file *f, const char *name, int ndims, const int64_t *dims,
                        const float *data);
tf_status h5f_write_f64(h5f_file *f, const char *name, int ndims, const int64_t *dims,
                        const double *data);

/* Reads dataset `name` into data (the whole tensor) on every rank. Checks that it exists,
 * that its rank and dims equal the expected ones and that its type is floating point;
 * float32 and float64 are converted as needed. Returns TF_ERR_FORMAT, naming the file, the
 * dataset and the expected and found shape, when any check fails. */
tf_status h5f_read_f32(h5f_file *f, const char *name, int ndims, const int64_t *dims, float *data);
tf_status h5f_read_f64(h5f_file *f, const char *name, int ndims, const int64_t *dims, double *data);

/* Returns 1 if a dataset or group `name` exists, else 0 (also when a parent group is
 * missing or on an HDF5 failure). */
int h5f_exists(h5f_file *f, const char *name);

/* Writes a scalar attribute `name` on the object at path `object` ("/" for the root group),
 * replacing an attribute of the same name. Integers are stored as int64, doubles as
 * float64 and strings as variable-length UTF-8. */
tf_status h5f_set_attr_int(h5f_file *f, const char *object, const char *name, int64_t value);
tf_status h5f_set_attr_double(h5f_file *f, const char *object, const char *name, double value);
tf_status h5f_set_attr_string(h5f_file *f, const char *object, const char *name, const char *value);

/* Reads a scalar attribute. Returns TF_ERR_FORMAT when the object or attribute is missing
 * or has the wrong type class (an integer attribute is accepted for a double). Strings may
 * be fixed or variable length; at most size-1 chars are written, plus a NUL, and a longer
 * string is an error. */
tf_status h5f_get_attr_int(h5f_file *f, const char *object, const char *name, int64_t *value);
tf_status h5f_get_attr_double(h5f_file *f, const char *object, const char *name, double *value);
tf_status h5f_get_attr_string(h5f_file *f, const char *object, const char *name, char *value,
                              size_t size);

/* Opens path with serial HDF5 (the default sec2 driver) in this process and reads every
 * attribute of every object and the values of every numeric dataset, so that HDF5 decodes
 * all that tfuse's readers could touch. Makes no MPI call, so a probe child may run it.
 * Not collective. Returns TF_ERR_FORMAT naming the file, the object and HDF5's error text
 * when HDF5 fails on a part of the file. A corrupt file may instead crash or hang HDF5,
 * which is why h5f_probe runs this in a child process. */
tf_status h5f_scan(const char *path);

/* Runs h5f_scan on path in a probe child (include/tfuse/probe.h) and returns its status,
 * or TF_ERR_FORMAT naming the file when the child crashes, times out or exceeds its memory
 * limit. Not collective; makes no MPI call. On TF_OK the file is trusted by this process. */
tf_status h5f_probe(const char *path);

/* Sets the maximum bytes one rank moves in one collective H5Dwrite or H5Dread call; larger
 * tensors go in several calls of whole rows. The default, 1 GiB, stays below the 2 GiB
 * limit of MPI-IO counts. Meant for tests of the splitting; 0 restores the default.
 * Not collective, but all ranks must use the same value. */
void h5f_set_max_transfer_bytes(size_t bytes);

#endif
