/* BERT model files: save and load round trip (at several rank counts), a model stored in a
 * group of another file, and the errors for an existing file, a NaN, another architecture and
 * a missing file. */
#include "tfuse/bert.h"
#include "tfuse/vit.h"
#include "tfuse/vit_io.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const bert_config tiny = {
    .vocab = 23, .seq_len = 6, .d = 8, .layers = 2, .heads = 2, .mlp = 12, .ln_eps = 1e-6};

static void check_equal(const bert_model *got, const bert_model *want, const char *what)
{
    TU_CHECK(got != NULL, "%s: model loaded", what);
    if (!got) return;
    TU_CHECK(memcmp(&got->cfg, &want->cfg, sizeof got->cfg) == 0, "%s: configuration", what);
    TU_CHECK(got->num_params == want->num_params &&
                 memcmp(got->params, want->params, (size_t)want->num_params * sizeof(float)) == 0,
             "%s: parameters equal bitwise", what);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    char path[64], other[64];
    snprintf(path, sizeof path, "test_bert_h5_np%d.h5", tf_world_size());
    snprintf(other, sizeof other, "test_bert_h5_vit_np%d.h5", tf_world_size());
    bert_model *m = NULL, *back = NULL;
    if (bert_model_create(&tiny, &m) != TF_OK) TF_DIE("%s", tf_error_get());
    bert_model_init(m, 9);

    /* round trip through a model file */
    TU_CHECK(bert_model_save(m, MPI_COMM_WORLD, path, 1) == TF_OK, "save: %s", tf_error_get());
    TU_CHECK(bert_model_load(MPI_COMM_WORLD, path, &back) == TF_OK, "load: %s", tf_error_get());
    check_equal(back, m, "model file");
    bert_model_free(&back);
    TU_CHECK(bert_model_save(m, MPI_COMM_WORLD, path, 0) == TF_ERR_EXISTS,
             "existing file without overwrite");

    /* a model inside a group of another file */
    h5f_file *f = NULL;
    TU_CHECK(h5f_create(MPI_COMM_WORLD, path, 1, &f) == TF_OK, "create: %s", tf_error_get());
    TU_CHECK(bert_model_write(m, f, "models/first") == TF_OK, "write: %s", tf_error_get());
    TU_CHECK(h5f_commit(&f) == TF_OK, "commit: %s", tf_error_get());
    TU_CHECK(h5f_open(MPI_COMM_WORLD, path, &f) == TF_OK, "open: %s", tf_error_get());
    TU_CHECK(bert_model_read(f, "models/first", &back) == TF_OK, "read: %s", tf_error_get());
    h5f_close(&f);
    check_equal(back, m, "group models/first");
    bert_model_free(&back);

    /* a NaN is reported with its tensor */
    m->p[BERT_FC1_W][3] = NAN;
    TU_CHECK(bert_model_save(m, MPI_COMM_WORLD, path, 1) == TF_OK, "save: %s", tf_error_get());
    TU_CHECK(bert_model_load(MPI_COMM_WORLD, path, &back) == TF_ERR_NUMERIC, "NaN rejected");
    TU_CHECK(strstr(tf_error_get(), "fc1_w") != NULL, "message names fc1_w: %s", tf_error_get());
    TU_CHECK(back == NULL, "no model on failure");

    /* a ViT file is not a BERT model */
    const vit_config vc = {.image_size = 4,
                           .channels = 1,
                           .patch = 2,
                           .d = 4,
                           .layers = 1,
                           .heads = 1,
                           .mlp = 4,
                           .classes = 2,
                           .ln_eps = 1e-5};
    vit_model *vm = NULL;
    if (vit_model_create(&vc, &vm) != TF_OK) TF_DIE("%s", tf_error_get());
    TU_CHECK(vit_model_save(vm, MPI_COMM_WORLD, other, 1) == TF_OK, "save ViT");
    TU_CHECK(bert_model_load(MPI_COMM_WORLD, other, &back) == TF_ERR_FORMAT, "ViT file rejected");
    TU_CHECK(strstr(tf_error_get(), "architecture 'vit'") != NULL, "message: %s", tf_error_get());
    vit_model_free(&vm);
    TU_CHECK(bert_model_load(MPI_COMM_WORLD, "no_such_dir/model.h5", &back) == TF_ERR_IO,
             "missing file");

    if (tf_world_rank() == 0) {
        remove(path);
        remove(other);
    }
    bert_model_free(&m);
    int rc = tu_finish("test_bert_h5");
    MPI_Finalize();
    return rc;
}
