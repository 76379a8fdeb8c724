/* Header and metadata checks of idx data files and model files, for validating a job
 * before any compute (see include/tfuse/validate.h). These run serially on one rank: the
 * idx files through zlib, the model files through serial HDF5 calls with the default
 * (sec2) file driver, so no communicator is involved. The model checks run in a probe
 * child process (include/tfuse/probe.h), because HDF5 can crash or hang on corrupt files. */
#include "tfuse/validate.h"
#include "tfuse/h5file.h"
#include "tfuse/probe.h"

#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

enum {
    VALIDATE_IDX_IMAGES = 0x00000803, /* unsigned bytes, 3 dims */
    VALIDATE_IDX_LABELS = 0x00000801, /* unsigned bytes, 1 dim */
    VALIDATE_IDX_MAX_SIDE = 1 << 16,  /* the limit idx.c puts on rows and cols */
    VALIDATE_CHUNK = 1 << 16          /* bytes per read while measuring a file */
};

/* ---- idx files ----------------------------------------------------------------------- */

static uint32_t validate_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static tf_status validate_idx_open(const char *path, gzFile *gz)
{
    struct stat sb;
    *gz = NULL;
    if (stat(path, &sb) != 0)
        return tf_error_set(TF_ERR_IO,
                            "idx file '%s' cannot be opened: %s; check the data paths "
                            "in the job",
                            path, strerror(errno));
    if (S_ISDIR(sb.st_mode))
        return tf_error_set(TF_ERR_IO, "idx file '%s' is a directory; expected an idx file", path);
    *gz = gzopen(path, "rb");
    if (!*gz)
        return tf_error_set(TF_ERR_IO, "opening idx file '%s' failed: %s", path,
                            errno ? strerror(errno) : "out of memory");
    return TF_OK;
}

/* Reads the magic number and ndims dimensions (big-endian uint32) into dims. */
static tf_status validate_idx_header(gzFile gz, const char *path, uint32_t magic, int ndims,
                                     uint32_t *dims)
{
    unsigned char head[16];
    const int want = 4 * (ndims + 1);
    int got = gzread(gz, head, (unsigned)want);
    if (got == 0)
        return tf_error_set(TF_ERR_FORMAT, "idx file '%s' is empty; expected an idx%d header", path,
                            ndims);
    if (got < 4)
        return tf_error_set(TF_ERR_FORMAT, "idx file '%s' has %d bytes; an idx%d header needs %d",
                            path, got < 0 ? 0 : got, ndims, want);
    uint32_t found = validate_be32(head);
    if (found != magic) {
        const char *hint = "";
        if (found == VALIDATE_IDX_LABELS) hint = "; this looks like a label file";
        if (found == VALIDATE_IDX_IMAGES) hint = "; this looks like an image file";
        return tf_error_set(
            TF_ERR_FORMAT, "idx file '%s' has magic number 0x%08x; expected 0x%08x (%s)%s", path,
            (unsigned)found, (unsigned)magic,
            ndims == 3 ? "idx3 unsigned-byte images" : "idx1 unsigned-byte labels", hint);
    }
    if (got < want)
        return tf_error_set(TF_ERR_FORMAT,
                            "idx file '%s' is truncated: its header has %d bytes; expected %d",
                            path, got, want);
    for (int i = 0; i < ndims; i++) dims[i] = validate_be32(head + 4 * (i + 1));
    return TF_OK;
}

/* Reads the rest of the file and counts its bytes in *bytes. The largest of the bytes
 * [skip, end) goes to *max_byte (labels); pass end = 0 to skip that. */
static tf_status validate_idx_scan(gzFile gz, const char *path, int64_t skip, int64_t end,
                                   int *max_byte, int64_t *bytes)
{
    unsigned char *buf = tf_malloc(VALIDATE_CHUNK);
    if (!buf) return TF_ERR_NOMEM;
    int64_t total = 0;
    int largest = 0;
    tf_status status = TF_OK;
    for (;;) {
        int got = gzread(gz, buf, VALIDATE_CHUNK);
        if (got < 0) {
            int code = 0;
            const char *text = gzerror(gz, &code);
            status = tf_error_set(code == Z_ERRNO ? TF_ERR_IO : TF_ERR_FORMAT,
                                  "reading idx file '%s' failed after %lld data bytes: %s", path,
                                  (long long)total, code == Z_ERRNO ? strerror(errno) : text);
            break;
        }
        if (got == 0) break;
        for (int i = 0; i < got && total + i < end; i++)
            if (total + i >= skip && buf[i] > largest) largest = buf[i];
        total += got;
    }
    free(buf);
    *bytes = total;
    if (max_byte) *max_byte = largest;
    return status;
}

/* Compares the data bytes found with those the header promises (`need` for the used
 * images, `full` for all of them). The promises are doubles because a corrupt header's
 * count times its image size can exceed int64. */
static tf_status validate_idx_length(const char *path, const char *what, int64_t found, double need,
                                     double full, int keep_all)
{
    if ((double)found < need)
        return tf_error_set(TF_ERR_FORMAT,
                            "idx file '%s' is truncated: its header promises %.0f bytes of %s, "
                            "but the file has %lld",
                            path, full, what, (long long)found);
    if (keep_all && (double)found > full)
        return tf_error_set(TF_ERR_FORMAT,
                            "idx file '%s' has %lld bytes of %s; its header promises %.0f, so the "
                            "header's count does not match the data",
                            path, (long long)found, what, full);
    return TF_OK;
}

static tf_status validate_idx_images(const char *path, int64_t offset, int64_t limit,
                                     validate_idx_info *info)
{
    gzFile gz = NULL;
    uint32_t dims[3] = {0, 0, 0};
    int64_t found = 0;
    tf_status status = validate_idx_open(path, &gz);
    if (status == TF_OK) status = validate_idx_header(gz, path, VALIDATE_IDX_IMAGES, 3, dims);
    if (status != TF_OK) goto exit;
    if (dims[0] == 0) {
        status =
            tf_error_set(TF_ERR_FORMAT, "idx image file '%s' contains no images (count 0)", path);
        goto exit;
    }
    if (dims[1] == 0 || dims[2] == 0 || dims[1] > VALIDATE_IDX_MAX_SIDE ||
        dims[2] > VALIDATE_IDX_MAX_SIDE) {
        status = tf_error_set(TF_ERR_FORMAT,
                              "idx image file '%s' has image size %u x %u; expected rows and cols "
                              "in 1..%d",
                              path, (unsigned)dims[1], (unsigned)dims[2], VALIDATE_IDX_MAX_SIDE);
        goto exit;
    }
    info->count = dims[0];
    info->rows = (int)dims[1];
    info->cols = (int)dims[2];
    if (offset < 0 || offset >= info->count) {
        status = tf_error_set(TF_ERR_ARG,
                              "idx image file '%s' has %lld images, so an offset of %lld "
                              "leaves none",
                              path, (long long)info->count, (long long)offset);
        goto exit;
    }
    info->offset = offset;
    int keep_all = limit <= 0 || limit >= info->count - offset;
    info->used = keep_all ? info->count - offset : limit;
    const double pixels = (double)info->rows * info->cols;
    status = validate_idx_scan(gz, path, 0, 0, NULL, &found);
    if (status == TF_OK)
        status = validate_idx_length(path, "pixels", found, (double)(offset + info->used) * pixels,
                                     (double)info->count * pixels, keep_all);
exit:
    if (gz) gzclose(gz);
    return status;
}

static tf_status validate_idx_labels(const char *path, const validate_idx_info *images,
                                     const char *images_path, int *max_label)
{
    gzFile gz = NULL;
    uint32_t count = 0;
    int64_t found = 0;
    tf_status status = validate_idx_open(path, &gz);
    if (status == TF_OK) status = validate_idx_header(gz, path, VALIDATE_IDX_LABELS, 1, &count);
    if (status != TF_OK) goto exit;
    if ((int64_t)count != images->count) {
        status = tf_error_set(TF_ERR_FORMAT,
                              "idx image file '%s' has %lld images but label file '%s' has %lld "
                              "labels; expected the same count",
                              images_path, (long long)images->count, path, (long long)count);
        goto exit;
    }
    const int64_t end = images->offset + images->used;
    status = validate_idx_scan(gz, path, images->offset, end, max_label, &found);
    if (status == TF_OK)
        status = validate_idx_length(path, "labels", found, (double)end, (double)images->count,
                                     end == images->count);
exit:
    if (gz) gzclose(gz);
    return status;
}

tf_status validate_idx_pair(const char *images_path, const char *labels_path, int64_t offset,
                            int64_t limit, validate_idx_info *info)
{
    if (!images_path || !labels_path || !info)
        return tf_error_set(TF_ERR_ARG, "validate_idx_pair: NULL argument");
    memset(info, 0, sizeof *info);
    tf_status status = validate_idx_images(images_path, offset, limit, info);
    if (status == TF_OK)
        status = validate_idx_labels(labels_path, info, images_path, &info->max_label);
    return status;
}

/* ---- Model files --------------------------------------------------------------------- */

/* Opens attribute `name` of the root group and checks its type class. */
static tf_status validate_attr_open(hid_t root, const char *path, const char *name,
                                    H5T_class_t class_a, H5T_class_t class_b, const char *expected,
                                    hid_t *attr, hid_t *type)
{
    *attr = -1;
    *type = -1;
    probe_stage("reading attribute '%s'", name);
    if (H5Aexists(root, name) <= 0)
        return tf_error_set(TF_ERR_FORMAT,
                            "model file '%s' has no root attribute '%s'; expected a tfuse model "
                            "(docs/FORMAT.md)",
                            path, name);
    *attr = H5Aopen(root, name, H5P_DEFAULT);
    if (*attr < 0)
        return tf_error_set(TF_ERR_FORMAT,
                            "model file '%s': attribute '%s' cannot "
                            "be opened",
                            path, name);
    *type = H5Aget_type(*attr);
    hid_t space = H5Aget_space(*attr);
    hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    if (space >= 0) H5Sclose(space);
    H5T_class_t cls = *type >= 0 ? H5Tget_class(*type) : H5T_NO_CLASS;
    if (points != 1 || (cls != class_a && cls != class_b))
        return tf_error_set(TF_ERR_FORMAT, "model file '%s': attribute '%s' is not a scalar %s",
                            path, name, expected);
    return TF_OK;
}

static void validate_attr_close(hid_t attr, hid_t type)
{
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
}

static tf_status validate_attr_int(hid_t root, const char *path, const char *name, int64_t *value)
{
    hid_t attr, type;
    tf_status status =
        validate_attr_open(root, path, name, H5T_INTEGER, H5T_INTEGER, "integer", &attr, &type);
    if (status == TF_OK && H5Aread(attr, H5T_NATIVE_INT64, value) < 0)
        status = tf_error_set(TF_ERR_FORMAT, "model file '%s': reading attribute '%s' failed", path,
                              name);
    validate_attr_close(attr, type);
    return status;
}

static tf_status validate_attr_double(hid_t root, const char *path, const char *name, double *value)
{
    hid_t attr, type;
    tf_status status =
        validate_attr_open(root, path, name, H5T_FLOAT, H5T_INTEGER, "number", &attr, &type);
    if (status == TF_OK && H5Aread(attr, H5T_NATIVE_DOUBLE, value) < 0)
        status = tf_error_set(TF_ERR_FORMAT, "model file '%s': reading attribute '%s' failed", path,
                              name);
    validate_attr_close(attr, type);
    return status;
}

/* Reads a fixed or variable length string attribute into value (size bytes with the NUL). */
static tf_status validate_attr_string(hid_t root, const char *path, const char *name, char *value,
                                      size_t size)
{
    hid_t attr, type, mem = -1;
    char *text = NULL;
    tf_status status =
        validate_attr_open(root, path, name, H5T_STRING, H5T_STRING, "string", &attr, &type);
    if (status != TF_OK) goto exit;
    mem = H5Tcopy(H5T_C_S1);
    int ok = mem >= 0 && H5Tset_cset(mem, H5Tget_cset(type)) >= 0;
    if (ok && H5Tis_variable_str(type) > 0) {
        ok = H5Tset_size(mem, H5T_VARIABLE) >= 0 && H5Aread(attr, mem, &text) >= 0;
        if (ok && text) snprintf(value, size, "%s", text);
        ok = ok && text && strlen(text) < size;
        if (text) H5free_memory(text);
    } else if (ok) {
        /* One byte more than stored, so a null-padded string keeps its last char. */
        size_t n = H5Tget_size(type);
        char *fixed = tf_calloc(n + 1, 1);
        ok = fixed && H5Tset_size(mem, n + 1) >= 0 && H5Aread(attr, mem, fixed) >= 0 &&
             strlen(fixed) < size;
        if (ok) snprintf(value, size, "%s", fixed);
        free(fixed);
    }
    if (!ok)
        status = tf_error_set(TF_ERR_FORMAT,
                              "model file '%s': string attribute '%s' cannot be read or is longer "
                              "than %zu characters",
                              path, name, size - 1);
exit:
    if (mem >= 0) H5Tclose(mem);
    validate_attr_close(attr, type);
    return status;
}

/* Checks format, format_version and architecture. */
static tf_status validate_model_format(hid_t root, const char *path)
{
    char text[64];
    int64_t version = 0;
    tf_status status = validate_attr_string(root, path, "format", text, sizeof text);
    if (status != TF_OK) return status;
    if (strcmp(text, "tfuse-model") != 0)
        return tf_error_set(TF_ERR_FORMAT,
                            "model file '%s' has format '%s'; expected 'tfuse-model'", path, text);
    status = validate_attr_int(root, path, "format_version", &version);
    if (status != TF_OK) return status;
    if (version != 1)
        return tf_error_set(TF_ERR_FORMAT,
                            "model file '%s' has format_version %lld; this build reads version 1",
                            path, (long long)version);
    status = validate_attr_string(root, path, "architecture", text, sizeof text);
    if (status != TF_OK) return status;
    if (strcmp(text, "vit") != 0)
        return tf_error_set(TF_ERR_FORMAT, "model file '%s' has architecture '%s'; expected 'vit'",
                            path, text);
    return TF_OK;
}

static tf_status validate_model_config(hid_t root, const char *path, vit_config *cfg)
{
    static const char *const names[] = {"image_size", "channels", "patch", "d",
                                        "layers",     "heads",    "mlp",   "classes"};
    int *const fields[] = {&cfg->image_size, &cfg->channels, &cfg->patch, &cfg->d,
                           &cfg->layers,     &cfg->heads,    &cfg->mlp,   &cfg->classes};
    memset(cfg, 0, sizeof *cfg);
    for (int i = 0; i < 8; i++) {
        int64_t value = 0;
        tf_status status = validate_attr_int(root, path, names[i], &value);
        if (status != TF_OK) return status;
        if (value < INT32_MIN || value > INT32_MAX)
            return tf_error_set(TF_ERR_FORMAT,
                                "model file '%s': attribute %s = %lld is out of "
                                "range",
                                path, names[i], (long long)value);
        *fields[i] = (int)value;
    }
    tf_status status = validate_attr_double(root, path, "ln_eps", &cfg->ln_eps);
    if (status != TF_OK) return status;
    status = vit_config_validate(cfg);
    if (status != TF_OK) {
        char reason[1024];
        snprintf(reason, sizeof reason, "%s", tf_error_get());
        return tf_error_set(status, "model file '%s': %s", path, reason);
    }
    return TF_OK;
}

/* Checks that dataset params/<name> exists, is floating point and has the expected shape. */
static tf_status validate_model_dataset(hid_t file, const char *path, const vit_config *cfg,
                                        int which)
{
    char name[128], want[128], got[128];
    int64_t dims[4];
    const int ndims = vit_param_shape(cfg, which, dims);
    int used = snprintf(want, sizeof want, "(");
    for (int i = 0; i < ndims; i++)
        used += snprintf(want + used, sizeof want - (size_t)used, "%s%lld", i ? ", " : "",
                         (long long)dims[i]);
    snprintf(want + used, sizeof want - (size_t)used, ")");
    snprintf(name, sizeof name, "params/%s", vit_param_name(which));
    probe_stage("checking dataset '%s'", name);

    if (H5Lexists(file, "params", H5P_DEFAULT) <= 0 || H5Lexists(file, name, H5P_DEFAULT) <= 0)
        return tf_error_set(TF_ERR_FORMAT,
                            "model file '%s' has no dataset '%s' (expected shape "
                            "%s)",
                            path, name, want);
    hid_t obj = H5Oopen(file, name, H5P_DEFAULT);
    if (obj < 0 || H5Iget_type(obj) != H5I_DATASET) {
        if (obj >= 0) H5Oclose(obj);
        return tf_error_set(TF_ERR_FORMAT, "model file '%s': '%s' is not a dataset", path, name);
    }
    hid_t space = H5Dget_space(obj), type = H5Dget_type(obj);
    hsize_t found[H5S_MAX_RANK];
    int found_ndims = space >= 0 ? H5Sget_simple_extent_dims(space, found, NULL) : -1;
    int same = found_ndims == ndims;
    used = snprintf(got, sizeof got, "(");
    for (int i = 0; i < found_ndims && used < (int)sizeof got; i++) {
        if (i < ndims && (int64_t)found[i] != dims[i]) same = 0;
        used += snprintf(got + used, sizeof got - (size_t)used, "%s%llu", i ? ", " : "",
                         (unsigned long long)found[i]);
    }
    if (used < (int)sizeof got) snprintf(got + used, sizeof got - (size_t)used, ")");
    int is_float = type >= 0 && H5Tget_class(type) == H5T_FLOAT;
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    H5Oclose(obj);
    if (!same)
        return tf_error_set(TF_ERR_FORMAT,
                            "model file '%s': dataset '%s' has shape %s; expected "
                            "%s",
                            path, name, got, want);
    if (!is_float)
        return tf_error_set(TF_ERR_FORMAT,
                            "model file '%s': dataset '%s' is not floating point; "
                            "expected float32 or float64",
                            path, name);
    return TF_OK;
}

/* Checks that path names a readable regular file in HDF5 format. */
static tf_status validate_model_source(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return tf_error_set(TF_ERR_IO, "model file '%s' not found (%s); check the path", path,
                            strerror(errno));
    if (S_ISDIR(sb.st_mode))
        return tf_error_set(TF_ERR_IO, "model file '%s' is a directory; expected an HDF5 file",
                            path);
    FILE *probe = fopen(path, "rb");
    if (!probe)
        return tf_error_set(TF_ERR_IO, "model file '%s' is not readable: %s", path,
                            strerror(errno));
    fclose(probe);
    if (H5Fis_hdf5(path) <= 0)
        return tf_error_set(TF_ERR_FORMAT,
                            "file '%s' is not an HDF5 file; expected a tfuse "
                            "model",
                            path);
    return TF_OK;
}

/* The checks of validate_model_file, in the calling process. */
static tf_status validate_model_checks(const char *path, vit_config *cfg)
{
    H5E_auto2_t old_func = NULL;
    void *old_data = NULL;
    H5Eget_auto2(H5E_DEFAULT, &old_func, &old_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* failures are reported through tf_status */

    hid_t file = -1, root = -1;
    tf_status status = validate_model_source(path);
    if (status != TF_OK) goto exit;
    probe_stage("opening the file");
    file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file >= 0) root = H5Gopen2(file, "/", H5P_DEFAULT);
    if (file < 0 || root < 0) {
        status = tf_error_set(TF_ERR_FORMAT,
                              "HDF5 file '%s' cannot be opened; it may be "
                              "truncated or corrupt",
                              path);
        goto exit;
    }
    status = validate_model_format(root, path);
    if (status == TF_OK) status = validate_model_config(root, path, cfg);
    for (int k = 0; status == TF_OK && k < VIT_NUM_PARAMS; k++)
        status = validate_model_dataset(file, path, cfg, k);
exit:
    if (root >= 0) H5Gclose(root);
    if (file >= 0) H5Fclose(file);
    H5Eset_auto2(H5E_DEFAULT, old_func, old_data);
    return status;
}

/* Runs in the probe child: the model checks, then a read of everything else in the file,
 * so that the loader later parses nothing that a probe has not parsed. The read is left
 * out for a file that an earlier probe of this process (h5f_open's) read already. */
static tf_status validate_model_child(const char *path, void *out)
{
    tf_status status = validate_model_checks(path, out);
    if (status == TF_OK && !probe_is_trusted(path)) status = h5f_scan(path);
    return status;
}

tf_status validate_model_file(const char *path, vit_config *cfg)
{
    if (!path || !cfg) return tf_error_set(TF_ERR_ARG, "validate_model_file: NULL argument");
    return probe_run(path, "model file", "reading the file's metadata", validate_model_child, cfg,
                     sizeof *cfg);
}
