/* libFuzzer target: the idx reader (idx_image_set_load) and the idx checks of job
 * validation (validate_idx_pair) on the same files. Input layout: the low 5 bits of byte 0
 * set the image limit (0 means all) and its high 3 bits the offset, bytes 1-2 (big-endian)
 * the length of the image file, then the image file, then the label file. Both functions must reach
 * the same verdict, because validation promises that a job it accepts loads. */
#include "fuzz_common.h"
#include "tfuse/data.h"
#include "tfuse/validate.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3) return 0;
    const int64_t limit = data[0] & 31, offset = data[0] >> 5;
    size_t image_bytes = (size_t)data[1] << 8 | data[2];
    if (image_bytes > size - 3) image_bytes = size - 3;
    const char *images = fuzz_write_temp(0, "-images", data + 3, image_bytes);
    const char *labels =
        fuzz_write_temp(1, "-labels", data + 3 + image_bytes, size - 3 - image_bytes);

    tf_image_set *set = NULL;
    tf_status loaded = idx_image_set_load(images, labels, offset, limit, &set);
    validate_idx_info info;
    tf_status checked = validate_idx_pair(images, labels, offset, limit, &info);
    if ((loaded == TF_OK) != (checked == TF_OK)) {
        fprintf(stderr, "loader status %d and validation status %d differ: %s\n", (int)loaded,
                (int)checked, tf_error_get());
        abort();
    }
    if (loaded == TF_OK &&
        (set->count != info.used || set->rows != info.rows || set->cols != info.cols)) {
        fprintf(stderr, "loader and validation disagree on the sizes\n");
        abort();
    }
    if (loaded == TF_OK) {
        int max_label = 0;
        for (int64_t i = 0; i < set->count; i++)
            if (set->labels[i] > max_label) max_label = set->labels[i];
        if (max_label != info.max_label) abort();
    }
    idx_image_set_free(&set);
    return 0;
}
