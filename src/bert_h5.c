/* BERT models in HDF5 files: configuration attributes and one float32 dataset per tensor. */
#include "tfuse/bert.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define BERT_H5_FORMAT "tfuse-model"
#define BERT_H5_FORMAT_VERSION 1
#define BERT_H5_ARCHITECTURE "bert"

/* Integer fields of bert_config, stored as int64 attributes under their C names. */
static const struct {
    const char *name;
    size_t offset;
} int_fields[] = {
    {"vocab", offsetof(bert_config, vocab)}, {"seq_len", offsetof(bert_config, seq_len)},
    {"d", offsetof(bert_config, d)},         {"layers", offsetof(bert_config, layers)},
    {"heads", offsetof(bert_config, heads)}, {"mlp", offsetof(bert_config, mlp)},
};
enum { NUM_INT_FIELDS = sizeof int_fields / sizeof int_fields[0] };

/* Writes "<group>/params/<name of tensor which>" into buf, or "params/<name>" for the root. */
static const char *dataset_name(char *buf, size_t size, const char *group, int which)
{
    size_t n = strlen(group);
    while (n > 0 && group[n - 1] == '/') n--;
    snprintf(buf, size, "%.*s%sparams/%s", (int)n, group, n > 0 ? "/" : "", bert_param_name(which));
    return buf;
}

tf_status bert_model_write(const bert_model *model, h5f_file *f, const char *group)
{
    if (!model || !f || !group) return tf_error_set(TF_ERR_ARG, "bert_model_write: NULL argument");

    /* datasets first, because writing them creates the group that takes the attributes */
    tf_status st = TF_OK;
    for (int k = 0; k < BERT_NUM_PARAMS && st == TF_OK; k++) {
        char name[512];
        int64_t dims[4];
        int ndims = bert_param_shape(&model->cfg, k, dims);
        st = h5f_write_f32(f, dataset_name(name, sizeof name, group, k), ndims, dims, model->p[k]);
    }
    if (st == TF_OK) st = h5f_set_attr_string(f, group, "format", BERT_H5_FORMAT);
    if (st == TF_OK) st = h5f_set_attr_int(f, group, "format_version", BERT_H5_FORMAT_VERSION);
    if (st == TF_OK) st = h5f_set_attr_string(f, group, "architecture", BERT_H5_ARCHITECTURE);
    for (int i = 0; i < NUM_INT_FIELDS && st == TF_OK; i++) {
        const int *field = (const int *)((const char *)&model->cfg + int_fields[i].offset);
        st = h5f_set_attr_int(f, group, int_fields[i].name, *field);
    }
    if (st == TF_OK) st = h5f_set_attr_double(f, group, "ln_eps", model->cfg.ln_eps);
    return st;
}

tf_status bert_model_save(const bert_model *model, MPI_Comm comm, const char *path, int overwrite)
{
    if (!model) return tf_error_set(TF_ERR_ARG, "bert_model_save: model is NULL");
    h5f_file *f = NULL;
    tf_status st = h5f_create(comm, path, overwrite, &f);
    if (st != TF_OK) return st;
    st = bert_model_write(model, f, "/");
    if (st != TF_OK) {
        h5f_discard(&f);
        return st;
    }
    return h5f_commit(&f);
}

/* Checks the format, version and architecture attributes. */
static tf_status check_format(h5f_file *f, const char *group)
{
    char text[64];
    int64_t version = 0;
    tf_status st = h5f_get_attr_string(f, group, "format", text, sizeof text);
    if (st == TF_OK && strcmp(text, BERT_H5_FORMAT) != 0)
        return tf_error_set(TF_ERR_FORMAT,
                            "file '%s' has format '%s' on '%s'; expected '%s' (a tfuse model)",
                            h5f_path(f), text, group, BERT_H5_FORMAT);
    if (st == TF_OK) st = h5f_get_attr_int(f, group, "format_version", &version);
    if (st == TF_OK && version != BERT_H5_FORMAT_VERSION)
        return tf_error_set(TF_ERR_FORMAT,
                            "model file '%s' has format_version %lld; this build reads "
                            "version %d",
                            h5f_path(f), (long long)version, BERT_H5_FORMAT_VERSION);
    if (st == TF_OK) st = h5f_get_attr_string(f, group, "architecture", text, sizeof text);
    if (st == TF_OK && strcmp(text, BERT_H5_ARCHITECTURE) != 0)
        return tf_error_set(TF_ERR_FORMAT, "model file '%s' has architecture '%s'; expected '%s'",
                            h5f_path(f), text, BERT_H5_ARCHITECTURE);
    return st;
}

/* Reads the configuration attributes and validates them. */
static tf_status read_config(h5f_file *f, const char *group, bert_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    tf_status st = TF_OK;
    for (int i = 0; i < NUM_INT_FIELDS && st == TF_OK; i++) {
        int64_t value = 0;
        st = h5f_get_attr_int(f, group, int_fields[i].name, &value);
        if (st == TF_OK && (value < INT32_MIN || value > INT32_MAX))
            return tf_error_set(TF_ERR_FORMAT,
                                "model file '%s': attribute %s = %lld is out of range", h5f_path(f),
                                int_fields[i].name, (long long)value);
        *(int *)((char *)cfg + int_fields[i].offset) = (int)value;
    }
    if (st == TF_OK) st = h5f_get_attr_double(f, group, "ln_eps", &cfg->ln_eps);
    if (st == TF_OK && (st = bert_config_validate(cfg)) != TF_OK) {
        char reason[1024];
        snprintf(reason, sizeof reason, "%s", tf_error_get());
        return tf_error_set(st, "model file '%s': %s", h5f_path(f), reason);
    }
    return st;
}

/* Fails with TF_ERR_NUMERIC at the first NaN or infinity of a tensor. */
static tf_status check_finite(h5f_file *f, const char *dataset, const float *x, int64_t count)
{
    for (int64_t i = 0; i < count; i++) {
        if (isfinite(x[i])) continue;
        return tf_error_set(TF_ERR_NUMERIC,
                            "model file '%s': tensor '%s' has %s at flat index %lld; the model "
                            "is corrupt or diverged in training",
                            h5f_path(f), dataset, isnan(x[i]) ? "NaN" : "an infinite value",
                            (long long)i);
    }
    return TF_OK;
}

tf_status bert_model_read(h5f_file *f, const char *group, bert_model **out)
{
    if (!f || !group || !out) return tf_error_set(TF_ERR_ARG, "bert_model_read: NULL argument");
    *out = NULL;
    bert_config cfg;
    bert_model *model = NULL;

    /* attributes, then every tensor: presence and shape (h5f_read_f32), finite values */
    tf_status st = check_format(f, group);
    if (st == TF_OK) st = read_config(f, group, &cfg);
    if (st == TF_OK) st = bert_model_create(&cfg, &model);
    for (int k = 0; k < BERT_NUM_PARAMS && st == TF_OK; k++) {
        char name[512];
        int64_t dims[4];
        int ndims = bert_param_shape(&cfg, k, dims);
        dataset_name(name, sizeof name, group, k);
        st = h5f_read_f32(f, name, ndims, dims, model->p[k]);
        if (st == TF_OK) st = check_finite(f, name, model->p[k], model->size[k]);
    }
    if (st != TF_OK) {
        bert_model_free(&model);
        return st;
    }
    *out = model;
    return TF_OK;
}

tf_status bert_model_load(MPI_Comm comm, const char *path, bert_model **out)
{
    if (!out) return tf_error_set(TF_ERR_ARG, "bert_model_load: output is NULL");
    *out = NULL;
    h5f_file *f = NULL;
    tf_status st = h5f_open(comm, path, &f);
    if (st != TF_OK) return st;
    st = bert_model_read(f, "/", out);
    h5f_close(&f);
    if (st == TF_OK)
        TF_INFO("loaded BERT model '%s': V %d, T %d, d %d, %d layer%s, %lld parameters", path,
                (*out)->cfg.vocab, (*out)->cfg.seq_len, (*out)->cfg.d, (*out)->cfg.layers,
                (*out)->cfg.layers == 1 ? "" : "s", (long long)(*out)->num_params);
    return st;
}
