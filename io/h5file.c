/* Tensors and attributes in HDF5 files through parallel HDF5 (MPI-IO driver, collective
 * transfers). Written against HDF5 1.10.
 *
 * Error handling: HDF5's automatic error printing is switched off. Every HDF5 call goes
 * through H5F_CHECK, which records the call, file:line and HDF5's own error text. Every
 * public function ends with h5f_agree, so all ranks return the same status and message. */
#include "tfuse/h5file.h"
#include "tfuse/probe.h"

#include <errno.h>
#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define H5F_MESSAGE_BYTES 2048
#define H5F_DEFAULT_MAX_TRANSFER ((size_t)1 << 30)

struct h5f_file {
    MPI_Comm comm; /* duplicate of the caller's communicator */
    int rank, size;
    hid_t file;      /* HDF5 file, or -1 once closed */
    hid_t dxpl;      /* dataset transfer list with H5FD_MPIO_COLLECTIVE */
    int writable;    /* 1 for handles from h5f_create */
    char *path;      /* final path */
    char *temp_path; /* path written until h5f_commit; equal to path when opened */
};

static size_t max_transfer_bytes = H5F_DEFAULT_MAX_TRANSFER;

void h5f_set_max_transfer_bytes(size_t bytes)
{
    max_transfer_bytes = bytes ? bytes : H5F_DEFAULT_MAX_TRANSFER;
}

/* ---- HDF5 error text ---------------------------------------------------------------- */

typedef struct {
    char text[1024];
    size_t used;
    unsigned entries;
} h5f_error_text;

/* Appends one error stack entry ("H5Dcreate2(): unable to create dataset (name already
 * exists)") to the text. Called by H5Ewalk2 from the innermost entry outwards. */
static herr_t h5f_error_entry(unsigned n, const H5E_error2_t *err, void *data)
{
    h5f_error_text *out = data;
    char minor[160] = "";
    if (H5Eget_msg(err->min_num, NULL, minor, sizeof minor) < 0) minor[0] = '\0';
    int wrote = snprintf(out->text + out->used, sizeof out->text - out->used, "%s%s(): %s%s%s%s",
                         out->entries ? "; " : "", err->func_name, err->desc ? err->desc : "",
                         minor[0] ? " (" : "", minor, minor[0] ? ")" : "");
    if (wrote > 0) out->used += (size_t)wrote;
    if (out->used >= sizeof out->text) out->used = sizeof out->text - 1;
    out->entries++;
    return out->entries >= 3 ? 1 : 0; /* the three innermost entries suffice */
}

/* Records a failed HDF5 call with HDF5's error text and returns TF_ERR_IO. */
static tf_status h5f_fail(const char *path, const char *call, const char *file, int line)
{
    h5f_error_text text = {.used = 0, .entries = 0};
    text.text[0] = '\0';
    hid_t stack = H5Eget_current_stack();
    if (stack >= 0) {
        H5Ewalk2(stack, H5E_WALK_UPWARD, h5f_error_entry, &text);
        H5Eclose_stack(stack);
    }
    return tf_error_set(TF_ERR_IO, "HDF5 call %s failed on '%s' at %s:%d (rank %d): %s", call, path,
                        file, line, tf_world_rank(),
                        text.entries ? text.text : "no HDF5 error message");
}

/* Runs an HDF5 call that returns a negative value on failure (herr_t, hid_t, htri_t);
 * on failure sets `status` and jumps to the function's `exit` label. */
#define H5F_CHECK(path, call)                                                                      \
    do {                                                                                           \
        if ((call) < 0) {                                                                          \
            status = h5f_fail((path), #call, __FILE__, __LINE__);                                  \
            goto exit;                                                                             \
        }                                                                                          \
    } while (0)

/* Switches off HDF5's printing of error stacks: failures are reported through tf_status. */
static void h5f_quiet(void)
{
    static int done = 0;
    if (!done) H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    done = 1;
}

/* Makes all ranks of comm return the same status: if any rank failed, every rank gets the
 * status and message of the lowest failing rank. Collective. */
static tf_status h5f_agree(MPI_Comm comm, tf_status status)
{
    int rank = 0, size = 1;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    int mine = status != TF_OK ? rank : size, first = size;
    TF_MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
    if (first == size) return TF_OK;

    struct {
        int status;
        char message[H5F_MESSAGE_BYTES];
    } report = {.status = (int)status};
    if (rank == first) snprintf(report.message, sizeof report.message, "%s", tf_error_get());
    TF_MPI_CHECK(MPI_Bcast(&report, (int)sizeof report, MPI_BYTE, first, comm));
    return tf_error_set((tf_status)report.status, "%s", report.message);
}

/* ---- Handles ------------------------------------------------------------------------- */

static void h5f_free(h5f_file **f)
{
    if (!f || !*f) return;
    if ((*f)->dxpl >= 0) H5Pclose((*f)->dxpl);
    if ((*f)->comm != MPI_COMM_NULL) MPI_Comm_free(&(*f)->comm);
    if ((*f)->temp_path != (*f)->path) free((*f)->temp_path);
    free((*f)->path);
    free(*f);
    *f = NULL;
}

static tf_status h5f_alloc(MPI_Comm comm, const char *path, h5f_file **out)
{
    h5f_file *f = tf_calloc(1, sizeof *f);
    if (!f) return TF_ERR_NOMEM;
    f->file = -1;
    f->dxpl = -1;
    f->comm = MPI_COMM_NULL;
    TF_MPI_CHECK(MPI_Comm_dup(comm, &f->comm));
    TF_MPI_CHECK(MPI_Comm_rank(f->comm, &f->rank));
    TF_MPI_CHECK(MPI_Comm_size(f->comm, &f->size));
    size_t n = strlen(path) + 1;
    f->path = tf_malloc(n);
    if (!f->path) {
        h5f_free(&f);
        return TF_ERR_NOMEM;
    }
    memcpy(f->path, path, n);
    f->temp_path = f->path;
    *out = f;
    return TF_OK;
}

/* Creates the file access list for the MPI-IO driver on f's communicator and f's
 * collective transfer list. Metadata reads are collective too, so one rank reads the
 * metadata and broadcasts it instead of every rank reading it. */
static tf_status h5f_open_plists(h5f_file *f, hid_t *fapl)
{
    tf_status status = TF_OK;
    H5F_CHECK(f->path, *fapl = H5Pcreate(H5P_FILE_ACCESS));
    H5F_CHECK(f->path, H5Pset_fapl_mpio(*fapl, f->comm, MPI_INFO_NULL));
    H5F_CHECK(f->path, H5Pset_all_coll_metadata_ops(*fapl, 1));
    H5F_CHECK(f->path, H5Pset_coll_metadata_write(*fapl, 1));
    H5F_CHECK(f->path, f->dxpl = H5Pcreate(H5P_DATASET_XFER));
    H5F_CHECK(f->path, H5Pset_dxpl_mpio(f->dxpl, H5FD_MPIO_COLLECTIVE));
exit:
    return status;
}

/* Checks on one rank that the output's directory exists and is writable and that path
 * may be written (not a directory; absent unless overwrite). */
static tf_status h5f_check_target(const char *path, int overwrite)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);

    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return tf_error_set(TF_ERR_IO,
                            "directory '%s' of output file '%s' does not exist; create it or "
                            "change the output path",
                            dir, path);
    if (access(dir, W_OK | X_OK) != 0)
        return tf_error_set(TF_ERR_IO,
                            "directory '%s' of output file '%s' is not writable (%s); choose "
                            "another output path",
                            dir, path, strerror(errno));
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return tf_error_set(TF_ERR_IO, "output path '%s' is a directory; expected a file name",
                                path);
        if (!overwrite)
            return tf_error_set(TF_ERR_EXISTS,
                                "output file '%s' exists; set \"overwrite\": true in the job or "
                                "remove the file",
                                path);
    }
    return TF_OK;
}

/* Sets f->temp_path to "<path>.tmp.<pid of rank 0>.<counter>", unique per process. */
static tf_status h5f_make_temp_path(h5f_file *f)
{
    static int counter = 0;
    long id[2] = {(long)getpid(), counter++};
    TF_MPI_CHECK(MPI_Bcast(id, 2, MPI_LONG, 0, f->comm));
    size_t n = strlen(f->path) + 64;
    f->temp_path = tf_malloc(n);
    if (!f->temp_path) {
        f->temp_path = f->path;
        return TF_ERR_NOMEM;
    }
    snprintf(f->temp_path, n, "%s.tmp.%ld.%ld", f->path, id[0], id[1]);
    return TF_OK;
}

tf_status h5f_create(MPI_Comm comm, const char *path, int overwrite, h5f_file **out)
{
    tf_status status = TF_OK;
    h5f_file *f = NULL;
    hid_t fapl = -1;
    if (!path || !*path || !out) return tf_error_set(TF_ERR_ARG, "h5f_create: empty path");
    *out = NULL;
    h5f_quiet();
    status = h5f_agree(comm, h5f_alloc(comm, path, &f));
    if (status != TF_OK || !f) {
        h5f_free(&f);
        return status != TF_OK ? status : TF_ERR_NOMEM;
    }

    /* Rank 0 checks the target; all ranks take its outcome. */
    if (f->rank == 0) status = h5f_check_target(path, overwrite);
    status = h5f_agree(f->comm, status);
    if (status != TF_OK) goto exit;

    /* Create the file under its temporary name. */
    status = h5f_agree(f->comm, h5f_make_temp_path(f));
    if (status != TF_OK) goto exit;
    f->writable = 1;
    status = h5f_open_plists(f, &fapl);
    if (status != TF_OK) goto exit;
    H5F_CHECK(f->temp_path, f->file = H5Fcreate(f->temp_path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));

exit:
    if (fapl >= 0) H5Pclose(fapl);
    status = h5f_agree(f->comm, status);
    if (status == TF_OK) {
        *out = f;
        return TF_OK;
    }
    h5f_discard(&f); /* removes the temporary file if it was created */
    return status;
}

tf_status h5f_commit(h5f_file **fp)
{
    tf_status status = TF_OK;
    if (!fp || !*fp) return tf_error_set(TF_ERR_ARG, "h5f_commit: NULL file handle");
    h5f_file *f = *fp;
    if (!f->writable) {
        status = tf_error_set(TF_ERR_ARG, "h5f_commit: '%s' was opened read-only", f->path);
        h5f_close(fp);
        return status;
    }

    /* Close, then rank 0 renames once every rank has closed. */
    H5F_CHECK(f->temp_path, H5Fclose(f->file));
    f->file = -1;
exit:
    status = h5f_agree(f->comm, status);
    if (status == TF_OK && f->rank == 0 && rename(f->temp_path, f->path) != 0)
        status = tf_error_set(TF_ERR_IO, "renaming '%s' to '%s' failed: %s", f->temp_path, f->path,
                              strerror(errno));
    if (status == TF_OK && f->rank == 0) probe_trust(f->path); /* written by this job */
    status = h5f_agree(f->comm, status);
    if (status != TF_OK) {
        h5f_discard(fp);
        return status;
    }
    h5f_free(fp);
    return TF_OK;
}

void h5f_discard(h5f_file **fp)
{
    if (!fp || !*fp) return;
    h5f_file *f = *fp;
    if (f->file >= 0) H5Fclose(f->file);
    f->file = -1;
    MPI_Barrier(f->comm);
    if (f->writable && f->rank == 0 && remove(f->temp_path) != 0 && errno != ENOENT)
        TF_WARN("removing temporary file '%s' failed: %s", f->temp_path, strerror(errno));
    MPI_Barrier(f->comm);
    h5f_free(fp);
}

/* Checks on one rank that path is a readable HDF5 file. */
static tf_status h5f_check_source(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return tf_error_set(TF_ERR_IO, "file '%s' not found (%s); check the path", path,
                            strerror(errno));
    if (S_ISDIR(st.st_mode))
        return tf_error_set(TF_ERR_IO, "'%s' is a directory; expected an HDF5 file", path);
    if (access(path, R_OK) != 0)
        return tf_error_set(TF_ERR_IO, "file '%s' is not readable: %s", path, strerror(errno));
    htri_t is_hdf5 = H5Fis_hdf5(path);
    if (is_hdf5 <= 0) return tf_error_set(TF_ERR_FORMAT, "file '%s' is not an HDF5 file", path);
    return TF_OK;
}

tf_status h5f_open(MPI_Comm comm, const char *path, h5f_file **out)
{
    tf_status status = TF_OK;
    h5f_file *f = NULL;
    hid_t fapl = -1;
    if (!path || !*path || !out) return tf_error_set(TF_ERR_ARG, "h5f_open: empty path");
    *out = NULL;
    h5f_quiet();
    status = h5f_agree(comm, h5f_alloc(comm, path, &f));
    if (status != TF_OK || !f) {
        h5f_free(&f);
        return status != TF_OK ? status : TF_ERR_NOMEM;
    }

    /* Rank 0 checks the file. It parses a file for the first time in a probe child, so a
     * corrupt file that crashes or hangs HDF5 fails with a message instead. */
    if (f->rank == 0) status = h5f_check_source(path);
    if (status == TF_OK && f->rank == 0 && probe_enabled() && !probe_is_trusted(path))
        status = h5f_probe(path);
    status = h5f_agree(f->comm, status);
    if (status != TF_OK) goto exit;

    status = h5f_open_plists(f, &fapl);
    if (status != TF_OK) goto exit;
    H5F_CHECK(f->path, f->file = H5Fopen(f->path, H5F_ACC_RDONLY, fapl));

exit:
    if (fapl >= 0) H5Pclose(fapl);
    status = h5f_agree(f->comm, status);
    if (status == TF_OK) {
        *out = f;
        return TF_OK;
    }
    h5f_close(&f);
    return status;
}

void h5f_close(h5f_file **fp)
{
    if (!fp || !*fp) return;
    if ((*fp)->writable) {
        h5f_discard(fp);
        return;
    }
    if ((*fp)->file >= 0) H5Fclose((*fp)->file);
    h5f_free(fp);
}

const char *h5f_path(const h5f_file *f)
{
    return f ? f->path : "";
}

const char *h5f_temp_path(const h5f_file *f)
{
    return f ? f->temp_path : "";
}

/* ---- Names and shapes ------------------------------------------------------------- */

/* Returns 1 if every prefix of `name` ("a", "a/b", "a/b/c") is a link, 0 if one is missing,
 * -1 on an HDF5 failure. H5Lexists fails rather than returning 0 when a parent is missing,
 * hence the walk. */
static int h5f_link_exists(hid_t file, const char *name)
{
    char prefix[4096];
    size_t n = strlen(name);
    if (n == 0 || n >= sizeof prefix) return 0;
    if (strcmp(name, "/") == 0) return 1;
    for (size_t i = 1; i <= n; i++) {
        if (i < n && name[i] != '/') continue;
        memcpy(prefix, name, i);
        prefix[i] = '\0';
        htri_t found = H5Lexists(file, prefix, H5P_DEFAULT);
        if (found <= 0) return found < 0 ? -1 : 0;
    }
    return 1;
}

int h5f_exists(h5f_file *f, const char *name)
{
    if (!f || !name) return 0;
    int found = h5f_link_exists(f->file, name) == 1;
    int all = 0;
    TF_MPI_CHECK(MPI_Allreduce(&found, &all, 1, MPI_INT, MPI_MIN, f->comm));
    return all;
}

/* Formats a shape as "(2, 3, 4)". */
static const char *h5f_shape_str(char *buf, size_t size, int ndims, const int64_t *dims)
{
    size_t used = (size_t)snprintf(buf, size, "(");
    for (int i = 0; i < ndims && used < size; i++)
        used +=
            (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "", (long long)dims[i]);
    if (used < size) snprintf(buf + used, size - used, ")");
    return buf;
}

/* Checks the arguments of a read or write and computes the rows (dims[0]) and the
 * elements per row. Counts must fit in int64 and bytes in size_t. */
static tf_status h5f_check_shape(const h5f_file *f, const char *name, int ndims,
                                 const int64_t *dims, const void *data, size_t elem_bytes,
                                 int64_t *row_elems)
{
    if (!f || !name || !*name || !dims || !data)
        return tf_error_set(TF_ERR_ARG, "h5f: NULL file, dataset name, dims or data");
    if (ndims < 1 || ndims > 4)
        return tf_error_set(TF_ERR_ARG, "dataset '%s' in '%s': %d dims; expected 1 to 4", name,
                            f->path, ndims);
    int64_t per_row = 1, total = 1;
    for (int i = 0; i < ndims; i++) {
        if (dims[i] < 0)
            return tf_error_set(TF_ERR_ARG, "dataset '%s' in '%s': dim %d is %lld; expected >= 0",
                                name, f->path, i, (long long)dims[i]);
        if (dims[i] > 0 && total > INT64_MAX / dims[i] / (int64_t)elem_bytes)
            return tf_error_set(TF_ERR_ARG, "dataset '%s' in '%s': element count overflows", name,
                                f->path);
        total *= dims[i];
        if (i > 0) per_row *= dims[i];
    }
    if ((uint64_t)total > SIZE_MAX / elem_bytes)
        return tf_error_set(TF_ERR_ARG, "dataset '%s' in '%s': %lld elements do not fit in memory",
                            name, f->path, (long long)total);
    *row_elems = per_row;
    return TF_OK;
}

/* ---- Transfers -------------------------------------------------------------------- */

/* One collective transfer of rows [r0, r0 + n) between the dataset and buf (which contains
 * exactly those rows); n may be 0, and the rank then selects nothing but still takes part. */
static tf_status h5f_transfer_rows(h5f_file *f, hid_t dset, hid_t filespace, int ndims,
                                   const hsize_t *dims, int64_t r0, int64_t n, hid_t mem_type,
                                   void *buf, int write)
{
    tf_status status = TF_OK;
    hid_t memspace = -1;
    hsize_t start[4] = {(hsize_t)r0, 0, 0, 0}, count[4] = {(hsize_t)n, 0, 0, 0};
    hsize_t elems = (hsize_t)n;
    for (int i = 1; i < ndims; i++) {
        count[i] = dims[i];
        elems *= dims[i];
    }
    hsize_t mem_dims[1] = {elems > 0 ? elems : 1};
    H5F_CHECK(f->path, memspace = H5Screate_simple(1, mem_dims, NULL));
    if (elems == 0) {
        H5F_CHECK(f->path, H5Sselect_none(memspace));
        H5F_CHECK(f->path, H5Sselect_none(filespace));
    } else {
        H5F_CHECK(f->path,
                  H5Sselect_hyperslab(filespace, H5S_SELECT_SET, start, NULL, count, NULL));
    }
    if (write)
        H5F_CHECK(f->path, H5Dwrite(dset, mem_type, memspace, filespace, f->dxpl, buf));
    else
        H5F_CHECK(f->path, H5Dread(dset, mem_type, memspace, filespace, f->dxpl, buf));
exit:
    if (memspace >= 0) H5Sclose(memspace);
    return status;
}

/* Transfers rows [lo, hi) of this rank (buf contains them) in collective calls of at most
 * max_transfer_bytes per rank. Every rank makes the same number of calls, computed from
 * max_rows, the largest row count of any rank. */
static tf_status h5f_transfer(h5f_file *f, const char *name, hid_t dset, hid_t filespace, int ndims,
                              const hsize_t *dims, int64_t lo, int64_t hi, int64_t max_rows,
                              hid_t mem_type, size_t elem_bytes, void *buf, int write)
{
    int64_t row_elems = 1;
    for (int i = 1; i < ndims; i++) row_elems *= (int64_t)dims[i];
    size_t row_bytes = (size_t)row_elems * elem_bytes;
    if (row_elems == 0 || max_rows == 0) return TF_OK; /* empty on every rank */
    if (row_bytes > max_transfer_bytes || row_bytes > INT_MAX)
        return tf_error_set(TF_ERR_ARG,
                            "dataset '%s' in '%s': one row (dims[0] index) has %zu bytes, more "
                            "than the %zu bytes one transfer may move; reshape the tensor so "
                            "that dims[0] is larger",
                            name, f->path, row_bytes, max_transfer_bytes);

    int64_t rows_per_call = (int64_t)(max_transfer_bytes / row_bytes);
    if ((size_t)rows_per_call * row_bytes > INT_MAX) rows_per_call = INT_MAX / (int64_t)row_bytes;
    int64_t calls = (max_rows + rows_per_call - 1) / rows_per_call;
    for (int64_t k = 0; k < calls; k++) {
        int64_t r0 = lo + k * rows_per_call;
        int64_t n = 0;
        if (r0 < hi) n = hi - r0 < rows_per_call ? hi - r0 : rows_per_call;
        char *at = (char *)buf + (size_t)(r0 < hi ? r0 - lo : 0) * row_bytes;
        tf_status status =
            h5f_transfer_rows(f, dset, filespace, ndims, dims, r0, n, mem_type, at, write);
        if (status != TF_OK) return status;
    }
    return TF_OK;
}

/* Writes a replicated tensor: rank r writes rows [rows * r / size, rows * (r + 1) / size). */
static tf_status h5f_write(h5f_file *f, const char *name, int ndims, const int64_t *dims,
                           const void *data, hid_t file_type, hid_t mem_type, size_t elem_bytes)
{
    tf_status status = TF_OK;
    hid_t space = -1, lcpl = -1, dset = -1;
    int64_t row_elems = 0;
    status = h5f_check_shape(f, name, ndims, dims, data, elem_bytes, &row_elems);
    if (status != TF_OK) goto exit;
    if (!f->writable) {
        status = tf_error_set(TF_ERR_ARG, "cannot write dataset '%s': '%s' is open read-only", name,
                              f->path);
        goto exit;
    }
    int found = h5f_link_exists(f->file, name);
    if (found != 0) {
        status = found < 0 ? h5f_fail(f->path, "H5Lexists", __FILE__, __LINE__)
                           : tf_error_set(TF_ERR_ARG, "dataset '%s' already exists in '%s'", name,
                                          f->path);
        goto exit;
    }

    /* Create the dataset and its missing parent groups. */
    hsize_t hdims[4];
    for (int i = 0; i < ndims; i++) hdims[i] = (hsize_t)dims[i];
    H5F_CHECK(f->path, space = H5Screate_simple(ndims, hdims, NULL));
    H5F_CHECK(f->path, lcpl = H5Pcreate(H5P_LINK_CREATE));
    H5F_CHECK(f->path, H5Pset_create_intermediate_group(lcpl, 1));
    H5F_CHECK(f->path,
              dset = H5Dcreate2(f->file, name, file_type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT));

    /* Each rank writes its own block of rows. */
    int64_t rows = dims[0];
    int64_t lo = rows * f->rank / f->size, hi = rows * (f->rank + 1) / f->size;
    int64_t max_rows = (rows + f->size - 1) / f->size;
    const char *block = (const char *)data + (size_t)(lo * row_elems) * elem_bytes;
    status = h5f_transfer(f, name, dset, space, ndims, hdims, lo, hi, max_rows, mem_type,
                          elem_bytes, (void *)block, 1);
exit:
    if (dset >= 0) H5Dclose(dset);
    if (lcpl >= 0) H5Pclose(lcpl);
    if (space >= 0) H5Sclose(space);
    return f ? h5f_agree(f->comm, status) : status;
}

tf_status h5f_write_f32(h5f_file *f, const char *name, int ndims, const int64_t *dims,
                        const float *data)
{
    return h5f_write(f, name, ndims, dims, data, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, sizeof(float));
}

tf_status h5f_write_f64(h5f_file *f, const char *name, int ndims, const int64_t *dims,
                        const double *data)
{
    return h5f_write(f, name, ndims, dims, data, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, sizeof(double));
}

/* Opens dataset `name` and checks that it has the expected shape and a floating-point
 * type. On success *dset and *space are open. */
static tf_status h5f_open_checked(h5f_file *f, const char *name, int ndims, const int64_t *dims,
                                  hid_t *dset, hid_t *space)
{
    tf_status status = TF_OK;
    hid_t type = -1;
    char want[128], got[128];
    int found = h5f_link_exists(f->file, name);
    if (found <= 0) {
        status =
            found < 0
                ? h5f_fail(f->path, "H5Lexists", __FILE__, __LINE__)
                : tf_error_set(TF_ERR_FORMAT, "file '%s' has no dataset '%s' (expected shape %s)",
                               f->path, name, h5f_shape_str(want, sizeof want, ndims, dims));
        goto exit;
    }
    H5F_CHECK(f->path, *dset = H5Oopen(f->file, name, H5P_DEFAULT));
    if (H5Iget_type(*dset) != H5I_DATASET) {
        status = tf_error_set(TF_ERR_FORMAT, "'%s' in file '%s' is a group; expected a dataset",
                              name, f->path);
        goto exit;
    }
    H5F_CHECK(f->path, *space = H5Dget_space(*dset));

    /* Shape. */
    hsize_t hdims[H5S_MAX_RANK];
    int file_ndims = 0;
    H5F_CHECK(f->path, file_ndims = H5Sget_simple_extent_ndims(*space));
    H5F_CHECK(f->path, H5Sget_simple_extent_dims(*space, hdims, NULL));
    int64_t file_dims[H5S_MAX_RANK];
    int same = file_ndims == ndims;
    for (int i = 0; i < file_ndims; i++) {
        file_dims[i] = (int64_t)hdims[i];
        if (i < ndims && file_dims[i] != dims[i]) same = 0;
    }
    if (!same) {
        status = tf_error_set(TF_ERR_FORMAT, "dataset '%s' in file '%s' has shape %s; expected %s",
                              name, f->path, h5f_shape_str(got, sizeof got, file_ndims, file_dims),
                              h5f_shape_str(want, sizeof want, ndims, dims));
        goto exit;
    }

    /* Type class. */
    H5F_CHECK(f->path, type = H5Dget_type(*dset));
    if (H5Tget_class(type) != H5T_FLOAT)
        status = tf_error_set(TF_ERR_FORMAT,
                              "dataset '%s' in file '%s' is not floating point; expected float32 "
                              "or float64",
                              name, f->path);
exit:
    if (type >= 0) H5Tclose(type);
    return status;
}

/* Reads a whole dataset on every rank. */
static tf_status h5f_read(h5f_file *f, const char *name, int ndims, const int64_t *dims, void *data,
                          hid_t mem_type, size_t elem_bytes)
{
    tf_status status = TF_OK;
    hid_t dset = -1, space = -1;
    int64_t row_elems = 0;
    status = h5f_check_shape(f, name, ndims, dims, data, elem_bytes, &row_elems);
    if (status != TF_OK) goto exit;
    status = h5f_open_checked(f, name, ndims, dims, &dset, &space);
    if (status != TF_OK) goto exit;

    hsize_t hdims[4];
    for (int i = 0; i < ndims; i++) hdims[i] = (hsize_t)dims[i];
    status = h5f_transfer(f, name, dset, space, ndims, hdims, 0, dims[0], dims[0], mem_type,
                          elem_bytes, data, 0);
exit:
    if (space >= 0) H5Sclose(space);
    if (dset >= 0) H5Oclose(dset);
    return f ? h5f_agree(f->comm, status) : status;
}

tf_status h5f_read_f32(h5f_file *f, const char *name, int ndims, const int64_t *dims, float *data)
{
    return h5f_read(f, name, ndims, dims, data, H5T_NATIVE_FLOAT, sizeof(float));
}

tf_status h5f_read_f64(h5f_file *f, const char *name, int ndims, const int64_t *dims, double *data)
{
    return h5f_read(f, name, ndims, dims, data, H5T_NATIVE_DOUBLE, sizeof(double));
}

/* ---- Attributes ------------------------------------------------------------------- */

/* Writes a scalar attribute, replacing an existing one. */
static tf_status h5f_attr_write(h5f_file *f, const char *object, const char *name, hid_t file_type,
                                hid_t mem_type, const void *value)
{
    tf_status status = TF_OK;
    hid_t obj = -1, space = -1, attr = -1;
    if (!f || !object || !name || !*name)
        return tf_error_set(TF_ERR_ARG, "h5f: NULL file, object or attribute name");
    if (!f->writable) {
        status = tf_error_set(TF_ERR_ARG, "cannot write attribute '%s': '%s' is open read-only",
                              name, f->path);
        goto exit;
    }
    if (h5f_link_exists(f->file, object) != 1) {
        status = tf_error_set(TF_ERR_ARG, "cannot write attribute '%s': file '%s' has no '%s'",
                              name, f->path, object);
        goto exit;
    }
    H5F_CHECK(f->path, obj = H5Oopen(f->file, object, H5P_DEFAULT));
    htri_t exists = 0;
    H5F_CHECK(f->path, exists = H5Aexists(obj, name));
    if (exists) H5F_CHECK(f->path, H5Adelete(obj, name));
    H5F_CHECK(f->path, space = H5Screate(H5S_SCALAR));
    H5F_CHECK(f->path, attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT));
    H5F_CHECK(f->path, H5Awrite(attr, mem_type, value));
exit:
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    if (obj >= 0) H5Oclose(obj);
    return h5f_agree(f->comm, status);
}

tf_status h5f_set_attr_int(h5f_file *f, const char *object, const char *name, int64_t value)
{
    return h5f_attr_write(f, object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

tf_status h5f_set_attr_double(h5f_file *f, const char *object, const char *name, double value)
{
    return h5f_attr_write(f, object, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

/* Variable-length UTF-8 string type; the caller closes it. */
static hid_t h5f_string_type(void)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    if (type < 0) return type;
    if (H5Tset_size(type, H5T_VARIABLE) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        H5Tclose(type);
        return -1;
    }
    return type;
}

tf_status h5f_set_attr_string(h5f_file *f, const char *object, const char *name, const char *value)
{
    tf_status status = TF_OK;
    hid_t type = -1;
    if (!f || !value) return tf_error_set(TF_ERR_ARG, "h5f_set_attr_string: NULL file or value");
    H5F_CHECK(f->path, type = h5f_string_type());
exit:
    if (status == TF_OK)
        status = h5f_attr_write(f, object, name, type, type, &value);
    else
        status = h5f_agree(f->comm, status);
    if (type >= 0) H5Tclose(type);
    return status;
}

/* Opens scalar attribute `name` of `object` and checks that its type class is one of
 * class_a and class_b. On success *attr and *type are open. */
static tf_status h5f_attr_open(h5f_file *f, const char *object, const char *name,
                               H5T_class_t class_a, H5T_class_t class_b, const char *expected,
                               hid_t *attr, hid_t *type)
{
    tf_status status = TF_OK;
    hid_t space = -1;
    if (h5f_link_exists(f->file, object) != 1)
        return tf_error_set(TF_ERR_FORMAT, "file '%s' has no object '%s' (reading attribute '%s')",
                            f->path, object, name);
    htri_t exists = 0;
    H5F_CHECK(f->path, exists = H5Aexists_by_name(f->file, object, name, H5P_DEFAULT));
    if (!exists)
        return tf_error_set(TF_ERR_FORMAT, "file '%s' has no attribute '%s' on '%s'", f->path, name,
                            object);
    H5F_CHECK(f->path, *attr = H5Aopen_by_name(f->file, object, name, H5P_DEFAULT, H5P_DEFAULT));
    H5F_CHECK(f->path, *type = H5Aget_type(*attr));
    H5F_CHECK(f->path, space = H5Aget_space(*attr));
    hssize_t points = 0;
    H5F_CHECK(f->path, points = H5Sget_simple_extent_npoints(space));
    H5T_class_t cls = H5Tget_class(*type);
    if (points != 1 || (cls != class_a && cls != class_b))
        status =
            tf_error_set(TF_ERR_FORMAT, "attribute '%s' on '%s' in file '%s' is not a scalar %s",
                         name, object, f->path, expected);
exit:
    if (space >= 0) H5Sclose(space);
    return status;
}

/* Reads a numeric scalar attribute converted to mem_type. */
static tf_status h5f_attr_read_number(h5f_file *f, const char *object, const char *name,
                                      H5T_class_t class_a, H5T_class_t class_b,
                                      const char *expected, hid_t mem_type, void *value)
{
    tf_status status = TF_OK;
    hid_t attr = -1, type = -1;
    if (!f || !object || !name || !value)
        return tf_error_set(TF_ERR_ARG, "h5f: NULL file, object, attribute name or value");
    status = h5f_attr_open(f, object, name, class_a, class_b, expected, &attr, &type);
    if (status != TF_OK) goto exit;
    H5F_CHECK(f->path, H5Aread(attr, mem_type, value));
exit:
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return f ? h5f_agree(f->comm, status) : status;
}

tf_status h5f_get_attr_int(h5f_file *f, const char *object, const char *name, int64_t *value)
{
    return h5f_attr_read_number(f, object, name, H5T_INTEGER, H5T_INTEGER, "integer",
                                H5T_NATIVE_INT64, value);
}

tf_status h5f_get_attr_double(h5f_file *f, const char *object, const char *name, double *value)
{
    return h5f_attr_read_number(f, object, name, H5T_FLOAT, H5T_INTEGER, "number",
                                H5T_NATIVE_DOUBLE, value);
}

/* Reads a string attribute of either variable or fixed length into a new buffer. */
static tf_status h5f_attr_read_string(h5f_file *f, hid_t attr, hid_t type, char **out)
{
    tf_status status = TF_OK;
    hid_t mem_type = -1;
    htri_t variable = 0;
    H5F_CHECK(f->path, variable = H5Tis_variable_str(type));
    H5F_CHECK(f->path, mem_type = H5Tcopy(H5T_C_S1));
    H5F_CHECK(f->path, H5Tset_cset(mem_type, H5Tget_cset(type))); /* HDF5 cannot convert csets */
    if (variable) {
        char *text = NULL;
        H5F_CHECK(f->path, H5Tset_size(mem_type, H5T_VARIABLE));
        H5F_CHECK(f->path, H5Aread(attr, mem_type, &text));
        size_t n = text ? strlen(text) + 1 : 1;
        *out = tf_malloc(n);
        if (*out) memcpy(*out, text ? text : "", n);
        H5free_memory(text);
    } else {
        /* One byte more than stored: a null-padded string of n chars has no terminator,
         * and a null-terminated memory type of size n would drop its last char. */
        size_t n = H5Tget_size(type);
        H5F_CHECK(f->path, H5Tset_size(mem_type, n + 1));
        *out = tf_calloc(n + 1, 1);
        if (*out) H5F_CHECK(f->path, H5Aread(attr, mem_type, *out));
    }
    if (!*out) status = TF_ERR_NOMEM;
exit:
    if (mem_type >= 0) H5Tclose(mem_type);
    return status;
}

tf_status h5f_get_attr_string(h5f_file *f, const char *object, const char *name, char *value,
                              size_t size)
{
    tf_status status = TF_OK;
    hid_t attr = -1, type = -1;
    char *text = NULL;
    if (!f || !object || !name || !value || size == 0)
        return tf_error_set(TF_ERR_ARG, "h5f_get_attr_string: NULL argument or zero size");
    status = h5f_attr_open(f, object, name, H5T_STRING, H5T_STRING, "string", &attr, &type);
    if (status != TF_OK) goto exit;
    status = h5f_attr_read_string(f, attr, type, &text);
    if (status != TF_OK || !text) goto exit;
    if (strlen(text) >= size) {
        status = tf_error_set(TF_ERR_FORMAT,
                              "attribute '%s' on '%s' in file '%s' has %zu characters; expected "
                              "at most %zu",
                              name, object, f->path, strlen(text), size - 1);
        goto exit;
    }
    memcpy(value, text, strlen(text) + 1);
exit:
    free(text);
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return h5f_agree(f->comm, status);
}

/* ---- Probing ------------------------------------------------------------------------- */

enum { H5F_SCAN_BLOCK_BYTES = 64 << 20 }; /* dataset bytes read at once by h5f_scan */

/* State of one h5f_scan: the file and the first failure. */
typedef struct {
    const char *path;
    tf_status status;
} h5f_scan_state;

/* Records the first failure of a scan with HDF5's error text and returns -1, which stops
 * the iteration. Unlike h5f_fail it makes no MPI call, so a probe child may call it. */
static herr_t h5f_scan_fail(h5f_scan_state *scan, const char *what, const char *object)
{
    h5f_error_text text = {.used = 0, .entries = 0};
    text.text[0] = '\0';
    hid_t stack = H5Eget_current_stack();
    if (stack >= 0) {
        H5Ewalk2(stack, H5E_WALK_UPWARD, h5f_error_entry, &text);
        H5Eclose_stack(stack);
    }
    if (scan->status == TF_OK)
        scan->status = tf_error_set(
            TF_ERR_FORMAT, "HDF5 file '%s': %s '%s' failed (%s); the file is corrupt", scan->path,
            what, object, text.entries ? text.text : "no HDF5 error message");
    return -1;
}

/* Reads a string attribute as h5f_get_attr_string does: variable length, or fixed length
 * with one more byte than stored. */
static herr_t h5f_scan_string(hid_t attr, hid_t type, hssize_t points)
{
    hid_t mem = H5Tcopy(H5T_C_S1);
    htri_t variable = H5Tis_variable_str(type);
    size_t size = variable > 0 ? sizeof(char *) : H5Tget_size(type) + 1;
    size_t count = points > 0 ? (size_t)points : 1;
    void *buf = calloc(count, size);
    herr_t result = -1;
    if (mem >= 0 && variable >= 0 && buf && H5Tset_cset(mem, H5Tget_cset(type)) >= 0 &&
        H5Tset_size(mem, variable > 0 ? H5T_VARIABLE : size) >= 0) {
        result = H5Aread(attr, mem, buf);
        if (result >= 0 && variable > 0) {
            char **texts = buf;
            for (hssize_t i = 0; i < points; i++) H5free_memory(texts[i]);
        }
    }
    free(buf);
    if (mem >= 0) H5Tclose(mem);
    return result;
}

/* Reads every element of one attribute (H5Aiterate2 callback). Strings are read as the
 * readers read them, other types converted to their native type. */
static herr_t h5f_scan_attr(hid_t object, const char *name, const H5A_info_t *info, void *data)
{
    h5f_scan_state *scan = data;
    probe_stage("reading attribute '%s'", name);
    hid_t attr = H5Aopen(object, name, H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    hid_t space = attr >= 0 ? H5Aget_space(attr) : -1;
    hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    herr_t result = -1;
    if (type >= 0 && points >= 0 && H5Tget_class(type) == H5T_STRING) {
        result = h5f_scan_string(attr, type, points);
    } else if (type >= 0 && points >= 0) {
        hid_t mem = H5Tget_native_type(type, H5T_DIR_DEFAULT);
        size_t size = mem >= 0 ? H5Tget_size(mem) : 0;
        size_t count = points > 0 ? (size_t)points : 1;
        void *buf = size > 0 ? calloc(count, size) : NULL;
        if (buf) result = H5Aread(attr, mem, buf);
        if (result >= 0) H5Dvlen_reclaim(mem, space, H5P_DEFAULT, buf);
        free(buf);
        if (mem >= 0) H5Tclose(mem);
    }
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return result < 0 ? h5f_scan_fail(scan, "reading attribute", name) : 0;
}

/* Reads rows [first, first + n) of a dataset of ndims >= 1 dims into buf. */
static herr_t h5f_scan_rows(hid_t dset, hid_t space, hid_t mem, int ndims, const hsize_t *dims,
                            hsize_t first, hsize_t n, void *buf)
{
    hsize_t start[H5S_MAX_RANK] = {0}, count[H5S_MAX_RANK];
    for (int i = 0; i < ndims; i++) count[i] = dims[i];
    start[0] = first;
    count[0] = n;
    hid_t block = H5Screate_simple(ndims, count, NULL);
    herr_t result =
        block < 0 ? -1 : H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    if (result >= 0) result = H5Dread(dset, mem, block, space, H5P_DEFAULT, buf);
    if (block >= 0) H5Sclose(block);
    return result;
}

/* Reads the values of a numeric dataset converted to its native type, in blocks of whole
 * rows (dims[0]) of about H5F_SCAN_BLOCK_BYTES. */
static herr_t h5f_scan_values(hid_t dset, hid_t type, hid_t space)
{
    hsize_t dims[H5S_MAX_RANK];
    int ndims = H5Sget_simple_extent_dims(space, dims, NULL);
    hssize_t points = H5Sget_simple_extent_npoints(space);
    if (ndims < 0 || points < 0) return -1;
    if (points == 0) return 0;
    hid_t mem = H5Tget_native_type(type, H5T_DIR_DEFAULT);
    if (mem < 0) return -1;
    const size_t elem_bytes = H5Tget_size(mem);
    herr_t result = -1;
    if (ndims == 0) {
        void *buf = calloc(1, elem_bytes);
        if (buf) result = H5Dread(dset, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
        free(buf);
    } else {
        double row_bytes = (double)elem_bytes;
        for (int i = 1; i < ndims; i++) row_bytes *= (double)dims[i];
        double step = fmin(fmax(1.0, floor(H5F_SCAN_BLOCK_BYTES / row_bytes)), (double)dims[0]);
        /* A corrupt shape can ask for more than size_t holds; malloc then fails. */
        void *buf = step * row_bytes < (double)SIZE_MAX ? malloc((size_t)(step * row_bytes)) : NULL;
        const hsize_t rows = (hsize_t)step;
        result = buf ? 0 : -1;
        for (hsize_t r = 0; result >= 0 && r < dims[0]; r += rows)
            result = h5f_scan_rows(dset, space, mem, ndims, dims, r,
                                   dims[0] - r < rows ? dims[0] - r : rows, buf);
        free(buf);
    }
    H5Tclose(mem);
    return result;
}

/* Opens a dataset's type and dataspace and reads its values when it is numeric. Datasets
 * of other type classes are not read, because tfuse's readers reject them. */
static herr_t h5f_scan_dataset(hid_t dset, const char *name, h5f_scan_state *scan)
{
    hid_t type = H5Dget_type(dset), space = H5Dget_space(dset);
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    herr_t result = space < 0 || cls == H5T_NO_CLASS ? -1 : 0;
    if (result >= 0 && (cls == H5T_INTEGER || cls == H5T_FLOAT))
        result = h5f_scan_values(dset, type, space);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return result < 0 ? h5f_scan_fail(scan, "reading dataset", name) : 0;
}

/* Opens one object and reads its attributes and, for a dataset, its values (H5Ovisit2
 * callback). */
static herr_t h5f_scan_object(hid_t root, const char *name, const H5O_info_t *info, void *data)
{
    h5f_scan_state *scan = data;
    probe_stage("opening object '%s'", name);
    hid_t object = H5Oopen(root, name, H5P_DEFAULT);
    if (object < 0) return h5f_scan_fail(scan, "opening object", name);
    probe_stage("reading the attributes of '%s'", name);
    herr_t result = H5Aiterate2(object, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, h5f_scan_attr, scan);
    if (result < 0 && scan->status == TF_OK)
        h5f_scan_fail(scan, "iterating the attributes of", name);
    if (result >= 0 && info->type == H5O_TYPE_DATASET) {
        probe_stage("reading dataset '%s'", name);
        result = h5f_scan_dataset(object, name, scan);
    }
    H5Oclose(object);
    return result < 0 ? -1 : 0;
}

tf_status h5f_scan(const char *path)
{
    if (!path) return tf_error_set(TF_ERR_ARG, "h5f_scan: NULL path");
    h5f_quiet();
    h5f_scan_state scan = {.path = path, .status = TF_OK};
    probe_stage("opening the file");
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        h5f_scan_fail(&scan, "opening", path);
        return scan.status;
    }
    herr_t result =
        H5Ovisit2(file, H5_INDEX_NAME, H5_ITER_NATIVE, h5f_scan_object, &scan, H5O_INFO_BASIC);
    if (result < 0 && scan.status == TF_OK) h5f_scan_fail(&scan, "visiting the objects of", path);
    H5Fclose(file);
    return scan.status;
}

static tf_status h5f_scan_child(const char *path, void *out)
{
    return h5f_scan(path);
}

tf_status h5f_probe(const char *path)
{
    if (!path) return tf_error_set(TF_ERR_ARG, "h5f_probe: NULL path");
    return probe_run(path, "HDF5 file", "opening the file", h5f_scan_child, NULL, 0);
}
