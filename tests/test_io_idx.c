/* Tests of the idx reader on small files written here (plain and gzip), on malformed
 * files, and on the Fashion-MNIST test set when it is installed. Expected values come
 * from the generator that wrote the files. */
#include "testutil.h"
#include "tfuse/data.h"
#include "tfuse/validate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

static char dir[64];

static const char *path_in_dir(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", dir, name);
    return buf;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Writes bytes to path, gzip-compressed if gz. */
static void write_file(const char *path, const unsigned char *bytes, size_t n, int gz)
{
    if (gz) {
        gzFile f = gzopen(path, "wb");
        if (!f || (n && gzwrite(f, bytes, (unsigned)n) != (int)n) || gzclose(f) != Z_OK)
            TF_DIE("cannot write %s", path);
        return;
    }
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(bytes, 1, n, f) != n) || fclose(f) != 0) TF_DIE("cannot write %s", path);
}

/* Pixel value of image i at (r, c) and label of image i in the generated files. */
static unsigned char pixel_at(int i, int r, int c)
{
    return (unsigned char)((i * 37 + r * 11 + c * 5 + 3) % 256);
}
static unsigned char label_at(int i)
{
    return (unsigned char)((i * 7 + 2) % 10);
}

/* Builds the bytes of an idx3 image file in buf: a header with `magic` and `header_count`,
 * then `data_count` images. Returns the byte count. */
static size_t build_images(unsigned char *buf, uint32_t magic, uint32_t header_count,
                           int data_count, int rows, int cols)
{
    put_be32(buf, magic);
    put_be32(buf + 4, header_count);
    put_be32(buf + 8, (uint32_t)rows);
    put_be32(buf + 12, (uint32_t)cols);
    size_t n = 16;
    for (int i = 0; i < data_count; i++)
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) buf[n++] = pixel_at(i, r, c);
    return n;
}

static size_t build_labels(unsigned char *buf, uint32_t header_count, int data_count)
{
    put_be32(buf, 0x00000801);
    put_be32(buf + 4, header_count);
    for (int i = 0; i < data_count; i++) buf[8 + i] = label_at(i);
    return 8 + (size_t)data_count;
}

/* Returns 1 when set contains images first .. first + count - 1 of the files. */
static int set_matches_from(const tf_image_set *set, int64_t first, int64_t count, int rows,
                            int cols)
{
    if (set->count != count || set->rows != rows || set->cols != cols) return 0;
    for (int64_t i = 0; i < count; i++) {
        const int k = (int)(first + i);
        if (set->labels[i] != label_at(k)) return 0;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                if (set->pixels[(i * rows + r) * cols + c] != pixel_at(k, r, c)) return 0;
    }
    return 1;
}

static int set_matches(const tf_image_set *set, int64_t count, int rows, int cols)
{
    return set_matches_from(set, 0, count, rows, cols);
}

/* Valid files, plain and gzip, with several limits. */
static void test_valid(int gz)
{
    enum { N = 7, ROWS = 3, COLS = 5 };
    unsigned char img[16 + N * ROWS * COLS], lab[8 + N];
    char ip[128], lp[128];
    path_in_dir(ip, sizeof ip, gz ? "valid-images.gz" : "valid-images");
    path_in_dir(lp, sizeof lp, gz ? "valid-labels.gz" : "valid-labels");
    write_file(ip, img, build_images(img, 0x803, N, N, ROWS, COLS), gz);
    write_file(lp, lab, build_labels(lab, N, N), gz);

    const int64_t limits[] = {0, -1, 3, 1, N, N + 10};
    for (size_t k = 0; k < sizeof limits / sizeof limits[0]; k++) {
        tf_image_set *set = NULL;
        tf_status st = idx_image_set_load(ip, lp, 0, limits[k], &set);
        TU_CHECK(st == TF_OK, "%s files, limit %lld: status %s: %s", gz ? "gzip" : "plain",
                 (long long)limits[k], tf_status_str(st), tf_error_get());
        if (!set) continue;
        int64_t expect = limits[k] <= 0 || limits[k] > N ? N : limits[k];
        TU_CHECK(set_matches(set, expect, ROWS, COLS),
                 "%s files, limit %lld: contents differ (count %lld, expected %lld)",
                 gz ? "gzip" : "plain", (long long)limits[k], (long long)set->count,
                 (long long)expect);
        idx_image_set_free(&set);
        TU_CHECK(set == NULL, "idx_image_set_free must set the pointer to NULL");
    }
    idx_image_set_free(NULL);
    remove(ip);
    remove(lp);
}

/* An offset skips images: the loader keeps the images after it, and validation predicts
 * the same count and the largest label among them. An offset that leaves no image fails in
 * both with a message naming the file. */
static void test_offset(int gz)
{
    enum { N = 7, ROWS = 2, COLS = 3 };
    unsigned char img[16 + N * ROWS * COLS], lab[8 + N];
    char ip[128], lp[128];
    path_in_dir(ip, sizeof ip, gz ? "offset-images.gz" : "offset-images");
    path_in_dir(lp, sizeof lp, gz ? "offset-labels.gz" : "offset-labels");
    write_file(ip, img, build_images(img, 0x803, N, N, ROWS, COLS), gz);
    write_file(lp, lab, build_labels(lab, N, N), gz);

    const int64_t cases[][2] = {{1, 0}, {3, 2}, {6, 0}, {6, 5}, {2, 5}, {4, 3}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const int64_t offset = cases[k][0], limit = cases[k][1];
        const int64_t rest = N - offset;
        const int64_t expect = limit <= 0 || limit > rest ? rest : limit;
        tf_image_set *set = NULL;
        tf_status st = idx_image_set_load(ip, lp, offset, limit, &set);
        TU_CHECK(st == TF_OK, "offset %lld, limit %lld: status %s: %s", (long long)offset,
                 (long long)limit, tf_status_str(st), tf_error_get());
        if (!set) continue;
        TU_CHECK(set_matches_from(set, offset, expect, ROWS, COLS),
                 "offset %lld, limit %lld: contents differ (count %lld, expected %lld)",
                 (long long)offset, (long long)limit, (long long)set->count, (long long)expect);
        int max_label = 0;
        for (int64_t i = offset; i < offset + expect; i++)
            if (label_at((int)i) > max_label) max_label = label_at((int)i);
        validate_idx_info info;
        st = validate_idx_pair(ip, lp, offset, limit, &info);
        TU_CHECK(st == TF_OK && info.used == expect && info.max_label == max_label,
                 "offset %lld, limit %lld: validation gives status %s, %lld images and largest "
                 "label %d; expected %lld and %d",
                 (long long)offset, (long long)limit, tf_status_str(st), (long long)info.used,
                 info.max_label, (long long)expect, max_label);
        idx_image_set_free(&set);
    }
    const int64_t bad[] = {N, N + 3, -1};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        tf_image_set *set = NULL;
        tf_status st = idx_image_set_load(ip, lp, bad[k], 0, &set);
        TU_CHECK(st == TF_ERR_ARG && set == NULL && strstr(tf_error_get(), ip) &&
                     strstr(tf_error_get(), "leaves none"),
                 "offset %lld: loader status %s, message: %s", (long long)bad[k], tf_status_str(st),
                 tf_error_get());
        validate_idx_info info;
        st = validate_idx_pair(ip, lp, bad[k], 0, &info);
        TU_CHECK(st == TF_ERR_ARG && strstr(tf_error_get(), ip) &&
                     strstr(tf_error_get(), "leaves none"),
                 "offset %lld: validation status %s, message: %s", (long long)bad[k],
                 tf_status_str(st), tf_error_get());
    }
    remove(ip);
    remove(lp);
}

/* Loads and expects `want` with a message that contains `needle` (and the file name). */
static void expect_failure(const char *what, const char *ip, const char *lp, tf_status want,
                           const char *needle, const char *named_file)
{
    tf_image_set *set = (tf_image_set *)&set; /* must be reset to NULL on failure */
    tf_status st = idx_image_set_load(ip, lp, 0, 0, &set);
    const char *msg = tf_error_get();
    TU_CHECK(st == want, "%s: status %s, expected %s (message: %s)", what, tf_status_str(st),
             tf_status_str(want), msg);
    TU_CHECK(set == NULL, "%s: output must be NULL after a failure", what);
    TU_CHECK(strstr(msg, named_file) != NULL, "%s: message does not name '%s': %s", what,
             named_file, msg);
    TU_CHECK(strstr(msg, needle) != NULL, "%s: message lacks '%s': %s", what, needle, msg);
    if (st == TF_OK) idx_image_set_free(&set);
}

static void test_malformed(int gz)
{
    enum { N = 4, ROWS = 2, COLS = 3 };
    unsigned char img[16 + (N + 1) * ROWS * COLS + 4], lab[8 + N + 4];
    char ip[128], lp[128], bad[128];
    path_in_dir(ip, sizeof ip, "good-images");
    path_in_dir(lp, sizeof lp, "good-labels");
    path_in_dir(bad, sizeof bad, "bad");
    write_file(ip, img, build_images(img, 0x803, N, N, ROWS, COLS), gz);
    write_file(lp, lab, build_labels(lab, N, N), gz);

    write_file(bad, img, build_images(img, 0x804, N, N, ROWS, COLS), gz);
    expect_failure("bad magic", bad, lp, TF_ERR_FORMAT, "0x00000804", bad);

    expect_failure("labels given as images", lp, ip, TF_ERR_FORMAT, "label file", lp);

    write_file(bad, img, build_images(img, 0x803, N, N, ROWS, COLS) - 2, gz);
    expect_failure("truncated pixels", bad, lp, TF_ERR_FORMAT, "truncated", bad);

    write_file(bad, img, 10, gz);
    expect_failure("truncated header", bad, lp, TF_ERR_FORMAT, "truncated", bad);

    write_file(bad, lab, build_labels(lab, N, N) - 1, gz);
    expect_failure("truncated labels", ip, bad, TF_ERR_FORMAT, "truncated", bad);

    write_file(bad, lab, build_labels(lab, N - 1, N - 1), gz);
    expect_failure("count mismatch", ip, bad, TF_ERR_FORMAT, "expected the same count", bad);

    write_file(bad, img, build_images(img, 0x803, N, N + 1, ROWS, COLS), gz);
    expect_failure("extra pixels", bad, lp, TF_ERR_FORMAT, "extra bytes", bad);

    write_file(bad, img, build_images(img, 0x803, 0, 0, ROWS, COLS), gz);
    expect_failure("zero images", bad, lp, TF_ERR_FORMAT, "no images", bad);

    write_file(bad, img, build_images(img, 0x803, N, N, 0, COLS), gz);
    expect_failure("zero rows", bad, lp, TF_ERR_FORMAT, "image size 0 x 3", bad);

    write_file(bad, img, 0, gz);
    expect_failure("empty file", bad, lp, TF_ERR_FORMAT, "empty", bad);

    char missing[128];
    path_in_dir(missing, sizeof missing, "no-such-file");
    expect_failure("missing images", missing, lp, TF_ERR_IO, "No such file", missing);
    expect_failure("missing labels", ip, missing, TF_ERR_IO, "No such file", missing);

    remove(ip);
    remove(lp);
    remove(bad);
}

/* A gzip stream cut short fails in zlib rather than in the idx layer. */
static void test_cut_gzip(void)
{
    enum { N = 50, ROWS = 8, COLS = 8 };
    static unsigned char img[16 + N * ROWS * COLS], lab[8 + N];
    char ip[128], lp[128], cut[128];
    path_in_dir(ip, sizeof ip, "cut-images.gz");
    path_in_dir(lp, sizeof lp, "cut-labels.gz");
    path_in_dir(cut, sizeof cut, "cut-copy.gz");
    write_file(ip, img, build_images(img, 0x803, N, N, ROWS, COLS), 1);
    write_file(lp, lab, build_labels(lab, N, N), 1);

    FILE *f = fopen(ip, "rb");
    static unsigned char raw[1 << 16];
    size_t n = f ? fread(raw, 1, sizeof raw, f) : 0;
    if (f) fclose(f);
    write_file(cut, raw, n / 2, 0);
    expect_failure("gzip cut in half", cut, lp, TF_ERR_FORMAT, cut, cut);
    remove(ip);
    remove(lp);
    remove(cut);
}

/* The Fashion-MNIST test set: 10 000 images of 28 x 28, labels 0..9, 1000 per class. */
static void test_fashion_mnist(void)
{
    const char *ip = FASHION_DIR "/t10k-images-idx3-ubyte.gz";
    const char *lp = FASHION_DIR "/t10k-labels-idx1-ubyte.gz";
    if (access(ip, R_OK) != 0 || access(lp, R_OK) != 0) {
        printf("SKIP Fashion-MNIST check: %s or %s is not readable\n", ip, lp);
        return;
    }
    tf_image_set *set = NULL;
    tf_status st = idx_image_set_load(ip, lp, 0, 0, &set);
    TU_CHECK(st == TF_OK, "Fashion-MNIST: %s", tf_error_get());
    if (!set) return;
    TU_CHECK(set->count == 10000, "Fashion-MNIST count %lld, expected 10000",
             (long long)set->count);
    TU_CHECK(set->rows == 28 && set->cols == 28, "Fashion-MNIST image size %d x %d", set->rows,
             set->cols);
    int64_t per_class[256] = {0};
    for (int64_t i = 0; i < set->count; i++) per_class[set->labels[i]]++;
    for (int c = 0; c < 10; c++)
        TU_CHECK(per_class[c] == 1000, "Fashion-MNIST class %d occurs %lld times, expected 1000", c,
                 (long long)per_class[c]);
    int64_t above = 0;
    for (int c = 10; c < 256; c++) above += per_class[c];
    TU_CHECK(above == 0, "Fashion-MNIST has %lld labels >= 10", (long long)above);
    int64_t nonzero = 0;
    for (int64_t i = 0; i < set->count * 28 * 28; i++) nonzero += set->pixels[i] != 0;
    TU_CHECK(nonzero > set->count * 28 * 28 / 10, "Fashion-MNIST has only %lld nonzero pixels",
             (long long)nonzero);
    idx_image_set_free(&set);

    st = idx_image_set_load(ip, lp, 0, 123, &set);
    TU_CHECK(st == TF_OK && set && set->count == 123, "Fashion-MNIST with limit 123: %s",
             tf_error_get());
    idx_image_set_free(&set);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    snprintf(dir, sizeof dir, "io_idx_r%d_XXXXXX", rank);
    if (!mkdtemp(dir)) TF_DIE("cannot create a scratch directory in the working directory");

    test_valid(0);
    test_valid(1);
    test_offset(0);
    test_offset(1);
    test_malformed(0);
    test_malformed(1);
    test_cut_gzip();
    test_fashion_mnist();

    rmdir(dir);
    int rc = tu_finish("test_io_idx");
    MPI_Finalize();
    return rc;
}
