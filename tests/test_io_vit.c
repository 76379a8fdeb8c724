/* Tests of ViT model files: bitwise save/load round trips, the overwrite rule, and the
 * rejection of files edited with plain serial HDF5 (NaN or infinity in a tensor, missing or
 * reshaped dataset, missing or wrong attributes, invalid configuration).
 *
 * With "--export PATH" it instead saves a model whose parameter i (in buffer order) is
 * ((i * 7919) % 10007) / 1024 - 4, exactly representable in float32, for the h5py and
 * h5dump checks in io_check_model.py. With "--import PATH" it loads the model that
 * io_check_model.py wrote with h5py from the same formula and checks every value. */
#include "testutil.h"
#include "tfuse/vit_io.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];
static int rank, size;

static const vit_config small_cfg = {.image_size = 8,
                                     .channels = 1,
                                     .patch = 4,
                                     .d = 8,
                                     .layers = 2,
                                     .heads = 2,
                                     .mlp = 12,
                                     .classes = 3,
                                     .ln_eps = 1e-5};

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

static vit_model *make_model(const vit_config *cfg, uint64_t seed)
{
    vit_model *model = NULL;
    if (vit_model_create(cfg, &model) != TF_OK) TF_DIE("vit_model_create: %s", tf_error_get());
    vit_model_init(model, seed);
    return model;
}

static int same_config(const vit_config *a, const vit_config *b)
{
    return a->image_size == b->image_size && a->channels == b->channels && a->patch == b->patch &&
           a->d == b->d && a->layers == b->layers && a->heads == b->heads && a->mlp == b->mlp &&
           a->classes == b->classes && a->ln_eps == b->ln_eps;
}

static void test_round_trip(void)
{
    char path[128], group_path[128];
    snprintf(path, sizeof path, "%s/model.h5", dir);
    vit_model *model = make_model(&small_cfg, 42), *loaded = NULL;
    expect_status("save", vit_model_save(model, MPI_COMM_WORLD, path, 0), TF_OK);
    expect_status("load", vit_model_load(MPI_COMM_WORLD, path, &loaded), TF_OK);
    if (loaded) {
        TU_CHECK(same_config(&loaded->cfg, &model->cfg), "loaded configuration differs");
        TU_CHECK(loaded->num_params == model->num_params, "num_params %lld, expected %lld",
                 (long long)loaded->num_params, (long long)model->num_params);
        TU_CHECK(memcmp(loaded->params, model->params, (size_t)model->num_params * sizeof(float)) ==
                     0,
                 "loaded parameters differ bitwise from the saved ones");
    }
    vit_model_free(&loaded);

    /* Overwrite rule: the second model replaces the first only with overwrite = 1. */
    vit_model *other = make_model(&small_cfg, 43);
    expect_status("save existing", vit_model_save(other, MPI_COMM_WORLD, path, 0), TF_ERR_EXISTS);
    expect_message("save existing", "\"overwrite\": true");
    expect_status("load kept", vit_model_load(MPI_COMM_WORLD, path, &loaded), TF_OK);
    TU_CHECK(loaded && memcmp(loaded->params, model->params,
                              (size_t)model->num_params * sizeof(float)) == 0,
             "TF_ERR_EXISTS must leave the saved model intact");
    vit_model_free(&loaded);
    expect_status("save overwrite", vit_model_save(other, MPI_COMM_WORLD, path, 1), TF_OK);
    expect_status("load replaced", vit_model_load(MPI_COMM_WORLD, path, &loaded), TF_OK);
    TU_CHECK(loaded && memcmp(loaded->params, other->params,
                              (size_t)other->num_params * sizeof(float)) == 0,
             "overwrite = 1 must replace the saved model");
    vit_model_free(&loaded);

    /* Two models in groups of one file, as fusion output stores its parents. */
    snprintf(group_path, sizeof group_path, "%s/groups.h5", dir);
    h5f_file *f = NULL;
    expect_status("create groups", h5f_create(MPI_COMM_WORLD, group_path, 0, &f), TF_OK);
    expect_status("write root", vit_model_write(model, f, "/"), TF_OK);
    expect_status("write group", vit_model_write(other, f, "aligned/parent1"), TF_OK);
    expect_status("commit groups", h5f_commit(&f), TF_OK);
    expect_status("open groups", h5f_open(MPI_COMM_WORLD, group_path, &f), TF_OK);
    vit_model *root = NULL, *sub = NULL;
    expect_status("read root", vit_model_read(f, "/", &root), TF_OK);
    expect_status("read group", vit_model_read(f, "aligned/parent1/", &sub), TF_OK);
    TU_CHECK(
        root && memcmp(root->params, model->params, (size_t)model->num_params * sizeof(float)) == 0,
        "model read from '/' differs");
    TU_CHECK(sub &&
                 memcmp(sub->params, other->params, (size_t)other->num_params * sizeof(float)) == 0,
             "model read from 'aligned/parent1' differs");
    TU_CHECK(h5f_exists(f, "aligned/parent1/params/qkv_w"),
             "dataset aligned/parent1/params/qkv_w is missing");
    vit_model *missing = (vit_model *)&missing; /* must be reset to NULL */
    expect_status("read missing group", vit_model_read(f, "aligned/parent2", &missing),
                  TF_ERR_FORMAT);
    TU_CHECK(missing == NULL, "failed vit_model_read must leave the output NULL");
    h5f_close(&f);
    vit_model_free(&root);
    vit_model_free(&sub);

    expect_status("load missing file", vit_model_load(MPI_COMM_WORLD, "no/such/model.h5", &loaded),
                  TF_ERR_IO);
    expect_message("load missing file", "no/such/model.h5");
    vit_model_free(&model);
    vit_model_free(&other);
    if (rank == 0) {
        remove(path);
        remove(group_path);
    }
}

/* ---- Files edited with plain serial HDF5 on rank 0 --------------------------------- */

typedef void (*edit_fn)(hid_t file);

/* Saves a fresh model to path, applies `edit` on rank 0, and loads it expecting `want`
 * with a message containing needle_a and needle_b. */
static void expect_rejected(const char *what, edit_fn edit, tf_status want, const char *needle_a,
                            const char *needle_b)
{
    char path[128];
    snprintf(path, sizeof path, "%s/edited.h5", dir);
    vit_model *model = make_model(&small_cfg, 7), *loaded = NULL;
    expect_status(what, vit_model_save(model, MPI_COMM_WORLD, path, 1), TF_OK);
    vit_model_free(&model);
    int edited = 1;
    if (rank == 0) {
        hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
        edited = file >= 0;
        if (edited) {
            edit(file);
            edited = H5Fclose(file) >= 0;
        }
    }
    MPI_Bcast(&edited, 1, MPI_INT, 0, MPI_COMM_WORLD);
    TU_CHECK(edited, "%s: editing '%s' with serial HDF5 failed", what, path);

    expect_status(what, vit_model_load(MPI_COMM_WORLD, path, &loaded), want);
    TU_CHECK(loaded == NULL, "%s: a rejected model must leave the output NULL", what);
    vit_model_free(&loaded);
    expect_message(what, needle_a);
    expect_message(what, needle_b);
    expect_message(what, path);
    if (rank == 0) remove(path);
}

/* Overwrites element (i0, i1, i2) of a 3-D float dataset. */
static void put_value(hid_t file, const char *name, hsize_t i0, hsize_t i1, hsize_t i2, float value)
{
    hid_t dset = H5Dopen2(file, name, H5P_DEFAULT);
    hid_t space = H5Dget_space(dset);
    int nd = H5Sget_simple_extent_ndims(space);
    hsize_t start[3] = {i0, i1, i2}, count[3] = {1, 1, 1}, one[1] = {1};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
    hid_t mem = H5Screate_simple(1, one, NULL);
    if (nd == 3) H5Dwrite(dset, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, &value);
    H5Sclose(mem);
    H5Sclose(space);
    H5Dclose(dset);
}

static void edit_nan(hid_t file)
{
    put_value(file, "params/qkv_w", 1, 5, 3, NAN);
}
static void edit_inf(hid_t file)
{
    put_value(file, "params/fc1_w", 0, 11, 7, -INFINITY);
}
static void edit_delete_dataset(hid_t file)
{
    H5Ldelete(file, "params/fc2_b", H5P_DEFAULT);
}
static void edit_reshape(hid_t file)
{
    H5Ldelete(file, "params/head_b", H5P_DEFAULT);
    hsize_t dims[1] = {4};
    float zeros[4] = {0};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t dset = H5Dcreate2(file, "params/head_b", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT,
                            H5P_DEFAULT);
    H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros);
    H5Dclose(dset);
    H5Sclose(space);
}
static void set_int_attr(hid_t file, const char *name, long long value)
{
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    H5Awrite(attr, H5T_NATIVE_LLONG, &value);
    H5Aclose(attr);
}
static void edit_heads(hid_t file)
{
    set_int_attr(file, "heads", 3);
}
static void edit_version(hid_t file)
{
    set_int_attr(file, "format_version", 2);
}
static void edit_delete_attr(hid_t file)
{
    H5Adelete(file, "mlp");
}
static void edit_architecture(hid_t file)
{
    H5Adelete(file, "architecture");
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 4);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(file, "architecture", type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attr, type, "bert");
    H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
}

static void test_rejected_files(void)
{
    expect_rejected("NaN in qkv_w", edit_nan, TF_ERR_NUMERIC, "params/qkv_w", "(1, 5, 3)");
    expect_rejected("infinity in fc1_w", edit_inf, TF_ERR_NUMERIC, "params/fc1_w", "(0, 11, 7)");
    expect_rejected("missing dataset", edit_delete_dataset, TF_ERR_FORMAT,
                    "no dataset 'params/fc2_b'", "(2, 8)");
    expect_rejected("reshaped dataset", edit_reshape, TF_ERR_FORMAT, "params/head_b",
                    "has shape (4); expected (3)");
    expect_rejected("invalid heads", edit_heads, TF_ERR_ARG, "heads = 3", "d = 8");
    expect_rejected("newer format", edit_version, TF_ERR_FORMAT, "format_version 2",
                    "reads version 1");
    expect_rejected("missing attribute", edit_delete_attr, TF_ERR_FORMAT, "no attribute 'mlp'",
                    "on '/'");
    expect_rejected("wrong architecture", edit_architecture, TF_ERR_FORMAT, "architecture 'bert'",
                    "expected 'vit'");
}

static const vit_config exchange_cfg = {.image_size = 28,
                                        .channels = 1,
                                        .patch = 7,
                                        .d = 16,
                                        .layers = 2,
                                        .heads = 4,
                                        .mlp = 40,
                                        .classes = 10,
                                        .ln_eps = 1e-6};

/* Parameter i of the exchanged models, exact in float32. */
static float exchange_value(int64_t i)
{
    return (float)((i * 7919) % 10007) / 1024.0f - 4.0f;
}

/* Saves the model checked by io_check_model.py; see the file comment. */
static int export_model(const char *path)
{
    vit_model *model = NULL;
    if (vit_model_create(&exchange_cfg, &model) != TF_OK)
        TF_DIE("vit_model_create: %s", tf_error_get());
    for (int64_t i = 0; i < model->num_params; i++) model->params[i] = exchange_value(i);
    tf_status st = vit_model_save(model, MPI_COMM_WORLD, path, 1);
    vit_model_free(&model);
    if (st != TF_OK) TF_DIE("saving '%s' failed: %s", path, tf_error_get());
    if (rank == 0) printf("saved test model '%s' from %d ranks\n", path, size);
    return 0;
}

/* Loads the model io_check_model.py wrote with h5py and checks every value exactly. */
static int import_model(const char *path)
{
    vit_model *model = NULL;
    expect_status("load h5py model", vit_model_load(MPI_COMM_WORLD, path, &model), TF_OK);
    if (model) {
        TU_CHECK(same_config(&model->cfg, &exchange_cfg), "h5py model configuration differs");
        float *want = malloc((size_t)model->num_params * sizeof(float));
        if (!want) TF_DIE("out of memory");
        for (int64_t i = 0; i < model->num_params; i++) want[i] = exchange_value(i);
        tu_close_f32("h5py model parameters", model->params, want, model->num_params, 0.0, 0.0);
        free(want);
    }
    vit_model_free(&model);
    return tu_finish("test_io_vit --import");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    tf_log_set_level(TF_LOG_WARN);
    if (argc == 3 && strcmp(argv[1], "--export") == 0) {
        int rc = export_model(argv[2]);
        MPI_Finalize();
        return rc;
    }
    if (argc == 3 && strcmp(argv[1], "--import") == 0) {
        int rc = import_model(argv[2]);
        MPI_Finalize();
        return rc;
    }
    if (argc != 1) TF_DIE("usage: %s [--export PATH | --import PATH]", argv[0]);
    snprintf(dir, sizeof dir, "io_vit_np%d_XXXXXX", size);
    if (rank == 0 && !mkdtemp(dir)) TF_DIE("cannot create a scratch directory");
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);

    test_round_trip();
    test_rejected_files();

    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) rmdir(dir);
    int rc = tu_finish("test_io_vit");
    MPI_Finalize();
    return rc;
}
