/* Image data sets in the idx format of MNIST and Fashion-MNIST.
 *
 * An idx file is a big-endian header followed by raw bytes: the magic number
 * 0x00000803 (unsigned bytes, 3 dims), then count, rows and cols as uint32 for images,
 * or 0x00000801 and count for labels. Files may be gzip-compressed. */
#ifndef TFUSE_DATA_H
#define TFUSE_DATA_H

#include <stdint.h>
#include "tfuse/common.h"

typedef struct {
    int64_t count;   /* images */
    int rows, cols;  /* pixels per image */
    uint8_t *pixels; /* (count, rows, cols), owned */
    uint8_t *labels; /* (count), owned */
} tf_image_set;

/* Reads an idx3 image file and an idx1 label file, each gzip-compressed or plain (detected
 * by the gzip magic bytes 1f 8b), skips the first `offset` images and keeps the next
 * `limit` (limit <= 0 or past the end: all the rest). An offset outside [0, count) fails
 * with TF_ERR_ARG. Not collective: any rank may call it.
 *
 * Validates the magic numbers, the dimensions, that both files hold the same count and
 * that neither is truncated. Labels are bytes (< 256), so the caller checks them against
 * its class count. When all images are kept, bytes after the expected end are rejected
 * too. On success *out receives a set that the caller frees with idx_image_set_free.
 * Failures return TF_ERR_IO (missing or unreadable file) or TF_ERR_FORMAT (malformed
 * contents), with a message naming the file, the expected and the found value. */
tf_status idx_image_set_load(const char *images_path, const char *labels_path, int64_t offset,
                             int64_t limit, tf_image_set **out);

/* Frees the set and sets *set to NULL; accepts NULL and a pointer to NULL. */
void idx_image_set_free(tf_image_set **set);

#endif
