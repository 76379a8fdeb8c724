/* Reader for idx image and label files (MNIST, Fashion-MNIST), plain or gzip-compressed. */
#include "tfuse/data.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

enum {
    IDX_MAGIC_IMAGES = 0x00000803, /* unsigned bytes, 3 dims */
    IDX_MAGIC_LABELS = 0x00000801, /* unsigned bytes, 1 dim */
    IDX_MAX_SIDE = 1 << 16         /* upper bound on rows and cols, against corrupt headers */
};

/* gzread takes an unsigned length, so large reads go in pieces of at most this size. */
#define IDX_READ_PIECE ((size_t)1 << 30)

typedef struct {
    const char *path;
    gzFile gz;
    int compressed; /* 1 if the file starts with the gzip magic bytes */
    int64_t offset; /* uncompressed bytes consumed so far */
} idx_reader;

static const char *idx_kind(const idx_reader *r)
{
    return r->compressed ? "gzip-compressed" : "plain";
}

/* Opens path for reading through zlib, which also reads plain files. fopen first gives
 * a precise message for a missing or unreadable file. */
static tf_status idx_open(idx_reader *r, const char *path)
{
    r->path = path;
    r->gz = NULL;
    r->offset = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return tf_error_set(TF_ERR_IO,
                            "opening idx file '%s' failed: %s; check the data paths in the job",
                            path, strerror(errno));
    unsigned char head[2] = {0, 0};
    size_t got = fread(head, 1, 2, fp);
    fclose(fp);
    r->compressed = got == 2 && head[0] == 0x1f && head[1] == 0x8b;

    r->gz = gzopen(path, "rb");
    if (!r->gz)
        return tf_error_set(TF_ERR_IO, "opening idx file '%s' with zlib failed: %s", path,
                            errno ? strerror(errno) : "out of memory");
    return TF_OK;
}

static void idx_close(idx_reader *r)
{
    if (r->gz) gzclose(r->gz);
    r->gz = NULL;
}

/* Reads exactly `bytes` bytes of `what` into buf. A short read means a truncated file. */
static tf_status idx_read(idx_reader *r, void *buf, size_t bytes, const char *what)
{
    unsigned char *dst = buf;
    size_t done = 0;
    while (done < bytes) {
        size_t piece = bytes - done < IDX_READ_PIECE ? bytes - done : IDX_READ_PIECE;
        int got = gzread(r->gz, dst + done, (unsigned)piece);
        if (got < 0) {
            int code = 0;
            const char *text = gzerror(r->gz, &code);
            return tf_error_set(code == Z_ERRNO ? TF_ERR_IO : TF_ERR_FORMAT,
                                "reading %s from %s idx file '%s' failed at byte %lld: %s", what,
                                idx_kind(r), r->path, (long long)(r->offset + done),
                                code == Z_ERRNO ? strerror(errno) : text);
        }
        if (got == 0) break;
        done += (size_t)got;
    }
    r->offset += (int64_t)done;
    if (done == bytes) return TF_OK;
    if (r->offset == 0)
        return tf_error_set(TF_ERR_FORMAT, "idx file '%s' is empty; expected the %s", r->path,
                            what);
    return tf_error_set(TF_ERR_FORMAT,
                        "%s idx file '%s' is truncated: expected %zu bytes of %s, found %zu "
                        "(file ends after %lld uncompressed bytes)",
                        idx_kind(r), r->path, bytes, what, done, (long long)r->offset);
}

static uint32_t idx_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Reads the magic number, checks it, then reads `ndims` uint32 dimensions into dims. */
static tf_status idx_read_header(idx_reader *r, uint32_t magic, int ndims, uint32_t *dims)
{
    unsigned char head[16];
    const char *what = ndims == 3 ? "idx3 image header" : "idx1 label header";
    tf_status status = idx_read(r, head, 4, what);
    if (status != TF_OK) return status;

    uint32_t found = idx_be32(head);
    if (found != magic) {
        const char *hint = "";
        if (found == IDX_MAGIC_LABELS) hint = "; this looks like a label file";
        if (found == IDX_MAGIC_IMAGES) hint = "; this looks like an image file";
        return tf_error_set(
            TF_ERR_FORMAT, "idx file '%s' has magic number 0x%08x; expected 0x%08x (%s)%s", r->path,
            (unsigned)found, (unsigned)magic,
            ndims == 3 ? "idx3 unsigned-byte images" : "idx1 unsigned-byte labels", hint);
    }
    status = idx_read(r, head + 4, 4 * (size_t)ndims, what);
    if (status != TF_OK) return status;
    for (int i = 0; i < ndims; i++) dims[i] = idx_be32(head + 4 * (i + 1));
    return TF_OK;
}

/* Fails if anything follows the expected contents of the file. */
static tf_status idx_expect_end(idx_reader *r)
{
    unsigned char extra[256];
    int got = gzread(r->gz, extra, sizeof extra);
    if (got < 0) {
        int code = 0;
        const char *text = gzerror(r->gz, &code);
        return tf_error_set(TF_ERR_FORMAT, "reading the end of idx file '%s' failed: %s", r->path,
                            text);
    }
    if (got > 0)
        return tf_error_set(TF_ERR_FORMAT,
                            "idx file '%s' has extra bytes after the %lld expected ones; the "
                            "header's count does not match the data",
                            r->path, (long long)r->offset);
    return TF_OK;
}

/* Reads the image header and checks the dimensions. */
static tf_status idx_images_header(idx_reader *r, int64_t *count, int *rows, int *cols)
{
    uint32_t dims[3] = {0, 0, 0};
    tf_status status = idx_read_header(r, IDX_MAGIC_IMAGES, 3, dims);
    if (status != TF_OK) return status;
    if (dims[0] == 0)
        return tf_error_set(TF_ERR_FORMAT, "idx image file '%s' contains no images (count 0)",
                            r->path);
    if (dims[1] == 0 || dims[2] == 0 || dims[1] > IDX_MAX_SIDE || dims[2] > IDX_MAX_SIDE)
        return tf_error_set(TF_ERR_FORMAT,
                            "idx image file '%s' has image size %u x %u; expected rows and "
                            "cols in 1..%d",
                            r->path, (unsigned)dims[1], (unsigned)dims[2], IDX_MAX_SIDE);
    *count = dims[0];
    *rows = (int)dims[1];
    *cols = (int)dims[2];
    return TF_OK;
}

static tf_status idx_labels_header(idx_reader *r, int64_t *count)
{
    uint32_t dims[1] = {0};
    tf_status status = idx_read_header(r, IDX_MAGIC_LABELS, 1, dims);
    if (status != TF_OK) return status;
    *count = dims[0];
    return TF_OK;
}

/* Rejects a header that promises more data than the file can hold, before the caller
 * allocates room for it, so a corrupt count fails as a truncated file and not as a huge
 * allocation. A plain file holds `bytes` data bytes only if it is that long after the
 * header; deflate expands data at most 1032 times (zlib's technical details), so a gzip
 * file of s bytes holds less than 1032 * s + 1024. */
static tf_status idx_check_room(const idx_reader *r, int64_t header_bytes, double bytes,
                                const char *what)
{
    struct stat sb;
    if (stat(r->path, &sb) != 0) return TF_OK; /* the reads that follow report it */
    double room = r->compressed ? 1032.0 * (double)sb.st_size + 1024.0
                                : (double)sb.st_size - (double)header_bytes;
    if (bytes <= room) return TF_OK;
    return tf_error_set(TF_ERR_FORMAT,
                        "%s idx file '%s' is truncated: its header promises %.0f bytes of %s, "
                        "but the file has %lld bytes",
                        idx_kind(r), r->path, bytes, what, (long long)sb.st_size);
}

/* Allocates a set of `count` images of rows x cols pixels, checking that it fits. */
static tf_status idx_image_set_alloc(const char *images_path, int64_t count, int rows, int cols,
                                     tf_image_set **out)
{
    int64_t image_bytes = (int64_t)rows * cols;
    if (count > INT64_MAX / image_bytes || (uint64_t)(count * image_bytes) > SIZE_MAX)
        return tf_error_set(TF_ERR_ARG,
                            "idx image file '%s': %lld images of %d x %d pixels do not fit in "
                            "memory; set a smaller limit",
                            images_path, (long long)count, rows, cols);
    tf_image_set *set = tf_calloc(1, sizeof *set);
    if (!set) return TF_ERR_NOMEM;
    set->count = count;
    set->rows = rows;
    set->cols = cols;
    set->pixels = tf_malloc((size_t)(count * image_bytes));
    set->labels = tf_malloc((size_t)count);
    if (!set->pixels || !set->labels) {
        idx_image_set_free(&set);
        return TF_ERR_NOMEM;
    }
    *out = set;
    return TF_OK;
}

tf_status idx_image_set_load(const char *images_path, const char *labels_path, int64_t offset,
                             int64_t limit, tf_image_set **out)
{
    tf_status status = TF_OK;
    idx_reader images = {0}, labels = {0};
    tf_image_set *set = NULL;
    if (!images_path || !labels_path || !out)
        return tf_error_set(TF_ERR_ARG, "idx_image_set_load: NULL path or output");
    *out = NULL;

    /* Headers of both files, and the counts must agree. */
    int64_t count = 0, label_count = 0;
    int rows = 0, cols = 0;
    status = idx_open(&images, images_path);
    if (status != TF_OK) goto exit;
    status = idx_images_header(&images, &count, &rows, &cols);
    if (status != TF_OK) goto exit;
    status = idx_open(&labels, labels_path);
    if (status != TF_OK) goto exit;
    status = idx_labels_header(&labels, &label_count);
    if (status != TF_OK) goto exit;
    if (label_count != count) {
        status = tf_error_set(TF_ERR_FORMAT,
                              "idx image file '%s' has %lld images but label file '%s' has %lld "
                              "labels; expected the same count",
                              images_path, (long long)count, labels_path, (long long)label_count);
        goto exit;
    }

    /* Skip `offset` images, then keep `limit` of the rest. The skipped images are read
     * into the set and moved out, which keeps one reading path. */
    if (offset < 0 || offset >= count) {
        status = tf_error_set(TF_ERR_ARG,
                              "idx image file '%s' has %lld images, so an offset of %lld "
                              "leaves none",
                              images_path, (long long)count, (long long)offset);
        goto exit;
    }
    int keep_all = limit <= 0 || limit >= count - offset;
    const int64_t keep = keep_all ? count - offset : limit;
    status = idx_check_room(&images, 16, (double)(offset + keep) * rows * cols, "pixels");
    if (status != TF_OK) goto exit;
    status = idx_check_room(&labels, 8, (double)(offset + keep), "labels");
    if (status != TF_OK) goto exit;
    status = idx_image_set_alloc(images_path, offset + keep, rows, cols, &set);
    if (status != TF_OK) goto exit;

    /* Pixels and labels. idx_read reports a truncated file. */
    status = idx_read(&images, set->pixels, (size_t)(set->count * rows * cols), "pixels");
    if (status != TF_OK) goto exit;
    status = idx_read(&labels, set->labels, (size_t)set->count, "labels");
    if (status != TF_OK) goto exit;
    if (offset > 0) {
        const size_t image_bytes = (size_t)rows * cols;
        memmove(set->pixels, set->pixels + offset * image_bytes, (size_t)keep * image_bytes);
        memmove(set->labels, set->labels + offset, (size_t)keep);
        set->count = keep;
    }
    if (keep_all) {
        status = idx_expect_end(&images);
        if (status != TF_OK) goto exit;
        status = idx_expect_end(&labels);
        if (status != TF_OK) goto exit;
    }
    TF_DEBUG("read %lld images of %d x %d from '%s' (%s) and labels from '%s' (%s)",
             (long long)set->count, rows, cols, images_path, idx_kind(&images), labels_path,
             idx_kind(&labels));
    *out = set;
    set = NULL;

exit:
    idx_close(&images);
    idx_close(&labels);
    idx_image_set_free(&set);
    return status;
}

void idx_image_set_free(tf_image_set **set)
{
    if (!set || !*set) return;
    free((*set)->pixels);
    free((*set)->labels);
    free(*set);
    *set = NULL;
}
