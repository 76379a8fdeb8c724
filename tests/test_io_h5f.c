/* Tests of the parallel HDF5 tensor layer: exact round trips of several shapes (checked
 * through h5f and through plain serial HDF5 on rank 0), the temporary-name protocol,
 * overwrite rules, attributes and the error messages of malformed requests. Run at 1, 2
 * and 4 ranks; the expected results are the same at every rank count. */
#include "testutil.h"
#include "tfuse/h5file.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];
static int rank, size;

static void path_in_dir(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", dir, name);
}

/* 1 if path exists, agreed on all ranks (rank 0 looks). */
static int file_exists(const char *path)
{
    int found = rank == 0 ? access(path, F_OK) == 0 : 0;
    MPI_Bcast(&found, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return found;
}

static int64_t element_count(int ndims, const int64_t *dims)
{
    int64_t n = 1;
    for (int i = 0; i < ndims; i++) n *= dims[i];
    return n;
}

/* Same seed on every rank, so the tensors are replicated as h5f expects. */
static void fill_f32(float *x, int64_t n, uint64_t seed)
{
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) x[i] = (float)tf_rng_normal(&rng);
}

static void fill_f64(double *x, int64_t n, uint64_t seed)
{
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) x[i] = tf_rng_normal(&rng);
}

static void expect_status(const char *what, tf_status got, tf_status want)
{
    TU_CHECK(got == want, "%s: status '%s', expected '%s' (message: %s)", what, tf_status_str(got),
             tf_status_str(want), tf_error_get());
}

static void expect_message(const char *what, const char *needle)
{
    TU_CHECK(strstr(tf_error_get(), needle) != NULL, "%s: message lacks '%s': %s", what, needle,
             tf_error_get());
}

typedef struct {
    const char *name;
    int ndims;
    int64_t dims[4];
    int f64; /* stored as float64 */
} tensor_case;

static const tensor_case cases[] = {
    {"vector", 1, {7}, 0},
    {"few_rows", 2, {3, 5}, 0}, /* fewer rows than 4 ranks */
    {"one_row", 3, {1, 6, 2}, 0},
    {"single", 1, {1}, 0},
    {"four_dims", 4, {10, 3, 2, 2}, 0},
    {"maps/layer0/qk", 2, {9, 4}, 1}, /* intermediate groups */
    {"maps/layer1/v", 2, {2, 3}, 1},
    {"empty_rows", 2, {0, 3}, 0},
    {"empty_cols", 2, {5, 0}, 1},
};
enum { NUM_CASES = sizeof cases / sizeof cases[0] };

/* Checks one dataset with plain serial HDF5 on rank 0, independent of h5f_read. */
static void check_serial(const char *path, const tensor_case *c, const void *want)
{
    int ok = 1;
    if (rank == 0) {
        hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t dset = file >= 0 ? H5Dopen2(file, c->name, H5P_DEFAULT) : -1;
        hid_t space = dset >= 0 ? H5Dget_space(dset) : -1;
        hsize_t dims[4] = {0};
        int nd = space >= 0 ? H5Sget_simple_extent_dims(space, dims, NULL) : -1;
        ok = nd == c->ndims;
        for (int i = 0; ok && i < nd; i++) ok = (int64_t)dims[i] == c->dims[i];
        int64_t n = element_count(c->ndims, c->dims);
        size_t bytes = (size_t)n * (c->f64 ? sizeof(double) : sizeof(float));
        void *got = malloc(bytes + 1);
        if (ok && n > 0)
            ok = H5Dread(dset, c->f64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL,
                         H5P_DEFAULT, got) >= 0 &&
                 memcmp(got, want, bytes) == 0;
        free(got);
        if (space >= 0) H5Sclose(space);
        if (dset >= 0) H5Dclose(dset);
        if (file >= 0) H5Fclose(file);
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    TU_CHECK(ok, "serial HDF5 read of '%s' differs from what was written", c->name);
}

/* Writes every case, commits, and reads each back through h5f and serial HDF5. */
static void test_round_trip(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "round_trip.h5");
    void *data[NUM_CASES];
    h5f_file *f = NULL;
    expect_status("create", h5f_create(MPI_COMM_WORLD, path, 0, &f), TF_OK);
    if (!f) return;
    for (int k = 0; k < NUM_CASES; k++) {
        const tensor_case *c = &cases[k];
        int64_t n = element_count(c->ndims, c->dims);
        data[k] = malloc((size_t)(n + 1) * sizeof(double));
        tf_status st;
        if (c->f64) {
            fill_f64(data[k], n, 100 + k);
            st = h5f_write_f64(f, c->name, c->ndims, c->dims, data[k]);
        } else {
            fill_f32(data[k], n, 100 + k);
            st = h5f_write_f32(f, c->name, c->ndims, c->dims, data[k]);
        }
        expect_status(c->name, st, TF_OK);
    }
    expect_status("commit", h5f_commit(&f), TF_OK);
    TU_CHECK(f == NULL, "h5f_commit must set the handle to NULL");

    expect_status("open", h5f_open(MPI_COMM_WORLD, path, &f), TF_OK);
    for (int k = 0; f && k < NUM_CASES; k++) {
        const tensor_case *c = &cases[k];
        int64_t n = element_count(c->ndims, c->dims);
        float *got32 = calloc((size_t)n + 1, sizeof(float));
        double *got64 = calloc((size_t)n + 1, sizeof(double));
        expect_status(c->name, h5f_read_f32(f, c->name, c->ndims, c->dims, got32), TF_OK);
        expect_status(c->name, h5f_read_f64(f, c->name, c->ndims, c->dims, got64), TF_OK);
        /* Exact: float32 -> float64 is exact, and float64 -> float32 rounds like a C cast. */
        float *want32 = calloc((size_t)n + 1, sizeof(float));
        double *want64 = calloc((size_t)n + 1, sizeof(double));
        for (int64_t i = 0; i < n; i++) {
            want32[i] = c->f64 ? (float)((double *)data[k])[i] : ((float *)data[k])[i];
            want64[i] = c->f64 ? ((double *)data[k])[i] : (double)((float *)data[k])[i];
        }
        tu_close_f32(c->name, got32, want32, n, 0.0, 0.0);
        tu_close_f64(c->name, got64, want64, n, 0.0, 0.0);
        TU_CHECK(h5f_exists(f, c->name), "h5f_exists('%s') is 0 after writing it", c->name);
        check_serial(path, c, data[k]);
        free(got32);
        free(got64);
        free(want32);
        free(want64);
    }
    TU_CHECK(h5f_exists(f, "maps") && h5f_exists(f, "/maps/layer0"),
             "intermediate groups 'maps' and 'maps/layer0' are missing");
    TU_CHECK(!h5f_exists(f, "maps/layer9/qk") && !h5f_exists(f, "nothing"),
             "h5f_exists reports a dataset that was never written");
    h5f_close(&f);
    TU_CHECK(f == NULL, "h5f_close must set the handle to NULL");
    for (int k = 0; k < NUM_CASES; k++) free(data[k]);
    if (rank == 0) remove(path);
}

/* A small transfer limit forces several collective calls per tensor. */
static void test_split_transfers(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "split.h5");
    const int64_t dims[2] = {13, 2}, wide[2] = {2, 40};
    float x[26], y[26], w[80];
    fill_f32(x, 26, 7);
    fill_f32(w, 80, 8);
    h5f_set_max_transfer_bytes(24); /* 3 rows of 8 bytes per call */
    h5f_file *f = NULL;
    expect_status("create split", h5f_create(MPI_COMM_WORLD, path, 0, &f), TF_OK);
    expect_status("write split", h5f_write_f32(f, "x", 2, dims, x), TF_OK);
    expect_status("row above limit", h5f_write_f32(f, "w", 2, wide, w), TF_ERR_ARG);
    expect_message("row above limit", "160 bytes");
    expect_status("commit split", h5f_commit(&f), TF_OK);
    expect_status("open split", h5f_open(MPI_COMM_WORLD, path, &f), TF_OK);
    memset(y, 0, sizeof y);
    expect_status("read split", h5f_read_f32(f, "x", 2, dims, y), TF_OK);
    tu_close_f32("split transfer", y, x, 26, 0.0, 0.0);
    h5f_close(&f);
    h5f_set_max_transfer_bytes(0);
    if (rank == 0) remove(path);
}

/* No file at path until commit; discard leaves nothing. */
static void test_temporary_name(void)
{
    char path[128], temp[256];
    path_in_dir(path, sizeof path, "temp.h5");
    const int64_t dims[1] = {4};
    const float x[4] = {1, 2, 3, 4};

    h5f_file *f = NULL;
    expect_status("create temp", h5f_create(MPI_COMM_WORLD, path, 0, &f), TF_OK);
    if (!f) return;
    snprintf(temp, sizeof temp, "%s", h5f_temp_path(f));
    TU_CHECK(strcmp(h5f_path(f), path) == 0, "h5f_path is '%s', expected '%s'", h5f_path(f), path);
    TU_CHECK(strncmp(temp, path, strlen(path)) == 0 && strlen(temp) > strlen(path),
             "temporary path '%s' does not extend '%s'", temp, path);
    expect_status("write temp", h5f_write_f32(f, "x", 1, dims, x), TF_OK);
    TU_CHECK(!file_exists(path), "'%s' exists before commit", path);
    TU_CHECK(file_exists(temp), "temporary file '%s' is missing before commit", temp);
    expect_status("commit temp", h5f_commit(&f), TF_OK);
    TU_CHECK(file_exists(path), "'%s' is missing after commit", path);
    TU_CHECK(!file_exists(temp), "temporary file '%s' is left after commit", temp);
    if (rank == 0) remove(path);

    expect_status("create discard", h5f_create(MPI_COMM_WORLD, path, 0, &f), TF_OK);
    if (!f) return;
    snprintf(temp, sizeof temp, "%s", h5f_temp_path(f));
    expect_status("write discard", h5f_write_f32(f, "x", 1, dims, x), TF_OK);
    h5f_discard(&f);
    TU_CHECK(f == NULL, "h5f_discard must set the handle to NULL");
    TU_CHECK(!file_exists(path) && !file_exists(temp), "discard left '%s' or '%s'", path, temp);
    h5f_discard(&f);
    h5f_discard(NULL);
}

/* overwrite = 0 keeps an existing file; overwrite = 1 replaces it. */
static void test_overwrite(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "keep.h5");
    const int64_t dims[1] = {3};
    const float first[3] = {1, 2, 3}, second[3] = {4, 5, 6};
    float got[3] = {0};

    h5f_file *f = NULL;
    expect_status("create first", h5f_create(MPI_COMM_WORLD, path, 0, &f), TF_OK);
    expect_status("write first", h5f_write_f32(f, "x", 1, dims, first), TF_OK);
    expect_status("commit first", h5f_commit(&f), TF_OK);

    expect_status("create existing", h5f_create(MPI_COMM_WORLD, path, 0, &f), TF_ERR_EXISTS);
    TU_CHECK(f == NULL, "failed h5f_create must leave the handle NULL");
    expect_message("create existing", path);
    expect_message("create existing", "\"overwrite\": true");
    expect_status("open kept", h5f_open(MPI_COMM_WORLD, path, &f), TF_OK);
    expect_status("read kept", h5f_read_f32(f, "x", 1, dims, got), TF_OK);
    tu_close_f32("file kept after TF_ERR_EXISTS", got, first, 3, 0.0, 0.0);
    h5f_close(&f);

    expect_status("create overwrite", h5f_create(MPI_COMM_WORLD, path, 1, &f), TF_OK);
    expect_status("write second", h5f_write_f32(f, "x", 1, dims, second), TF_OK);
    expect_status("commit second", h5f_commit(&f), TF_OK);
    expect_status("open replaced", h5f_open(MPI_COMM_WORLD, path, &f), TF_OK);
    expect_status("read replaced", h5f_read_f32(f, "x", 1, dims, got), TF_OK);
    tu_close_f32("file replaced with overwrite", got, second, 3, 0.0, 0.0);
    expect_status("write read-only", h5f_write_f32(f, "y", 1, dims, second), TF_ERR_ARG);
    expect_message("write read-only", "read-only");
    expect_status("commit read-only", h5f_commit(&f), TF_ERR_ARG);
    TU_CHECK(f == NULL, "h5f_commit of a read-only handle must still free it");
    if (rank == 0) remove(path);

    char sub[128];
    path_in_dir(sub, sizeof sub, "subdir");
    if (rank == 0) mkdir(sub, 0755);
    MPI_Barrier(MPI_COMM_WORLD);
    expect_status("create on a directory", h5f_create(MPI_COMM_WORLD, sub, 1, &f), TF_ERR_IO);
    expect_message("create on a directory", "is a directory");
    if (rank == 0) rmdir(sub);
}

static void test_bad_paths(void)
{
    char path[160], missing_dir[128];
    path_in_dir(missing_dir, sizeof missing_dir, "no_such_dir");
    snprintf(path, sizeof path, "%s/out.h5", missing_dir);
    h5f_file *f = NULL;
    expect_status("missing directory", h5f_create(MPI_COMM_WORLD, path, 1, &f), TF_ERR_IO);
    expect_message("missing directory", missing_dir);
    expect_message("missing directory", "does not exist");

    expect_status("open missing", h5f_open(MPI_COMM_WORLD, path, &f), TF_ERR_IO);
    expect_message("open missing", path);
    expect_message("open missing", "not found");

    char text[128];
    path_in_dir(text, sizeof text, "not_hdf5.txt");
    if (rank == 0) {
        FILE *fp = fopen(text, "w");
        if (fp) {
            fputs("this is not an HDF5 file\n", fp);
            fclose(fp);
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    expect_status("open text file", h5f_open(MPI_COMM_WORLD, text, &f), TF_ERR_FORMAT);
    expect_message("open text file", text);
    expect_message("open text file", "not an HDF5 file");
    TU_CHECK(f == NULL, "failed h5f_open must leave the handle NULL");
    if (rank == 0) remove(text);
}

/* Adds an integer dataset with plain serial HDF5 on rank 0. */
static void add_int_dataset(const char *path)
{
    if (rank == 0) {
        hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
        hsize_t dims[1] = {3};
        hid_t space = H5Screate_simple(1, dims, NULL);
        hid_t dset =
            H5Dcreate2(file, "ints", H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        int v[3] = {1, 2, 3};
        H5Dwrite(dset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
        H5Dclose(dset);
        H5Sclose(space);
        H5Fclose(file);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

static void test_read_errors(void)
{
    char path[128];
    path_in_dir(path, sizeof path, "shapes.h5");
    const int64_t dims[2] = {3, 5}, swapped[2] = {5, 3}, flat[1] = {15}, bad[2] = {3, -1};
    float x[15], y[15];
    fill_f32(x, 15, 3);
    h5f_file *f = NULL;
    expect_status("create shapes", h5f_create(MPI_COMM_WORLD, path, 0, &f), TF_OK);
    expect_status("write m", h5f_write_f32(f, "group/m", 2, dims, x), TF_OK);
    expect_status("write twice", h5f_write_f32(f, "group/m", 2, dims, x), TF_ERR_ARG);
    expect_message("write twice", "already exists");
    expect_status("write 5 dims", h5f_write_f32(f, "five", 5, dims, x), TF_ERR_ARG);
    expect_status("write negative dim", h5f_write_f32(f, "neg", 2, bad, x), TF_ERR_ARG);
    expect_status("commit shapes", h5f_commit(&f), TF_OK);
    add_int_dataset(path);

    expect_status("open shapes", h5f_open(MPI_COMM_WORLD, path, &f), TF_OK);
    expect_status("swapped shape", h5f_read_f32(f, "group/m", 2, swapped, y), TF_ERR_FORMAT);
    expect_message("swapped shape", "has shape (3, 5); expected (5, 3)");
    expect_message("swapped shape", path);
    expect_message("swapped shape", "group/m");
    expect_status("wrong rank", h5f_read_f32(f, "group/m", 1, flat, y), TF_ERR_FORMAT);
    expect_message("wrong rank", "has shape (3, 5); expected (15)");
    expect_status("missing dataset", h5f_read_f32(f, "group/q", 2, dims, y), TF_ERR_FORMAT);
    expect_message("missing dataset", "no dataset 'group/q'");
    expect_status("missing parent", h5f_read_f32(f, "none/q", 2, dims, y), TF_ERR_FORMAT);
    expect_status("group as dataset", h5f_read_f32(f, "group", 2, dims, y), TF_ERR_FORMAT);
    expect_message("group as dataset", "is a group");
    const int64_t three[1] = {3};
    expect_status("integer dataset", h5f_read_f32(f, "ints", 1, three, y), TF_ERR_FORMAT);
    expect_message("integer dataset", "not floating point");
    expect_status("read after errors", h5f_read_f32(f, "group/m", 2, dims, y), TF_OK);
    tu_close_f32("read after errors", y, x, 15, 0.0, 0.0);
    h5f_close(&f);
    if (rank == 0) remove(path);
}

static void test_attributes(void)
{
    char path[128], s[64];
    path_in_dir(path, sizeof path, "attrs.h5");
    const int64_t dims[1] = {2};
    const double x[2] = {0.5, 0.25};
    h5f_file *f = NULL;
    expect_status("create attrs", h5f_create(MPI_COMM_WORLD, path, 0, &f), TF_OK);
    expect_status("write g/x", h5f_write_f64(f, "g/x", 1, dims, x), TF_OK);
    expect_status("set int", h5f_set_attr_int(f, "/", "count", -1234567890123LL), TF_OK);
    expect_status("set double", h5f_set_attr_double(f, "/", "eps", 1e-6), TF_OK);
    expect_status("set string", h5f_set_attr_string(f, "/", "kind", "first"), TF_OK);
    expect_status("replace string", h5f_set_attr_string(f, "/", "kind", "tfuse-model"), TF_OK);
    expect_status("set on group", h5f_set_attr_int(f, "g", "layer", 3), TF_OK);
    expect_status("set on dataset", h5f_set_attr_string(f, "g/x", "unit", "m"), TF_OK);
    expect_status("set on missing", h5f_set_attr_int(f, "nothing", "a", 1), TF_ERR_ARG);
    expect_status("commit attrs", h5f_commit(&f), TF_OK);

    expect_status("open attrs", h5f_open(MPI_COMM_WORLD, path, &f), TF_OK);
    int64_t i = 0;
    double d = 0;
    expect_status("get int", h5f_get_attr_int(f, "/", "count", &i), TF_OK);
    TU_CHECK(i == -1234567890123LL, "int attribute %lld", (long long)i);
    expect_status("get double", h5f_get_attr_double(f, "/", "eps", &d), TF_OK);
    TU_CHECK(d == 1e-6, "double attribute %.17g", d);
    expect_status("get int as double", h5f_get_attr_double(f, "/", "count", &d), TF_OK);
    TU_CHECK(d == -1234567890123.0, "int attribute as double %.17g", d);
    expect_status("get string", h5f_get_attr_string(f, "/", "kind", s, sizeof s), TF_OK);
    TU_CHECK(strcmp(s, "tfuse-model") == 0, "string attribute '%s'", s);
    expect_status("get on group", h5f_get_attr_int(f, "g", "layer", &i), TF_OK);
    TU_CHECK(i == 3, "group attribute %lld", (long long)i);
    expect_status("get on dataset", h5f_get_attr_string(f, "g/x", "unit", s, sizeof s), TF_OK);
    TU_CHECK(strcmp(s, "m") == 0, "dataset attribute '%s'", s);

    expect_status("string too long", h5f_get_attr_string(f, "/", "kind", s, 5), TF_ERR_FORMAT);
    expect_message("string too long", "11 characters");
    expect_status("missing attr", h5f_get_attr_int(f, "/", "absent", &i), TF_ERR_FORMAT);
    expect_message("missing attr", "no attribute 'absent'");
    expect_status("double as int", h5f_get_attr_int(f, "/", "eps", &i), TF_ERR_FORMAT);
    expect_message("double as int", "not a scalar integer");
    expect_status("string as double", h5f_get_attr_double(f, "/", "kind", &d), TF_ERR_FORMAT);
    expect_status("int as string", h5f_get_attr_string(f, "/", "count", s, sizeof s),
                  TF_ERR_FORMAT);
    expect_status("missing object", h5f_get_attr_int(f, "nothing", "a", &i), TF_ERR_FORMAT);
    expect_message("missing object", "no object 'nothing'");
    h5f_close(&f);
    if (rank == 0) remove(path);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    snprintf(dir, sizeof dir, "io_h5f_np%d_XXXXXX", size);
    if (rank == 0 && !mkdtemp(dir)) TF_DIE("cannot create a scratch directory");
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);

    test_round_trip();
    test_split_transfers();
    test_temporary_name();
    test_overwrite();
    test_bad_paths();
    test_read_errors();
    test_attributes();

    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) rmdir(dir);
    int rc = tu_finish("test_io_h5f");
    MPI_Finalize();
    return rc;
}
